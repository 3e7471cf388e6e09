"""nn.Modules: the drop-in rotary op for a training loop."""

from __future__ import annotations

import torch
from torch import nn

from . import phase
from .ops.rope import apply_rope


class DPRoPERotaryEmbedding(nn.Module):
    """Applies RoPE with a per-pair frequency table (a :class:`RopePlan` or any table).

    The table is held as int64 fixed-point phases (a buffer that ``model.to(dtype)`` leaves
    alone), so the rotation angles are exact at any position.

    Args:
        table: a ``RopePlan`` or a ``[rotary_dim // 2]`` float table (radians per position).
        interleaved: GPT-J pairing instead of NeoX / HF Llama half-split.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``.

    ``forward(q, k, position_ids=None)``: q ``[B, T, Hq, D]``, k ``[B, T, Hk, D]`` (or None),
    ``position_ids`` ``[B, T]`` / ``[T]`` integer or None for ``0 .. T-1``; returns rotated ``(q, k)``.
    """

    def __init__(self, table, *, interleaved: bool = False, backend: str = "auto"):
        super().__init__()
        inv_freq = getattr(table, "inv_freq", table)
        inv_freq = torch.as_tensor(inv_freq, dtype=torch.float64).detach().cpu().reshape(-1)
        self.inv_freq = inv_freq  # float64 on the CPU: the table as given
        self.register_buffer(
            "phases", torch.tensor(phase.to_signed(phase.frequency_phases(inv_freq)), dtype=torch.int64),
            persistent=False,
        )
        self.rotary_dim = 2 * inv_freq.numel()
        self.interleaved = interleaved
        self.backend = backend

    def forward(self, q: torch.Tensor, k: torch.Tensor | None = None, position_ids=None, *, validate: bool = True):
        return apply_rope(q, k, self.phases, position_ids, interleaved=self.interleaved,
                          backend=self.backend, validate=validate)

    def extra_repr(self) -> str:
        return f"rotary_dim={self.rotary_dim}, interleaved={self.interleaved}, backend={self.backend!r}"

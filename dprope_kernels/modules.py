"""nn.Modules: the drop-in rotary op and the fused q/k(/v) projection for a training loop."""

from __future__ import annotations

import torch
from torch import nn

from . import phase
from .backends import check_backend_name
from .errors import InvalidType, InvalidValue
from .ops.checks import check_scale
from .ops.rope import apply_rope
from .rmsnorm import NormNotFusable, probe_qk_norms


class DPRoPERotaryEmbedding(nn.Module):
    """Applies RoPE with a per-pair frequency table (a :class:`RopePlan` or any table).

    The table is held as int64 fixed-point phases (a buffer that ``model.to(dtype)`` leaves
    alone), so the rotation angles are exact at any position.

    Args:
        table: a ``RopePlan`` or a ``[rotary_dim // 2]`` float table (radians per position).
        interleaved: GPT-J pairing instead of NeoX / HF Llama half-split.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``.
        attention_factor: multiplies cos and sin (YaRN's temperature; the rotated q and k come out
            scaled); default the table's ``attention_factor`` when it has one, else 1.0.

    ``forward(q, k, position_ids=None)``: q ``[B, T, Hq, D]``, k ``[B, T, Hk, D]`` (or None),
    ``position_ids`` ``[B, T]`` / ``[T]`` integer or None for ``0 .. T-1``; returns rotated ``(q, k)``.
    """

    def __init__(self, table, *, interleaved: bool = False, backend: str = "auto",
                 attention_factor: float | None = None):
        super().__init__()
        self.inv_freq, phases = _phases_of(table)  # float64 on the CPU: the table as given
        self.register_buffer("phases", phases, persistent=False)
        self.rotary_dim = 2 * self.inv_freq.numel()
        self.interleaved = interleaved
        self.backend = check_backend_name(backend)
        self.attention_factor = _attention_factor(table, attention_factor)

    @classmethod
    def from_config(cls, config, *, target_max_position: int | None = None, factor: float | None = None,
                    layer_type: str | None = None, interleaved: bool = False, backend: str = "auto",
                    **plan_options) -> DPRoPERotaryEmbedding:
        """Plan from a Hugging Face model config (a transformers config or a ``config.json`` dict).

        The rotary dims, base and pre-training length come from the config. A config whose rope type
        is already ``"dprope"`` rebuilds its recorded plan; otherwise give ``target_max_position`` or
        ``factor`` (and any :func:`~dprope_kernels.plan_dprope` option, e.g. ``num_interpolated_dims``).
        A config with rope parameters per layer type (Gemma 3) needs ``layer_type`` (e.g.
        ``"full_attention"``) when its layer types differ. A config that already extends its rope another
        way (linear, llama3, YaRN, ...) is refused: DPRoPE plans from the pre-trained default table.
        """
        from .hf_config import plan_for_config

        plan = plan_for_config(config, layer_type, target_max_position=target_max_position, factor=factor,
                               **plan_options)
        return cls(plan, interleaved=interleaved, backend=backend)

    def forward(self, q: torch.Tensor, k: torch.Tensor | None = None, position_ids=None, *,
                validate: bool = True):
        return apply_rope(q, k, self.phases, position_ids, interleaved=self.interleaved,
                          backend=self.backend, validate=validate, scale=self.attention_factor)

    def extra_repr(self) -> str:
        return (f"rotary_dim={self.rotary_dim}, interleaved={self.interleaved}, backend={self.backend!r}, "
                f"attention_factor={self.attention_factor}")


def _phases_of(table) -> tuple[torch.Tensor, torch.Tensor]:
    """(float64 CPU table, int64 phases) of a ``RopePlan`` or a float table."""
    inv_freq = getattr(table, "inv_freq", table)
    inv_freq = torch.as_tensor(inv_freq, dtype=torch.float64).detach().cpu().reshape(-1)
    return inv_freq, phase.phase_tensor(inv_freq)


def _attention_factor(table, attention_factor) -> float:
    """The factor given, else the table's ``attention_factor`` (a ``RopePlan``'s), else 1.0."""
    if attention_factor is None:
        attention_factor = getattr(table, "attention_factor", None)
    return 1.0 if attention_factor is None else check_scale("attention_factor", attention_factor)


class FusedQKRopeProjection(nn.Module):
    """q/k(/v) projections with RoPE fused into the GEMM epilogue (Llama-style attention).

    Holds ``q_proj``, ``k_proj`` and optionally ``v_proj`` as ``nn.Linear`` (the state-dict keys
    of HF attention), so it can share an attention module's weights: see :meth:`from_attention`.

    Args:
        hidden_size, num_heads, num_kv_heads, head_dim: the attention's sizes (GQA when
            ``num_kv_heads < num_heads``).
        table: a ``RopePlan`` or a ``[head_dim // 2]`` float table.
        bias: give the projections biases (Qwen2-style).
        with_v: also project v (returned unrotated).
        interleaved, backend: as in :func:`dprope_kernels.apply_rope`.
        attention_factor: q and k (not v) are multiplied by it, as in :class:`DPRoPERotaryEmbedding`
            (default the table's ``attention_factor``, else 1.0).

    ``forward(hidden_states, position_ids=None)``: hidden_states ``[B, T, hidden]``; returns
    ``(q, k)`` or ``(q, k, v)``, each ``[B, T, H, head_dim]``.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, table, *,
                 bias: bool = False, with_v: bool = True, interleaved: bool = False, backend: str = "auto",
                 attention_factor: float | None = None, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=bias, **factory)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias, **factory)
        self.v_proj = (nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias, **factory) if with_v
                       else None)
        self._init_table(table, head_dim, interleaved, backend, attention_factor, self.q_proj.weight.device)

    def _init_table(self, table, head_dim: int, interleaved: bool, backend: str, attention_factor,
                    device: torch.device) -> None:
        self.inv_freq, phases = _phases_of(table)
        phases = phases.to(device)  # beside the weights
        if 2 * self.inv_freq.numel() != head_dim:
            raise InvalidValue(f"the table has {self.inv_freq.numel()} frequencies; head_dim={head_dim} "
                               f"needs {head_dim // 2}")
        self.register_buffer("phases", phases, persistent=False)
        self.head_dim = head_dim
        self.interleaved = interleaved
        self.backend = check_backend_name(backend)
        self.attention_factor = _attention_factor(table, attention_factor)

    @classmethod
    def from_attention(cls, attention: nn.Module, table, *, head_dim: int | None = None, with_v: bool = True,
                       interleaved: bool = False, backend: str = "auto",
                       attention_factor: float | None = None) -> FusedQKRopeProjection:
        """Wrap an attention module's ``q_proj`` / ``k_proj`` / ``v_proj`` (shared, not copied).

        The attention's ``q_norm`` / ``k_norm`` (Qwen3, Gemma 3, OLMo2), when it has them, are applied
        before the rotation; a norm the fused epilogue cannot reproduce raises :class:`NormNotFusable`.
        """
        for name in ("q_proj", "k_proj") + (("v_proj",) if with_v else ()):
            if not isinstance(getattr(attention, name, None), nn.Linear):
                raise InvalidType(f"{type(attention).__name__} has no nn.Linear {name}; cannot fuse its "
                                  f"projections")
        head_dim = head_dim or getattr(attention, "head_dim", None)
        if head_dim is None:
            raise InvalidValue("head_dim is not an attribute of the attention module; pass it")
        heads = (attention.q_proj.out_features // head_dim, attention.k_proj.out_features // head_dim)
        norms = probe_qk_norms(attention, head_dim, heads)
        if backend == "cuda" and any(n is not None and n.module.weight.numel() != head_dim for n in norms):
            raise NormNotFusable(f"{type(attention).__name__} normalizes q or k across heads, which the CUDA "
                                 "fused projection does not; use backend='triton' or 'torch'")
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.q_proj, module.k_proj = attention.q_proj, attention.k_proj
        module.v_proj = attention.v_proj if with_v else None
        module.norms = norms  # the attention's q_norm / k_norm (shared), applied before the rotation
        for name, norm in zip(("q_norm", "k_norm"), norms):
            if norm is not None:
                module.add_module(name, norm.module)
        module._init_table(table, head_dim, interleaved, backend, attention_factor,
                           module.q_proj.weight.device)
        return module

    def forward(self, hidden_states: torch.Tensor, position_ids=None, *, validate: bool = True):
        from .ops.fused_projection import fused_qk_rope_projection

        projections = [self.q_proj, self.k_proj] + ([self.v_proj] if self.v_proj is not None else [])
        biases = tuple(p.bias for p in projections)
        norms = getattr(self, "norms", (None, None))
        eps = next((n.eps for n in norms if n is not None), 1e-6)
        return fused_qk_rope_projection(
            hidden_states, self.q_proj.weight, self.k_proj.weight, self.phases, position_ids,
            w_v=self.v_proj.weight if self.v_proj is not None else None,
            bias=biases if any(b is not None for b in biases) else None,
            q_norm_weight=norms[0].weight() if norms[0] is not None else None,
            k_norm_weight=norms[1].weight() if norms[1] is not None else None, norm_eps=eps,
            head_dim=self.head_dim, interleaved=self.interleaved, backend=self.backend, validate=validate,
            scale=self.attention_factor,
        )

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, interleaved={self.interleaved}, backend={self.backend!r}, "
                f"attention_factor={self.attention_factor}")

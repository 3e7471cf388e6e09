"""apply_rope: rotary embedding with a per-pair frequency table and exact angles.

Registered as ``torch.ops.dprope.rope`` (out-of-place, with autograd) and ``torch.ops.dprope.rope_``
(in-place), so ``torch.compile(fullgraph=True)`` traces through them. The backward of a rotation
is the same kernel rotating by the negated angle.
"""

from __future__ import annotations

import torch

from .. import phase
from ..backends import choose_backend
from .tables import table_phases

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------


def _rope_torch(x: torch.Tensor, out: torch.Tensor, phases: torch.Tensor, positions: torch.Tensor,
                interleaved: bool, conjugate: bool) -> None:
    """Reference: float64 angles from the exact turn, float64 math. x, out ``[B, T, H, D]``."""
    half = phases.numel()
    turn = positions.to(torch.int64)[..., None] * phases  # [B, T, half], wraps mod 2**64
    angle = phase.turn_to_radians(turn)[:, :, None, :]
    cos, sin = angle.cos(), angle.sin()
    if conjugate:
        sin = -sin
    xr = x[..., : 2 * half].to(torch.float64)
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
    else:
        x1, x2 = xr[..., :half], xr[..., half:]
    y1 = x1 * cos - x2 * sin
    y2 = x2 * cos + x1 * sin
    rotated = torch.stack((y1, y2), dim=-1).flatten(-2) if interleaved else torch.cat((y1, y2), dim=-1)
    out[..., : 2 * half] = rotated.to(out.dtype)


def _launch(backend: str, q, k, out_q, out_k, phases, positions, interleaved, conjugate) -> None:
    rotary_dim = 2 * phases.numel()
    if backend == "torch":
        _rope_torch(q, out_q, phases, positions, interleaved, conjugate)
        _rope_torch(k, out_k, phases, positions, interleaved, conjugate)
    elif backend == "triton":
        from ..triton.rope import rope_triton

        rope_triton(q, k, out_q, out_k, phases, positions, interleaved, conjugate)
    elif backend == "cuda":
        from ..cuda import extension

        extension().rope(q, k, out_q, out_k, phases, positions, interleaved, conjugate)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    for x, out in ((q, out_q), (k, out_k)):
        if rotary_dim < x.shape[-1] and out.data_ptr() != x.data_ptr():
            out[..., rotary_dim:] = x[..., rotary_dim:]


# ---------------------------------------------------------------------------------------------
# torch.library registration
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("dprope::rope", mutates_args=())
def rope_op(q: torch.Tensor, k: torch.Tensor, phases: torch.Tensor, positions: torch.Tensor,
            interleaved: bool, conjugate: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    out_q = torch.empty_like(q)
    out_k = torch.empty_like(k)
    _launch(backend, q, k, out_q, out_k, phases, positions, interleaved, conjugate)
    return out_q, out_k


@rope_op.register_fake
def _rope_fake(q, k, phases, positions, interleaved, conjugate, backend):
    return torch.empty_like(q), torch.empty_like(k)


def _rope_setup_context(ctx, inputs, output):
    _, _, phases, positions, interleaved, conjugate, backend = inputs
    ctx.save_for_backward(phases, positions)
    ctx.interleaved, ctx.conjugate, ctx.backend = interleaved, conjugate, backend


def _rope_backward(ctx, grad_q, grad_k):
    phases, positions = ctx.saved_tensors
    dq, dk = rope_op(grad_q, grad_k, phases, positions, ctx.interleaved, not ctx.conjugate, ctx.backend)
    return dq, dk, None, None, None, None, None


rope_op.register_autograd(_rope_backward, setup_context=_rope_setup_context)


@torch.library.custom_op("dprope::rope_", mutates_args=("q", "k"))
def rope_inplace_op(q: torch.Tensor, k: torch.Tensor, phases: torch.Tensor, positions: torch.Tensor,
                    interleaved: bool, conjugate: bool, backend: str) -> None:
    # every backend reads an element before writing it, so out may alias the input
    _launch(backend, q, k, q, k, phases, positions, interleaved, conjugate)


@rope_inplace_op.register_fake
def _rope_inplace_fake(q, k, phases, positions, interleaved, conjugate, backend):
    return None


# ---------------------------------------------------------------------------------------------
# argument checks and the public function
# ---------------------------------------------------------------------------------------------


def _check_qk(q: torch.Tensor, k: torch.Tensor | None, varlen: bool) -> None:
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    rank, layout = (3, "[total_tokens, H, D]") if varlen else (4, "[B, T, H, D]")
    for name, x in (("q", q), ("k", k)):
        if x is None:
            continue
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != rank:
            raise ValueError(f"{name} must be {layout}, got shape {tuple(x.shape)}")
        if x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
        if x.shape[-1] % 2:
            raise ValueError(f"{name}'s head dim must be even, got {x.shape[-1]}")
    if k is not None:
        if k.device != q.device:
            raise ValueError(f"q and k must be on one device, got {q.device} and {k.device}")
        if k.dtype != q.dtype:
            raise TypeError(f"q and k must share a dtype, got {q.dtype} and {k.dtype}")
        if k.shape[:-2] != q.shape[:-2] or k.shape[-1] != q.shape[-1]:
            raise ValueError(
                f"k must match q in every dim but heads: q {tuple(q.shape)}, k {tuple(k.shape)}"
            )


def _positions_for(q, positions, offsets, cu_seqlens, validate) -> torch.Tensor:
    """``[B, T]`` integer positions on q's device (varlen: ``[1, total_tokens]``)."""
    device = q.device
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError("cu_seqlens must be a 1-D int32/int64 tensor [n_seqs + 1]")
        total = q.shape[0]
        if positions is None:
            cu = cu_seqlens.to(device, torch.int64)
            lengths = cu[1:] - cu[:-1]
            if validate and not torch.compiler.is_compiling():
                if int(cu[0]) != 0 or int(cu[-1]) != total or bool((lengths < 0).any()):
                    raise ValueError(f"cu_seqlens must rise from 0 to total_tokens={total}")
            starts = torch.repeat_interleave(cu[:-1], lengths, output_size=total)
            positions = torch.arange(total, device=device) - starts
            if offsets is not None:
                off = torch.as_tensor(offsets, device=device, dtype=torch.int64).reshape(-1)
                if off.numel() not in (1, lengths.numel()):
                    raise ValueError(f"offsets must be a scalar or [n_seqs], got {off.numel()} values")
                positions = positions + (torch.repeat_interleave(off, lengths, output_size=total) if off.numel() > 1 else off)
            return positions.reshape(1, total)
        B, T = 1, total
    else:
        B, T = q.shape[0], q.shape[1]
    if positions is None:
        positions = torch.arange(T, device=device, dtype=torch.int64).expand(B, T)
        if offsets is not None:
            off = torch.as_tensor(offsets, device=device, dtype=torch.int64).reshape(-1)
            if off.numel() not in (1, B):
                raise ValueError(f"offsets must be a scalar or [B]={B} values, got {off.numel()}")
            if validate and not torch.compiler.is_compiling() and bool((off < 0).any()):
                raise ValueError("offsets must be non-negative")
            positions = positions + off.reshape(-1, 1)
        return positions
    if isinstance(positions, int) and not isinstance(positions, bool):
        if positions < 0:
            raise ValueError(f"positions offset must be non-negative, got {positions}")
        return (torch.arange(T, device=device, dtype=torch.int64) + positions).expand(B, T)
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be None, an int or an integer tensor, got {type(positions).__name__}")
    if positions.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"positions must be int32 or int64, got {positions.dtype}")
    if positions.device != device:
        raise ValueError(f"positions must be on q's device {device}, got {positions.device}")
    if positions.dim() == 1 and positions.shape[0] == T:
        positions = positions.expand(B, T)
    elif cu_seqlens is not None and positions.dim() == 1:
        raise ValueError(f"positions must be [total_tokens]={T}, got {tuple(positions.shape)}")
    if positions.shape != (B, T):
        raise ValueError(f"positions must be [B, T]=({B}, {T}) or [T], got {tuple(positions.shape)}")
    if validate and not torch.compiler.is_compiling() and positions.numel() and bool((positions < 0).any()):
        raise ValueError("positions must be non-negative")
    return positions


def apply_rope(
    q: torch.Tensor,
    k: torch.Tensor | None,
    inv_freq,
    positions=None,
    *,
    interleaved: bool = False,
    rotary_dim: int | None = None,
    inplace: bool = False,
    backend: str = "auto",
    offsets=None,
    cu_seqlens: torch.Tensor | None = None,
    validate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate q and k by exact RoPE angles from a per-pair frequency table.

    Args:
        q: ``[B, T, Hq, D]`` (any strides; HF's ``[B, H, T, D]`` as ``q.transpose(1, 2)``), or
            ``[total_tokens, Hq, D]`` with ``cu_seqlens``. float16 / bfloat16 / float32 (float64
            on the torch backend); math in float32 (float64 on torch).
        k: like q with ``Hk`` heads (GQA), or None.
        inv_freq: ``[rotary_dim // 2]`` float table (e.g. ``RopePlan.inv_freq``), radians/position;
            or int64 fixed-point phases (``dprope_kernels.phase_tensor``), which skip host work.
        positions: None (``0 .. T-1``), an int offset, ``[B, T]`` or ``[T]`` int32/int64 (varlen:
            ``[total_tokens]``); non-negative, any value below 2**63.
        interleaved: GPT-J pairing ``(2i, 2i+1)``; default NeoX / HF Llama ``(i, i + rotary_dim/2)``.
        rotary_dim: dims rotated (even, <= D); the rest pass through. Default ``2 * len(inv_freq)``.
        inplace: write into q and k (no autograd); otherwise they are never written.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``.
        offsets: int or ``[B]`` (varlen: ``[n_seqs]``) start positions when ``positions`` is None.
        cu_seqlens: ``[n_seqs + 1]`` int32/int64 cumulative lengths for the varlen layout.
        validate: check positions for negative values (a device sync on CUDA; off under compile).

    Returns:
        ``(q_rotated, k_rotated)``, same shapes and dtypes; ``k_rotated`` is None when k is.
    """
    varlen = cu_seqlens is not None
    _check_qk(q, k, varlen)
    head_dim = q.shape[-1]
    phases = table_phases(inv_freq, q.device)
    half = phases.numel()
    if rotary_dim is None:
        rotary_dim = 2 * half
    if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, int):
        raise TypeError(f"rotary_dim must be an int, got {type(rotary_dim).__name__}")
    if rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
        raise ValueError(f"rotary_dim must be even and in (0, head_dim={head_dim}], got {rotary_dim}")
    if rotary_dim != 2 * half:
        raise ValueError(
            f"inv_freq has {half} frequencies but rotary_dim is {rotary_dim} (needs rotary_dim // 2)"
        )
    pos = _positions_for(q, positions, offsets, cu_seqlens, validate)
    name = choose_backend(backend, q.device)
    if q.dtype == torch.float64 and name != "torch":
        raise TypeError(f"float64 inputs run on the torch backend only, not {name!r}")

    k_given = k is not None
    q4 = q.unsqueeze(0) if varlen else q
    k4 = (k.unsqueeze(0) if varlen else k) if k_given else q4.new_empty(q4.shape[:2] + (0, head_dim))
    if inplace:
        if torch.is_grad_enabled() and (q.requires_grad or (k_given and k.requires_grad)):
            raise RuntimeError("inplace=True does not record autograd; use inplace=False for training")
        torch.ops.dprope.rope_(q4, k4, phases, pos, interleaved, False, name)
        return q, k
    out_q, out_k = torch.ops.dprope.rope(q4, k4, phases, pos, interleaved, False, name)
    if varlen:
        out_q, out_k = out_q.squeeze(0), out_k.squeeze(0)
    return out_q, (out_k if k_given else None)

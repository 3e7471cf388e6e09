"""fused_qk_rope_projection: the q/k(/v) projection GEMM with RoPE in its epilogue.

Registered as ``torch.ops.dprope.qkv_rope_projection`` with fake and autograd. The backward
rotates the incoming q/k grads by the negated angle (the RoPE kernel with ``conjugate``) and then
runs ordinary GEMMs for dx, dW and db.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..backends import choose_backend
from .rope import _FLOAT_DTYPES, _positions_for, _rope_torch
from .tables import table_phases

Tensor = torch.Tensor


def _project_torch(x, weights, biases, outs, phases, positions, interleaved) -> None:
    """Reference: ``F.linear`` in the input dtype, then the fp64 reference rotation of q and k."""
    n_tokens = x.shape[0]
    for i, (w, b, out) in enumerate(zip(weights, biases, outs)):
        if w is None:
            continue
        y = torch.nn.functional.linear(x, w, b).view(1, n_tokens, out.shape[1], out.shape[2])
        if i < 2:
            _rope_torch(y, out.view_as(y), phases, positions.view(1, n_tokens), interleaved, False)
        else:
            out.copy_(y.view_as(out))


def _launch(backend, x, weights, biases, outs, phases, positions, interleaved) -> None:
    if backend == "torch":
        _project_torch(x, weights, biases, outs, phases, positions, interleaved)
    elif backend == "triton":
        from ..triton.fused_projection import qkv_rope_projection_triton

        qkv_rope_projection_triton(x, weights, biases, outs, phases, positions, interleaved)
    elif backend == "cuda":
        from ..cuda import extension

        extension().qkv_rope_projection(x, *weights, *biases, *outs, phases, positions, interleaved)
    else:
        raise ValueError(f"unknown backend {backend!r}")


# ---------------------------------------------------------------------------------------------
# torch.library registration
# ---------------------------------------------------------------------------------------------


def _empty_outputs(x, w_q, w_k, w_v, head_dim):
    n = x.shape[0]
    return tuple(
        x.new_empty(n, (w.shape[0] if w is not None else 0) // head_dim, head_dim) for w in (w_q, w_k, w_v)
    )


@torch.library.custom_op("dprope::qkv_rope_projection", mutates_args=())
def qkv_rope_projection_op(
    x: Tensor, w_q: Tensor, w_k: Tensor, w_v: Optional[Tensor], b_q: Optional[Tensor], b_k: Optional[Tensor],
    b_v: Optional[Tensor], phases: Tensor, positions: Tensor, head_dim: int, interleaved: bool, backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    outs = _empty_outputs(x, w_q, w_k, w_v, head_dim)
    _launch(backend, x, (w_q, w_k, w_v), (b_q, b_k, b_v), outs, phases, positions, interleaved)
    return outs


@qkv_rope_projection_op.register_fake
def _projection_fake(x, w_q, w_k, w_v, b_q, b_k, b_v, phases, positions, head_dim, interleaved, backend):
    return _empty_outputs(x, w_q, w_k, w_v, head_dim)


def _projection_setup_context(ctx, inputs, output):
    x, w_q, w_k, w_v, b_q, b_k, b_v, phases, positions, head_dim, interleaved, backend = inputs
    ctx.save_for_backward(x, w_q, w_k, w_v, phases, positions)
    ctx.has_bias = (b_q is not None, b_k is not None, b_v is not None)
    ctx.interleaved, ctx.backend = interleaved, backend


def _projection_backward(ctx, grad_q, grad_k, grad_v):
    x, w_q, w_k, w_v, phases, positions = ctx.saved_tensors
    n, head_dim = x.shape[0], phases.numel() * 2
    weights = [w for w in (w_q, w_k, w_v) if w is not None]
    grads = [g if g is not None else x.new_zeros(n, w.shape[0] // head_dim, head_dim)
             for g, w in zip((grad_q, grad_k, grad_v), weights)]
    rotated = torch.ops.dprope.rope(grads[0].unsqueeze(0), grads[1].unsqueeze(0), phases, positions.view(1, n),
                                    ctx.interleaved, True, ctx.backend)
    grads = [g.reshape(n, -1) for g in (*rotated, *grads[2:])]
    need = ctx.needs_input_grad
    dx = None
    if need[0]:
        dx = grads[0] @ weights[0]
        for g, w in zip(grads[1:], weights[1:]):
            dx = dx.addmm(g, w)
    dw = [g.t() @ x if need[1 + i] else None for i, g in enumerate(grads)]
    db = [g.sum(0) if ctx.has_bias[i] and need[4 + i] else None for i, g in enumerate(grads)]
    pad = [None] * (3 - len(grads))
    return (dx, *dw, *pad, *db, *pad, None, None, None, None, None)


qkv_rope_projection_op.register_autograd(_projection_backward, setup_context=_projection_setup_context)


# ---------------------------------------------------------------------------------------------
# argument checks and the public function
# ---------------------------------------------------------------------------------------------


def _check_matrix(name: str, w, x: Tensor, head_dim: int) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() != 2 or w.shape[1] != x.shape[-1]:
        raise ValueError(f"{name} must be [heads * head_dim, hidden={x.shape[-1]}], got {tuple(w.shape)}")
    if w.shape[0] % head_dim:
        raise ValueError(f"{name} has {w.shape[0]} rows, not a multiple of head_dim={head_dim}")
    if w.dtype != x.dtype:
        raise TypeError(f"{name} must have x's dtype {x.dtype}, got {w.dtype}")
    if w.device != x.device:
        raise ValueError(f"{name} must be on x's device {x.device}, got {w.device}")


def _check_biases(bias, weights) -> tuple:
    if bias is None:
        return (None, None, None)
    if isinstance(bias, torch.Tensor) or not isinstance(bias, Sequence):
        raise TypeError("bias must be a sequence (b_q, b_k) or (b_q, b_k, b_v) whose entries are tensors or None")
    n_proj = sum(w is not None for w in weights)
    if len(bias) != n_proj:
        raise ValueError(f"bias must have one entry per projection ({n_proj}), got {len(bias)}")
    for name, b, w in zip(("b_q", "b_k", "b_v"), bias, weights):
        if b is None:
            continue
        if not isinstance(b, torch.Tensor):
            raise TypeError(f"{name} must be a tensor or None, got {type(b).__name__}")
        if b.shape != (w.shape[0],):
            raise ValueError(f"{name} must be [{w.shape[0]}], got {tuple(b.shape)}")
        if b.dtype != w.dtype or b.device != w.device:
            raise TypeError(f"{name} must match its weight's dtype and device ({w.dtype}, {w.device})")
    return tuple(bias) + (None,) * (3 - len(bias))


def fused_qk_rope_projection(
    x: Tensor,
    w_q: Tensor,
    w_k: Tensor,
    inv_freq,
    positions=None,
    *,
    w_v: Tensor | None = None,
    bias=None,
    head_dim: int | None = None,
    interleaved: bool = False,
    backend: str = "auto",
    offsets=None,
    cu_seqlens: Tensor | None = None,
    validate: bool = True,
):
    """Project x to q, k (and v) and rotate q and k, in one GEMM whose epilogue applies RoPE.

    Args:
        x: ``[B, T, hidden]`` (or ``[total_tokens, hidden]`` with ``cu_seqlens``); float16 /
            bfloat16 / float32 (float64 on the torch backend); fp32 accumulation.
        w_q: ``[Hq * D, hidden]`` (``nn.Linear`` layout, e.g. ``attn.q_proj.weight``).
        w_k: ``[Hk * D, hidden]`` (GQA: ``Hk`` divides nothing here; any count).
        inv_freq: ``[D // 2]`` float table (``RopePlan.inv_freq``) or int64 phases. The whole head
            is rotated; for partial rotary use a plain projection and :func:`apply_rope`.
        positions: None, an int offset, ``[B, T]`` or ``[T]`` int32/int64 (varlen: ``[total_tokens]``).
        w_v: optional ``[Hv * D, hidden]``; v is returned unrotated.
        bias: optional ``(b_q, b_k)`` or ``(b_q, b_k, b_v)``, entries ``[rows]`` tensors or None.
        head_dim: D; default ``2 * len(inv_freq)`` (must equal it).
        interleaved: GPT-J pairing instead of NeoX / HF Llama half-split.
        backend: ``"auto"``, ``"torch"`` (reference: matmul + fp64 RoPE), ``"triton"``, ``"cuda"``.
        offsets, cu_seqlens, validate: as in :func:`dprope_kernels.apply_rope`.

    Returns:
        ``(q, k)`` or ``(q, k, v)``: ``[B, T, H, D]`` contiguous (varlen ``[total_tokens, H, D]``),
        x's dtype.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    varlen = cu_seqlens is not None
    rank, layout = (2, "[total_tokens, hidden]") if varlen else (3, "[B, T, hidden]")
    if x.dim() != rank:
        raise ValueError(f"x must be {layout}, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    phases = table_phases(inv_freq, x.device)
    rotary_dim = 2 * phases.numel()
    if head_dim is None:
        head_dim = rotary_dim
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even int, got {head_dim!r}")
    if head_dim != rotary_dim:
        raise ValueError(
            f"inv_freq has {phases.numel()} frequencies for head_dim={head_dim}; the fused projection rotates "
            f"whole heads (partial rotary: project, then apply_rope(..., rotary_dim=...))"
        )
    weights = (w_q, w_k, w_v)
    for name, w in zip(("w_q", "w_k", "w_v"), weights):
        if w is not None or name != "w_v":
            _check_matrix(name, w, x, head_dim)
    biases = _check_biases(bias, weights)
    lead = x.shape[:-1]
    pos = _positions_for(x, positions, offsets, cu_seqlens, validate)
    name = choose_backend(backend, x.device)
    if x.dtype == torch.float64 and name != "torch":
        raise TypeError(f"float64 inputs run on the torch backend only, not {name!r}")

    x2d = x.reshape(-1, x.shape[-1])
    q, k, v = torch.ops.dprope.qkv_rope_projection(
        x2d, w_q, w_k, w_v, *biases, phases, pos.reshape(-1).contiguous(), head_dim, interleaved, name
    )
    outs = tuple(t.view(*lead, t.shape[1], head_dim) for t in (q, k, v))
    return outs if w_v is not None else outs[:2]

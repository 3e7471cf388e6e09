"""fused_qk_rope_projection: the q/k(/v) projection GEMM with (RMSNorm and) RoPE in its epilogue.

Registered as ``torch.ops.dprope.qkv_rope_projection`` with fake and autograd. It returns one
packed ``[N, Hq + Hk + Hv, D]`` tensor (q, k and v are views of it) and, for a norm across all
heads of a token (OLMo2), each q/k head's sum of squares ``[N, Hq + Hk]``: the op applies that
norm's weights and rotates, and :func:`project_packed` scales each token afterwards. The backward
rotates the incoming q/k grads by the negated angle (the RoPE kernel with ``conjugate``), undoes
the norm (recomputing the projection it needs, so no pre-norm activation is saved), then runs
ordinary GEMMs for dx, dW, db and the norm weights. An attention factor ``scale`` multiplies the
rotation's cos and sin (q and k come out scaled, v does not) in the forward and the backward.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Optional, get_type_hints

import numpy as np
import torch

from ..backends import BACKENDS, choose_backend
from ..errors import InvalidType, InvalidValue, Unsupported
from .checks import check_flag, check_int, check_scale, positions_for
from .rope import _FLOAT_DTYPES, rope_torch
from .rope import _launch as rope_launch
from .tables import table_phases

Tensor = torch.Tensor
# Whether the kernels rotate in the GEMM's epilogue by default. Measured on an H200
# (benchmarks/results/h200-2026-12-04/README.md, bf16, x [16384, 4096], 32/8/8 heads of 128): cuBLAS
# GEMM then the CUDA RoPE kernel 1.28 ms against the fused Triton kernel 1.79 ms (GEMM alone 1.22);
# at 32 tokens 0.128 ms against 0.159. The separate path stays the default until a fused kernel wins.
ROPE_IN_EPILOGUE = False
OptionalTensor = Optional[Tensor]  # the op's annotations are evaluated: no ``Tensor | None`` on Python 3.9


def _rms_normalize(y: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Per-head RMSNorm ``y * rsqrt(mean(y**2) + eps) * weight`` over the last dim, in y's dtype."""
    return y * torch.rsqrt(y.square().mean(-1, keepdim=True) + eps) * weight.to(y.dtype)


def qkv_rope_projection_torch(x, weights, biases, norm_weights, norm_eps, out, ss, heads, phases, positions,
                              interleaved, scale: float = 1.0) -> None:
    """Reference: ``F.linear`` in the input dtype, then float64 norm and exact rotation of q and k
    (cos and sin times ``scale``)."""
    n, head_dim = x.shape[0], out.shape[-1]
    first = 0
    for i, (w, b, h) in enumerate(zip(weights, biases, heads)):
        if h == 0:
            continue
        y = torch.nn.functional.linear(x, w, b).view(1, n, h, head_dim)
        target = out[:, first:first + h].unsqueeze(0)
        if i < 2:
            norm = norm_weights[i]
            if norm is not None and norm.numel() == head_dim:
                y = _rms_normalize(y.to(torch.float64), norm, norm_eps)
            elif norm is not None:  # across heads: the sums of squares now, the scale in project_packed
                y = y.to(torch.float64)
                ss[:, first:first + h] = y[0].square().sum(-1).to(ss.dtype)
                y = y * norm.to(torch.float64).view(h, head_dim)
            rope_torch(y, target, phases, positions.view(1, n), interleaved, interleaved, False, scale)
        else:
            target.copy_(y)
        first += h


def _launch(backend, x, weights, biases, norm_weights, norm_eps, out, ss, heads, phases, positions,
            interleaved, scale: float = 1.0, epilogue: bool = True) -> None:
    if backend != "torch":  # the kernels read biases and norm weights as contiguous runs
        biases, norm_weights = ([v if v is None else v.contiguous() for v in vs]
                                for vs in (biases, norm_weights))
    if backend == "torch" or not epilogue:
        if not epilogue and backend != "torch":
            return _gemm_then_rope(backend, x, weights, biases, out, heads, phases, positions, interleaved,
                                   scale)
        qkv_rope_projection_torch(x, weights, biases, norm_weights, norm_eps, out, ss, heads, phases,
                                  positions, interleaved, scale)
    elif backend == "triton":
        from ..triton.fused_projection import qkv_rope_projection_triton

        qkv_rope_projection_triton(x, weights, biases, norm_weights, norm_eps, out, ss, heads, phases,
                                   positions, interleaved, scale)
    elif backend == "cuda":
        from ..cuda import extension

        if ss.numel():
            raise Unsupported("the CUDA fused projection has no norm across heads (OLMo2); use "
                                      "backend='triton' or 'torch'")
        extension().qkv_rope_projection(x, *weights, *biases, *norm_weights, norm_eps, out, heads[0],
                                        heads[1], phases, positions, interleaved, scale)
    else:
        raise InvalidValue(f"unknown backend {backend!r}")


# ---------------------------------------------------------------------------------------------
# torch.library registration
# ---------------------------------------------------------------------------------------------


def _gemm_then_rope(backend, x, weights, biases, out, heads, phases, positions, interleaved, scale) -> None:
    """The projection as torch GEMMs (cuBLAS on a GPU) written into the packed output's q, k and v
    columns, then q and k rotated in place by ``backend``'s RoPE kernel (no norms)."""
    n, head_dim = x.shape[0], out.shape[-1]
    columns = out.view(n, -1)
    first = 0
    for w, b, h in zip(weights, biases, heads):
        if h:
            part = columns[:, first * head_dim:(first + h) * head_dim]
            if b is None:
                torch.mm(x, w.t(), out=part)
            else:
                torch.addmm(b, x, w.t(), out=part)
        first += h
    q, k = out[:, :heads[0]].unsqueeze(0), out[:, heads[0]:heads[0] + heads[1]].unsqueeze(0)
    rope_launch(backend, q, k, q, k, phases, positions.view(1, n), interleaved, interleaved, False, scale)


def _heads(w_q, w_k, w_v, head_dim) -> tuple[int, int, int]:
    return tuple((w.shape[0] if w is not None else 0) // head_dim for w in (w_q, w_k, w_v))


def _outputs(x, w_q, w_k, w_v, n_q, n_k, head_dim) -> tuple[Tensor, Tensor]:
    """The packed output and the sums of squares (``[0, 0]`` without a norm across heads)."""
    heads = _heads(w_q, w_k, w_v, head_dim)
    across = any(n is not None and n.numel() != head_dim for n in (n_q, n_k))
    ss_shape = (x.shape[0], heads[0] + heads[1]) if across else (0, 0)
    return x.new_empty(x.shape[0], sum(heads), head_dim), x.new_empty(ss_shape, dtype=torch.float32)


def _evaluated_annotations(fn):
    """``fn`` with its annotations evaluated here: torch.library infers the op's schema from them, and
    evaluates string annotations (``from __future__ import annotations``) in its own namespace before
    torch 2.7, where ``OptionalTensor`` is unknown."""
    fn.__annotations__ = get_type_hints(fn)
    return fn


@torch.library.custom_op("dprope::qkv_rope_projection", mutates_args=())
@_evaluated_annotations
def qkv_rope_projection_op(
    x: Tensor, w_q: Tensor, w_k: Tensor, w_v: OptionalTensor, b_q: OptionalTensor, b_k: OptionalTensor,
    b_v: OptionalTensor, n_q: OptionalTensor, n_k: OptionalTensor, norm_eps: float, phases: Tensor,
    positions: Tensor, head_dim: int, interleaved: bool, backend: str, scale: float = 1.0,
    epilogue: bool = True,
) -> tuple[Tensor, Tensor]:
    out, ss = _outputs(x, w_q, w_k, w_v, n_q, n_k, head_dim)
    _launch(backend, x, (w_q, w_k, w_v), (b_q, b_k, b_v), (n_q, n_k), norm_eps, out, ss,
            _heads(w_q, w_k, w_v, head_dim), phases, positions, interleaved, scale, epilogue)
    return out, ss


@qkv_rope_projection_op.register_fake
def _projection_fake(x, w_q, w_k, w_v, b_q, b_k, b_v, n_q, n_k, norm_eps, phases, positions, head_dim,
                     interleaved, backend, scale=1.0, epilogue=True):
    return _outputs(x, w_q, w_k, w_v, n_q, n_k, head_dim)


def _projection_setup_context(ctx, inputs, output):
    (x, w_q, w_k, w_v, b_q, b_k, b_v, n_q, n_k, norm_eps, phases, positions, head_dim, interleaved, backend,
     scale, _) = inputs
    ctx.save_for_backward(x, w_q, w_k, w_v, b_q, b_k, n_q, n_k, phases, positions)
    ctx.has_bias = (b_q is not None, b_k is not None, b_v is not None)
    ctx.norm_eps, ctx.head_dim, ctx.interleaved = norm_eps, head_dim, interleaved
    ctx.backend, ctx.scale = backend, scale


def _norm_backward(grad: Tensor, y: Tensor, weight: Tensor, eps: float,
                   grad_ss: Tensor) -> tuple[Tensor, Tensor]:
    """``(dy, dweight)`` of the op's norm for the rotated-back ``grad`` ``[N, H, D]`` (float32): the
    per-head RMSNorm, or for a norm across heads (weight ``[H * D]``) the weights and the sums of
    squares the op returned (``grad_ss`` ``[N, H]``)."""
    if weight.numel() == y.shape[-1]:
        return _rms_norm_backward(grad, y, weight, eps)
    y, grad = y.float(), grad.float()
    dy = grad * weight.float().view(y.shape[1:]) + 2 * y * grad_ss[..., None]
    return dy, (grad * y).sum(0).reshape(-1)


def _rms_norm_backward(grad: Tensor, y: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(dy, dweight)`` of ``_rms_normalize(y, weight)`` for ``grad`` (all ``[N, H, D]``), in float32."""
    y = y.float()
    y_hat = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + eps)
    grad = grad.float()
    g = grad * weight.float()
    dy = ((g - y_hat * (g * y_hat).mean(-1, keepdim=True))
          * torch.rsqrt(y.square().mean(-1, keepdim=True) + eps))
    return dy, (grad * y_hat).sum((0, 1))


def _projection_backward(ctx, grad, grad_ss):
    x, w_q, w_k, w_v, b_q, b_k, n_q, n_k, phases, positions = ctx.saved_tensors
    n, head_dim = x.shape[0], ctx.head_dim
    heads = _heads(w_q, w_k, w_v, head_dim)
    need = ctx.needs_input_grad
    gq, gk, gv = torch.split(grad, heads, dim=1)
    dq, dk = torch.ops.dprope.rope(gq.unsqueeze(0), gk.unsqueeze(0), phases, positions.view(1, n),
                                   ctx.interleaved, ctx.interleaved, True, ctx.backend, ctx.scale)
    grads, norm_grads = [dq[0], dk[0], gv], [None, None]
    ss_parts = torch.split(grad_ss, heads[:2], dim=1) if grad_ss.numel() else (None, None)
    for i, (w, b, nw) in enumerate(((w_q, b_q, n_q), (w_k, b_k, n_k))):
        if nw is not None:  # recompute the pre-norm projection instead of saving it
            y = torch.nn.functional.linear(x, w, b).view(n, heads[i], head_dim)
            dy, norm_grads[i] = _norm_backward(grads[i], y, nw, ctx.norm_eps, ss_parts[i])
            grads[i] = dy.to(x.dtype)
    weights = (w_q, w_k, w_v)
    flat = [g.reshape(n, -1) for g in grads]
    dx = None
    if need[0]:
        dx = flat[0] @ w_q
        for g, w in zip(flat[1:], weights[1:]):
            if w is not None:
                dx = dx.addmm(g, w)
    dw = [g.t() @ x if w is not None and need[1 + i] else None for i, (g, w) in enumerate(zip(flat, weights))]
    db = [g.sum(0) if ctx.has_bias[i] and need[4 + i] else None for i, g in enumerate(flat)]
    dn = [g.to(w.dtype) if g is not None and need[7 + i] else None
          for i, (g, w) in enumerate(zip(norm_grads, (n_q, n_k)))]
    return (dx, *dw, *db, *dn, None, None, None, None, None, None, None, None)


qkv_rope_projection_op.register_autograd(_projection_backward, setup_context=_projection_setup_context)


# ---------------------------------------------------------------------------------------------
# argument checks and the public function
# ---------------------------------------------------------------------------------------------


def _rope_in_epilogue(requested, q_norm_weight, k_norm_weight) -> bool:
    norms = q_norm_weight is not None or k_norm_weight is not None
    if requested is None:
        return ROPE_IN_EPILOGUE or norms
    requested = check_flag("rope_in_epilogue", requested)
    if not requested and norms:
        raise InvalidValue("rope_in_epilogue=False runs a plain GEMM, then RoPE: it has no q/k norms; pass "
                           "rope_in_epilogue=True (or None) with norm weights")
    return requested


def _check_matrix(name: str, w, x: Tensor, head_dim: int) -> None:
    if not isinstance(w, torch.Tensor):
        raise InvalidType(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() != 2 or w.shape[1] != x.shape[-1]:
        raise InvalidValue(f"{name} must be [heads * head_dim, hidden={x.shape[-1]}], got {tuple(w.shape)}")
    if w.shape[0] % head_dim:
        raise InvalidValue(f"{name} has {w.shape[0]} rows, not a multiple of head_dim={head_dim}")
    if w.dtype != x.dtype:
        raise InvalidType(f"{name} must have x's dtype {x.dtype}, got {w.dtype}")
    if w.device != x.device:
        raise InvalidValue(f"{name} must be on x's device {x.device}, got {w.device}")


def _check_vector(name: str, v, length: int, ref: Tensor) -> None:
    if not isinstance(v, torch.Tensor):
        raise InvalidType(f"{name} must be a tensor or None, got {type(v).__name__}")
    if v.shape != (length,):
        raise InvalidValue(f"{name} must be [{length}], got {tuple(v.shape)}")
    if v.dtype != ref.dtype or v.device != ref.device:
        raise InvalidType(f"{name} must match x's dtype and device ({ref.dtype}, {ref.device}), got "
                          f"({v.dtype}, {v.device})")


def _check_norm_weight(name: str, weight, heads: int, head_dim: int, x: Tensor) -> None:
    """``[D]`` (per head) or ``[heads * D]`` (across the token's heads)."""
    if (isinstance(weight, torch.Tensor) and weight.dim() == 1
            and weight.numel() == heads * head_dim != head_dim):
        _check_vector(name, weight, heads * head_dim, x)
    else:
        _check_vector(name, weight, head_dim, x)


def _check_biases(bias, weights, x) -> tuple:
    if bias is None:
        return (None, None, None)
    if isinstance(bias, torch.Tensor) or not isinstance(bias, Sequence):
        raise InvalidType("bias must be a sequence (b_q, b_k) or (b_q, b_k, b_v) whose entries are tensors "
                          "or None")
    n_proj = sum(w is not None for w in weights)
    if len(bias) != n_proj:
        raise InvalidValue(f"bias must have one entry per projection ({n_proj}), got {len(bias)}")
    for name, b, w in zip(("b_q", "b_k", "b_v"), bias, weights):
        if b is not None:
            _check_vector(name, b, w.shape[0], x)
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
    q_norm_weight: Tensor | None = None,
    k_norm_weight: Tensor | None = None,
    norm_eps: float = 1e-6,
    head_dim: int | None = None,
    interleaved: bool = False,
    backend: str = "auto",
    offsets=None,
    cu_seqlens: Tensor | None = None,
    validate: bool = True,
    scale: float = 1.0,
    rope_in_epilogue: bool | None = None,
):
    """Project x to q, k (and v), normalize and rotate q and k: in one GEMM whose epilogue applies RoPE,
    or a GEMM then the RoPE kernel in place, whichever was measured faster.

    Args:
        x: ``[B, T, hidden]`` (or ``[total_tokens, hidden]`` with ``cu_seqlens``); float16 /
            bfloat16 / float32 (float64 on the torch backend); fp32 accumulation.
        w_q: ``[Hq * D, hidden]`` (``nn.Linear`` layout, e.g. ``attn.q_proj.weight``; a row slice
            of a fused ``qkv_proj.weight`` works too).
        w_k: ``[Hk * D, hidden]`` (any ``Hk``: GQA, MQA).
        inv_freq: ``[D // 2]`` real table (``RopePlan.inv_freq``) or int64 phases. The whole head
            is rotated; for partial rotary use a plain projection and :func:`apply_rope`.
        positions: as in :func:`dprope_kernels.apply_rope` (``[T]``, ``[1, T]``, ``[B, T]``, ...).
        w_v: optional ``[Hv * D, hidden]``; v is returned unrotated.
        bias: optional ``(b_q, b_k)`` or ``(b_q, b_k, b_v)``, entries ``[rows]`` tensors or None.
        q_norm_weight, k_norm_weight: optional RMSNorm weights applied before the rotation, in
            float32: ``[D]`` normalizes each head (Qwen3's ``q_norm.weight``; for Gemma's
            ``1 + weight`` form pass ``1 + weight``), ``y * rsqrt(mean(y**2) + norm_eps) * weight``;
            ``[Hq * D]`` (``[Hk * D]``) normalizes all of a token's q (k) heads together (OLMo2),
            on the triton and torch backends.
        norm_eps: the RMSNorm epsilon.
        head_dim: D; default ``2 * len(inv_freq)`` (must equal it).
        interleaved: GPT-J pairing instead of NeoX / HF Llama half-split.
        backend: ``"auto"``, ``"torch"`` (reference: matmul + float64 norm and RoPE), ``"triton"``,
            ``"cuda"``.
        offsets, cu_seqlens, validate: as in :func:`dprope_kernels.apply_rope`.
        scale: the attention factor (YaRN's temperature): q and k, after the norm and the rotation, are
            multiplied by it (v never); a finite positive real, 1.0 exactly as without it.
        rope_in_epilogue: on the triton and cuda backends, True rotates in the GEMM's epilogue (one
            kernel), False runs torch's GEMM (cuBLAS) into the packed output and then the backend's
            RoPE kernel in place (no norms); None takes :data:`ROPE_IN_EPILOGUE` (measured), or the
            epilogue where there are norms. The torch backend ignores it.

    Returns:
        ``(q, k)`` or ``(q, k, v)``: ``[B, T, H, D]`` (varlen ``[total_tokens, H, D]``) in x's dtype,
        views of one packed ``[..., Hq + Hk + Hv, D]`` tensor (each head contiguous).
    """
    packed = project_packed(x, w_q, w_k, w_v, inv_freq, positions, bias=bias, q_norm_weight=q_norm_weight,
                            k_norm_weight=k_norm_weight, norm_eps=norm_eps, head_dim=head_dim,
                            interleaved=interleaved, backend=backend, offsets=offsets, cu_seqlens=cu_seqlens,
                            validate=validate, scale=scale, rope_in_epilogue=rope_in_epilogue)
    heads = _heads(w_q, w_k, w_v, packed.shape[-1])
    outs = torch.split(packed, heads, dim=-2)
    return outs if w_v is not None else outs[:2]


def project_packed(x: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor | None, inv_freq, positions=None, *,
                   bias=None, q_norm_weight: Tensor | None = None, k_norm_weight: Tensor | None = None,
                   norm_eps: float = 1e-6, head_dim: int | None = None, interleaved: bool = False,
                   backend: str = "auto", offsets=None, cu_seqlens: Tensor | None = None,
                   validate: bool = True, scale: float = 1.0, rope_in_epilogue: bool | None = None) -> Tensor:
    """:func:`fused_qk_rope_projection`, returning the packed ``[..., Hq + Hk + Hv, D]`` tensor
    (what a fused ``qkv_proj`` followed by the rotation gives)."""
    scale = check_scale("scale", scale)
    if not isinstance(x, torch.Tensor):
        raise InvalidType(f"x must be a torch.Tensor, got {type(x).__name__}")
    varlen = cu_seqlens is not None
    rank, layout = (2, "[total_tokens, hidden]") if varlen else (3, "[B, T, hidden]")
    if x.dim() != rank:
        raise InvalidValue(f"x must be {layout}, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise InvalidType(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.shape[-1] == 0:
        raise InvalidValue(f"x has hidden size 0 (shape {tuple(x.shape)}): there is nothing to project")
    interleaved = check_flag("interleaved", interleaved)
    validate = check_flag("validate", validate)
    phases = table_phases(inv_freq, x.device)
    rotary_dim = 2 * phases.numel()
    head_dim = rotary_dim if head_dim is None else check_int("head_dim", head_dim, 2)
    if head_dim % 2:
        raise InvalidValue(f"head_dim must be even, got {head_dim}")
    if head_dim != rotary_dim:
        raise InvalidValue(
            f"inv_freq has {phases.numel()} frequencies for head_dim={head_dim}; the fused projection "
            f"rotates whole heads (partial rotary: project, then apply_rope(..., rotary_dim=...))"
        )
    weights = (w_q, w_k, w_v)
    for name, w in zip(("w_q", "w_k", "w_v"), weights):
        if w is not None or name != "w_v":
            _check_matrix(name, w, x, head_dim)
    biases = _check_biases(bias, weights, x)
    heads = _heads(w_q, w_k, w_v, head_dim)
    for name, nw, h in (("q_norm_weight", q_norm_weight, heads[0]),
                        ("k_norm_weight", k_norm_weight, heads[1])):
        if nw is not None:
            _check_norm_weight(name, nw, h, head_dim, x)
    if isinstance(norm_eps, (bool, np.bool_)) or not isinstance(norm_eps, numbers.Real) or not (
            math.isfinite(norm_eps) and norm_eps >= 0):
        raise InvalidValue(f"norm_eps must be a finite number >= 0, got {norm_eps!r}")
    lead = x.shape[:-1]
    B, T = (1, x.shape[0]) if varlen else lead
    pos = positions_for(x.device, B, T, positions, offsets, cu_seqlens, validate)
    across_heads = any(nw is not None and nw.numel() != head_dim for nw in (q_norm_weight, k_norm_weight))
    if across_heads and backend == "cuda":
        raise Unsupported("backend 'cuda' has no norm across heads ([H * D] norm weights, as OLMo2's); use "
                           "backend='triton' or 'torch'")
    name = choose_backend(backend, x.device, ("torch", "triton") if across_heads else BACKENDS,
                          op="fused_projection")
    if x.dtype == torch.float64 and name != "torch":
        raise InvalidType(f"float64 inputs run on the torch backend only, not {name!r}")
    epilogue = _rope_in_epilogue(rope_in_epilogue, q_norm_weight, k_norm_weight)
    packed, ss = torch.ops.dprope.qkv_rope_projection(
        x.reshape(-1, x.shape[-1]), w_q, w_k, w_v, *biases, q_norm_weight, k_norm_weight, float(norm_eps),
        phases, pos.reshape(-1).contiguous(), head_dim, interleaved, name, scale, epilogue,
    )
    first = 0
    for nw, h in ((q_norm_weight, heads[0]), (k_norm_weight, heads[1])):
        # the token's scale, across its heads (commutes with RoPE)
        if nw is not None and nw.numel() != head_dim:
            scale = torch.rsqrt(ss[:, first:first + h].sum(1) / (h * head_dim) + norm_eps)
            # autograd keeps it; packed changes
            rotated = packed[:, first:first + h].to(torch.float32, copy=True)
            packed[:, first:first + h] = (rotated * scale[:, None, None]).to(packed.dtype)
        first += h
    return packed.view(*lead, packed.shape[1], head_dim)

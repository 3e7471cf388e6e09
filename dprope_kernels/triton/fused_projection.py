"""Triton q/k(/v) projection GEMM with RoPE in its epilogue.

One launch computes every head of q, k and v. A program owns ``BLOCK_M`` tokens x one head: it
accumulates the head's two halves of the pairs in two fp32 accumulators (the rows of W feeding
dims ``d1(p)`` and ``d2(p)``), adds the bias, rotates them by the exact angle
``pos * phase mod 2**64`` and stores each element once. v heads skip the rotation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backends import triton_interpreted
from .common import exact_cos_sin, pair_dims


def _configs() -> list[triton.Config]:
    if triton_interpreted():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=1, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
        for bm, bk, w, s in [
            (128, 64, 8, 3), (128, 32, 4, 4), (64, 64, 4, 4), (64, 32, 4, 5), (128, 64, 4, 4), (32, 64, 4, 4),
        ]
    ]


@triton.jit
def _dot(b_a, b_b, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:  # the interpreter has no bf16 arithmetic
        b_a = b_a.to(tl.float32)
        b_b = b_b.to(tl.float32)
    if IEEE:
        return tl.dot(b_a, b_b, acc, input_precision="ieee")
    return tl.dot(b_a, b_b, acc)


@triton.autotune(configs=_configs(), key=["hidden", "HALF", "TOKENS_BUCKET"])
@triton.jit
def qkv_rope_projection_kernel(
    p_x, p_wq, p_wk, p_wv, p_bq, p_bk, p_bv, p_oq, p_ok, p_ov, p_phase, p_pos,
    n_tokens, hidden, n_q_heads, n_k_heads, n_v_heads, TOKENS_BUCKET,
    stride_xn, stride_xk,
    stride_wq0, stride_wq1, stride_wk0, stride_wk1, stride_wv0, stride_wv1,
    HEAD_DIM: tl.constexpr, HALF: tl.constexpr, BLOCK_P: tl.constexpr,
    INTERLEAVED: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # grouped ordering: GROUP_M token blocks sweep all heads before the next group starts (L2 reuse)
    pid = tl.program_id(0)
    n_slots = n_q_heads + n_k_heads + n_v_heads
    n_m = tl.cdiv(n_tokens, BLOCK_M)
    per_group = GROUP_M * n_slots
    first_m = (pid // per_group) * GROUP_M
    group_size = tl.minimum(n_m - first_m, GROUP_M)
    i_m = first_m + (pid % per_group) % group_size
    i_slot = (pid % per_group) // group_size

    if i_slot < n_q_heads:
        i_h = i_slot
        p_w, p_b, p_o, n_heads = p_wq, p_bq, p_oq, n_q_heads
        stride_w0, stride_w1 = stride_wq0, stride_wq1
    elif i_slot < n_q_heads + n_k_heads:
        i_h = i_slot - n_q_heads
        p_w, p_b, p_o, n_heads = p_wk, p_bk, p_ok, n_k_heads
        stride_w0, stride_w1 = stride_wk0, stride_wk1
    else:
        i_h = i_slot - n_q_heads - n_k_heads
        p_w, p_b, p_o, n_heads = p_wv, p_bv, p_ov, n_v_heads
        stride_w0, stride_w1 = stride_wv0, stride_wv1
    rotate = i_slot < n_q_heads + n_k_heads

    o_m = i_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_m = o_m < n_tokens
    o_p, m_p, o_d1, o_d2 = pair_dims(BLOCK_P, HALF, INTERLEAVED)
    o_row1 = i_h.to(tl.int64) * HEAD_DIM + o_d1
    o_row2 = i_h.to(tl.int64) * HEAD_DIM + o_d2

    acc1 = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < hidden
        b_x = tl.load(p_x + o_m[:, None] * stride_xn + o_k[None, :] * stride_xk,
                      mask=m_m[:, None] & m_k[None, :], other=0.0)
        m_w = m_k[:, None] & m_p[None, :]
        b_w1 = tl.load(p_w + o_row1[None, :] * stride_w0 + o_k[:, None] * stride_w1, mask=m_w, other=0.0)
        b_w2 = tl.load(p_w + o_row2[None, :] * stride_w0 + o_k[:, None] * stride_w1, mask=m_w, other=0.0)
        acc1 = _dot(b_x, b_w1, acc1, IEEE, UPCAST)
        acc2 = _dot(b_x, b_w2, acc2, IEEE, UPCAST)

    if HAS_BIAS:
        acc1 += tl.load(p_b + o_row1, mask=m_p, other=0.0).to(tl.float32)[None, :]
        acc2 += tl.load(p_b + o_row2, mask=m_p, other=0.0).to(tl.float32)[None, :]

    b_pos = tl.load(p_pos + o_m, mask=m_m, other=0).to(tl.int64)
    b_phase = tl.load(p_phase + o_p, mask=m_p, other=0)
    b_cos, b_sin = exact_cos_sin(b_pos, b_phase)
    b_y1 = tl.where(rotate, acc1 * b_cos - acc2 * b_sin, acc1)
    b_y2 = tl.where(rotate, acc2 * b_cos + acc1 * b_sin, acc2)

    o_out = o_m[:, None] * (n_heads * HEAD_DIM)
    m_out = m_m[:, None] & m_p[None, :]
    tl.store(p_o + o_out + o_row1[None, :], b_y1.to(p_o.dtype.element_ty), mask=m_out)
    tl.store(p_o + o_out + o_row2[None, :], b_y2.to(p_o.dtype.element_ty), mask=m_out)


def qkv_rope_projection_triton(
    x: torch.Tensor,
    weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    biases: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
    outs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    phases: torch.Tensor,
    positions: torch.Tensor,
    interleaved: bool,
) -> None:
    """x ``[N, hidden]``, weights ``[H*D, hidden]`` (w_v may be None), biases ``[H*D]`` or None,
    outs contiguous ``[N, H, D]`` (v: ``[N, 0, D]`` when w_v is None), positions ``[N]`` int."""
    n_tokens, hidden = x.shape
    out_q, out_k, out_v = outs
    head_dim = out_q.shape[-1]
    heads = (out_q.shape[1], out_k.shape[1], out_v.shape[1])
    if n_tokens == 0 or sum(heads) == 0:
        return
    w_q, w_k, w_v = weights
    w_v = w_q if w_v is None else w_v
    has_bias = any(b is not None for b in biases)
    b_q, b_k, b_v = (b if b is not None else (torch.zeros(w.shape[0], device=x.device, dtype=x.dtype) if has_bias else w)
                     for b, w in zip(biases, (w_q, w_k, w_v)))
    half = phases.numel()

    def grid(meta):
        return (triton.cdiv(n_tokens, meta["BLOCK_M"]) * sum(heads),)

    qkv_rope_projection_kernel[grid](
        x, w_q, w_k, w_v, b_q, b_k, b_v, out_q, out_k, out_v, phases, positions,
        n_tokens, hidden, *heads, triton.next_power_of_2(n_tokens),
        *x.stride(), *w_q.stride(), *w_k.stride(), *w_v.stride(),
        HEAD_DIM=head_dim, HALF=half, BLOCK_P=max(16, triton.next_power_of_2(half)),
        INTERLEAVED=interleaved, HAS_BIAS=has_bias, IEEE=x.dtype == torch.float32,
        UPCAST=triton_interpreted(),
    )

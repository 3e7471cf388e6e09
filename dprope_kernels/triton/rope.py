"""Triton RoPE kernel with exact fixed-point angles (forward and, with CONJUGATE, backward).

One launch rotates q and k: grid axis 1 picks the tensor (0 = q, 1 = k). Each program takes
BLOCK_T tokens, forms their angles once from the int64 phase table and the token positions
(``angle = (pos * phase mod 2**64)`` read as a signed fraction of a turn), and loops over the
heads of its tensor, so no cos/sin cache is built or read.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backends import triton_interpreted
from .common import exact_cos_sin, pair_dims


@triton.jit
def _rotate_heads(
    p_x, p_o, b_cos, b_sin, o_tok_x, o_tok_o, m_t, n_heads,
    stride_xh, stride_xd, stride_oh, stride_od,
    HALF: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr,
    INTERLEAVED: tl.constexpr,
):
    _, m_p, o_d1, o_d2 = pair_dims(BLOCK_P, HALF, INTERLEAVED)
    for h0 in range(0, n_heads, BLOCK_H):
        o_h = h0 + tl.arange(0, BLOCK_H)
        m = m_t[:, None, None] & (o_h < n_heads)[None, :, None] & m_p[None, None, :]
        o_xh = o_tok_x[:, None, None] + o_h.to(tl.int64)[None, :, None] * stride_xh
        o_oh = o_tok_o[:, None, None] + o_h.to(tl.int64)[None, :, None] * stride_oh
        b_x1 = tl.load(p_x + o_xh + o_d1[None, None, :] * stride_xd, mask=m, other=0.0).to(tl.float32)
        b_x2 = tl.load(p_x + o_xh + o_d2[None, None, :] * stride_xd, mask=m, other=0.0).to(tl.float32)
        b_y1 = b_x1 * b_cos[:, None, :] - b_x2 * b_sin[:, None, :]
        b_y2 = b_x2 * b_cos[:, None, :] + b_x1 * b_sin[:, None, :]
        tl.store(p_o + o_oh + o_d1[None, None, :] * stride_od, b_y1.to(p_o.dtype.element_ty), mask=m)
        tl.store(p_o + o_oh + o_d2[None, None, :] * stride_od, b_y2.to(p_o.dtype.element_ty), mask=m)


@triton.jit
def rope_kernel(
    p_q, p_k, p_oq, p_ok, p_phase, p_pos,
    n_tokens, seq_len, n_q_heads, n_k_heads,
    stride_qb, stride_qt, stride_qh, stride_qd,
    stride_kb, stride_kt, stride_kh, stride_kd,
    stride_oqb, stride_oqt, stride_oqh, stride_oqd,
    stride_okb, stride_okt, stride_okh, stride_okd,
    stride_pb, stride_pt,
    HALF: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_H: tl.constexpr,
    INTERLEAVED: tl.constexpr, CONJUGATE: tl.constexpr,
):
    i_t = tl.program_id(0)
    i_x = tl.program_id(1)
    o_t = i_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    m_t = o_t < n_tokens
    o_b = o_t // seq_len
    o_s = o_t % seq_len
    b_pos = tl.load(p_pos + o_b * stride_pb + o_s * stride_pt, mask=m_t, other=0).to(tl.int64)
    o_p = tl.arange(0, BLOCK_P)
    b_phase = tl.load(p_phase + o_p, mask=o_p < HALF, other=0)
    b_cos, b_sin = exact_cos_sin(b_pos, b_phase)
    if CONJUGATE:
        b_sin = -b_sin
    if i_x == 0:
        _rotate_heads(
            p_q, p_oq, b_cos, b_sin, o_b * stride_qb + o_s * stride_qt, o_b * stride_oqb + o_s * stride_oqt,
            m_t, n_q_heads, stride_qh, stride_qd, stride_oqh, stride_oqd,
            HALF, BLOCK_P, BLOCK_H, INTERLEAVED,
        )
    else:
        _rotate_heads(
            p_k, p_ok, b_cos, b_sin, o_b * stride_kb + o_s * stride_kt, o_b * stride_okb + o_s * stride_okt,
            m_t, n_k_heads, stride_kh, stride_kd, stride_okh, stride_okd,
            HALF, BLOCK_P, BLOCK_H, INTERLEAVED,
        )


def rope_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    out_q: torch.Tensor,
    out_k: torch.Tensor,
    phases: torch.Tensor,
    positions: torch.Tensor,
    interleaved: bool,
    conjugate: bool,
) -> None:
    """Rotate the first ``2 * len(phases)`` dims of q ``[B, T, Hq, D]`` and k ``[B, T, Hk, D]``
    into ``out_q`` / ``out_k`` (may alias the inputs). ``positions``: ``[B, T]`` integer."""
    B, T, Hq, _ = q.shape
    Hk = k.shape[2]
    half = phases.numel()
    n_tokens = B * T
    if n_tokens == 0 or (Hq == 0 and Hk == 0):
        return
    block_p = triton.next_power_of_2(half)
    if triton_interpreted():
        block_t, block_h, warps = 16, 4, 1
    else:
        # ~4K elements per (token block x head block) tile keeps registers in check
        block_h = min(triton.next_power_of_2(max(Hq, Hk, 1)), 8)
        block_t = max(1, min(64, 4096 // (block_p * block_h)))
        warps = 4
    grid = (triton.cdiv(n_tokens, block_t), 2 if Hk > 0 else 1)
    rope_kernel[grid](
        q, k, out_q, out_k, phases, positions,
        n_tokens, T, Hq, Hk,
        *q.stride(), *k.stride(), *out_q.stride(), *out_k.stride(),
        *positions.stride(),
        HALF=half, BLOCK_T=block_t, BLOCK_P=block_p, BLOCK_H=block_h,
        INTERLEAVED=interleaved, CONJUGATE=conjugate, num_warps=warps,
    )

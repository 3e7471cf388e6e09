"""Triton RoPE kernel with exact fixed-point angles (forward and, with ``sign = -1``, backward).

Grid ``(token blocks, B, tensors)``: axis 2 picks q (0) or k (1). A program takes ``BLOCK_T``
tokens of one sequence, evaluates their ``[BLOCK_T, half]`` cos/sin once from the int64 phase
table and the positions, then loops over every head of its tensor with 2-D tiles in the same
layout, so no cos/sin cache is built or read and no angle is evaluated twice. The input and
output pairings are separate (DeepSeek-V3 reads GPT-J pairs and writes NeoX halves). An attention
factor ``scale`` multiplies the tile's cos/sin once (exact at 1.0).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backends import triton_interpreted
from .common import exact_cos_sin, load_pairs, store_pairs

MAX_GRID_Y = 65535
TILE_PAIRS = 1024  # pairs per (token block x head) tile: 8 per thread at 4 warps
PAIRS_PER_THREAD = 8  # 16 bytes of each half per thread (fp16/bf16): one vector load/store
# Triton 3.6 gave the pairing-changing variants (GPT-J in, NeoX out) 72 registers (44% occupancy);
# a cap of 64 keeps 50%. Only there: a cap makes ptxas spend up to it elsewhere too (40 -> 52).
# maxnreg is an NVIDIA-only compile option (ROCm's Triton refuses the keyword).
PAIRING_CHANGE_REGISTER_LIMIT = {} if torch.version.hip else {"maxnreg": 64}


@triton.jit
def rope_kernel(
    p_q, p_k, p_oq, p_ok, p_phase, p_pos, sign, scale,
    T, n_q_heads, n_k_heads,
    stride_qb, stride_qt, stride_qh, stride_qd,
    stride_kb, stride_kt, stride_kh, stride_kd,
    stride_oqb, stride_oqt, stride_oqh, stride_oqd,
    stride_okb, stride_okt, stride_okh, stride_okd,
    stride_pb, stride_pt,
    HALF: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr,
    IN_INTERLEAVED: tl.constexpr, OUT_INTERLEAVED: tl.constexpr,
):
    i_t, i_b, i_x = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t0 = i_t * BLOCK_T
    o_t = tl.arange(0, BLOCK_T)  # tile offsets are int32; the block's base is int64 below
    m_t = (t0 + o_t) < T
    o_p = tl.arange(0, BLOCK_P)
    p_pos_row = p_pos + i_b.to(tl.int64) * stride_pb + t0.to(tl.int64) * stride_pt
    b_pos = tl.load(p_pos_row + o_t * stride_pt, mask=m_t, other=0)
    b_phase = tl.load(p_phase + o_p, mask=o_p < HALF, other=0)
    b_cos, b_sin = exact_cos_sin(b_pos, b_phase)
    b_cos = b_cos * scale
    b_sin = b_sin * (sign * scale)

    if i_x == 0:
        p_x, p_o, n_heads = p_q, p_oq, n_q_heads
        s_xb, s_xt, s_xh, s_xd = stride_qb, stride_qt, stride_qh, stride_qd
        s_ob, s_ot, s_oh, s_od = stride_oqb, stride_oqt, stride_oqh, stride_oqd
    else:
        p_x, p_o, n_heads = p_k, p_ok, n_k_heads
        s_xb, s_xt, s_xh, s_xd = stride_kb, stride_kt, stride_kh, stride_kd
        s_ob, s_ot, s_oh, s_od = stride_okb, stride_okt, stride_okh, stride_okd
    p_x = p_x + i_b.to(tl.int64) * s_xb + t0.to(tl.int64) * s_xt
    p_o = p_o + i_b.to(tl.int64) * s_ob + t0.to(tl.int64) * s_ot
    m = m_t[:, None]
    for _ in range(n_heads):  # the head's base pointers step by the head strides
        b_x1, b_x2 = load_pairs(p_x + o_t[:, None] * s_xt, o_p, m, s_xd, HALF, BLOCK_P, IN_INTERLEAVED)
        b_y1 = b_x1 * b_cos - b_x2 * b_sin
        b_y2 = b_x2 * b_cos + b_x1 * b_sin
        store_pairs(p_o + o_t[:, None] * s_ot, o_p, m, s_od, b_y1, b_y2, HALF, BLOCK_P, OUT_INTERLEAVED)
        p_x += s_xh
        p_o += s_oh


def rope_tiles(half: int, seq_len: int) -> tuple[int, int, int]:
    """``(BLOCK_T, BLOCK_P, num_warps)`` for ``half`` pairs and ``seq_len`` tokens: a tile holds
    at least 8 pairs per thread (16-byte vectors), at most 1024 pairs (4 warps)."""
    block_p = triton.next_power_of_2(half)
    smallest = max(1, 32 * PAIRS_PER_THREAD // block_p)
    block_t = max(smallest, min(TILE_PAIRS // block_p, triton.next_power_of_2(max(seq_len, 1))))
    if triton_interpreted():
        return min(block_t, 16), block_p, 1
    return block_t, block_p, max(1, block_t * block_p // (32 * PAIRS_PER_THREAD))


def rope_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    out_q: torch.Tensor,
    out_k: torch.Tensor,
    phases: torch.Tensor,
    positions: torch.Tensor,
    in_interleaved: bool,
    out_interleaved: bool,
    conjugate: bool,
    scale: float = 1.0,
) -> None:
    """Rotate the first ``2 * len(phases)`` dims of q ``[B, T, Hq, D]`` and k ``[B, T, Hk, D]``
    into ``out_q`` / ``out_k``, with cos/sin times ``scale``. ``positions``: ``[B, T]`` int32/int64
    (any strides).

    ``out_*`` may alias the input only when both pairings are equal (every element is read
    before it is written by the same program)."""
    B, T, Hq, _ = q.shape
    Hk = k.shape[2]
    half = phases.numel()
    if B * T == 0 or (Hq == 0 and Hk == 0):
        return
    if T == 1 and B > 1:  # a decode step: the batch becomes the token axis, so tiles fill up
        q, k, out_q, out_k, positions = (t.transpose(0, 1) for t in (q, k, out_q, out_k, positions))
        B, T = 1, B
    block_t, block_p, warps = rope_tiles(half, T)
    for b0 in range(0, B, MAX_GRID_Y):  # grid axis 1 holds at most 65535 sequences
        b1 = min(B, b0 + MAX_GRID_Y)
        sq, sk, soq, sok, sp = (t[b0:b1] for t in (q, k, out_q, out_k, positions))
        grid = (triton.cdiv(T, block_t), b1 - b0, 2 if Hk > 0 else 1)
        rope_kernel[grid](
            sq, sk, soq, sok, phases, sp, -1.0 if conjugate else 1.0, float(scale),
            T, Hq, Hk,
            *sq.stride(), *sk.stride(), *soq.stride(), *sok.stride(), *sp.stride(),
            HALF=half, BLOCK_T=block_t, BLOCK_P=block_p,
            IN_INTERLEAVED=in_interleaved, OUT_INTERLEAVED=out_interleaved, num_warps=warps,
            **(PAIRING_CHANGE_REGISTER_LIMIT if in_interleaved != out_interleaved else {}),
        )

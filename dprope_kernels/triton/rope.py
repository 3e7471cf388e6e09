"""Triton RoPE kernel with exact fixed-point angles (forward and, with ``sign = -1``, backward).

Grid ``(sequences x token blocks, head groups)``. A program takes ``BLOCK_T`` tokens of one
sequence and evaluates their ``[BLOCK_T, half]`` cos/sin once, from the int64 phase table and the
positions (no cos/sin cache is built or read); then it rotates q's head blocks ``g, g + G, ...``
(``G`` head groups), then k's, each block a ``[BLOCK_T, BLOCK_H, half]`` tile loaded and stored
whole, so a token's ``BLOCK_H * D`` adjacent elements travel together. Head groups exist for small
inputs (decode steps), where one group per token block would leave SMs idle. q and k are two
calls of :func:`rope_heads` with their own strides: no value passes from one to the other, so each
keeps its own specialization (int32 or int64 strides, a stride of 1). The input and output pairings
are separate (DeepSeek-V3 reads GPT-J pairs and writes NeoX halves). An attention factor ``scale``
multiplies the cos/sin once (exact at 1.0).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backends import triton_interpreted
from .common import exact_cos_sin, load_pairs, store_pairs

TILE_BYTES = 4096  # of each half of the pairs in a tile where the grid is large (2048 pairs in bf16)
VECTOR_BYTES = 16  # of each half per thread: one vector load/store (8 pairs in bf16, 4 in fp32)
MAX_WARPS = 8
MIN_PROGRAMS = 528  # fewer leave SMs idle (4 per SM on a 132-SM H100/H200): tiles shrink, groups split
HEAD_WASTE = 8  # a head block may leave at most 1/8 of the heads masked
INTERPRETER_MIN_PROGRAMS = 4
MAX_GRID_Y = 65535
# Triton 3.6 gave the pairing-changing variants (GPT-J in, NeoX out) 72 registers (44% occupancy);
# a cap of 64 keeps 50%. Only there: a cap makes ptxas spend up to it elsewhere too (40 -> 52).
# maxnreg is an NVIDIA-only compile option (ROCm's Triton refuses the keyword).
PAIRING_CHANGE_REGISTER_LIMIT = {} if torch.version.hip else {"maxnreg": 64}


@triton.jit
def rope_heads(
    p_x, p_o, b_cos, b_sin, i_b, o_t, m_t, i_g, n_groups, n_heads,
    s_xb, s_xt, s_xh, s_xd, s_ob, s_ot, s_oh, s_od,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
    IN_INTERLEAVED: tl.constexpr, OUT_INTERLEAVED: tl.constexpr,
):
    """Rotates head blocks ``i_g, i_g + n_groups, ...`` of x ``[B, T, n_heads, D]`` at tokens ``o_t``
    ``[BLOCK_T]`` (mask ``m_t``) of sequence ``i_b`` into o, by ``b_cos``/``b_sin``
    ``[BLOCK_T, 1, BLOCK_P]``."""
    r_t = o_t.to(tl.int64)[:, None, None]
    p_x = p_x + i_b * s_xb + r_t * s_xt
    p_o = p_o + i_b * s_ob + r_t * s_ot
    o_h = tl.arange(0, BLOCK_H)
    for h0 in range(i_g * BLOCK_H, n_heads, n_groups * BLOCK_H):
        m = m_t[:, None, None] & ((h0 + o_h) < n_heads)[None, :, None]
        r_h = (h0 + o_h).to(tl.int64)[None, :, None]
        b_x1, b_x2 = load_pairs(p_x + r_h * s_xh, m, s_xd, HALF, BLOCK_P, IN_INTERLEAVED)
        b_y1 = b_x1 * b_cos - b_x2 * b_sin
        b_y2 = b_x2 * b_cos + b_x1 * b_sin
        store_pairs(p_o + r_h * s_oh, m, s_od, b_y1, b_y2, HALF, BLOCK_P, OUT_INTERLEAVED)


@triton.jit
def rope_kernel(
    p_q, p_k, p_oq, p_ok, p_phase, p_pos, sign, scale,
    T, n_q_heads, n_k_heads,
    stride_qb, stride_qt, stride_qh, stride_qd,
    stride_kb, stride_kt, stride_kh, stride_kd,
    stride_oqb, stride_oqt, stride_oqh, stride_oqd,
    stride_okb, stride_okt, stride_okh, stride_okd,
    stride_pb, stride_pt,
    HALF: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
    IN_INTERLEAVED: tl.constexpr, OUT_INTERLEAVED: tl.constexpr,
):
    i_bt, i_g, n_groups = tl.program_id(0), tl.program_id(1), tl.num_programs(1)
    n_t = tl.cdiv(T, BLOCK_T)
    i_b = (i_bt // n_t).to(tl.int64)
    o_t = (i_bt % n_t) * BLOCK_T + tl.arange(0, BLOCK_T)
    m_t = o_t < T
    b_pos = tl.load(p_pos + i_b * stride_pb + o_t.to(tl.int64) * stride_pt, mask=m_t, other=0)
    o_p = tl.arange(0, BLOCK_P)
    b_phase = tl.load(p_phase + o_p, mask=o_p < HALF, other=0)
    b_cos, b_sin = exact_cos_sin(b_pos, b_phase)
    b_cos = (b_cos * scale)[:, None, :]
    b_sin = (b_sin * (sign * scale))[:, None, :]
    rope_heads(p_q, p_oq, b_cos, b_sin, i_b, o_t, m_t, i_g, n_groups, n_q_heads,
               stride_qb, stride_qt, stride_qh, stride_qd, stride_oqb, stride_oqt, stride_oqh, stride_oqd,
               HALF, BLOCK_H, BLOCK_P, IN_INTERLEAVED, OUT_INTERLEAVED)
    rope_heads(p_k, p_ok, b_cos, b_sin, i_b, o_t, m_t, i_g, n_groups, n_k_heads,
               stride_kb, stride_kt, stride_kh, stride_kd, stride_okb, stride_okt, stride_okh, stride_okd,
               HALF, BLOCK_H, BLOCK_P, IN_INTERLEAVED, OUT_INTERLEAVED)


def _head_block(heads: int, cap: int) -> int:
    """The largest power of two <= ``cap`` whose blocks leave at most 1/HEAD_WASTE of ``heads`` masked."""
    block = min(cap, triton.next_power_of_2(heads))
    while block > 1 and (triton.cdiv(heads, block) * block - heads) * HEAD_WASTE > heads:
        block //= 2
    return block


def rope_tiles(half: int, B: int, T: int, heads: tuple[int, int], element_size: int
               ) -> tuple[tuple[int, int], dict]:
    """``(grid, constexprs and num_warps)`` for ``half`` pairs, ``B`` sequences of ``T`` tokens,
    ``(Hq, Hk)`` heads and elements of ``element_size`` bytes. A tile holds ``TILE_BYTES`` of each
    half (a 16-byte vector per thread), its head block sized for the smaller head count; while the
    grid has fewer than ``MIN_PROGRAMS`` programs, the head blocks are split between groups, then
    the tiles halve (to one warp's worth)."""
    per_thread = VECTOR_BYTES // element_size
    block_p = triton.next_power_of_2(half)
    n_heads = min(h for h in heads if h) if any(heads) else 1
    # the interpreter's cost is per program: few, large ones (still more than one group at decode)
    min_programs = INTERPRETER_MIN_PROGRAMS if triton_interpreted() else MIN_PROGRAMS
    pairs = max(TILE_BYTES // element_size, block_p)
    while True:
        block_h = _head_block(n_heads, max(1, pairs // block_p))
        block_t = max(1, min(pairs // (block_h * block_p), triton.next_power_of_2(T)))
        blocks = max(triton.cdiv(h, block_h) for h in heads)
        token_blocks = B * triton.cdiv(T, block_t)
        groups = max(1, min(blocks, MAX_GRID_Y, triton.cdiv(min_programs, token_blocks)))
        if token_blocks * groups >= min_programs or pairs <= max(32 * per_thread, block_p):
            break
        pairs //= 2
    warps = max(1, min(MAX_WARPS, block_t * block_h * block_p // (32 * per_thread)))
    if triton_interpreted():
        warps = 1
    return (token_blocks, groups), dict(BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_P=block_p, num_warps=warps)


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
    grid, tiles = rope_tiles(half, B, T, (Hq, Hk), q.element_size())
    rope_kernel[grid](
        q, k, out_q, out_k, phases, positions, -1.0 if conjugate else 1.0, float(scale),
        T, Hq, Hk,
        *q.stride(), *k.stride(), *out_q.stride(), *out_k.stride(), *positions.stride(),
        HALF=half, IN_INTERLEAVED=in_interleaved, OUT_INTERLEAVED=out_interleaved, **tiles,
        **(PAIRING_CHANGE_REGISTER_LIMIT if in_interleaved != out_interleaved else {}),
    )

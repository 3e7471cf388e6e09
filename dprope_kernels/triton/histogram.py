"""Triton angle-histogram kernel: per-bin counts of exact angles, ``[n_freq, bins]`` int64.

Grid: (frequency, chunk of positions). Up to ``SUB_HISTOGRAM_BINS`` bins, a program sums
``tl.histogram`` of its positions' bins in registers and adds the sub-histogram to the global
counts with one atomic per bin. Above that (up to 2**24 bins), and with weights, each position
adds its count or weight to its bin with an atomic. Integer sums are exact in any order; float64
weight sums follow the atomics' order, so they can differ between runs in the last bits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backends import triton_interpreted

SUB_HISTOGRAM_BINS = 4096


@triton.jit
def histogram_kernel(
    p_phase, p_pos, p_weight, p_out, n_pos, start, chunk,
    BINS: tl.constexpr, BLOCK_BINS: tl.constexpr, BLOCK: tl.constexpr,
    HAS_POSITIONS: tl.constexpr, HAS_WEIGHTS: tl.constexpr, SUB_HISTOGRAM: tl.constexpr,
):
    i_f = tl.program_id(0)
    i_c = tl.program_id(1)
    b_phase = tl.load(p_phase + i_f)
    p_row = p_out + i_f.to(tl.int64) * BINS
    o_first = i_c.to(tl.int64) * chunk
    if SUB_HISTOGRAM:
        b_hist = tl.zeros([BLOCK_BINS], dtype=tl.int64)
    for o_block in range(0, chunk, BLOCK):
        o_n = o_first + o_block + tl.arange(0, BLOCK)
        m_n = o_n < n_pos
        if HAS_POSITIONS:
            b_pos = tl.load(p_pos + o_n, mask=m_n, other=0).to(tl.int64)
        else:
            b_pos = start + o_n
        b_turn = b_pos * b_phase
        b_bin = (((b_turn >> 32) & 0xFFFFFFFF) * BINS + (((b_turn & 0xFFFFFFFF) * BINS) >> 32)) >> 32
        if HAS_WEIGHTS:
            tl.atomic_add(p_row + b_bin, tl.load(p_weight + o_n, mask=m_n, other=0), mask=m_n)
        elif SUB_HISTOGRAM:
            b_hist += tl.histogram(b_bin.to(tl.int32), BLOCK_BINS, mask=m_n).to(tl.int64)
        else:
            tl.atomic_add(p_row + b_bin, tl.full([BLOCK], 1, tl.int64), mask=m_n)
    if SUB_HISTOGRAM:
        o_bins = tl.arange(0, BLOCK_BINS)
        tl.atomic_add(p_row + o_bins, b_hist, mask=o_bins < BINS)


def histogram_triton(phases: torch.Tensor, positions: torch.Tensor | None, n_pos: int, start: int,
                     bins: int, weights: torch.Tensor | None, out: torch.Tensor) -> None:
    """Accumulate into ``out`` ``[n_freq, bins]`` the bins of ``positions`` ``[n_pos]`` (or of
    ``start .. start + n_pos - 1`` when None), each counted once or with its weight."""
    n_freq = phases.numel()
    if n_freq == 0 or n_pos == 0:
        return
    block = 256 if triton_interpreted() else 1024
    chunk = max(block, triton.cdiv(triton.cdiv(n_pos, max(1, 4096 // n_freq)), block) * block)
    grid = (n_freq, triton.cdiv(n_pos, chunk))
    sub_histogram = weights is None and bins <= SUB_HISTOGRAM_BINS
    histogram_kernel[grid](
        phases, positions if positions is not None else phases, weights if weights is not None else phases,
        out, n_pos, start, chunk,
        BINS=bins, BLOCK_BINS=triton.next_power_of_2(bins) if sub_histogram else 1, BLOCK=block,
        HAS_POSITIONS=positions is not None, HAS_WEIGHTS=weights is not None, SUB_HISTOGRAM=sub_histogram,
    )

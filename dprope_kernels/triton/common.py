"""Pieces every Triton RoPE kernel shares: the exact angle's cos/sin and the pairing of dims.

The angle of position ``m`` for a frequency held as the fixed-point phase ``p`` is
``(m * p mod 2**64) / 2**64`` turns: an integer product that wraps. Its cos/sin are evaluated
without any large-argument range reduction: the top two bits (rounded) of the turn pick the
quadrant, the remaining 62 bits are the offset from it (an exact integer step), so the only
floating-point work is one int64 -> fp32 conversion of ``|offset| <= 2**61`` and a short
polynomial on ``[-pi/4, pi/4]`` (Cephes' sinf/cosf coefficients). Error: below 2.5e-7 absolute
for every angle (the test sweeps all quadrants).
"""

import triton
import triton.language as tl

# 2 pi / 2**64: scales the signed 62-bit offset to radians
RADIANS_PER_TURN_UNIT = tl.constexpr(3.4061215800865545e-19)


@triton.jit
def sincos_of_turn(b_turn):
    """``(cos, sin)`` fp32 of angles given as int64 fractions of a turn (``turn / 2**64``)."""
    b_shifted = b_turn + (1 << 61)  # wraps: rounds to the nearest quadrant below
    b_quadrant = (b_shifted >> 62) & 3
    b_offset = (b_shifted & ((1 << 62) - 1)) - (1 << 61)  # in [-2**61, 2**61): exact
    b_x = b_offset.to(tl.float32) * RADIANS_PER_TURN_UNIT  # |x| <= pi / 4
    b_z = b_x * b_x
    b_sin = b_x + b_x * b_z * (-1.6666654611e-1 + b_z * (8.3321608736e-3 + b_z * -1.9515295891e-4))
    b_cos = 1.0 - 0.5 * b_z + b_z * b_z * (4.166664568298827e-2 + b_z * (-1.388731625493765e-3
                                                                             + b_z * 2.443315711809948e-5))
    b_odd = (b_quadrant & 1) != 0
    b_c = tl.where(b_odd, b_sin, b_cos)
    b_s = tl.where(b_odd, b_cos, b_sin)
    b_c = tl.where(((b_quadrant + 1) & 2) != 0, -b_c, b_c)  # quadrants 1, 2
    b_s = tl.where((b_quadrant & 2) != 0, -b_s, b_s)  # quadrants 2, 3
    return b_c, b_s


@triton.jit
def exact_cos_sin(b_pos, b_phase):
    """cos and sin ``[len(b_pos), len(b_phase)]`` fp32 of the exact angles ``pos * phase mod 2**64`` turns."""
    b_turn = b_pos.to(tl.int64)[:, None] * b_phase.to(tl.int64)[None, :]  # wraps mod 2**64
    return sincos_of_turn(b_turn)


@triton.jit
def load_pairs(p_row, m, stride_d, HALF: tl.constexpr, BLOCK_P: tl.constexpr, INTERLEAVED: tl.constexpr):
    """The two dims of each pair, fp32 ``([BLOCK_T, BLOCK_H, BLOCK_P], ..)``, from rows ``p_row`` and
    their mask ``m`` ``[BLOCK_T, BLOCK_H, 1]``: GPT-J ``(2p, 2p + 1)`` read as one contiguous run,
    NeoX ``(p, p + HALF)``. Offsets along the row are int64 (no stride can overflow them)."""
    if INTERLEAVED:
        o_d = tl.arange(0, 2 * BLOCK_P)[None, None, :]
        m_2 = m & (o_d < 2 * HALF)
        b_x = tl.load(p_row + o_d.to(tl.int64) * stride_d, mask=m_2, other=0.0).to(tl.float32)
        b_x1, b_x2 = tl.split(tl.reshape(b_x, (b_x.shape[0], b_x.shape[1], BLOCK_P, 2)))
    else:
        o_p = tl.arange(0, BLOCK_P)[None, None, :]
        m_p = m & (o_p < HALF)
        b_x1 = tl.load(p_row + o_p.to(tl.int64) * stride_d, mask=m_p, other=0.0).to(tl.float32)
        b_x2 = tl.load(p_row + (o_p + HALF).to(tl.int64) * stride_d, mask=m_p, other=0.0).to(tl.float32)
    return b_x1, b_x2


@triton.jit
def store_pairs(p_row, m, stride_d, b_y1, b_y2, HALF: tl.constexpr, BLOCK_P: tl.constexpr,
                INTERLEAVED: tl.constexpr):
    """Writes pairs ``(b_y1, b_y2)`` ``[BLOCK_T, BLOCK_H, BLOCK_P]`` into rows ``p_row`` (as
    :func:`load_pairs` reads)."""
    dtype = p_row.dtype.element_ty
    if INTERLEAVED:
        o_d = tl.arange(0, 2 * BLOCK_P)[None, None, :]
        b_y = tl.reshape(tl.join(b_y1, b_y2), (b_y1.shape[0], b_y1.shape[1], 2 * BLOCK_P))
        tl.store(p_row + o_d.to(tl.int64) * stride_d, b_y.to(dtype), mask=m & (o_d < 2 * HALF))
    else:
        o_p = tl.arange(0, BLOCK_P)[None, None, :]
        m_p = m & (o_p < HALF)
        tl.store(p_row + o_p.to(tl.int64) * stride_d, b_y1.to(dtype), mask=m_p)
        tl.store(p_row + (o_p + HALF).to(tl.int64) * stride_d, b_y2.to(dtype), mask=m_p)

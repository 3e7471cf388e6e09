"""Pieces every Triton RoPE kernel shares: the pairing of dims and the exact angle."""

import triton
import triton.language as tl


@triton.jit
def pair_dims(BLOCK_P: tl.constexpr, HALF: tl.constexpr, INTERLEAVED: tl.constexpr):
    """``(o_p, m_p, o_d1, o_d2)``: pair ids, their mask, and the two dims each pair rotates
    (GPT-J ``2p, 2p+1``; NeoX ``p, p + HALF``)."""
    o_p = tl.arange(0, BLOCK_P)
    m_p = o_p < HALF
    if INTERLEAVED:
        o_d1 = 2 * o_p
        o_d2 = 2 * o_p + 1
    else:
        o_d1 = o_p
        o_d2 = o_p + HALF
    return o_p, m_p, o_d1, o_d2


@triton.jit
def exact_cos_sin(b_pos, b_phase):
    """cos and sin ``[len(b_pos), len(b_phase)]`` fp32 of the exact angles ``pos * phase mod 2**64`` turns."""
    b_turn = b_pos.to(tl.int64)[:, None] * b_phase[None, :]  # wraps mod 2**64: the exact angle in turns
    b_angle = b_turn.to(tl.float32) * 3.4061215800865545e-19  # 2 pi / 2**64
    return tl.cos(b_angle), tl.sin(b_angle)

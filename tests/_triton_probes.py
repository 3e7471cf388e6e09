"""Triton kernels that expose the shared device helpers to the tests."""

import triton
import triton.language as tl

from dprope_kernels.triton.common import sincos_of_turn


@triton.jit
def sincos_kernel(p_turn, p_cos, p_sin, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    b_cos, b_sin = sincos_of_turn(tl.load(p_turn + o, mask=m, other=0))
    tl.store(p_cos + o, b_cos, mask=m)
    tl.store(p_sin + o, b_sin, mask=m)

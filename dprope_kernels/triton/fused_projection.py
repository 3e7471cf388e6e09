"""Triton q/k(/v) projection GEMM with (q/k norm and) RoPE in its epilogue.

One launch computes every head of q, k and v into one packed ``[N, Hq + Hk + Hv, D]`` output. A
program owns ``BLOCK_M`` tokens x one head: it accumulates the head's ``[BLOCK_M, D]`` tile in
fp32 (columns ordered so the pairs split by a reshape), then in the epilogue adds the bias,
applies the per-head RMSNorm (when given: Qwen3 / Gemma 3 style), rotates q and k heads by the
exact angle ``pos * phase mod 2**64`` (cos/sin times the attention factor ``scale``) and stores
each element once. v heads skip the norm and the trigonometry (runtime branches, so with or
without bias, norm or v is one compiled kernel).

A norm across all heads of a token (OLMo2) cannot finish inside one head's program: the epilogue
applies the weight, rotates, and writes the head's sum of squares to ``ss`` ``[N, Hq + Hk]``;
the caller scales each token's q (k) by ``rsqrt(mean + eps)`` afterwards (a rotation leaves the
sum of squares alone, so the scale commutes with it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backends import triton_interpreted
from ..errors import InvalidValue
from .common import exact_cos_sin

DECODE_TOKENS = 64  # token counts up to this use the decode configurations
MAX_HEAD_DIM = 256
MAX_TILE_ROWS = 256  # a tile's rows: BLOCK_M tokens of x, BLOCK_D (<= MAX_HEAD_DIM) rows of a weight

# (BLOCK_M, BLOCK_K, warps, stages) per (fp32 inputs, decode-sized, head dim bucket 64/128/256):
# every set compiles without spills and fits shared memory on sm_80 and sm_90
# (python -m dprope_kernels.commands.aot checks each one; tests/test_compiled.py runs it in CI)
_LARGE = [(128, 64, 8, 3), (128, 32, 8, 4), (64, 64, 4, 4), (64, 32, 4, 5), (64, 64, 8, 3)]
_DECODE = [(16, 128, 4, 4), (32, 64, 4, 4)]
CONFIGS = {
    (False, False, 64): _LARGE, (False, False, 128): _LARGE,
    (False, False, 256): [(64, 64, 8, 3), (64, 32, 8, 4)],
    (False, True, 64): _DECODE, (False, True, 128): _DECODE,
    (False, True, 256): [(16, 64, 4, 3), (32, 64, 4, 3)],
    (True, False, 64): [(128, 32, 8, 4), (64, 32, 4, 5), (64, 32, 8, 4)],
    (True, False, 128): [(64, 32, 8, 4), (64, 16, 8, 4), (64, 16, 4, 5)],
    (True, False, 256): [(64, 16, 8, 4), (32, 32, 8, 4)],
    (True, True, 64): [(16, 32, 4, 4), (32, 32, 4, 4)],
    (True, True, 128): [(16, 32, 4, 4), (32, 32, 4, 4)],
    (True, True, 256): [(16, 32, 8, 4), (16, 16, 4, 4)],
}


def _config(m, k, warps, stages):
    return triton.Config({"BLOCK_M": m, "BLOCK_K": k, "GROUP_M": 8}, num_warps=warps, num_stages=stages)


def _configs() -> list[triton.Config]:
    if triton_interpreted():
        return [_config(16, 32, 1, 1)]
    return [_config(*c) for c in sorted({c for group in CONFIGS.values() for c in group})]


def prune_configs(configs, named_args, **kwargs):
    """The configs the autotuner may try for these arguments: fp32 or not, decode-sized token
    count or not, and the head dim's bucket (see ``CONFIGS``)."""
    if triton_interpreted():
        return configs
    args = {**named_args, **kwargs}
    bucket = max(64, args["BLOCK_D"])
    wanted = set(CONFIGS[(args["p_x"].element_size() >= 4, args["TOKENS_BUCKET"] <= DECODE_TOKENS, bucket)])
    return [c for c in configs
            if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages) in wanted]


@triton.jit
def _dot(b_a, b_b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:  # the interpreter has no bf16 arithmetic
        b_a = b_a.to(tl.float32)
        b_b = b_b.to(tl.float32)
    return tl.dot(b_a, b_b, acc, input_precision=PRECISION)


@triton.jit
def _column_dims(BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, INTERLEAVED: tl.constexpr):
    """``(dim, valid)`` of each accumulator column: GPT-J keeps the head's order; NeoX puts dim
    ``p`` at column ``p`` and dim ``p + D/2`` at column ``p + BLOCK_D/2``, so that a reshape to
    ``[.., 2, BLOCK_D/2]`` splits the pairs also when D is not a power of two."""
    o_c = tl.arange(0, BLOCK_D)
    if INTERLEAVED:
        return o_c, o_c < HEAD_DIM
    half_block: tl.constexpr = BLOCK_D // 2
    o_p = o_c % half_block
    return o_p + (o_c // half_block) * (HEAD_DIM // 2), o_p < HEAD_DIM // 2


@triton.jit
def _split_pairs(acc, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, INTERLEAVED: tl.constexpr):
    if INTERLEAVED:
        return tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_D // 2, 2)))
    return tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_D // 2)), (0, 2, 1)))


@triton.jit
def _join_pairs(b_y1, b_y2, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, INTERLEAVED: tl.constexpr):
    b_y = tl.join(b_y1, b_y2)
    if INTERLEAVED:
        return tl.reshape(b_y, (BLOCK_M, BLOCK_D))
    return tl.reshape(tl.permute(b_y, (0, 2, 1)), (BLOCK_M, BLOCK_D))


@triton.autotune(configs=_configs(), key=["hidden", "HEAD_DIM", "TOKENS_BUCKET"],
                 prune_configs_by={"early_config_prune": prune_configs})
@triton.jit(do_not_specialize=["bias_mask", "norm_mask", "row_norm_mask"])
def qkv_rope_projection_kernel(
    p_x, p_wq, p_wk, p_wv, p_bq, p_bk, p_bv, p_nq, p_nk, p_out, p_ss, p_phase, p_pos,
    n_tokens, hidden, n_q_heads, n_k_heads, n_v_heads, bias_mask, norm_mask, row_norm_mask, norm_eps, scale,
    TOKENS_BUCKET,
    stride_xn, stride_xk, stride_wq0, stride_wq1, stride_wk0, stride_wk1, stride_wv0, stride_wv1, stride_on,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, INTERLEAVED: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
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
        proj, i_h = 0, i_slot
        p_w, p_b, p_n, stride_w0, stride_w1 = p_wq, p_bq, p_nq, stride_wq0, stride_wq1
    elif i_slot < n_q_heads + n_k_heads:
        proj, i_h = 1, i_slot - n_q_heads
        p_w, p_b, p_n, stride_w0, stride_w1 = p_wk, p_bk, p_nk, stride_wk0, stride_wk1
    else:
        proj, i_h = 2, i_slot - n_q_heads - n_k_heads
        p_w, p_b, p_n, stride_w0, stride_w1 = p_wv, p_bv, p_nq, stride_wv0, stride_wv1
    rotate = proj < 2

    m0 = i_m * BLOCK_M
    o_m = tl.arange(0, BLOCK_M)  # tile offsets int32; block bases int64
    m_m = (m0 + o_m) < n_tokens
    o_dim, m_c = _column_dims(BLOCK_D, HEAD_DIM, INTERLEAVED)
    p_x = p_x + m0.to(tl.int64) * stride_xn
    p_w = p_w + i_h.to(tl.int64) * HEAD_DIM * stride_w0

    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < hidden
        b_x = tl.load(p_x + o_m[:, None] * stride_xn + o_k[None, :] * stride_xk,
                      mask=m_m[:, None] & m_k[None, :], other=0.0)
        b_w = tl.load(p_w + o_dim[None, :] * stride_w0 + o_k[:, None] * stride_w1,
                      mask=m_k[:, None] & m_c[None, :], other=0.0)
        acc = _dot(b_x, b_w, acc, PRECISION, UPCAST)

    if ((bias_mask >> proj) & 1) != 0:
        acc += tl.load(p_b + i_h.to(tl.int64) * HEAD_DIM + o_dim, mask=m_c, other=0.0).to(tl.float32)[None, :]
    o_out = p_out + m0.to(tl.int64) * stride_on + i_slot.to(tl.int64) * HEAD_DIM + o_m[:, None] * stride_on \
        + o_dim[None, :]
    m_out = m_m[:, None] & m_c[None, :]
    if rotate:
        if ((norm_mask >> proj) & 1) != 0:  # per-head RMSNorm in fp32, before the rotation
            b_rms = tl.rsqrt(tl.sum(acc * acc, axis=1) / HEAD_DIM + norm_eps)
            b_nw = tl.load(p_n + o_dim, mask=m_c, other=0.0).to(tl.float32)
            acc = acc * b_rms[:, None] * b_nw[None, :]
        if ((row_norm_mask >> proj) & 1) != 0:  # a norm across heads: this head's sum of squares, its weights
            n_rot = n_q_heads + n_k_heads
            tl.store(p_ss + m0.to(tl.int64) * n_rot + o_m * n_rot + i_slot, tl.sum(acc * acc, axis=1),
                     mask=m_m)
            b_nw = tl.load(p_n + i_h.to(tl.int64) * HEAD_DIM + o_dim, mask=m_c, other=0.0).to(tl.float32)
            acc = acc * b_nw[None, :]
        b_a1, b_a2 = _split_pairs(acc, BLOCK_M, BLOCK_D, INTERLEAVED)
        b_pos = tl.load(p_pos + m0 + o_m, mask=m_m, other=0)
        b_phase = tl.load(p_phase + tl.arange(0, BLOCK_D // 2),
                          mask=tl.arange(0, BLOCK_D // 2) < HEAD_DIM // 2, other=0)
        b_cos, b_sin = exact_cos_sin(b_pos, b_phase)
        b_cos = b_cos * scale
        b_sin = b_sin * scale
        b_y1 = b_a1 * b_cos - b_a2 * b_sin
        b_y2 = b_a2 * b_cos + b_a1 * b_sin
        tl.store(o_out, _join_pairs(b_y1, b_y2, BLOCK_M, BLOCK_D, INTERLEAVED).to(p_out.dtype.element_ty),
                 mask=m_out)
    else:
        tl.store(o_out, acc.to(p_out.dtype.element_ty), mask=m_out)


def _int32_offsets(*matrices: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The ``[rows, cols]`` matrices, each copied contiguous where the kernel's int32 offsets within a
    tile (up to MAX_TILE_ROWS rows, all columns) could overflow or its columns are not adjacent: then
    every stride the kernel sees is an int32 (contiguous rows are at most ``2**31 / 256`` apart)."""
    limit = 2**31 - 1
    return [m if m is None or (m.stride(1) == 1 and m.stride(0) * MAX_TILE_ROWS <= limit)
            or (m.stride(0) * MAX_TILE_ROWS <= limit and m.stride(1) * m.shape[1] <= limit)
            else m.contiguous() for m in matrices]


def qkv_rope_projection_triton(
    x: torch.Tensor,
    weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    biases: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
    norm_weights: tuple[torch.Tensor | None, torch.Tensor | None],
    norm_eps: float,
    out: torch.Tensor,
    ss: torch.Tensor,
    heads: tuple[int, int, int],
    phases: torch.Tensor,
    positions: torch.Tensor,
    interleaved: bool,
    scale: float = 1.0,
) -> None:
    """x ``[N, hidden]``; weights ``[H*D, hidden]`` (w_v may be None); biases ``[H*D]`` or None;
    norm weights for q and/or k or None: ``[D]`` per head, ``[H*D]`` across heads (the head sums
    of squares go to ``ss`` ``[N, Hq + Hk]`` fp32); out ``[N, Hq + Hk + Hv, D]`` (rows may be
    strided, heads contiguous); positions ``[N]`` int64; q and k come out times ``scale``."""
    n_tokens, hidden = x.shape
    head_dim = out.shape[-1]
    x, *weights = _int32_offsets(x, *weights)
    if head_dim > MAX_HEAD_DIM:
        raise InvalidValue(f"the triton fused projection takes head_dim <= {MAX_HEAD_DIM}, got {head_dim}")
    if n_tokens == 0 or sum(heads) == 0:
        return
    w_q, w_k, w_v = weights
    w_v = w_q if w_v is None else w_v
    bias_mask = sum(1 << i for i, b in enumerate(biases) if b is not None)
    b_q, b_k, b_v = (b if b is not None else x for b in biases)
    norm_mask = sum(1 << i for i, n in enumerate(norm_weights) if n is not None and n.numel() == head_dim)
    row_norm_mask = sum(1 << i for i, n in enumerate(norm_weights) if n is not None and n.numel() != head_dim)
    n_q, n_k = (n if n is not None else x for n in norm_weights)
    precision = "tf32x3" if x.dtype == torch.float32 else "tf32"

    def grid(meta):
        return (triton.cdiv(n_tokens, meta["BLOCK_M"]) * sum(heads),)

    qkv_rope_projection_kernel[grid](
        x, w_q, w_k, w_v, b_q, b_k, b_v, n_q, n_k, out,
        ss if ss.numel() else out.new_empty(1, dtype=torch.float32), phases, positions,
        n_tokens, hidden, *heads, bias_mask, norm_mask, row_norm_mask, float(norm_eps), float(scale),
        triton.next_power_of_2(n_tokens),
        *x.stride(), *w_q.stride(), *w_k.stride(), *w_v.stride(), out.stride(0),
        HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)), INTERLEAVED=interleaved,
        PRECISION=precision, UPCAST=triton_interpreted(),
    )

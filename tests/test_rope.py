"""apply_rope on every backend vs an fp64 reference with angles in rational arithmetic."""

import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import requires_cuda

import dprope_kernels as dk
from dprope_kernels.backends import unavailable
from dprope_kernels.ops.rope import _launch

PI = Fraction("3.14159265358979323846264338327950288419716939937510582097494459230781640628620899863")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REPO = Path(__file__).resolve().parents[1]
BACKENDS = [b for b in ("torch", "triton", "cuda") if unavailable(b, torch.device(DEVICE)) is None]
KERNELS = [b for b in BACKENDS if b != "torch"]
# relative to max(|x|, 1): fp32 kernels evaluate sin/cos to < 2.5e-7 and round the output once
TOL = {torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
PAIRINGS = {"neox": (False, False), "gptj": (True, True), "gptj-to-neox": (True, False),
            "neox-to-gptj": (False, True)}


def exact_angles(inv_freq, positions):
    """[B, T, half] float64 angles in [0, 2pi), from rationals: independent of the fixed point."""
    turns = [Fraction(float(f)) / (2 * PI) for f in inv_freq]
    out = [[[float((t * m - math.floor(t * m)) * 2 * PI) for t in turns] for m in row]
           for row in positions.tolist()]
    return torch.tensor(out, dtype=torch.float64)


def pair_dims(half, interleaved):
    i = torch.arange(half)
    return (2 * i, 2 * i + 1) if interleaved else (i, i + half)


def reference_rope(x, inv_freq, positions, interleaved=False, conjugate=False, output_interleaved=None):
    half = len(inv_freq)
    output_interleaved = interleaved if output_interleaved is None else output_interleaved
    angle = exact_angles(inv_freq, positions)[:, :, None, :]
    cos, sin = angle.cos(), (-1 if conjugate else 1) * angle.sin()
    x = x.double().cpu()
    out = x.clone()
    i1, i2 = pair_dims(half, interleaved)
    o1, o2 = pair_dims(half, output_interleaved)
    x1, x2 = x[..., i1], x[..., i2]
    out[..., o1] = x1 * cos - x2 * sin
    out[..., o2] = x2 * cos + x1 * sin
    return out


def table(rotary_dim, factor=4):
    plan = dk.plan_dprope(head_dim=rotary_dim, original_max_position=256, factor=factor)
    return plan.inv_freq


def check_close(actual, expected, dtype):
    scale = expected.abs().max().clamp(min=1.0)
    err = (actual.double().cpu() - expected).abs().max() / scale
    assert err <= TOL[dtype], f"max relative error {err:.3g} > {TOL[dtype]}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("shape, hk, rotary_dim", [((2, 217, 3, 80), 1, 80), ((1, 9, 4, 64), 4, 32)],
                         ids=["T217-H3-D80-gqa", "partial-rotary"])
def test_matches_fp64_reference(backend, dtype, pairing, shape, hk, rotary_dim):
    torch.manual_seed(0)
    il, ol = PAIRINGS[pairing]
    B, T, H, D = shape
    q = torch.randn(B, T, H, D, device=DEVICE).to(dtype)
    k = torch.randn(B, T, hk, D, device=DEVICE).to(dtype)
    pos = torch.randint(0, 2**31 - 1, (B, T), device=DEVICE)
    inv = table(rotary_dim)
    q0, k0 = q.clone(), k.clone()
    oq, ok = dk.apply_rope(q, k, inv, pos, interleaved=il, output_interleaved=ol, rotary_dim=rotary_dim,
                           backend=backend)
    assert torch.equal(q, q0) and torch.equal(k, k0), "inputs must be left unchanged"
    assert oq.shape == q.shape and ok.shape == k.shape and oq.dtype == dtype
    check_close(oq, reference_rope(q, inv, pos, il, output_interleaved=ol), dtype)
    check_close(ok, reference_rope(k, inv, pos, il, output_interleaved=ol), dtype)
    assert torch.equal(oq[..., rotary_dim:], q[..., rotary_dim:])


def test_sincos_of_turn_accuracy_over_every_quadrant():
    """The kernels' sin/cos from the integer turn: < 2.5e-7 absolute at quadrant edges and in between."""
    if "triton" not in BACKENDS:
        pytest.skip("triton backend unavailable")
    import triton
    from _triton_probes import sincos_kernel

    rng = np.random.default_rng(0)
    edges = [(q << 62) + d for q in range(4) for d in (-(1 << 61), -(1 << 61) + 1, -1, 0, 1, (1 << 61) - 1)]
    turns_u = np.concatenate([np.array([e % (1 << 64) for e in edges], dtype=np.uint64),
                              rng.integers(0, 2**63, 20000, dtype=np.uint64) * np.uint64(2)
                              + rng.integers(0, 2, 20000, dtype=np.uint64)])
    turns = torch.from_numpy(turns_u.view(np.int64).copy()).to(DEVICE)
    cos, sin = torch.empty(len(turns), device=DEVICE), torch.empty(len(turns), device=DEVICE)
    sincos_kernel[(triton.cdiv(len(turns), 1024),)](turns, cos, sin, len(turns), BLOCK=1024)
    angle = torch.from_numpy(turns_u.astype(np.float64) * (2 * math.pi / 2**64))
    assert (cos.double().cpu() - angle.cos()).abs().max() < 2.5e-7
    assert (sin.double().cpu() - angle.sin()).abs().max() < 2.5e-7


@pytest.mark.parametrize("backend", BACKENDS)
def test_angle_error_bound_at_the_largest_claimed_position(backend):
    """README/docstring: |angle error| <= m * 2pi * 2**-65 + 2.5e-7 rad; below 1e-6 rad up to m = 2**42."""
    torch.manual_seed(9)
    inv = dk.default_inv_freq(128, 10000.0)
    q = torch.randn(1, 6, 1, 128, device=DEVICE, dtype=torch.float64 if backend == "torch" else torch.float32)
    for start in (2**42 - 3, 2**62, 2**63 - 7):
        pos = (torch.arange(6, dtype=torch.int64) + start).reshape(1, 6).to(DEVICE)
        ours, _ = dk.apply_rope(q, None, inv, pos, backend=backend)
        # recover the angle each pair was rotated by: x1 -> (x1 cos - x2 sin, x2 cos + x1 sin)
        x = q[0, :, 0].double().cpu()
        y = ours[0, :, 0].double().cpu()
        x1, x2, y1, y2 = x[:, :64], x[:, 64:], y[:, :64], y[:, 64:]
        got = torch.atan2(x1 * y2 - x2 * y1, x1 * y1 + x2 * y2)
        want = exact_angles(inv, pos.cpu())[0]
        err = (got - want + math.pi) % (2 * math.pi) - math.pi
        # margin for atan2 of rounded y
        bound = (pos.cpu().double()[0, :, None] * 2 * math.pi * 2**-65 + 2.5e-7) * 4
        assert (err.abs() <= bound).all(), f"start {start}: max error {err.abs().max():.3g}"
        if start < 2**43:
            assert err.abs().max() < 1e-6


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("conjugate", [False, True])
@pytest.mark.parametrize("pairing", ["neox", "gptj-to-neox"])
def test_kernel_writes_every_element_nan_poisoned(backend, conjugate, pairing):
    torch.manual_seed(1)
    il, ol = PAIRINGS[pairing]
    q = torch.randn(3, 19, 5, 48, device=DEVICE)
    k = torch.randn(3, 19, 2, 48, device=DEVICE)
    inv = table(48)
    phases = dk.phase_tensor(inv, device=DEVICE)
    pos = torch.randint(0, 10**6, (3, 19), device=DEVICE)
    oq, ok = torch.full_like(q, float("nan")), torch.full_like(k, float("nan"))
    _launch(backend, q, k, oq, ok, phases, pos, il, ol, conjugate)
    assert not oq.isnan().any() and not ok.isnan().any()
    check_close(oq, reference_rope(q, inv, pos, il, conjugate, ol), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs(backend):
    torch.manual_seed(2)
    B, T, H, D = 2, 11, 3, 32
    q_hf = torch.randn(B, H, T, D, device=DEVICE)  # HF layout, passed as a transposed view
    wide = torch.randn(B, T, 2, 2 * D, device=DEVICE)
    k = wide[..., ::2]  # stride 2 along D
    inv = table(D)
    pos = torch.randint(0, 5000, (B, T), device=DEVICE)
    oq, ok = dk.apply_rope(q_hf.transpose(1, 2), k, inv, pos, backend=backend)
    check_close(oq, reference_rope(q_hf.transpose(1, 2), inv, pos), torch.float32)
    check_close(ok, reference_rope(k, inv, pos), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_strided_phase_table_is_read_by_its_strides(backend):
    torch.manual_seed(3)
    q, k = torch.randn(2, 5, 3, 16, device=DEVICE), torch.randn(2, 5, 1, 16, device=DEVICE)
    every_other = dk.phase_tensor(table(32)).to(DEVICE)[::2]  # 8 phases, stride 2
    pos = torch.randint(0, 2**40, (2, 5), device=DEVICE)
    got = dk.apply_rope(q, k, every_other, pos, backend=backend)
    want = dk.apply_rope(q, k, every_other.contiguous(), pos, backend="torch")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton backend unavailable")
@pytest.mark.parametrize("shape", [(2, 5, 8, 2, 32), (1, 3, 5, 1, 16), (3, 1, 6, 6, 64), (1, 9, 12, 4, 80)],
                         ids=["gqa", "odd-heads-mqa", "decode", "D80"])
@pytest.mark.parametrize("pairing", ["neox", "gptj-to-neox"])
def test_head_groups_and_the_smallest_tiles_match_the_reference(shape, pairing, monkeypatch):
    """A small grid splits each token block's head blocks between programs (the decode path on a GPU);
    the interpreter takes that path only when asked for more programs than the input has tiles."""
    from dprope_kernels.triton import rope as triton_rope

    monkeypatch.setattr(triton_rope, "INTERPRETER_MIN_PROGRAMS", 10**6)
    B, T, Hq, Hk, D = shape
    (_, groups), tiles = triton_rope.rope_tiles(D // 2, B if T > 1 else 1, T if T > 1 else B, (Hq, Hk), 4)
    assert groups > 1 or tiles["BLOCK_H"] == 1 and tiles["BLOCK_T"] == 1
    torch.manual_seed(4)
    il, ol = PAIRINGS[pairing]
    q, k = torch.randn(B, T, Hq, D, device=DEVICE), torch.randn(B, T, Hk, D, device=DEVICE)
    inv, pos = table(D), torch.randint(0, 2**31, (B, T), device=DEVICE)
    oq, ok = dk.apply_rope(q, k, inv, pos, interleaved=il, output_interleaved=ol, backend="triton")
    check_close(oq, reference_rope(q, inv, pos, il, output_interleaved=ol), torch.float32)
    check_close(ok, reference_rope(k, inv, pos, il, output_interleaved=ol), torch.float32)


def test_tiles_fill_the_gpu_and_keep_vectors_whole(monkeypatch):
    """What the launch code asks of a GPU (no kernel runs): at least MIN_PROGRAMS programs unless the
    tiles are already one warp's and every head block has its own program, whole 16-byte vectors per
    thread, at most 8 warps, and head blocks that waste at most 1/8 of the heads."""
    from dprope_kernels.triton import rope as triton_rope

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    for B, T, Hq, Hk, D, size in [(4, 4096, 32, 8, 128, 2), (64, 1, 32, 8, 128, 2), (1, 1, 32, 8, 128, 2),
                                  (2, 2048, 40, 8, 128, 2), (1, 8192, 28, 4, 64, 4), (8, 512, 25, 5, 80, 2),
                                  (1, 4096, 64, 1, 256, 2), (1, 64, 8, 0, 128, 4)]:
        (token_blocks, groups), t = triton_rope.rope_tiles(D // 2, B, T, (Hq, Hk), size)
        pairs = t["BLOCK_T"] * t["BLOCK_H"] * t["BLOCK_P"]
        threads = 32 * t["num_warps"]
        assert t["num_warps"] <= triton_rope.MAX_WARPS and pairs >= threads * 16 // size, (B, T, t)
        smallest = pairs <= max(32 * 16 // size, t["BLOCK_P"])
        head_blocks = max(triton_rope.triton.cdiv(h, t["BLOCK_H"]) for h in (Hq, Hk))
        assert token_blocks * groups >= triton_rope.MIN_PROGRAMS or smallest and groups == head_blocks, t
        for h in (Hq, Hk):
            if h:
                padded = triton_rope.triton.cdiv(h, t["BLOCK_H"]) * t["BLOCK_H"]
                assert (padded - h) * triton_rope.HEAD_WASTE <= h, (h, t)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_every_positions_layout_equals_the_explicit_tensor(backend, dtype):
    torch.manual_seed(3)
    B, T = 3, 7
    q = torch.randn(B, T, 2, 16, device=DEVICE)
    k = torch.randn(B, T, 1, 16, device=DEVICE)
    inv = table(16)

    def run(positions=None, **kw):
        return dk.apply_rope(q, k, inv, positions, backend=backend, **kw)

    row = (torch.arange(T) * 5 + 11).to(DEVICE, dtype)
    explicit = row.expand(B, T).contiguous()
    want = run(explicit)
    for form in (row, row.reshape(1, T), row.expand(B, T)):  # [T], HF's [1, T], a broadcast view
        for got, ref in zip(run(form), want):
            torch.testing.assert_close(got, ref, rtol=0, atol=0)
    starts = torch.tensor([[0], [100], [2**20 + 5]], device=DEVICE, dtype=dtype)
    per_row = run(starts.long() + torch.arange(T, device=DEVICE))
    for got, ref in zip(run(starts), per_row):  # [B, 1]: each sequence's start
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    for got, ref in zip(run(None, offsets=starts.flatten()), per_row):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    for got, ref in zip(run(100), run(torch.arange(T, device=DEVICE) + 100)):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    decode_q, decode_pos = q[:, :1], torch.tensor([[3], [70], [9]], device=DEVICE, dtype=dtype)
    got, _ = dk.apply_rope(decode_q, None, inv, decode_pos, backend=backend)  # [B, 1] at T = 1: a decode step
    check_close(got, reference_rope(decode_q, inv, decode_pos.long()), torch.float32)


POSITION_FORMS = {  # name -> (positions, offsets) for B = 3, T = 7; each means start 100 for every sequence
    "int offsets": (None, 100),
    "numpy int offsets": (None, np.int64(100)),
    "0-d tensor offsets": (None, torch.tensor(100)),
    "1-element tensor offsets": (None, torch.tensor([100])),
    "[B] offsets": (None, torch.tensor([100, 100, 100])),
    "list offsets": (None, [100, 100, 100]),
    "int positions": (100, None),
    "[T] positions": (torch.arange(7) + 100, None),
    "[1, T] positions": ((torch.arange(7) + 100).reshape(1, 7), None),
    "[B, 1] starts": (torch.full((3, 1), 100), None),
}


@pytest.mark.parametrize("form", POSITION_FORMS)
def test_every_positions_form_normalizes_to_b_by_t(form):
    from dprope_kernels.ops.checks import positions_for

    positions, offsets = POSITION_FORMS[form]
    pos = positions_for(torch.device("cpu"), 3, 7, positions, offsets, None, True)
    assert pos.shape == (3, 7) and pos.dtype == torch.int64
    assert torch.equal(pos, (torch.arange(7) + 100).expand(3, 7))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", POSITION_FORMS)
def test_every_positions_form_equals_explicit_positions_with_batch(backend, form):
    """B > 1 with a scalar start (flash-attn's int ``seqlen_offsets``): every sequence starts there."""
    torch.manual_seed(5)
    q = torch.randn(3, 7, 2, 16, device=DEVICE, requires_grad=True)
    k = torch.randn(3, 7, 1, 16, device=DEVICE, requires_grad=True)
    inv = table(16)
    positions, offsets = POSITION_FORMS[form]
    if isinstance(positions, torch.Tensor):
        positions = positions.to(DEVICE)
    if isinstance(offsets, torch.Tensor):
        offsets = offsets.to(DEVICE)
    explicit = (torch.arange(7, device=DEVICE) + 100).expand(3, 7).contiguous()
    want = dk.apply_rope(q, k, inv, explicit, backend=backend)
    got = dk.apply_rope(q, k, inv, positions, offsets=offsets, backend=backend)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    check_close(got[0], reference_rope(q.detach(), inv, explicit.cpu()), torch.float32)
    grads = torch.autograd.grad(sum((g * g.detach().sin()).sum() for g in got), (q, k))
    want_grads = torch.autograd.grad(sum((w * w.detach().sin()).sum() for w in want), (q, k))
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scalar_offsets_decode_step_with_batch(backend):
    torch.manual_seed(6)
    q = torch.randn(4, 1, 2, 16, device=DEVICE)
    inv = table(16)
    got, _ = dk.apply_rope(q, None, inv, offsets=217, backend=backend)
    check_close(got, reference_rope(q, inv, torch.full((4, 1), 217)), torch.float32)


def test_b1_starts_whose_positions_pass_2_to_the_63_are_refused_as_overflow():
    starts = torch.tensor([[0], [2**63 - 3]])
    with pytest.raises(ValueError, match="start \\+ T - 1 must stay below 2\\*\\*63"):
        dk.apply_rope(torch.randn(2, 7, 1, 16), None, table(16), starts)


def test_kernels_refuse_positions_that_do_not_cover_every_sequence():
    q = torch.randn(3, 7, 1, 16)
    phases = dk.phase_tensor(table(16))
    with pytest.raises(ValueError, match="positions must be \\[B, T\\]"):
        _launch("torch", q, q, torch.empty_like(q), torch.empty_like(q), phases,
                torch.zeros(1, 7, dtype=torch.long), False, False, False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_varlen_equals_per_sequence(backend):
    torch.manual_seed(4)
    lengths = [5, 1, 9]
    cu = torch.tensor([0, 5, 6, 15], dtype=torch.int32, device=DEVICE)
    q = torch.randn(15, 3, 32, device=DEVICE)
    k = torch.randn(15, 1, 32, device=DEVICE)
    inv = table(32)
    oq, ok = dk.apply_rope(q, k, inv, cu_seqlens=cu, offsets=torch.tensor([0, 7, 2**30]), backend=backend)
    starts = [0, 7, 2**30]
    for s, (lo, n) in enumerate(zip([0, 5, 6], lengths)):
        pos = (torch.arange(n, device=DEVICE) + starts[s]).reshape(1, n)
        rq, rk = dk.apply_rope(q[lo:lo + n][None], k[lo:lo + n][None], inv, pos, backend=backend)
        torch.testing.assert_close(oq[lo:lo + n], rq[0], rtol=0, atol=0)
        torch.testing.assert_close(ok[lo:lo + n], rk[0], rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace(backend):
    torch.manual_seed(5)
    q = torch.randn(2, 6, 4, 32, device=DEVICE)
    k = torch.randn(2, 6, 2, 32, device=DEVICE)
    inv = table(32)
    pos = torch.randint(0, 10**6, (2, 6), device=DEVICE)
    want_q, want_k = dk.apply_rope(q, k, inv, pos, backend=backend)
    rq, rk = dk.apply_rope(q, k, inv, pos, inplace=True, backend=backend)
    assert rq is q and rk is k
    torch.testing.assert_close(q, want_q, rtol=0, atol=0)
    torch.testing.assert_close(k, want_k, rtol=0, atol=0)
    leaf = torch.randn(1, 2, 1, 32, device=DEVICE, requires_grad=True)
    with pytest.raises(RuntimeError, match="inplace"):
        dk.apply_rope(leaf, None, inv, inplace=True, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_refuses_q_and_k_sharing_memory(backend):
    x = torch.randn(1, 4, 2, 16, device=DEVICE)
    before = x.clone()
    with pytest.raises(ValueError, match="share memory"):
        dk.apply_rope(x, x, table(16), inplace=True, backend=backend)
    with pytest.raises(ValueError, match="share memory"):
        dk.apply_rope(x[:, :, 0:2], x[:, :, 1:2], table(16), inplace=True, backend=backend)  # head 1 in both
    packed = torch.randn(1, 4, 3, 16, device=DEVICE)
    # disjoint: fine
    dk.apply_rope(packed[:, :, :2], packed[:, :, 2:], table(16), inplace=True, backend=backend)
    assert torch.equal(x, before), "a refused call must not write"


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_refuses_views_with_overlapping_elements(backend):
    base = torch.randn(1, 1, 2, 16, device=DEVICE)
    expanded = base.expand(3, 4, 2, 16)  # 12 tokens share one row of memory
    with pytest.raises(ValueError, match="overlapping elements"):
        dk.apply_rope(expanded, None, table(16), inplace=True, backend=backend)
    out, _ = dk.apply_rope(expanded, None, table(16), backend=backend)  # out of place reads it fine
    assert out.shape == (3, 4, 2, 16)


def test_inplace_refuses_different_input_and_output_pairings():
    x = torch.randn(1, 3, 1, 16)
    with pytest.raises(ValueError, match="one pairing"):
        dk.apply_rope(x, None, table(16), interleaved=True, output_interleaved=False, inplace=True)


def test_gradcheck_float64_torch_backend():
    torch.manual_seed(6)
    q = torch.randn(1, 5, 2, 16, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 5, 1, 16, dtype=torch.float64, requires_grad=True)
    inv = table(16)
    pos = torch.randint(0, 10**9, (1, 5))
    assert torch.autograd.gradcheck(lambda a, b: dk.apply_rope(a, b, inv, pos, backend="torch"), (q, k))

    def rotate_q(il, ol):
        return lambda a: dk.apply_rope(a, None, inv, pos, backend="torch", interleaved=il,
                                       output_interleaved=ol)[0]

    for il, ol in PAIRINGS.values():
        assert torch.autograd.gradcheck(rotate_q(il, ol), (q,))


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_gradients_match_torch_backend(backend, pairing):
    torch.manual_seed(7)
    il, ol = PAIRINGS[pairing]
    q = torch.randn(2, 13, 3, 40, device=DEVICE, requires_grad=True)
    k = torch.randn(2, 13, 1, 40, device=DEVICE, requires_grad=True)
    inv = table(32)
    pos = torch.randint(0, 10**7, (2, 13), device=DEVICE)
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    grads = {}
    for name in ("torch", backend):
        oq, ok = dk.apply_rope(q, k, inv, pos, rotary_dim=32, interleaved=il, output_interleaved=ol,
                               backend=name)
        grads[name] = torch.autograd.grad((oq * gq).sum() + (ok * gk).sum(), (q, k))
    for a, b in zip(grads["torch"], grads[backend]):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6)
    # the backward is the inverse rotation: rotating back recovers the input
    oq, _ = dk.apply_rope(q.detach(), None, inv, pos, rotary_dim=32, interleaved=il, output_interleaved=ol,
                          backend=backend)
    phases = dk.phase_tensor(inv, device=DEVICE)
    back = torch.ops.dprope.rope(oq, oq[:, :, :0], phases, pos, ol, il, True, backend)[0]
    torch.testing.assert_close(back, q.detach(), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("position", [10**6, 10**9])
def test_long_positions_exact_where_float32_angles_fail(backend, position):
    torch.manual_seed(9)
    inv = dk.default_inv_freq(128, 10000.0)
    q = torch.randn(1, 4, 1, 128, device=DEVICE)
    pos = (torch.arange(4, device=DEVICE) + position).reshape(1, 4)
    ours, _ = dk.apply_rope(q, None, inv, pos, backend=backend)
    expected = reference_rope(q, inv, pos)
    rel = ((ours.double().cpu() - expected).abs().max() / expected.abs().max()).item()
    assert rel <= 1e-6
    # HF's formula: float32 inv_freq times float32 position, then cos/sin
    hf_angle = (pos.float().cpu()[..., None] * inv.float()).double() % (2 * math.pi)
    err = (hf_angle - exact_angles(inv, pos.cpu())).abs()
    err = torch.minimum(err, 2 * math.pi - err).max().item()
    assert err > (0.01 if position == 10**6 else 1.0)


def test_module_from_plan():
    plan = dk.plan_dprope(head_dim=32, original_max_position=256, factor=4)
    rope = dk.DPRoPERotaryEmbedding(plan, backend="torch").to(torch.bfloat16)
    assert rope.phases.dtype == torch.int64 and rope.rotary_dim == 32
    q = torch.randn(2, 5, 2, 32)
    pos = torch.randint(0, 1000, (2, 5))
    got, _ = rope(q, None, pos)
    factor = getattr(plan, "attention_factor", 1.0)  # the plan's temperature, when it carries one
    assert rope.attention_factor == factor
    want, _ = dk.apply_rope(q, None, plan.inv_freq, pos, backend="torch", scale=factor)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert "rotary_dim=32" in repr(rope)


def test_torch_backend_memory_stays_within_twice_the_input(tmp_path):
    """The CPU reference works in chunks: 192 MiB of bf16 q+k must not need more than 2x in extra memory."""
    script = tmp_path / "peak.py"
    script.write_text(
        "import resource, torch, dprope_kernels as dk\n"
        "q = torch.randn(1, 24576, 32, 128).bfloat16(); k = torch.randn(1, 24576, 16, 128).bfloat16()\n"
        "inv = dk.default_inv_freq(128, 10000.0)\n"
        "dk.apply_rope(q[:, :8], k[:, :8], inv, backend='torch')  # warm up allocator and imports\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "oq, ok = dk.apply_rope(q, k, inv, backend='torch')\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print((after - before) * 1024 / (q.nbytes + k.nbytes))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # this checkout's package, installed or not (a GPU run tests while the build is still going)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    ratio = float(result.stdout.strip().splitlines()[-1])
    assert ratio <= 2.0, f"the torch backend used {ratio:.2f}x the input in extra memory"


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda q, k, inv, p: dk.apply_rope(q[0], k, inv, p), ValueError, r"\[B, T, H, D\]"),
        (lambda q, k, inv, p: dk.apply_rope(q, k[:, :2], inv, p), ValueError, "every dim but heads"),
        (lambda q, k, inv, p: dk.apply_rope(q.int(), None, inv, p), TypeError, "float16"),
        (lambda q, k, inv, p: dk.apply_rope(q, k.half(), inv, p), TypeError, "share a dtype"),
        (lambda q, k, inv, p: dk.apply_rope(q[..., :15], None, inv[:7], p), ValueError, "even"),
        (lambda q, k, inv, p: dk.apply_rope(q, k, inv, -p), ValueError, "non-negative"),
        (lambda q, k, inv, p: dk.apply_rope(q, k, inv, -1), ValueError, ">= 0"),
        (lambda q, k, inv, p: dk.apply_rope(q, k, inv[:5], p, rotary_dim=16), ValueError, "rotary_dim"),
        (lambda q, k, inv, p: dk.apply_rope(q, k, torch.ones(20), p), ValueError,
         "20 frequencies \\(40 rotary dims\\), more than the head dim 16"),
        (lambda q, k, inv, p: dk.apply_rope(q, k, inv, p.float()), TypeError, "int32 or int64"),
        (lambda q, k, inv, p: dk.apply_rope(q, k, inv, p[:, :2]), ValueError, r"broadcast to \[B, T\]"),
        (lambda q, k, inv, p: dk.apply_rope(q, k, inv, p[:1, :1].expand(2, 1)[:, :1].repeat(1, 2)),
         ValueError, r"broadcast to \[B, T\]"),
        (lambda q, k, inv, p: dk.apply_rope(q, k, inv, p.to("meta")), ValueError, "device"),
        (lambda q, k, inv, p: dk.apply_rope(q, k.to("meta"), inv, p), ValueError, "one device"),
        (lambda q, k, inv, p: dk.apply_rope(q, k, inv, p, backend="fast"), ValueError, "backend"),
        (lambda q, k, inv, p: dk.apply_rope(q, k, torch.ones(8, 2), p), ValueError, "1-D"),
        (lambda q, k, inv, p: dk.apply_rope(q, k, inv, p, cu_seqlens=torch.tensor([0, 3])), ValueError,
         r"\[total_tokens"),
    ],
)
def test_bad_input_gets_a_clear_error(make, error, match):
    q = torch.randn(2, 3, 4, 16)
    k = torch.randn(2, 3, 2, 16)
    inv = table(16)
    p = torch.arange(3).repeat(2, 1)
    with pytest.raises(error, match=match):
        make(q, k, inv, p)


@pytest.mark.parametrize("backend", KERNELS)
def test_float64_is_refused_by_the_kernels(backend):
    """On the device the kernel runs on (a GPU, or the CPU under the interpreter): refused for its dtype."""
    q = torch.randn(2, 3, 4, 16, dtype=torch.float64, device=DEVICE)
    with pytest.raises(TypeError, match="float64"):
        dk.apply_rope(q, None, table(16), torch.arange(3, device=DEVICE), backend=backend)


def test_triton_without_interpreter_on_cpu_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        dk.apply_rope(torch.randn(1, 2, 1, 8), None, table(8), backend="triton")


@requires_cuda
def test_indexing_beyond_2_to_the_31_elements():
    free, _ = torch.cuda.mem_get_info()
    T, H, D = (1 << 31) // (8 * 128) + 64, 8, 128
    if free < 3 * T * H * D * 2:
        pytest.skip("not enough GPU memory for a 2**31-element test")
    q = torch.zeros(1, T, H, D, device="cuda", dtype=torch.bfloat16)
    q[:, -3:] = torch.randn(1, 3, H, D, device="cuda").bfloat16()
    inv = table(128)
    pos = torch.arange(T, device="cuda").reshape(1, T)
    for backend in KERNELS:
        out, _ = dk.apply_rope(q, None, inv, pos, backend=backend)
        check_close(out[:, -3:], reference_rope(q[:, -3:].float(), inv, pos[:, -3:]), torch.bfloat16)
        del out


# ------------------------------------------------------------------- inputs that used to be taken silently


def test_flags_must_be_real_bools():
    q = torch.randn(1, 3, 1, 16)
    for kwargs in (dict(inplace=1), dict(interleaved="no"), dict(output_interleaved=0), dict(validate=None)):
        with pytest.raises(TypeError, match="must be a bool"):
            dk.apply_rope(q, None, table(16), **kwargs)
    dk.apply_rope(q, None, table(16), interleaved=np.bool_(True))  # numpy's bool is a bool


def test_offsets_together_with_positions_are_refused():
    q = torch.randn(2, 3, 1, 16)
    with pytest.raises(ValueError, match="not both"):
        dk.apply_rope(q, None, table(16), torch.arange(3), offsets=5)


@pytest.mark.parametrize("offsets", [1.5, torch.tensor([1.0, 2.0]), "3"])
def test_fractional_or_text_offsets_are_refused(offsets):
    with pytest.raises(TypeError, match="offsets must be an int"):
        dk.apply_rope(torch.randn(2, 3, 1, 16), None, table(16), offsets=offsets)


@pytest.mark.parametrize("offsets", [-1, [0, -4], torch.tensor([0, -4])])
def test_negative_offsets_with_cu_seqlens_are_refused(offsets):
    cu = torch.tensor([0, 2, 5])
    with pytest.raises(ValueError, match="offsets must be"):
        dk.apply_rope(torch.randn(5, 1, 16), None, table(16), cu_seqlens=cu, offsets=offsets)


def test_positions_past_2_to_the_63_are_refused():
    with pytest.raises(ValueError, match="offsets must be in"):
        dk.apply_rope(torch.randn(1, 3, 1, 16), None, table(16), offsets=torch.tensor([2**63 - 2]))
    with pytest.raises(ValueError, match="positions must be <="):
        dk.apply_rope(torch.randn(1, 3, 1, 16), None, table(16), 2**63 - 2)


def test_empty_cu_seqlens_is_refused():
    with pytest.raises(ValueError, match="at least one value"):
        dk.apply_rope(torch.randn(0, 1, 16), None, table(16), cu_seqlens=torch.tensor([], dtype=torch.int64))


@pytest.mark.parametrize("inv_freq, error, match", [
    (None, TypeError, "1-D real table"),
    (torch.ones(8, dtype=torch.complex64), TypeError, "real float tensor"),
    (np.ones(8, dtype=np.complex128), TypeError, "real numbers"),
    ([1j] * 8, TypeError, "real numbers"),
    ("abcd", TypeError, "1-D real table"),
    ([], ValueError, "empty"),
    ([float("inf")] * 8, ValueError, "finite"),
])
def test_missing_complex_or_empty_tables_are_refused(inv_freq, error, match):
    with pytest.raises(error, match=match):
        dk.apply_rope(torch.randn(1, 3, 1, 16), None, inv_freq)


def test_a_table_for_a_larger_head_names_the_table_not_rotary_dim():
    with pytest.raises(ValueError,
                       match="inv_freq has 9 frequencies \\(18 rotary dims\\), more than the head dim 16"):
        dk.apply_rope(torch.randn(1, 3, 1, 16), None, np.linspace(1.0, 0.01, 9))


def test_a_float_table_tensor_is_converted_once_per_version(monkeypatch):
    """A model's inv_freq buffer on a GPU costs one host copy, not one per call; in-place edits are seen."""
    from dprope_kernels.ops import tables

    conversions = []
    original = tables._phases_cached
    monkeypatch.setattr(tables, "_phases_cached", lambda values, device: conversions.append(values) or
                        original(values, device))
    inv = torch.tensor(table(16), dtype=torch.float32, device=DEVICE)
    q = torch.randn(2, 5, 2, 16, device=DEVICE)
    first, _ = dk.apply_rope(q, None, inv, backend="torch")
    again, _ = dk.apply_rope(q, None, inv, backend="torch")
    assert len(conversions) == 1 and torch.equal(first, again)
    with torch.no_grad():
        inv.mul_(0.5)
    changed, _ = dk.apply_rope(q, None, inv, backend="torch")
    assert len(conversions) == 2
    check_close(changed, reference_rope(q, inv.tolist(), torch.arange(5).expand(2, 5)), torch.float32)


def test_a_float_table_tensor_traces_without_a_graph_break():
    inv = torch.tensor(table(16), dtype=torch.float32, device=DEVICE)
    q = torch.randn(2, 5, 2, 16, device=DEVICE)

    def step(q, pos):
        return dk.apply_rope(q, None, inv, pos, backend="torch", validate=False)[0]

    pos = torch.arange(5, device=DEVICE) + 7
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)  # fullgraph: a break is an error
    torch.testing.assert_close(compiled(q, pos), step(q, pos), rtol=0, atol=0)


# ------------------------------------------------------------------- the attention factor (scale)

BAD_SCALES = {  # name -> (scale, error, message)
    "zero": (0.0, ValueError, "finite positive"),
    "negative": (-1.0, ValueError, "finite positive"),
    "nan": (float("nan"), ValueError, "finite positive"),
    "inf": (float("inf"), ValueError, "finite positive"),
    "past float32": (1e39, ValueError, "float32's normal range"),
    "True": (True, TypeError, "positive real number"),
    "numpy bool": (np.bool_(True), TypeError, "positive real number"),
    "tensor": (torch.tensor(1.07), TypeError, "positive real number"),
    "string": ("1.07", TypeError, "positive real number"),
    "None": (None, TypeError, "positive real number"),
}


def scaled_reference(x, inv, pos, scale, interleaved=False, output_interleaved=None):
    """fp64 ``scale * rotate(x)`` on the rotated dims; the pass-through dims as they are (HF's x_pass)."""
    out = reference_rope(x, inv, pos, interleaved, output_interleaved=output_interleaved)
    rotary_dim = 2 * len(inv)
    return torch.cat([scale * out[..., :rotary_dim], out[..., rotary_dim:]], dim=-1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pairing", PAIRINGS)
def test_scale_one_is_bitwise_the_result_without_scale(backend, pairing):
    torch.manual_seed(11)
    il, ol = PAIRINGS[pairing]
    q = torch.randn(2, 9, 3, 48, device=DEVICE, requires_grad=True)
    k = torch.randn(2, 9, 1, 48, device=DEVICE, requires_grad=True)
    inv, pos = table(32), torch.randint(0, 10**6, (2, 9), device=DEVICE)
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    runs = []
    for kwargs in ({}, {"scale": 1.0}, {"scale": 1}, {"scale": np.float32(1.0)}):
        oq, ok = dk.apply_rope(q, k, inv, pos, interleaved=il, output_interleaved=ol, backend=backend,
                               **kwargs)
        runs.append((oq, ok, *torch.autograd.grad((oq * gq).sum() + (ok * gk).sum(), (q, k))))
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(run, runs[0]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pairing", PAIRINGS)
@pytest.mark.parametrize("scale", [1.07, 0.5])
def test_scale_multiplies_the_rotated_dims_forward_and_backward(backend, dtype, pairing, scale):
    """Partial rotary (32 of 64 dims): the pass-through dims and their gradients are not scaled."""
    torch.manual_seed(12)
    il, ol = PAIRINGS[pairing]
    q = torch.randn(2, 9, 3, 64, device=DEVICE).to(dtype).requires_grad_()
    k = torch.randn(2, 9, 1, 64, device=DEVICE).to(dtype).requires_grad_()
    inv, pos = table(32), torch.randint(0, 2**31 - 1, (2, 9), device=DEVICE)
    oq, ok = dk.apply_rope(q, k, inv, pos, interleaved=il, output_interleaved=ol, backend=backend,
                           scale=scale)
    for out, x in ((oq, q), (ok, k)):
        check_close(out, scaled_reference(x.detach(), inv, pos, scale, il, ol), dtype)
        assert torch.equal(out[..., 32:], x[..., 32:])
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    grads = torch.autograd.grad((oq * gq).sum() + (ok * gk).sum(), (q, k))
    x64 = [x.detach().double().cpu().requires_grad_() for x in (q, k)]
    refs = [scaled_reference(x, inv, pos.cpu(), scale, il, ol) for x in x64]
    want = torch.autograd.grad(refs, x64, [gq.double().cpu(), gk.double().cpu()])
    for got, ref, g in zip(grads, want, (gq, gk)):
        check_close(got, ref, dtype)
        assert torch.equal(got[..., 32:], g[..., 32:])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pairing", ["neox", "gptj"])
def test_scale_inplace_equals_out_of_place(backend, pairing):
    torch.manual_seed(13)
    il, _ = PAIRINGS[pairing]
    q = torch.randn(2, 6, 4, 48, device=DEVICE)
    k = torch.randn(2, 6, 2, 48, device=DEVICE)
    inv, pos = table(32), torch.randint(0, 10**6, (2, 6), device=DEVICE)
    want_q, want_k = dk.apply_rope(q, k, inv, pos, interleaved=il, backend=backend, scale=1.07)
    check_close(want_q, scaled_reference(q, inv, pos, 1.07, il), torch.float32)
    q0 = q.clone()
    rq, rk = dk.apply_rope(q, k, inv, pos, interleaved=il, inplace=True, backend=backend, scale=1.07)
    assert rq is q and rk is k
    assert torch.equal(q, want_q) and torch.equal(k, want_k)
    assert torch.equal(q[..., 32:], q0[..., 32:])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [1.07, 0.5])
def test_scale_varlen_equals_per_sequence_and_reference(backend, scale):
    torch.manual_seed(14)
    cu = torch.tensor([0, 5, 6, 15], dtype=torch.int32, device=DEVICE)
    q = torch.randn(15, 3, 32, device=DEVICE, requires_grad=True)
    k = torch.randn(15, 1, 32, device=DEVICE)
    inv, starts = table(32), [0, 7, 2**30]
    oq, ok = dk.apply_rope(q, k, inv, cu_seqlens=cu, offsets=torch.tensor(starts), backend=backend,
                           scale=scale)
    (grad,) = torch.autograd.grad(oq.sum(), q)
    for s, (lo, n) in enumerate(zip([0, 5, 6], [5, 1, 9])):
        pos = (torch.arange(n, device=DEVICE) + starts[s]).reshape(1, n)
        rq, rk = dk.apply_rope(q[lo:lo + n][None], k[lo:lo + n][None], inv, pos, backend=backend, scale=scale)
        assert torch.equal(oq[lo:lo + n], rq[0]) and torch.equal(ok[lo:lo + n], rk[0])
        check_close(oq[lo:lo + n][None], scaled_reference(q[lo:lo + n][None].detach(), inv, pos.cpu(), scale),
                    torch.float32)
        ones = torch.ones(1, n, 3, 32, dtype=torch.float64)
        want = scale * reference_rope(ones, inv, pos.cpu(), conjugate=True)
        check_close(grad[lo:lo + n][None], want, torch.float32)


def test_gradcheck_float64_torch_backend_with_scale():
    torch.manual_seed(15)
    q = torch.randn(1, 5, 2, 24, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 5, 1, 24, dtype=torch.float64, requires_grad=True)
    inv, pos = table(16), torch.randint(0, 10**9, (1, 5))
    for il, ol in PAIRINGS.values():
        assert torch.autograd.gradcheck(lambda a, b, il=il, ol=ol: dk.apply_rope(
            a, b, inv, pos, backend="torch", interleaved=il, output_interleaved=ol, scale=1.07), (q, k))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    """Values and gradients as eager, with the scale an argument of the traced function (1 and not) and
    a constant of it; partial rotary."""
    torch.manual_seed(16)
    inv = dk.phase_tensor(table(32), device=DEVICE)
    q = torch.randn(1, 8, 2, 48, device=DEVICE, requires_grad=True)
    k = torch.randn(1, 8, 1, 48, device=DEVICE, requires_grad=True)
    pos = torch.arange(8, device=DEVICE).reshape(1, 8) * 1000

    def step(q, k, pos, scale):
        oq, ok = dk.apply_rope(q, k, inv, pos, backend=backend, scale=scale)
        return oq.square().sum() + (ok * ok.detach().sin()).sum()

    compiled = torch.compile(step, fullgraph=True, backend="inductor" if DEVICE == "cuda" else "aot_eager")
    constant = torch.compile(lambda q, k, pos: step(q, k, pos, 0.5), fullgraph=True,
                             backend="inductor" if DEVICE == "cuda" else "aot_eager")
    runs = [(1.0, lambda: compiled(q, k, pos, 1.0)), (1.07, lambda: compiled(q, k, pos, 1.07)),
            (0.5, lambda: constant(q, k, pos))]
    for scale, run in runs:
        loss = run()
        loss_ref = step(q, k, pos, scale)
        torch.testing.assert_close(loss, loss_ref)
        for g, r in zip(torch.autograd.grad(loss, (q, k)), torch.autograd.grad(loss_ref, (q, k))):
            torch.testing.assert_close(g, r)


@pytest.mark.parametrize("bad", BAD_SCALES)
def test_bad_scales_are_refused_before_any_work(bad, monkeypatch):
    from dprope_kernels.ops import rope as rope_ops

    scale, error, match = BAD_SCALES[bad]
    launches = []
    monkeypatch.setattr(rope_ops, "_launch", lambda *args: launches.append(args))
    q = torch.randn(1, 3, 2, 16)
    before = q.clone()
    for kwargs in ({}, {"inplace": True}):
        with pytest.raises(error, match=f"scale must be .*{match}"):
            dk.apply_rope(q, None, table(16), scale=scale, **kwargs)
    assert not launches and torch.equal(q, before)


def test_module_attention_factor_from_the_table_or_given():
    class Plan:  # a table object carrying its attention factor, as a RopePlan will
        inv_freq = table(32)
        attention_factor = 1.07

    q = torch.randn(2, 5, 2, 32)
    pos = torch.randint(0, 1000, (2, 5))
    for rope, factor in ((dk.DPRoPERotaryEmbedding(Plan(), backend="torch"), 1.07),
                         (dk.DPRoPERotaryEmbedding(Plan(), backend="torch", attention_factor=0.5), 0.5),
                         (dk.DPRoPERotaryEmbedding(table(32), backend="torch"), 1.0)):
        assert type(rope.attention_factor) is float and rope.attention_factor == factor
        assert f"attention_factor={factor}" in repr(rope)
        got, _ = rope(q, None, pos)
        want, _ = dk.apply_rope(q, None, table(32), pos, backend="torch", scale=factor)
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="attention_factor must be a finite positive"):
        dk.DPRoPERotaryEmbedding(table(32), attention_factor=0.0)
    with pytest.raises(TypeError, match="attention_factor must be a positive real"):
        dk.DPRoPERotaryEmbedding(table(32), attention_factor=torch.tensor(1.07))

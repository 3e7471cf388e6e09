"""fused_qk_rope_projection on every backend vs an unfused fp64 reference (matmul + exact RoPE)."""

import numpy as np
import pytest
import torch
from test_rope import DEVICE, reference_rope, table

import dprope_kernels as dk
from dprope_kernels.backends import unavailable
from dprope_kernels.ops.fused_projection import _launch

BACKENDS = [b for b in ("torch", "triton", "cuda") if unavailable(b, torch.device(DEVICE)) is None]
KERNELS = [b for b in BACKENDS if b != "torch"]
# relative to the output's max magnitude; bf16/fp16 inputs are rounded before the GEMM in both
TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@pytest.fixture(autouse=True, params=[True, False], ids=["epilogue", "gemm-then-rope"])
def rope_in_epilogue(request, monkeypatch):
    """Every test runs under each default of the kernel backends: RoPE in the GEMM's epilogue, and a
    GEMM then the RoPE kernel in place."""
    from dprope_kernels.ops import fused_projection

    monkeypatch.setattr(fused_projection, "ROPE_IN_EPILOGUE", request.param)
    return request.param


def test_the_separate_path_has_no_norms_and_takes_only_a_bool(rope_in_epilogue):
    x, w_q, w_k, *_ = make_inputs(1, 3, 32, 2, 1, 16, torch.float32, False, False)
    with pytest.raises(ValueError, match="no q/k norms"):
        dk.fused_qk_rope_projection(x, w_q, w_k, table(16), rope_in_epilogue=False,
                                    q_norm_weight=torch.ones(16), k_norm_weight=torch.ones(16))
    with pytest.raises(TypeError, match="rope_in_epilogue"):
        dk.fused_qk_rope_projection(x, w_q, w_k, table(16), rope_in_epilogue="no")


def make_inputs(B, T, hidden, hq, hk, D, dtype, with_v, with_bias, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE, dtype)

    x = rand(B, T, hidden)
    w_q, w_k = rand(hq * D, hidden, scale=hidden**-0.5), rand(hk * D, hidden, scale=hidden**-0.5)
    w_v = rand(hk * D, hidden, scale=hidden**-0.5) if with_v else None
    bias = None
    if with_bias:
        bias = (rand(hq * D), None) + ((rand(hk * D),) if with_v else ())
    pos = torch.randint(0, 2**31 - 1, (B, T), generator=g).to(DEVICE)
    return x, w_q, w_k, w_v, bias, pos


def reference(x, w_q, w_k, w_v, bias, inv, pos, interleaved, norms=(None, None), eps=1e-6, scale=1.0):
    """fp64 unfused: linear, per-head RMSNorm (when given), then the rational-angle rotation of q and k,
    times ``scale`` (the attention factor)."""
    bias = tuple(bias) + (None,) * (3 - len(bias)) if bias is not None else (None, None, None)
    outs = []
    for i, (w, b) in enumerate(zip((w_q, w_k, w_v), bias)):
        if w is None:
            continue
        y = torch.nn.functional.linear(x.double().cpu(), w.double().cpu(),
                                       None if b is None else b.double().cpu())
        # across the token's heads (OLMo2)
        if i < 2 and norms[i] is not None and norms[i].numel() != 2 * len(inv):
            y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + eps) * norms[i].double().cpu()
        y = y.view(*x.shape[:-1], -1, 2 * len(inv))
        if i < 2 and norms[i] is not None and norms[i].numel() == 2 * len(inv):
            y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + eps) * norms[i].double().cpu()
        outs.append(scale * reference_rope(y, inv, pos.cpu(), interleaved) if i < 2 else y)
    return outs


def check_close(actual, expected, dtype):
    scale = expected.abs().max().clamp(min=1.0)
    err = (actual.double().cpu() - expected).abs().max() / scale
    assert err <= TOL[dtype], f"max relative error {err:.3g} > {TOL[dtype]}"


SHAPES = {
    "T37-H3-Hk1-D80-v-bias": (2, 37, 96, 3, 1, 80, True, True),
    "T17-gqa-D64-no-v": (1, 17, 64, 4, 2, 64, False, False),
    "T5-D128-v": (1, 5, 160, 2, 2, 128, True, False),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_unfused_fp64_reference(backend, dtype, interleaved, shape):
    B, T, hidden, hq, hk, D, with_v, with_bias = shape
    x, w_q, w_k, w_v, bias, pos = make_inputs(B, T, hidden, hq, hk, D, dtype, with_v, with_bias)
    inv = table(D)
    before = [t.clone() for t in (x, w_q, w_k) + ((w_v,) if with_v else ())]
    outs = dk.fused_qk_rope_projection(x, w_q, w_k, inv, pos, w_v=w_v, bias=bias, interleaved=interleaved,
                                       backend=backend)
    after = (x, w_q, w_k) + ((w_v,) if with_v else ())
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "inputs must be left unchanged"
    expected = reference(x, w_q, w_k, w_v, bias, inv, pos, interleaved)
    assert len(outs) == len(expected) == (3 if with_v else 2)
    for out, ref, heads in zip(outs, expected, (hq, hk, hk)):
        assert out.shape == (B, T, heads, D) and out.dtype == dtype and out.stride()[-2:] == (D, 1)
        check_close(out, ref, dtype)
    # one buffer
    assert all(o.untyped_storage().data_ptr() == outs[0].untyped_storage().data_ptr() for o in outs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("norm", ["q-and-k", "k-only"])
def test_per_head_norm_in_the_epilogue_matches_reference(backend, dtype, interleaved, norm):
    x, w_q, w_k, w_v, bias, pos = make_inputs(2, 19, 48, 3, 1, 32, dtype, True, True, seed=12)
    g = torch.Generator().manual_seed(13)
    n_q = (torch.rand(32, generator=g) + 0.5).to(DEVICE, dtype) if norm == "q-and-k" else None
    n_k = (torch.rand(32, generator=g) + 0.5).to(DEVICE, dtype)
    inv = table(32)
    outs = dk.fused_qk_rope_projection(x, w_q, w_k, inv, pos, w_v=w_v, bias=bias, q_norm_weight=n_q,
                                       k_norm_weight=n_k, norm_eps=1e-5, interleaved=interleaved,
                                       backend=backend)
    expected = reference(x, w_q, w_k, w_v, bias, inv, pos, interleaved, (n_q, n_k), eps=1e-5)
    for out, ref in zip(outs, expected):
        check_close(out, ref, dtype)


def norm_backends(across_heads):
    """The CUDA kernel normalizes per head only (a test below checks it says so)."""
    return [b for b in BACKENDS if b != "cuda"] if across_heads else BACKENDS


@pytest.mark.parametrize("backend, across_heads, interleaved",
                         [(b, False, False) for b in norm_backends(False)]
                         + [(b, True, True) for b in norm_backends(True)])
@pytest.mark.parametrize("scale", [1.0, 1.07, 0.5])
def test_norm_gradients_match_reference(backend, across_heads, interleaved, scale):
    """Per-head norms ([D] weights) and OLMo2's norm across a token's heads ([H * D] weights); the scale
    applies after the norm and the rotation."""
    x, w_q, w_k, w_v, bias, pos = make_inputs(1, 11, 24, 2, 1, 16, torch.float32, True, True, seed=14)
    g = torch.Generator().manual_seed(15)
    n_q, n_k = ((torch.rand(16 * (heads if across_heads else 1), generator=g) + 0.5).to(DEVICE)
                for heads in (2, 1))
    inv = table(16)
    leaves = [t.requires_grad_() for t in (x, w_q, w_k, w_v, bias[0], n_q, n_k)]
    outs = dk.fused_qk_rope_projection(x, w_q, w_k, inv, pos, w_v=w_v, bias=bias, q_norm_weight=n_q,
                                       k_norm_weight=n_k, interleaved=interleaved, backend=backend,
                                       scale=scale)
    cotangents = [torch.randn(o.shape, generator=g).to(DEVICE) for o in outs]
    grads = torch.autograd.grad(outs, leaves, cotangents)
    leaves64 = [t.detach().double().cpu().requires_grad_() for t in leaves]
    x6, wq6, wk6, wv6, bq6, nq6, nk6 = leaves64
    expected_outs = reference(x6, wq6, wk6, wv6, (bq6, None, bias[2].double().cpu()), inv, pos, interleaved,
                              (nq6, nk6), scale=scale)
    for out, ref in zip(outs, expected_outs):
        check_close(out, ref.detach(), torch.float32)
    expected = torch.autograd.grad(expected_outs, leaves64, [c.double().cpu() for c in cotangents])
    for name, got, want in zip(("x", "w_q", "w_k", "w_v", "b_q", "q_norm", "k_norm"), grads, expected):
        err = (got.double().cpu() - want).abs().max() / want.abs().max()
        assert err < 1e-5, f"d{name}: relative error {err:.3g}"


@pytest.mark.parametrize("backend", norm_backends(across_heads=True))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_across_all_heads_matches_reference(backend, dtype):
    """OLMo2: q_norm over all q heads of a token ([Hq * D] weights), then the rotation."""
    x, w_q, w_k, w_v, bias, pos = make_inputs(2, 13, 40, 3, 2, 16, dtype, True, True, seed=18)
    g = torch.Generator().manual_seed(19)
    n_q = (torch.rand(48, generator=g) + 0.5).to(DEVICE, dtype)
    n_k = (torch.rand(32, generator=g) + 0.5).to(DEVICE, dtype)
    inv = table(16)
    outs = dk.fused_qk_rope_projection(x, w_q, w_k, inv, pos, w_v=w_v, bias=bias, q_norm_weight=n_q,
                                       k_norm_weight=n_k, backend=backend)
    for out, ref in zip(outs, reference(x, w_q, w_k, w_v, bias, inv, pos, False, (n_q, n_k))):
        check_close(out, ref, dtype)


def test_norm_across_all_heads_is_not_offered_by_the_cuda_kernel():
    x, w_q, w_k, _, _, pos = make_inputs(1, 3, 16, 2, 1, 8, torch.float32, False, False)
    with pytest.raises(RuntimeError, match="'cuda' has no norm across heads"):
        dk.fused_qk_rope_projection(x, w_q, w_k, table(8), pos, q_norm_weight=torch.ones(16, device=DEVICE),
                                    backend="cuda")


def test_gradcheck_with_norm_float64_torch_backend():
    g = torch.Generator().manual_seed(16)
    x = torch.randn(1, 4, 10, dtype=torch.float64, generator=g, requires_grad=True)
    w_q = torch.randn(16, 10, dtype=torch.float64, generator=g, requires_grad=True)
    w_k = torch.randn(8, 10, dtype=torch.float64, generator=g, requires_grad=True)
    n_q = (torch.rand(8, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    n_k = (torch.rand(8, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    pos = torch.tensor([[3, 70000, 10**9, 5]])

    def fn(x, w_q, w_k, n_q, n_k):
        return dk.fused_qk_rope_projection(x, w_q, w_k, table(8), pos, q_norm_weight=n_q, k_norm_weight=n_k,
                                           backend="torch", interleaved=True)

    assert torch.autograd.gradcheck(fn, (x, w_q, w_k, n_q, n_k))


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_biases_and_norm_weights_are_read_by_their_strides(backend):
    x, w_q, w_k, w_v, _, pos = make_inputs(1, 6, 48, 2, 1, 16, torch.float32, True, False)
    every_other = torch.randn(2, 64).to(DEVICE)[0, ::2]  # 32 values, stride 2
    bias = (every_other, every_other[:16], every_other[16:])
    norms = dict(q_norm_weight=every_other[:16], k_norm_weight=every_other[16:])
    inv = table(16)
    got = dk.fused_qk_rope_projection(x, w_q, w_k, inv, pos, w_v=w_v, bias=bias, backend=backend, **norms)
    dense = {name: w.contiguous() for name, w in norms.items()}
    dense_bias = tuple(b.contiguous() for b in bias)
    want = dk.fused_qk_rope_projection(x, w_q, w_k, inv, pos, w_v=w_v, bias=dense_bias, backend="torch",
                                       **dense)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("tokens", [1, 3, 64])
def test_decode_sized_token_counts(backend, tokens):
    x, w_q, w_k, w_v, _, pos = make_inputs(1, tokens, 64, 4, 2, 32, torch.float32, True, False, seed=17)
    inv = table(32)
    outs = dk.fused_qk_rope_projection(x, w_q, w_k, inv, pos, w_v=w_v, backend=backend)
    for out, ref in zip(outs, reference(x, w_q, w_k, w_v, None, inv, pos, False)):
        check_close(out, ref, torch.float32)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_kernel_writes_every_element_nan_poisoned(backend, with_bias):
    x, w_q, w_k, w_v, bias, pos = make_inputs(1, 21, 48, 3, 1, 32, torch.float32, True, with_bias, seed=3)
    inv = table(32)
    phases = dk.phase_tensor(inv, device=DEVICE)
    packed = torch.full((21, 5, 32), float("nan"), device=DEVICE)
    biases = tuple(bias) if bias is not None else (None, None, None)
    _launch(backend, x[0], (w_q, w_k, w_v), biases, (None, None), 1e-6, packed, torch.empty(0, 0), (3, 1, 1),
            phases, pos.reshape(-1), False)
    outs = torch.split(packed, (3, 1, 1), dim=1)
    expected = reference(x, w_q, w_k, w_v, bias, inv, pos, False)
    for out, ref in zip(outs, expected):
        assert not out.isnan().any()
        check_close(out.unsqueeze(0), ref, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("scale", [1.0, 1.07])
def test_gradients_match_reference(backend, interleaved, scale):
    x, w_q, w_k, w_v, bias, pos = make_inputs(2, 13, 40, 2, 1, 16, torch.float32, True, True, seed=5)
    inv = table(16)
    leaves = [t.requires_grad_() for t in (x, w_q, w_k, w_v, bias[0], bias[2])]
    outs = dk.fused_qk_rope_projection(x, w_q, w_k, inv, pos, w_v=w_v, bias=bias, interleaved=interleaved,
                                       backend=backend, scale=scale)
    g = torch.Generator().manual_seed(9)
    cotangents = [torch.randn(o.shape, generator=g).to(DEVICE) for o in outs]
    grads = torch.autograd.grad(outs, leaves, cotangents)

    leaves64 = [t.detach().double().cpu().requires_grad_() for t in leaves]
    x6, wq6, wk6, wv6, bq6, bv6 = leaves64
    expected_outs = reference(x6, wq6, wk6, wv6, (bq6, None, bv6), inv, pos, interleaved, scale=scale)
    expected = torch.autograd.grad(expected_outs, leaves64, [c.double().cpu() for c in cotangents])
    for name, got, want in zip(("x", "w_q", "w_k", "w_v", "b_q", "b_v"), grads, expected):
        err = (got.double().cpu() - want).abs().max() / want.abs().max()
        assert err < 1e-5, f"d{name}: relative error {err:.3g}"


def test_gradcheck_float64_torch_backend():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 5, 12, dtype=torch.float64, generator=g, requires_grad=True)
    w_q = torch.randn(16, 12, dtype=torch.float64, generator=g, requires_grad=True)
    w_k = torch.randn(8, 12, dtype=torch.float64, generator=g, requires_grad=True)
    w_v = torch.randn(8, 12, dtype=torch.float64, generator=g, requires_grad=True)
    b_k = torch.randn(8, dtype=torch.float64, generator=g, requires_grad=True)
    pos = torch.tensor([[0, 3, 70000, 10**9, 5]])
    inv = table(8)

    def fn(x, w_q, w_k, w_v, b_k):
        return dk.fused_qk_rope_projection(x, w_q, w_k, inv, pos, w_v=w_v, bias=(None, b_k, None),
                                           backend="torch")

    assert torch.autograd.gradcheck(fn, (x, w_q, w_k, w_v, b_k))


@pytest.mark.parametrize("backend", KERNELS)
def test_varlen_matches_per_sequence(backend):
    x, w_q, w_k, _, _, _ = make_inputs(1, 23, 32, 2, 1, 16, torch.float32, False, False, seed=7)
    inv = table(16)
    cu = torch.tensor([0, 9, 9, 23], device=DEVICE)
    q, k = dk.fused_qk_rope_projection(x[0], w_q, w_k, inv, cu_seqlens=cu, offsets=[5, 0, 100],
                                       backend=backend)
    assert q.shape == (23, 2, 16)
    for start, end, off in ((0, 9, 5), (9, 23, 100)):
        q1, k1 = dk.fused_qk_rope_projection(x[:, start:end], w_q, w_k, inv, off, backend=backend)
        torch.testing.assert_close(q[start:end], q1[0])
        torch.testing.assert_close(k[start:end], k1[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("offsets", [100, torch.tensor(100), torch.tensor([100]), [100, 100, 100]],
                         ids=["int", "0-d", "1-element", "list"])
def test_scalar_offsets_with_batch_equal_explicit_positions(backend, offsets):
    x, w_q, w_k, _, _, _ = make_inputs(3, 6, 32, 2, 1, 16, torch.float32, False, False, seed=8)
    inv = table(16)
    explicit = (torch.arange(6, device=DEVICE) + 100).expand(3, 6)
    offsets = offsets.to(DEVICE) if isinstance(offsets, torch.Tensor) else offsets
    got = dk.fused_qk_rope_projection(x, w_q, w_k, inv, offsets=offsets, backend=backend)
    want = dk.fused_qk_rope_projection(x, w_q, w_k, inv, explicit, backend=backend)
    for g, w, ref in zip(got, want, reference(x, w_q, w_k, None, None, inv, explicit, False)):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
        check_close(g, ref, torch.float32)


def test_module_matches_separate_projection_and_rope():
    torch.manual_seed(11)
    table_ = table(32)
    fused = dk.FusedQKRopeProjection(48, 3, 1, 32, table_, bias=True).to(DEVICE)
    rope = dk.DPRoPERotaryEmbedding(table_, backend="torch").to(DEVICE)
    x = torch.randn(2, 7, 48, device=DEVICE)
    pos = torch.arange(7, device=DEVICE) + 1000
    q, k, v = fused(x, pos)
    q_ref, k_ref = rope(fused.q_proj(x).view(2, 7, 3, 32), fused.k_proj(x).view(2, 7, 1, 32), pos)
    torch.testing.assert_close(q, q_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k, k_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v, fused.v_proj(x).view(2, 7, 1, 32))


def test_module_from_attention_shares_weights():
    attention = torch.nn.Module()
    attention.q_proj, attention.k_proj, attention.v_proj = (torch.nn.Linear(16, n, bias=False)
                                                            for n in (32, 16, 16))
    attention.head_dim = 8
    fused = dk.FusedQKRopeProjection.from_attention(attention, table(8), backend="torch")
    assert fused.q_proj is attention.q_proj and fused.v_proj is attention.v_proj
    q, k, v = fused(torch.randn(1, 3, 16))
    assert q.shape == (1, 3, 4, 8) and k.shape == v.shape == (1, 3, 2, 8)
    with pytest.raises(TypeError, match="no nn.Linear q_proj"):
        dk.FusedQKRopeProjection.from_attention(torch.nn.Module(), table(8), head_dim=8)


def test_torch_compile_fullgraph():
    x, w_q, w_k, w_v, bias, pos = make_inputs(1, 9, 32, 2, 1, 16, torch.float32, True, False, seed=4)
    inv = dk.phase_tensor(table(16), device=DEVICE)

    def step(x, w_q, w_k, w_v, pos):
        q, k, v = dk.fused_qk_rope_projection(x, w_q, w_k, inv, pos, w_v=w_v, validate=False)
        return (q.sum() + k.square().sum() + v.sum())

    backend = "inductor" if DEVICE == "cuda" else "aot_eager"
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    w_q.requires_grad_()
    expected = step(x, w_q, w_k, w_v, pos)
    (g_expected,) = torch.autograd.grad(expected, w_q)
    got = compiled(x, w_q, w_k, w_v, pos)
    (g_got,) = torch.autograd.grad(got, w_q)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(g_got, g_expected)


def test_bad_inputs_raise_clear_errors():  # noqa: C901
    x, w_q, w_k, w_v, _, pos = make_inputs(1, 4, 16, 2, 1, 8, torch.float32, True, False)
    inv = table(8)
    f = dk.fused_qk_rope_projection
    cases = [
        (lambda: f(x[0], w_q, w_k, inv), ValueError, "x must be"),
        (lambda: f(x.int(), w_q, w_k, inv), TypeError, "x must be float"),
        (lambda: f(x, w_q[:, :8], w_k, inv), ValueError, "w_q must be"),
        (lambda: f(x, w_q[:15], w_k, inv), ValueError, "not a multiple of head_dim"),
        (lambda: f(x, w_q, w_k.half(), inv), TypeError, "w_k must have x's dtype"),
        (lambda: f(x, w_q, w_k, inv, head_dim=16), ValueError, "rotates\\s+whole heads|whole heads"),
        (lambda: f(x, w_q, w_k, inv, head_dim=7), ValueError, "head_dim must be"),
        (lambda: f(x, w_q, w_k, inv, head_dim=2.0), TypeError, "head_dim must be an int"),
        (lambda: f(x, w_q, w_k, inv, pos - 10**10), ValueError, "non-negative"),
        (lambda: f(x, w_q, w_k, inv, pos.float()), TypeError, "int32 or int64"),
        (lambda: f(x, w_q, w_k, inv, bias=(torch.zeros(16),)), ValueError, "one entry per projection"),
        (lambda: f(x, w_q, w_k, inv, bias=torch.zeros(16)), TypeError, "bias must be a sequence"),
        (lambda: f(x, w_q, w_k, inv, bias=(torch.zeros(3), None)), ValueError, "b_q must be"),
        (lambda: f(x, w_q, w_k, inv, w_v=w_v[:, :3]), ValueError, "w_v must be"),
        (lambda: f(x, w_q, w_k, inv, backend="nope"), ValueError, "backend must be"),
        (lambda: f(x, w_q, w_k, inv, q_norm_weight=torch.ones(4)), ValueError, "q_norm_weight must be"),
        (lambda: f(x, w_q, w_k, inv, q_norm_weight=torch.ones(24)), ValueError, "q_norm_weight must be"),
        (lambda: f(x, w_q, w_k, inv, k_norm_weight=torch.ones(8).double()), TypeError,
         "k_norm_weight must match"),
        (lambda: f(x, w_q, w_k, inv, norm_eps=-1.0), ValueError, "norm_eps"),
        (lambda: f(x, w_q, w_k, inv, interleaved="yes"), TypeError, "interleaved must be a bool"),
        (lambda: f(x, w_q, w_k, inv, pos, offsets=3), ValueError, "not both"),
        (lambda: f(x, w_q, w_k, torch.ones(4, dtype=torch.complex64)), TypeError, "real"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


def test_hidden_size_zero_is_refused_before_any_kernel():
    x, w = torch.randn(2, 3, 0, device=DEVICE), torch.randn(16, 0, device=DEVICE)
    with pytest.raises(ValueError, match="hidden size 0"):
        dk.fused_qk_rope_projection(x, w, w, table(8), backend="torch")


@pytest.mark.parametrize("eps", [np.float32(1e-6), np.float64(1e-5), 0])
def test_numpy_norm_eps_is_accepted(eps):
    x, w_q, w_k, _, _, pos = make_inputs(1, 4, 16, 2, 1, 8, torch.float32, False, False)
    n = torch.rand(8, device=DEVICE) + 0.5
    got = dk.fused_qk_rope_projection(x, w_q, w_k, table(8), pos, q_norm_weight=n, k_norm_weight=n,
                                      norm_eps=eps, backend="torch")
    want = reference(x, w_q, w_k, None, None, table(8), pos, False, (n, n), eps=float(eps))
    for g, ref in zip(got, want):
        check_close(g, ref, torch.float32)


@pytest.mark.parametrize("family", ["qwen3", "gemma3_text", "olmo2", "llama"])
def test_module_from_attention_applies_the_attentions_q_and_k_norms(family):
    """Qwen3 (per-head), Gemma 3 ((1 + weight) per head), OLMo2 (across heads), Llama (none)."""
    transformers = pytest.importorskip("transformers")
    from hf_families import build
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if family not in CONFIG_MAPPING:
        pytest.skip(f"transformers {transformers.__version__} has no {family}")
    model = build(family)
    attention = model.model.layers[0].self_attn
    with torch.no_grad():
        for norm in (getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)):
            if norm is not None:
                norm.weight.uniform_(0.5, 1.5)
    D = attention.head_dim
    inv = table(D)
    fused = dk.FusedQKRopeProjection.from_attention(attention, inv, backend="torch")
    x = torch.randn(2, 5, model.config.hidden_size)
    pos = torch.arange(5) + 300
    q, k, _ = fused(x, pos)
    with torch.no_grad():
        expected = []
        for proj, norm in ((attention.q_proj, "q_norm"), (attention.k_proj, "k_norm")):
            y = proj(x)
            norm = getattr(attention, norm, None)
            if norm is not None and norm.weight.numel() != D:  # OLMo2: across the token's heads
                y = norm(y)
            y = y.view(2, 5, -1, D)
            if norm is not None and norm.weight.numel() == D:
                y = norm(y)
            expected.append(reference_rope(y, inv, pos.expand(2, 5)))
    torch.testing.assert_close(q.double(), expected[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(k.double(), expected[1], rtol=1e-4, atol=1e-4)
    if getattr(attention, "q_norm", None) is not None:
        assert fused.q_norm is attention.q_norm  # shared, so training updates the model's own norm


# ------------------------------------------------------------------- the attention factor (scale)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
def test_scale_one_is_bitwise_the_result_without_scale(backend, interleaved):
    x, w_q, w_k, w_v, bias, pos = make_inputs(1, 9, 32, 2, 1, 16, torch.float32, True, True, seed=20)
    inv = table(16)
    w_q.requires_grad_()
    runs = []
    for kwargs in ({}, {"scale": 1.0}, {"scale": np.float64(1.0)}):
        outs = dk.fused_qk_rope_projection(x, w_q, w_k, inv, pos, w_v=w_v, bias=bias, interleaved=interleaved,
                                           backend=backend, **kwargs)
        runs.append((*outs, *torch.autograd.grad(sum(o.square().sum() for o in outs), w_q)))
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(run, runs[0]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("scale", [1.07, 0.5])
def test_scale_multiplies_q_and_k_not_v(backend, dtype, interleaved, scale):
    x, w_q, w_k, w_v, bias, pos = make_inputs(2, 11, 48, 3, 1, 32, dtype, True, True, seed=21)
    inv = table(32)
    outs = dk.fused_qk_rope_projection(x, w_q, w_k, inv, pos, w_v=w_v, bias=bias, interleaved=interleaved,
                                       backend=backend, scale=scale)
    for out, ref in zip(outs, reference(x, w_q, w_k, w_v, bias, inv, pos, interleaved, scale=scale)):
        check_close(out, ref, dtype)
    plain = dk.fused_qk_rope_projection(x, w_q, w_k, inv, pos, w_v=w_v, bias=bias, interleaved=interleaved,
                                        backend=backend)
    assert torch.equal(outs[2], plain[2]), "v is never scaled"


def test_gradcheck_float64_torch_backend_with_scale():
    g = torch.Generator().manual_seed(26)
    x = torch.randn(1, 4, 10, dtype=torch.float64, generator=g, requires_grad=True)
    w_q = torch.randn(16, 10, dtype=torch.float64, generator=g, requires_grad=True)
    w_k = torch.randn(8, 10, dtype=torch.float64, generator=g, requires_grad=True)
    n_k = (torch.rand(8, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    pos = torch.tensor([[3, 70000, 10**9, 5]])

    def fn(x, w_q, w_k, n_k):
        return dk.fused_qk_rope_projection(x, w_q, w_k, table(8), pos, k_norm_weight=n_k, backend="torch",
                                           scale=0.5)

    assert torch.autograd.gradcheck(fn, (x, w_q, w_k, n_k))


@pytest.mark.parametrize("backend", KERNELS)
def test_scale_varlen_matches_per_sequence(backend):
    x, w_q, w_k, _, _, _ = make_inputs(1, 23, 32, 2, 1, 16, torch.float32, False, False, seed=27)
    inv = table(16)
    cu = torch.tensor([0, 9, 9, 23], device=DEVICE)
    q, k = dk.fused_qk_rope_projection(x[0], w_q, w_k, inv, cu_seqlens=cu, offsets=[5, 0, 100],
                                       backend=backend, scale=1.07)
    for start, end, off in ((0, 9, 5), (9, 23, 100)):
        q1, k1 = dk.fused_qk_rope_projection(x[:, start:end], w_q, w_k, inv, off, backend=backend, scale=1.07)
        torch.testing.assert_close(q[start:end], q1[0])
        torch.testing.assert_close(k[start:end], k1[0])


def test_torch_compile_fullgraph_with_scale():
    x, w_q, w_k, w_v, _, pos = make_inputs(1, 9, 32, 2, 1, 16, torch.float32, True, False, seed=28)
    inv = dk.phase_tensor(table(16), device=DEVICE)

    def step(x, w_q, w_k, w_v, pos, scale):
        q, k, v = dk.fused_qk_rope_projection(x, w_q, w_k, inv, pos, w_v=w_v, validate=False, scale=scale)
        return q.sum() + k.square().sum() + v.sum()

    compiled = torch.compile(step, fullgraph=True, backend="inductor" if DEVICE == "cuda" else "aot_eager")
    w_q.requires_grad_()
    for scale in (1.07, 0.5):
        expected = step(x, w_q, w_k, w_v, pos, scale)
        got = compiled(x, w_q, w_k, w_v, pos, scale)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(torch.autograd.grad(got, w_q)[0], torch.autograd.grad(expected, w_q)[0])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), True, torch.tensor(1.07), "1.07"],
                         ids=["zero", "negative", "nan", "inf", "True", "tensor", "string"])
def test_bad_scales_are_refused_before_any_work(bad, monkeypatch):
    from dprope_kernels.ops import fused_projection

    launches = []
    monkeypatch.setattr(fused_projection, "_launch", lambda *args: launches.append(args))
    x, w_q, w_k, _, _, pos = make_inputs(1, 4, 16, 2, 1, 8, torch.float32, False, False)
    error = TypeError if isinstance(bad, (bool, str, torch.Tensor)) else ValueError
    with pytest.raises(error, match="scale must be a (positive real|finite positive) number"):
        dk.fused_qk_rope_projection(x, w_q, w_k, table(8), pos, scale=bad)
    assert not launches


def test_module_attention_factor_from_the_table_or_given():
    class Plan:  # a table object carrying its attention factor, as a RopePlan will
        inv_freq = table(16)
        attention_factor = 1.07

    torch.manual_seed(29)
    x = torch.randn(1, 5, 24, device=DEVICE)
    pos = torch.arange(5, device=DEVICE) + 40
    from_table = dk.FusedQKRopeProjection(24, 2, 1, 16, Plan(), backend="torch").to(DEVICE)
    given = dk.FusedQKRopeProjection.from_attention(from_table, table(16), head_dim=16, backend="torch",
                                                    attention_factor=0.5)
    plain = dk.FusedQKRopeProjection.from_attention(from_table, table(16), head_dim=16, backend="torch")
    assert (from_table.attention_factor, given.attention_factor, plain.attention_factor) == (1.07, 0.5, 1.0)
    assert "attention_factor=1.07" in repr(from_table)
    for module in (from_table, given, plain):
        got = module(x, pos)
        weights = (from_table.q_proj.weight, from_table.k_proj.weight)
        want = dk.fused_qk_rope_projection(x, *weights, table(16), pos, w_v=from_table.v_proj.weight,
                                           backend="torch", scale=module.attention_factor)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    with pytest.raises(ValueError, match="attention_factor must be a finite positive"):
        dk.FusedQKRopeProjection(24, 2, 1, 16, table(16), attention_factor=-1.0)

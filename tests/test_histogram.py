"""angle_histogram: every backend bit-identical to brute-force integer arithmetic."""

import numpy as np
import pytest
import torch
from conftest import requires_cuda

import dprope_kernels as dk
from dprope_kernels import phase
from dprope_kernels.backends import unavailable

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [b for b in ("torch", "triton", "cuda") if unavailable(b, torch.device(DEVICE)) is None]


def brute(inv_freq, positions, bins, weights=None):
    phases = phase.frequency_phases(inv_freq)
    out = np.zeros((len(phases), bins),
                   dtype=np.float64 if weights is not None and weights.dtype.is_floating_point else np.int64)
    w = [1] * len(positions) if weights is None else weights.tolist()
    for i, p in enumerate(phases):
        for m, wt in zip(positions, w):
            out[i, (m * p % phase.TURN) * bins >> 64] += wt
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bins", [2, 360, 1000])
def test_range_counts(backend, bins):
    inv = dk.default_inv_freq(16, 10000.0)
    start = 2**33 + 5
    got = dk.angle_histogram(inv.to(DEVICE), length=1500, start=start, bins=bins, backend=backend)
    assert got.dtype == torch.int64 and got.shape == (8, bins)
    np.testing.assert_array_equal(got.cpu().numpy(), brute(inv, range(start, start + 1500), bins))


@pytest.mark.parametrize("backend", BACKENDS)
def test_explicit_positions_and_weights(backend):
    torch.manual_seed(0)
    inv = torch.tensor([1.0, 0.3, 1e-4, 2.0], dtype=torch.float64)
    pos = torch.randint(0, 2**40, (777,), device=DEVICE)
    counts = dk.angle_histogram(inv, pos, bins=90, backend=backend)
    np.testing.assert_array_equal(counts.cpu().numpy(), brute(inv, pos.tolist(), 90))
    int_w = torch.randint(0, 5, (777,), device=DEVICE)
    summed = dk.angle_histogram(inv, pos, bins=90, weights=int_w, backend=backend)
    assert summed.dtype == torch.int64
    np.testing.assert_array_equal(summed.cpu().numpy(), brute(inv, pos.tolist(), 90, int_w.cpu()))
    float_w = torch.rand(777, dtype=torch.float64, device=DEVICE)
    fsum = dk.angle_histogram(inv, (pos % 2**31).to(torch.int32), bins=90, weights=float_w, backend=backend)
    assert fsum.dtype == torch.float64
    np.testing.assert_allclose(fsum.cpu().numpy(), brute(inv, (pos % 2**31).tolist(), 90, float_w.cpu()),
                               rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_strided_phase_table_is_read_by_its_strides(backend):
    inv = dk.default_inv_freq(32, 10000.0)
    every_other = dk.phase_tensor(inv).to(DEVICE)[::2]
    got = dk.angle_histogram(every_other, length=300, start=7, bins=90, phases=True, backend=backend)
    np.testing.assert_array_equal(got.cpu().numpy(), brute(inv[::2], range(7, 307), 90))


def test_backends_agree_on_a_long_range():
    if "triton" not in BACKENDS:
        pytest.skip("triton backend unavailable")
    inv = dk.default_inv_freq(128, 10000.0)[::9].to(DEVICE)
    n = 1 << 14 if DEVICE == "cpu" else 1 << 22
    a = dk.angle_histogram(inv, length=n, backend="torch")
    b = dk.angle_histogram(inv, length=n, backend="triton")
    assert torch.equal(a.cpu(), b.cpu())
    assert (a.sum(1) == n).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bins", [(1 << 20) + 3, 1 << 24])
def test_bins_up_to_2_to_the_24_on_every_backend(backend, bins):
    inv = torch.tensor([0.7, 1e-3], dtype=torch.float64)
    pos = torch.randint(0, 2**40, (300,), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    got = dk.angle_histogram(inv, pos, bins=bins, backend=backend)
    assert got.shape == (2, bins) and int(got.sum()) == 600
    nonzero = got.nonzero().cpu()
    want = brute(inv, pos.tolist(), bins)
    expected = torch.from_numpy(np.stack(np.nonzero(want), axis=1))
    assert torch.equal(nonzero, expected)
    assert torch.equal(got.cpu()[nonzero[:, 0], nonzero[:, 1]], torch.from_numpy(want[want != 0]))


def test_float_weight_sums_are_deterministic_on_the_cpu():
    inv = dk.default_inv_freq(16, 10000.0)
    pos = torch.randint(0, 2**31, (5000,), generator=torch.Generator().manual_seed(3))
    w = torch.rand(5000, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    first = dk.angle_histogram(inv, pos, bins=64, weights=w, backend="torch")
    assert torch.equal(first, dk.angle_histogram(inv, pos, bins=64, weights=w, backend="torch"))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(length=10, start=2**63 - 5), ValueError, "past the largest position"),
    (dict(length=2**63), ValueError, "length must be <="),
    (dict(length=10, start=-1), ValueError, "start must be >= 0"),
    (dict(length=10, start=1.5), TypeError, "start must be an int"),
    (dict(positions=torch.arange(3), weights=torch.ones(3, dtype=torch.complex64)), TypeError,
     "real numbers"),
    (dict(positions=torch.arange(3), weights=torch.ones(3, dtype=torch.bool)), TypeError, "real numbers"),
    (dict(length=10, phases="yes"), TypeError, "phases must be a bool"),
])
def test_ranges_past_2_to_the_63_and_odd_weights_get_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        dk.angle_histogram(torch.tensor([1.0, 0.5]), **kwargs)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(), ValueError, "positions or length"),
    (dict(length=10, positions=torch.arange(3)), ValueError, "not both"),
    (dict(length=-1), ValueError, "length"),
    (dict(length=10, bins=1), ValueError, "bins"),
    (dict(positions=torch.arange(3.0)), TypeError, "int32/int64"),
    (dict(positions=torch.arange(4).reshape(2, 2)), ValueError, "1-D"),
    (dict(positions=torch.tensor([3, -1])), ValueError, "non-negative"),
    (dict(positions=torch.arange(3), weights=torch.ones(4)), ValueError, "weights"),
    (dict(length=10, backend="cuda"), RuntimeError, "cuda"),
])
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        dk.angle_histogram(torch.tensor([1.0, 0.5]), **kwargs)


@requires_cuda
def test_planner_on_gpu_equals_cpu():
    cpu = dk.plan_dprope(factor=4)
    gpu = dk.plan_dprope(factor=4, device="cuda")
    assert cpu.interpolated_pairs == gpu.interpolated_pairs
    assert cpu.disturbance == gpu.disturbance
    assert cpu.baselines == gpu.baselines

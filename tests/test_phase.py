"""Exact fixed-point angle arithmetic vs brute force in rational / integer arithmetic."""

import math
import random
from fractions import Fraction

import numpy as np
import pytest
import torch

from dprope_kernels import phase

PI = Fraction("3.14159265358979323846264338327950288419716939937510582097494459230781640628620899863")


def exact_bin(theta: float, m: int, bins: int) -> int:
    """floor(bins * frac(m * theta / 2pi)) in rational arithmetic, independent of the fixed point."""
    turns = Fraction(theta) * m / (2 * PI)
    return math.floor(bins * (turns - math.floor(turns)))


def brute_counts(phases, positions, bins):
    out = np.zeros((len(phases), bins), dtype=np.int64)
    for i, p in enumerate(phases):
        for m in positions:
            out[i, (m * p % phase.TURN) * bins >> 64] += 1
    return out


def test_phase_is_the_rounded_fraction_of_a_turn():
    values = [1.0, 0.5, 1e-4, 3.0, 2 * math.pi, 7.5, 0.0]
    for v, p in zip(values, phase.frequency_phases(values)):
        target = Fraction(v) / (2 * PI) * phase.TURN
        assert abs(Fraction(p) - (target % phase.TURN)) <= Fraction(1, 2) or p == 0
    full_turn = phase.frequency_phases([2 * math.pi])[0]  # float64 2pi is 2.4e-16 short of a turn
    assert 0 < phase.TURN - full_turn < 2**11
    assert phase.frequency_phases([-1.0]) == [phase.TURN - phase.frequency_phases([1.0])[0]]
    assert phase.frequency_phases([0.0]) == [0]


def test_phase_rejects_non_finite():
    with pytest.raises(ValueError, match="finite"):
        phase.frequency_phases([1.0, float("nan")])


def test_bin_index_matches_integer_arithmetic():
    rng = random.Random(0)
    turns = [rng.getrandbits(64) for _ in range(2000)] + [0, 1, phase.TURN - 1, 1 << 63, (1 << 63) - 1]
    for bins in (2, 7, 360, 1000, 1 << 20):
        t = torch.tensor(phase.to_signed(turns), dtype=torch.int64)
        got = phase.bin_index(t, bins).tolist()
        assert got == [u * bins >> 64 for u in turns]
        assert max(got) < bins and min(got) >= 0


@pytest.mark.parametrize("positions", [
    list(range(0, 300)),
    [2**24 + 1, 2**24 + 3, 2**31 - 1, 10**9 + 7, 2**40 + 5, 10**12],
])
def test_fixed_point_bins_equal_rational_bins(positions):
    """The fixed-point bin equals the real-number bin, also where float32 cannot hold m * theta."""
    thetas = [1.0, 0.8659643, 1e-4, 0.01, 3.3]
    phases = phase.frequency_phases(thetas)
    for theta, p in zip(thetas, phases):
        for m in positions:
            assert (m * p % phase.TURN) * 360 >> 64 == exact_bin(theta, m, 360)


def test_float32_angles_are_wrong_far_out_and_exact_ones_are_not():
    theta = 0.8659643  # pair 1 of LLaMA-2
    m = 10**9 + 7
    f32_angle = float(np.float32(theta) * np.float32(m)) % (2 * math.pi)
    exact_turns = Fraction(np.float32(theta).item()) * m / (2 * PI)
    exact_angle = float((exact_turns - math.floor(exact_turns)) * 2 * PI)
    assert abs(f32_angle - exact_angle) > 1.0  # float32 loses the angle completely at 1e9
    p = phase.frequency_phases([np.float32(theta).item()])[0]
    u = torch.tensor(phase.to_signed([m * p % phase.TURN]), dtype=torch.int64)
    angle = float(phase.turn_to_radians(u)) % (2 * math.pi)
    # the phase is rounded to half a unit of 2**-64 turns, so the error grows at most m times that
    assert abs(angle - exact_angle) <= m * math.pi / phase.TURN + 1e-14


@pytest.mark.parametrize("bins", [2, 36, 360, 1001])
@pytest.mark.parametrize("start", [0, 5, 2**33 + 11])
def test_range_counts_direct_lattice_and_brute_force_agree(bins, start):
    rng = random.Random(bins * 7 + start)
    inv_freq = [1.0, 0.75, 1e-3, 2.5e-5, 0.0] + [rng.uniform(0, 4) for _ in range(4)]
    phases = phase.frequency_phases(inv_freq)
    length = 1237
    brute = brute_counts(phases, range(start, start + length), bins)
    direct = phase.count_range(phases, length, bins, start=start, method="direct")
    lattice = phase.count_range(phases, length, bins, start=start, method="lattice")
    np.testing.assert_array_equal(direct, brute)
    np.testing.assert_array_equal(lattice, brute)
    assert (lattice.sum(axis=1) == length).all()


def test_lattice_counts_a_million_positions_like_direct():
    inv = (1.0 / (10000 ** (torch.arange(0, 128, 2).float() / 128))).double()
    phases = phase.frequency_phases(inv[::7])
    n = 1 << 20
    np.testing.assert_array_equal(
        phase.count_range(phases, n, 360, method="lattice"),
        phase.count_range(phases, n, 360, method="direct"),
    )


def test_range_counts_check_arguments():
    with pytest.raises(ValueError, match="bins"):
        phase.count_range([1], 10, 1)
    with pytest.raises(TypeError, match="bins"):
        phase.count_range([1], 10, 3.5)
    with pytest.raises(ValueError, match="length"):
        phase.count_range([1], -1, 10)
    with pytest.raises(ValueError, match="method"):
        phase.count_range([1], 10, 10, method="fast")

"""Exact rotary angles: each frequency as a 64-bit fixed-point fraction of a turn.

A frequency ``theta`` (radians per position) is held as

    phase = round(theta / (2 pi) * 2**64) mod 2**64

so that the angle of an integer position ``m`` is ``(m * phase mod 2**64) / 2**64`` turns: an
integer multiply that wraps, exact for every position. Its top bits give the histogram bin; read
as a signed integer and scaled by ``2 pi / 2**64`` it is an angle in ``[-pi, pi)`` for sin/cos.
Torch, Triton and CUDA all use this arithmetic, so they agree bit for bit on histograms.

Phases live on the host as Python ints in ``[0, 2**64)``; on devices as int64 tensors holding the
same bits (two's complement). Counting the positions of an arithmetic progression per bin needs
no visit to each position: it is a lattice-point count done with a floor-sum, whose cost grows
with ``log(length)`` rather than ``length``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fractions import Fraction

import numpy as np
import torch

from .errors import InvalidType, InvalidValue

TURN_BITS = 64
TURN = 1 << TURN_BITS
MAX_BINS = 1 << 24  # bin_index multiplies 32-bit halves by `bins`; this keeps every product in int64

_PI = Fraction(
    "3.14159265358979323846264338327950288419716939937510582097494459230781640628620899863"
)
_TURNS_PER_RADIAN = Fraction(TURN) / (2 * _PI)
RADIANS_PER_PHASE_UNIT = 2 * math.pi / TURN  # float64; multiplies a signed int64 phase

# Below this many (frequency x position) pairs, counting positions one by one beats the floor-sum.
_DIRECT_COUNT_LIMIT = 1 << 24
_DIRECT_CHUNK = 1 << 20


def frequency_phases(inv_freq: Iterable[float] | torch.Tensor | np.ndarray) -> list[int]:
    """Phases of a frequency table, as Python ints in ``[0, 2**64)``.

    Args:
        inv_freq: ``[n_freq]`` frequencies in radians per position (any float dtype; the values
            are read exactly as float64). Must be finite.
    """
    if isinstance(inv_freq, torch.Tensor):
        values = inv_freq.detach().to("cpu", torch.float64).reshape(-1).tolist()
    else:
        values = np.asarray(inv_freq, dtype=np.float64).reshape(-1).tolist()
    phases = []
    for v in values:
        if not math.isfinite(v):
            raise InvalidValue(f"inv_freq must be finite, got {v}")
        phases.append(round(Fraction(v) * _TURNS_PER_RADIAN) % TURN)
    return phases


def to_signed(phases: Sequence[int]) -> list[int]:
    """The same 64 bits read as signed int64 (how tensors hold phases)."""
    return [p - TURN if p >= TURN // 2 else p for p in phases]


def phase_tensor(inv_freq, device=None) -> torch.Tensor:
    """``[n_freq]`` int64 tensor of phases (two's complement) on ``device``."""
    if device is None and isinstance(inv_freq, torch.Tensor):
        device = inv_freq.device
    return torch.tensor(to_signed(frequency_phases(inv_freq)), dtype=torch.int64, device=device)


def check_bins(bins: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)):
        raise InvalidType(f"bins must be an int, got {type(bins).__name__}")
    if not 2 <= bins <= MAX_BINS:
        raise InvalidValue(f"bins must be in [2, {MAX_BINS}], got {bins}")


def bin_index(turn: torch.Tensor, bins: int) -> torch.Tensor:
    """``floor(bins * turn / 2**64)`` for int64 tensors holding unsigned turn fractions.

    Exact: the 64-bit value is split into 32-bit halves so no product leaves int64.
    """
    hi = (turn >> 32) & 0xFFFFFFFF
    lo = turn & 0xFFFFFFFF
    return (hi * bins + ((lo * bins) >> 32)) >> 32


def turn_to_radians(turn: torch.Tensor) -> torch.Tensor:
    """Angle in ``[-pi, pi)`` (float64) of int64 turn fractions; congruent to the exact angle."""
    return turn.to(torch.float64) * RADIANS_PER_PHASE_UNIT


def _bin_thresholds(bins: int) -> list[int]:
    """``T_k = ceil(k * 2**64 / bins)``: a turn fraction ``u`` lies in a bin below ``k`` iff ``u < T_k``."""
    return [-(-k * TURN // bins) for k in range(bins + 1)]


def count_range_direct(phases: Sequence[int], length: int, bins: int, start: int = 0) -> np.ndarray:
    """Per-bin counts of positions ``start .. start+length-1``, visiting every position.

    Returns ``[n_freq, bins]`` int64.
    """
    out = np.zeros((len(phases), bins), dtype=np.int64)
    u64 = np.uint64
    mask, shift, nbins = u64(0xFFFFFFFF), u64(32), u64(bins)
    for lo_pos in range(0, length, _DIRECT_CHUNK):
        # positions are reduced mod 2**64 so negative starts wrap like the int64 kernels
        first = (start + lo_pos) % TURN
        m = np.arange(min(_DIRECT_CHUNK, length - lo_pos), dtype=np.uint64) + u64(first)
        for i, p in enumerate(phases):
            u = m * u64(p)
            b = ((u >> shift) * nbins + (((u & mask) * nbins) >> shift)) >> shift
            out[i] += np.bincount(b.astype(np.int64), minlength=bins)
    return out


def _floor_sum(n: np.ndarray, m: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_{j<n} floor((a j + b) / m)`` elementwise, for object arrays of Python ints >= 0.

    The Euclid-like recursion swaps the roles of ``a`` and ``m`` each step, so it ends after
    O(log) steps; finished elements are dropped from the working set.
    """
    total = np.zeros(n.shape, dtype=object)
    idx = np.arange(n.shape[0])
    while idx.size:
        q = a // m
        total[idx] += (n * (n - 1) // 2) * q
        a = a - q * m
        q = b // m
        total[idx] += n * q
        b = b - q * m
        y = a * n + b
        n_next = y // m
        live = n_next > 0
        b_next = y - n_next * m
        n, m, a, b = n_next[live], a[live], m[live], b_next[live]
        idx = idx[live]
    return total


def count_range_lattice(phases: Sequence[int], length: int, bins: int, start: int = 0) -> np.ndarray:
    """Per-bin counts of positions ``start .. start+length-1`` by lattice-point counting.

    With ``u(j) = (p j + c) mod 2**64`` (``c = p * start``), ``[u(j) < T] = floor((p j + c)/M)
    - floor((p j + c - T)/M)``; summing over ``j`` gives two floor-sums per bin threshold.
    Returns ``[n_freq, bins]`` int64, identical to :func:`count_range_direct`.
    """
    thresholds = _bin_thresholds(bins)[1:-1]  # T_0 = 0 and T_bins = 2**64 are known: 0 and length
    n_freq, n_thr = len(phases), len(thresholds)
    p = np.array([int(x) for x in phases], dtype=object)
    c = np.array([int(x) * start % TURN for x in phases], dtype=object)

    def full(value, size):
        arr = np.empty(size, dtype=object)
        arr[:] = value
        return arr

    p_rep = np.repeat(p, n_thr)
    c_rep = np.repeat(c, n_thr)
    t_rep = np.tile(np.array(thresholds, dtype=object), n_freq)
    size = n_freq * (n_thr + 1)
    # one batched call: n_thr shifted sums per frequency, then the unshifted sum per frequency
    sums = _floor_sum(
        full(length, size),
        full(TURN, size),
        np.concatenate([p_rep, p]),
        np.concatenate([c_rep - t_rep + TURN, c]),
    )
    shifted = sums[: n_freq * n_thr].reshape(n_freq, n_thr)
    unshifted = sums[n_freq * n_thr :].reshape(n_freq, 1)
    below = unshifted - shifted  # = #{j : u(j) < T} - length, since c - T + M carries one extra turn
    below = below + length
    cumulative = np.zeros((n_freq, bins + 1), dtype=np.int64)
    cumulative[:, 1:-1] = below.astype(np.int64)
    cumulative[:, -1] = length
    return np.diff(cumulative, axis=1)


def count_range(
    phases: Sequence[int], length: int, bins: int, start: int = 0, method: str = "auto"
) -> np.ndarray:
    """Per-bin counts ``[n_freq, bins]`` (int64) of the positions ``start .. start+length-1``.

    ``method``: ``"direct"`` visits every position, ``"lattice"`` counts lattice points (cost
    independent of ``length``), ``"auto"`` picks the cheaper.
    """
    check_bins(bins)
    if length < 0:
        raise InvalidValue(f"length must be >= 0, got {length}")
    if method == "auto":
        method = "direct" if len(phases) * length <= _DIRECT_COUNT_LIMIT else "lattice"
    if not phases or length == 0:
        return np.zeros((len(phases), bins), dtype=np.int64)
    if method == "direct":
        return count_range_direct(phases, length, bins, start)
    if method == "lattice":
        return count_range_lattice(phases, length, bins, start)
    raise InvalidValue(f"method must be 'auto', 'direct' or 'lattice', got {method!r}")

"""angle_histogram: per-bin counts of exact rotary angles, for a position range or tensor."""

from __future__ import annotations

import torch

from .. import phase
from ..backends import choose_backend
from ..errors import InvalidType, InvalidValue
from .checks import MAX_POSITION, check_flag, check_int
from .tables import table_phases

_CHUNK = 1 << 22  # (frequency x position) pairs per chunk on the torch path


def histogram_torch(phases, positions, n_pos, start, bins, weights, out) -> None:
    """Reference: exact bins from the fixed-point turns, accumulated into ``out`` ``[n_freq, bins]``."""
    n_freq = phases.numel()
    offsets = torch.arange(n_freq, device=out.device).reshape(-1, 1) * bins
    step = max(1, _CHUNK // max(n_freq, 1))
    flat = out.view(-1)
    for lo in range(0, n_pos, step):
        hi = min(lo + step, n_pos)
        if positions is None:
            pos = torch.arange(start + lo, start + hi, device=out.device, dtype=torch.int64)
        else:
            pos = positions[lo:hi].to(torch.int64)
        idx = (phase.bin_index(phases.reshape(-1, 1) * pos.reshape(1, -1), bins) + offsets).reshape(-1)
        w = torch.ones(1, dtype=out.dtype, device=out.device).expand(idx.numel()) if weights is None \
            else weights[lo:hi].to(out.dtype).reshape(1, -1).expand(n_freq, -1).reshape(-1)
        flat.index_add_(0, idx, w)


def angle_histogram(
    inv_freq,
    positions: torch.Tensor | None = None,
    *,
    length: int | None = None,
    start: int = 0,
    bins: int = 360,
    weights: torch.Tensor | None = None,
    backend: str = "auto",
    phases: bool = False,
    device=None,
) -> torch.Tensor:
    """Histogram of exact rotary angles ``m * inv_freq_i mod 2 pi`` over positions ``m``.

    Args:
        inv_freq: ``[n_freq]`` float table (radians per position); with ``phases=True`` an int64
            tensor of fixed-point phases instead.
        positions: ``[N]`` int32/int64 positions (>= 0); or None with ``length``: the range
            ``start .. start + length - 1``.
        bins: equal slices of the turn, ``[2, 2**24]``.
        weights: optional ``[N]`` (or ``[length]``) real per-position weights: integer weights give
            int64 sums, float weights float64 sums.
        backend: ``"auto"``, ``"torch"``, ``"triton"``, ``"cuda"``.
        device: where to count when ``positions`` is None (default: inv_freq's device).

    Returns:
        ``[n_freq, bins]`` int64 counts (float64 with float weights). Counts and integer-weight
        sums are exact and identical on every backend. Float weights are summed in float64: on
        the CPU in a fixed order; on GPU backends with atomics, in an order that can change from
        run to run, so those sums agree with each other and with the CPU to float64 rounding
        (relative ~1e-16 per added weight) but not always bit for bit.
    """
    phase.check_bins(bins)
    phases = check_flag("phases", phases)
    if positions is None:
        if length is None:
            raise InvalidValue("give positions or length")
        length = check_int("length", length, 0, MAX_POSITION)
        start = check_int("start", start, 0, MAX_POSITION)
        if length and start + length - 1 > MAX_POSITION:
            raise InvalidValue(f"start + length - 1 = {start + length - 1} is past the largest position "
                               f"2**63 - 1")
        if device is None:
            device = inv_freq.device if isinstance(inv_freq, torch.Tensor) else torch.device("cpu")
        n_pos = length
    else:
        if length is not None:
            raise InvalidValue("give positions or length, not both")
        if not isinstance(positions, torch.Tensor) or positions.dtype not in (torch.int32, torch.int64):
            raise InvalidType("positions must be an int32/int64 tensor")
        if positions.dim() != 1:
            raise InvalidValue(f"positions must be 1-D [N], got shape {tuple(positions.shape)}")
        if positions.numel() and bool((positions < 0).any()):
            raise InvalidValue("positions must be non-negative")
        device = positions.device
        n_pos = positions.numel()
        positions = positions.contiguous()
    device = torch.device(device)
    if phases:
        if not isinstance(inv_freq, torch.Tensor) or inv_freq.dtype != torch.int64 or inv_freq.dim() != 1:
            raise InvalidType("with phases=True, inv_freq must be a 1-D int64 tensor of phases")
        table = inv_freq.to(device).contiguous()  # the kernels read phases as one contiguous run
    else:
        table = table_phases(inv_freq, device)
    out_dtype = torch.int64
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or weights.dim() != 1 or weights.numel() != n_pos:
            raise InvalidValue(f"weights must be a 1-D tensor of {n_pos} values (one per position)")
        if weights.is_complex() or weights.dtype == torch.bool:
            raise InvalidType(f"weights must be real numbers (integer or float), got {weights.dtype}")
        if weights.device != device:
            raise InvalidValue(f"weights must be on {device}, got {weights.device}")
        out_dtype = torch.float64 if weights.is_floating_point() else torch.int64
        weights = weights.to(out_dtype).contiguous()
    out = torch.zeros(table.numel(), bins, dtype=out_dtype, device=device)
    name = choose_backend(backend, device, op="histogram")
    _launch(name, table, positions, n_pos, start, bins, weights, out)
    return out


def _launch(backend: str, table, positions, n_pos, start, bins, weights, out) -> None:
    if backend == "cuda":
        from ..cuda import extension

        pos64 = positions.to(torch.int64).contiguous() if positions is not None else None
        extension().histogram(table.contiguous(), pos64, weights, out, n_pos, start, bins)
    elif backend == "triton":
        from ..triton.histogram import histogram_triton

        histogram_triton(table, positions, n_pos, start, bins, weights, out)
    elif positions is None and weights is None and out.device.type == "cpu":
        signed = table.tolist()
        out.copy_(torch.from_numpy(phase.count_range([p % phase.TURN for p in signed], n_pos, bins, start)))
    else:
        histogram_torch(table, positions, n_pos, start, bins, weights, out)

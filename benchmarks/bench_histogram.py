"""GPU benchmark of the exact angle histogram: 64 pairs x 2**20 positions x 2 strategies, 360 bins.

    python benchmarks/bench_histogram.py --out benchmarks/results/histogram-<device>.json [--budget-s 15]
    python benchmarks/bench_histogram.py --dry-run     # what it measures (no GPU)

Counts the rotary angles of DPRoPE's extrapolation and interpolation tables (head dim 128, factor 4:
2 x 64 phases) over positions 0 .. 2**20 - 1 with ours (triton, cuda), the op's torch path on the
GPU, and ``torch.bincount`` over bin indices materialized beforehand (their computation not timed).
Reports median ms (triton.testing.do_bench), counts per second, and ``fraction_of_copy``: the
counting rate in bytes of one int32 bin index per (pair, position) -- the least a histogram of
precomputed angles must read -- as a fraction of the device copy bandwidth measured in the same
process (above 1 means faster than reading precomputed bins could be). ``exact`` says whether the
counts equal the torch path's. The JSON is rewritten after every measurement.
"""

from __future__ import annotations

import torch
from common import Budget, Report, bench_ms, copy_bandwidth, parse_on_cuda

import dprope_kernels as dk
from dprope_kernels import phase
from dprope_kernels.backends import unavailable

LENGTH, BINS, BYTES_PER_COUNT = 1 << 20, 360, 4
PROVIDERS = ["dprope_triton", "dprope_cuda", "torch_bincount_of_materialized_bins", "dprope_torch"]
MEASURE_S = 3  # seconds a measurement may take (Triton JIT included)


def strategy_phases() -> torch.Tensor:
    """The int64 phases of both strategies' tables, concatenated ([2 x 64]) on the GPU."""
    plan = dk.plan_dprope(head_dim=128, factor=4)
    tables = [dk.phase_tensor(plan.tables[name]) for name in ("extrapolation", "interpolation")]
    return torch.cat(tables).cuda()


def bincount_of_materialized_bins(phases: torch.Tensor):
    """A callable counting precomputed flat bin indices (int32) with ``torch.bincount``."""
    pos = torch.arange(LENGTH, device=phases.device, dtype=torch.int64)
    offsets = torch.arange(phases.numel(), device=phases.device).reshape(-1, 1) * BINS
    flat = (phase.bin_index(phases.reshape(-1, 1) * pos.reshape(1, -1), BINS) + offsets).reshape(-1)
    flat = flat.to(torch.int32)
    return lambda: torch.bincount(flat, minlength=phases.numel() * BINS).view(phases.numel(), BINS)


def providers(phases: torch.Tensor) -> dict:
    """Name -> a callable returning [pairs, bins] counts, or why it is not measured; slowest last."""
    def ours(backend):
        reason = unavailable(backend, phases.device)
        if reason:
            return f"unavailable: {reason}"
        return lambda: dk.angle_histogram(phases, length=LENGTH, bins=BINS, phases=True, backend=backend)

    out = {f"dprope_{backend}": ours(backend) for backend in ("triton", "cuda")}
    out["torch_bincount_of_materialized_bins"] = bincount_of_materialized_bins(phases)
    out["dprope_torch"] = ours("torch")
    return out


def plan() -> list[str]:
    """What the benchmark measures, in order."""
    return [f"count 2 x 64 pairs x {LENGTH} positions, {BINS} bins: {', '.join(PROVIDERS)}"]


def main():
    args = parse_on_cuda(__doc__, plan)
    if args is None:
        return
    budget = Budget(args.budget_s)
    bandwidth = copy_bandwidth()
    report = Report(args.out, **{"copy_bandwidth_GB/s": bandwidth / 1e9})
    phases = strategy_phases()
    reference = dk.angle_histogram(phases, length=LENGTH, bins=BINS, phases=True, backend="torch")
    counts = phases.numel() * LENGTH
    shape = {"pairs": phases.numel() // 2, "strategies": 2, "positions": LENGTH, "bins": BINS}
    rows = report.run(shape=shape, **{"pass": "count"})
    for name, fn in providers(phases).items():
        skipped = fn if isinstance(fn, str) else budget.skip(MEASURE_S)
        if skipped:
            report.record(rows, name, skipped)
            continue
        exact = bool(torch.equal(fn().to(torch.int64), reference))
        ms = bench_ms(fn)
        rate = counts * BYTES_PER_COUNT / (ms * 1e-3)
        report.record(rows, name, {"ms": ms, "Gcounts/s": counts / (ms * 1e-3) / 1e9, "GB/s": rate / 1e9,
                                   "fraction_of_copy": rate / bandwidth, "exact": exact})
    report.finish()


if __name__ == "__main__":
    main()

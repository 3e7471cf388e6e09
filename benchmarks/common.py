"""Shared pieces of the GPU benchmarks: the CUDA check, the hardware ceilings, the time budget, what to
time, and the JSON report.

Every benchmark measures its ceilings (device copy bandwidth, bf16 GEMM rate) in its own process and
rewrites its JSON report whole after every measurement, so a run cut short keeps what it measured. Each
takes ``--budget-s``: before each measurement it checks that the time it may take is left, and records
"skipped: budget" otherwise, so it ends within the limit ``verify_gpu.py`` gives it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import torch


def require_cuda(parser: argparse.ArgumentParser) -> None:
    """Exit with status 2 and one line on stderr when torch sees no CUDA device."""
    if not torch.cuda.is_available():
        parser.exit(2, f"{parser.prog}: error: needs a CUDA GPU; torch {torch.__version__} sees none "
                       f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r})\n")


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes: ``--out``, ``--budget-s``, ``--dry-run`` (the description:
    ``doc``'s first paragraph)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="JSON report (rewritten after every measurement)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds the benchmark may take; a measurement that may not fit is skipped")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what it would measure, in order (needs no GPU)")
    return parser


def parse_on_cuda(doc: str, plan) -> argparse.Namespace | None:
    """The benchmark's flags; None after ``--dry-run`` printed ``plan()`` (lines); exits as
    :func:`require_cuda` does without a GPU."""
    parser = benchmark_parser(doc)
    args = parser.parse_args()
    if args.dry_run:
        print("\n".join(plan()))
        return None
    require_cuda(parser)
    return args


class Budget:
    """Seconds left of ``--budget-s`` (from the benchmark's start); never runs out when None."""

    def __init__(self, seconds: float | None):
        self.end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.monotonic()

    def skip(self, needs_s: float) -> str | None:
        """Why a measurement needing ``needs_s`` seconds is not started, or None when it fits."""
        left = self.left()
        return None if left >= needs_s else f"skipped: budget ({left:.0f} s left, needs ~{needs_s:.0f} s)"


def timed(fn, inputs, mode: str):
    """The callable to time for ``mode``: ``"fwd"`` (``fn()``), ``"bwd"`` (the backward of one forward,
    alone) or ``"fwd+bwd"``. Gradients come from ``torch.autograd.grad`` with fixed random cotangents:
    nothing accumulates into leaves, so no provider pays for it."""
    if mode == "fwd":
        return fn
    outs = fn()
    grads = [torch.randn_like(o) for o in outs]
    if mode == "bwd":
        return lambda: torch.autograd.grad(outs, inputs, grads, retain_graph=True)
    return lambda: torch.autograd.grad(fn(), inputs, grads)


def first_call_s(fn) -> float:
    """Wall seconds of ``fn``'s first call (compiling included), synchronized."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_ms(fn, **kwargs) -> float:
    """Median milliseconds of ``fn`` by ``triton.testing.do_bench`` (CUDA events, warm-up first)."""
    import triton.testing

    return triton.testing.do_bench(fn, return_mode="median", **kwargs)


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written, on random data."""
    src = torch.randn(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def gemm_rate(n: int = 8192) -> float:
    """FLOP/s of a square bf16 cuBLAS GEMM on random data."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = bench_ms(lambda: a @ b)
    return 2 * n**3 / (ms * 1e-3)


def report_header(**measured) -> dict:
    """Device, date, the package's version and commit, and versions, plus any hardware rates measured."""
    import dprope_kernels
    from dprope_kernels.provenance import source_commit

    return {
        "device": torch.cuda.get_device_name(),
        "date": datetime.date.today().isoformat(),
        "dprope_kernels": dprope_kernels.__version__,
        "commit": source_commit(),
        "torch": torch.__version__,
        **measured,
        "complete": False,
        "runs": [],
    }


class Report:
    """A benchmark's JSON report at ``out`` (or None: printed only), rewritten after every change."""

    def __init__(self, out: str | None, **measured):
        self.out = out
        self.data = report_header(**measured)
        self.save()

    def run(self, **describe) -> dict:
        """Start a run (shape, pass, ...); returns its ``results`` dict, to fill with :meth:`record`."""
        rows: dict = {}
        self.data["runs"].append({**describe, "results": rows})
        self.save()
        return rows

    def record(self, rows: dict, name: str, value) -> None:
        rows[name] = value
        self.save()

    def finish(self) -> None:
        """Mark the report complete, save it and print it."""
        self.data["complete"] = True
        self.save()
        print(json.dumps(self.data, indent=1))

    def save(self) -> None:
        if self.out:
            write_json(self.out, self.data)


def write_json(path, data) -> None:
    """Write ``data`` as JSON whole: a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)

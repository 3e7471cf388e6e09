"""Shared pieces of the GPU benchmarks: the CUDA check, the hardware ceilings, and the JSON report.

Every benchmark measures its ceilings (device copy bandwidth, bf16 GEMM rate) in its own process and
rewrites its JSON report whole after every measurement, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess

import torch


def require_cuda(parser: argparse.ArgumentParser) -> None:
    """Exit with status 2 and one line on stderr when torch sees no CUDA device."""
    if not torch.cuda.is_available():
        parser.exit(2, f"{parser.prog}: error: needs a CUDA GPU; torch {torch.__version__} sees none "
                       f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r})\n")


def report_path_on_cuda(doc: str) -> str | None:
    """``--out`` of a benchmark whose only flag it is (the description: ``doc``'s first paragraph); exits as
    :func:`require_cuda` does without a GPU."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="JSON report (rewritten after every measurement)")
    args = parser.parse_args()
    require_cuda(parser)
    return args.out


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
    """Device, date, commit and versions, plus any hardware rates measured in the run."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    return {
        "device": torch.cuda.get_device_name(),
        "date": datetime.date.today().isoformat(),
        "commit": commit,
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

"""Verify everything on a GPU in one command (about 8 minutes on one H100, nothing fetched):

    python benchmarks/verify_gpu.py OUT_DIR            # run every step
    python benchmarks/verify_gpu.py OUT_DIR --dry-run  # list the steps and their commands
    python benchmarks/verify_gpu.py OUT_DIR --steps build,tests

Steps, each with its own time limit, each logged to OUT_DIR/<step>.log:
  environment  GPU, driver, torch / triton / transformers versions
  build        pip install --no-build-isolation --no-deps -e .  (the CUDA extension, required)
  tests        the whole suite on CUDA (the CPU-only static checks are left to CI)
  memcheck     compute-sanitizer memcheck over the CUDA and Triton kernel tests at small shapes
  racecheck    compute-sanitizer racecheck over the same
  bench_rope, bench_fused_projection, bench_training_step
               ours per backend beside HF eager, torch.compile and Liger (when importable), with the
               copy bandwidth and bf16 GEMM rate measured in the same process
OUT_DIR gets steps.json (status, seconds, command per step), the benchmarks' JSON, and summary.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KERNEL_TESTS = ["tests/test_rope.py", "tests/test_fused_projection.py", "tests/test_histogram.py"]
SANITIZED = "(triton or cuda) and not compile and not gradcheck and not memory and not long_positions"
CPU_ONLY_TESTS = ["tests/test_cuda_sources.py", "tests/test_compiled.py", "tests/test_examples.py"]


@dataclass
class Step:
    name: str
    command: list[str]
    timeout: int  # seconds
    env: dict = field(default_factory=dict)
    result_file: str | None = None  # the JSON the step writes into OUT_DIR


def _sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        candidate = Path(root or "/nonexistent") / "bin" / "compute-sanitizer"
        if candidate.exists():
            return str(candidate)
    return None


def plan_steps(out: Path, python: str = sys.executable) -> list[Step]:
    pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    sanitizer = _sanitizer() or "compute-sanitizer"
    steps = [
        Step("environment", [python, "-c", "import torch, triton, json; print(json.dumps({'torch': torch.__version__, "
             "'triton': triton.__version__, 'cuda': torch.version.cuda, 'device': torch.cuda.get_device_name()}))"], 60),
        Step("build", [python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."], 240,
             {"DPROPE_BUILD_CUDA": "1", "MAX_JOBS": str(os.cpu_count() or 4)}),
        Step("tests", [*pytest, "tests", *(f"--ignore={t}" for t in CPU_ONLY_TESTS),
                       f"--junitxml={out / 'tests.xml'}"], 300),
        Step("memcheck", [sanitizer, "--tool", "memcheck", "--error-exitcode", "9", *pytest, *KERNEL_TESTS, "-k",
                          SANITIZED], 240, {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}),
        Step("racecheck", [sanitizer, "--tool", "racecheck", "--error-exitcode", "9", *pytest, *KERNEL_TESTS, "-k",
                           SANITIZED + " and T217 and bfloat16"], 180),
    ]
    for bench in ("bench_rope", "bench_fused_projection", "bench_training_step"):
        steps.append(Step(bench, [python, f"benchmarks/{bench}.py", "--out", str(out / f"{bench}.json")], 240,
                          result_file=f"{bench}.json"))
    return steps


def shell_command(step: Step) -> str:
    """The step as one line a POSIX shell runs as is: ``K=V ... argv``, every word quoted as it needs."""
    return " ".join([f"{k}={shlex.quote(v)}" for k, v in step.env.items()] + [shlex.join(step.command)])


def run_step(step: Step, out: Path) -> dict:
    start = time.monotonic()
    log = out / f"{step.name}.log"
    try:
        with open(log, "w") as f:
            result = subprocess.run(step.command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=step.timeout,
                                    env={**os.environ, **step.env})
        status = "passed" if result.returncode == 0 else f"failed (exit {result.returncode})"
    except subprocess.TimeoutExpired:
        status = f"timed out after {step.timeout} s"
    except FileNotFoundError as err:
        status = f"not run: {err.filename} not found"
    return {"name": step.name, "status": status, "seconds": round(time.monotonic() - start, 1),
            "command": shell_command(step), "log": log.name, "result_file": step.result_file}


# ---------------------------------------------------------------------------------------------
# the summary
# ---------------------------------------------------------------------------------------------


def _tail(path: Path, lines: int = 1) -> str:
    if not path.exists():
        return ""
    text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return " / ".join(text[-lines:])


def _fmt(value, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if isinstance(value, (int, float)) else str(value)


def _bench_table(report: dict, metric: str, fraction: str) -> list[str]:
    lines = []
    for run in report.get("runs", []):
        shape = ", ".join(f"{k}={v}" for k, v in run.get("shape", {}).items()) or run.get("model", "")
        lines.append(f"\n{shape} — {run.get('pass', run.get('tokens', ''))}\n")
        lines.append(f"| provider | ms | {metric} | {fraction} |")
        lines.append("|---|---|---|---|")
        for name, row in run.get("results", {}).items():
            if isinstance(row, dict):
                lines.append(f"| {name} | {_fmt(row.get('ms'))} | {_fmt(row.get(metric, row.get('peak_GiB', '—')))} | "
                             f"{_fmt(row.get(fraction, '—'))} |")
            else:
                lines.append(f"| {name} | — | — | {row} |")
    return lines


def write_summary(out: Path) -> str:
    """summary.md from OUT_DIR/steps.json and the benchmarks' JSON; returns the text."""
    steps = json.loads((out / "steps.json").read_text())
    lines = ["# dprope_kernels GPU verification", ""]
    header = next((json.loads((out / s["result_file"]).read_text()) for s in steps
                   if s.get("result_file") and (out / s["result_file"]).exists()), {})
    for key in ("device", "date", "commit", "torch"):
        if key in header:
            lines.append(f"- {key}: {header[key]}")
    lines += ["", "| step | status | seconds | last line of its log |", "|---|---|---|---|"]
    for s in steps:
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {_tail(out / s['log'])[:160]} |")
    titles = {"bench_rope.json": ("RoPE", "GB/s", "fraction_of_copy"),
              "bench_fused_projection.json": ("Fused q/k/v projection + RoPE", "TFLOP/s", "fraction_of_gemm_rate"),
              "bench_training_step.json": ("Training step", "peak_GiB", "—")}
    for name, (title, metric, fraction) in titles.items():
        path = out / name
        if not path.exists():
            continue
        report = json.loads(path.read_text())
        rates = {k: v for k, v in report.items() if k.endswith(("GB/s", "TFLOP/s")) or k.startswith("histogram")}
        lines += ["", f"## {title}", ""] + [f"- {k}: {_fmt(v, 4)}" for k, v in rates.items()]
        lines += _bench_table(report, metric, fraction)
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="directory for the logs, JSON results and summary.md")
    parser.add_argument("--dry-run", action="store_true", help="list the steps and their commands; run nothing")
    parser.add_argument("--steps", help="comma-separated subset of the steps, in their order")
    args = parser.parse_args(argv)
    out = Path(args.out_dir).resolve()
    steps = plan_steps(out)
    if args.steps:
        wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {s.name for s in steps})
        if unknown:
            parser.error(f"unknown steps {unknown}; the steps are {[s.name for s in steps]}")
        steps = [s for s in steps if s.name in wanted]
    if args.dry_run:
        for i, step in enumerate(steps, 1):
            print(f"{i}. {step.name} (limit {step.timeout} s): {shell_command(step)}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for step in steps:
        results.append(run_step(step, out))
        print(f"{step.name}: {results[-1]['status']} ({results[-1]['seconds']} s)", flush=True)
        (out / "steps.json").write_text(json.dumps(results, indent=1))
    print(write_summary(out))
    return 0 if all(r["status"] == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

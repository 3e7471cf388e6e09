"""Verify everything on a GPU in one command, within a time budget (default 480 s; nothing fetched):

    python benchmarks/verify_gpu.py OUT_DIR                 # every step, all of it within 480 s
    python benchmarks/verify_gpu.py OUT_DIR --dry-run       # the plan: limits, start offsets, total, fits?
    python benchmarks/verify_gpu.py OUT_DIR --budget-s 300  # less time: the low-value steps are skipped
    python benchmarks/verify_gpu.py OUT_DIR --steps build,tests  # tests: tests_triton and tests_cuda

Steps, most valuable first, each with its own time limit, each logged to OUT_DIR/<step>.log:
  environment    GPU, driver, clocks, torch / triton / transformers versions
  build          pip install --no-build-isolation --no-deps -e . (the CUDA extension for sm_90, required,
                 all cores), in the background while tests_triton runs; a previous call's _C*.so is
                 removed first
  tests_triton   the GPU-facing tests on CUDA (kernels, drop-in layouts, the transformers patch), all
                 but the CUDA extension's (-k "not cuda"); 4 workers where pytest-xdist is installed
  tests_cuda     the CUDA extension's tests (-k cuda), once the build has passed
  memcheck       compute-sanitizer memcheck over the kernel tests at small shapes (bf16)
  racecheck      compute-sanitizer racecheck over one small test per kernel
  bench_rope, bench_fused_projection, bench_histogram, bench_training_step
                 ours per backend beside HF eager, torch.compile and Liger / flash-attn (when importable),
                 with the copy bandwidth and the bf16 GEMM rate measured in the same process

The budget: each step has a full limit and a minimum worth starting. In value order, a step is kept if it
fits at its minimum beside the steps kept before it (else "skipped: budget"); then the limits are raised
toward the full ones, most valuable first, as far as the plan still fits. The build overlaps tests_triton;
tests_cuda starts when both have ended. While running, a step with less than its minimum left is skipped
and none runs past the budget; time a step leaves unused ends the run sooner, it is not handed on.
Each step runs in its own process group, ended whole at its limit or when it exits (no stray process
keeps the GPU); SIGTERM stops the run, ends the running steps and records them as "cut short".

OUT_DIR gets steps.json (status, seconds, limit, command per step), the benchmarks' JSON and summary.md,
all rewritten after every step, so a run cut at any point still reports what it finished.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUDGET_S = 480
GPU_TESTS = ["tests/test_rope.py", "tests/test_fused_projection.py", "tests/test_histogram.py",
             "tests/test_dropin.py", "tests/test_transformers_integration.py"]
KERNEL_TESTS = GPU_TESTS[:3]
# one dtype (bf16: dtype2 where a test has three) and small shapes: instrumented kernels run 10-100x slower;
# and the Triton RoPE's head groups and smallest tiles (the decode path)
MEMCHECK = ("((triton or cuda) and (fp64_reference or nan_poisoned or range_counts or varlen_equals"
            " or varlen_matches or decode_sized or explicit_positions_and_weights)"
            " and not dtype0 and not dtype1) or head_groups_and_the_smallest_tiles")
RACECHECK = "(triton or cuda) and (T217 or T37 or 360) and not dtype0 and not dtype1"
ENVIRONMENT = (  # one line, double quotes inside: the dry run prints it in single quotes
    'import json, shutil, subprocess, torch, triton, transformers; p = torch.cuda.get_device_properties(0); '
    'smi = shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "--format=csv,noheader", '
    '"--query-gpu=driver_version,clocks.sm,clocks.mem,temperature.gpu,memory.used"], capture_output=True, '
    'text=True).stdout; print(json.dumps({"device": p.name, "capability": f"{p.major}.{p.minor}", '
    '"sms": p.multi_processor_count, "torch": torch.__version__, "cuda": torch.version.cuda, '
    '"triton": triton.__version__, "transformers": transformers.__version__, '
    '"nvidia-smi": (smi or "").strip()}))'
)
BENCHES = ["bench_rope", "bench_fused_projection", "bench_histogram", "bench_training_step"]
# seconds: (full limit, minimum). Each benchmark gets its planned limit less BENCH_STARTUP_S as its own
# --budget-s and skips (and says so) what would not fit: it ends inside its limit by construction.
BENCH_LIMITS = {"bench_rope": (55, 35), "bench_fused_projection": (65, 40), "bench_histogram": (15, 10),
                "bench_training_step": (50, 30)}
BENCH_STARTUP_S = 8  # importing torch, triton and the package before a benchmark's own clock starts


@dataclass
class Step:
    name: str
    command: list[str]
    limit: int  # seconds: the most this step may run
    minimum: int | None = None  # seconds: less is not worth starting (default: the limit)
    env: dict = field(default_factory=dict)
    result_file: str | None = None  # the JSON the step writes into OUT_DIR
    background: bool = False  # runs beside the steps after it
    after: str | None = None  # waits for this (background) step, and is skipped if it did not pass
    clean: tuple[str, ...] = ()  # globs (from the repository's root) of files removed before it starts
    budget_flag: bool = False  # given "--budget-s <its limit less BENCH_STARTUP_S>" when launched

    def __post_init__(self):
        if self.minimum is None:
            self.minimum = self.limit


@dataclass
class Planned:
    step: Step
    limit: int | None  # None: skipped for the budget
    start: int | None  # seconds after the run's start


def _sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        candidate = Path(root or "/nonexistent") / "bin" / "compute-sanitizer"
        if candidate.exists():
            return str(candidate)
    return None


def _pytest(python: str, parallel: bool = False) -> list[str]:
    """pytest's command line; ``parallel``: 4 workers where pytest-xdist is installed (Triton compiles)."""
    workers = ["-n", "4"] if parallel and importlib.util.find_spec("xdist") else []
    return [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers]


def _sanitize(tool: str, python: str, expression: str) -> list[str]:
    """compute-sanitizer ``tool`` over the kernel tests that ``expression`` selects; exit 9 on any finding."""
    sanitizer = _sanitizer() or "compute-sanitizer"
    return [sanitizer, "--tool", tool, "--error-exitcode", "9", *_pytest(python), *KERNEL_TESTS,
            "-k", expression]


def _test_steps(out: Path, python: str) -> list[Step]:
    pip_install = [python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."]
    build_env = {"DPROPE_BUILD_CUDA": "1", "DPROPE_CUDA_ARCHS": "90", "MAX_JOBS": str(os.cpu_count() or 4)}
    tests = [*GPU_TESTS, "-k"]
    return [
        Step("environment", [python, "-c", ENVIRONMENT], 15, 10),
        # a warm machine keeps the last call's extension: removed first, tests running beside the build
        # never load a file that pip is rewriting in place (and never test a stale one)
        Step("build", pip_install, 150, 90, build_env, background=True, clean=("dprope_kernels/_C*.so",)),
        Step("tests_triton", [*_pytest(python, parallel=True), *tests, "not cuda",
                              f"--junitxml={out / 'tests_triton.xml'}"], 150, 60),
        Step("tests_cuda", [*_pytest(python), *tests, "cuda", f"--junitxml={out / 'tests_cuda.xml'}"], 45, 20,
             after="build"),
        Step("memcheck", _sanitize("memcheck", python, MEMCHECK), 50, 30,
             {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}),
        Step("racecheck", _sanitize("racecheck", python, RACECHECK), 30, 20),
    ]


def plan_steps(out: Path, python: str = sys.executable) -> list[Step]:
    """Every step, most valuable first: environment, correctness, sanitizers, then the benchmarks."""
    benches = [Step(name, [python, f"benchmarks/{name}.py", "--out", str(out / f"{name}.json")],
                    *BENCH_LIMITS[name], result_file=f"{name}.json", budget_flag=True) for name in BENCHES]
    return _test_steps(out, python) + benches


# ---------------------------------------------------------------------------------------------
# the budget
# ---------------------------------------------------------------------------------------------


def timeline(steps: list[Step], limits: dict[str, int]) -> tuple[dict[str, int], int]:
    """Start offsets of the steps that have a limit, and when the last one ends (background steps overlap
    the steps after them; a step ``after`` one starts no sooner than that one's limit ends)."""
    clock, starts, ends = 0, {}, {}
    for step in steps:
        if step.name not in limits:
            continue
        if step.after in ends:
            clock = max(clock, ends[step.after])
        starts[step.name], ends[step.name] = clock, clock + limits[step.name]
        if not step.background:
            clock = ends[step.name]
    return starts, max([clock, *ends.values()])


def _widest(steps: list[Step], limits: dict[str, int], step: Step, budget: int) -> int:
    """The largest limit up to ``step.limit`` that keeps the plan within ``budget`` (binary search)."""
    low, high = limits[step.name], step.limit
    while low < high:
        mid = (low + high + 1) // 2
        if timeline(steps, {**limits, step.name: mid})[1] <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def plan_budget(steps: list[Step], budget: int) -> tuple[list[Planned], int]:
    """Fit ``steps`` (most valuable first) into ``budget`` seconds; returns the plan and its total."""
    names, limits = {s.name for s in steps}, {}
    for step in steps:  # keep what fits at its minimum beside the more valuable steps
        trial = {**limits, step.name: step.minimum}
        needs_skipped = step.after in names and step.after not in limits
        if not needs_skipped and timeline(steps, trial)[1] <= budget:
            limits = trial
    for step in steps:  # then widen toward the full limits, most valuable first
        if step.name in limits:
            limits[step.name] = _widest(steps, limits, step, budget)
    starts, total = timeline(steps, limits)
    return [Planned(s, limits.get(s.name), starts.get(s.name)) for s in steps], total


def command(step: Step, limit: int | None) -> list[str]:
    """The step's argv for a run of ``limit`` seconds (a benchmark's own budget follows from it)."""
    if step.budget_flag and limit is not None:
        return [*step.command, "--budget-s", str(max(1, limit - BENCH_STARTUP_S))]
    return step.command


def shell_command(step: Step, limit: int | None = None) -> str:
    """The step as one line a POSIX shell runs as is: ``K=V ... argv``, every word quoted as it needs."""
    env = [f"{k}={shlex.quote(v)}" for k, v in step.env.items()]
    return " ".join(env + [shlex.join(command(step, limit))])


def bench_plan(step: Step) -> list[str]:
    """What a benchmark step measures, in order (its own ``--dry-run``), or nothing for other steps."""
    if not step.budget_flag:
        return []
    result = subprocess.run([*step.command[:2], "--dry-run"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = result.stdout.splitlines() if result.returncode == 0 else [f"(its --dry-run failed: "
                                                                      f"{result.stderr.strip()[-200:]})"]
    return [f"     {line}" for line in lines]


def describe_plan(planned: list[Planned], total: int, budget: int) -> tuple[list[str], bool]:
    """The --dry-run text, one line per step and a last line with the total; and whether it all fits."""
    lines = []
    for i, p in enumerate(planned, 1):
        s = p.step
        if p.limit is None:
            what = f"skipped: budget, needs {s.minimum} s"
        else:
            what = f"limit {p.limit} s" + (f" of {s.limit}" if p.limit < s.limit else "")
            what += f", starts at {p.start} s"
            what += ", in the background" if s.background else ""
            what += "".join(f", removes {pattern} first" for pattern in s.clean)
            what += f", after {s.after}" if s.after in {q.step.name for q in planned} else ""
        lines.append(f"{i}. {s.name} ({what}): {shell_command(s, p.limit)}")
        lines += bench_plan(s) if p.limit is not None else []
    skipped = [p.step.name for p in planned if p.limit is None]
    verdict = "fits" if not skipped else f"does not fit: skipped {', '.join(skipped)}"
    lines.append(f"total: {total} s of the {budget} s budget; {verdict}")
    return lines, not skipped


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------


@dataclass
class Live:
    step: Step
    proc: subprocess.Popen
    start: float
    timeout: int


def record(step: Step, status: str, seconds: float = 0.0, limit: int | None = None, log: bool = True) -> dict:
    """The step's entry in steps.json."""
    return {"name": step.name, "status": status, "seconds": round(seconds, 1), "limit": limit,
            "command": shell_command(step, limit), "log": f"{step.name}.log" if log else None,
            "result_file": step.result_file}


def launch(step: Step, out: Path, timeout: int) -> Live | dict:
    """Start ``step`` in its own process group, output to OUT_DIR/<step>.log; a record if it cannot start."""
    if step.result_file:
        (out / step.result_file).unlink(missing_ok=True)  # never report an earlier run's numbers
    for path in (p for pattern in step.clean for p in REPO.glob(pattern)):
        path.unlink()  # a process that has the file open keeps its copy
    with open(out / f"{step.name}.log", "w") as log:
        try:
            proc = subprocess.Popen(command(step, timeout), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1", **step.env},
                                    preexec_fn=os.setpgrp)  # its own group, in our session: killable as one
        except FileNotFoundError as err:
            return record(step, f"not run: {err.filename} not found", limit=timeout)
    return Live(step, proc, time.monotonic(), timeout)


def kill(live: Live) -> None:
    """End the step's whole process group (pytest workers, nvcc, compile workers ... too)."""
    try:
        os.killpg(live.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    live.proc.wait()


def finish(live: Live) -> dict:
    """Wait for the step until its limit, killing it there; its record. Whatever the step left running
    in its process group is ended too, so that no stray process holds the GPU for the next step."""
    try:
        code = live.proc.wait(timeout=max(0.0, live.start + live.timeout - time.monotonic()))
        status = "passed" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        status = f"timed out after {live.timeout} s"
    kill(live)
    return record(live.step, status, time.monotonic() - live.start, live.timeout)


class Runner:
    """Runs a plan within its budget, rewriting steps.json and summary.md after every step."""

    def __init__(self, out: Path, budget: int):
        self.out, self.budget = out, budget
        self.deadline = time.monotonic() + budget
        self.started = time.monotonic()
        self.results: dict[str, dict] = {}
        self.live: dict[str, Live] = {}  # running steps: the background one and the current one

    def run(self, planned: list[Planned]) -> list[dict]:
        try:
            for p in planned:
                self.step(p)
            for name in list(self.live):
                self.join(name)
        finally:
            for live in self.live.values():  # cut short (a signal, an error): stop what still runs
                kill(live)
                self.results[live.step.name] = record(live.step, "cut short", time.monotonic() - live.start,
                                                      live.timeout)
            self.live.clear()
            self.save()
        return list(self.results.values())

    def step(self, p: Planned) -> None:
        step = p.step
        if step.after in self.live:
            self.join(step.after)
        left = int(self.deadline - time.monotonic())
        if p.limit is None or left < step.minimum:
            self.results[step.name] = record(step, "skipped: budget", log=False)
        elif step.after in self.results and self.results[step.after]["status"] != "passed":
            self.results[step.name] = record(step, f"skipped: {step.after} did not pass", log=False)
        else:
            started = launch(step, self.out, min(p.limit, left))
            if isinstance(started, dict):
                self.results[step.name] = started
            elif step.background:
                self.live[step.name] = started
                self.results[step.name] = record(step, "running (background)", limit=started.timeout)
            else:
                self.live[step.name] = started
                self.results[step.name] = finish(started)
                del self.live[step.name]
        self.report(step.name)

    def join(self, name: str) -> None:
        self.results[name] = finish(self.live[name])
        del self.live[name]
        self.report(name)

    def report(self, name: str) -> None:
        result = self.results[name]
        print(f"{name}: {result['status']} ({result['seconds']} s)", flush=True)
        self.save()

    def save(self) -> None:
        _write(self.out / "steps.json", json.dumps(list(self.results.values()), indent=1) + "\n")
        write_summary(self.out, budget=self.budget, elapsed=time.monotonic() - self.started)


def _write(path: Path, text: str) -> None:
    """Write ``text`` whole: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# the summary
# ---------------------------------------------------------------------------------------------

# result file -> (section title, columns of each provider's row)
BENCH_TABLES = {
    "bench_rope.json": ("RoPE", ["ms", "GB/s", "fraction_of_copy"]),
    "bench_fused_projection.json": ("Fused q/k/v projection + RoPE", ["ms", "TFLOP/s", "fraction_of_gemm"]),
    "bench_histogram.json": ("Angle histogram", ["ms", "Gcounts/s", "GB/s", "fraction_of_copy", "exact"]),
    "bench_training_step.json": ("Training step", ["ms", "peak_GiB"]),
}


def _tail(path: Path, lines: int = 1) -> str:
    if not path.is_file():
        return ""
    text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return " / ".join(text[-lines:])


def _fmt(value, digits: int = 3) -> str:
    if isinstance(value, bool):
        return str(value)
    return f"{value:.{digits}g}" if isinstance(value, (int, float)) else str(value)


def _bench_table(report: dict, columns: list[str]) -> list[str]:
    lines = []
    for run in report.get("runs", []):
        shape = ", ".join(f"{k}={v}" for k, v in run.get("shape", {}).items()) or run.get("model", "")
        lines.append(f"\n{shape} — {run.get('pass', run.get('tokens', ''))}\n")
        lines.append("| provider | " + " | ".join(columns) + " |")
        lines.append("|---" * (len(columns) + 1) + "|")
        for name, row in run.get("results", {}).items():
            cells = [_fmt(row.get(c, "—")) for c in columns] if isinstance(row, dict) else \
                ["—"] * (len(columns) - 1) + [str(row)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _bench_section(path: Path, title: str, columns: list[str]) -> list[str]:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return ["", f"## {title}", "", f"unreadable: {err}"]
    rates = {k: v for k, v in report.items() if k.endswith(("GB/s", "TFLOP/s")) or k.startswith("histogram")}
    lines = ["", f"## {title}", ""] + [f"- {k}: {_fmt(v, 4)}" for k, v in rates.items()]
    if report.get("complete") is False:
        lines.append("- partial: the benchmark stopped before it finished; these are the runs it measured")
    return lines + _bench_table(report, columns)


def _header(out: Path, steps: list[dict]) -> list[str]:
    for s in steps:
        path = out / (s.get("result_file") or "-")
        try:
            first = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        keys = ("device", "date", "dprope_kernels", "commit", "torch")
        return [f"- {key}: {first[key]}" for key in keys if key in first]
    return []


def write_summary(out: Path, budget: int | None = None, elapsed: float | None = None) -> str:
    """summary.md from OUT_DIR/steps.json and the benchmarks' JSON; returns the text."""
    steps = json.loads((out / "steps.json").read_text())
    ran = [s for s in steps if not s["status"].startswith(("skipped", "not run"))]
    lines = ["# dprope_kernels GPU verification", ""] + _header(out, ran)
    if budget is not None:
        lines.append(f"- budget: {budget} s" + (f", used {elapsed:.0f} s" if elapsed is not None else ""))
    lines += ["", "| step | status | seconds | limit | last line of its log |", "|---|---|---|---|---|"]
    for s in steps:
        tail = _tail(out / s["log"])[:160] if s.get("log") else ""
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {s.get('limit') or '—'} | {tail} |")
    for s in ran:
        if s.get("result_file") in BENCH_TABLES and (out / s["result_file"]).exists():
            lines += _bench_section(out / s["result_file"], *BENCH_TABLES[s["result_file"]])
    text = "\n".join(lines) + "\n"
    _write(out / "summary.md", text)
    return text


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="directory for the logs, JSON results and summary.md")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (limits, start offsets, total) and whether it fits; run nothing")
    parser.add_argument("--steps", help="comma-separated subset of the steps (run in their order of value; "
                        "'tests' means tests_triton,tests_cuda)")
    parser.add_argument("--budget-s", type=int, default=DEFAULT_BUDGET_S,
                        help=f"seconds the whole run must finish within (default {DEFAULT_BUDGET_S})")
    return parser


ALIASES = {"tests": ["tests_triton", "tests_cuda"]}  # the one step of earlier versions


def _select(parser: argparse.ArgumentParser, steps: list[Step], wanted: str | None) -> list[Step]:
    if not wanted:
        return steps
    names = [n for s in wanted.split(",") if s.strip() for n in ALIASES.get(s.strip(), [s.strip()])]
    unknown = sorted(set(names) - {s.name for s in steps})
    if unknown:
        parser.error(f"unknown steps {unknown}; the steps are {[s.name for s in steps]}")
    return [s for s in steps if s.name in names]


def _stop(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    out = Path(args.out_dir).resolve()
    planned, total = plan_budget(_select(parser, plan_steps(out), args.steps), args.budget_s)
    lines, fits = describe_plan(planned, total, args.budget_s)
    print("\n".join(lines), flush=True)
    if args.dry_run:
        return 0 if fits else 1
    out.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _stop)  # stopped from outside, it still writes what finished
    try:
        results = Runner(out, args.budget_s).run(planned)
    except KeyboardInterrupt:
        print("cut short: steps.json and summary.md hold what finished", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print((out / "summary.md").read_text())
    return 0 if all(r["status"] == "passed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

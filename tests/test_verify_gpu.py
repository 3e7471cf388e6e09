"""benchmarks/verify_gpu.py, the one GPU command, as far as a machine without a GPU can check it:
the plan and its budget, results written after every step, and the benchmarks' refusal without CUDA."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "verify_gpu.py"
sys.path.insert(0, str(SCRIPT.parent))
import verify_gpu  # noqa: E402

# the order of value: environment, correctness, sanitizers, benchmarks
STEPS = ["environment", "build", "tests_triton", "tests_cuda", "memcheck", "racecheck", "bench_rope",
         "bench_fused_projection", "bench_histogram", "bench_training_step"]
BENCHES = STEPS[-4:]
LINE = re.compile(r"^(\d+)\. (\w+) \((.*?)\): (.*)$")


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def parse_plan(stdout: str, runs: dict | None = None):
    """``({name: (what, command)}, total line)`` from --dry-run's output; a benchmark's indented lines
    (what it measures) go to ``runs[name]``."""
    *lines, total = stdout.strip().splitlines()
    steps = {}
    for line in lines:
        if line.startswith("     ") and steps:
            (runs if runs is not None else {}).setdefault(list(steps)[-1], []).append(line.strip())
            continue
        match = LINE.match(line)
        assert match, line
        steps[match[2]] = (match[3], match[4])
    return steps, total


def seconds(what: str, key: str) -> int:
    return int(re.search(rf"{key} (\d+) s", what)[1])


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# ---------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------


def test_default_plan_fits_480_s_in_the_order_of_value(tmp_path):
    out = tmp_path / "out"
    result = run(out, "--dry-run")
    assert result.returncode == 0, result.stderr
    steps, total = parse_plan(result.stdout)
    assert list(steps) == STEPS
    assert re.fullmatch(r"total: (\d+) s of the 480 s budget; fits", total), total
    assert int(total.split()[1]) <= 480
    what = {name: w for name, (w, _) in steps.items()}
    assert "in the background" in what["build"] and "after build" in what["tests_cuda"]
    assert seconds(what["build"], "starts at") == seconds(what["tests_triton"], "starts at")  # overlapped
    build_end = seconds(what["build"], "starts at") + seconds(what["build"], "limit")
    assert seconds(what["tests_cuda"], "starts at") >= build_end
    ends = [seconds(w, "starts at") + seconds(w, "limit") for w in what.values()]
    assert max(ends) <= 480 and all("skipped" not in w for w in what.values())
    text = result.stdout
    assert "pip install --no-build-isolation --no-deps -e ." in text and "DPROPE_BUILD_CUDA=1" in text
    assert "DPROPE_CUDA_ARCHS=90" in text and f"MAX_JOBS={os.cpu_count()}" in text
    assert "--tool memcheck" in text and "--tool racecheck" in text
    for bench in BENCHES:
        assert f"benchmarks/{bench}.py --out {out / (bench + '.json')} --budget-s" in text
    assert not out.exists()


def test_the_dry_run_says_what_each_benchmark_measures_within_its_own_budget(tmp_path):
    """Each benchmark's runs, in order, under the step that runs them; each benchmark's own budget is
    its planned limit less the start-up, so it ends inside the limit (it skips, and says so, what
    would not fit)."""
    runs = {}
    steps, _ = parse_plan(run(tmp_path, "--dry-run").stdout, runs)
    import bench_fused_projection
    import bench_rope

    assert runs["bench_rope"][0].startswith("fwd q[4,4096")
    assert [r.split()[0] for r in runs["bench_rope"]] == [mode for _, mode in bench_rope.RUNS]
    assert any(r.startswith("bwd ") for r in runs["bench_rope"])  # the backward alone
    assert any("[64,1,32,128]" in r for r in runs["bench_rope"])  # a decode step
    assert len(runs["bench_fused_projection"]) == len(bench_fused_projection.RUNS)
    assert all("gemm_then_rope_cuda" in r for r in runs["bench_fused_projection"])
    for bench in BENCHES:
        what, command = steps[bench]
        assert runs[bench], bench
        budget = float(command.split("--budget-s ")[1].split()[0])
        assert budget == seconds(what, "limit") - verify_gpu.BENCH_STARTUP_S


def test_a_benchmark_skips_what_its_budget_cannot_hold():
    import common

    assert common.Budget(None).skip(10**9) is None
    assert common.Budget(100).skip(5) is None
    assert common.Budget(1).skip(25).startswith("skipped: budget (")


def test_the_planning_function_gives_every_step_at_least_its_minimum():
    steps = verify_gpu.plan_steps(Path("/tmp/out"))
    planned, total = verify_gpu.plan_budget(steps, 480)
    assert [p.step.name for p in planned] == STEPS and total <= 480
    for p in planned:
        assert p.step.minimum <= p.limit <= p.step.limit, p.step.name
    starts, end = verify_gpu.timeline(steps, {p.step.name: p.limit for p in planned})
    assert end == total and starts == {p.step.name: p.start for p in planned}


def test_a_small_budget_skips_the_low_value_steps_and_says_so(tmp_path):
    result = run(tmp_path, "--dry-run", "--budget-s", 200)
    assert result.returncode == 1
    steps, total = parse_plan(result.stdout)
    skipped = [name for name, (what, _) in steps.items() if what.startswith("skipped: budget")]
    # the least valuable go first: after the first skipped step, only cheaper ones still fit
    first = STEPS.index(skipped[0]) if skipped else len(STEPS)
    minimum = {step.name: step.minimum for step in verify_gpu.plan_steps(tmp_path)}
    kept_after = [name for name in STEPS[first:] if name not in skipped]
    assert skipped and all(minimum[name] < minimum[skipped[0]] for name in kept_after)
    assert "bench_training_step" in skipped and "tests_cuda" not in skipped
    assert total.startswith("total: ")
    assert total.endswith("of the 200 s budget; does not fit: skipped " + ", ".join(skipped))
    assert seconds(total, "total:") <= 200
    trimmed = steps["tests_triton"][0]
    assert re.search(r"limit \d+ s of 150", trimmed)  # the kept steps' limits were cut to fit


def test_a_step_that_needs_a_skipped_background_step_is_skipped_too():
    steps = verify_gpu.plan_steps(Path("/tmp/out"))
    planned, total = verify_gpu.plan_budget(steps, 60)
    kept = [p.step.name for p in planned if p.limit is not None]
    assert "build" not in kept and "tests_cuda" not in kept and total <= 60
    assert "environment" in kept


def test_a_subset_of_steps_and_unknown_steps(tmp_path):
    result = run(tmp_path, "--dry-run", "--steps", "bench_rope,build")
    steps, total = parse_plan(result.stdout)
    assert list(steps) == ["build", "bench_rope"] and total.endswith("fits")  # in the order of value
    result = run(tmp_path, "--dry-run", "--steps", "tests")  # the earlier versions' one test step
    assert list(parse_plan(result.stdout)[0]) == ["tests_triton", "tests_cuda"]
    result = run(tmp_path, "--steps", "build,fly")
    assert result.returncode == 2 and "unknown steps ['fly']" in result.stderr


def test_missing_out_dir_and_a_bad_budget_are_argparse_errors(tmp_path):
    result = run()
    assert result.returncode == 2 and "out_dir" in result.stderr
    result = run(tmp_path, "--budget-s", 0)
    assert result.returncode == 2 and "--budget-s must be positive" in result.stderr


def test_dry_run_commands_paste_into_a_shell(tmp_path):
    out = tmp_path / "out dir"  # a space, as users' folders have
    result = run(out, "--dry-run")
    assert result.returncode == 0, result.stderr
    steps = verify_gpu.plan_steps(out.resolve())
    limits = {p.step.name: p.limit for p in verify_gpu.plan_budget(steps, verify_gpu.DEFAULT_BUDGET_S)[0]}
    printed, _ = parse_plan(result.stdout)
    assert len(printed) == len(steps)
    for step in steps:
        words = shlex.split(printed[step.name][1])  # what a POSIX shell makes of the printed command
        env = {}
        while words and "=" in words[0] and words[0].split("=", 1)[0].isidentifier():
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        assert env == step.env, step.name
        assert words == verify_gpu.command(step, limits[step.name]), step.name
    assert any("-k" in step.command for step in steps)  # the steps whose expressions need quoting


COUNT_SELECTED = """
import json, sys, pytest
from _pytest.mark import KeywordMatcher
from _pytest.mark.expression import Expression
wanted, counts = json.loads(sys.argv[1]), {}
class Count:
    def pytest_collection_modifyitems(self, items):
        for expression, files in wanted:
            compiled = Expression.compile(expression)
            counts[expression] = sum(1 for item in items if item.nodeid.split("::")[0] in files
                                     and compiled.evaluate(KeywordMatcher.from_item(item)))
pytest.main(["-q", "--collect-only", "-p", "no:cacheprovider", *sys.argv[2:]], plugins=[Count()])
print(json.dumps(counts))
"""


def test_the_test_selections_match_tests():
    """Each step's pytest -k expression selects tests in its files (an empty selection exits 5: a failure),
    judged by pytest's own -k matching in one collection."""
    gpu, kernels = verify_gpu.GPU_TESTS, verify_gpu.KERNEL_TESTS
    wanted = [("not cuda", gpu), ("cuda", gpu), (verify_gpu.MEMCHECK, kernels),
              (verify_gpu.RACECHECK, kernels)]
    result = subprocess.run([sys.executable, "-c", COUNT_SELECTED, json.dumps(wanted), *gpu], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(counts) == len(wanted) and all(counts.values()), counts


# ---------------------------------------------------------------------------------------------
# running: results after every step
# ---------------------------------------------------------------------------------------------


def fake_plan(monkeypatch, steps):
    monkeypatch.setattr(verify_gpu, "plan_steps", lambda out, python=sys.executable: steps)


def test_results_are_written_after_every_step(tmp_path, monkeypatch):
    steps_json = str(tmp_path / "steps.json")
    names_so_far = (f"import json, sys; names = [s['name'] for s in json.load(open({steps_json!r}))]; "
                    "sys.exit(0 if names == {expected!r} else 4)")
    row = {"ms": 0.1, "GB/s": 4000.0, "fraction_of_copy": 0.93}
    bench = {"device": "fake", "complete": False, "copy_bandwidth_GB/s": 4300.0,
             "runs": [{"shape": {"N": 1}, "pass": "fwd", "results": {"dprope_triton": row}}]}
    write_bench = f"import json; json.dump({bench!r}, open({str(tmp_path / 'bench_rope.json')!r}, 'w'))"
    built = str(tmp_path / "built")  # the background step's product
    fake_plan(monkeypatch, [
        verify_gpu.Step("ok", py("print('fine')"), 30),
        verify_gpu.Step("builder", py(f"import time; time.sleep(3); open({built!r}, 'w').close()"), 30, 5,
                        background=True),
        verify_gpu.Step("broken", py("import sys; print('no GPU'); sys.exit(3)"), 30),
        verify_gpu.Step("sees_earlier", py(names_so_far.format(expected=["ok", "builder", "broken"])
                                           + f"; import os; assert not os.path.exists({built!r})"), 30),
        verify_gpu.Step("needs_builder", py(f"import os; assert os.path.exists({built!r})"), 30,
                        after="builder"),
        verify_gpu.Step("slow", py("import time; time.sleep(30)"), 1),
        verify_gpu.Step("bench_rope", py(write_bench + "; raise SystemExit(9)"), 30,
                        result_file="bench_rope.json"),
    ])
    start = time.monotonic()
    assert verify_gpu.main([str(tmp_path)]) == 1
    assert time.monotonic() - start < 20  # the slow step was stopped at its limit
    steps = json.loads((tmp_path / "steps.json").read_text())
    assert [(s["name"], s["status"]) for s in steps] == [
        ("ok", "passed"), ("builder", "passed"), ("broken", "failed (exit 3)"), ("sees_earlier", "passed"),
        ("needs_builder", "passed"), ("slow", "timed out after 1 s"), ("bench_rope", "failed (exit 9)")]
    summary = (tmp_path / "summary.md").read_text()
    assert "| broken | failed (exit 3) | " in summary and "no GPU" in summary
    assert "| slow | timed out after 1 s |" in summary
    assert "| dprope_triton | 0.1 | 4e+03 | 0.93 |" in summary and "partial" in summary  # cut mid-benchmark


def test_a_failed_background_step_skips_the_steps_that_need_it(tmp_path, monkeypatch):
    fake_plan(monkeypatch, [
        verify_gpu.Step("builder", py("raise SystemExit(1)"), 30, background=True),
        verify_gpu.Step("meanwhile", py("print('still useful')"), 30),
        verify_gpu.Step("needs_builder", py("print('never')"), 30, after="builder"),
    ])
    assert verify_gpu.main([str(tmp_path)]) == 1
    steps = json.loads((tmp_path / "steps.json").read_text())
    assert [s["status"] for s in steps] == ["failed (exit 1)", "passed", "skipped: builder did not pass"]


def test_a_step_removes_its_stale_files_before_it_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(verify_gpu, "REPO", tmp_path)  # globs and commands run from the repository's root
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "_C.cpython-312.so").write_text("an earlier build")
    check = "import glob, sys; sys.exit(1 if glob.glob('pkg/_C*.so') else 0)"
    step = verify_gpu.Step("build", py(check), 30, clean=("pkg/_C*.so",))
    results = verify_gpu.Runner(tmp_path, budget=60).run([verify_gpu.Planned(step, 30, 0)])
    assert results[0]["status"] == "passed"


def test_the_budget_cuts_a_run_short_and_the_rest_is_skipped(tmp_path):
    first = verify_gpu.Step("first", py("import time; time.sleep(2)"), 3)
    later = verify_gpu.Step("later", py("print('no time')"), 3)
    planned = [verify_gpu.Planned(first, 3, 0), verify_gpu.Planned(later, 3, 3)]
    results = verify_gpu.Runner(tmp_path, budget=4).run(planned)  # 2 s left for a step that needs 3
    assert [r["status"] for r in results] == ["passed", "skipped: budget"]
    assert json.loads((tmp_path / "steps.json").read_text()) == results
    summary = (tmp_path / "summary.md").read_text()
    assert "| later | skipped: budget |" in summary and "- budget: 4 s" in summary


DRIVER = """
import json, sys
sys.path.insert(0, {bench_dir!r})
import verify_gpu
steps = [verify_gpu.Step(**s) for s in json.loads({steps!r})]
verify_gpu.plan_steps = lambda out, python=sys.executable: steps
sys.exit(verify_gpu.main([{out!r}]))
"""


def start_driver(tmp_path, steps):
    """verify_gpu.main over ``steps`` in a process of its own, to be stopped from outside."""
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(DRIVER.format(bench_dir=str(SCRIPT.parent), steps=json.dumps(steps),
                                                    out=str(tmp_path / "out"))))
    return subprocess.Popen([sys.executable, str(driver)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, n_steps: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            steps = json.loads(path.read_text())
        except (OSError, ValueError):
            steps = []
        if len(steps) >= n_steps:
            return steps
        time.sleep(0.1)
    raise AssertionError(f"{path} never listed {n_steps} steps")


def cut_steps(tmp_path) -> list[dict]:
    pid_file = tmp_path / "sleeper.pid"
    sleeper = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    return [{"name": "ok", "command": py("print('fine')"), "limit": 30},
            {"name": "slow", "command": py("import time; time.sleep(30)"), "limit": 1},
            {"name": "sleeper", "command": py(sleeper), "limit": 120}]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["terminated", "killed"])
def test_a_run_cut_short_still_reports_what_finished(tmp_path, how):
    proc = start_driver(tmp_path, cut_steps(tmp_path))
    out, pid_file = tmp_path / "out", tmp_path / "sleeper.pid"
    try:
        wait_for(out / "steps.json", 2)
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        proc.send_signal(how)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    sleeper = int(pid_file.read_text())
    try:
        steps = json.loads((out / "steps.json").read_text())
        summary = (out / "summary.md").read_text()
        finished = [(s["name"], s["status"]) for s in steps[:2]]
        assert finished == [("ok", "passed"), ("slow", "timed out after 1 s")]
        assert "| ok | passed |" in summary and "| slow | timed out after 1 s |" in summary
        if how == signal.SIGTERM:  # stopped politely: the running step is ended and recorded
            assert proc.returncode == 130 and steps[2]["status"] == "cut short"
            assert "| sleeper | cut short |" in summary
            time.sleep(0.5)
            assert not alive(sleeper)
    finally:
        if alive(sleeper):  # a hard kill leaves the step's own process group running: end it here
            os.kill(sleeper, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# the summary and the benchmarks
# ---------------------------------------------------------------------------------------------


def test_summary_on_canned_results(tmp_path):
    (tmp_path / "steps.json").write_text(json.dumps([
        {"name": "tests_triton", "status": "passed", "seconds": 120.5, "limit": 150, "command": "pytest",
         "log": "tests_triton.log", "result_file": None},
        {"name": "bench_rope", "status": "passed", "seconds": 30.0, "limit": 45, "command": "x",
         "log": "bench_rope.log", "result_file": "bench_rope.json"},
        {"name": "bench_fused_projection", "status": "passed", "seconds": 30.0, "limit": 40, "command": "x",
         "log": "bench_fused_projection.log", "result_file": "bench_fused_projection.json"},
        {"name": "bench_histogram", "status": "passed", "seconds": 10.0, "limit": 20, "command": "x",
         "log": "bench_histogram.log", "result_file": "bench_histogram.json"},
        {"name": "bench_training_step", "status": "skipped: budget", "seconds": 0, "limit": None,
         "command": "x", "log": None, "result_file": "bench_training_step.json"},
    ]))
    (tmp_path / "tests_triton.log").write_text("....\n512 passed, 3 skipped in 110.2s\n")
    (tmp_path / "bench_rope.log").write_text("done\n")
    (tmp_path / "bench_rope.json").write_text(json.dumps({
        "device": "NVIDIA H200", "date": "2026-11-23", "commit": "abc123", "torch": "2.11.0",
        "complete": True, "copy_bandwidth_GB/s": 4300.0,
        "runs": [{"shape": {"B": 4, "T": 4096, "Hq": 32, "Hk": 8, "D": 128}, "pass": "fwd+bwd", "results": {
            "hf_eager": {"ms": 2.5, "GB/s": 400.0, "fraction_of_copy": 0.093},
            "dprope_triton": {"ms": 0.2, "GB/s": 4000.0, "fraction_of_copy": 0.93},
            "liger": "unavailable: No module named 'liger_kernel'"}}],
    }))
    (tmp_path / "bench_fused_projection.json").write_text(json.dumps({
        "device": "NVIDIA H200", "gemm_rate_TFLOP/s": 790.0, "complete": True, "runs": [
            {"shape": {"N": 16384}, "pass": "fwd", "results": {
                "fused_triton": {"ms": 1.0, "TFLOP/s": 650.0, "fraction_of_gemm": 0.82}}}]}))
    (tmp_path / "bench_histogram.json").write_text(json.dumps({
        "device": "NVIDIA H200", "copy_bandwidth_GB/s": 4300.0, "complete": False, "runs": [
            {"shape": {"pairs": 64}, "pass": "count", "results": {
                "dprope_triton": {"ms": 0.3, "Gcounts/s": 447.0, "GB/s": 1790.0, "fraction_of_copy": 0.416,
                                  "exact": True}}}]}))
    (tmp_path / "bench_training_step.json").write_text("{}")  # an earlier run's: not reported
    text = verify_gpu.write_summary(tmp_path, budget=480, elapsed=301.4)
    assert text == (tmp_path / "summary.md").read_text()
    assert "- device: NVIDIA H200" in text and "- commit: abc123" in text
    assert "- budget: 480 s, used 301 s" in text
    assert "| tests_triton | passed | 120.5 | 150 | 512 passed, 3 skipped in 110.2s |" in text
    assert "| bench_training_step | skipped: budget | 0 | — |  |" in text and "## Training step" not in text
    assert "- copy_bandwidth_GB/s: 4300" in text and "- gemm_rate_TFLOP/s: 790" in text
    assert "| provider | ms | GB/s | fraction_of_copy |" in text
    assert "| dprope_triton | 0.2 | 4e+03 | 0.93 |" in text
    assert "| liger | — | — | unavailable: No module named 'liger_kernel' |" in text
    assert "| provider | ms | TFLOP/s | fraction_of_gemm |" in text
    assert "| fused_triton | 1 | 650 | 0.82 |" in text
    assert "| dprope_triton | 0.3 | 447 | 1.79e+03 | 0.416 | True |" in text
    assert text.count("partial") == 1  # the histogram's report was not complete


@pytest.mark.parametrize("bench", BENCHES)
def test_benchmarks_without_cuda_exit_2_in_one_line(tmp_path, bench):
    result = subprocess.run([sys.executable, f"benchmarks/{bench}.py", "--out", str(tmp_path / "r.json")],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0] and bench in lines[0], result.stderr
    assert result.stdout == "" and not (tmp_path / "r.json").exists()


def test_results_name_the_packages_own_commit_or_none(tmp_path):
    """A copy of the tree inside another repository records no commit (the first GPU run recorded the
    enclosing repository's); DPROPE_SOURCE_COMMIT names it where the copy has no history."""
    import shutil

    outer = tmp_path / "other-project"
    shutil.copytree(REPO / "dprope_kernels", outer / "copy" / "dprope_kernels",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    subprocess.run(["git", "init", "-q", str(outer)], check=True)
    subprocess.run(["git", "-C", str(outer), "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q",
                    "--allow-empty", "-m", "other"], check=True)
    code = "from dprope_kernels.provenance import source_commit; print(source_commit())"
    env = {k: v for k, v in os.environ.items() if k != "DPROPE_SOURCE_COMMIT"}
    env["PYTHONPATH"] = str(outer / "copy")
    copy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=outer)
    assert copy.returncode == 0 and copy.stdout.strip() == "None", copy.stderr
    named = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=outer,
                           env={**env, "DPROPE_SOURCE_COMMIT": "abc123"})
    assert named.stdout.strip() == "abc123"
    here = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**env, "PYTHONPATH": str(REPO)})
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a checkout (CI clones one): its own commit
        assert here.stdout.strip().split("+")[0] == head.stdout.strip()


def test_the_committed_gpu_figure_is_drawn_from_the_committed_measurements(tmp_path):
    pytest.importorskip("matplotlib")
    run_dir = REPO / "benchmarks" / "results" / "h200-2026-12-04"
    argv = [sys.executable, str(SCRIPT.parent / "plot_gpu.py"), str(run_dir / "measured.json"),
            str(tmp_path / "ops.png")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((run_dir / "measured.json").read_text())
    readme = (run_dir / "README.md").read_text()
    for title, rows in data["ops"].items():  # every fraction of copy plotted is one the run's table reports
        for name, value in rows.items():
            if "copy" in title:
                assert f"({value})" in readme or f"({value:.3f})" in readme, (name, value)

"""benchmarks/verify_gpu.py, the one GPU command, as far as a machine without a GPU can check it."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "verify_gpu.py"
sys.path.insert(0, str(SCRIPT.parent))
import verify_gpu  # noqa: E402

STEPS = ["environment", "build", "tests", "memcheck", "racecheck", "bench_rope", "bench_fused_projection",
         "bench_training_step"]


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_dry_run_lists_every_step_and_runs_nothing(tmp_path):
    out = tmp_path / "out"
    result = run(out, "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split(". ", 1)[1].split(" ")[0] for line in lines] == STEPS
    text = result.stdout
    assert "pip install --no-build-isolation --no-deps -e ." in text and "DPROPE_BUILD_CUDA=1" in text
    assert "--tool memcheck" in text and "--tool racecheck" in text
    for bench in STEPS[-3:]:
        assert f"benchmarks/{bench}.py --out {out / (bench + '.json')}" in text
    assert not out.exists()


def test_a_subset_of_steps_and_unknown_steps(tmp_path):
    result = run(tmp_path, "--dry-run", "--steps", "build,bench_rope")
    assert [line.split(". ", 1)[1].split(" ")[0] for line in result.stdout.strip().splitlines()] == ["build",
                                                                                                       "bench_rope"]
    result = run(tmp_path, "--steps", "build,fly")
    assert result.returncode == 2 and "unknown steps ['fly']" in result.stderr


def test_missing_out_dir_is_an_argparse_error():
    result = run()
    assert result.returncode == 2 and "out_dir" in result.stderr


def test_a_failing_step_is_recorded_and_summarised(tmp_path, monkeypatch):
    monkeypatch.setattr(verify_gpu, "plan_steps", lambda out, python=sys.executable: [
        verify_gpu.Step("ok", [sys.executable, "-c", "print('fine')"], 30),
        verify_gpu.Step("broken", [sys.executable, "-c", "import sys; print('no GPU'); sys.exit(3)"], 30),
        verify_gpu.Step("slow", [sys.executable, "-c", "import time; time.sleep(5)"], 1),
    ])
    assert verify_gpu.main([str(tmp_path)]) == 1
    steps = json.loads((tmp_path / "steps.json").read_text())
    assert [s["status"] for s in steps] == ["passed", "failed (exit 3)", "timed out after 1 s"]
    summary = (tmp_path / "summary.md").read_text()
    assert "| broken | failed (exit 3) |" in summary and "no GPU" in summary


def test_summary_on_canned_results(tmp_path):
    (tmp_path / "steps.json").write_text(json.dumps([
        {"name": "tests", "status": "passed", "seconds": 120.5, "command": "pytest", "log": "tests.log",
         "result_file": None},
        {"name": "bench_rope", "status": "passed", "seconds": 30.0, "command": "x", "log": "bench_rope.log",
         "result_file": "bench_rope.json"},
    ]))
    (tmp_path / "tests.log").write_text("....\n512 passed, 3 skipped in 110.2s\n")
    (tmp_path / "bench_rope.log").write_text("done\n")
    (tmp_path / "bench_rope.json").write_text(json.dumps({
        "device": "NVIDIA H100 80GB HBM3", "date": "2026-11-23", "commit": "abc123", "torch": "2.11.0",
        "copy_bandwidth_GB/s": 2950.0, "histogram_triton_ms": 0.41,
        "runs": [{"shape": {"B": 4, "T": 4096, "Hq": 32, "Hk": 8, "D": 128}, "pass": "fwd+bwd", "results": {
            "hf_eager": {"ms": 2.5, "GB/s": 400.0, "fraction_of_copy": 0.136},
            "dprope_triton": {"ms": 0.2, "GB/s": 2800.0, "fraction_of_copy": 0.949},
            "liger": "unavailable: No module named 'liger_kernel'"}}],
    }))
    text = verify_gpu.write_summary(tmp_path)
    assert text == (tmp_path / "summary.md").read_text()
    assert "- device: NVIDIA H100 80GB HBM3" in text and "- commit: abc123" in text
    assert "| tests | passed | 120.5 | 512 passed, 3 skipped in 110.2s |" in text
    assert "- copy_bandwidth_GB/s: 2950" in text and "- histogram_triton_ms: 0.41" in text
    assert "| dprope_triton | 0.2 | 2.8e+03 | 0.949 |" in text
    assert "| liger | — | — | unavailable: No module named 'liger_kernel' |" in text


def test_dry_run_commands_paste_into_a_shell(tmp_path):
    out = tmp_path / "out dir"  # a space, as users' folders have
    result = run(out, "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    steps = verify_gpu.plan_steps(out.resolve())
    assert len(lines) == len(steps)
    for line, step in zip(lines, steps):
        words = shlex.split(line.split("): ", 1)[1])  # what a POSIX shell makes of the printed command
        env = {}
        while words and "=" in words[0] and words[0].split("=", 1)[0].isidentifier():
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        assert env == step.env, step.name
        assert words == step.command, step.name
    assert any("-k" in step.command for step in steps)  # the step whose expression needs quoting

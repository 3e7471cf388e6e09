"""Backend choice: "auto" takes, per op, the backend measured fastest that can run, and DPROPE_BACKEND
stands in for it with errors that name the variable."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dprope_kernels as dk
from dprope_kernels import backends

CUDA = torch.device("cuda")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def every_backend_runs(monkeypatch):
    """A pretend CUDA machine where each backend can run (the choice only asks ``unavailable``)."""
    missing = set()
    monkeypatch.setattr(backends, "unavailable", lambda name, device: "gone" if name in missing else None)
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    return missing


def test_auto_takes_the_measured_order_per_op(every_backend_runs):
    assert backends.choose_backend("auto", CUDA, op="rope") == "cuda"  # 0.093 ms vs 0.234 (H200)
    assert backends.choose_backend("auto", CUDA, op="histogram") == "cuda"  # 0.137 ms vs 0.827
    assert backends.choose_backend("auto", CUDA, op="fused_projection") == "triton"  # 1.79 ms vs 6.32
    every_backend_runs.add("cuda")  # no extension built: the next that can run
    assert backends.choose_backend("auto", CUDA, op="rope") == "triton"
    every_backend_runs.add("triton")
    assert backends.choose_backend("auto", CUDA, op="fused_projection") == "torch"
    assert backends.choose_backend("auto", torch.device("cpu"), op="rope") == "torch"


def test_the_measurements_auto_follows_are_committed():
    text = (REPO / "benchmarks" / "results" / "h200-2026-12-04" / "README.md").read_text()
    for figure in ("0.093", "0.234", "0.137", "0.827", "1.79", "6.32"):
        assert figure in text
    assert "benchmarks/results/h200-2026-12-04/README.md" in Path(backends.__file__).read_text()


def test_the_environment_variable_stands_in_for_auto_and_is_named_in_errors(every_backend_runs, monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "triton")
    assert backends.choose_backend("auto", CUDA, op="rope") == "triton"
    assert backends.choose_backend("cuda", CUDA, op="rope") == "cuda"  # an explicit name wins
    every_backend_runs.add("triton")
    with pytest.raises(RuntimeError, match="DPROPE_BACKEND=triton"):
        backends.choose_backend("auto", CUDA, op="rope")
    monkeypatch.setenv(backends.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="DPROPE_BACKEND='bogus' is not a backend"):
        backends.choose_backend("auto", CUDA, op="rope")


@pytest.mark.parametrize("value", ["cuda", "bogus"])
def test_info_explains_a_backend_the_environment_asks_for_instead_of_failing(value):
    env = {"DPROPE_BACKEND": value, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "dprope_kernels", "info"], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert f"DPROPE_BACKEND='{value}' stands in for backend='auto'" in result.stdout
    assert "auto for rope -> none: " in result.stdout


def test_ops_name_the_variable_when_it_asks_for_what_cannot_run(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match="DPROPE_BACKEND=cuda"):
        dk.apply_rope(torch.randn(1, 2, 1, 8), None, dk.default_inv_freq(8, 10000.0))

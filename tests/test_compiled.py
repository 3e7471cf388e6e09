"""Every Triton kernel variant the launch code produces compiles for sm_80 and sm_90 within the
project's budgets (no GPU needed): python -m dprope_kernels.commands.aot, in a process without the
interpreter.

Budgets (dprope_kernels.commands.aot.budget_violations): no spills or stack in any variant, no 64-bit
division, no large-argument sin/cos; RoPE at >= 50% theoretical occupancy with 16-byte vector
global loads and stores in every pairing and at most one angle evaluation per pair a thread rotates
in a head block (once per program); the fused projection with wgmma on sm_90 wherever BLOCK_M >= 64
and a configuration for N <= 64 tokens. Beside the launches the package makes, every argument
specialization a caller can produce (int64 strides, each int32/int64 mix, strides of 1 or not,
unaligned pointers) must compile without spills.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # compiles every Triton variant for two GPU targets

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "benchmarks" / "results" / "static-sm90.json"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("aot")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    result = subprocess.run([sys.executable, "-m", "dprope_kernels.commands.aot", "--jobs",
                             str(max(1, os.cpu_count() or 1)), "--json", str(out / "static-{arch}.json")],
                            capture_output=True, text=True, env=env, timeout=3000, cwd=REPO)
    rows = [r for arch in ("sm80", "sm90")
            for r in json.loads((out / f"static-{arch}.json").read_text())["rows"]]
    return result, rows


def test_every_variant_compiles_within_the_budgets(report):
    result, rows = report
    assert result.returncode == 0, "budget violations:\n" + result.stderr[-6000:]
    assert all(r["ok"] for r in rows)


def test_the_variants_cover_dtypes_head_dims_pairings_and_configs(report):
    _, rows = report
    names = {r["name"] for r in rows if r["arch"] == "sm_90"}
    for dtype in ("float16", "bfloat16", "float32"):
        for D in (64, 128, 256):
            for pairing in ("neox", "gptj", "gptj>neox", "neox>gptj"):
                assert any(n.startswith(f"rope {dtype} D={D} {pairing} ") for n in names)
            for pairing in ("neox", "gptj"):
                for tokens in (16384, 32):  # a large GEMM and a decode step
                    assert any(n.startswith(f"fused {dtype} D={D} {pairing} N={tokens} ") for n in names)
    decode = [r for r in rows if r["kernel"] == "fused" and " N=32 " in r["name"]]
    assert decode and all(r["tiles"]["BLOCK_M"] <= 64 for r in decode)
    assert sum(r["kernel"] == "histogram" and not r["specialization"] for r in rows) == 16


def test_every_argument_specialization_a_caller_can_produce_compiles(report):
    """Triton compiles one kernel per specialization of its arguments (an int is int32, int64 from
    2**31, or the constant 1; a pointer 16-byte aligned or not), and the interpreter compiles none: the
    first GPU run found a q past 2**31 elements beside an absent k failing to compile (int64 and
    int32 strides meeting in one variable). Every such class compiles here, on both targets."""
    _, rows = report
    special = {r["name"] for r in rows if r["specialization"] and r["ok"] and r["arch"] == "sm_90"}
    for tensor in ("q", "k"):
        for kind in ("int64", "int64 tokens", "dim stride 2", "heads apart", "unaligned"):
            assert {f"rope specialization: {tensor} {kind} {p}" for p in ("neox", "gptj>neox")} <= special
    for case in ("q int64 k absent", "every stride int64", "outputs int64", "positions int64 strides",
                 "positions broadcast int32", "decode int64"):
        assert f"rope specialization: {case} neox" in special
    assert sum(n.startswith("fused specialization: ") for n in special) == 7
    assert sum(n.startswith("histogram specialization: ") for n in special) == 3
    assert {r["arch"] for r in rows if r["specialization"]} == {"sm_80", "sm_90"}


def test_the_committed_static_report_matches_todays_variants(report):
    _, rows = report
    committed = json.loads(COMMITTED.read_text())
    assert committed["environment"]["arch"] == "sm_90"
    assert {r["name"] for r in committed["rows"]} == {r["name"] for r in rows if r["arch"] == "sm_90"}, \
        "regenerate: python -m dprope_kernels.commands.aot --json 'benchmarks/results/static-{arch}.json'"

"""Planning speed on the CPU (pytest-benchmark).

    pytest benchmarks/bench_planner.py --benchmark-json=benchmarks/results/planner-cpu.json

The public code needs ~42.7 s (4k -> 8k) and ~104.8 s (4k -> 16k) on a 2-core CPU
(``reference_seconds_on_2_core_cpu`` in ``tests/data/dprope_llama2_reference.json``).
"""

import pytest

from dprope_kernels import plan_dprope


@pytest.mark.parametrize("target", [8192, 16384, 1 << 20], ids=["4k-8k", "4k-16k", "4k-1M"])
@pytest.mark.parametrize("precision", ["exact", "reference"])
def test_plan_llama2(benchmark, target, precision):
    if precision == "reference" and target > 16384:
        pytest.skip("reference precision visits every position; timed only for the paper's lengths")
    benchmark.group = f"plan {precision}"
    plan = benchmark(plan_dprope, head_dim=128, rope_theta=10000.0, original_max_position=4096,
                     target_max_position=target, precision=precision)
    assert plan.target_max_position == target

"""The fine-tuning experiment (benchmarks/finetune_experiment.py) end to end at its toy size: the split,
the tables served, the training, the records, the pre-registered decision and a resumed run."""

import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

pytestmark = pytest.mark.slow  # about a minute on 2 CPU cores

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "finetune_experiment.py"
TABLES = ("pi", "ntk", "yarn", "llama3", "dprope", "dprope-paper")
SEEDS = (0, 1, 2)  # the toy preset's fine-tuning seeds


def run(*args, expect=0):
    result = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                            cwd=ROOT, timeout=900, env={**os.environ, "DPROPE_BACKEND": "torch"})
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    output = tmp_path_factory.mktemp("finetune") / "toy"
    printed = run("--preset", "toy", "--output", output).stdout
    records = [json.loads(line) for line in (output / "results.jsonl").read_text().splitlines()]
    return output, printed, {r["key"]: r for r in records}


def by_phase(records, phase):
    return [r for r in records.values() if r["phase"] == phase]


def test_the_split_is_by_file_and_the_listed_hashes_are_the_files(toy):
    output, _, _ = toy
    data = json.loads((output / "data.json").read_text())
    root, listed = Path(data["corpus"]), data["files"]
    paths = [f["path"] for f in listed]
    assert len(paths) == len(set(paths)) and len({f["sha256"] for f in listed}) == len(listed)
    counts = Counter(f["split"] for f in listed)
    assert {name: counts[name] for name in counts} == {n: s["files"] for n, s in data["splits"].items()}
    total = sum(f["bytes"] for f in listed)
    assert 0.05 < data["splits"]["heldout"]["bytes"] / total < 0.2
    for f in listed:
        content = (root / f["path"]).read_bytes()
        assert (len(content), hashlib.sha256(content).hexdigest()) == (f["bytes"], f["sha256"]), f["path"]
        assert not {"test", "tests", "site-packages"} & set(Path(f["path"]).parts[:-1])
    split = {f["path"]: f["split"] for f in listed}
    windows = data["eval_windows"]
    assert len(windows) == 8 and len({(w["path"], w["offset"]) for w in windows}) == 8
    for w in windows:
        assert split[w["path"]] == "heldout"
        assert w["offset"] + w["bytes"] <= (root / w["path"]).stat().st_size


def test_every_table_is_the_one_compare_builds_and_runs_on_the_kernels(toy):
    from dprope_kernels import plan_dprope
    from dprope_kernels.strategies import default_inv_freq

    _, _, records = toy
    before = {r["table"]: r for r in by_phase(records, "before")}
    assert set(before) == {"original", *TABLES}
    assert all(r["how"] == "apply_dprope_kernels" for r in records.values() if "how" in r)
    base = default_inv_freq(16, 10000.0)
    torch.testing.assert_close(torch.tensor(before["original"]["inv_freq"], dtype=torch.float64), base)
    torch.testing.assert_close(torch.tensor(before["pi"]["inv_freq"], dtype=torch.float64), base / 4)
    plan = plan_dprope(head_dim=16, original_max_position=64, target_max_position=256)
    paper = plan_dprope(head_dim=16, original_max_position=64, target_max_position=256, selection="paper",
                        attention_factor="none")
    assert before["dprope"]["inv_freq"] == plan.inv_freq.tolist()
    assert before["dprope-paper"]["inv_freq"] == paper.inv_freq.tolist()
    yarn_factor = 0.1 * math.log(4) + 1
    factors = {name: r["attention_factor"] for name, r in before.items()}
    expected = {**dict.fromkeys(before, 1.0), "yarn": yarn_factor, "dprope": yarn_factor}
    assert factors == pytest.approx(expected)
    tables = [tuple(r["inv_freq"]) for r in before.values()]
    assert len(set(tables)) == len(tables)


def test_pretraining_learns_and_every_table_gets_the_same_fine_tuning(toy):
    _, _, records = toy
    (pretrain,) = by_phase(records, "pretrain")
    assert pretrain["losses"][-1] < 0.8 * pretrain["losses"][0]
    assert records["before/p0/original"]["ppl_near"] < 64  # bytes: uniform would be 256
    after = by_phase(records, "after")
    assert sorted((r["table"], r["finetune_seed"]) for r in after) == sorted(
        (t, s) for t in TABLES for s in SEEDS)
    orders = {s: {r["data_order"] for r in after if r["finetune_seed"] == s} for s in SEEDS}
    assert all(len(o) == 1 for o in orders.values()) and len(set.union(*orders.values())) == len(SEEDS)
    assert all(len(r["losses"]) == 4 and len(r["per_window"]) == 8 for r in after)
    for table in TABLES:  # fine-tuning at 4L lowers the held-out perplexity past the window
        tuned = statistics.fmean(r["ppl_far"] for r in after if r["table"] == table)
        assert tuned < records[f"before/p0/{table}"]["ppl_far"], table
    for r in records.values():
        if "ppl_near" in r:
            pooled = math.exp(r["nll_far"] / r["tokens_far"])
            assert math.isfinite(r["ppl_near"]) and r["ppl_far"] == pytest.approx(pooled)
            assert r["tokens_far"] == 8 * (256 - 64) and r["tokens_near"] == 8 * 63


def test_the_summary_and_the_decision_follow_from_the_records(toy):
    output, printed, records = toy
    summary = json.loads((output / "summary.json").read_text())
    after = {(r["table"], r["finetune_seed"]): r for r in by_phase(records, "after")}
    for table in TABLES:
        far = [after[table, s]["ppl_far"] for s in SEEDS]
        row = summary["tables"][table]["after"]["far"]
        assert row["mean"] == pytest.approx(statistics.fmean(far))
        assert (row["min"], row["max"], row["n"]) == (min(far), max(far), 3)
    near = {t: statistics.fmean(after[t, s]["ppl_near"] for s in SEEDS) for t in TABLES}
    meets = [c for c in TABLES
             if all(after[c, s]["ppl_far"] < after[t, s]["ppl_far"] for t in TABLES if t != c for s in SEEDS)
             and near[c] <= 1.01 * min(near.values())]
    decision = summary["decision"]
    assert decision["complete"] and decision["meets_rule"] == meets
    assert decision["valid"] == (records["before/p0/original"]["ppl_near"] < 8)
    assert decision["dprope_recommended"] == (decision["valid"] and "dprope" in meets)
    assert summary["outcome"] in printed and summary["outcome"] in (output / "table.md").read_text()
    assert (output / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_does_only_what_is_missing_and_other_settings_are_refused(toy):
    output, _, _ = toy
    results = (output / "results.jsonl").read_bytes()
    again = run("--preset", "toy", "--output", output).stdout
    assert "pre-training p0" not in again and "fine-tune pi" not in again
    assert (output / "results.jsonl").read_bytes() == results
    refused = run("--preset", "toy", "--dry-run", "--output", output, expect=2).stderr
    assert "holds results made with other settings" in refused and "dry_run False -> True" in refused
    assert (output / "results.jsonl").read_bytes() == results

"""benchmarks/compare_tables.py: the committed comparisons' tables, from a run's records."""

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_tables.py"


def record(table, document, at, past, buckets):
    """A record with per-token NLL ``at`` / ``past`` (10 tokens each half) and the bucket sums."""
    return {"table": table, "document": document, "nll_original": 10 * at, "tokens_original": 10,
            "nll_past": 10 * past, "tokens_past": 10, "bucket_nll": buckets, "bucket_tokens": [5, 5, 5, 5]}


def test_pooled_perplexities_and_differences_from_a_reference(tmp_path):
    records = [record("yarn", "a", 2.0, 2.5, [10, 10, 12, 13]), record("yarn", "b", 1.0, 1.5, [5, 5, 7, 8]),
               record("mine", "a", 2.1, 2.4, [10, 11, 12, 12]), record("mine", "b", 1.0, 1.6, [5, 5, 8, 8]),
               record("partial", "a", 1.0, 1.0, [5, 5, 5, 5])]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "tables.json").write_text(json.dumps({"k1": {"table": "yarn", "attention_scaling": 1.0693},
                                                      "mine": {"attention_scaling": 1.0}}))
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--reference", "yarn",
                          "--label", "mine=ours"], capture_output=True, text=True, check=True).stdout
    rows = {line.split(" | ")[0]: line for line in out.splitlines() if line.startswith("| ours")}
    assert len(rows) == 1 and "partial" not in out  # only tables with every document
    past = [line for line in out.splitlines() if line.startswith("| ours |")][1]
    assert past == f"| ours | 1.0000 | {math.exp(2.4):.3f} | {math.exp(1.6):.3f} | {math.exp(2.0):.3f} |"
    difference = out.split("**past the window: per-document difference from yarn**")[1].splitlines()
    ours = next(line for line in difference if line.startswith("| ours |"))
    # per token: -0.1 on a, +0.1 on b; buckets past the window: (12-12)/5, (12-13)/5, (8-7)/5, (8-8)/5
    noise = [0.0, -0.2, 0.2, 0.0]
    se = math.sqrt(sum(x * x for x in noise) / 3) / 2
    assert ours == (f"| ours | -0.1000 | +0.1000 | +0.0000 | -0.1000 | +0.1000 | 1/2 | 1.0000 | "
                    f"+0.0000 ± {se:.4f} |")
    refused = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--tables", "yarn,partial"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "no record of partial on b" in refused.stderr


def test_the_attention_factors_come_from_the_summary_where_tables_json_is_keyed_by_table(tmp_path):
    """tables.json is keyed by what each table is (two names can share one); summary.json names them."""
    records = [record(name, "a", 2.0, 2.5, [10, 10, 12, 13]) for name in ("yarn", "copy")]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "tables.json").write_text(json.dumps({"k1": {"attention_scaling": 1.0693}}))
    (tmp_path / "summary.json").write_text(json.dumps({"tables": {
        "yarn": {"table_key": "k1", "attention_scaling": 1.0693},
        "copy": {"table_key": "k1", "attention_scaling": 1.0693}}}))
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True,
                         check=True).stdout
    assert "| yarn | 1.0693 |" in out and "| copy | 1.0693 |" in out

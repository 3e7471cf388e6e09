"""``dprope compare`` and ``dprope export --from-compare`` on a tiny random model with a byte tokenizer
(tests/tiny_models.py): the tools' machinery, refusals and identities, in seconds. What the tables do to
a real model is tests/test_compare.py's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dprope_kernels import commands, files

pytest.importorskip("transformers")
from tiny_models import documents, tiny_model_dir  # noqa: E402

ORIGINAL, TARGET = 64, 128


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(model directory, [NAME=PATH documents])``."""
    root = tmp_path_factory.mktemp("tiny")
    return str(tiny_model_dir(root / "model")), documents(root / "docs")


def compare_argv(model, docs, out, *extra, tables="original,yarn,dprope"):
    return ["compare", "--model", str(model), "--documents", *docs, "--target", str(TARGET), "--output",
            str(out), "--tables", tables, "--passkey-trials", "0", "--no-plot", "--quiet", *extra]


def one_line_error(capsys, command: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err and err.startswith(f"dprope {command}: error: "), err
    assert len(err.splitlines()) == 1, err
    return err


def test_an_output_another_run_holds_is_one_line_and_exit_2(tiny, tmp_path, capsys):
    """Finding 11: DirectoryInUse was a traceback (the CLI converted only ValueError/TypeError/...)."""
    model, docs = tiny
    out = tmp_path / "held"
    out.mkdir()
    held = files.lock_directory(out)
    try:
        assert commands.main(compare_argv(model, docs, out)) == 2
    finally:
        held.close()
    assert "is using this directory" in one_line_error(capsys, "compare")
    assert sorted(p.name for p in out.iterdir()) == [files.LOCK]


def test_losses_that_are_not_numbers_are_strict_json_and_never_pooled():
    """Finding 17's root in compare: NaN losses wrote NaN into results.jsonl and summary.json."""
    import math

    from dprope_kernels.commands.compare.report import markdown_table, recommend, score, summary_row

    record = score([1.0, float("nan"), 2.0, 3.0], original=3, bucket=2)
    json.loads(files.dumps(record))
    assert record["ppl_original"] is None and record["bucket_nll"] == [1.0, None, 3.0]
    assert record["ppl_past"] == pytest.approx(math.exp(2.5))
    served = {"disturbance": 0.1, "how": "transformers", "attention_scaling": 1.0}
    good = score([1.0, 1.5, 2.0, 2.5], original=3, bucket=2)
    summary = {"original": 3, "target": 5, "documents": {"a": {}},
               "tables": {"nan": summary_row({"a": record}, [], served),
                          "fine": summary_row({"a": good}, [], served)}}
    json.loads(files.dumps(summary))
    assert summary["tables"]["nan"]["nonfinite"] == ["a"] and summary["tables"]["nan"]["ppl_original"] is None
    assert "| nan | non-finite | 12.18 |" in markdown_table(summary)
    assert recommend(summary, {"nan", "fine"})["table"] == "fine"


def table_file(path, inv_freq, attention_factor=None) -> str:
    data = {"inv_freq": list(inv_freq)}
    if attention_factor is not None:
        data["attention_factor"] = attention_factor
    Path(path).write_text(json.dumps(data))
    return str(path)


def base_table():
    import dprope_kernels as dk

    return dk.default_inv_freq(16, 10000.0).tolist()


@pytest.mark.parametrize("factor", [1e30, 1e39, 1e20])
def test_a_table_files_attention_factor_is_checked_as_the_planner_checks_plans(tiny, tmp_path, capsys,
                                                                               factor):
    """Finding 2: factors 1e30 and 1e39 were accepted (NaN perplexity, then recommended); the planner
    refused 1e39 only. One validator: the square of the factor scales attention logits, and must fit
    float32."""
    import dprope_kernels as dk

    model, docs = tiny
    path = table_file(tmp_path / "big.json", base_table(), factor)
    out = tmp_path / "out"
    assert commands.main(compare_argv(model, docs, out, "--table-file", f"big={path}", tables="big")) == 2
    assert "--table-file big: attention_factor" in one_line_error(capsys, "compare")
    assert not out.exists()
    with pytest.raises(ValueError, match="attention_factor"):
        dk.plan_dprope(head_dim=16, original_max_position=64, factor=2, attention_factor=factor)


def test_the_recommendation_never_picks_a_table_whose_perplexity_is_not_a_number():
    """Finding 2: 'Recommended: **big**, perplexity nan'."""
    from dprope_kernels.commands.compare.report import recommend, recommendation_text, score, summary_row

    served = {"disturbance": 0.1, "how": "transformers", "attention_scaling": 1.0}
    rows = {"big": summary_row({"a": score([float("nan")] * 4, 3, 2)}, [], served),
            "yarn": summary_row({"a": score([1.0, 1.5, 2.0, 2.5], 3, 2)}, [], served)}
    summary = {"original": 3, "target": 5, "documents": {"a": {}}, "tables": rows}
    rec = recommend(summary, {"big", "yarn"})
    assert rec["table"] == "yarn" and rec["excluded_nonfinite"] == ["big"]
    assert "not considered, perplexity not a number: big" in recommendation_text(rec, 3, 5)
    del rows["yarn"]
    assert recommend(summary, {"big"}) is None


def test_a_measured_table_with_a_zero_frequency_is_refused_by_export_not_written_as_infinity(tiny, tmp_path,
                                                                                             capsys):
    """Finding 3: a table file with a zero frequency (allowed: a pair that does not rotate) exported
    through --from-compare as Infinity in short_factor, which is not JSON."""
    model, docs = tiny
    table = base_table()
    table[0] = 0.0
    path = table_file(tmp_path / "zero.json", table)
    out = tmp_path / "compared"
    assert commands.main(compare_argv(model, docs, out, "--table-file", f"zero={path}",
                                      tables="yarn,zero")) == 0
    capsys.readouterr()
    assert commands.main(["export", model, str(tmp_path / "exported"), "--from-compare", str(out),
                          "--table", "zero"]) == 2
    assert "pairs [0] have no finite positive divisor" in one_line_error(capsys, "export")
    assert not (tmp_path / "exported").exists()


@pytest.mark.parametrize("name", ["dprope", "dprope-hard", "dprope-paper", "dprope-nhat10", "yarn", "twice"])
def test_a_variant_named_like_another_table_is_refused_not_swapped_in(tiny, tmp_path, capsys, name):
    """Finding 1: a variant named dprope (or dprope-hard, -paper, -nhatN) silently replaced the built-in
    table, and the row labelled dprope was served with another factor."""
    model, docs = tiny
    variant = f'{name}={{"attention_factor": "none"}}'
    extra = ["--dprope-variant", variant] + (["--dprope-variant", variant] if name == "twice" else [])
    out = tmp_path / "out"
    assert commands.main(compare_argv(model, docs, out, *extra, tables="original")) == 2
    err = one_line_error(capsys, "compare")
    assert f"['{name}'] given twice" in err and not out.exists()


def test_the_model_fingerprint_reads_every_byte(tmp_path):
    """Finding 5: 16 slices of 64 KiB per file; a weights file edited in place (same size) kept its
    fingerprint, and compare reused the old model's records."""
    from dprope_kernels.commands.compare.model import fingerprint

    (tmp_path / "config.json").write_text("{}")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * (4 << 12))  # 4 MiB
    before = fingerprint(str(tmp_path), None)
    with open(weights, "r+b") as f:
        f.seek(100_000)  # between two of the old slices
        f.write(b"\xff")
    assert fingerprint(str(tmp_path), None) != before


def records(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "results.jsonl").read_text().splitlines()]


def test_fresh_discards_nothing_until_every_check_has_passed(tiny, tmp_path, capsys):
    """Finding 10: --fresh with a command refused later (a document shorter than the window) deleted every
    earlier record, then exited 2 having written nothing."""
    model, docs = tiny
    out = tmp_path / "out"
    assert commands.main(compare_argv(model, docs, out, tables="original,yarn")) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != files.LOCK}
    assert len(records(out)) == 4
    short = tmp_path / "short.txt"
    short.write_text("too short for the window")
    capsys.readouterr()
    assert commands.main(compare_argv(model, [f"short={short}"], out, "--fresh", tables="original,yarn")) == 2
    assert "the window needs 128" in one_line_error(capsys, "compare")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != files.LOCK} == before


@pytest.mark.parametrize("name", ["run.json", "tables.json"])
def test_a_damaged_record_file_is_named_and_fresh_recovers(tiny, tmp_path, capsys, name):
    """Finding 12: 'Expecting value: line 1 column 1 (char 0)' naming no file, and --fresh could not
    recover because run.json was parsed first."""
    model, docs = tiny
    out = tmp_path / "out"
    assert commands.main(compare_argv(model, docs, out, tables="original")) == 0
    (out / name).write_text("")  # e.g. a disk that filled up under another tool
    capsys.readouterr()
    assert commands.main(compare_argv(model, docs, out, tables="original")) == 2
    err = one_line_error(capsys, "compare")
    assert f"{out / name} is damaged" in err and "--fresh" in err
    assert commands.main(compare_argv(model, docs, out, "--fresh", tables="original")) == 0
    assert len(records(out)) == 2 and json.loads((out / name).read_text())

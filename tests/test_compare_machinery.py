"""``dprope compare`` and ``dprope export --from-compare`` on a tiny random model with a byte tokenizer
(tests/tiny_models.py): the tools' machinery, refusals and identities, in seconds. What the tables do to
a real model is tests/test_compare.py's."""

from __future__ import annotations

import json

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

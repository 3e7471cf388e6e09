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
    assert "not considered, perplexity not a number: big" in recommendation_text(rec, 3, 5, summary)
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


def export_argv(model, out, compared, *extra):
    return ["export", str(model), str(out), "--from-compare", str(compared), *extra]


def test_two_tables_with_the_same_values_keep_their_own_names_and_sources(tiny, tmp_path, capsys):
    """Finding 4: a table file made by dprope plan --json and the dprope table shared one record in
    tables.json; the file's overwrote the plan's, so export --table dprope recorded 'source: file' and
    dprope plan --config then refused the export."""
    model, docs = tiny
    assert commands.main(["plan", "--head-dim", "16", "--original", str(ORIGINAL), "--target", str(TARGET),
                          "--json"]) == 0
    (tmp_path / "plan.json").write_text(capsys.readouterr().out)
    out = tmp_path / "compared"
    assert commands.main(compare_argv(model, docs, out, "--table-file", f"copy={tmp_path / 'plan.json'}",
                                      tables="dprope,copy")) == 0
    rows = json.loads((out / "summary.json").read_text())["tables"]
    assert rows["dprope"]["table_key"] == rows["copy"]["table_key"]  # one table, measured once
    assert rows["dprope"]["plan"] is not None and rows["copy"]["source"].startswith("file ")
    capsys.readouterr()
    assert commands.main(export_argv(model, tmp_path / "exported", out, "--table", "dprope", "--json")) == 0
    block = json.loads(capsys.readouterr().out)["dprope"]
    assert block["rope_config"]["rope_type"] == "dprope" and "source" not in block
    assert commands.main(["plan", "--config", str(tmp_path / "exported")]) == 0  # it reads as its plan


@pytest.fixture(scope="module")
def compared(tiny, tmp_path_factory):
    """A finished comparison of yarn and dprope on the tiny model (64 -> 128)."""
    model, docs = tiny
    out = tmp_path_factory.mktemp("compared") / "out"
    assert commands.main(compare_argv(model, docs, out, tables="original,yarn,dprope")) == 0
    return out


@pytest.mark.parametrize("change", [{"rope_theta": 500000.0}, {"seed": 1}])
def test_export_refuses_a_comparison_made_on_another_model(tiny, compared, tmp_path, capsys, change):
    """Finding 6: export --from-compare never checked that the comparison was made on the model being
    exported (a comparison of a rope_theta 1e4 model applied to a 5e5 one wrote divisors 0.07-0.74)."""
    other = tiny_model_dir(tmp_path / "other", **change)
    capsys.readouterr()
    assert commands.main(export_argv(other, tmp_path / "exported", compared, "--table", "yarn")) == 2
    err = one_line_error(capsys, "export")
    assert f"{compared} measured another model" in err and not (tmp_path / "exported").exists()


def test_export_refuses_a_comparison_whose_target_is_inside_the_models_own_window(tmp_path, capsys):
    """Finding 6: a comparison whose target is within the model's own length divided pairs inside the
    window it was trained on, and shortened its length, without a word (the README tour led there)."""
    model = tiny_model_dir(tmp_path / "long", max_position_embeddings=256)
    out = tmp_path / "compared"
    assert commands.main(compare_argv(model, documents(tmp_path / "docs"), out, "--original", str(ORIGINAL),
                                      tables="yarn")) == 0
    capsys.readouterr()
    assert commands.main(export_argv(model, tmp_path / "exported", out, "--table", "yarn")) == 2
    err = one_line_error(capsys, "export")
    assert "target 128 is not beyond the model's own 256 positions" in err
    assert not (tmp_path / "exported").exists()


def test_export_refuses_to_replace_the_plan_a_model_was_trained_with(tmp_path, capsys):
    """Finding 7: a source recording the DPRoPE plan it was trained with (factor 1.0), exported with
    --from-compare --table yarn or dprope, was written with the other table and factor; the same change
    given as flags is refused."""
    from conftest import rope_config_kwargs

    import dprope_kernels as dk

    dk.register_dprope_rope_type()
    trained = dk.plan_dprope(head_dim=16, original_max_position=ORIGINAL, target_max_position=TARGET,
                             attention_factor="none")
    rope = {k: v for k, v in trained.rope_config().items() if k != "max_position_embeddings"}
    model = tiny_model_dir(tmp_path / "tuned", max_position_embeddings=TARGET, **rope_config_kwargs(rope))
    out = tmp_path / "compared"
    assert commands.main(compare_argv(model, documents(tmp_path / "docs"), out, "--original", str(ORIGINAL),
                                      "--dprope-variant", 'trained={"attention_factor": "none"}',
                                      tables="yarn,dprope,trained")) == 0
    for table in ("yarn", "dprope"):
        capsys.readouterr()
        assert commands.main(export_argv(model, tmp_path / table, out, "--table", table)) == 2
        err = one_line_error(capsys, "export")
        assert "records the DPRoPE plan it was trained with" in err and f"table {table!r}" in err
        assert not (tmp_path / table).exists()
    assert commands.main(export_argv(model, tmp_path / "same", out, "--table", "trained", "--json")) == 0
    block = json.loads(capsys.readouterr().out)["dprope"]
    assert block["rope_config"]["dprope_attention_factor"] == 1.0  # the plan it was trained with


def test_export_refuses_a_table_the_comparison_never_finished(tiny, tmp_path, capsys, monkeypatch):
    """Finding 13: after an interrupted comparison that never measured dprope, export --table dprope
    exported it anyway (the docs say 'a table dprope compare measured')."""
    from dprope_kernels.commands.compare import model as under_test

    model, docs = tiny
    scored = under_test.token_nll
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # yarn on both documents, then dprope's first
            raise KeyboardInterrupt
        return scored(*args, **kwargs)

    monkeypatch.setattr(under_test, "token_nll", interrupted)
    out = tmp_path / "compared"
    assert commands.main(compare_argv(model, docs, out, tables="yarn,dprope")) == 130
    capsys.readouterr()
    assert commands.main(export_argv(model, tmp_path / "exported", out, "--table", "dprope")) == 2
    assert "measured on 0 of 2 documents" in one_line_error(capsys, "export")
    assert not (tmp_path / "exported").exists()


def served_by_name(out) -> dict:
    """tables.json (keyed by what each table is) by the names the summary gives them."""
    summary = json.loads((Path(out) / "summary.json").read_text())
    tables = json.loads((Path(out) / "tables.json").read_text())
    return {name: tables[row["table_key"]] for name, row in summary["tables"].items()}


def test_a_compared_table_exports_for_every_engine_with_its_attention_factor(tiny, compared, tmp_path,
                                                                            capsys):
    """yarn, as compare served it (its table and factor), to a model directory that transformers loads
    without the package and to a GGUF file; the plan, with its recorded config; never the model's own."""
    import numpy as np
    import torch
    import transformers

    import dprope_kernels as dk
    from dprope_kernels.export import ulp_distance

    model, _ = tiny
    yarn = served_by_name(compared)["yarn"]
    capsys.readouterr()
    assert commands.main(export_argv(model, tmp_path / "y", compared, "--table", "yarn")) == 0
    written = json.loads((tmp_path / "y" / "config.json").read_text())
    assert written["dprope"]["table"] == "yarn" and "rope_config" not in written["dprope"]
    assert written["rope_scaling"]["attention_factor"] == yarn["attention_scaling"]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "y")
    rotary = loaded.model.rotary_emb
    assert rotary.attention_scaling == pytest.approx(yarn["attention_scaling"])
    ulp = ulp_distance(rotary.inv_freq, torch.tensor(yarn["inv_freq"]))  # YaRN's table: not exact divisors
    assert ulp <= 2 and written["dprope"]["inv_freq_max_ulp"] == ulp
    capsys.readouterr()
    assert commands.main(["plan", "--config", str(tmp_path / "y")]) == 2  # an export of another extension
    assert "export of the 'yarn' table" in one_line_error(capsys, "plan")

    assert commands.main(export_argv(model, tmp_path / "d", compared, "--table", "dprope", "--json")) == 0
    block = json.loads(capsys.readouterr().out)["dprope"]
    assert block["rope_config"]["rope_type"] == "dprope" and block["table"] == "dprope"
    assert commands.main(export_argv(model, tmp_path / "n", compared, "--table", "original")) == 2
    assert "the model's own" in one_line_error(capsys, "export")

    # the same model as a GGUF file: a comparison of it records that file's fingerprint
    gguf = pytest.importorskip("gguf")
    from tiny_models import tiny_gguf

    from dprope_kernels.commands.compare.model import fingerprint

    source = tiny_gguf(tmp_path / "tiny.gguf")
    run = json.loads((compared / "run.json").read_text())
    run["settings"]["model_files"] = fingerprint(str(tmp_path), "tiny.gguf")
    copy = tmp_path / "compared-gguf"
    copy.mkdir()
    for name in ("summary.json", "tables.json"):
        (copy / name).write_bytes((compared / name).read_bytes())
    (copy / "run.json").write_text(json.dumps(run))
    assert commands.main(["export", "--gguf", str(source), str(tmp_path / "y.gguf"), "--from-compare",
                          str(copy), "--table", "yarn", "--json"]) == 0
    reader = gguf.GGUFReader(str(tmp_path / "y.gguf"))
    factors = next(t for t in reader.tensors if t.name == "rope_freqs.weight").data
    base = dk.default_inv_freq(16, 10000.0)
    assert np.allclose(factors, (base / torch.tensor(yarn["inv_freq"], dtype=torch.float64)).numpy(),
                       rtol=1e-6)
    assert (reader.get_field("llama.rope.scaling.attn_factor").contents()
            == pytest.approx(yarn["attention_scaling"]))
    assert reader.get_field("dprope.table").contents() == "yarn"
    assert commands.main(["export", "--gguf", str(source), str(tmp_path / "z.gguf"), "--from-compare",
                          str(compared), "--table", "yarn"]) == 2  # the directory's model, not this file
    assert "measured another model" in one_line_error(capsys, "export")


@pytest.mark.parametrize("model_type, partial", [("phi", dict(partial_rotary_factor=0.5)),
                                                 ("stablelm", dict(partial_rotary_factor=0.25)),
                                                 ("gpt_neox", dict(rotary_pct=0.25))])
def test_a_partial_rotary_model_is_compared_with_its_own_rotary_dims(tmp_path, model_type, partial):
    """Finding 14: on transformers 5, compare rebuilt the rotary module from rope_parameters without
    partial_rotary_factor and failed after loading ('base_inv_freq has 2 frequencies, expected 8')."""
    import dprope_kernels as dk

    model = tiny_model_dir(tmp_path / model_type, model_type, **partial)
    out = tmp_path / "out"
    assert commands.main(compare_argv(model, documents(tmp_path / "docs"), out)) == 0
    served = served_by_name(out)
    fraction = next(iter(partial.values()))
    rotary_dim = int(16 * fraction)
    plan = dk.plan_dprope(head_dim=rotary_dim, original_max_position=ORIGINAL, target_max_position=TARGET)
    assert served["dprope"]["inv_freq"] == plan.inv_freq.float().double().tolist()
    own = dk.default_inv_freq(rotary_dim, 10000.0).float().double()
    assert served["original"]["inv_freq"] == own.tolist()


@pytest.mark.parametrize("model_type, head", [("granite", dict(logits_scaling=8.0)),
                                              ("cohere", dict(logit_scale=0.25)),
                                              ("gemma2", dict(final_logit_softcapping=2.0)),
                                              ("llama", {})])
def test_token_losses_are_the_models_own(model_type, head):
    """Finding 8: on Granite (logits_scaling) and Cohere (logit_scale) compare's token NLL ignored the
    scaling (the 'original' row read 266.3 / 262.7 where the model's own forward gave 258.7 / 258.2)."""
    import torch
    from hf_families import build

    from dprope_kernels.commands.compare.model import check_head, token_nll

    model = build(model_type, **head).eval()
    ids = torch.randint(3, 128, (40,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0].float()
    want = torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="none").double()
    assert token_nll(model, ids) == pytest.approx(want.tolist(), rel=1e-5, abs=1e-5)
    check_head(model, ids[:16])


def test_a_model_whose_head_compare_does_not_reproduce_is_refused():
    import torch
    from hf_families import build

    from dprope_kernels.commands.compare import CompareError
    from dprope_kernels.commands.compare.model import check_head

    model = build("llama").eval()
    forward = model.forward

    def scaled(*args, **kwargs):  # a head doing something compare does not know of
        out = forward(*args, **kwargs)
        out.logits = out.logits * 3
        return out

    model.forward = scaled
    with pytest.raises(CompareError, match="its own forward gives other logits"):
        check_head(model, torch.arange(3, 19))


def test_a_partial_comparison_recommends_nothing_and_says_what_is_missing():
    """Issue 32, also: while a comparison runs or after it was interrupted, table.md said 'Recommended:
    **dprope**' when only that table had results."""
    from dprope_kernels.commands.compare.report import recommend, recommendation_text, score, summary_row

    served = {"disturbance": 0.1, "how": "transformers", "attention_scaling": 1.0}
    done = {d: score([1.0, 1.5, 2.0, 2.5], 3, 2) for d in ("a", "b")}
    rows = {"original": summary_row(done, [], served), "dprope": summary_row(done, [], served),
            "yarn": summary_row({"a": done["a"]}, [], served), "ntk": summary_row({}, [], served)}
    summary = {"original": 3, "target": 5, "documents": {"a": {}, "b": {}}, "tables": rows}
    assert recommend(summary, {"original", "dprope", "yarn", "ntk"}) is None
    text = recommendation_text(None, 3, 5, summary)
    assert text == ("No recommendation yet: the comparison is partial (yarn: 1 of 2 documents; ntk: 0 of 2 "
                    "documents); rerun the same command to finish it.")


def test_the_summary_names_the_export_command_for_its_own_directory_and_table(tiny, compared, tmp_path,
                                                                              capsys):
    model, docs = tiny
    summary = json.loads((compared / "summary.json").read_text())
    table = summary["recommendation"]["table"]
    assert (f"Export it: dprope export {model} OUT --from-compare {compared} --table {table}"
            in (compared / "table.md").read_text())
    long = tiny_model_dir(tmp_path / "long", max_position_embeddings=256)
    out = tmp_path / "inside"
    assert commands.main(compare_argv(long, docs, out, "--original", str(ORIGINAL), tables="yarn")) == 0
    assert ("Not exported: the target 128 is within the model's own 256 positions, so an export would "
            "shorten the model; compare with a target past 256 to export an extension."
            in capsys.readouterr().out)


@pytest.mark.parametrize("backend", ["cuda", "bogus"])
def test_a_kernel_backend_that_cannot_run_here_is_refused_before_the_model_loads(tiny, tmp_path, capsys,
                                                                                 monkeypatch, backend):
    """Finding 16: --backend cuda on a CPU machine was a traceback after the model had loaded."""
    import torch

    from dprope_kernels.commands.compare import model as under_test

    if backend == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine can run the cuda backend")
    monkeypatch.setattr(under_test, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    model, docs = tiny
    argv = compare_argv(model, docs, tmp_path / "out", "--rotary", "kernels", "--backend", backend)
    assert commands.main(argv) == 2
    assert "--backend: " in one_line_error(capsys, "compare")
    assert not (tmp_path / "out").exists()

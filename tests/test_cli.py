"""`dprope plan` and `dprope info` from the command line."""

import builtins
import json
import subprocess
import sys

import pytest
import torch

from dprope_kernels.commands import main


def test_plan_with_no_arguments_prints_llama2_16k_table(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "4096 -> 16384 (x4)" in out
    assert "interpolation     33.610" in out
    assert "dprope            24.587" in out and "attention factor 1.139" in out
    assert "32 of 64 pairs interpolated" in out
    assert ("robust, soft: pairs ramp from their choice to extrapolation between 1.69 and 6.75 turns in L"
            in out)
    assert "pairs  32-63  " + "R" * 10 + "I" * 22 in out
    assert main(["plan", "--ramp", "1"]) == 0  # the hard cutoff
    out = capsys.readouterr().out
    assert "dprope            23.450" in out and "27 of 64 pairs interpolated" in out
    assert "robust: pairs with > 3.37 turns in L stay extrapolated (37 pairs)" in out
    assert "pairs  32-63  " + "E" * 5 + "I" * 27 in out
    assert main(["plan", "--selection", "paper"]) == 0
    out = capsys.readouterr().out
    assert "dprope            22.914" in out and "42 of 64 pairs interpolated" in out


def test_plan_json_has_the_plan_and_a_rope_config(capsys):
    assert main(["plan", "--factor", "2", "--precision", "reference", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["target_max_position"] == 8192
    assert round(data["disturbance"] * 1e3, 2) == 6.71
    assert data["rope_config"]["rope_type"] == "dprope"
    assert len(data["inv_freq"]) == 64


def test_plan_reads_a_hugging_face_config(tmp_path, capsys):
    config = {"hidden_size": 256, "num_attention_heads": 4, "rope_theta": 500000.0,
              "max_position_embeddings": 2048, "model_type": "llama"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main(["plan", "--config", str(path), "--target", "8192", "--n-hat", "32"]) == 0
    out = capsys.readouterr().out
    assert "head_dim 64, rope_theta 500000, 2048 -> 8192 (x4)" in out
    assert "16 of 32 pairs interpolated" in out


def test_plan_plot_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "fig.png"
    assert main(["plan", "--factor", "2", "--plot", str(path), "--plot-pairs", "3,40"]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(["plan", "--factor", "2", "--plot", str(tmp_path / "f.png")]) == 2
    assert "pip install" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["plan", "--head-dim", "7"], "head_dim must be even"),
    (["plan", "--head-dim", "100000"], "head_dim must be <= 1024"),  # ran for minutes, silently
    (["plan", "--target", "1000"], "must be above"),
    (["plan", "--bins", "1"], "bins"),
    (["plan", "--plot", "x.png", "--plot-pairs", "99"], "plot pairs"),
])
def test_bad_options_exit_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


CONFIG = {"hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 4096}


@pytest.mark.parametrize("config, message", [
    ([1, 2, 3], "must hold a JSON object"),
    (dict(CONFIG, num_attention_heads=0), "'num_attention_heads' must be positive"),
    (dict(CONFIG, rope_scaling="linear"), "rope_parameters / rope_scaling must be an object"),
    ({"hidden_size": 4096, "max_position_embeddings": 4096},
     "has no 'num_attention_heads' (needed for the head dim"),
    ({"hidden_size": 4096, "num_attention_heads": 32}, "has no 'max_position_embeddings'"),
    (dict(CONFIG, rope_theta="big"), "'rope_theta' must be a number"),
    ("{not json", "not valid JSON"),
])
def test_a_bad_config_json_gets_a_one_line_error(tmp_path, capsys, config, message):
    path = tmp_path / "config.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    assert main(["plan", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("device, message", [("tpu", "'cpu' or 'cuda'"), ("cuda", "no usable CUDA device")])
def test_plan_on_a_device_this_machine_lacks_says_so(capsys, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["plan", "--factor", "2", "--device", device]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_module_entry_point_and_info():
    out = subprocess.run([sys.executable, "-m", "dprope_kernels", "info"], capture_output=True, text=True,
                         check=True).stdout
    assert "torch   available" in out
    for op in ("rope", "histogram", "fused_projection"):
        assert f"auto for {op} -> " in out


def test_import_is_cheap_and_side_effect_free():
    code = ("import sys, dprope_kernels; "
            "print(any(m.startswith(('transformers', 'triton', 'matplotlib')) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def write_config(folder, config) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err
    assert captured.out == "" and "Traceback" not in err and len(err.strip().splitlines()) == 1, captured
    return err


def test_plan_reads_a_model_directory(tmp_path, capsys):
    folder = write_config(tmp_path / "model", dict(CONFIG, rope_theta=500000.0))
    assert main(["plan", "--config", folder, "--factor", "2"]) == 0  # was "[Errno 21] Is a directory"
    assert "head_dim 128, rope_theta 500000, 4096 -> 8192 (x2)" in capsys.readouterr().out


@pytest.mark.parametrize("where, message", [
    ("missing.json", "missing.json: no such file"),
    ("empty_dir", "empty_dir is a directory without a config.json"),
])
def test_a_missing_config_gets_a_one_line_error(tmp_path, capsys, where, message):
    (tmp_path / "empty_dir").mkdir()
    assert main(["plan", "--config", str(tmp_path / where)]) == 2
    assert message in one_line_error(capsys)


def test_plot_into_a_missing_folder_is_refused_before_planning(tmp_path, capsys):
    target = tmp_path / "no_such_dir" / "x.png"
    assert main(["plan", "--factor", "2", "--plot", str(target)]) == 2
    assert f"the folder {target.parent} does not exist" in one_line_error(capsys)  # no plan printed first


def test_a_plot_format_matplotlib_cannot_write_is_refused_before_planning(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["plan", "--factor", "2", "--plot", str(tmp_path / "x.xyz")]) == 2
    assert "matplotlib writes" in one_line_error(capsys) and not (tmp_path / "x.xyz").exists()


def test_bad_plot_pairs_are_refused_before_planning(capsys):
    assert main(["plan", "--factor", "2", "--plot", "x.png", "--plot-pairs", "99"]) == 2
    assert "plot pairs must be in [0, 64)" in one_line_error(capsys)


LLAMA31 = dict(CONFIG, max_position_embeddings=131072, rope_theta=500000.0,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0})


def test_a_config_that_extends_its_rope_already_is_refused(tmp_path, capsys):
    folder = write_config(tmp_path / "llama31", LLAMA31)
    assert main(["plan", "--config", folder]) == 2  # planned 8192 -> 32768 x4 without a word
    err = one_line_error(capsys)
    for part in ("already extends its rope with rope type 'llama3'", "factor 8",
                 "original_max_position_embeddings 8192", "max_position_embeddings 131072",
                 "DPRoPE plans from the pre-trained default table"):
        assert part in err, (part, err)


def test_a_gemma3_config_needs_a_layer_type(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Gemma3TextConfig"):
        pytest.skip(f"transformers {transformers.__version__} has no Gemma 3")
    folder = tmp_path / "gemma3"
    transformers.Gemma3TextConfig(rope_theta=1e6, rope_local_base_freq=2e4, max_position_embeddings=1024,
                                  head_dim=64).save_pretrained(folder)
    # planned from rope_theta 10000, silently
    assert main(["plan", "--config", str(folder), "--factor", "2"]) == 2
    err = one_line_error(capsys)
    assert "full_attention: rope type 'default', rope_theta 1e+06" in err
    assert "sliding_attention: rope type 'default', rope_theta 20000" in err and "--layer-type" in err
    for layer_type, theta in (("full_attention", "1e+06"), ("sliding_attention", "20000")):
        assert main(["plan", "--config", str(folder), "--factor", "2", "--layer-type", layer_type]) == 0
        assert f"head_dim 64, rope_theta {theta}, 1024 -> 2048 (x2)" in capsys.readouterr().out
    assert main(["plan", "--config", str(folder), "--layer-type", "local"]) == 2
    assert "no rope parameters for layer type 'local'" in one_line_error(capsys)
    assert main(["plan", "--layer-type", "full_attention"]) == 2
    assert "give --config too" in one_line_error(capsys)


def test_a_dprope_config_is_rebuilt_as_recorded(tmp_path, capsys):
    import dprope_kernels as dk

    plan = dk.plan_dprope(head_dim=128, rope_theta=10000.0, original_max_position=1024, factor=4,
                          num_interpolated_dims=40)
    folder = write_config(tmp_path / "tuned", dict(CONFIG, max_position_embeddings=4096,
                                                   rope_scaling=plan.rope_config()))
    assert main(["plan", "--config", folder, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["inv_freq"] == plan.inv_freq.tolist() and data["target_max_position"] == 4096
    assert main(["plan", "--config", folder, "--target", "8192", "--bins", "180"]) == 2
    err = one_line_error(capsys)
    assert "records a DPRoPE plan (1024 -> 4096" in err and "target_max_position 8192 (recorded: 4096)" in err


def test_plan_selection_robust(capsys):
    assert main(["plan", "--head-dim", "64", "--rope-theta", "1e5", "--original", "8192", "--factor", "2",
                 "--selection", "robust", "--ramp", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["selection"] == "robust" and out["rope_config"]["dprope_selection"] == "robust"
    assert out["interpolated_pairs"] == list(range(16, 32))


def test_version(capsys):
    import dprope_kernels

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert (exited.value.code == 0
            and capsys.readouterr().out.strip() == f"dprope_kernels {dprope_kernels.__version__}")


def test_plot_explains_the_robust_rule_per_pair():
    """A pair titled 'D_interp 2.1e-3, D_extrap 4.4e-3 -> extrapolation' looked contradictory."""
    import dprope_kernels as dk
    from dprope_kernels.commands.figures import _settings, _why

    plan = dk.plan_dprope(head_dim=64, rope_theta=1e5, original_max_position=8192, factor=2)
    unresolved = int((~plan.resolved).nonzero()[0])
    assert "unresolved by the histogram (robust rule)" in _why(plan, unresolved)
    assert f"> {plan.resolution_turns:.2f}" in _why(plan, unresolved)
    assert _why(plan, 31) == "interpolation"
    assert "8192 -> 16384 (x2)" in _settings(plan) and "robust selection" in _settings(plan)


def test_the_attention_factor_rules_the_flag_takes_are_the_planners(capsys):
    from dprope_kernels import planner
    from dprope_kernels.commands import planning

    assert planning.ATTENTION_RULES == planner.ATTENTION_RULES
    assert main(["plan", "--factor", "2", "--attention-factor", "entropy"]) == 0
    assert "attention factor 1.041" in capsys.readouterr().out  # sqrt(1 + ln 2 / ln 4096) = sqrt(13 / 12)
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--factor", "2", "--attention-factor", "tepid"])
    assert exit_.value.code == 2
    assert "one of 'yarn', 'entropy', 'none', got 'tepid'" in capsys.readouterr().err


def test_a_config_planned_with_the_entropy_rule_is_rebuilt_when_the_rule_is_named(tmp_path, capsys):
    import dprope_kernels as dk

    plan = dk.plan_dprope(head_dim=128, original_max_position=1024, factor=4, attention_factor="entropy")
    folder = write_config(tmp_path / "tuned", dict(CONFIG, max_position_embeddings=4096,
                                                   rope_scaling=plan.rope_config()))
    assert main(["plan", "--config", folder, "--attention-factor", "entropy", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["attention_factor"] == plan.attention_factor
    assert main(["plan", "--config", folder, "--attention-factor", "yarn"]) == 2
    assert "attention_factor 1.138" in one_line_error(capsys)  # YaRN's 0.1 ln 4 + 1 against the recorded


def strict_json(text: str):
    """``json.loads`` refusing NaN and Infinity, which Python writes and reads but JSON does not have."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_plan_json_is_strict_json_and_an_infinite_threshold_reads_back(tmp_path, capsys):
    """``--threshold inf`` (documented: it interpolates nothing) wrote ``Infinity``, which is not JSON."""
    assert main(["plan", "--factor", "2", "--threshold=inf", "--json"]) == 0
    data = strict_json(capsys.readouterr().out)
    assert data["threshold"] == "inf" and data["rope_config"]["dprope_threshold"] == "inf"
    assert data["interpolated_pairs"] == []
    folder = write_config(tmp_path / "tuned", dict(CONFIG, max_position_embeddings=8192,
                                                   rope_scaling=data["rope_config"]))
    assert main(["plan", "--config", folder, "--threshold=inf", "--json"]) == 0  # the recorded plan, agreed
    again = strict_json(capsys.readouterr().out)
    assert again["threshold"] == "inf" and again["inv_freq"] == data["inv_freq"]
    assert main(["plan", "--config", folder, "--threshold", "0"]) == 2
    assert "threshold 0.0 (recorded: inf)" in one_line_error(capsys)


def test_a_gpt_neox_config_with_its_own_key_names_is_read(tmp_path, capsys):
    """Finding 9: a Hub GPT-NeoX / Pythia config.json (rotary_pct 0.25, rotary_emb_base 20000: the 4.x keys)
    planned 64 rotary dims at theta 10000 instead of 16 at 20000."""
    pythia = {"model_type": "gpt_neox", "hidden_size": 512, "num_attention_heads": 8, "rotary_pct": 0.25,
              "rotary_emb_base": 20000, "max_position_embeddings": 2048}
    folder = write_config(tmp_path / "pythia", pythia)
    assert main(["plan", "--config", folder, "--factor", "2"]) == 0
    assert "head_dim 16, rope_theta 20000, 2048 -> 4096 (x2)" in capsys.readouterr().out
    folder = write_config(tmp_path / "both", dict(pythia, partial_rotary_factor=0.5))
    assert main(["plan", "--config", folder, "--factor", "2"]) == 2
    assert "'partial_rotary_factor' 0.5 and 'rotary_pct' 0.25 disagree" in one_line_error(capsys)


def test_a_plot_into_a_read_only_folder_is_refused_before_planning(unwritable, capsys):
    assert main(["plan", "--factor", "2", "--plot", str(unwritable / "fig.png")]) == 2
    assert f"--plot {unwritable}: cannot write in {unwritable}" in one_line_error(capsys)


def test_the_printout_the_json_and_the_plan_agree_on_ramped_pairs(capsys):
    """Issue 32, also: dprope plan printed '32 of 64 pairs interpolated' and 'interpolated pairs: [32, ...,
    63]' while its own map marked pairs 32-41 R (ramped between the two)."""
    import dprope_kernels as dk

    plan = dk.plan_dprope(factor=4)
    assert plan.ramped_pairs == list(range(32, 42)) and plan.interpolated_pairs == list(range(32, 64))
    assert [i for i, s in enumerate(plan.strategy) if s == "ramp"] == plan.ramped_pairs
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert ("dprope            24.587   (the table served: 32 of 64 pairs interpolated, 10 of them ramped)"
            in out)
    assert "R = ramped: partly interpolated" in out
    assert f"  interpolated pairs (I and R): {plan.interpolated_pairs}" in out
    assert f"  ramped pairs (R): {plan.ramped_pairs}" in out
    assert main(["plan", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ramped_pairs"] == plan.ramped_pairs and data["interpolated_pairs"] == plan.interpolated_pairs
    # the dprope row's disturbance is the served table's, ramped pairs included
    served = dk.table_disturbance(plan.inv_freq, original_max_position=4096, factor=4)
    assert float(served.mean()) == pytest.approx(plan.disturbance, rel=1e-12)
    assert main(["plan", "--ramp", "1"]) == 0
    out = capsys.readouterr().out
    assert "(the table served: 27 of 64 pairs interpolated)" in out and "ramped pairs" not in out

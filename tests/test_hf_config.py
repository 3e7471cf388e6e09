"""Reading model configs: per-layer-type rope (Gemma 3, transformers 5 and 4.x forms), configs that
extend their rope already, and the dprope rope type rebuilt from the config that records it."""

import pytest
import torch

import dprope_kernels as dk
from dprope_kernels import hf_config
from dprope_kernels.hf_config import ConfigError

transformers = pytest.importorskip("transformers")
V5 = int(transformers.__version__.split(".")[0]) >= 5

# Gemma 3 as transformers 4.x wrote config.json: rope_theta for the full-attention layers,
# rope_local_base_freq for the sliding ones (the 4B..27B checkpoints also scale the full-attention layers
# linearly x8)
GEMMA3_4X = {"model_type": "gemma3_text", "head_dim": 256, "hidden_size": 1152, "num_attention_heads": 4,
             "max_position_embeddings": 2048, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
             "rope_scaling": None}
LLAMA31 = dict(hidden_size=256, num_attention_heads=4, max_position_embeddings=131072)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0}


def config_class(name):
    if not hasattr(transformers, name):
        pytest.skip(f"transformers {transformers.__version__} has no {name}")
    return getattr(transformers, name)


def gemma3(local_theta=20000.0, **kwargs):
    """A real transformers Gemma 3 text config (transformers 5 stores rope_parameters per layer type)."""
    return config_class("Gemma3TextConfig")(rope_theta=1e6, rope_local_base_freq=local_theta,
                                         max_position_embeddings=2048, **kwargs)


def expected(theta, head_dim=256, original=2048, factor=2.0):
    return dk.plan_dprope(head_dim=head_dim, rope_theta=theta, original_max_position=original, factor=factor)


@pytest.mark.parametrize("local_theta", [10000.0, 20000.0])
@pytest.mark.parametrize("as_dict", [False, True])
def test_gemma3_is_read_per_layer_type(local_theta, as_dict):
    config = gemma3(local_theta)
    config = config.to_dict() if as_dict else config
    for layer_type, theta in (("full_attention", 1e6), ("sliding_attention", local_theta)):
        settings = hf_config.rope_settings(config, layer_type)
        assert (settings.rotary_dim, settings.rope_theta,
                settings.original_max_position) == (256, theta, 2048)
        rope = dk.DPRoPERotaryEmbedding.from_config(config, factor=2.0, layer_type=layer_type)
        torch.testing.assert_close(rope.inv_freq, expected(theta).inv_freq, rtol=0, atol=0)


@pytest.mark.parametrize("as_dict", [False, True])
def test_gemma3_without_a_layer_type_is_refused_naming_them(as_dict):
    config = gemma3(20000.0)
    config = config.to_dict() if as_dict else config
    with pytest.raises(ConfigError) as raised:  # it planned from rope_theta 10000, silently
        dk.DPRoPERotaryEmbedding.from_config(config, factor=2.0)
    message = str(raised.value)
    assert "full_attention" in message and "1e+06" in message
    assert "sliding_attention" in message and "20000" in message and "layer_type" in message
    with pytest.raises(ConfigError, match="no rope parameters for layer type 'global'.*full_attention"):
        dk.DPRoPERotaryEmbedding.from_config(config, factor=2.0, layer_type="global")


def test_gemma3_as_transformers_4_wrote_it():
    tables = hf_config.layer_rope_parameters(GEMMA3_4X)
    assert {k: v["rope_theta"] for k, v in tables.items()} == {"full_attention": 1e6,
                                                               "sliding_attention": 1e4}
    if V5:  # transformers 5 reads the 4.x keys into the same per-layer-type parameters
        converted = transformers.Gemma3TextConfig.from_dict(GEMMA3_4X)
        assert hf_config.layer_rope_parameters(converted) == {k: dict(v, rope_type="default")
                                                              for k, v in tables.items()}
    with pytest.raises(ConfigError, match="each layer type its own"):
        dk.DPRoPERotaryEmbedding.from_config(GEMMA3_4X, factor=2.0)
    for layer_type, theta in (("full_attention", 1e6), ("sliding_attention", 1e4)):
        rope = dk.DPRoPERotaryEmbedding.from_config(GEMMA3_4X, factor=2.0, layer_type=layer_type)
        torch.testing.assert_close(rope.inv_freq, expected(theta).inv_freq, rtol=0, atol=0)


def test_gemma3_scaled_full_attention_is_refused_and_its_sliding_layers_planned():
    # the 4B+ checkpoints: linear x8 on the full-attention layers only, in either form
    configs = [dict(GEMMA3_4X, rope_scaling={"rope_type": "linear", "factor": 8.0},
                    max_position_embeddings=8192),
               gemma3(10000.0, rope_scaling={"rope_type": "linear", "factor": 8.0}).to_dict()]
    for config in configs:
        with pytest.raises(ConfigError, match=r"\[full_attention\] already extends its rope with rope type "
                                              r"'linear' \(factor 8"):
            dk.DPRoPERotaryEmbedding.from_config(config, factor=2.0, layer_type="full_attention")
        rope = dk.DPRoPERotaryEmbedding.from_config(config, factor=2.0, layer_type="sliding_attention")
        original = config["max_position_embeddings"]
        torch.testing.assert_close(rope.inv_freq, expected(1e4, original=original).inv_freq, rtol=0, atol=0)


def test_one_table_for_every_layer_needs_no_layer_type():
    config = config_class("Qwen3Config")(hidden_size=256, num_attention_heads=4, head_dim=64,
                                         max_position_embeddings=4096)
    plan = dk.plan_dprope(head_dim=64, rope_theta=config.to_dict().get("rope_theta", 10000.0)
                          if not V5 else config.rope_parameters["rope_theta"], original_max_position=4096,
                          factor=2)
    for layer_type in (None, "full_attention"):
        torch.testing.assert_close(hf_config.plan_for_config(config, layer_type, factor=2).inv_freq,
                                   plan.inv_freq)


@pytest.mark.parametrize("as_dict", [False, True])
def test_a_config_that_extends_its_rope_already_is_refused(as_dict):
    from conftest import rope_config_kwargs

    config = transformers.LlamaConfig(**LLAMA31, **rope_config_kwargs(LLAMA3_ROPE, rope_theta=500000.0))
    config = config.to_dict() if as_dict else config
    with pytest.raises(ConfigError) as raised:  # it planned 8192 -> 32768 silently
        dk.DPRoPERotaryEmbedding.from_config(config, factor=4.0)
    message = str(raised.value)
    for part in ("already extends its rope with rope type 'llama3'", "factor 8", "8192", "131072",
                 "pre-trained default table", "rope_theta 500000"):
        assert part in message, (part, message)


def test_4x_rope_scaling_with_type_is_refused_too():
    config = {"hidden_size": 256, "num_attention_heads": 4, "max_position_embeddings": 8192,
              "rope_scaling": {"type": "linear", "factor": 2.0}}
    with pytest.raises(ConfigError, match="rope type 'linear' \\(factor 2, max_position_embeddings 8192\\)"):
        dk.DPRoPERotaryEmbedding.from_config(config, factor=4.0)
    config["rope_scaling"] = {"type": "mrope", "mrope_section": [8, 12, 12]}  # Qwen2-VL: the default table
    assert dk.DPRoPERotaryEmbedding.from_config(config, factor=2.0).rotary_dim == 64


def test_a_dprope_config_per_layer_type_rebuilds_its_plan():
    dk.register_dprope_rope_type()
    plan = expected(1e6, factor=4.0)
    rope = {"full_attention": dict(plan.rope_config(), rope_theta=1e6),
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
    config = {"head_dim": 256, "hidden_size": 1152, "num_attention_heads": 4,
              "max_position_embeddings": 131072, "rope_parameters": rope}
    built = dk.DPRoPERotaryEmbedding.from_config(config, layer_type="full_attention")
    torch.testing.assert_close(built.inv_freq, plan.inv_freq, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="records a DPRoPE plan .*factor 2.0 \\(recorded: 4.0\\)"):
        dk.DPRoPERotaryEmbedding.from_config(config, layer_type="full_attention", factor=2.0)
    # agrees: taken
    again = dk.DPRoPERotaryEmbedding.from_config(config, layer_type="full_attention", factor=4.0)
    torch.testing.assert_close(again.inv_freq, plan.inv_freq, rtol=0, atol=0)
    if V5:  # transformers builds the same table for the full-attention layers
        model_config = transformers.Gemma3TextConfig(head_dim=256, hidden_size=1152, num_attention_heads=4,
                                                     num_hidden_layers=2, max_position_embeddings=131072,
                                                     rope_parameters=rope)
        from dprope_kernels.integrations.transformers import plan_from_config  # the old name still works

        assert plan_from_config(model_config, "full_attention").interpolated_pairs == plan.interpolated_pairs

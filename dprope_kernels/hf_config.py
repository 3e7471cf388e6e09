"""The rope settings of a Hugging Face model config (a ``config.json`` dict or a transformers config).

One reader for the CLI, the transformers integration and ``DPRoPERotaryEmbedding.from_config``:
rotary dims (head dim x partial rotary factor), base, pre-training length, and the rope
parameters (``rope_parameters`` in transformers 5, ``rope_scaling`` in 4.x; per layer type for
models like Gemma 3). Anything missing or malformed is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass


class ConfigError(ValueError):
    """A config that does not say what planning needs; the message names the key."""


@dataclass(frozen=True)
class RopeSettings:
    rotary_dim: int
    rope_theta: float
    original_max_position: int
    parameters: dict  # the rope parameters as given ({} when none)


def _as_dict(config) -> dict:
    if isinstance(config, dict):
        return config
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise ConfigError(f"expected a model config (a dict or a transformers config), got {type(config).__name__}")


def _number(config: dict, key: str, where: str, *, integer: bool = False):
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{where}: {key!r} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not value > 0:
        raise ConfigError(f"{where}: {key!r} must be positive, got {value!r}")
    return value


def rope_parameters(config, layer_type: str | None = None, where: str = "config") -> dict:
    """The rope parameters (``{}`` when none), those of ``layer_type`` for per-layer-type configs."""
    config = _as_dict(config)
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: rope_parameters / rope_scaling must be an object like "
                          f'{{"rope_type": "linear", "factor": 4}}, got {params!r}')
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        return params[layer_type]
    return params


def rope_settings(config, layer_type: str | None = None, where: str = "config") -> RopeSettings:
    """Rotary dims, base and pre-training length of a model config (see the module docstring)."""
    config = _as_dict(config)
    if not isinstance(config, dict):
        raise ConfigError(f"{where} must hold a JSON object (a model config), got a {type(config).__name__}")
    if isinstance(config.get("text_config"), dict):
        config = config["text_config"]
    params = rope_parameters(config, layer_type, where)
    if config.get("head_dim") is not None:
        head_dim = _number(config, "head_dim", where, integer=True)
    else:
        for key in ("hidden_size", "num_attention_heads"):
            if key not in config:
                raise ConfigError(f"{where} has no {key!r} (needed for the head dim when 'head_dim' is absent)")
        head_dim = _number(config, "hidden_size", where, integer=True) // _number(
            config, "num_attention_heads", where, integer=True)
    merged = dict(params, **{k: config[k] for k in ("rope_theta", "partial_rotary_factor")
                             if k in config and k not in params})
    partial = _number(merged, "partial_rotary_factor", where) if "partial_rotary_factor" in merged else 1.0
    theta = _number(merged, "rope_theta", where) if "rope_theta" in merged else 10000.0
    if params.get("original_max_position_embeddings"):
        original = _number(params, "original_max_position_embeddings", where, integer=True)
    elif "max_position_embeddings" in config:
        original = _number(config, "max_position_embeddings", where, integer=True)
    else:
        raise ConfigError(f"{where} has no 'max_position_embeddings' (the pre-training length)")
    return RopeSettings(int(head_dim * partial), float(theta), original, dict(params))

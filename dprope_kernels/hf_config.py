"""The rope settings of a Hugging Face model config (a ``config.json`` dict or a transformers config),
and the plan a config asks for.

One reader for the CLI, the transformers integration and ``DPRoPERotaryEmbedding.from_config``:
rotary dims (head dim x partial rotary factor), base, pre-training length, and the rope
parameters (``rope_parameters`` in transformers 5, ``rope_scaling`` in 4.x). Models with a table
per layer type (Gemma 3, ModernBERT) are read per layer type in either form: transformers 5's
``rope_parameters = {"full_attention": {...}, "sliding_attention": {...}}`` and 4.x's top-level
``rope_theta`` (+ ``rope_scaling``) for the full-attention layers with ``rope_local_base_freq`` for the
sliding ones. Where such a config's layer types differ and none was chosen, the reader refuses,
naming them, rather than pick one. Anything missing or malformed is a :class:`ConfigError` naming
the key.

A config this package wrote reads as the plan it records: ``rope_type: "dprope"`` (``examples/train.py``,
``RopePlan.rope_config()``), and an export (``dprope export``: rope type ``longrope`` with the plan's
divisors, whose ``original_max_position_embeddings`` is the target by design) through its ``dprope``
block, which holds the pre-training length and the plan's rope config.

:func:`plan_for_config` is the one way from a config to a plan (the CLI's ``plan``, ``export`` and
``compare``, ``examples/train.py``, ``DPRoPERotaryEmbedding.from_config``): a recorded plan is rebuilt
as recorded; a pre-trained default table is planned; a config that already extends its rope
another way (linear, llama3, YaRN, ...) is refused, with the reason.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass

from .errors import InvalidValue

ROPE_TYPE = "dprope"
_PRETRAINED_TYPES = (None, "default", "mrope")  # mrope (Qwen2-VL): the default table, over 3-D positions


class ConfigError(InvalidValue):
    """A config that does not say what planning needs; the message names the key."""


@dataclass(frozen=True)
class RopeSettings:
    rotary_dim: int
    rope_theta: float
    original_max_position: int
    parameters: dict  # the rope parameters as given ({} when none), of the chosen layer type
    layer_type: str | None = None  # the layer type read (None: the config has one table for every layer)


def load_config(path) -> tuple[str, dict]:
    """``(the file read, its JSON object)`` of a ``config.json`` or a model directory holding one."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise ConfigError(f"{os.path.dirname(path)} is a directory without a config.json (give a model "
                              "directory or its config.json)")
    elif not os.path.exists(path):
        raise ConfigError(f"{path}: no such file (give a config.json or a model directory holding one)")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it ({err.strerror or err})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a JSON object (a model config), got a {type(config).__name__}")
    return path, config


def _as_dict(config, where: str = "config") -> dict:
    if isinstance(config, dict):
        return config
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise ConfigError(f"{where}: expected a model config (a dict or a transformers config), "
                      f"got {type(config).__name__}")


def _text(config, where: str) -> dict:
    """The config dict, or its ``text_config`` (multimodal models keep the language model's there)."""
    config = _as_dict(config, where)
    if isinstance(config.get("text_config"), dict):
        config = config["text_config"]
    return config


def _number(config: dict, key: str, where: str, *, integer: bool = False):
    value = config.get(key)
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (integer and not isinstance(value, int))):
        raise ConfigError(f"{where}: {key!r} must be {'an integer' if integer else 'a number'}, "
                          f"got {value!r}")
    if not value > 0 or (isinstance(value, float) and math.isinf(value)):
        raise ConfigError(f"{where}: {key!r} must be positive and finite, got {value!r}")
    return value


def rope_type_of(params: dict):
    """The rope type of rope parameters (``rope_type``, or 4.x's older ``type``); None when absent."""
    return params.get("rope_type", params.get("type"))


def layer_rope_parameters(config, where: str = "config") -> dict:
    """``{layer type: rope parameters}`` of a config, ``{None: parameters}`` when one table serves every
    layer.

    Each layer type's parameters carry its ``rope_theta`` where the config gives one per layer type.
    """
    config = _text(config, where)
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: rope_parameters / rope_scaling must be an object like "
                          f'{{"rope_type": "linear", "factor": 4}}, got {params!r}')
    exported = exported_rope_config(config, params, where)
    if exported is not None:
        return {None: exported}
    if params and all(isinstance(value, dict) for value in params.values()):  # transformers 5, per layer type
        return {str(layer_type): dict(value) for layer_type, value in params.items()}
    if config.get("rope_local_base_freq") is not None:  # Gemma 3 in transformers 4.x
        # the full-attention layers use rope_theta and rope_scaling; the sliding ones the local base, unscaled
        full = dict(params)
        if "rope_theta" not in full and "rope_theta" in config:
            full["rope_theta"] = config["rope_theta"]
        local = {"rope_type": "default", "rope_theta": config["rope_local_base_freq"]}
        return {"full_attention": full, "sliding_attention": local}
    # ModernBERT 4.x
    if config.get("global_rope_theta") is not None and config.get("local_rope_theta") is not None:
        return {"full_attention": dict(params, rope_theta=config["global_rope_theta"]),
                "sliding_attention": dict(params, rope_theta=config["local_rope_theta"])}
    return {None: dict(params)}


def exported_rope_config(config: dict, params: dict, where: str = "config") -> dict | None:
    """The recorded ``dprope`` rope config of a ``dprope export`` output (rope type ``longrope`` and a
    ``dprope`` block); None for any other config. A block that does not hold one is a ConfigError."""
    block = config.get("dprope")
    if block is None or rope_type_of(params) != "longrope":
        return None
    recorded = block.get("rope_config") if isinstance(block, dict) else None
    if recorded is None and isinstance(block, dict) and block.get("table"):
        raise ConfigError(f"{where} is a dprope export of the {block['table']!r} table "
                          f"({block.get('source', '')}), an extension other than a DPRoPE plan; DPRoPE plans "
                          "from the pre-trained default table: give the pre-trained model's config")
    if not isinstance(recorded, dict) or rope_type_of(recorded) != ROPE_TYPE:
        raise ConfigError(f"{where}: its 'dprope' block (written by dprope export) has no rope_config of "
                          f"rope type {ROPE_TYPE!r}; re-export the model")
    return dict(recorded)


def head_dim_of(config, where: str = "config") -> int:
    """Dims per attention head: ``head_dim``, else ``hidden_size // num_attention_heads``."""
    config = _text(config, where)
    if config.get("head_dim") is not None:
        return _number(config, "head_dim", where, integer=True)
    for key in ("hidden_size", "num_attention_heads"):
        if key not in config:
            raise ConfigError(f"{where} has no {key!r} (needed for the head dim when 'head_dim' is absent)")
    return _number(config, "hidden_size", where, integer=True) // _number(
        config, "num_attention_heads", where, integer=True)


def is_fixed_table(params: dict) -> bool:
    """Whether rope parameters define one table for every sequence length: not ``dynamic``, and a
    ``longrope`` only when its short and long factors are equal (what ``dprope export`` writes)."""
    kind = rope_type_of(params)
    if kind == "dynamic":
        return False
    if kind == "longrope":
        return (params.get("short_factor") is not None
                and params.get("short_factor") == params.get("long_factor"))
    return True


def _describe(params: dict, config: dict) -> str:
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    kind = rope_type_of(params) or "default"
    extra = f", factor {params['factor']:g}" if isinstance(params.get("factor"), (int, float)) else ""
    return f"rope type {kind!r}, rope_theta {theta:g}{extra}" if isinstance(theta, (int, float)) else \
        f"rope type {kind!r}, rope_theta {theta!r}{extra}"


def _choose_layer_type(tables: dict, config: dict, layer_type, where: str):
    """The key of ``tables`` to read: ``layer_type`` checked, or the one table all layers share."""
    if layer_type is not None and not isinstance(layer_type, str):
        raise ConfigError(f"layer_type must be a layer type name (a str), got {layer_type!r}")
    if None in tables:
        listed = config.get("layer_types")
        if layer_type is not None and isinstance(listed, list) and layer_type not in listed:
            raise ConfigError(f"{where} has no layer type {layer_type!r}; its layer types are "
                              f"{sorted(set(map(str, listed)))}")
        return None
    listing = "; ".join(f"{name}: {_describe(params, config)}" for name, params in tables.items())
    if layer_type is not None:
        if layer_type not in tables:
            raise ConfigError(f"{where} has no rope parameters for layer type {layer_type!r}; "
                              f"it has {listing}")
        return layer_type
    if len({repr(sorted(params.items())) for params in tables.values()}) == 1:
        return next(iter(tables))  # every layer type rotates with the same table
    raise ConfigError(f"{where} gives each layer type its own rope parameters ({listing}); say which to plan "
                      "for: layer_type=... (dprope plan: --layer-type ...)")


def rope_parameters(config, layer_type: str | None = None, where: str = "config") -> dict:
    """The rope parameters (``{}`` when none) of a config, or of ``layer_type`` in a per-layer-type config.

    A config whose layer types rotate differently needs ``layer_type``; it is refused without one.
    """
    tables = layer_rope_parameters(config, where)
    return tables[_choose_layer_type(tables, _text(config, where), layer_type, where)]


_ALIASES = {"rope_theta": "rotary_emb_base", "partial_rotary_factor": "rotary_pct"}  # GPT-NeoX's own names


def _aliased(config: dict, key: str, where: str):
    """``config[key]``, or its GPT-NeoX name (``rotary_emb_base``, ``rotary_pct``: Hub configs and 4.x);
    None when neither is given, a ConfigError when both are and disagree."""
    values = {name: config[name] for name in (key, _ALIASES[key]) if config.get(name) is not None}
    if len(set(map(repr, values.values()))) > 1:
        raise ConfigError(f"{where}: {' and '.join(f'{k!r} {v}' for k, v in values.items())} disagree")
    return next(iter(values.values()), None)


def rope_settings(config, layer_type: str | None = None, where: str = "config") -> RopeSettings:
    """Rotary dims, base and pre-training length of a model config (see the module docstring)."""
    config = _text(config, where)
    tables = layer_rope_parameters(config, where)
    chosen = _choose_layer_type(tables, config, layer_type, where)
    params = tables[chosen]
    if chosen is not None:
        where = f"{where} [{chosen}]"
    head_dim = head_dim_of(config, where)
    merged = dict(params, **{k: v for k in ("rope_theta", "partial_rotary_factor")
                             if k not in params and (v := _aliased(config, k, where)) is not None})
    partial = _number(merged, "partial_rotary_factor", where) if "partial_rotary_factor" in merged else 1.0
    theta = _number(merged, "rope_theta", where) if "rope_theta" in merged else 10000.0
    if params.get("original_max_position_embeddings"):
        original = _number(params, "original_max_position_embeddings", where, integer=True)
    elif "max_position_embeddings" in config:
        original = _number(config, "max_position_embeddings", where, integer=True)
    else:
        raise ConfigError(f"{where} has no 'max_position_embeddings' (the pre-training length)")
    return RopeSettings(int(head_dim * partial), float(theta), original, dict(params), chosen)


def pretrained_rope_settings(config, layer_type: str | None = None, where: str = "config") -> RopeSettings:
    """:func:`rope_settings` of a config whose table is the pre-trained default one (or a ``dprope`` plan
    of it).

    DPRoPE plans from the pre-trained default table; a config that already extends its rope another
    way (linear, dynamic, llama3, YaRN, LongRoPE, ...) is a :class:`ConfigError` saying so.
    """
    settings = rope_settings(config, layer_type, where)
    kind = rope_type_of(settings.parameters)
    if kind in _PRETRAINED_TYPES or kind == ROPE_TYPE:
        return settings
    params, text = settings.parameters, _text(config, where)
    lengths = [f"{key} {params[key]}" for key in ("original_max_position_embeddings",) if key in params]
    if "max_position_embeddings" in text:
        lengths.append(f"max_position_embeddings {text['max_position_embeddings']}")
    details = ", ".join(([f"factor {params['factor']:g}"] if isinstance(params.get("factor"), (int, float))
                         else []) + lengths)
    part = f" [{settings.layer_type}]" if settings.layer_type is not None else ""
    length = (f"pre-training length {params['original_max_position_embeddings']}"
              if "original_max_position_embeddings" in params else "its pre-training length")
    raise ConfigError(
        f"{where}{part} already extends its rope with rope type {kind!r}"
        + (f" ({details})" if details else "")
        + "; DPRoPE plans from the pre-trained default table: give the pre-trained model's config (rope type "
        f"'default'), or plan from its numbers (rotary dims {settings.rotary_dim}, rope_theta "
        f"{settings.rope_theta:g}, {length})"
    )


@functools.lru_cache(maxsize=32)
def _cached_plan(head_dim, rope_theta, original, factor, bins, threshold, n_hat, precision, selection=None,
                 attention_factor=1.0, ramp=1.0):
    import torch

    from .planner import plan_dprope

    with torch.device("cpu"):  # from_pretrained builds models under a meta-device context
        return plan_dprope(head_dim=head_dim, rope_theta=rope_theta, original_max_position=original,
                           factor=factor, bins=bins, threshold=threshold, num_interpolated_dims=n_hat,
                           precision=precision, selection=selection, attention_factor=attention_factor,
                           ramp=ramp)


def plan_from_config(config, layer_type: str | None = None):
    """The :class:`~dprope_kernels.RopePlan` a config with ``rope_type: "dprope"`` asks for.

    Raises ValueError when the config records ``dprope_interpolated_pairs`` (what
    ``RopePlan.rope_config()`` saves) and planning gives a different selection, so a checkpoint
    never silently loads with another table than it was trained with. Without ``dprope_selection``
    the planner's default applies, except that a config recording the pairs of the paper's
    selection (every checkpoint saved before selections existed) rebuilds that one. Without
    ``dprope_attention_factor`` the factor is 1.0, without ``dprope_ramp`` the cutoff is hard: such a
    checkpoint was saved before plans carried them, and trained without them.
    """
    from .planner import number_from_json

    settings = rope_settings(config, layer_type)
    params = settings.parameters
    if rope_type_of(params) != ROPE_TYPE:
        raise InvalidValue(f"config's rope type is {rope_type_of(params)!r}, not {ROPE_TYPE!r}")
    for key in ("original_max_position_embeddings", "factor"):
        if key not in params:
            raise ConfigError(f"config: rope type {ROPE_TYPE!r} needs {key!r} in its rope parameters")
    options = (settings.rotary_dim, settings.rope_theta, int(params["original_max_position_embeddings"]),
               float(params["factor"]), int(params.get("dprope_bins", 360)),
               number_from_json(params.get("dprope_threshold")),
               params.get("dprope_num_interpolated_dims"), params.get("dprope_precision", "exact"))
    attention, ramp = params.get("dprope_attention_factor", 1.0), params.get("dprope_ramp", 1.0)
    plan = _cached_plan(*options, params.get("dprope_selection"), attention, ramp)
    saved = params.get("dprope_interpolated_pairs")
    if saved is not None and list(saved) != plan.interpolated_pairs and "dprope_selection" not in params:
        # saved before selections existed, when every plan used the paper's: rebuild that one
        paper = _cached_plan(*options, "paper", attention, ramp)
        plan = paper if list(saved) == paper.interpolated_pairs else plan
    if saved is not None and list(saved) != plan.interpolated_pairs:
        raise InvalidValue(
            f"the config records interpolated pairs {list(saved)} but planning with its options gives "
            f"{plan.interpolated_pairs}; the checkpoint was trained with another table"
        )
    return plan


_RECORDED_OPTIONS = ("bins", "precision", "selection", "threshold", "num_interpolated_dims", "direction",
                     "attention_factor", "ramp")


def _disagreements(plan, given: dict) -> list[str]:
    """The lengths and plan options in ``given`` that differ from the recorded ``plan``'s."""
    from .planner import resolve_attention_factor

    found = []
    for key, value in given.items():
        if value is None or (key == "extra_candidates" and not value) or key == "device":
            continue
        if key == "attention_factor":
            value = resolve_attention_factor(value, plan.factor, plan.original_max_position)
        recorded = getattr(plan, key, None) if key in _RECORDED_OPTIONS or key.endswith("max_position") \
            or key == "factor" else None
        close = key in ("factor", "attention_factor") and math.isclose(recorded or 0.0, value)
        if recorded is None or (recorded != value and not close):
            found.append(f"{key} {value!r}" + (f" (recorded: {recorded!r})" if recorded is not None else ""))
    return found


def _check_export_serves(config, plan, where: str) -> None:
    """For a ``dprope export`` output, which reads as the plan its ``dprope`` block records: refuse it unless
    what engines read (``rope_scaling``'s divisors and attention factor, ``rope_theta``, the length) is that
    plan, so train.py and dprope plan take a model for what it serves."""
    config = _text(config, where)
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if config.get("dprope") is None or rope_type_of(params) != "longrope":
        return
    serves = {"short_factor": params.get("short_factor"), "long_factor": params.get("long_factor"),
              "attention_factor": params.get("attention_factor", 1.0),
              "rope_theta": params.get("rope_theta", config.get("rope_theta")),
              "max_position_embeddings": config.get("max_position_embeddings")}
    recorded = {"short_factor": plan.divisors(), "long_factor": plan.divisors(),
                "attention_factor": plan.attention_factor, "rope_theta": plan.rope_theta,
                "max_position_embeddings": plan.target_max_position}
    differing = [key for key, value in recorded.items()
                 if not (serves[key] == value or (isinstance(serves[key], (int, float))
                                                  and math.isclose(serves[key], value, rel_tol=1e-9)))]
    if differing:
        raise ConfigError(f"{where} is a dprope export whose rope settings (what engines read) and 'dprope' "
                          f"block (the plan, {plan.original_max_position} -> {plan.target_max_position}) "
                          f"disagree: {', '.join(differing)}; re-export the model from its pre-trained "
                          "config")


def plan_for_config(config, layer_type: str | None = None, *, target_max_position: int | None = None,
                    factor: float | None = None, original_max_position: int | None = None,
                    where: str = "config", **plan_options):
    """The plan for a model config: the one way from a config to a plan.

    - A config that records a DPRoPE plan (rope type ``"dprope"``, or a ``dprope export`` output) gives
      that plan, rebuilt as recorded; lengths and options given must agree with it (another extension
      of a model extended already is refused: plan it from the pre-trained model's config).
    - A config with the pre-trained default table is planned with :func:`~dprope_kernels.plan_dprope`
      (``target_max_position`` or ``factor``, and its options); ``original_max_position`` replaces the
      config's ``max_position_embeddings`` as the pre-training length.
    - Any other rope type is refused (:func:`pretrained_rope_settings`).
    """
    if original_max_position is not None and (isinstance(original_max_position, bool)
                                              or not isinstance(original_max_position, int)
                                              or original_max_position < 1):
        raise ConfigError(f"the pre-training length must be a positive integer, "
                          f"got {original_max_position!r}")
    settings = pretrained_rope_settings(config, layer_type, where)
    if rope_type_of(settings.parameters) == ROPE_TYPE:
        plan = plan_from_config(config, settings.layer_type)
        given = dict(plan_options, target_max_position=target_max_position, factor=factor,
                     original_max_position=original_max_position)
        differing = _disagreements(plan, given)
        if differing:
            raise ConfigError(
                f"{where} records a DPRoPE plan ({plan.original_max_position} -> {plan.target_max_position}, "
                f"selection {plan.selection!r}, pairs {plan.interpolated_pairs}), which is rebuilt as "
                f"recorded, but {', '.join(differing)} was asked for; drop it to use the recorded plan, or "
                "plan another extension from the pre-trained model's config")
        _check_export_serves(config, plan, where)
        return plan
    from .planner import plan_dprope

    return plan_dprope(head_dim=settings.rotary_dim, rope_theta=settings.rope_theta,
                       original_max_position=original_max_position or settings.original_max_position,
                       target_max_position=target_max_position, factor=factor, **plan_options)

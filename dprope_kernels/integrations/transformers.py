"""Hugging Face transformers integration: the ``dprope`` rope type and the kernel patch.

Nothing here runs on import; the user calls:

- :func:`register_dprope_rope_type` once: transformers then accepts
  ``{"rope_type": "dprope", "factor": ..., "original_max_position_embeddings": ..., "dprope_*": ...}``
  in a config's ``rope_parameters`` (5.x) or ``rope_scaling`` (4.x) and builds the planned table.
- :func:`apply_dprope_kernels` on a loaded model: its rotary op runs on our kernels with exact
  angles from the model's own table (or a given one); :func:`revert_dprope_kernels` undoes it.

How the patch works: the model's rotary module returns ``(position_ids, phases)`` (int64) instead
of ``(cos, sin)``, and the modeling module's ``apply_rotary_pos_emb`` sees the int64 pair and
calls :func:`dprope_kernels.apply_rope`. Nothing is stashed between calls, so gradient
checkpointing, generation and ``torch.compile`` see ordinary tensors; float ``(cos, sin)`` from an
unpatched model of the same class still take the original path.
"""

from __future__ import annotations

import functools
import gc
import inspect
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..backends import check_backend_name
from ..errors import InvalidKey, InvalidType, InvalidValue
from ..hf_config import (
    ConfigError,
    head_dim_of,
    is_fixed_table,
    plan_from_config,
    rope_parameters,
    rope_settings,
)
from ..modules import DPRoPERotaryEmbedding
from ..ops.checks import check_attention_factor, check_flag
from ..ops.rope import apply_rope
from ..planner import SELECTIONS
from . import hf_fused
from .hf_fused import FusedAttentionForward
from .hf_probe import (
    NotServed,
    RotarySpec,
    attention_scaling,
    call_rotary,
    check_attention_source,
    is_rotary_module,
    original_window,
    plain_rotary_function,
    probe_rotary_function,
    rope_type,
    rotary_consumers,
    rotary_function_parameters,
    rotary_tables,
)

ROPE_TYPE = "dprope"
_REQUIRED_KEYS = {"rope_type", "factor", "original_max_position_embeddings"}
_OPTIONAL_KEYS = {
    "rope_theta", "max_position_embeddings", "partial_rotary_factor", "dprope_bins", "dprope_precision",
    "dprope_threshold", "dprope_num_interpolated_dims", "dprope_interpolated_pairs", "dprope_selection",
    "dprope_attention_factor", "dprope_ramp",
}


# ---------------------------------------------------------------------------------------------
# the "dprope" rope type
# ---------------------------------------------------------------------------------------------


def rotary_settings(config, layer_type: str | None = None) -> tuple[int, float]:
    """``(rotary_dim, rope_theta)`` of a transformers config (any rope type, 4.x or 5.x)."""
    settings = rope_settings(config, layer_type)
    return settings.rotary_dim, settings.rope_theta


def _compute_dprope_parameters(config, device=None, seq_len=None, layer_type=None,
                               **_) -> tuple[torch.Tensor, float]:
    """transformers' rope-init signature: ``(inv_freq [rotary_dim // 2] float32, attention_scaling)``."""
    plan = plan_from_config(config, layer_type)
    if device is None:  # as transformers' own tables: the default device (``with torch.device(...)``)
        device = torch.empty(0).device
    return plan.inv_freq.to(device=device, dtype=torch.float32), plan.attention_factor


def _check_dprope_parameters(params: dict, ignore_keys=None) -> None:
    received = set(params) - set(ignore_keys or ())
    received.discard("type")
    missing = _REQUIRED_KEYS - received - ({"rope_type"} if "type" in params else set())
    if missing:
        raise InvalidKey(f"rope_type 'dprope' needs {sorted(missing)} in the rope parameters")
    unknown = received - _REQUIRED_KEYS - _OPTIONAL_KEYS
    if unknown:
        raise InvalidKey(f"rope_type 'dprope' got unknown keys {sorted(unknown)}; "
                       f"it accepts {sorted(_OPTIONAL_KEYS)}")
    factor = params["factor"]
    if not isinstance(factor, (int, float)) or factor <= 1:
        raise InvalidValue(f"rope_type 'dprope' needs factor > 1, got {factor!r}")
    original = params["original_max_position_embeddings"]
    if not isinstance(original, int) or original < 1:
        raise InvalidValue(f"original_max_position_embeddings must be a positive int, got {original!r}")
    if "dprope_threshold" in params and "dprope_num_interpolated_dims" in params:
        raise InvalidValue("give dprope_threshold or dprope_num_interpolated_dims, not both")
    if params.get("dprope_selection", "paper") not in SELECTIONS:
        raise InvalidValue(f"dprope_selection must be one of {SELECTIONS}, "
                           f"got {params['dprope_selection']!r}")
    check_attention_factor("dprope_attention_factor", params.get("dprope_attention_factor", 1.0))


def _validate_v5(self, rope_parameters: dict, ignore_keys=None) -> None:
    _check_dprope_parameters(rope_parameters, ignore_keys)


def _validate_v4(config, ignore_keys=None) -> None:
    _check_dprope_parameters(config.rope_scaling, ignore_keys)


def configure_dprope(config, plan):
    """Set ``config`` (a transformers config) to rope type ``dprope`` with ``plan``: ``rope_parameters``
    (5.x) or ``rope_scaling`` (4.x), ``max_position_embeddings`` the target length. What an earlier
    ``dprope export`` left (its ``dprope`` block, the top-level ``original_max_position_embeddings``
    set to the target) is removed, so that the config records exactly this plan. Returns ``config``."""
    params = plan.rope_config()
    params.pop("max_position_embeddings")
    if hasattr(config, "rope_parameters"):
        config.rope_parameters = params
    else:
        config.rope_scaling = params
        config.rope_theta = plan.rope_theta
    for leftover in ("dprope", "original_max_position_embeddings"):
        if hasattr(config, leftover):
            delattr(config, leftover)
    config.max_position_embeddings = plan.target_max_position
    return config


def register_dprope_rope_type() -> None:
    """Teach transformers (4.45 .. 5.x) the ``dprope`` rope type. Idempotent."""
    from transformers import modeling_rope_utils as rope_utils

    rope_utils.ROPE_INIT_FUNCTIONS[ROPE_TYPE] = _compute_dprope_parameters
    mixin = getattr(rope_utils, "RotaryEmbeddingConfigMixin", None)
    if mixin is not None:  # 5.x: validation is a method per rope type
        mixin._validate_dprope_rope_parameters = _validate_v5
    validators = getattr(rope_utils, "ROPE_VALIDATION_FUNCTIONS", None)
    if validators is not None:  # 4.x: a registry of functions
        validators[ROPE_TYPE] = _validate_v4


# ---------------------------------------------------------------------------------------------
# the kernel patch
# ---------------------------------------------------------------------------------------------

_ATTRIBUTE = "_dprope_phases"  # on a patched rotary module: nn.ModuleDict layer type -> DPRoPERotaryEmbedding
_STATE = "_dprope_patch"  # on a patched model: _Patch
_DEFAULT = "default"  # the ModuleDict key of a rotary module without layer types
_ORIGINALS: dict[tuple[str, str], Any] = {}  # (modeling module, function) -> the original rotary function
# (modeling module, function) -> (backend, scale)
_WRAPPER_BACKENDS: dict[tuple[str, str], tuple[str, float]] = {}
_PATCHED_MODELS: dict[str, weakref.WeakSet] = {}  # modeling module -> models patched through it


@dataclass
class _Patch:
    modeling: str
    functions: dict[str, RotarySpec]
    rotaries: list[nn.Module]
    attentions: list[nn.Module] = field(default_factory=list)


def _is_marker(cos, sin) -> bool:
    return isinstance(cos, torch.Tensor) and isinstance(sin, torch.Tensor) and cos.dtype == torch.int64 \
        and sin.dtype == torch.int64


def _patched_function(original, spec: RotarySpec, backend: str, scale: float):
    """``original`` (a module-level rotary function), serving (position_ids, phases) with apply_rope, cos and
    sin times ``scale`` (the attention factor)."""
    plain = plain_rotary_function(original)
    signature = inspect.signature(plain)
    tensors, _ = rotary_function_parameters(plain)
    default_unsqueeze = (signature.parameters["unsqueeze_dim"].default
                         if "unsqueeze_dim" in signature.parameters else 1)

    @functools.wraps(plain)
    def rotary_function(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs).arguments
        position_ids, phases = arguments["cos"], arguments["sin"]
        if not _is_marker(position_ids, phases):
            return original(*args, **kwargs)
        xs = [arguments.get(name) for name in tensors]
        if phases.numel() == 0:  # rotated already, by the fused projection
            return tuple(xs) if len(xs) > 1 else xs[0]
        unsqueeze_dim = arguments.get("unsqueeze_dim", default_unsqueeze)
        if unsqueeze_dim not in (1, 2):
            raise InvalidValue(f"{spec.name}: unsqueeze_dim={unsqueeze_dim} is not a q/k layout the patch "
                               f"serves")
        layout = (lambda t: t.transpose(1, 2)) if unsqueeze_dim == 1 else (lambda t: t)  # to [B, T, H, D]
        q = layout(xs[0])
        k = layout(xs[1]) if len(xs) > 1 and xs[1] is not None else None
        out_q, out_k = apply_rope(q, k, phases, position_ids, interleaved=spec.interleaved,
                                  output_interleaved=spec.output_interleaved, backend=backend, validate=False,
                                  scale=scale)
        if len(xs) == 1:
            return layout(out_q)
        return layout(out_q), (layout(out_k) if out_k is not None else None)

    rotary_function._dprope_original = original
    return rotary_function


def _rotary_forward(module: nn.Module):
    def forward(x, position_ids, *args, **kwargs):
        # not 4.x's seq_len
        layer_type = args[0] if args and isinstance(args[0], str) else kwargs.get("layer_type")
        phases = getattr(module, _ATTRIBUTE)[layer_type or _DEFAULT].phases
        # the model's own forward moves its table to x's device on every call; so do the phases
        return position_ids.to(torch.int64), phases.to(x.device)

    return forward


def _full_precision(model: nn.Module, rotary: nn.Module, layer_type: str | None,
                    own: torch.Tensor) -> torch.Tensor:
    """The rotary's own table in float32 or better. ``model.to(torch.bfloat16)`` rounds the ``inv_freq``
    buffer too (to 3 significant digits: angles off by whole turns within a few thousand positions);
    the float32 table is rebuilt from the model's config and served when its rounding is the buffer,
    otherwise the model is refused with the reason."""
    if own.dtype in (torch.float32, torch.float64):
        return own
    name = type(rotary).__name__ + (f"[{layer_type}]" if layer_type else "")
    try:
        rebuilt = _rebuilt_table(rotary, layer_type, _text_config(model), own.numel())
    except Exception as err:  # noqa: BLE001 - any failure to rebuild means: cannot vouch for a full-precision table
        raise NotServed(f"{name}'s frequency table is stored in {own.dtype} (rounded), and rebuilding it in "
                        f"float32 from the config failed ({err}); pass table= in float32 or load the model "
                        f"in float32") from None
    if not torch.equal(rebuilt.to(own.dtype), own.detach().cpu()):
        raise NotServed(f"{name}'s frequency table is stored in {own.dtype} (rounded) and is not the "
                        "rounding of the table its config defines; pass the float32 table as table=")
    return rebuilt


def _rebuilt_table(rotary: nn.Module, layer_type: str | None, config, n_freq: int) -> torch.Tensor:
    """The rotary module's table built afresh in float32 on the CPU: a new module of its class from the
    config, or (transformers 4.x modules that take ``dim``/``base``, like 4.45's Mistral) the
    config's own rope init function."""
    with torch.device("cpu"):
        try:
            return rotary_tables(type(rotary)(config=config))[layer_type].to(torch.float32)
        except TypeError:
            if layer_type is not None:
                raise
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        kind = rope_type(rotary, layer_type)
        table, _ = ROPE_INIT_FUNCTIONS[kind](config, torch.device("cpu"))
        if table.numel() != n_freq:
            raise InvalidValue(f"the config's {kind!r} table has {table.numel()} frequencies, "
                               f"the module {n_freq}")
        return table.to(torch.float32)


def _resolve_tables(model: nn.Module, rotaries: list[nn.Module], table) -> dict[tuple[int, str | None], Any]:
    """The table each (rotary module, layer type) gets: its own, or the user's (checked against it).

    With several tables, ``table`` maps layer types (Gemma 3 in transformers 5) or rotary module
    names (``"model.rotary_emb_local"``, transformers 4.x) to tables."""
    own = {(id(r), lt): t for r in rotaries for lt, t in rotary_tables(r).items()}
    if table is None:
        return {key: _full_precision(model, rotary, lt, t) for rotary in rotaries
                for lt, t in rotary_tables(rotary).items() for key in [(id(rotary), lt)]}
    names = {id(m): name for name, m in model.named_modules()}
    keys = {(rid, lt): lt if lt is not None else names[rid] for rid, lt in own}
    if isinstance(table, Mapping):
        chosen = {}
        for key, name in keys.items():
            if name not in table:
                raise InvalidValue(f"table has no entry for {name!r}; the model's tables are "
                                   f"{sorted(keys.values())}")
            chosen[key] = table[name]
    else:
        distinct = {tuple(t.tolist()) for t in own.values()}
        if len(distinct) > 1:
            raise InvalidValue(f"the model rotates with {len(distinct)} different tables "
                               f"({sorted(keys.values())}); "
                               "pass table={layer_type or rotary module name: table} to say which gets which")
        chosen = dict.fromkeys(own, table)
    for key, t in chosen.items():
        n_given = len(getattr(t, "inv_freq", t))
        n_model = own[key].numel()
        if n_given != n_model:
            raise InvalidValue(f"the table has {n_given} frequencies, but the model rotates {2 * n_model} "
                               f"dims per head ({n_model} frequencies: head_dim x partial_rotary_factor); "
                               f"plan with head_dim={2 * n_model}")
    return chosen


def _text_config(model: nn.Module):
    config = getattr(model, "config", None)
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _head_dim(config) -> int | None:
    try:
        return head_dim_of(config)
    except ConfigError:
        return None


def _check_rope_kind(rotary: nn.Module, layer_type: str | None, config) -> None:
    name = type(rotary).__name__ + (f"[{layer_type}]" if layer_type else "")
    kind = rope_type(rotary, layer_type)
    if kind == "longrope" and _fixed_longrope(config, layer_type):
        return  # equal short and long factors (a dprope export): one table at every length
    if kind in ("dynamic", "longrope"):
        raise NotServed(f"{name} uses rope_type {kind!r}, whose table changes with the sequence length; "
                        "the patch rotates with one fixed table")


def _fixed_longrope(config, layer_type: str | None) -> bool:
    try:
        return is_fixed_table(rope_parameters(config, layer_type))
    except ConfigError:
        return False


def _check_returns_cos_sin(rotary: nn.Module) -> None:
    layer_type = next(iter(rotary_tables(rotary)))
    device = rotary_tables(rotary)[layer_type].device
    try:
        out = call_rotary(rotary, layer_type, torch.arange(4, device=device).reshape(1, 4))
    except Exception as err:  # noqa: BLE001 - the model's own code failing means "not served"
        raise NotServed(f"calling {type(rotary).__name__} on probe positions failed: {err}") from err
    if not (isinstance(out, tuple) and len(out) == 2
            and all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in out)):
        what = f"a {out.dtype} tensor" if isinstance(out, torch.Tensor) else type(out).__name__
        raise NotServed(f"{type(rotary).__name__} returns {what}, not (cos, sin) (e.g. DeepSeek-V2's complex "
                        "freqs_cis); the patch serves rotary ops that take cos and sin")


def apply_dprope_kernels(model: nn.Module, table=None, *, backend: str = "auto",
                         fused_projection: bool = False, attention_factor: float | None = None) -> nn.Module:
    """Run a loaded transformers model's rotary op on dprope kernels with exact angles.

    Before anything is patched, the patch establishes what the model computes: it reads each
    attention forward (cos/sin must reach a module-level rotary function unchanged) and probes
    each such function with the model's own cos/sin at positions inside and past the original
    window, in both q/k layouts; the pairing (NeoX, GPT-J, or DeepSeek's GPT-J in / NeoX out),
    rotary dims and factor on cos/sin under which :func:`~dprope_kernels.apply_rope` reproduces it
    to float32 rounding are the ones served. Anything else is refused with an error saying what
    differs; nothing is changed then.

    Args:
        model: a transformers ``PreTrainedModel`` (patched in place and returned).
        table: ``[rotary_dim // 2]`` frequency table or a ``RopePlan``, or ``{layer_type: table}`` for
            models with several (Gemma 3); default: the model's own tables (whatever rope type
            built them, ``dprope`` and YaRN included). Its length must match the model's rotary dims.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"`` (one per modeling module: the
            patched rotary function is shared by every model of that class in the process).
        fused_projection: also compute each attention's q, k, v with one
            :func:`~dprope_kernels.fused_qk_rope_projection` call (per-head q/k norm included), for
            attentions with plain ``q_proj``/``k_proj``/``v_proj`` (or ``qkv_proj``) ``nn.Linear`` layers;
            checked against the attention's own forward on a float32 copy first.
        attention_factor: the factor on cos and sin served (YaRN's temperature); default a given
            ``RopePlan``'s, else the model's own (its rotary module's ``attention_scaling``). One per
            modeling module, like the backend.

    Position ids come from transformers and are not re-checked for negative values on each call.

    Raises:
        TypeError / ValueError: when the model cannot be served exactly (the message names the
            reason), the table does not fit it, or it is patched already.
    """
    fused_projection = check_flag("fused_projection", fused_projection)
    backend = check_backend_name(backend)
    if hasattr(model, _STATE):
        raise InvalidValue("the model is patched already; call revert_dprope_kernels(model) first")
    modeling = sys.modules.get(type(model).__module__)
    rotaries = _rotaries(model, modeling)
    chosen = _resolve_tables(model, rotaries, table)
    scale = _served_scale(rotaries, chosen, table, attention_factor)
    for rotary in rotaries:
        _check_returns_cos_sin(rotary)
    config = _text_config(model)
    consumers = rotary_consumers(model)
    if not consumers:
        raise InvalidType(f"no module of {type(model).__name__} reads cos/sin from the rotary module")
    specs = _rotary_functions(modeling, consumers, rotaries, config)
    _check_wrappers(modeling, specs, backend, scale)
    attentions = [m for m in model.modules() if type(m) in consumers] if fused_projection else []
    adapters = {attention: FusedAttentionForward(attention, next(iter(specs.values())), backend, scale)
                for attention in attentions}

    # everything is established: patch
    for name, spec in specs.items():
        key = (modeling.__name__, name)
        if key not in _ORIGINALS:
            _ORIGINALS[key] = getattr(modeling, name)
            setattr(modeling, name, _patched_function(_ORIGINALS[key], spec, backend, scale))
            _WRAPPER_BACKENDS[key] = (backend, scale)
    for rotary in rotaries:
        device = next(iter(rotary_tables(rotary).values())).device
        phases = nn.ModuleDict({lt or _DEFAULT: DPRoPERotaryEmbedding(chosen[(id(rotary), lt)],
                                                                      backend=backend, attention_factor=scale)
                                for lt in rotary_tables(rotary)})
        setattr(rotary, _ATTRIBUTE, phases.to(device))  # submodules: follow model.to()
        rotary.forward = _rotary_forward(rotary)
    patch = _Patch(modeling.__name__, specs, rotaries)
    object.__setattr__(model, _STATE, patch)
    _PATCHED_MODELS.setdefault(modeling.__name__, weakref.WeakSet()).add(model)
    try:
        for attention, adapter in adapters.items():
            _self_test_once(attention, adapter, rotaries[0], config)
            attention.forward = adapter
            adapter.stand_ins.install()
            patch.attentions.append(attention)
    except NotServed:
        revert_dprope_kernels(model)
        raise
    return model


def _rotaries(model: nn.Module, modeling) -> list[nn.Module]:
    """The model's rotary modules, each checked to hold a fixed table the patch can serve."""
    rotaries = [m for m in model.modules()
                if is_rotary_module(m) and not isinstance(m, DPRoPERotaryEmbedding)]
    if modeling is None or not rotaries:
        raise InvalidType(f"{type(model).__name__} has no rotary module that takes position ids (its "
                          "attention builds sin/cos itself, from a table of positions); the patch hands "
                          "position ids and phases through such a module, so it cannot serve this model")
    for rotary in rotaries:
        if hasattr(rotary, _ATTRIBUTE):
            raise InvalidValue("the model is patched already; call revert_dprope_kernels(model) first")
        tables = rotary_tables(rotary)
        if not tables:
            raise InvalidType(f"{type(rotary).__name__} holds no frequency table (no inv_freq: it looks "
                              "sin/cos up by position in a fixed table); the patch rotates with per-pair "
                              "frequencies, so it cannot serve this model")
        for layer_type, own in tables.items():
            if own.device.type == "meta":
                raise InvalidValue("the model's rotary tables are on the meta device; load the weights first")
            _check_rope_kind(rotary, layer_type, _text_config(model))
    return rotaries


def _served_scale(rotaries: list[nn.Module], chosen: dict, table, attention_factor) -> float:
    """The one factor on cos and sin the patch serves: given, a given plan's, or the model's own."""
    if attention_factor is not None:
        return check_attention_factor("attention_factor", attention_factor)
    factors = set()
    for rotary in rotaries:
        for layer_type in rotary_tables(rotary):
            given = (getattr(chosen[(id(rotary), layer_type)], "attention_factor", None)
                     if table is not None else None)
            factors.add(float(given) if given is not None else attention_scaling(rotary, layer_type))
    if len(factors) > 1:
        raise NotServed(f"the model's tables carry different attention factors {sorted(factors)}; the patch "
                        "serves one per modeling module (pass attention_factor=... to choose)")
    return factors.pop()


def _rotary_functions(modeling, consumers: dict, rotaries: list[nn.Module], config) -> dict[str, RotarySpec]:
    """The module-level rotary functions the attention calls, each probed against the model's own cos/sin."""
    called = set()
    for cls, methods in consumers.items():
        for method, tree in methods:
            called |= check_attention_source(cls, method, tree)
    specs = {}
    for name in sorted(called):
        fn = getattr(modeling, name, None)
        fn = getattr(fn, "_dprope_original", fn)
        if not callable(fn):
            raise NotServed(f"the attention calls {name}, which is not a module-level function of "
                            f"{modeling.__name__}")
        fn = plain_rotary_function(fn)
        found = {probe_rotary_function(fn, rotary, lt, t, _head_dim(config) or 0,
                                       original_window(rotary, config))
                 for rotary in rotaries for lt, t in rotary_tables(rotary).items()}
        if len(found) != 1:
            raise NotServed(f"{name} pairs dims differently for the model's tables: "
                            f"{sorted(map(str, found))}")
        specs[name] = found.pop()
    if not specs:
        raise NotServed(f"the attention of {next(iter(consumers)).__name__} hands cos/sin to no module-level "
                        "rotary function")
    return specs


def _check_wrappers(modeling, specs: dict, backend: str, scale: float) -> None:
    """One backend and one attention factor per patched modeling function (shared by its models)."""
    wanted = {(modeling.__name__, name): (backend, scale) for name in specs}
    if any(_WRAPPER_BACKENDS.get(key, served) != served for key, served in wanted.items()):
        gc.collect()  # a patched model dropped inside a reference cycle is freed only by the collector
    if modeling.__name__ in _PATCHED_MODELS and not _PATCHED_MODELS[modeling.__name__]:
        _restore_functions(modeling.__name__)  # every model patched through it was freed without a revert
    for key, served in wanted.items():
        if _WRAPPER_BACKENDS.get(key, served) != served:
            other = _WRAPPER_BACKENDS[key]
            raise InvalidValue(f"{key[1]} of {key[0]} is patched with backend {other[0]!r} and attention "
                               f"factor {other[1]:g} for another model; patch every model of this class with "
                               "one backend and one attention factor")


_SELF_TESTED: set[type] = set()


def _self_test_once(attention: nn.Module, adapter: FusedAttentionForward, rotary: nn.Module, config) -> None:
    """The fused forward against the attention's own, once per attention class (float32 copy)."""
    if type(attention) in _SELF_TESTED:
        return
    layer_type, own = next(iter(rotary_tables(rotary).items()))
    # the attention's device: the rotary's table may sit elsewhere (transformers moves it per call)
    device = next(attention.parameters()).device
    positions = torch.arange(5, device=device).reshape(1, 5) + 3
    real = call_rotary(rotary, layer_type, positions)
    markers = (positions, DPRoPERotaryEmbedding(own).phases.to(device))
    hf_fused.self_test(attention,
                       RotarySpec("probe", "GPT-J" if adapter.interleaved else "NeoX", adapter.head_dim),
                       real, markers, config.hidden_size, attention_scaling(rotary, layer_type))
    _SELF_TESTED.add(type(attention))


def revert_dprope_kernels(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_dprope_kernels` on ``model``: its rotary modules compute (cos, sin) again,
    its attentions project with their own forward."""
    patch = getattr(model, _STATE, None)
    if patch is None:
        return model
    for attention in patch.attentions:
        attention.forward.stand_ins.uninstall()
        del attention.forward
    for rotary in patch.rotaries:
        if hasattr(rotary, _ATTRIBUTE):
            delattr(rotary, _ATTRIBUTE)
            del rotary.forward  # the instance attribute; the class's forward shows through again
    object.__delattr__(model, _STATE)
    models = _PATCHED_MODELS.get(patch.modeling)
    if models is not None:
        models.discard(model)
        if not models:  # the last patched model of this modeling module: restore its functions
            _restore_functions(patch.modeling)
    return model


def _restore_functions(modeling: str) -> None:
    """The modeling module's rotary functions as they were, once no patched model of it is left."""
    module = sys.modules[modeling]
    for key in [k for k in _ORIGINALS if k[0] == modeling]:
        setattr(module, key[1], _ORIGINALS.pop(key))
        _WRAPPER_BACKENDS.pop(key, None)
    _PATCHED_MODELS.pop(modeling, None)

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
import sys
import weakref
from typing import Any

import torch
from torch import nn

from ..modules import DPRoPERotaryEmbedding
from ..ops.rope import apply_rope
from ..planner import plan_dprope

ROPE_TYPE = "dprope"
_REQUIRED_KEYS = {"rope_type", "factor", "original_max_position_embeddings"}
_OPTIONAL_KEYS = {
    "rope_theta", "max_position_embeddings", "partial_rotary_factor", "dprope_bins", "dprope_precision",
    "dprope_threshold", "dprope_num_interpolated_dims", "dprope_interpolated_pairs",
}


# ---------------------------------------------------------------------------------------------
# the "dprope" rope type
# ---------------------------------------------------------------------------------------------


def _rope_parameters(config, layer_type: str | None = None) -> dict:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    return params


def rotary_settings(config, layer_type: str | None = None) -> tuple[int, float]:
    """``(rotary_dim, rope_theta)`` of a transformers config (any rope type, 4.x or 5.x)."""
    params = _rope_parameters(config, layer_type)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    partial = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0) or 1.0)
    return int(head_dim * partial), float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


@functools.lru_cache(maxsize=32)
def _cached_plan(head_dim, rope_theta, original, factor, bins, threshold, n_hat, precision):
    with torch.device("cpu"):  # from_pretrained builds models under a meta-device context
        return plan_dprope(head_dim=head_dim, rope_theta=rope_theta, original_max_position=original, factor=factor,
                           bins=bins, threshold=threshold, num_interpolated_dims=n_hat, precision=precision)


def plan_from_config(config, layer_type: str | None = None):
    """The :class:`~dprope_kernels.RopePlan` a transformers config with ``rope_type: "dprope"`` asks for.

    Raises ValueError when the config records ``dprope_interpolated_pairs`` (what
    ``RopePlan.rope_config()`` saves) and planning gives a different selection, so a checkpoint
    never silently loads with another table than it was trained with.
    """
    params = _rope_parameters(config, layer_type)
    if params.get("rope_type", params.get("type")) != ROPE_TYPE:
        raise ValueError(f"config's rope type is {params.get('rope_type')!r}, not {ROPE_TYPE!r}")
    rotary_dim, rope_theta = rotary_settings(config, layer_type)
    plan = _cached_plan(
        rotary_dim, rope_theta, int(params["original_max_position_embeddings"]), float(params["factor"]),
        int(params.get("dprope_bins", 360)), params.get("dprope_threshold"),
        params.get("dprope_num_interpolated_dims"), params.get("dprope_precision", "exact"),
    )
    saved = params.get("dprope_interpolated_pairs")
    if saved is not None and list(saved) != plan.interpolated_pairs:
        raise ValueError(
            f"the config records interpolated pairs {list(saved)} but planning with its options gives "
            f"{plan.interpolated_pairs}; the checkpoint was trained with another table"
        )
    return plan


def _compute_dprope_parameters(config, device=None, seq_len=None, layer_type=None, **_) -> tuple[torch.Tensor, float]:
    """transformers' rope-init signature: ``(inv_freq [rotary_dim // 2] float32, attention_scaling)``."""
    plan = plan_from_config(config, layer_type)
    return plan.inv_freq.to(device=device, dtype=torch.float32), 1.0


def _check_dprope_parameters(params: dict, ignore_keys=None) -> None:
    received = set(params) - set(ignore_keys or ())
    received.discard("type")
    missing = _REQUIRED_KEYS - received - ({"rope_type"} if "type" in params else set())
    if missing:
        raise KeyError(f"rope_type 'dprope' needs {sorted(missing)} in the rope parameters")
    unknown = received - _REQUIRED_KEYS - _OPTIONAL_KEYS
    if unknown:
        raise KeyError(f"rope_type 'dprope' got unknown keys {sorted(unknown)}; it accepts {sorted(_OPTIONAL_KEYS)}")
    factor = params["factor"]
    if not isinstance(factor, (int, float)) or factor <= 1:
        raise ValueError(f"rope_type 'dprope' needs factor > 1, got {factor!r}")
    original = params["original_max_position_embeddings"]
    if not isinstance(original, int) or original < 1:
        raise ValueError(f"original_max_position_embeddings must be a positive int, got {original!r}")
    if "dprope_threshold" in params and "dprope_num_interpolated_dims" in params:
        raise ValueError("give dprope_threshold or dprope_num_interpolated_dims, not both")


def _validate_v5(self, rope_parameters: dict, ignore_keys=None) -> None:
    _check_dprope_parameters(rope_parameters, ignore_keys)


def _validate_v4(config, ignore_keys=None) -> None:
    _check_dprope_parameters(config.rope_scaling, ignore_keys)


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

_ATTRIBUTE = "_dprope_rotary"
_ORIGINALS: dict[str, Any] = {}  # modeling module name -> its original apply_rotary_pos_emb
_PATCHED_MODELS: dict[str, weakref.WeakSet] = {}  # modeling module name -> models patched through it


def _patched_apply(original, backend: str):
    @functools.wraps(original)
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        if not (cos.dtype == torch.int64 and sin.dtype == torch.int64):
            return original(q, k, cos, sin, *args, **kwargs)
        phases = sin
        position_ids = cos.expand(q.shape[0], cos.shape[-1]) if cos.shape[0] == 1 else cos
        # 4.x passes (position_ids=None, unsqueeze_dim=1) positionally in some models
        unsqueeze_dim = kwargs.get("unsqueeze_dim", next((a for a in reversed(args) if isinstance(a, int)), 1))
        if unsqueeze_dim == 1:  # HF's [B, H, T, D]
            out_q, out_k = apply_rope(q.transpose(1, 2), k.transpose(1, 2), phases, position_ids,
                                      backend=backend, validate=False)
            return out_q.transpose(1, 2), out_k.transpose(1, 2)
        return apply_rope(q, k, phases, position_ids, backend=backend, validate=False)

    return apply_rotary_pos_emb


def _rotary_forward(module: nn.Module):
    def forward(x, position_ids, *args, **kwargs):
        return position_ids.to(torch.int64), getattr(module, _ATTRIBUTE).phases

    return forward


def _rotary_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding") and hasattr(m, "inv_freq")
            and not isinstance(m, DPRoPERotaryEmbedding)]  # not the patch's own submodule


def apply_dprope_kernels(model: nn.Module, table=None, *, backend: str = "auto") -> nn.Module:
    """Run a loaded transformers model's rotary op on dprope kernels with exact angles.

    Works for models whose attention calls their modeling module's half-split
    ``apply_rotary_pos_emb(q, k, cos, sin)`` with ``(cos, sin)`` from a ``*RotaryEmbedding`` module:
    Llama, Mistral, Qwen2 and the many models that copy them.

    Args:
        model: a transformers ``PreTrainedModel`` (patched in place and returned).
        table: the ``[rotary_dim // 2]`` frequency table or a ``RopePlan``; default: the model's own
            ``rotary_emb.inv_freq`` (whatever rope type built it, ``dprope`` included).
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``; one per modeling module (the
            patched ``apply_rotary_pos_emb`` is shared by every model of that class in the process).

    Position ids come from transformers and are not re-checked for negative values on each call.

    Raises:
        TypeError / ValueError: when the model has no patchable rotary op, or its rope scales
            cos/sin (YaRN's attention factor, which the table alone cannot express), or it is
            patched already.
    """
    modeling = sys.modules.get(type(model).__module__)
    if modeling is None or not callable(getattr(modeling, "apply_rotary_pos_emb", None)):
        raise TypeError(
            f"{type(model).__name__} ({type(model).__module__}) has no module-level apply_rotary_pos_emb to patch"
        )
    rotaries = _rotary_modules(model)
    if not rotaries:
        raise TypeError(f"{type(model).__name__} has no *RotaryEmbedding module with an inv_freq table")
    for rotary in rotaries:
        if hasattr(rotary, _ATTRIBUTE):
            raise ValueError("the model is patched already; call revert_dprope_kernels(model) first")
        scaling = getattr(rotary, "attention_scaling", 1.0)
        if scaling != 1.0:
            raise ValueError(
                f"{type(rotary).__name__} scales cos/sin by attention_scaling={scaling} (e.g. YaRN); "
                "the dprope kernels rotate only, so this model cannot be patched"
            )
    for rotary in rotaries:
        rope = DPRoPERotaryEmbedding(rotary.inv_freq if table is None else table, backend=backend)
        setattr(rotary, _ATTRIBUTE, rope.to(rotary.inv_freq.device))  # a submodule: follows model.to()
        rotary.forward = _rotary_forward(rotary)
    name = modeling.__name__
    original = _ORIGINALS.setdefault(name, modeling.apply_rotary_pos_emb)
    modeling.apply_rotary_pos_emb = _patched_apply(original, backend)
    _PATCHED_MODELS.setdefault(name, weakref.WeakSet()).add(model)
    return model


def revert_dprope_kernels(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_dprope_kernels` on ``model``: its rotary modules compute (cos, sin) again."""
    for rotary in _rotary_modules(model):
        if hasattr(rotary, _ATTRIBUTE):
            delattr(rotary, _ATTRIBUTE)
            del rotary.forward  # the instance attribute; the class's forward shows through again
    name = type(model).__module__
    models = _PATCHED_MODELS.get(name)
    if models is not None:
        models.discard(model)
        if not models:  # the last patched model of this modeling module: restore its function
            sys.modules[name].apply_rotary_pos_emb = _ORIGINALS.pop(name)
            del _PATCHED_MODELS[name]
    return model

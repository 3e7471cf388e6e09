"""dprope_kernels: plan DPRoPE context extensions and run RoPE with mixed frequency tables.

Importing the package is cheap: submodules (and torch) load on first use of a name.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "plan_dprope": "planner",
    "RopePlan": "planner",
    "table_disturbance": "planner",
    "angle_counts": "planner",
    "kl_per_pair": "planner",
    "default_inv_freq": "strategies",
    "strategy_table": "strategies",
    "STRATEGIES": "strategies",
    "frequency_phases": "phase",
    "phase_tensor": "phase",
    "apply_rope": "ops.rope",
    "angle_histogram": "ops.histogram",
    "fused_qk_rope_projection": "ops.fused_projection",
    "DPRoPERotaryEmbedding": "modules",
    "FusedQKRopeProjection": "modules",
    "register_dprope_rope_type": "integrations.transformers",
    "apply_dprope_kernels": "integrations.transformers",
    "revert_dprope_kernels": "integrations.transformers",
    "portable_config": "export",
    "save_pretrained_portable": "export",
    "export_gguf": "export",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dprope_kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__

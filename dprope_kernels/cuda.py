"""Loads the compiled CUDA extension ``dprope_kernels._C`` on demand and says why it is missing."""

from __future__ import annotations

import importlib

from .errors import Unsupported

# [(module or None, error or None)] after the first attempt (a plain memo: dynamo-friendly)
_loaded: list = []


def _load():
    if not _loaded:
        try:
            _loaded.append((importlib.import_module("dprope_kernels._C"), None))
        except ImportError as err:
            if "dprope_kernels._C" in str(err) or "No module named" in str(err):
                error = ("the CUDA extension dprope_kernels._C is not built (install on a machine with "
                         "nvcc and CUDA-enabled torch, or set DPROPE_BUILD_CUDA=1)")
            else:
                error = f"the CUDA extension failed to load: {err}"
            _loaded.append((None, error))
    return _loaded[0]


def extension_error() -> str | None:
    """None when the extension is loaded, else why it is not."""
    return _load()[1]


def extension():
    """The extension's ops, ``torch.ops.dprope_C``; when it is missing, an ``Unsupported`` error (a
    RuntimeError) with the reason."""
    module, error = _load()
    if module is None:
        raise Unsupported(error)
    import torch

    return torch.ops.dprope_C

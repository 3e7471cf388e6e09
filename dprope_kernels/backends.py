"""Backend choice: each backend says why it cannot take an input; ``auto`` takes the best that can.

Backends: ``torch`` (reference, runs anywhere), ``triton`` (CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``), ``cuda`` (the compiled extension ``dprope_kernels._C``). The environment
variable ``DPROPE_BACKEND`` overrides ``backend="auto"``.
"""

from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("torch", "triton", "cuda")
ENV_VAR = "DPROPE_BACKEND"
# What "auto" tries on a CUDA device. Until a GPU benchmark says which is faster, the path with
# more evidence comes first: the Triton kernels run in CI (in the interpreter, the same kernel code)
# against float64 references, and their compiled code is checked for sm_80/sm_90; the CUDA kernels
# are only compile-checked there and have never run.
_AUTO_ORDER_CUDA = ("triton", "cuda", "torch")


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_triton_error: list[str | None] = []  # filled on first use


def _triton_import_error() -> str | None:
    if not _triton_error:
        if importlib.util.find_spec("triton") is None:
            _triton_error.append("the triton package is not installed")
        else:
            try:
                import triton  # noqa: F401
                import triton.language  # noqa: F401
            except Exception as err:  # a broken install says why here, not deep in a kernel
                _triton_error.append(f"triton failed to import: {err}")
            else:
                _triton_error.append(None)
    return _triton_error[0]


def triton_unavailable(device: torch.device) -> str | None:
    """Why the Triton backend cannot run on ``device``, or None if it can."""
    error = _triton_import_error()
    if error:
        return error
    if device.type == "cuda":
        return None
    if device.type == "cpu" and triton_interpreted():
        return None
    if device.type == "cpu":
        return "tensors are on the CPU and TRITON_INTERPRET=1 is not set"
    return f"triton does not run on {device.type} tensors"


def cuda_unavailable(device: torch.device) -> str | None:
    """Why the compiled CUDA extension cannot run on ``device``, or None if it can."""
    from .cuda import extension_error

    error = extension_error()
    if error:
        return error
    if device.type != "cuda":
        return f"the CUDA extension needs CUDA tensors, got {device.type}"
    return None


def unavailable(backend: str, device: torch.device) -> str | None:
    if backend == "torch":
        return None
    if backend == "triton":
        return triton_unavailable(device)
    if backend == "cuda":
        return cuda_unavailable(device)
    raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")


def check_backend_name(backend) -> str:
    """``backend`` if it is ``"auto"`` or a backend's name (where it can run is decided per call)."""
    if not isinstance(backend, str) or (backend != "auto" and backend not in BACKENDS):
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    return backend


def choose_backend(requested: str, device: torch.device, supported: tuple[str, ...] = BACKENDS) -> str:
    """Resolve ``requested`` (``"auto"`` or a name) for tensors on ``device``.

    Raises:
        ValueError: for an unknown name.
        RuntimeError: when the requested backend cannot run, with the reason; for ``auto``
            nothing fails since ``torch`` always can.
    """
    if requested == "auto":
        requested = os.environ.get(ENV_VAR, "auto") or "auto"
    if requested == "auto":
        order = _AUTO_ORDER_CUDA if device.type == "cuda" else ("torch",)
        for name in order:
            if name in supported and unavailable(name, device) is None:
                return name
        return "torch"
    if requested not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {requested!r}")
    if requested not in supported:
        raise RuntimeError(f"backend {requested!r} does not implement this op; it has {supported}")
    reason = unavailable(requested, device)
    if reason:
        raise RuntimeError(f"backend {requested!r} cannot run here: {reason}")
    return requested


def backend_report() -> str:
    """Text for ``dprope info``: each backend on this machine's devices, and why not."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    lines = [f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"]
    if torch.cuda.is_available():
        lines.append(f"device: {torch.cuda.get_device_name()}")
    for device in devices:
        lines.append(f"{device.type} tensors:")
        for name in BACKENDS:
            reason = unavailable(name, device)
            lines.append(f"  {name:<7} {'available' if reason is None else 'unavailable: ' + reason}")
        lines.append(f"  auto -> {choose_backend('auto', device)}")
    return "\n".join(lines)

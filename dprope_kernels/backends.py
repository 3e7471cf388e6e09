"""Backend choice: each backend says why it cannot take an input; ``auto`` takes, per op, the one
measured fastest that can.

Backends: ``torch`` (reference, runs anywhere), ``triton`` (CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``), ``cuda`` (the compiled extension ``dprope_kernels._C``). The environment
variable ``DPROPE_BACKEND`` overrides ``backend="auto"``.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .errors import DPRoPEError, InvalidValue, Unsupported

BACKENDS = ("torch", "triton", "cuda")
OPS = ("rope", "histogram", "fused_projection")
ENV_VAR = "DPROPE_BACKEND"
# What "auto" tries first, per op, on a CUDA device: the faster backend as measured on an H200 on
# 2026-12-04 (benchmarks/results/h200-2026-12-04/README.md, bf16): RoPE forward CUDA 0.093 ms vs
# Triton 0.234; histogram CUDA 0.137 ms vs Triton 0.827; fused projection Triton 1.79 ms vs CUDA 6.32.
# The Triton RoPE kernel was rewritten after that run; this order stands until a run measures it.
AUTO_ORDER_CUDA = {
    "rope": ("cuda", "triton", "torch"),
    "histogram": ("cuda", "triton", "torch"),
    "fused_projection": ("triton", "cuda", "torch"),
}


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
    raise InvalidValue(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")


def check_backend_name(backend) -> str:
    """``backend`` if it is ``"auto"`` or a backend's name (where it can run is decided per call)."""
    if not isinstance(backend, str) or (backend != "auto" and backend not in BACKENDS):
        raise InvalidValue(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    return backend


def requested_backend(requested: str) -> str:
    """``requested``, or for ``"auto"`` what ``DPROPE_BACKEND`` asks for (``"auto"`` when unset)."""
    if requested != "auto":
        return requested
    value = os.environ.get(ENV_VAR, "") or "auto"
    if value != "auto" and value not in BACKENDS:
        raise InvalidValue(f"{ENV_VAR}={value!r} is not a backend: set it to 'auto' or one of {BACKENDS}, or "
                         "unset it")
    return value


def choose_backend(requested: str, device: torch.device, supported: tuple[str, ...] = BACKENDS, *,
                   op: str) -> str:
    """Resolve ``requested`` (``"auto"`` or a name) for op ``op`` (one of ``OPS``) on ``device``.

    Raises:
        InvalidValue (a ValueError): for an unknown name (or an unknown ``DPROPE_BACKEND``).
        Unsupported (a RuntimeError): when the requested backend cannot run, with the reason; for
            ``auto`` nothing fails since ``torch`` always can.
    """
    from_env = requested == "auto" and requested_backend(requested) != "auto"
    requested = requested_backend(requested)
    if requested == "auto":
        order = AUTO_ORDER_CUDA[op] if device.type == "cuda" else ("torch",)
        return next((name for name in order if name in supported and unavailable(name, device) is None),
                    "torch")
    if requested not in BACKENDS:
        raise InvalidValue(f"backend must be 'auto' or one of {BACKENDS}, got {requested!r}")
    where = f" ({ENV_VAR}={requested})" if from_env else ""
    if requested not in supported:
        raise Unsupported(f"backend {requested!r}{where} does not implement this op; it has {supported}")
    reason = unavailable(requested, device)
    if reason:
        raise Unsupported(f"backend {requested!r}{where} cannot run here: {reason}")
    return requested


def backend_report() -> str:
    """Text for ``dprope info``: each backend on this machine's devices and why not, and per op what
    ``auto`` (or ``DPROPE_BACKEND``) takes there."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    lines = [f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"]
    if torch.cuda.is_available():
        lines.append(f"device: {torch.cuda.get_device_name()}")
    env = os.environ.get(ENV_VAR)
    if env:
        lines.append(f"{ENV_VAR}={env!r} stands in for backend='auto'")
    for device in devices:
        lines.append(f"{device.type} tensors:")
        for name in BACKENDS:
            reason = unavailable(name, device)
            lines.append(f"  {name:<7} {'available' if reason is None else 'unavailable: ' + reason}")
        for op in OPS:
            try:
                chosen = choose_backend("auto", device, op=op)
            except DPRoPEError as err:
                chosen = f"none: {err}"
            lines.append(f"  auto for {op} -> {chosen}")
    return "\n".join(lines)

"""A pretend accelerator, so CPU-only CI can check where code puts its tensors.

Inside :func:`pretend_device`, a tensor created on (or moved to) :data:`DEVICE` is a CPU tensor
underneath, labelled ``lazy:0``: a device type the CPU build of torch carries through autograd
(``cuda`` cannot be: its device guard is missing there, and the autograd engine aborts). Every op
on such tensors runs on the CPU, and an op that mixes them with CPU tensors (other than 0-dim
scalars, as on CUDA) raises CUDA's own complaint, "Expected all tensors to be on the same device".
So code that builds a tensor on the CPU where it should follow its inputs' device fails here as it
fails on a GPU: the first GPU run found the fused drop-in's self-test doing exactly that.

Code that branches on ``device.type == "cuda"`` takes its non-CUDA path here; the kernels are the
torch backend's (``backend="torch"`` or ``"auto"``, which picks it on such a device).
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

DEVICE = torch.device("lazy", 0)
_CROSS_DEVICE = (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default)


class OnDevice(torch.Tensor):
    """A CPU tensor (``inner``) that says it lives on :data:`DEVICE`."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        wrapper = torch.Tensor._make_wrapper_subclass(
            cls, inner.shape, strides=inner.stride(), storage_offset=inner.storage_offset(),
            dtype=inner.dtype, device=DEVICE, requires_grad=inner.requires_grad)
        wrapper.inner = inner
        return wrapper

    def __repr__(self, **_):
        return f"OnDevice({self.inner!r})"

    def data_ptr(self) -> int:
        return self.inner.data_ptr()

    def untyped_storage(self):
        return self.inner.untyped_storage()

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        with _Dispatch():
            return func(*args, **(kwargs or {}))


def _is_pretend(device) -> bool:
    return device is not None and torch.device(device).type == DEVICE.type


class _Dispatch(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        found = set()

        def unwrap(t):
            if isinstance(t, OnDevice):
                found.add(DEVICE.type)
                return t.inner
            if isinstance(t, torch.Tensor) and t.dim() > 0:
                found.add(t.device.type)
            return t

        given, given_kwargs = args, kwargs or {}
        args, kwargs = tree_map(unwrap, args), tree_map(unwrap, dict(given_kwargs))
        target = kwargs.get("device")
        if _is_pretend(target):
            kwargs["device"] = torch.device("cpu")
        if len(found) > 1 and func not in _CROSS_DEVICE:
            raise RuntimeError("Expected all tensors to be on the same device, but found at least two "
                               f"devices, {DEVICE} and cpu! (in {func})")
        out = func(*args, **kwargs)
        if func._schema.is_mutable:  # in place (or out=): the tensor it wrote is the answer
            return given_kwargs["out"] if "out" in given_kwargs else given[0]
        onto = _is_pretend(target) if target is not None else DEVICE.type in found
        return tree_map(lambda t: OnDevice(t) if onto and isinstance(t, torch.Tensor) else t, out)


class _Functions(TorchFunctionMode):
    """``torch.tensor(..., device=DEVICE)`` builds its tensor with Python dispatch excluded: built on the
    CPU here, then moved."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in (torch.tensor, torch.as_tensor) and _is_pretend(kwargs.get("device")):
            kwargs["device"] = "cpu"
            return torch.ops.aten._to_copy(func(*args, **kwargs), device=DEVICE)
        return func(*args, **kwargs)


class _Autocast(torch.autocast):
    """transformers 4.x opens ``torch.autocast(device_type=x.device.type)``, which knows no lazy autocast:
    the CPU's stands in (the pretend device computes on the CPU)."""

    def __init__(self, device_type, *args, **kwargs):
        super().__init__("cpu" if device_type == DEVICE.type else device_type, *args, **kwargs)


@contextlib.contextmanager
def pretend_device():
    """Yields :data:`DEVICE`, usable as a device for the duration."""
    real_autocast = torch.autocast
    torch.autocast = _Autocast
    try:
        with _Dispatch(), _Functions():
            yield DEVICE
    finally:
        torch.autocast = real_autocast

"""Frequency tables as device phase tensors, cached so repeated calls skip the host work."""

from __future__ import annotations

import functools
import weakref

import numpy as np
import torch

from .. import phase
from ..errors import InvalidType, InvalidValue


@functools.lru_cache(maxsize=128)
def _phases_cached(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(phase.to_signed(phase.frequency_phases(values)), dtype=torch.int64, device=device)


# id(table), device -> (weak reference to the table, its version when converted, phases on device)
_TENSOR_PHASES: dict[tuple[int, torch.device], tuple[weakref.ref, int, torch.Tensor]] = {}


def _tensor_phases(inv_freq: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Phases of a float table tensor, converted once per (table, version, device): a model's
    ``inv_freq`` buffer on a GPU is copied to the host on the first call only."""
    key = (id(inv_freq), device)
    hit = _TENSOR_PHASES.get(key)
    if hit is not None and hit[0]() is inv_freq and hit[1] == inv_freq._version:
        return hit[2]
    values = tuple(inv_freq.detach().to("cpu", torch.float64).tolist())
    if not values:
        raise InvalidValue("inv_freq is empty: a table needs at least one frequency")
    phases = _phases_cached(values, device)
    forget = functools.partial(_TENSOR_PHASES.pop, key, None)
    _TENSOR_PHASES[key] = (weakref.ref(inv_freq, lambda _: forget()), inv_freq._version, phases)
    return phases


@torch.library.custom_op("dprope::table_phases", mutates_args=())
def _table_phases_op(inv_freq: torch.Tensor, device: torch.device) -> torch.Tensor:
    return _tensor_phases(inv_freq, device).clone()


@_table_phases_op.register_fake
def _table_phases_fake(inv_freq, device):
    return torch.empty(inv_freq.shape, dtype=torch.int64, device=device)


def table_phases(inv_freq, device: torch.device) -> torch.Tensor:
    """``[n]`` int64 phases of a ``[n]`` float table (tensor, array or sequence) on ``device``.

    An int64 tensor is taken as phases already (what :func:`dprope_kernels.phase_tensor` and the
    modules hold) and only moved to ``device``.

    A float tensor is converted once per tensor and version (a device sync on that first call
    only; in-place changes to the table are seen); under ``torch.compile`` the conversion is an op
    (``torch.ops.dprope.table_phases``), so tracing does not break at it. Sequences and arrays are
    cached by value.
    """
    if isinstance(inv_freq, torch.Tensor):
        if inv_freq.dim() != 1:
            raise InvalidValue(f"inv_freq must be 1-D [rotary_dim // 2], got shape {tuple(inv_freq.shape)}")
        if inv_freq.dtype == torch.int64:  # the kernels read phases as one contiguous run
            return inv_freq.to(device).contiguous()
        if not inv_freq.is_floating_point():
            raise InvalidType(f"inv_freq must be a real float tensor (or int64 phases), got {inv_freq.dtype}")
        if inv_freq.numel() == 0:
            raise InvalidValue("inv_freq is empty: a table needs at least one frequency")
        if torch.compiler.is_compiling():
            return torch.ops.dprope.table_phases(inv_freq, torch.device(device))
        return _tensor_phases(inv_freq, torch.device(device))
    values = tuple(float(v) for v in _real_values(inv_freq))
    if not values:
        raise InvalidValue("inv_freq is empty: a table needs at least one frequency")
    return _phases_cached(values, torch.device(device))


def _real_values(inv_freq) -> np.ndarray:
    """A 1-D float64 array of a sequence or array table; complex, text and nested input refused."""
    if inv_freq is None or isinstance(inv_freq, (str, bytes)):
        raise InvalidType(f"inv_freq must be a 1-D real table (tensor, array or sequence), got {inv_freq!r}")
    try:
        array = np.asarray(inv_freq)
    except (TypeError, ValueError) as err:
        raise InvalidType(f"inv_freq must be a 1-D real table, "
                          f"got {type(inv_freq).__name__}: {err}") from None
    if array.dtype.kind not in "fiu" or array.dtype == np.bool_:
        raise InvalidType(f"inv_freq must hold real numbers, got dtype {array.dtype}")
    if array.ndim != 1:
        raise InvalidValue(f"inv_freq must be 1-D [rotary_dim // 2], got shape {array.shape}")
    return array.astype(np.float64)

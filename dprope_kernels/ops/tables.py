"""Frequency tables as device phase tensors, cached so repeated calls skip the host work."""

from __future__ import annotations

import functools

import numpy as np
import torch

from .. import phase


@functools.lru_cache(maxsize=128)
def _phases_cached(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(phase.to_signed(phase.frequency_phases(values)), dtype=torch.int64, device=device)


def table_phases(inv_freq, device: torch.device) -> torch.Tensor:
    """``[n]`` int64 phases of a ``[n]`` float table (tensor, array or sequence) on ``device``.

    An int64 tensor is taken as phases already (what :func:`dprope_kernels.phase_tensor` and the
    modules hold) and only moved to ``device``.

    A CUDA ``inv_freq`` is copied to the host once per call; pass the same table again and the
    phases come from the cache. Modules hold their phases and skip this step.
    """
    if isinstance(inv_freq, torch.Tensor):
        if inv_freq.dim() != 1:
            raise ValueError(f"inv_freq must be 1-D [rotary_dim // 2], got shape {tuple(inv_freq.shape)}")
        if inv_freq.dtype == torch.int64:
            return inv_freq.to(device)
        if not inv_freq.is_floating_point():
            raise TypeError(f"inv_freq must be a real float tensor (or int64 phases), got {inv_freq.dtype}")
        values = tuple(inv_freq.detach().to("cpu", torch.float64).tolist())
    else:
        values = tuple(float(v) for v in _real_values(inv_freq))
    if not values:
        raise ValueError("inv_freq is empty: a table needs at least one frequency")
    return _phases_cached(values, torch.device(device))


def _real_values(inv_freq) -> np.ndarray:
    """A 1-D float64 array of a sequence or array table; complex, text and nested input refused."""
    if inv_freq is None or isinstance(inv_freq, (str, bytes)):
        raise TypeError(f"inv_freq must be a 1-D real table (tensor, array or sequence), got {inv_freq!r}")
    try:
        array = np.asarray(inv_freq)
    except (TypeError, ValueError) as err:
        raise TypeError(f"inv_freq must be a 1-D real table, got {type(inv_freq).__name__}: {err}") from None
    if array.dtype.kind not in "fiu" or array.dtype == np.bool_:
        raise TypeError(f"inv_freq must hold real numbers, got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"inv_freq must be 1-D [rotary_dim // 2], got shape {array.shape}")
    return array.astype(np.float64)

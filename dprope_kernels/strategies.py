"""Frequency tables of the context-extension strategies a plan compares.

Every function returns a ``[head_dim // 2]`` float64 tensor of inverse frequencies (radians per
position). The baselines follow Hugging Face ``transformers``' float32 arithmetic so a table
here equals what a model configured with that rope type would use.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .errors import InvalidValue


def default_inv_freq(head_dim: int, rope_theta: float) -> torch.Tensor:
    """HF's ``inv_freq``: ``1 / rope_theta ** (2i / head_dim)`` in float32, returned as float64."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return (1.0 / (rope_theta**exponents)).double()


def extrapolation(base_inv_freq: torch.Tensor, **_) -> torch.Tensor:
    """The pre-trained frequencies, unchanged."""
    return base_inv_freq.double().clone()


def interpolation(base_inv_freq: torch.Tensor, *, factor: float, **_) -> torch.Tensor:
    """Position interpolation (PI): every frequency divided by the factor (float64 division)."""
    return base_inv_freq.double() / factor


def ntk_aware(
    base_inv_freq: torch.Tensor, *, head_dim: int, rope_theta: float, factor: float, **_
) -> torch.Tensor:
    """NTK-aware scaling: the base raised to ``rope_theta * factor ** (d / (d - 2))``."""
    if head_dim <= 2:
        raise InvalidValue(f"NTK-aware scaling needs head_dim > 2 (it divides by head_dim - 2), "
                           f"got {head_dim}")
    scaled_base = rope_theta * factor ** (head_dim / (head_dim - 2))
    return default_inv_freq(head_dim, scaled_base)


def yarn(
    base_inv_freq: torch.Tensor,
    *,
    head_dim: int,
    rope_theta: float,
    factor: float,
    original_max_position: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    truncate: bool = True,
    **_,
) -> torch.Tensor:
    """YaRN's frequency ramp with HF's defaults (beta_fast 32, beta_slow 1, truncated range)."""

    def correction_dim(num_rotations: float) -> float:
        return (head_dim * math.log(original_max_position / (num_rotations * 2 * math.pi))) / (
            2 * math.log(rope_theta)
        )

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation_weight = 1 - ramp
    base32 = base_inv_freq.float()
    mixed = (base32 / factor) * (1 - extrapolation_weight) + base32 * extrapolation_weight
    return mixed.double()


def llama3(
    base_inv_freq: torch.Tensor,
    *,
    factor: float,
    original_max_position: int,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    **_,
) -> torch.Tensor:
    """Llama 3.1's wavelength-banded scaling (HF's ``llama3`` rope type)."""
    inv_freq = base_inv_freq.float()
    low_freq_wavelen = original_max_position / low_freq_factor
    high_freq_wavelen = original_max_position / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max_position / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled).double()


STRATEGIES: dict[str, Callable[..., torch.Tensor]] = {
    "extrapolation": extrapolation,
    "interpolation": interpolation,
    "ntk": ntk_aware,
    "yarn": yarn,
    "llama3": llama3,
}

BASELINES = ("extrapolation", "interpolation", "ntk", "yarn")


def strategy_table(
    name: str,
    base_inv_freq: torch.Tensor,
    *,
    head_dim: int,
    rope_theta: float,
    factor: float,
    original_max_position: int,
) -> torch.Tensor:
    """The ``[head_dim // 2]`` float64 table of the named strategy."""
    if name not in STRATEGIES:
        raise InvalidValue(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](
        base_inv_freq,
        head_dim=head_dim,
        rope_theta=rope_theta,
        factor=factor,
        original_max_position=original_max_position,
    )

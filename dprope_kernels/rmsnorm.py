"""RMSNorms that the fused projection can apply in its epilogue, recognized by what they compute."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .errors import InvalidValue


class NormNotFusable(InvalidValue):
    """A q/k norm the fused epilogue cannot reproduce; the message says what was found."""


@dataclass
class FusableNorm:
    """``y * rsqrt(mean(y**2) + eps) * (weight + offset)`` over one head or all of a token's heads."""

    module: nn.Module
    eps: float
    offset: float  # 1.0 for Gemma's (1 + weight) form

    def weight(self) -> torch.Tensor:
        return self.module.weight + self.offset if self.offset else self.module.weight


def probe_norm(owner: nn.Module, name: str, head_dim: int, heads: int) -> FusableNorm | None:
    """The RMSNorm ``owner.<name>`` (Llama/Qwen3 ``weight * y`` or Gemma ``(1 + weight) * y``) over one
    head or over all ``heads`` of a token (OLMo2), established on a random probe of a float32 copy;
    None when ``owner`` has no such attribute."""
    module = getattr(owner, name, None)
    if module is None:
        return None
    where = f"{type(owner).__name__}.{name} ({type(module).__name__})"
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    if not isinstance(weight, torch.Tensor) or not isinstance(eps, float):
        raise NormNotFusable(f"{where} is not an RMSNorm with a weight and an eps")
    width = weight.numel()
    if weight.dim() != 1 or width not in (head_dim, heads * head_dim):
        raise NormNotFusable(f"{where} normalizes {width} values, neither one head ({head_dim}) nor all "
                             f"{heads} heads")
    probe = copy.deepcopy(module).float()
    with torch.no_grad():
        probe.weight.copy_(torch.linspace(-0.5, 0.5, width))
        y = torch.randn(3, 4, width, generator=torch.Generator().manual_seed(0)).to(probe.weight.device)
        got = probe(y)
        normalized = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + eps)
        for offset in (0.0, 1.0):
            if torch.allclose(got, normalized * (probe.weight + offset), rtol=1e-5, atol=1e-6):
                return FusableNorm(module, eps, offset)
    raise NormNotFusable(f"{where} is not y * rsqrt(mean(y^2) + eps) * weight (or * (1 + weight)); the fused "
                         "epilogue cannot reproduce it")


def probe_qk_norms(owner: nn.Module, head_dim: int, heads: tuple[int, int]) -> tuple[FusableNorm | None, ...]:
    """``(q_norm, k_norm)`` of an attention, each None when absent; one eps for both (one epilogue)."""
    norms = (probe_norm(owner, "q_norm", head_dim, heads[0]), probe_norm(owner, "k_norm", head_dim, heads[1]))
    if all(n is not None for n in norms) and norms[0].eps != norms[1].eps:
        raise NormNotFusable(f"{type(owner).__name__} normalizes q and k with different eps "
                             f"({norms[0].eps} and {norms[1].eps}); the fused epilogue takes one")
    return norms

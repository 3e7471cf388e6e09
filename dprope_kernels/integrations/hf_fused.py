"""The fused q/k/v projection inside a transformers attention (``fused_projection=True``).

The attention's own forward keeps running (its cache update, attention kernel, sliding window
and output projection stay the family's code); only its inputs change: before it runs, one
:func:`~dprope_kernels.ops.fused_projection.project_packed` call computes q, k (per-head norm
and rotation included) and v, and for the duration of the call the attention's ``q_proj`` /
``k_proj`` / ``v_proj`` (or ``qkv_proj``) return those results, its ``q_norm`` / ``k_norm``
pass them through, and its rotary function sees "already rotated" (empty phases). The weights
stay the model's own parameters; nothing is cached between calls.
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

from ..errors import Unsupported
from ..ops.fused_projection import project_packed
from ..rmsnorm import NormNotFusable, probe_qk_norms
from .hf_probe import NotServed, RotarySpec, is_rotary_module

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch built without distributed
    DTensor = ()


def _plain_linear(attention: nn.Module, name: str) -> nn.Linear | None:
    module = getattr(attention, name, None)
    if module is None:
        return None
    if type(module) is not nn.Linear:
        raise NotServed(f"{type(attention).__name__}.{name} is a {type(module).__name__}, not a plain "
                        "nn.Linear; the fused projection would bypass its forward")
    if module._forward_hooks or module._forward_pre_hooks:
        raise NotServed(f"{type(attention).__name__}.{name} has forward hooks the fused projection would "
                        f"skip")
    return module


_PASS_THROUGH = object()


class _StandIns:
    """Modules whose calls return given values while active (identity for None), else run as usual.

    Each module gets a wrapping ``forward`` once (``install``), which reads ``active`` at call time,
    so a call only sets and clears one attribute: no module attribute is added or deleted inside
    the forward, which ``torch.compile`` could not replay.
    """

    def __init__(self, modules: list[nn.Module]):
        self.modules = modules
        self.active: tuple | None = None
        self.saved: list | None = None

    def install(self) -> None:
        if self.saved is not None:
            return
        self.saved = [m.__dict__.get("forward") for m in self.modules]
        for index, (module, own) in enumerate(zip(self.modules, self.saved)):
            module.forward = self._wrapper(index, own if own is not None
                                           else type(module).forward.__get__(module))

    def uninstall(self) -> None:
        if self.saved is None:
            return
        for module, own in zip(self.modules, self.saved):
            if own is None:
                del module.forward
            else:
                module.forward = own
        self.saved = None

    def _wrapper(self, index: int, inner):
        def forward(x, *args, **kwargs):
            value = _PASS_THROUGH if self.active is None else self.active[index]
            if value is _PASS_THROUGH:
                return inner(x, *args, **kwargs)
            return x if value is None else value
        return forward


class FusedAttentionForward:
    """Replaces ``attention.forward`` (instance attribute): fused projections, then the original forward."""

    def __init__(self, attention: nn.Module, spec: RotarySpec, backend: str, scale: float = 1.0):
        self.attention, self.scale = attention, scale
        self.original = type(attention).forward.__get__(attention)
        self.signature = inspect.signature(self.original)
        params = self.signature.parameters
        # transformers < 4.48 attentions often call their own rotary module on position_ids
        self.own_rotary = None
        if "position_embeddings" not in params:
            rotary = getattr(attention, "rotary_emb", None)
            if "position_ids" not in params or rotary is None or not is_rotary_module(rotary):
                raise NotServed(f"{type(attention).__name__}.forward takes neither position_embeddings nor "
                                "position_ids with a rotary_emb of its own")
            self.own_rotary = rotary
        if "hidden_states" not in params:
            raise NotServed(f"{type(attention).__name__}.forward takes no 'hidden_states'")
        if spec.interleaved != spec.output_interleaved:
            raise NotServed(f"{spec.name} pairs {spec.pairing}; the fused projection writes one pairing")
        head_dim = getattr(attention, "head_dim", None)
        if not isinstance(head_dim, int):
            raise NotServed(f"{type(attention).__name__} has no int head_dim")
        if spec.rotary_dim != head_dim:
            raise NotServed(f"partial rotary ({spec.rotary_dim} of {head_dim} dims): the fused projection "
                            "rotates whole heads")
        self.head_dim, self.interleaved, self.backend = head_dim, spec.interleaved, backend
        self.qkv = _plain_linear(attention, "qkv_proj")
        if self.qkv is None:
            self.projections = [_plain_linear(attention, n) for n in ("q_proj", "k_proj", "v_proj")]
            if any(p is None for p in self.projections):
                raise NotServed(f"{type(attention).__name__} has no q_proj/k_proj/v_proj (or qkv_proj) "
                                f"nn.Linear")
            self.heads = tuple(p.out_features // head_dim for p in self.projections)
        else:
            n_q = getattr(getattr(attention, "config", None), "num_attention_heads", None)
            n_kv = getattr(attention, "num_key_value_heads", None)
            if not isinstance(n_q, int) or not isinstance(n_kv, int) or (n_q + 2 * n_kv) * head_dim != \
                    self.qkv.out_features:
                raise NotServed(f"cannot split {type(attention).__name__}.qkv_proj into q, k and v heads")
            self.heads = (n_q, n_kv, n_kv)
        try:
            self.norms = probe_qk_norms(attention, head_dim, self.heads[:2])
        except NormNotFusable as err:
            raise NotServed(str(err)) from None
        if (self.norms[0] is None) != (self.norms[1] is None):
            raise NotServed(f"{type(attention).__name__} normalizes only one of q and k")
        if backend == "cuda" and any(n is not None and n.module.weight.numel() != head_dim
                                     for n in self.norms):
            raise NotServed(f"{type(attention).__name__} normalizes q and k across heads, which the CUDA "
                            "fused projection does not; use backend='triton' or 'torch'")
        self.stand_ins = _StandIns(([self.qkv] if self.qkv is not None else list(self.projections))
                                   + [n.module for n in self.norms if n is not None]
                                   + ([self.own_rotary] if self.own_rotary is not None else []))

    def _weights(self):
        if self.qkv is None:
            return tuple(p.weight for p in self.projections), tuple(p.bias for p in self.projections)
        rows = [h * self.head_dim for h in self.heads]
        weights = tuple(torch.split(self.qkv.weight, rows))
        biases = tuple(torch.split(self.qkv.bias, rows)) if self.qkv.bias is not None else (None, None, None)
        return weights, biases

    def __call__(self, *args, **kwargs):
        bound = self.signature.bind(*args, **kwargs)
        hidden = bound.arguments["hidden_states"]
        if self.own_rotary is None:
            markers = bound.arguments.get("position_embeddings")
        elif bound.arguments.get("position_ids") is not None:
            # patched: (position_ids, phases)
            markers = self.own_rotary(hidden, bound.arguments["position_ids"])
        else:
            markers = None
        if not (isinstance(markers, tuple) and len(markers) == 2 and markers[1].dtype == torch.int64):
            return self.original(*args, **kwargs)
        position_ids, phases = markers
        weights, biases = self._weights()
        norm_weights = tuple(n.weight() if n is not None else None for n in self.norms)
        if any(isinstance(t, DTensor) for t in (*weights, *biases, *norm_weights)):
            raise Unsupported(
                f"{type(self.attention).__name__}'s projection weights are still sharded (DTensor) inside "
                "its forward: fused_projection=True reads q/k/v_proj's weights there without calling their "
                "forward, so FSDP's fully_shard must wrap the attention or its decoder layer, not the "
                "projections alone")
        packed = project_packed(
            hidden, *weights, phases, position_ids, bias=biases, q_norm_weight=norm_weights[0],
            k_norm_weight=norm_weights[1], norm_eps=self.norms[0].eps if self.norms[0] is not None else 1e-6,
            head_dim=self.head_dim, interleaved=self.interleaved, backend=self.backend, validate=False,
            scale=self.scale,
        )
        lead = hidden.shape[:-1]
        if self.qkv is not None:
            values = [packed.view(*lead, -1)]
        else:
            values = [part.reshape(*lead, -1) for part in torch.split(packed, self.heads, dim=-2)]
        values += [None for n in self.norms if n is not None]
        rotated = (position_ids, phases[:0])  # empty phases: the rotary function passes q, k through
        if self.own_rotary is None:
            bound.arguments["position_embeddings"] = rotated
        else:
            values.append(rotated)
        self.stand_ins.install()
        self.stand_ins.active = tuple(values)
        try:
            return self.original(*bound.args, **bound.kwargs)
        finally:
            self.stand_ins.active = None


def self_test(attention: nn.Module, spec: RotarySpec, real_cos_sin, markers, hidden_size: int,
              scale: float = 1.0) -> None:
    """Runs a float32 copy of ``attention`` both ways (its own forward on the model's cos/sin, which
    carry the factor ``scale``, the fused one on the markers) on a random input; raises NotServed when
    they differ. The module-level rotary function must be patched already (it takes the markers)."""
    attention = copy.deepcopy(attention).float()
    adapter = FusedAttentionForward(attention, spec, "torch", scale)
    device = next(attention.parameters()).device
    position_ids, phases = markers
    hidden = torch.randn(1, position_ids.shape[-1], hidden_size,
                         generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        if adapter.own_rotary is None:
            expected = adapter.original(hidden_states=hidden, position_embeddings=real_cos_sin,
                                        attention_mask=None)
            got = adapter(hidden_states=hidden, position_embeddings=markers, attention_mask=None)
        else:
            adapter.own_rotary.__dict__.pop("forward", None)  # the copy computes the model's own cos/sin ...
            expected = adapter.original(hidden_states=hidden, position_ids=position_ids, attention_mask=None)
            # ... then markers
            adapter.own_rotary.forward = lambda x, ids, *a, **k: (ids.to(torch.int64), phases)
            got = adapter(hidden_states=hidden, position_ids=position_ids, attention_mask=None)
    expected, got = expected[0], got[0]
    err = float((got - expected).abs().max() / expected.abs().max().clamp(min=1e-30))
    if not err <= 1e-4:
        raise NotServed(f"{type(adapter.attention).__name__} with the fused projection differs from its own "
                        f"forward (relative error {err:.3g})")

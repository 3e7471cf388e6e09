"""What a transformers model's rotary op computes, established by evidence before it is patched.

- :func:`rotary_tables`: the model's rotary modules and their frequency tables (one per layer
  type for Gemma 3-style modules).
- :func:`check_attention_source`: reads each attention forward (AST) and requires that cos/sin
  only travel from ``position_embeddings`` to module-level rotary functions, unchanged.
- :func:`probe_rotary_function`: feeds a module-level ``apply_rotary_pos_emb*`` probe q/k with the
  model's real cos/sin (positions inside and past the original window, both q/k layouts) and
  finds the pairing (NeoX, GPT-J, or GPT-J in / NeoX out) with which ``apply_rope`` reproduces it
  to the model's own float32 rounding; otherwise says what differs.
"""

from __future__ import annotations

import ast
import copy
import inspect
import textwrap
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import InvalidValue
from ..ops.rope import apply_rope

PAIRINGS = {"NeoX": (False, False), "GPT-J": (True, True), "GPT-J in, NeoX out": (True, False)}
_EPS32 = 2.0 ** -24


class NotServed(InvalidValue):
    """The model's rotary op cannot be served exactly; the message says why."""


@dataclass(frozen=True)
class RotarySpec:
    """How a served rotary function pairs dims: ``apply_rope(..., interleaved, output_interleaved)``."""

    name: str
    pairing: str
    rotary_dim: int

    @property
    def interleaved(self) -> bool:
        return PAIRINGS[self.pairing][0]

    @property
    def output_interleaved(self) -> bool:
        return PAIRINGS[self.pairing][1]


# ---------------------------------------------------------------------------------------------
# rotary modules and their tables
# ---------------------------------------------------------------------------------------------


def is_rotary_module(module: nn.Module) -> bool:
    """A ``*RotaryEmbedding`` whose forward takes ``position_ids`` (vision rotaries do not)."""
    if not type(module).__name__.endswith("RotaryEmbedding"):
        return False
    try:
        params = inspect.signature(type(module).forward).parameters
    except (TypeError, ValueError):
        return False
    return "position_ids" in params


def rotary_tables(rotary: nn.Module) -> dict[str | None, torch.Tensor]:
    """``{layer_type or None: inv_freq}`` of a rotary module (Gemma 3 keeps one per layer type)."""
    if isinstance(getattr(rotary, "inv_freq", None), torch.Tensor):
        return {None: rotary.inv_freq}
    tables = {}
    for layer_type in getattr(rotary, "layer_types", None) or ():
        table = getattr(rotary, f"{layer_type}_inv_freq", None)
        if isinstance(table, torch.Tensor):
            tables[layer_type] = table
    return tables


def attention_scaling(rotary: nn.Module, layer_type: str | None) -> float:
    name = "attention_scaling" if layer_type is None else f"{layer_type}_attention_scaling"
    return float(getattr(rotary, name, 1.0) or 1.0)


def rope_type(rotary: nn.Module, layer_type: str | None) -> str:
    value = getattr(rotary, "rope_type", "default")
    if isinstance(value, dict):
        value = value.get(layer_type, "default")
    return str(value)


def original_window(rotary: nn.Module, config) -> int:
    for value in (getattr(rotary, "original_max_seq_len", None),
                  getattr(config, "max_position_embeddings", None)):
        if isinstance(value, int) and value > 0:
            return value
    return 4096


def call_rotary(rotary: nn.Module, layer_type: str | None, positions: torch.Tensor):
    """The (cos, sin) the model's own rotary computes for ``positions`` ``[B, T]`` (float32), from a
    copy, so dynamic rope types cannot change the model's state."""
    probe = copy.deepcopy(rotary)
    x = torch.zeros(1, dtype=torch.float32, device=positions.device)
    forward = type(rotary).forward
    with torch.no_grad():
        if layer_type is None:
            return forward(probe, x, positions)
        return forward(probe, x, positions, layer_type)


# ---------------------------------------------------------------------------------------------
# the attention's source
# ---------------------------------------------------------------------------------------------


def _source_tree(fn) -> ast.AST | None:
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(fn))))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None


def rotary_consumers(model: nn.Module) -> dict[type, list[tuple[str, ast.AST]]]:
    """Module classes in ``model`` with methods that read cos/sin (the attention's forward, or a
    helper it calls): class -> [(method name, AST)]."""
    found = {}
    for module in model.modules():
        cls = type(module)
        if cls in found or is_rotary_module(module):
            continue
        methods = []
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            if not getattr(fn, "__module__", "").startswith("transformers"):  # and remote-code models
                continue
            tree = _source_tree(fn)
            if tree is not None and any(isinstance(n, ast.Name) and n.id in ("cos", "sin")
                                        for n in ast.walk(tree)):
                methods.append((name, tree))
        if methods:
            found[cls] = methods
    return found


def _passes_through(value: ast.AST) -> bool:
    """``position_embeddings`` (or an item of it), ``that if ... else (None, None)``, or a call of the
    attention's own rotary module (``self.rotary_emb(v, position_ids)``; transformers 4.x)."""
    if isinstance(value, ast.Call):
        return isinstance(value.func, ast.Attribute) and "rotary" in value.func.attr
    if isinstance(value, ast.IfExp):
        none_pair = isinstance(value.orelse, ast.Tuple) and all(
            isinstance(e, ast.Constant) and e.value is None for e in value.orelse.elts)
        return none_pair and _passes_through(value.body)
    return isinstance(value, (ast.Name, ast.Attribute, ast.Subscript))


def _call_name(node: ast.Call) -> str | None:
    return node.func.id if isinstance(node.func, ast.Name) else None


def check_attention_source(cls: type, method: str, tree: ast.AST) -> set[str]:
    """The module-level functions ``cls.<method>`` hands cos/sin to (unchanged, in that order).

    Raises :class:`NotServed` when cos/sin are used any other way (sliced, negated, swapped,
    multiplied, passed to a method), naming the line.
    """
    allowed: set[int] = set()
    called: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _passes_through(node.value):
            for target in node.targets:  # cos, sin = position_embeddings
                if (isinstance(target, ast.Tuple)
                        and [getattr(e, "id", None) for e in target.elts] == ["cos", "sin"]):
                    allowed.update(id(e) for e in target.elts)
        # 4.x cache_kwargs = {"sin": sin, "cos": cos, ...}: unused by the caches
        if isinstance(node, ast.Dict):
            allowed.update(id(v) for v in node.values if isinstance(v, ast.Name) and v.id in ("cos", "sin"))
        if isinstance(node, ast.Call) and _call_name(node):
            names = [a.id if isinstance(a, ast.Name) else None for a in node.args]
            for i in range(len(names) - 1):
                if names[i] == "cos" and names[i + 1] == "sin":
                    allowed.update((id(node.args[i]), id(node.args[i + 1])))
                    called.add(_call_name(node))
            keywords = {k.arg: k.value for k in node.keywords}
            if all(isinstance(keywords.get(n), ast.Name) and keywords[n].id == n for n in ("cos", "sin")):
                allowed.update((id(keywords["cos"]), id(keywords["sin"])))
                called.add(_call_name(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in ("cos", "sin") and id(node) not in allowed:
            source = textwrap.dedent(inspect.getsource(inspect.unwrap(getattr(cls, method))))
            line = ast.get_source_segment(source, node)
            raise NotServed(
                f"{cls.__name__}.{method} uses {node.id} other than passing it to a rotary function "
                f"(line {node.lineno}: {line!r}); the patch hands position ids and phases in their place, so "
                "it cannot serve this attention"
            )
    return called


# ---------------------------------------------------------------------------------------------
# probing a rotary function
# ---------------------------------------------------------------------------------------------


def plain_rotary_function(fn):
    """The Python function behind a module-level rotary callable: ``fn`` itself, or the one function a
    stand-in module calls (the ``kernels`` package turns hub-kernelizable functions into ``nn.Module``
    instances whose forward calls the original)."""
    if not isinstance(fn, nn.Module):
        return fn
    enclosed = inspect.getclosurevars(type(fn).forward).nonlocals.values()
    wrapped = [v for v in enclosed if inspect.isfunction(v)]
    if len(wrapped) != 1:
        raise NotServed(f"the rotary callable is a {type(fn).__qualname__} module whose forward calls "
                        f"{len(wrapped)} enclosed functions, not one")
    return wrapped[0]


def rotary_function_parameters(fn) -> tuple[list[str], bool]:
    """``(tensor parameter names before cos, takes unsqueeze_dim)``; NotServed if it takes no cos/sin."""
    params = list(inspect.signature(fn).parameters)
    if "cos" not in params or "sin" not in params or params.index("sin") != params.index("cos") + 1:
        raise NotServed(f"{fn.__name__}{inspect.signature(fn)} does not take (cos, sin)")
    tensors = params[: params.index("cos")]
    if len(tensors) not in (1, 2):
        raise NotServed(f"{fn.__name__}{inspect.signature(fn)}: expected (q, k, cos, sin) or (x, cos, sin)")
    return tensors, "unsqueeze_dim" in params


def _probe_positions(window: int, device) -> torch.Tensor:
    """Row 0 inside the window from 0; row 1 straddling and past it (what dynamic tables react to)."""
    inside = torch.arange(8)
    past = torch.tensor([window - 3, window - 1, window, window + 1, window + 17, 2 * window - 1, 2 * window,
                         2 * window + 101])
    return torch.stack((inside, past)).to(device)


def _tolerance(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Per element of ``[B, T, H, D]`` outputs: the model's own float32 rounding (its angle is
    ``fp32(pos * inv_freq)``, then fp32 cos/sin and multiply-adds), with a factor 8 of margin."""
    largest_angle = positions.double()[..., None, None] * inv_freq.double().abs().max()
    scale = x.double().abs().amax(-1, keepdim=True)
    return 8 * scale * (largest_angle * _EPS32 + 4 * _EPS32) + 1e-30


def probe_rotary_function(fn, rotary: nn.Module, layer_type: str | None, inv_freq: torch.Tensor,
                          head_dim: int, window: int) -> RotarySpec:
    """The pairing with which ``apply_rope`` reproduces ``fn`` on the model's own cos/sin.

    Probes q ``[2, 3, 8, D]`` and k ``[2, 2, 8, D]`` (HF layout, and ``[B, T, H, D]`` with
    ``unsqueeze_dim=2`` when the function takes it) at positions inside and past ``window``, for
    ``D`` = the rotary dims and, with partial rotary, the head dim. Raises :class:`NotServed`
    with the error of every pairing when none reproduces it.
    """
    tensors, has_unsqueeze = rotary_function_parameters(fn)
    device = inv_freq.device
    positions = _probe_positions(window, device)
    scale = attention_scaling(rotary, layer_type)  # the factor on the model's own cos/sin (YaRN)
    try:
        cos, sin = call_rotary(rotary, layer_type, positions)
    except Exception as err:  # noqa: BLE001 - any failure of the model's code means "not served"
        raise NotServed(f"calling {type(rotary).__name__} on probe positions failed: {err}") from err
    rotary_dim = 2 * inv_freq.numel()
    generator = torch.Generator().manual_seed(0)
    errors = {name: 0.0 for name in PAIRINGS}
    dims = sorted({rotary_dim, head_dim}) if head_dim >= rotary_dim else [rotary_dim]
    layouts = [1, 2] if has_unsqueeze else [1]
    for dim in dims:
        for unsqueeze_dim in layouts:
            q = torch.randn(2, 3, 8, dim, generator=generator).to(device)
            k = torch.randn(2, 2, 8, dim, generator=generator).to(device)
            if unsqueeze_dim == 2:
                q, k = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
            args = (q, k)[: len(tensors)]
            kwargs = {"unsqueeze_dim": unsqueeze_dim} if has_unsqueeze else {}
            try:
                with torch.no_grad():
                    result = fn(*args, cos, sin, **kwargs)
            except Exception as err:  # noqa: BLE001
                if dim != rotary_dim:
                    continue  # takes exactly the rotary dims (the attention slices them off first)
                raise NotServed(f"{fn.__name__} failed on probe tensors: "
                                f"{type(err).__name__}: {err}") from err
            outputs = result if isinstance(result, (tuple, list)) else (result,)
            for name, (il, ol) in PAIRINGS.items():
                worst = 0.0
                for x, out in zip(args, outputs):
                    x4 = x.transpose(1, 2) if unsqueeze_dim == 1 else x
                    ours, _ = apply_rope(x4, None, inv_freq, positions, interleaved=il, output_interleaved=ol,
                                         backend="torch", scale=scale)
                    theirs = out.transpose(1, 2) if unsqueeze_dim == 1 else out
                    if theirs.shape != ours.shape:
                        worst = float("inf")
                        break
                    excess = (theirs.double() - ours.double()).abs() / _tolerance(x4, positions, inv_freq)
                    worst = max(worst, float(excess.max()))
                errors[name] = max(errors[name], worst)
    matched = [name for name, err in errors.items() if err <= 1.0]
    if not matched:
        detail = ", ".join(f"{name} {err:.3g}x" for name, err in errors.items())
        reason = f" times its attention_scaling {scale:g}" if scale != 1.0 else ""
        raise NotServed(
            f"{fn.__name__} is not a rotation by the model's table{reason} that apply_rope reproduces: "
            f"largest error over the float32 rounding bound, per pairing: {detail}"
        )
    return RotarySpec(fn.__name__, matched[0], rotary_dim)

"""Argument checks shared by the ops: flags, scales, positions in every layout users pass, overlap."""

from __future__ import annotations

import numbers

import numpy as np
import torch

from ..errors import InvalidType, InvalidValue

MAX_POSITION = (1 << 63) - 1
INT_DTYPES = (torch.int32, torch.int64)
_FLOAT32 = torch.finfo(torch.float32)


def check_flag(name: str, value) -> bool:
    """A real bool (numpy's too); ``inplace=1`` or ``interleaved="no"`` are refused, not read as truthy."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InvalidType(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """A Python or numpy integer (not bool, not float) within ``[minimum, maximum]``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise InvalidType(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise InvalidValue(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InvalidValue(f"{name} must be <= {maximum}, got {value}")
    return value


def check_scale(name: str, value) -> float:
    """A finite positive Python or numpy real (not bool, not a tensor) in float32's normal range, as the
    kernels take it; returned as a Python float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InvalidType(f"{name} must be a positive real number (a Python or numpy float), got "
                          f"{type(value).__name__} {value!r}")
    if not _FLOAT32.tiny <= value <= _FLOAT32.max:  # false for nan and inf too
        raise InvalidValue(f"{name} must be a finite positive number (within float32's normal range, "
                           f"{_FLOAT32.tiny:.3g} .. {_FLOAT32.max:.3g}), got {value!r}")
    return float(value)


MAX_ATTENTION_FACTOR = float(_FLOAT32.max) ** 0.5  # its square, the factor on logits, fits float32


def check_attention_factor(name: str, value) -> float:
    """An attention factor (on cos and sin, so on each of q and k): a finite positive real whose square,
    the factor on the attention logits, fits float32 (at most ~1.8e19); past that every logit overflows
    and the perplexity is not a number."""
    value = check_scale(name, value)
    if value > MAX_ATTENTION_FACTOR:
        raise InvalidValue(f"{name} must be at most {MAX_ATTENTION_FACTOR:.3g} (its square multiplies the "
                           f"attention logits and must fit float32), got {value!r}")
    return value


def _offsets_tensor(offsets, count: int, what: str, device, last: int, validate: bool) -> torch.Tensor:
    """``[count]`` or ``[1]`` int64 start positions from an int, a sequence of ints or an integer tensor."""
    if isinstance(offsets, (list, tuple)):
        values = [check_int("offsets", o, 0, MAX_POSITION - last) for o in offsets]
        offsets = torch.tensor(values, dtype=torch.int64, device=device)
    if isinstance(offsets, torch.Tensor):
        if offsets.dtype not in INT_DTYPES:
            raise InvalidType(f"offsets must be an int or an int32/int64 tensor, got {offsets.dtype}")
        off = offsets.to(device, torch.int64).reshape(-1)
        if off.numel() not in (1, count):
            raise InvalidValue(f"offsets must be a scalar or {what}, got {off.numel()} values")
        if validate and not torch.compiler.is_compiling() and off.numel():
            if bool((off < 0).any()) or bool((off > MAX_POSITION - last).any()):
                raise InvalidValue(f"offsets must be in [0, 2**63 - {last + 1}] (positions are below 2**63)")
        return off
    start = check_int("offsets", offsets, 0, MAX_POSITION - last)
    return torch.tensor([start], dtype=torch.int64, device=device)


def positions_for(device: torch.device, B: int, T: int, positions, offsets, cu_seqlens,
                  validate: bool) -> torch.Tensor:
    """``[B, T]`` int64 positions on ``device`` (varlen: ``B = 1``, ``T = total_tokens``).

    Accepted ``positions``: None (``0 .. T-1``, plus ``offsets``); an int start; an int32/int64
    tensor that broadcasts to ``[B, T]``: ``[T]``, ``[1, T]``, ``[B, T]``; or ``[B, 1]``, read as
    each sequence's start (``p_b .. p_b + T - 1``; with ``T = 1`` that is the broadcast too).
    Varlen: ``[total_tokens]`` or ``[1, total_tokens]``, or None for per-sequence ``0 ..``.
    """
    if positions is not None and offsets is not None:
        raise InvalidValue("give positions or offsets, not both (offsets only shift the default 0 .. T-1)")
    if cu_seqlens is not None:
        return _varlen_positions(device, T, positions, offsets, cu_seqlens, validate)
    if positions is None:
        base = torch.arange(T, device=device, dtype=torch.int64)
        if offsets is None:
            return base.expand(B, T)
        off = _offsets_tensor(offsets, B, f"[B]={B} values", device, T - 1, validate)
        return (base + off.reshape(-1, 1)).expand(B, T)
    if not isinstance(positions, torch.Tensor):
        start = check_int("positions", positions, 0, MAX_POSITION - max(T - 1, 0))
        return (torch.arange(T, device=device, dtype=torch.int64) + start).expand(B, T)
    pos = _check_position_tensor(positions, device)
    if pos.dim() == 1 and pos.shape[0] == T:
        pos = pos.expand(B, T)
    elif pos.dim() == 2 and pos.shape == (1, T):
        pos = pos.expand(B, T)
    elif pos.dim() == 2 and pos.shape == (B, 1) and T > 1:
        _check_starts(pos, T - 1, validate)
        pos = pos + torch.arange(T, device=device, dtype=pos.dtype)
    elif pos.dim() != 2 or pos.shape != (B, T):
        raise InvalidValue(
            f"positions must broadcast to [B, T]=({B}, {T}): [T], [1, T], [B, T], or [B, 1] (start per "
            f"sequence); got {tuple(pos.shape)}"
        )
    _check_non_negative(pos, validate)
    return pos


def _check_position_tensor(positions: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The tensor as int64 (one kernel variant for every caller's dtype)."""
    if positions.dtype not in INT_DTYPES:
        raise InvalidType(f"positions must be int32 or int64, got {positions.dtype}")
    if positions.device != device:
        raise InvalidValue(f"positions must be on the inputs' device {device}, got {positions.device}")
    return positions.to(torch.int64)


def _check_starts(starts: torch.Tensor, last: int, validate: bool) -> None:
    """``[B, 1]`` starts whose sequences ``start .. start + last`` stay in ``[0, 2**63)``."""
    if validate and not torch.compiler.is_compiling() and starts.numel():
        if bool((starts < 0).any()):
            raise InvalidValue("positions must be non-negative")
        if bool((starts > MAX_POSITION - last).any()):
            raise InvalidValue(f"[B, 1] positions are each sequence's start, and start + T - 1 must stay "
                               f"below 2**63: starts must be <= 2**63 - {last + 1}, got {int(starts.max())}")


def _check_non_negative(pos: torch.Tensor, validate: bool) -> None:
    if validate and not torch.compiler.is_compiling() and pos.numel() and bool((pos < 0).any()):
        raise InvalidValue("positions must be non-negative")


def _varlen_positions(device, total: int, positions, offsets, cu_seqlens, validate) -> torch.Tensor:
    if (not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1
            or cu_seqlens.dtype not in INT_DTYPES):
        raise InvalidType("cu_seqlens must be a 1-D int32/int64 tensor [n_seqs + 1]")
    if cu_seqlens.numel() < 1:
        raise InvalidValue("cu_seqlens must hold at least one value (0 for no sequences)")
    cu = cu_seqlens.to(device, torch.int64)
    lengths = cu[1:] - cu[:-1]
    if validate and not torch.compiler.is_compiling():
        if int(cu[0]) != 0 or int(cu[-1]) != total or bool((lengths < 0).any()):
            raise InvalidValue(f"cu_seqlens must rise from 0 to total_tokens={total}, "
                               f"got {cu_seqlens.tolist()[:8]}")
    if positions is not None:
        if not isinstance(positions, torch.Tensor):
            raise InvalidType("with cu_seqlens, positions must be a [total_tokens] int tensor "
                              "(or use offsets)")
        pos = _check_position_tensor(positions, device)
        if pos.shape not in ((total,), (1, total)):
            raise InvalidValue(f"with cu_seqlens, positions must be [total_tokens]={total}, "
                               f"got {tuple(pos.shape)}")
        _check_non_negative(pos, validate)
        return pos.reshape(1, total)
    starts = torch.repeat_interleave(cu[:-1], lengths, output_size=total)
    pos = torch.arange(total, device=device) - starts
    if offsets is not None:
        longest = (int(lengths.max()) if lengths.numel() and validate and not torch.compiler.is_compiling()
                   else 0)
        off = _offsets_tensor(offsets, lengths.numel(), f"[n_seqs]={lengths.numel()} values", device,
                              max(longest - 1, 0), validate)
        pos = pos + (torch.repeat_interleave(off, lengths, output_size=total) if off.numel() > 1 else off)
    return pos.reshape(1, total)


_MAX_RUNS = 1 << 24


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """``[first, last)`` element offsets in the storage the tensor can touch."""
    start = t.storage_offset()
    span = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if size > 0)
    return start, start + span + 1


def _runs(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sorted storage offsets where the tensor's contiguous runs start, and the run length."""
    shape, strides = list(t.shape), list(t.stride())
    length = 1
    if shape and strides[-1] == 1:
        length = shape.pop()
        strides.pop()
    offsets = torch.full((), t.storage_offset(), dtype=torch.int64, device=t.device)
    for size, stride in zip(shape, strides):
        offsets = (offsets[..., None] + torch.arange(size, device=t.device) * stride)
    return offsets.reshape(-1).sort().values, length


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when two tensors share an element of memory. Exact for views of one storage (packed
    q|k|v, say) up to 2**24 contiguous runs each; larger interleaved views count as overlapping."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device or a.element_size() != b.element_size():
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    (a0, a1), (b0, b1) = _extent(a), _extent(b)
    if not (a0 < b1 and b0 < a1):
        return False
    if a.numel() // max(a.shape[-1], 1) > _MAX_RUNS or b.numel() // max(b.shape[-1], 1) > _MAX_RUNS:
        return True
    starts_a, length_a = _runs(a)
    starts_b, length_b = _runs(b)
    # a run [s, s + La) meets a run of b iff b starts in [s - Lb + 1, s + La - 1]
    index = torch.searchsorted(starts_b, starts_a - length_b + 1).clamp(max=starts_b.numel() - 1)
    return bool((starts_b[index] <= starts_a + length_a - 1)
                .logical_and(starts_b[index] >= starts_a - length_b + 1).any())


def has_distinct_elements(t: torch.Tensor) -> bool:
    """True when no two elements of ``t`` share memory (checked on strides: each dim, ordered by
    stride, must step past everything the smaller dims span)."""
    span = 0
    for size, stride in sorted(((n, s) for n, s in zip(t.shape, t.stride()) if n > 1), key=lambda d: d[1]):
        if stride <= span:
            return False
        span += (size - 1) * stride
    return True


def check_writable(name: str, t: torch.Tensor) -> None:
    """``t`` can be written in place element by element: no element shares memory with another."""
    if t.numel() and not has_distinct_elements(t):
        raise InvalidValue(
            f"inplace=True: {name} has overlapping elements (an expanded or overlapping view); writing it "
            "would rotate shared memory more than once. Use inplace=False or pass a tensor with distinct "
            "elements."
        )

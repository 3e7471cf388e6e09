"""apply_rope: rotary embedding with a per-pair frequency table and exact angles.

Registered as ``torch.ops.dprope.rope`` (out-of-place, with autograd) and ``torch.ops.dprope.rope_``
(in-place), so ``torch.compile(fullgraph=True)`` traces through them. The backward of a rotation
is the same kernel rotating by the negated angle, with the input and output pairings swapped.
An attention factor ``scale`` (YaRN's temperature) multiplies cos and sin, so the rotated dims come out
scaled (the pass-through dims do not) and the backward scales the gradient by it too.
"""

from __future__ import annotations

import torch

from .. import phase
from ..backends import choose_backend
from ..errors import InvalidType, InvalidValue, Unsupported
from .checks import check_flag, check_int, check_scale, check_writable, overlaps, positions_for
from .tables import table_phases

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# the torch reference works on this many (token x head x pair) elements at a time, so its float64
# temporaries stay near 50 MiB whatever the input size
_TORCH_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------


def _pair_index(half: int, interleaved: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    o = torch.arange(half, device=device)
    return (2 * o, 2 * o + 1) if interleaved else (o, o + half)


def rope_torch(x: torch.Tensor, out: torch.Tensor, phases: torch.Tensor, positions: torch.Tensor,
               in_interleaved: bool, out_interleaved: bool, conjugate: bool, scale: float = 1.0) -> None:
    """Reference: float64 angles from the exact turn, float64 math, cos and sin times ``scale``.
    x, out ``[B, T, H, D]``.

    Works through the tokens in chunks, so the float64 temporaries are bounded (~50 MiB)."""
    B, T, H, _ = x.shape
    half = phases.numel()
    if B * T * H == 0:
        return
    d1_in, d2_in = _pair_index(half, in_interleaved, x.device)
    d1_out, d2_out = _pair_index(half, out_interleaved, x.device)
    step = max(1, _TORCH_CHUNK // max(1, B * H * half))
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        turn = positions[:, t0:t1].to(torch.int64)[..., None] * phases  # [B, t, half], wraps mod 2**64
        angle = phase.turn_to_radians(turn)[:, :, None, :]
        cos, sin = angle.cos(), angle.sin()
        if scale != 1.0:
            cos, sin = cos.mul_(scale), sin.mul_(scale)
        if conjugate:
            sin = sin.neg_()
        xs = x[:, t0:t1]
        x1, x2 = xs[..., d1_in].to(torch.float64), xs[..., d2_in].to(torch.float64)
        y1 = x1 * cos - x2 * sin
        y2 = x2.mul_(cos).addcmul_(x1, sin)
        out[:, t0:t1, :, d1_out] = y1.to(out.dtype)
        out[:, t0:t1, :, d2_out] = y2.to(out.dtype)


def _launch(backend: str, q, k, out_q, out_k, phases, positions, in_interleaved, out_interleaved, conjugate,
            scale: float = 1.0) -> None:
    # kernels index positions by (sequence, token): anything else reads past them
    if positions.shape != q.shape[:2]:
        raise InvalidValue(f"positions must be [B, T]={tuple(q.shape[:2])}, got {tuple(positions.shape)}")
    rotary_dim = 2 * phases.numel()
    if backend == "torch":
        rope_torch(q, out_q, phases, positions, in_interleaved, out_interleaved, conjugate, scale)
        rope_torch(k, out_k, phases, positions, in_interleaved, out_interleaved, conjugate, scale)
    elif backend == "triton":
        from ..triton.rope import rope_triton

        rope_triton(q, k, out_q, out_k, phases, positions, in_interleaved, out_interleaved, conjugate, scale)
    elif backend == "cuda":
        from ..cuda import extension

        extension().rope(q, k, out_q, out_k, phases, positions, in_interleaved, out_interleaved, conjugate,
                         scale)
    else:
        raise InvalidValue(f"unknown backend {backend!r}")
    for x, out in ((q, out_q), (k, out_k)):
        if rotary_dim < x.shape[-1] and out.data_ptr() != x.data_ptr():
            out[..., rotary_dim:] = x[..., rotary_dim:]


# ---------------------------------------------------------------------------------------------
# torch.library registration
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("dprope::rope", mutates_args=())
def rope_op(q: torch.Tensor, k: torch.Tensor, phases: torch.Tensor, positions: torch.Tensor,
            in_interleaved: bool, out_interleaved: bool, conjugate: bool, backend: str, scale: float = 1.0
            ) -> tuple[torch.Tensor, torch.Tensor]:
    out_q = torch.empty_like(q)
    out_k = torch.empty_like(k)
    _launch(backend, q, k, out_q, out_k, phases, positions, in_interleaved, out_interleaved, conjugate, scale)
    return out_q, out_k


@rope_op.register_fake
def _rope_fake(q, k, phases, positions, in_interleaved, out_interleaved, conjugate, backend, scale=1.0):
    return torch.empty_like(q), torch.empty_like(k)


def _rope_setup_context(ctx, inputs, output):
    _, _, phases, positions, in_interleaved, out_interleaved, conjugate, backend, scale = inputs
    ctx.save_for_backward(phases, positions)
    ctx.pairings, ctx.conjugate = (in_interleaved, out_interleaved), conjugate
    ctx.backend, ctx.scale = backend, scale


def _rope_backward(ctx, grad_q, grad_k):
    phases, positions = ctx.saved_tensors
    in_interleaved, out_interleaved = ctx.pairings
    dq, dk = rope_op(grad_q, grad_k, phases, positions, out_interleaved, in_interleaved, not ctx.conjugate,
                     ctx.backend, ctx.scale)
    return dq, dk, None, None, None, None, None, None, None


rope_op.register_autograd(_rope_backward, setup_context=_rope_setup_context)


@torch.library.custom_op("dprope::rope_", mutates_args=("q", "k"))
def rope_inplace_op(q: torch.Tensor, k: torch.Tensor, phases: torch.Tensor, positions: torch.Tensor,
                    interleaved: bool, conjugate: bool, backend: str, scale: float = 1.0) -> None:
    # one pairing in and out: every backend reads an element before writing it, so out may alias the input
    _launch(backend, q, k, q, k, phases, positions, interleaved, interleaved, conjugate, scale)


@rope_inplace_op.register_fake
def _rope_inplace_fake(q, k, phases, positions, interleaved, conjugate, backend, scale=1.0):
    return None


# ---------------------------------------------------------------------------------------------
# argument checks and the public function
# ---------------------------------------------------------------------------------------------


def _check_qk(q: torch.Tensor, k: torch.Tensor | None, varlen: bool) -> None:
    if not isinstance(q, torch.Tensor):
        raise InvalidType(f"q must be a torch.Tensor, got {type(q).__name__}")
    rank, layout = (3, "[total_tokens, H, D]") if varlen else (4, "[B, T, H, D]")
    for name, x in (("q", q), ("k", k)):
        if x is None:
            continue
        if not isinstance(x, torch.Tensor):
            raise InvalidType(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != rank:
            raise InvalidValue(f"{name} must be {layout}, got shape {tuple(x.shape)}")
        if x.dtype not in _FLOAT_DTYPES:
            raise InvalidType(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
        if x.shape[-1] % 2:
            raise InvalidValue(f"{name}'s head dim must be even, got {x.shape[-1]}")
    if k is not None:
        if k.device != q.device:
            raise InvalidValue(f"q and k must be on one device, got {q.device} and {k.device}")
        if k.dtype != q.dtype:
            raise InvalidType(f"q and k must share a dtype, got {q.dtype} and {k.dtype}")
        if k.shape[:-2] != q.shape[:-2] or k.shape[-1] != q.shape[-1]:
            raise InvalidValue(
                f"k must match q in every dim but heads: q {tuple(q.shape)}, k {tuple(k.shape)}"
            )


def _check_inplace(q: torch.Tensor, k: torch.Tensor | None, interleaved: bool,
                   output_interleaved: bool) -> None:
    if torch.is_grad_enabled() and (q.requires_grad or (k is not None and k.requires_grad)):
        raise Unsupported("inplace=True does not record autograd; use inplace=False for training")
    if output_interleaved != interleaved:
        raise InvalidValue("inplace=True needs one pairing in and out (output_interleaved == interleaved)")
    check_writable("q", q)
    if k is not None:
        check_writable("k", k)
        if overlaps(q, k):
            raise InvalidValue("inplace=True: q and k share memory (the same tensor or overlapping views); "
                               "each element would be rotated twice. Pass separate tensors or use "
                               "inplace=False.")


def apply_rope(
    q: torch.Tensor,
    k: torch.Tensor | None,
    inv_freq,
    positions=None,
    *,
    interleaved: bool = False,
    output_interleaved: bool | None = None,
    rotary_dim: int | None = None,
    inplace: bool = False,
    backend: str = "auto",
    offsets=None,
    cu_seqlens: torch.Tensor | None = None,
    validate: bool = True,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate q and k by exact RoPE angles from a per-pair frequency table.

    Args:
        q: ``[B, T, Hq, D]`` (any strides: HF's ``[B, H, T, D]`` as ``q.transpose(1, 2)``,
            Megatron's ``[T, B, H, D]`` as ``q.transpose(0, 1)``), or ``[total_tokens, Hq, D]``
            with ``cu_seqlens``. float16 / bfloat16 / float32 (float64 on the torch backend);
            math in float32 (float64 on torch).
        k: like q with ``Hk`` heads (GQA), or None.
        inv_freq: ``[rotary_dim // 2]`` real table (e.g. ``RopePlan.inv_freq``), radians/position;
            or int64 fixed-point phases (``dprope_kernels.phase_tensor``), which skip host work.
        positions: None (``0 .. T-1``), an int start, or an int32/int64 tensor that broadcasts to
            ``[B, T]``: ``[T]``, ``[1, T]`` (HF's default ``position_ids``), ``[B, T]``; ``[B, 1]``
            is each sequence's start (``p_b .. p_b + T - 1``; at ``T = 1``, a decode step, the
            same as broadcasting). Varlen: ``[total_tokens]``. Non-negative, below 2**63.
        interleaved: GPT-J pairing ``(2i, 2i+1)``; default NeoX / HF Llama ``(i, i + rotary_dim/2)``.
        output_interleaved: the pairing the rotated pairs are written in; default ``interleaved``.
            ``interleaved=True, output_interleaved=False`` is DeepSeek-V3's
            ``apply_rotary_pos_emb_interleave`` (GPT-J pairs in, NeoX halves out).
        rotary_dim: dims rotated (even, <= D); the rest pass through. Default ``2 * len(inv_freq)``.
        inplace: write into q and k (no autograd; q and k must not share memory); otherwise they
            are never written.
        backend: ``"auto"``, ``"torch"``, ``"triton"`` or ``"cuda"``.
        offsets: int or ``[B]`` (varlen: ``[n_seqs]``) start positions; only when ``positions`` is None.
        cu_seqlens: ``[n_seqs + 1]`` int32/int64 cumulative lengths for the varlen layout.
        validate: check positions and offsets (a device sync on CUDA; off under compile).
        scale: the attention factor (YaRN's ``0.1 * ln(s) + 1``): cos and sin are multiplied by it,
            so the rotated dims are ``scale * rotate(x)`` and the pass-through dims stay as they are
            (as transformers' ``apply_rotary_pos_emb`` with scaled cos/sin). A finite positive real;
            1.0 leaves the results bit for bit as without it.

    Angles: each frequency is held as ``round(inv_freq / 2pi * 2**64)`` turns / 2**64, so the
    angle at position ``m`` is off the true ``m * inv_freq`` by at most ``m * 2pi * 2**-65`` radians
    (1.7e-19 rad per unit of position: 1.9e-7 rad at 2**40) plus the float32 sin/cos evaluation
    (< 2.5e-7 absolute; the torch backend evaluates in float64).

    Returns:
        ``(q_rotated, k_rotated)``, same shapes and dtypes; ``k_rotated`` is None when k is.
    """
    scale = check_scale("scale", scale)
    varlen = cu_seqlens is not None
    _check_qk(q, k, varlen)
    interleaved = check_flag("interleaved", interleaved)
    output_interleaved = interleaved if output_interleaved is None else check_flag("output_interleaved",
                                                                                   output_interleaved)
    inplace = check_flag("inplace", inplace)
    validate = check_flag("validate", validate)
    head_dim = q.shape[-1]
    phases = table_phases(inv_freq, q.device)
    half = phases.numel()
    if rotary_dim is None:
        if 2 * half > head_dim:
            raise InvalidValue(f"inv_freq has {half} frequencies ({2 * half} rotary dims), more than the "
                               f"head dim {head_dim} of q: a table for a larger head")
        rotary_dim = 2 * half
    rotary_dim = check_int("rotary_dim", rotary_dim)
    if rotary_dim % 2 or not 0 < rotary_dim <= head_dim:
        raise InvalidValue(f"rotary_dim must be even and in (0, head_dim={head_dim}], got {rotary_dim}")
    if rotary_dim != 2 * half:
        raise InvalidValue(
            f"inv_freq has {half} frequencies but rotary_dim is {rotary_dim} (needs rotary_dim // 2)"
        )
    B, T = (1, q.shape[0]) if varlen else q.shape[:2]
    pos = positions_for(q.device, B, T, positions, offsets, cu_seqlens, validate)
    name = choose_backend(backend, q.device, op="rope")
    if q.dtype == torch.float64 and name != "torch":
        raise InvalidType(f"float64 inputs run on the torch backend only, not {name!r}")

    k_given = k is not None
    q4 = q.unsqueeze(0) if varlen else q
    k4 = (k.unsqueeze(0) if varlen else k) if k_given else q4.new_empty(q4.shape[:2] + (0, head_dim))
    if inplace:
        _check_inplace(q, k, interleaved, output_interleaved)
        torch.ops.dprope.rope_(q4, k4, phases, pos, interleaved, False, name, scale)
        return q, k
    out_q, out_k = torch.ops.dprope.rope(q4, k4, phases, pos, interleaved, output_interleaved, False, name,
                                         scale)
    if varlen:
        out_q, out_k = out_q.squeeze(0), out_k.squeeze(0)
    return out_q, (out_k if k_given else None)

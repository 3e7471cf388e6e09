"""Context parallelism: split a sequence across ranks and give each shard its global positions.

RoPE needs nothing else to scale out: each rank rotates its tokens at their global positions, so
a split sequence rotates exactly as the whole one (the ops are ordinary autograd ops, so DDP and
FSDP need no special code either).
"""

from __future__ import annotations

import torch

from .errors import InvalidType, InvalidValue


def context_parallel_positions(seq_len: int, rank: int, world_size: int, *, load_balanced: bool = True,
                               device=None) -> torch.Tensor:
    """Global positions ``[seq_len // world_size]`` (int64) of the tokens ``rank`` holds.

    ``load_balanced=False``: rank r holds the r-th contiguous chunk. ``True`` (the zigzag split ring
    attention uses for causal masks): the sequence is cut into ``2 * world_size`` chunks and rank r
    holds chunks r and ``2 * world_size - 1 - r``, so every rank gets equal causal work.
    """
    for name, value in (("seq_len", seq_len), ("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidType(f"{name} must be an int, got {type(value).__name__}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise InvalidValue(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    chunks = 2 * world_size if load_balanced else world_size
    if seq_len % chunks:
        raise InvalidValue(f"seq_len={seq_len} must be divisible by {chunks} for this split")
    size = seq_len // chunks
    starts = [rank * size, (2 * world_size - 1 - rank) * size] if load_balanced else [rank * size]
    return torch.cat([torch.arange(s, s + size, device=device) for s in starts])


def context_parallel_shard(x: torch.Tensor, rank: int, world_size: int, *, dim: int = 1,
                           load_balanced: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``rank``'s shard of ``x`` along ``dim`` (the sequence dim) and the shard's global positions.

    Args:
        x: e.g. ``[B, T, ...]`` input ids or hidden states; ``T`` divisible by ``world_size``
            (``2 * world_size`` when load-balanced).

    Returns:
        ``(x_local [B, T // world_size, ...], positions [T // world_size] int64)``: pass the
        positions to :func:`dprope_kernels.apply_rope` (or as HF ``position_ids``).
    """
    positions = context_parallel_positions(x.shape[dim], rank, world_size, load_balanced=load_balanced,
                                           device=x.device)
    return x.index_select(dim, positions), positions

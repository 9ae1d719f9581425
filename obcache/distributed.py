"""Head-adaptive and model-wide selection under tensor parallelism.

A model sharded over TP ranks holds H_kv / TP KV heads per rank. Per-head
budgets (`select`) need nothing extra. AdaKV's layer-wide top-k
(`select_adaptive`) compares heads with each other, so ranks must agree on
one selection: `select_adaptive_tp` all-gathers the ranks' token scores
([B, H_local, N] float32 each: 4 bytes per token and head, never the
caches, which are 2 * D * element size bytes per token and head), runs the
same selection kernel on every rank over all heads and keeps the rank's own
heads. Because every rank runs the single-process kernel on the same data,
the kept sets are bit for bit those of one process holding all heads, ties
and NaN included. `laprox_select_tp` does the same for LaProx's one top-K
over every layer and head of the model (one all-gather of all layers'
scores at once).
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from obcache.policies.laprox import laprox_select

__all__ = ["select_adaptive_tp", "laprox_select_tp"]


def _all_heads(scores: torch.Tensor, group) -> torch.Tensor:
    """[..., H_local, N] of every rank -> [..., H_local * world, N] in global
    head order (rank r holds heads r * H_local .. (r + 1) * H_local - 1)."""
    parts = [torch.empty_like(scores) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, scores.contiguous(), group=group)
    return torch.cat(parts, -2)


def _own_heads(idx: torch.Tensor, lengths: torch.Tensor, rank: int, h: int):
    """This rank's heads of a selection over all heads, indices trimmed to
    their longest kept length."""
    lengths = lengths[:, rank * h : (rank + 1) * h].contiguous()
    L = int(lengths.max()) if lengths.numel() else 0
    return idx[:, rank * h : (rank + 1) * h, :L].contiguous(), lengths


def select_adaptive_tp(
    scores: torch.Tensor,
    total_budget: int,
    *,
    floor: float = 0.2,
    sink: int = 0,
    recent: int = 0,
    pool_kernel: int = 0,
    pool: str = "max",
    group: Optional[dist.ProcessGroup] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """AdaKV selection of one layer whose heads are split over the ranks of `group`.

    Args:
        scores: [B, H_local, N] this rank's heads; every rank holds the same
            number of heads, rank r holding heads r*H_local .. (r+1)*H_local-1.
        total_budget: tokens kept per batch row over ALL heads of the layer
            (all ranks together), as for `obcache.select_adaptive`.
        floor, sink, recent, pool_kernel, pool: as for `obcache.select_adaptive`.

    Returns:
        (indices [B, H_local, L] int64, ascending per head and padded with -1
        past each head's length, lengths [B, H_local] int64) for this rank's
        heads; L is the longest kept length among this rank's heads.
    """
    if scores.dim() != 3:
        raise ValueError(f"scores must be [B, H_local, N], got shape {tuple(scores.shape)}")
    idx, lengths = torch.ops.obcache.select_adaptive(
        _all_heads(scores, group), total_budget, floor=floor, sink=sink, recent=recent, pool_kernel=pool_kernel,
        pool=pool,
    )
    return _own_heads(idx, lengths, dist.get_rank(group), scores.shape[1])


def laprox_select_tp(
    scores: Sequence[torch.Tensor],
    budget: int,
    *,
    sink: int = 0,
    recent: int = 0,
    pool_kernel: int = 7,
    pool: str = "avg",
    group: Optional[dist.ProcessGroup] = None,
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """LaProx's model-wide selection when the heads are split over the ranks.

    Args:
        scores: per layer [B, H_local, N], this rank's heads (same layout on
            every rank, as for `select_adaptive_tp`).
        budget, sink, recent, pool_kernel, pool: as for
            `obcache.policies.laprox_select` (budget per KV head on average,
            over ALL heads of the model).

    Returns:
        per layer (indices [B, H_local, L] int64 padded with -1, lengths
        [B, H_local] int64) for this rank's heads: exactly what
        `laprox_select` keeps in one process holding every head. A layer's
        normalisation needs its total over all heads, so every rank gathers
        every layer's scores (one collective) and runs the same selection.
    """
    if not scores or any(s.dim() != 3 for s in scores):
        raise ValueError(f"scores must be a non-empty list of [B, H_local, N], got "
                         f"{[tuple(s.shape) for s in scores]}")
    full = _all_heads(torch.stack(list(scores), 1), group)  # [B, layers, H, N]
    h, rank = scores[0].shape[1], dist.get_rank(group)
    picked = laprox_select([t.contiguous() for t in full.unbind(1)], budget, sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool)
    return [_own_heads(idx, lengths, rank, h) for idx, lengths in picked]

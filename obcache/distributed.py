"""Head-adaptive selection under tensor parallelism.

A model sharded over TP ranks holds H_kv / TP KV heads per rank. Per-head
budgets (`select`) need nothing extra. AdaKV's layer-wide top-k
(`select_adaptive`) compares heads with each other, so ranks must agree on
one selection: `select_adaptive_tp` all-gathers the ranks' token scores
([B, H_local, N] float32 each: 4 bytes per token and head, never the
caches, which are 2 * D * element size bytes per token and head), runs the
same selection kernel on every rank over all heads and keeps the rank's own
heads. Because every rank runs the single-process kernel on the same data,
the kept sets are bit for bit those of one process holding all heads, ties
and NaN included.
"""
from typing import Optional, Tuple

import torch
import torch.distributed as dist

__all__ = ["select_adaptive_tp"]


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
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    parts = [torch.empty_like(scores) for _ in range(world)]
    dist.all_gather(parts, scores.contiguous(), group=group)
    idx, lengths = torch.ops.obcache.select_adaptive(
        torch.cat(parts, 1), total_budget, floor=floor, sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool
    )
    h = scores.shape[1]
    lengths = lengths[:, rank * h : (rank + 1) * h].contiguous()
    L = int(lengths.max()) if lengths.numel() else 0
    return idx[:, rank * h : (rank + 1) * h, :L].contiguous(), lengths

"""torch.ops.obcache.evict: saliency + select + compact_ in one call."""
from typing import Optional, Tuple

import torch

from obcache.ops import fake_checks
from obcache.ops.saliency import GROUP_REDUCES, SCORES
from obcache.ops.select import check_not_bool

__all__ = ["evict"]


def evict(
    k: torch.Tensor,
    v: torch.Tensor,
    q_window: torch.Tensor,
    budget: int,
    *,
    score: str = "joint",
    sink: int = 0,
    recent: Optional[int] = None,
    pool_kernel: int = 7,
    pool: str = "max",
    group_reduce: str = "sum",
    scale: Optional[float] = None,
    start: Optional[torch.Tensor] = None,
    o: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Evicts all but `budget` tokens per KV head, in place.

    Scores the cache with `saliency(k, v, q_window, score)`, picks the tokens
    with `select(scores, budget, sink=sink, recent=recent, ...)` and moves them
    to the front of k and v with `compact_`. Every argument is validated
    before k or v is written. budget >= N keeps everything without moving data.

    Args:
        k, v: [B, H_kv, N, D] cache (float32, float16, bfloat16), modified in
            place; last dim contiguous (narrowed views of a static cache work).
        q_window: [B, H_q, W, D] queries of the last W tokens, H_q % H_kv == 0.
        budget: tokens kept per KV head.
        score: one of obcache.SCORES.
        recent: last tokens always kept; defaults to W.
        start: optional int64 [B] first valid position (left padding).
        o: optional [B, H_q, W, D] attention output of the window queries
            over this cache, when the caller has it (see `saliency`).

    Returns:
        (k[..., :n, :], v[..., :n, :], indices int64 [B, H_kv, n]) with
        n = min(budget, N): views of the compacted k and v, and the kept
        positions (ascending).
    """
    check_not_bool("budget", budget)
    idx = torch.ops.obcache.evict(
        k,
        v,
        q_window,
        budget,
        score=score,
        sink=sink,
        recent=recent,
        pool_kernel=pool_kernel,
        pool=pool,
        group_reduce=group_reduce,
        scale=scale,
        start=start,
        o=o,
    )
    n = idx.shape[-1]
    return k[..., :n, :], v[..., :n, :], idx


@torch.library.register_fake("obcache::evict")
def _evict_fake(k, v, q_window, budget, *, score="joint", sink=0, recent=None, pool_kernel=7, pool="max",
                group_reduce="sum", scale=None, start=None, o=None):
    fake_checks.one_of(score, "score", SCORES)
    fake_checks.one_of(group_reduce, "group_reduce", GROUP_REDUCES)
    fake_checks.cache_and_window(k, v, q_window, scale, o)
    B, H, N, _ = k.shape
    W = q_window.shape[2]
    note = "" if recent is not None else (f" (recent was not given, so it is W = {W}, the window's length; "
                                          "pass recent=0 to keep no recent tokens)")
    fake_checks.select_scalars(B, N, budget, sink, W if recent is None else recent, pool_kernel, pool, start,
                               k.device, note)
    return k.new_empty((B, H, min(budget, N)), dtype=torch.int64)

"""torch.ops.obcache.select / select_adaptive: which tokens to keep.

Specification: obcache.reference.select / select_adaptive (SnapKV-style policy
of shared/DESIGN.md section 4). Ranking: pooled scores (float64), NaN ranks
as -inf, ties go to the lower index (and, across heads, the lower head);
identical on CPU and CUDA.
"""
import math
from typing import Optional, Tuple

import torch

from obcache.ops import fake_checks

__all__ = ["select", "select_adaptive"]


def check_not_bool(name, value):
    """A bool is an int to Python and to torch.ops (True keeps one token): refused by name."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r} (a bool)")


def select(
    scores: torch.Tensor,
    budget: int,
    *,
    sink: int = 0,
    recent: int = 0,
    pool_kernel: int = 0,
    pool: str = "max",
    start: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Indices of the tokens to keep, per (batch, head), ascending.

    Args:
        scores: [B, H, N] floating (float32 or float64; other float dtypes are
            converted exactly to float32).
        budget: tokens kept per head. budget >= N keeps all; budget <= 0 or
            budget < sink + recent raises.
        sink: first tokens (from start[b]) always kept.
        recent: last tokens always kept.
        pool_kernel: 0 or 1 (no pooling) or odd; stride 1, same padding.
        pool: "max" (padding ignored) or "avg" (divides by pool_kernel).
        start: optional int64 [B], first valid position of each batch row (left
            padding), in [0, N]. Checked on CPU; on CUDA only with
            OBCACHE_DEBUG_CHECKS=1 (otherwise clamped to [0, N]).

    Returns:
        int64 [B, H, min(budget, N)], ascending along the last dim.
    """
    check_not_bool("budget", budget)
    return torch.ops.obcache.select(
        scores, budget, sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool, start=start
    )


def select_adaptive(
    scores: torch.Tensor,
    total_budget: int,
    *,
    floor: float = 0.2,
    sink: int = 0,
    recent: int = 0,
    pool_kernel: int = 0,
    pool: str = "max",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Head-adaptive (AdaKV) selection: one top-k over all heads of a layer.

    Each head first keeps f = max(sink + recent, int(floor * (total_budget // H)))
    tokens on its own; the other total_budget - H * f go to the best remaining
    candidates of any head (ties: lower head, then lower index).

    Args:
        scores: [B, H, N] floating.
        total_budget: tokens kept per batch row over all H heads.
        floor: in [0, 1], fraction of the even share every head keeps.

    Returns:
        (indices int64 [B, H, Lmax] ascending per head, padded with -1, where
        Lmax is the longest head; lengths int64 [B, H], summing to
        min(total_budget, H * N) per batch row).
    """
    check_not_bool("total_budget", total_budget)
    return torch.ops.obcache.select_adaptive(
        scores, total_budget, floor=floor, sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool
    )


@torch.library.register_fake("obcache::select")
def _select_fake(scores, budget, *, sink=0, recent=0, pool_kernel=0, pool="max", start=None):
    fake_checks.scores(scores)
    B, H, N = scores.shape
    fake_checks.select_scalars(B, N, budget, sink, recent, pool_kernel, pool, start, scores.device)
    return scores.new_empty((B, H, min(budget, N)), dtype=torch.int64)


@torch.library.register_fake("obcache::select_adaptive")
def _select_adaptive_fake(scores, total_budget, *, floor=0.2, sink=0, recent=0, pool_kernel=0, pool="max"):
    fake_checks.scores(scores)
    B, H, N = scores.shape
    fake_checks.pooling(pool_kernel, pool)
    fake_checks.sink_recent(sink, recent)
    torch._check(math.isfinite(floor) and 0.0 <= floor <= 1.0, lambda: f"floor must be in [0, 1], got {floor}")
    if all(isinstance(x, int) for x in (total_budget, H, N)) and H > 0 and total_budget < H * N:
        # The op's floor check (select_adaptive_impl), where the sizes are known.
        f = max(sink + recent, int(floor * (total_budget // H)))
        torch._check(f <= N and H * f <= total_budget,
                     lambda: f"total_budget={total_budget} cannot give each of {H} heads its floor of {f} tokens "
                     f"(floor={floor}, sink + recent = {sink + recent}, N = {N})")
    if total_budget >= H * N:
        lmax = N
    else:
        # The longest head depends on the scores.
        bound = {"max": N} if isinstance(N, int) else {}
        lmax = torch.library.get_ctx().new_dynamic_size(min=0, **bound)
    return (
        scores.new_empty((B, H, lmax), dtype=torch.int64),
        scores.new_empty((B, H), dtype=torch.int64),
    )

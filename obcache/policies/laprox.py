"""LaProx's global selection (shared/DESIGN.md section 3): one top-K over
every layer and KV head of the model.

Per layer the `laprox` saliency (per query head ||A_{g,:,p}||_2 over the
window queries times ||v_p W_o^g||_2, averaged over the group) is divided by
the layer's total (over its heads and tokens, per batch row), so that layers
compare; the scores are then pooled along tokens (LaProx: average, kernel 7)
and ONE top-K picks the kept tokens of all layers and heads at once
(K = budget * layers * H_kv per batch row). Every head keeps its first
`sink` and last `recent` tokens; heads and layers end with different numbers
of tokens. Dividing a layer's scores by their total makes the selection
independent of each layer's scale (multiplying one layer's scores by a
constant keeps the same tokens).

The top-K is `torch.ops.obcache.select_adaptive` over the layers' heads
stacked as [B, layers * H_kv, N] with floor 0: its floor is then exactly the
forced sink + recent tokens of each head, and its one top-k over all
"heads" is the global top-K (ties: lower layer, then head, then index).
"""
from typing import List, Sequence, Tuple

import torch

from obcache.policies.criticalkv import check_budget

__all__ = ["laprox_normalise", "laprox_select"]


def laprox_normalise(scores: torch.Tensor) -> torch.Tensor:
    """float64 [B, H, N]: scores divided by their total over heads and tokens
    (per batch row); an all-zero layer stays zero."""
    s = scores.to(torch.float64)
    total = s.sum((1, 2), keepdim=True)
    return s / torch.where(total == 0, torch.ones_like(total), total)


def laprox_select(scores: Sequence[torch.Tensor], budget: int, *, sink: int = 0, recent: int = 0,
                  pool_kernel: int = 7, pool: str = "avg") -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The tokens LaProx keeps in every layer.

    Args:
        scores: per layer [B, H_kv, N] saliency scores (same shape in every
            layer), e.g. torch.ops.obcache.saliency(..., "laprox",
            group_reduce="mean", wo=o_proj.weight).
        budget: tokens per KV head on average; the model keeps
            budget * layers * H_kv tokens per batch row (all of them when
            budget >= N).
        sink, recent: first and last tokens every head keeps.
        pool_kernel, pool: pooling of the normalised scores (LaProx: 7, "avg").

    Returns:
        per layer (indices int64 [B, H_kv, Lmax_l] ascending per head, padded
        with -1, Lmax_l the layer's longest head; lengths int64 [B, H_kv]).
        The lengths of all layers sum to budget * layers * H_kv per batch row.
    """
    if not scores:
        raise ValueError("scores must hold at least one layer")
    shape = scores[0].shape
    if any(s.shape != shape for s in scores) or len(shape) != 3:
        raise ValueError(f"every layer's scores must be [B, H_kv, N] of one shape, got "
                         f"{[tuple(s.shape) for s in scores]}")
    B, H, N = shape
    L = len(scores)
    check_budget(budget, sink, recent)
    stacked = torch.cat([laprox_normalise(s) for s in scores], 1)  # [B, L * H, N]
    idx, lengths = torch.ops.obcache.select_adaptive(stacked, budget * L * H, floor=0.0, sink=sink, recent=recent,
                                                     pool_kernel=pool_kernel, pool=pool)
    out = []
    for li in range(L):
        lens = lengths[:, li * H:(li + 1) * H].contiguous()
        out.append((idx[:, li * H:(li + 1) * H, : int(lens.max())].contiguous(), lens))
    return out

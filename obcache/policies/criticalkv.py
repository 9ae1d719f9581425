"""CriticalKV two-stage selection (shared/DESIGN.md section 3).

With budget b per (batch, KV head): stage 1 keeps the top floor(alpha * b)
tokens by the base score s (SnapKV's `attn` score); stage 2 fills the other
b - floor(alpha * b) places with the best remaining tokens by the critical
score (s + 1e-4) * mean over the group of ||v_p W_o^g||_1 (the `critical`
score of obcache.saliency).

Why two stages: for one query head with attention A and kept set S of
attention mass sigma = sum_{p in S} A_p, the output error of keeping S (and
renormalising its attention by 1 / sigma) obeys

    ||o - o_hat||_1 <= C - (2 - 1/sigma) * sum_{p in S} A_p ||v_p W_o||_1,
    C = sum_p A_p ||v_p W_o||_1,

so once sigma >= 0.5 the bound falls as the kept A ||v W_o||_1 grows, which
stage 2 maximises; stage 1 keeps the attention mass that makes sigma large.

Eviction (`criticalkv_keep`, used by obcache.hf for the `criticalkv` rows):
the SnapKV pipeline around the two stages. The first `sink` and last
`recent` tokens are always kept; both scores are pooled along tokens the way
`select` pools (over [0, N - recent), stride 1, same padding; max ignores
the padding, avg counts it) before either stage; the two stages then split
the remaining budget b - sink - recent (stage 1: floor(alpha * that)).
`adaptive_criticalkv_keep` does the same with one layer-wide budget (AdaKV).
"""
from typing import NamedTuple

import torch

from obcache.reference import pool_scores

__all__ = ["criticalkv_select", "output_error_bound", "critical_score", "criticalkv_keep",
           "adaptive_criticalkv_keep", "criticalkv_stage1", "adaptive_criticalkv_stage1", "stage2_picks",
           "kept_indices", "keep_all", "Stage1", "Stage1Sizes", "stage1_sizes", "stage1_plan", "pool_candidates",
           "padded_indices", "value_weighted", "CRITICAL_EPS"]

CRITICAL_EPS = 1e-4


def _top(scores, k, exclude=None):
    """bool mask of the k largest scores per row (ties to the lower index;
    NaN ranks with -inf, below every number), never an `exclude` (bool)
    entry: fewer than k where fewer remain. A top-k and a pass over the
    ties: no sort of the row."""
    s = torch.nan_to_num(scores.to(torch.float64), nan=float("-inf"))
    out = torch.zeros(s.shape, dtype=torch.bool, device=s.device)
    if k <= 0 or s.shape[-1] == 0:
        return out
    if exclude is not None:
        s = s.masked_fill(exclude, float("-inf"))
    kth = s.topk(min(k, s.shape[-1]), dim=-1, sorted=False).values.amin(-1, keepdim=True)
    above = s > kth
    ties = s == kth
    if exclude is not None:
        ties &= ~exclude
    # every score above the k-th is in; the ties fill what is left, lowest index first
    need = k - above.sum(-1, keepdim=True)
    return above | (ties & (ties.cumsum(-1) <= need))


def criticalkv_select(base, critical, budget, *, alpha=0.5):
    """Tokens kept by CriticalKV's two-stage selection, per (batch, head).

    Args:
        base: [B, H, N] base scores (e.g. obcache.saliency(..., "attn")).
        critical: [B, H, N] critical scores (obcache.saliency(..., "critical",
            wo=o_proj.weight), i.e. (base + 1e-4) * projected value norm).
        budget: tokens kept per head, >= 1; budget >= N keeps every token.
        alpha: share of the budget given to stage 1, in [0, 1].

    Returns:
        int64 [B, H, min(budget, N)] indices, ascending per row.
    """
    if base.shape != critical.shape or base.dim() != 3:
        raise ValueError(f"base and critical must both be [B, H, N], got {tuple(base.shape)} and "
                         f"{tuple(critical.shape)}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    N = base.shape[-1]
    b = min(budget, N)
    first = _top(base, int(alpha * b))
    kept = first | _top(critical, b - int(alpha * b), exclude=first)
    return kept.nonzero()[:, -1].view(*kept.shape[:-1], b)


def output_error_bound(attn, proj_norm1, kept):
    """The right-hand side of CriticalKV's bound for one attention row set.

    Args:
        attn: [..., N] attention weights of each query (rows sum to 1).
        proj_norm1: [..., N] ||v_p W_o||_1 of the head the row belongs to
            (broadcastable to attn).
        kept: [..., N] bool, the kept tokens (broadcastable to attn).

    Returns:
        (bound, sigma), each [...]: C - (2 - 1/sigma) sum_kept A ||v W_o||_1
        with C = sum_p A ||v W_o||_1, and sigma the kept attention mass.
    """
    w = attn * proj_norm1
    sigma = (attn * kept).sum(-1)
    return w.sum(-1) - (2 - 1 / sigma) * (w * kept).sum(-1), sigma


def critical_score(k, v, q_window, base_score, base, wo, *, scale=None):
    """Stage 2's score [B, H_kv, N] float32: (base + 1e-4) * mean over the
    group of ||v_p W_o^g||_1.

    For base_score "attn" this is the `critical` score of
    torch.ops.obcache.saliency (computed by it); for other base scores (e.g.
    "key") `base` ([B, H_kv, N], the base score) is weighted by
    torch.ops.obcache.projected_value_norm. wo: the layer's o_proj weight.
    """
    if base_score == "attn":
        return torch.ops.obcache.saliency(k, v, q_window, "critical", scale=scale, wo=wo)
    return value_weighted(base, v, wo)


def value_weighted(base, v, wo):
    """(base + 1e-4) * the mean over each KV head's query heads of
    ||v_p W_o^g||_1, for base [B, H_kv, M] and v [B, H_kv, M, D]: the
    expression of the C++ ops' critical_score, so that they round alike."""
    pn = torch.ops.obcache.projected_value_norm(v, wo, 1)  # [B, H_q, M]
    B, H, M = base.shape
    return (base + CRITICAL_EPS) * pn.view(B, H, -1, M).mean(2)


def pool_candidates(scores, *, sink, recent, pool_kernel, pool):
    """float64 [B, H, N - sink - recent]: the scores of the candidates
    [sink, N - recent), pooled as `select` pools them (over [0, N - recent),
    stride 1, padding pool_kernel // 2; max ignores the padding, avg counts
    it; NaN becomes -inf)."""
    return pool_scores(scores[..., : scores.shape[-1] - recent], pool_kernel, pool)[..., sink:]


def padded_indices(keep):
    """keep bool [B, H, N] -> (indices int64 [B, H, Lmax] ascending per
    head, padded with -1; lengths int64 [B, H]), Lmax the longest head."""
    N = keep.shape[-1]
    lengths = keep.sum(-1)
    L = int(lengths.max()) if keep.numel() else 0
    # each kept token goes to its rank among its head's kept tokens; the
    # others all land in a spare column that is cut off
    slot = torch.where(keep, keep.cumsum(-1) - 1, L)
    idx = torch.full((*keep.shape[:-1], L + 1), -1, dtype=torch.int64, device=keep.device)
    idx.scatter_(-1, slot, torch.arange(N, device=keep.device).expand(keep.shape))
    return idx[..., :L].contiguous(), lengths


def check_budget(budget, sink, recent):
    """Every head keeps its sink and recent tokens: budget must hold them."""
    if budget < sink + recent or budget < 1:
        raise ValueError(f"budget must be >= sink + recent = {sink + recent} and >= 1, got {budget}")


class Stage1(NamedTuple):
    """Stage 1 of a CriticalKV eviction, over the candidates [sink, N - recent).

    taken: bool [B, H, C], the candidates stage 1 keeps (AdaKV: with the
        heads' floors). rest: how many more candidates stage 2 keeps, per
        (batch, head) when per_head, else per batch row over all heads.
    """
    taken: torch.Tensor
    rest: int
    per_head: bool

    def groups(self, x):
        """x [B, H, C] as the rows stage 2 picks in: [B, H, C] or [B, H * C]."""
        return x if self.per_head else x.reshape(x.shape[0], -1)


def stage2_picks(plan, pooled_critical):
    """bool [B, H, C]: the candidates stage 2 keeps by the pooled critical
    score (the best `plan.rest` of those stage 1 left; ties to the lower
    head, then the lower index)."""
    return _top(plan.groups(pooled_critical), plan.rest, exclude=plan.groups(plan.taken)).view(plan.taken.shape)


class Stage1Sizes(NamedTuple):
    """How many candidates each step of a CriticalKV eviction keeps: `floor`
    of each head by the pooled base score (AdaKV's floors beyond the sink
    and recent tokens), then `first` more by it and `rest` more by the
    pooled critical score, per (batch, head) when per_head, else per batch
    row over all heads."""
    floor: int
    first: int
    rest: int
    per_head: bool


def stage1_sizes(shape, budget, *, floor=None, sink=0, recent=0, alpha=0.5):
    """Stage1Sizes of criticalkv_keep (floor None: `budget` per head) or of
    adaptive_criticalkv_keep (`budget` for the layer), for base scores of
    `shape` [B, H, N]; None when the budget holds every token. ValueError
    when it cannot hold the tokens every head keeps."""
    _, H, N = shape
    if floor is None:
        if budget >= N:
            return None
        check_budget(budget, sink, recent)
        c = budget - sink - recent
        return Stage1Sizes(0, int(alpha * c), c - int(alpha * c), True)
    if budget >= H * N:
        return None
    f = max(sink + recent, int(floor * (budget // H)))
    if f > N or H * f > budget:
        raise ValueError(f"total_budget={budget} cannot give each of {H} heads its floor of {f} tokens")
    c, fc = budget - H * (sink + recent), f - sink - recent
    n1 = max(0, int(alpha * c) - H * fc)
    return Stage1Sizes(fc, n1, c - H * fc - n1, False)


def stage1_plan(base, sizes, *, sink=0, recent=0, pool_kernel=0, pool="max"):
    """Stage 1 of `sizes` (stage1_sizes) on base [B, H, N]: each head's
    floor, then the group's best `first` by the pooled base score."""
    pb = pool_candidates(base, sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool)
    floors = _top(pb, sizes.floor)
    plan = Stage1(floors, sizes.rest, sizes.per_head)
    first = _top(plan.groups(pb), sizes.first, exclude=plan.groups(floors)).view(floors.shape)
    return plan._replace(taken=floors | first)


def criticalkv_stage1(base, budget, *, sink=0, recent=0, pool_kernel=0, pool="max", alpha=0.5):
    """criticalkv_keep's stage 1 (None when budget >= N: every token stays).
    Stage 1 keeps the top floor(alpha * c) candidates of each head by the
    pooled base score, c = budget - sink - recent; stage 2 keeps the other
    c - floor(alpha * c)."""
    sizes = stage1_sizes(base.shape, budget, sink=sink, recent=recent, alpha=alpha)
    return None if sizes is None else stage1_plan(base, sizes, sink=sink, recent=recent, pool_kernel=pool_kernel,
                                                  pool=pool)


def adaptive_criticalkv_stage1(base, total_budget, *, floor=0.2, sink=0, recent=0, pool_kernel=0, pool="max",
                               alpha=0.5):
    """adaptive_criticalkv_keep's stage 1 (None when total_budget >= H * N):
    each head's floor, then the layer's best base-score candidates up to
    floor(alpha * c) in all; stage 2 keeps the rest of c over the layer."""
    sizes = stage1_sizes(base.shape, total_budget, floor=floor, sink=sink, recent=recent, alpha=alpha)
    return None if sizes is None else stage1_plan(base, sizes, sink=sink, recent=recent, pool_kernel=pool_kernel,
                                                  pool=pool)


def kept_indices(plan, picks, *, sink, recent):
    """The kept token indices of an eviction whose candidates are
    plan.taken | picks: int64 [B, H, budget] ascending (per head), or
    (indices [B, H, Lmax] padded with -1, lengths [B, H]) (layer-wide)."""
    B, H, _ = picks.shape
    ones = torch.ones(B, H, 1, dtype=torch.bool, device=picks.device)
    keep = torch.cat([ones.expand(B, H, sink), plan.taken | picks, ones.expand(B, H, recent)], -1)
    idx, lengths = padded_indices(keep)
    return idx if plan.per_head else (idx, lengths)


def keep_all(base, *, per_head):
    """kept_indices' result for an eviction whose budget holds every token
    of base [B, H, N] (stage 1 returned None)."""
    B, H, N = base.shape
    idx = torch.arange(N, device=base.device).expand(B, H, N).contiguous()
    return idx if per_head else (idx, torch.full((B, H), N, dtype=torch.int64, device=base.device))


def criticalkv_keep(base, critical, budget, *, sink=0, recent=0, pool_kernel=0, pool="max", alpha=0.5):
    """CriticalKV eviction per (batch, head): int64 [B, H, min(budget, N)]
    ascending. Keeps [0, sink) and [N - recent, N); pools both scores
    (`pool_candidates`); stage 1 keeps the top floor(alpha * c) candidates by
    the pooled base score, c = budget - sink - recent; stage 2 the other
    candidates by the pooled critical score (as `criticalkv_select`)."""
    plan = criticalkv_stage1(base, budget, sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool, alpha=alpha)
    if plan is None:
        return keep_all(base, per_head=True)
    pc = pool_candidates(critical, sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool)
    return kept_indices(plan, stage2_picks(plan, pc), sink=sink, recent=recent)


def adaptive_criticalkv_keep(base, critical, total_budget, *, floor=0.2, sink=0, recent=0, pool_kernel=0,
                             pool="max", alpha=0.5):
    """CriticalKV with one layer-wide budget (AdaKV): (indices int64
    [B, H, Lmax] ascending, padded with -1; lengths int64 [B, H] summing to
    min(total_budget, H * N)).

    Every head keeps its sink and recent tokens and a floor of
    f = max(sink + recent, int(floor * (total_budget // H))) tokens (as in
    `select_adaptive`), its own best candidates by the pooled base score.
    The two stages then run over all heads of the layer at once: stage 1
    tops the base-score picks up to floor(alpha * c) over the layer
    (c = total_budget - H * (sink + recent); the floor picks count towards
    it), stage 2 gives the rest of the budget to the best remaining
    candidates of any head by the pooled critical score. Ties: lower head,
    then lower index.
    """
    plan = adaptive_criticalkv_stage1(base, total_budget, floor=floor, sink=sink, recent=recent,
                                      pool_kernel=pool_kernel, pool=pool, alpha=alpha)
    if plan is None:
        return keep_all(base, per_head=False)
    pc = pool_candidates(critical, sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool)
    return kept_indices(plan, stage2_picks(plan, pc), sink=sink, recent=recent)

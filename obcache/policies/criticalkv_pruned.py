"""CriticalKV's stage 2, with the critical score computed exactly only
where the selection can depend on it.

The critical score (s + 1e-4) * mean_g ||v_p W_o^g||_1 needs a [D, hidden]
product per token and query head: as many FLOPs as the layer's o_proj, ~7%
of a prefill. Stage 2 only asks which of the candidates stage 1 left are the
best `rest`, so `pruned_keep` bounds the norm from above for every token
and computes it exactly (torch.ops.obcache.projected_value_norm on the
gathered rows) only for the tokens that can still make the cut:

    ||v W^g||_1 <= sqrt(hidden) ||v W^g||_2 <= sqrt(hidden) sigma_max(W^g) ||v||_2

1. Bounds lo <= score <= hi for every token: hi = max(s + 1e-4, 0) * b,
   lo = min(s + 1e-4, 0) * b with b = mean_g sqrt(hidden) sigma_max(W^g)
   ||v_p|| times 1 + 1e-3 for the rounding of the float32 exact values (the
   bound's own slack is ~1.25x for a dense projection). Where the exact
   score is computed, hi = lo = exact.
2. Seed: the candidates stage 2 would pick by the pooled hi. Their pooled
   values are made exact where cheap: for max pooling the tokens holding
   the window's largest hi, for avg pooling (or none) every token of it.
3. Pooling (max, or avg: weights > 0) is monotone, so pooled lo <= pooled
   exact <= pooled hi per candidate. tau = the rest-th largest pooled lo
   among the candidates stage 1 left (per stage-2 group: a head, or a batch
   row for a layer-wide selection): `rest` candidates score >= tau, so one
   whose pooled hi is < tau is never picked. A candidate with pooled
   hi >= tau and pooled hi > lo is open.
4. One round settles every open window. Max pooling: compute the tokens of
   open windows whose hi exceeds the window's pooled lo (no other can hold
   its max) and reaches tau. Afterwards a window's max is either a computed
   value, and exact, or the hi of a token below tau, and the window is
   below tau. Avg pooling: compute every token of an open window. tau only
   rises and hi only falls, so no window opens again.
5. Now every candidate that can be picked has its exact pooled score and
   the others stay below tau, so stage 2's picks by the pooled hi equal
   those by the exact score, ties included.

Stage 1's own picks need no critical score at all. On SmolLM2-135M (2048
tokens, budget 10%, max pooling) the exact norm is needed for ~2.6% of
the tokens. Inputs with a non-finite value get the exact score everywhere.
"""
import weakref

import torch
import torch.nn.functional as F

from obcache.policies.criticalkv import (CRITICAL_EPS, keep_all, kept_indices, padded_indices, pool_candidates,
                                        stage1_plan, stage1_sizes, stage2_picks, value_weighted)

__all__ = ["pruned_keep", "pruned_stage2_torch", "exact_stage2", "critical_upper_bound"]

BOUND_SLACK = 1e-3

# sigma_max(W_o^g) per o_proj weight: an SVD per layer costs as much as the
# pruning saves at short contexts. Keyed by id (a WeakKeyDictionary compares
# tensor keys with ==); an entry counts only while its weakref still points
# at the same tensor at the same version.
_SIGMA = {}


def _norm_bound(wo, Hkv, D):
    """[H_kv] float32: mean over the group of sqrt(hidden) sigma_max(W_o^g)."""
    hit = _SIGMA.get(id(wo))
    if hit is not None and hit[0]() is wo and hit[1] == (wo._version, Hkv, D):
        return hit[2]
    hidden, Hq = wo.shape[0], wo.shape[1] // D
    w = wo.detach().to(torch.float64).t().reshape(Hq, D, hidden)
    sigma = torch.linalg.matrix_norm(w, ord=2) * hidden**0.5  # [Hq]
    bound = sigma.view(Hkv, Hq // Hkv).mean(1).to(torch.float32)
    if len(_SIGMA) > 4096:  # entries of freed weights
        _SIGMA.clear()
    _SIGMA[id(wo)] = (weakref.ref(wo), (wo._version, Hkv, D), bound)
    return bound


def _bounds(base, v, wo):
    """(hi, lo) [B, H_kv, N] float32 with lo <= critical score <= hi
    (step 1 of the module docstring; a negative base, the joint score's
    cross term, makes the score <= 0 and bounds it from below instead)."""
    H, D = base.shape[1], v.shape[-1]
    factor = base + CRITICAL_EPS
    # ||v|| in float64, rounded once: the C++ op's value_norms
    norm = _norm_bound(wo, H, D).view(1, H, 1) * v.double().norm(dim=-1).float() * (1 + BOUND_SLACK)
    return factor.clamp_min(0) * norm, factor.clamp_max(0) * norm


def critical_upper_bound(base, v, wo):
    """[B, H_kv, N] float32, >= the critical score (s + 1e-4) * mean_g
    ||v_p W_o^g||_1 everywhere."""
    return _bounds(base, v, wo)[0]


class _Scores:
    """The critical score's bounds hi >= score >= lo per token, both set to
    the exact score where it was computed (done)."""

    def __init__(self, base, v, wo):
        self.base, self.v, self.wo = base, v, wo
        self.hi, self.lo = _bounds(base, v, wo)
        self.done = torch.zeros(base.shape, dtype=torch.bool, device=base.device)

    def compute(self, need):
        """The exact score at need & ~done: one projected_value_norm call on
        the rows of every head gathered side by side (a row's norm does not
        depend on the other rows of the call)."""
        todo = need & ~self.done
        if not bool(todo.any()):
            return
        D = self.v.shape[-1]
        idx, _ = padded_indices(todo)  # [B, H, M], -1 past a head's count
        at = idx.clamp_min(0)  # padding reads token 0; dropped below
        rows = self.v.gather(2, at[..., None].expand(-1, -1, -1, D))
        exact = value_weighted(self.base.gather(-1, at), rows, self.wo)
        # boolean indexing walks both in row-major order: the same tokens;
        # float64 for a float64 v, rounded to the bounds' float32 as the op does
        exact = exact[idx >= 0].to(self.hi.dtype)
        self.hi[todo] = exact
        self.lo[todo] = exact
        self.done |= todo


def _window_min(x, pool_kernel, sink, n):
    """[B, H, n]: per token, the least x [B, H, C] over the candidates it
    pools into (+inf for a token pooling into none). The candidates are
    [sink, sink + C) as pool_candidates lays them out: pooling runs over
    [0, sink + C), a candidate pooling the tokens within pool_kernel // 2
    of it."""
    B, H, C = x.shape
    out = torch.full((B, H, n), float("inf"), dtype=x.dtype, device=x.device)
    out[..., sink:sink + C] = x
    if pool_kernel > 1:
        r = pool_kernel // 2
        out = -F.max_pool1d(-out.view(B * H, 1, n), 2 * r + 1, 1, r).view(B, H, n)
        out[..., sink + C:] = float("inf")
    return out


def _window(mask, pool_kernel, sink, n):
    """bool [B, H, n]: the tokens pooling into a True of mask [B, H, C]."""
    inside = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(~mask, float("inf"))
    return _window_min(inside, pool_kernel, sink, n) < float("inf")


def pruned_keep(base, v, wo, budget, *, floor=None, sink, recent, pool_kernel, pool, alpha=0.5):
    """The tokens criticalkv_keep (floor None: `budget` per head) or
    adaptive_criticalkv_keep (`budget` for the layer, AdaKV floors) keeps
    with the critical score (base + 1e-4) * mean_g ||v W_o^g||_1, that score
    computed exactly only where stage 2's picks depend on it (module
    docstring): int64 [B, H_kv, budget], or (indices [B, H_kv, Lmax] padded
    with -1, lengths [B, H_kv]) with a floor.

    Args:
        base: [B, H_kv, N] float32 base scores.
        v: [B, H_kv, N, D] values; wo: the layer's o_proj weight.

    On CPU one op, torch.ops.obcache._criticalkv_keep: stage 1, stage 2's
    steps (the same exact scores as `pruned_stage2_torch`) and the kept
    indices in plain loops, instead of ~300 small torch ops per layer.
    Elsewhere `exact_stage2`: a GPU computes every token's norm in one
    projected_value_norm launch at GEMM speed, where the pruning would cost
    host syncs and those ~300 launches per layer.
    """
    sizes = stage1_sizes(base.shape, budget, floor=floor, sink=sink, recent=recent, alpha=alpha)
    if sizes is None:  # the budget holds every token
        return keep_all(base, per_head=floor is None)
    sel = dict(sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool)
    if base.device.type == "cpu":
        idx, lengths, _ = torch.ops.obcache._criticalkv_keep(base, v, wo, _norm_bound(wo, base.shape[1], v.shape[-1]),
                                                             *sizes, *sel.values())
        return idx if sizes.per_head else (idx, lengths)
    plan = stage1_plan(base, sizes, **sel)
    return kept_indices(plan, exact_stage2(plan, base, v, wo, **sel)[0], sink=sink, recent=recent)


def exact_stage2(plan, base, v, wo, *, sink, recent, pool_kernel, pool):
    """pruned_stage2_torch's result from the critical score of every token:
    the same picks; exact is all True."""
    pooled = pool_candidates(value_weighted(base, v, wo), sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool)
    return stage2_picks(plan, pooled), torch.ones(base.shape, dtype=torch.bool, device=base.device)


def pruned_stage2_torch(plan, base, v, wo, *, sink, recent, pool_kernel, pool):
    """(picks, exact): picks bool [B, H_kv, C], the candidates stage 2 of
    `plan` keeps, the same as stage2_picks(plan, pooled exact critical
    score); exact bool [B, H_kv, N], the tokens whose critical score it
    computed. Stage 2 of pruned_keep's CPU op in torch ops, on any device:
    the readable form of its algorithm, and what the op is tested against."""
    B, H, N = base.shape
    if plan.rest == 0:
        return torch.zeros_like(plan.taken), torch.zeros(base.shape, dtype=torch.bool, device=base.device)
    sel = dict(sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool)
    sc = _Scores(base, v, wo)
    if not bool(torch.isfinite(sc.hi).all() and torch.isfinite(sc.lo).all()):
        sc.compute(torch.ones_like(sc.done))
        return stage2_picks(plan, pool_candidates(sc.hi, **sel)), sc.done
    by_max = pool == "max" and pool_kernel > 1
    hi = pool_candidates(sc.hi, **sel)
    k2 = stage2_picks(plan, hi)
    # The picks by the bound seed the threshold: the max of a window needs
    # only the tokens holding its bound's max, an average every token.
    if by_max:
        sc.compute(sc.hi >= _window_min(hi.masked_fill(~k2, float("inf")), pool_kernel, sink, N))
    else:
        sc.compute(_window(k2, pool_kernel, sink, N))
    hi, lo = pool_candidates(sc.hi, **sel), pool_candidates(sc.lo, **sel)
    free = ~plan.taken
    # `rest` candidates score at least tau: no candidate below it is picked
    tau = plan.groups(lo.masked_fill(~free, float("-inf"))).topk(plan.rest, dim=-1).values.amin(-1)
    tau = tau.view(B, H, 1) if plan.per_head else tau.view(B, 1, 1)
    open_ = free & (hi >= tau) & (hi > lo)
    # One round settles every open window (module docstring, step 4).
    if by_max:
        sc.compute((sc.hi > _window_min(lo.masked_fill(~open_, float("inf")), pool_kernel, sink, N))
                   & (sc.hi >= tau))
    else:
        sc.compute(_window(open_, pool_kernel, sink, N))
    # every candidate that can make the cut has its exact pooled score
    return stage2_picks(plan, pool_candidates(sc.hi, **sel)), sc.done


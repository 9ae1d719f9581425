"""CriticalKV's stage-2 score, computed exactly only where the selection can
depend on it.

The critical score (s + 1e-4) * mean_g ||v_p W_o^g||_1 needs a [D, hidden]
product per token and query head: as many FLOPs as the layer's o_proj, ~7%
of a prefill. Stage 2 only asks which candidates are the top few percent, so
`pruned_critical_score` bounds the norm from above for every token and
computes it exactly (torch.ops.obcache.projected_value_norm on the gathered
rows) for the tokens that can still make the cut:

    ||v W^g||_1 <= sqrt(hidden) ||v W^g||_2 <= sqrt(hidden) sigma_max(W^g) ||v||_2

1. ub = (s + 1e-4) * mean_g sqrt(hidden) sigma_max(W^g) ||v_p||, times
   1 + 1e-3 for the rounding of the float32 exact values (the bound's own
   slack is ~1.25x for a dense projection).
2. K1 = keep(ub): the selection as if ub were the score. The exact score is
   computed for every token in the pooling window of a member of K1.
3. tau = the least pooled exact score among K1's candidates (per head, or
   per batch row for a layer-wide selection): stage 2 keeps k candidates
   and K1 holds k of them, all with pooled exact >= tau, so the k-th best
   pooled exact score is >= tau.
4. Every candidate whose pooled bound is >= tau survives; the exact score is
   computed in the pooling windows of the survivors too.

The result holds the exact score at every token it computed and the bound
elsewhere. Pooling (max, or avg: weights > 0) is monotone, so a pruned
candidate's pooled value stays below tau, while every survivor's pooled
value is exact: keep(result) == keep(exact critical score), ties included.
On SmolLM2-135M (2048 tokens, budget 10%) the exact norm is needed for ~20%
of the tokens. Inputs with a non-finite value, or a selection that keeps
every token, get the exact score everywhere.
"""
import weakref

import torch
import torch.nn.functional as F

from obcache.policies.criticalkv import CRITICAL_EPS, pool_candidates

__all__ = ["pruned_critical_score"]

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


def _window(mask, pool_kernel):
    """The tokens within pool_kernel // 2 of a True of mask [B, H, N]."""
    if pool_kernel <= 1:
        return mask
    B, H, N = mask.shape
    r = pool_kernel // 2
    return F.max_pool1d(mask.view(B * H, 1, N).float(), 2 * r + 1, 1, r).view(B, H, N) > 0


def _fill_exact(out, done, need, base, v, wo):
    """Writes the exact critical score into out at need & ~done (in place),
    one projected_value_norm call per (batch, head) on its gathered rows: a
    row's norm does not depend on the other rows of the call, so the values
    equal those of the call over every token."""
    todo = need & ~done
    B, H, _ = todo.shape
    cols = wo.shape[1] // H  # G * D columns of wo per KV head
    for b in range(B):
        for h in range(H):
            sel = todo[b, h]
            if not bool(sel.any()):
                continue
            pn = torch.ops.obcache.projected_value_norm(v[b, h][sel][None, None], wo[:, h * cols:(h + 1) * cols], 1)
            out[b, h][sel] = (base[b, h][sel] + CRITICAL_EPS) * pn[0].mean(0)
    done |= todo


def pruned_critical_score(base, v, wo, keep, *, sink, recent, pool_kernel, pool, per_head=True):
    """A [B, H_kv, N] float32 stage-2 score that `keep` treats exactly as it
    treats the exact critical score (module docstring).

    Args:
        base: [B, H_kv, N] float32 base scores (stage 1's, non-negative).
        v: [B, H_kv, N, D] values; wo: the layer's o_proj weight.
        keep: critical -> int64 [B, H_kv, L] kept token indices (-1 = none),
            the selection the result is for (criticalkv_keep, or the indices
            of adaptive_criticalkv_keep), with the sink, recent, pool_kernel
            and pool given here.
        per_head: stage 2 picks per (batch, head) (criticalkv_keep), or over
            all heads of a batch row at once (adaptive_criticalkv_keep).
    """
    B, H, N = base.shape
    D = v.shape[-1]
    ub = (base + CRITICAL_EPS) * (_norm_bound(wo, H, D).view(1, H, 1) * v.float().norm(dim=-1)) * (1 + BOUND_SLACK)
    done = torch.zeros(B, H, N, dtype=torch.bool, device=base.device)
    if not bool(torch.isfinite(ub).all()):
        _fill_exact(ub, done, ~done, base, v, wo)
        return ub
    kept = keep(ub)
    members = torch.zeros(B, H, N + 1, dtype=torch.bool, device=base.device)
    members.scatter_(-1, torch.where(kept < 0, N, kept), True)
    members = members[..., :N]
    out = ub.clone()
    _fill_exact(out, done, _window(members, pool_kernel), base, v, wo)
    lo, hi = sink, N - recent
    if hi <= lo:
        return out
    pooled = pool_candidates(out, sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool)
    in_k1 = members[..., lo:hi]
    tau = pooled.masked_fill(~in_k1, float("inf")).amin(-1 if per_head else (1, 2), keepdim=True)
    survivors = torch.zeros_like(members)
    survivors[..., lo:hi] = pool_candidates(ub, sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool) >= tau
    _fill_exact(out, done, _window(survivors, pool_kernel), base, v, wo)
    return out

"""Pure-PyTorch reference of every obcache op: the specification the kernels
are tested against. Written for readability, straight from the formulas of
shared/DESIGN.md section 3; it materialises [B, H_q, W, N] and expands KV to
the query heads, which the kernels never do. Computes in `compute_dtype`
(float64 by default; a low-precision dtype gives the "plain PyTorch in that
precision" baseline that test tolerances are measured against).
"""
from typing import Optional

import torch
import torch.nn.functional as F

SCORES = ("attn", "tova", "vatp", "value", "key", "joint", "loo")
# Scores that also need the output projection (o_proj weight `wo`).
WO_SCORES = ("critical", "laprox")
GROUP_REDUCES = ("sum", "mean", "max")
QUERY_REDUCES = ("sum", "max")
POOLS = ("max", "avg")

# `loo` divides by 1 - A. A token holding (almost) all of a query's attention
# has an undefined / unbounded leave-one-out change; 1 - A is clamped here so
# such a token gets a large finite score (it is the most important one).
LOO_MIN_REMAINDER = 1e-4

# CriticalKV adds this to the attention score before weighing it by the
# projected value norm, so a token with no attention still ranks by its value.
CRITICAL_EPS = 1e-4


def attention_terms(k, v, q_window, *, scale=None, causal=True, compute_dtype=torch.float64):
    """Window attention with KV expanded to the query heads (repeat_kv order:
    query head j reads KV head j // G).

    Returns a dict of tensors: z (masked logits, 0 where masked) and a
    (softmax weights) [B, Hq, W, N], o [B, Hq, W, D], vv (expanded values)
    [B, Hq, N, D], mask [W, N] (True where a key is visible).
    """
    B, Hkv, N, D = k.shape
    Hq, W = q_window.shape[1], q_window.shape[2]
    G = Hq // Hkv
    if scale is None:
        scale = 1.0 / D**0.5
    kk = k.to(compute_dtype).repeat_interleave(G, dim=1)
    vv = v.to(compute_dtype).repeat_interleave(G, dim=1)
    q = q_window.to(compute_dtype)
    z = scale * (q @ kk.transpose(-1, -2))
    if causal:
        pos = torch.arange(N - W, N).unsqueeze(1)  # absolute position of query i
        visible = torch.arange(N).unsqueeze(0) <= pos
    else:
        visible = torch.ones(W, N, dtype=torch.bool)
    a = torch.softmax(z.masked_fill(~visible, float("-inf")), dim=-1)
    o = a @ vv
    return {"z": z.masked_fill(~visible, 0.0), "a": a, "o": o, "vv": vv, "mask": visible}


def _per_query_contribution(score, t):
    a, z, o, vv = t["a"], t["z"], t["o"], t["vv"]
    vnorm2 = (vv * vv).sum(-1).unsqueeze(2)  # [B, Hq, 1, N]
    if score in ("attn", "tova"):
        return a
    if score == "vatp":
        return a * vv.abs().sum(-1).unsqueeze(2)
    if score == "value":
        return a**2 * vnorm2
    diff = vv.unsqueeze(2) - o.unsqueeze(3)  # [B, Hq, W, N, D]: v_p - o_i
    if score == "loo":
        remainder = (1.0 - a).clamp_min(LOO_MIN_REMAINDER)
        return a / remainder * diff.norm(dim=-1)
    key = (a * z) ** 2 * (diff * diff).sum(-1)
    if score == "key":
        return key
    vo = (vv.unsqueeze(2) * o.unsqueeze(3)).sum(-1)  # v_p . o_i
    if score == "joint":
        return a**2 * vnorm2 + key + 2 * a**2 * z * (vnorm2 - vo)
    raise ValueError(f"score must be one of {SCORES}, got {score!r}")


def saliency(
    k,
    v,
    q_window,
    score,
    *,
    group_reduce="sum",
    scale: Optional[float] = None,
    causal=True,
    query_reduce="sum",
    compute_dtype=torch.float64,
    wo=None,
    o=None,
):
    """Per-token saliency [B, Hkv, N] in compute_dtype (see DESIGN.md section 3).

    k, v: [B, Hkv, N, D]; q_window: [B, Hq, W, D] (queries of the last W tokens);
    wo: [hidden, Hq * D] o_proj weight, needed by (and only by) WO_SCORES;
    o: [B, Hq, W, D] the window queries' attention output, used by key, joint
    and loo in place of softmax(Z) V (the ops' `o`); ignored by the others.
    """
    if score in WO_SCORES:
        if wo is None:
            raise ValueError(f"score {score!r} needs wo, the o_proj weight [hidden, H_q * D]")
        return _wo_saliency(k, v, q_window, score, wo, group_reduce=group_reduce, scale=scale, causal=causal,
                            query_reduce=query_reduce, compute_dtype=compute_dtype)
    if wo is not None:
        raise ValueError(f"wo is not used by score {score!r}")
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES + WO_SCORES}, got {score!r}")
    t = attention_terms(k, v, q_window, scale=scale, causal=causal, compute_dtype=compute_dtype)
    if o is not None:
        t["o"] = o.to(compute_dtype)
    c = _per_query_contribution(score, t)  # [B, Hq, W, N]
    if score == "tova":
        per_head = c[:, :, -1, :]
    elif query_reduce == "sum":
        per_head = c.sum(2)
    elif query_reduce == "max":
        per_head = c.amax(2)
    else:
        raise ValueError(f"query_reduce must be one of {QUERY_REDUCES}, got {query_reduce!r}")
    return _group(per_head, k.shape[0], k.shape[1], group_reduce)


def _group(per_head, B, Hkv, group_reduce):
    grouped = per_head.reshape(B, Hkv, -1, per_head.shape[-1])
    if group_reduce == "sum":
        return grouped.sum(2)
    if group_reduce == "mean":
        return grouped.mean(2)
    if group_reduce == "max":
        return grouped.amax(2)
    raise ValueError(f"group_reduce must be one of {GROUP_REDUCES}, got {group_reduce!r}")


def projected_value_norm(v, wo, p=1, *, compute_dtype=torch.float64):
    """||v_n W_o^j||_p per query head j: [B, Hq, N] in compute_dtype.

    v: [B, Hkv, N, D]; wo: [hidden, Hq * D] (nn.Linear's o_proj weight), whose
    columns j*D .. (j+1)*D - 1 belong to query head j (which reads KV head
    j // G). Materialises the [B, Hq, N, hidden] projections.
    """
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    B, Hkv, N, D = v.shape
    hidden, Hq = wo.shape[0], wo.shape[1] // D
    vv = v.to(compute_dtype).repeat_interleave(Hq // Hkv, dim=1)  # [B, Hq, N, D]
    w = wo.to(compute_dtype).reshape(hidden, Hq, D).permute(1, 2, 0)  # [Hq, D, hidden] = W_o^j
    proj = vv @ w  # [B, Hq, N, hidden]
    return proj.abs().sum(-1) if p == 1 else proj.norm(dim=-1)


def _wo_saliency(k, v, q_window, score, wo, *, group_reduce, scale, causal, query_reduce, compute_dtype):
    """The scores that weigh attention by the projected value norm.

    critical (CriticalKV): (attn score + CRITICAL_EPS) * mean over the group of
        ||v_p W_o^g||_1; the attn score uses query_reduce and group_reduce.
    laprox (LaProx): per query head ||A_{g,:,p}||_2 (over the window queries)
        * ||v_p W_o^g||_2, then group_reduce (DESIGN.md: "mean").
    """
    B, Hkv, N, _ = k.shape
    if score == "critical":
        attn = saliency(k, v, q_window, "attn", group_reduce=group_reduce, scale=scale, causal=causal,
                        query_reduce=query_reduce, compute_dtype=compute_dtype)
        pn = _group(projected_value_norm(v, wo, 1, compute_dtype=compute_dtype), B, Hkv, "mean")
        return (attn + CRITICAL_EPS) * pn
    if query_reduce != "sum":
        raise ValueError(f"score 'laprox' reduces the window queries by an L2 norm; query_reduce must be "
                         f"'sum', got {query_reduce!r}")
    a = attention_terms(k, v, q_window, scale=scale, causal=causal, compute_dtype=compute_dtype)["a"]
    per_head = a.norm(dim=2) * projected_value_norm(v, wo, 2, compute_dtype=compute_dtype)  # [B, Hq, N]
    return _group(per_head, B, Hkv, group_reduce)


def pool_scores(scores, pool_kernel, pool):
    """Token pooling along the last dim: stride 1, padding pool_kernel // 2
    (max ignores padding; avg counts it, as avg_pool1d's defaults do).
    pool_kernel 0 or 1 = no pooling. NaN becomes -inf afterwards, so a NaN
    score ranks below every finite one."""
    s = scores.to(torch.float64)
    if pool_kernel > 1:
        flat = s.reshape(-1, 1, s.shape[-1])
        pad = pool_kernel // 2
        if pool == "max":
            flat = F.max_pool1d(flat, pool_kernel, stride=1, padding=pad)
        elif pool == "avg":
            flat = F.avg_pool1d(flat, pool_kernel, stride=1, padding=pad)
        else:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        s = flat.reshape(s.shape)
    return torch.nan_to_num(s, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))


def _top_ascending(pooled, m):
    """Indices of the m largest values, ties to the lower index, ascending."""
    order = torch.sort(pooled, descending=True, stable=True).indices[:m]
    return torch.sort(order).values


def _select_row(row, budget, sink, recent, pool_kernel, pool, start):
    N = row.shape[0]
    if N - start <= budget:  # every valid token fits: keep the last `budget` positions
        return torch.arange(N - budget, N)
    lo, hi = start + sink, N - recent
    pooled = pool_scores(row[start:hi], pool_kernel, pool)[sink:]
    chosen = _top_ascending(pooled, budget - sink - recent) + lo
    return torch.cat([torch.arange(start, lo), chosen, torch.arange(hi, N)])


def select(scores, budget, *, sink=0, recent=0, pool_kernel=0, pool="max", start=None):
    """Indices int64 [B, H, budget], ascending, of the tokens to keep.

    Keeps [start_b, start_b + sink) and [N - recent, N); pools the scores of
    [start_b, N - recent); picks the top budget - sink - recent of
    [start_b + sink, N - recent). `start` [B] (optional) is the first valid
    position of each batch row (left padding); padding is only kept when a
    row has fewer than `budget` valid tokens (then the last `budget`
    positions are kept). budget >= N keeps everything.
    """
    B, H, N = scores.shape
    if budget >= N:
        return torch.arange(N).expand(B, H, N).clone()
    if budget < sink + recent or budget <= 0:
        raise ValueError(f"budget must be >= sink + recent = {sink + recent} and > 0, got {budget}")
    out = torch.empty(B, H, budget, dtype=torch.int64)
    for b in range(B):
        s = 0 if start is None else int(start[b])
        for h in range(H):
            out[b, h] = _select_row(scores[b, h], budget, sink, recent, pool_kernel, pool, s)
    return out


def select_adaptive(scores, total_budget, *, floor=0.2, sink=0, recent=0, pool_kernel=0, pool="max"):
    """Head-adaptive (AdaKV) selection: one top-k over all heads of a layer.

    Each head keeps f = max(sink + recent, floor(floor * total_budget / H))
    tokens chosen on its own (sink, recent and its best candidates); the
    remaining total_budget - H * f go to the best remaining candidates of any
    head (pooled scores compared across heads; ties to the lower head, then
    the lower index). Returns (indices int64 [B, H, Lmax] ascending per head,
    padded with -1, lengths int64 [B, H]).
    """
    B, H, N = scores.shape
    if total_budget >= H * N:
        idx = torch.arange(N).expand(B, H, N).clone()
        return idx, torch.full((B, H), N, dtype=torch.int64)
    per_head = total_budget // H
    f = max(sink + recent, int(floor * per_head))
    if f > N or H * f > total_budget:
        raise ValueError(
            f"total_budget={total_budget} cannot give each of {H} heads its floor of {f} tokens"
        )
    keep = torch.zeros(B, H, N, dtype=torch.bool)
    for b in range(B):
        rest = []
        for h in range(H):
            pooled = pool_scores(scores[b, h, : N - recent], pool_kernel, pool)[sink:]
            first = _top_ascending(pooled, f - sink - recent) + sink
            keep[b, h, :sink] = True
            keep[b, h, N - recent :] = True
            keep[b, h, first] = True
            cand = torch.full((N,), float("-inf"), dtype=torch.float64)
            cand[sink : N - recent] = pooled
            cand[keep[b, h]] = float("nan")  # already kept: not a candidate
            rest.append(cand)
        flat = torch.stack(rest).reshape(-1)  # head-major, so ties favour the lower head
        valid = ~torch.isnan(flat)
        order = torch.sort(torch.where(valid, flat, torch.tensor(float("-inf"), dtype=flat.dtype)),
                           descending=True, stable=True).indices
        order = order[valid[order]][: total_budget - H * f]
        keep[b].view(-1)[order] = True
    lengths = keep.sum(-1)
    out = torch.full((B, H, int(lengths.max())), -1, dtype=torch.int64)
    for b in range(B):
        for h in range(H):
            pos = keep[b, h].nonzero().squeeze(1)
            out[b, h, : pos.numel()] = pos
    return out, lengths


def compact(k, v, indices, lengths=None):
    """Functional compaction: copies of k, v whose row i of each (b, h) is the
    old row indices[b, h, i] (for i < lengths[b, h] when given); other rows
    keep their old contents."""
    k2, v2 = k.clone(), v.clone()
    B, H, L = indices.shape
    for b in range(B):
        for h in range(H):
            n = L if lengths is None else int(lengths[b, h])
            idx = indices[b, h, :n]
            k2[b, h, :n] = k[b, h, idx]
            v2[b, h, :n] = v[b, h, idx]
    return k2, v2


def evict(k, v, q_window, budget, *, score="joint", sink=0, recent=None, pool_kernel=7, pool="max",
          group_reduce="sum", scale=None, start=None):
    """Reference eviction pipeline: saliency -> select -> compact.
    Returns (k[..., :budget, :], v[..., :budget, :], indices) of the compacted copies."""
    W = q_window.shape[2]
    recent = W if recent is None else recent
    s = saliency(k, v, q_window, score, group_reduce=group_reduce, scale=scale)
    idx = select(s, budget, sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool, start=start)
    k2, v2 = compact(k, v, idx)
    n = idx.shape[-1]
    return k2[..., :n, :], v2[..., :n, :], idx

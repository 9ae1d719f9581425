"""Baselines the benchmarks time obcache against, on any device and dtype.

`kvpress_*`: the eviction written the way kvpress (NVIDIA/kvpress, SnapKV-style
presses) writes it: repeat_kv expands K and V to the H_q query heads, the
window attention is torch.matmul + softmax (matmuls in the input dtype,
softmax in float32 as kvpress does), the per-token score is plain torch
arithmetic on [B, H_q, W, N] tensors, pooled with F.max_pool1d / avg_pool1d,
top-k per KV head, and K and V are gathered into new tensors. The OBCache
key / joint scores use the expansion |v - o|^2 = |v|^2 - 2 v.o + |o|^2 (one
more matmul, O V^T) instead of the reference's [B, H_q, W, N, D] difference,
which is what a practical plain-PyTorch implementation would do.

`gqa_scores` (and kvpress_evict(..., gqa=True)): the same score in plain
PyTorch written for GQA instead: no repeat_kv, each KV head's G query heads'
W queries as one block of G W rows, so every product runs once per KV head
on G W rows.

`reference_*`: obcache.reference (the specification, float32 compute here),
torch.topk and torch.gather into new tensors. `per_head=True` runs the
reference one KV head at a time (the score of a head depends on that head's
K, V and its G query heads only), which gives the same result with 1/H_kv of
the memory: the only way to run the key / joint reference at N >= 16k.

Both select like torch.ops.obcache.select(sink, recent, pool_kernel, pool):
keep [0, sink) and the last `recent`, pool the scores of [0, N - recent),
take the top budget - sink - recent of [sink, N - recent), ascending.
"""
import math

import torch
import torch.nn.functional as F

SCORES = ("attn", "value", "key", "joint")


def repeat_kv(x, n_rep):
    """transformers' repeat_kv: [B, H_kv, N, D] -> [B, H_kv * n_rep, N, D]
    (query head j reads KV head j // n_rep)."""
    b, h, n, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, h, n_rep, n, d).reshape(b, h * n_rep, n, d)


def window_output(k, v, q):
    """softmax(Z) V of the window queries (causal, GQA), what a model's attention hands the ops as `o`:
    computed before the timed calls of `obcache+o`."""
    N, W = k.shape[2], q.shape[2]
    visible = torch.arange(N, device=k.device)[None, :] <= torch.arange(N - W, N, device=k.device)[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, enable_gqa=True)


def window_scores(qr, kx, vx, vn2, score, mask, scale):
    """float32 [B, X, N]: the score summed over the R query rows of each of X
    heads, qr [B, X, R, D] against kx, vx [B, X, N, D] (vn2 = |v|^2
    [B, X, 1, N]); mask [R, W] marks each row's future keys among the last W."""
    Wn = mask.shape[1]
    z = torch.matmul(qr, kx.transpose(2, 3)).float() * scale  # [B, X, R, N]
    z[..., -Wn:].masked_fill_(mask, float("-inf"))
    a = torch.softmax(z, dim=-1, dtype=torch.float32)
    if score == "attn":
        return a.sum(2)
    a2 = a * a
    if score == "value":
        c = a2 * vn2
    else:
        z[..., -Wn:].masked_fill_(mask, 0.0)  # a = 0 there; keeps a * z finite
        o = torch.matmul(a.to(vx.dtype), vx)  # [B, X, R, D]
        vo = torch.matmul(o, vx.transpose(2, 3)).float()  # v_p . o_i  [B, X, R, N]
        on2 = o.float().pow(2).sum(-1, keepdim=True)  # |o_i|^2
        d = vn2 - vo  # |v|^2 - v.o
        c = (d - vo).add_(on2).mul_(z).mul_(z)  # z^2 |v - o|^2
        if score == "joint":
            c.add_(vn2).addcmul_(z, d, value=2.0)  # + |v|^2 + 2 z (|v|^2 - v.o)
        c.mul_(a2)
    return c.sum(2)


def _check_score(score):
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")


def kvpress_scores(k, v, q, score="joint", scale=None):
    """float32 [B, H_kv, N]: the score summed over the W window queries and the
    G query heads of each KV head (causal window: query i sits at N - W + i),
    K and V expanded to the H_q query heads first (repeat_kv)."""
    _check_score(score)
    B, Hkv, N, D = k.shape
    Hq, Wn = q.shape[1], q.shape[2]
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    mask = torch.ones(Wn, Wn, dtype=torch.bool, device=k.device).triu(1)  # future keys of the window
    vn2 = repeat_kv(v.float().pow(2).sum(-1, keepdim=True), G).transpose(2, 3) if score != "attn" else None
    vx = repeat_kv(v, G) if score in ("key", "joint") else None  # |v_p|^2 above: [B, Hq, 1, N]
    per_head = window_scores(q, repeat_kv(k, G), vx, vn2, score, mask, scale)
    return per_head.view(B, Hkv, G, N).sum(2)


def gqa_scores(k, v, q, score="joint", scale=None):
    """kvpress_scores' result without repeat_kv: each KV head's G query heads'
    W queries as one [G W, D] block of rows (q reshaped, not K and V copied),
    so the products are [G W, D] x [D, N] per KV head, as plain PyTorch
    written for GQA would do them."""
    _check_score(score)
    B, Hkv, N, D = k.shape
    Hq, Wn = q.shape[1], q.shape[2]
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    mask = torch.ones(Wn, Wn, dtype=torch.bool, device=k.device).triu(1).repeat(G, 1)  # row g W + i: query i
    vn2 = v.float().pow(2).sum(-1)[:, :, None, :] if score != "attn" else None  # |v_p|^2 [B, H_kv, 1, N]
    return window_scores(q.reshape(B, Hkv, G * Wn, D), k, v, vn2, score, mask, scale)


def kvpress_select(scores, budget, sink=0, recent=0, pool_kernel=7, pool="max"):
    """int64 [B, H, budget] ascending: F.max_pool1d / avg_pool1d, topk."""
    B, H, N = scores.shape
    if budget >= N:
        return torch.arange(N, device=scores.device).expand(B, H, N)
    s = scores[..., : N - recent].float()
    if pool_kernel > 1:
        pool_fn = F.max_pool1d if pool == "max" else F.avg_pool1d
        s = pool_fn(s.reshape(B * H, 1, -1), pool_kernel, stride=1, padding=pool_kernel // 2).view(B, H, -1)
    top = torch.topk(s[..., sink:], budget - sink - recent, dim=-1).indices + sink
    ar = torch.arange(N, device=scores.device)
    idx = torch.cat([ar[:sink].expand(B, H, sink), top, ar[N - recent:].expand(B, H, recent)], -1)
    return idx.sort(-1).values


def gather_kv(k, v, idx):
    """New tensors holding the kept rows: k.gather(2, idx expanded to D)."""
    gi = idx[..., None].expand(-1, -1, -1, k.shape[-1])
    return k.gather(2, gi).contiguous(), v.gather(2, gi).contiguous()


def kvpress_evict(k, v, q, budget, score="joint", sink=0, recent=None, pool_kernel=7, pool="max", gqa=False):
    """gqa: score with gqa_scores (no repeat_kv) instead of kvpress_scores."""
    recent = q.shape[2] if recent is None else recent
    scores = (gqa_scores if gqa else kvpress_scores)(k, v, q, score)
    idx = kvpress_select(scores, budget, sink, recent, pool_kernel, pool)
    k2, v2 = gather_kv(k, v, idx)
    return k2, v2, idx


def reference_scores(k, v, q, score="joint", per_head=False, compute_dtype=torch.float32):
    from obcache import reference as ref

    if not per_head:
        return ref.saliency(k, v, q, score, compute_dtype=compute_dtype)
    Hkv, G = k.shape[1], q.shape[1] // k.shape[1]
    return torch.cat([ref.saliency(k[:, h:h + 1], v[:, h:h + 1], q[:, h * G:(h + 1) * G], score,
                                   compute_dtype=compute_dtype) for h in range(Hkv)], 1)


def reference_select(scores, budget, sink=0, recent=0, pool_kernel=7, pool="max"):
    """obcache.reference.pool_scores, torch.topk, sort."""
    from obcache import reference as ref

    B, H, N = scores.shape
    if budget >= N:
        return torch.arange(N, device=scores.device).expand(B, H, N)
    pooled = ref.pool_scores(scores[..., : N - recent], pool_kernel, pool)[..., sink:]
    top = torch.topk(pooled, budget - sink - recent, dim=-1).indices + sink
    ar = torch.arange(N, device=scores.device)
    idx = torch.cat([ar[:sink].expand(B, H, sink), top, ar[N - recent:].expand(B, H, recent)], -1)
    return idx.sort(-1).values


def reference_evict(k, v, q, budget, score="joint", sink=0, recent=None, pool_kernel=7, pool="max",
                    per_head=False):
    recent = q.shape[2] if recent is None else recent
    s = reference_scores(k, v, q, score, per_head=per_head)
    idx = reference_select(s, budget, sink, recent, pool_kernel, pool)
    k2, v2 = gather_kv(k, v, idx)
    return k2, v2, idx


def reference_peak_bytes(B, Hkv, G, W, N, D, score, per_head=False):
    """Bytes the float32 reference saliency needs at its peak (dominant
    tensors): K, V expanded to the query heads, [B, H_q, W, N] temporaries and,
    for key / joint / loo, the [B, H_q, W, N, D] difference and its square."""
    hq_w_n = B * Hkv * G * W * N
    expanded = 2 * B * Hkv * G * N * D * 4
    total = expanded + 8 * hq_w_n * 4
    if score in ("key", "joint", "loo"):
        total += 2 * hq_w_n * D * 4
    return total // Hkv if per_head else total


def kvpress_peak_bytes(B, Hkv, G, W, N, D, score, elem=4, gqa=False):
    """Dominant tensors of kvpress_scores: K and V expanded to the query heads
    (in the input dtype, plus a float32 copy of V for |v|^2 when it is not
    float32; gqa_scores expands nothing) and about 8 [B, H_q, W, N] float32
    temporaries."""
    expanded = (0 if gqa else 2 * B * Hkv * G * N * D * elem) + (B * Hkv * N * D * 4 if elem != 4 else 0)
    return expanded + 8 * B * Hkv * G * W * N * 4


def kvpress_projected_norm(v, wo, p=1):
    """||v_n W_o^j||_p per query head [B, H_q, N] the way kvpress's
    CriticalKVPress writes it: repeat_kv, then per query head one
    torch.matmul into a [B, N, hidden] projection and torch.norm over it, in
    the input dtype as there (obcache's norms are float32)."""
    B, Hkv, N, D = v.shape
    hidden, Hq = wo.shape[0], wo.shape[1] // D
    w = wo.transpose(0, 1).reshape(Hq, D, hidden)
    vv = repeat_kv(v, Hq // Hkv)
    return torch.stack([torch.norm(vv[:, j].matmul(w[j]), p=p, dim=-1) for j in range(Hq)], 1)

"""Which tokens each method keeps, computed from captured post-RoPE q, k, v
with the ops `obcache.saliency` / `select` / `select_adaptive`.

Used by the perturbation task (every method scored on the same captured
forward pass). Each method's pipeline is its row of the one method table,
`obcache.methods.METHODS` (score, queries, pooled, keep_recent,
query_reduce, group_reduce, adaptive); rows scored by KVzip's
reconstruction pass, and rows with their own `selection` (CriticalKV needs
each layer's o_proj weight, LaProx a top-K over every layer), are reported
as unsupported rather than approximated.
"""
import torch

from obcache.methods import METHODS

_QUERIES = ("window", "last", "prompt")  # queries a captured forward pass holds (not "reconstruction")


def pipeline(method):
    """The row of `method` in obcache.methods.METHODS when this module can
    reproduce it from a captured pass, else None (no score: full, streaming;
    reconstruction rows, which need KVzip's extra pass; rows with their own
    `selection`: criticalkv..., laprox, which need o_proj or every layer)."""
    row = METHODS.get(method)
    if row is None or row.score is None or row.queries not in _QUERIES or row.selection is not None:
        return None
    return row


def supported(method):
    """True when this module can pick tokens for `method`."""
    return method in ("full", "streaming") or pipeline(method) is not None


def ops():
    """(saliency, select, select_adaptive, name): the compiled ops' wrappers,
    or the float64 reference for an op that is not built (slow; development only)."""
    import obcache
    from obcache import reference

    names = ("saliency", "select", "select_adaptive")
    fns = [getattr(obcache, n, None) or getattr(reference, n) for n in names]
    return (*fns, "ops" if all(hasattr(obcache, n) for n in names) else "reference")


def _queries(q, source, window):
    if source == "window":
        return q[:, :, -window:]
    if source == "last":
        return q[:, :, -1:]
    return q  # "prompt": every query of the pass


def keep_indices(method, q, k, v, budget, cfg, scale, op=None):
    """Indices int64 [B, Hkv, L] of the cached tokens `method` keeps.

    q: [B, Hq, T, D] queries of the T newest tokens, the last one at the
    position of k's last row; k, v: [B, Hkv, N, D] (post-RoPE); budget:
    tokens per KV head. Head-adaptive methods pad shorter heads with -1.
    """
    saliency, select, select_adaptive, _ = op or ops()
    B, Hkv, N, _ = k.shape
    if budget >= N:
        return torch.arange(N).expand(B, Hkv, N)
    if method == "streaming":
        return torch.cat([torch.arange(cfg.sink), torch.arange(N - (budget - cfg.sink), N)]).expand(B, Hkv, -1)
    p = pipeline(method)
    if p is None:
        raise ValueError(f"method {method!r} cannot be reproduced by obcache.eval.policies")
    s = saliency(k, v, _queries(q, p.queries, cfg.window), p.score, scale=scale,
                 query_reduce=p.query_reduce or "sum", group_reduce=p.group_reduce or "sum")
    policy = dict(sink=cfg.sink, recent=cfg.window if p.keep_recent else 0,
                  pool_kernel=cfg.pool_kernel if p.pooled else 0, pool=cfg.pool)
    if p.adaptive:
        return select_adaptive(s, budget * Hkv, **policy)[0]
    return select(s, budget, **policy)


def oracle_indices(score, q_future, k, v, budget, cfg, scale, op=None):
    """Tokens chosen by `score` computed from future queries q_future
    [B, Hq, F, D] that see all of k (non-causal), with the SnapKV policy
    (sink and the last `window` tokens kept), unpooled: a reference for
    window scores, not a strict ceiling (the same queries score it and then
    measure its error)."""
    saliency, select = (op or ops())[:2]
    s = saliency(k, v, q_future, score, scale=scale, causal=False)
    return select(s, budget, sink=cfg.sink, recent=cfg.window, pool_kernel=0, pool=cfg.pool)


def keep_mask(indices, n):
    """Boolean [B, H, n] of the kept positions; -1 entries (padding) are ignored."""
    mask = torch.zeros(*indices.shape[:2], n + 1, dtype=torch.bool)
    mask.scatter_(-1, torch.where(indices < 0, n, indices), True)
    return mask[..., :n]

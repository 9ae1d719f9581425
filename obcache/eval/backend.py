"""The one place where the harness talks to the transformers integration
(`obcache.hf`): its method table, query-aware compression around
`generate`, query-agnostic `compress_context`, and chunked prefill. Every
row, `full` included (the integration leaves the cache alone for it), runs
through the integration, so the numbers are the integration's.

Each call returns the wall time of the whole call and the integration's own
`eviction_seconds` (recomputing the scoring queries, scoring, selecting,
compacting), the cost of the method itself.
"""
import time

import torch

import obcache.hf as hf


def method_table():
    """dict name -> one-line description (obcache.methods.METHODS), `full` first."""
    table = dict(hf.methods())
    return {"full": table.pop("full"), **table}


def _kwargs(cfg):
    return dict(window=cfg.window, sink=cfg.sink, pool_kernel=cfg.pool_kernel, pool=cfg.pool)


def answer_query_aware(model, ids, method, budget, cfg, **gen):
    """Greedy answer to a prompt ids [1, N] whose own last tokens (the
    question) are the scoring window: (new token ids [1, new], seconds, eviction seconds)."""
    t0 = time.perf_counter()
    with hf.compress(model, method=method, budget=budget, **_kwargs(cfg)) as c:
        new = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, **gen)[:, ids.shape[1]:]
    return new, time.perf_counter() - t0, c.eviction_seconds


def compress_context(model, context_ids, method, budget, cfg):
    """Query-agnostic: (ctx, seconds). ctx.generate(question_ids, max_new_tokens=...)
    returns the new tokens [1, new]; ctx.forward(ids) the logits after the
    context; ctx.eviction_seconds the method's own cost."""
    t0 = time.perf_counter()
    ctx = hf.compress_context(model, context_ids, method=method, budget=budget, **_kwargs(cfg))
    return ctx, time.perf_counter() - t0


def chunked_logits(model, ids, method, budget, chunk, cfg):
    """Read ids [1, T] in chunks of `chunk` tokens, the cache compressed to
    `budget` tokens per KV head as it goes: (logits [1, T, V], seconds, eviction seconds)."""
    t0 = time.perf_counter()
    with torch.no_grad(), hf.compress(model, method=method, budget=budget, chunk_size=chunk, **_kwargs(cfg)) as c:
        logits = model(ids, use_cache=True).logits
    return logits, time.perf_counter() - t0, c.eviction_seconds


def cache_stats(cache):
    """(bytes of K and V over every layer, longest layer's token count)."""
    total, longest = 0, 0
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            if isinstance(t, torch.Tensor) and t.numel():
                total += t.numel() * t.element_size()
                longest = max(longest, t.shape[-2])
    return total, longest

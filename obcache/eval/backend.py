"""The one place where the harness talks to the transformers integration
(`obcache.hf`): its method table, query-aware compression around
`generate`, query-agnostic `compress_context`, and chunked prefill.

Every `full` reference row, and every row when `obcache.hf` cannot be
imported or `--backend emulate` is given, runs on the stand-in of
`obcache.eval.emulate` instead (the same pipelines from the same method
table, applied after the prefill: a cross-check of the integration).
`name(cfg)` says which one produced the numbers (it goes into the JSON).
"""
import time

import torch

from obcache.eval import emulate


BACKENDS = ("hf", "emulate")


def integration():
    """The obcache.hf module, or None when it cannot be imported."""
    try:
        import obcache.hf as hf
    except ImportError:
        return None
    return hf


def name(cfg):
    """'obcache.hf' or 'obcache.eval.emulate': what compresses the non-full rows."""
    return "obcache.hf" if _hf(cfg) is not None else "obcache.eval.emulate"


def _hf(cfg, method=None):
    """obcache.hf when it should run `method`, else None (the stand-in runs)."""
    if method == "full" or getattr(cfg, "backend", None) == "emulate":
        return None
    return integration()


def method_table(cfg=None):
    """dict name -> one-line description, `full` first."""
    hf = _hf(cfg)
    table = dict(hf.methods()) if hf is not None else emulate.method_table()
    return {"full": table.pop("full", "no eviction (reference row)"), **table}


def _kwargs(cfg):
    return dict(window=cfg.window, sink=cfg.sink, pool_kernel=cfg.pool_kernel, pool=cfg.pool)


def answer_query_aware(model, ids, method, budget, cfg, **gen):
    """Greedy answer (new token ids [1, new], seconds) to a prompt ids [1, N]
    whose own last tokens (the question) are the scoring window."""
    hf = _hf(cfg, method)
    t0 = time.perf_counter()
    if hf is None:
        new = emulate.compress_context(model, ids, method, budget, cfg).generate(None, **gen)
    else:
        with hf.compress(model, method=method, budget=budget, **_kwargs(cfg)):
            new = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, **gen)[:, ids.shape[1]:]
    return new, time.perf_counter() - t0


def compress_context(model, context_ids, method, budget, cfg):
    """Query-agnostic: (ctx, seconds). ctx.generate(question_ids, max_new_tokens=...)
    returns the new tokens [1, new]; the context is compressed once."""
    hf = _hf(cfg, method)
    t0 = time.perf_counter()
    if hf is None:
        ctx = emulate.compress_context(model, context_ids, method, budget, cfg)
    else:
        ctx = hf.compress_context(model, context_ids, method=method, budget=budget, **_kwargs(cfg))
    return ctx, time.perf_counter() - t0


def logits_after(ctx, ids):
    """Logits [1, T, V] of feeding ids [1, T] after a compressed context
    (teacher forcing; ctx stays reusable)."""
    for attr in ("forward", "logits"):
        fn = getattr(ctx, attr, None)
        if callable(fn):
            return fn(ids)
    raise RuntimeError(f"{type(ctx).__name__} has no forward(ids) giving logits after the context")


def chunked_logits(model, ids, method, budget, chunk, cfg):
    """Read ids [1, T] in chunks of `chunk` tokens, the cache compressed to
    `budget` tokens per KV head as it goes. Returns (logits [1, T, V], seconds)."""
    hf = _hf(cfg, method)
    t0 = time.perf_counter()
    if hf is None:
        logits = emulate.chunked_logits(model, ids, method, budget, chunk, cfg)
    else:
        with torch.no_grad(), hf.compress(model, method=method, budget=budget, chunk_size=chunk, **_kwargs(cfg)):
            logits = model(ids, use_cache=True).logits
    return logits, time.perf_counter() - t0


def context_cache(ctx):
    """The cache a compress_context result holds."""
    for attr in ("cache", "past_key_values", "kv_cache"):
        cache = getattr(ctx, attr, None)
        if cache is not None:
            return cache
    raise RuntimeError(f"cannot find the cache on {type(ctx).__name__}; expected .cache or .past_key_values")


def cache_stats(cache):
    """(bytes of K and V over every layer, longest layer's token count)."""
    total, longest = 0, 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor) and t.numel():
                total += t.numel() * t.element_size()
                longest = max(longest, t.shape[-2])
    return total, longest

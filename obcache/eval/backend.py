"""The one place where the harness talks to the transformers integration
(`obcache.hf`): its method table, query-aware compression around
`generate`, query-agnostic `compress_context`, and chunked prefill. Every
row, `full` included (the integration leaves the cache alone for it), runs
through the integration, so the numbers are the integration's.

Each call returns the wall time of the whole call and the integration's own
`eviction_seconds` (recomputing the scoring queries, scoring, selecting,
compacting), the cost of the method itself.

Eviction happens after a read's last attention call, so every window-scored
method sees the same prefill; `SharedReads` prefills each prompt's first
N - window tokens once, and each (method, budget) cell reads the rest on a
copy (`obcache.hf.compress_context(prefix_cache=...)`). Reconstruction rows
share one read and reconstruction pass per context
(`obcache.hf.score_by_reconstruction`). The cells' numbers are those of
unshared calls up to float32 rounding (tests/test_prefix_cache.py,
tests/test_kvzip.py); the shared prefill's time is reported apart (`prefix_s`).
"""
import copy
import time

import torch

import obcache.hf as hf
from obcache.hf.cache_arg import cache_kw
from obcache.hf.context import spec_of, why_no_prefix
from obcache.methods import get_method


def method_table():
    """dict name -> one-line description (obcache.methods.METHODS), `full` first."""
    table = dict(hf.methods())
    return {"full": table.pop("full"), **table}


def _kwargs(cfg):
    return dict(window=cfg.window, sink=cfg.sink, pool_kernel=cfg.pool_kernel, pool=cfg.pool)


class SharedReads:
    """What every cell of one prompt can share, made once per prompt (`key`):
    a plain prefill of its first N - window tokens for window-scored rows,
    and for reconstruction rows (kvzip...) the context read and scored by
    the reconstruction pass with the scores of every such row in the run."""

    def __init__(self, model, cfg, methods):
        self.model, self.cfg = model, cfg
        rows = [get_method(m) for m in methods]
        self.specs = sorted({spec_of(m) for m in rows if m.reconstructs}, key=str)
        self._prefixes, self._scored = {}, {}

    def prefix(self, key, ids, method):
        """(a copy of the prefix cache of prompt ids [1, N], or None when
        `method` must read the whole prompt itself; seconds of the prefill
        it stands for)."""
        m, window = get_method(method), self.cfg.window
        if why_no_prefix(m) is not None or ids.shape[1] <= window:
            return None, 0.0
        if key not in self._prefixes:
            from transformers import DynamicCache

            t0 = time.perf_counter()
            cache = DynamicCache(config=self.model.config)
            with torch.no_grad():
                self.model(input_ids=ids[:, : ids.shape[1] - window], use_cache=True, **{cache_kw(self.model): cache})
            self._prefixes[key] = (cache, time.perf_counter() - t0)
        cache, seconds = self._prefixes[key]
        return copy.deepcopy(cache), seconds

    def compress_context(self, key, context_ids, method, budget):
        """Query-agnostic compression of context ids [1, N] on what can be
        shared: (ctx, seconds of this cell, seconds of the shared prefill)."""
        if not get_method(method).reconstructs:
            prefix, prefix_s = self.prefix(key, context_ids, method)
            ctx, seconds = compress_context(self.model, context_ids, method, budget, self.cfg, prefix=prefix)
            return ctx, seconds, prefix_s
        if key not in self._scored:
            self._scored[key] = hf.score_by_reconstruction(self.model, context_ids, self.specs)
        read = self._scored[key]
        t0 = time.perf_counter()
        ctx = read.compress(method, budget, **_kwargs(self.cfg))
        return ctx, time.perf_counter() - t0, read.prefill_seconds


# Both passkey modes decode alike, whatever the model's generation_config asks (a
# sampling config would draw answers; a repetition penalty would see the key in the
# query-aware prompt but not in the query-agnostic question).
GREEDY = dict(do_sample=False, repetition_penalty=1.0)


def answer_query_aware(model, ids, method, budget, cfg, prefix=None, **gen):
    """The answer (gen: GREEDY and a token limit) to a prompt ids [1, N] whose own last tokens (the
    question) are the scoring window: (new token ids [1, new], seconds, eviction seconds).
    prefix: a plain prefill of the prompt's first tokens (`SharedReads`), consumed."""
    t0 = time.perf_counter()
    extra = {} if prefix is None else {cache_kw(model): prefix}
    with hf.compress(model, method=method, budget=budget, **_kwargs(cfg)) as c:
        new = model.generate(ids, attention_mask=torch.ones_like(ids), **extra, **gen)[:, ids.shape[1]:]
    return new, time.perf_counter() - t0, c.eviction_seconds


def compress_context(model, context_ids, method, budget, cfg, prefix=None):
    """Query-agnostic: (ctx, seconds). ctx.generate(question_ids, max_new_tokens=...)
    returns the new tokens [1, new]; ctx.forward(ids) the logits after the
    context; ctx.eviction_seconds the method's own cost. prefix: as in
    `answer_query_aware`."""
    t0 = time.perf_counter()
    ctx = hf.compress_context(model, context_ids, method=method, budget=budget, prefix_cache=prefix, **_kwargs(cfg))
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

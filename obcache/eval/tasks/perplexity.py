"""Perplexity while reading a long text with eviction: the text is fed in
chunks; after each chunk the cache is compressed back to a fixed token budget
(the integration's chunked prefill). Reported as running perplexity versus
tokens read, next to the full cache. Over --ppl-windows disjoint windows of
the text (one in the quick run: a window is a long read), paired with each
OBC row's base window by window where there are several.
"""
import math

import torch

from obcache.eval import backend
from obcache.eval.stats import perplexity
from obcache.methods import get_method


def _nll(logits, targets):
    """Per-token negative log-likelihood [T] (float64) of targets [T] under logits [T, V]."""
    return torch.nn.functional.cross_entropy(logits.double(), targets, reduction="none")


def curve(nll, chunk):
    """(tokens read, running perplexity) after every chunk."""
    out = []
    for end in range(chunk, len(nll) + chunk, chunk):
        end = min(end, len(nll))
        total = float(sum(nll[:end]))
        out.append((end + 1, perplexity(total, end)))
    return out


def runnable(methods):
    """The methods chunked prefill can run (not the reconstruction rows: kvzip... compress a whole context once;
    nor the rows whose heads keep different lengths: adakv+..., laprox evict a prompt once)."""
    return [m for m in methods if not (get_method(m).reconstructs or get_method(m).per_head_lengths)]


def run(model, windows, cfg, methods, progress, emit=lambda record: None):
    """windows: [1, T] token ids each (text.windows; --ppl-windows of them).
    Per (window, method) a record {method, window, budget_tokens, ppl,
    curve, nll_sum, tokens, seconds, evict_s}, passed to emit(record) as it
    finishes; returns one record per method, its windows combined
    (combine)."""
    cells = {}
    for w, ids in enumerate(windows):
        targets = ids[0, 1:]
        for method in runnable(methods):
            budget = ids.shape[1] if method == "full" else cfg.ppl_budget
            logits, seconds, evict_s = backend.chunked_logits(model, ids, method, budget, cfg.ppl_chunk, cfg)
            nll = _nll(logits[0, :-1], targets).tolist()
            record = {
                "method": method, "window": w, "budget_tokens": None if method == "full" else cfg.ppl_budget,
                "chunk": cfg.ppl_chunk, "ppl": perplexity(sum(nll), len(nll)), "curve": curve(nll, cfg.ppl_chunk),
                "nll_sum": sum(nll), "tokens": len(nll), "seconds": seconds, "evict_s": evict_s,
            }
            cells.setdefault(method, []).append(record)
            emit(record)
            progress.update(1)
    return [combine(recs) for recs in cells.values()]


def combine(window_records):
    """One method's record over its windows: ppl of every window's tokens
    together (exp of their mean NLL), each window's ppl and curve kept
    (ppl_windows, curve_windows), `curve` the running ppl of the windows
    pooled at each chunk end, and the costs as means over the windows."""
    first, k = window_records[0], len(window_records)
    curves = [r["curve"] for r in window_records]  # equal lengths: the windows are --ppl-tokens each
    pooled = [(read, math.exp(sum(math.log(c[i][1]) for c in curves) / k)) for i, (read, _) in enumerate(curves[0])]
    return {
        "method": first["method"], "budget_tokens": first["budget_tokens"], "chunk": first["chunk"], "windows": k,
        "ppl": perplexity(sum(r["nll_sum"] for r in window_records), sum(r["tokens"] for r in window_records)),
        "ppl_windows": [r["ppl"] for r in window_records], "curve": pooled, "curve_windows": curves,
        "seconds": sum(r["seconds"] for r in window_records) / k,
        "evict_s": sum(r["evict_s"] for r in window_records) / k,
    }


def count(methods, windows=1):
    """Number of (window, method) cells `run` computes (for the progress bar)."""
    return windows * len(runnable(methods))

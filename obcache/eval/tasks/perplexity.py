"""Perplexity while reading a long text with eviction: the text is fed in
chunks; after each chunk the cache is compressed back to a fixed token budget
(the integration's chunked prefill). Reported as running perplexity versus
tokens read, next to the full cache.
"""
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


def run(model, ids, cfg, methods, progress, emit=lambda record: None):
    """ids [1, T]. Records {method, budget_tokens, ppl, curve} per method,
    each passed to emit(record) as it finishes."""
    targets = ids[0, 1:]
    records = []
    for method in runnable(methods):
        budget = ids.shape[1] if method == "full" else cfg.ppl_budget
        logits, seconds, evict_s = backend.chunked_logits(model, ids, method, budget, cfg.ppl_chunk, cfg)
        logits = logits[0, :-1]
        nll = _nll(logits, targets).tolist()
        records.append({
            "method": method, "budget_tokens": None if method == "full" else cfg.ppl_budget,
            "chunk": cfg.ppl_chunk, "ppl": perplexity(sum(nll), len(nll)),
            "curve": curve(nll, cfg.ppl_chunk), "seconds": seconds, "evict_s": evict_s,
        })
        emit(records[-1])
        progress.update(1)
    return records

"""Fidelity: how close the compressed cache's next-token distributions stay
to the full cache's. A real-text context is compressed (query-agnostic), then
the next F tokens are fed; per position, KL(full || compressed) and whether
the top-1 tokens agree. Independent of model quality, so it separates methods
even on a small model.
"""
import torch

from obcache.eval import backend


def kl_and_top1(full_logits, logits):
    """Mean KL(full || compressed) in nats and top-1 agreement over positions; logits [T, V]."""
    p = torch.log_softmax(full_logits.double(), -1)
    q = torch.log_softmax(logits.double(), -1)
    kl = (p.exp() * (p - q)).sum(-1)
    top1 = (full_logits.argmax(-1) == logits.argmax(-1)).double()
    return kl.mean().item(), top1.mean().item(), kl.tolist()


def run(model, ids, cfg, methods, budgets, progress, emit=lambda record: None):
    """ids [1, N + F]: context then the tokens to feed. Records per (method,
    budget), each passed to emit(record) as it finishes. The context is read
    once for the cells that can share it (`backend.SharedReads`;
    `compress_s` is a cell's own time after that read, `prefix_s` the
    read's)."""
    n = ids.shape[1] - cfg.fidelity_next
    context, nxt = ids[:, :n], ids[:, n:]
    with torch.no_grad():
        full = model(ids, logits_to_keep=cfg.fidelity_next).logits[0]
    shared = backend.SharedReads(model, cfg, methods)
    records = []
    for method in methods:
        for budget in ([1.0] if method == "full" else budgets):
            ctx, seconds, prefix_s = shared.compress_context("context", context, method, budget)
            kl, top1, per_pos = kl_and_top1(full, ctx.forward(nxt)[0])
            kv_bytes, kv_tokens = backend.cache_stats(ctx.cache)
            records.append({
                "method": method, "budget": budget, "kl": kl, "top1": top1, "kl_per_position": per_pos,
                "compress_s": seconds, "prefix_s": prefix_s, "evict_s": ctx.eviction_seconds,
                "reconstruction_s": ctx.reconstruction_seconds, "kv_bytes": kv_bytes, "kv_tokens": kv_tokens,
            })
            emit(records[-1])
            progress.update(1)
    return records


def count(methods, budgets):
    """Number of (method, budget) cells `run` computes (for the progress bar)."""
    return sum(1 if m == "full" else len(budgets) for m in methods)

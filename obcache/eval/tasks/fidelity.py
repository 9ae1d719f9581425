"""Fidelity: how close the compressed cache's next-token distributions stay
to the full cache's. A real-text context is compressed (query-agnostic), then
the next F tokens are fed; per position, KL(full || compressed) and whether
the top-1 tokens agree. Independent of model quality, so it separates methods
even on a small model. Run on several disjoint windows of the text
(--fidelity-windows), which are the independent samples of the paired
comparison with each OBC row's base (report.fidelity_paired_rows).
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


def run(model, windows, cfg, methods, budgets, progress, emit=lambda record: None):
    """windows: [1, N + F] token ids each, a context then the tokens to feed
    (text.windows). Per (window, method, budget) a record, passed to
    emit(record) as it finishes; returns one record per (method, budget),
    its windows combined (combine). A window's context is read once for the
    cells that can share it (`backend.SharedReads`; `compress_s` is a cell's
    own time after that read, `prefix_s` the read's)."""
    cells = {}
    for w, ids in enumerate(windows):
        n = ids.shape[1] - cfg.fidelity_next
        context, nxt = ids[:, :n], ids[:, n:]
        with torch.no_grad():
            full = model(ids, logits_to_keep=cfg.fidelity_next).logits[0]
        shared = backend.SharedReads(model, cfg, methods)  # one window's reads: freed with the next
        for method in methods:
            for budget in ([1.0] if method == "full" else budgets):
                ctx, seconds, prefix_s = shared.compress_context("context", context, method, budget)
                kl, top1, per_pos = kl_and_top1(full, ctx.forward(nxt)[0])
                kv_bytes, kv_tokens = backend.cache_stats(ctx.cache)
                record = {
                    "method": method, "budget": budget, "window": w, "kl": kl, "top1": top1,
                    "kl_per_position": per_pos, "compress_s": seconds, "prefix_s": prefix_s,
                    "evict_s": ctx.eviction_seconds, "reconstruction_s": ctx.reconstruction_seconds,
                    "kv_bytes": kv_bytes, "kv_tokens": kv_tokens,
                }
                cells.setdefault((method, budget), []).append(record)
                emit(record)
                progress.update(1)
    return [combine(recs) for recs in cells.values()]


def combine(window_records):
    """One (method, budget)'s record over its windows: KL, top-1 and the
    costs as means over the windows, each window's KL and top-1 kept
    (kl_windows, top1_windows: what the paired comparison reads) and its
    per-position KLs (kl_per_position [windows][F])."""
    first, k = window_records[0], len(window_records)

    def mean(key):
        return sum(r[key] for r in window_records) / k

    out = {"method": first["method"], "budget": first["budget"], "windows": k, "kl": mean("kl"),
           "top1": mean("top1"), "kl_windows": [r["kl"] for r in window_records],
           "top1_windows": [r["top1"] for r in window_records],
           "kl_per_position": [r["kl_per_position"] for r in window_records]}
    for key in ("compress_s", "prefix_s", "evict_s", "reconstruction_s", "kv_bytes", "kv_tokens"):
        out[key] = mean(key)
    return out


def count(methods, budgets, windows=1):
    """Number of (window, method, budget) cells `run` computes (for the progress bar)."""
    return windows * sum(1 if m == "full" else len(budgets) for m in methods)

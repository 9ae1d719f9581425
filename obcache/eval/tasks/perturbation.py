"""Attention-output perturbation of each eviction method, per layer and head.

Per text window (--perturb-windows, disjoint, spread over the text), one
forward pass over context + future tokens captures every layer's post-RoPE
q, k, v. For each method and budget, the method's score picks the
context tokens each KV head keeps (`obcache.eval.policies`, on the ops);
the error is ||O_pruned - O_full|| / ||O_full|| of the attention output of
the F *future* queries (after the scoring window), which attend to the kept
context tokens and to the future tokens themselves. No generation needed.

`oracle` scores with the future queries themselves (the better of the
`attn` and `key` scores per head, unpooled), under the same sink +
recent-window policy: a reference for scores computed from a window of past
queries. Not a strict ceiling: the queries that score it are those its error
is measured on, and picking the better of two scores per head favours it.
"""
import time

import torch

from obcache.eval import policies
from obcache.methods import base_of

ORACLE_SCORES = ("attn", "key")


def output_error(q, k, v, keep, n_ctx, scale):
    """Relative output error [Hkv] (float64) of the future queries q[:, :, n_ctx:]
    when only `keep` [1, Hkv, n_ctx] of the context tokens remain.
    q: [1, Hq, T, D]; k, v: [1, Hkv, T, D] over context + future tokens."""
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    F = T - n_ctx
    logits = scale * q[:, :, n_ctx:].double() @ k.double().repeat_interleave(G, 1).transpose(-1, -2)
    vv = v.double().repeat_interleave(G, 1)
    causal = torch.ones(F, T, dtype=torch.bool).tril(n_ctx)
    full = logits.masked_fill(~causal, float("-inf"))
    o_full = torch.softmax(full, -1) @ vv
    visible = torch.cat([keep, torch.ones(B, Hkv, F, dtype=torch.bool)], -1).repeat_interleave(G, 1)
    o_pruned = torch.softmax(full.masked_fill(~visible.unsqueeze(2), float("-inf")), -1) @ vv
    err = (o_pruned - o_full).reshape(B, Hkv, -1).norm(dim=-1)
    return (err / o_full.reshape(B, Hkv, -1).norm(dim=-1)).squeeze(0)


def scored(methods):
    """The methods this task can score (the reconstruction rows are listed as unsupported)."""
    return [m for m in methods if policies.supported(m)]


def _kept(method, layer, n_ctx, budget, cfg, op):
    """Candidate index sets for one layer (the oracle has one per score)."""
    q, k, v, scale = layer
    kc, vc = k[:, :, :n_ctx], v[:, :, :n_ctx]
    if method == "oracle":
        return [policies.oracle_indices(s, q[:, :, n_ctx:], kc, vc, budget, cfg, scale, op) for s in ORACLE_SCORES]
    return [policies.keep_indices(method, q[:, :, :n_ctx], kc, vc, budget, cfg, scale, op)]


def run(windows, n_ctx, cfg, methods, budgets, progress):
    """windows: per text window, its per-layer (q, k, v, scale) over n_ctx
    context + F future tokens (an iterable: one window's capture is held at
    a time). Returns (records {method, budget, error [layers][Hkv] (mean
    over the windows), error_windows [windows][layers][Hkv], mean_error,
    mean_error_windows, select_ms (per window)}, win shares of each OBC
    score over its base)."""
    op = policies.ops()
    cells = {}
    for w, layers in enumerate(windows):
        if w == 0:
            # One untimed selection first, so that the first timed row does not pay the ops' first-call costs.
            _kept("oracle", layers[0], n_ctx, int(round(budgets[0] * n_ctx)), cfg, op)
        for budget_frac in budgets:
            budget = int(round(budget_frac * n_ctx))
            for method in [m for m in scored(methods) if m != "full"] + ["oracle"]:
                errors, seconds = [], 0.0
                for layer in layers:
                    t0 = time.perf_counter()
                    cands = _kept(method, layer, n_ctx, budget, cfg, op)
                    seconds += time.perf_counter() - t0
                    q, k, v, scale = layer
                    errs = torch.stack([output_error(q, k, v, policies.keep_mask(i, n_ctx), n_ctx, scale)
                                        for i in cands])
                    errors.append(errs.min(0).values.tolist())
                progress.update(1)
                cell = cells.setdefault((method, budget_frac), {"budget_tokens": budget, "errors": [], "seconds": []})
                cell["errors"].append(errors)
                cell["seconds"].append(seconds)
    records = []
    for (method, budget_frac), cell in cells.items():
        err = torch.tensor(cell["errors"], dtype=torch.float64)  # [windows, layers, Hkv]
        records.append({
            "method": method, "budget": budget_frac, "budget_tokens": cell["budget_tokens"],
            "windows": err.shape[0], "error": err.mean(0).tolist(), "error_windows": cell["errors"],
            "mean_error": float(err.mean()), "mean_error_windows": err.mean((1, 2)).tolist(),
            "select_ms": 1000 * sum(cell["seconds"]) / len(cell["seconds"]), "backend": op[-1],
        })
    return records, win_shares(records, methods)


def win_shares(records, methods):
    """Share of (window, layer, head) triples where an OBC method's error is
    below its attention-only base method's error, per budget (ties count
    half)."""
    by = {(r["method"], r["budget"]): torch.tensor(r["error_windows"]) for r in records}
    out = []
    for (method, budget), err in by.items():
        base = base_of(method, methods)
        if base is None or (base, budget) not in by:
            continue
        ref = by[(base, budget)]
        share = ((err < ref).double() + 0.5 * (err == ref).double()).mean().item()
        out.append({"method": method, "base": base, "budget": budget, "win_share": share})
    return out


def count(methods, budgets, windows=1):
    """Number of (window, method, budget) cells `run` computes, the oracle included (for the progress bar)."""
    return windows * len(budgets) * (len([m for m in scored(methods) if m != "full"]) + 1)

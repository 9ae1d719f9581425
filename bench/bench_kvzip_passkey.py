"""Query-agnostic passkey on SmolLM2-135M with KVzip-style reconstruction
scores: kvzip against the OBC scores computed from the same reconstruction
queries, and variants (head-adaptive budgets, pooling, sum vs max over the
queries, chunked reconstruction).

Per trial the context (the prompts of obcache/eval/tasks/passkey.py) is
prefilled once and reconstructed once; every score of every variant comes
from that one pass (`obcache.hf.score_by_reconstruction` with a list of
specs), and each (variant, budget) cell compresses its own copy of the
context cache (`ScoredContext.compress`, what compress_context runs) and
answers the question on it. The scores, the
selection and the decoding are those of `compress_context(model, ctx,
method, budget)`; sharing the pass only saves time.

    python bench/bench_kvzip_passkey.py --trials 20 --budgets 0.05 0.1 [--chunk 256]

Prints accuracy with 95% Wilson intervals per (variant, budget) and the
wall time (prefill, reconstruction, per-cell compress + answer); writes JSON.
"""
import argparse
import dataclasses
import json
import os
import platform
import time

import torch
from tqdm import tqdm

import obcache.hf as hf
from obcache.eval.stats import wilson
from obcache.eval.tasks.passkey import _passed, make_trials
from obcache.hf import reconstruct
from obcache.methods import METHODS

S = reconstruct.ScoreSpec

# name -> (method row to start from, spec, overrides of the row)
VARIANTS = {
    "kvzip": ("kvzip", S("attn", "max", "max"), {}),
    "kvzip pool7": ("kvzip", S("attn", "max", "max"), dict(pooled=True)),
    "kvzip+obc-key": ("kvzip+obc-key", S("key", "sum", "sum"), {}),
    "kvzip+obc-key nopool": ("kvzip+obc-key", S("key", "sum", "sum"), dict(pooled=False)),
    "kvzip+obc-key max": ("kvzip+obc-key", S("key", "max", "sum"), {}),
    "kvzip+obc-key max/max": ("kvzip+obc-key", S("key", "max", "max"), {}),
    "kvzip+obc-joint": ("kvzip+obc-joint", S("joint", "sum", "sum"), {}),
    "kvzip+loo": ("kvzip+loo", S("loo", "sum", "sum"), {}),
    "kvzip+loo max": ("kvzip+loo", S("loo", "max", "sum"), {}),
    "adakv+kvzip": ("adakv+kvzip", S("attn", "max", "max"), {}),
    "adakv+kvzip+obc-key": ("adakv+kvzip+obc-key", S("key", "sum", "sum"), {}),
    "adakv+kvzip+obc-key max": ("adakv+kvzip+obc-key", S("key", "max", "sum"), {}),
    "adakv+kvzip+obc-key max/max": ("adakv+kvzip+obc-key", S("key", "max", "max"), {}),
    "adakv+kvzip+loo max": ("adakv+kvzip+loo", S("loo", "max", "sum"), {}),
    "adakv+kvzip+obc-joint": ("adakv+kvzip+obc-joint", S("joint", "sum", "sum"), {}),
    "adakv+kvzip+loo": ("adakv+kvzip+loo", S("loo", "sum", "sum"), {}),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=20, help="trials per depth (5 depths)")
    ap.add_argument("--length", type=int, default=1000)
    ap.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.1])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--no-full", action="store_true", help="skip the uncompressed reference row")
    ap.add_argument("--chunk", type=int, default=None, help="context tokens per reconstruction chunk")
    ap.add_argument("--prompt", default=reconstruct.REPEAT_PROMPT)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--sink", type=int, default=4)
    ap.add_argument("--floor", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "kvzip_passkey.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = hf.load_model()
    repeat_ids = reconstruct.repeat_prompt_ids(model, tok, args.prompt)
    trials = make_trials(tok, [args.length], args.depths, args.trials, args.seed)
    variants = {name: VARIANTS[name] for name in args.variants}
    specs = sorted({spec for _, spec, _ in variants.values()}, key=str)
    results = {(v, b): [] for v in variants for b in args.budgets}
    full = [] if not args.no_full else None
    seconds = {"prefill": 0.0, "reconstruction": 0.0, "cells": {k: 0.0 for k in results}}
    t_all = time.perf_counter()
    kw = dict(window=args.window, sink=args.sink, floor=args.floor)
    # a variant is its base row with the spec's reductions and the overrides
    variant_rows = {name: dataclasses.replace(METHODS[base], query_reduce=spec.query_reduce,
                                              group_reduce=spec.group_reduce, **over)
                    for name, (base, spec, over) in variants.items()}
    for t in tqdm(trials, desc="trials"):
        ctx_ids, q_ids = torch.tensor([t["context"]]), torch.tensor([t["question"]])
        read = hf.score_by_reconstruction(model, ctx_ids, specs, repeat_ids=repeat_ids, chunk=args.chunk)
        seconds["prefill"] += read.prefill_seconds
        seconds["reconstruction"] += read.seconds
        if full is not None:  # the reference: the whole context cache (any variant at a budget of every token)
            name, (base, _, _) = next(iter(variants.items()))
            ctx = read.compress(base, 1.0, method_row=variant_rows[name], **kw)
            new = ctx.generate(q_ids, max_new_tokens=7, do_sample=False, pad_token_id=tok.pad_token_id)
            full.append(bool(_passed(tok, new[0], t["key"])))
        for name, (base, _, _) in variants.items():
            for b in args.budgets:
                c0 = time.perf_counter()
                ctx = read.compress(base, b, method_row=variant_rows[name], **kw)
                new = ctx.generate(q_ids, max_new_tokens=7, do_sample=False, pad_token_id=tok.pad_token_id)
                results[(name, b)].append(bool(_passed(tok, new[0], t["key"])))
                seconds["cells"][(name, b)] += time.perf_counter() - c0
    wall = time.perf_counter() - t_all

    n = len(trials)
    print(f"\nSmolLM2-135M, query-agnostic passkey, {args.length} tokens, {n} trials per cell "
          f"(depths {args.depths}), repeat prompt {args.prompt!r}, chunk {args.chunk}")
    print(f"prefill {seconds['prefill'] / n:.2f} s/trial, reconstruction pass + {len(specs)} scores "
          f"{seconds['reconstruction'] / n:.2f} s/trial, total wall {wall:.0f} s")
    print(f"{'variant':28s} " + " ".join(f"{f'{b:.0%}':>22s}" for b in args.budgets))
    rows = []
    if full is not None:
        k = sum(full)
        lo, hi = wilson(k, n)
        print(f"{'full (no eviction)':28s} {f'{k:3d}/{n} {k / n:5.1%} [{lo:.2f},{hi:.2f}]':>22s}")
        rows.append({"variant": "full", "method": "full", "budget": 1.0, "correct": k, "trials": n, "accuracy": k / n,
                     "ci95": [lo, hi]})
    for name in variants:
        cells = []
        for b in args.budgets:
            k = sum(results[(name, b)])
            lo, hi = wilson(k, n)
            cells.append(f"{k:3d}/{n} {k / n:5.1%} [{lo:.2f},{hi:.2f}]")
            rows.append({"variant": name, "method": variants[name][0], "spec": dataclasses.asdict(variants[name][1]),
                         "overrides": variants[name][2], "budget": b, "correct": k, "trials": n, "accuracy": k / n,
                         "ci95": [lo, hi], "cell_seconds": seconds["cells"][(name, b)] / n,
                         "outcomes": [{"depth": tr["depth"], "passed": p} for tr, p in zip(trials, results[(name, b)])]})
        print(f"{name:28s} " + " ".join(f"{c:>22s}" for c in cells))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "trials": n, "prefill_s_per_trial": seconds["prefill"] / n,
                   "reconstruction_s_per_trial": seconds["reconstruction"] / n, "specs": len(specs), "wall_s": wall,
                   "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
                   "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

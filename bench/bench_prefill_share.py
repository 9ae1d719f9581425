"""End to end on SmolLM2-135M: the share of prefill time spent in scoring and
eviction, per method, at 2k and 4k prompt tokens (budget 10%).

Each prefill runs the whole prompt through the model inside
`obcache.hf.compress`; the hooks count the wall time of their eviction work
(recomputing the window queries, scoring, selecting, compacting) in
`Compression.eviction_seconds`. share = eviction seconds / prefill seconds
of the same run, median over --repeats runs. The methods take turns (one
prefill each per round), so a machine whose speed drifts over minutes
(shared cloud hosts do) slows every method alike. Target: under 3% for
every OBC method.

    python bench/bench_prefill_share.py [--lengths 2048 4096] [--repeats 3]
"""
import argparse
import json
import os
import platform
import statistics
import time

import torch
from tqdm import tqdm

import obcache.hf as hf
from obcache.hf.cache_arg import cache_kw
from obcache.methods import METHODS


def prompt_ids(tok, n):
    import pydoc_data.topics

    text = "\n".join(pydoc_data.topics.topics.values())
    ids = tok(text, return_tensors="pt").input_ids[:, :n]
    if ids.shape[1] < n:
        raise SystemExit(f"the text has only {ids.shape[1]} tokens, fewer than {n}")
    return ids


def prefill(model, ids, method, budget):
    from transformers import DynamicCache

    with torch.no_grad(), hf.compress(model, method, budget) as h:
        t0 = time.perf_counter()
        model(ids, use_cache=True, **{cache_kw(model): DynamicCache(config=model.config)})
        total = time.perf_counter() - t0
    return total, h.eviction_seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--methods", nargs="+", default=[m for m, spec in METHODS.items() if m != "full" and not spec.reconstructs],
                    help="methods that evict during prefill (reconstruction methods score after it; "
                         "bench_kvzip_passkey.py times them)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "prefill_share.json"))
    args = ap.parse_args()

    model, tok = hf.load_model()
    rows = []
    methods = ["full"] + args.methods
    bar = tqdm(total=len(args.lengths) * len(methods) * (args.repeats + 1), desc="prefill")
    for n in args.lengths:
        ids = prompt_ids(tok, n)
        runs = {m: [] for m in methods}
        for r in range(args.repeats + 1):  # round 0 warms up: allocator, thread pool, cached bounds
            for m in methods:
                t = prefill(model, ids, m, args.budget)
                if r:
                    runs[m].append(t)
                bar.update()
        for m in methods:
            rows.append(dict(tokens=n, method=m, prefill_s=statistics.median(t for t, _ in runs[m]),
                             eviction_s=statistics.median(e for _, e in runs[m]),
                             share=statistics.median(e / t for t, e in runs[m])))
    bar.close()

    print(f"\nSmolLM2-135M prefill, budget {args.budget:.0%}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'tokens':>6}  {'method':<18} {'prefill s':>9} {'evict s':>8} {'share':>7}  target<3%")
    for r in rows:
        obc = "obc" in r["method"]
        ok = ("met" if r["share"] < 0.03 else "MISSED") if obc else ""
        print(f"{r['tokens']:>6}  {r['method']:<18} {r['prefill_s']:>9.3f} {r['eviction_s']:>8.4f} "
              f"{r['share']:>7.2%}  {ok}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    meta = dict(machine=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                torch=torch.__version__, budget=args.budget, repeats=args.repeats,
                loadavg=os.getloadavg())
    with open(args.out, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()

"""What query-agnostic compression costs per method on SmolLM2-135M: the
wall time of `obcache.hf.compress_context` on one passkey context (the
prompts of obcache/eval/tasks/passkey.py), split into the reconstruction
pass (kvzip rows only), the method's eviction and the rest (the prefill),
next to the same context read with no eviction. Each method is timed
`--repeats` times in turn (round-robin, so drifting load hits every row
alike) and the median is reported.

    python bench/bench_kvzip_cost.py --threads 1 --length 1024 --methods kvzip kvzip+obc-key adakv+kvzip+loo

Prints a table and writes JSON.
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
from obcache.eval.tasks.passkey import make_trials
from obcache.methods import get_method

DEFAULT_METHODS = ["full", "snapkv+obc-key", "kvzip", "kvzip+obc-key", "kvzip+obc-joint", "kvzip+loo",
                   "adakv+kvzip+obc-key", "adakv+kvzip+loo"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--budget", type=float, default=0.05)
    ap.add_argument("--chunk", type=int, default=None, help="context tokens per reconstruction chunk")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "kvzip_cost.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = hf.load_model()
    ctx = torch.tensor([make_trials(tok, [args.length], [0.5], 1, seed=0)[0]["context"]])
    runs = {m: [] for m in args.methods}
    hf.compress_context(model, ctx, method=args.methods[0], budget=1.0)  # warm-up: first-call allocations
    for _ in tqdm(range(args.repeats), desc="rounds"):
        for m in args.methods:
            t0 = time.perf_counter()
            c = hf.compress_context(model, ctx, method=m, budget=1.0 if m == "full" else args.budget,
                                    **({"reconstruction_chunk": args.chunk} if args.chunk and get_method(m).reconstructs else {}))
            total = time.perf_counter() - t0
            runs[m].append({"total_s": total, "reconstruction_s": c.reconstruction_seconds,
                            "eviction_s": c.eviction_seconds})
    rows = []
    for m, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        rows.append({"method": m, **med, "repeats": len(rs)})
    full = next((r["total_s"] for r in rows if r["method"] == "full"), None)
    print(f"\nSmolLM2-135M, compress_context on a {ctx.shape[1]}-token passkey context, budget {args.budget}, "
          f"chunk {args.chunk}, threads {torch.get_num_threads()}, median of {args.repeats}")
    print(f"{'method':24s} {'total s':>8s} {'reconstruction s':>17s} {'eviction s':>11s} {'x full':>7s}")
    for r in rows:
        ratio = f"{r['total_s'] / full:.2f}" if full else ""
        print(f"{r['method']:24s} {r['total_s']:8.2f} {r['reconstruction_s']:17.2f} {r['eviction_s']:11.3f} "
              f"{ratio:>7s}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "tokens": ctx.shape[1], "machine": platform.processor() or platform.machine(),
                   "torch": torch.__version__, "rows": rows, "runs": runs}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

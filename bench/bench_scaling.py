"""How evict's cost grows with the context length N and the batch B (issue 10):
time per token and peak extra memory per token of one `obcache.evict` call,
N from 1k to 128k and B from 1 to 8, at H_kv=8, G=4, W=32, D=128, budget
N/10, joint score, sink 4, recent W, max pooling kernel 7.

Flat curves are the target: time per token constant means the kernels stay
linear in B*N (no quadratic pass, no slowdown once K and V leave the
caches); extra memory per token constant or falling means no allocation
grows faster than the input.

Every (B, N) runs in a fresh subprocess (bench/common.py: measure_call): one
call measures the peak extra memory (ru_maxrss over the RSS before the
call), then timed calls give the median. evict compacts in place, so k and
v are refilled with the same normal draws before each call, outside the
timer (a cache compacted by an earlier call has its kept rows in front
already, which compact_ skips; a clone instead would double the memory at
B=8, N=128k, where K and V alone take 8 GiB). Prints a table, writes
bench/out/scaling.json and bench/out/scaling.png.

    python bench/bench_scaling.py [--ns 1024 4096 16384 65536 131072] [--bs 1 2 4 8] [--dtype float32]
"""
import argparse
import json
import os
import sys

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as cm  # noqa: E402
from common import D, G, HKV, W  # noqa: E402

SINK, POOL_KERNEL, SCORE = 4, 7, "joint"


def child(b, n, dtype, repeats):
    import obcache

    k, v, q = cm.inputs(n, dtype=cm.DTYPES[dtype], b=b)
    obcache.evict(k[:, :, :256], v[:, :, :256], q, 64, score=SCORE, sink=SINK, pool_kernel=POOL_KERNEL)  # warm up

    def call():
        obcache.evict(k, v, q, n // 10, score=SCORE, sink=SINK, pool_kernel=POOL_KERNEL)

    def refill():  # an uncompacted cache each call, in place (outside the measurement)
        gen = torch.Generator().manual_seed(1)
        k.normal_(generator=gen)
        v.normal_(generator=gen)
        return ()

    print(json.dumps(cm.measure_call(call, refill, repeats)))


def repeats_for(tokens, target_tokens=500_000):
    """More timed calls for small problems (each call is then short), at least 3."""
    return max(3, min(30, target_tokens // tokens))


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for b in sorted({r["B"] for r in rows}):
        sub = sorted((r for r in rows if r["B"] == b and r.get("s")), key=lambda r: r["N"])
        ns = [r["N"] for r in sub]
        axes[0].plot(ns, [r["us_per_token"] for r in sub], "o-", label=f"B={b}")
        axes[1].plot(ns, [r["extra_bytes_per_token"] for r in sub], "o-", label=f"B={b}")
    axes[0].set_ylabel("evict time per token (µs)")
    axes[1].set_ylabel("peak extra memory per token (bytes)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length N")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    kv = rows[0]["kv_bytes_per_token"]
    fig.suptitle(f"obcache.evict on CPU, {rows[0]['dtype']}, joint, budget N/10, H_kv={HKV}, G={G}, W={W}, "
                 f"D={D} (K+V: {kv} bytes per token)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ns", type=int, nargs="+", default=[1024, 4096, 16384, 65536, 131072])
    ap.add_argument("--bs", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--dtype", default="float32", choices=sorted(cm.DTYPES))
    ap.add_argument("--max-gib", type=float, default=12.0,
                    help="skip a point whose K and V alone exceed this (the machine has %.0f GiB)" %
                    (cm.machine().get("mem_total_GiB") or 0))
    ap.add_argument("--out", default=os.path.join(cm.OUT_DIR, "scaling.json"))
    ap.add_argument("--child", nargs=4, metavar=("B", "N", "DTYPE", "REPEATS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), int(args.child[1]), args.child[2], int(args.child[3]))
        return

    import torch

    elem = torch.finfo(cm.DTYPES[args.dtype]).bits // 8
    kv_per_token = 2 * HKV * D * elem
    mach, rows = cm.machine(), []
    jobs = [(b, n) for b in args.bs for n in args.ns]
    for b, n in tqdm(jobs, desc="scaling"):
        row = {"B": b, "N": n, "dtype": args.dtype, "kv_bytes_per_token": kv_per_token, "load_before": cm.loadavg()}
        if b * n * kv_per_token > args.max_gib * 2**30:
            row["error"] = "skipped: K and V need %.1f GiB > --max-gib %g" % (b * n * kv_per_token / 2**30,
                                                                              args.max_gib)
        else:
            r = cm.run_child(__file__, ["--child", b, n, args.dtype, repeats_for(b * n)])
            row.update(error=r.get("error"), s=r.get("median_s"), times_s=r.get("times_s"))
            if "median_s" in r:
                row["us_per_token"] = r["median_s"] / (b * n) * 1e6
                row["extra_MiB"] = r["extra_bytes"] / 2**20
                row["extra_bytes_per_token"] = r["extra_bytes"] / (b * n)
        row["load_after"] = cm.loadavg()
        rows.append(row)

    print(f"\nobcache.evict, {args.dtype}, joint, budget N/10, H_kv={HKV}, G={G}, W={W}, D={D}; "
          f"K+V {kv_per_token} bytes per token; {mach.get('cpu_model', '?')}, {mach['threads']} threads")
    print(f"{'B':>2} {'N':>7} {'median ms':>10} {'µs/token':>9} {'extra MiB':>10} {'extra B/token':>14} "
          f"{'load':>5}")
    for r in rows:
        if r.get("s") is None:
            print(f"{r['B']:>2} {r['N']:>7}  {r['error']}")
            continue
        print(f"{r['B']:>2} {r['N']:>7} {r['s'] * 1e3:>10.1f} {r['us_per_token']:>9.2f} {r['extra_MiB']:>10.1f} "
              f"{r['extra_bytes_per_token']:>14.0f} {r['load_before'][0]:>5.1f}")
    ok = [r for r in rows if r.get("s")]
    if ok:
        t = [r["us_per_token"] for r in ok]
        m = [r["extra_bytes_per_token"] for r in ok]
        print(f"time per token: min {min(t):.2f}, max {max(t):.2f} µs (max/min {max(t) / min(t):.2f}); "
              f"extra memory per token: max {max(m):.0f} bytes = {max(m) / kv_per_token:.1%} of K+V")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": mach, "score": SCORE, "sink": SINK, "pool_kernel": POOL_KERNEL, "H_kv": HKV, "G": G,
                   "W": W, "D": D, "rows": rows}, f, indent=1)
    png = os.path.splitext(args.out)[0] + ".png"
    if ok:
        plot(rows, png)
    print("wrote", args.out, "and", png)


if __name__ == "__main__":
    main()

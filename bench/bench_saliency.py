"""CPU saliency kernel (torch.ops.obcache.saliency) vs the reference
(obcache.reference.saliency with compute_dtype=float32) at B=1, H_kv=8, G=4,
W=32, D=128, float32, N in {4096, 16384, 65536}.

Every (implementation, score, N) runs in a fresh subprocess: the first call
measures peak extra memory (ru_maxrss after the call, its high-water mark
reset once the inputs exist, minus the RSS at that point), then `--repeats` timed calls give the median. The reference of
key / joint / loo forms a [B, H_q, W, N, D] difference tensor (8 GiB at
N = 16384); runs whose estimated peak exceeds --ref-max-gib are skipped and
reported as such. Prints a table; writes bench/out/saliency.json.

    python bench/bench_saliency.py [--ns 4096 16384 65536] [--scores attn joint] [--repeats 5] [--quick]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from tqdm import tqdm

B, HKV, G, W, D = 1, 8, 4, 32, 128
HERE = os.path.dirname(os.path.abspath(__file__))


def inputs(N, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, HKV, N, D, generator=g)
    v = torch.randn(B, HKV, N, D, generator=g)
    q = torch.randn(B, HKV * G, W, D, generator=g)
    return k, v, q


def run_obcache(k, v, q, score):
    return torch.ops.obcache.saliency(k, v, q, score)


def run_reference(k, v, q, score):
    from obcache import reference as ref
    return ref.saliency(k, v, q, score, compute_dtype=torch.float32)


IMPLS = {"obcache": run_obcache, "reference": run_reference}


def reference_peak_estimate(N, score):
    """Bytes the float32 reference needs at its peak (dominant tensors)."""
    hq_w_n = B * HKV * G * W * N
    expanded = 2 * B * HKV * G * N * D * 4  # k, v repeated to the query heads
    if score in ("key", "joint", "loo"):
        return expanded + 2 * hq_w_n * D * 4 + 8 * hq_w_n * 4  # v - o and its square
    return expanded + 8 * hq_w_n * 4


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss():
    # Linux >= 4.0: resets the high-water RSS that ru_maxrss reports, so the
    # peak is that of the measured call, not of the input creation.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def child(impl, score, N, repeats):
    import obcache  # noqa: F401  (load the extension before measuring)
    k, v, q = inputs(N)
    IMPLS[impl](k[:, :, :64], v[:, :, :64], q, score)  # warm up code paths
    base = rss_bytes()
    reset_peak_rss()
    t = time.perf_counter()
    IMPLS[impl](k, v, q, score)
    first = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        IMPLS[impl](k, v, q, score)
        times.append(time.perf_counter() - t)
    print(json.dumps({"extra_bytes": max(0, peak - base), "median_s": statistics.median(times or [first]),
                      "times_s": times or [first]}))


def measure(impl, score, N, repeats):
    out = subprocess.run([sys.executable, __file__, "--child", impl, score, str(N), str(repeats)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--scores", nargs="+", default=["attn", "value", "joint"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref-max-gib", type=float, default=6.0)
    ap.add_argument("--quick", action="store_true", help="N=4096, joint, 2 repeats")
    ap.add_argument("--child", nargs=4, metavar=("IMPL", "SCORE", "N", "REPEATS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), int(args.child[3]))
        return
    if args.quick:
        args.ns, args.scores, args.repeats = [4096], ["joint"], 2
    jobs = [(N, s) for N in args.ns for s in args.scores]
    rows = []
    for N, score in tqdm(jobs, desc="saliency bench"):
        row = {"N": N, "score": score, "B": B, "H_kv": HKV, "G": G, "W": W, "D": D, "dtype": "float32",
               "threads": torch.get_num_threads(), "kv_input_MiB": 2 * B * HKV * N * D * 4 / 2**20}
        o = measure("obcache", score, N, args.repeats)
        row["obcache_s"], row["obcache_extra_MiB"] = o.get("median_s"), o.get("extra_bytes", 0) / 2**20
        row["obcache_error"] = o.get("error")
        est = reference_peak_estimate(N, score)
        row["reference_estimate_GiB"] = est / 2**30
        if est > args.ref_max_gib * 2**30:
            row["reference_s"] = row["reference_extra_MiB"] = None
            row["reference_error"] = "skipped: needs ~%.0f GiB" % (est / 2**30)
        else:
            r = measure("reference", score, N, args.repeats)
            row["reference_s"], row["reference_error"] = r.get("median_s"), r.get("error")
            row["reference_extra_MiB"] = r["extra_bytes"] / 2**20 if "extra_bytes" in r else None
        if row["obcache_s"] and row["reference_s"]:
            row["speedup"] = row["reference_s"] / row["obcache_s"]
            # obcache's extra memory (output + per-thread workspaces, < 1 MiB
            # here) is often below what RSS can see: floored at 1 MiB.
            row["memory_ratio"] = row["reference_extra_MiB"] / max(row["obcache_extra_MiB"], 1.0)
        # 4 GEMM-sized products (pass 1: Q K^T, P V; pass 2: Q K^T, O V^T)
        # for key / joint / loo, 2 (Q K^T twice) for the others.
        gemms = 4 if score in ("key", "joint", "loo") else 2
        if row["obcache_s"]:
            row["obcache_GFLOPs"] = gemms * 2 * B * HKV * G * W * N * D / row["obcache_s"] / 1e9
        rows.append(row)

    def fmt(x, spec, none="-"):
        return format(x, spec) if x is not None else none

    print(f"{'N':>6} {'score':>6} {'obcache ms':>11} {'GFLOP/s':>8} {'reference ms':>13} {'speedup':>8} "
          f"{'obc extra MiB':>14} {'ref extra MiB':>14} {'mem ratio':>9} {'K+V MiB':>8}")
    for r in rows:
        ref_ms = fmt(r["reference_s"] and 1e3 * r["reference_s"], ".1f", "skipped")
        print(f"{r['N']:>6} {r['score']:>6} {fmt(r['obcache_s'] and 1e3 * r['obcache_s'], '.1f'):>11} "
              f"{fmt(r.get('obcache_GFLOPs'), '.0f'):>8} {ref_ms:>13} {fmt(r.get('speedup'), '.2f'):>7}x "
              f"{r['obcache_extra_MiB']:>14.1f} {fmt(r['reference_extra_MiB'], '.1f'):>14} "
              f"{fmt(r.get('memory_ratio'), '.0f'):>8}x {r['kv_input_MiB']:>8.1f}")
        for k in ("obcache_error", "reference_error"):
            if r.get(k):
                print(f"       {k}: {r[k]}")
    print("(mem ratio = reference extra / max(obcache extra, 1 MiB); GFLOP/s counts the GEMM-sized products only)")
    os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
    path = os.path.join(HERE, "out", "saliency.json")
    with open(path, "w") as f:
        json.dump({"config": "B=1 H_kv=8 G=4 W=32 D=128 float32, CPU, median of %d" % args.repeats,
                   "torch": torch.__version__, "rows": rows}, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()

"""CPU evict (obcache.evict: torch.ops.obcache.evict, in place) vs three
baselines measured in the same run, at B=1, H_kv=8, G=4, W=32, D=128,
budget N/10, joint score, sink=4, recent=W, max pooling kernel 7:

- kvpress: bench/baselines.py kvpress_evict (repeat_kv, matmul, softmax,
  plain-torch joint score, F.max_pool1d, topk, gather into new tensors);
- torch-gqa: the same in plain PyTorch written for GQA (gqa_scores: no
  repeat_kv, each KV head's G x W query rows in one product), the faster
  way to write it without kernels of one's own;
- reference: obcache.reference.saliency (float32 compute), torch.topk,
  torch.gather into new tensors. Its joint score forms a [B, H_q, W, N, D]
  difference (~17 GiB at N=16384), so it also runs one KV head at a time
  (`reference/head`, identical result, 1/8 of the memory); a run whose
  estimated peak exceeds --ref-max-gib is skipped and reported as such.

float32 at every --ns, plus bfloat16 inputs at --bf16-ns. Every
(implementation, N, dtype) runs in a fresh subprocess (bench/common.py:
measure_call): one call measures the peak extra memory (ru_maxrss over the
RSS before the call; the in-place op gets fresh clones of k and v, made
before the measurement), then --repeats timed calls give the median. The
machine's GEMM and memcpy peaks (bench/peak.py) are measured in the same run;
the obcache rows report achieved GFLOP/s and GB/s for the necessary work
(Q K^T, A V and O V^T once each; K and V read once, kept rows written once).
Load averages are recorded around each measurement, and obcache and kvpress
are also timed interleaved (alternating calls in one process, --repeats
rounds; the per-round ratio is robust to other jobs on the machine, which
the separate-process medians are not). Prints a table, writes
bench/out/evict.json.

    python bench/bench_evict.py [--ns 4096 16384 65536] [--bf16-ns 16384] [--repeats 5] [--quick]
"""
import argparse
import os
import sys

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import baselines as bl  # noqa: E402
import common as cm  # noqa: E402
from common import B, D, G, HKV, W  # noqa: E402
from peak import roofline  # noqa: E402

SINK, POOL_KERNEL, SCORE = 4, 7, "joint"
IMPLS = ("obcache", "kvpress", "torch-gqa", "reference", "reference/head")


def call(impl, k, v, q, budget):
    if impl == "obcache":
        import obcache

        return obcache.evict(k, v, q, budget, score=SCORE, sink=SINK, pool_kernel=POOL_KERNEL)
    if impl in ("kvpress", "torch-gqa"):
        return bl.kvpress_evict(k, v, q, budget, SCORE, sink=SINK, pool_kernel=POOL_KERNEL, gqa=impl == "torch-gqa")
    return bl.reference_evict(k, v, q, budget, SCORE, sink=SINK, pool_kernel=POOL_KERNEL,
                              per_head=impl == "reference/head")


def child(impl, N, dtype, repeats):
    import obcache  # noqa: F401  (load the extension before measuring)

    k0, v0, q = cm.inputs(N, dtype=cm.DTYPES[dtype])
    budget = N // 10
    call(impl, k0[:, :, :256].clone(), v0[:, :, :256].clone(), q, 64)  # warm up code paths

    def make_args():  # obcache compacts in place: fresh copies each call, outside the measurement
        return (impl, k0.clone(), v0.clone(), q, budget) if impl == "obcache" else (impl, k0, v0, q, budget)

    import json

    print(json.dumps(cm.measure_call(call, make_args, repeats)))


def child_interleaved(N, dtype, repeats):
    """obcache and kvpress alternately in one process, `repeats` rounds: both
    see the same machine state, so the per-round ratio is robust to other
    load on the machine (which the separate-process medians are not)."""
    import json
    import statistics
    import time

    import obcache  # noqa: F401

    k0, v0, q = cm.inputs(N, dtype=cm.DTYPES[dtype])
    budget = N // 10
    times = {"obcache": [], "kvpress": []}
    for impl in times:  # warm up
        call(impl, k0[:, :, :256].clone(), v0[:, :, :256].clone(), q, 64)
    for _ in range(repeats):
        for impl in times:
            k, v = (k0.clone(), v0.clone()) if impl == "obcache" else (k0, v0)
            t = time.perf_counter()
            call(impl, k, v, q, budget)
            times[impl].append(time.perf_counter() - t)
            del k, v
    ratios = [b / a for a, b in zip(times["obcache"], times["kvpress"])]
    print(json.dumps({"times_s": times, "median_s": {i: statistics.median(t) for i, t in times.items()},
                      "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
                      "ratio_max": max(ratios)}))


def estimate_bytes(impl, N, dtype):
    elem = torch.finfo(cm.DTYPES[dtype]).bits // 8
    if impl.startswith("reference"):
        # float32 copies of bf16 inputs come on top of the saliency's tensors
        extra = 2 * B * HKV * N * D * 4 if elem != 4 else 0
        return bl.reference_peak_bytes(B, HKV, G, W, N, D, SCORE, per_head=impl == "reference/head") + extra
    if impl in ("kvpress", "torch-gqa"):
        return bl.kvpress_peak_bytes(B, HKV, G, W, N, D, SCORE, elem, gqa=impl == "torch-gqa")
    return 0


def necessary_work(N, dtype):
    elem = torch.finfo(cm.DTYPES[dtype]).bits // 8
    flops = 3 * 2 * B * HKV * G * W * N * D  # Q K^T, A V, O V^T
    bytes_ = 2 * B * HKV * N * D * elem + 2 * B * HKV * (N // 10) * D * elem  # read K, V; write kept rows
    return flops, bytes_


def main():
    ap = argparse.ArgumentParser(description="CPU evict vs kvpress-style and reference baselines")
    ap.add_argument("--ns", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--bf16-ns", type=int, nargs="*", default=[16384])
    ap.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref-repeats", type=int, default=3, help="timed calls of the (slow) reference")
    ap.add_argument("--ref-max-gib", type=float, default=6.0,
                    help="skip a baseline whose estimated peak memory exceeds this (free -g: %s)" % "see README")
    ap.add_argument("--peak-repeats", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="N=4096, float32 only, 2 repeats")
    ap.add_argument("--out", default="evict.json")
    ap.add_argument("--no-interleaved", action="store_true",
                    help="skip the interleaved obcache / kvpress timing (one process, alternating calls)")
    ap.add_argument("--child", nargs=4, metavar=("IMPL", "N", "DTYPE", "REPEATS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.child[0] == "interleaved":
            child_interleaved(int(args.child[1]), args.child[2], int(args.child[3]))
        else:
            child(args.child[0], int(args.child[1]), args.child[2], int(args.child[3]))
        return
    if args.quick:
        args.ns, args.bf16_ns, args.repeats, args.ref_repeats, args.peak_repeats = [4096], [], 2, 1, 3

    load_start, mach = cm.loadavg(), cm.machine()  # commit / worktree state at the start
    peak = cm.run_child(os.path.join(cm.HERE, "peak.py"), ["--json", "--repeats", args.peak_repeats])
    configs = [(N, "float32") for N in args.ns] + [(N, "bfloat16") for N in args.bf16_ns]
    jobs = [(N, dt, impl) for N, dt in configs for impl in args.impls]
    if not args.no_interleaved and {"obcache", "kvpress"} <= set(args.impls):
        jobs += [(N, dt, "interleaved") for N, dt in configs]
    results = {}
    for N, dt, impl in tqdm(jobs, desc="evict bench"):
        if impl == "interleaved":
            load = cm.loadavg()
            r = cm.run_child(__file__, ["--child", impl, N, dt, args.repeats])
            r["load_before"], r["load_after"] = load, cm.loadavg()
            results[N, dt, impl] = r
            continue
        est = estimate_bytes(impl, N, dt)
        if est > args.ref_max_gib * 2**30:
            results[N, dt, impl] = {"error": "skipped: needs ~%.1f GiB > --ref-max-gib %g" % (est / 2**30,
                                                                                           args.ref_max_gib)}
            continue
        reps = args.ref_repeats if impl.startswith("reference") else args.repeats
        load = cm.loadavg()
        r = cm.run_child(__file__, ["--child", impl, N, dt, reps])
        r["load_before"], r["load_after"], r["estimate_GiB"] = load, cm.loadavg(), est / 2**30
        results[N, dt, impl] = r

    rows = []
    for N, dt in configs:
        elem = torch.finfo(cm.DTYPES[dt]).bits // 8
        row = {"N": N, "budget": N // 10, "dtype": dt, "score": SCORE, "sink": SINK, "recent": W,
               "pool_kernel": POOL_KERNEL, "B": B, "H_kv": HKV, "G": G, "W": W, "D": D,
               "kv_input_MiB": 2 * B * HKV * N * D * elem / 2**20, "impls": {}}
        for impl in args.impls:
            r = results[N, dt, impl]
            row["impls"][impl] = {"s": r.get("median_s"), "times_s": r.get("times_s"),
                                  "extra_MiB": r["extra_bytes"] / 2**20 if "extra_bytes" in r else None,
                                  "error": r.get("error"), "load_before": r.get("load_before"),
                                  "load_after": r.get("load_after"), "estimate_GiB": r.get("estimate_GiB")}
        ob = row["impls"].get("obcache", {})
        if ob.get("s"):
            for impl in args.impls[1:] if args.impls[0] == "obcache" else []:
                if row["impls"][impl]["s"]:
                    row[f"speedup_vs_{impl}"] = row["impls"][impl]["s"] / ob["s"]
            # one KV head's [N, D] slice in the input dtype: an allocation of that size or more would
            # show up as extra_MiB >= this
            il = results.get((N, dt, "interleaved"))
            if il and "ratio_median" in il:
                row["interleaved"] = il
                row["speedup_vs_kvpress_interleaved"] = il["ratio_median"]
            row["one_head_ND_MiB"] = N * D * elem / 2**20
            row["obcache_extra_over_KV"] = ob["extra_MiB"] / row["kv_input_MiB"]
            if "gemm_GFLOPs" in peak:
                row["obcache_roofline"] = roofline(*necessary_work(N, dt), ob["s"], peak)
        rows.append(row)

    print()
    cm.print_peak(peak)
    names = args.impls
    hdr = f"{'N':>6} {'dtype':>8} " + " ".join(f"{n + ' ms':>17}" for n in names) + " " + \
        " ".join(f"{'vs ' + n:>16}" for n in names[1:]) + " " + " ".join(f"{n[:10] + ' MiB':>15}" for n in names) + \
        f" {'K+V MiB':>8} {'GFLOP/s':>8} {'%peakF':>6} {'GB/s':>6} {'%roof':>6}"
    print(hdr)
    for r in rows:
        cells = [f"{r['N']:>6} {r['dtype']:>8}"]
        cells += [f"{cm.fmt(r['impls'][n]['s'] and 1e3 * r['impls'][n]['s'], '.1f', 'skipped'):>17}" for n in names]
        cells += [f"{cm.fmt(r.get('speedup_vs_' + n), '.2f'):>15}x" for n in names[1:]]
        cells += [f"{cm.fmt(r['impls'][n]['extra_MiB'], '.1f'):>15}" for n in names]
        rf = r.get("obcache_roofline") or {}
        cells += [f"{r['kv_input_MiB']:>8.1f} {cm.fmt(rf.get('achieved_GFLOPs'), '.1f'):>8} "
                  f"{cm.fmt(rf.get('frac_peak_flops') and 100 * rf['frac_peak_flops'], '.0f'):>6} "
                  f"{cm.fmt(rf.get('achieved_GBs'), '.1f'):>6} "
                  f"{cm.fmt(rf.get('frac_roofline') and 100 * rf['frac_roofline'], '.0f'):>6}"]
        print(" ".join(cells))
        il = r.get("interleaved")
        if il:
            print(f"{'':>16}interleaved (one process, alternating): obcache {1e3 * il['median_s']['obcache']:.1f} ms, "
                  f"kvpress {1e3 * il['median_s']['kvpress']:.1f} ms, kvpress/obcache per round: median "
                  f"{il['ratio_median']:.2f}x (min {il['ratio_min']:.2f}, max {il['ratio_max']:.2f})")
        cm.print_errors({n: r["impls"][n] for n in names}, 16)
    print("(vs X = X time / obcache time; MiB = peak extra RSS of one call; GFLOP/s, GB/s: obcache's necessary work;"
          " %peakF = of the FMA peak (the GEMM one without a C compiler); %roof = roofline floor / time)")
    cm.write_run(args.out, "evict", "B=1 H_kv=8 G=4 W=32 D=128 budget=N/10 score=joint sink=4 recent=W pool=max7, "
                 "CPU, median of %d (reference: %d)" % (args.repeats, args.ref_repeats), mach, peak, load_start, rows)


if __name__ == "__main__":
    main()

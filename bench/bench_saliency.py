"""CPU saliency kernel (torch.ops.obcache.saliency) vs the reference
(obcache.reference.saliency with compute_dtype=float32) and the kvpress-style
plain-PyTorch score (bench/baselines.py kvpress_scores, scores it covers:
attn, value, key, joint) at B=1, H_kv=8, G=4, W=32, D=128, float32.

Jobs: every score of --scores at every --ns, plus every score the op supports
without an o_proj weight (attn tova vatp value key joint loo) at
--all-scores-ns. For the scores that read O (key, joint, loo), `obcache+o`
is the op given the window's attention output (`o`, as a model's attention
hands it over: computed before the timed calls), which skips O's product.
Every (implementation, score, N) runs in a fresh subprocess
(bench/common.py: measure_call): the first call measures peak extra memory
(ru_maxrss after the call, its high-water mark reset once the inputs exist,
minus the RSS at that point), then `--repeats` timed calls give the median.
The reference of key / joint / loo forms a [B, H_q, W, N, D] difference
tensor (8 GiB at N = 16384); when the estimated peak exceeds --ref-max-gib
the reference runs one KV head at a time (`reference/head`: the same result,
1/8 of the memory), and is skipped, reported as such, when even that is over.
The GEMM / memcpy peaks of bench/peak.py are measured in the same run.
Prints a table; writes bench/out/saliency.json.

    python bench/bench_saliency.py [--ns 4096 16384 65536] [--scores attn joint] [--all-scores-ns 16384]
                                   [--repeats 5] [--quick]
"""
import argparse
import json
import os
import sys

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import baselines as bl  # noqa: E402
import common as cm  # noqa: E402
from common import B, D, G, HKV, W  # noqa: E402
from peak import roofline  # noqa: E402

from obcache.ops.saliency import O_SCORES  # noqa: E402  (the scores that read a given o)

ALL_SCORES = ("attn", "tova", "vatp", "value", "key", "joint", "loo")
IMPLS = ("obcache", "obcache+o", "kvpress", "reference", "reference/head")


def call(impl, k, v, q, score, o=None):
    if impl.startswith("obcache"):
        return torch.ops.obcache.saliency(k, v, q, score, o=o)
    if impl == "kvpress":
        return bl.kvpress_scores(k, v, q, score)
    return bl.reference_scores(k, v, q, score, per_head=impl == "reference/head")


def child(impl, score, N, repeats):
    import obcache  # noqa: F401  (load the extension before measuring)

    k, v, q = cm.inputs(N)
    o = bl.window_output(k, v, q) if impl == "obcache+o" else None
    call(impl, k[:, :, :64], v[:, :, :64], q, score)  # warm up code paths
    print(json.dumps(cm.measure_call(call, lambda: (impl, k, v, q, score, o), repeats)))


def necessary_work(N, score, given_o=False):
    # GEMM-sized products: Q K^T (+ A V unless O is given, and O V^T, for key / joint / loo); K (and V)
    # read once. tova scores with the last window query only: one row per query head.
    gemms = (2 if given_o else 3) if score in O_SCORES else 1
    rows = 1 if score == "tova" else W
    reads_v = score not in ("attn", "tova")
    return gemms * 2 * B * HKV * G * rows * N * D, (2 if reads_v else 1) * B * HKV * N * D * 4


def main():
    ap = argparse.ArgumentParser(description="CPU saliency vs the reference and the kvpress-style score")
    ap.add_argument("--ns", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--scores", nargs="+", default=["attn", "joint"], choices=ALL_SCORES)
    ap.add_argument("--all-scores-ns", type=int, nargs="*", default=[16384],
                    help="sizes at which every score is run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref-repeats", type=int, default=2, help="timed calls of the (slow) reference")
    ap.add_argument("--ref-max-gib", type=float, default=6.0)
    ap.add_argument("--peak-repeats", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="N=4096, joint, 2 repeats")
    ap.add_argument("--out", default="saliency.json")
    ap.add_argument("--child", nargs=4, metavar=("IMPL", "SCORE", "N", "REPEATS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), int(args.child[3]))
        return
    if args.quick:
        args.ns, args.scores, args.all_scores_ns, args.repeats, args.ref_repeats = [4096], ["joint"], [], 2, 1
        args.peak_repeats = 3
    pairs = [(N, s) for N in args.ns for s in args.scores] + [(N, s) for N in args.all_scores_ns for s in ALL_SCORES]
    pairs = sorted(set(pairs), key=lambda p: (p[0], ALL_SCORES.index(p[1])))

    load_start, mach = cm.loadavg(), cm.machine()  # commit / worktree state at the start
    peak = cm.run_child(os.path.join(cm.HERE, "peak.py"), ["--json", "--repeats", args.peak_repeats])
    rows = []
    for N, score in tqdm(pairs, desc="saliency bench"):
        row = {"N": N, "score": score, "B": B, "H_kv": HKV, "G": G, "W": W, "D": D, "dtype": "float32",
               "threads": torch.get_num_threads(), "kv_input_MiB": 2 * B * HKV * N * D * 4 / 2**20, "impls": {}}
        impls = ["obcache"] + (["obcache+o"] if score in O_SCORES else []) + (["kvpress"] if score in bl.SCORES else [])
        est = bl.reference_peak_bytes(B, HKV, G, W, N, D, score)
        ref_impl = "reference" if est <= args.ref_max_gib * 2**30 else "reference/head"
        est = est if ref_impl == "reference" else bl.reference_peak_bytes(B, HKV, G, W, N, D, score, per_head=True)
        for impl in impls + [ref_impl]:
            if impl == ref_impl and est > args.ref_max_gib * 2**30:
                row["impls"][impl] = {"s": None, "extra_MiB": None, "estimate_GiB": est / 2**30,
                                      "error": "skipped: needs ~%.1f GiB even per head" % (est / 2**30)}
                continue
            load = cm.loadavg()
            reps = args.ref_repeats if impl.startswith("reference") else args.repeats
            r = cm.run_child(__file__, ["--child", impl, score, N, reps])
            row["impls"][impl] = {"s": r.get("median_s"), "times_s": r.get("times_s"),
                                  "extra_MiB": r["extra_bytes"] / 2**20 if "extra_bytes" in r else None,
                                  "error": r.get("error"), "load_before": load, "load_after": cm.loadavg()}
            if impl == ref_impl:
                row["impls"][impl]["estimate_GiB"] = est / 2**30
        row["reference_impl"] = ref_impl
        ob = row["impls"]["obcache"]
        if ob["s"]:
            for impl in ("kvpress", ref_impl):
                other = row["impls"].get(impl, {})
                if other.get("s"):
                    key = "kvpress" if impl == "kvpress" else "reference"
                    row[f"speedup_vs_{key}"] = other["s"] / ob["s"]
                    # obcache's extra memory (output + per-thread workspaces) is often below what RSS can
                    # see: floored at 1 MiB.
                    row[f"memory_ratio_vs_{key}"] = other["extra_MiB"] / max(ob["extra_MiB"], 1.0)
            if "gemm_GFLOPs" in peak:
                row["obcache_roofline"] = roofline(*necessary_work(N, score), ob["s"], peak)
        obo = row["impls"].get("obcache+o", {})
        if ob["s"] and obo.get("s"):
            row["speedup_given_o"] = ob["s"] / obo["s"]
            if "gemm_GFLOPs" in peak:
                row["obcache+o_roofline"] = roofline(*necessary_work(N, score, given_o=True), obo["s"], peak)
        rows.append(row)

    print()
    cm.print_peak(peak)
    print(f"{'N':>6} {'score':>6} {'obcache ms':>11} {'kvpress ms':>11} {'reference ms':>14} {'vs kvpress':>10} "
          f"{'vs ref':>8} {'obc MiB':>8} {'kvp MiB':>8} {'ref MiB':>8} {'GFLOP/s':>8} {'%peakF':>6} {'%roof':>6} "
          f"{'+o ms':>7} {'+o GF/s':>8}")
    for r in rows:
        im = r["impls"]
        ref = im[r["reference_impl"]]
        ref_ms = cm.fmt(ref["s"] and 1e3 * ref["s"], ".1f", "skipped") + ("/h" if r["reference_impl"] != "reference"
                                                                          and ref["s"] else "")
        kv = im.get("kvpress", {})
        rf = r.get("obcache_roofline") or {}
        print(f"{r['N']:>6} {r['score']:>6} {cm.fmt(im['obcache']['s'] and 1e3 * im['obcache']['s'], '.1f'):>11} "
              f"{cm.fmt(kv.get('s') and 1e3 * kv['s'], '.1f'):>11} {ref_ms:>14} "
              f"{cm.fmt(r.get('speedup_vs_kvpress'), '.2f'):>9}x {cm.fmt(r.get('speedup_vs_reference'), '.2f'):>7}x "
              f"{cm.fmt(im['obcache']['extra_MiB'], '.1f'):>8} {cm.fmt(kv.get('extra_MiB'), '.1f'):>8} "
              f"{cm.fmt(ref['extra_MiB'], '.1f'):>8} {cm.fmt(rf.get('achieved_GFLOPs'), '.1f'):>8} "
              f"{cm.fmt(rf.get('frac_peak_flops') and 100 * rf['frac_peak_flops'], '.0f'):>6} "
              f"{cm.fmt(rf.get('frac_roofline') and 100 * rf['frac_roofline'], '.0f'):>6} "
              f"{cm.fmt(im.get('obcache+o', {}).get('s') and 1e3 * im['obcache+o']['s'], '.1f', ''):>7} "
              f"{cm.fmt((r.get('obcache+o_roofline') or {}).get('achieved_GFLOPs'), '.1f', ''):>8}")
        cm.print_errors(im, 14)
    print("(vs X = X time / obcache time; /h = reference run one KV head at a time; MiB = peak extra RSS of one call;"
          " GFLOP/s counts the GEMM-sized products only; %peakF = of the FMA peak (the GEMM one without a C compiler); %roof = roofline floor / time;"
          " +o = the op given the window's attention output o, GF/s of its two products)")
    cm.write_run(args.out, "saliency", "B=1 H_kv=8 G=4 W=32 D=128 float32, CPU, median of %d (reference: %d)"
                 % (args.repeats, args.ref_repeats), mach, peak, load_start, rows)


if __name__ == "__main__":
    main()

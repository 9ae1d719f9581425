"""CPU select and compact_ (torch.ops.obcache.select / compact_, the second
and third steps of evict) vs the kvpress way (bench/baselines.py:
kvpress_select: F.max_pool1d, topk, sort; gather_kv: gather into new
tensors) and the reference (obcache.reference.select / compact), at B=1,
H_kv=8, D=128, budget N/10, sink 4, recent W=32, max pooling kernel 7.

select reads scores [B, H_kv, N] (float32, uniform random: every key a
distinct score) and writes the kept indices; compact_ moves the kept rows of
K and V (float32) to the front in place, from indices select picked.
Necessary bytes: select, the scores read once and the indices written once;
compact_, the kept rows of K and V read and written once and the indices
read. Both are memory-bound, so the rates are GB/s and fractions of this
run's memcpy peak (bench/peak.py). Every (op, implementation, N) runs in a
fresh subprocess (bench/common.py: measure_call; compact_ gets fresh copies
of K and V before each call, outside the measurement). Prints a table;
writes bench/out/select_compact.json.

    python bench/bench_select_compact.py [--ns 4096 16384 65536] [--repeats 20]
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
from common import B, D, HKV, W  # noqa: E402
from peak import roofline  # noqa: E402

SINK, POOL_KERNEL = 4, 7
OPS, IMPLS = ("select", "compact_"), ("obcache", "kvpress", "reference")


def scores_of(N):
    return torch.rand(B, HKV, N, generator=torch.Generator().manual_seed(0))


def kept(N):
    """select's indices of scores_of(N): what compact_ moves."""
    return torch.ops.obcache.select(scores_of(N), N // 10, sink=SINK, recent=W, pool_kernel=POOL_KERNEL)


def child(op, impl, N, repeats):
    import obcache
    from obcache import reference as ref

    budget = N // 10
    if op == "select":
        s = scores_of(N)
        fn = {"obcache": lambda: obcache.select(s, budget, sink=SINK, recent=W, pool_kernel=POOL_KERNEL),
              "kvpress": lambda: bl.kvpress_select(s, budget, SINK, W, POOL_KERNEL),
              "reference": lambda: ref.select(s, budget, sink=SINK, recent=W, pool_kernel=POOL_KERNEL)}[impl]
        fn()  # warm up
        print(json.dumps(cm.measure_call(fn, tuple, repeats)))
        return
    k0, v0, _ = cm.inputs(N)
    idx = kept(N)
    if impl == "obcache":
        obcache.compact_(k0[:, :, :64].clone(), v0[:, :, :64].clone(), 2 * torch.arange(8).expand(B, HKV, 8))  # warm up
        # in place: fresh copies each call, outside the measurement
        print(json.dumps(cm.measure_call(obcache.compact_, lambda: (k0.clone(), v0.clone(), idx), repeats)))
        return
    fn = bl.gather_kv if impl == "kvpress" else ref.compact
    fn(k0, v0, idx)
    print(json.dumps(cm.measure_call(fn, lambda: (k0, v0, idx), repeats)))


def necessary_bytes(op, N):
    budget = N // 10
    if op == "select":
        return B * HKV * N * 4 + B * HKV * budget * 8
    return 2 * 2 * B * HKV * budget * D * 4 + B * HKV * budget * 8


def main():
    ap = argparse.ArgumentParser(description="CPU select and compact_ vs the kvpress way and the reference")
    ap.add_argument("--ns", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--peak-repeats", type=int, default=10)
    ap.add_argument("--out", default="select_compact.json")
    ap.add_argument("--child", nargs=4, metavar=("OP", "IMPL", "N", "REPEATS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), int(args.child[3]))
        return
    load_start, mach = cm.loadavg(), cm.machine()
    peak = cm.run_child(os.path.join(cm.HERE, "peak.py"), ["--json", "--repeats", args.peak_repeats])
    rows = []
    for op, N in tqdm([(op, N) for op in OPS for N in args.ns], desc="select / compact_ bench"):
        row = {"op": op, "N": N, "budget": N // 10, "threads": torch.get_num_threads(), "impls": {}}
        for impl in IMPLS:
            r = cm.run_child(__file__, ["--child", op, impl, N, args.repeats])
            row["impls"][impl] = {"s": r.get("median_s"), "extra_MiB": r["extra_bytes"] / 2**20
                                  if "extra_bytes" in r else None, "error": r.get("error")}
        ob = row["impls"]["obcache"]["s"]
        if ob:
            for impl in ("kvpress", "reference"):
                if row["impls"][impl]["s"]:
                    row[f"speedup_vs_{impl}"] = row["impls"][impl]["s"] / ob
            if "memcpy_best_GBs" in peak:
                row["obcache_roofline"] = roofline(0, necessary_bytes(op, N), ob, peak)
        rows.append(row)

    print()
    cm.print_peak(peak)
    print(f"{'op':>9} {'N':>6} {'obcache ms':>11} {'kvpress ms':>11} {'ref ms':>9} {'vs kvpress':>10} {'vs ref':>8} "
          f"{'GB/s':>7} {'%memcpy':>8}")
    for r in rows:
        im, rf = r["impls"], r.get("obcache_roofline") or {}
        ms = [cm.fmt(im[i]["s"] and 1e3 * im[i]["s"], ".3f") for i in IMPLS]
        print(f"{r['op']:>9} {r['N']:>6} {ms[0]:>11} {ms[1]:>11} {ms[2]:>9} "
              f"{cm.fmt(r.get('speedup_vs_kvpress'), '.2f'):>9}x {cm.fmt(r.get('speedup_vs_reference'), '.2f'):>7}x "
              f"{cm.fmt(rf.get('achieved_GBs'), '.1f'):>7} "
              f"{cm.fmt(rf.get('frac_peak_bw') and 100 * rf['frac_peak_bw'], '.0f'):>8}")
        cm.print_errors(im, 14)
    print("(vs X = X time / obcache time; GB/s: the necessary bytes (see the docstring) over obcache's median; "
          "%memcpy: of the best copy_ rate of this run, which counts read + write)")
    cm.write_run(args.out, "select_compact", "B=1 H_kv=8 D=128 float32, budget N/10, sink 4, recent 32, max pool 7, "
                 "CPU, median of %d" % args.repeats, mach, peak, load_start, rows)


if __name__ == "__main__":
    main()

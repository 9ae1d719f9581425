"""CPU projected_value_norm (torch.ops.obcache.projected_value_norm, the
kernel of CriticalKV's and LaProx's scores) vs the kvpress way of writing it
(bench/baselines.py kvpress_projected_norm: a [B, N, hidden] matmul per query
head, then torch.norm) and the float32 reference (obcache.reference:
[B, H_q, N, hidden] at once), at two real layer shapes:

    smollm2: H_kv 3, G 3, D 64, hidden 576 (SmolLM2-135M, the eval's model)
    llama8b: H_kv 8, G 4, D 128, hidden 4096 (Llama-3.1-8B)

Each (implementation, shape, N, dtype, p) runs in a fresh subprocess
(bench/common.py measure_call: peak extra memory of the first call, median
of --repeats timed calls); bench/peak.py's GEMM / FMA / memcpy peaks are
measured in the same run. Necessary work: 2 B H_q N D hidden FLOPs, v and wo
read once. Prints a table; writes bench/out/projected_value.json.

    python bench/bench_projected_value.py [--cases smollm2:4096 smollm2:16384 llama8b:2048] [--repeats 5]
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
from peak import roofline  # noqa: E402

SHAPES = {"smollm2": (3, 3, 64, 576), "llama8b": (8, 4, 128, 4096)}  # H_kv, G, D, hidden
IMPLS = ("obcache", "kvpress", "reference")


def make_inputs(shape, N, dtype):
    hkv, g, d, hidden = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(1, hkv, N, d, generator=gen).to(dtype)
    wo = (torch.randn(hidden, hkv * g * d, generator=gen) / (hkv * g * d) ** 0.5).to(dtype)
    return v, wo


def call(impl, v, wo, p):
    if impl == "obcache":
        return torch.ops.obcache.projected_value_norm(v, wo, p)
    if impl == "kvpress":
        return bl.kvpress_projected_norm(v, wo, p)
    from obcache import reference as ref

    return ref.projected_value_norm(v, wo, p, compute_dtype=torch.float32)


def child(impl, shape, N, dtype, p, repeats):
    import obcache  # noqa: F401  (load the extension before measuring)

    v, wo = make_inputs(shape, N, cm.DTYPES[dtype])
    call(impl, v[:, :, :64], wo, p)  # warm up code paths
    print(json.dumps(cm.measure_call(call, lambda: (impl, v, wo, p), repeats)))


def necessary_work(shape, N, dtype):
    hkv, g, d, hidden = SHAPES[shape]
    elem = torch.empty(0, dtype=cm.DTYPES[dtype]).element_size()
    return 2 * hkv * g * N * d * hidden, (hkv * N * d + hidden * hkv * g * d) * elem + hkv * g * N * 4


def gemm_peak(peak, dtype):
    """The peaks with the GEMM rate a row of `dtype` is a fraction of:
    bfloat16 rows against torch.mm in bfloat16 (native on CPUs with
    AVX512-BF16 or AMX, where float32's would flatter them), when measured."""
    if dtype == "bfloat16" and "gemm_bf16_best_GFLOPs" in peak:
        return {**peak, "gemm_best_GFLOPs": peak["gemm_bf16_best_GFLOPs"]}
    return peak


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["smollm2:4096", "smollm2:16384", "llama8b:2048"],
                    help="SHAPE:N with SHAPE in " + ", ".join(SHAPES))
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(cm.DTYPES))
    ap.add_argument("--norms", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peak-repeats", type=int, default=5)
    ap.add_argument("--out", default="projected_value.json")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        impl, shape, N, dtype, p, reps = args.child
        child(impl, shape, int(N), dtype, int(p), int(reps))
        return
    jobs = []
    for case in args.cases:
        shape, N = case.split(":")
        if shape not in SHAPES:
            ap.error(f"--cases: unknown shape {shape!r} in {case!r}; known: {', '.join(SHAPES)}")
        jobs += [(shape, int(N), dt, p) for dt in args.dtypes for p in args.norms]

    mach = cm.machine()
    peak = cm.run_child(os.path.join(cm.HERE, "peak.py"), ["--json", "--repeats", args.peak_repeats,
                                                           *(["--gemm-bf16"] if "bfloat16" in args.dtypes else [])])
    rows = []
    for shape, N, dtype, p in tqdm(jobs, desc="projected_value bench"):
        row = {"shape": shape, "N": N, "dtype": dtype, "p": p, "threads": torch.get_num_threads(), "impls": {}}
        for impl in IMPLS:
            r = cm.run_child(__file__, ["--child", impl, shape, N, dtype, p, args.repeats])
            row["impls"][impl] = {"s": r.get("median_s"), "times_s": r.get("times_s"), "error": r.get("error"),
                                  "extra_MiB": r["extra_bytes"] / 2**20 if "extra_bytes" in r else None}
        ob = row["impls"]["obcache"]["s"]
        for impl in IMPLS[1:]:
            other = row["impls"][impl]["s"]
            row[f"speedup_vs_{impl}"] = other / ob if ob and other else None
        if ob and "gemm_best_GFLOPs" in peak:
            row["obcache_roofline"] = roofline(*necessary_work(shape, N, dtype), ob, gemm_peak(peak, dtype))
        rows.append(row)

    print()
    cm.print_peak(peak)
    print(f"{'shape':>8} {'N':>6} {'dtype':>8} {'p':>2} {'obcache ms':>11} {'kvpress ms':>11} {'ref ms':>9} "
          f"{'vs kvpress':>10} {'vs ref':>7} {'obc MiB':>8} {'kvp MiB':>8} {'GFLOP/s':>8} {'%GEMM':>6}")
    for r in rows:
        im, rf = r["impls"], r.get("obcache_roofline") or {}
        ms = {k: cm.fmt(im[k]["s"] and 1e3 * im[k]["s"], ".1f", im[k]["error"] and "error") for k in IMPLS}
        print(f"{r['shape']:>8} {r['N']:>6} {r['dtype']:>8} {r['p']:>2} {ms['obcache']:>11} {ms['kvpress']:>11} "
              f"{ms['reference']:>9} {cm.fmt(r['speedup_vs_kvpress'], '.2f'):>9}x "
              f"{cm.fmt(r['speedup_vs_reference'], '.2f'):>6}x {cm.fmt(im['obcache']['extra_MiB'], '.1f'):>8} "
              f"{cm.fmt(im['kvpress']['extra_MiB'], '.1f'):>8} {cm.fmt(rf.get('achieved_GFLOPs'), '.1f'):>8} "
              f"{cm.fmt(rf.get('frac_gemm') and 100 * rf['frac_gemm'], '.0f'):>6}")
    print("(vs X = X time / obcache time; MiB = peak extra RSS of one call; GFLOP/s: 2 B H_q N D hidden per call; "
          "%GEMM = of torch.mm's rate in this run, in the row's dtype for bfloat16)")
    print("wrote", cm.write_json(args.out, {"machine": mach, "peak": peak, "rows": rows}))


if __name__ == "__main__":
    main()

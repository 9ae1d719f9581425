"""CUDA kernels vs the reference and the kvpress-style baseline, timed with
CUDA events: saliency (joint; also `obcache+o`, given the window's attention
output as a model hands it over, and the same run with each of the
kernels' switches off, SWITCHES below: `obcache-fp32`, `obcache-l2off`,
`obcache-narrow`, `obcache-p1narrow`), select, compact_ and evict (also the
switches) at N in
{4k, 32k, 128k},
bfloat16 (--dtype float16 for float16), B=1, H_kv=8, G=4, W=32, D=128,
budget N/10, sink 4, recent W, max pooling kernel 7; and
projected_value_norm (the L1 norms of
CriticalKV's score; also `obcache-fp32`) with Llama-3.1-8B's o_proj, hidden
4096.

Per (op, N, implementation): --warmup untimed calls, then --repeats calls
each bracketed by CUDA events, median reported. Before every call the L2 is
flushed (a 256 MiB buffer is zeroed) and in-place ops (compact_, evict) get
k, v restored from a pristine copy, both outside the events. Peak extra GPU
memory: torch.cuda.max_memory_allocated during one call minus the memory
allocated before it. Baselines (bench/baselines.py): `kvpress` (repeat_kv,
matmul, softmax, plain-torch score, max_pool1d, topk, gather into new
tensors; for projected_value_norm CriticalKVPress's [N, hidden] matmul per
query head), `torch-gqa` (saliency and evict: the same score in plain
PyTorch written for GQA, no repeat_kv) and `reference` (obcache.reference in
float32, topk, gather; run
one KV head at a time, `reference/head`, when the whole reference's estimated
peak is over --ref-max-gib, skipped when that is over too; the projected
norm's reference, [B, H_q, N, hidden] at once, only skipped). The GPU's GEMM
(torch.mm 4096^2 in the benchmark's dtype: bfloat16 on the tensor cores) and
memcpy peaks are measured in the same run (bench/peak.py) for evict's
fraction of peak. Prints a table and writes bench/out/gpu.json.

Exits with status 2 and a message when no CUDA device (or no CUDA build of
obcache) is present; `--device cpu` runs the same harness on the CPU with
perf_counter (for testing this script only: those are not GPU numbers).

    python bench/bench_gpu.py [--ns 4096 32768 131072] [--repeats 50] [--ops saliency select compact evict]
"""
import argparse
import os
import statistics
import sys

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import baselines as bl  # noqa: E402
import common as cm  # noqa: E402
from common import B, D, G, HKV, W  # noqa: E402
from peak import measure_peak, roofline, timer  # noqa: E402

SINK, POOL_KERNEL, SCORE = 4, 7, "joint"
HIDDEN = 4096  # Llama-3.1-8B's o_proj rows (H_q * D = 32 * 128 columns)
OPS = ("saliency", "select", "compact", "evict", "projected_value")


def projection_weight(dtype, device):
    """A [HIDDEN, H_q * D] o_proj weight scaled as a trained one's output is."""
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(HIDDEN, HKV * G * D, generator=gen) / (HKV * G * D) ** 0.5).to(dtype).to(device)


def reference_peak(op, N, per_head):
    """Estimated peak bytes of the float32 reference for op (inputs included)."""
    if op == "projected_value":  # the [B, H_q, N, hidden] projections and their abs
        return 2 * B * HKV * G * N * HIDDEN * 4 + B * HKV * G * N * D * 4
    return bl.reference_peak_bytes(B, HKV, G, W, N, D, SCORE, per_head=per_head) + 2 * B * HKV * N * D * 4


def no_gpu_reason():
    if not torch.cuda.is_available():
        return "no CUDA device: torch.cuda.is_available() is False (torch %s, built with CUDA %s)" % (
            torch.__version__, torch.version.cuda)
    import obcache

    if not obcache.cuda_kernels_built():
        return ("obcache was built without its CUDA kernels (obcache.cuda_kernels_built() is False): rebuild with "
                "CUDA_HOME set, e.g. bash bench/gpu.sh")
    return None


class Timer:
    """Times fn() on `device`: CUDA events there, perf_counter on the CPU; an
    L2 flush before each call on CUDA."""

    def __init__(self, device):
        self.timed = timer(device)
        self.flush = torch.empty(64 * 2**20, dtype=torch.float32, device=device) if device == "cuda" else None

    def __call__(self, fn, prepare=None):
        if prepare:
            prepare()
        if self.flush is not None:
            self.flush.zero_()
        return self.timed(fn)


def extra_memory(fn, prepare, device):
    if device != "cuda":
        return None
    prepare()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    return (peak - base) / 2**20


# Environment switches the CUDA kernels read per call, each timed off beside the default as the same run's
# baseline for what it gains: (implementation name, variable, what =0 does, ops it applies to).
SWITCHES = (("obcache-fp32", "OBCACHE_CUDA_TENSOR_CORES", "16-bit inputs on the FP32 kernels, not the tensor cores",
             ("saliency", "evict", "projected_value")),
            ("obcache-l2off", "OBCACHE_CUDA_L2_REUSE", "saliency's pass 2 walks the heads in pass 1's order, not "
             "last to first", ("saliency", "evict")),
            ("obcache-narrow", "OBCACHE_CUDA_PASS2_WIDE", "saliency's tensor-core pass 2 on 128 keys per block, "
             "not 256", ("saliency", "evict")),
            ("obcache-p1narrow", "OBCACHE_CUDA_PASS1_WIDE", "saliency's tensor-core pass 1 on 64 rows per block, "
             "not 128", ("saliency", "evict")))


def switched_off(var, fn):
    """fn with the environment variable var set to 0."""
    def run():
        os.environ[var] = "0"
        try:
            return fn()
        finally:
            del os.environ[var]
    return run


def with_switches(op, cases):
    """cases plus, for each switch that applies to op, obcache's call with it off."""
    fn, prepare = cases["obcache"]
    for name, var, _, ops in SWITCHES:
        if op in ops:
            cases[name] = (switched_off(var, fn), prepare)
    return cases


def build_cases(op, N, k0, v0, q, k, v, scores, idx, per_head_ref, wo, o):
    """{impl: (fn, prepare)} for one op; prepare restores in-place inputs."""
    import obcache
    from obcache import reference

    budget = N // 10

    def restore():
        k.copy_(k0)
        v.copy_(v0)

    if op == "saliency":
        return {"obcache": (lambda: torch.ops.obcache.saliency(k0, v0, q, SCORE), None),
                "obcache+o": (lambda: torch.ops.obcache.saliency(k0, v0, q, SCORE, o=o), None),
                "kvpress": (lambda: bl.kvpress_scores(k0, v0, q, SCORE), None),
                "torch-gqa": (lambda: bl.gqa_scores(k0, v0, q, SCORE), None),
                "reference": (lambda: bl.reference_scores(k0, v0, q, SCORE, per_head=per_head_ref), None)}
    if op == "select":
        return {"obcache": (lambda: torch.ops.obcache.select(scores, budget, sink=SINK, recent=W,
                                                             pool_kernel=POOL_KERNEL), None),
                "kvpress": (lambda: bl.kvpress_select(scores, budget, SINK, W, POOL_KERNEL), None),
                "reference": (lambda: bl.reference_select(scores, budget, SINK, W, POOL_KERNEL), None)}
    if op == "compact":
        return {"obcache": (lambda: torch.ops.obcache.compact_(k, v, idx), restore),
                "kvpress": (lambda: bl.gather_kv(k0, v0, idx), None),
                "reference": (lambda: reference.compact(k0, v0, idx), None)}
    if op == "projected_value":
        return {"obcache": (lambda: torch.ops.obcache.projected_value_norm(v0, wo, 1), None),
                "kvpress": (lambda: bl.kvpress_projected_norm(v0, wo, 1), None),
                "reference": (lambda: reference.projected_value_norm(v0, wo, 1, compute_dtype=torch.float32), None)}
    evict = lambda: obcache.evict(k, v, q, budget, score=SCORE, sink=SINK, pool_kernel=POOL_KERNEL)  # noqa: E731
    return {"obcache": (evict, restore),
            "kvpress": (lambda: bl.kvpress_evict(k0, v0, q, budget, SCORE, sink=SINK, pool_kernel=POOL_KERNEL),
                        None),
            "torch-gqa": (lambda: bl.kvpress_evict(k0, v0, q, budget, SCORE, sink=SINK, pool_kernel=POOL_KERNEL,
                                                   gqa=True), None),
            "reference": (lambda: bl.reference_evict(k0, v0, q, budget, SCORE, sink=SINK, pool_kernel=POOL_KERNEL,
                                                     per_head=per_head_ref), None)}


def work(op, N, elem):
    """Necessary FLOPs and bytes of one op (see bench/results/kernels.md)."""
    kv = B * HKV * N * D * elem
    kept = B * HKV * (N // 10) * D * elem
    gemm = 2 * B * HKV * G * W * N * D
    if op == "saliency":
        return 3 * gemm, 2 * kv + B * HKV * N * 4
    if op == "select":
        return 0, B * HKV * N * 4 + B * HKV * (N // 10) * 8
    if op == "compact":
        return 0, 2 * 2 * kept + B * HKV * (N // 10) * 8
    if op == "projected_value":  # v and wo read once, float32 norms written
        return 2 * B * HKV * G * N * D * HIDDEN, kv + HIDDEN * HKV * G * D * elem + B * HKV * G * N * 4
    return 3 * gemm, 2 * kv + 2 * kept


def main():
    ap = argparse.ArgumentParser(description="CUDA kernels vs reference and kvpress-style baselines (CUDA events)")
    ap.add_argument("--ns", type=int, nargs="+", default=[4096, 32768, 131072])
    ap.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(cm.DTYPES))
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--ref-repeats", type=int, default=5, help="timed calls of the (slow) reference")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--ref-max-gib", type=float, default=40.0,
                    help="run the reference per KV head / skip it above this estimated peak")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: run the harness on the CPU (tests this script; not GPU numbers)")
    ap.add_argument("--out", default="gpu.json")
    args = ap.parse_args()
    device = args.device
    if device == "cuda":
        reason = no_gpu_reason()
        if reason:
            print("bench_gpu.py: " + reason + ". Nothing timed. The CPU benchmarks are bench/bench_evict.py and "
                  "bench/bench_saliency.py; `--device cpu` runs this harness on the CPU (not GPU numbers).",
                  file=sys.stderr)
            sys.exit(2)
    import obcache  # noqa: F401  (registers torch.ops.obcache)

    dtype = cm.DTYPES[args.dtype]
    elem = torch.finfo(dtype).bits // 8
    gpu_name = torch.cuda.get_device_name() if device == "cuda" else "cpu (harness test, not GPU numbers)"
    # The GEMM peak in the benchmark's dtype: for bfloat16 that is the tensor cores', which saliency uses too.
    peak = measure_peak(repeats=10 if device == "cuda" else 2, device=device,
                        copy_mib=1024 if device == "cuda" else 64, gemm_n=4096 if device == "cuda" else 512,
                        gemm_dtype=dtype if device == "cuda" else torch.float32)
    timer = Timer(device)
    rows = []
    jobs = [(N, op) for N in args.ns for op in args.ops]
    for N, op in tqdm(jobs, desc="gpu bench"):
        k0, v0, q = cm.inputs(N, dtype=dtype, device=device)
        k, v = k0.clone(), v0.clone()
        scores = torch.ops.obcache.saliency(k0, v0, q, SCORE)
        idx = torch.ops.obcache.select(scores, N // 10, sink=SINK, recent=W, pool_kernel=POOL_KERNEL)
        wo = projection_weight(dtype, device) if op == "projected_value" else None
        o = bl.window_output(k0, v0, q) if op == "saliency" else None
        est = reference_peak(op, N, per_head=False)
        # saliency and evict have a per-head reference to fall back on
        per_head = est > args.ref_max_gib * 2**30 and op in ("saliency", "evict")
        est_used = reference_peak(op, N, per_head=True) if per_head else est
        cases = with_switches(op, build_cases(op, N, k0, v0, q, k, v, scores, idx, per_head, wo, o))
        row = {"op": op, "N": N, "budget": N // 10, "dtype": args.dtype, "device": gpu_name, "impls": {}}
        for impl, (fn, prepare) in cases.items():
            name = "reference/head" if impl == "reference" and per_head else impl
            if impl == "reference" and (args.no_reference or (op in ("saliency", "evict", "projected_value")
                                                              and est_used > args.ref_max_gib * 2**30)):
                row["impls"][name] = {"s": None, "error": "skipped" if args.no_reference else
                                      "skipped: needs ~%.0f GiB even per head" % (est_used / 2**30)}
                continue
            reps = args.ref_repeats if impl == "reference" else args.repeats
            try:
                for _ in range(args.warmup if impl != "reference" else 1):
                    timer(fn, prepare)
                times = [timer(fn, prepare) for _ in range(reps)]
                mem = extra_memory(fn, prepare or (lambda: None), device)
                row["impls"][name] = {"s": statistics.median(times), "min_s": min(times), "extra_MiB": mem,
                                      "repeats": reps}
            except torch.OutOfMemoryError as e:  # a baseline that does not fit: reported, not fatal
                row["impls"][name] = {"s": None, "error": "out of memory: " + str(e).splitlines()[0]}
                torch.cuda.empty_cache()
        ob = row["impls"]["obcache"]["s"]
        for name, r in row["impls"].items():
            if ob and not name.startswith("obcache") and r.get("s"):  # no ratio where obcache itself ran out of memory
                row["speedup_vs_" + name.split("/")[0]] = r["s"] / ob
        if row["impls"].get("obcache+o", {}).get("s"):
            row["speedup_given_o"] = ob / row["impls"]["obcache+o"]["s"]
        for name, var, _, _ in SWITCHES:
            if row["impls"].get(name, {}).get("s"):
                row["speedup_vs_" + var + "=0"] = row["impls"][name]["s"] / ob
        row["obcache_roofline"] = roofline(*work(op, N, elem), ob, peak)
        rows.append(row)
        del k0, v0, q, k, v, scores, idx, cases, wo, o
        if device == "cuda":
            torch.cuda.empty_cache()

    print()
    print(f"device: {gpu_name}; peak (best of {peak['repeats']}): {peak['gemm']} {peak['gemm_best_GFLOPs']:.0f} "
          f"GFLOP/s, memcpy {peak['memcpy_best_GBs']:.0f} GB/s")
    print(f"{'op':>15} {'N':>7} {'obcache ms':>11} {'kvpress ms':>11} {'reference ms':>13} {'vs kvpress':>10} "
          f"{'vs ref':>9} {'obc MiB':>8} {'kvp MiB':>8} {'GB/s':>7} {'GFLOP/s':>8} {'%roof':>6}")
    for r in rows:
        im = r["impls"]
        ref = im.get("reference") or im.get("reference/head") or {}
        rf = r["obcache_roofline"]
        print(f"{r['op']:>15} {r['N']:>7} {1e3 * im['obcache']['s']:>11.3f} "
              f"{cm.fmt(im['kvpress'].get('s') and 1e3 * im['kvpress']['s'], '.3f'):>11} "
              f"{cm.fmt(ref.get('s') and 1e3 * ref['s'], '.3f', 'skipped'):>13} "
              f"{cm.fmt(r.get('speedup_vs_kvpress'), '.2f'):>9}x {cm.fmt(r.get('speedup_vs_reference'), '.1f'):>8}x "
              f"{cm.fmt(im['obcache'].get('extra_MiB'), '.1f'):>8} {cm.fmt(im['kvpress'].get('extra_MiB'), '.1f'):>8} "
              f"{rf['achieved_GBs']:>7.0f} {rf['achieved_GFLOPs']:>8.0f} {100 * rf['frac_roofline']:>6.1f}")
        for name, var, what, _ in SWITCHES:
            if im.get(name, {}).get("s"):
                print(f"{'':>24}{name}, {var}=0 ({what}): {1e3 * im[name]['s']:.3f} ms, "
                      f"{r['speedup_vs_' + var + '=0']:.2f}x obcache's time")
        if im.get("torch-gqa", {}).get("s"):
            print(f"{'':>24}torch-gqa (plain PyTorch written for GQA, no repeat_kv): "
                  f"{1e3 * im['torch-gqa']['s']:.3f} ms, {r['speedup_vs_torch-gqa']:.2f}x obcache's time")
        if im.get("obcache+o", {}).get("s"):
            print(f"{'':>24}obcache+o (given o): {1e3 * im['obcache+o']['s']:.3f} ms, "
                  f"{r['speedup_given_o']:.2f}x obcache")
        cm.print_errors(im, 24)
    print("(vs X = X time / obcache time, CUDA-event medians; MiB = peak extra allocated in one call; GB/s and "
          "GFLOP/s: obcache's necessary work; %roof = roofline floor (measured peaks) / time)")
    payload = {"bench": "gpu", "config": "B=1 H_kv=8 G=4 W=32 D=128 %s budget=N/10 score=joint sink=4 recent=W "
                                         "pool=max7 (projected_value: hidden=%d, p=1), median of %d CUDA-event "
                                         "timings" % (args.dtype, HIDDEN, args.repeats),
               "argv": sys.argv, "device": gpu_name, "machine": cm.machine(), "peak": peak, "rows": rows}
    print("wrote", cm.write_json(args.out, payload))


if __name__ == "__main__":
    main()

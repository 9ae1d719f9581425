"""Machine peaks the benchmarks report their fraction of, measured on this
machine in the same run:

- GEMM: torch.mm of two 4096 x 4096 float32 matrices (2 * 4096^3 FLOP),
  GFLOP/s of the median call, on the threads torch uses; with --gemm-bf16
  also in bfloat16 (the rate bfloat16 kernels compare with: CPUs with
  AVX512-BF16 or AMX multiply bfloat16 faster than float32).
- memcpy: dst.copy_(src) of a 512 MiB float32 tensor; GB/s counts the bytes
  read plus the bytes written (2 x 512 MiB per call), median call.
- FMA (CPU only): the FP32 FMA throughput of the cores, a C loop of 12
  independent AVX-512 (else AVX2) fused multiply-adds per iteration on as
  many OpenMP threads as torch uses, compiled here with cc -O2 -fopenmp. This
  is the compute ceiling of the machine; torch.mm (MKL) reaches only part of
  it on this AMD CPU, so kernels can exceed the GEMM figure. Roofline
  fractions use the FMA peak when it could be measured, else the GEMM one.

On a CUDA device (device="cuda") the same two measurements use CUDA events.

    python bench/peak.py [--repeats 10] [--gemm-n 4096] [--copy-mib 512] [--device cpu]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import torch


def timer(device):
    """timed(fn) -> seconds: CUDA events on "cuda", perf_counter elsewhere."""
    if device == "cuda":
        def timed(fn):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            return s.elapsed_time(e) / 1e3
    else:
        def timed(fn):
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t
    return timed


FMA_C = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#if defined(__AVX512F__)
typedef __m512 V;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 V;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define STORE _mm256_storeu_ps
#endif
int main(int argc, char** argv) {
  long iters = atol(argv[1]);
  int threads = atoi(argv[2]);
  double sink = 0;
  double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
  {
    V a[12];
    const V x = SET1(0.999999f), y = SET1(1e-7f);
    for (int i = 0; i < 12; ++i) a[i] = SET1((float)i);
    for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 12
      for (int i = 0; i < 12; ++i) a[i] = FMA(a[i], x, y);
    }
    float out[LANES];
    for (int i = 1; i < 12; ++i) a[0] = FMA(a[i], x, a[0]);
    STORE(out, a[0]);
    sink += out[0];
  }
  double t = omp_get_wtime() - t0;
  printf("%.3f %d %g\n", 2.0 * LANES * 12 * iters * threads / t / 1e9, LANES, sink);
  return 0;
}
"""


def fma_peak(threads, repeats=5, iters=20_000_000):
    """Best FP32 FMA GFLOP/s of `threads` threads (see the module doc), or
    None with the reason when no C compiler / OpenMP is available."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if not cc:
        return None, "no C compiler"
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "fma.c"), os.path.join(tmp, "fma")
        with open(src, "w") as f:
            f.write(FMA_C)
        flags = ["-O2", "-fopenmp"]
        for isa in (["-mavx512f"], ["-mavx2", "-mfma"]):
            probe = subprocess.run([cc, *flags, *isa, src, "-o", exe], capture_output=True, text=True)
            if probe.returncode == 0 and subprocess.run([exe, "1000", "1"], capture_output=True).returncode == 0:
                break
        else:
            return None, "could not compile / run the FMA loop"
        best, lanes = 0.0, 0
        for _ in range(repeats):
            out = subprocess.run([exe, str(iters), str(threads)], capture_output=True, text=True).stdout.split()
            best, lanes = max(best, float(out[0])), int(out[1])
        return best, f"{lanes * 32}-bit FMA x12 chains, {threads} threads"


def gemm_times(timed, repeats, n, device, dtype, g):
    """Seconds of `repeats` torch.mm calls on two n x n matrices of dtype."""
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    # warm up: on a GPU until its clocks have ramped (a low peak would make every fraction of it high)
    for _ in range(20 if device != "cpu" else 1):
        torch.mm(a, b, out=c)
    return [timed(lambda: torch.mm(a, b, out=c)) for _ in range(repeats)]


def measure_peak(repeats=10, gemm_n=4096, copy_mib=512, device="cpu", gemm_dtype=torch.float32, gemm_bf16=False):
    timed = timer(device)
    g = torch.Generator().manual_seed(0)
    gemm = gemm_times(timed, repeats, gemm_n, device, gemm_dtype, g)
    bf16 = gemm_times(timed, repeats, gemm_n, device, torch.bfloat16, g) if gemm_bf16 else None
    n = copy_mib * 2**20 // 4
    src = torch.randn(n, generator=g).to(device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm up (touches the pages)
    copy = [timed(lambda: dst.copy_(src)) for _ in range(repeats)]
    gemm_s, copy_s = statistics.median(gemm), statistics.median(copy)
    fma, fma_how = fma_peak(torch.get_num_threads()) if device == "cpu" else (None, "not measured on CUDA")
    return {
        "fma_GFLOPs": fma,
        "fma": fma_how,
        "device": device,
        "threads": torch.get_num_threads(),
        "gemm": f"torch.mm {gemm_n}x{gemm_n} {str(gemm_dtype).replace('torch.', '')}",
        "gemm_GFLOPs": 2 * gemm_n**3 / gemm_s / 1e9,
        "gemm_best_GFLOPs": 2 * gemm_n**3 / min(gemm) / 1e9,
        **({"gemm_bf16": f"torch.mm {gemm_n}x{gemm_n} bfloat16",
            "gemm_bf16_GFLOPs": 2 * gemm_n**3 / statistics.median(bf16) / 1e9,
            "gemm_bf16_best_GFLOPs": 2 * gemm_n**3 / min(bf16) / 1e9} if bf16 else {}),
        "memcpy": f"copy_ {copy_mib} MiB float32 (read + write counted)",
        "memcpy_GBs": 2 * copy_mib * 2**20 / copy_s / 1e9,
        "memcpy_best_GBs": 2 * copy_mib * 2**20 / min(copy) / 1e9,
        "repeats": repeats,
    }


def roofline(flops, bytes_, seconds, peak):
    """Achieved rates, fractions of the measured peaks (the best of the
    repeats: the machine's capability; the median is recorded too), and the
    fraction of the roofline floor max(flops / peak FLOP/s, bytes / peak B/s)."""
    gflops = flops / seconds / 1e9
    gbs = bytes_ / seconds / 1e9
    pf, pb = peak.get("fma_GFLOPs") or peak["gemm_best_GFLOPs"], peak["memcpy_best_GBs"]
    floor = max(flops / (pf * 1e9), bytes_ / (pb * 1e9))
    return {"GFLOP": flops / 1e9, "GB": bytes_ / 1e9, "achieved_GFLOPs": gflops, "achieved_GBs": gbs,
            "frac_peak_flops": gflops / pf, "frac_gemm": gflops / peak["gemm_best_GFLOPs"], "frac_peak_bw": gbs / pb,
            "peak_flops_used": "fma" if peak.get("fma_GFLOPs") else "gemm",
            "floor_s": floor, "frac_roofline": floor / seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--gemm-n", type=int, default=4096)
    ap.add_argument("--copy-mib", type=int, default=512)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--gemm-bf16", action="store_true", help="time torch.mm in bfloat16 too")
    ap.add_argument("--json", action="store_true", help="print one JSON line only")
    args = ap.parse_args()
    p = measure_peak(args.repeats, args.gemm_n, args.copy_mib, args.device, gemm_bf16=args.gemm_bf16)
    if args.json:
        print(json.dumps(p))
        return
    print(f"GEMM   {p['gemm']}: {p['gemm_GFLOPs']:.1f} GFLOP/s median ({p['gemm_best_GFLOPs']:.1f} best)")
    if "gemm_bf16" in p:
        print(f"GEMM   {p['gemm_bf16']}: {p['gemm_bf16_GFLOPs']:.1f} GFLOP/s median "
              f"({p['gemm_bf16_best_GFLOPs']:.1f} best)")
    print(f"memcpy {p['memcpy']}: {p['memcpy_GBs']:.1f} GB/s median ({p['memcpy_best_GBs']:.1f} best)")
    print(f"FMA    {p['fma']}: " + (f"{p['fma_GFLOPs']:.1f} GFLOP/s best" if p["fma_GFLOPs"] else "not measured"))


if __name__ == "__main__":
    main()

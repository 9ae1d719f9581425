"""Machine peaks the benchmarks report their fraction of, measured on this
machine in the same run:

- GEMM: torch.mm of two 4096 x 4096 float32 matrices (2 * 4096^3 FLOP),
  GFLOP/s of the median call, on the threads torch uses.
- memcpy: dst.copy_(src) of a 512 MiB float32 tensor; GB/s counts the bytes
  read plus the bytes written (2 x 512 MiB per call), median call.

On a CUDA device (device="cuda") the same two measurements use CUDA events.

    python bench/peak.py [--repeats 10] [--gemm-n 4096] [--copy-mib 512] [--device cpu]
"""
import argparse
import json
import statistics
import time

import torch


def _timer(device):
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


def measure_peak(repeats=10, gemm_n=4096, copy_mib=512, device="cpu", gemm_dtype=torch.float32):
    timed = _timer(device)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(gemm_n, gemm_n, generator=g).to(device=device, dtype=gemm_dtype)
    b = torch.randn(gemm_n, gemm_n, generator=g).to(device=device, dtype=gemm_dtype)
    c = torch.empty(gemm_n, gemm_n, device=device, dtype=gemm_dtype)
    torch.mm(a, b, out=c)  # warm up
    gemm = [timed(lambda: torch.mm(a, b, out=c)) for _ in range(repeats)]
    del a, b, c
    n = copy_mib * 2**20 // 4
    src = torch.randn(n, generator=g).to(device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm up (touches the pages)
    copy = [timed(lambda: dst.copy_(src)) for _ in range(repeats)]
    gemm_s, copy_s = statistics.median(gemm), statistics.median(copy)
    return {
        "device": device,
        "threads": torch.get_num_threads(),
        "gemm": f"torch.mm {gemm_n}x{gemm_n} {str(gemm_dtype).replace('torch.', '')}",
        "gemm_GFLOPs": 2 * gemm_n**3 / gemm_s / 1e9,
        "gemm_best_GFLOPs": 2 * gemm_n**3 / min(gemm) / 1e9,
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
    pf, pb = peak["gemm_best_GFLOPs"], peak["memcpy_best_GBs"]
    floor = max(flops / (pf * 1e9), bytes_ / (pb * 1e9))
    return {"GFLOP": flops / 1e9, "GB": bytes_ / 1e9, "achieved_GFLOPs": gflops, "achieved_GBs": gbs,
            "frac_peak_flops": gflops / pf, "frac_peak_bw": gbs / pb,
            "floor_s": floor, "frac_roofline": floor / seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--gemm-n", type=int, default=4096)
    ap.add_argument("--copy-mib", type=int, default=512)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", action="store_true", help="print one JSON line only")
    args = ap.parse_args()
    p = measure_peak(args.repeats, args.gemm_n, args.copy_mib, args.device)
    if args.json:
        print(json.dumps(p))
        return
    print(f"GEMM   {p['gemm']}: {p['gemm_GFLOPs']:.1f} GFLOP/s median ({p['gemm_best_GFLOPs']:.1f} best)")
    print(f"memcpy {p['memcpy']}: {p['memcpy_GBs']:.1f} GB/s median ({p['memcpy_best_GBs']:.1f} best)")


if __name__ == "__main__":
    main()

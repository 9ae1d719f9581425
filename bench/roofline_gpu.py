"""Analytic roofline of the CUDA kernels on an H100 SXM (no GPU needed):
bytes moved, FLOPs and the floor time max(FLOPs / peak, bytes / bandwidth)
per kernel, for the necessary work and for the work the kernels as written
do. Prints a markdown table (bench/results/kernels.md).

Peaks (H100 SXM datasheet): HBM3 3.35 TB/s; 67 TFLOP/s FP32 on the CUDA
cores (what obcache's kernels use: bf16 is converted to float and multiplied
with FP32 FMAs); 989 TFLOP/s dense bf16 on the tensor cores (for comparison:
what a tensor-core kernel could reach).

    python bench/roofline_gpu.py [--n 32768] [--dtype-bytes 2] [--budget-frac 0.1] [--hidden 4096]
"""
import argparse

HBM = 3.35e12
FP32 = 67e12
TC_BF16 = 989e12


def kernels(B, Hkv, G, W, N, D, e, budget, hidden):
    Hq = Hkv * G
    kv = B * Hkv * N * D * e  # one of K, V
    kept = B * Hkv * budget * D * e
    prod = 2 * B * Hq * W * N * D  # one [Hq*W, D] x [D, N] product
    scores = B * Hkv * N * 4
    idx = B * Hkv * budget * 8
    q = B * Hq * W * D * e
    rows = []
    # name, necessary (flops, bytes), as written (flops, bytes), note
    rows.append(("saliency (joint)", (3 * prod, 2 * kv + q + scores), (4 * prod, 4 * kv + q + scores),
                 "necessary: Q K^T, A V, O V^T once, K and V read once. As written: pass 1 (Q K^T, A V over "
                 "N splits) and pass 2 (Q K^T again, O V^T) each read K and V; split partials not counted"))
    rows.append(("select", (0, scores + idx), (0, scores + idx),
                 "read the scores, write the indices (pooling and radix passes over N floats: no FP throughput); at 1.3 MB the floor is far below a kernel launch (a few µs), so select is latency-bound"))
    rows.append(("compact_", (0, 2 * kept + 2 * kept + idx), (0, 2 * kept + 2 * kept + idx),
                 "read and write the kept rows of K and V, read the indices"))
    rows.append(("evict", (3 * prod, 2 * kv + q + 2 * kept + idx + scores),
                 (4 * prod, 4 * kv + q + 2 * scores + idx + 4 * kept + idx),
                 "necessary: one pass over K and V, kept rows written; as written: the three kernels in sequence "
                 "(K+V = %.0f MiB exceeds the 50 MiB L2, so compact_ re-reads the kept rows)" % (2 * kv / 2**20)))
    pv_flops = 2 * B * Hq * N * D * hidden
    wo = hidden * Hq * D * e
    rows.append(("projected_value_norm (p=1)", (pv_flops, kv + wo + B * Hq * N * 4),
                 (pv_flops, G * kv + wo + B * Hq * N * 4),
                 "CriticalKV's norms ||v_n W_o^j||_1, hidden = %d: a [N, D] x [D, hidden] product per query head "
                 "reduced in registers. As written: each query head's blocks read their KV head's values (G "
                 "times; W_o^j tiles are L2 hits). Compute-bound on the FP32 cores. kvpress's per-head "
                 "torch.matmul runs the FLOPs on the bf16 tensor cores (floor in the last column) but moves its "
                 "[N, hidden] bf16 products and their float32 copies: %.0f GB, %.1f ms at this bandwidth, "
                 "about this kernel's FP32 floor; bench/gpu.sh measures which is faster"
                 % (hidden, 12 * B * Hq * N * hidden / 1e9, 1e3 * 12 * B * Hq * N * hidden / HBM)))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32768)
    ap.add_argument("--dtype-bytes", type=int, default=2, help="2: bf16")
    ap.add_argument("--budget-frac", type=float, default=0.1)
    ap.add_argument("--hidden", type=int, default=4096, help="o_proj rows (Llama-3.1-8B: 4096)")
    args = ap.parse_args()
    B, Hkv, G, W, D, N, e = 1, 8, 4, 32, 128, args.n, args.dtype_bytes
    budget = int(N * args.budget_frac)
    print(f"B={B} H_kv={Hkv} G={G} W={W} D={D} N={N} budget={budget}, {8 * e}-bit inputs; H100 SXM: "
          f"{HBM / 1e12:.2f} TB/s, FP32 {FP32 / 1e12:.0f} TFLOP/s, bf16 tensor {TC_BF16 / 1e12:.0f} TFLOP/s\n")
    print("| kernel | GFLOP (necessary / as written) | MB moved (necessary / as written) | arithmetic intensity "
          "(FLOP/B, necessary) | floor, FP32 cores, necessary (µs) | floor, FP32 cores, as written (µs) | "
          "bound | floor if the FLOPs ran on bf16 tensor cores (µs) |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    for name, (f0, b0), (f1, b1), note in kernels(B, Hkv, G, W, N, D, e, budget, args.hidden):
        t_f0, t_b0 = f0 / FP32, b0 / HBM
        t_f1, t_b1 = f1 / FP32, b1 / HBM
        tc = max(f0 / TC_BF16, t_b0)
        ai = f0 / b0
        print(f"| {name} | {f0 / 1e9:.2f} / {f1 / 1e9:.2f} | {b0 / 1e6:.1f} / {b1 / 1e6:.1f} | {ai:.0f} | "
              f"{1e6 * max(t_f0, t_b0):.1f} | {1e6 * max(t_f1, t_b1):.1f} | "
              f"{'compute (FP32)' if t_f0 > t_b0 else 'memory'} | {1e6 * tc:.1f} |")
    print()
    for name, _, _, note in kernels(B, Hkv, G, W, N, D, e, budget, args.hidden):
        print(f"- {name}: {note}.")
    print(f"- Ridge point: FP32 cores {FP32 / HBM:.0f} FLOP/B, bf16 tensor cores {TC_BF16 / HBM:.0f} FLOP/B.")


if __name__ == "__main__":
    main()

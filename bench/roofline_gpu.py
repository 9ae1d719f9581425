"""Analytic roofline of the CUDA kernels on an H100 SXM (no GPU needed):
bytes moved, FLOPs and the floor time per kernel, for the necessary work and
for the work the kernels as written do, on the units they run on. Prints a
markdown table (bench/results/kernels.md).

Peaks (H100 SXM datasheet): HBM3 3.35 TB/s; 67 TFLOP/s FP32 on the CUDA
cores; 989 TFLOP/s dense bf16 (and f16) on the tensor cores. Since
2026-12-02 the saliency kernels take bfloat16 inputs' products to the
tensor cores, since 2026-12-03 projected_value_norm bfloat16's and
float16's, and since the seventh session of 2026-12-03 saliency float16's
(mma.sync; float32 inputs, and GPUs before sm_80, stay on the FP32 cores),
so 16-bit rows are modelled both ways. As written on the tensor cores:
pass 1 Q K^T and P V, pass 2 Q K^T and O V^T, with P and O split into three
16-bit terms (8 products where 3 are necessary); the 989 TFLOP/s are wgmma's,
and mma.sync, used here because it also runs on sm_80, reaches less of them
on Hopper (bench/gpu.sh measures). Beside the tensor cores, every
instruction of a pass takes an issue slot (one warp instruction per clock per
scheduler, 4 schedulers per SM): WARP_INSTR_PER_PAIR counts them per
(query row, key) pair, read off the SASS (bench/sass_loops.py; kernels.md
shows the loops and trip counts). The tensor-core time and the issue time
overlap, so the slower of the two (and of the bytes) sets the time. Bytes
count twice: what HBM moves, and what the SMs load and store through the
L2 (all of it, whether HBM or the L2 serves it) at 7 TB/s, the top of the
5.5-7 TB/s microbenchmarks find on H100. Until the tenth session (2026-12-04)
only pass 2's re-reads of Q and O were counted against the L2, and as
hidden under the issue time; counting all of it makes the L2 saliency's
bound.

select runs one block per (b, h) row, so at B=1, H_kv=8 it uses 8 SMs: its
time as written is set by what one SM can pull from L2 (SM_BYTES_PER_S, an
upper bound: 64 B per clock at 1.755 GHz) and move through its shared
memory (SMEM_BYTES_PER_S: 128 B per clock), not by HBM. evict runs its three
kernels in sequence, so select's time and compact_'s memory time add to
saliency's (until the sixth session of 2026-12-03 compact_'s bytes were
summed with saliency's, as if they hid under its issue time: 8 µs too
little at N=32k).

    python bench/roofline_gpu.py [--n 32768] [--dtype-bytes 2] [--budget-frac 0.1] [--hidden 4096]
"""
import argparse
from collections import namedtuple

import l2_model

HBM = 3.35e12
FP32 = 67e12
TC_BF16 = 989e12
# One warp instruction per clock per scheduler, 4 per SM, at the 1.98 GHz of the FP32 peak above.
ISSUE = 4 * 132 * 1.98e9
# Warp instructions per (query row, key) pair of the tensor-core saliency
# (joint, D = 128, W = 32, R = 128, bf16, sm_90), HMMAs included, counted
# along the path a warp executes in the SASS (bench/sass_loops.py and
# cuobjdump): 16-byte loads, the in-warp query sum, every loop at its trips
# at this shape, the branches not taken left out; pass 1 per 64-key tile
# of a warp's 16 rows, pass 2 per row chunk of a warp's 32 rows x 32 keys
# (warp 0, which also reads the chunk's row statistics), each 1,024 pairs;
# pass 2's block (its K, V, key norms and set-up) per warp, over R / 32
# chunks. Since 2026-12-03, fifth session (kernels.md, "Pass 2 over 128
# keys"): pass 1 1,465 -> 1,221 (P V without NOP-padded mma chains, the
# tiles' row split worked out once), pass 2's chunk 2,698 -> 1,743 (128
# keys per block, products unrolled over D, O's three bf16 terms made once
# per row by the combine kernel and copied like Q), its block ~820 per 64
# keys -> ~1,267 per 128. Since the sixth session (kernels.md, "The joint
# formula refactored"): pass 1 -> ~1,131 (no visibility test on tiles every
# row sees), pass 2's chunk -> 1,503 (the joint score with fused
# multiply-adds, 1 / sum folded into the exponent, the clamp one NaN-keeping
# max, no visibility test where every row sees the block), its block ->
# ~1,116 (||v||_1 summed only for vatp). Since the eighth session
# (kernels.md, "Pass 2's block: stepped copies, key norms on the tensor
# cores"): its block -> ~770 (K and V copied with stepped addresses, ~630
# -> ~380; ||v||^2 as the diagonal of V V^T, ~290 -> ~185), its chunk ->
# ~1,435 (O's terms copied with stepped 32-bit offsets, ~185 -> ~100, and
# 17 more address computations in the product loop). Since the ninth
# session (kernels.md, "Tile loads by quads of lanes"): every tile load
# forms a row's address once and issues its pieces at immediate offsets,
# with no division to split the tile; walking the old and the new SASS
# along the same path: pass 1 -119 per tile (its loads 370 -> 224, its
# products and softmax 794 -> 821 under a 168-register bound), pass 2's
# chunk -126 (Q and O's terms 423 -> 366, products 1,076 -> 1,007), its
# block -280 (set-up and K, V 602 -> 310; key norms 313 -> 325). Until the
# fifth session the model
# took straight-line code whole and said 4.76 per pair where this count
# gives 4.47 for the same kernels; the history before is in kernels.md
# ("Issue slots" and after).
WARP_INSTR_PER_PAIR = {"pass 1": 1012 / 1024, "pass 2": 1309 / 1024, "pass 2, per block": 490 / 4096}
# float16 (pass 1 the same length) adds, per 1,024 pairs of pass 2, one
# multiply per pair by its row's scale of O's f16 terms and a load of that
# scale per row: 32 + 4 per lane (sass_loops.py, the row-chunk loop of the
# bf16 and f16 joint kernels: 5,166 and 5,382 over the six copies of the
# contributions).
F16_EXTRA_PER_PAIR = 36 / 1024
# Keys per pass-2 block of the FP32 pass 2 (two per lane) and window rows
# per pass-1 block on the FP32 cores (8 per warp). On the tensor cores
# both depend on the grid (l2_model.pass2_keys, pass1_rows): 256 keys for
# key and joint where sm_90's shared memory holds the tiles and the grid
# covers the SMs (since the tenth session; 128 before and otherwise), and
# 128 rows where there are more than 64 and the grid covers the SMs (since
# the eleventh session; 64 before and otherwise).
PASS2_FP32_KEYS, PASS1_FP32_ROWS = 64, 32
# Pass 2 re-reads the window's Q (16-bit) and O (three bf16 terms) for
# every block of keys: L2 traffic, not HBM (they are a few MB).
# H100's L2 bandwidth has no datasheet figure; microbenchmarks find
# ~5.5-7 TB/s.
L2_BW = (5.5e12, 7e12)
SM_BYTES_PER_S = 64 * 1.755e9  # one SM's L2 load bandwidth, at most
SMEM_BYTES_PER_S = 128 * 1.755e9  # one SM's shared-memory bandwidth (32 banks x 4 B per clock)
# select's traffic per candidate key as written: read the float score (the
# only global bytes since the seventh session of 2026-12-03, which keeps a
# row's keys in shared memory where they fit: up to ~53k 4-byte keys on
# sm_90), then through shared memory: write the key, read it in the digit
# passes before the chosen bin fits the candidate buffer (two at N=32k) and
# once in the emission. Keys are 4 bytes where the pooled scores are float
# values (float32 scores, max pooling as evict's default, or none; 8 bytes
# for average pooling or float64 scores) since 2026-12-03, fifth session:
# 36 -> 20 bytes, all of them through L2 until the seventh.
SELECT_GLOBAL_BYTES_PER_KEY = 4
SELECT_SMEM_BYTES_PER_KEY = 4 + 3 * 4
# projected_value_norm on the tensor cores (bfloat16 / float16, D <= 256, sm_80+;
# projected_value_mma_cuda.cuh): warp instructions per HMMA (m16n8k16) on the
# path a full 64-column tile of 16-byte-aligned rows takes, read off the SASS
# (sm_90, D = 128, 2026-12-03): per warp and tile 128 HMMA, 32 LDSM and ~40
# address / branch instructions in the products, 64 FADDs of |x|, ~130 for
# the next tile's cp.async (4 16-byte pieces per thread) and ~20 of loop and
# barrier: ~412.
PV_INSTR_PER_HMMA = 412 / 128
PV_ROWS_PER_BLOCK = 256  # each block reads W_o^j's tiles from L2 once


# A kernel's work as written: FLOPs on the tensor cores and on the FP32 pipe, HBM bytes, seconds of
# one-SM-per-row work that runs alone (select), seconds of issue slots, bytes of a memory-bound kernel that
# runs after the others (evict's compact_, timed on its own), bytes the SMs move through the L2 beside it.
Written = namedtuple("Written", "tensor_flops fp32_flops hbm alone_s issue_s after_bytes l2")


def kernels(B, Hkv, G, W, N, D, e, budget, hidden):
    """(name, necessary (flops, bytes, on tensor cores?), as written (Written), note) per kernel."""
    Hq = Hkv * G
    kv = B * Hkv * N * D * e  # one of K, V
    kept = B * Hkv * budget * D * e
    prod = 2 * B * Hq * W * N * D  # one [Hq*W, D] x [D, N] product
    pairs = B * Hq * W * N
    scores = B * Hkv * N * 4
    idx = B * Hkv * budget * 8
    q = B * Hq * W * D * e
    sal_bytes = (2 * kv + q + scores, 4 * kv + q + scores)
    evict_bytes = (2 * kv + q + 2 * kept + idx + scores, 4 * kv + q + 2 * scores + idx + 4 * kept + idx)
    issue_s = pairs * sum(WARP_INSTR_PER_PAIR.values()) / ISSUE
    R = G * W
    p1_rows, p2_keys = l2_model.pass1_rows(B, Hkv, R, N), l2_model.pass2_keys(B, Hkv, N)
    l2_bytes = -(-N // p2_keys) * B * Hq * W * D * (e + 6)  # pass 2: Q and O's terms per key block
    select_s = N * (SELECT_GLOBAL_BYTES_PER_KEY / SM_BYTES_PER_S + SELECT_SMEM_BYTES_PER_KEY / SMEM_BYTES_PER_S)
    # What the SMs load and store through the L2 (all of it passes there, whether HBM or the L2 serves it):
    # pass 1 has a block per (split, row chunk), and each reads its split's K and V; every split's blocks
    # read Q once between them; the partial O (floats, R x D per split) is written and read back by the
    # combine kernel; pass 2 reads K and V and, per key block, Q and O (as three terms on the tensor cores,
    # floats on the FP32 path).
    n_splits = l2_model.splits(B, Hkv, R, N)[0]
    pass1_l2 = n_splits * q + 2 * n_splits * B * Hkv * R * D * 4
    sal_l2 = (-(-R // p1_rows) * 2 * kv + pass1_l2 + 2 * kv + l2_bytes + scores,
              -(-R // PASS1_FP32_ROWS) * 2 * kv + pass1_l2 + 2 * kv
              + -(-N // PASS2_FP32_KEYS) * B * Hq * W * D * (e + 4) + scores)
    rows = []
    f16_issue_s = pairs * F16_EXTRA_PER_PAIR / ISSUE
    p1_blocks = -(-R // p1_rows)
    p1_blocks_text = ("%d blocks of %d rows per split each read" % (p1_blocks, p1_rows) if p1_blocks > 1
                      else "block of %d rows per split reads" % p1_rows)
    l2_fast, l2_slow, hbm_s = sal_l2[0] / L2_BW[1], sal_l2[0] / L2_BW[0], sal_bytes[1] / HBM
    if l2_fast > max(hbm_s, issue_s):
        l2_vs = "more than the HBM bytes or the issue slots take"
    elif l2_slow > max(hbm_s, issue_s):
        l2_vs = "under the HBM bytes' %.0f µs at the top of that range, over them at the bottom" % (1e6 * hbm_s)
    else:
        l2_vs = "under the HBM bytes' %.0f µs" % (1e6 * hbm_s)
    rows.append(("saliency (joint), bf16, tensor cores", (3 * prod, sal_bytes[0], True),
                 (8 * prod, 0, sal_bytes[1], 0, issue_s, 0, sal_l2[0]),
                 "necessary: Q K^T, A V, O V^T once, K and V read once. As written (bf16 on sm_80+): pass 1 "
                 "(Q K^T, P V with P in three bf16 terms, over N splits) and pass 2 (Q K^T again, O V^T with O in "
                 "three terms) on the tensor cores, each pass reading K and V; %.2f + %.2f + %.2f (pass 2's "
                 "per-block loads and set-up) warp instructions per (row, key) pair (SASS of the 64-row pass 1 "
                 "and the 128-key pass 2; the 128-row and 256-key blocks run the same per warp, with fewer tile "
                 "copies a warp) take %.0f µs of issue slots. Through the L2 the SMs move %.0f MB: pass 1's %s "
                 "the split's K and V (%.0f MB), Q and the split partials (%.0f MB), pass 2's K and V (%.0f MB) "
                 "and Q and O's terms again for every %d-key block (%.0f MB): %.0f-%.0f µs at %.1f-%.0f TB/s, "
                 "%s. float16 does the same with f16 terms (P and O scaled by powers of two first) and %.3f more "
                 "per pair in pass 2 (O's row scale): %.1f µs more issue"
                 % (WARP_INSTR_PER_PAIR["pass 1"], WARP_INSTR_PER_PAIR["pass 2"],
                    WARP_INSTR_PER_PAIR["pass 2, per block"], 1e6 * issue_s, sal_l2[0] / 1e6, p1_blocks_text,
                    p1_blocks * 2 * kv / 1e6, pass1_l2 / 1e6, 2 * kv / 1e6, p2_keys, l2_bytes / 1e6,
                    1e6 * l2_fast, 1e6 * l2_slow, L2_BW[0] / 1e12, L2_BW[1] / 1e12, l2_vs, F16_EXTRA_PER_PAIR,
                    1e6 * f16_issue_s)))
    rows.append(("saliency (joint), float32 or pre-sm_80, FP32 cores", (3 * prod, sal_bytes[0], False),
                 (0, 4 * prod, sal_bytes[1], 0, 0, 0, sal_l2[1]),
                 "the same work with every product on the FP32 cores (bytes as for 16-bit inputs; also 16-bit "
                 "inputs with OBCACHE_CUDA_TENSOR_CORES=0)"))
    rows.append(("select", (0, scores + idx, False), (0, 0, scores + idx, select_s, 0, 0, 0),
                 "necessary: read the scores, write the indices (1.3 MB: far below a kernel launch). As written: "
                 "one block per (b, h) row (rows in parallel, one SM each), each reading %d B per key from L2 "
                 "(the score) at most %.0f GB/s per SM and moving %d B per key through its shared memory "
                 "(the keys written, two digit passes and the emission over 4-byte keys) at %.0f GB/s"
                 % (SELECT_GLOBAL_BYTES_PER_KEY, SM_BYTES_PER_S / 1e9, SELECT_SMEM_BYTES_PER_KEY,
                    SMEM_BYTES_PER_S / 1e9)))
    compact_bytes = 2 * kept + 2 * kept + idx
    # evict's kernels run in sequence: compact_'s bytes cannot hide under
    # saliency's issue time, so they are added after it, as select's time is.
    rows.append(("compact_", (0, compact_bytes, False), (0, 0, compact_bytes, 0, 0, 0, compact_bytes),
                 "read and write the kept rows of K and V, read the indices"))
    rows.append(("evict, bf16, tensor cores", (3 * prod, evict_bytes[0], True),
                 (8 * prod, 0, evict_bytes[1], select_s, issue_s, compact_bytes, sal_l2[0]),
                 "necessary: one pass over K and V, kept rows written; as written: the three kernels in sequence "
                 "(compact_ reads the kept rows again, from HBM where K+V, %.0f MiB here, outgrow the 50 MiB "
                 "L2), select's one-SM-per-row time and compact_'s memory time added to saliency's"
                 % (2 * kv / 2**20)))
    rows.append(("evict, FP32 cores", (3 * prod, evict_bytes[0], False),
                 (0, 4 * prod, evict_bytes[1], select_s, 0, compact_bytes, sal_l2[1]),
                 "as above with the products on the FP32 cores"))
    pv_flops = 2 * B * Hq * N * D * hidden
    wo = hidden * Hq * D * e
    pv_bytes = (kv + wo + B * Hq * N * 4, G * kv + wo + B * Hq * N * 4)
    pv_issue_s = pv_flops / (2 * 16 * 8 * 16) * PV_INSTR_PER_HMMA / ISSUE
    pv_l2 = -(-N // PV_ROWS_PER_BLOCK) * B * Hq * hidden * D * e
    kvpress_pv = 4 * B * Hq * N * hidden  # [N, hidden] bf16 products, written and read once
    # the FP32 kernel's blocks: 64 tokens x 64 columns, each reading its v rows and W_o^j's columns
    pv_fp32_l2 = B * Hq * -(-N // 64) * -(-hidden // 64) * 2 * 64 * D * e
    rows.append(("projected_value_norm (p=1), bf16 / f16, tensor cores", (pv_flops, pv_bytes[0], True),
                 (pv_flops, 0, pv_bytes[1], 0, pv_issue_s, 0, pv_bytes[1] + pv_l2),
                 "CriticalKV's norms ||v_n W_o^j||_1, hidden = %d: a [N, D] x [D, hidden] product per query head "
                 "reduced in registers. As written (bfloat16 or float16, D <= 256, sm_80+): mma.sync with v's "
                 "fragments in registers, %d tokens per block at D <= 128 (128 above); each query head's blocks read their KV head's values (G times), "
                 "and every block reads W_o^j's tiles from L2: %.1f GB, %.2f-%.2f ms at %.1f-%.0f TB/s, under the "
                 "tensor-core time; %.1f warp instructions per HMMA (SASS) take %.0f µs of issue slots. No operand "
                 "is split: 16-bit products are exact. kvpress's per-head torch.matmul runs the same FLOPs on the "
                 "tensor cores but writes and reads its [N, hidden] bf16 products: %.0f GB, %.1f ms"
                 % (hidden, PV_ROWS_PER_BLOCK, pv_l2 / 1e9, 1e3 * pv_l2 / L2_BW[1], 1e3 * pv_l2 / L2_BW[0],
                    L2_BW[0] / 1e12, L2_BW[1] / 1e12, PV_INSTR_PER_HMMA, 1e6 * pv_issue_s, kvpress_pv / 1e9,
                    1e3 * kvpress_pv / HBM)))
    rows.append(("projected_value_norm (p=1), FP32 cores", (pv_flops, pv_bytes[0], False),
                 (0, pv_flops, pv_bytes[1], 0, 0, 0, pv_fp32_l2),
                 "the same on the FP32 cores: float32 inputs, D > 256, GPUs before sm_80, and 16-bit inputs "
                 "with OBCACHE_CUDA_TENSOR_CORES=0 (64 tokens x 64 columns per block, a 4 x 4 sub-tile per "
                 "thread); compute-bound, its floor about 3x kvpress's traffic time above: for 16-bit inputs on "
                 "sm_80+ only the tensor-core kernel beats kvpress's way"))
    return [(name, necessary, Written(*written), note) for name, necessary, written, note in rows]


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
    print("| kernel | GFLOP necessary | GFLOP as written (tensor cores / FP32 pipe) | MB moved (necessary / as "
          "written) | MB through the L2, as written | floor, necessary (µs) | floor, as written (µs) | as written, "
          "bound by |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    rows = kernels(B, Hkv, G, W, N, D, e, budget, args.hidden)
    for name, (f0, b0, tc0), written, note in rows:
        t, bound = as_written(written)
        l2 = written.l2 + written.after_bytes  # with compact_'s after saliency in evict
        print(f"| {name} | {f0 / 1e9:.2f} | {written.tensor_flops / 1e9:.2f} / {written.fp32_flops / 1e9:.2f} | "
              f"{b0 / 1e6:.1f} / {written.hbm / 1e6:.1f} | {l2 / 1e6:.1f} | {1e6 * floor(f0, b0, tc0):.1f} | "
              f"{1e6 * t:.1f} | {bound} |")
    print()
    for name, _, _, note in rows:
        print(f"- {name}: {note}.")
    print(f"- Ridge point: FP32 cores {FP32 / HBM:.0f} FLOP/B, bf16 tensor cores {TC_BF16 / HBM:.0f} FLOP/B.")
    # What an L2 that kept what an LRU keeps would take off: not in the table, as its figures are a model's.
    hit, total = l2_model.pass2_hits(B, Hkv, G, W, N, D, e, heads_reversed=True)
    fwd, _ = l2_model.pass2_hits(B, Hkv, G, W, N, D, e, heads_reversed=False)
    sal = next(r for r in rows if r[0].startswith("saliency") and r[1][2])
    ev = next(r for r in rows if r[0].startswith("evict") and r[1][2])
    (t_sal, b_sal), (t_ev, b_ev) = (as_written(r[2]._replace(hbm=r[2].hbm - hit)) for r in (sal, ev))
    print(f"- Not credited above, L2 reuse: pass 2 walks the heads last to first, so it starts on the K and V "
          f"pass 1 read last. An LRU model of the 50 MB L2 (bench/l2_model.py) serves {hit / 1e6:.1f} of pass 2's "
          f"{total / 1e6:.1f} MB of K and V from the L2 ({fwd / 1e6:.1f} in head order). Without those bytes: "
          f"saliency {1e6 * t_sal:.1f} µs ({b_sal}), evict {1e6 * t_ev:.1f} µs = {t_ev / floor(*ev[1]):.2f}x its "
          f"floor ({b_ev}). The real L2 (two halves, hashed, not LRU) decides: bench/gpu.sh times "
          f"OBCACHE_CUDA_L2_REUSE=0 (head order) beside it.")


def floor(flops, nbytes, tensor_cores):
    return max(flops / (TC_BF16 if tensor_cores else FP32), nbytes / HBM)


def as_written(written):
    """(seconds, what bounds them) of one kernel's work as written (a Written)."""
    w = written
    parts = {"HBM": (w.hbm - w.after_bytes) / HBM, "L2": w.l2 / L2_BW[1], "issue slots": w.issue_s,
             ("tensor cores" if w.tensor_flops else "FP32 cores"): w.tensor_flops / TC_BF16 + w.fp32_flops / FP32}
    bound = max(parts, key=parts.get)
    t = parts[bound]
    t_sm = w.alone_s + w.after_bytes / HBM
    if t_sm > t:
        bound = "one SM per row"
    elif t_sm:
        bound += " + select" + (" + compact_" if w.after_bytes else "")
    return t + t_sm, bound


if __name__ == "__main__":
    main()

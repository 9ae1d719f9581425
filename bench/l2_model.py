"""How much of the tensor-core saliency's second read of K and V an L2 could
serve: a least-recently-used model of H100's 50 MB L2 fed the order in which
the CUDA kernels read K and V (bench/roofline_gpu.py prints its estimate
beside the roofline, not in it: the real L2 is not LRU, is split in two
halves and hashes addresses, so only bench/gpu.sh's OBCACHE_CUDA_L2_REUSE=0
row can say what it does).

The order, as launched (csrc/kernels/saliency_cuda.cu, make_shape and the
launches): pass 1 has one block per (key split, row chunk, head), the split
fastest and the head slowest, 128-row chunks one block per SM where the
launcher takes the wide blocks (pass1_rows), else 64-row chunks three per
SM; the GPU runs as many at once as fit and starts the next in that order
as each ends; a block reads its split's K and V 64 keys at a time, every
resident block one tile per step, and writes its partial O (rows x D
floats) when done, which the combine kernel then reads. Pass 2 has one
block per (key block, head), 256 keys where the launcher takes the wide
blocks (pass2_keys), else 128, the block fastest; the head order is the
kernel's choice (Shape::heads_reversed), each block reading its K and V at
its start, so the reads come in launch order however many blocks an SM
holds. The L2 is counted in 16 KiB units (64 keys x D = 128 bf16 values).
In head order pass 2 starts on the K and V pass 1 read first, long evicted,
and each of its misses evicts the oldest line left, which is one a later
head would have hit: where K and V outgrow the L2, nothing hits.

    python bench/l2_model.py [--n 4096 32768 131072]
"""
import argparse
from collections import OrderedDict

L2_BYTES = 50 * 2**20
SMS = 132
# Pass 1's blocks per SM by rows per block: 64-row blocks, kMmaPass1MinBlocks; the wide ones (105 KB of
# shared memory, 8 warps at up to 255 registers), one.
PASS1_BLOCKS_PER_SM = {64: 3, 128: 1}
TILE, SPLIT_ROWS, MAX_SPLITS = 64, 32, 64


class LRU:
    def __init__(self, units):
        self.units, self.lines, self.hits, self.misses = units, OrderedDict(), 0, 0

    def touch(self, key, count=False):
        if key in self.lines:
            self.lines.move_to_end(key)
            self.hits += count
        else:
            self.misses += count
            self.lines[key] = None
            if len(self.lines) > self.units:
                self.lines.popitem(last=False)


def splits(B, Hkv, R, N):
    """make_shape's key splits: about 1024 blocks of 32-row chunks, splits of at least 256 keys and whole
    64-key tiles, at most 64. Returns (splits, keys per split)."""
    base = B * Hkv * -(-R // SPLIT_ROWS)
    n = max(1, min(-(-1024 // base), -(-N // 256), MAX_SPLITS))
    per = -(-(-(-N // n)) // TILE) * TILE
    return -(-N // per), per


def pass1_rows(B, Hkv, R, N):
    """Rows per tensor-core pass-1 block on an H100 (launch_pass1; sm_90's shared memory holds the wide
    tiles up to D = 128): 128 where R > 64 and the 64-row blocks would outnumber the SMs (wide_pays),
    else 64."""
    wide = R > 64 and splits(B, Hkv, R, N)[0] * -(-R // 64) * B * Hkv > SMS
    return 128 if wide else 64


def pass2_keys(B, Hkv, N):
    """Keys per tensor-core pass-2 block of the key and joint scores on an H100 (launch_pass2; up to
    D = 128): 256 where the 128-key blocks would outnumber the SMs (wide_pays), else 128."""
    return 256 if -(-N // 128) * B * Hkv > SMS else 128


def pass2_hits(B, Hkv, G, W, N, D, e, heads_reversed):
    """(bytes of pass 2's K and V reads that hit the LRU L2, bytes it reads)."""
    unit = TILE * D * e
    l2 = LRU(L2_BYTES // unit)
    R = G * W
    n_splits, per = splits(B, Hkv, R, N)
    rows = pass1_rows(B, Hkv, R, N)
    chunks = -(-R // rows)
    part_units = -(-rows * D * 4 // unit)
    order = [(sp, ch, bh) for bh in range(B * Hkv) for ch in range(chunks) for sp in range(n_splits)]
    running, nxt = [], 0
    while nxt < len(order) or running:
        while len(running) < PASS1_BLOCKS_PER_SM[rows] * SMS and nxt < len(order):
            sp, ch, bh = order[nxt]
            running.append([sp, ch, bh, sp * per // TILE, min(N, (sp + 1) * per)])
            nxt += 1
        for blk in running:
            sp, ch, bh, t, end = blk
            l2.touch(("k", bh, t))
            l2.touch(("v", bh, t))
            blk[3] += 1
        for sp, ch, bh, t, end in running:
            if t * TILE >= end:
                for u in range(part_units):
                    l2.touch(("part", bh, sp, ch, u))
        running = [blk for blk in running if blk[3] * TILE < blk[4]]
    for bh in range(B * Hkv):  # combine_kernel reads the partials
        for sp in range(n_splits):
            for ch in range(chunks):
                for u in range(part_units):
                    l2.touch(("part", bh, sp, ch, u))
    heads = range(B * Hkv - 1, -1, -1) if heads_reversed else range(B * Hkv)
    for bh in heads:
        for t in range(-(-N // TILE)):  # each block's K and V in launch order, tile by tile
            l2.touch(("k", bh, t), True)
            l2.touch(("v", bh, t), True)
    return l2.hits * unit, (l2.hits + l2.misses) * unit


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[4096, 32768, 131072])
    args = ap.parse_args()
    B, Hkv, G, W, D, e = 1, 8, 4, 32, 128, 2
    print("| N | pass 2 reads K, V (MB) | L2 hits, last head first (MB) | L2 hits, head order (MB) |")
    print("|---:|---:|---:|---:|")
    for N in args.n:
        rev, total = pass2_hits(B, Hkv, G, W, N, D, e, True)
        fwd, _ = pass2_hits(B, Hkv, G, W, N, D, e, False)
        print(f"| {N} | {total / 1e6:.1f} | {rev / 1e6:.1f} | {fwd / 1e6:.1f} |")


if __name__ == "__main__":
    main()

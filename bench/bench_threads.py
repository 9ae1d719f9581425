"""CPU thread scaling of evict when B * H_kv is small: the same eviction on
one thread and on every thread torch has, at B = 1 with H_kv in {1, 2, 3, 8}
(G=4, W=32, D=128, N=16384 float32, joint score, budget N/10, sink 4,
recent W, max pooling 7).

When the (b, h) rows do not share out evenly over the threads (fewer rows
than threads, or 3 on 2) the saliency op runs each row's key ranges (512
keys, csrc/kernels/saliency_cpu.h) on different threads, keeping the logits
between its passes where they fit (else pass 2 recomputes Q K^T); before
that a row ran on one thread whatever the thread count. Per (H_kv, threads): --repeats timed calls after
one untimed, median; speedup = 1-thread time / all-thread time, efficiency
= speedup / threads. Both timings in the same run, interleaved per round.
Prints a table; writes bench/out/threads.json.

    python bench/bench_threads.py [--hkvs 1 2 3 8] [--n 16384] [--repeats 7]
"""
import argparse
import os
import statistics
import sys
import time

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as cm  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hkvs", type=int, nargs="+", default=[1, 2, 3, 8])
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="threads.json")
    args = ap.parse_args()
    import obcache

    threads = torch.get_num_threads()
    rows = []
    for hkv in tqdm(args.hkvs, desc="thread scaling"):
        k0, v0, q = cm.inputs(args.n, hkv=hkv)
        times = {1: [], threads: []}

        def once(t):
            torch.set_num_threads(t)
            k, v = k0.clone(), v0.clone()
            start = time.perf_counter()
            obcache.evict(k, v, q, args.n // 10, score="joint", sink=4, pool_kernel=7)
            return time.perf_counter() - start

        for t in times:
            once(t)  # warm up
        for _ in range(args.repeats):
            for t in times:
                times[t].append(once(t))
        torch.set_num_threads(threads)
        one, many = statistics.median(times[1]), statistics.median(times[threads])
        rows.append({"H_kv": hkv, "N": args.n, "threads": threads, "one_thread_s": one, "all_threads_s": many,
                     "speedup": one / many, "efficiency": one / many / threads})
    print(f"\nevict, B=1 G=4 W=32 D=128 N={args.n} float32 joint, median of {args.repeats}; "
          f"load average {cm.loadavg()[0]:.2f}")
    print(f"{'H_kv':>5} {'1 thread ms':>12} {f'{threads} threads ms':>14} {'speedup':>8} {'efficiency':>10}")
    for r in rows:
        print(f"{r['H_kv']:>5} {1e3 * r['one_thread_s']:>12.1f} {1e3 * r['all_threads_s']:>14.1f} "
              f"{r['speedup']:>7.2f}x {100 * r['efficiency']:>9.0f}%")
    print("wrote", cm.write_json(args.out, {"bench": "threads", "argv": sys.argv, "machine": cm.machine(),
                                            "rows": rows}))


if __name__ == "__main__":
    main()

"""CPU evict (torch.ops.obcache.evict, in place) vs the reference pipeline
(reference saliency in float32, torch.topk + sort, torch.gather into new
tensors) at N in {4096, 16384, 65536}, budget 10%, B=1, H_kv=8, G=4, W=32,
D=128, float32.

Prints a table and writes bench/out/evict.json. Times are medians over
repeats; peak extra memory is measured in a fresh subprocess per (config,
method): ru_maxrss after one call minus the RSS right after the inputs exist.

    python bench/bench_evict.py [--repeats 5] [--sizes 4096 16384 65536]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from tqdm import tqdm

B, HKV, G, W, D = 1, 8, 4, 32, 128


def inputs(N, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(B, HKV, N, D, generator=g)
    v = torch.randn(B, HKV, N, D, generator=g)
    q = torch.randn(B, HKV * G, W, D, generator=g)
    return k, v, q


def run_obcache(k, v, q, budget):
    import obcache
    return obcache.evict(k, v, q, budget, score="joint", sink=4, pool_kernel=7)


def run_reference(k, v, q, budget):
    from obcache import reference as ref
    s = ref.saliency(k, v, q, "joint", compute_dtype=torch.float32)
    sink, recent = 4, W
    cand = ref.pool_scores(s[..., sink:N_of(k) - recent], 7, "max").float()
    top = torch.topk(cand, budget - sink - recent, dim=-1).indices + sink
    idx = torch.cat([torch.arange(sink).expand(B, HKV, sink), top.sort(-1).values,
                     torch.arange(N_of(k) - recent, N_of(k)).expand(B, HKV, recent)], -1)
    gi = idx[..., None].expand(-1, -1, -1, D)
    return torch.gather(k, 2, gi), torch.gather(v, 2, gi), idx


def N_of(k):
    return k.shape[2]


METHODS = {"obcache": run_obcache, "reference": run_reference}


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(method, N):
    """One call in a fresh process: peak RSS growth over the inputs."""
    torch.set_num_threads(torch.get_num_threads())
    import obcache  # noqa: F401  (load the extension before measuring)
    k, v, q = inputs(N)
    budget = N // 10
    METHODS[method](k.clone()[:, :, :16], v.clone()[:, :, :16], q[:, :, :4], 8)  # warm up code paths
    base = rss_bytes()
    METHODS[method](k, v, q, budget)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"extra_bytes": max(0, peak - base)}))


def time_method(method, N, repeats):
    k0, v0, q = inputs(N)
    budget = N // 10
    times = []
    for _ in range(repeats + 1):
        k, v = k0.clone(), v0.clone()
        t = time.perf_counter()
        METHODS[method](k, v, q, budget)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])  # first call warms up


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "N"))
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    rows = []
    for N in tqdm(args.sizes, desc="N"):
        row = {"N": N, "budget": N // 10, "B": B, "H_kv": HKV, "G": G, "W": W, "D": D, "dtype": "float32",
               "threads": torch.get_num_threads()}
        for m in METHODS:
            row[f"{m}_s"] = time_method(m, N, args.repeats)
            out = subprocess.run([sys.executable, __file__, "--child", m, str(N)], capture_output=True, text=True,
                                 check=True)
            row[f"{m}_extra_MiB"] = json.loads(out.stdout.strip().splitlines()[-1])["extra_bytes"] / 2**20
        row["speedup"] = row["reference_s"] / row["obcache_s"]
        row["kv_input_MiB"] = 2 * B * HKV * N * D * 4 / 2**20
        rows.append(row)
    hdr = f"{'N':>6} {'budget':>6} {'obcache ms':>11} {'reference ms':>13} {'speedup':>8} {'obc extra MiB':>14} {'ref extra MiB':>14} {'K+V MiB':>8}"
    print(hdr)
    for r in rows:
        print(f"{r['N']:>6} {r['budget']:>6} {1e3 * r['obcache_s']:>11.1f} {1e3 * r['reference_s']:>13.1f} "
              f"{r['speedup']:>7.2f}x {r['obcache_extra_MiB']:>14.1f} {r['reference_extra_MiB']:>14.1f} {r['kv_input_MiB']:>8.1f}")
    os.makedirs(os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"), exist_ok=True)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "evict.json")
    with open(path, "w") as f:
        json.dump({"config": "B=1 H_kv=8 G=4 W=32 D=128 float32 budget=N/10 score=joint sink=4 pool=max7",
                   "rows": rows}, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()

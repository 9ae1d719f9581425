"""Head-adaptive selection under tensor parallelism: two gloo processes,
each holding half of the heads, keep bit for bit what one process holding
all heads keeps (ties and NaN included)."""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import obcache
from obcache.distributed import select_adaptive_tp

WORLD = 2
SETTINGS = [  # (B, H, N, total_budget, floor, sink, recent, pool_kernel, pool)
    (2, 4, 200, 160, 0.2, 2, 8, 7, "max"),
    (1, 8, 97, 300, 0.5, 0, 4, 0, "max"),
    (3, 2, 64, 40, 0.0, 1, 1, 3, "avg"),
]


def scores_for(B, H, N, seed):
    g = torch.Generator().manual_seed(seed)
    # Few distinct values: many ties across heads and positions.
    s = torch.randint(0, 5, (B, H, N), generator=g).float()
    s[0, 0, 10:13] = float("nan")
    return s


def _worker(rank, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        out = []
        for i, (B, H, N, total, floor, sink, recent, pk, pool) in enumerate(SETTINGS):
            s = scores_for(B, H, N, seed=i)
            h = H // WORLD
            idx, lengths = select_adaptive_tp(s[:, rank * h : (rank + 1) * h], total, floor=floor, sink=sink,
                                              recent=recent, pool_kernel=pk, pool=pool)
            out.append((idx, lengths))
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_two_ranks_keep_exactly_what_one_process_keeps():
    with tempfile.TemporaryDirectory() as d:
        manager = mp.Manager()
        results = manager.dict()
        mp.spawn(_worker, args=(os.path.join(d, "init"), results), nprocs=WORLD, join=True)
        results = dict(results)
    for i, (B, H, N, total, floor, sink, recent, pk, pool) in enumerate(SETTINGS):
        want_idx, want_len = obcache.select_adaptive(scores_for(B, H, N, seed=i), total, floor=floor, sink=sink,
                                                     recent=recent, pool_kernel=pk, pool=pool)
        got_len = torch.cat([results[r][i][1] for r in range(WORLD)], 1)
        assert torch.equal(got_len, want_len), f"setting {i}: lengths differ"
        assert int(got_len.sum()) == B * min(total, H * N)
        # Heads of different ranks may pad to different lengths; compare the kept prefix of each head.
        h = H // WORLD
        for r in range(WORLD):
            idx, lengths = results[r][i]
            for b in range(B):
                for j in range(h):
                    n = int(lengths[b, j])
                    assert torch.equal(idx[b, j, :n], want_idx[b, r * h + j, :n]), f"setting {i} rank {r} head {j}"
        assert not torch.equal(want_len, want_len[:, :1].expand_as(want_len)), "heads should keep different lengths"


def test_rejects_scores_of_the_wrong_rank():
    with pytest.raises(ValueError, match=r"scores must be \[B, H_local, N\], got shape \(4, 200\)"):
        select_adaptive_tp(torch.zeros(4, 200), 10)

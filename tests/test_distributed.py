"""Head-adaptive (AdaKV) and model-wide (LaProx) selection under tensor
parallelism: two gloo processes, each holding half of the heads, keep bit
for bit what one process holding all heads keeps (ties and NaN included)."""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import obcache
from obcache.distributed import laprox_select_tp, select_adaptive_tp
from obcache.policies.laprox import laprox_select

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


# LaProx: (B, layers, H, N, budget per head, sink, recent); layers of different
# scales, few distinct values (ties across layers, heads and positions).
LAPROX = (2, 3, 4, 120, 30, 2, 8)


def laprox_scores():
    B, layers, H, N = LAPROX[:4]
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, 4, (B, H, N), generator=g).float() * 10.0**i for i in range(layers)]


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
        B, layers, H, N, budget, sink, recent = LAPROX
        h = H // WORLD
        out.append(laprox_select_tp([s[:, rank * h : (rank + 1) * h] for s in laprox_scores()], budget, sink=sink,
                                    recent=recent))
        results[rank] = out
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results():
    """What each of two gloo ranks kept (AdaKV settings, then LaProx)."""
    with tempfile.TemporaryDirectory() as d:
        manager = mp.Manager()
        out = manager.dict()
        mp.spawn(_worker, args=(os.path.join(d, "init"), out), nprocs=WORLD, join=True)
        return dict(out)


def assert_same_heads(results, item, want_idx, want_len, h, what):
    """Each rank's heads keep the same tokens as heads r*h.. of one process."""
    got_len = torch.cat([results[r][item][1] for r in range(WORLD)], 1)
    assert torch.equal(got_len, want_len), f"{what}: lengths differ"
    # Heads of different ranks may pad to different lengths; compare the kept prefix of each head.
    for r in range(WORLD):
        idx, lengths = results[r][item]
        for b in range(lengths.shape[0]):
            for j in range(h):
                n = int(lengths[b, j])
                assert torch.equal(idx[b, j, :n], want_idx[b, r * h + j, :n]), f"{what}: rank {r} head {j}"


def test_two_ranks_keep_exactly_what_one_process_keeps(results):
    for i, (B, H, N, total, floor, sink, recent, pk, pool) in enumerate(SETTINGS):
        want_idx, want_len = obcache.select_adaptive(scores_for(B, H, N, seed=i), total, floor=floor, sink=sink,
                                                     recent=recent, pool_kernel=pk, pool=pool)
        assert_same_heads(results, i, want_idx, want_len, H // WORLD, f"setting {i}")
        assert int(want_len.sum()) == B * min(total, H * N)
        assert not torch.equal(want_len, want_len[:, :1].expand_as(want_len)), "heads should keep different lengths"


def test_laprox_two_ranks_keep_exactly_what_one_process_keeps(results):
    B, layers, H, N, budget, sink, recent = LAPROX
    want = laprox_select(laprox_scores(), budget, sink=sink, recent=recent)
    for li, (want_idx, want_len) in enumerate(want):
        got = {r: results[r][len(SETTINGS)][li] for r in range(WORLD)}
        assert_same_heads({r: [got[r]] for r in got}, 0, want_idx, want_len, H // WORLD, f"layer {li}")
    lengths = torch.stack([lens for _, lens in want])
    assert torch.equal(lengths.sum((0, 2)), torch.full((B,), budget * layers * H)), "the global budget, exactly"
    assert lengths.unique().numel() > 1, "layers and heads should keep different lengths"


def test_rejects_scores_of_the_wrong_rank():
    with pytest.raises(ValueError, match=r"scores must be \[B, H_local, N\], got shape \(4, 200\)"):
        select_adaptive_tp(torch.zeros(4, 200), 10)

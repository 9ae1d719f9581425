"""The benchmarks' baselines (bench/baselines.py) compute what obcache does:
a speed ratio against a baseline that scored or selected something else
would mean nothing."""
import os
import sys

import pytest
import torch

import obcache.reference as ref
from conftest import assert_close_to_reference, make_cache

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import baselines as bl  # noqa: E402


@pytest.mark.parametrize("score", bl.SCORES)
@pytest.mark.parametrize("fn", [bl.kvpress_scores, bl.gqa_scores], ids=["kvpress", "gqa"])
def test_baseline_scores_match_the_float64_reference(fn, score):
    k, v, q = make_cache(2, 2, 3, 8, 300, 16, seed=40)
    ref64 = ref.saliency(k.double(), v.double(), q.double(), score)
    ref32 = ref.saliency(k, v, q, score, compute_dtype=torch.float32)
    assert_close_to_reference(fn(k, v, q, score), ref64, ref32, what=f"{fn.__name__} {score}")


@pytest.mark.parametrize("pool_kernel", [0, 7])
@pytest.mark.parametrize("gqa", [False, True], ids=["kvpress", "gqa"])
def test_baseline_evict_keeps_what_the_reference_selects_from_its_scores(gqa, pool_kernel):
    k, v, q = make_cache(1, 2, 4, 8, 400, 16, seed=41)
    N, rec, budget, sink = 400, q.shape[2], 40, 4
    k2, v2, idx = bl.kvpress_evict(k, v, q, budget, "joint", sink=sink, pool_kernel=pool_kernel, gqa=gqa)
    scores = (bl.gqa_scores if gqa else bl.kvpress_scores)(k, v, q, "joint")
    want = ref.select(scores, budget, sink=sink, recent=rec, pool_kernel=pool_kernel)
    gathered = idx[..., None].expand(-1, -1, -1, 16)
    assert torch.equal(k2, k.gather(2, gathered)) and torch.equal(v2, v.gather(2, gathered))
    if pool_kernel == 0:  # distinct scores: the very same tokens
        assert torch.equal(idx, want)
        return
    # Max pooling makes plateaus of equal pooled scores, among which topk picks
    # any and the reference the lowest index: the same sink and recent tokens,
    # and candidates whose pooled scores are the same multiset.
    assert torch.equal(idx[..., :sink], want[..., :sink]) and torch.equal(idx[..., -rec:], want[..., -rec:])
    pooled = ref.pool_scores(scores[..., : N - rec], pool_kernel, "max")
    got_vals = pooled.gather(-1, idx[..., sink:budget - rec]).sort(-1).values
    want_vals = pooled.gather(-1, want[..., sink:budget - rec]).sort(-1).values
    assert torch.equal(got_vals, want_vals)

"""torch.ops.obcache.evict = saliency + select + compact_, in place."""
import pytest
import torch
from torch.library import opcheck

import obcache
from obcache import reference as ref

from conftest import DEVICES, make_cache

B, HKV, G, W, N, D = 2, 2, 2, 4, 45, 16


def expected(k, v, q, budget, **kw):
    """Indices from the reference policy applied to the kernel's own scores
    (exact: no rounding between saliency implementations decides a tie), and
    the reference compaction of the original cache."""
    score = kw.pop("score", "joint")
    recent = kw.pop("recent", None)
    recent = q.shape[2] if recent is None else recent
    s = obcache.saliency(k, v, q, score, group_reduce=kw.pop("group_reduce", "sum"), scale=kw.pop("scale", None))
    idx = ref.select(s.cpu(), budget, recent=recent, **kw)
    k2, v2 = ref.compact(k.cpu(), v.cpu(), idx)
    return idx, k2, v2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("score", ref.SCORES)
def test_evict_matches_reference_pipeline(device, score):
    k, v, q = make_cache(B, HKV, G, W, N, D, device=device, seed=1)
    for budget, kw in [(12, dict(sink=2, pool_kernel=7, pool="max")), (20, dict(sink=0, recent=6, pool_kernel=3, pool="avg")),
                       (W, dict(pool_kernel=0))]:
        idx_want, k_want, v_want = expected(k, v, q, budget, score=score, **dict(kw))
        k1, v1 = k.clone(), v.clone()
        kk, vv, idx = obcache.evict(k1, v1, q, budget, score=score, **kw)
        assert torch.equal(idx.cpu(), idx_want), (score, budget)
        assert torch.equal(k1.cpu(), k_want) and torch.equal(v1.cpu(), v_want)
        assert kk.shape == (B, HKV, budget, D) and kk.data_ptr() == k1.data_ptr() and vv.data_ptr() == v1.data_ptr()


@pytest.mark.parametrize("device", DEVICES)
def test_evict_agrees_with_float64_reference_evict(device):
    k, v, q = make_cache(1, 2, 2, 4, 60, 8, dtype=torch.float64, device=device, seed=2)
    k_want, v_want, idx_want = ref.evict(k.cpu(), v.cpu(), q.cpu(), 20, score="key", sink=2)
    kk, vv, idx = obcache.evict(k, v, q, 20, score="key", sink=2)
    assert torch.equal(idx.cpu(), idx_want)
    assert torch.equal(kk.cpu(), k_want) and torch.equal(vv.cpu(), v_want)


@pytest.mark.parametrize("device", DEVICES)
def test_evict_on_narrowed_static_cache_with_start(device):
    k, v, q = make_cache(B, HKV, G, W, N, D, dtype=torch.bfloat16, device=device, seed=3, narrow_from=64)
    base_k = k._base if k._base is not None else k
    tail = base_k[:, :, N:].clone()
    start = torch.tensor([0, 9], device=device)
    idx_want, k_want, v_want = expected(k, v, q, 15, sink=1, pool_kernel=7, start=start.cpu())
    _, _, idx = obcache.evict(k, v, q, 15, sink=1, start=start)
    assert torch.equal(idx.cpu(), idx_want)
    assert torch.equal(k.cpu(), k_want) and torch.equal(v.cpu(), v_want)
    assert torch.equal(base_k[:, :, N:], tail)  # the rest of the static buffer is untouched


@pytest.mark.parametrize("device", DEVICES)
def test_evict_budget_at_least_n_moves_nothing(device):
    k, v, q = make_cache(B, HKV, G, W, N, D, device=device)
    k0, v0 = k.clone(), v.clone()
    kk, vv, idx = obcache.evict(k, v, q, N + 5)
    assert torch.equal(idx.cpu(), torch.arange(N).expand(B, HKV, N))
    assert torch.equal(k, k0) and torch.equal(v, v0) and kk.shape == k.shape


BAD = [
    (dict(budget=5, sink=2), "budget must be >= sink \\+ recent = 6 and > 0, got 5"),  # recent defaults to W = 4
    (dict(budget=0, recent=0), "budget must be >= sink \\+ recent = 0 and > 0, got 0"),
    (dict(budget=10, pool_kernel=6), "pool_kernel must be .* got 6"),
    (dict(budget=10, pool="median"), "pool must be one of .* got 'median'"),
    (dict(budget=10, sink=-1), "sink must be >= 0, got -1"),
    (dict(budget=10, recent=-1), "recent must be >= 0, got -1"),
    (dict(budget=10, start=[0]), "start must have shape \\[B\\]"),
    (dict(budget=10, start=[0, 99]), "start\\[1\\] must be in \\[0, N\\]"),
    (dict(budget=10, score="nope"), "score must be one of .* got 'nope'"),
    (dict(budget=10, group_reduce="median"), "group_reduce must be one of .* got 'median'"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(len(BAD)))
def test_evict_rejects_bad_arguments_without_writing(device, case):
    kw, match = dict(BAD[case][0]), BAD[case][1]
    if "start" in kw:
        kw["start"] = torch.tensor(kw["start"], device=device)
    budget = kw.pop("budget")
    k, v, q = make_cache(B, HKV, G, W, N, D, device=device)
    k0, v0 = k.clone(), v.clone()
    with pytest.raises((RuntimeError, ValueError), match=match):
        obcache.evict(k, v, q, budget, **kw)
    assert torch.equal(k, k0) and torch.equal(v, v0)


@pytest.mark.parametrize("device", DEVICES)
def test_evict_rejects_bad_tensors_without_writing(device):
    k, v, q = make_cache(B, HKV, G, W, N, D, device=device)
    k0, v0 = k.clone(), v.clone()
    with pytest.raises(RuntimeError, match=f"q_window's H_q must be a positive multiple of k's H_kv = {HKV}, "
                                           "got H_q = 3"):
        obcache.evict(k, v, q[:, :3], 10)
    with pytest.raises(RuntimeError, match=r"q_window must have 4 dims \[B, H_q, W, D\], got 3"):
        obcache.evict(k, v, q[0], 10)
    with pytest.raises(RuntimeError, match="must not share memory"):
        obcache.evict(k, k, q, 10)
    assert torch.equal(k, k0) and torch.equal(v, v0)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_evict(device):
    k, v, q = make_cache(B, HKV, G, W, N, D, device=device)
    opcheck(torch.ops.obcache.evict.default, (k.clone(), v.clone(), q, 12), dict(score="key", sink=1))
    opcheck(torch.ops.obcache.evict.default, (k.clone(), v.clone(), q, 100), {})


def test_evict_under_torch_compile_fullgraph():
    k, v, q = make_cache(1, 2, 2, 4, 32, 8, seed=4)
    k_eager, v_eager = k.clone(), v.clone()
    _, _, idx_eager = obcache.evict(k_eager, v_eager, q, 10, score="value")

    @torch.compile(fullgraph=True)
    def step(k, v, q):
        kk, vv, idx = obcache.evict(k, v, q, 10, score="value")
        return kk * 1, vv * 1, idx

    kk, vv, idx = step(k, v, q)
    assert torch.equal(idx, idx_eager)
    assert torch.equal(kk, k_eager[:, :, :10]) and torch.equal(k, k_eager) and torch.equal(v, v_eager)

"""torch.ops.obcache.select / select_adaptive against obcache/reference.py."""
import pytest
import torch
from torch.library import opcheck

import obcache
from obcache import reference as ref

from conftest import DEVICES


def scores_of(kind, B, H, N, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        s = torch.randn(B, H, N, generator=g)
    elif kind == "ties":  # duplicated values everywhere
        s = torch.randint(0, 3, (B, H, N), generator=g).float()
    elif kind == "constant":
        s = torch.full((B, H, N), 0.5)
    elif kind == "special":  # NaN, +-inf, +-0
        s = torch.randn(B, H, N, generator=g)
        u = torch.rand(B, H, N, generator=g)
        s[u < 0.15] = float("nan")
        s[(u >= 0.15) & (u < 0.25)] = float("inf")
        s[(u >= 0.25) & (u < 0.35)] = float("-inf")
        s[(u >= 0.35) & (u < 0.45)] = -0.0
        s[(u >= 0.45) & (u < 0.55)] = 0.0
    else:
        raise ValueError(kind)
    return s.to(dtype)


KINDS = ["random", "ties", "constant", "special"]
SINK_RECENT = [(0, 0), (2, 0), (0, 3), (4, 5)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pool_kernel", [0, 1, 3, 7])
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_select_matches_reference(device, kind, pool_kernel, pool):
    s = scores_of(kind, 2, 3, 53, seed=pool_kernel)
    for sink, recent in SINK_RECENT:
        for budget in (sink + recent, sink + recent + 1, 20, 52):
            if budget <= 0:
                continue
            want = ref.select(s, budget, sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool)
            got = obcache.select(s.to(device), budget, sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool)
            assert torch.equal(got.cpu(), want), (sink, recent, budget)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["random", "ties", "special"])
def test_select_with_start_offsets_matches_reference(device, kind):
    s = scores_of(kind, 4, 2, 40, seed=1)
    start = torch.tensor([0, 7, 33, 40])  # the last rows have fewer valid tokens than the budget
    for pool_kernel, pool in [(0, "max"), (3, "avg"), (7, "max")]:
        want = ref.select(s, 9, sink=2, recent=3, pool_kernel=pool_kernel, pool=pool, start=start)
        got = obcache.select(s.to(device), 9, sink=2, recent=3, pool_kernel=pool_kernel, pool=pool,
                             start=start.to(device))
        assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
def test_select_large_row_matches_reference(device):
    # More candidates than one CUDA block / radix bin; exercises every radix pass.
    s = scores_of("ties", 1, 2, 3000, seed=3) + 1e-3 * scores_of("random", 1, 2, 3000, seed=4).round()
    for budget in (1, 299, 2999):
        want = ref.select(s, budget, sink=0, recent=0, pool_kernel=7, pool="avg")
        assert torch.equal(obcache.select(s.to(device), budget, pool_kernel=7, pool="avg").cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["random", "ties", "special"])
def test_select_rows_longer_than_the_cuda_candidate_buffer_match_reference(device, kind):
    # The CUDA kernel histograms later digits from a 4,096-key shared buffer
    # once the chosen bin fits it, and sweeps 4,096 positions at a time:
    # random scores take that path, three tied values (~6,700 each) never fit.
    s = scores_of(kind, 1, 2, 20000, seed=5)
    for budget in (2005, 15000):
        want = ref.select(s, budget, sink=4, recent=16)
        assert torch.equal(obcache.select(s.to(device), budget, sink=4, recent=16).cpu(), want), budget
    # AdaKV: 2 x 20000 keys compete in one block for what the floors leave.
    got = obcache.select_adaptive(s.to(device), 9000, floor=0.2, sink=4, recent=16)
    want = ref.select_adaptive(s, 9000, floor=0.2, sink=4, recent=16)
    assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_select_rows_longer_than_cuda_shared_memory_match_reference(device, pool):
    # The CUDA kernel keeps a row's keys in shared memory where they fit (on
    # sm_90 up to ~53k 4-byte keys, max pooling; ~26k 8-byte ones, average
    # pooling) and sweeps a global workspace beyond: 70,000 keys take that path.
    s = scores_of("random", 1, 1, 70000, seed=6)
    want = ref.select(s, 7000, sink=4, recent=32, pool_kernel=7, pool=pool)
    got = obcache.select(s.to(device), 7000, sink=4, recent=32, pool_kernel=7, pool=pool)
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_select_other_score_dtypes_match_reference(device, dtype):
    s = scores_of("random", 1, 2, 30, seed=5, dtype=dtype)
    want = ref.select(s, 10, sink=1, recent=2, pool_kernel=3, pool="avg")
    assert torch.equal(obcache.select(s.to(device), 10, sink=1, recent=2, pool_kernel=3, pool="avg").cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
def test_select_nan_never_kept_before_finite(device):
    s = torch.tensor([[[float("nan"), 1.0, float("nan"), -5.0, float("nan")]]])
    assert obcache.select(s.to(device), 2).cpu().tolist() == [[[1, 3]]]


@pytest.mark.parametrize("device", DEVICES)
def test_select_budget_at_least_n_keeps_all(device):
    s = scores_of("random", 2, 3, 10).to(device)
    for budget in (10, 11, 1000):
        assert torch.equal(obcache.select(s, budget, sink=20).cpu(), torch.arange(10).expand(2, 3, 10))


@pytest.mark.parametrize("device", DEVICES)
def test_select_output_is_int64_ascending_of_budget_length(device):
    out = obcache.select(scores_of("random", 2, 3, 50).to(device), 17, sink=2, recent=4, pool_kernel=7)
    assert out.dtype == torch.int64 and out.shape == (2, 3, 17) and out.device.type == device
    assert bool((out[..., 1:] > out[..., :-1]).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(budget=3, sink=2, recent=2), "budget must be >= sink \\+ recent = 4 and > 0, got 3"),
        (dict(budget=0), "budget must be >= sink \\+ recent = 0 and > 0, got 0"),
        (dict(budget=-1), "budget must be >= sink \\+ recent = 0 and > 0, got -1"),
        (dict(budget=5, pool_kernel=4), "pool_kernel must be 0, 1 .* got 4"),
        (dict(budget=5, pool_kernel=-3), "pool_kernel must be .* got -3"),
        (dict(budget=5, pool="min"), "pool must be one of .* got 'min'"),
        (dict(budget=5, sink=-1), "sink must be >= 0, got -1"),
        (dict(budget=5, recent=-2), "recent must be >= 0, got -2"),
        (dict(budget=5, start=torch.tensor([0])), "start must have shape \\[B\\] = \\[2\\]"),
        (dict(budget=5, start=torch.tensor([0.0, 1.0])), "start must be int64"),
    ],
)
def test_select_rejects_bad_arguments(device, kwargs, match):
    s = scores_of("random", 2, 3, 20).to(device)
    kwargs = dict(kwargs)
    if "start" in kwargs:
        kwargs["start"] = kwargs["start"].to(device)
    budget = kwargs.pop("budget")
    with pytest.raises(RuntimeError, match=match):
        obcache.select(s, budget, **kwargs)


def test_select_rejects_start_out_of_range():
    with pytest.raises(RuntimeError, match="start\\[1\\] must be in \\[0, N\\] = \\[0, 20\\], got 21"):
        obcache.select(scores_of("random", 2, 3, 20), 5, start=torch.tensor([0, 21]))


def test_select_rejects_bad_scores_rank():
    with pytest.raises(RuntimeError, match="scores must have 3 dims \\[B, H, N\\], got 2"):
        obcache.select(torch.randn(3, 4), 2)


# ---- select_adaptive ----

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pool_kernel, pool", [(0, "max"), (1, "avg"), (3, "max"), (7, "avg")])
def test_select_adaptive_matches_reference(device, kind, pool_kernel, pool):
    s = scores_of(kind, 2, 4, 37, seed=7)
    for total, floor, sink, recent in [(40, 0.2, 0, 0), (60, 0.5, 1, 2), (33, 0.0, 2, 3), (100, 1.0, 0, 4), (147, 0.3, 1, 1)]:
        want_idx, want_len = ref.select_adaptive(s, total, floor=floor, sink=sink, recent=recent,
                                                 pool_kernel=pool_kernel, pool=pool)
        idx, lengths = obcache.select_adaptive(s.to(device), total, floor=floor, sink=sink, recent=recent,
                                               pool_kernel=pool_kernel, pool=pool)
        assert torch.equal(idx.cpu(), want_idx) and torch.equal(lengths.cpu(), want_len), (total, floor)
        f = max(sink + recent, int(floor * (total // 4)))
        assert bool((lengths >= f).all()) and lengths.sum(-1).tolist() == [total, total]


@pytest.mark.parametrize("device", DEVICES)
def test_select_adaptive_budget_at_least_everything_keeps_all(device):
    idx, lengths = obcache.select_adaptive(scores_of("random", 1, 2, 5).to(device), 10)
    assert torch.equal(idx.cpu(), torch.arange(5).expand(1, 2, 5)) and lengths.tolist() == [[5, 5]]


@pytest.mark.parametrize("device", DEVICES)
def test_select_adaptive_rejects_impossible_floor(device):
    s = scores_of("random", 1, 4, 10).to(device)
    with pytest.raises(RuntimeError, match="total_budget=8 cannot give each of 4 heads its floor of 3"):
        obcache.select_adaptive(s, 8, sink=1, recent=2)
    with pytest.raises(RuntimeError, match="floor must be in \\[0, 1\\], got 1.5"):
        obcache.select_adaptive(s, 8, floor=1.5)
    with pytest.raises(RuntimeError, match="pool_kernel must be"):
        obcache.select_adaptive(s, 8, pool_kernel=2)


# ---- opcheck ----

@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_select(device):
    s = scores_of("random", 2, 3, 30).to(device)
    opcheck(torch.ops.obcache.select.default, (s, 10), dict(sink=1, recent=2, pool_kernel=3, pool="avg"))
    opcheck(torch.ops.obcache.select.default, (s, 10), dict(start=torch.tensor([0, 4], device=device)))
    opcheck(torch.ops.obcache.select.default, (s, 40))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_select_adaptive(device):
    s = scores_of("random", 2, 3, 30).to(device)
    opcheck(torch.ops.obcache.select_adaptive.default, (s, 40), dict(floor=0.3, sink=1, recent=2, pool_kernel=3))

"""pruned_keep: a CriticalKV eviction with stage 2's critical score
computed exactly only where the picks can depend on it must keep exactly
what the exact score keeps (per head and layer-wide, every pooling),
actually skip tokens, and its bound must bound the exact score from above.
Every check runs twice: through the CPU op (torch.ops.obcache.
_criticalkv_keep, what pruned_keep calls on CPU) and through its torch form
(stage1_plan, pruned_stage2_torch, kept_indices). exact_stage2, what
pruned_keep runs off the CPU, must keep the same tokens."""
import pytest
import torch

from obcache.policies import adaptive_criticalkv_keep, criticalkv_keep, pruned_keep
from obcache.policies.criticalkv import CRITICAL_EPS, kept_indices, stage1_plan, stage1_sizes
from obcache.policies.criticalkv_pruned import _norm_bound, critical_upper_bound, exact_stage2, pruned_stage2_torch


def _layer(B=2, H=3, G=2, N=400, D=16, hidden=40, seed=0):
    """float32 base scores spread over orders of magnitude (as attention
    is), values and an o_proj weight."""
    g = torch.Generator().manual_seed(seed)
    base = torch.exp(3 * torch.randn(B, H, N, generator=g)) / N
    v = torch.randn(B, H, N, D, generator=g)
    wo = torch.randn(hidden, H * G * D, generator=g) / D**0.5
    return base, v, wo


def _exact(base, v, wo):
    B, H, N = base.shape
    pn = torch.ops.obcache.projected_value_norm(v, wo, 1).view(B, H, -1, N).mean(2)
    return (base + CRITICAL_EPS) * pn


def _keep_op(base, v, wo, budget, floor=None, *, sink, recent, pool_kernel, pool):
    """(kept, exact) of the CPU op: kept as pruned_keep returns it."""
    sizes = stage1_sizes(base.shape, budget, floor=floor, sink=sink, recent=recent)
    idx, lengths, exact = torch.ops.obcache._criticalkv_keep(
        base, v, wo, _norm_bound(wo, base.shape[1], v.shape[-1]), *sizes, sink, recent, pool_kernel, pool)
    return (idx if sizes.per_head else (idx, lengths)), exact


def _keep_torch(base, v, wo, budget, floor=None, **sel):
    """(kept, exact) of the op's torch form."""
    plan = stage1_plan(base, stage1_sizes(base.shape, budget, floor=floor, sink=sel["sink"], recent=sel["recent"]),
                       **sel)
    picks, exact = pruned_stage2_torch(plan, base, v, wo, **sel)
    return kept_indices(plan, picks, sink=sel["sink"], recent=sel["recent"]), exact


@pytest.fixture(params=["op", "torch"])
def keep(request):
    """pruned_keep's CPU op or its torch form: (kept, exact)."""
    return _keep_op if request.param == "op" else _keep_torch


def _want(base, v, wo, budget, floor=None, **sel):
    """What the exact critical score keeps."""
    crit = _exact(base, v, wo)
    if floor is None:
        return criticalkv_keep(base, crit, budget, **sel)
    return adaptive_criticalkv_keep(base, crit, budget, floor=floor, **sel)


def _equal(got, want):
    return torch.equal(got, want) if isinstance(want, torch.Tensor) else all(map(torch.equal, got, want))


@pytest.mark.parametrize("pool_kernel,pool", [(7, "max"), (5, "avg"), (0, "max")])
@pytest.mark.parametrize("budget,sink,recent", [(40, 4, 8), (90, 0, 0), (13, 4, 8), (12, 4, 8)])
def test_per_head_selection_equals_the_exact_one(pool_kernel, pool, budget, sink, recent, keep):
    base, v, wo = _layer(seed=budget + pool_kernel)
    sel = dict(sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool)
    got, exact = keep(base, v, wo, budget, **sel)
    assert torch.equal(got, _want(base, v, wo, budget, **sel))
    assert got.shape == (2, 3, budget)
    assert exact.float().mean() < 0.6


@pytest.mark.parametrize("pool_kernel,pool", [(7, "max"), (7, "avg"), (0, "max")])
@pytest.mark.parametrize("floor", [0.2, 0.0])
def test_layer_wide_selection_equals_the_exact_one(pool_kernel, pool, floor, keep):
    base, v, wo = _layer(seed=3)
    sel = dict(sink=4, recent=8, pool_kernel=pool_kernel, pool=pool)
    (gi, gl), exact = keep(base, v, wo, 3 * 40, floor, **sel)
    wi, wl = _want(base, v, wo, 3 * 40, floor, **sel)
    assert torch.equal(gi, wi) and torch.equal(gl, wl)
    assert exact.float().mean() < 0.6


def _flat_layer(spread, seed):
    """Base scores within a factor 1 + spread of each other, value norms
    that vary, and an o_proj weight whose singular values span 10x: the
    value norms decide stage 2 and the bound ranks them loosely, so the
    picks by the seeded bounds alone differ from the exact ones."""
    g = torch.Generator().manual_seed(seed)
    B, H, G, N, D, hidden = 2, 3, 2, 400, 16, 40
    base = (1 + spread * torch.rand(B, H, N, generator=g)) / N
    v = torch.randn(B, H, N, D, generator=g) * torch.exp(0.3 * torch.randn(B, H, N, 1, generator=g))
    u = torch.linalg.qr(torch.randn(H * G * D, H * G * D, generator=g, dtype=torch.float64))[0][:, :hidden]
    wo = (u * torch.logspace(0, -1, hidden, dtype=torch.float64)).t().float().contiguous()
    return base, v, wo


@pytest.mark.parametrize("spread", [0.1, 2.0])
@pytest.mark.parametrize("floor", [None, 0.2])
def test_windows_left_open_by_the_seed_are_settled_exactly(spread, floor, keep):
    base, v, wo = _flat_layer(spread, seed=int(spread * 10))
    sel = dict(sink=4, recent=8, pool_kernel=7, pool="max")
    budget = 40 if floor is None else 3 * 40
    got, exact = keep(base, v, wo, budget, floor, **sel)
    assert _equal(got, _want(base, v, wo, budget, floor, **sel))
    assert exact.float().mean() < 0.6


def test_ties_go_to_the_lower_index_as_with_the_exact_score(keep):
    # equal values and equal bases: every candidate ties with its neighbours
    base, v, wo = _layer(B=1, H=2, N=120, seed=8)
    base.fill_(0.01)
    v[:] = v[:, :, :1]
    sel = dict(sink=2, recent=4, pool_kernel=3, pool="max")
    assert torch.equal(keep(base, v, wo, 30, **sel)[0], _want(base, v, wo, 30, **sel))


def test_a_negative_base_is_bounded_by_zero(keep):
    base, v, wo = _layer(B=1, H=2, seed=9)
    base[0, 0, ::3] = -1.0  # a joint score's negative cross term
    ub = critical_upper_bound(base, v, wo)
    assert (ub >= _exact(base, v, wo)).all()
    sel = dict(sink=4, recent=8, pool_kernel=7, pool="max")
    assert torch.equal(keep(base, v, wo, 60, **sel)[0], _want(base, v, wo, 60, **sel))


def test_the_bound_holds_for_a_value_along_the_top_singular_vector():
    # ||v W||_1 is largest relative to ||v|| there: the bound's tightest case
    base, v, wo = _layer(B=1, H=1, G=1, N=50, D=8, hidden=12, seed=5)
    top = torch.linalg.svd(wo.t().double()).U[:, 0].float()  # W_o^0 = wo.t(): [D, hidden]
    v[0, 0, 10] = 3 * top
    exact = _exact(base, v, wo)
    ub = critical_upper_bound(base, v, wo)
    assert (ub >= exact).all()
    # and it is tight there up to the L1/L2 step and the rounding slack
    l1_over_l2 = (v[0, 0, 10] @ wo.t()).abs().sum() / (v[0, 0, 10] @ wo.t()).norm() / 12**0.5
    torch.testing.assert_close(exact[0, 0, 10] / ub[0, 0, 10], l1_over_l2 / (1 + 1e-3), rtol=1e-4, atol=0)


def test_non_finite_values_get_the_exact_score_everywhere(keep):
    base, v, wo = _layer(B=1, H=2, seed=6)
    v[0, 1, 7, 3] = float("inf")
    sel = dict(sink=0, recent=0, pool_kernel=7, pool="max")
    got, exact = keep(base, v, wo, 30, **sel)
    assert torch.equal(got, _want(base, v, wo, 30, **sel))
    assert exact.all()


def test_an_in_place_change_of_the_weight_renews_the_cached_bound(keep):
    base, v, wo = _layer(seed=7)
    critical_upper_bound(base, v, wo)  # caches sigma_max of this wo
    with torch.no_grad():
        wo.mul_(10)
    assert (critical_upper_bound(base, v, wo) >= _exact(base, v, wo)).all()
    sel = dict(sink=4, recent=8, pool_kernel=7, pool="max")
    assert torch.equal(keep(base, v, wo, 40, **sel)[0], _want(base, v, wo, 40, **sel))


@pytest.mark.parametrize("pool_kernel,pool", [(7, "max"), (5, "avg"), (0, "max")])
@pytest.mark.parametrize("floor", [None, 0.2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_the_op_computes_the_tokens_the_torch_version_computes(pool_kernel, pool, floor, dtype):
    # the same steps, not just the same picks: a port that computed more
    # (or fewer, and got lucky) would pass the equality tests above; in
    # every dtype of v, whose rows the op gathers itself
    base, v, wo = _flat_layer(0.5, seed=11)
    v, wo = v.to(dtype), wo.to(dtype)
    sel = dict(sink=4, recent=8, pool_kernel=pool_kernel, pool=pool)
    budget = 40 if floor is None else 3 * 40
    op_kept, op_exact = _keep_op(base, v, wo, budget, floor, **sel)
    t_kept, t_exact = _keep_torch(base, v, wo, budget, floor, **sel)
    assert _equal(op_kept, t_kept)
    assert torch.equal(op_exact, t_exact)
    assert 0 < op_exact.sum() < op_exact.numel()


@pytest.mark.parametrize("pool_kernel,pool", [(7, "max"), (5, "avg"), (0, "max")])
@pytest.mark.parametrize("floor", [None, 0.2])
def test_pruned_keep_keeps_what_the_exact_stage2_off_the_cpu_keeps(pool_kernel, pool, floor):
    base, v, wo = _layer(seed=5 + pool_kernel)
    sel = dict(sink=4, recent=8, pool_kernel=pool_kernel, pool=pool)
    budget = 40 if floor is None else 3 * 40
    sizes = stage1_sizes(base.shape, budget, floor=floor, sink=4, recent=8)
    plan = stage1_plan(base, sizes, **sel)
    picks, exact = exact_stage2(plan, base, v, wo, **sel)
    assert _equal(kept_indices(plan, picks, sink=4, recent=8), pruned_keep(base, v, wo, budget, floor=floor, **sel))
    assert bool(exact.all())
    assert int(picks.sum()) == plan.rest * (2 * 3 if floor is None else 2)


@pytest.mark.parametrize("floor", [None, 0.2])
def test_a_budget_holding_every_token_keeps_every_token(floor):
    base, v, wo = _layer(B=1, H=2, N=30)
    sel = dict(sink=4, recent=8, pool_kernel=7, pool="max")
    got = pruned_keep(base, v, wo, 30 if floor is None else 60, floor=floor, **sel)
    want = torch.arange(30).expand(1, 2, 30)
    assert torch.equal(got, want) if floor is None else _equal(got, (want, torch.full((1, 2), 30)))


@pytest.mark.parametrize("floor", [None, 0.2])
def test_the_op_gives_the_same_result_on_any_thread_count(floor):
    # groups run on threads of their own; B=3 batch rows of H=3 heads: 9 or 3 groups
    base, v, wo = _layer(B=3, seed=12)
    base[1, 2, 5] = float("nan")  # a non-finite bound in one group: exact scores everywhere
    sel = dict(sink=4, recent=8, pool_kernel=7, pool="max")
    budget = 40 if floor is None else 3 * 40
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 3, 4):
            torch.set_num_threads(n)
            runs.append(_keep_op(base, v, wo, budget, floor, **sel))
    finally:
        torch.set_num_threads(threads)
    for kept, exact in runs[1:]:
        assert _equal(kept, runs[0][0]) and torch.equal(exact, runs[0][1])
    assert runs[0][1].all()
    assert _equal(runs[0][0], _keep_torch(base, v, wo, budget, floor, **sel)[0])


def _op_args(**change):
    base, v, wo = _layer(B=1, H=2, N=60)
    args = dict(base=base, v=v, wo=wo, norm_bound=torch.ones(2), floor=0, first=4, rest=4, per_head=True, sink=4,
                recent=8, pool_kernel=7, pool="max")
    args.update(change)
    return args


@pytest.mark.parametrize("change,message", [
    (dict(base=torch.zeros(1, 2, 60, dtype=torch.float64)), "base must be float32"),
    (dict(v=torch.zeros(1, 2, 59, 16)), r"v must be \[B, H_kv, N, D\] with base's"),
    (dict(norm_bound=torch.ones(3)), r"norm_bound must be float32 \[H_kv\]"),
    (dict(pool="min"), "pool must be 'max' or 'avg', got 'min'"),
    (dict(pool_kernel=4), "pool_kernel must be 0 or odd, got 4"),
    (dict(floor=-1), "floor must be >= 0, got -1"),
    (dict(first=-2), "first must be >= 0, got -2"),
    (dict(rest=-1), "rest must be >= 0, got -1"),
    (dict(sink=50, recent=20), "sink = 50 and recent = 20"),
])
def test_the_op_rejects_bad_arguments_by_name(change, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.obcache._criticalkv_keep(**_op_args(**change))


def test_the_op_reads_a_strided_norm_bound_by_its_strides():
    op = torch.ops.obcache._criticalkv_keep
    want = op(**_op_args(norm_bound=torch.tensor([0.05, 1000.0])))
    # the bound decides which tokens stage 2 scores exactly: reading the
    # gap's 7.0 instead of head 1's 1000.0 would show
    misread = op(**_op_args(norm_bound=torch.tensor([0.05, 7.0])))
    assert not torch.equal(want[2], misread[2])
    strided = op(**_op_args(norm_bound=torch.tensor([0.05, 7.0, 1000.0, 7.0])[::2]))
    assert all(torch.equal(a, b) for a, b in zip(want, strided))


@pytest.mark.parametrize("per_head", [True, False])
def test_the_op_passes_opcheck(per_head):
    args = _op_args(per_head=per_head, floor=0 if per_head else 2)
    torch.library.opcheck(torch.ops.obcache._criticalkv_keep.default, tuple(args.values()))

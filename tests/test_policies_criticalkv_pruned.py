"""pruned_stage2: CriticalKV's stage 2 with the critical score computed
exactly only where the picks can depend on it must pick exactly what the
exact score picks (per head and layer-wide, every pooling), actually skip
tokens, and its bound must bound the exact score from above. Every check
runs twice: through the CPU op (torch.ops.obcache._criticalkv_stage2,
what pruned_stage2 calls on CPU) and through pruned_stage2_torch (its
torch form). exact_stage2, what pruned_stage2 runs off the CPU, must pick
the same tokens."""
import pytest
import torch

from obcache.policies import adaptive_criticalkv_keep, criticalkv_keep, pruned_stage2
from obcache.policies.criticalkv import (CRITICAL_EPS, adaptive_criticalkv_stage1, criticalkv_stage1, kept_indices,
                                         pool_candidates, stage2_picks)
from obcache.policies.criticalkv_pruned import critical_upper_bound, exact_stage2, pruned_stage2_torch


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


@pytest.fixture(params=["op", "torch"])
def stage2(request):
    """pruned_stage2 on CPU (the fused op) or its torch version."""
    return pruned_stage2 if request.param == "op" else pruned_stage2_torch


@pytest.mark.parametrize("pool_kernel,pool", [(7, "max"), (5, "avg"), (0, "max")])
@pytest.mark.parametrize("budget,sink,recent", [(40, 4, 8), (90, 0, 0), (13, 4, 8), (12, 4, 8)])
def test_per_head_selection_equals_the_exact_one(pool_kernel, pool, budget, sink, recent, stage2):
    base, v, wo = _layer(seed=budget + pool_kernel)
    sel = dict(sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool)
    plan = criticalkv_stage1(base, budget, **sel)
    picks, exact = stage2(plan, base, v, wo, **sel)
    got = kept_indices(plan, picks, sink=sink, recent=recent)
    assert torch.equal(got, criticalkv_keep(base, _exact(base, v, wo), budget, **sel))
    assert got.shape == (2, 3, budget)
    assert exact.float().mean() < 0.6


@pytest.mark.parametrize("pool_kernel,pool", [(7, "max"), (7, "avg"), (0, "max")])
@pytest.mark.parametrize("floor", [0.2, 0.0])
def test_layer_wide_selection_equals_the_exact_one(pool_kernel, pool, floor, stage2):
    base, v, wo = _layer(seed=3)
    sel = dict(sink=4, recent=8, pool_kernel=pool_kernel, pool=pool)
    total = 3 * 40
    plan = adaptive_criticalkv_stage1(base, total, floor=floor, **sel)
    picks, exact = stage2(plan, base, v, wo, **sel)
    gi, gl = kept_indices(plan, picks, sink=4, recent=8)
    wi, wl = adaptive_criticalkv_keep(base, _exact(base, v, wo), total, floor=floor, **sel)
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
@pytest.mark.parametrize("adaptive", [False, True])
def test_windows_left_open_by_the_seed_are_settled_exactly(spread, adaptive, stage2):
    base, v, wo = _flat_layer(spread, seed=int(spread * 10))
    sel = dict(sink=4, recent=8, pool_kernel=7, pool="max")
    plan = (adaptive_criticalkv_stage1(base, 3 * 40, floor=0.2, **sel) if adaptive
            else criticalkv_stage1(base, 40, **sel))
    want = stage2_picks(plan, pool_candidates(_exact(base, v, wo), **sel))
    picks, exact = stage2(plan, base, v, wo, **sel)
    assert torch.equal(picks, want)
    assert exact.float().mean() < 0.6


def test_ties_go_to_the_lower_index_as_with_the_exact_score(stage2):
    # equal values and equal bases: every candidate ties with its neighbours
    base, v, wo = _layer(B=1, H=2, N=120, seed=8)
    base.fill_(0.01)
    v[:] = v[:, :, :1]
    sel = dict(sink=2, recent=4, pool_kernel=3, pool="max")
    plan = criticalkv_stage1(base, 30, **sel)
    want = stage2_picks(plan, pool_candidates(_exact(base, v, wo), **sel))
    assert torch.equal(stage2(plan, base, v, wo, **sel)[0], want)


def test_a_negative_base_is_bounded_by_zero(stage2):
    base, v, wo = _layer(B=1, H=2, seed=9)
    base[0, 0, ::3] = -1.0  # a joint score's negative cross term
    ub = critical_upper_bound(base, v, wo)
    assert (ub >= _exact(base, v, wo)).all()
    sel = dict(sink=4, recent=8, pool_kernel=7, pool="max")
    plan = criticalkv_stage1(base, 60, **sel)
    want = stage2_picks(plan, pool_candidates(_exact(base, v, wo), **sel))
    assert torch.equal(stage2(plan, base, v, wo, **sel)[0], want)


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


def test_non_finite_values_get_the_exact_score_everywhere(stage2):
    base, v, wo = _layer(B=1, H=2, seed=6)
    v[0, 1, 7, 3] = float("inf")
    sel = dict(sink=0, recent=0, pool_kernel=7, pool="max")
    plan = criticalkv_stage1(base, 30, **sel)
    want = stage2_picks(plan, pool_candidates(_exact(base, v, wo), **sel))
    picks, exact = stage2(plan, base, v, wo, **sel)
    assert torch.equal(picks, want)
    assert exact.all()


def test_an_in_place_change_of_the_weight_renews_the_cached_bound(stage2):
    base, v, wo = _layer(seed=7)
    critical_upper_bound(base, v, wo)  # caches sigma_max of this wo
    with torch.no_grad():
        wo.mul_(10)
    assert (critical_upper_bound(base, v, wo) >= _exact(base, v, wo)).all()
    sel = dict(sink=4, recent=8, pool_kernel=7, pool="max")
    plan = criticalkv_stage1(base, 40, **sel)
    want = stage2_picks(plan, pool_candidates(_exact(base, v, wo), **sel))
    assert torch.equal(stage2(plan, base, v, wo, **sel)[0], want)


@pytest.mark.parametrize("pool_kernel,pool", [(7, "max"), (5, "avg"), (0, "max")])
@pytest.mark.parametrize("adaptive", [False, True])
def test_the_op_computes_the_tokens_the_torch_version_computes(pool_kernel, pool, adaptive):
    # the same steps, not just the same picks: a port that computed more
    # (or fewer, and got lucky) would pass the equality tests above
    base, v, wo = _flat_layer(0.5, seed=11)
    sel = dict(sink=4, recent=8, pool_kernel=pool_kernel, pool=pool)
    plan = (adaptive_criticalkv_stage1(base, 3 * 40, floor=0.2, **sel) if adaptive
            else criticalkv_stage1(base, 40, **sel))
    op_picks, op_exact = pruned_stage2(plan, base, v, wo, **sel)
    t_picks, t_exact = pruned_stage2_torch(plan, base, v, wo, **sel)
    assert torch.equal(op_picks, t_picks)
    assert torch.equal(op_exact, t_exact)
    assert 0 < op_exact.sum() < op_exact.numel()


@pytest.mark.parametrize("pool_kernel,pool", [(7, "max"), (5, "avg"), (0, "max")])
@pytest.mark.parametrize("adaptive", [False, True])
def test_the_exact_stage2_off_the_cpu_picks_what_the_pruned_one_picks(pool_kernel, pool, adaptive):
    base, v, wo = _layer(seed=5 + pool_kernel)
    sel = dict(sink=4, recent=8, pool_kernel=pool_kernel, pool=pool)
    plan = (adaptive_criticalkv_stage1(base, 3 * 40, floor=0.2, **sel) if adaptive
            else criticalkv_stage1(base, 40, **sel))
    picks, exact = exact_stage2(plan, base, v, wo, **sel)
    assert torch.equal(picks, pruned_stage2(plan, base, v, wo, **sel)[0])
    assert bool(exact.all())
    assert int(picks.sum()) == plan.rest * (2 * 3 if not adaptive else 2)


def _op_args(**change):
    base, v, wo = _layer(B=1, H=2, N=60)
    sel = dict(sink=4, recent=8, pool_kernel=7, pool="max")
    plan = criticalkv_stage1(base, 20, **sel)
    args = dict(base=base, v=v, wo=wo, norm_bound=torch.ones(2), taken=plan.taken, rest=plan.rest, per_head=True,
                **sel)
    args.update(change)
    return args


@pytest.mark.parametrize("change,message", [
    (dict(base=torch.zeros(1, 2, 60, dtype=torch.float64)), "base must be float32"),
    (dict(taken=torch.zeros(1, 2, 47, dtype=torch.bool)), r"taken must be bool \[B, H_kv, N - sink - recent\]"),
    (dict(norm_bound=torch.ones(3)), r"norm_bound must be float32 \[H_kv\]"),
    (dict(pool="min"), "pool must be 'max' or 'avg', got 'min'"),
    (dict(pool_kernel=4), "pool_kernel must be 0 or odd, got 4"),
    (dict(rest=-1), "rest must be >= 0, got -1"),
    (dict(sink=50, recent=20), "sink = 50 and recent = 20"),
])
def test_the_op_rejects_bad_arguments_by_name(change, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.obcache._criticalkv_stage2(**_op_args(**change))


def test_the_op_passes_opcheck():
    args = _op_args()
    torch.library.opcheck(torch.ops.obcache._criticalkv_stage2.default, tuple(args.values()))

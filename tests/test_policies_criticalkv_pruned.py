"""pruned_stage2: CriticalKV's stage 2 with the critical score computed
exactly only where the picks can depend on it must pick exactly what the
exact score picks (per head and layer-wide, every pooling), actually skip
tokens, and its bound must bound the exact score from above."""
import pytest
import torch

from obcache.policies import adaptive_criticalkv_keep, criticalkv_keep, criticalkv_pruned, pruned_stage2
from obcache.policies.criticalkv import (CRITICAL_EPS, adaptive_criticalkv_stage1, criticalkv_stage1, kept_indices,
                                         pool_candidates, stage2_picks)
from obcache.policies.criticalkv_pruned import critical_upper_bound


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


@pytest.fixture
def computed(monkeypatch):
    """The share of (batch, head, token) critical scores pruned_stage2
    computed exactly in its last call."""
    seen = {"share": 0.0}
    compute = criticalkv_pruned._Scores.compute

    def counting(self, need):
        compute(self, need)
        seen["share"] = self.done.float().mean().item()

    monkeypatch.setattr(criticalkv_pruned._Scores, "compute", counting)
    return seen


@pytest.mark.parametrize("pool_kernel,pool", [(7, "max"), (5, "avg"), (0, "max")])
@pytest.mark.parametrize("budget,sink,recent", [(40, 4, 8), (90, 0, 0), (13, 4, 8), (12, 4, 8)])
def test_per_head_selection_equals_the_exact_one(pool_kernel, pool, budget, sink, recent, computed):
    base, v, wo = _layer(seed=budget + pool_kernel)
    sel = dict(sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool)
    plan = criticalkv_stage1(base, budget, **sel)
    got = kept_indices(plan, pruned_stage2(plan, base, v, wo, **sel), sink=sink, recent=recent)
    assert torch.equal(got, criticalkv_keep(base, _exact(base, v, wo), budget, **sel))
    assert got.shape == (2, 3, budget)
    assert computed["share"] < 0.6, computed


@pytest.mark.parametrize("pool_kernel,pool", [(7, "max"), (7, "avg"), (0, "max")])
@pytest.mark.parametrize("floor", [0.2, 0.0])
def test_layer_wide_selection_equals_the_exact_one(pool_kernel, pool, floor, computed):
    base, v, wo = _layer(seed=3)
    sel = dict(sink=4, recent=8, pool_kernel=pool_kernel, pool=pool)
    total = 3 * 40
    plan = adaptive_criticalkv_stage1(base, total, floor=floor, **sel)
    gi, gl = kept_indices(plan, pruned_stage2(plan, base, v, wo, **sel), sink=4, recent=8)
    wi, wl = adaptive_criticalkv_keep(base, _exact(base, v, wo), total, floor=floor, **sel)
    assert torch.equal(gi, wi) and torch.equal(gl, wl)
    assert computed["share"] < 0.6, computed


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
def test_windows_left_open_by_the_seed_are_settled_exactly(spread, adaptive, computed):
    base, v, wo = _flat_layer(spread, seed=int(spread * 10))
    sel = dict(sink=4, recent=8, pool_kernel=7, pool="max")
    plan = (adaptive_criticalkv_stage1(base, 3 * 40, floor=0.2, **sel) if adaptive
            else criticalkv_stage1(base, 40, **sel))
    want = stage2_picks(plan, pool_candidates(_exact(base, v, wo), **sel))
    assert torch.equal(pruned_stage2(plan, base, v, wo, **sel), want)
    assert computed["share"] < 0.6, computed


def test_ties_go_to_the_lower_index_as_with_the_exact_score():
    # equal values and equal bases: every candidate ties with its neighbours
    base, v, wo = _layer(B=1, H=2, N=120, seed=8)
    base.fill_(0.01)
    v[:] = v[:, :, :1]
    sel = dict(sink=2, recent=4, pool_kernel=3, pool="max")
    plan = criticalkv_stage1(base, 30, **sel)
    want = stage2_picks(plan, pool_candidates(_exact(base, v, wo), **sel))
    assert torch.equal(pruned_stage2(plan, base, v, wo, **sel), want)


def test_a_negative_base_is_bounded_by_zero():
    base, v, wo = _layer(B=1, H=2, seed=9)
    base[0, 0, ::3] = -1.0  # a joint score's negative cross term
    ub = critical_upper_bound(base, v, wo)
    assert (ub >= _exact(base, v, wo)).all()
    sel = dict(sink=4, recent=8, pool_kernel=7, pool="max")
    plan = criticalkv_stage1(base, 60, **sel)
    want = stage2_picks(plan, pool_candidates(_exact(base, v, wo), **sel))
    assert torch.equal(pruned_stage2(plan, base, v, wo, **sel), want)


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


def test_non_finite_values_get_the_exact_score_everywhere(computed):
    base, v, wo = _layer(B=1, H=2, seed=6)
    v[0, 1, 7, 3] = float("inf")
    sel = dict(sink=0, recent=0, pool_kernel=7, pool="max")
    plan = criticalkv_stage1(base, 30, **sel)
    want = stage2_picks(plan, pool_candidates(_exact(base, v, wo), **sel))
    assert torch.equal(pruned_stage2(plan, base, v, wo, **sel), want)
    assert computed["share"] == 1.0


def test_an_in_place_change_of_the_weight_renews_the_cached_bound():
    base, v, wo = _layer(seed=7)
    critical_upper_bound(base, v, wo)  # caches sigma_max of this wo
    with torch.no_grad():
        wo.mul_(10)
    assert (critical_upper_bound(base, v, wo) >= _exact(base, v, wo)).all()
    sel = dict(sink=4, recent=8, pool_kernel=7, pool="max")
    plan = criticalkv_stage1(base, 40, **sel)
    want = stage2_picks(plan, pool_candidates(_exact(base, v, wo), **sel))
    assert torch.equal(pruned_stage2(plan, base, v, wo, **sel), want)

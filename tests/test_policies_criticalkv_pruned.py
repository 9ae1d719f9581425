"""pruned_critical_score: CriticalKV's stage-2 score computed exactly only
where the selection can depend on it must select exactly the tokens the
exact score selects (per head and layer-wide, every pooling), bound the
exact score from above elsewhere, and actually skip tokens."""
import pytest
import torch

from obcache.policies import adaptive_criticalkv_keep, criticalkv_keep, pruned_critical_score
from obcache.policies.criticalkv import CRITICAL_EPS


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


@pytest.mark.parametrize("pool_kernel,pool", [(7, "max"), (5, "avg"), (0, "max")])
@pytest.mark.parametrize("budget,sink,recent", [(40, 4, 8), (90, 0, 0), (13, 4, 8)])
def test_per_head_selection_equals_the_exact_one(pool_kernel, pool, budget, sink, recent):
    base, v, wo = _layer(seed=budget + pool_kernel)
    sel = dict(sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool)
    exact = _exact(base, v, wo)
    got = pruned_critical_score(base, v, wo, lambda c: criticalkv_keep(base, c, budget, **sel), **sel)
    assert torch.equal(criticalkv_keep(base, got, budget, **sel), criticalkv_keep(base, exact, budget, **sel))
    # exact where computed, an upper bound elsewhere, and most tokens skipped
    computed = got == exact
    assert (got >= exact).all()
    assert computed.float().mean() < 0.6, computed.float().mean()


@pytest.mark.parametrize("pool_kernel,pool", [(7, "max"), (7, "avg")])
@pytest.mark.parametrize("floor", [0.2, 0.0])
def test_layer_wide_selection_equals_the_exact_one(pool_kernel, pool, floor):
    base, v, wo = _layer(seed=3)
    sel = dict(sink=4, recent=8, pool_kernel=pool_kernel, pool=pool)
    total = 3 * 40

    def keep(c):
        return adaptive_criticalkv_keep(base, c, total, floor=floor, **sel)

    got = pruned_critical_score(base, v, wo, lambda c: keep(c)[0], per_head=False, **sel)
    exact = _exact(base, v, wo)
    (gi, gl), (wi, wl) = keep(got), keep(exact)
    assert torch.equal(gi, wi) and torch.equal(gl, wl)
    assert (got >= exact).all() and (got == exact).float().mean() < 0.6


def test_the_bound_holds_for_a_value_along_the_top_singular_vector():
    # ||v W||_1 is largest relative to ||v|| there: the bound's tightest case
    base, v, wo = _layer(B=1, H=1, G=1, N=50, D=8, hidden=12, seed=5)
    top = torch.linalg.svd(wo.t().double()).U[:, 0].float()  # W_o^0 = wo.t(): [D, hidden]
    v[0, 0, 10] = 3 * top
    sel = dict(sink=0, recent=0, pool_kernel=0, pool="max")
    got = pruned_critical_score(base, v, wo, lambda c: criticalkv_keep(base, c, 5, **sel), **sel)
    assert (got >= _exact(base, v, wo)).all()


def test_non_finite_values_get_the_exact_score_everywhere():
    base, v, wo = _layer(B=1, H=2, seed=6)
    v[0, 1, 7, 3] = float("inf")
    sel = dict(sink=0, recent=0, pool_kernel=7, pool="max")
    got = pruned_critical_score(base, v, wo, lambda c: criticalkv_keep(base, c, 30, **sel), **sel)
    torch.testing.assert_close(got, _exact(base, v, wo), rtol=0, atol=0, equal_nan=True)


def test_an_in_place_change_of_the_weight_renews_the_cached_bound():
    base, v, wo = _layer(seed=7)
    sel = dict(sink=4, recent=8, pool_kernel=7, pool="max")

    def keep(c):
        return criticalkv_keep(base, c, 40, **sel)

    pruned_critical_score(base, v, wo, keep, **sel)  # caches sigma_max of this wo
    with torch.no_grad():
        wo.mul_(10)
    got = pruned_critical_score(base, v, wo, keep, **sel)
    assert (got >= _exact(base, v, wo)).all()
    assert torch.equal(keep(got), keep(_exact(base, v, wo)))

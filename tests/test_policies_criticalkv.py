"""CriticalKV two-stage selection (obcache.policies.criticalkv) and the output
error bound that motivates it."""
import pytest
import torch

import obcache
from obcache import reference as ref
from obcache.policies import criticalkv_select, output_error_bound
from obcache.policies.criticalkv import _top
from conftest import make_cache


def _scores(B=2, Hkv=2, G=3, W=6, N=60, D=32, hidden=48, seed=0, dtype=torch.float64, q_scale=1.0):
    k, v, q = make_cache(B, Hkv, G, W, N, D, dtype=dtype, seed=seed)
    q = q * q_scale  # larger: more peaked attention
    g = torch.Generator().manual_seed(seed + 100)
    wo = (torch.randn(hidden, Hkv * G * D, generator=g) / D**0.5).to(dtype)
    base = obcache.saliency(k, v, q, "attn")
    critical = obcache.saliency(k, v, q, "critical", wo=wo)
    return k, v, q, wo, base, critical


def test_keeps_budget_tokens_ascending_and_distinct():
    *_, base, critical = _scores()
    idx = criticalkv_select(base, critical, 17)
    assert idx.shape == (2, 2, 17) and idx.dtype == torch.int64
    assert (idx[..., 1:] > idx[..., :-1]).all()


def test_stage_one_keeps_the_top_alpha_budget_by_base_score():
    *_, base, critical = _scores(seed=1)
    for budget, alpha in ((17, 0.5), (20, 0.3), (9, 0.5)):
        idx = criticalkv_select(base, critical, budget, alpha=alpha)
        top = base.topk(int(alpha * budget), dim=-1).indices
        for b in range(2):
            for h in range(2):
                assert set(top[b, h].tolist()) <= set(idx[b, h].tolist())


def test_stage_two_fills_the_rest_by_critical_score():
    *_, base, critical = _scores(seed=2)
    budget, s1 = 17, 8
    idx = criticalkv_select(base, critical, budget)
    first = base.topk(s1, dim=-1).indices
    for b in range(2):
        for h in range(2):
            rest = critical[b, h].clone()
            rest[first[b, h]] = float("-inf")
            want = set(first[b, h].tolist()) | set(rest.topk(budget - s1).indices.tolist())
            assert set(idx[b, h].tolist()) == want


def test_alpha_zero_and_one_are_plain_top_k():
    *_, base, critical = _scores(seed=3)
    assert torch.equal(criticalkv_select(base, critical, 10, alpha=0.0),
                       critical.topk(10, dim=-1).indices.sort(-1).values)
    assert torch.equal(criticalkv_select(base, critical, 10, alpha=1.0),
                       base.topk(10, dim=-1).indices.sort(-1).values)


def test_budget_at_least_n_keeps_everything():
    *_, base, critical = _scores(N=12)
    assert torch.equal(criticalkv_select(base, critical, 50), torch.arange(12).expand(2, 2, 12))


@pytest.mark.parametrize("over,match", [
    (dict(budget=0), r"budget must be >= 1, got 0"),
    (dict(alpha=1.5), r"alpha must be in \[0, 1\], got 1.5"),
    (dict(critical=torch.zeros(2, 2, 5)), r"base and critical must both be \[B, H, N\]"),
])
def test_bad_arguments_raise(over, match):
    *_, base, critical = _scores(N=12)
    a = dict(base=base, critical=critical, budget=4)
    a.update(over)
    with pytest.raises(ValueError, match=match):
        criticalkv_select(a["base"], a["critical"], a["budget"], **{k: v for k, v in a.items() if k == "alpha"})


@pytest.mark.parametrize("seed,budget", [(0, 12), (1, 20), (2, 30), (3, 16)])
def test_output_error_is_within_the_bound_whenever_sigma_is_at_least_half(seed, budget):
    B, Hkv, G, W, N, D, hidden = 2, 2, 3, 6, 60, 32, 48
    # Peaked attention (q x 3), so that a good share of rows keep sigma >= 0.5.
    k, v, q, wo, base, critical = _scores(B, Hkv, G, W, N, D, hidden, seed=seed, q_scale=3.0)
    idx = criticalkv_select(base, critical, budget)
    kept = torch.zeros(B, Hkv, N, dtype=torch.bool).scatter_(-1, idx, True)
    kept_q = kept.repeat_interleave(G, dim=1)[:, :, None, :]  # [B, Hq, 1, N]
    t = ref.attention_terms(k, v, q)
    a, vv = t["a"], t["vv"]  # [B, Hq, W, N], [B, Hq, N, D]
    Hq = Hkv * G
    w = wo.reshape(hidden, Hq, D).permute(1, 2, 0)  # [Hq, D, hidden]: W_o^j
    vw = vv @ w  # [B, Hq, N, hidden]
    sigma = (a * kept_q).sum(-1, keepdim=True)
    o = a @ vw  # [B, Hq, W, hidden]: each head's share of o_proj's output
    o_hat = (a * kept_q / sigma) @ vw
    err = (o - o_hat).abs().sum(-1)  # [B, Hq, W]
    pn1 = obcache.projected_value_norm(v, wo, 1)[:, :, None, :]  # [B, Hq, 1, N]
    bound, sig = output_error_bound(a, pn1, kept_q)
    ok = sig >= 0.5
    assert ok.sum() >= ok.numel() // 4, "too few rows with sigma >= 0.5: the test would be vacuous"
    assert (err[ok] <= bound[ok] + 1e-9).all()
    # Through o_proj, the heads of a query with sigma >= 0.5 add up: the
    # error of their summed output is within the sum of their bounds
    # (triangle inequality). Queries where every head qualifies are rare at
    # these budgets, so each query sums the heads that do; at least one
    # query sums several, else this would only repeat the check above.
    okf = ok.to(err.dtype)
    assert (ok.sum(1) >= 2).any(), "no query with two heads of sigma >= 0.5"
    summed_err = ((o - o_hat) * okf[..., None]).sum(1).abs().sum(-1)  # [B, W]
    assert (summed_err <= (bound * okf).sum(1) + 1e-9).all()


@pytest.mark.parametrize("k", [0, 1, 5, 17, 40])
def test_top_matches_a_stable_sort_with_ties_nan_and_exclusions(k):
    # few distinct values: most of the k-th place is ties
    g = torch.Generator().manual_seed(k)
    s = torch.randint(0, 4, (6, 40), generator=g).double()
    s[torch.rand(6, 40, generator=g) < 0.1] = float("nan")
    s[torch.rand(6, 40, generator=g) < 0.1] = float("-inf")
    exclude = torch.rand(6, 40, generator=g) < 0.3
    got = _top(s, k, exclude=exclude)
    key = torch.nan_to_num(s, nan=float("-inf"))
    for r in range(6):
        order = sorted((i for i in range(40) if not exclude[r, i]), key=lambda i: (-key[r, i].item(), i))
        want = torch.zeros(40, dtype=torch.bool)
        want[order[:k]] = True
        assert torch.equal(got[r], want), (r, got[r].nonzero(), order[:k])

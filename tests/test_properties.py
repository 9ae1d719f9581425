"""Property-based tests (hypothesis) of saliency (every score, the `wo` ones
with a random o_proj weight), projected_value_norm, select,
select_adaptive, compact_ and evict against obcache.reference, on CPU
(`o=` has its grid in test_saliency_given_o.py): random B, H_kv, G, W, N, D
(D not a multiple of 8 included), hidden sizes, dtypes, strides (narrowed
views of a bigger buffer, batch-transposed views where the batch stride is
smaller than the head stride; wo column slices and row-strided views),
budgets, sink / recent / pooling / start settings.

Exactness: select, select_adaptive and compact_ must equal the reference
bit for bit (integer outputs; compact_ copies bytes). evict must give the
indices the reference policy picks on the kernel's own scores (so that float32
vs float64 rounding never decides a tie) and the reference compaction of the
original cache, bit for bit. saliency uses the tolerance rule of
conftest.assert_close_to_reference (error at most 2x that of the reference
run in float32 -- the kernel's accumulation type -- plus a floor).

Each test runs a bounded number of examples (max_examples below, no deadline),
derandomized so CI is reproducible; the whole file takes ~3 s on 2 cores.
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import obcache
from obcache import reference as ref
from conftest import assert_close_to_reference

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}
LAYOUTS = ("contiguous", "narrowed", "batch_transposed")


def _lowp(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def make_view(shape, dtype, layout, gen, last_pad=0):
    """A random tensor of `shape` [B, H, N, ...] laid out as asked:
    "narrowed" = x[:, :, :N] of a [B, H, N + 5, ...] buffer (plus `last_pad`
    unused columns), "batch_transposed" = a [H, B, ...] buffer transposed to
    [B, H, ...] (batch stride < head stride)."""
    B, H, N, *rest = shape
    if layout == "contiguous":
        return torch.randn(*shape, generator=gen).to(dtype)
    if layout == "narrowed":
        if rest:
            buf = torch.randn(B, H, N + 5, *rest[:-1], rest[-1] + last_pad, generator=gen).to(dtype)
            return buf[:, :, :N, ..., : rest[-1]]
        return torch.randn(B, H, N + 5, generator=gen).to(dtype)[:, :, :N]
    buf = torch.randn(H, B, N, *rest, generator=gen).to(dtype)
    return buf.transpose(0, 1)


@st.composite
def cache_cases(draw, min_b=1):
    B = draw(st.integers(min_b, 3))
    H = draw(st.integers(1, 3))
    G = draw(st.integers(1, 3))
    N = draw(st.integers(1, 70))
    W = draw(st.integers(1, min(N, 9)))
    D = draw(st.sampled_from([1, 3, 5, 8, 12, 20, 33, 64, 72]))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]))
    layout = draw(st.sampled_from(LAYOUTS))
    seed = draw(st.integers(0, 2**31 - 1))
    return B, H, G, W, N, D, dtype, layout, seed


def make_cache(B, H, G, W, N, D, dtype, layout, seed):
    g = torch.Generator().manual_seed(seed)
    k = make_view((B, H, N, D), dtype, layout, g, last_pad=3)
    v = make_view((B, H, N, D), dtype, layout, g)
    q = make_view((B, H * G, W, D), dtype, layout, g)
    return k, v, q


@settings(max_examples=200, **SETTINGS)
@given(case=cache_cases(), score=st.sampled_from(ref.SCORES), group_reduce=st.sampled_from(ref.GROUP_REDUCES),
       query_reduce=st.sampled_from(ref.QUERY_REDUCES), causal=st.booleans(),
       scale=st.sampled_from([None, 0.05, 0.5]))
def test_saliency_matches_reference(case, score, group_reduce, query_reduce, causal, scale):
    B, H, G, W, N, D, dtype, layout, seed = case
    k, v, q = make_cache(*case)
    kw = dict(group_reduce=group_reduce, query_reduce=query_reduce, causal=causal, scale=scale)
    out = obcache.saliency(k, v, q, score, **kw)
    assert out.shape == (B, H, N)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    r64 = ref.saliency(k, v, q, score, **kw)
    rlo = ref.saliency(k, v, q, score, compute_dtype=_lowp(dtype), **kw)
    assert_close_to_reference(out, r64, rlo, what=f"{case} {score} {kw}", floor_rel=FLOOR[dtype])


WO_LAYOUTS = ("contiguous", "column_slice", "row_strided")


def make_wo(hidden, cols, dtype, layout, gen):
    """o_proj's weight [hidden, cols] (its last dim contiguous, as the ops
    require): whole, the first `cols` columns of a wider matrix, or every
    other row of a taller one (row stride 2 * cols)."""
    scale = cols ** -0.5
    if layout == "contiguous":
        return (torch.randn(hidden, cols, generator=gen) * scale).to(dtype)
    if layout == "column_slice":
        return (torch.randn(hidden, cols + 7, generator=gen) * scale).to(dtype)[:, :cols]
    return (torch.randn(2 * hidden, cols, generator=gen) * scale).to(dtype)[::2]


@settings(max_examples=120, **SETTINGS)
@given(case=cache_cases(), hidden=st.integers(1, 90), p=st.sampled_from([1, 2]), wo_layout=st.sampled_from(WO_LAYOUTS))
def test_projected_value_norm_matches_reference(case, hidden, p, wo_layout):
    B, H, G, W, N, D, dtype, layout, seed = case
    _, v, _ = make_cache(*case)
    wo = make_wo(hidden, H * G * D, dtype, wo_layout, torch.Generator().manual_seed(seed + 1))
    out = obcache.projected_value_norm(v, wo, p)
    assert out.shape == (B, H * G, N)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    r64 = ref.projected_value_norm(v, wo, p)
    rlo = ref.projected_value_norm(v, wo, p, compute_dtype=_lowp(dtype))
    assert_close_to_reference(out, r64, rlo, what=f"{case} hidden={hidden} p={p} {wo_layout}",
                              floor_rel=FLOOR[dtype])


@settings(max_examples=120, **SETTINGS)
@given(case=cache_cases(), score=st.sampled_from(ref.WO_SCORES), hidden=st.integers(1, 90),
       group_reduce=st.sampled_from(ref.GROUP_REDUCES), query_reduce=st.sampled_from(ref.QUERY_REDUCES),
       causal=st.booleans(), wo_layout=st.sampled_from(WO_LAYOUTS))
def test_wo_saliency_matches_reference(case, score, hidden, group_reduce, query_reduce, causal, wo_layout):
    B, H, G, W, N, D, dtype, layout, seed = case
    k, v, q = make_cache(*case)
    wo = make_wo(hidden, H * G * D, dtype, wo_layout, torch.Generator().manual_seed(seed + 1))
    kw = dict(group_reduce=group_reduce, query_reduce=query_reduce, causal=causal, wo=wo)
    if score == "laprox" and query_reduce != "sum":  # its L2 norm over the queries is the reduction
        with pytest.raises(RuntimeError, match="query_reduce must be 'sum', got 'max'"):
            obcache.saliency(k, v, q, score, **kw)
        return
    out = obcache.saliency(k, v, q, score, **kw)
    assert out.shape == (B, H, N)
    r64 = ref.saliency(k, v, q, score, **kw)
    rlo = ref.saliency(k, v, q, score, compute_dtype=_lowp(dtype), **kw)
    assert_close_to_reference(out, r64, rlo, what=f"{case} {score} hidden={hidden} {wo_layout} {kw}",
                              floor_rel=FLOOR[dtype])


@st.composite
def select_cases(draw):
    B = draw(st.integers(1, 3))
    H = draw(st.integers(1, 3))
    N = draw(st.integers(1, 90))
    budget = draw(st.integers(1, N + 3))
    sink = draw(st.integers(0, min(budget, N)))
    recent = draw(st.integers(0, min(budget, N) - sink))
    pool_kernel = draw(st.sampled_from([0, 1, 3, 5, 7]))
    pool = draw(st.sampled_from(ref.POOLS))
    ties = draw(st.booleans())  # integer-valued scores: many ties
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    layout = draw(st.sampled_from(LAYOUTS))
    with_start = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return B, H, N, budget, sink, recent, pool_kernel, pool, ties, dtype, layout, with_start, seed


def make_scores(B, H, N, dtype, layout, ties, seed):
    g = torch.Generator().manual_seed(seed)
    s = make_view((B, H, N), torch.float64, layout, g)
    if ties:
        s.copy_(torch.randint(0, 3, (B, H, N), generator=g).double())
    return s.to(dtype) if dtype != torch.float64 else s


@settings(max_examples=250, **SETTINGS)
@given(case=select_cases())
def test_select_matches_reference(case):
    B, H, N, budget, sink, recent, pool_kernel, pool, ties, dtype, layout, with_start, seed = case
    s = make_scores(B, H, N, dtype, layout, ties, seed)
    start = torch.randint(0, N + 1, (B,), generator=torch.Generator().manual_seed(seed)) if with_start else None
    kw = dict(sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool, start=start)
    got = obcache.select(s, budget, **kw)
    want = ref.select(s, budget, **kw)
    assert got.dtype == torch.int64 and got.shape == (B, H, min(budget, N))
    assert torch.equal(got, want), case


@settings(max_examples=150, **SETTINGS)
@given(B=st.integers(1, 2), H=st.integers(1, 4), N=st.integers(2, 60), frac=st.floats(0.0, 1.2),
       floor=st.sampled_from([0.0, 0.2, 0.5, 1.0]), sink=st.integers(0, 3), recent=st.integers(0, 3),
       pool_kernel=st.sampled_from([0, 3, 7]), pool=st.sampled_from(ref.POOLS), ties=st.booleans(),
       layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**31 - 1))
def test_select_adaptive_matches_reference(B, H, N, frac, floor, sink, recent, pool_kernel, pool, ties, layout,
                                           seed):
    sink = min(sink, N)
    recent = min(recent, N - sink)
    s = make_scores(B, H, N, torch.float32, layout, ties, seed)
    total = max(1, int(frac * H * N))
    kw = dict(floor=floor, sink=sink, recent=recent, pool_kernel=pool_kernel, pool=pool)
    try:
        want = ref.select_adaptive(s, total, **kw)
    except ValueError:  # the reference refuses: so must the op
        with pytest.raises(RuntimeError, match="total_budget"):
            obcache.select_adaptive(s, total, **kw)
        return
    idx, lengths = obcache.select_adaptive(s, total, **kw)
    assert torch.equal(lengths, want[1]) and torch.equal(idx, want[0]), (total, kw)
    assert torch.equal(lengths.sum(-1), torch.full((B,), min(total, H * N)))


@settings(max_examples=150, **SETTINGS)
@given(case=cache_cases(), frac=st.floats(0.0, 1.0), with_lengths=st.booleans(), dv_extra=st.integers(0, 5))
def test_compact_matches_reference(case, frac, with_lengths, dv_extra):
    B, H, G, W, N, D, dtype, layout, seed = case
    g = torch.Generator().manual_seed(seed)
    k = make_view((B, H, N, D), dtype, layout, g, last_pad=2)
    v = make_view((B, H, N, D + dv_extra), dtype, layout, g)
    L = int(frac * N)
    idx = torch.stack([torch.stack([torch.randperm(N, generator=g)[:L].sort().values for _ in range(H)])
                       for _ in range(B)]).reshape(B, H, L)
    lengths = None
    if with_lengths:
        lengths = torch.randint(0, L + 1, (B, H), generator=g)
        pad = torch.arange(L) >= lengths[..., None]
        idx = idx.masked_fill(pad, -1)  # padding past lengths is ignored
    want_k, want_v = ref.compact(k, v, idx, lengths)
    ptrs = (k.data_ptr(), v.data_ptr())
    obcache.compact_(k, v, idx, lengths)
    assert (k.data_ptr(), v.data_ptr()) == ptrs
    assert torch.equal(k, want_k) and torch.equal(v, want_v), case


@settings(max_examples=150, **SETTINGS)
@given(case=cache_cases(), score=st.sampled_from(ref.SCORES), frac=st.floats(0.0, 1.3),
       sink=st.integers(0, 4), recent=st.one_of(st.none(), st.integers(0, 6)),
       pool_kernel=st.sampled_from([0, 3, 7]), pool=st.sampled_from(ref.POOLS),
       group_reduce=st.sampled_from(ref.GROUP_REDUCES), with_start=st.booleans(), too_small=st.booleans())
def test_evict_matches_reference_pipeline(case, score, frac, sink, recent, pool_kernel, pool, group_reduce,
                                          with_start, too_small):
    B, H, G, W, N, D, dtype, layout, seed = case
    k, v, q = make_cache(*case)
    rec = W if recent is None else recent  # evict's default: the window
    budget = max(1, int(frac * N))
    if not too_small and budget < N and budget < sink + rec:
        budget = min(N, sink + rec) if sink + rec > 0 else 1
    start = torch.randint(0, N + 1, (B,), generator=torch.Generator().manual_seed(seed)) if with_start else None
    kw = dict(sink=sink, pool_kernel=pool_kernel, pool=pool, start=start)
    if budget < N and budget < sink + rec:  # too_small drew a budget under the kept sink and recent tokens
        k0, v0 = k.clone(), v.clone()
        with pytest.raises(RuntimeError, match=rf"budget must be >= sink \+ recent = {sink + rec} and > 0, "
                                               rf"got {budget}"):
            obcache.evict(k, v, q, budget, score=score, group_reduce=group_reduce, recent=recent, **kw)
        assert torch.equal(k, k0) and torch.equal(v, v0)  # nothing moved before the check
        return
    s = obcache.saliency(k, v, q, score, group_reduce=group_reduce)
    idx_want = ref.select(s, budget, recent=rec, **kw)
    k_want, v_want = ref.compact(k, v, idx_want)
    kk, vv, idx = obcache.evict(k, v, q, budget, score=score, group_reduce=group_reduce, recent=recent, **kw)
    n = min(budget, N)
    assert torch.equal(idx, idx_want), case
    assert torch.equal(k, k_want) and torch.equal(v, v_want)
    assert kk.shape == (B, H, n, D) and kk.data_ptr() == k.data_ptr()

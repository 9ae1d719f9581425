"""Robustness of the ops on CPU: degenerate shapes, the NaN / Inf policy,
error paths that leave k and v bit-identical, determinism across runs and
thread counts, concurrent callers, the torch version guard, and (slow) a real
tensor past 2^31 elements."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import obcache
from obcache import reference as ref
from conftest import assert_close_to_reference, make_cache

# ---------------------------------------------------------------------------
# Degenerate inputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("score", ref.SCORES)
def test_batch_zero_gives_empty_results_and_writes_nothing(score):
    k, v, q = make_cache(0, 2, 2, 3, 10, 8)
    assert obcache.saliency(k, v, q, score).shape == (0, 2, 10)
    assert obcache.select(torch.randn(0, 2, 10), 4).shape == (0, 2, 4)
    idx, lengths = obcache.select_adaptive(torch.randn(0, 2, 10), 8)
    assert idx.shape[0] == 0 and lengths.shape == (0, 2)
    obcache.compact_(k, v, torch.zeros(0, 2, 4, dtype=torch.int64))
    kk, vv, idx = obcache.evict(k, v, q, 5, score=score)
    assert kk.shape == (0, 2, 5, 8) and vv.shape == (0, 2, 5, 8) and idx.shape == (0, 2, 5)


# (B, H_kv, G, W, N, D): N = 1, W = N, W = 1, G = 1, D not a multiple of 8 or 16.
DEGENERATE = [
    (2, 2, 2, 1, 1, 8),  # N = 1 (so W = N = 1)
    (1, 2, 3, 7, 7, 16),  # W = N
    (2, 1, 2, 1, 40, 12),  # W = 1
    (2, 3, 1, 4, 33, 8),  # G = 1
    (1, 2, 2, 3, 50, 1),  # D = 1
    (1, 2, 2, 5, 45, 20),  # D = 20: a multiple of 4, not of 8 or 16
    (2, 2, 2, 3, 37, 5),  # D = 5, odd
    (1, 1, 4, 2, 70, 72),  # D = 72: a multiple of 8, not of 16
]


@pytest.mark.parametrize("shape", DEGENERATE, ids=str)
@pytest.mark.parametrize("score", ref.SCORES)
def test_degenerate_shapes_saliency(shape, score):
    k, v, q = make_cache(*shape, seed=7)
    out = obcache.saliency(k, v, q, score)
    assert out.shape == (shape[0], shape[1], shape[4]) and bool(torch.isfinite(out).all())
    assert_close_to_reference(out, ref.saliency(k, v, q, score),
                              ref.saliency(k, v, q, score, compute_dtype=torch.float32), what=str(shape))


@pytest.mark.parametrize("shape", DEGENERATE, ids=str)
def test_degenerate_budgets_evict(shape):
    """budget = N keeps every token in place; budget = sink + recent keeps
    exactly those; budget = 1 with recent = 0 keeps the best token."""
    B, H, G, W, N, D = shape
    k, v, q = make_cache(*shape, seed=3)
    for budget, sink, recent in [(N, 0, None), (N, 1, 0), (min(N, 1 + W), min(1, N - W), W), (1, 0, 0),
                                 (1, 1, 0), (1, 0, 1)]:
        rec = W if recent is None else recent
        k1, v1 = k.clone(), v.clone()
        kk, vv, idx = obcache.evict(k1, v1, q, budget, sink=sink, recent=recent)
        assert idx.shape == (B, H, budget)
        if budget == N:
            assert torch.equal(idx, torch.arange(N).expand(B, H, N)) and torch.equal(k1, k) and torch.equal(v1, v)
            continue
        s = obcache.saliency(k, v, q, "joint")
        want = ref.select(s, budget, sink=sink, recent=rec, pool_kernel=7)
        assert torch.equal(idx, want), (budget, sink, recent)
        if budget == sink + rec:  # only the fixed tokens
            fixed = torch.cat([torch.arange(sink), torch.arange(N - rec, N)])
            assert torch.equal(idx, fixed.expand(B, H, budget))
        wk, wv = ref.compact(k, v, idx)
        assert torch.equal(k1, wk) and torch.equal(v1, wv)


def test_select_budget_equal_to_sink_plus_recent_keeps_only_those():
    s = torch.randn(2, 3, 50)
    idx = obcache.select(s, 7, sink=3, recent=4, pool_kernel=7)
    assert torch.equal(idx, torch.tensor([0, 1, 2, 46, 47, 48, 49]).expand(2, 3, 7))
    assert torch.equal(obcache.select(s, 50), torch.arange(50).expand(2, 3, 50))
    assert torch.equal(obcache.select(s, 60, sink=55), torch.arange(50).expand(2, 3, 50))  # budget >= N


# ---------------------------------------------------------------------------
# NaN / Inf policy (README): NaN or Inf in k, v or q_window propagates into
# the scores it touches as NaN; select ranks NaN below every finite score,
# NaN ties to the lower index.
# ---------------------------------------------------------------------------


def touch_reference(k, v, q, score, *, group_reduce="sum", query_reduce="sum", causal=True,
                    compute_dtype=torch.float64):
    """obcache.reference.saliency, except that a masked (causal) pair
    contributes exactly 0 even when NaN / Inf make the reference's 0 * x
    non-finite: the scores a non-finite input "touches" are those of the pairs
    a window query actually sees (and, through o and the softmax normaliser,
    everything that query sees)."""
    t = ref.attention_terms(k, v, q, causal=causal, compute_dtype=compute_dtype)
    mask = t["mask"]  # [W, N]
    N, W = k.shape[2], q.shape[2]
    a, vv = t["a"], t["vv"]
    o = torch.stack([(a[:, :, i, None, mask[i]] @ vv[:, :, mask[i]])[:, :, 0] for i in range(W)], dim=2)
    t["a"] = torch.where(mask, a, torch.zeros((), dtype=a.dtype))
    t["o"] = o
    c = torch.where(mask, ref._per_query_contribution(score, t), torch.zeros((), dtype=a.dtype))
    if score == "tova":
        per_head = c[:, :, -1]
    elif query_reduce == "sum":
        per_head = c.sum(2)
    else:
        per_head = c.amax(2)
    g = per_head.reshape(k.shape[0], k.shape[1], -1, N)
    return {"sum": g.sum(2), "mean": g.mean(2), "max": g.amax(2)}[group_reduce]


NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
# Where the bad value goes: (tensor, b, head, row, d). Rows: first key, a
# middle key, the last key; the first and the last window query.
PLACES = [("k", 0, 0, 0, 1), ("k", 1, 1, 20, 0), ("k", 0, 1, 39, 3), ("v", 0, 0, 0, 2), ("v", 1, 0, 25, 5),
          ("v", 0, 1, 39, 0), ("q", 0, 0, 0, 4), ("q", 1, 3, 5, 1)]


REDUCTIONS = [("sum", "sum"), ("max", "max"), ("mean", "max"), ("max", "sum")]


# bfloat16 too: on a CPU with AVX512-BF16 its Q K^T multiplies bfloat16
# pairs (another instruction, another Inf * 0).
BAD_DTYPES = [(bad, dt) for dt in (torch.float32, torch.float64, torch.bfloat16) for bad in NONFINITE]


@pytest.mark.parametrize("bad,dtype", BAD_DTYPES, ids=lambda x: str(x))
@pytest.mark.parametrize("place", range(len(PLACES)), ids=lambda i: "-".join(map(str, PLACES[i])))
def test_nonfinite_input_propagates_as_nan(place, bad, dtype):
    B, H, G, W, N, D = 2, 2, 2, 6, 40, 8
    k, v, q = make_cache(B, H, G, W, N, D, dtype=dtype, seed=11)
    which, b, h, r, d = PLACES[place]
    {"k": k, "v": v, "q": q}[which][b, h, r, d] = NONFINITE[bad]
    n_nan = 0
    for si, score in enumerate(ref.SCORES):
        # One reduction per score, rotating with the place: every score meets
        # every reduction over the places.
        for group_reduce, query_reduce in [REDUCTIONS[(si + place) % len(REDUCTIONS)]]:
            kw = dict(group_reduce=group_reduce, query_reduce=query_reduce)
            out = obcache.saliency(k, v, q, score, **kw)
            want = touch_reference(k, v, q, score, **kw)
            what = f"{score} {kw} {place} {bad}"
            assert not bool(torch.isinf(out).any()), what  # never +-inf: non-finite is NaN
            bad_want = ~torch.isfinite(want)
            assert torch.equal(torch.isnan(out), bad_want), what
            n_nan += int(bad_want.sum())
            ok = ~bad_want
            if bool(ok.any()):
                lo = touch_reference(k, v, q, score, compute_dtype=torch.float32 if dtype != torch.float64
                                     else dtype, **kw)
                assert_close_to_reference(out[ok], want[ok], lo[ok], what=what,
                                          floor_rel=1e-10 if dtype == torch.float64 else 1e-5)
    assert n_nan > 0  # the bad value reached some score


def test_nan_in_k_makes_every_score_it_touches_nan_and_leaves_other_heads():
    k, v, q = make_cache(2, 2, 2, 4, 30, 8, seed=5)
    k[1, 0, 17, 3] = float("nan")  # the last window query sees key 17: the whole (1, 0) head
    for score in ref.SCORES:
        out = obcache.saliency(k, v, q, score)
        assert bool(torch.isnan(out[1, 0]).all()), score
        assert bool(torch.isfinite(out[0]).all()) and bool(torch.isfinite(out[1, 1]).all()), score


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_select_ranks_nan_below_every_finite_score(dtype):
    s = torch.tensor([[[0.5, float("nan"), -1e30, float("nan"), 2.0, float("-inf"), float("nan"), 1.0]]],
                     dtype=dtype)
    # 4 slots: the four finite scores (including -1e30) before any NaN or -inf.
    assert obcache.select(s, 4).tolist() == [[[0, 2, 4, 7]]]
    # 5 slots: one more among the NaN / -inf tie: the lowest index, position 1.
    assert obcache.select(s, 5).tolist() == [[[0, 1, 2, 4, 7]]]
    assert obcache.select(s, 6).tolist() == [[[0, 1, 2, 3, 4, 7]]]
    allnan = torch.full((1, 2, 9), float("nan"), dtype=dtype)
    assert torch.equal(obcache.select(allnan, 3, sink=1, recent=1), torch.tensor([0, 1, 8]).expand(1, 2, 3))
    idx, lengths = obcache.select_adaptive(torch.cat([allnan, torch.randn(1, 1, 9, dtype=dtype)], 1), 9,
                                           floor=0.0)
    assert lengths.tolist() == [[0, 0, 9]]  # every finite score beats every NaN
    for kw in [dict(pool_kernel=3), dict(pool_kernel=5, pool="avg"), dict(sink=2, recent=1)]:
        assert torch.equal(obcache.select(s, 3, **kw), ref.select(s, 3, **kw)), kw


def test_evict_with_nan_in_v_runs_and_matches_policy():
    k, v, q = make_cache(1, 2, 2, 4, 40, 8, seed=2)
    v[0, 1, 10, 0] = float("nan")
    s = obcache.saliency(k, v, q, "joint")
    assert bool(torch.isnan(s[0, 1]).any()) and bool(torch.isfinite(s[0, 0]).all())
    want = ref.select(s, 12, recent=4, pool_kernel=7)
    k1, v1 = k.clone(), v.clone()
    _, _, idx = obcache.evict(k1, v1, q, 12)
    assert torch.equal(idx, want)


# ---------------------------------------------------------------------------
# Every error path leaves k and v bit-identical
# ---------------------------------------------------------------------------

I = lambda x: torch.tensor(x, dtype=torch.int64)  # noqa: E731

# compact_ on k, v [1, 2, 8, 4]: (indices, lengths, k/v override, expected message)
COMPACT_ERRORS = [
    (I([[[0, 9], [1, 2]]]), None, None, r"indices\[0, 0, 1\] must be in \[0, N\) = \[0, 8\), got 9"),
    (I([[[-1, 2], [1, 2]]]), None, None, r"must be in \[0, N\)"),
    (I([[[3, 2], [1, 2]]]), None, None, "strictly increasing"),
    (I([[[2, 2], [1, 2]]]), None, None, "strictly increasing"),
    (I([[0, 1]]), None, None, "indices must have 3 dims"),
    (I([[[0, 1]]]), None, None, r"indices must have shape \[B, H_kv, L\]"),
    (I([[list(range(9))] * 2]), None, None, "L <= 8"),
    (torch.tensor([[[0, 1], [0, 1]]], dtype=torch.int32), None, None, "indices must be int64"),
    (I([[[0, 1], [0, 1]]]), I([[3, 1]]), None, r"lengths\[0, 0\] must be in \[0, L\] = \[0, 2\], got 3"),
    (I([[[0, 1], [0, 1]]]), I([[-1, 1]]), None, r"lengths\[0, 0\] must be in \[0, L\]"),
    (I([[[0, 1], [0, 1]]]), I([2, 2]), None, r"lengths must have shape \[B, H_kv\]"),
    (I([[[0, 1], [0, 1]]]), torch.tensor([[1, 1]], dtype=torch.int32), None, "lengths must be int64"),
    (I([[[0, 1], [0, 1]]]), None, "v_short", r"k and v must agree on \[B, H_kv, N\]"),
    (I([[[0, 1], [0, 1]]]), None, "v_3d", "v must have 4 dims"),
    (I([[[0, 1], [0, 1]]]), None, "same", "k and v must not share memory"),
    (I([[[0, 1], [0, 1]]]), None, "overlap", "k and v must not share memory"),
    (I([[[0, 1], [0, 1]]]), None, "int_v", "v must be a floating-point tensor"),
    (I([[[0, 1], [0, 1]]]), None, "strided_last", "must have a contiguous last dim"),
]


@pytest.mark.parametrize("case", range(len(COMPACT_ERRORS)))
def test_compact_error_leaves_cache_bit_identical(case):
    idx, lengths, override, match = COMPACT_ERRORS[case]
    buf = torch.randn(2, 2, 8, 4)  # k = buf[0], v = buf[1] unless overridden
    k, v = buf[0:1], buf[1:2]
    if override == "v_short":
        v = v[:, :, :7]
    elif override == "v_3d":
        v = v[0]
    elif override == "same":
        v = k
    elif override == "overlap":
        v = buf.view(-1)[8:8 + 64].view(1, 2, 8, 4)  # overlaps k partially
    elif override == "int_v":
        v = torch.zeros(1, 2, 8, 4, dtype=torch.int32)
    elif override == "strided_last":
        v = torch.randn(1, 2, 8, 8)[..., ::2]
    before = buf.clone(), v.clone()
    with pytest.raises(RuntimeError, match=match):
        obcache.compact_(k, v, idx, lengths)
    assert torch.equal(buf, before[0]) and torch.equal(v, before[1])


B_, H_, G_, W_, N_, D_ = 2, 2, 2, 4, 30, 8

# evict(k, v, q, budget, **kw) errors: (budget, kw, tensor override, message)
EVICT_ERRORS = [
    (5, dict(sink=2), None, r"budget must be >= sink \+ recent = 6 and > 0, got 5 \(recent was not given, so it is "
                            r"W = 4, the window's length; pass recent=0"),
    (5, dict(sink=2, recent=4), None, r"budget must be >= sink \+ recent = 6 and > 0, got 5$"),
    (0, dict(recent=0), None, r"budget must be >= sink \+ recent = 0 and > 0, got 0"),
    (-3, dict(recent=0), None, r"budget must be >= sink \+ recent = 0 and > 0, got -3"),
    (10, dict(pool_kernel=6), None, "pool_kernel must be .* got 6"),
    (10, dict(pool_kernel=-1), None, "pool_kernel must be .* got -1"),
    (10, dict(pool="median"), None, "pool must be one of .* got 'median'"),
    (10, dict(sink=-1), None, "sink must be >= 0, got -1"),
    (10, dict(recent=-1), None, "recent must be >= 0, got -1"),
    (10, dict(start=I([0])), None, r"start must have shape \[B\] = \[2\], got \[1\]"),
    (10, dict(start=I([0, 31])), None, r"start\[1\] must be in \[0, N\] = \[0, 30\], got 31"),
    (10, dict(start=I([-1, 0])), None, r"start\[0\] must be in \[0, N\] = \[0, 30\], got -1"),
    (10, dict(start=torch.tensor([0, 1], dtype=torch.int32)), None, "start must be int64, got Int"),
    (10, dict(score="nope"), None, "score must be one of .* got 'nope'"),
    (10, dict(group_reduce="median"), None, "group_reduce must be one of .* got 'median'"),
    (10, dict(scale=float("inf")), None, "scale must be finite .* got inf"),
    (10, dict(scale=float("nan")), None, "scale must be finite .* got nan"),
    (10, {}, "hq_not_multiple", "H_q must be a positive multiple of k's H_kv = 2, got H_q = 3"),
    (10, {}, "q_3d", r"q_window must have 4 dims \[B, H_q, W, D\], got 3"),
    (10, {}, "q_batch", r"q_window must have the batch size of k \(2\), got 1"),
    (10, {}, "q_dim", r"q_window must have the head dim D of k \(8\), got 5"),
    (10, {}, "w_too_big", r"W must be <= N = 30 .* got W = 31"),
    (10, {}, "w_zero", "at least one window query, got W = 0"),
    (10, {}, "q_dtype", "k and q_window must have the same dtype, got Float and Double"),
    (10, {}, "v_shape", r"k and v must have the same shape .* got \[2, 2, 30, 8\] and \[2, 2, 29, 8\]"),
    (10, {}, "same", "must not share memory"),
    (10, {}, "int_k", r"k must be float32, float16 or bfloat16 .* got Int"),
    (10, {}, "strided_last", r"k must have a contiguous last dim \(stride 1\), got strides"),
]


@pytest.mark.parametrize("case", range(len(EVICT_ERRORS)))
def test_evict_error_leaves_cache_bit_identical(case):
    budget, kw, override, match = EVICT_ERRORS[case]
    k, v, q = make_cache(B_, H_, G_, W_, N_, D_, seed=case)
    if override == "hq_not_multiple":
        q = q[:, :3]
    elif override == "q_3d":
        q = q[0]
    elif override == "q_batch":
        q = q[:1]
    elif override == "q_dim":
        q = q[..., :5]
    elif override == "w_too_big":
        q = torch.randn(B_, H_ * G_, N_ + 1, D_)
    elif override == "w_zero":
        q = q[:, :, :0]
    elif override == "q_dtype":
        q = q.double()
    elif override == "v_shape":
        v = v[:, :, :29]
    elif override == "same":
        v = k
    elif override == "int_k":
        k = torch.zeros(B_, H_, N_, D_, dtype=torch.int32)
    elif override == "strided_last":
        k = torch.randn(B_, H_, N_, 2 * D_)[..., ::2]
    k0, v0 = k.clone(), v.clone()
    with pytest.raises(RuntimeError, match=match):
        obcache.evict(k, v, q, budget, **kw)
    assert torch.equal(k, k0) and torch.equal(v, v0)


def _views_of_one_buffer(kind):
    """k and v as views of one buffer (narrowed to N_ rows of 40, so not dense:
    torch's overlap check gives up on them), and whether they share elements."""
    g = torch.Generator().manual_seed(11)
    if kind == "same rows":  # two view objects of the same rows
        buf = torch.randn(B_, H_, 40, D_, generator=g)
        return buf[:, :, :N_], buf[:, :, :N_], True
    if kind == "shifted by one":  # buf[..., :D] and buf[..., 1:D + 1]
        buf = torch.randn(B_, H_, 40, D_ + 1, generator=g)
        return buf[:, :, :N_, :D_], buf[:, :, :N_, 1:], True
    if kind == "rows overlapping":  # v starts on k's last row
        buf = torch.randn(B_, H_, 80, D_, generator=g)
        return buf[:, :, :N_], buf[:, :, N_ - 1:2 * N_ - 1], True
    if kind == "interleaved":  # [B, H, M, 2, D]: k at [..., 0, :], v at [..., 1, :]
        buf = torch.randn(B_, H_, 40, 2, D_, generator=g)
        return buf[:, :, :N_, 0], buf[:, :, :N_, 1], False
    if kind == "halves":  # [2, B, H, M, D]
        buf = torch.randn(2, B_, H_, 40, D_, generator=g)
        return buf[0, :, :, :N_], buf[1, :, :, :N_], False
    if kind == "rows after":  # v starts right after k's last row
        buf = torch.randn(B_, H_, 80, D_, generator=g)
        return buf[:, :, :N_], buf[:, :, N_:2 * N_], False
    raise ValueError(kind)


@pytest.mark.parametrize("op", ["compact_", "evict"])
@pytest.mark.parametrize("kind", ["same rows", "shifted by one", "rows overlapping", "interleaved", "halves",
                                  "rows after"])
def test_k_and_v_views_of_one_buffer_are_refused_only_where_they_share_elements(kind, op):
    k, v, shared = _views_of_one_buffer(kind)
    q = torch.randn(B_, H_ * G_, W_, D_, generator=torch.Generator().manual_seed(12))
    idx = torch.arange(0, N_, 3).expand(B_, H_, -1)
    buf, before = k._base, k._base.clone()
    run = (lambda a, b: obcache.compact_(a, b, idx)) if op == "compact_" else (lambda a, b: obcache.evict(a, b, q, 10))
    if shared:
        with pytest.raises(RuntimeError, match=r"k and v must not share memory \(they would be compacted twice\), "
                                               r"got views of one buffer"):
            run(k, v)
        assert torch.equal(buf, before)
    else:  # as if k and v were separate tensors
        k_want, v_want = k.clone(), v.clone()
        run(k_want, v_want)
        run(k, v)
        assert torch.equal(k, k_want) and torch.equal(v, v_want)


# ---------------------------------------------------------------------------
# Determinism and concurrency
# ---------------------------------------------------------------------------


def _pipeline(k, v, q):
    out = {}
    for score in ("joint", "attn", "loo"):
        out[score] = obcache.saliency(k, v, q, score, group_reduce="max", query_reduce="max")
    s = out["joint"]
    out["select"] = obcache.select(s, 40, sink=2, recent=4, pool_kernel=7)
    out["adaptive"] = obcache.select_adaptive(s, 3 * 40, floor=0.2, pool_kernel=5)
    k1, v1 = k.clone(), v.clone()
    out["evict_idx"] = obcache.evict(k1, v1, q, 50, sink=1)[2]
    out["k"], out["v"] = k1, v1
    return out


def _bitwise_equal(a, b):
    if isinstance(a, tuple):
        return all(_bitwise_equal(x, y) for x, y in zip(a, b))
    if a.is_floating_point():  # compare bits (NaN-safe, -0.0 != +0.0)
        a, b = a.view(torch.int16 if a.element_size() == 2 else torch.int32), b.view(
            torch.int16 if b.element_size() == 2 else torch.int32)
    return torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_bitwise_deterministic_across_runs_and_thread_counts(dtype):
    k, v, q = make_cache(3, 3, 2, 6, 500, 40, dtype=dtype, seed=9)
    saved = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 4, 2, 1):
            torch.set_num_threads(n)
            results.append(_pipeline(k, v, q))
    finally:
        torch.set_num_threads(saved)
    for r in results[1:]:
        for name in results[0]:
            assert _bitwise_equal(r[name], results[0][name]), name


def test_the_cpu_ops_run_on_torch_threads():
    """at::parallel_for is header-only: without OpenMP in the extension's
    build it runs every CPU op's rows serially (setup.py)."""
    if not torch.backends.openmp.is_available():
        pytest.skip("this torch has no OpenMP backend")
    assert obcache.build_info()["intra_op_parallel"] is True


def test_concurrent_python_threads_give_correct_results():
    caches = [make_cache(2, 2, 2, 5, 300 + 17 * i, 24, seed=100 + i) for i in range(6)]
    want = [_pipeline(*c) for c in caches]  # one at a time
    with ThreadPoolExecutor(max_workers=6) as ex:
        for _ in range(3):
            got = list(ex.map(lambda c: _pipeline(*c), caches))
            for w, g in zip(want, got):
                for name in w:
                    assert _bitwise_equal(g[name], w[name]), name


# ---------------------------------------------------------------------------
# Version guard
# ---------------------------------------------------------------------------


def test_import_under_a_different_torch_says_rebuild():
    code = ("import torch; torch.__version__ = '0.0.1+other'\n"
            "try:\n    import obcache\nexcept ImportError as e:\n    print('ERR:', e)\nelse:\n    print('IMPORTED')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = r.stdout + r.stderr
    assert "ERR:" in out and "IMPORTED" not in out, out
    assert "rebuild" in out and "0.0.1+other" in out and obcache._build_meta.TORCH_VERSION in out, out


def test_import_under_the_built_torch_works():
    assert obcache._build_meta.TORCH_VERSION == torch.__version__


# ---------------------------------------------------------------------------
# 64-bit offsets on a real tensor (slow)
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_offsets_past_2_pow_31_elements():
    """compact_ and saliency on a bfloat16 cache of 2^31 + 8192 elements per
    tensor (k [1, 1, 2^24 + 64, 128]: 4 GiB; the test needs ~9 GiB of RAM).
    Rows past 2^24 start beyond element 2^31, so any 32-bit offset product
    would read or write the wrong row. Run with --runslow or OBCACHE_SLOW=1."""
    N, D = 2**24 + 64, 128
    assert N * D > 2**31
    k = torch.empty(1, 1, N, D, dtype=torch.bfloat16)
    tail = torch.randn(1, 1, 128, D, generator=torch.Generator().manual_seed(0)).bfloat16()
    k[:, :, : N - 128].fill_(0.0)
    k[:, :, N - 128:] = tail
    # saliency: v = k (values need no randomness), q attends to the tail.
    v = k.clone()
    q = tail[:, :, -2:].clone()  # W = 2
    s = obcache.saliency(k, v, q, "attn")
    # Reference on the tail only: every zero key has logit 0, the tail's
    # logits are q . k * scale; the softmax normaliser adds (N - 128) * exp(0 - m).
    z = (q.double()[0, 0] @ tail.double()[0, 0].T) / D**0.5  # [2, 128]
    pos = torch.arange(N - 128, N)
    vis = pos[None, :] <= torch.tensor([N - 2, N - 1])[:, None]
    m = z.masked_fill(~vis, float("-inf")).amax(1, keepdim=True).clamp_min(0.0)
    e = torch.exp(z - m).masked_fill(~vis, 0.0)
    denom = e.sum(1, keepdim=True) + (N - 128) * torch.exp(-m)
    want_tail = (e / denom).sum(0)
    want_zero = (torch.exp(-m) / denom).sum()
    # 1e-3 relative: the float32 softmax sums exp(z - m) over 2^24 keys (512-key
    # ranges merged one by one: ~2^15 merges, each rounding by 2^-24, ~2e-3 at
    # worst, less in practice as roundings cancel); no absolute slack, so the
    # zero keys' 1.2e-7 is checked to 1e-3 of itself.
    assert torch.allclose(s[0, 0, N - 128:].double(), want_tail, rtol=1e-3, atol=0.0)
    assert torch.allclose(s[0, 0, :1000].double(), want_zero.expand(1000), rtol=1e-3, atol=0.0)
    del s, v
    # compact_: the last 128 rows (offsets > 2^31 elements) move to the front.
    vsmall = torch.arange(N, dtype=torch.float64).view(1, 1, N, 1).expand(1, 1, N, 2).contiguous()
    idx = torch.cat([torch.arange(0, 64), torch.arange(N - 128, N)]).view(1, 1, -1)
    obcache.compact_(k, vsmall, idx)
    assert torch.equal(k[0, 0, 64:192], tail[0, 0])
    assert torch.equal(vsmall[0, 0, 64:192, 0], torch.arange(N - 128, N, dtype=torch.float64))
    assert bool((k[0, 0, :64] == 0).all()) and torch.equal(k[0, 0, N - 128:], tail[0, 0])

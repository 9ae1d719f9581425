"""torch.ops.obcache.saliency against obcache.reference.saliency (the spec).

Tolerance (conftest.assert_close_to_reference): the kernel's error against
the float64 reference is at most 2x the error of the reference run in a lower
precision, plus a floor. For 16-bit inputs the lower precision is float32,
not the input dtype: the kernel reads the 16-bit values exactly and
accumulates in float32, so it must be as accurate as a float32 computation
on the same (rounded) inputs, far stricter than the 16-bit baseline.
"""
import pytest
import torch
from torch.library import opcheck

import obcache
from obcache import reference as ref
from conftest import COPY_OPS, DEVICES, assert_close_to_reference, make_cache, ops_dispatched

SCORES = obcache.SCORES
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}


def _lowp(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check(k, v, q, score, *, what="", **kw):
    out = obcache.saliency(k, v, q, score, **kw)
    B, H, N, _ = k.shape
    want_dtype = torch.float64 if k.dtype == torch.float64 else torch.float32
    assert out.shape == (B, H, N) and out.dtype == want_dtype and out.device == k.device
    kc, vc, qc = k.cpu(), v.cpu(), q.cpu()
    # The reference runs on the CPU: every tensor argument goes there too.
    kw = {name: x.cpu() if torch.is_tensor(x) else x for name, x in kw.items()}
    r64 = ref.saliency(kc, vc, qc, score, **kw)
    rlo = ref.saliency(kc, vc, qc, score, compute_dtype=_lowp(k.dtype), **kw)
    assert_close_to_reference(out, r64, rlo, what=f"{score} {k.dtype} {what} {kw}", floor_rel=FLOOR[k.dtype])


def _skip_f64_on_cuda(device, dtype):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 is CPU-only")


# ---- every score x group_reduce x query_reduce x dtype (one small shape) ----


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("score", SCORES)
def test_every_score_reduction_and_dtype_matches_reference(score, dtype, device):
    _skip_f64_on_cuda(device, dtype)
    k, v, q = make_cache(2, 2, 3, 8, 70, 64, dtype=dtype, device=device, seed=1, narrow_from=75)
    for group_reduce in ("sum", "mean", "max"):
        for query_reduce in ("sum", "max"):
            check(k, v, q, score, group_reduce=group_reduce, query_reduce=query_reduce)


# ---- a covering grid of shapes: every listed value of every dim appears ----

# (B, H_kv, G, W, N, D)
SHAPES = [
    (1, 1, 1, 1, 1, 32),  # N = W = 1
    (2, 3, 1, 8, 33, 64),
    (1, 2, 3, 17, 257, 72),
    (2, 1, 4, 32, 257, 128),
    (1, 3, 4, 8, 1000, 32),
    (2, 2, 3, 32, 32, 72),  # N = W
    (1, 1, 3, 1, 1000, 128),
    (1, 2, 1, 17, 17, 64),  # N = W
    (2, 3, 4, 17, 33, 32),
    (1, 2, 3, 9, 100, 36),  # D % 8 != 0: the AVX2 blocks' column tails
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B%d_H%d_G%d_W%d_N%d_D%d" % s)
def test_shape_grid_matches_reference(shape, device):
    B, H, G, W, N, D = shape
    for j, score in enumerate(SCORES):
        narrow = (j + sum(shape)) % 2 == 0
        causal = j % 3 != 2
        k, v, q = make_cache(*shape, dtype=torch.float32, device=device, seed=j,
                             narrow_from=N + 5 if narrow else None)
        check(k, v, q, score, causal=causal, what=f"shape={shape} narrow={narrow}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_narrowed_views_are_read_in_place(dtype, device):
    _skip_f64_on_cuda(device, dtype)
    k, v, q = make_cache(2, 2, 4, 17, 100, 72, dtype=dtype, device=device, seed=3, narrow_from=160)
    assert not k.is_contiguous() and not v.is_contiguous()
    for score in SCORES:
        check(k, v, q, score)
        assert torch.equal(obcache.saliency(k, v, q, score), obcache.saliency(k.contiguous(), v.contiguous(), q, score))
        # In place: no copy of k or v is made on the way in (a copied input
        # would give the same numbers).
        ops = ops_dispatched(lambda: obcache.saliency(k, v, q, score))
        assert "obcache::saliency" in ops and not ops & COPY_OPS, ops


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("heads,threads", [(1, 4), (3, 2)], ids=["fewer-rows-than-threads", "3-rows-on-2-threads"])
def test_rows_split_over_the_keys_match_reference_and_the_unsplit_bits(score, dtype, heads, threads):
    """When the (b, h) rows do not share out evenly over the threads (fewer
    rows than threads, or 3 rows on 2), the CPU op runs each row's key ranges
    (512 keys) on different threads, keeps the logits between its passes, and
    merges the ranges' softmax states in key order, as one thread does:
    N = 1100 (three ranges, a partial last tile). Matches the reference, and
    bitwise the one-thread result."""
    k, v, q = make_cache(1, heads, 3, 16, 1100, 32, dtype=dtype, seed=7)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for query_reduce in ("sum", "max"):
            check(k, v, q, score, query_reduce=query_reduce, what="split over the keys")
        split = obcache.saliency(k, v, q, score)
        torch.set_num_threads(1)
        whole = obcache.saliency(k, v, q, score)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(split, whole)


@pytest.mark.parametrize("device", DEVICES)
def test_permuted_strides_match_contiguous(device):
    # [B, N, H, D] storage viewed as [B, H, N, D]; q with a sliced head dim stride.
    g = torch.Generator().manual_seed(5)
    k = torch.randn(2, 40, 3, 32, generator=g).to(device).transpose(1, 2)
    v = torch.randn(2, 40, 3, 32, generator=g).to(device).transpose(1, 2)
    q = torch.randn(2, 6, 9, 32, generator=g).to(device)[:, :, 1:]
    for score in SCORES:
        check(k, v, q, score)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("score", SCORES)
def test_non_causal_matches_reference(score, device):
    k, v, q = make_cache(1, 2, 2, 9, 50, 32, device=device, seed=7)
    for dtype in (torch.float64, torch.float32):
        if device == "cuda" and dtype == torch.float64:
            continue
        check(k.to(dtype), v.to(dtype), q.to(dtype), score, causal=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("score", SCORES)
def test_custom_scale_matches_reference(score, device):
    k, v, q = make_cache(1, 2, 2, 8, 60, 64, device=device, seed=8)
    for dtype in (torch.float64, torch.float32):
        if device == "cuda" and dtype == torch.float64:
            continue
        for scale in (0.3, 1.7):
            check(k.to(dtype), v.to(dtype), q.to(dtype), score, scale=scale)


@pytest.mark.parametrize("device", DEVICES)
def test_peaked_attention_loo_stays_finite_and_accurate(device):
    # One key holds almost all of the attention: 1 - A is clamped at
    # LOO_MIN_REMAINDER, and ||v - o|| is computed directly (not by expansion).
    k, v, q = make_cache(1, 1, 2, 4, 40, 32, dtype=torch.float64, seed=9)
    k = k.clone()
    k[0, 0, 5] = 40 * q[0, 0].mean(0)
    for dtype in ([torch.float64] if device == "cpu" else []) + [torch.float32]:
        kk, vv, qq = (t.to(dtype).to(device) for t in (k, v, q))
        out = obcache.saliency(kk, vv, qq, "loo")
        assert torch.isfinite(out).all()
        check(kk, vv, qq, "loo")


# ---- OBD: value / key / joint equal 1/2 d^T H d of ||O_pruned - O||_F^2 ----


def _group_output_change(k, v, q, token, t, *, prune_k, prune_v):
    """||O(t) - O(0)||_F^2 per (b, KV head), summed over the group's heads and
    window queries, with k_token (and/or v_token) scaled by (1 - t)."""
    k2, v2 = k.clone(), v.clone()
    if prune_k:
        k2[:, :, token] *= 1 - t
    if prune_v:
        v2[:, :, token] *= 1 - t
    o0 = ref.attention_terms(k, v, q)["o"]
    o1 = ref.attention_terms(k2, v2, q)["o"]
    B, H = k.shape[:2]
    return ((o1 - o0) ** 2).sum((-1, -2)).reshape(B, H, -1).sum(-1)


@pytest.mark.parametrize("score,prune_k,prune_v", [("value", False, True), ("key", True, False), ("joint", True, True)])
def test_obd_scores_equal_half_second_difference_of_output_change(score, prune_k, prune_v):
    k, v, q = make_cache(2, 2, 3, 5, 12, 8, dtype=torch.float64, seed=11)
    got = obcache.saliency(k, v, q, score)  # the kernel, float64, group "sum"
    h = 1e-4
    want = torch.empty_like(got)
    for p in range(k.shape[2]):
        f_plus = _group_output_change(k, v, q, p, h, prune_k=prune_k, prune_v=prune_v)
        f_minus = _group_output_change(k, v, q, p, -h, prune_k=prune_k, prune_v=prune_v)
        want[:, :, p] = 0.5 * (f_plus + f_minus) / h**2  # 1/2 f''(0), f(0) = 0
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


# ---- torch integration ----


def test_opcheck_is_clean_on_cpu():
    k, v, q = make_cache(1, 2, 2, 4, 20, 16, seed=12, narrow_from=24)
    torch.library.opcheck(torch.ops.obcache.saliency.default, (k, v, q, "joint"),
                          {"group_reduce": "mean", "query_reduce": "max"})
    torch.library.opcheck(torch.ops.obcache.saliency.default, (k.double(), v.double(), q.double(), "loo"),
                          {"scale": 0.5, "causal": False})


def test_torch_compile_fullgraph():
    k, v, q = make_cache(1, 2, 2, 4, 20, 16, seed=13)

    def f(k, v, q):
        return torch.ops.obcache.saliency(k, v, q, "key", group_reduce="max").softmax(-1)

    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend="inductor")(k, v, q)
    torch.testing.assert_close(got, f(k, v, q))


def test_fake_kernel_gives_shape_and_dtype():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        k = torch.empty(2, 3, 50, 16, dtype=torch.bfloat16)
        q = torch.empty(2, 6, 4, 16, dtype=torch.bfloat16)
        out = torch.ops.obcache.saliency(k, k.clone(), q, "attn")
    assert out.shape == (2, 3, 50) and out.dtype == torch.float32


# ---- bad input: a clear error naming the argument and the value seen ----


def _args(**over):
    k, v, q = make_cache(1, 2, 2, 4, 20, 16, seed=14)
    a = {"k": k, "v": v, "q_window": q, "score": "joint"}
    a.update(over)
    return a


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


BAD = [
    ("k rank", dict(k=_t(2, 20, 16)), r"k must have 4 dims.*got 3"),
    ("v rank", dict(v=_t(1, 2, 20, 16, 1)), r"v must have 4 dims.*got 5"),
    ("q rank", dict(q_window=_t(4, 16)), r"q_window must have 4 dims.*got 2"),
    ("k/v shape", dict(v=_t(1, 2, 21, 16)), r"k and v must have the same shape"),
    ("H_q % H_kv", dict(q_window=_t(1, 3, 4, 16)), r"q_window's H_q must be a positive multiple of k's H_kv = 2, got H_q = 3"),
    ("D mismatch", dict(q_window=_t(1, 4, 4, 8)), r"q_window must have the head dim D of k \(16\), got 8"),
    ("batch mismatch", dict(q_window=_t(2, 4, 4, 16)), r"q_window must have the batch size of k \(1\), got 2"),
    ("W > N", dict(q_window=_t(1, 4, 21, 16)), r"q_window's W must be <= N = 20.*got W = 21"),
    ("W == 0", dict(q_window=_t(1, 4, 0, 16)), r"q_window must hold at least one window query, got W = 0"),
    ("dtype k int", dict(k=torch.ones(1, 2, 20, 16, dtype=torch.int32)), r"k must be float32, float16 or bfloat16.*Int"),
    ("dtype mismatch v", dict(v=_t(1, 2, 20, 16, dtype=torch.float16)), r"k and v must have the same dtype"),
    ("dtype mismatch q", dict(q_window=_t(1, 4, 4, 16, dtype=torch.float64)), r"k and q_window must have the same dtype"),
    ("score", dict(score="h2o"),
     r"score must be one of \('attn', 'tova', 'vatp', 'value', 'key', 'joint', 'loo', 'critical', 'laprox'\), got 'h2o'"),
    ("group_reduce", dict(group_reduce="min"), r"group_reduce must be one of \('sum', 'mean', 'max'\), got 'min'"),
    ("query_reduce", dict(query_reduce="mean"), r"query_reduce must be one of \('sum', 'max'\), got 'mean'"),
    ("k last dim", dict(k=_t(1, 2, 16, 20).transpose(2, 3)), r"k must have a contiguous last dim"),
    ("v last dim", dict(v=_t(1, 2, 16, 20).transpose(2, 3)), r"v must have a contiguous last dim"),
    ("q last dim", dict(q_window=_t(1, 4, 16, 4).transpose(2, 3)), r"q_window must have a contiguous last dim"),
    ("scale", dict(scale=float("inf")), r"scale must be finite.*got inf"),
    ("wo", dict(wo=_t(4, 16, 32)), r"wo is not used by score 'joint'"),
    ("wo missing", dict(score="critical"), r"score 'critical' needs wo.*got wo=None"),
    ("wo rank", dict(score="laprox", wo=_t(4, 16, 32)), r"wo must have 2 dims.*got 3"),
    ("wo columns", dict(score="critical", wo=_t(8, 32)), r"wo must have H_q \* D = 4 \* 16 = 64 columns.*got 32"),
    ("wo dtype", dict(score="critical", wo=_t(8, 64, dtype=torch.float16)), r"v and wo must have the same dtype"),
    ("laprox query_reduce", dict(score="laprox", wo=_t(8, 64), query_reduce="max"),
     r"score 'laprox' reduces the window queries by an L2 norm; query_reduce must be 'sum', got 'max'"),
]


@pytest.mark.parametrize("over,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_naming_the_argument(over, match):
    a = _args(**over)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.obcache.saliency(a.pop("k"), a.pop("v"), a.pop("q_window"), a.pop("score"), **a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mismatch_and_cuda_float64_raise():
    k, v, q = make_cache(1, 2, 2, 4, 20, 16)
    with pytest.raises(RuntimeError, match=r"k and q_window must be on the same device"):
        obcache.saliency(k, v, q.cuda())
    with pytest.raises(RuntimeError, match=r"float64.*CPU only"):
        obcache.saliency(k.double().cuda(), v.double().cuda(), q.double().cuda())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_size_limits_raise_naming_them():
    # One block per (b, h) in a grid dimension of at most 65535.
    k, q = torch.zeros(65536, 1, 1, 8, device="cuda"), torch.zeros(65536, 1, 1, 8, device="cuda")
    with pytest.raises(RuntimeError, match=r"B \* H_kv must be <= 65535 on CUDA, got 65536"):
        obcache.saliency(k, k, q)
    # G * W query rows per KV head: at most 65535 chunks of 16 (G = 4 here).
    W = 65535 * 16 // 4 + 1
    k, q = torch.zeros(1, 1, W, 8, device="cuda"), torch.zeros(1, 4, W, 8, device="cuda")
    with pytest.raises(RuntimeError, match=r"G \* W = 1048564\) must be <= 1048560 on CUDA"):
        obcache.saliency(k, k, q)
    # tova scores the last query only: G rows, well within the limit.
    out = obcache.saliency(k, k, q, "tova")
    assert out.shape == (1, 1, W) and torch.isfinite(out).all()


# The CUDA tests below compare against the CPU kernel at 1e-4 of the largest
# score. Both sum in float32, in different orders (key splits, warp shuffles,
# and on the tensor cores an accumulation whose internal rounding PTX leaves
# unspecified), and the GPU's softmax takes ex2.approx (2^-22 relative) where
# the emulated kernels, which meet 2e-5 (tests/cpp/test_emu_saliency.cpp),
# take an exact exp2: 5x that margin for what the emulation cannot model.
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_on_a_larger_case():
    k, v, q = make_cache(1, 2, 4, 32, 3000, 128, seed=15)
    for score in SCORES:
        cpu = obcache.saliency(k, v, q, score)
        gpu = obcache.saliency(k.cuda(), v.cuda(), q.cuda(), score).cpu()
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4 * cpu.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cuda_16bit_tensor_cores_match_the_fp32_kernels_and_cpu(monkeypatch, dtype):
    # bfloat16 and float16 on sm_80+ run saliency's products on the tensor
    # cores with the float operands split into three terms of the input's
    # type (float16's scaled by powers of two first): float precision, so the
    # float32 test's tolerance (above it) holds against the CPU kernel and
    # against the FP32 CUDA kernels (OBCACHE_CUDA_TENSOR_CORES=0) alike.
    k, v, q = make_cache(1, 2, 4, 32, 3000, 128, dtype=dtype, seed=16)
    for score in SCORES:
        cpu = obcache.saliency(k, v, q, score)
        tc = obcache.saliency(k.cuda(), v.cuda(), q.cuda(), score).cpu()
        monkeypatch.setenv("OBCACHE_CUDA_TENSOR_CORES", "0")
        fp32 = obcache.saliency(k.cuda(), v.cuda(), q.cuda(), score).cpu()
        monkeypatch.delenv("OBCACHE_CUDA_TENSOR_CORES")
        for got, what in ((tc, "tensor cores"), (fp32, "FP32 kernels")):
            torch.testing.assert_close(got, cpu, rtol=1e-4, atol=1e-4 * cpu.abs().max().item(),
                                       msg=lambda m, w=what, s=score: f"{s}, {w}: {m}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("G", [4, 3])
def test_cuda_wide_blocks_match_cpu(dtype, G):
    # 8 heads x 8,192 keys: 32 key splits, so pass 1's 64-row grid (512
    # blocks) and pass 2's 128-key one (512) outnumber any GPU's SMs and the
    # wide blocks run where their tiles fit: 128 rows per pass-1 block (sm_80,
    # sm_90; R = 96 at G = 3 leaves two warps past R) and 256 keys per pass-2
    # block of the key and joint scores (sm_90). Same tolerance as above.
    k, v, q = make_cache(1, 8, G, 32, 8192, 128, dtype=dtype, seed=18)
    for score in SCORES:
        cpu = obcache.saliency(k, v, q, score)
        gpu = obcache.saliency(k.cuda(), v.cuda(), q.cuda(), score).cpu()
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4 * cpu.abs().max().item(),
                                   msg=lambda m, s=score: f"{s}: {m}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("switch", ["OBCACHE_CUDA_L2_REUSE", "OBCACHE_CUDA_PASS2_WIDE",
                                    "OBCACHE_CUDA_PASS1_WIDE"])
def test_cuda_schedules_give_the_same_bits(monkeypatch, switch):
    # Pass 2's head order (last to first, or in order), its 256- or 128-key
    # blocks on sm_90 and pass 1's 128- or 64-row blocks (where their tiles
    # fit: at D = 128 with O, sm_80, sm_90 and sm_100; without O, every
    # sm_80+ GPU) change which block computes a key or a row, not how: each
    # warp sums the same rows and keys in the same order. N = 40,000 keys
    # make 157 blocks of 256 keys per head, 1,256 over 8 heads, and 32 key
    # splits per head make 256 wide pass-1 blocks, more than any GPU's SMs,
    # so the wide blocks run where their tiles fit. Where none do, the switch
    # changes nothing and the test says so by skipping.
    props = torch.cuda.get_device_properties(0)
    if switch != "OBCACHE_CUDA_L2_REUSE" and props.major < 8:
        pytest.skip("no tensor-core passes before sm_80: nothing goes wide")
    if switch == "OBCACHE_CUDA_PASS2_WIDE" and props.shared_memory_per_block_optin < 181 * 1024:
        pytest.skip("the 256-key pass 2 tiles (181 KiB at D = 128) do not fit this GPU")
    k, v, q = make_cache(1, 8, 4, 32, 40000, 128, dtype=torch.bfloat16, seed=17)
    k, v, q = k.cuda(), v.cuda(), q.cuda()
    for score in ("key", "joint", "value"):
        default = obcache.saliency(k, v, q, score)
        monkeypatch.setenv(switch, "0")
        off = obcache.saliency(k, v, q, score)
        monkeypatch.delenv(switch)
        assert torch.equal(default, off), f"{score}: {switch}=0 changed the scores"


# ---- scores that need the output projection: critical (CriticalKV), laprox ----

WO_SCORES = ref.WO_SCORES


def _wo(H_q, D, hidden, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(hidden, H_q * D, generator=g) / D**0.5).to(dtype).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("score", WO_SCORES)
def test_wo_scores_every_reduction_and_dtype_match_reference(score, dtype, device):
    _skip_f64_on_cuda(device, dtype)
    k, v, q = make_cache(2, 2, 3, 8, 70, 64, dtype=dtype, device=device, seed=21, narrow_from=75)
    wo = _wo(6, 64, 100, dtype=dtype, device=device, seed=22)
    for group_reduce in ("sum", "mean", "max"):
        for query_reduce in (("sum", "max") if score == "critical" else ("sum",)):
            check(k, v, q, score, group_reduce=group_reduce, query_reduce=query_reduce, wo=wo)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B%d_H%d_G%d_W%d_N%d_D%d" % s)
def test_wo_scores_shape_grid_matches_reference(shape, device):
    B, H, G, W, N, D = shape
    for j, score in enumerate(WO_SCORES):
        k, v, q = make_cache(*shape, device=device, seed=30 + j, narrow_from=N + 3 if j else None)
        wo = _wo(H * G, D, 45 + 20 * j, device=device, seed=j)
        check(k, v, q, score, causal=(sum(shape) + j) % 2 == 0, scale=0.2, wo=wo, what=f"shape={shape}")


def test_critical_is_attn_plus_eps_times_group_mean_projected_l1_norm():
    k, v, q = make_cache(1, 2, 3, 5, 30, 32, seed=23)
    wo = _wo(6, 32, 40, seed=24)
    pn = obcache.projected_value_norm(v, wo, 1).reshape(1, 2, 3, 30).mean(2)
    want = (obcache.saliency(k, v, q, "attn", group_reduce="mean") + 1e-4) * pn
    torch.testing.assert_close(obcache.saliency(k, v, q, "critical", group_reduce="mean", wo=wo), want)


def test_laprox_takes_each_heads_projected_l2_norm():
    k, v, q = make_cache(1, 2, 1, 5, 30, 32, seed=25)
    wo = _wo(2, 32, 40, seed=26)
    base = obcache.saliency(k, v, q, "laprox", wo=wo)
    # Doubling head 1's columns of wo doubles its term (G = 1: KV head 1's
    # score) and leaves head 0's alone.
    w2 = wo.clone()
    w2[:, 32:] *= 2
    got = obcache.saliency(k, v, q, "laprox", wo=w2)
    torch.testing.assert_close(got[:, 0], base[:, 0])
    torch.testing.assert_close(got[:, 1], 2 * base[:, 1])
    # A rotation of the hidden space keeps every L2 norm of v W_o^j; an L1
    # norm would change (checked, so that this part can fail). float32: the
    # rotation's own rounding is ~1e-6 relative.
    rot = torch.linalg.qr(torch.randn(40, 40, generator=torch.Generator().manual_seed(27)))[0]
    torch.testing.assert_close(obcache.saliency(k, v, q, "laprox", wo=rot @ wo), base, rtol=1e-5, atol=0)
    l1, l1_rot = obcache.projected_value_norm(v, wo, 1), obcache.projected_value_norm(v, rot @ wo, 1)
    assert ((l1 - l1_rot).abs() > 1e-3 * l1).any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_laprox_norm_through_the_qr_factor_keeps_an_ill_conditioned_wo_accurate(dtype, device):
    # For float32/64 the op computes ||v W_o^g||_2 as ||v R_g^T||_2 with
    # wo's head block = Q_g R_g. With singular values spanning 100x and
    # hidden = 8 D the float32 result must stay within what rounding v R^T
    # allows: eps32 * cond * sqrt(D) ~ 6e-8 * 100 * 8 = 5e-5 relative.
    _skip_f64_on_cuda(device, dtype)
    H_q, D, hidden = 4, 32, 256
    k, v, q = make_cache(1, 2, 2, 6, 90, D, dtype=dtype, device=device, seed=41)
    g = torch.Generator().manual_seed(42)
    r = H_q * D
    a = torch.linalg.qr(torch.randn(hidden, r, generator=g, dtype=torch.float64))[0]
    b = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=torch.float64))[0]
    wo = (a * torch.logspace(0, -2, r, dtype=torch.float64)) @ b.t()  # [hidden, H_q * D]
    out = obcache.saliency(k, v, q, "laprox", wo=wo.to(dtype).to(device))
    want = ref.saliency(k.cpu().double(), v.cpu().double(), q.cpu().double(), "laprox", wo=wo.to(dtype).double())
    rtol = 1e-12 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out.cpu().double(), want, rtol=rtol, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_wo_scores(device):
    k, v, q = make_cache(1, 2, 2, 4, 20, 16, device=device, seed=27)
    wo = _wo(4, 16, 24, device=device)
    for score in WO_SCORES:
        opcheck(torch.ops.obcache.saliency.default, (k, v, q, score), dict(wo=wo, group_reduce="mean"))

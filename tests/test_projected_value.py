"""torch.ops.obcache.projected_value_norm against
obcache.reference.projected_value_norm (the spec).

Tolerance (conftest.assert_close_to_reference): the kernel's error against
the float64 reference is at most 2x the error of the reference computed in
float32 (for 16-bit inputs too: the kernels read them exactly and accumulate
in float32), plus a floor.
"""
import pytest
import torch
from torch.library import opcheck

import obcache
from obcache import reference as ref
from conftest import COPY_OPS, DEVICES, assert_close_to_reference, ops_dispatched

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}


def make(B, Hkv, G, N, D, hidden, *, dtype=torch.float32, device="cpu", seed=0, narrow_from=None, wo_pad=0):
    """v [B, Hkv, N, D] (a view [:, :, :N] of a longer buffer with narrow_from)
    and wo [hidden, Hkv*G*D] (a column slice of a wider matrix with wo_pad)."""
    g = torch.Generator().manual_seed(seed)
    M = narrow_from or N
    v = torch.randn(B, Hkv, M, D, generator=g).to(dtype).to(device)[:, :, :N]
    wo = (torch.randn(hidden, Hkv * G * D + wo_pad, generator=g) / D**0.5).to(dtype).to(device)
    return v, wo[:, : Hkv * G * D]


def check(v, wo, p, what=""):
    out = obcache.projected_value_norm(v, wo, p)
    B, Hkv, N, D = v.shape
    want_dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
    assert out.shape == (B, wo.shape[1] // D, N) and out.dtype == want_dtype and out.device == v.device
    r64 = ref.projected_value_norm(v.cpu(), wo.cpu(), p)
    rlo = ref.projected_value_norm(v.cpu(), wo.cpu(), p, compute_dtype=torch.float32 if v.dtype != torch.float64
                                   else torch.float64)
    assert_close_to_reference(out, r64, rlo, what=f"p={p} {v.dtype} {what}", floor_rel=FLOOR[v.dtype])


def _skip_f64_on_cuda(device, dtype):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 is CPU-only")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p", [1, 2])
def test_every_dtype_and_norm_matches_reference(p, dtype, device):
    _skip_f64_on_cuda(device, dtype)
    v, wo = make(2, 2, 3, 70, 64, 100, dtype=dtype, device=device, seed=1)
    check(v, wo, p)


# (B, H_kv, G, N, D, hidden): every G in {1, 3, 4} and D in {32, 64, 72, 128};
# hidden is a multiple of neither the CPU (32) nor the CUDA (64) column tile,
# N of neither token block (64), except where a full tile is the point.
SHAPES = [
    (1, 1, 1, 1, 32, 1),
    (2, 3, 1, 65, 64, 45),
    (1, 2, 3, 130, 72, 100),
    (2, 1, 4, 33, 128, 200),
    (1, 3, 4, 64, 32, 64),  # exact tiles
    (1, 2, 3, 7, 128, 130),
    (2, 2, 1, 200, 72, 33),
    (1, 1, 4, 100, 64, 257),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B%d_H%d_G%d_N%d_D%d_hid%d" % s)
def test_shape_grid_matches_reference(shape, dtype, device):
    _skip_f64_on_cuda(device, dtype)
    for p in (1, 2):
        v, wo = make(*shape, dtype=dtype, device=device, seed=p + sum(shape))
        check(v, wo, p, what=f"shape={shape}")


@pytest.mark.parametrize("device", DEVICES)
def test_strided_inputs_are_read_in_place(device):
    v, wo = make(2, 2, 2, 50, 32, 70, device=device, seed=3, narrow_from=80, wo_pad=16)
    assert not v.is_contiguous() and not wo.is_contiguous()
    for p in (1, 2):
        check(v, wo, p)
        assert torch.equal(obcache.projected_value_norm(v, wo, p),
                           obcache.projected_value_norm(v.contiguous(), wo.contiguous(), p))
        # In place: neither input is copied on the way in.
        ops = ops_dispatched(lambda: obcache.projected_value_norm(v, wo, p))
        assert "obcache::projected_value_norm" in ops and not ops & COPY_OPS, ops
    # [B, N, H, D] storage viewed as [B, H, N, D].
    vt = torch.randn(2, 40, 3, 32).to(device).transpose(1, 2)
    check(vt, torch.randn(50, 6 * 32).to(device), 2)


@pytest.mark.parametrize("device", DEVICES)
def test_query_head_j_reads_kv_head_j_over_g_and_its_own_columns(device):
    # Only query head 1 of KV head 0 has nonzero columns in wo: every other
    # head's norm is 0, and head 1 sees KV head 0's values.
    B, Hkv, G, N, D, hidden = 1, 2, 2, 5, 4, 3
    v = torch.arange(B * Hkv * N * D, dtype=torch.float32).reshape(B, Hkv, N, D).to(device)
    wo = torch.zeros(hidden, Hkv * G * D, device=device)
    wo[0, D] = 1.0  # output 0 of head 1 = v[..., 0]
    out = obcache.projected_value_norm(v, wo, 1).cpu()
    expect = torch.zeros(B, Hkv * G, N)
    expect[:, 1] = v[:, 0, :, 0].cpu()
    assert torch.equal(out, expect)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_in_a_value_row_gives_nan_for_that_token_only(device):
    v, wo = make(1, 2, 2, 20, 32, 40, device=device, seed=4)
    v = v.clone()
    v[0, 1, 7, 3] = float("nan")
    out = obcache.projected_value_norm(v, wo, 2).cpu()
    assert out[0, 2:, 7].isnan().all()
    out[0, 2:, 7] = 0
    assert out.isfinite().all()


@pytest.mark.parametrize("device", DEVICES)
def test_empty_shapes(device):
    v, wo = make(1, 2, 2, 0, 32, 40, device=device)
    assert obcache.projected_value_norm(v, wo).shape == (1, 4, 0)
    v, _ = make(1, 2, 2, 5, 32, 40, device=device)
    out = obcache.projected_value_norm(v, torch.zeros(0, 4 * 32, device=device), 2)
    assert out.shape == (1, 4, 5) and torch.equal(out.cpu(), torch.zeros(1, 4, 5))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_projected_value_norm(device):
    v, wo = make(1, 2, 2, 9, 32, 40, device=device, seed=5)
    opcheck(torch.ops.obcache.projected_value_norm.default, (v, wo, 2))
    opcheck(torch.ops.obcache.projected_value_norm.default, (v.half(), wo.half()))


def test_under_torch_compile_fullgraph():
    v, wo = make(1, 2, 2, 9, 32, 40, seed=6)

    @torch.compile(fullgraph=True, backend="eager")
    def f(v, wo):
        return obcache.projected_value_norm(v, wo, 2) * 2

    torch.testing.assert_close(f(v, wo), 2 * obcache.projected_value_norm(v, wo, 2))


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


BAD = [
    ("v rank", dict(v=_t(2, 20, 16)), r"v must have 4 dims \[B, H_kv, N, D\], got 3"),
    ("wo rank", dict(wo=_t(8, 4, 16)), r"wo must have 2 dims \[hidden, H_q \* D\].*got 3"),
    ("wo columns", dict(wo=_t(8, 50)), r"wo must have H_q \* D columns, a positive multiple of v's D = 16, got 50"),
    ("H_q % H_kv", dict(wo=_t(8, 48)), r"wo's H_q = wo.shape\[1\] / D = 3 must be a multiple of v's H_kv = 2"),
    ("p", dict(p=3), r"p must be 1 or 2, got 3"),
    ("dtype v int", dict(v=torch.ones(1, 2, 20, 16, dtype=torch.int32)), r"v must be float32, float16 or bfloat16.*Int"),
    ("dtype mismatch", dict(wo=_t(8, 64, dtype=torch.float16)), r"v and wo must have the same dtype, got Float and Half"),
    ("v last dim", dict(v=_t(1, 2, 16, 20).transpose(2, 3)), r"v must have a contiguous last dim"),
    ("wo last dim", dict(wo=_t(64, 8).t()), r"wo must have a contiguous last dim"),
]


@pytest.mark.parametrize("over,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_naming_the_argument(over, match):
    a = {"v": _t(1, 2, 20, 16), "wo": _t(8, 64), "p": 1}
    a.update(over)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.obcache.projected_value_norm(a["v"], a["wo"], a["p"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mismatch_and_cuda_float64_raise():
    v, wo = make(1, 2, 2, 9, 32, 40)
    with pytest.raises(RuntimeError, match=r"v and wo must be on the same device"):
        obcache.projected_value_norm(v, wo.cuda())
    with pytest.raises(RuntimeError, match=r"float64.*CPU only"):
        obcache.projected_value_norm(v.double().cuda(), wo.double().cuda())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_on_a_larger_case():
    # 1e-4 of the largest norm: each of the 1,000 columns sums D = 128 float32
    # products in another order than the CPU kernel (and |x| or x^2 over the
    # columns in another), ~1e-6 relative apart; the margin covers the tensor
    # cores' accumulation, whose internal rounding PTX leaves unspecified.
    v, wo = make(1, 8, 4, 3000, 128, 1000, seed=7)
    for p in (1, 2):
        cpu = obcache.projected_value_norm(v, wo, p)
        gpu = obcache.projected_value_norm(v.cuda(), wo.cuda(), p).cpu()
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4 * cpu.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("D, wo_pad", [(128, 0), (64, 0), (72, 1), (256, 0)],
                         ids=["D128", "D64", "D72_unaligned", "D256_one_m_tile"])
def test_cuda_16bit_tensor_cores_match_the_fp32_kernel_and_cpu(D, wo_pad, dtype, monkeypatch):
    # bfloat16 and float16 with D <= 256 on sm_80+ run the product on the
    # tensor cores: 16-bit products are exact and accumulate in float32, so
    # the float32 test's tolerance holds against the CPU kernel and against
    # the FP32 CUDA kernel (OBCACHE_CUDA_TENSOR_CORES=0) alike. N = 3000: a
    # partial last block (256 tokens per block, 128 at D = 256); hidden =
    # 1000: fifteen full 64-column tiles and a partial one; wo_pad = 1 takes
    # the 16-bit loads instead of cp.async.
    v, wo = make(1, 4, 4, 3000, D, 1000, dtype=dtype, seed=8 + D, wo_pad=wo_pad)
    for p in (1, 2):
        cpu = obcache.projected_value_norm(v, wo, p)
        tc = obcache.projected_value_norm(v.cuda(), wo.cuda(), p).cpu()
        monkeypatch.setenv("OBCACHE_CUDA_TENSOR_CORES", "0")
        fp32 = obcache.projected_value_norm(v.cuda(), wo.cuda(), p).cpu()
        monkeypatch.delenv("OBCACHE_CUDA_TENSOR_CORES")
        for got, what in ((tc, "tensor cores"), (fp32, "FP32 kernel")):
            torch.testing.assert_close(got, cpu, rtol=1e-4, atol=1e-4 * cpu.abs().max().item(),
                                       msg=lambda m, w=what, q=p: f"p={q}, {w}: {m}")

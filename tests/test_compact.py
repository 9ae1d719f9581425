"""torch.ops.obcache.compact_: in place, order-preserving, equal to a gather
into a fresh tensor; errors leave k and v untouched."""
import pytest
import torch
from torch.library import opcheck

import obcache
from obcache import reference as ref

from conftest import DEVICES, HAS_CUDA

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def pattern(kind, B, H, N, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "every_other":
        row = torch.arange(1, 2 * L, 2).clamp(max=N - 1)
        row = torch.minimum(row, torch.arange(N - L, N))
        return row.expand(B, H, L).clone()
    if kind == "last":
        return torch.arange(N - L, N).expand(B, H, L).clone()
    if kind == "first":
        return torch.arange(L).expand(B, H, L).clone()
    if kind == "random":
        return torch.stack([torch.stack([torch.randperm(N, generator=g)[:L].sort().values for _ in range(H)])
                            for _ in range(B)])
    raise ValueError(kind)


def cache(B, H, N, D, dtype, device, M=None, seed=0):
    """k, v: narrowed views [B, H, N, D] of [B, H, M, D] buffers."""
    g = torch.Generator().manual_seed(seed)
    M = M or N
    kb = torch.randn(B, H, M, D, generator=g).to(dtype).to(device)
    vb = torch.randn(B, H, M, D + 3, generator=g).to(dtype).to(device)
    return kb, vb, kb[:, :, :N], vb[:, :, :N, :D + 3]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["every_other", "last", "first", "random"])
def test_compact_equals_gather_in_place(device, dtype, kind):
    B, H, N, D = 2, 3, 300, 16
    for L in (1, 37, N // 2, N - 1, N):
        kb, vb, k, v = cache(B, H, N, D, dtype, device, M=N + 20, seed=L)
        idx = pattern(kind, B, H, N, L, seed=L).to(device)
        kb0, vb0 = kb.clone(), vb.clone()
        want_k = torch.gather(k, 2, idx[..., None].expand(B, H, L, D))
        want_v = torch.gather(v, 2, idx[..., None].expand(B, H, L, D + 3))
        ptrs = (k.data_ptr(), v.data_ptr(), kb.data_ptr())
        obcache.compact_(k, v, idx)
        assert (k.data_ptr(), v.data_ptr(), kb.data_ptr()) == ptrs
        assert torch.equal(k[:, :, :L], want_k) and torch.equal(v[:, :, :L], want_v), L
        # Rows past the budget (and past the view) are untouched.
        assert torch.equal(kb[:, :, L:], kb0[:, :, L:]) and torch.equal(vb[:, :, L:], vb0[:, :, L:])


@pytest.mark.parametrize("device", DEVICES)
def test_compact_large_rows_cross_many_chunks(device):
    # Many chunks of the CUDA kernel; sources far beyond destinations.
    B, H, N, D = 1, 2, 5000, 64
    _, _, k, v = cache(B, H, N, D, torch.float32, device)
    idx = pattern("random", B, H, N, 2500, seed=3).to(device)
    wk, wv = ref.compact(k.cpu(), v.cpu(), idx.cpu())
    obcache.compact_(k, v, idx)
    assert torch.equal(k.cpu(), wk) and torch.equal(v.cpu(), wv)


@pytest.mark.parametrize("device", DEVICES)
def test_compact_with_lengths_matches_reference(device):
    B, H, N, D = 2, 3, 40, 8
    _, _, k, v = cache(B, H, N, D, torch.float32, device)
    s = torch.randn(B, H, N)
    idx, lengths = obcache.select_adaptive(s, 50, floor=0.2)
    wk, wv = ref.compact(k.cpu(), v.cpu(), idx, lengths)
    obcache.compact_(k, v, idx.to(device), lengths.to(device))  # -1 padding past lengths is ignored
    assert torch.equal(k.cpu(), wk) and torch.equal(v.cpu(), wv)


@pytest.mark.parametrize("device", DEVICES)
def test_compact_odd_row_bytes_and_strides(device):
    # float16 with D = 3: 6-byte rows, no vector wider than 2 bytes fits.
    big = torch.randn(2, 5, 31, 3).half().to(device)
    k = big[:, 1:4, :29]
    v = torch.randn(2, 3, 29, 5).half().to(device).transpose(1, 2).contiguous().transpose(1, 2)
    idx = pattern("random", 2, 3, 29, 11, seed=1).to(device)
    wk, wv = ref.compact(k.cpu(), v.cpu(), idx.cpu())
    obcache.compact_(k, v, idx)
    assert torch.equal(k.cpu(), wk) and torch.equal(v.cpu(), wv)


def _bad_cases(device):
    i = lambda x: torch.tensor(x, device=device)
    return [
        (i([[[0, 0, 1]]]), None, "strictly increasing .* indices\\[0, 0, 1\\] = 0 after 0"),
        (i([[[3, 1, 2]]]), None, "strictly increasing .* indices\\[0, 0, 1\\] = 1 after 3"),
        (i([[[0, 1, 8]]]), None, "indices\\[0, 0, 2\\] must be in \\[0, N\\) = \\[0, 8\\), got 8"),
        (i([[[-1, 1, 2]]]), None, "indices\\[0, 0, 0\\] must be in \\[0, N\\) = \\[0, 8\\), got -1"),
        (i([[0, 1, 2]]), None, "indices must have 3 dims"),
        (i([[[0, 1], [0, 1]]]), None, "indices must have shape \\[B, H_kv, L\\] = \\[1, 1, L <= 8\\]"),
        (i([[list(range(9))]]), None, "L <= 8"),
        (i([[[0.0, 1.0]]]), None, "indices must be int64"),
        (i([[[0, 1, 2]]]), i([[4]]), "lengths\\[0, 0\\] must be in \\[0, L\\] = \\[0, 3\\], got 4"),
        (i([[[0, 1, 2]]]), i([4]), "lengths must have shape \\[B, H_kv\\]"),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(len(_bad_cases("cpu"))))
def test_compact_rejects_bad_indices_without_writing(device, case, monkeypatch):
    monkeypatch.setenv("OBCACHE_DEBUG_CHECKS", "1")  # value checks on CUDA
    idx, lengths, match = _bad_cases(device)[case]
    k = torch.randn(1, 1, 8, 4, device=device)
    v = torch.randn(1, 1, 8, 4, device=device)
    k0, v0 = k.clone(), v.clone()
    with pytest.raises(RuntimeError, match=match):
        obcache.compact_(k, v, idx, lengths)
    assert torch.equal(k, k0) and torch.equal(v, v0)


@pytest.mark.parametrize("device", DEVICES)
def test_compact_rejects_bad_tensors_without_writing(device):
    k = torch.randn(1, 2, 8, 4, device=device)
    v = torch.randn(1, 2, 8, 4, device=device)
    idx = torch.tensor([[[1, 2], [3, 4]]], device=device)
    k0, v0 = k.clone(), v.clone()
    with pytest.raises(RuntimeError, match="k and v must not share memory"):
        obcache.compact_(k, k, idx)
    with pytest.raises(RuntimeError, match="k and v must agree on \\[B, H_kv, N\\]"):
        obcache.compact_(k, v[:, :, :7], idx)
    with pytest.raises(RuntimeError, match="v must have 4 dims"):
        obcache.compact_(k, v[0], idx)
    with pytest.raises(RuntimeError, match="k must have a contiguous last dim"):
        obcache.compact_(k.transpose(2, 3), v.transpose(2, 3), idx)
    with pytest.raises(RuntimeError, match="k must be a floating-point tensor"):
        obcache.compact_(k.int(), v, idx)
    assert torch.equal(k, k0) and torch.equal(v, v0)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_compact_cuda_rejects_device_mismatch():
    k = torch.randn(1, 1, 8, 4, device="cuda")
    with pytest.raises(RuntimeError, match="indices and k must be on the same device"):
        obcache.compact_(k, k.clone(), torch.tensor([[[1, 2]]]))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_compact(device):
    _, _, k, v = cache(2, 3, 20, 8, torch.float32, device)
    idx = pattern("random", 2, 3, 20, 7).to(device)
    opcheck(torch.ops.obcache.compact_.default, (k.clone(), v.clone(), idx))
    s = torch.randn(2, 3, 20)
    aidx, lengths = obcache.select_adaptive(s, 30)
    opcheck(torch.ops.obcache.compact_.default, (k.clone(), v.clone(), aidx.to(device), lengths.to(device)))

"""saliency / evict with `o`, the window queries' attention output given by
the caller (a model's attention has just computed it).

Specification: obcache.reference.saliency(..., o=o), the same formulas with
that O in place of softmax(Z) V. The tolerance rule is test_saliency.py's
(conftest.assert_close_to_reference). An arbitrary O (not the attention
output) is used where the test must show that the op reads it.
"""
import pytest
import torch

import obcache
from obcache import reference as ref
from obcache.ops.saliency import O_SCORES
from conftest import DEVICES, assert_close_to_reference, make_cache

OTHER_SCORES = tuple(s for s in obcache.SCORES if s not in O_SCORES)
FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}


def _lowp(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _random_o(q, seed):
    """An O of q's shape, dtype and device, laid out as o_proj's input
    [B, W, H_q, D] viewed as [B, H_q, W, D] (the integration's view)."""
    B, Hq, W, D = q.shape
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, W, Hq, D, generator=g).to(q.dtype).to(q.device).transpose(1, 2)


def _attention_output(k, v, q, **kw):
    """The reference's O (float64), cast to q's dtype: what a model hands over."""
    return ref.attention_terms(k.cpu(), v.cpu(), q.cpu(), **kw)["o"].to(q.dtype).to(q.device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("score", O_SCORES)
def test_given_o_is_read_and_matches_the_reference_with_that_o(score, dtype, device):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 is CPU-only")
    k, v, q = make_cache(2, 2, 3, 8, 70, 64, dtype=dtype, device=device, seed=1, narrow_from=75)
    o = _random_o(q, seed=2)
    for group_reduce, query_reduce, causal in (("sum", "sum", True), ("max", "max", True), ("mean", "sum", False)):
        kw = dict(group_reduce=group_reduce, query_reduce=query_reduce, causal=causal)
        out = obcache.saliency(k, v, q, score, o=o, **kw)
        kc, vc, qc, oc = k.cpu(), v.cpu(), q.cpu(), o.cpu()
        r64 = ref.saliency(kc, vc, qc, score, o=oc, **kw)
        rlo = ref.saliency(kc, vc, qc, score, o=oc, compute_dtype=_lowp(dtype), **kw)
        assert_close_to_reference(out, r64, rlo, what=f"{score} {dtype} o given {kw}", floor_rel=FLOOR[dtype])
        # An O that is not the attention output gives other scores: o is read.
        own = obcache.saliency(k, v, q, score, **kw)
        assert (out - own).abs().max() > 1e-2 * own.abs().max()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("score", O_SCORES)
def test_the_attention_output_given_gives_the_scores_computed_without_it(score, dtype, device):
    k, v, q = make_cache(1, 3, 4, 32, 600, 64, dtype=dtype, device=device, seed=3)
    o = _attention_output(k, v, q)
    out = obcache.saliency(k, v, q, score, o=o)
    kc, vc, qc = k.cpu(), v.cpu(), q.cpu()
    # O rounded to the input dtype is the only difference from the reference.
    r64 = ref.saliency(kc, vc, qc, score)
    rlo = ref.saliency(kc, vc, qc, score, o=o.cpu(), compute_dtype=_lowp(dtype))
    assert_close_to_reference(out, r64, rlo, what=f"{score} {dtype} own O given", floor_rel=FLOOR[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("score", OTHER_SCORES)
def test_scores_that_do_not_read_o_ignore_it(score, device):
    k, v, q = make_cache(1, 2, 2, 9, 50, 32, device=device, seed=4)
    assert torch.equal(obcache.saliency(k, v, q, score, o=_random_o(q, 5)), obcache.saliency(k, v, q, score))


@pytest.mark.parametrize("score", O_SCORES)
@pytest.mark.parametrize("heads,threads", [(1, 4), (3, 2)], ids=["fewer-rows-than-threads", "3-rows-on-2-threads"])
def test_given_o_split_over_the_keys_gives_the_one_thread_bits(score, heads, threads):
    """The split form (key ranges on different threads, saliency_cpu.h) with
    O given: the same bits as one thread, as without o."""
    k, v, q = make_cache(1, heads, 3, 16, 1100, 32, seed=7)
    o = _random_o(q, 8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        split = obcache.saliency(k, v, q, score, o=o)
        torch.set_num_threads(1)
        whole = obcache.saliency(k, v, q, score, o=o)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(split, whole)
    kc, vc, qc = k.double(), v.double(), q.double()
    r64 = ref.saliency(kc, vc, qc, score, o=o)
    rlo = ref.saliency(k, v, q, score, o=o, compute_dtype=torch.float32)
    assert_close_to_reference(whole, r64, rlo, what=f"{score} split, o given")


@pytest.mark.parametrize("device", DEVICES)
def test_evict_passes_o_to_the_scores(device):
    k, v, q = make_cache(1, 2, 3, 8, 300, 32, device=device, seed=9)
    o = _random_o(q, 10)
    want = obcache.select(obcache.saliency(k, v, q, "key", o=o), 40, sink=4, recent=8)
    # The o given is not the cache's own, so it picks other tokens: evict
    # ignoring o would fail the comparison below.
    assert not torch.equal(want, obcache.select(obcache.saliency(k, v, q, "key"), 40, sink=4, recent=8))
    k2, v2, idx = obcache.evict(k.clone(), v.clone(), q, 40, score="key", sink=4, pool_kernel=0, o=o)
    assert torch.equal(idx, want)
    assert torch.equal(k2, torch.gather(k, 2, idx[..., None].expand(-1, -1, -1, k.shape[-1])))
    assert torch.equal(v2, torch.gather(v, 2, idx[..., None].expand(-1, -1, -1, v.shape[-1])))


def test_opcheck_and_fake_kernel_with_o():
    k, v, q = make_cache(1, 2, 2, 4, 20, 16, seed=12, narrow_from=24)
    o = _random_o(q, 13)
    torch.library.opcheck(torch.ops.obcache.saliency.default, (k, v, q, "joint"), {"o": o})
    torch.library.opcheck(torch.ops.obcache.evict.default, (k.clone(), v.clone(), q, 8),
                          {"score": "key", "o": o}, test_utils=("test_schema", "test_faketensor"))


BAD = [
    ("o shape", lambda q: torch.randn(1, 4, 3, 16), r"o must have q_window's shape \[B, H_q, W, D\] = \[1, 4, 4, 16\].*got \[1, 4, 3, 16\]"),
    ("o dtype", lambda q: torch.randn(*q.shape, dtype=torch.float64), r"q_window and o must have the same dtype"),
    ("o last dim", lambda q: torch.randn(1, 4, 16, 4).transpose(2, 3), r"o must have a contiguous last dim"),
]


@pytest.mark.parametrize("make_o,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
@pytest.mark.parametrize("op", ["saliency", "evict", "critical"])
def test_bad_o_raises_naming_it_and_leaves_the_cache_alone(op, make_o, match):
    k, v, q = make_cache(1, 2, 2, 4, 20, 16, seed=14)
    o = make_o(q)
    k0, v0 = k.clone(), v.clone()
    with pytest.raises(RuntimeError, match=match):
        if op == "saliency":
            torch.ops.obcache.saliency(k, v, q, "key", o=o)
        elif op == "critical":
            torch.ops.obcache.saliency(k, v, q, "critical", wo=torch.randn(8, 64), o=o)
        else:
            torch.ops.obcache.evict(k, v, q, 8, score="key", o=o)
    assert torch.equal(k, k0) and torch.equal(v, v0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_o_on_another_device_raises():
    k, v, q = make_cache(1, 2, 2, 4, 20, 16)
    with pytest.raises(RuntimeError, match=r"q_window and o must be on the same device"):
        obcache.saliency(k, v, q, "key", o=q.cuda())

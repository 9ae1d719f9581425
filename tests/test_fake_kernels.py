"""The fake kernels (what torch.compile traces with) refuse what the ops
refuse, with the same words: bad arguments fail while tracing, not later in
the compiled graph (obcache/ops/fake_checks.py)."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import obcache
from conftest import make_cache


def _cache(N=20, W=4):
    k, v, q = make_cache(1, 2, 2, W, N, 16, seed=3)
    return k.contiguous(), v.contiguous(), q


def _t(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


k0, v0, q0 = _cache()
IDX = torch.arange(0, 20, 2).expand(1, 2, 10)
# (call, tensors, scalars, a part of the message both the op and its fake give)
CASES = {
    "k dims": (torch.ops.obcache.saliency, (k0[0], v0, q0), ("joint",), "k must have 4 dims"),
    "v shape": (torch.ops.obcache.saliency, (k0, v0[:, :, :10], q0), ("key",), "k and v must have the same shape"),
    "q dtype": (torch.ops.obcache.saliency, (k0, v0, q0.double()), ("value",), "k and q_window must have the same dtype"),
    "q batch": (torch.ops.obcache.saliency, (k0, v0, q0.expand(2, -1, -1, -1)), ("joint",),
                r"q_window must have the batch size of k \(1\)"),
    "q head dim": (torch.ops.obcache.saliency, (k0, v0, q0[..., :8]), ("joint",),
                   r"q_window must have the head dim D of k \(16\)"),
    "H_q": (torch.ops.obcache.saliency, (k0, v0, q0[:, :3]), ("joint",),
            "q_window's H_q must be a positive multiple of k's H_kv = 2, got H_q = 3"),
    "W > N": (torch.ops.obcache.saliency, (k0[:, :, :3], v0[:, :, :3], q0), ("joint",),
              "q_window's W must be <= N = 3"),
    "D = 0": (torch.ops.obcache.saliency, (k0[..., :0], v0[..., :0], q0[..., :0]), ("joint",),
              "k must have a head dim D > 0, got shape"),
    "W = 0": (torch.ops.obcache.saliency, (k0, v0, q0[:, :, :0]), ("joint",),
              "q_window must hold at least one window query, got W = 0"),
    "score name": (torch.ops.obcache.saliency, (k0, v0, q0), ("h2o",),
                   r"score must be one of \('attn', 'tova', 'vatp', 'value', 'key', 'joint', 'loo', 'critical', "
                   r"'laprox'\), got 'h2o'"),
    "score needs wo": (torch.ops.obcache.saliency, (k0, v0, q0), ("critical",), "score 'critical' needs wo"),
    "select budget 0": (torch.ops.obcache.select, (_t(1, 2, 20),), (0,), "budget must be >= sink \\+ recent = 0 and > 0, got 0"),
    "select budget < sink + recent": (lambda s, b: torch.ops.obcache.select(s, b, sink=2, recent=4), (_t(1, 2, 20),), (5,),
                                      "budget must be >= sink \\+ recent = 6 and > 0, got 5"),
    "select negative sink": (lambda s, b: torch.ops.obcache.select(s, b, sink=-1), (_t(1, 2, 20),), (5,),
                             "sink must be >= 0, got -1"),
    "select scores dims": (torch.ops.obcache.select, (_t(2, 20),), (5,), "scores must have 3 dims"),
    "select pool_kernel": (lambda s, b: torch.ops.obcache.select(s, b, pool_kernel=4), (_t(1, 2, 20),), (5,),
                           "pool_kernel must be 0, 1 \\(no pooling\\) or an odd number > 1, got 4"),
    "evict pool": (lambda k, v, q, b: torch.ops.obcache.evict(k, v, q, b, pool="median"), (k0, v0, q0), (10,),
                   "pool must be one of \\('max', 'avg'\\), got 'median'"),
    "adaptive floor": (lambda s, b: torch.ops.obcache.select_adaptive(s, b, floor=1.5), (_t(1, 2, 20),), (10,),
                       r"floor must be in \[0, 1\], got 1.5"),
    "adaptive recent": (lambda s, b: torch.ops.obcache.select_adaptive(s, b, recent=-2), (_t(1, 2, 20),), (10,),
                        "recent must be >= 0, got -2"),
    "adaptive scores dims": (torch.ops.obcache.select_adaptive, (_t(2, 20),), (5,), "scores must have 3 dims"),
    "evict recent defaults to W": (torch.ops.obcache.evict, (k0, v0, q0), (3,),
                                   r"budget must be >= sink \+ recent = 4 and > 0, got 3 \(recent was not given, so it is W = 4"),
    "evict W > N": (torch.ops.obcache.evict, (k0[:, :, :3], v0[:, :, :3], q0), (2,), "q_window's W must be <= N = 3"),
    "compact indices dims": (torch.ops.obcache.compact_, (k0, v0, IDX[0]), (), "indices must have 3 dims"),
    "compact indices longer than N": (torch.ops.obcache.compact_, (k0, v0, torch.zeros(1, 2, 21, dtype=torch.long)), (),
                                      r"indices must have shape \[B, H_kv, L\] = \[1, 2, L <= 20\]"),
    "compact v dims": (torch.ops.obcache.compact_, (k0, v0[0], IDX), (), "v must have 4 dims"),
    # Names, dtypes, o, wo, start and lengths: also checked without data.
    "evict score name": (lambda k, v, q, b: torch.ops.obcache.evict(k, v, q, b, score="foo"), (k0, v0, q0), (10,),
                         r"score must be one of \('attn', 'tova', 'vatp', 'value', 'key', 'joint', 'loo'\), got 'foo'"),
    "evict wo score": (lambda k, v, q, b: torch.ops.obcache.evict(k, v, q, b, score="critical"), (k0, v0, q0), (10,),
                       r"score must be one of \('attn', .*'loo'\), got 'critical'"),
    "evict group_reduce": (lambda k, v, q, b: torch.ops.obcache.evict(k, v, q, b, group_reduce="median"),
                           (k0, v0, q0), (10,), r"group_reduce must be one of \('sum', 'mean', 'max'\), got 'median'"),
    "evict negative sink, recent left out": (lambda k, v, q, b: torch.ops.obcache.evict(k, v, q, b, sink=-1),
                                             (k0, v0, q0), (2,), "sink must be >= 0, got -1"),
    "evict sink + recent past int64": (
        lambda k, v, q, b: torch.ops.obcache.evict(k, v, q, b, sink=2**62, recent=2**62), (k0, v0, q0), (10,),
        r"budget must be >= sink \+ recent = 9223372036854775808 and > 0, got 10"),
    "saliency query_reduce": (lambda k, v, q: torch.ops.obcache.saliency(k, v, q, "attn", query_reduce="mean"),
                              (k0, v0, q0), (), r"query_reduce must be one of \('sum', 'max'\), got 'mean'"),
    "saliency int dtype": (torch.ops.obcache.saliency, (k0.int(), v0.int(), q0.int()), ("attn",),
                           r"k must be float32, float16 or bfloat16 \(or float64\), got"),
    "saliency scale": (lambda k, v, q: torch.ops.obcache.saliency(k, v, q, "attn", scale=float("inf")), (k0, v0, q0),
                       (), r"scale must be finite \(or None for 1/sqrt\(D\)\), got inf"),
    "saliency o shape": (lambda k, v, q, o: torch.ops.obcache.saliency(k, v, q, "key", o=o),
                         (k0, v0, q0, q0[:, :, :2]), (), "o must have q_window's shape"),
    "saliency o dtype": (lambda k, v, q, o: torch.ops.obcache.saliency(k, v, q, "key", o=o),
                         (k0, v0, q0, q0.double()), (), "q_window and o must have the same dtype"),
    "saliency wo columns": (lambda k, v, q, wo: torch.ops.obcache.saliency(k, v, q, "critical", wo=wo),
                            (k0, v0, q0, _t(8, 32)), (), r"wo must have H_q \* D = 4 \* 16 = 64 columns"),
    "saliency wo dtype": (lambda k, v, q, wo: torch.ops.obcache.saliency(k, v, q, "critical", wo=wo),
                          (k0, v0, q0, _t(8, 64, dtype=torch.float64)), (), "v and wo must have the same dtype"),
    "laprox query_reduce": (lambda k, v, q, wo: torch.ops.obcache.saliency(k, v, q, "laprox", query_reduce="max", wo=wo),
                            (k0, v0, q0, _t(8, 64)), (), "query_reduce must be 'sum', got 'max'"),
    "projected_value_norm H_q": (torch.ops.obcache.projected_value_norm, (v0, _t(8, 48)), (1,),
                                 r"wo's H_q = wo.shape\[1\] / D = 3 must be a multiple of v's H_kv = 2"),
    "select int scores": (torch.ops.obcache.select, (_t(1, 2, 20, dtype=torch.int64),), (5,),
                          "scores must be a floating-point tensor, got"),
    "select start shape": (lambda s, st: torch.ops.obcache.select(s, 5, start=st),
                           (_t(1, 2, 20), _t(2, dtype=torch.int64)), (), r"start must have shape \[B\] = \[1\]"),
    "select start dtype": (lambda s, st: torch.ops.obcache.select(s, 5, start=st),
                           (_t(1, 2, 20), _t(1, dtype=torch.int32)), (), "start must be int64, got"),
    "select sink + recent past int64": (lambda s, b: torch.ops.obcache.select(s, b, sink=2**63 - 1, recent=1),
                                        (_t(1, 2, 20),), (8,),
                                        r"budget must be >= sink \+ recent = 9223372036854775808 and > 0, got 8"),
    "adaptive total_budget": (torch.ops.obcache.select_adaptive, (_t(1, 2, 20),), (-1,),
                              "total_budget=-1 cannot give each of 2 heads its floor"),
    "adaptive sink + recent past int64": (
        lambda s, b: torch.ops.obcache.select_adaptive(s, b, sink=2**62, recent=2**62), (_t(1, 2, 20),), (10,),
        "total_budget=10 cannot give each of 2 heads its floor of 9223372036854775808 tokens"),
    "compact int32 indices": (torch.ops.obcache.compact_, (k0, v0, IDX.int()), (), "indices must be int64, got"),
    "compact k and v N": (torch.ops.obcache.compact_, (k0, v0[:, :, :19], IDX), (),
                          r"k and v must agree on \[B, H_kv, N\]"),
    "compact last dim": (torch.ops.obcache.compact_, (_t(1, 2, 16, 20).transpose(2, 3), v0, IDX), (),
                         r"k must have a contiguous last dim \(stride 1\)"),
    "compact lengths shape": (torch.ops.obcache.compact_, (k0, v0, IDX, _t(2, dtype=torch.int64)), (),
                              r"lengths must have shape \[B, H_kv\] = \[1, 2\]"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_fake_kernel_refuses_what_the_op_refuses(case):
    op, tensors, scalars, message = CASES[case]
    copies = [t.clone() for t in tensors]
    with pytest.raises(RuntimeError, match=message):
        op(*copies, *scalars)
    assert all(torch.equal(a, b) for a, b in zip(copies, tensors))  # refused before any write
    with FakeTensorMode() as mode:
        fakes = [mode.from_tensor(t) for t in tensors]
        with pytest.raises(RuntimeError, match=message):
            op(*fakes, *scalars)


def test_the_fake_kernels_refuse_tensors_on_two_devices():
    """(On this machine only fake tensors can be on CUDA; the op's message has the same words.)"""
    with FakeTensorMode():
        k, v, q = _t(1, 2, 20, 16), _t(1, 2, 20, 16), _t(1, 4, 4, 16).to("cuda")
        with pytest.raises(RuntimeError, match="k and q_window must be on the same device, got cpu and cuda:0"):
            torch.ops.obcache.saliency(k, v, q, "joint")
        with pytest.raises(RuntimeError, match="indices and k must be on the same device, got cuda:0 and cpu"):
            torch.ops.obcache.compact_(k, v, torch.zeros(1, 2, 10, dtype=torch.long, device="cuda"))


# An optional tensor on the meta device sends a call with CPU k and v to the
# fake (Meta) kernel: it must refuse it, not return an empty result unwritten.
META_CASES = {
    "evict start": (lambda k, v, q, m: torch.ops.obcache.evict(k, v, q, 10, start=m.long()),
                    r"start must be on the same device as the scores \(cpu\), got meta"),
    "select start": (lambda k, v, q, m: torch.ops.obcache.select(k[..., 0], 10, start=m.long()),
                     r"start must be on the same device as the scores \(cpu\), got meta"),
    "compact lengths": (lambda k, v, q, m: torch.ops.obcache.compact_(k, v, IDX, m.long().expand(1, 2)),
                        "lengths and k must be on the same device, got meta and cpu"),
    "saliency o": (lambda k, v, q, m: torch.ops.obcache.saliency(k, v, q, "key", o=m.expand_as(q)),
                   "q_window and o must be on the same device, got cpu and meta"),
    "saliency wo": (lambda k, v, q, m: torch.ops.obcache.saliency(k, v, q, "critical", wo=m.expand(8, 64)),
                    "v and wo must be on the same device, got cpu and meta"),
    "projected_value_norm wo": (lambda k, v, q, m: torch.ops.obcache.projected_value_norm(v, m.expand(8, 64), 1),
                                "v and wo must be on the same device, got cpu and meta"),
}


@pytest.mark.parametrize("case", list(META_CASES))
def test_an_optional_tensor_on_the_meta_device_is_refused(case):
    call, message = META_CASES[case]
    k, v, q = _cache()
    with pytest.raises(RuntimeError, match=message):
        call(k, v, q, torch.zeros(1, device="meta"))
    assert torch.equal(k, k0) and torch.equal(v, v0)


def test_bad_arguments_fail_while_torch_compile_traces():
    k, v, q = _cache()

    @torch.compile(fullgraph=True, backend="eager")
    def step(k, v, q, budget):
        return obcache.evict(k, v, q, budget)[2]

    torch._dynamo.reset()
    # TorchRuntimeError: raised by the fake kernel while dynamo traced, before anything ran
    with pytest.raises(torch._dynamo.exc.TorchRuntimeError, match="budget must be >= sink \\+ recent = 4 and > 0, got 2"):
        step(k, v, q, 2)
    assert torch.equal(k, _cache()[0])

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

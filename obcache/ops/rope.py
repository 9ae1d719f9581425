"""torch.ops.obcache._rope_rotate_half: q * cos + rotate_half(q) * sin in one
CPU call (csrc/torch/rope_op.cpp), each operation rounded to q's dtype as
ATen rounds it. Internal: obcache.hf uses it in place of a model's
apply_rotary_pos_emb once it has checked, per rope function, dtype and head
dim, that the two agree to the bit (obcache/hf/queries.py)."""
import torch

__all__ = ["rope_rotate_half"]


def rope_rotate_half(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """[B, H, T, D] contiguous: q [B, H, T, D] rotated by cos, sin [B or 1, T, D]
    (the same dtype as q; CPU)."""
    return torch.ops.obcache._rope_rotate_half(q, cos, sin)


@torch.library.register_fake("obcache::_rope_rotate_half")
def _rope_rotate_half_fake(q, cos, sin):
    torch._check(q.dim() == 4, lambda: f"q must have 4 dims [B, H, T, D], got {q.dim()}")
    torch._check(cos.dim() == 3, lambda: f"cos must have 3 dims [B or 1, T, D], got {cos.dim()}")
    return q.new_empty(q.shape)

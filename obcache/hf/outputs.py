"""The attention output of the scoring window, taken from the model.

The key, joint and loo scores need O = softmax(Z) V of each window query.
The model's attention has just computed it over the same cache (the
attention module's forward hook evicts after that forward, before anything
else touches the cache), and o_proj receives it as its input
[B, T, H_q * head_dim]. An `OutputTap` (a forward pre-hook on each o_proj)
keeps that input, so the saliency op reads O instead of accumulating it
(a third of the key score's FLOPs). Only where the window queries are the
last rows of this very call: while decoding, the scoring queries come from
earlier steps, whose outputs saw another cache.
"""
from typing import Optional

import torch

from obcache.hf.taps import ProjectionTap

__all__ = ["OutputTap"]


class OutputTap(ProjectionTap):
    """Keeps the input of each attention module's o_proj from its latest
    call ([B, T, H_q * head_dim], `take`n by the attention module's own
    forward hook); `last_rows` cuts the scoring window's rows out of it.
    `remove` drops the hooks."""

    def __init__(self, attention):
        super().__init__(attention, "o_proj", "input")

    @staticmethod
    def last_rows(x: Optional[torch.Tensor], q: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The attention output of the last W tokens in x (taken) for the
        scoring queries q [B, H_q, W, head_dim] of the same call: a view of
        q's shape (last dim contiguous); None when x is None or does not
        match q (shape, dtype, device: e.g. under autocast)."""
        if x is None or q is None or x.dim() != 3 or x.dtype != q.dtype or x.device != q.device:
            return None
        B, Hq, W, D = q.shape
        if x.shape[0] != B or x.shape[1] < W or x.shape[2] != Hq * D:
            return None
        return x[:, x.shape[1] - W :].view(B, W, Hq, D).transpose(1, 2)

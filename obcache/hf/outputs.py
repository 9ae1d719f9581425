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
from torch import nn

__all__ = ["OutputTap", "O_SCORES"]

#: The scores that read O (obcache.ops.saliency's `o`).
O_SCORES = ("key", "joint", "loo")


class OutputTap:
    """Keeps the input of each attention module's o_proj from its latest call;
    `take` hands the last rows to the attention module's own forward hook.
    `remove` drops the hooks."""

    def __init__(self, attention):
        self._in = {}
        self._handles = []
        try:
            for attn in attention:
                self._handles.append(attn.o_proj.register_forward_pre_hook(self._keeper(attn)))
        except BaseException:
            self.remove()
            raise

    def _keeper(self, attn):
        def keep(module, args):
            self._in[attn] = args[0]

        return keep

    def take(self, attn: nn.Module) -> Optional[torch.Tensor]:
        """o_proj's input [B, T, H_q * head_dim] of attn's latest call, once
        (None when there is none)."""
        return self._in.pop(attn, None)

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

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._in.clear()

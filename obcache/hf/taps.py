"""What one projection of each attention module saw in its latest call.

The attention modules of transformers return neither their queries nor
their attention output; obcache does not patch model code, so it keeps them
with hooks on the projections that see them (q_proj's output, o_proj's
input) and hands them to the attention module's own forward hook, which
runs right after, over the same call.
"""
from typing import Optional

import torch
from torch import nn

__all__ = ["ProjectionTap"]


class ProjectionTap:
    """Keeps, per attention module, the output (side="output", a forward hook)
    or the input (side="input", a forward pre-hook) of its projection `name`
    from the latest call, until `take`n. `remove` drops the hooks."""

    def __init__(self, attention, name: str, side: str):
        if side not in ("input", "output"):
            raise ValueError(f"side must be 'input' or 'output', got {side!r}")
        self._kept = {}
        self._handles = []
        try:
            for attn in attention:
                proj = getattr(attn, name)
                if side == "output":
                    self._handles.append(proj.register_forward_hook(self._keeper(attn, lambda args, out: out)))
                else:
                    self._handles.append(proj.register_forward_pre_hook(self._keeper(attn, lambda args: args[0])))
        except BaseException:
            self.remove()
            raise

    def _keeper(self, attn, pick):
        def keep(module, *seen):
            self._kept[attn] = pick(*seen)

        return keep

    def take(self, attn: nn.Module) -> Optional[torch.Tensor]:
        """What attn's projection saw in attn's latest call, once (None when
        there is none)."""
        return self._kept.pop(attn, None)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._kept.clear()

"""Typed Python wrappers and fake (meta) kernels of torch.ops.obcache.*.
One module per op; importing it registers the op's fake kernel."""
from obcache.ops.saliency import SCORES, saliency

__all__ = ["SCORES", "saliency"]

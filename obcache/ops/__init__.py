"""Typed Python wrappers and fake (meta) kernels of torch.ops.obcache.*.
One module per op; importing it registers the op's fake kernel."""
from obcache.ops.compact import compact_
from obcache.ops.criticalkv_keep import _criticalkv_keep_fake  # noqa: F401  (internal op's fake kernel)
from obcache.ops.evict import evict
from obcache.ops.projected_value import projected_value_norm
from obcache.ops.rope import rope_rotate_half  # noqa: F401  (internal; its fake kernel, for torch.compile)
from obcache.ops.saliency import SCORES, saliency
from obcache.ops.select import select, select_adaptive

__all__ = ["SCORES", "saliency", "select", "select_adaptive", "compact_", "evict", "projected_value_norm"]

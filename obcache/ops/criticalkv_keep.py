"""torch.ops.obcache._criticalkv_keep's fake kernel (the op: a CriticalKV
eviction of one layer on CPU, csrc/torch/criticalkv_keep_op.cpp; internal,
called by obcache.policies.pruned_keep). Here so that importing obcache
registers it, as for every other op."""
import torch


@torch.library.register_fake("obcache::_criticalkv_keep")
def _criticalkv_keep_fake(base, v, wo, norm_bound, floor, first, rest, per_head, sink, recent, pool_kernel, pool):
    B, H, N = base.shape
    # per head every row keeps the same count; layer-wide the longest row's count depends on the data
    L = min(N, sink + recent + floor + first + rest) if per_head else torch.library.get_ctx().new_dynamic_size()
    idx = base.new_empty((B, H, L), dtype=torch.int64)
    return idx, base.new_empty((B, H), dtype=torch.int64), torch.empty(base.shape, dtype=torch.bool, device=base.device)

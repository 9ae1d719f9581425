"""torch.ops.obcache.compact_: in-place, order-preserving KV compaction."""
from typing import Optional

import torch

from obcache.ops import fake_checks

__all__ = ["compact_"]


def compact_(
    k: torch.Tensor, v: torch.Tensor, indices: torch.Tensor, lengths: Optional[torch.Tensor] = None
) -> None:
    """Moves the kept rows of k and v to the front, in place.

    Row i of each (b, h) becomes the old row indices[b, h, i] (for
    i < lengths[b, h] when lengths is given); rows past that are left as they
    were. Storage, strides and data_ptr of k and v do not change.

    Args:
        k, v: [B, H_kv, N, D_k] and [B, H_kv, N, D_v], any floating dtype
            (float64 too), on one device; last dim contiguous, other strides
            arbitrary (narrowed views of a preallocated cache work); must not
            share memory with each other.
        indices: int64 [B, H_kv, L], L <= N, strictly increasing per row
            (sorted, no duplicates) within [0, N) -- what `select` returns.
        lengths: optional int64 [B, H_kv] in [0, L] (what `select_adaptive`
            returns); entries past lengths[b, h] (e.g. -1 padding) are ignored.

    Invalid indices or lengths raise before anything is written. On CPU this
    is always checked; on CUDA the values are checked (a device-to-host copy
    and sync) only when the environment variable OBCACHE_DEBUG_CHECKS=1;
    shapes, dtypes and devices are always checked.
    """
    torch.ops.obcache.compact_(k, v, indices, lengths)


@torch.library.register_fake("obcache::compact_")
def _compact_fake(k, v, indices, lengths=None):
    fake_checks.compact(k, v, indices, lengths)
    return None

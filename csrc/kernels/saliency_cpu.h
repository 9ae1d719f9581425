// CPU kernel of `saliency` (torch-free; see saliency_params.h and, for the
// formulas, score_math.h). Fused per (b, h): two passes over the keys with a
// bounded per-worker workspace, never [G, W, N].
#pragma once

#include <cstddef>
#include <cstdint>

#include "saliency_params.h"

namespace obc {

// Bytes of workspace ONE worker needs (O(G * W * (D + tile) + D * tile)),
// carved in 64-byte aligned pieces; the pointer passed to saliency_cpu needs
// 8-byte alignment (64 is best: torch allocations are).
size_t saliency_cpu_workspace_bytes(const SaliencyParams& p);

// Output rows [bh_begin, bh_end) of the flattened (b, h) grid, i.e.
// out[b, h, :] for bh = b * Hkv + h. Disjoint ranges may run concurrently,
// each with its own workspace of saliency_cpu_workspace_bytes(p) bytes.
void saliency_cpu(const SaliencyParams& p, int64_t bh_begin, int64_t bh_end, void* workspace);

}  // namespace obc

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

// The same rows split over the keys, for when B * H_kv rows are fewer than
// the threads (flash-decoding on the CPU). For every row bh and key ranges
// [n_s, n_{s+1}) covering [0, N) (s = 0 .. S-1, n_0 = 0; multiples of 32
// keep the tiles whole): first saliency_cpu_split_pass1 of every range,
// each writing its softmax state (state s of row bh at
// states + s * saliency_cpu_split_state_bytes(p)), then
// saliency_cpu_split_pass2 of every range, which merges the row's S states
// in order and writes out[b, h, n_s : n_{s+1}]. Calls of one phase may run
// concurrently, each with its own workspace of
// saliency_cpu_split_workspace_bytes(p) bytes. Pass 2 recomputes Q K^T
// (there is no logit cache across the phases): a quarter more FLOPs for
// the joint score, for S times the parallelism.
size_t saliency_cpu_split_workspace_bytes(const SaliencyParams& p);
size_t saliency_cpu_split_state_bytes(const SaliencyParams& p);
void saliency_cpu_split_pass1(const SaliencyParams& p, int64_t bh, int64_t n0, int64_t n1, void* workspace,
                              void* state);
void saliency_cpu_split_pass2(const SaliencyParams& p, int64_t bh, int64_t n0, int64_t n1, const void* states,
                              int64_t S, void* workspace);

}  // namespace obc

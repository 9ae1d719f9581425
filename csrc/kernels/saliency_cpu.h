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

// Pass 1 runs over fixed key ranges [s * K, (s + 1) * K), K =
// saliency_cpu_range_keys(p), s = 0 .. saliency_cpu_ranges(p) - 1, one
// softmax state each, merged one by one in key order (flash-decoding). The
// split form below runs the ranges of a row on different threads, for when
// B * H_kv rows do not share out evenly over the threads; as the ranges and
// the merge order are the same, its output is bitwise that of
// saliency_cpu. For every row bh: first saliency_cpu_split_pass1 of every
// range s (state s of row bh at states + (bh * S + s) *
// saliency_cpu_split_state_bytes(p), S the range count), then
// saliency_cpu_split_pass2 over ranges [s0, s1) covering the row, given the
// row's S states: out[b, h, keys of those ranges]. Calls of one phase may
// run concurrently, each with its own workspace of
// saliency_cpu_split_workspace_bytes(p) bytes. `logits`, when not null, is
// the row's buffer of saliency_cpu_split_logit_bytes(p) bytes (8-byte
// aligned), the same for both phases: pass 1 keeps Q K^T there and pass 2
// reads it back. When null, pass 2 recomputes Q K^T: a quarter more FLOPs
// for the joint score.
// Per worker: the whole-row form keeps the logits of a row's first keys in
// this many bytes (all of them up to N = 32k at G W = 128 in float); the
// split form's callers hold all rows' when they fit threads times this.
constexpr size_t kSaliencyLogitCacheBytes = size_t(16) << 20;
// K depends on N alone (never on the threads, so the output does not
// either): 512 keys, so that a 2048-token prompt is 4 ranges a row and 3 KV
// heads share out evenly over 2 or 4 threads, or more (whole multiples of
// 512) above 16 ranges, so that the split form's states, one per range of
// G * W * (D + 2) values, stay at most 16 per row (1 MiB at G=4, W=32,
// D=128). A range's merge costs R * D, negligible.
constexpr int64_t kSaliencyMinRangeKeys = 512, kSaliencyMaxRanges = 16;

inline int64_t saliency_cpu_range_keys(const SaliencyParams& p) {
  const int64_t want = (p.N + kSaliencyMaxRanges - 1) / kSaliencyMaxRanges;
  const int64_t units = (want + kSaliencyMinRangeKeys - 1) / kSaliencyMinRangeKeys;
  return (units > 1 ? units : 1) * kSaliencyMinRangeKeys;
}
inline int64_t saliency_cpu_ranges(const SaliencyParams& p) {
  const int64_t K = saliency_cpu_range_keys(p);
  return (p.N + K - 1) / K;
}
size_t saliency_cpu_split_workspace_bytes(const SaliencyParams& p);
size_t saliency_cpu_split_state_bytes(const SaliencyParams& p);
size_t saliency_cpu_split_logit_bytes(const SaliencyParams& p);
void saliency_cpu_split_pass1(const SaliencyParams& p, int64_t bh, int64_t s, void* workspace, void* state,
                              void* logits);
void saliency_cpu_split_pass2(const SaliencyParams& p, int64_t bh, int64_t s0, int64_t s1, const void* states,
                              void* workspace, const void* logits);

}  // namespace obc

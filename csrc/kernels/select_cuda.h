// CUDA launchers of `select` and `select_adaptive` (torch-free). `stream` is a
// cudaStream_t passed as void* so this header needs no CUDA headers; return
// values are cudaError_t as int (0 = success). All pointers are device memory.
#pragma once

#include <cstddef>
#include <cstdint>

#include "select_params.h"

namespace obc {

// Bytes per key of select_cuda's workspace: 4 where the pooled scores are
// float values (float32 scores, max pooling or none), else 8.
inline size_t select_cuda_key_bytes(const SelectParams& p) {
  return pooled_scores_are_floats(p.dtype, p.pool_kernel, p.pool) ? 4 : 8;
}

// keys: workspace of B * H * N keys of select_cuda_key_bytes(p) each,
// 8-byte aligned.
int select_cuda(const SelectParams& p, void* keys, void* stream);

// Marks kept tokens in keep [B, H, N] and writes lengths [B, H].
// keys: workspace of B * H * N uint64.
int select_adaptive_mark_cuda(const SelectAdaptiveParams& p, uint64_t* keys, uint8_t* keep,
                              int64_t* lengths, void* stream);

// Ascending kept positions into out [B, H, Lmax], padded with -1.
int select_adaptive_emit_cuda(const uint8_t* keep, int64_t B, int64_t H, int64_t N, int64_t Lmax,
                              int64_t* out, void* stream);

}  // namespace obc

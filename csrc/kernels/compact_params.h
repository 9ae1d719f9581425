// Plain description of one in-place `compact_` call (k and v at once), read
// by the CPU kernel, the CUDA kernel and the emulated CUDA kernel. Compaction
// only moves rows, so kernels see bytes: any element type works.
#pragma once

#include <cstdint>

#include "common.h"

namespace obc {

struct CompactTensor {
  void* data = nullptr;  // [B, H, N, D], last dim contiguous
  int64_t elem_size = 0;  // bytes per element
  int64_t D = 0;
  int64_t sb = 0, sh = 0, sn = 0;  // strides in elements
};

struct CompactParams {
  CompactTensor t[2];  // k, v
  int num_tensors = 2;
  int64_t B = 0, H = 0, N = 0;
  const int64_t* indices = nullptr;  // [B, H, L] contiguous, strictly increasing per row
  int64_t L = 0;
  const int64_t* lengths = nullptr;  // [B, H] contiguous, or null (= L for every row)
};

// First problem found in the indices (kind == Ok when they are valid).
struct IndexError {
  enum Kind : int32_t { Ok = 0, OutOfRange = 1, NotIncreasing = 2, BadLength = 3 } kind = Ok;
  int64_t b = 0, h = 0, i = 0;  // where
  int64_t value = 0, prev = 0;  // indices[b, h, i] (or lengths[b, h]) and indices[b, h, i - 1]
};

}  // namespace obc

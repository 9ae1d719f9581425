// CUDA launcher of in-place `compact_` (torch-free). `stream` is a
// cudaStream_t passed as void*; returns cudaError_t as int (0 = success).
// All pointers are device memory; indices must be valid (the binding checks
// them on the host when asked, see compact_op_cuda.cpp).
#pragma once

#include <cstdint>

#include "compact_params.h"

namespace obc {

int compact_cuda(const CompactParams& p, void* stream);

}  // namespace obc

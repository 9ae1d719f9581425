// CUDA launcher of `projected_value_norm` (torch-free; kernel and algorithm in
// projected_value_cuda.cuh). Includable without CUDA headers: `stream` is a
// cudaStream_t passed as void*, the return value a cudaError_t as int
// (0 = success). v, wo and out are device memory.
#pragma once

#include "projected_value_params.h"

namespace obc {

// Writes p.out (float32). float64 inputs are not supported on CUDA (returns
// cudaErrorInvalidValue without launching); B * Hq must be <= 65535.
int projected_value_cuda(const ProjectedValueParams& p, void* stream);

}  // namespace obc

// CUDA launcher of `saliency` (torch-free; kernels in saliency_cuda.cuh, the
// algorithm at the top of saliency_cuda.cu). Includable without CUDA headers:
// `stream` is a cudaStream_t passed as void*, return values are cudaError_t as
// int (0 = success). k, v, q, out and the workspace are device memory.
#pragma once

#include <cstddef>

#include "saliency_params.h"

namespace obc {

// Bytes of device workspace saliency_cuda needs for p (partial softmax
// statistics and outputs of every key split: O(B * Hkv * splits * G * W * D)).
size_t saliency_cuda_workspace_bytes(const SaliencyParams& p);

// Writes p.out. float64 inputs are not supported on CUDA
// (returns cudaErrorInvalidValue without launching anything).
int saliency_cuda(const SaliencyParams& p, void* workspace, void* stream);

}  // namespace obc

// CUDA launcher of `saliency` (torch-free; kernels in saliency_cuda.cuh, the
// algorithm at the top of saliency_cuda.cu). Includable without CUDA headers:
// `stream` is a cudaStream_t passed as void*, return values are cudaError_t as
// int (0 = success). k, v, q, out and the workspace are device memory.
#pragma once

#include <cstddef>

#include "saliency_params.h"
#include "score_math.h"

namespace obc {

// Query rows per KV head, R = G * W (G for `tova`, which scores the last
// query only), that the kernels take: row chunks of 16 in a grid dimension
// of at most 65535, and row arithmetic in 32 bits.
constexpr long long kSaliencyCudaMaxRows = 65535LL * 16;
// Head sizes the kernels take: the FP32 kernels keep a 32-key tile of K and
// V plus 16 window rows of q and o in shared memory (D = 256: ~100 KiB, an
// sm_80+ opt-in), and the tensor-core pass 2 unrolls its products over D up
// to this.
constexpr long long kSaliencyCudaMaxHeadDim = 256;
inline long long saliency_rows(const SaliencyParams& p) {
  return p.G * (score_last_query_only(p.score) ? 1 : p.W);
}

// Bytes of device workspace saliency_cuda needs for p (partial softmax
// statistics and outputs of every key split: O(B * Hkv * splits * G * W * D)).
size_t saliency_cuda_workspace_bytes(const SaliencyParams& p);

// Writes p.out. float64 inputs are not supported on CUDA
// (returns cudaErrorInvalidValue without launching anything).
int saliency_cuda(const SaliencyParams& p, void* workspace, void* stream);

}  // namespace obc

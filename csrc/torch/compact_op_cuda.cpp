// CUDA half of compact_: device guard and launch on the current stream.
// Index values are validated on the host only with OBCACHE_DEBUG_CHECKS=1
// (compact_impl in compact_op.cpp); shapes, dtypes and devices always.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kernels/compact_cuda.h"
#include "torch/select_compact.h"

namespace obcache {

namespace {

void compact_cuda_op(at::Tensor k, at::Tensor v, const at::Tensor& indices,
                     const std::optional<at::Tensor>& lengths) {
  compact_impl(k, v, indices, lengths);
}
}  // namespace

void compact_run_cuda(at::Tensor& k, at::Tensor& v, const at::Tensor& indices,
                      const std::optional<at::Tensor>& lengths) {
  const c10::cuda::CUDAGuard guard(k.device());
  const at::Tensor idx = indices.contiguous();
  at::Tensor len;
  if (lengths.has_value()) len = lengths->contiguous();
  const obc::CompactParams p = compact_params(k, v, idx, len);
  const int err = obc::compact_cuda(p, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "compact_ CUDA kernel failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

}  // namespace obcache

TORCH_LIBRARY_IMPL(obcache, CUDA, m) { m.impl("compact_", &obcache::compact_cuda_op); }

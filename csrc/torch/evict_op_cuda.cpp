// CUDA registration of evict: the device guard, then the shared evict_impl
// (evict_op.cpp), whose saliency / select / compact pieces launch on the
// current stream of k's device.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "torch/select_compact.h"

namespace {

at::Tensor evict_cuda(at::Tensor k, at::Tensor v, const at::Tensor& q_window, int64_t budget,
                      c10::string_view score, int64_t sink, std::optional<int64_t> recent, int64_t pool_kernel,
                      c10::string_view pool, c10::string_view group_reduce, std::optional<double> scale,
                      const std::optional<at::Tensor>& start, const std::optional<at::Tensor>& o) {
  const c10::cuda::CUDAGuard guard(k.device());
  return obcache::evict_impl(k, v, q_window, budget, score, sink, recent, pool_kernel, pool, group_reduce, scale,
                             start, o);
}

}  // namespace

TORCH_LIBRARY_IMPL(obcache, CUDA, m) { m.impl("evict", &evict_cuda); }

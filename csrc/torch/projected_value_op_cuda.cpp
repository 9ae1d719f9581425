// CUDA half of torch.ops.obcache.projected_value_norm: device guard, output
// from torch's caching allocator, launch on the current stream. Checks live
// in projected_value_op.cpp, which calls back here for CUDA tensors.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kernels/projected_value_cuda.h"
#include "torch/projected_value_args.h"

namespace obcache {

at::Tensor projected_value_run_cuda(const obc::ProjectedValueParams& base, const at::Tensor& v) {
  const c10::cuda::CUDAGuard guard(v.device());
  obc::ProjectedValueParams prm = base;
  const int64_t Hq = prm.Hkv * prm.G;
  TORCH_CHECK(prm.B * Hq <= 65535, "B * H_q must be <= 65535 on CUDA, got ", prm.B * Hq);
  at::Tensor out = at::empty({prm.B, Hq, prm.N}, v.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  prm.out = out.data_ptr();
  const int err = obc::projected_value_cuda(prm, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "projected_value_norm CUDA kernel failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
  return out;
}

}  // namespace obcache

TORCH_LIBRARY_IMPL(obcache, CUDA, m) { m.impl("projected_value_norm", &obcache::projected_value_norm_impl); }

// CUDA half of torch.ops.obcache.saliency: device guard, output and
// workspace from torch's caching allocator, launch on the current stream.
// Checks live in saliency_op.cpp (saliency_impl), which calls back here for
// CUDA tensors.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kernels/saliency_cuda.h"
#include "torch/saliency_args.h"

namespace obcache {

at::Tensor saliency_run_cuda(const obc::SaliencyParams& base, const at::Tensor& k) {
  const c10::cuda::CUDAGuard guard(k.device());
  obc::SaliencyParams p = base;
  TORCH_CHECK(p.D <= obc::kSaliencyCudaMaxHeadDim, "k's head dim D must be <= ", obc::kSaliencyCudaMaxHeadDim,
              " on CUDA, got D = ", p.D);
  TORCH_CHECK(p.B * p.Hkv <= 65535, "B * H_kv must be <= 65535 on CUDA, got ", p.B * p.Hkv);
  TORCH_CHECK(obc::saliency_rows(p) <= obc::kSaliencyCudaMaxRows, "q_window's query rows per KV head (G * W = ",
              obc::saliency_rows(p), ") must be <= ", obc::kSaliencyCudaMaxRows, " on CUDA");
  at::Tensor out = at::empty({p.B, p.Hkv, p.N}, k.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  p.out = out.data_ptr();
  const size_t ws_bytes = obc::saliency_cuda_workspace_bytes(p);
  at::Tensor ws = at::empty({static_cast<int64_t>(ws_bytes)}, k.options().dtype(at::kByte));
  const int err = obc::saliency_cuda(p, ws.data_ptr(), c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "saliency CUDA kernel failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
  return out;
}

}  // namespace obcache

TORCH_LIBRARY_IMPL(obcache, CUDA, m) { m.impl("saliency", &obcache::saliency_op); }

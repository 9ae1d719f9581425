// CUDA halves of select / select_adaptive: device guard, workspace, launch on
// the current stream. Checks live in select_op.cpp (select_impl /
// select_adaptive_impl), which call back here for CUDA tensors.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "kernels/select_cuda.h"
#include "torch/select_compact.h"

namespace obcache {

namespace {
void check_launch(int err, const char* what) {
  TORCH_CHECK(err == 0, what, " failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}
}  // namespace

at::Tensor select_run_cuda(const obc::SelectParams& base, const at::Tensor& scores, const at::Tensor& start) {
  const c10::cuda::CUDAGuard guard(scores.device());
  obc::SelectParams p = base;
  TORCH_CHECK(p.H * p.N < (int64_t(1) << 31), "select on CUDA needs H * N < 2^31, got ", p.H * p.N);
  at::Tensor out = at::empty({p.B, p.H, p.budget}, scores.options().dtype(at::kLong));
  // Keys of 4 bytes where the pooled scores are float values, else 8 (the
  // allocator's blocks are 512-byte aligned).
  const int64_t key_bytes = static_cast<int64_t>(obc::select_cuda_key_bytes(p));
  at::Tensor keys = at::empty({p.B * p.H * p.N * key_bytes}, scores.options().dtype(at::kByte));
  at::Tensor st = start.defined() ? start.contiguous() : start;
  p.scores = scores.data_ptr();
  p.start = st.defined() ? st.data_ptr<int64_t>() : nullptr;
  p.out = out.data_ptr<int64_t>();
  check_launch(obc::select_cuda(p, keys.data_ptr(), c10::cuda::getCurrentCUDAStream().stream()),
               "select CUDA kernel");
  return out;
}

std::tuple<at::Tensor, at::Tensor> select_adaptive_run_cuda(const obc::SelectAdaptiveParams& base,
                                                            const at::Tensor& scores) {
  const c10::cuda::CUDAGuard guard(scores.device());
  obc::SelectAdaptiveParams p = base;
  TORCH_CHECK(p.H * p.N < (int64_t(1) << 31), "select_adaptive on CUDA needs H * N < 2^31, got ", p.H * p.N);
  const auto opts = scores.options();
  at::Tensor keys = at::empty({p.B * p.H * p.N}, opts.dtype(at::kLong));
  at::Tensor keep = at::zeros({p.B, p.H, p.N}, opts.dtype(at::kByte));
  at::Tensor lengths = at::empty({p.B, p.H}, opts.dtype(at::kLong));
  p.scores = scores.data_ptr();
  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  check_launch(obc::select_adaptive_mark_cuda(p, reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>()),
                                              keep.data_ptr<uint8_t>(), lengths.data_ptr<int64_t>(), stream),
               "select_adaptive CUDA kernel");
  // The output's length is data-dependent (the longest head): one sync.
  const int64_t Lmax = p.B == 0 ? 0 : lengths.max().item<int64_t>();
  at::Tensor out = at::empty({p.B, p.H, Lmax}, opts.dtype(at::kLong));
  check_launch(obc::select_adaptive_emit_cuda(keep.data_ptr<uint8_t>(), p.B, p.H, p.N, Lmax,
                                              out.data_ptr<int64_t>(), stream),
               "select_adaptive CUDA emit kernel");
  return {out, lengths};
}

}  // namespace obcache

TORCH_LIBRARY_IMPL(obcache, CUDA, m) {
  m.impl("select", &obcache::select_impl);
  m.impl("select_adaptive", &obcache::select_adaptive_impl);
}

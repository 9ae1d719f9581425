// Launcher of the projected_value_norm kernel (projected_value_cuda.cuh has
// the algorithm): picks the element type and the norm at compile time.
#include "projected_value_cuda.h"

#include "cuda_compat.h"
#include "projected_value_cuda.cuh"

namespace obc {
namespace {

template <typename E>
int launch(const ProjectedValueParams& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.N + pvn::kRows - 1) / pvn::kRows),
                  static_cast<unsigned>(p.B * p.Hkv * p.G));
  const dim3 block(pvn::kThreads);
  if (p.p == 1) OBC_LAUNCH((pvn::projected_value_kernel<E, 1>), grid, block, 0, stream, p);
  else OBC_LAUNCH((pvn::projected_value_kernel<E, 2>), grid, block, 0, stream, p);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int projected_value_cuda(const ProjectedValueParams& p, void* stream) {
  if (p.dtype == DType::F64 || (p.p != 1 && p.p != 2) || p.B * p.Hkv * p.G > 65535)
    return static_cast<int>(cudaErrorInvalidValue);
  if (p.B * p.Hkv * p.G * p.N == 0) return 0;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::F32: return launch<float>(p, st);
    case DType::F16: return launch<half_t>(p, st);
    case DType::BF16: return launch<bf16_t>(p, st);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace obc

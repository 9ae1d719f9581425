// Launcher of the projected_value_norm kernels: bfloat16 and float16 with
// D <= 256 on the tensor cores of sm_80+ (projected_value_mma_cuda.cuh),
// everything else on the FP32 units (projected_value_cuda.cuh); the element
// type and the norm are picked at compile time.
#include "projected_value_cuda.h"

#include "cuda_compat.h"
#include "device_caps_cuda.h"
#include "projected_value_cuda.cuh"
#include "projected_value_mma_cuda.cuh"

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

template <typename E, int MT>
int launch_mma(const ProjectedValueParams& p, cudaStream_t stream) {
  constexpr int kRows = pvn::mma_rows(MT);
  const dim3 grid(static_cast<unsigned>((p.N + kRows - 1) / kRows), static_cast<unsigned>(p.B * p.Hkv * p.G));
  const dim3 block(pvn::kMmaThreads);
  const size_t smem = pvn::mma_smem_bytes(p.D);
  size_t limit = 0;
  cudaError_t err = smem_optin_limit(&limit);
  if (err != cudaSuccess) return static_cast<int>(err);
  const bool vec =
      p.D % 8 == 0 && mma::rows_aligned16(p.v, p.v_sb, p.v_sh, p.v_sn) && mma::rows_aligned16(p.wo, p.wo_so, 0, 0);
  const auto kernel =
      p.p == 1 ? pvn::projected_value_mma_kernel<E, 1, MT> : pvn::projected_value_mma_kernel<E, 2, MT>;
  if ((err = allow_smem(kernel, smem, limit)) != cudaSuccess) return static_cast<int>(err);
  OBC_LAUNCH(kernel, grid, block, smem, stream, p, vec);
  return static_cast<int>(cudaGetLastError());
}

// 16-bit inputs: on the tensor cores where the device has them and v's
// fragments fit in registers (D <= 256), else on the FP32 units.
template <typename E>
int launch_16bit(const ProjectedValueParams& p, cudaStream_t stream) {
  bool tc = false;
  const cudaError_t err = has_tensor_cores(&tc);
  if (err != cudaSuccess) return static_cast<int>(err);
  if (!tc || p.D < 1 || p.D > pvn::kMmaMaxDepth) return launch<E>(p, stream);
  return pvn::mma_m_tiles(p.D) == 2 ? launch_mma<E, 2>(p, stream) : launch_mma<E, 1>(p, stream);
}

}  // namespace

int projected_value_cuda(const ProjectedValueParams& p, void* stream) {
  if (p.dtype == DType::F64 || (p.p != 1 && p.p != 2) || p.B * p.Hkv * p.G > 65535)
    return static_cast<int>(cudaErrorInvalidValue);
  if (p.B * p.Hkv * p.G * p.N == 0) return 0;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::F32: return launch<float>(p, st);
    case DType::F16: return launch_16bit<half_t>(p, st);
    case DType::BF16: return launch_16bit<bf16_t>(p, st);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace obc

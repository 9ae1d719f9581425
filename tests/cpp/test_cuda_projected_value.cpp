// The nvcc-built projected_value_norm kernel on a real GPU against the CPU
// kernel (device memory, the default stream). Skips without a usable GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "cuda_device.h"
#include "projected_value_cpu.h"
#include "projected_value_cuda.h"
#include "saliency_naive.h"  // grid_values, from_float

namespace {

using cuda_test::have_gpu;
using cuda_test::to_device;

template <typename E>
void check(int64_t B, int64_t Hkv, int64_t G, int64_t N, int64_t D, int64_t hidden, obc::DType dt, int norm,
           std::mt19937& rng) {
  obc::ProjectedValueParams p;
  p.dtype = dt, p.B = B, p.Hkv = Hkv, p.G = G, p.N = N, p.D = D, p.hidden = hidden, p.p = norm;
  p.v_sn = D, p.v_sh = N * D, p.v_sb = Hkv * N * D, p.wo_so = Hkv * G * D;
  std::vector<E> v(B * p.v_sb), wo(hidden * p.wo_so);
  for (auto* t : {&v, &wo}) {
    const std::vector<float> x = naive::grid_values(t->size(), rng);
    for (size_t i = 0; i < x.size(); ++i) (*t)[i] = naive::from_float<E>(x[i]);
  }
  std::vector<float> want(B * Hkv * G * N), got(want.size());
  std::vector<double> ws(obc::projected_value_cpu_workspace_bytes(p) / 8 + 8);
  p.v = v.data(), p.wo = wo.data(), p.out = want.data();
  obc::projected_value_cpu(p, 0, obc::projected_value_cpu_tasks(p), ws.data());
  E *dv = to_device(v), *dw = to_device(wo);
  float* dout = nullptr;
  ASSERT_TRUE(dv && dw);
  ASSERT_EQ(cudaMalloc(&dout, want.size() * sizeof(float)), cudaSuccess);
  p.v = dv, p.wo = dw, p.out = dout;
  ASSERT_EQ(obc::projected_value_cuda(p, nullptr), 0);
  ASSERT_EQ(cudaMemcpy(got.data(), dout, got.size() * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  cudaFree(dv);
  cudaFree(dw);
  cudaFree(dout);
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(got[i], want[i], 1e-5 * (1 + std::fabs(want[i]))) << "p=" << norm << " N=" << N << " at " << i;
}

TEST(CudaProjectedValue, MatchesCpu) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(1);
  check<float>(1, 2, 4, 1000, 128, 300, obc::DType::F32, 1, rng);
  check<float>(2, 3, 3, 257, 72, 100, obc::DType::F32, 2, rng);
  check<obc::half_t>(1, 2, 2, 130, 64, 130, obc::DType::F16, 2, rng);
  check<obc::bf16_t>(1, 2, 2, 130, 64, 130, obc::DType::BF16, 1, rng);
}

}  // namespace

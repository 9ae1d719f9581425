// The nvcc-built saliency kernels on a real GPU against the CPU kernel
// (device memory, the default stream), computing O or given it
// (SaliencyParams::o). Skips without a usable GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "cuda_device.h"
#include "saliency_cpu.h"
#include "saliency_cuda.h"
#include "saliency_naive.h"

namespace {

using cuda_test::have_gpu;
using cuda_test::to_device;

struct Case {
  int64_t B, H, G, W, N, D;
  bool causal;
};

// given_o: both kernels read an arbitrary O laid out as q.
template <typename E>
void check(const Case& c, obc::DType dt, std::mt19937& rng, bool given_o = false) {
  const int64_t sn = c.D, sh = c.N * sn, sb = c.H * sh, qb = c.H * c.G * c.W * c.D;
  std::vector<E> k(c.B * sb), v(c.B * sb), q(c.B * qb), o(c.B * qb);
  for (auto* t : {&k, &v, &q, &o}) {
    const std::vector<float> x = naive::grid_values(t->size(), rng);
    for (size_t i = 0; i < x.size(); ++i) (*t)[i] = naive::from_float<E>(x[i]);
  }
  E *dk = to_device(k), *dv = to_device(v), *dq = to_device(q), *d_o = to_device(o);
  ASSERT_TRUE(dk && dv && dq && d_o);
  for (int s = 0; s < 7; ++s) {
    obc::SaliencyParams p;
    p.dtype = dt;
    p.B = c.B, p.Hkv = c.H, p.G = c.G, p.W = c.W, p.N = c.N, p.D = c.D;
    p.k_sb = p.v_sb = sb, p.k_sh = p.v_sh = sh, p.k_sn = p.v_sn = sn;
    p.q_sb = c.H * c.G * c.W * c.D, p.q_sh = c.W * c.D, p.q_sw = c.D;
    p.o_sb = p.q_sb, p.o_sh = p.q_sh, p.o_sw = p.q_sw;
    p.scale = 0.125f, p.causal = c.causal, p.score = static_cast<obc::Score>(s);
    p.group_reduce = static_cast<obc::GroupReduce>(s % 3);
    p.query_reduce = static_cast<obc::QueryReduce>(s % 2);
    std::vector<float> want(c.B * c.H * c.N), got(want.size());
    std::vector<double> cws(obc::saliency_cpu_workspace_bytes(p) / 8 + 8);
    p.k = k.data(), p.v = v.data(), p.q = q.data(), p.out = want.data();
    if (given_o) p.o = o.data();
    obc::saliency_cpu(p, 0, c.B * c.H, cws.data());
    float* dout = nullptr;
    void* dws = nullptr;
    ASSERT_EQ(cudaMalloc(&dout, want.size() * sizeof(float)), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dws, obc::saliency_cuda_workspace_bytes(p) + 16), cudaSuccess);
    p.k = dk, p.v = dv, p.q = dq, p.out = dout;
    if (given_o) p.o = d_o;
    ASSERT_EQ(obc::saliency_cuda(p, dws, nullptr), 0);
    ASSERT_EQ(cudaMemcpy(got.data(), dout, got.size() * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
    cudaFree(dout);
    cudaFree(dws);
    // 1e-4 of the largest score: float32 sums in another order than the CPU
    // kernel's and the GPU's ex2.approx (2^-22 relative), which the emulated
    // kernels (2e-5, test_emu_saliency.cpp) do not model; 5x that.
    double mag = 0;
    for (float x : want) mag = std::max(mag, std::fabs(static_cast<double>(x)));
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_NEAR(got[i], want[i], 1e-4 * std::max(mag, 1e-30)) << "score " << s << " N=" << c.N << " at " << i;
  }
  cudaFree(dk);
  cudaFree(dv);
  cudaFree(dq);
  cudaFree(d_o);
}

TEST(CudaSaliency, MatchesCpu) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(1);
  check<float>({1, 2, 4, 32, 3001, 128, true}, obc::DType::F32, rng);
  check<float>({2, 3, 3, 17, 257, 72, false}, obc::DType::F32, rng);
  check<float>({1, 1, 1, 1, 1, 64, true}, obc::DType::F32, rng);
  check<obc::half_t>({1, 2, 2, 8, 1000, 64, true}, obc::DType::F16, rng);
  check<obc::bf16_t>({1, 2, 2, 8, 1000, 256, true}, obc::DType::BF16, rng);
  // More than 16 rows: both passes on the tensor cores (sm_80+), both 16-bit types.
  check<obc::half_t>({1, 2, 4, 32, 3001, 128, true}, obc::DType::F16, rng);
  check<obc::bf16_t>({1, 2, 4, 32, 3001, 128, true}, obc::DType::BF16, rng);
}

TEST(CudaSaliency, GivenAttentionOutputMatchesCpu) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(2);
  check<float>({1, 2, 4, 32, 3001, 128, true}, obc::DType::F32, rng, true);
  check<obc::bf16_t>({1, 2, 2, 8, 1000, 64, false}, obc::DType::BF16, rng, true);
  check<obc::half_t>({1, 2, 2, 32, 1000, 64, false}, obc::DType::F16, rng, true);
}

}  // namespace

// The CUDA projected_value_norm kernel (projected_value_cuda.cu, compiled
// here under the SIMT emulation) against the CPU kernel, at sizes that hit
// the edges: N not a multiple of the 64-token block, hidden not a multiple of
// the 64-column tile, D not a multiple of the 16-deep slice, G in {1, 3},
// padded strides, both norms, every CUDA dtype.
#include "cuda_compat.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "projected_value_cpu.h"
#include "projected_value_cuda.cu"  // the real source
#include "saliency_naive.h"         // grid_values, from_float

namespace {

struct Case {
  int64_t B, Hkv, G, N, D, hidden, pad;
};

template <typename E>
void check(const Case& c, obc::DType dt, int norm, std::mt19937& rng) {
  obc::ProjectedValueParams p;
  p.dtype = dt, p.B = c.B, p.Hkv = c.Hkv, p.G = c.G, p.N = c.N, p.D = c.D, p.hidden = c.hidden, p.p = norm;
  p.v_sn = c.D + c.pad, p.v_sh = (c.N + 1) * p.v_sn, p.v_sb = c.Hkv * p.v_sh;
  p.wo_so = c.Hkv * c.G * c.D + c.pad;
  std::vector<E> v(c.B * p.v_sb), wo(c.hidden * p.wo_so);
  const auto fill = [&rng](std::vector<E>& t) {
    const std::vector<float> x = naive::grid_values(t.size(), rng);
    for (size_t i = 0; i < x.size(); ++i) t[i] = naive::from_float<E>(x[i]);
  };
  fill(v), fill(wo);
  p.v = v.data(), p.wo = wo.data();
  std::vector<float> want(c.B * c.Hkv * c.G * c.N), got(want.size(), -12345.0f);
  std::vector<double> ws(obc::projected_value_cpu_workspace_bytes(p) / 8 + 8);
  p.out = want.data();
  obc::projected_value_cpu(p, 0, obc::projected_value_cpu_tasks(p), ws.data());
  p.out = got.data();
  ASSERT_EQ(obc::projected_value_cuda(p, nullptr), 0);
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(got[i], want[i], 2e-6 * (1 + std::fabs(want[i])))
        << "p=" << norm << " N=" << c.N << " D=" << c.D << " hidden=" << c.hidden << " at " << i;
}

TEST(EmuProjectedValue, Float32OddSizesBothNorms) {
  std::mt19937 rng(1);
  for (int norm : {1, 2}) {
    // N = 70: one full and one partial block; hidden = 100: a partial tile;
    // D = 72: a partial 16-deep slice.
    check<float>({1, 2, 3, 70, 72, 100, 3}, obc::DType::F32, norm, rng);
    check<float>({2, 1, 1, 5, 20, 33, 0}, obc::DType::F32, norm, rng);
  }
}

// LaProx's L2 path multiplies v by each head block's QR factor R_g^T, so on
// CUDA the kernel runs with hidden == D: one full 64-column tile (D = 64) and
// a full plus a partial tile (D = 72).
TEST(EmuProjectedValue, HiddenEqualsHeadDim) {
  std::mt19937 rng(4);
  check<float>({1, 3, 3, 130, 64, 64, 0}, obc::DType::F32, 2, rng);
  check<float>({1, 2, 2, 70, 72, 72, 1}, obc::DType::F32, 2, rng);
  check<obc::bf16_t>({1, 1, 2, 37, 64, 64, 0}, obc::DType::BF16, 2, rng);
}

TEST(EmuProjectedValue, HalfAndBFloat16) {
  std::mt19937 rng(2);
  check<obc::half_t>({1, 1, 2, 37, 24, 70, 1}, obc::DType::F16, 1, rng);
  check<obc::bf16_t>({1, 1, 2, 37, 24, 70, 1}, obc::DType::BF16, 2, rng);
}

TEST(EmuProjectedValue, ZeroHiddenGivesZero) {
  std::mt19937 rng(3);
  check<float>({1, 1, 2, 5, 8, 0, 0}, obc::DType::F32, 2, rng);
}

TEST(EmuProjectedValue, Float64AndBadNormAreRejected) {
  obc::ProjectedValueParams p;
  p.B = p.Hkv = p.G = p.N = p.D = p.hidden = 1;
  p.dtype = obc::DType::F64;
  EXPECT_NE(obc::projected_value_cuda(p, nullptr), 0);
  p.dtype = obc::DType::F32, p.p = 3;
  EXPECT_NE(obc::projected_value_cuda(p, nullptr), 0);
}

}  // namespace

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

// bfloat16 and float16 with D <= 256 on an sm_80+ GPU: the tensor-core
// kernel (projected_value_mma_cuda.cuh), against the CPU kernel at the
// float32 tolerance above (v and W_o are 16-bit values, so the products are
// exact and only the summation order differs). Two m-tiles per warp (256
// tokens per block) up to D = 128: N = 70, one block, five of its eight
// warps past N; N = 300, a full block and one with 44 tokens (v staged in
// two 128-row halves, the second all zeros); N = 513, a last block of one
// token. One m-tile (128 tokens per block, 66 KiB of shared memory: the
// opt-in) at D = 256 and 136 (N = 150 and 129: a last block of 22 tokens and
// of one). hidden = 100: a full and a partial 64-column tile; 33: one
// partial tile; 640: ten tiles through the double buffer. D = 128 (8
// steps), 64, 72 and 136 (a 16-deep step half padding); aligned rows
// (cp.async) and padded ones (pad 1: 16-bit loads), D = 13 (16-bit loads, 3
// columns of padding); G = 1, 2, 3.
TEST(EmuProjectedValue, SixteenBitOnTensorCores) {
  std::mt19937 rng(5);
  const Case cases[] = {{1, 2, 3, 70, 64, 100, 0},  {1, 1, 2, 300, 128, 33, 0}, {2, 1, 1, 40, 72, 640, 8},
                        {1, 1, 3, 70, 72, 100, 1},  {1, 2, 1, 37, 13, 70, 0},   {1, 1, 1, 513, 128, 64, 0},
                        {1, 1, 2, 150, 256, 70, 0}, {1, 2, 1, 129, 136, 100, 1}};
  for (const Case& c : cases)
    for (int norm : {1, 2}) {
      long long before = simt::mma_instructions();
      check<obc::bf16_t>(c, obc::DType::BF16, norm, rng);
      EXPECT_GT(simt::mma_instructions(), before) << "bf16 D=" << c.D << " N=" << c.N;
      before = simt::mma_instructions();
      check<obc::half_t>(c, obc::DType::F16, norm, rng);
      EXPECT_GT(simt::mma_instructions(), before) << "f16 D=" << c.D << " N=" << c.N;
    }
}

// Where the tensor-core kernel does not run, 16-bit inputs take the FP32
// kernel and no mma instruction runs: D > 256 (v's fragments would not fit
// in registers), an emulated sm_75 (no bf16 / f16 mma.sync m16n8k16), and
// OBCACHE_CUDA_TENSOR_CORES=0 on a GPU that has them.
TEST(EmuProjectedValue, SixteenBitElsewhereStaysOnTheFp32Units) {
  std::mt19937 rng(6);
  const long long before = simt::mma_instructions();
  const auto both = [&rng](const Case& c, int norm) {
    check<obc::bf16_t>(c, obc::DType::BF16, norm, rng);
    check<obc::half_t>(c, obc::DType::F16, norm, rng);
  };
  both({1, 1, 2, 40, 264, 70, 0}, 2);
  EXPECT_EQ(simt::mma_instructions(), before);
  simt::set_compute_capability_major(7);
  both({1, 1, 2, 40, 64, 70, 0}, 1);
  EXPECT_EQ(simt::mma_instructions(), before);
  simt::set_compute_capability_major(9);
  setenv("OBCACHE_CUDA_TENSOR_CORES", "0", 1);
  both({1, 1, 2, 40, 64, 70, 0}, 1);
  EXPECT_EQ(simt::mma_instructions(), before);
  unsetenv("OBCACHE_CUDA_TENSOR_CORES");
}

// An Inf in v makes every product of its row Inf or NaN; the columns the
// last tile pads with zeros must not add 0 * Inf = NaN to a norm that is Inf
// (all of W_o is finite and non-zero here, so the CPU kernel gives +Inf).
TEST(EmuProjectedValue, InfInVStaysInfPastThePaddedColumns) {
  obc::ProjectedValueParams p;
  p.dtype = obc::DType::BF16, p.B = 1, p.Hkv = 1, p.G = 1, p.N = 3, p.D = 16, p.hidden = 40, p.p = 1;
  p.v_sn = 16, p.v_sh = 48, p.v_sb = 48, p.wo_so = 16;
  std::vector<obc::bf16_t> v(48, naive::from_float<obc::bf16_t>(0.5f)), wo(40 * 16);
  for (size_t i = 0; i < wo.size(); ++i) wo[i] = naive::from_float<obc::bf16_t>(i % 2 ? 0.25f : 0.5f);
  v[16 + 3] = naive::from_float<obc::bf16_t>(INFINITY);
  std::vector<float> out(3, -1.0f);
  p.v = v.data(), p.wo = wo.data(), p.out = out.data();
  const long long before = simt::mma_instructions();
  ASSERT_EQ(obc::projected_value_cuda(p, nullptr), 0);
  EXPECT_GT(simt::mma_instructions(), before);
  EXPECT_EQ(out[1], INFINITY);
  EXPECT_FLOAT_EQ(out[0], 40 * 3.0f);  // each column: 0.5 x 8 x (0.5 + 0.25) = 3
  EXPECT_FLOAT_EQ(out[2], out[0]);
}

TEST(EmuProjectedValue, ZeroHiddenGivesZero) {
  std::mt19937 rng(3);
  check<float>({1, 1, 2, 5, 8, 0, 0}, obc::DType::F32, 2, rng);
  check<obc::bf16_t>({1, 1, 2, 5, 8, 0, 0}, obc::DType::BF16, 2, rng);  // the tensor-core kernel's zero tiles
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

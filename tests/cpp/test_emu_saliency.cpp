// The real CUDA saliency kernels (saliency_cuda.cu, compiled here under the
// SIMT emulation) against the CPU kernel, at sizes that hit the edges: N not
// a multiple of the 32-key tile, rows not a multiple of the 32-row chunk,
// D not a multiple of the float4 the products read, several key splits
// (flash-decoding combine), W = 1, G = 1, D = 72 and 256, causal
// and not, strided inputs, every score and reduction, every CUDA dtype, and
// the window's attention output given by the caller (SaliencyParams::o).
// cuda_compat.h first: under OBC_SIMT_EMULATION it brings the emulated
// __host__ / __device__ that common.h uses.
#include "cuda_compat.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "saliency_cpu.h"
#include "saliency_cuda.cu"  // the real source
#include "saliency_naive.h"

namespace {

using obc::Score;

struct Case {
  int64_t B, H, G, W, N, D, pad;
  bool causal;
};

// p's scores from the CPU kernel and from the CUDA kernels (emulated).
std::vector<float> cpu_scores(obc::SaliencyParams p) {
  std::vector<float> out(p.B * p.Hkv * p.N);
  std::vector<double> ws(obc::saliency_cpu_workspace_bytes(p) / 8 + 8);
  p.out = out.data();
  obc::saliency_cpu(p, 0, p.B * p.Hkv, ws.data());
  return out;
}
std::vector<float> cuda_scores(obc::SaliencyParams p) {
  std::vector<float> out(p.B * p.Hkv * p.N, -12345.0f);
  std::vector<float> ws(obc::saliency_cuda_workspace_bytes(p) / 4 + 1, NAN);
  p.out = out.data();
  EXPECT_EQ(obc::saliency_cuda(p, ws.data(), nullptr), 0);
  return out;
}
// got within tol of want, relative to want's largest magnitude.
void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol, const std::string& what) {
  double mag = 0;
  for (float x : want) mag = std::max(mag, std::fabs(static_cast<double>(x)));
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(got[i], want[i], tol * std::max(mag, 1e-30)) << what << " at " << i;
}

// Scores `scores` (bit s = Score s); with all_reductions, each score runs two
// of the six (group, query) reductions, so that every reduction meets two
// scores (the reductions themselves are score-independent code). given_o:
// both kernels read an arbitrary O (laid out as q) instead of computing it.
// v_near != 0: every value is v_near + x / 32 instead of x (x on the grid),
// so that v - o cancels in the key and joint scores, and the scores are
// checked against the float64 reference (naive::saliency) instead of the CPU
// kernels; tol: relative to the largest score. v_scale multiplies every
// value (after v_near), a power of two.
template <typename E>
void check_case(const Case& c, obc::DType dt, std::mt19937& rng, bool all_reductions, unsigned scores = 0x7f,
                bool given_o = false, float v_near = 0.0f, double tol = 2e-5, float v_scale = 1.0f) {
  const int64_t sn = c.D + c.pad, sh = (c.N + 1) * sn, sb = c.H * sh;
  const int64_t qw = c.D + c.pad, qh = c.W * qw, qb = c.H * c.G * qh;
  std::vector<E> k(c.B * sb), v(c.B * sb), q(c.B * qb), o(c.B * qb);
  for (auto* t : {&k, &v, &q, &o}) {
    const std::vector<float> x = naive::grid_values(t->size(), rng);
    const bool near = t == &v && v_near != 0.0f;
    const float scale = t == &v ? v_scale : 1.0f;
    for (size_t i = 0; i < x.size(); ++i) (*t)[i] = naive::from_float<E>((near ? v_near + x[i] / 32 : x[i]) * scale);
  }
  for (int s = 0; s < 7; ++s)
    for (int j = 0; j < (all_reductions ? 2 : 1); ++j) {
      if (!(scores >> s & 1u)) continue;
      const int red = all_reductions ? (s + 3 * j) % 6 : 0;
      obc::SaliencyParams p;
      p.k = k.data(), p.v = v.data(), p.q = q.data(), p.dtype = dt;
      p.B = c.B, p.Hkv = c.H, p.G = c.G, p.W = c.W, p.N = c.N, p.D = c.D;
      p.k_sb = p.v_sb = sb, p.k_sh = p.v_sh = sh, p.k_sn = p.v_sn = sn;
      p.q_sb = qb, p.q_sh = qh, p.q_sw = qw;
      if (given_o) p.o = o.data(), p.o_sb = qb, p.o_sh = qh, p.o_sw = qw;
      p.scale = 0.3f, p.causal = c.causal, p.score = static_cast<Score>(s);
      p.group_reduce = static_cast<obc::GroupReduce>(red % 3);
      p.query_reduce = static_cast<obc::QueryReduce>(red / 3);
      std::vector<float> want = cpu_scores(p);
      const std::vector<float> got = cuda_scores(p);
      if (v_near != 0.0f) {
        std::vector<float> kf(k.size()), vf(v.size()), qf(q.size());
        for (size_t i = 0; i < k.size(); ++i) kf[i] = obc::Elem<E>::load(k[i]), vf[i] = obc::Elem<E>::load(v[i]);
        for (size_t i = 0; i < q.size(); ++i) qf[i] = obc::Elem<E>::load(q[i]);
        const std::vector<double> ref = naive::saliency(p, {kf.data(), sb, sh, sn}, {vf.data(), sb, sh, sn},
                                                        {qf.data(), qb, qh, qw}, p.scale);
        want.assign(ref.begin(), ref.end());
      }
      expect_close(got, want, tol,
                   "N=" + std::to_string(c.N) + " W=" + std::to_string(c.W) + " G=" + std::to_string(c.G) +
                       " D=" + std::to_string(c.D) + " causal=" + std::to_string(c.causal) +
                       " score=" + std::to_string(s) + " reduction=" + std::to_string(red));
      if (testing::Test::HasFatalFailure()) return;
    }
}

TEST(EmuSaliency, Float32OddSizesEveryScore) {
  std::mt19937 rng(1);
  // N = 45: one full and one partial tile; rows = 3 * 7 = 21 (two chunks).
  check_case<float>({1, 2, 3, 7, 45, 16, 3, true}, obc::DType::F32, rng, true);
  // W = 1, G = 1, D = 72, non-causal.
  check_case<float>({2, 1, 1, 1, 40, 72, 0, false}, obc::DType::F32, rng, false);
  // N = W (every window query at its own position).
  check_case<float>({1, 1, 2, 5, 5, 8, 1, true}, obc::DType::F32, rng, false);
  // rows = 5 * 7 = 35 (a full and a partial chunk), D = 13: the padding of
  // the shared rows to whole float4s must add nothing.
  check_case<float>({1, 2, 5, 7, 70, 13, 2, true}, obc::DType::F32, rng, true);
}

// D = 256, G = 8: the largest head size the op accepts, at the most shared
// memory the kernels ask for. On sm_90 (227 KiB per block) pass 2 runs on
// the tensor cores (joint: 204 KiB); on sm_80 (163 KiB) on the FP32 units
// with one key per lane (135 KiB); on sm_86 / sm_89 (99 KiB) one key and 2
// rows (83 KiB), and pass 1 4 rows instead of 8 (67 KiB instead of 101 KiB).
// Not loo: here its A / (1 - A) amplifies float32 rounding, which differs
// between the Release and the Debug sanitizer builds, to 1e-3 relative (seen
// in CI); loo runs the 8 x 2 and 2 x 1 tiles at smaller D above.
TEST(EmuSaliency, HeadDim256OnEachGpuGeneration) {
  std::mt19937 rng(12);
  const unsigned attn_key = 1u << 0 | 1u << 4, joint = 1u << 5;
  const Case c{1, 1, 8, 3, 70, 256, 0, true};
  for (const size_t limit : {227 * 1024, 163 * 1024, 99 * 1024}) {
    simt::set_smem_optin_limit(limit);
    const long long before = simt::mma_instructions();
    check_case<obc::bf16_t>(c, obc::DType::BF16, rng, false, joint);
    EXPECT_EQ(simt::mma_instructions() > before, limit == 227 * 1024) << limit;
    check_case<obc::bf16_t>(c, obc::DType::BF16, rng, false, attn_key);  // attn's tiles fit all three
  }
  simt::set_smem_optin_limit(227 * 1024);
}

// D=128, the common head size: pass 2 needs more than 48 KiB of shared
// memory, so this also runs the kernel's shared memory opt-in.
TEST(EmuSaliency, HeadDim128UsesSharedMemoryOptIn) {
  std::mt19937 rng(11);
  check_case<float>({1, 1, 4, 9, 77, 128, 0, true}, obc::DType::F32, rng, false, 1u << 0 | 1u << 5);
}

TEST(EmuSaliency, SeveralKeySplitsAreCombined) {
  std::mt19937 rng(2);
  // N = 600 > 256: make_shape picks several splits (the flash-decoding path),
  // the last one partial; causal rows see different splits.
  const obc::SaliencyParams probe = [] {
    obc::SaliencyParams p;
    p.B = 1, p.Hkv = 1, p.G = 1, p.W = 2, p.N = 600, p.D = 8;
    return p;
  }();
  ASSERT_GT(obc::make_shape(probe).splits, 1);
  const unsigned attn_joint_loo = 1u << 0 | 1u << 5 | 1u << 6;
  check_case<float>({1, 1, 1, 2, 600, 8, 0, true}, obc::DType::F32, rng, false, attn_joint_loo);
  // Splits and several 32-row chunks together (R = 35), `tova` included.
  const obc::SaliencyParams probe2 = [] {
    obc::SaliencyParams p;
    p.B = 1, p.Hkv = 1, p.G = 5, p.W = 7, p.N = 300, p.D = 8;
    return p;
  }();
  ASSERT_GT(obc::make_shape(probe2).splits, 1);
  check_case<float>({1, 1, 5, 7, 300, 8, 0, true}, obc::DType::F32, rng, false, attn_joint_loo | 1u << 1);
}

// O given: pass 1 skips it (its workspace too) and combine reads it, over
// several splits and row chunks; every score (those that do not read O
// ignore it). float16 with 64 rows: both passes on the tensor cores, O's
// terms made (and scaled) from the given O.
TEST(EmuSaliency, GivenAttentionOutputIsRead) {
  std::mt19937 rng(4);
  check_case<float>({1, 2, 3, 7, 300, 16, 3, true}, obc::DType::F32, rng, true, 0x7f, true);
  check_case<obc::bf16_t>({1, 1, 2, 3, 37, 8, 1, false}, obc::DType::BF16, rng, false, 0x7f, true);
  const long long before = simt::mma_instructions();
  check_case<obc::half_t>({1, 1, 2, 32, 100, 16, 0, true}, obc::DType::F16, rng, false, 0x7f, true);
  EXPECT_GT(simt::mma_instructions(), before);
}

TEST(EmuSaliency, HalfAndBFloat16) {
  std::mt19937 rng(3);
  check_case<obc::half_t>({1, 1, 2, 3, 37, 8, 0, true}, obc::DType::F16, rng, false);
  check_case<obc::bf16_t>({1, 1, 2, 3, 37, 8, 0, true}, obc::DType::BF16, rng, false);
}

// bfloat16 or float16 with more than 16 rows: both passes on the tensor
// cores (saliency_mma_cuda.cuh; loo's pass 2 stays on the FP32 units), every score
// (every reduction in the first case), against the CPU kernel at the float
// tolerance of the other cases: N not a multiple of the 64- or 128-key
// tile, D = 13 and 72 (padded to 16 and 80) and 128, rows 21 (one partial
// chunk of 32 or 64 rows) and 66 (three or two), two key splits (N = 300),
// B = 2, causal or not, strided, and W = 32, 64 (the in-register query
// reduction), every reduction, and R = 128 over several tiles per split.
// Then the same on an emulated sm_75, which has no bf16 / f16 m16n8k16, and
// with OBCACHE_CUDA_TENSOR_CORES=0: the FP32 passes run and no mma
// instruction does. Last, pass 2 in head order (OBCACHE_CUDA_L2_REUSE=0).
// Key and joint run both pass 2 widths (128 and 256 keys per block), and
// both pass 1 widths where R > 64 (64 and 128 rows per block), as attn
// does: the pass-1 kernels with O (key, joint, loo) and without (the
// other scores).
template <typename E>
void on_tensor_cores(obc::DType dt, unsigned seed) {
  std::mt19937 rng(seed);
  const Case cases[] = {{1, 2, 3, 7, 45, 16, 3, true},
                        // Rows 16-byte aligned and N = 45 under one tile of
                        // either pass: the keys past N are the zeros the
                        // loads write over the poison, not copies (a tile
                        // after a full one would hide a missing zero under
                        // its stale rows, 0 x finite).
                        {1, 1, 3, 7, 45, 16, 0, false},
                        {1, 2, 5, 7, 70, 13, 2, true},
                        {2, 1, 4, 3, 40, 72, 0, false},
                        {1, 2, 3, 22, 70, 128, 0, true},
                        {1, 1, 3, 7, 300, 16, 0, true},
                        // W = 32 and 64: a warp's 32 rows are one head's and
                        // reduce in registers; R = 96 leaves the second
                        // 64-row chunk's second half past R (value, h2o);
                        // W = 64 puts both halves of a 64-row chunk in one
                        // head.
                        {1, 1, 3, 32, 100, 16, 0, true},
                        {1, 2, 1, 64, 90, 24, 0, false},
                        // N - W = 126: the first query misses key 127 alone,
                        // the last of pass 2's first 128-key block and of
                        // pass 1's second 64-key tile, so the blocks every
                        // row sees (all_rows_see) end one key before.
                        {1, 1, 2, 32, 158, 16, 0, true},
                        // R = 128 over 3 splits of 4, 4 and 2 tiles: a wide
                        // pass 1 block cycles its two tile buffers.
                        {1, 1, 4, 32, 600, 16, 0, true}};
  simt::take_widest_block();
  for (const Case& c : cases) {
    const long long before = simt::mma_instructions();
    // Not loo at D = 128: its logits span ~100 here, A comes within float
    // rounding of 1, and A / (1 - A) turns the different summation order of
    // the tensor cores into 3e-5 relative (as in HeadDim256OnEachGpuGeneration).
    check_case<E>(c, dt, rng, &c == cases || c.W >= 32, c.D == 128 ? 0x3f : 0x7f);
    EXPECT_GT(simt::mma_instructions(), before) << "D=" << c.D;
  }
  // These grids are smaller than an H100's 132 SMs: pass 1 kept 64 rows and
  // pass 2 128 keys per block. On one SM, wherever there are two such
  // blocks or more (wide_pays), key and joint go wide in pass 2, 256 keys
  // and 8 warps (sm_90's shared memory holds those tiles up to D = 128
  // here), and every score in pass 1 where R > 64: 128 rows, 8 warps (attn
  // shows pass 1's width alone: its pass 2 keeps 4 warps).
  EXPECT_EQ(simt::take_widest_block(), 128u);
  simt::set_sm_count(1);
  const unsigned key_joint = 1u << 4 | 1u << 5, attn = 1u << 0;
  const auto narrow_blocks = [](const Case& c) {  // pass 1's 64-row blocks, pass 2's 128-key ones
    obc::SaliencyParams p;
    p.B = c.B, p.Hkv = c.H, p.G = c.G, p.W = c.W, p.N = c.N, p.D = c.D;
    const obc::salc::Shape s = obc::make_shape(p);
    return std::make_pair(s.R > 64 ? s.splits * ((s.R + 63) / 64) * c.B * c.H : 0, (c.N + 127) / 128 * c.B * c.H);
  };
  int wide_cases[2] = {0, 0};
  for (const Case& c : cases) {
    const auto [pass1, pass2] = narrow_blocks(c);
    check_case<E>(c, dt, rng, c.W >= 32, key_joint);
    EXPECT_EQ(simt::take_widest_block(), pass1 > 1 || pass2 > 1 ? 256u : 128u) << "D=" << c.D << " N=" << c.N;
    check_case<E>(c, dt, rng, false, attn);
    EXPECT_EQ(simt::take_widest_block(), pass1 > 1 ? 256u : 128u) << "R=" << c.G * c.W;
    wide_cases[0] += pass1 > 1, wide_cases[1] += pass2 > 1;
  }
  EXPECT_EQ(wide_cases[0], 3);  // R = 66 (D = 128), 96 and 128
  EXPECT_EQ(wide_cases[1], 8);  // all but the one-block grids of N = 45 and 100 on one head
  // bench/bench_gpu.py's baselines for the wide blocks.
  setenv("OBCACHE_CUDA_PASS2_WIDE", "0", 1);
  check_case<E>(cases[0], dt, rng, false, 1u << 5);
  EXPECT_EQ(simt::take_widest_block(), 128u);
  unsetenv("OBCACHE_CUDA_PASS2_WIDE");
  setenv("OBCACHE_CUDA_PASS1_WIDE", "0", 1);
  check_case<E>(cases[9], dt, rng, false, attn);
  EXPECT_EQ(simt::take_widest_block(), 128u);
  unsetenv("OBCACHE_CUDA_PASS1_WIDE");
  simt::set_sm_count(132);
  simt::set_compute_capability_major(7);
  long long before = simt::mma_instructions();
  check_case<E>(cases[1], dt, rng, false);
  EXPECT_EQ(simt::mma_instructions(), before);
  simt::set_compute_capability_major(9);
  // OBCACHE_CUDA_TENSOR_CORES=0 takes the FP32 kernels on a GPU that has them.
  setenv("OBCACHE_CUDA_TENSOR_CORES", "0", 1);
  before = simt::mma_instructions();
  check_case<E>(cases[0], dt, rng, false, 1u << 5);
  EXPECT_EQ(simt::mma_instructions(), before);
  // OBCACHE_CUDA_L2_REUSE=0: pass 2 walks the heads in head order (the
  // baseline bench/bench_gpu.py times the default, last head first,
  // against), on the FP32 kernels and on the tensor cores; two heads each.
  setenv("OBCACHE_CUDA_L2_REUSE", "0", 1);
  check_case<E>(cases[0], dt, rng, false, 1u << 5);
  unsetenv("OBCACHE_CUDA_TENSOR_CORES");
  before = simt::mma_instructions();
  check_case<E>(cases[2], dt, rng, false, 1u << 5);
  EXPECT_GT(simt::mma_instructions(), before);
  unsetenv("OBCACHE_CUDA_L2_REUSE");
}
TEST(EmuSaliency, BFloat16OnTensorCores) { on_tensor_cores<obc::bf16_t>(obc::DType::BF16, 13); }
TEST(EmuSaliency, Float16OnTensorCores) { on_tensor_cores<obc::half_t>(obc::DType::F16, 14); }

// The tensor cores multiply O (and P, which makes O, in pass 1) as three
// bf16 terms, to keep float precision where ||v||^2 - 2 v . o + ||o||^2
// cancels. Here every v is within 1/16 of 1 (bf16: 1 + m 2^-7, |m| <= 8), so
// the key and joint scores are ~1/800 of ||v||^2, and float32 itself is off
// by up to ~5e-3 of the largest score (the CPU kernels: 3.0e-3 at D = 128,
// 5.0e-3 at D = 64, against float64; the tensor cores 4.4e-3 and 3.8e-3).
// A single bf16 term (2^-9 relative in o) would be off by ~100%. float16
// likewise, with three f16 terms (one, 2^-12 relative, would be off by ~10%).
template <typename E>
void keep_o_where_v_minus_o_cancels(obc::DType dt) {
  std::mt19937 rng(21);
  const Case cases[] = {{1, 2, 2, 32, 150, 128, 0, true}, {1, 1, 3, 9, 120, 64, 0, false}};
  for (const Case& c : cases) {
    const long long before = simt::mma_instructions();
    check_case<E>(c, dt, rng, false, 1u << 4 | 1u << 5, false, 1.0f, 1e-2);
    EXPECT_GT(simt::mma_instructions(), before) << "D=" << c.D;
  }
}
TEST(EmuSaliency, BFloat16TensorCoresKeepOAtFloatPrecisionWhereVMinusOCancels) {
  keep_o_where_v_minus_o_cancels<obc::bf16_t>(obc::DType::BF16);
}
TEST(EmuSaliency, Float16TensorCoresKeepOAtFloatPrecisionWhereVMinusOCancels) {
  keep_o_where_v_minus_o_cancels<obc::half_t>(obc::DType::F16);
}

// float16's O terms are of each row's O times a power of two that puts its
// largest element just below 2^15 (Work::fin_os): with values below 2^-15,
// O's second and third terms would otherwise fall below f16's smallest step
// (2^-24), and the key scores be off by 3e-4 of the largest (6e-8 scaled);
// with values up to 2^15, O is scaled down. Both score as the CPU kernel
// does, at the float tolerance of the other cases.
TEST(EmuSaliency, Float16TensorCoresScaleEachRowOfO) {
  std::mt19937 rng(22);
  const Case c{1, 2, 2, 32, 150, 64, 0, true};
  for (const float v_scale : {std::ldexp(1.0f, -16), std::ldexp(1.0f, 14)}) {
    const long long before = simt::mma_instructions();
    check_case<obc::half_t>(c, obc::DType::F16, rng, false, 1u << 4 | 1u << 5, false, 0.0f, 2e-5, v_scale);
    EXPECT_GT(simt::mma_instructions(), before) << v_scale;
  }
}

// float16's P is split as 2^15 P (kPScaleLog2): unscaled, the f16 terms of
// a P below 2^-14 are subnormals, each up to 2^-25 off. Here every key but
// key 0 has a logit 11 below key 0's (P = e^-11 = 1.7e-5, rounded alike in
// every one) and a positive value, so that the rounding adds up in O
// instead of averaging out; v_0 = 0, so O is theirs alone. Unscaled, the
// key and joint scores are off by 4e-4 of the largest; scaled, as float.
TEST(EmuSaliency, Float16TensorCoresScaleP) {
  const int64_t N = 1000, D = 16, W = 32, G = 2;
  std::mt19937 rng(23);
  const std::vector<float> x = naive::grid_values(N * D, rng);
  std::vector<obc::half_t> k(N * D, naive::from_float<obc::half_t>(0.0f)), v(N * D), q(G * W * D, k[0]);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d)
      v[n * D + d] = naive::from_float<obc::half_t>(n ? 0.5f + std::fabs(x[n * D + d]) : 0.0f);
  k[0] = naive::from_float<obc::half_t>(11.0f);  // k_0 = 11 e_0, the others 0
  for (int64_t r = 0; r < G * W; ++r) q[r * D] = naive::from_float<obc::half_t>(1.0f);  // every query e_0
  obc::SaliencyParams p;
  p.k = k.data(), p.v = v.data(), p.q = q.data(), p.dtype = obc::DType::F16;
  p.B = 1, p.Hkv = 1, p.G = G, p.W = W, p.N = N, p.D = D;
  p.k_sb = p.v_sb = p.k_sh = p.v_sh = N * D, p.k_sn = p.v_sn = D;
  p.q_sb = G * W * D, p.q_sh = W * D, p.q_sw = D;
  p.scale = 1.0f, p.causal = false;
  for (const Score sc : {Score::Key, Score::Joint}) {
    p.score = sc;
    const long long before = simt::mma_instructions();
    expect_close(cuda_scores(p), cpu_scores(p), 2e-5, "score=" + std::to_string(static_cast<int>(sc)));
    EXPECT_GT(simt::mma_instructions(), before);
  }
}

TEST(EmuSaliency, Float64IsRejected) {
  obc::SaliencyParams p;
  p.B = p.Hkv = p.G = p.W = p.N = p.D = 1;
  p.dtype = obc::DType::F64;
  EXPECT_NE(obc::saliency_cuda(p, nullptr, nullptr), 0);
}

// The tensor-core pass 2 unrolls its products to D = 256: a larger head size
// is refused before any launch (the op says so by name), not half computed.
TEST(EmuSaliency, HeadDimAbove256IsRejected) {
  obc::SaliencyParams p;
  p.B = p.Hkv = p.G = 1, p.W = 32, p.N = 64, p.D = obc::kSaliencyCudaMaxHeadDim + 8;
  p.dtype = obc::DType::BF16, p.score = obc::Score::Joint;
  const long long before = simt::mma_instructions();
  EXPECT_EQ(obc::saliency_cuda(p, nullptr, nullptr), static_cast<int>(cudaErrorInvalidValue));
  EXPECT_EQ(simt::mma_instructions(), before);
}

}  // namespace

// The README's NaN policy, CPU vs CUDA: NaN or Inf in k, v or q_window
// propagates into the scores it touches as NaN (never +-inf, never dropped),
// and select ranks NaN below every finite score, NaN ties to the lower index.
// The real CUDA saliency and select kernels (compiled here under the SIMT
// emulation) must agree with the CPU kernels: the same NaN positions, the
// finite scores within float32 rounding, and the same selected indices.
// cuda_compat.h first: under OBC_SIMT_EMULATION it brings the emulated
// __host__ / __device__ that common.h uses.
#include "cuda_compat.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "saliency_cpu.h"
#include "saliency_cuda.cu"  // the real source
#include "saliency_naive.h"  // from_float
#include "select_cpu.h"
#include "select_cuda.cu"  // the real source

namespace {

using obc::Score;

constexpr int64_t B = 1, H = 2, G = 2, W = 5, N = 45, D = 8;

struct Cache {
  std::vector<float> k, v, q;
};

Cache make_cache(std::mt19937& rng) {
  std::normal_distribution<float> nd;
  Cache c{std::vector<float>(B * H * N * D), std::vector<float>(B * H * N * D), std::vector<float>(B * H * G * W * D)};
  for (auto* t : {&c.k, &c.v, &c.q})
    for (auto& x : *t) x = nd(rng);
  return c;
}

obc::SaliencyParams params(const Cache& c, Score s, obc::GroupReduce gr, obc::QueryReduce qr, bool causal) {
  obc::SaliencyParams p;
  p.k = c.k.data(), p.v = c.v.data(), p.q = c.q.data(), p.dtype = obc::DType::F32;
  p.B = B, p.Hkv = H, p.G = G, p.W = W, p.N = N, p.D = D;
  p.k_sn = p.v_sn = D, p.k_sh = p.v_sh = N * D, p.k_sb = p.v_sb = H * N * D;
  p.q_sw = D, p.q_sh = W * D, p.q_sb = H * G * W * D;
  p.scale = 0.35f, p.causal = causal, p.score = s, p.group_reduce = gr, p.query_reduce = qr;
  return p;
}

std::vector<float> run_cpu(obc::SaliencyParams p) {
  std::vector<float> out(B * H * N, -12345.0f);
  std::vector<double> ws(obc::saliency_cpu_workspace_bytes(p) / 8 + 8);
  p.out = out.data();
  obc::saliency_cpu(p, 0, B * H, ws.data());
  return out;
}

std::vector<float> run_emu(obc::SaliencyParams p) {
  std::vector<float> out(B * H * N, -12345.0f);
  std::vector<float> ws(obc::saliency_cuda_workspace_bytes(p) / 4 + 1, NAN);
  p.out = out.data();
  EXPECT_EQ(obc::saliency_cuda(p, ws.data(), nullptr), 0);
  return out;
}

std::vector<int64_t> select_cpu(const std::vector<float>& s, int64_t budget, int64_t sink, int64_t recent,
                                int64_t kernel) {
  obc::SelectParams p;
  p.scores = s.data(), p.B = B, p.H = H, p.N = N, p.s_sb = H * N, p.s_sh = N;
  p.budget = budget, p.sink = sink, p.recent = recent, p.pool_kernel = kernel;
  std::vector<int64_t> out(B * H * budget, -1);
  p.out = out.data();
  obc::select_rows_cpu(p, 0, B * H);
  return out;
}

std::vector<int64_t> select_emu(const std::vector<float>& s, int64_t budget, int64_t sink, int64_t recent,
                                int64_t kernel) {
  obc::SelectParams p;
  p.scores = s.data(), p.B = B, p.H = H, p.N = N, p.s_sb = H * N, p.s_sh = N;
  p.budget = budget, p.sink = sink, p.recent = recent, p.pool_kernel = kernel;
  std::vector<int64_t> out(B * H * budget, -2);
  std::vector<uint64_t> keys(B * H * N);
  p.out = out.data();
  EXPECT_EQ(obc::select_cuda(p, keys.data(), nullptr), 0);
  return out;
}

struct Place {
  int which;  // 0 = k, 1 = v, 2 = q
  int64_t b, h, row, d;
};

TEST(EmuNan, SaliencyAndSelectFollowTheNanPolicyLikeTheCpu) {
  const float bads[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity()};
  // Key / value rows: first, middle, last; query rows: the first and the last window query.
  const Place places[] = {{0, 0, 0, 0, 1}, {0, 0, 1, 22, 0}, {0, 0, 1, 44, 3}, {1, 0, 0, 0, 2},
                          {1, 0, 0, 30, 5}, {1, 0, 1, 44, 0}, {2, 0, 0, 0, 4},  {2, 0, 3, W - 1, 1}};
  const obc::GroupReduce grs[] = {obc::GroupReduce::Sum, obc::GroupReduce::Max, obc::GroupReduce::Mean};
  const obc::QueryReduce qrs[] = {obc::QueryReduce::Sum, obc::QueryReduce::Max};
  std::mt19937 rng(3);
  int64_t total_nan = 0, checked = 0;
  int pi = 0;
  for (const Place& pl : places)
    for (float bad : bads) {
      ++pi;
      Cache c = make_cache(rng);
      std::vector<float>& t = pl.which == 0 ? c.k : pl.which == 1 ? c.v : c.q;
      const int64_t rows = pl.which == 2 ? W : N, heads = pl.which == 2 ? H * G : H;
      t[((pl.b * heads + pl.h) * rows + pl.row) * D + pl.d] = bad;
      for (int s = 0; s < 7; ++s)
        for (int red = 0; red < 6; ++red) {
          // One reduction per score, rotating with the input: every score meets
          // every reduction over the inputs (the emulation is slow).
          if ((s + pi) % 6 != red) continue;
          const obc::SaliencyParams p = params(c, static_cast<Score>(s), grs[red % 3], qrs[red / 3], (s + red) % 2);
          const std::vector<float> want = run_cpu(p), got = run_emu(p);
          double mag = 0;
          for (float x : want)
            if (std::isfinite(x)) mag = std::max(mag, std::fabs(static_cast<double>(x)));
          int64_t nan = 0;
          for (size_t i = 0; i < want.size(); ++i) {
            ASSERT_FALSE(std::isinf(want[i])) << "CPU score is +-inf at " << i << " score=" << s;
            ASSERT_FALSE(std::isinf(got[i])) << "CUDA score is +-inf at " << i << " score=" << s;
            ASSERT_EQ(std::isnan(got[i]), std::isnan(want[i]))
                << "NaN mismatch at " << i << " score=" << s << " red=" << red << " which=" << pl.which
                << " row=" << pl.row << " bad=" << bad << " cpu=" << want[i] << " cuda=" << got[i];
            if (!std::isnan(want[i])) {
              ASSERT_NEAR(got[i], want[i], 2e-5 * std::max(mag, 1e-30)) << i;
            }
            nan += std::isnan(want[i]);
          }
          total_nan += nan;
          // NaN in k reaches every window row of its head (the last query sees every
          // key, so its softmax row is NaN), hence every score of that KV head; NaN in
          // query row i reaches the keys that row sees (tova reads the last row only).
          if (bad != bad && pl.which != 1) {
            const bool causal = p.causal;
            const int64_t h = pl.which == 2 ? pl.h / G : pl.h;
            for (int64_t n = 0; n < N; ++n) {
              const bool reached = pl.which == 0 || pl.row == W - 1 ||
                                   (static_cast<Score>(s) != Score::Tova && (!causal || n <= N - W + pl.row));
              if (reached) {
                ASSERT_TRUE(std::isnan(want[(pl.b * H + h) * N + n])) << "score=" << s << " n=" << n;
              }
            }
          }
          // Select on the scores (once per input; the emulated select is slow): the
          // emulated CUDA select equals the CPU select, and a NaN is only kept once
          // no finite candidate is left.
          if (s != static_cast<int>(Score::Joint)) continue;
          for (const int64_t kernel : {int64_t(0), int64_t(7)})
            for (const int64_t budget : {pi % 2 ? int64_t(9) : N - 6}) {
              const int64_t sink = 1, recent = 2;
              for (const std::vector<float>* sc : {&got}) {
                const std::vector<int64_t> a = select_cpu(*sc, budget, sink, recent, kernel);
                ASSERT_EQ(select_emu(*sc, budget, sink, recent, kernel), a) << "budget=" << budget;
                if (kernel != 0) continue;
                for (int64_t row = 0; row < B * H; ++row) {
                  int64_t finite = 0, kept_nan = 0;
                  for (int64_t n = sink; n < N - recent; ++n) finite += !std::isnan((*sc)[row * N + n]);
                  for (int64_t i = sink; i < budget - recent; ++i) kept_nan += std::isnan((*sc)[row * N + a[row * budget + i]]);
                  const int64_t m = budget - sink - recent;
                  ASSERT_EQ(kept_nan, std::max<int64_t>(0, m - finite)) << "row " << row << " budget " << budget;
                }
              }
              ++checked;
            }
        }
    }
  EXPECT_GT(total_nan, 0);
  EXPECT_GT(checked, 0);
}

// The same policy on the tensor-core paths, bfloat16 and float16 with 32
// rows (W = 16: both passes on the tensor cores), where P and O go in as
// three 16-bit terms (a NaN or inf reaches them through the split: inf - inf
// is NaN) and float16 scales each row of O by a power of two worked out
// from its largest element (an inf row included). A NaN, +inf and -inf in
// k, v and q in turn, each with a third of the scores (every score meets
// three of the nine): the same NaN positions as the CPU kernel, no +-inf,
// the finite scores within float rounding.
template <typename E>
void nan_policy_on_tensor_cores(obc::DType dt, uint16_t nan_bits, uint16_t inf_bits) {
  constexpr int64_t Wt = 16;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  const auto element = [](float x) {  // x rounded toward zero, at least 2^-10 in magnitude (normal in f16)
    return naive::from_float<E>(std::fabs(x) < 0x1p-10f ? std::copysign(0x1p-10f, x) : x);
  };
  int64_t total_nan = 0;
  int input = 0;
  const long long before = simt::mma_instructions();
  for (int which = 0; which < 3; ++which)
    for (const uint16_t bad : {nan_bits, inf_bits, static_cast<uint16_t>(inf_bits | 0x8000u)}) {
      ++input;
      std::vector<E> k(B * H * N * D), v(k.size()), q(B * H * G * Wt * D);
      for (auto* t : {&k, &v, &q})
        for (E& x : *t) x = element(nd(rng));
      std::vector<E>& t = which == 0 ? k : which == 1 ? v : q;
      // k: key 44, past every causal query's position but the last one's; v: key
      // 22, which every query sees; q: head 3's last query (all of head 0's).
      t[(which == 0 ? 44 : which == 1 ? 22 : 3 * Wt + Wt - 1) * D + 5].bits = bad;
      for (int s = input % 3; s < 7; s += 3) {
        obc::SaliencyParams p;
        p.k = k.data(), p.v = v.data(), p.q = q.data(), p.dtype = dt;
        p.B = B, p.Hkv = H, p.G = G, p.W = Wt, p.N = N, p.D = D;
        p.k_sn = p.v_sn = D, p.k_sh = p.v_sh = N * D, p.k_sb = p.v_sb = H * N * D;
        p.q_sw = D, p.q_sh = Wt * D, p.q_sb = H * G * Wt * D;
        p.scale = 0.35f, p.causal = s % 2, p.score = static_cast<Score>(s);
        const std::vector<float> want = run_cpu(p), got = run_emu(p);
        double mag = 0;
        for (float x : want)
          if (std::isfinite(x)) mag = std::max(mag, std::fabs(static_cast<double>(x)));
        for (size_t i = 0; i < want.size(); ++i) {
          ASSERT_FALSE(std::isinf(got[i])) << "CUDA score is +-inf at " << i << " score=" << s;
          ASSERT_EQ(std::isnan(got[i]), std::isnan(want[i]))
              << "NaN mismatch at " << i << " score=" << s << " which=" << which << " bad=" << bad
              << " cpu=" << want[i] << " cuda=" << got[i];
          if (!std::isnan(want[i])) {
            ASSERT_NEAR(got[i], want[i], 2e-5 * std::max(mag, 1e-30)) << i << " score=" << s;
          }
          total_nan += std::isnan(want[i]);
        }
      }
    }
  EXPECT_GT(total_nan, 0);
  EXPECT_GT(simt::mma_instructions(), before);
}
TEST(EmuNan, BFloat16TensorCoresFollowTheNanPolicy) {
  nan_policy_on_tensor_cores<obc::bf16_t>(obc::DType::BF16, 0x7fc0u, 0x7f80u);
}
TEST(EmuNan, Float16TensorCoresFollowTheNanPolicy) {
  nan_policy_on_tensor_cores<obc::half_t>(obc::DType::F16, 0x7e00u, 0x7c00u);
}

// NaN ties in select go to the lower index, CPU and CUDA alike.
TEST(EmuNan, SelectNanTiesToTheLowerIndex) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> s(B * H * N, nan);
  for (int64_t row = 0; row < B * H; ++row) s[row * N + 40] = 1.0f;  // one finite score per row
  const std::vector<int64_t> a = select_cpu(s, 4, 0, 0, 0);
  ASSERT_EQ(select_emu(s, 4, 0, 0, 0), a);
  for (int64_t row = 0; row < B * H; ++row) {
    EXPECT_EQ(a[row * 4 + 0], 0);
    EXPECT_EQ(a[row * 4 + 1], 1);
    EXPECT_EQ(a[row * 4 + 2], 2);
    EXPECT_EQ(a[row * 4 + 3], 40);
  }
}

}  // namespace

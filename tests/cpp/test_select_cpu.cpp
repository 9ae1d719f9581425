// select_rows_cpu / select_adaptive_*_cpu against the naive statement of the
// reference (select_naive.h): random scores, ties, NaN / inf / -0.0, every
// pooling mode, sink/recent/start combinations.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "select_cpu.h"
#include "select_naive.h"

namespace {

std::vector<float> make_scores(int64_t n, int kind, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int> small(0, 2);
  std::uniform_real_distribution<float> u(0, 1);
  std::vector<float> s(n);
  for (auto& x : s) {
    if (kind == 0) x = nd(rng);
    else if (kind == 1) x = static_cast<float>(small(rng));  // many ties
    else {
      const float r = u(rng);
      x = r < 0.1f ? NAN : r < 0.2f ? INFINITY : r < 0.3f ? -INFINITY : r < 0.4f ? -0.0f : r < 0.5f ? 0.0f : nd(rng);
    }
  }
  return s;
}

TEST(SelectCpu, MatchesNaiveOnRandomRows) {
  std::mt19937 rng(1);
  int checked = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int64_t B = 1 + rng() % 2, H = 1 + rng() % 3, N = 1 + rng() % 70;
    const int kind = trial % 3;
    const std::vector<float> s = make_scores(B * H * N, kind, rng);
    const int64_t sink = rng() % 4, recent = rng() % 4;
    if (sink + recent >= N) continue;
    const int64_t budget = std::max<int64_t>(1, sink + recent + rng() % (N - sink - recent));
    const int64_t kernels[] = {0, 1, 3, 7};
    const int64_t k = kernels[trial % 4];
    const bool avg = (trial / 4) % 2;
    std::vector<int64_t> start(B);
    for (auto& x : start) x = (trial % 3 == 0) ? static_cast<int64_t>(rng() % (N + 1)) : 0;
    obc::SelectParams p;
    p.scores = s.data();
    p.B = B, p.H = H, p.N = N, p.s_sb = H * N, p.s_sh = N;
    p.start = start.data();
    p.budget = budget, p.sink = sink, p.recent = recent, p.pool_kernel = k;
    p.pool = avg ? obc::Pool::Avg : obc::Pool::Max;
    std::vector<int64_t> out(B * H * budget, -7);
    p.out = out.data();
    obc::select_rows_cpu(p, 0, B * H);
    for (int64_t r = 0; r < B * H; ++r) {
      std::vector<double> row(s.begin() + r * N, s.begin() + (r + 1) * N);
      const auto want = naive::select_row(row, budget, sink, recent, k, avg, start[r / H]);
      const std::vector<int64_t> got(out.begin() + r * budget, out.begin() + (r + 1) * budget);
      ASSERT_EQ(got, want) << "trial " << trial << " N=" << N << " budget=" << budget << " sink=" << sink
                           << " recent=" << recent << " k=" << k << " avg=" << avg;
      ++checked;
    }
  }
  EXPECT_GT(checked, 500);
}

// Rows long enough for every pass of the float32 path's radix select (11,
// 11 and 10 bits from the top), with distributions that put the cut in one
// bin per pass: scores a few ulps apart (all keys share their top 22 bits),
// three tied values (the cut falls inside a tie), a wide spread, and NaN /
// inf / -0.0; budgets from one candidate to all but one.
TEST(SelectCpu, LongFloatRowsMatchNaiveInEveryRadixPass) {
  std::mt19937 rng(3);
  int checked = 0;
  for (int kind = 0; kind < 4; ++kind) {
    for (const int64_t N : {3001, 20000}) {
      std::vector<float> s;
      if (kind == 0) {
        std::uniform_int_distribution<int> ulps(0, 600);
        for (int64_t i = 0; i < N; ++i) s.push_back(std::nextafter(1.0f, 2.0f) + ulps(rng) * 1.1920929e-7f);
      } else if (kind == 3) {
        std::uniform_real_distribution<float> e(-30, 30);
        for (int64_t i = 0; i < N; ++i) s.push_back((rng() % 2 ? -1.0f : 1.0f) * std::exp2(e(rng)));
      } else {
        s = make_scores(N, kind, rng);
      }
      for (const int64_t k : {0, 7}) {
        for (const int64_t budget : {int64_t(6), N / 10, N / 2, N - 2}) {
          obc::SelectParams p;
          p.scores = s.data();
          p.B = p.H = 1, p.N = N, p.s_sb = p.s_sh = N;
          p.budget = budget, p.sink = 2, p.recent = 3, p.pool_kernel = k;
          std::vector<int64_t> out(budget, -7);
          p.out = out.data();
          obc::select_rows_cpu(p, 0, 1);
          const auto want = naive::select_row(std::vector<double>(s.begin(), s.end()), budget, 2, 3, k, false, 0);
          ASSERT_EQ(out, want) << "kind " << kind << " N=" << N << " budget=" << budget << " k=" << k;
          ++checked;
        }
      }
    }
  }
  EXPECT_EQ(checked, 64);
}

TEST(SelectCpu, ConstantScoresKeepLowestIndices) {
  const int64_t N = 20;
  std::vector<float> s(N, 1.5f);
  obc::SelectParams p;
  p.scores = s.data();
  p.B = p.H = 1, p.N = N, p.s_sb = p.s_sh = N;
  p.budget = 6, p.sink = 1, p.recent = 2, p.pool_kernel = 3;
  std::vector<int64_t> out(6);
  p.out = out.data();
  obc::select_rows_cpu(p, 0, 1);
  EXPECT_EQ(out, (std::vector<int64_t>{0, 1, 2, 3, 18, 19}));
}

TEST(SelectCpu, NaNRanksBelowFiniteAndTiesWithMinusInf) {
  std::vector<double> s = {NAN, -INFINITY, 3.0, NAN, 1.0};
  obc::SelectParams p;
  p.scores = s.data();
  p.dtype = obc::DType::F64;
  p.B = p.H = 1, p.N = 5, p.s_sb = p.s_sh = 5;
  p.budget = 3;
  std::vector<int64_t> out(3);
  p.out = out.data();
  obc::select_rows_cpu(p, 0, 1);
  EXPECT_EQ(out, (std::vector<int64_t>{0, 2, 4}));  // 3, 1, then index 0 (NaN == -inf, lowest index)
}

TEST(SelectAdaptiveCpu, MatchesNaive) {
  std::mt19937 rng(2);
  int checked = 0;
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t B = 1 + rng() % 2, H = 1 + rng() % 4, N = 2 + rng() % 40;
    const std::vector<float> s = make_scores(B * H * N, trial % 3, rng);
    const int64_t sink = rng() % 3, recent = rng() % 3;
    const int64_t total = 1 + rng() % (H * N - 1);
    const int64_t f = std::max<int64_t>(sink + recent, (total / H) / 5);
    if (f > N || H * f > total) continue;
    const int64_t kernels[] = {0, 1, 3, 7};
    obc::SelectAdaptiveParams p;
    p.scores = s.data();
    p.B = B, p.H = H, p.N = N, p.s_sb = H * N, p.s_sh = N;
    p.floor_tokens = f, p.extra = total - H * f, p.sink = sink, p.recent = recent;
    p.pool_kernel = kernels[trial % 4];
    p.pool = (trial / 4) % 2 ? obc::Pool::Avg : obc::Pool::Max;
    std::vector<uint8_t> keep(B * H * N);
    std::vector<int64_t> lengths(B * H);
    obc::select_adaptive_mark_cpu(p, keep.data(), lengths.data(), 0, B);
    for (int64_t b = 0; b < B; ++b) {
      std::vector<std::vector<double>> rows;
      for (int64_t h = 0; h < H; ++h)
        rows.emplace_back(s.begin() + (b * H + h) * N, s.begin() + (b * H + h + 1) * N);
      const auto want = naive::adaptive(rows, f, total - H * f, sink, recent, p.pool_kernel, p.pool == obc::Pool::Avg);
      int64_t sum = 0;
      for (int64_t h = 0; h < H; ++h) {
        const std::vector<uint8_t> got(keep.begin() + (b * H + h) * N, keep.begin() + (b * H + h + 1) * N);
        ASSERT_EQ(got, want[h]) << "trial " << trial << " b=" << b << " h=" << h;
        EXPECT_GE(lengths[b * H + h], f);
        sum += lengths[b * H + h];
      }
      EXPECT_EQ(sum, total);
      ++checked;
    }
    // Emission: ascending, -1 padded.
    const int64_t Lmax = *std::max_element(lengths.begin(), lengths.end());
    std::vector<int64_t> out(B * H * Lmax);
    obc::select_adaptive_emit_cpu(keep.data(), N, Lmax, out.data(), 0, B * H);
    for (int64_t r = 0; r < B * H; ++r) {
      int64_t n = 0;
      for (int64_t q = 0; q < N; ++q) {
        if (keep[r * N + q]) {
          ASSERT_EQ(out[r * Lmax + n++], q);
        }
      }
      for (; n < Lmax; ++n) ASSERT_EQ(out[r * Lmax + n], -1);
    }
  }
  EXPECT_GT(checked, 50);
}

}  // namespace

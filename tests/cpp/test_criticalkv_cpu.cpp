// The selection steps of a CriticalKV eviction (criticalkv_cpu) against
// naive versions written from their contracts: a full sort for the top-k
// and the k-th value (ties to the lower position, rows of a group side by
// side), a scan of every candidate for the window minimum, the pooling the
// select kernels share (pooled_score) and a scan for the kept rows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "criticalkv_cpu.h"

namespace {

obc::CkvLayout layout(int64_t rows, int64_t N, int64_t sink, int64_t recent, int64_t kernel, int64_t group_rows) {
  obc::CkvLayout l;
  l.rows = rows, l.N = N, l.sink = sink, l.recent = recent, l.pool_kernel = kernel, l.group_rows = group_rows;
  return l;
}

// Few distinct values, so most places are decided by the tie rule.
std::vector<double> tied_values(size_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int> d(0, 3);
  std::vector<double> x(n);
  for (auto& e : x) e = d(rng) - 1.5;
  return x;
}

// The free positions of group g, best first: value desc, position asc.
std::vector<int64_t> ranked(const obc::CkvLayout& l, const std::vector<double>& x, const std::vector<uint8_t>& taken,
                            int64_t g) {
  const int64_t len = l.group_rows * l.C();
  std::vector<int64_t> pos;
  for (int64_t i = 0; i < len; ++i)
    if (!taken[g * len + i]) pos.push_back(i);
  std::stable_sort(pos.begin(), pos.end(), [&](int64_t a, int64_t b) { return x[g * len + a] > x[g * len + b]; });
  return pos;
}

TEST(CriticalKVCpu, TopFreeAndKthMatchAFullSortPerHeadAndLayerWide) {
  std::mt19937 rng(1);
  for (int64_t group_rows : {1, 3}) {
    const obc::CkvLayout l = layout(6, 40, 2, 3, 0, group_rows);
    const int64_t C = l.C(), len = group_rows * C;
    const std::vector<double> x = tied_values(l.rows * C, rng);
    std::vector<uint8_t> taken(l.rows * C);
    for (auto& t : taken) t = rng() % 4 == 0;
    for (int64_t k : std::vector<int64_t>{0, 1, 7, 30, len}) {
      std::vector<uint8_t> picks(l.rows * C, 9);
      std::vector<double> kth(l.rows / group_rows);
      obc::ckv_top_free(l, x.data(), taken.data(), k, picks.data());
      obc::ckv_kth_free(l, x.data(), taken.data(), k, kth.data());
      for (int64_t g = 0; g < l.rows / group_rows; ++g) {
        const std::vector<int64_t> order = ranked(l, x, taken, g);
        std::vector<uint8_t> want(len, 0);
        for (int64_t i = 0; i < std::min<int64_t>(k, order.size()); ++i) want[order[i]] = 1;
        for (int64_t i = 0; i < len; ++i)
          ASSERT_EQ(picks[g * len + i], want[i]) << "group_rows=" << group_rows << " k=" << k << " g=" << g << " i=" << i;
        if (k >= 1 && k <= static_cast<int64_t>(order.size()))
          EXPECT_EQ(kth[g], x[g * len + order[k - 1]]) << "k=" << k;
        else
          EXPECT_EQ(kth[g], -std::numeric_limits<double>::infinity()) << "k=" << k;
      }
    }
  }
}

TEST(CriticalKVCpu, WindowMinScansEveryMarkedCandidate) {
  std::mt19937 rng(2);
  for (int64_t kernel : {0, 1, 5}) {
    const obc::CkvLayout l = layout(2, 30, 3, 4, kernel, 1);
    const int64_t C = l.C(), rad = kernel > 1 ? kernel / 2 : 0;
    std::vector<double> val(l.rows * C);
    std::uniform_real_distribution<double> u(-1, 1);
    for (auto& e : val) e = u(rng);
    std::vector<uint8_t> mark(l.rows * C);
    for (auto& m : mark) m = rng() % 3 == 0;
    std::vector<double> got(l.rows * l.N);
    obc::ckv_window_min(l, mark.data(), val.data(), got.data());
    for (int64_t r = 0; r < l.rows; ++r)
      for (int64_t t = 0; t < l.N; ++t) {
        double want = std::numeric_limits<double>::infinity();
        // pooling reads [0, N - recent): later tokens belong to no window
        for (int64_t c = 0; c < C && t < l.N - l.recent; ++c)
          if (mark[r * C + c] && std::abs(l.sink + c - t) <= rad) want = std::min(want, val[r * C + c]);
        ASSERT_EQ(got[r * l.N + t], want) << "kernel=" << kernel << " r=" << r << " t=" << t;
      }
  }
}

TEST(CriticalKVCpu, PoolReadsTheTokensBeforeTheRecentWindow) {
  // tokens 0..9, sink 2, recent 3: candidates are tokens 2..6, pooled over 0..6
  const std::vector<float> x = {5, 1, 0, 2, 0, 0, 3, 100, 100, 100};
  obc::CkvLayout l = layout(1, 10, 2, 3, 3, 1);
  std::vector<double> out(l.C());
  obc::ckv_pool(l, x.data(), out.data());
  EXPECT_EQ(out, (std::vector<double>{2, 2, 2, 3, 3}));  // max over [t-1, t+1], token 7 excluded
  l.pool = obc::Pool::Avg;
  obc::ckv_pool(l, x.data(), out.data());
  EXPECT_EQ(out, (std::vector<double>{1, 2.0 / 3, 2.0 / 3, 1, 1}));  // divided by 3, padding counted as 0
}

TEST(CriticalKVCpu, MaxPoolEqualsPooledScoreAtTheEdgesAndInside) {
  // ckv_pool's running max over the window's shifts against pooled_score per
  // candidate, with NaN, infinities and ties; sinks shorter and longer than
  // the pooling radius; rows of one and of several blocks of candidates
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-2, 2);
  for (int64_t kernel : {3, 7, 9})
    for (int64_t sink : {0, 2, 6})
      for (int64_t N : {10, 64, 600}) {
        obc::CkvLayout l = layout(2, N, sink, 3, kernel, 1);
        std::vector<float> x(l.rows * N);
        for (auto& e : x) e = std::round(u(rng) * 2) / 2;
        x[5] = std::numeric_limits<float>::quiet_NaN();
        x[N + 1] = std::numeric_limits<float>::infinity();
        x[N + 8] = -std::numeric_limits<float>::infinity();
        std::vector<double> got(l.rows * l.C());
        obc::ckv_pool(l, x.data(), got.data());
        for (int64_t r = 0; r < l.rows; ++r)
          for (int64_t c = 0; c < l.C(); ++c) {
            const double want =
                obc::pooled_score(x.data() + r * N, obc::DType::F32, sink + c, 0, N - l.recent, kernel, obc::Pool::Max);
            ASSERT_EQ(got[r * l.C() + c], want) << "kernel=" << kernel << " sink=" << sink << " N=" << N << " r=" << r
                                                << " c=" << c;
          }
      }
}

TEST(CriticalKVCpu, KeptRowsAreTheSinkTheKeptCandidatesAndTheRecentTokens) {
  std::mt19937 rng(4);
  const obc::CkvLayout l = layout(3, 25, 2, 4, 0, 1);
  const int64_t C = l.C();
  std::vector<uint8_t> keep(l.rows * C);
  for (auto& k : keep) k = rng() % 3 == 0;
  std::fill(keep.begin() + C, keep.begin() + 2 * C, uint8_t{1});  // row 1: every candidate
  std::vector<int64_t> lengths(l.rows);
  const int64_t len_max = obc::kept_lengths(l, keep.data(), lengths.data());
  EXPECT_EQ(len_max, l.N);
  std::vector<int64_t> idx(l.rows * len_max, 7);
  obc::kept_rows(l, keep.data(), len_max, idx.data());
  for (int64_t r = 0; r < l.rows; ++r) {
    std::vector<int64_t> want;
    for (int64_t t = 0; t < l.N; ++t)
      if (t < l.sink || t >= l.N - l.recent || keep[r * C + t - l.sink]) want.push_back(t);
    EXPECT_EQ(lengths[r], static_cast<int64_t>(want.size())) << "r=" << r;
    want.resize(len_max, -1);
    EXPECT_EQ(std::vector<int64_t>(idx.begin() + r * len_max, idx.begin() + (r + 1) * len_max), want) << "r=" << r;
  }
}

}  // namespace

// The selection steps of CriticalKV's pruned stage 2 (criticalkv_stage2_cpu)
// against naive versions written from their contracts: a full sort for the
// top-k and the k-th value (ties to the lower position, rows of a group side
// by side), a scan of every candidate for the window minimum, and the
// pooling the select kernels share.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "criticalkv_stage2_cpu.h"

namespace {

obc::Stage2Layout layout(int64_t rows, int64_t N, int64_t sink, int64_t recent, int64_t kernel, int64_t group_rows) {
  obc::Stage2Layout l;
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
std::vector<int64_t> ranked(const obc::Stage2Layout& l, const std::vector<double>& x, const std::vector<uint8_t>& taken,
                            int64_t g) {
  const int64_t len = l.group_rows * l.C();
  std::vector<int64_t> pos;
  for (int64_t i = 0; i < len; ++i)
    if (!taken[g * len + i]) pos.push_back(i);
  std::stable_sort(pos.begin(), pos.end(), [&](int64_t a, int64_t b) { return x[g * len + a] > x[g * len + b]; });
  return pos;
}

TEST(CriticalKVStage2, TopFreeAndKthMatchAFullSortPerHeadAndLayerWide) {
  std::mt19937 rng(1);
  for (int64_t group_rows : {1, 3}) {
    const obc::Stage2Layout l = layout(6, 40, 2, 3, 0, group_rows);
    const int64_t C = l.C(), len = group_rows * C;
    const std::vector<double> x = tied_values(l.rows * C, rng);
    std::vector<uint8_t> taken(l.rows * C);
    for (auto& t : taken) t = rng() % 4 == 0;
    for (int64_t k : std::vector<int64_t>{0, 1, 7, 30, len}) {
      std::vector<uint8_t> picks(l.rows * C, 9);
      std::vector<double> kth(l.rows / group_rows);
      obc::stage2_top_free(l, x.data(), taken.data(), k, picks.data());
      obc::stage2_kth_free(l, x.data(), taken.data(), k, kth.data());
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

TEST(CriticalKVStage2, WindowMinScansEveryMarkedCandidate) {
  std::mt19937 rng(2);
  for (int64_t kernel : {0, 1, 5}) {
    const obc::Stage2Layout l = layout(2, 30, 3, 4, kernel, 1);
    const int64_t C = l.C(), rad = kernel > 1 ? kernel / 2 : 0;
    std::vector<double> val(l.rows * C);
    std::uniform_real_distribution<double> u(-1, 1);
    for (auto& e : val) e = u(rng);
    std::vector<uint8_t> mark(l.rows * C);
    for (auto& m : mark) m = rng() % 3 == 0;
    std::vector<double> got(l.rows * l.N);
    obc::stage2_window_min(l, mark.data(), val.data(), got.data());
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

TEST(CriticalKVStage2, PoolReadsTheTokensBeforeTheRecentWindow) {
  // tokens 0..9, sink 2, recent 3: candidates are tokens 2..6, pooled over 0..6
  const std::vector<float> x = {5, 1, 0, 2, 0, 0, 3, 100, 100, 100};
  obc::Stage2Layout l = layout(1, 10, 2, 3, 3, 1);
  std::vector<double> out(l.C());
  obc::stage2_pool(l, x.data(), out.data());
  EXPECT_EQ(out, (std::vector<double>{2, 2, 2, 3, 3}));  // max over [t-1, t+1], token 7 excluded
  l.pool = obc::Pool::Avg;
  obc::stage2_pool(l, x.data(), out.data());
  EXPECT_EQ(out, (std::vector<double>{1, 2.0 / 3, 2.0 / 3, 1, 1}));  // divided by 3, padding counted as 0
}

}  // namespace

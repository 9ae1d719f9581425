// compact_rows_cpu against a gather into a fresh buffer, for the worst
// overlap patterns, strided (narrowed) rows and lengths; and the index checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "compact_cpu.h"
#include "compact_patterns.h"

namespace {

struct Case {
  int64_t B, H, N, D, M;  // M >= N: allocated rows (narrowed view of M rows)
};

template <typename T>
void run_case(const Case& c, int64_t L, int kind, bool with_lengths, std::mt19937& rng) {
  std::vector<T> k(c.B * c.H * c.M * c.D), v(k.size());
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<T>(i), v[i] = static_cast<T>(-1.0 * i);
  const std::vector<T> k0 = k, v0 = v;
  const std::vector<int64_t> idx = patterns::compact_indices(c.B * c.H, c.N, L, kind, rng);
  std::vector<int64_t> lengths(c.B * c.H);
  for (auto& x : lengths) x = with_lengths ? static_cast<int64_t>(rng() % (L + 1)) : L;
  obc::CompactParams p;
  for (int t = 0; t < 2; ++t) {
    p.t[t].data = t == 0 ? static_cast<void*>(k.data()) : static_cast<void*>(v.data());
    p.t[t].elem_size = sizeof(T);
    p.t[t].D = c.D;
    p.t[t].sb = c.H * c.M * c.D, p.t[t].sh = c.M * c.D, p.t[t].sn = c.D;
  }
  p.B = c.B, p.H = c.H, p.N = c.N, p.indices = idx.data(), p.L = L;
  p.lengths = with_lengths ? lengths.data() : nullptr;
  ASSERT_EQ(obc::check_compact_indices(idx.data(), p.lengths, c.H, L, c.N, 0, c.B * c.H).kind,
            obc::IndexError::Ok);
  obc::compact_rows_cpu(p, 0, 2 * c.B * c.H);
  for (int64_t r = 0; r < c.B * c.H; ++r)
    for (int64_t i = 0; i < c.M; ++i)
      for (int64_t d = 0; d < c.D; ++d) {
        const int64_t src = i < lengths[r] ? idx[r * L + i] : i;  // rows past the length untouched
        const int64_t at = (r * c.M + i) * c.D + d, from = (r * c.M + src) * c.D + d;
        ASSERT_EQ(k[at], k0[from]) << "kind " << kind << " row " << r << " i " << i;
        ASSERT_EQ(v[at], v0[from]);
      }
}

TEST(CompactCpu, WorstOverlapPatternsMatchGather) {
  std::mt19937 rng(3);
  const Case cases[] = {{1, 1, 10, 3, 10}, {2, 3, 37, 5, 41}, {1, 2, 64, 8, 64}, {2, 1, 5, 1, 9}};
  for (const Case& c : cases)
    for (int kind = 0; kind < 4; ++kind)
      for (int64_t L : {int64_t(1), c.N / 2, c.N - 1, c.N}) {
        if (L == 0) continue;
        run_case<float>(c, L, kind, false, rng);
        run_case<double>(c, L, kind, kind == 3, rng);
        run_case<uint16_t>(c, L, kind, false, rng);
      }
}

TEST(CompactCpu, CheckReportsFirstBadIndex) {
  const int64_t idx[] = {0, 2, 2, 1, 3, 9};  // H = 2 rows of L = 3, N = 5
  auto e = obc::check_compact_indices(idx, nullptr, 2, 3, 5, 0, 2);
  EXPECT_EQ(e.kind, obc::IndexError::NotIncreasing);
  EXPECT_EQ(e.i, 2);
  EXPECT_EQ(e.value, 2);
  e = obc::check_compact_indices(idx, nullptr, 2, 3, 5, 1, 2);
  EXPECT_EQ(e.kind, obc::IndexError::OutOfRange);
  EXPECT_EQ(e.h, 1);
  EXPECT_EQ(e.value, 9);
  const int64_t lengths[] = {2, 2};  // only the used prefix is checked
  EXPECT_EQ(obc::check_compact_indices(idx, lengths, 2, 3, 5, 0, 2).kind, obc::IndexError::Ok);
  const int64_t bad_len[] = {4, 0};
  EXPECT_EQ(obc::check_compact_indices(idx, bad_len, 2, 3, 5, 0, 2).kind, obc::IndexError::BadLength);
}

}  // namespace

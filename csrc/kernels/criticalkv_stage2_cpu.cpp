#include "criticalkv_stage2_cpu.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "top_m_cpu.h"

namespace obc {

namespace {

// A group's free candidates, idx = their position in the group
// (row-in-group * C + c), so ties go to the lower row, then index.
std::vector<Cand> free_entries(const Stage2Layout& l, const double* pooled, const uint8_t* taken, int64_t g) {
  const int64_t len = l.group_rows * l.C(), off = g * len;
  std::vector<Cand> e;
  e.reserve(len);
  for (int64_t i = 0; i < len; ++i)
    if (!taken[off + i]) e.push_back({score_key(pooled[off + i]), i});
  return e;
}

}  // namespace

void stage2_pool(const Stage2Layout& l, const float* x, double* out) {
  const int64_t C = l.C(), L = l.N - l.recent;
  for (int64_t r = 0; r < l.rows; ++r)
    for (int64_t c = 0; c < C; ++c)
      out[r * C + c] = pooled_score(x + r * l.N, DType::F32, l.sink + c, 0, L, l.pool_kernel, l.pool);
}

void stage2_top_free(const Stage2Layout& l, const double* pooled, const uint8_t* taken, int64_t k, uint8_t* picks) {
  const int64_t len = l.group_rows * l.C();
  std::fill(picks, picks + l.rows * l.C(), uint8_t{0});
  for (int64_t g = 0; g < l.rows / l.group_rows; ++g) {
    auto e = free_entries(l, pooled, taken, g);
    const int64_t m = std::min<int64_t>(k, static_cast<int64_t>(e.size()));
    top_m(e, m);
    for (int64_t i = 0; i < m; ++i) picks[g * len + e[i].idx] = 1;
  }
}

void stage2_kth_free(const Stage2Layout& l, const double* pooled, const uint8_t* taken, int64_t k, double* kth) {
  for (int64_t g = 0; g < l.rows / l.group_rows; ++g) {
    auto e = free_entries(l, pooled, taken, g);
    if (k <= 0 || k > static_cast<int64_t>(e.size())) {
      kth[g] = -std::numeric_limits<double>::infinity();
      continue;
    }
    std::nth_element(e.begin(), e.begin() + (k - 1), e.end(), better);
    kth[g] = pooled[g * l.group_rows * l.C() + e[k - 1].idx];
  }
}

void stage2_window_min(const Stage2Layout& l, const uint8_t* mark, const double* val, double* out) {
  const int64_t C = l.C(), L = l.N - l.recent;
  const int64_t rad = l.pool_kernel > 1 ? l.pool_kernel / 2 : 0;
  std::fill(out, out + l.rows * l.N, std::numeric_limits<double>::infinity());
  for (int64_t r = 0; r < l.rows; ++r)
    for (int64_t c = 0; c < C; ++c) {
      if (!mark[r * C + c]) continue;
      const int64_t t = l.sink + c;
      // pooling reads the tokens [0, L) only
      for (int64_t u = std::max<int64_t>(0, t - rad); u <= std::min(L - 1, t + rad); ++u)
        out[r * l.N + u] = std::min(out[r * l.N + u], val[r * C + c]);
    }
}

}  // namespace obc

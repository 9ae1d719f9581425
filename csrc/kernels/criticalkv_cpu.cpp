#include "criticalkv_cpu.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "top_m_cpu.h"

namespace obc {

namespace {

// A group's free candidates, idx = their position in the group
// (row-in-group * C + c), so ties go to the lower row, then index.
std::vector<Cand> free_entries(const CkvLayout& l, const double* pooled, const uint8_t* taken, int64_t g) {
  const int64_t len = l.group_rows * l.C(), off = g * len;
  std::vector<Cand> e;
  e.reserve(len);
  for (int64_t i = 0; i < len; ++i)
    if (!taken[off + i]) e.push_back({score_key(pooled[off + i]), i});
  return e;
}

}  // namespace

void ckv_pool(const CkvLayout& l, const float* x, double* out) {
  const int64_t C = l.C(), L = l.N - l.recent, pad = l.pool_kernel / 2;
  for (int64_t r = 0; r < l.rows; ++r) {
    const float* row = x + r * l.N;
    double* o = out + r * C;
    if (l.pool != Pool::Max || l.pool_kernel <= 1) {
      for (int64_t c = 0; c < C; ++c) o[c] = pooled_score(row, DType::F32, l.sink + c, 0, L, l.pool_kernel, l.pool);
      continue;
    }
    // Max pooling runs ~4 times per layer over every candidate: the
    // candidates whose window lies inside [0, L) as a running max over the
    // window's shifts (one vectorised pass per shift, in float32 on blocks
    // of kBlock candidates: twice the lanes of float64 and the block stays
    // in L1), the few at the edges through pooled_score. Same values: a max
    // does not round, so float32 holds it exactly, and NaN propagates as
    // there (a NaN stays once taken) before becoming -inf.
    constexpr int64_t kBlock = 256;
    const int64_t c0 = std::min(C, std::max<int64_t>(0, pad - l.sink)), c1 = std::max(c0, L - pad - l.sink);
    for (int64_t c = 0; c < c0; ++c) o[c] = pooled_score(row, DType::F32, l.sink + c, 0, L, l.pool_kernel, l.pool);
    const int64_t first = l.sink - pad;  // window of candidate c: row[first + c, first + c + kernel)
    for (int64_t b = c0; b < c1; b += kBlock) {
      const int64_t n = std::min(kBlock, c1 - b);
      const float* w = row + first + b;
      float m[kBlock];
      for (int64_t i = 0; i < n; ++i) m[i] = w[i];
      for (int64_t s = 1; s < l.pool_kernel; ++s)
        for (int64_t i = 0; i < n; ++i) {
          const float y = w[i + s];
          m[i] = y > m[i] || y != y ? y : m[i];
        }
      for (int64_t i = 0; i < n; ++i) o[b + i] = m[i] != m[i] ? -std::numeric_limits<double>::infinity() : m[i];
    }
    for (int64_t c = c1; c < C; ++c) o[c] = pooled_score(row, DType::F32, l.sink + c, 0, L, l.pool_kernel, l.pool);
  }
}

void ckv_top_free(const CkvLayout& l, const double* pooled, const uint8_t* taken, int64_t k, uint8_t* picks) {
  const int64_t len = l.group_rows * l.C();
  std::fill(picks, picks + l.rows * l.C(), uint8_t{0});
  for (int64_t g = 0; g < l.rows / l.group_rows; ++g) {
    auto e = free_entries(l, pooled, taken, g);
    const int64_t m = std::min<int64_t>(k, static_cast<int64_t>(e.size()));
    top_m(e, m);
    for (int64_t i = 0; i < m; ++i) picks[g * len + e[i].idx] = 1;
  }
}

void ckv_kth_free(const CkvLayout& l, const double* pooled, const uint8_t* taken, int64_t k, double* kth) {
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

void ckv_window_min(const CkvLayout& l, const uint8_t* mark, const double* val, double* out) {
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

int64_t kept_lengths(const CkvLayout& l, const uint8_t* keep, int64_t* lengths) {
  const int64_t C = l.C();
  int64_t len_max = 0;
  for (int64_t r = 0; r < l.rows; ++r) {
    lengths[r] = l.sink + l.recent + std::count_if(keep + r * C, keep + (r + 1) * C, [](uint8_t k) { return k != 0; });
    len_max = std::max(len_max, lengths[r]);
  }
  return len_max;
}

void kept_rows(const CkvLayout& l, const uint8_t* keep, int64_t len_max, int64_t* idx) {
  const int64_t C = l.C();
  for (int64_t r = 0; r < l.rows; ++r) {
    int64_t* out = idx + r * len_max;
    int64_t n = 0;
    for (int64_t t = 0; t < l.sink; ++t) out[n++] = t;
    for (int64_t c = 0; c < C; ++c)
      if (keep[r * C + c]) out[n++] = l.sink + c;
    for (int64_t t = l.N - l.recent; t < l.N; ++t) out[n++] = t;
    std::fill(out + n, out + len_max, int64_t{-1});
  }
}

}  // namespace obc

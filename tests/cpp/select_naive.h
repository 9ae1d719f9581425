// Naive select / select_adaptive for the GoogleTests (an independent
// re-statement of obcache/reference.py): pooled float64 scores, a stable
// sort by value descending, ascending output.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

namespace naive {

inline std::vector<double> pool(const std::vector<double>& s, int64_t k, bool avg) {
  const int64_t n = static_cast<int64_t>(s.size());
  std::vector<double> out(s);
  if (k > 1) {
    const int64_t pad = k / 2;
    for (int64_t i = 0; i < n; ++i) {
      double m = -std::numeric_limits<double>::infinity(), acc = 0;
      bool nan = false;
      for (int64_t j = i - pad; j <= i + pad; ++j) {
        if (j < 0 || j >= n) continue;
        nan = nan || std::isnan(s[j]);
        m = std::max(m, s[j]);
        acc += s[j];
      }
      out[i] = avg ? acc / static_cast<double>(k) : (nan ? NAN : m);
    }
  }
  for (double& x : out)
    if (std::isnan(x)) x = -std::numeric_limits<double>::infinity();
  return out;
}

// Indices (into v) of the m best, ties to the lower index, ascending.
inline std::vector<int64_t> top_ascending(const std::vector<double>& v, int64_t m) {
  std::vector<int64_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return v[a] > v[b]; });
  order.resize(static_cast<size_t>(m));
  std::sort(order.begin(), order.end());
  return order;
}

// One row of select; row: the N scores.
inline std::vector<int64_t> select_row(const std::vector<double>& row, int64_t budget, int64_t sink, int64_t recent,
                                       int64_t k, bool avg, int64_t start) {
  const int64_t N = static_cast<int64_t>(row.size());
  std::vector<int64_t> out;
  if (N - start <= budget) {
    for (int64_t i = N - budget; i < N; ++i) out.push_back(i);
    return out;
  }
  const int64_t lo = start + sink, hi = N - recent;
  std::vector<double> seg(row.begin() + start, row.begin() + hi);
  std::vector<double> pooled = pool(seg, k, avg);
  pooled.erase(pooled.begin(), pooled.begin() + sink);
  for (int64_t i = start; i < lo; ++i) out.push_back(i);
  for (int64_t i : top_ascending(pooled, budget - sink - recent)) out.push_back(i + lo);
  for (int64_t i = hi; i < N; ++i) out.push_back(i);
  return out;
}

// select_adaptive for one batch row: rows[h] = scores of head h; returns keep masks.
inline std::vector<std::vector<uint8_t>> adaptive(const std::vector<std::vector<double>>& rows, int64_t f,
                                                  int64_t extra, int64_t sink, int64_t recent, int64_t k, bool avg) {
  const int64_t H = static_cast<int64_t>(rows.size()), N = static_cast<int64_t>(rows[0].size());
  std::vector<std::vector<uint8_t>> keep(H, std::vector<uint8_t>(N, 0));
  std::vector<double> flat(H * N, -std::numeric_limits<double>::infinity());
  std::vector<uint8_t> cand(H * N, 0);
  for (int64_t h = 0; h < H; ++h) {
    std::vector<double> seg(rows[h].begin(), rows[h].begin() + (N - recent));
    std::vector<double> pooled = pool(seg, k, avg);
    pooled.erase(pooled.begin(), pooled.begin() + sink);
    for (int64_t i = 0; i < sink; ++i) keep[h][i] = 1;
    for (int64_t i = N - recent; i < N; ++i) keep[h][i] = 1;
    for (int64_t i : top_ascending(pooled, f - sink - recent)) keep[h][i + sink] = 1;
    for (int64_t q = sink; q < N - recent; ++q) {
      flat[h * N + q] = pooled[q - sink];
      cand[h * N + q] = !keep[h][q];
    }
  }
  std::vector<int64_t> order;
  for (int64_t i = 0; i < H * N; ++i)
    if (cand[i]) order.push_back(i);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return flat[a] > flat[b]; });
  for (int64_t i = 0; i < extra; ++i) keep[order[i] / N][order[i] % N] = 1;
  return keep;
}

}  // namespace naive

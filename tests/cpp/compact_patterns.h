// Index patterns [rows, L] that stress in-place compaction: a source row that
// is also another row's destination, at every distance.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace patterns {

// kind 0: every other row (capped so the last L fit), 1: the last L rows,
// 2: the first L rows, 3: a random sorted set.
inline std::vector<int64_t> compact_indices(int64_t rows, int64_t N, int64_t L, int kind, std::mt19937& rng) {
  std::vector<int64_t> idx;
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<int64_t> row(L);
    for (int64_t i = 0; i < L; ++i)
      row[i] = kind == 0 ? std::min(2 * i + 1, N - L + i) : kind == 1 ? N - L + i : i;
    if (kind == 3) {
      std::vector<int64_t> all(N);
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      row.assign(all.begin(), all.begin() + L);
      std::sort(row.begin(), row.end());
    }
    idx.insert(idx.end(), row.begin(), row.end());
  }
  return idx;
}

}  // namespace patterns

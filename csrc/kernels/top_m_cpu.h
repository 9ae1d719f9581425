// The CPU selections' candidate order, shared by select_cpu.cpp and
// criticalkv_cpu.cpp so that both rank ties the same way: larger
// score key first (score_key, select_params.h), then the lower index.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace obc {

struct Cand {
  uint64_t key;
  int64_t idx;
};

// Strict weak order: better first (larger key, then lower index).
inline bool better(const Cand& a, const Cand& b) {
  return a.key > b.key || (a.key == b.key && a.idx < b.idx);
}

// Moves the best m candidates to the front (unordered); nth_element leaves
// the m - 1 entries before the m-th ahead of it.
inline void top_m(std::vector<Cand>& c, int64_t m) {
  if (m <= 0 || m >= static_cast<int64_t>(c.size())) return;
  std::nth_element(c.begin(), c.begin() + (m - 1), c.end(), better);
}

}  // namespace obc

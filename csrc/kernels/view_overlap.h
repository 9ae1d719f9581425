// Whether two strided views of one buffer can share an element: what
// compact_ and evict must know of k and v, which they rewrite in place (a
// shared element would be moved twice). at::get_overlap_status answers only
// for dense views; a narrowed cache view k = buf[:, :, :N] is not dense, so
// two such views of one buffer come back "too hard" to tell, whether they
// are the same rows, shifted by one element, or k and v interleaved in one
// buffer (buf[..., 0, :] and buf[..., 1, :], disjoint). Here:
//   - element ranges [first, last] that do not meet: disjoint;
//   - the same strides (views cut from one buffer, narrowed alike or not)
//     and nested ones (each stride larger than the span of the smaller
//     ones): they share an element exactly when the offset between them is
//     sum_j c_j * stride_j with -size_b_j < c_j < size_a_j, and as the span
//     below a dim is under its stride, at most two digits per dim can make
//     it: a search of at most 2^dims leaves decides;
//   - anything else: unknown.
// Host-only; offsets and strides in elements of one size.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace obc {

struct StridedView {
  int64_t offset;                // first element, from the buffer's start
  std::vector<int64_t> sizes;    // all >= 1 (an empty view shares nothing)
  std::vector<int64_t> strides;  // >= 0, as torch's
};

enum class Sharing { No, Yes, Unknown };

namespace detail {

inline int64_t last_element(const StridedView& v) {
  int64_t last = v.offset;
  for (size_t j = 0; j < v.sizes.size(); ++j) last += (v.sizes[j] - 1) * v.strides[j];
  return last;
}

struct Dim {
  int64_t stride, size_a, size_b;
};

inline int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

// Is r = sum_{i >= j} c_i * stride_i with -size_b_i < c_i < size_a_i? Any
// such sum past dim j - 1 lies in [-below_b[j], below_a[j]], under
// stride_{j-1} (nested).
inline bool reachable(int64_t r, const std::vector<Dim>& d, const std::vector<int64_t>& below_a,
                      const std::vector<int64_t>& below_b, size_t j) {
  if (j == d.size()) return r == 0;
  const int64_t s = d[j].stride, lo = floor_div(r, s);
  for (int64_t c : {lo, lo + 1}) {
    if (c <= -d[j].size_b || c >= d[j].size_a) continue;
    const int64_t rest = r - c * s;
    if (rest >= -below_b[j + 1] && rest <= below_a[j + 1] && reachable(rest, d, below_a, below_b, j + 1))
      return true;
  }
  return false;
}

}  // namespace detail

inline Sharing views_share_elements(const StridedView& a, const StridedView& b) {
  for (int64_t n : a.sizes)
    if (n == 0) return Sharing::No;
  for (int64_t n : b.sizes)
    if (n == 0) return Sharing::No;
  if (detail::last_element(a) < b.offset || detail::last_element(b) < a.offset) return Sharing::No;
  if (a.sizes.size() != b.sizes.size()) return Sharing::Unknown;
  // The dims that move in either view (a size-1 dim's stride is arbitrary), largest stride first.
  std::vector<detail::Dim> d;
  for (size_t j = 0; j < a.sizes.size(); ++j) {
    if (a.sizes[j] == 1 && b.sizes[j] == 1) continue;
    if (a.strides[j] != b.strides[j]) return Sharing::Unknown;
    d.push_back({a.strides[j], a.sizes[j], b.sizes[j]});
  }
  std::sort(d.begin(), d.end(), [](const detail::Dim& x, const detail::Dim& y) { return x.stride > y.stride; });
  std::vector<int64_t> below_a(d.size() + 1, 0), below_b(d.size() + 1, 0);
  for (size_t j = d.size(); j-- > 0;) {
    // not nested: two digits may not suffice
    if (d[j].stride <= std::max(below_a[j + 1], below_b[j + 1])) return Sharing::Unknown;
    below_a[j] = below_a[j + 1] + (d[j].size_a - 1) * d[j].stride;
    below_b[j] = below_b[j + 1] + (d[j].size_b - 1) * d[j].stride;
  }
  return detail::reachable(b.offset - a.offset, d, below_a, below_b, 0) ? Sharing::Yes : Sharing::No;
}

}  // namespace obc

// obc::views_share_elements against the elements themselves: every answer
// Yes or No is checked by listing both views' offsets, and views cut from one
// buffer (the same nested strides, any sizes) must never come back Unknown.
#include <gtest/gtest.h>

#include <random>
#include <set>
#include <vector>

#include "view_overlap.h"

namespace {

using obc::Sharing;
using obc::StridedView;

std::set<int64_t> elements(const StridedView& v) {
  std::set<int64_t> out;
  std::vector<int64_t> i(v.sizes.size(), 0);
  for (;;) {
    int64_t o = v.offset;
    for (size_t j = 0; j < i.size(); ++j) o += i[j] * v.strides[j];
    out.insert(o);
    size_t j = i.size();
    while (j > 0 && ++i[j - 1] == v.sizes[j - 1]) i[--j] = 0;
    if (j == 0) return out;
  }
}

bool meet(const StridedView& a, const StridedView& b) {
  const auto ea = elements(a), eb = elements(b);
  for (int64_t x : ea)
    if (eb.count(x)) return true;
  return false;
}

// A cache laid out [B, H, M, D] (rows padded to `pitch` >= D), as k / v views
// of it would be.
StridedView cache_view(int64_t off, int64_t B, int64_t H, int64_t N, int64_t D, int64_t M, int64_t pitch) {
  return {off, {B, H, N, D}, {H * M * pitch, M * pitch, pitch, 1}};
}

TEST(ViewOverlap, CacheViewsOfOneBuffer) {
  const int64_t B = 2, H = 3, M = 10, N = 6, D = 4;
  // the same rows of one buffer, as two narrowed views of it
  EXPECT_EQ(obc::views_share_elements(cache_view(0, B, H, N, D, M, D), cache_view(0, B, H, N, D, M, D)),
            Sharing::Yes);
  // buf[..., :D] and buf[..., 1:D + 1] of a buffer with rows of D + 1
  EXPECT_EQ(obc::views_share_elements(cache_view(0, B, H, N, D, M, D + 1), cache_view(1, B, H, N, D, M, D + 1)),
            Sharing::Yes);
  // k and v interleaved: buf[..., 0, :] and buf[..., 1, :] of [B, H, M, 2, D]
  EXPECT_EQ(obc::views_share_elements(cache_view(0, B, H, N, D, M, 2 * D), cache_view(D, B, H, N, D, M, 2 * D)),
            Sharing::No);
  // k and v as two halves of one [2, B, H, M, D] buffer, both narrowed
  EXPECT_EQ(obc::views_share_elements(cache_view(0, B, H, N, D, M, D), cache_view(B * H * M * D, B, H, N, D, M, D)),
            Sharing::No);
  // the second view starts on the first's padding rows (row N of head 0): disjoint
  EXPECT_EQ(obc::views_share_elements(cache_view(0, 1, 1, N, D, M, D), cache_view(N * D, 1, 1, M - N, D, M, D)),
            Sharing::No);
  // ... and one row earlier, on the first view's last row
  EXPECT_EQ(obc::views_share_elements(cache_view(0, 1, 1, N, D, M, D), cache_view((N - 1) * D, 1, 1, 2, D, M, D)),
            Sharing::Yes);
  // empty views share nothing
  EXPECT_EQ(obc::views_share_elements(cache_view(0, B, H, 0, D, M, D), cache_view(0, B, H, N, D, M, D)),
            Sharing::No);
}

TEST(ViewOverlap, AgreesWithTheElementsOnRandomViews) {
  std::mt19937_64 rng(7);
  auto pick = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  int alike = 0, yes = 0, no = 0;
  for (int t = 0; t < 20000; ++t) {
    const int dims = static_cast<int>(pick(1, 4));
    StridedView a{pick(0, 40), {}, {}};
    // a buffer of sizes `full`, its strides nested from the innermost dim
    // out (each past the span below it, sometimes padded); a and b are
    // narrowed views of it
    int64_t stride = pick(1, 2), span = 0;
    std::vector<int64_t> full(dims), strides(dims);
    for (int j = dims - 1; j >= 0; --j) {
      full[j] = pick(1, 4);
      strides[j] = stride;
      span += (full[j] - 1) * stride;
      stride = span + pick(1, 3);
    }
    a.strides = strides;
    for (int j = 0; j < dims; ++j) a.sizes.push_back(pick(1, full[j]));
    StridedView b = a;
    b.offset = pick(0, 40);
    const int64_t kind = pick(0, 3);  // 0, 1: b narrowed as a; 2: narrowed otherwise; 3: strides permuted
    if (kind >= 2)
      for (int j = 0; j < dims; ++j) b.sizes[j] = pick(1, kind == 2 ? full[j] : 4);
    if (kind == 3) std::shuffle(b.strides.begin(), b.strides.end(), rng);
    const bool same_layout = kind <= 2;
    const Sharing s = obc::views_share_elements(a, b);
    const bool truth = meet(a, b);
    if (s == Sharing::Yes) {
      EXPECT_TRUE(truth) << "trial " << t;
      ++yes;
    } else if (s == Sharing::No) {
      EXPECT_FALSE(truth) << "trial " << t;
      ++no;
    } else {
      EXPECT_FALSE(same_layout) << "views with the same nested strides came back Unknown, trial " << t;
    }
    alike += same_layout;
  }
  // the search was exercised both ways, and mostly on views with the same strides
  EXPECT_GT(yes, 2000);
  EXPECT_GT(no, 2000);
  EXPECT_GT(alike, 14000);
}

}  // namespace

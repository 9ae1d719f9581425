// ckv_bounds (criticalkv_bounds_cpu) against its contract written as a
// plain loop. The values are multiples of 1/64 in [-2, 2], exact in every
// dtype, so the float64 sums of squares are exact in any order and the
// bounds must agree to the bit. CMakeLists.txt runs this binary once per
// CPU variant.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "criticalkv_bounds_cpu.h"
#include "saliency_naive.h"

namespace {

constexpr float kEps = 1e-4f, kSlack = 1e-3f;

struct Want {
  std::vector<float> hi, lo;
  bool finite = true;
};

Want contract(const std::vector<float>& v, int64_t n, int64_t D, const std::vector<float>& base, float nb) {
  Want w;
  for (int64_t t = 0; t < n; ++t) {
    double s = 0.0;
    for (int64_t d = 0; d < D; ++d) s += static_cast<double>(v[t * D + d]) * static_cast<double>(v[t * D + d]);
    const float f = base[t] + kEps, b = nb * static_cast<float>(std::sqrt(s)) * (1 + kSlack);
    w.hi.push_back(std::max(f, 0.0f) * b);
    w.lo.push_back(std::min(f, 0.0f) * b);
    w.finite = w.finite && std::isfinite(w.hi.back()) && std::isfinite(w.lo.back());
  }
  return w;
}

template <typename E>
void check(obc::DType dt, const std::vector<float>& v, int64_t n, int64_t D, const std::vector<float>& base,
           float nb) {
  std::vector<E> ve(v.size());
  for (size_t i = 0; i < v.size(); ++i) ve[i] = naive::from_float<E>(v[i]);
  std::vector<float> hi(n, -1.0f), lo(n, -1.0f);
  const bool finite = obc::ckv_bounds(dt, ve.data(), n, D, base.data(), nb, kEps, kSlack, hi.data(), lo.data());
  const Want w = contract(v, n, D, base, nb);
  EXPECT_EQ(finite, w.finite) << "dtype " << obc::dtype_name(dt) << " D=" << D;
  for (int64_t t = 0; t < n; ++t) {
    // NaN == NaN for the non-finite cases: compare the bits.
    ASSERT_EQ(0, std::memcmp(&hi[t], &w.hi[t], sizeof(float))) << "hi at " << t << " dtype " << obc::dtype_name(dt)
                                                                << " D=" << D << ": " << hi[t] << " vs " << w.hi[t];
    ASSERT_EQ(0, std::memcmp(&lo[t], &w.lo[t], sizeof(float))) << "lo at " << t << " dtype " << obc::dtype_name(dt)
                                                                << " D=" << D << ": " << lo[t] << " vs " << w.lo[t];
  }
}

// with_half: whether v converts to float16 exactly (the test's converter
// handles grid values only, not inf).
void check_all(const std::vector<float>& v, int64_t n, int64_t D, const std::vector<float>& base, float nb,
               bool with_half = true) {
  check<float>(obc::DType::F32, v, n, D, base, nb);
  check<double>(obc::DType::F64, v, n, D, base, nb);
  if (with_half) check<obc::half_t>(obc::DType::F16, v, n, D, base, nb);
  check<obc::bf16_t>(obc::DType::BF16, v, n, D, base, nb);
}

TEST(CriticalKVBoundsCpu, MatchTheContractToTheBitInEveryDtypeWithSignedBases) {
  std::mt19937 rng(3);
  for (int64_t D : {1, 7, 8, 64, 69}) {
    const int64_t n = 37;
    const std::vector<float> v = naive::grid_values(n * D, rng);
    std::vector<float> base = naive::grid_values(n, rng);  // negative ones bound from below (lo < 0 = hi)
    base[0] = -kEps;                                // f = 0: both bounds 0
    check_all(v, n, D, base, 1.75f);
  }
}

TEST(CriticalKVBoundsCpu, ANonFiniteValueOrBaseMakesTheRowNonFinite) {
  std::mt19937 rng(4);
  const int64_t n = 9, D = 16;
  std::vector<float> v = naive::grid_values(n * D, rng), base = naive::grid_values(n, rng);
  check_all(v, n, D, base, 1.0f);  // finite
  v[5 * D + 3] = std::numeric_limits<float>::infinity();
  check_all(v, n, D, base, 1.0f, /*with_half=*/false);
  v[5 * D + 3] = 0.5f;
  base[8] = std::numeric_limits<float>::quiet_NaN();
  check_all(v, n, D, base, 1.0f);
}

}  // namespace

// score_math.h: each per-(query, key) contribution and reduction on values
// worked out by hand from the formulas of shared/DESIGN.md section 3.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <type_traits>

#include "score_math.h"

namespace {

using obc::Score;

template <typename T>
class ScoreMath : public ::testing::Test {};
using AccTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(ScoreMath, AccTypes);

TYPED_TEST(ScoreMath, AttnAndTovaAreTheWeight) {
  using T = TypeParam;
  EXPECT_EQ(obc::contrib_attn<T>(0.25), T(0.25));
  EXPECT_EQ((obc::score_contribution<Score::Tova, T>(0.25, 9, 9, 9, 9, 9, 9)), T(0.25));
}

TYPED_TEST(ScoreMath, VatpIsWeightTimesL1Norm) { EXPECT_EQ(obc::contrib_vatp<TypeParam>(0.5, 3), TypeParam(1.5)); }

TYPED_TEST(ScoreMath, ValueIsWeightSquaredTimesSquaredNorm) {
  EXPECT_EQ(obc::contrib_value<TypeParam>(0.5, 4), TypeParam(1));
}

TYPED_TEST(ScoreMath, KeyUsesTheExpandedDistance) {
  using T = TypeParam;
  // a z = 1; ||v - o||^2 = 5 - 2 * 1 + 2 = 5.
  EXPECT_EQ(obc::contrib_key<T>(0.5, 2, 5, 1, 2), T(5));
  // a z = -1 gives the same (squared).
  EXPECT_EQ(obc::contrib_key<T>(0.5, -2, 5, 1, 2), T(5));
}

TYPED_TEST(ScoreMath, ExpandedDistanceIsClampedAtZero) {
  using T = TypeParam;
  EXPECT_EQ(obc::sq_dist_expanded<T>(1, 1.5, 1), T(0));  // 1 - 3 + 1 = -1
  EXPECT_EQ(obc::contrib_key<T>(0.5, 2, 1, 1.5, 1), T(0));
  EXPECT_EQ(obc::sq_dist_expanded<T>(4, 1, 3), T(5));
}

TYPED_TEST(ScoreMath, JointIsValuePlusKeyPlusCrossTerm) {
  using T = TypeParam;
  // a^2 vn2 = 1.25, key = 5, cross = 2 a^2 z (vn2 - vo) = 2 * 0.25 * 2 * 4 = 4.
  EXPECT_EQ(obc::contrib_joint<T>(0.5, 2, 5, 1, 2), T(10.25));
  // Negative logit: the cross term is -4 (the only part that can be negative).
  EXPECT_EQ(obc::contrib_joint<T>(0.5, -2, 5, 1, 2), T(2.25));
  // joint = ||a v + a z (v - o)||^2 (the output change is linear in the
  // perturbation): v = (1, 2), o = (0.5, -1), a = 0.3, z = -2 gives
  // (0, -1.2), so 1.44 although the cross term (-2.34) is negative.
  EXPECT_NEAR(obc::contrib_joint<T>(0.3, -2, 5, -1.5, 1.25), T(1.44), 1e-5);
}

// A weight that underflowed to 0 contributes 0 at any finite logit: Z^2 d
// overflows here (1e30^2 in float, 1e200^2 in double), so a form with A^2
// factored out, A^2 (||v||^2 + Z (Z d + ...)), would give 0 x inf = NaN.
TYPED_TEST(ScoreMath, JointAndKeyAreZeroWhereTheWeightUnderflowedAtAHugeLogit) {
  using T = TypeParam;
  const T z = std::is_same<T, float>::value ? T(-1e30) : T(-1e200);
  EXPECT_EQ(obc::contrib_joint<T>(0, z, 5, 1, 2), T(0));
  EXPECT_EQ(obc::contrib_key<T>(0, z, 5, 1, 2), T(0));
}

TYPED_TEST(ScoreMath, LooDividesByTheRemainderClampedAtMinRemainder) {
  using T = TypeParam;
  EXPECT_EQ(obc::contrib_loo<T>(0.5, 3), T(3));
  EXPECT_EQ(obc::contrib_loo<T>(0, 3), T(0));
  // A = 1: 1 / 1e-4 * 2, finite.
  EXPECT_NEAR(obc::contrib_loo<T>(1, 2), T(20000), T(20000) * 1e-6);
  // 1 - A = 2.5e-5 < 1e-4: clamped.
  EXPECT_NEAR(obc::contrib_loo<T>(T(0.999975), 1), T(0.999975) / T(1e-4), 1e-2);
  EXPECT_EQ(obc::kLooMinRemainder, 1e-4);
}

TYPED_TEST(ScoreMath, RunTimeSelectionMatchesCompileTime) {
  using T = TypeParam;
  const Score all[] = {Score::Attn, Score::Tova, Score::Vatp, Score::Value, Score::Key, Score::Joint, Score::Loo};
  const T want[] = {T(0.5), T(0.5), T(1.5), T(1.25), T(5), T(10.25), T(3)};
  for (int s = 0; s < 7; ++s)
    EXPECT_EQ(obc::score_contribution<T>(all[s], 0.5, 2, 3, 5, 1, 2, 3), want[s]) << "score " << s;
}

TYPED_TEST(ScoreMath, QueryReduceSumsOrTakesTheMax) {
  using T = TypeParam;
  for (auto r : {obc::QueryReduce::Sum, obc::QueryReduce::Max}) {
    T acc = obc::query_reduce_init<T>(r);
    for (T c : {T(1), T(-2), T(0.5)}) acc = obc::query_reduce_step(r, acc, c);
    EXPECT_EQ(acc, r == obc::QueryReduce::Sum ? T(-0.5) : T(1));
  }
  EXPECT_EQ(obc::query_reduce_init<T>(obc::QueryReduce::Max), -std::numeric_limits<T>::infinity());
  // A max over only negative values (joint's cross term) stays negative.
  T acc = obc::query_reduce_init<T>(obc::QueryReduce::Max);
  acc = obc::query_reduce_step(obc::QueryReduce::Max, acc, T(-3));
  EXPECT_EQ(acc, T(-3));
}

TYPED_TEST(ScoreMath, GroupReduceSumMeanMax) {
  using T = TypeParam;
  const T heads[] = {T(1), T(4), T(-2)};
  const obc::GroupReduce rs[] = {obc::GroupReduce::Sum, obc::GroupReduce::Mean, obc::GroupReduce::Max};
  const T want[] = {T(3), T(1), T(4)};
  for (int i = 0; i < 3; ++i) {
    T acc = obc::group_reduce_init<T>(rs[i]);
    for (T h : heads) acc = obc::group_reduce_step(rs[i], acc, h);
    EXPECT_EQ(obc::group_reduce_finish(rs[i], acc, 3), want[i]);
  }
}

TEST(ScoreMathMask, CausalWindowSeesKeysUpToItsPosition) {
  // N = 10, W = 4: window query i sits at 6 + i.
  EXPECT_EQ(obc::query_position(10, 4, 0), 6);
  EXPECT_EQ(obc::query_position(10, 4, 3), 9);
  EXPECT_TRUE(obc::key_visible(true, 6, 6));
  EXPECT_FALSE(obc::key_visible(true, 7, 6));
  EXPECT_TRUE(obc::key_visible(false, 9, 6));
}

TEST(ScoreMathNeeds, TermsPerScore) {
  EXPECT_TRUE(obc::score_needs_vo(Score::Key));
  EXPECT_TRUE(obc::score_needs_vo(Score::Joint));
  EXPECT_FALSE(obc::score_needs_vo(Score::Loo));
  EXPECT_TRUE(obc::score_needs_dist(Score::Loo));
  EXPECT_TRUE(obc::score_needs_vn1(Score::Vatp));
  EXPECT_TRUE(obc::score_needs_vn2(Score::Value));
  EXPECT_FALSE(obc::score_needs_vn2(Score::Attn));
  EXPECT_TRUE(obc::score_last_query_only(Score::Tova));
  EXPECT_FALSE(obc::score_last_query_only(Score::Attn));
}

}  // namespace

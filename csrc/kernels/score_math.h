// The per-(query, key) saliency contributions of shared/DESIGN.md section 3
// and their reductions, as inline host/device functions: the CPU kernel, the
// CUDA kernels and the emulated CUDA kernels all compute scores through these
// (no score formula is written anywhere else). T is the accumulation type:
// float, or double for float64 inputs.
//
// Inputs of one (query row r, key p) pair, all in the accumulation type:
//   a    = A_{r,p}, the softmax weight (0 when masked)
//   z    = Z_{r,p}, the scaled logit (0 when masked)
//   vn1  = ||v_p||_1, vn2 = ||v_p||_2^2
//   vo   = v_p . o_r, on2 = ||o_r||_2^2
//   dist = ||v_p - o_r||_2, computed directly (not via the expansion) so that
//          `loo` stays accurate when A ~ 1 and v_p ~ o_r.
// A masked (causal) pair contributes exactly 0; kernels skip the formula.
#pragma once

#include "common.h"
#include "saliency_params.h"

#include <type_traits>

#if !defined(__CUDACC__) && !defined(OBC_SIMT_EMULATION)
#include <cmath>
#endif

namespace obc {

// obcache.reference.LOO_MIN_REMAINDER: 1 - A is clamped here for `loo`, so a
// token holding (almost) all of a query's attention gets a large finite score.
constexpr double kLooMinRemainder = 1e-4;

// Which per-key / per-pair terms a score needs (kernels skip the others).
OBC_HD constexpr bool score_needs_vo(Score s) { return s == Score::Key || s == Score::Joint; }
OBC_HD constexpr bool score_needs_dist(Score s) { return s == Score::Loo; }
OBC_HD constexpr bool score_needs_vn2(Score s) {
  return s == Score::Value || s == Score::Key || s == Score::Joint;
}
OBC_HD constexpr bool score_needs_vn1(Score s) { return s == Score::Vatp; }
// `tova` reads only the last window query of each head.
OBC_HD constexpr bool score_last_query_only(Score s) { return s == Score::Tova; }

// ||v_p - o||^2 by the expansion ||v||^2 - 2 v.o + ||o||^2, clamped at 0
// (rounding can make the expansion slightly negative). NaN passes through
// (the README's NaN policy: never silently dropped).
// On sm_80+ the clamp is one NaN-keeping max (max.NaN), where the compare
// and select took two instructions per (query, key) pair; -0.0 may come out
// as +0.0, which no score or ranking tells apart.
template <typename T>
OBC_HD OBC_INLINE T clamp_at_zero(T d) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same<T, float>::value) {
    float y;
    asm("max.NaN.f32 %0, %1, 0f00000000;" : "=f"(y) : "f"(d));
    return y;
  }
#endif
  return d < T(0) ? T(0) : d;
}
// a * b + c. On GPUs one fused multiply-add, where nvcc makes 2 v.o once for
// both of its uses and then fuses neither; the host leaves it to the
// compiler (std::fma is a library call without FMA hardware).
template <typename T>
OBC_HD OBC_INLINE T mul_add(T a, T b, T c) {
#if defined(__CUDA_ARCH__)
  return fma(a, b, c);
#else
  return a * b + c;
#endif
}
template <typename T>
OBC_HD OBC_INLINE T sq_dist_expanded(T vn2, T vo, T on2) {
  return clamp_at_zero(mul_add(T(-2), vo, vn2) + on2);
}

// NaN policy (README): a score that is not finite (NaN, or +-inf from Inf
// inputs) is written as NaN, by the CPU and CUDA kernels alike; select then
// ranks it below every finite score.
template <typename T>
OBC_HD OBC_INLINE T finite_or_nan(T x) {
  const T d = x - x;  // 0 for finite x, NaN for +-inf and NaN (needs IEEE math, no -ffast-math)
  return d == T(0) ? x : d;
}

template <typename T>
OBC_HD OBC_INLINE T contrib_attn(T a) {
  return a;
}
template <typename T>
OBC_HD OBC_INLINE T contrib_vatp(T a, T vn1) {
  return a * vn1;
}
template <typename T>
OBC_HD OBC_INLINE T contrib_value(T a, T vn2) {
  return a * a * vn2;
}
template <typename T>
OBC_HD OBC_INLINE T contrib_key(T a, T z, T vn2, T vo, T on2) {
  const T az = a * z;
  return az * az * sq_dist_expanded(vn2, vo, on2);
}
// value + key + the cross term 2 A^2 Z (||v||^2 - v.o), which can be negative,
// as A^2 ||v||^2 + A Z (A Z d + A (2 ||v||^2 - 2 v.o)) with d = ||v - o||^2:
// 10 instructions per pair on a GPU where the sum of products took 17
// (fused multiply-adds; 2 ||v||^2 - 2 v.o is 2 (||v||^2 - v.o) exactly, one
// of them with 2 ||v||^2 made once per key). Every product with Z carries A
// too, so an A that underflowed to 0 gives 0 at any finite Z, as the sum of
// products did: A^2 factored out, A^2 (||v||^2 + Z (Z d + ...)), would take
// 2 instructions fewer but turn 0 x (an overflowing Z^2 d) into NaN.
template <typename T>
OBC_HD OBC_INLINE T contrib_joint(T a, T z, T vn2, T vo, T on2) {
  const T az = a * z, cross = mul_add(T(-2), vo, T(2) * vn2);
  return mul_add(az, mul_add(a, cross, az * sq_dist_expanded(vn2, vo, on2)), a * a * vn2);
}
template <typename T>
OBC_HD OBC_INLINE T contrib_loo(T a, T dist) {
  T rem = T(1) - a;
  rem = rem > T(kLooMinRemainder) ? rem : T(kLooMinRemainder);
  return a / rem * dist;
}

// The contribution of one visible (query, key) pair; S is a compile-time
// constant in the kernels so the selection costs nothing in inner loops.
template <Score S, typename T>
OBC_HD OBC_INLINE T score_contribution(T a, T z, T vn1, T vn2, T vo, T on2, T dist) {
  (void)z, (void)vn1, (void)vn2, (void)vo, (void)on2, (void)dist;
  if constexpr (S == Score::Attn || S == Score::Tova) return contrib_attn(a);
  else if constexpr (S == Score::Vatp) return contrib_vatp(a, vn1);
  else if constexpr (S == Score::Value) return contrib_value(a, vn2);
  else if constexpr (S == Score::Key) return contrib_key(a, z, vn2, vo, on2);
  else if constexpr (S == Score::Joint) return contrib_joint(a, z, vn2, vo, on2);
  else return contrib_loo(a, dist);
}

// Run-time selection (tests, slow paths).
template <typename T>
OBC_HD OBC_INLINE T score_contribution(Score s, T a, T z, T vn1, T vn2, T vo, T on2, T dist) {
  switch (s) {
    case Score::Attn: return score_contribution<Score::Attn>(a, z, vn1, vn2, vo, on2, dist);
    case Score::Tova: return score_contribution<Score::Tova>(a, z, vn1, vn2, vo, on2, dist);
    case Score::Vatp: return score_contribution<Score::Vatp>(a, z, vn1, vn2, vo, on2, dist);
    case Score::Value: return score_contribution<Score::Value>(a, z, vn1, vn2, vo, on2, dist);
    case Score::Key: return score_contribution<Score::Key>(a, z, vn1, vn2, vo, on2, dist);
    case Score::Joint: return score_contribution<Score::Joint>(a, z, vn1, vn2, vo, on2, dist);
    case Score::Loo: return score_contribution<Score::Loo>(a, z, vn1, vn2, vo, on2, dist);
  }
  return T(0);
}

// ---- Reductions: over the window queries (per query head), then over the G
// heads of a group. Every query takes part (a masked pair as 0), so `max`
// starts from -inf and sees the zeros of masked pairs, as the reference does.
// `max` propagates NaN (as torch.amax does): once NaN, the result stays NaN.

template <typename T>
OBC_HD OBC_INLINE T reduce_identity_max() {
  return T(-__builtin_huge_valf());  // -inf; a builtin g++ and nvcc both accept
}

template <typename T>
OBC_HD OBC_INLINE T query_reduce_init(QueryReduce r) {
  return r == QueryReduce::Max ? T(reduce_identity_max<T>()) : T(0);
}
template <typename T>
OBC_HD OBC_INLINE T query_reduce_step(QueryReduce r, T acc, T c) {
  return r == QueryReduce::Max ? ((c > acc || c != c) ? c : acc) : acc + c;
}

template <typename T>
OBC_HD OBC_INLINE T group_reduce_init(GroupReduce r) {
  return r == GroupReduce::Max ? T(reduce_identity_max<T>()) : T(0);
}
template <typename T>
OBC_HD OBC_INLINE T group_reduce_step(GroupReduce r, T acc, T head) {
  return r == GroupReduce::Max ? ((head > acc || head != head) ? head : acc) : acc + head;
}
template <typename T>
OBC_HD OBC_INLINE T group_reduce_finish(GroupReduce r, T acc, int64_t G) {
  return r == GroupReduce::Mean ? acc / T(G) : acc;
}

// A window query's absolute position and which keys it sees.
OBC_HD OBC_INLINE int64_t query_position(int64_t N, int64_t W, int64_t i) { return N - W + i; }
OBC_HD OBC_INLINE bool key_visible(bool causal, int64_t key, int64_t query_pos) {
  return !causal || key <= query_pos;
}

}  // namespace obc

// Plain descriptions of one `select` / `select_adaptive` call and the math the
// CPU kernel, the CUDA kernel and the emulated CUDA kernel share (pooling and
// the order-preserving key). Strides are in elements; the last dim of the
// scores is contiguous.
//
// Ranking (obcache/reference.py `pool_scores` + `_top_ascending`): pooled
// scores are computed in float64 (max ignores padding and propagates NaN, avg
// sums left to right and divides by the kernel size, padding counted as 0),
// then NaN -> -inf and -0.0 -> +0.0 (a stable sort sees them as equal).
// Candidates are ordered by (pooled value desc, index asc). The key below maps
// that value order onto unsigned integer order, so "larger key, then lower
// index" is exactly the reference's order.
#pragma once

#include <cstdint>
#include <limits>

#include "common.h"

namespace obc {

enum class Pool : int32_t { Max = 0, Avg = 1 };

struct SelectParams {
  const void* scores = nullptr;  // [B, H, N], float32 or float64
  DType dtype = DType::F32;      // F32 or F64 only
  int64_t B = 0, H = 0, N = 0;
  int64_t s_sb = 0, s_sh = 0;      // strides of scores in elements (last dim stride 1)
  const int64_t* start = nullptr;  // [B] first valid position per batch row, or null
  int64_t budget = 0;              // < N (budget >= N is handled by the binding)
  int64_t sink = 0, recent = 0;
  int64_t pool_kernel = 0;  // 0, 1 (no pooling) or odd
  Pool pool = Pool::Max;
  int64_t* out = nullptr;  // [B, H, budget] contiguous int64
};

struct SelectAdaptiveParams {
  const void* scores = nullptr;  // [B, H, N], float32 or float64
  DType dtype = DType::F32;
  int64_t B = 0, H = 0, N = 0;
  int64_t s_sb = 0, s_sh = 0;
  int64_t floor_tokens = 0;  // f: tokens every head keeps on its own (>= sink + recent)
  int64_t extra = 0;         // total_budget - H * f: tokens shared by all heads of a batch row
  int64_t sink = 0, recent = 0;
  int64_t pool_kernel = 0;
  Pool pool = Pool::Max;
};

OBC_HD OBC_INLINE double neg_inf_d() {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(0xfff0000000000000ULL));
#else
  return -std::numeric_limits<double>::infinity();
#endif
}

OBC_HD OBC_INLINE double load_score(const void* base, DType dt, int64_t i) {
  return dt == DType::F64 ? static_cast<const double*>(base)[i]
                          : static_cast<double>(static_cast<const float*>(base)[i]);
}

// Pooled score of position p of the segment row[lo, hi) (p in [lo, hi)),
// NaN mapped to -inf. `row` points at element 0 of the (b, h) row.
OBC_HD OBC_INLINE double pooled_score(const void* row, DType dt, int64_t p, int64_t lo, int64_t hi,
                                      int64_t kernel, Pool pool) {
  double r;
  if (kernel <= 1) {
    r = load_score(row, dt, p);
  } else {
    const int64_t pad = kernel / 2;
    const int64_t a = p - pad < lo ? lo : p - pad;
    const int64_t b = p + pad + 1 > hi ? hi : p + pad + 1;
    if (pool == Pool::Max) {
      r = neg_inf_d();
      for (int64_t j = a; j < b; ++j) {
        const double x = load_score(row, dt, j);
        if (x > r || x != x) r = x;  // NaN propagates, as in torch's max_pool1d
        if (x != x) break;
      }
    } else {
      double acc = 0.0;
      for (int64_t j = a; j < b; ++j) acc += load_score(row, dt, j);
      r = acc / static_cast<double>(kernel);
    }
  }
  return r != r ? neg_inf_d() : r;
}

// An IEEE value's bits u as an unsigned key in the value's order: negative
// values (sign set) flipped whole, the others' sign bit set.
template <typename U>
OBC_HD OBC_INLINE U order_key(U u) {
  constexpr U kSign = U(1) << (8 * sizeof(U) - 1);
  return (u & kSign) ? U(~u) : U(u | kSign);
}

// Order-preserving map double -> uint64 (larger value -> larger key) after
// NaN -> -inf (done by pooled_score) and -0.0 -> +0.0. Key 0 is never produced
// by a score (it would be a NaN pattern), so it marks "not a candidate".
OBC_HD OBC_INLINE uint64_t score_key(double x) {
  if (x == 0.0) x = 0.0;  // -0.0 ties with +0.0
  uint64_t u;
#if defined(__CUDA_ARCH__)
  u = static_cast<uint64_t>(__double_as_longlong(x));
#else
  std::memcpy(&u, &x, sizeof(u));
#endif
  return order_key(u);
}

// The same order on 32 bits, for a pooled score that is a float value (float32
// scores, max-pooled or not: pooled_score then returns one of them, or -inf).
// Where both apply, score_key32(a) < score_key32(b) exactly when score_key(a)
// < score_key(b), so the CUDA select moves half the bytes per key.
OBC_HD OBC_INLINE uint32_t score_key32(double x) {
  float f = static_cast<float>(x);
  if (f == 0.0f) f = 0.0f;  // -0.0 ties with +0.0
  return order_key(float_to_bits(f));
}
// Whether a select's pooled scores are float values (score_key32 applies).
OBC_HD OBC_INLINE bool pooled_scores_are_floats(DType dt, int64_t kernel, Pool pool) {
  return dt == DType::F32 && (kernel <= 1 || pool == Pool::Max);
}

}  // namespace obc

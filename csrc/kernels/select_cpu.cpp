// CPU select: per (b, h) row, O(N) work.
// Algorithm: pool the candidate scores once into (key, index) pairs (key =
// order-preserving uint64 of the float64 pooled score, select_params.h), then
// std::nth_element with the (key desc, index asc) order puts the top m first;
// marking them in a byte mask and scanning it gives ascending output without
// sorting. Memory: reads the score row once (pool_kernel times from cache),
// 16 bytes of workspace per candidate (thread-local, reused across rows).
// Float32 scores, max-pooled or not (the common case), take a packed path:
// see select_row_packed. Parallelism comes from the binding
// (at::parallel_for over rows).
#include "select_cpu.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "top_m_cpu.h"

namespace obc {
namespace {

const void* row_ptr(const void* base, DType dt, int64_t off) {
  return dt == DType::F64 ? static_cast<const void*>(static_cast<const double*>(base) + off)
                          : static_cast<const void*>(static_cast<const float*>(base) + off);
}

// Keys of positions [from, hi) pooled over the segment [seg_lo, hi).
void pool_keys(const void* row, DType dt, int64_t from, int64_t seg_lo, int64_t hi, int64_t kernel,
               Pool pool, std::vector<Cand>& out) {
  out.resize(static_cast<size_t>(hi - from));
  for (int64_t q = from; q < hi; ++q)
    out[static_cast<size_t>(q - from)] = {score_key(pooled_score(row, dt, q, seg_lo, hi, kernel, pool)), q};
}

// A NaN score's key while pooling: above every float's key, so it wins
// every max, as NaN propagates through pooled_score's max; -inf's key after.
constexpr uint32_t kNanKey = 0xFFFFFFFFu;

// Whether select_row_packed applies: the pooled scores are float values
// (score_key32 orders them as score_key does) and offsets fit 32 bits.
bool packed_applies(const SelectParams& p) {
  return pooled_scores_are_floats(p.dtype, p.pool_kernel, p.pool) && p.N < (int64_t(1) << 32);
}

// The best m of the candidates [lo, hi) of a float32 row, pooled over
// [seg_lo, hi), into mark (offsets from lo). Each candidate is one uint64,
// its 32-bit key above and the complement of its offset below, so one
// integer compare ranks two as better() does (larger key, then lower index)
// and nth_element moves 8 bytes where Cand is 16; the max-pooling runs on
// the keys (order_key is monotonic: the max of the keys is the key of the
// max). The same picks as the Cand path; 2.2x slower than kvpress's
// F.max_pool1d + topk at N = 64k before (one thread, Zen 4).
void select_row_packed(const float* row, int64_t seg_lo, int64_t lo, int64_t hi, int64_t m, int64_t kernel,
                       std::vector<uint32_t>& raw, std::vector<uint64_t>& cand, std::vector<uint8_t>& mark) {
  raw.resize(static_cast<size_t>(hi - seg_lo));
  for (int64_t j = seg_lo; j < hi; ++j) {
    const float x = row[j];
    raw[static_cast<size_t>(j - seg_lo)] = std::isnan(x) ? kNanKey : score_key32(x);
  }
  const uint32_t neg_inf = score_key32(neg_inf_d());
  const int64_t pad = kernel > 1 ? kernel / 2 : 0;
  cand.resize(static_cast<size_t>(hi - lo));
  for (int64_t q = lo; q < hi; ++q) {
    const int64_t a = std::max(q - pad, seg_lo), b = std::min(q + pad + 1, hi);
    uint32_t key = 0;  // no score has key 0 (select_params.h)
    for (int64_t j = a; j < b; ++j) key = std::max(key, raw[static_cast<size_t>(j - seg_lo)]);
    if (key == kNanKey) key = neg_inf;
    cand[static_cast<size_t>(q - lo)] = uint64_t(key) << 32 | (0xFFFFFFFFu - static_cast<uint32_t>(q - lo));
  }
  std::nth_element(cand.begin(), cand.begin() + (m - 1), cand.end(), std::greater<uint64_t>());
  mark.assign(static_cast<size_t>(hi - lo), 0);
  for (int64_t i = 0; i < m; ++i) mark[0xFFFFFFFFu - static_cast<uint32_t>(cand[static_cast<size_t>(i)])] = 1;
}

}  // namespace

void select_rows_cpu(const SelectParams& p, int64_t row_begin, int64_t row_end) {
  std::vector<Cand> cand;
  std::vector<uint8_t> mark;
  std::vector<uint32_t> raw;
  std::vector<uint64_t> packed;
  const bool fast = packed_applies(p);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / p.H, h = row % p.H;
    int64_t s = p.start ? p.start[b] : 0;
    s = s < 0 ? 0 : (s > p.N ? p.N : s);
    int64_t* out = p.out + row * p.budget;
    if (p.N - s <= p.budget) {  // every valid token fits: the last `budget` positions
      for (int64_t i = 0; i < p.budget; ++i) out[i] = p.N - p.budget + i;
      continue;
    }
    const int64_t lo = s + p.sink, hi = p.N - p.recent, m = p.budget - p.sink - p.recent;
    for (int64_t i = 0; i < p.sink; ++i) out[i] = s + i;
    for (int64_t i = 0; i < p.recent; ++i) out[p.budget - p.recent + i] = hi + i;
    if (m == 0) continue;
    const void* r = row_ptr(p.scores, p.dtype, b * p.s_sb + h * p.s_sh);
    if (fast && m < hi - lo) {
      select_row_packed(static_cast<const float*>(r), s, lo, hi, m, p.pool_kernel, raw, packed, mark);
    } else {
      pool_keys(r, p.dtype, lo, s, hi, p.pool_kernel, p.pool, cand);
      top_m(cand, m);
      mark.assign(static_cast<size_t>(hi - lo), 0);
      for (int64_t i = 0; i < m; ++i) mark[static_cast<size_t>(cand[i].idx - lo)] = 1;
    }
    int64_t* o = out + p.sink;
    for (int64_t q = lo; q < hi; ++q)
      if (mark[static_cast<size_t>(q - lo)]) *o++ = q;
  }
}

void select_adaptive_mark_cpu(const SelectAdaptiveParams& p, uint8_t* keep, int64_t* lengths,
                              int64_t b_begin, int64_t b_end) {
  const int64_t N = p.N, H = p.H, hi = N - p.recent, m1 = p.floor_tokens - p.sink - p.recent;
  std::vector<Cand> cand, rest;
  for (int64_t b = b_begin; b < b_end; ++b) {
    rest.clear();
    for (int64_t h = 0; h < H; ++h) {
      uint8_t* kp = keep + (b * H + h) * N;
      std::fill(kp, kp + N, uint8_t(0));
      std::fill(kp, kp + p.sink, uint8_t(1));
      std::fill(kp + hi, kp + N, uint8_t(1));
      const void* r = row_ptr(p.scores, p.dtype, b * p.s_sb + h * p.s_sh);
      pool_keys(r, p.dtype, p.sink, 0, hi, p.pool_kernel, p.pool, cand);
      top_m(cand, m1);
      for (int64_t i = 0; i < m1; ++i) kp[cand[i].idx] = 1;
      // The rest compete across heads; flat index h * N + q orders ties by
      // head, then position.
      for (size_t i = static_cast<size_t>(m1); i < cand.size(); ++i)
        rest.push_back({cand[i].key, h * N + cand[i].idx});
    }
    top_m(rest, p.extra);
    for (int64_t i = 0; i < p.extra; ++i) keep[b * H * N + rest[i].idx] = 1;
    for (int64_t h = 0; h < H; ++h) {
      const uint8_t* kp = keep + (b * H + h) * N;
      int64_t c = 0;
      for (int64_t q = 0; q < N; ++q) c += kp[q];
      lengths[b * H + h] = c;
    }
  }
}

void select_adaptive_emit_cpu(const uint8_t* keep, int64_t N, int64_t Lmax, int64_t* out,
                              int64_t row_begin, int64_t row_end) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    const uint8_t* kp = keep + row * N;
    int64_t* o = out + row * Lmax;
    int64_t n = 0;
    for (int64_t q = 0; q < N; ++q)
      if (kp[q]) o[n++] = q;
    for (; n < Lmax; ++n) o[n] = -1;
  }
}

}  // namespace obc

// CPU select: per (b, h) row, O(N) work. Parallelism comes from the binding
// (at::parallel_for over rows); workspaces are per call, reused across rows.
// Float32 scores, max-pooled or not (the common case): 32-bit keys (the
// order-preserving score_key32, select_params.h), a radix select for the
// cut, then one ascending scan that emits the kept positions; 8 bytes of
// workspace per candidate. See select_row_packed.
// Otherwise (float64 scores, average pooling): (key, index) pairs of the
// float64 pooled score (score_key), std::nth_element with the (key desc, index
// asc) order puts the top m first, and a byte mask scanned in order gives
// ascending output without sorting; 17 bytes of workspace per candidate.
#include "select_cpu.h"

#include <algorithm>
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

// score_key32 of a float32 score on its bits, NaN -> kNanKey: integer
// operations only, so the loop over a row vectorises.
inline uint32_t raw_key32(float x) {
  const uint32_t u = float_to_bits(x), mag = u & 0x7FFFFFFFu;
  return mag > 0x7F800000u ? kNanKey : order_key(mag == 0 ? 0u : u);  // -0.0 ties with +0.0
}

// The radix select's digits, top down: (shift, bits).
constexpr int kShift[3] = {21, 10, 0}, kBits[3] = {11, 11, 10};
constexpr uint32_t digit_mask(int pass) { return (1u << kBits[pass]) - 1; }

// Adds the digits (key >> shift) & mask of n keys to four interleaved
// histograms h[0, 4 * (mask + 1)): scores crowd a few top-digit bins (one
// exponent, a few mantissa bits), and one counter bumped on consecutive keys
// chains every increment through a store-to-load forward.
void count_digits(const uint32_t* src, int64_t n, int shift, uint32_t mask, uint32_t* h) {
  const size_t bins = size_t(mask) + 1;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    ++h[(src[i] >> shift) & mask];
    ++h[bins + ((src[i + 1] >> shift) & mask)];
    ++h[2 * bins + ((src[i + 2] >> shift) & mask)];
    ++h[3 * bins + ((src[i + 3] >> shift) & mask)];
  }
  for (; i < n; ++i) ++h[(src[i] >> shift) & mask];
}

// Keys of the candidates [lo, hi) of a float32 row, max-pooled over the
// segment [seg_lo, hi), into key (offsets from lo), and the top digits'
// histogram into hist (four interleaved, see count_digits). The max runs on
// the keys (order_key is monotonic: the max of the keys is the key of the
// max), one shifted pass per window offset so that each pass is a plain
// vector max; chunks of kChunk candidates keep those passes in L1 (a 64k row's
// keys fill 256 KiB).
void pooled_keys32(const float* row, int64_t seg_lo, int64_t lo, int64_t hi, int64_t kernel,
                   std::vector<uint32_t>& raw, std::vector<uint32_t>& key, std::vector<uint32_t>& hist) {
  constexpr int64_t kChunk = 2048;
  const int64_t pad = kernel > 1 ? kernel / 2 : 0;
  const uint32_t neg_inf = score_key32(neg_inf_d());
  raw.resize(static_cast<size_t>(kChunk + 2 * pad));
  key.resize(static_cast<size_t>(hi - lo));
  hist.assign(4 * (size_t(digit_mask(0)) + 1), 0);
  for (int64_t c0 = lo; c0 < hi; c0 += kChunk) {
    const int64_t c1 = std::min(c0 + kChunk, hi), a = std::max(c0 - pad, seg_lo), b = std::min(c1 + pad, hi);
    const int64_t n = c1 - c0, off = c0 - a;  // r[off + i]: candidate c0 + i's own key
    uint32_t* r = raw.data();                 // r[j]: position a + j's key
    uint32_t* k = key.data() + (c0 - lo);     // k[i]: candidate c0 + i's key
    for (int64_t j = 0; j < b - a; ++j) r[j] = raw_key32(row[a + j]);
    for (int64_t i = 0; i < n; ++i) k[i] = r[off + i];
    for (int64_t t = 1; t <= pad; ++t) {
      for (int64_t i = std::max<int64_t>(0, t - off); i < n; ++i) k[i] = std::max(k[i], r[off + i - t]);
      for (int64_t i = 0; i < std::min(n, b - t - c0); ++i) k[i] = std::max(k[i], r[off + i + t]);
    }
    for (int64_t i = 0; i < n; ++i) k[i] = k[i] == kNanKey ? neg_inf : k[i];
    count_digits(k, n, kShift[0], digit_mask(0), hist.data());
  }
}

// Where the best m of n keys end: the m-th largest key, and how many keys
// equal to it are among the best m (those of the lowest offsets, since ties
// rank by index). A radix select from the top digit down, each pass
// histogramming only the keys left in the chosen bin, as the CUDA select
// does; hist comes in holding the top digits' counts (pooled_keys32).
struct Cut {
  uint32_t key;
  int64_t ties;
};

Cut radix_cut(const uint32_t* key, int64_t n, int64_t m, std::vector<uint32_t>& left, std::vector<uint32_t>& hist) {
  uint32_t prefix = 0, prefix_mask = 0;
  int64_t rank = m;  // the rank-th largest of the keys in the chosen bins
  const uint32_t* src = key;
  for (int pass = 0; pass < 3; ++pass) {
    const uint32_t mask = digit_mask(pass);
    const size_t bins = size_t(mask) + 1;
    uint32_t* h = hist.data();
    if (pass > 0) {
      hist.assign(4 * bins, 0);
      h = hist.data();
      count_digits(src, n, kShift[pass], mask, h);
    }
    for (size_t d = 0; d < bins; ++d) h[d] += h[bins + d] + h[2 * bins + d] + h[3 * bins + d];
    uint32_t d = mask;
    while (h[d] < rank) rank -= h[d--];
    prefix |= d << kShift[pass];
    prefix_mask |= mask << kShift[pass];
    if (pass == 2) break;
    left.resize(size_t(h[d]) + 1);  // + 1: the branch-free filter's last store
    int64_t c = 0;                   // in place from the second pass on: c <= i
    for (int64_t i = 0; i < n; ++i) {
      left[static_cast<size_t>(c)] = src[i];
      c += (src[i] & prefix_mask) == prefix;
    }
    src = left.data(), n = c;
  }
  return {prefix, rank};
}

// The best m of the candidates [lo, hi) of a float32 row, pooled over
// [seg_lo, hi), written to out in ascending order: every key above the cut,
// and the first cut.ties keys equal to it. No sort and no marks.
void select_row_packed(const float* row, int64_t seg_lo, int64_t lo, int64_t hi, int64_t m, int64_t kernel,
                       std::vector<uint32_t>& raw, std::vector<uint32_t>& key, std::vector<uint32_t>& hist,
                       int64_t* out) {
  pooled_keys32(row, seg_lo, lo, hi, kernel, raw, key, hist);
  const Cut cut = radix_cut(key.data(), hi - lo, m, raw, hist);
  const uint32_t* k = key.data();  // k[q - lo]: candidate q's key
  const int64_t cut_key = cut.key;
  int64_t take = cut.ties, *o = out;
  const int64_t* end = out + m;
  // Branch-free (a tenth of the keys kept at random would mispredict a
  // branch): o advances on a kept key; the store at o stays inside out[0, m)
  // since the loop stops once m are written.
  for (int64_t q = lo; q < hi && o < end; ++q) {
    const int64_t kq = k[q - lo];
    const int64_t above = static_cast<int64_t>(static_cast<uint64_t>(cut_key - kq) >> 63);  // kq > cut_key
    const int64_t tie_kept = (kq == cut_key) & (take > 0);
    take -= tie_kept;
    *o = q;
    o += above | tie_kept;
  }
}

}  // namespace

void select_rows_cpu(const SelectParams& p, int64_t row_begin, int64_t row_end) {
  std::vector<Cand> cand;
  std::vector<uint8_t> mark;
  std::vector<uint32_t> raw, key, hist;
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
      select_row_packed(static_cast<const float*>(r), s, lo, hi, m, p.pool_kernel, raw, key, hist, out + p.sink);
      continue;
    }
    pool_keys(r, p.dtype, lo, s, hi, p.pool_kernel, p.pool, cand);
    top_m(cand, m);
    mark.assign(static_cast<size_t>(hi - lo), 0);
    for (int64_t i = 0; i < m; ++i) mark[static_cast<size_t>(cand[i].idx - lo)] = 1;
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

// The CPU saliency kernel, included by saliency_cpu.cpp (the entry points)
// and by the saliency_cpu_<isa>.cpp files that compile it once per ISA.
//
// CPU saliency, fused per (b, h) (shared/DESIGN.md section 6). The R = G * W
// window rows of one KV head (R = G for `tova`, which reads only the last
// query) are processed against key tiles of kTile keys:
//   pass 1: online softmax over the tiles: per row the running max m and sum
//           l and, for the scores that need it (key, joint, loo), the output
//           O = softmax(Z) V (flash-attention forward; skipped when the
//           caller gives O, SaliencyParams::o); per key range of
//           saliency_cpu_range_keys, the ranges' states merged in key order, so
//           that the ranges of one row can run on different threads
//           (saliency_cpu.h) with the same result.
//   pass 2: per tile, recompute Z = Q K^T, A = exp(Z - m) / l, and where
//           needed v.o (= O V^T), ||v||, ||v - o||; reduce the contributions
//           (score_math.h) over the queries and the group and write the
//           tile's output once.
// The workspace holds Q (pre-scaled), O, per-row stats, one transposed K and V
// tile and [rows-per-block, tile] scratch: O(R * (D + tile) + D * tile)
// elements, independent of N. Pass 1 also keeps the logits of as many of the
// first key tiles as fit kSaliencyLogitCacheBytes, and pass 2 reads them back
// instead of recomputing Q K^T: a quarter of the joint score's FLOPs, for a
// bounded workspace (8 MiB at the common R = 128, N = 16k; 16 MiB, the first
// 32k keys, from N = 32k on).
//
// Speed: every O(R * N * D) loop is an outer-product register block
// (acc[RB][cols] += x * y[c], contiguous in c) summed over d in order;
// 16-bit inputs are converted to float once per tile. The block must fit the
// vector registers, so it depends on the ISA: on x86-64 with GCC the kernel
// is compiled for AVX-512 and AVX2+FMA as well as the baseline, each with its
// own block, and picked once at run time (saliency_cpu.cpp). The
// baseline uses the generic loops at 4 x 32. On AVX2 (16 registers) GCC's
// code for them either reloads operands (2 x 32) or spills the accumulators
// (larger blocks), and on AVX-512 its 4 x 32 block has too few accumulators
// to hide the FMA latency, so both have their dot products and P V written
// with intrinsics (6 x 16 and 8 x 32 blocks, cpu_tiles.h), and intrinsic
// tile transposes (8 x 8; 16 x 16 on AVX-512) and row maxima (8 and 16
// lanes) and sums; AVX-512 also has its own exp (avx512_exp). bfloat16 on
// a CPU with AVX512-BF16 forms Q K^T two d at a time (the pair path,
// cpu_tiles.h; Kernel's kPairs); the other products have a float operand
// (P, O), which bfloat16 would round. With AMX (cpu_amx.h) Q K^T, P V and
// O V^T run on its tiles, P and O as three bfloat16 terms (float precision,
// three products: still 5x the FMA rate). The build passes
// -fno-trapping-math (results are unchanged: no FP exception is ever
// unmasked): with trapping math GCC keeps exp_approx's selects as branches,
// and only AVX-512's masked instructions vectorised them; the AVX2 and
// baseline exps were scalar.
#pragma once

#include "saliency_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "cpu_amx.h"
#include "cpu_tiles.h"
#include "score_math.h"

namespace obc {

// What one call of an entry point does: rows [bh, bh_end) whole; or of row
// bh, pass 1 of key range s0 (into state) or pass 2 of ranges [s0, s1)
// (merging the row's states, `stride` elements apart), with the row's logit
// cache `logits` or none (null).
struct SaliencyJob {
  enum Kind { Rows, SplitPass1, SplitPass2 } kind;
  int64_t bh, bh_end, s0, s1;
  void* state;
  int64_t stride;
  void* logits;
};

// Internal linkage on purpose: each file that includes this compiles its own
// copy, with its own target's instructions where inlined.
namespace {

// exp for x <= 88 (here always x <= 0): Cody-Waite reduction and Cephes'
// polynomial, ~1 ulp, branch-free so it vectorises; 0 below -87 where expf
// is below FLT_MIN anyway (a masked logit never reaches here).
OBC_ALWAYS_INLINE float exp_approx(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  const float e = y * two_n;
  return x < -87.0f ? 0.0f : e;
}
OBC_ALWAYS_INLINE double exp_approx(double x) { return std::exp(x); }

#ifdef OBC_X86_VARIANTS
// exp_approx of 16 lanes, bit for bit: the same operations in the order GCC
// contracts the scalar code into for AVX-512 (FMAs included), with its
// clamps and 2^n bits replaced by one compare and a vscalefps (y * 2^n
// exactly, as the product of y and the float 2^n for the n >= -126 it takes
// there): 14 instructions where GCC emitted 23; the exps were a third of the op's
// own time (`perf`, SmolLM2 shapes).
OBC_AVX512_FN inline __m512 avx512_exp(__m512 x) {
  const __mmask16 kept = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_NLT_UQ);  // else 0 (NaN kept)
  const __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(12582912.0f)),
                                 _mm512_set1_ps(12582912.0f));
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 y = _mm512_fmadd_ps(r, _mm512_set1_ps(1.9875691500e-4f), _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(y, r), r, r), _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(kept, y, n);
}
#endif

inline size_t round_up(size_t x) { return (x + 63) & ~size_t(63); }

static_assert(kSaliencyMinRangeKeys % kTile == 0, "key ranges are whole tiles (the logit cache is tile-indexed)");

// Byte offsets of the workspace pieces (see the top of this file).
struct Layout {
  int64_t Wr = 0, i0 = 0, R = 0;
  size_t qs, o, m, l, on2, am, al, ao, kt, vt, vrow, vn1, vn2, sb, xb, db, head, zt, xt, ot, pt, vp, z, total;
  // Keys [0, z_keys) whose logits pass 1 keeps in the workspace (a whole
  // number of tiles), tile-major: z[tile][row][kTile].
  int64_t z_keys = 0;
};

// The window queries a (b, h) row scores with: the last only for the
// last-query scores.
int64_t window_queries(const SaliencyParams& p) { return score_last_query_only(p.score) ? 1 : p.W; }

// split: the workspace of a key range of a split (b, h) (saliency_cpu.h),
// which has no logit cache of its own (its pass 2 runs apart from its pass
// 1: the caller may keep the row's logits, saliency_cpu_split_logit_bytes).
Layout make_layout(const SaliencyParams& p, bool split) {
  Layout L;
  L.Wr = window_queries(p);
  L.i0 = p.W - L.Wr;
  L.R = p.G * L.Wr;
  const size_t e = p.dtype == DType::F64 ? 8 : 4;
  const size_t R = static_cast<size_t>(L.R), D = static_cast<size_t>(p.D), T = kTile, G = p.G;
  size_t at = 0;
  auto take = [&](size_t elems) {
    const size_t off = at;
    at += round_up(elems * e);
    return off;
  };
  L.qs = take(R * D);
  L.o = take(R * D);
  L.m = take(R);
  L.l = take(R);
  L.on2 = take(R);
  L.am = take(R);  // the merged state of the key ranges done so far
  L.al = take(R);
  L.ao = take(R * D);
  L.kt = take(D * T);
  L.vt = take(D * T);
  L.vrow = take(T * D);
  L.vn1 = take(T);
  L.vn2 = take(T);
  L.sb = take(kMaxRB * T);
  L.xb = take(kMaxRB * T);
  L.db = take(kMaxRB * T);
  L.head = take(G * T);
  if (amx_applies(p.dtype, p.D)) {  // the AMX path's (Kernel's kAmx):
    L.zt = take(R * T);               // a key tile's logits of every row, where no cache holds them
    L.xt = take(R * T);               // its v.o of every row
    L.ot = take(3 * R * D / 2);       // O's three bfloat16 terms, [3][R][D]
    L.pt = take(3 * R * T / 2);       // a key tile's P of every row as three bfloat16 terms, [3][R][T]
    L.vp = take(D * T / 2);           // the value tile's pairs: along d (pass 2), along the keys (pass 1)
  }
  // The logit cache: as many of the first key tiles as fit
  // kSaliencyLogitCacheBytes (a row's every key up to N = 32k at R = 128 in
  // float); pass 2 recomputes Q K^T past it, so a longer row still reads
  // back the logits of its first 32k keys.
  const size_t padded_n = (static_cast<size_t>(p.N) + T - 1) / T * T;
  const size_t fit = kSaliencyLogitCacheBytes / (R * T * e) * T;
  L.z_keys = split ? 0 : static_cast<int64_t>(std::min(padded_n, fit));
  L.z = take(R * static_cast<size_t>(L.z_keys));
  L.total = at;
  return L;
}

// O[RB][d0 : d0 + DC] += P[RB][:tn] . V[:tn][d0 : d0 + DC].
template <typename T, int RB, int DC>
OBC_ALWAYS_INLINE void block_pv_chunk(const T* P, const T* V, int64_t ldv, int64_t tn, T* O, int64_t D,
                                      int64_t d0) {
  T acc[RB][DC];
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < DC; ++c) acc[r][c] = O[r * D + d0 + c];
  for (int64_t k = 0; k < tn; ++k) {
    const T* v = V + k * ldv + d0;
    for (int r = 0; r < RB; ++r) {
      const T pr = P[r * kTile + k];
      for (int c = 0; c < DC; ++c) acc[r][c] += pr * v[c];
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < DC; ++c) O[r * D + d0 + c] = acc[r][c];
}

template <typename T, int RB>
OBC_ALWAYS_INLINE void block_pv(const T* P, const T* V, int64_t ldv, int64_t tn, T* O, int64_t D) {
  int64_t d0 = 0;
  for (; d0 + 32 <= D; d0 += 32) block_pv_chunk<T, RB, 32>(P, V, ldv, tn, O, D, d0);
  for (; d0 + 8 <= D; d0 += 8) block_pv_chunk<T, RB, 8>(P, V, ldv, tn, O, D, d0);
  for (; d0 < D; ++d0) block_pv_chunk<T, RB, 1>(P, V, ldv, tn, O, D, d0);
}

#ifdef OBC_X86_VARIANTS
// O[RB][D] += P[RB][:tn] . V[:tn][D].
template <int RB>
OBC_AVX2_FN void avx2_pv(const float* P, const float* V, int64_t ldv, int64_t tn, float* O, int64_t D) {
  int64_t d0 = 0;
  for (; d0 + 16 <= D; d0 += 16) {
    __m256 acc[RB][2];
    for (int r = 0; r < RB; ++r) {
      acc[r][0] = _mm256_loadu_ps(O + r * D + d0);
      acc[r][1] = _mm256_loadu_ps(O + r * D + d0 + 8);
    }
    avx2_block_steps<RB>(acc, P, kTile, V + d0, ldv, tn);
    for (int r = 0; r < RB; ++r) {
      _mm256_storeu_ps(O + r * D + d0, acc[r][0]);
      _mm256_storeu_ps(O + r * D + d0 + 8, acc[r][1]);
    }
  }
  for (; d0 + 8 <= D; d0 += 8) block_pv_chunk<float, RB, 8>(P, V, ldv, tn, O, D, d0);
  for (; d0 < D; ++d0) block_pv_chunk<float, RB, 1>(P, V, ldv, tn, O, D, d0);
}

// avx2_pv with the AVX-512 blocks: 32 columns of O a step.
template <int RB>
OBC_AVX512_FN void avx512_pv(const float* P, const float* V, int64_t ldv, int64_t tn, float* O, int64_t D) {
  int64_t d0 = 0;
  for (; d0 + 32 <= D; d0 += 32) {
    __m512 acc[RB][2];
    for (int r = 0; r < RB; ++r) {
      acc[r][0] = _mm512_loadu_ps(O + r * D + d0);
      acc[r][1] = _mm512_loadu_ps(O + r * D + d0 + 16);
    }
    avx512_block_steps<RB>(acc, P, kTile, V + d0, ldv, tn);
    for (int r = 0; r < RB; ++r) {
      _mm512_storeu_ps(O + r * D + d0, acc[r][0]);
      _mm512_storeu_ps(O + r * D + d0 + 16, acc[r][1]);
    }
  }
  for (; d0 + 8 <= D; d0 += 8) block_pv_chunk<float, RB, 8>(P, V, ldv, tn, O, D, d0);
  for (; d0 < D; ++d0) block_pv_chunk<float, RB, 1>(P, V, ldv, tn, O, D, d0);
}

// row_max / row_sum of a block (Kernel): a running scalar max or sum does
// not vectorise. A row's max skips NaN logits (masked with the keys past
// lim), as the generic `z > mx ? z : mx` does; max is exact in any order.
template <int RB>
OBC_AVX2_FN void avx2_row_max(const float* Z, const int64_t* lim, float* out) {
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  const __m256 lane = _mm256_setr_ps(0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f);
  for (int r = 0; r < RB; ++r) {
    const __m256 visible = _mm256_set1_ps(static_cast<float>(lim[r]));  // in [0, kTile]: Kernel::visible
    __m256 mx = ninf;
    for (int c = 0; c < kTile; c += 8) {
      const __m256 z = _mm256_loadu_ps(Z + r * kTile + c);
      const __m256 keep = _mm256_and_ps(_mm256_cmp_ps(_mm256_add_ps(lane, _mm256_set1_ps(float(c))), visible, _CMP_LT_OQ),
                                        _mm256_cmp_ps(z, z, _CMP_ORD_Q));
      mx = _mm256_max_ps(mx, _mm256_blendv_ps(ninf, z, keep));
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    out[r] = _mm_cvtss_f32(h);
  }
}

// Kernel::value_norms with the sums in registers (GCC's loop kept them in
// memory, a store-to-load chain every d): bit for bit the same sums.
template <bool kL1, bool kL2>
OBC_AVX512_FN void avx512_value_norms(const float* Vt, int64_t D, float* vn1, float* vn2) {
  __m512 s1[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()}, s2[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  for (int64_t d = 0; d < D; ++d)
    for (int h = 0; h < 2; ++h) {
      const __m512 v = _mm512_loadu_ps(Vt + d * kTile + 16 * h);
      if constexpr (kL1) s1[h] = _mm512_add_ps(s1[h], _mm512_abs_ps(v));
      if constexpr (kL2) s2[h] = _mm512_fmadd_ps(v, v, s2[h]);
    }
  for (int h = 0; h < 2; ++h) {
    _mm512_storeu_ps(vn1 + 16 * h, s1[h]);
    _mm512_storeu_ps(vn2 + 16 * h, s2[h]);
  }
}

// avx2_row_max in 16 lanes, the visible keys and the non-NaN logits as
// masks: about half the instructions.
template <int RB>
OBC_AVX512_FN void avx512_row_max(const float* Z, const int64_t* lim, float* out) {
  static_assert(kTile == 32, "two ZMM vectors a row, one 32-bit mask");
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  for (int r = 0; r < RB; ++r) {
    const uint32_t visible = lim[r] >= kTile ? ~0u : (1u << lim[r]) - 1u;  // lim in [0, kTile]
    const __m512 z0 = _mm512_loadu_ps(Z + r * kTile), z1 = _mm512_loadu_ps(Z + r * kTile + 16);
    const __mmask16 k0 = _mm512_cmp_ps_mask(z0, z0, _CMP_ORD_Q) & static_cast<__mmask16>(visible);
    const __mmask16 k1 = _mm512_cmp_ps_mask(z1, z1, _CMP_ORD_Q) & static_cast<__mmask16>(visible >> 16);
    const __m512 m0 = _mm512_mask_mov_ps(ninf, k0, z0);
    const __m512 mx = _mm512_mask_max_ps(m0, k1, m0, z1);
    out[r] = _mm512_reduce_max_ps(mx);
  }
}

template <int RB>
OBC_AVX2_FN void avx2_row_sum(const float* P, float* out) {
  for (int r = 0; r < RB; ++r) {
    const float* x = P + r * kTile;
    const __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8)),
                                   _mm256_add_ps(_mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24)));
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    out[r] = _mm_cvtss_f32(h);
  }
}
#endif

#ifdef OBC_X86_VARIANTS
template <bool kScaled>
OBC_AVX512_FN inline void avx512_exp_row(const float* z, float m, float scale, float* out) {
  const __m512 mv = _mm512_set1_ps(m);
  for (int c = 0; c < kTile; c += 16) {
    const __m512 e = avx512_exp(_mm512_sub_ps(_mm512_loadu_ps(z + c), mv));
    _mm512_storeu_ps(out + c, kScaled ? _mm512_mul_ps(e, _mm512_set1_ps(scale)) : e);
  }
}
#endif

// out[c] = exp(z[c] - m) (times scale when kScaled) for a tile's kTile
// logits of one row, in the variant's vectors.
template <int kVW, bool kScaled, typename T>
OBC_ALWAYS_INLINE void exp_row(const T* z, T m, T scale, T* out) {
#ifdef OBC_X86_VARIANTS
  if constexpr (kVecFloat<T, kVW> && kVW == kAvx512W) {
    avx512_exp_row<kScaled>(z, m, scale, out);
    return;
  }
#endif
  for (int c = 0; c < kTile; ++c) out[c] = kScaled ? exp_approx(z[c] - m) * scale : exp_approx(z[c] - m);
}

// The contribution of key c of a tile to one window row (row_contrib).
template <Score S, typename T>
OBC_ALWAYS_INLINE T pair_contrib(int c, const T* s, const T* a_row, const T* vo, const T* dd, const T* vn1,
                                 const T* vn2, T on2) {
  T dist = T(0);
  if constexpr (score_needs_dist(S)) dist = std::sqrt(dd[c]);
  return score_contribution<S, T>(a_row[c], s[c], vn1[c], vn2[c], vo[c], on2, dist);
}

// Contributions of one window row to a tile, reduced over the queries into
// head[:] (the row's query head), given the row's logits s and softmax
// weights a. Pairs with c >= lim are masked (or past the tile) and
// contribute exactly 0: every lane is computed, then the masked tail zeroed,
// since GCC vectorises a per-lane `c < lim ? ... : 0` only with AVX-512's
// masked instructions (AVX2 code went scalar).
template <Score S, typename T>
OBC_ALWAYS_INLINE void row_contrib(const T* s, const T* a_row, const T* vo, const T* dd, const T* vn1,
                                   const T* vn2, T on2, int64_t lim, bool qmax, T* head) {
  if (lim == kTile && !qmax) {  // every key visible (all but a causal window's last tiles): no c_row round trip
    for (int c = 0; c < kTile; ++c) head[c] += pair_contrib<S>(c, s, a_row, vo, dd, vn1, vn2, on2);
    return;
  }
  T c_row[kTile];
  for (int c = 0; c < kTile; ++c) c_row[c] = pair_contrib<S>(c, s, a_row, vo, dd, vn1, vn2, on2);
  for (int64_t c = lim; c < kTile; ++c) c_row[c] = T(0);
  if (qmax) {
    // NaN-propagating max (query_reduce_step's rule, inlined to vectorise).
    for (int c = 0; c < kTile; ++c)
      head[c] = (c_row[c] > head[c] || c_row[c] != c_row[c]) ? c_row[c] : head[c];
  } else {
    for (int c = 0; c < kTile; ++c) head[c] += c_row[c];
  }
}

// kPairs: bfloat16 on the AVX512-BF16 pair path (cpu_tiles.h) for Q K^T:
// the queries kept as bfloat16 rows and the key tiles as pair tiles (the
// other products take float operands: P and O are not bfloat16). The scale
// splits as 2^e * f, f in [1, 2): the queries take 2^e (exact in bfloat16)
// and the products f, so that a logit overflows where the float path's
// (scale q) . k does, within a factor 2 (scale after the product would
// overflow wherever |q . k| > FLT_MAX, up to 1 / scale times sooner).
// kAmx (with kPairs): Q K^T of the first amx_rows rows (a multiple of 32)
// on AMX's tiles (cpu_amx.h, inside the caller's AmxTiles scope), a whole
// key tile at once, before its row blocks, and so pass 2's v.o (O V^T), O
// as three bfloat16 terms; pass 1's P V after the row blocks (which keep P
// as three bfloat16 terms); the other rows as kPairs.
template <typename E, int kRB, int kVW, bool kPairs, typename Amx>
struct Kernel {
  static constexpr bool kAmx = Amx::on;
  // keep_p fills whole row blocks of AMX rows: none may straddle amx_rows.
  static_assert(!kAmx || kAmxRows % kRB == 0, "a row block lies wholly inside or past the AMX rows");
  using T = typename Elem<E>::acc;
  using Out = typename std::conditional<std::is_same<E, double>::value, double, float>::type;

  const SaliencyParams& p;
  const Layout& L;
  char* ws;
  // need_o: the score reads O (key, joint, loo); own_o: pass 1 accumulates
  // it (else the caller gave it, p.o); need_v2: pass 2 reads V (O or norms).
  bool need_o, own_o, need_v2;
  T* z;         // the row's logit cache (tile-major, as Layout::z), or null
  int64_t z_end;  // the keys [0, z_end) it holds; pass 2 recomputes Q K^T past them
  int scale_exp = 0;  // the pair path's split of the scale (kPairs above): 2^scale_exp * scale_frac
  T scale_frac = T(1);
  int64_t amx_rows = 0;  // kAmx: the rows whose logits tile_logits makes
  T* tz = nullptr;       // kAmx: the current key tile's logits, [amx_rows][kTile]

  // The next key tile's rows (and in pass 2 its logits), prefetched a slice
  // per row block while this tile computes: K and V are read cold, once a
  // pass, and the hardware prefetcher left the first loads of the tile
  // transposes and of P V waiting on memory (evict at N = 16k, Zen 4, one
  // thread: the transposes fell from 11% to 3% of the kernel's samples and
  // the op from 163 to 150 ms; all at once at the tile's start, the
  // requests queued and gained ~1%).
  struct NextTile {
    const E* k = nullptr;  // null: not read on this pass
    const E* v = nullptr;
    const T* z = nullptr;
    int64_t rows = 0, rows_done = 0, z_done = 0;
  } next{};

  T* at(size_t off) const { return reinterpret_cast<T*>(ws + off); }
  // Whether the logit cache holds the tile starting at key p0.
  bool cached(int64_t p0) const { return p0 < z_end; }
  // Pass 1's logits of rows r0.. for the tile starting at key p0 (cached tiles only).
  T* logits(int64_t p0, int64_t r0) const { return z + ((p0 / kTile) * L.R + r0) * kTile; }

  static constexpr bool kVec = kVecFloat<T, kVW>;  // the intrinsic blocks apply

  // C = X . Yt (kDist: squared distances) and O += P . V for RB rows.
  template <int RB, bool kDist>
  OBC_ALWAYS_INLINE void xyt(const T* X, const T* Yt, T* C) const {
    if constexpr (!kDist) {
      xyt_tile<RB, kVW>(X, p.D, p.D, Yt, C);
    } else if constexpr (RB % 2 == 0) {  // the generic block in the shape that fits every ISA's registers
      for (int r = 0; r < RB; r += 2) block_xyt<T, 2, true>(X + r * p.D, p.D, p.D, Yt, C + r * kTile);
    } else {
      block_xyt<T, RB, true>(X, p.D, p.D, Yt, C);
    }
  }
  // Per row of a block: the max over its first lim[r] logits (NaNs skipped,
  // -inf when none) and the sum of its kTile values.
  template <int RB>
  OBC_ALWAYS_INLINE void row_max(const T* Z, const int64_t* lim, T* out) const {
#ifdef OBC_X86_VARIANTS
    if constexpr (kVec) {
      if constexpr (kVW == kAvx512W)
        avx512_row_max<RB>(Z, lim, out);
      else
        avx2_row_max<RB>(Z, lim, out);
      return;
    }
#endif
    for (int r = 0; r < RB; ++r) {
      T mx = reduce_identity_max<T>();
      for (int64_t c = 0; c < lim[r]; ++c) mx = Z[r * kTile + c] > mx ? Z[r * kTile + c] : mx;
      out[r] = mx;
    }
  }
  template <int RB>
  OBC_ALWAYS_INLINE void row_sum(const T* P, T* out) const {
#ifdef OBC_X86_VARIANTS
    if constexpr (kVec) {
      avx2_row_sum<RB>(P, out);
      return;
    }
#endif
    for (int r = 0; r < RB; ++r) {
      T sum = T(0);
      for (int c = 0; c < kTile; ++c) sum += P[r * kTile + c];
      out[r] = sum;
    }
  }
  OBC_ALWAYS_INLINE void transposed(const E* src, int64_t ld, int64_t tn, T* dst) const {
    transposed_tile<kVW>(src, ld, tn, p.D, dst);
  }
  // The key tile as logits_block reads it (a pair tile on the pair path).
  OBC_ALWAYS_INLINE void key_tile(const E* src, int64_t tn, T* Kt) const {
#ifdef OBC_X86_VARIANTS
    if constexpr (kPairs) {
      avx512bf16_load_pairs(src, p.k_sn, tn, p.D, reinterpret_cast<uint32_t*>(Kt));
      return;
    }
#endif
    transposed(src, p.k_sn, tn, Kt);
  }
  // kAmx: scale Q K^T of the rows [0, amx_rows) against a key tile into
  // dst, 32 rows a step, read by logits_block.
  OBC_ALWAYS_INLINE void tile_logits([[maybe_unused]] const T* Kt, [[maybe_unused]] T* dst) {
#ifdef OBC_X86_VARIANTS
    if constexpr (kAmx) {
      const bf16_t* q = reinterpret_cast<const bf16_t*>(at(L.qs));
      for (int64_t r0 = 0; r0 < amx_rows; r0 += kAmxRows)
        amx_xyt32<Amx>(q + r0 * p.D, p.D, p.D, reinterpret_cast<const uint32_t*>(Kt), dst + r0 * kTile);
      for (int64_t c = 0; c < amx_rows * kTile; ++c) dst[c] *= scale_frac;
      tz = dst;
    }
#endif
  }
  // kAmx: v.o of the rows [0, amx_rows) against the value tile at V (tn
  // keys) into L.xt, from O's bfloat16 terms (finish), read by pass2_block.
  OBC_ALWAYS_INLINE void tile_vo([[maybe_unused]] const E* V, [[maybe_unused]] int64_t tn) {
#ifdef OBC_X86_VARIANTS
    if constexpr (kAmx) {
      uint32_t* vp = reinterpret_cast<uint32_t*>(at(L.vp));
      const bf16_t* ot = reinterpret_cast<const bf16_t*>(at(L.ot));
      avx512bf16_load_pairs(V, p.v_sn, tn, p.D, vp);
      for (int64_t r0 = 0; r0 < amx_rows; r0 += kAmxRows)
        amx_xyt32<Amx>(ot + r0 * p.D, p.D, p.D, vp, at(L.xt) + r0 * kTile, 3, L.R * p.D);
    }
#endif
  }
  // kAmx: P of the rows [r0, r0 + RB) (a block within amx_rows) as three
  // bfloat16 terms for tile_pv; zeros where P is null (the block sees none
  // of the tile: no terms of an earlier tile may stay).
  template <int RB>
  OBC_ALWAYS_INLINE void keep_p([[maybe_unused]] int64_t r0, [[maybe_unused]] const T* P) {
#ifdef OBC_X86_VARIANTS
    if constexpr (kAmx) {
      bf16_t* pt = reinterpret_cast<bf16_t*>(at(L.pt)) + r0 * kTile;
      const int64_t ts = L.R * kTile;
      if (P)
        avx512bf16_split3(P, RB * kTile, pt, pt + ts, pt + 2 * ts);
      else
        for (int t = 0; t < 3; ++t) std::fill(pt + t * ts, pt + t * ts + RB * kTile, bf16_t{0});
    }
#endif
  }
  // kAmx: O += P V for the rows [0, amx_rows) from keep_p's terms and the
  // value tile at V (tn keys), after the tile's row blocks.
  OBC_ALWAYS_INLINE void tile_pv([[maybe_unused]] const E* V, [[maybe_unused]] int64_t tn) {
#ifdef OBC_X86_VARIANTS
    if constexpr (kAmx) {
      uint32_t* vk = reinterpret_cast<uint32_t*>(at(L.vp));
      const bf16_t* pt = reinterpret_cast<const bf16_t*>(at(L.pt));
      avx512_load_key_pairs(V, p.v_sn, tn, p.D, vk);
      for (int64_t r0 = 0; r0 < amx_rows; r0 += kAmxRows)
        amx_pv32<Amx>(pt + r0 * kTile, L.R * kTile, 3, vk, p.D, at(L.o) + r0 * p.D, p.D);
    }
#endif
  }
  // Z = scale Q K^T for the RB rows from r0 against a key tile.
  template <int RB>
  OBC_ALWAYS_INLINE void logits_block(int64_t r0, const T* Kt, T* Z) const {
#ifdef OBC_X86_VARIANTS
    if constexpr (kAmx) {
      if (r0 < amx_rows) {  // made by tile_logits (blocks do not straddle amx_rows: RB divides 32)
        const T* src = tz + r0 * kTile;
        if (src != Z) std::copy(src, src + RB * kTile, Z);
        return;
      }
    }
    if constexpr (kPairs) {
      const bf16_t* q = reinterpret_cast<const bf16_t*>(at(L.qs)) + r0 * p.D;
      avx512bf16_xyt<RB>(q, p.D, p.D, reinterpret_cast<const uint32_t*>(Kt), Z);
      for (int c = 0; c < RB * kTile; ++c) Z[c] *= scale_frac;
      return;
    }
#endif
    xyt<RB, false>(at(L.qs) + r0 * p.D, Kt, Z);
  }
  template <int RB>
  OBC_ALWAYS_INLINE void pv(const T* P, const T* V, int64_t ldv, int64_t tn, T* O) const {
#ifdef OBC_X86_VARIANTS
    if constexpr (kVec) {
      if constexpr (kVW == kAvx512W)
        avx512_pv<RB>(P, V, ldv, tn, O, p.D);
      else
        avx2_pv<RB>(P, V, ldv, tn, O, p.D);
      return;
    }
#endif
    block_pv<T, RB>(P, V, ldv, tn, O, p.D);
  }

  // vn1[c] = ||v_c||_1 (kL1), vn2[c] = ||v_c||_2^2 (kL2) of a transposed
  // value tile, summed over d in order.
  template <bool kL1, bool kL2>
  OBC_ALWAYS_INLINE void value_norms(const T* Vt, T* vn1, T* vn2) const {
#ifdef OBC_X86_VARIANTS
    if constexpr (kVec && kVW == kAvx512W) {
      avx512_value_norms<kL1, kL2>(Vt, p.D, vn1, vn2);
      return;
    }
#endif
    for (int c = 0; c < kTile; ++c) vn1[c] = vn2[c] = T(0);
    for (int64_t d = 0; d < p.D; ++d) {
      const T* v = Vt + d * kTile;
      for (int c = 0; c < kTile; ++c) {
        if constexpr (kL1) vn1[c] += std::fabs(v[c]);
        if constexpr (kL2) vn2[c] += v[c] * v[c];
      }
    }
  }

  // Sets `next` to the tile after the one at p0 in [p0, n1), reading
  // whichever of its keys, values and logits are given.
  OBC_ALWAYS_INLINE void plan_next(int64_t p0, int64_t n1, const E* K, const E* V, bool logit_rows) {
    next = NextTile{};
    const int64_t p1 = p0 + kTile;
    if (p1 >= n1) return;
    next.rows = std::min<int64_t>(kTile, n1 - p1);
    if (K) next.k = K + p1 * p.k_sn;
    if (V) next.v = V + p1 * p.v_sn;
    if (logit_rows) next.z = logits(p1, 0);
  }
  // Prefetches the share of `next` of the rows [0, r1) of R done once a
  // block ends: its keys and values in proportion, its logits row for row.
  OBC_ALWAYS_INLINE void prefetch_next(int64_t r1) {
    for (const int64_t want = next.rows * r1 / L.R; next.rows_done < want; ++next.rows_done) {
      if (next.k) prefetch_row<2>(next.k + next.rows_done * p.k_sn, p.D);
      if (next.v) prefetch_row<2>(next.v + next.rows_done * p.v_sn, p.D);
    }
    if (next.z) {
      prefetch_row<2>(next.z + next.z_done * kTile, (r1 - next.z_done) * kTile);
      next.z_done = r1;
    }
  }

  // Keys [p0, p0 + lim) are visible to row r within a tile of tn keys.
  OBC_ALWAYS_INLINE int64_t visible(int64_t r, int64_t p0, int64_t tn) const {
    if (!p.causal) return tn;
    const int64_t pos = query_position(p.N, p.W, L.i0 + r % L.Wr);
    return std::max<int64_t>(0, std::min<int64_t>(tn, pos - p0 + 1));
  }
  // lim[rr] = visible(r0 + rr, p0, tn); whether any is > 0. With every
  // prompt query in the window (H2O) half of the (block, tile) pairs see
  // nothing, and skipping them halves the work; a masked pair contributes
  // exactly 0 (the NaN / Inf policy), which skipping keeps.
  template <int RB>
  OBC_ALWAYS_INLINE bool any_visible(int64_t r0, int64_t p0, int64_t tn, int64_t* lim) const {
    // Every row sees the whole tile when its window's first query does: all
    // but the last tiles of a causal window (no division a row there).
    if (!p.causal || p0 + tn - 1 <= query_position(p.N, p.W, L.i0)) {
      for (int rr = 0; rr < RB; ++rr) lim[rr] = tn;
      return tn > 0;
    }
    bool any = false;
    for (int rr = 0; rr < RB; ++rr) {
      lim[rr] = visible(r0 + rr, p0, tn);
      any |= lim[rr] > 0;
    }
    return any;
  }

  template <int RB>
  OBC_ALWAYS_INLINE void pass1_block(int64_t r0, int64_t p0, int64_t tn, const T* Kt, const T* V, int64_t ldv) {
    const int64_t D = p.D;
    T* Pb = at(L.sb);  // exp(Z - max), the P of O += P V
    T* m = at(L.m);
    T* l = at(L.l);
    T* O = at(L.o);
    // Z straight into the logit cache where it holds the tile (pass 2 reads it back).
    const bool kept = cached(p0);
    T* Zb = kept ? logits(p0, r0) : at(L.xb);
    int64_t lim[RB];
    T zmax[RB], corr[RB], sum[RB];
    prefetch_next(r0 + RB);
    if (!any_visible<RB>(r0, p0, tn, lim)) {  // a tile past every row's query (causal): nothing to add
      if (kept) std::fill(Zb, Zb + RB * kTile, T(0));  // pass 2 may read it (max reduction)
      if (own_o && r0 < amx_rows) keep_p<RB>(r0, nullptr);
      return;
    }
    logits_block<RB>(r0, Kt, Zb);
    row_max<RB>(Zb, lim, zmax);
    for (int rr = 0; rr < RB; ++rr) {
      const int64_t r = r0 + rr;
      const T* z = Zb + rr * kTile;
      T* s = Pb + rr * kTile;
      const T mx = zmax[rr] > m[r] ? zmax[rr] : m[r];
      corr[rr] = T(1);
      // No visible key, or every visible logit so far is -inf: A = 0, state unchanged.
      if (lim[rr] <= 0 || mx == reduce_identity_max<T>()) {
        for (int c = 0; c < kTile; ++c) s[c] = T(0);
        continue;
      }
      // 0 on the first tile (m = -inf); exp_approx(0) is exactly 1, skipped
      // (a scalar exp a row and tile was a tenth of the op's own time).
      corr[rr] = mx == m[r] ? T(1) : exp_approx(m[r] - mx);
      m[r] = mx;
      exp_row<kVW, false>(z, mx, T(1), s);
      for (int64_t c = lim[rr]; c < kTile; ++c) s[c] = T(0);
    }
    row_sum<RB>(Pb, sum);
    for (int rr = 0; rr < RB; ++rr) {
      const int64_t r = r0 + rr;
      l[r] = l[r] * corr[rr] + sum[rr];
      if (own_o && corr[rr] != T(1)) {
        T* o = O + r * D;
        for (int64_t d = 0; d < D; ++d) o[d] *= corr[rr];
      }
    }
    if (own_o) {
      if (r0 < amx_rows)  // P V on AMX after the tile's row blocks (tile_pv)
        keep_p<RB>(r0, Pb);
      else
        pv<RB>(Pb, V, ldv, tn, O + r0 * D);
    }
  }

  template <Score S, int RB>
  OBC_ALWAYS_INLINE void pass2_block(int64_t r0, int64_t p0, int64_t tn, const T* Kt, const T* Vt) {
    const int64_t D = p.D;
    const bool qmax = p.query_reduce == QueryReduce::Max;
    int64_t lim[RB];
    prefetch_next(r0 + RB);
    // A block that sees none of the tile adds zeros: skipped, except under a
    // max over the queries, where those zeros count.
    if (!any_visible<RB>(r0, p0, tn, lim) && !qmax) return;
    T* Sb = at(L.sb);
    T* Xb = at(L.xb);
    T* Db = at(L.db);
    const T* O = at(L.o);
    if (cached(p0))
      Sb = logits(p0, r0);
    else
      logits_block<RB>(r0, Kt, Sb);
    if constexpr (score_needs_vo(S)) {
      if (kAmx && r0 < amx_rows)  // made by tile_vo
        Xb = at(L.xt) + r0 * kTile;
      else
        xyt<RB, false>(O + r0 * D, Vt, Xb);
    }
    if constexpr (score_needs_dist(S)) xyt<RB, true>(O + r0 * D, Vt, Db);
    T a_row[kTile];
    int64_t g = r0 / L.Wr, i = r0 - g * L.Wr;  // row r0 + rr is query i of head g: no division a row
    for (int rr = 0; rr < RB; ++rr) {
      const int64_t r = r0 + rr;
      exp_row<kVW, true>(Sb + rr * kTile, at(L.m)[r], at(L.l)[r], a_row);  // l holds 1 / l here
      row_contrib<S, T>(Sb + rr * kTile, a_row, Xb + rr * kTile, Db + rr * kTile, at(L.vn1), at(L.vn2),
                        at(L.on2)[r], lim[rr], qmax, at(L.head) + g * kTile);
      if (++i == L.Wr) i = 0, ++g;
    }
  }

  // Scores of the keys [n0, n1) into out (the (b, h) row's base).
  template <Score S>
  OBC_ALWAYS_INLINE void pass2(const E* K, const E* V, Out* out, int64_t n0, int64_t n1) {
    const int64_t G = p.G, R = L.R;
    T* Kt = at(L.kt);
    T* Vt = at(L.vt);
    T* vn1 = at(L.vn1);
    T* vn2 = at(L.vn2);
    T* head = at(L.head);
    const T qinit = query_reduce_init<T>(p.query_reduce);
    for (int64_t c = 0; c < kTile; ++c) vn1[c] = vn2[c] = T(0);
    for (int64_t p0 = n0; p0 < n1; p0 += kTile) {
      const int64_t tn = std::min<int64_t>(kTile, n1 - p0);
      const bool next_kept = cached(p0 + kTile);
      plan_next(p0, n1, next_kept ? nullptr : K, need_v2 ? V : nullptr, next_kept);
      if (!cached(p0)) {  // else the logits are kept
        key_tile(K + p0 * p.k_sn, tn, Kt);
        tile_logits(Kt, at(L.zt));
      }
      if (need_v2) {
        transposed(V + p0 * p.v_sn, p.v_sn, tn, Vt);
        value_norms<score_needs_vn1(S), score_needs_vn2(S)>(Vt, vn1, vn2);
        if constexpr (score_needs_vo(S)) tile_vo(V + p0 * p.v_sn, tn);
      }
      for (int64_t x = 0; x < G * kTile; ++x) head[x] = qinit;
      int64_t r0 = 0;
      for (; r0 + kRB <= R; r0 += kRB) pass2_block<S, kRB>(r0, p0, tn, Kt, Vt);
      if constexpr (kRB > 4)
        for (; r0 + 4 <= R; r0 += 4) pass2_block<S, 4>(r0, p0, tn, Kt, Vt);
      if constexpr (kRB > 2)
        for (; r0 + 2 <= R; r0 += 2) pass2_block<S, 2>(r0, p0, tn, Kt, Vt);
      for (; r0 < R; ++r0) pass2_block<S, 1>(r0, p0, tn, Kt, Vt);
      for (int64_t c = 0; c < tn; ++c) {
        T acc = group_reduce_init<T>(p.group_reduce);
        for (int64_t g = 0; g < G; ++g) acc = group_reduce_step(p.group_reduce, acc, head[g * kTile + c]);
        out[p0 + c] = static_cast<Out>(finite_or_nan(group_reduce_finish(p.group_reduce, acc, G)));
      }
    }
  }

  const E* keys(int64_t bh) const {
    return static_cast<const E*>(p.k) + (bh / p.Hkv) * p.k_sb + (bh % p.Hkv) * p.k_sh;
  }
  const E* values(int64_t bh) const {
    return static_cast<const E*>(p.v) + (bh / p.Hkv) * p.v_sb + (bh % p.Hkv) * p.v_sh;
  }

  // dst[r] = scale * x[b, h * G + g, i, :] for the window rows r = (g, i) of
  // row bh, x [B, Hq, W, D] with strides sb, sh, sw (q, or the given O).
  OBC_ALWAYS_INLINE void load_rows(const void* x, int64_t sb, int64_t sh, int64_t sw, int64_t bh, T scale,
                                   T* dst) const {
    const int64_t b = bh / p.Hkv, h = bh % p.Hkv, D = p.D, R = L.R;
    for (int64_t r = 0; r < R; ++r) {
      const int64_t g = r / L.Wr, i = L.i0 + r % L.Wr;
      const E* row = static_cast<const E*>(x) + b * sb + (h * p.G + g) * sh + i * sw;
      for (int64_t d = 0; d < D; ++d) dst[r * D + d] = Elem<E>::load(row[d]) * scale;
    }
  }
  // The (pre-scaled) window queries of row bh; on the pair path bfloat16
  // rows times 2^scale_exp (exact: a float's upper half, below it zeros,
  // unless the product leaves the normal range, where vdpbf16ps would read
  // it as 0 or it is Inf as (scale q) is).
  OBC_ALWAYS_INLINE void load_queries(int64_t bh) {
    if constexpr (kPairs) {
      const int64_t b = bh / p.Hkv, h = bh % p.Hkv;
      bf16_t* dst = reinterpret_cast<bf16_t*>(at(L.qs));
      const float pow2 = std::ldexp(1.0f, scale_exp);
      for (int64_t r = 0; r < L.R; ++r) {
        const int64_t g = r / L.Wr, i = L.i0 + r % L.Wr;
        const E* row = static_cast<const E*>(p.q) + b * p.q_sb + (h * p.G + g) * p.q_sh + i * p.q_sw;
        for (int64_t d = 0; d < p.D; ++d)
          dst[r * p.D + d].bits = static_cast<uint16_t>(float_to_bits(Elem<E>::load(row[d]) * pow2) >> 16);
      }
      return;
    }
    load_rows(p.q, p.q_sb, p.q_sh, p.q_sw, bh, static_cast<T>(p.scale), at(L.qs));
  }

  // An empty softmax state (m [R], l [R], O [R, D]: O where own_o).
  OBC_ALWAYS_INLINE void reset(T* m, T* l, T* O) const {
    std::fill(m, m + L.R, reduce_identity_max<T>());
    std::fill(l, l + L.R, T(0));
    if (own_o) std::fill(O, O + L.R * p.D, T(0));
  }

  // The merged state <- itself merged with the state (ms, ls, Os) of the
  // next key range: flash-decoding's pairwise step, a side that saw no key
  // (m = -inf) weighing 0. Every path merges a row's ranges one by one in
  // key order, so the result does not depend on which thread ran which.
  OBC_ALWAYS_INLINE void merge(const T* ms, const T* ls, const T* Os) {
    const int64_t R = L.R, D = p.D;
    T* am = at(L.am);
    T* al = at(L.al);
    T* ao = at(L.ao);
    for (int64_t r = 0; r < R; ++r) {
      if (ms[r] == reduce_identity_max<T>()) continue;
      const T M = std::max(am[r], ms[r]);
      const T wa = am[r] == M ? T(1) : exp_approx(am[r] - M);  // 0 while am = -inf
      const T ws = ms[r] == M ? T(1) : exp_approx(ms[r] - M);
      al[r] = al[r] * wa + ls[r] * ws;
      if (own_o)
        for (int64_t d = 0; d < D; ++d) ao[r * D + d] = ao[r * D + d] * wa + Os[r * D + d] * ws;
      am[r] = M;
    }
  }
  // The merged state as the one finish() reads.
  OBC_ALWAYS_INLINE void take_merged() {
    std::copy(at(L.am), at(L.am) + L.R, at(L.m));
    std::copy(at(L.al), at(L.al) + L.R, at(L.l));
    if (own_o) std::copy(at(L.ao), at(L.ao) + L.R * p.D, at(L.o));
  }

  // Pass 1 over the keys [n0, n1): softmax statistics (and O, unnormalised).
  OBC_ALWAYS_INLINE void pass1(const E* K, const E* V, int64_t n0, int64_t n1) {
    const int64_t D = p.D, R = L.R;
    T* Kt = at(L.kt);
    T* Vrow = at(L.vrow);
    for (int64_t p0 = n0; p0 < n1; p0 += kTile) {
      const int64_t tn = std::min<int64_t>(kTile, n1 - p0);
      plan_next(p0, n1, K, own_o ? V : nullptr, false);
      key_tile(K + p0 * p.k_sn, tn, Kt);
      tile_logits(Kt, cached(p0) ? logits(p0, 0) : at(L.zt));  // straight into the logit cache where it holds the tile
      const T* Vt = nullptr;
      int64_t ldv = D;
      if (own_o && amx_rows < R) {  // rows for pv (kAmx: past amx_rows)
        if constexpr (std::is_same<E, T>::value) {
          Vt = V + p0 * p.v_sn;  // rows already in the accumulation type
          ldv = p.v_sn;
        } else {
          for (int64_t c = 0; c < tn; ++c)
            for (int64_t d = 0; d < D; ++d) Vrow[c * D + d] = Elem<E>::load(V[(p0 + c) * p.v_sn + d]);
          Vt = Vrow;
        }
      }
      int64_t r0 = 0;
      for (; r0 + kRB <= R; r0 += kRB) pass1_block<kRB>(r0, p0, tn, Kt, Vt, ldv);
      if constexpr (kRB > 4)
        for (; r0 + 4 <= R; r0 += 4) pass1_block<4>(r0, p0, tn, Kt, Vt, ldv);
      if constexpr (kRB > 2)
        for (; r0 + 2 <= R; r0 += 2) pass1_block<2>(r0, p0, tn, Kt, Vt, ldv);
      for (; r0 < R; ++r0) pass1_block<1>(r0, p0, tn, Kt, Vt, ldv);
      if (own_o) tile_pv(V + p0 * p.v_sn, tn);
    }
  }

  // 1 / l, O (pass 1's normalised, or the given one of row bh) and ||O||^2.
  OBC_ALWAYS_INLINE void finish(int64_t bh) {
    const int64_t D = p.D, R = L.R;
    T* O = at(L.o);
    T* l = at(L.l);
    T* on2 = at(L.on2);
    if (need_o && !own_o) load_rows(p.o, p.o_sb, p.o_sh, p.o_sw, bh, T(1), O);
    // Every row sees key 0, so l > 0.
    for (int64_t r = 0; r < R; ++r) {
      const T inv = T(1) / l[r];
      l[r] = inv;  // from here on: 1 / l
      T s2 = T(0);
      if (need_o) {
        T* o = O + r * D;
        if (own_o)
          for (int64_t d = 0; d < D; ++d) o[d] *= inv;
        for (int64_t d = 0; d < D; ++d) s2 += o[d] * o[d];
      }
      on2[r] = s2;
    }
    // kAmx: O's rows as three bfloat16 terms for tile_vo (3 x 8 bits: v.o
    // at float precision; one term would round O to bfloat16).
#ifdef OBC_X86_VARIANTS
    if constexpr (kAmx) {
      if (score_needs_vo(p.score)) {
        bf16_t* ot = reinterpret_cast<bf16_t*>(at(L.ot));
        const int64_t terms = R * D;
        avx512bf16_split3(O, amx_rows * D, ot, ot + terms, ot + 2 * terms);
      }
    }
#endif
  }

  // Pass 2 of row bh over the keys [n0, n1), after finish().
  OBC_ALWAYS_INLINE void scores(int64_t bh, int64_t n0, int64_t n1) {
    const E* K = keys(bh);
    const E* V = values(bh);
    Out* out = static_cast<Out*>(p.out) + bh * p.N;
    switch (p.score) {
      case Score::Attn: return pass2<Score::Attn>(K, V, out, n0, n1);
      case Score::Tova: return pass2<Score::Tova>(K, V, out, n0, n1);
      case Score::Vatp: return pass2<Score::Vatp>(K, V, out, n0, n1);
      case Score::Value: return pass2<Score::Value>(K, V, out, n0, n1);
      case Score::Key: return pass2<Score::Key>(K, V, out, n0, n1);
      case Score::Joint: return pass2<Score::Joint>(K, V, out, n0, n1);
      case Score::Loo: return pass2<Score::Loo>(K, V, out, n0, n1);
    }
  }

  int64_t range_begin(int64_t s) const { return s * saliency_cpu_range_keys(p); }
  int64_t range_end(int64_t s) const { return std::min(p.N, range_begin(s + 1)); }

  // Pass 1 range by range (saliency_cpu.h), each merged as it ends.
  OBC_ALWAYS_INLINE void run(int64_t bh) {
    load_queries(bh);
    reset(at(L.am), at(L.al), at(L.ao));
    for (int64_t s = 0; range_begin(s) < p.N; ++s) {
      reset(at(L.m), at(L.l), at(L.o));
      pass1(keys(bh), values(bh), range_begin(s), range_end(s));
      merge(at(L.m), at(L.l), at(L.o));
    }
    take_merged();
    finish(bh);
    scores(bh, 0, p.N);
  }

  // The split form: range s's state, m [R] | l [R] | O [R, D], into state.
  OBC_ALWAYS_INLINE void split_pass1(int64_t bh, int64_t s, T* state) {
    const int64_t R = L.R;
    load_queries(bh);
    reset(at(L.m), at(L.l), at(L.o));
    pass1(keys(bh), values(bh), range_begin(s), range_end(s));
    std::copy(at(L.m), at(L.m) + R, state);
    std::copy(at(L.l), at(L.l) + R, state + R);
    if (own_o) std::copy(at(L.o), at(L.o) + R * p.D, state + 2 * R);
  }
  // The row's S states merged as run() merges them, then the scores of the
  // keys of ranges [s0, s1).
  OBC_ALWAYS_INLINE void split_pass2(int64_t bh, int64_t s0, int64_t s1, const T* states, int64_t stride) {
    const int64_t R = L.R;
    load_queries(bh);
    reset(at(L.am), at(L.al), at(L.ao));
    for (int64_t s = 0; range_begin(s) < p.N; ++s) {
      const T* st = states + s * stride;
      merge(st, st + R, st + 2 * R);
    }
    take_merged();
    finish(bh);
    scores(bh, range_begin(s0), range_end(s1 - 1));
  }
};

template <typename E, int RB, int kVW, bool kPairs = false, typename Amx = NoAmx>
OBC_ALWAYS_INLINE void run_job(const SaliencyParams& p, const SaliencyJob& j, void* workspace) {
  using T = typename Elem<E>::acc;
  const Layout L = make_layout(p, j.kind != SaliencyJob::Rows);
  char* ws = static_cast<char*>(workspace);
  // Whole rows: the workspace's cache of the first L.z_keys keys; a split
  // row: the caller's buffer of all its logits, or none.
  const bool rows = j.kind == SaliencyJob::Rows;
  T* z = rows ? (L.z_keys ? reinterpret_cast<T*>(ws + L.z) : nullptr) : static_cast<T*>(j.logits);
  const int64_t z_end = rows ? L.z_keys : (j.logits ? p.N : 0);
  Kernel<E, RB, kVW, kPairs, Amx> k{p, L, ws, false, false, false, z, z_end};
  if constexpr (kPairs) {
    const T f = std::frexp(static_cast<T>(p.scale), &k.scale_exp);  // scale = f 2^e, f in [0.5, 1)
    k.scale_frac = 2 * f, k.scale_exp -= 1;
  }
  if constexpr (Amx::on) k.amx_rows = L.R / kAmxRows * kAmxRows;
  k.need_o = score_needs_vo(p.score) || score_needs_dist(p.score);
  k.own_o = k.need_o && p.o == nullptr;
  k.need_v2 = k.need_o || score_needs_vn1(p.score) || score_needs_vn2(p.score);
  switch (j.kind) {
    case SaliencyJob::Rows:
      for (int64_t bh = j.bh; bh < j.bh_end; ++bh) k.run(bh);
      return;
    case SaliencyJob::SplitPass1: return k.split_pass1(j.bh, j.s0, static_cast<T*>(j.state));
    case SaliencyJob::SplitPass2: return k.split_pass2(j.bh, j.s0, j.s1, static_cast<const T*>(j.state), j.stride);
  }
}

template <int RB, int kVW>
OBC_ALWAYS_INLINE void run_dtype(const SaliencyParams& p, const SaliencyJob& j, void* ws) {
  switch (p.dtype) {
    case DType::F32: return run_job<float, RB, kVW>(p, j, ws);
    case DType::F64: return run_job<double, RB, kVW>(p, j, ws);
    case DType::F16: return run_job<half_t, RB, kVW>(p, j, ws);
    case DType::BF16: return run_job<bf16_t, RB, kVW>(p, j, ws);
  }
}

}  // namespace

// One entry point per ISA, each compiled in its own file
// (saliency_cpu_<isa>.cpp) so that a build compiles them in parallel: the
// always_inline kernel above is compiled into each with its target's
// instructions and RB. saliency_cpu.cpp picks one at run time.
using SaliencyRunFn = void (*)(const SaliencyParams&, const SaliencyJob&, void*);
void saliency_run_baseline(const SaliencyParams& p, const SaliencyJob& j, void* ws);
#ifdef OBC_X86_VARIANTS
void saliency_run_avx2(const SaliencyParams& p, const SaliencyJob& j, void* ws);
void saliency_run_avx512(const SaliencyParams& p, const SaliencyJob& j, void* ws);
void saliency_run_avx512bf16(const SaliencyParams& p, const SaliencyJob& j, void* ws);
void saliency_run_amx(const SaliencyParams& p, const SaliencyJob& j, void* ws);
void saliency_run_amx_emulated(const SaliencyParams& p, const SaliencyJob& j, void* ws);
#endif

}  // namespace obc

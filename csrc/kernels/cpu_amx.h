// AMX's bfloat16 tile products for the CPU kernels (the Amx variant,
// cpu_tiles.h). One tdpbf16ps multiplies a 16 x 32 bfloat16 tile by a
// 32 x 16 one stored as 16 rows of d pairs, into a 16 x 16 float tile:
// 8,192 multiply-adds, products exact in float (values below float's normal
// range count as 0, as on the pair path). An Intel Xeon (family 6 model
// 207) ran 464 GFLOP/s of them on one core, against 153 of AVX-512 FMAs.
#pragma once

#include <cmath>
#include <limits>

#include "cpu_tiles.h"

namespace obc {

// Rows of X per amx_xyt32 call: two tiles of 16.
constexpr int kAmxRows = 32;

// Whether amx_xyt32 applies: bfloat16 with D a multiple of 32 (one tile
// step of d); the rest keeps the pair path.
inline bool amx_applies(DType dt, int64_t D) { return dt == DType::BF16 && D % 32 == 0; }

// The kernels' Amx parameter where they run no tile products (the AMX
// policies are below).
struct NoAmx {
  static constexpr bool on = false;
};

#ifdef OBC_X86_VARIANTS

// The register file's shapes, ldtilecfg's 64-byte format: tiles 0-3 hold
// the float products (16 rows x 16 floats), 4-5 X's rows (16 rows x 32
// bfloat16), 6-7 a pair tile's halves (16 rows of 16 words).
struct alignas(64) AmxTileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// Configures this thread's tiles for amx_xyt32 until the scope ends (the
// state is per thread; released so that the kernel leaves none behind).
class AmxTiles {
 public:
  OBC_AMX_FN AmxTiles() {
    static const AmxTileConfig config;
    _tile_loadconfig(&config);
  }
  OBC_AMX_FN ~AmxTiles() { _tile_release(); }
  AmxTiles(const AmxTiles&) = delete;
  AmxTiles& operator=(const AmxTiles&) = delete;
};

// The tile instructions of amx_xyt32 and amx_pv32, as the policy they
// (and the kernels' Amx parameter) are templated on: a 32 x 32 float block
// C (tiles 0-3: rows 0-15 and 16-31, columns 0-15 and 16-31) += A (tiles
// 4-5: 32 rows of 32 bfloat16) . B (tiles 6-7: 16 rows of 32 pair words,
// columns 0-15 and 16-31). AmxHw issues them (inside an AmxTiles scope;
// GCC's tile intrinsics take literal tile numbers). AmxEmu computes what
// they mean in plain C++, so that the AMX kernels' own logic (operand
// layouts, bfloat16 terms, which blocks add where) runs and is tested on
// CPUs with AVX512-BF16 but no AMX (OBCACHE_CPU_VARIANT=amx_emulated);
// NoAmx (above) is the kernels' parameter without AMX. Strides in bytes.
struct AmxHw {
  static constexpr bool on = true;
  OBC_AMX_FN OBC_ALWAYS_INLINE static void zero_c() {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  // C's rows at c, c + stride, ...
  OBC_AMX_FN OBC_ALWAYS_INLINE static void load_c(const float* c, int64_t stride) {
    _tile_loadd(0, c, stride);
    _tile_loadd(1, c + 16, stride);
    _tile_loadd(2, reinterpret_cast<const char*>(c) + 16 * stride, stride);
    _tile_loadd(3, reinterpret_cast<const char*>(c + 16) + 16 * stride, stride);
  }
  OBC_AMX_FN OBC_ALWAYS_INLINE static void store_c(float* c, int64_t stride) {
    _tile_stored(0, c, stride);
    _tile_stored(1, c + 16, stride);
    _tile_stored(2, reinterpret_cast<char*>(c) + 16 * stride, stride);
    _tile_stored(3, reinterpret_cast<char*>(c + 16) + 16 * stride, stride);
  }
  OBC_AMX_FN OBC_ALWAYS_INLINE static void load_a(const bf16_t* a, int64_t stride) {
    _tile_loadd(4, a, stride);
    _tile_loadd(5, reinterpret_cast<const char*>(a) + 16 * stride, stride);
  }
  OBC_AMX_FN OBC_ALWAYS_INLINE static void load_b(const uint32_t* b, int64_t stride) {
    _tile_loadd(6, b, stride);
    _tile_loadd(7, b + 16, stride);
  }
  OBC_AMX_FN OBC_ALWAYS_INLINE static void dp() {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
};

// tdpbf16ps's 32 products per float of C (each exact in float) summed in
// double (exact while their magnitudes span under ~2^35) and added to C
// with one rounding to nearest, bfloat16 inputs below float's
// normal range read as 0 and results below it flushed to 0. The ISA
// reference's pseudocode rounds after each product instead; the hardware
// (a Xeon, family 6 model 207) is closer to one rounding: where v - o
// cancels (BFloat16KeepsOAtFloatPrecisionWhereVMinusOCancels), rounding
// after each product gave 1.2e-2 of the largest score (the test allows
// 1e-2), the hardware 2.1e-3.
// Per thread, as the tile registers are.
struct AmxEmu {
  static constexpr bool on = true;
  struct Regs {
    float c[32][32];
    uint16_t a[32][32];
    uint16_t b[16][64];  // row k: columns 0-31's pairs, (c, 0) then (c, 1)
  };
  static Regs& regs() {
    thread_local Regs r;
    return r;
  }
  static void zero_c() { std::memset(regs().c, 0, sizeof(regs().c)); }
  static void load_c(const float* c, int64_t stride) {
    for (int r = 0; r < 32; ++r) std::memcpy(regs().c[r], reinterpret_cast<const char*>(c) + r * stride, 128);
  }
  static void store_c(float* c, int64_t stride) {
    for (int r = 0; r < 32; ++r) std::memcpy(reinterpret_cast<char*>(c) + r * stride, regs().c[r], 128);
  }
  static void load_a(const bf16_t* a, int64_t stride) {
    for (int r = 0; r < 32; ++r) std::memcpy(regs().a[r], reinterpret_cast<const char*>(a) + r * stride, 64);
  }
  static void load_b(const uint32_t* b, int64_t stride) {
    for (int k = 0; k < 16; ++k) std::memcpy(regs().b[k], reinterpret_cast<const char*>(b) + k * stride, 128);
  }
  static void dp() {
    Regs& g = regs();
    for (int m = 0; m < 32; ++m)
      for (int n = 0; n < 32; ++n) {
        double sum = 0;
        for (int k = 0; k < 16; ++k)
          for (int i = 0; i < 2; ++i) sum += static_cast<double>(daz(g.a[m][2 * k + i]) * daz(g.b[k][2 * n + i]));
        g.c[m][n] = flush(static_cast<float>(g.c[m][n] + sum));
      }
  }

 private:
  static float daz(uint16_t bits) { return (bits & 0x7f80u) == 0 ? 0.0f : bf16_bits_to_float(bits); }
  static float flush(float x) { return std::fabs(x) < std::numeric_limits<float>::min() ? 0.0f : x; }
};

// C[32][kTile] = X[32][D] . Yt for 32 bfloat16 rows of X (row r at
// X + r * ldx, elements contiguous) and the pair tile Yt ([D / 2][kTile]
// words, avx512bf16_load_pairs) of their D columns; inside an AmxTiles
// scope. The same product as avx512bf16_xyt<32>, summed in AMX's order.
// With terms > 1, X is a float operand's bfloat16 terms (avx512bf16_split3),
// term t at X + t * term_stride, and C the sum of their products, each step
// of d adding the terms in order.
template <typename Tiles>
OBC_AMX_FN inline void amx_xyt32(const bf16_t* X, int64_t ldx, int64_t D, const uint32_t* Yt, float* C,
                                 int terms = 1, int64_t term_stride = 0) {
  static_assert(kTile == 32, "a pair tile is two 16-word AMX tiles wide");
  const int64_t x_stride = ldx * static_cast<int64_t>(sizeof(bf16_t)), y_stride = kTile * sizeof(uint32_t);
  // GCC's tile load and store asm names no memory operand: without these
  // barriers the compiler could move the pair tile's stores past the loads
  // that read it, or the caller's reads of C before the tile stores.
  asm volatile("" ::: "memory");
  Tiles::zero_c();
  for (int64_t d = 0; d < D; d += 32) {
    Tiles::load_b(Yt + (d / 2) * kTile, y_stride);  // pairs d / 2 .. + 16
    for (int t = 0; t < terms; ++t) {
      Tiles::load_a(X + t * term_stride + d, x_stride);  // d .. d + 32
      Tiles::dp();
    }
  }
  Tiles::store_c(C, kTile * sizeof(float));
  asm volatile("" ::: "memory");
}

// x[0 : n] (n a multiple of 32) as three bfloat16 terms, so that AMX
// multiplies a float operand by bfloat16 values at float precision: each
// term the remainder of the ones before rounded to nearest; the remainders
// are exact floats, and 3 x 8 bits cover float's 24, so hi + mid + lo == x
// up to the terms under 2^-126, which the conversions (and tdpbf16ps, which
// reads such inputs as 0) drop.
OBC_AMX_FN inline void avx512bf16_split3(const float* x, int64_t n, bf16_t* hi, bf16_t* mid, bf16_t* lo) {
  for (int64_t i = 0; i < n; i += 32) {
    __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
    for (bf16_t* t : {hi + i, mid + i, lo + i}) {
      const __m512i r = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(b, a));  // a's 16 terms, then b's
      _mm512_storeu_si512(t, r);
      // A bfloat16 as a float: its bits in the upper half.
      a = _mm512_sub_ps(a, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(r)), 16)));
      b = _mm512_sub_ps(
          b, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(r, 1)), 16)));
    }
  }
}

// The words of x[0 : 16] and y[0 : 16] in turn, as vpermt2w's indices (y's
// from 32).
struct KeyPairIndex {
  alignas(64) uint16_t idx[32];
  constexpr KeyPairIndex() : idx{} {
    for (int k = 0; k < 16; ++k) idx[2 * k] = static_cast<uint16_t>(k), idx[2 * k + 1] = static_cast<uint16_t>(32 + k);
  }
};
inline constexpr KeyPairIndex kKeyPairIndex{};

// The value tile of tn <= kTile keys (rows of D bfloat16, ld apart) paired
// along the keys, as AMX's B operand of P V: dst[i][d] = the word of
// (v[2i][d], v[2i + 1][d]), [kTile / 2][D] words, keys past tn as zeros.
// D a multiple of 32.
OBC_AMX_FN inline void avx512_load_key_pairs(const bf16_t* v, int64_t ld, int64_t tn, int64_t D, uint32_t* dst) {
  const __m512i kLo = _mm512_load_si512(kKeyPairIndex.idx);  // words 0-15 of the two rows
  const __m512i kHi = _mm512_add_epi16(kLo, _mm512_set1_epi16(16));
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t i = 0; i < kTile / 2; ++i) {
    const bf16_t* a = v + 2 * i * ld;
    for (int64_t d = 0; d < D; d += 32) {
      const __m512i x = 2 * i < tn ? _mm512_loadu_si512(a + d) : zero;
      const __m512i y = 2 * i + 1 < tn ? _mm512_loadu_si512(a + ld + d) : zero;
      _mm512_storeu_si512(dst + i * D + d, _mm512_permutex2var_epi16(x, kLo, y));
      _mm512_storeu_si512(dst + i * D + d + 16, _mm512_permutex2var_epi16(x, kHi, y));
    }
  }
}

// O[32][D] (rows ldo apart) += the sum over `terms` of P_t . V for a key
// tile: P_t [32 rows][kTile keys] bfloat16 at P + t * term_stride, V its
// value tile paired along the keys (avx512_load_key_pairs); inside an
// AmxTiles scope. O's 16 x 16 blocks go through the tiles: each step of 32
// columns loads four, adds the terms' products in order, stores them.
template <typename Tiles>
OBC_AMX_FN inline void amx_pv32(const bf16_t* P, int64_t term_stride, int terms, const uint32_t* V, int64_t D,
                                float* O, int64_t ldo) {
  const int64_t o_stride = ldo * static_cast<int64_t>(sizeof(float)), v_stride = D * sizeof(uint32_t);
  constexpr int64_t p_stride = kTile * sizeof(bf16_t);
  asm volatile("" ::: "memory");  // as in amx_xyt32
  for (int64_t d = 0; d < D; d += 32) {
    Tiles::load_c(O + d, o_stride);
    Tiles::load_b(V + d, v_stride);
    for (int t = 0; t < terms; ++t) {
      Tiles::load_a(P + t * term_stride, p_stride);
      Tiles::dp();
    }
    Tiles::store_c(O + d, o_stride);
  }
  asm volatile("" ::: "memory");
}

#endif

}  // namespace obc

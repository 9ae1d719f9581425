// AMX's bfloat16 tile products for the CPU kernels (the Amx variant,
// cpu_tiles.h). One tdpbf16ps multiplies a 16 x 32 bfloat16 tile by a
// 32 x 16 one stored as 16 rows of d pairs, into a 16 x 16 float tile:
// 8,192 multiply-adds, products exact in float (values below float's normal
// range count as 0, as on the pair path). An Intel Xeon (family 6 model
// 207) ran 464 GFLOP/s of them on one core, against 153 of AVX-512 FMAs.
#pragma once

#include "cpu_tiles.h"

namespace obc {

// Rows of X per amx_xyt32 call: two tiles of 16.
constexpr int kAmxRows = 32;

// Whether amx_xyt32 applies: bfloat16 with D a multiple of 32 (one tile
// step of d); the rest keeps the pair path.
inline bool amx_applies(DType dt, int64_t D) { return dt == DType::BF16 && D % 32 == 0; }

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

// C[32][kTile] = X[32][D] . Yt for 32 bfloat16 rows of X (row r at
// X + r * ldx, elements contiguous) and the pair tile Yt ([D / 2][kTile]
// words, avx512bf16_load_pairs) of their D columns; inside an AmxTiles
// scope. The same product as avx512bf16_xyt<32>, summed in AMX's order.
// With terms > 1, X is a float operand's bfloat16 terms (avx512bf16_split3),
// term t at X + t * term_stride, and C the sum of their products, each step
// of d adding the terms in order.
OBC_AMX_FN inline void amx_xyt32(const bf16_t* X, int64_t ldx, int64_t D, const uint32_t* Yt, float* C,
                                 int terms = 1, int64_t term_stride = 0) {
  static_assert(kTile == 32, "a pair tile is two 16-word AMX tiles wide");
  const int64_t x_stride = ldx * static_cast<int64_t>(sizeof(bf16_t)), y_stride = kTile * sizeof(uint32_t);
  // GCC's tile load and store asm names no memory operand: without these
  // barriers the compiler could move the pair tile's stores past the loads
  // that read it, or the caller's reads of C before the tile stores.
  asm volatile("" ::: "memory");
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t d = 0; d < D; d += 32) {
    _tile_loadd(6, Yt + (d / 2) * kTile, y_stride);       // pairs d / 2 .. + 16, columns 0-15
    _tile_loadd(7, Yt + (d / 2) * kTile + 16, y_stride);  // columns 16-31
    for (int t = 0; t < terms; ++t) {
      const bf16_t* x = X + t * term_stride + d;
      _tile_loadd(4, x, x_stride);             // rows 0-15, d .. d + 32
      _tile_loadd(5, x + 16 * ldx, x_stride);  // rows 16-31
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  const int64_t c_stride = kTile * sizeof(float);
  _tile_stored(0, C, c_stride);
  _tile_stored(1, C + 16, c_stride);
  _tile_stored(2, C + 16 * kTile, c_stride);
  _tile_stored(3, C + 16 * kTile + 16, c_stride);
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
OBC_AMX_FN inline void amx_pv32(const bf16_t* P, int64_t term_stride, int terms, const uint32_t* V, int64_t D,
                                float* O, int64_t ldo) {
  const int64_t o_stride = ldo * static_cast<int64_t>(sizeof(float)), v_stride = D * sizeof(uint32_t);
  constexpr int64_t p_stride = kTile * sizeof(bf16_t);
  asm volatile("" ::: "memory");  // as in amx_xyt32
  for (int64_t d = 0; d < D; d += 32) {
    _tile_loadd(0, O + d, o_stride);
    _tile_loadd(1, O + d + 16, o_stride);
    _tile_loadd(2, O + 16 * ldo + d, o_stride);
    _tile_loadd(3, O + 16 * ldo + d + 16, o_stride);
    _tile_loadd(6, V + d, v_stride);
    _tile_loadd(7, V + d + 16, v_stride);
    for (int t = 0; t < terms; ++t) {
      const bf16_t* pt = P + t * term_stride;
      _tile_loadd(4, pt, p_stride);
      _tile_loadd(5, pt + 16 * kTile, p_stride);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, O + d, o_stride);
    _tile_stored(1, O + d + 16, o_stride);
    _tile_stored(2, O + 16 * ldo + d, o_stride);
    _tile_stored(3, O + 16 * ldo + d + 16, o_stride);
  }
  asm volatile("" ::: "memory");
}

#endif

}  // namespace obc

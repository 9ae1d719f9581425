// CPU tile blocks shared by the saliency and projected_value_norm kernels:
// a transposed tile load and the register-blocked product
// C[RB][kTile] = X[RB][D] . Yt[D][kTile], each in a generic form (plain
// loops the compiler vectorises for the target it is compiled for) and, on
// x86-64 with GCC, AVX2 and AVX-512 intrinsic forms (float only; see below
// why).
//
// The kernels are compiled once per ISA: each file has an entry point per
// variant whose always_inline body is built with that target's
// instructions, and `cpu_variant()` picks one at run time.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "common.h"

#if defined(__GNUC__)
#define OBC_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define OBC_ALWAYS_INLINE inline
#endif

// Sanitizer builds (and -DOBC_NO_MULTIVERSION) compile the baseline variant
// only, the one every CPU can run; clang spells the arch names differently.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__) && !defined(OBC_NO_MULTIVERSION)
#define OBC_X86_VARIANTS 1
#include <immintrin.h>
#define OBC_AVX2_FN __attribute__((target("avx2,fma,f16c")))
#define OBC_AVX512_FN __attribute__((target("arch=x86-64-v4")))
#define OBC_AVX512BF16_FN __attribute__((target("arch=x86-64-v4,avx512bf16")))
#define OBC_AMX_FN __attribute__((target("arch=x86-64-v4,avx512bf16,amx-tile,amx-bf16")))
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace obc {

constexpr int64_t kTile = 32;  // columns of a tile (keys, or hidden columns)

// Rows per register block of xyt_tile (both kernels use it). Generic loops
// (acc[RB][kTile] floats): RB = 4 fits NEON's 32 registers. AVX2's
// intrinsic blocks are RB x 16: 12 accumulators + 2 loads + 1 broadcast.
// AVX-512's are RB x 32 (kTile, two ZMM): 16 accumulators + 2 loads + 1
// broadcast of the 32 ZMM registers; the generic 4 x 32 block GCC makes of
// the loops there has 8, too few to hide the FMA latency (42% of torch.mm
// on an AVX-512 Xeon, evict at N = 16k; 57% with these blocks).
constexpr int kRBWide = 4, kRBAvx2 = 6, kRBAvx512 = 8;
constexpr int kMaxRB = kRBAvx512 > kRBAvx2 ? kRBAvx512 : kRBAvx2;
static_assert(kMaxRB >= kRBWide, "workspaces hold kMaxRB rows");

// Which intrinsic blocks a kernel instance uses: none (the generic loops),
// AVX2 or AVX-512; the value is the float vector width.
constexpr int kNoVec = 0, kAvx2W = 8, kAvx512W = 16;

// The variants a kernel file compiles, in ISA order. Avx512Bf16 is AVX-512
// with AVX512-BF16's dot products of bfloat16 pairs: the kernels with a pair
// path use it for bfloat16 inputs and run Avx512 for the rest. Amx is
// AVX-512 with AMX's bfloat16 tile products (Intel, Sapphire Rapids on):
// saliency's products and projected_value_norm use them for bfloat16
// inputs; the rest runs Avx512 there, not the pair path (see
// cpu_default_variant). AmxEmulated runs the Amx kernels with the tile
// instructions emulated (cpu_amx.h: AmxEmu) on any CPU with AVX512-BF16,
// for the tests only: never a default.
enum class CpuVariant { Baseline, Avx2, Avx512, Avx512Bf16, AmxEmulated, Amx };

#ifdef OBC_X86_VARIANTS
// Linux hands a process AMX's tile registers only once it asks
// (ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA; before that a tile
// instruction faults). Asked once; the grant covers every thread.
inline bool amx_granted() {
  static const bool granted = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
  return granted;
}
#endif

// The best variant this CPU can run.
inline CpuVariant cpu_supported_variant() {
#ifdef OBC_X86_VARIANTS
  if (__builtin_cpu_supports("x86-64-v4")) {
    if (!__builtin_cpu_supports("avx512bf16")) return CpuVariant::Avx512;
    if (__builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") && amx_granted())
      return CpuVariant::Amx;
    return CpuVariant::Avx512Bf16;
  }
  if (__builtin_cpu_supports("x86-64-v3")) return CpuVariant::Avx2;
#endif
  return CpuVariant::Baseline;
}

// The variant used where the environment names none: the best supported
// (AMX where Linux grants it), except the pair variant on Intel. A pair dot
// product (vdpbf16ps) does two float FMAs' multiplies. On Zen 4 pairs made
// bfloat16 evict 16% faster than float32; an Intel Xeon with AVX512-BF16
// (family 6 model 207) issued a quarter as many as its FMAs (12 independent
// chains: 1.2 vs 4.8 G/s), so pairs halve the rate there: bfloat16 evict
// ran 7-26% slower than float32 with them, 1-4% faster without (medians
// of alternated calls), and projected_value_norm at Llama-3.1-8B's shape
// 1040 vs 910 ms (bench/RESULTS.md).
inline CpuVariant cpu_default_variant() {
  const CpuVariant best = cpu_supported_variant();
#ifdef OBC_X86_VARIANTS
  if (best == CpuVariant::Avx512Bf16 && __builtin_cpu_is("intel")) return CpuVariant::Avx512;
#endif
  return best;
}

// The variant the kernels run: OBCACHE_CPU_VARIANT (baseline, avx2, avx512,
// avx512bf16, amx_emulated or amx) where set, lowered to what the CPU
// supports (amx_emulated needs AVX512-BF16, not AMX), so that the
// tests can run every variant a CPU has (CMakeLists.txt runs the kernel
// tests once per value), else cpu_default_variant(). Read once per kernel
// file, at its first call.
inline CpuVariant cpu_variant() {
  const char* env = std::getenv("OBCACHE_CPU_VARIANT");
  if (env == nullptr || *env == '\0') return cpu_default_variant();
  const std::string c(env);
  CpuVariant want;
  if (c == "baseline") {
    want = CpuVariant::Baseline;
  } else if (c == "avx2") {
    want = CpuVariant::Avx2;
  } else if (c == "avx512") {
    want = CpuVariant::Avx512;
  } else if (c == "avx512bf16") {
    want = CpuVariant::Avx512Bf16;
  } else if (c == "amx_emulated") {
    want = CpuVariant::AmxEmulated;
  } else if (c == "amx") {
    want = CpuVariant::Amx;
  } else {
    std::fprintf(stderr,
                 "obcache: OBCACHE_CPU_VARIANT=%s is not baseline, avx2, avx512, avx512bf16, amx_emulated or amx; "
                 "ignored\n",
                 env);
    return cpu_default_variant();
  }
  const CpuVariant can = cpu_supported_variant();
  if (want == CpuVariant::AmxEmulated && can >= CpuVariant::Avx512Bf16) return want;
  return want < can ? want : can;
}

// The entry point of cpu_variant()'s variant (files without the x86
// variants pass their baseline for all of them; files without an AMX path
// get avx512 for amx_emulated and amx, as on AMX's CPUs pairs run at half
// the float rate; files without a pair path get avx512 for all three).
template <typename Fn>
Fn pick_cpu_variant(Fn baseline, Fn avx2, Fn avx512, Fn avx512bf16, Fn amx_emulated, Fn amx) {
  switch (cpu_variant()) {
    case CpuVariant::Amx: return amx;
    case CpuVariant::AmxEmulated: return amx_emulated;
    case CpuVariant::Avx512Bf16: return avx512bf16;
    case CpuVariant::Avx512: return avx512;
    case CpuVariant::Avx2: return avx2;
    default: return baseline;
  }
}
template <typename Fn>
Fn pick_cpu_variant(Fn baseline, Fn avx2, Fn avx512, Fn avx512bf16) {
  return pick_cpu_variant(baseline, avx2, avx512, avx512bf16, avx512, avx512);
}
template <typename Fn>
Fn pick_cpu_variant(Fn baseline, Fn avx2, Fn avx512) {
  return pick_cpu_variant(baseline, avx2, avx512, avx512, avx512, avx512);
}

// Whether a kernel of accumulation type T in a variant with intrinsic
// blocks of width kVW uses them: they are float only.
template <typename T, int kVW>
constexpr bool kVecFloat = kVW != kNoVec && std::is_same<T, float>::value;

// Requests the cache lines of the n elements at x (a row), to be read soon:
// kLocality 3 into L1 (prefetcht0 on x86), 2 into L2 (prefetcht1).
template <int kLocality, typename E>
OBC_ALWAYS_INLINE void prefetch_row(const E* x, int64_t n) {
  const char* b = reinterpret_cast<const char*>(x);
  const int64_t bytes = n * static_cast<int64_t>(sizeof(E));
  if (bytes <= 0) return;
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(b + o, 0, kLocality);
  __builtin_prefetch(b + bytes - 1, 0, kLocality);  // the last line, where x is not line-aligned
}

// dst[d][c] = src row c (c < tn), zero columns c >= tn: a transposed tile.
template <typename E, typename T>
OBC_ALWAYS_INLINE void load_transposed(const E* src, int64_t ld, int64_t tn, int64_t D, T* dst) {
  for (int64_t c = 0; c < tn; ++c) {
    const E* row = src + c * ld;
    for (int64_t d = 0; d < D; ++d) dst[d * kTile + c] = Elem<E>::load(row[d]);
  }
  for (int64_t d = 0; d < D; ++d)
    for (int64_t c = tn; c < kTile; ++c) dst[d * kTile + c] = T(0);
}

// C[RB][kTile] = X[RB][D] . Yt[D][kTile] (kDist: sum_d (X - Yt)^2 instead);
// row r of X at X + r * ldx.
template <typename T, int RB, bool kDist>
OBC_ALWAYS_INLINE void block_xyt(const T* X, int64_t ldx, int64_t D, const T* Yt, T* C) {
  T acc[RB][kTile];
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < kTile; ++c) acc[r][c] = T(0);
  for (int64_t d = 0; d < D; ++d) {
    const T* y = Yt + d * kTile;
    for (int r = 0; r < RB; ++r) {
      const T x = X[r * ldx + d];
      for (int c = 0; c < kTile; ++c) {
        if constexpr (kDist) {
          const T t = y[c] - x;
          acc[r][c] += t * t;
        } else {
          acc[r][c] += x * y[c];
        }
      }
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int c = 0; c < kTile; ++c) C[r * kTile + c] = acc[r][c];
}

#ifdef OBC_X86_VARIANTS
// AVX2 float blocks for dot products (avx2_xyt here) and P V (avx2_pv in
// saliency_cpu_kernel.h), written with
// intrinsics: GCC's code for the generic loops at RB = 6 kept the
// accumulators in memory. Here RB rows x 16 columns: 2 * RB accumulators,
// 2 loaded vectors and one broadcast, 15 of the 16 YMM registers at RB = 6,
// so 8 loads feed 12 FMAs (the generic 2 x 32 block loads 10 per 8). The
// summation order over d (or k) is the generic one's.
// acc[r] += a[r * lda + k] * y[k * ldy + 0 .. 16) for k = 0 .. K, in order.
template <int RB>
OBC_AVX2_FN inline void avx2_block_steps(__m256 (&acc)[RB][2], const float* a, int64_t lda, const float* y,
                                         int64_t ldy, int64_t K) {
  for (int64_t k = 0; k < K; ++k) {
    const __m256 y0 = _mm256_loadu_ps(y + k * ldy), y1 = _mm256_loadu_ps(y + k * ldy + 8);
    for (int r = 0; r < RB; ++r) {
      const __m256 x = _mm256_broadcast_ss(a + r * lda + k);
      acc[r][0] = _mm256_fmadd_ps(x, y0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(x, y1, acc[r][1]);
    }
  }
}

// C[RB][kTile] = X[RB][D] . Yt[D][kTile]; row r of X at X + r * ldx.
template <int RB>
OBC_AVX2_FN void avx2_xyt(const float* X, int64_t ldx, int64_t D, const float* Yt, float* C) {
  for (int c0 = 0; c0 < kTile; c0 += 16) {
    __m256 acc[RB][2];
    for (int r = 0; r < RB; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    avx2_block_steps<RB>(acc, X, ldx, Yt + c0, kTile, D);
    for (int r = 0; r < RB; ++r) {
      _mm256_storeu_ps(C + r * kTile + c0, acc[r][0]);
      _mm256_storeu_ps(C + r * kTile + c0 + 8, acc[r][1]);
    }
  }
}

// Eight elements as floats (bf16: the bits shifted up; half: F16C, exact).
OBC_AVX2_FN inline __m256 avx2_load8(const float* x) { return _mm256_loadu_ps(x); }
OBC_AVX2_FN inline __m256 avx2_load8(const bf16_t* x) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
OBC_AVX2_FN inline __m256 avx2_load8(const half_t* x) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
}

// load_transposed of a full tile (kTile rows) with D % 8 == 0: 8 x 8 blocks
// transposed in registers instead of one strided scalar store per element.
template <typename E>
OBC_AVX2_FN void avx2_load_transposed(const E* src, int64_t ld, int64_t D, float* dst) {
  for (int64_t c = 0; c < kTile; c += 8)
    for (int64_t d = 0; d < D; d += 8) {
      __m256 r[8], t[8];
      for (int i = 0; i < 8; ++i) r[i] = avx2_load8(src + (c + i) * ld + d);
      for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      for (int i = 0; i < 4; ++i) {  // column i of the block in r[i] / r[i + 4] halves
        _mm256_storeu_ps(dst + (d + i) * kTile + c, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(dst + (d + i + 4) * kTile + c, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
      }
    }
}

// Sixteen elements as floats, as avx2_load8.
OBC_AVX512_FN inline __m512 avx512_load16(const float* x) { return _mm512_loadu_ps(x); }
OBC_AVX512_FN inline __m512 avx512_load16(const bf16_t* x) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
OBC_AVX512_FN inline __m512 avx512_load16(const half_t* x) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
}

// avx2_load_transposed with D % 16 == 0 by 16 x 16 blocks: 64 shuffles per
// 256 elements where the 8 x 8 blocks take 96. At SmolLM2's D = 64 and 96
// window rows the transposes were 8% of the saliency op's time.
template <typename E>
OBC_AVX512_FN void avx512_load_transposed(const E* src, int64_t ld, int64_t D, float* dst) {
  static_assert(kTile % 16 == 0, "whole 16 x 16 blocks");
  for (int64_t c = 0; c < kTile; c += 16)
    for (int64_t d = 0; d < D; d += 16) {
      __m512 r[16], t[16];
      for (int i = 0; i < 16; ++i) r[i] = avx512_load16(src + (c + i) * ld + d);
      for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
      }
      // r[4j + m], 128-bit lane L: element 4L + m of rows 4j .. 4j + 3.
      for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      // Gather lane L of the four row groups: column 4L + m of all 16 rows.
      for (int m = 0; m < 4; ++m) {
        const __m512 a0 = _mm512_shuffle_f32x4(r[m], r[4 + m], _MM_SHUFFLE(2, 0, 2, 0));   // lanes 0, 2
        const __m512 a1 = _mm512_shuffle_f32x4(r[m], r[4 + m], _MM_SHUFFLE(3, 1, 3, 1));   // lanes 1, 3
        const __m512 b0 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], _MM_SHUFFLE(2, 0, 2, 0));
        const __m512 b1 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], _MM_SHUFFLE(3, 1, 3, 1));
        float* out = dst + (d + m) * kTile + c;
        _mm512_storeu_ps(out, _mm512_shuffle_f32x4(a0, b0, _MM_SHUFFLE(2, 0, 2, 0)));
        _mm512_storeu_ps(out + 4 * kTile, _mm512_shuffle_f32x4(a1, b1, _MM_SHUFFLE(2, 0, 2, 0)));
        _mm512_storeu_ps(out + 8 * kTile, _mm512_shuffle_f32x4(a0, b0, _MM_SHUFFLE(3, 1, 3, 1)));
        _mm512_storeu_ps(out + 12 * kTile, _mm512_shuffle_f32x4(a1, b1, _MM_SHUFFLE(3, 1, 3, 1)));
      }
    }
}

// The AVX-512 blocks: RB rows x 32 columns, two ZMM accumulators a row; the
// summation order over k is the generic one's.
// acc[r] += a[r * lda + k] * y[k * ldy + 0 .. 32) for k = 0 .. K, in order.
template <int RB>
OBC_AVX512_FN inline void avx512_block_steps(__m512 (&acc)[RB][2], const float* a, int64_t lda, const float* y,
                                             int64_t ldy, int64_t K) {
  for (int64_t k = 0; k < K; ++k) {
    const __m512 y0 = _mm512_loadu_ps(y + k * ldy), y1 = _mm512_loadu_ps(y + k * ldy + 16);
    for (int r = 0; r < RB; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * lda + k]);
      acc[r][0] = _mm512_fmadd_ps(x, y0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(x, y1, acc[r][1]);
    }
  }
}

// C[RB][kTile] = X[RB][D] . Yt[D][kTile]; row r of X at X + r * ldx.
template <int RB>
OBC_AVX512_FN void avx512_xyt(const float* X, int64_t ldx, int64_t D, const float* Yt, float* C) {
  static_assert(kTile == 32, "one block row is two ZMM vectors");
  __m512 acc[RB][2];
  for (int r = 0; r < RB; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  avx512_block_steps<RB>(acc, X, ldx, Yt, kTile, D);
  for (int r = 0; r < RB; ++r) {
    _mm512_storeu_ps(C + r * kTile, acc[r][0]);
    _mm512_storeu_ps(C + r * kTile + 16, acc[r][1]);
  }
}

// The AVX512-BF16 pair path for bfloat16 inputs: a bfloat16 row's elements
// 2i and 2i + 1 form one 32-bit word, and vdpbf16ps adds the two exact
// products of a word pair into a float accumulator: 32 multiply-adds an
// instruction where the float block does 16, at the same rate (2.0x the
// float block's GFLOP/s on a Zen 4). The products are the float path's (a
// bfloat16 product is exact in float) and the sums differ only in order,
// except below float's normal range (1.2e-38): vdpbf16ps reads subnormal
// inputs and writes subnormal products and sums as 0, where the float path
// keeps them. D must be even.

// Whether inputs of dtype dt and head size D take the pair path where the
// CPU has it (the kernels run their AVX-512 variant for the rest).
inline bool pairs_apply(DType dt, int64_t D) { return dt == DType::BF16 && D % 2 == 0; }

// dst[i][c] = the pair word i of row c (c < tn), zero words for c >= tn:
// the pair tile, [D / 2][kTile].
OBC_AVX512BF16_FN inline void avx512bf16_load_pairs(const bf16_t* src, int64_t ld, int64_t tn, int64_t D,
                                                   uint32_t* dst) {
  const int64_t D2 = D / 2;
  if (tn == kTile && ld % 2 == 0) {  // words transpose as floats do, by 16 x 16 or 8 x 8 blocks
    const float* words = reinterpret_cast<const float*>(src);
    if (D2 % 16 == 0) {
      avx512_load_transposed(words, ld / 2, D2, reinterpret_cast<float*>(dst));
      return;
    }
    if (D2 % 8 == 0) {
      avx2_load_transposed(words, ld / 2, D2, reinterpret_cast<float*>(dst));
      return;
    }
  }
  for (int64_t c = 0; c < tn; ++c)
    for (int64_t i = 0; i < D2; ++i) std::memcpy(dst + i * kTile + c, src + c * ld + 2 * i, sizeof(uint32_t));
  for (int64_t i = 0; i < D2; ++i)
    for (int64_t c = tn; c < kTile; ++c) dst[i * kTile + c] = 0;
}

// C[RB][kTile] = X[RB][D] . Yt for bfloat16 rows of X (row r at X + r * ldx)
// and the pair tile Yt of their D columns: avx512_xyt two d a step.
template <int RB>
OBC_AVX512BF16_FN void avx512bf16_xyt(const bf16_t* X, int64_t ldx, int64_t D, const uint32_t* Yt, float* C) {
  __m512 acc[RB][2];
  for (int r = 0; r < RB; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t i = 0; i < D / 2; ++i) {
    const __m512bh y0 = (__m512bh)_mm512_loadu_si512(Yt + i * kTile);
    const __m512bh y1 = (__m512bh)_mm512_loadu_si512(Yt + i * kTile + 16);
    for (int r = 0; r < RB; ++r) {
      uint32_t w;
      std::memcpy(&w, X + r * ldx + 2 * i, sizeof w);
      const __m512bh x = (__m512bh)_mm512_set1_epi32(static_cast<int>(w));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, y0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, y1);
    }
  }
  for (int r = 0; r < RB; ++r) {
    _mm512_storeu_ps(C + r * kTile, acc[r][0]);
    _mm512_storeu_ps(C + r * kTile + 16, acc[r][1]);
  }
}
#endif

// C = X . Yt for RB rows of X (ldx apart), the variant's intrinsic block
// where it has one.
template <int RB, int kVW, typename T>
OBC_ALWAYS_INLINE void xyt_tile(const T* X, int64_t ldx, int64_t D, const T* Yt, T* C) {
#ifdef OBC_X86_VARIANTS
  if constexpr (kVecFloat<T, kVW>) {
    if constexpr (kVW == kAvx512W)
      avx512_xyt<RB>(X, ldx, D, Yt, C);
    else
      avx2_xyt<RB>(X, ldx, D, Yt, C);
    return;
  }
#endif
  block_xyt<T, RB, false>(X, ldx, D, Yt, C);
}

// load_transposed, by 16 x 16 or 8 x 8 register transposes where the
// variant can.
template <int kVW, typename E, typename T>
OBC_ALWAYS_INLINE void transposed_tile(const E* src, int64_t ld, int64_t tn, int64_t D, T* dst) {
#ifdef OBC_X86_VARIANTS
  if constexpr (kVecFloat<T, kVW>) {
    if constexpr (kVW == kAvx512W) {
      if (tn == kTile && D % 16 == 0) {
        avx512_load_transposed(src, ld, D, dst);
        return;
      }
    }
    if (tn == kTile && D % 8 == 0) {
      avx2_load_transposed(src, ld, D, dst);
      return;
    }
  }
#endif
  load_transposed(src, ld, tn, D, dst);
}

}  // namespace obc

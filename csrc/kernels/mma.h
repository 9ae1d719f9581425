// Warp-level bf16 (and f16) tensor-core products for the CUDA kernels:
// mma.sync m16n8k16 (sm_80 and later) with float accumulation, and packing
// floats into bf16 or f16 pairs. Under the SIMT emulation the product is
// simt::mma_m16n8k16,
// which places every element by the PTX ISA's fragment table on its own, so
// the kernels' fragment loads are checked on CPUs too.
//
// Fragments of one warp, g = lane / 4, t = lane % 4, a register holding two
// bf16 (the lower column in the low half):
//   A (16 x 16, row-major): a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1],
//                           a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9]
//   B (16 x 8, column-major, i.e. row n of an [8][16] array):
//                           b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g]
//   C = D (16 x 8 floats):  d[0], d[1] = D[g][2t, 2t+1]; d[2], d[3] = D[g+8][2t, 2t+1]
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common.h"
#include "cuda_compat.h"

namespace obc {
namespace mma {

// The 16-bit types whose products mma.sync m16n8k16 takes.
template <typename E>
constexpr bool kOperandType = std::is_same<E, bf16_t>::value || std::is_same<E, half_t>::value;

// IEEE binary16 bits of x rounded to nearest even: subnormal below 2^-14
// (steps of 2^-24), inf from 65520 on, NaN stays a NaN. Integer operations
// only, so the device's pre-sm_80 copy of pack_rn compiles too.
OBC_HD OBC_INLINE uint32_t half_rn(float x) {
  const uint32_t u = float_to_bits(x), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // 65520 = 65504 + half its ulp: a tie, to the even inf
  if (a >= 0x38800000u) {                       // 2^-14 and up: rebias 127 -> 15, round off 13 bits
    const uint32_t r = a - 0x38000000u;
    return sign | (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
  }
  // Below 2^-14: round(|x| 2^24) steps of 2^-24; |x| = m 2^(e - 150), so
  // that is m >> (126 - e), rounded (1024 steps is 2^-14's bits, correctly).
  const int e = static_cast<int>(a >> 23), shift = 126 - e;
  if (e == 0 || shift > 24) return sign;  // below 2^-25: rounds to zero
  const uint32_t m = (a & 0x7fffffu) | 0x800000u, r = m >> shift, rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  return sign | (r + (rem > half || (rem == half && (r & 1u)) ? 1u : 0u));
}

// {lo, hi} as a pair of E (bf16_t or half_t), each rounded to nearest even.
template <typename E>
OBC_DEVICE OBC_INLINE uint32_t pack_rn(float lo, float hi) {
  constexpr bool kHalf = std::is_same<E, half_t>::value;
  static_assert(kOperandType<E>, "pairs of bf16 or f16");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t r;
  if constexpr (kHalf)
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  else
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#else
  if constexpr (kHalf) return half_rn(lo) | half_rn(hi) << 16;
  else return bf16_rn(lo) | bf16_rn(hi) << 16;
#endif
}
// The low and high element of a pair of E, as floats.
template <typename E>
OBC_DEVICE OBC_INLINE float low_of(uint32_t r) {
  if constexpr (std::is_same<E, half_t>::value) return half_bits_to_float(static_cast<uint16_t>(r));
  else return bits_to_float(r << 16);
}
template <typename E>
OBC_DEVICE OBC_INLINE float high_of(uint32_t r) {
  if constexpr (std::is_same<E, half_t>::value) return half_bits_to_float(static_cast<uint16_t>(r >> 16));
  else return bits_to_float(r & 0xffff0000u);
}

// x0, x1 as three pairs of E whose sum is x to float precision: each term is
// the rounded remainder of the ones before (the remainders are exact
// floats). bf16 terms: 3 x 8 bits, exact for every normal float. f16 terms:
// 3 x 11 bits, but none finer than f16's smallest step, 2^-24: exact for
// 2^-1 <= |x| < 65520, within 2^-25 of x below, so callers scale x by a
// power of two (exact) to just below 2^15 first.
template <typename E>
OBC_DEVICE OBC_INLINE void split3(float x0, float x1, uint32_t& hi, uint32_t& mid, uint32_t& lo) {
  hi = pack_rn<E>(x0, x1);
  x0 -= low_of<E>(hi), x1 -= high_of<E>(hi);
  mid = pack_rn<E>(x0, x1);
  x0 -= low_of<E>(mid), x1 -= high_of<E>(mid);
  lo = pack_rn<E>(x0, x1);
}

// Four 8 x 8 bf16 matrices from shared memory into the fragment registers
// of the calling warp (ldmatrix .x4, sm_75 and later): lane l passes the
// address of row l % 8 of matrix l / 8 (16 bytes, 16-byte aligned), and r[j]
// receives matrix j with lane l holding its row g, columns 2t, 2t + 1: the
// layout of one A, B or C register above. The transposed load gives lane l
// rows 2t, 2t + 1 of column g instead: a B fragment from a matrix stored
// row-major along n (keys x columns of V). One instruction for the 4 loads
// (and, transposed, 4 permutes) each register would otherwise take.
template <bool kTrans = false>
OBC_DEVICE OBC_INLINE void ldsm_x4(uint32_t (&r)[4], const uint32_t* row) {
#if defined(OBC_SIMT_EMULATION)
  ::simt::ldmatrix_x4(r, row, kTrans);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
#elif defined(__CUDA_ARCH__)
  __trap();  // only the tensor-core kernels (sm_80 and later) load fragments
#else
  (void)r, (void)row;
#endif
}

// 16 bytes from global to shared memory without passing through registers
// (cp.async.cg, sm_80 and later), issued only where a < b. The copy
// completes on its own while the thread goes on, so a thread has all its
// copies in flight at once, where a load and a store per piece kept ptxas to
// one (an L2 or DRAM round trip per piece, in a row). The test is a
// predicate set and used in the instruction, not a branch, so that callers
// form every piece's addresses outside any condition (load_pair_rows: with a
// branch per piece the compiler moved each piece's address arithmetic into
// its branch, 7-13 instructions a piece where one immediate offset does),
// and not a bool held across the loads (8 of them took more predicate
// registers than there are: ptxas spilled). cp_async_wait() waits for the
// calling thread's copies, and a barrier after it shows them to the block.
// The emulation writes the copies at the wait, so a read before it sees the
// poison.
OBC_DEVICE OBC_INLINE void cp_async16_if_lt(int a, int b, uint32_t* dst, const void* src) {
#if defined(OBC_SIMT_EMULATION)
  if (a < b) ::simt::cp_async16(dst, src);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile(
      "{\n"
      "  .reg .pred p;\n"
      "  setp.lt.s32 p, %0, %1;\n"
      "  @p cp.async.cg.shared.global [%2], [%3], 16;\n"
      "}\n" ::"r"(a),
      "r"(b), "r"(d), "l"(src)
      : "memory");
#elif defined(__CUDA_ARCH__)
  __trap();  // only the tensor-core kernels (sm_80 and later) copy this way
#else
  (void)a, (void)b, (void)dst, (void)src;
#endif
}
// p itself, its value hidden from the compiler: constant offsets added to
// the result stay immediates of the instructions that use it. Added to a
// pointer the compiler can see through (a row start computed from an
// index), they were folded into the index before its scaling: a 64-bit add
// and shift per 16-byte piece of load_pair_rows.
template <typename T>
OBC_DEVICE OBC_INLINE const T* opaque_ptr(const T* p) {
#if defined(__CUDA_ARCH__)
  asm("mov.b64 %0, %0;" : "+l"(p));
#endif
  return p;
}
// x itself, formed anew where this runs: what is computed from it cannot be
// hoisted out of an enclosing loop. load_pair_rows' shared row addresses
// and per-piece limits, hoisted out of pass 2's row-chunk loop, were kept
// across it and went to the stack. (On a pointer it would hide that the
// pointer is to shared memory: generic stores.)
OBC_DEVICE OBC_INLINE int here(int x) {
#if defined(__CUDA_ARCH__)
  asm volatile("mov.b32 %0, %0;" : "+r"(x));
#endif
  return x;
}
OBC_DEVICE OBC_INLINE void cp_async_wait() {
#if defined(OBC_SIMT_EMULATION)
  ::simt::cp_async_wait();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}

// 2^x for the softmax on the tensor-core path: ex2.approx (one MUFU
// instruction, 2^-22 relative; 0 for -inf and for results below 2^-126)
// where expf takes ~8 instructions. Callers pass (x - max) * kLog2e: the
// difference first, exact near the row maximum, so that the multiply rounds
// only it (scaling the logits by log2(e) instead would round each of them by
// 2^-24 of its magnitude, 6e-6 relative in A at logits of 100). Pass 2
// fuses log2(1 / sum) into the multiply: one rounding of a value below ~17
// in magnitude where A matters, 2^-20, 7e-7 relative in A, against the
// float sum of up to N terms that 1 / sum already carries. On CPUs (the
// emulation) the C library's exp2.
OBC_HD OBC_INLINE float exp2_approx(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::exp2(x);
#endif
}
constexpr float kLog2e = 1.4426950408889634f;

// d += A B for the calling warp (layout above), A and B of element type E:
// bf16_t or half_t (IEEE binary16; same fragment layout).
template <typename E>
OBC_DEVICE OBC_INLINE void m16n8k16_of(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  [[maybe_unused]] constexpr bool kHalf = std::is_same<E, half_t>::value;
  static_assert(kOperandType<E>, "mma.sync m16n8k16 takes bf16 or f16 operands");
#if defined(OBC_SIMT_EMULATION)
  ::simt::mma_m16n8k16(d, a, b, kHalf ? half_bits_to_float : bf16_bits_to_float);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define OBC_MMA_M16N8K16(T)                                                                                   \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." T "." T ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, " \
               "{%8, %9}, {%0, %1, %2, %3};"                                                                \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                             \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))
  if constexpr (kHalf) OBC_MMA_M16N8K16("f16");
  else OBC_MMA_M16N8K16("bf16");
#undef OBC_MMA_M16N8K16
#elif defined(__CUDA_ARCH__)
  __trap();  // launchers pick tensor-core kernels only on sm_80 and later
#endif
}

}  // namespace mma
}  // namespace obc

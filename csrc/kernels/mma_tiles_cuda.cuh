// Shared-memory tiles for the tensor-core kernels (saliency_mma_cuda.cuh,
// projected_value_mma_cuda.cuh): rows of 16-bit values (bf16, or f16 for
// projected_value) stored as pairs (32-bit words), padded so that fragment
// loads are free of bank conflicts, loaded by a whole block (kBlock threads)
// with cp.async where rows are 16-byte aligned, and read into mma.h's
// fragments with ldmatrix.
#pragma once

#include <cstdint>

#include "common.h"
#include "cuda_compat.h"
#include "mma.h"

namespace obc {
namespace mma {

constexpr int kWarpSize = 32;

// D rounded up to whole 16-wide steps of the product.
OBC_HD OBC_INLINE int mma_depth(long long D) { return static_cast<int>((D + 15) / 16 * 16); }
// Words per 16-bit-pair row: an odd number of 4-word (16-byte) groups, so each
// row starts 16-byte aligned (as ldmatrix needs) and the 8 rows of one
// ldmatrix matrix (or of a fragment load, g = 0..7) start in 8 different
// 4-bank groups: free of bank conflicts.
OBC_HD OBC_INLINE int pair_stride(long long D) { return mma_depth(D) / 2 + 4; }

// Whether rows of 16-bit elements at x with these strides (elements) all
// start 16-byte aligned: with D a multiple of 8, load_pair_rows' `vec`.
OBC_HD OBC_INLINE bool rows_aligned16(const void* x, long long s0, long long s1, long long s2) {
  return reinterpret_cast<uintptr_t>(x) % 16 == 0 && s0 % 8 == 0 && s1 % 8 == 0 && s2 % 8 == 0;
}

// One warp: dst[0:pw] = x[0:D] as pairs of 16-bit values (bf16_t or
// half_t; zero past D, all zero when x is null).
template <typename E>
__device__ OBC_INLINE void load_pair_row(const E* x, int Di, int pw, uint32_t* dst) {
  for (int i = threadIdx.x % kWarpSize; i < pw; i += kWarpSize) {
    const int d = 2 * i;
    const uint32_t lo = x && d < Di ? x[d].bits : 0u, hi = x && d + 1 < Di ? x[d + 1].bits : 0u;
    dst[i] = lo | hi << 16;
  }
}

// Rows 0 .. kRows - 1 of a shared 16-bit-pair tile, by the whole block: row
// c from src(c) for c < valid, zeros after, and zero from D to the mma
// depth; D <= kMaxDepth. With `vec` (D a multiple of 8, every row 16-byte
// aligned) by 16-byte cp.async pieces, a row's words being its 16-bit values
// in memory order: a quad of lanes per row (rows tid / 4, + kBlock / 4, ...),
// lane q of it copying the row's pieces q, q + 4, q + 8, ..., which sit at
// fixed offsets from its first in global and in shared memory (immediates in
// the SASS), so src(c) and the destination are formed once per row and
// thread (pass 1 of the saliency: ~7 instructions a piece with its row's
// share, where taking one piece of each of several rows multiplied out a row
// address per piece, 16, and stepped addresses took ~8; and no division to
// split a tile among the threads; kernels.md). A warp's copy is 8 rows x 64
// contiguous bytes, whole 32-byte sectors, and its shared stores fall in 8
// different 4-bank groups (pair_stride): 4 wavefronts for 512 bytes, the
// fewest there are. All of a thread's pieces are in flight at once (a load
// and a store per piece had one: pass 1 read K and V from DRAM a 16-byte
// piece per thread at a time): sync_tiles() before reading. Without `vec`,
// two 16-bit loads per word (load_pair_row), one row per warp. src(c) is
// only called for c < valid and never null.
template <int kBlock, int kMaxDepth, int kRows, typename Src>
__device__ OBC_INLINE void load_pair_rows(Src src, int valid, int Di, int pw, bool vec, uint32_t* dst) {
  constexpr int kPass = kBlock / 4, kPieces = kMaxDepth / 32;  // rows per pass; pieces per lane and row
  static_assert(kBlock % 4 == 0 && kRows % kPass == 0 && kMaxDepth % 32 == 0, "whole quads, passes and pieces");
  if (kMaxDepth > 128 && Di <= 128) {  // uniform: the usual head sizes skip the pieces past 128 columns
    load_pair_rows<kBlock, (kMaxDepth > 128 ? 128 : kMaxDepth), kRows>(src, valid, Di, pw, vec, dst);
    return;
  }
  if (!vec) {
    for (int c = threadIdx.x / kWarpSize; c < kRows; c += kBlock / kWarpSize)
      load_pair_row(c < valid ? src(c) : nullptr, Di, pw, dst + c * pw);
    return;
  }
  // Lane and head size formed here: the row addresses and per-piece limits
  // made from them cannot be hoisted out of a caller's loop (see mma::here).
  const int q = here(static_cast<int>(threadIdx.x)) & 3, in_d = here(Di) / 8;
  const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
  // Words 4 in_d .. 4 in_d + 3 of a row, one per lane of its quad, are
  // zeros: the padding from D to the mma depth where D % 16 == 8 (a piece
  // no lane copies), else the row's 4 words of stride padding, which nothing
  // reads. Stored unconditionally: a test of which lane holds the padding,
  // live across a loop of loads, went to the stack.
  const auto zero_pad = [&](int c) { dst[c * pw + 4 * in_d + q] = 0u; };
  const auto copy_row = [&](int c) {
    uint32_t* d = dst + c * pw + 4 * q;
    const auto* x = opaque_ptr(src(c) + 8 * q);
#pragma unroll
    for (int i = 0; i < kPieces; ++i)  // piece q + 4 i, where it lies within D
      cp_async16_if_lt(q, in_d - 4 * i, d + 16 * i, x + 32 * i);
    zero_pad(c);
  };
  if (valid >= kRows) {  // a whole tile (uniform): no test per row
#pragma unroll
    for (int k = 0; k < kRows / kPass; ++k) copy_row(threadIdx.x / 4 + k * kPass);
  } else {
#pragma unroll
    for (int k = 0; k < kRows / kPass; ++k) {
      const int c = threadIdx.x / 4 + k * kPass;
      if (c < valid) {
        copy_row(c);
      } else {
#pragma unroll
        for (int i = 0; i < kPieces; ++i)
          if (q + 4 * i < in_d) *reinterpret_cast<uint4*>(dst + c * pw + 4 * q + 16 * i) = zero;
        zero_pad(c);
      }
    }
  }
}

// The barrier after load_pair_rows: this thread's copies land (all of them,
// so the tiles loaded before it travel together), then the block's.
__device__ OBC_INLINE void sync_tiles() {
  cp_async_wait();
  __syncthreads();
}

// Fragment loads, one ldmatrix .x4 each (lane = threadIdx.x % 32, rows of
// stride pw words): A of rows row0 .. row0 + 15, columns k0 .. k0 + 15 (mma.h's
// a[0..3] are matrices rows 0-7 / 8-15 x columns 0-7 / 8-15, in that order).
__device__ OBC_INLINE void load_a(uint32_t (&a)[4], const uint32_t* w, int pw, int row0, int k0, int lane) {
  ldsm_x4(a, w + (row0 + lane % 16) * pw + k0 / 2 + 4 * (lane / 16));
}
// B of two n-tiles from rows n0 .. n0 + 15 of an [n][k] array (K: keys x
// columns): b[0..1] of n-tile n0 .. n0 + 7 and b[2..3] of n0 + 8 .. n0 + 15,
// columns k0 .. k0 + 15.
__device__ OBC_INLINE void load_b_pair(uint32_t (&b)[4], const uint32_t* w, int pw, int n0, int k0, int lane) {
  ldsm_x4(b, w + (n0 + lane % 8 + 8 * (lane / 16)) * pw + k0 / 2 + 4 * (lane / 8 % 2));
}
// B of two n-tiles from a [k][n] array (V in P V: keys x columns), rows k0 ..
// k0 + 15, columns n0 .. n0 + 15, transposed on the way: b[0..1] of columns
// n0 .. n0 + 7, b[2..3] of n0 + 8 .. n0 + 15.
__device__ OBC_INLINE void load_b_pair_trans(uint32_t (&b)[4], const uint32_t* w, int pw, int k0, int n0,
                                             int lane) {
  ldsm_x4<true>(b, w + (k0 + lane % 16) * pw + n0 / 2 + 4 * (lane / 16));
}

}  // namespace mma
}  // namespace obc

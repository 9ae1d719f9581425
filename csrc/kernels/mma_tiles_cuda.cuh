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

// Which pieces of a tile the calling thread loads: chunk j of rows first,
// first + per_pass, ... of a tile cut into `chunks` pieces per row, by a
// block of kBlock threads (thread i: chunk i % chunks of rows i / chunks + k
// per_pass; up to chunks - 1 threads idle when chunks does not divide the
// block). Two divisions: a kernel that loads many tiles of one width works
// this out once, outside its loop (ptxas does not hoist it out of a
// conditional load).
struct RowChunks {
  int first, per_pass, j;
};
template <int kBlock>
__device__ OBC_INLINE RowChunks row_chunks(int chunks) {
  const int tid = threadIdx.x, per_pass = kBlock / chunks;
  return {tid < per_pass * chunks ? tid / chunks : 1 << 30, per_pass, tid % chunks};
}
// The split of load_pair_rows' 16-byte pieces at head size Di.
template <int kBlock>
__device__ OBC_INLINE RowChunks pair_row_chunks(int Di) {
  return row_chunks<kBlock>(mma_depth(Di) / 8);
}

// f(row, j) for rows 0 .. n - 1 and every chunk j of each, split as rc says.
template <typename F>
__device__ OBC_INLINE void for_each_row_chunk(const RowChunks& rc, int n, F f) {
  for (int c = rc.first; c < n; c += rc.per_pass) f(c, rc.j);
}
// The same with the split worked out here, at the load, for tiles loaded
// once per block (the tensor-core saliency's Q in pass 1, K and V in pass
// 2): ~90 instructions a load, which tiles loaded in a loop should not pay
// each time (pass 1's K and V, pass 2's Q and O per row chunk take `rc`).
// ptxas's register allocation follows where the division sits: pass 2's
// product loop recomputed its addresses (56-74 instructions per step of D,
// 47 now) while its per-chunk loads split at the load
// (bench/results/kernels.md).
template <int kBlock, typename F>
__device__ OBC_INLINE void for_each_row_chunk(int n, int chunks, F f) {
  const int tid = threadIdx.x, per_pass = kBlock / chunks, j = tid % chunks;
  if (tid < per_pass * chunks)
    for (int c = tid / chunks; c < n; c += per_pass) f(c, j);
}

// Rows 0 .. n - 1 of a shared 16-bit-pair tile, by the whole block: row c from
// src(c) for c < valid, zeros after, and zero from D to the mma
// depth. With `vec` (D a multiple of 8, every row 16-byte aligned) one
// 16-byte cp.async per 8 columns, a row's words being its 16-bit values in
// memory order, so a thread has all its pieces in flight (a load and a store
// per piece had one: the saliency's pass 1 read K and V from DRAM a 16-byte
// piece per thread at a time); else two 16-bit loads per word
// (load_pair_row), one row per warp. src(c) is only called for c < valid and
// never null: a source that returned null past the end (the test in every
// trip, and a select that kept its address from being computed
// incrementally) took 33 instructions per 16-byte piece. each(rows, f) runs
// f(row, piece) over the pieces of rows 0 .. rows - 1 this thread loads
// (one of the for_each_row_chunk above, at mma_depth(Di) / 8 pieces per
// row). The copies may still be on their way when this returns:
// sync_tiles() before reading.
template <int kBlock, typename Each, typename Src>
__device__ OBC_INLINE void load_pair_rows_by(Each each, Src src, int valid, int n, int Di, int pw, bool vec,
                                             uint32_t* dst) {
  if (!vec) {
    for (int c = threadIdx.x / kWarpSize; c < n; c += kBlock / kWarpSize)
      load_pair_row(c < valid ? src(c) : nullptr, Di, pw, dst + c * pw);
    return;
  }
  const int m = valid < n ? valid : n;
  each(m, [&](int c, int j) {
    const bool in_d = 8 * j < Di;  // else the padding past D: zeros, read from the row's start
    cp_async16(dst + c * pw + 4 * j, src(c) + (in_d ? 8 * j : 0), in_d);
  });
  each(n - m, [&](int c, int j) {
    *reinterpret_cast<uint4*>(dst + (m + c) * pw + 4 * j) = make_uint4(0u, 0u, 0u, 0u);
  });
}
// With the split worked out once by the caller: rc = pair_row_chunks<kBlock>(Di).
template <int kBlock, typename Src>
__device__ OBC_INLINE void load_pair_rows(const RowChunks& rc, Src src, int valid, int n, int Di, int pw, bool vec,
                                          uint32_t* dst) {
  const auto each = [&](int rows, auto f) { for_each_row_chunk(rc, rows, f); };
  load_pair_rows_by<kBlock>(each, src, valid, n, Di, pw, vec, dst);
}
// How many rows of an n-row tile the thread copies under rc (a division).
__device__ OBC_INLINE int row_trips(const RowChunks& rc, int n) {
  return rc.first < n ? (n - rc.first + rc.per_pass - 1) / rc.per_pass : 0;
}
// The same for rows `stride` elements apart (row c at base + c * stride),
// with trips = row_trips(rc, n), for tiles loaded once per block or row
// chunk (pass 2's K and V, O's terms): a whole tile's copies step the
// thread's offset and destination in a count of trips unrolled by 4, where
// src(c) multiplied a row offset out for each 16-byte piece (16
// instructions a piece on sm_90, ~7 now; bench/results/kernels.md). Off,
// the offsets' type, is the stride's: 64-bit for K and V, 32-bit for O's
// terms (a run under 2^31 elements), where 64-bit offsets made ptxas
// recompute each address (22 a piece). A partial tile (the last, or rows
// not 16-byte aligned) takes the loader above. Not for loads inside a loop
// where registers are short: ptxas then either holds the addresses across
// the loop or recomputes them in every trip (pass 1's K and V: 199-207
// registers, or 19-22 instructions a piece under a register bound).
template <int kBlock, typename E, typename Off>
__device__ OBC_INLINE void load_pair_rows(const RowChunks& rc, int trips, const E* base, Off stride, int valid,
                                          int n, int Di, int pw, bool vec, uint32_t* dst) {
  if (!vec || valid < n) {
    load_pair_rows<kBlock>(rc, [&](int c) { return base + c * stride; }, valid, n, Di, pw, vec, dst);
    return;
  }
  if (trips == 0) return;  // an idle thread: rc.first is past every row, so no address is formed
  const bool in_d = 8 * rc.j < Di;  // as in load_pair_rows_by
  const Off off = rc.first * stride + (in_d ? 8 * rc.j : 0), off_step = rc.per_pass * stride;
  uint32_t* d = dst + rc.first * pw + 4 * rc.j;
  const int d_step = rc.per_pass * pw;
#pragma unroll 4
  for (int i = 0; i < trips; ++i) cp_async16(d + i * d_step, base + (off + i * off_step), in_d);
}
// With the split worked out at the load (see for_each_row_chunk).
template <int kBlock, typename Src>
__device__ OBC_INLINE void load_pair_rows(Src src, int valid, int n, int Di, int pw, bool vec, uint32_t* dst) {
  const auto each = [Di](int rows, auto f) { for_each_row_chunk<kBlock>(rows, mma_depth(Di) / 8, f); };
  load_pair_rows_by<kBlock>(each, src, valid, n, Di, pw, vec, dst);
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

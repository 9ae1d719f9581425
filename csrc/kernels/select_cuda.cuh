// Device building blocks of the select kernels: a block-wide exclusive scan
// and a block-wide radix select over uint64 keys (select_params.h) that
// finds the m-th best key without sorting.
//
// Radix select: 8 passes of 8 bits, most significant first. Each pass
// histograms (256 shared-memory bins, atomics) the next digit of the keys that
// still match the prefix found so far, and one warp finds the bin where the
// running count from the top reaches the number still to keep. The result
// (prefix, shift, remaining) says: keep a key when (key >> shift) is greater
// than (prefix >> shift), or equal and it is among the first `remaining` such
// keys by index. A pass whose chosen bin is kept whole stops early.
// Memory: one read of the n keys per pass (<= 8 passes).
#pragma once

#include <cstdint>

#include "cuda_compat.h"
#include "select_params.h"

namespace obc {
namespace sel {

constexpr int kBlock = 512;
constexpr int kWarps = kBlock / 32;

struct RadixResult {
  uint64_t prefix;
  int shift;
  long long remaining;
};

// Exclusive prefix sum of x over the block; *total gets the block sum.
// All threads must call it. scratch: kWarps + 1 ints of shared memory.
__device__ OBC_INLINE int block_exclusive_scan(int x, int* scratch, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int inc = x;
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += y;
  }
  if (lane == 31) scratch[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    int w = lane < kWarps ? scratch[lane] : 0;
    for (int o = 1; o < 32; o <<= 1) {
      const int y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    if (lane < kWarps) scratch[lane] = w;
  }
  __syncthreads();
  const int before = (warp > 0 ? scratch[warp - 1] : 0) + inc - x;
  *total = scratch[kWarps - 1];
  __syncthreads();  // scratch is reused by the next call
  return before;
}

// Block-wide: the m-th best of keys[0, n) (1 <= m <= n). Result in *res
// (shared memory), valid for all threads on return. hist: 257 shared uints.
__device__ OBC_INLINE void radix_select(const uint64_t* keys, long long n, long long m, RadixResult* res,
                                        unsigned int* hist) {
  if (threadIdx.x == 0) {
    res->prefix = 0;
    res->shift = 64;
    res->remaining = m;
  }
  __syncthreads();
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += kBlock) hist[i] = 0;
    __syncthreads();
    const uint64_t prefix = res->prefix;
    const uint64_t mask = shift == 56 ? 0 : (~uint64_t(0) << (shift + 8));
    for (long long i = threadIdx.x; i < n; i += kBlock) {
      const uint64_t k = keys[i];
      if ((k & mask) == prefix) atomicAdd(&hist[(k >> shift) & 255u], 1u);
    }
    __syncthreads();
    bool done = false;
    if (threadIdx.x < 32) {
      // Lane l owns bins 255 - 8l .. 248 - 8l (best first).
      const int lane = threadIdx.x;
      const long long r = res->remaining;
      unsigned long long c = 0;
      for (int j = 0; j < 8; ++j) c += hist[255 - 8 * lane - j];
      unsigned long long inc = c;
      for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long y = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += y;
      }
      const unsigned long long excl = inc - c;
      // Every lane has read res and hist before the one lane below writes
      // them (shuffles are no memory barrier in the PTX memory model).
      __syncwarp();
      if (static_cast<long long>(excl) < r && static_cast<long long>(inc) >= r) {
        unsigned long long acc = excl;
        for (int j = 0; j < 8; ++j) {
          const int bin = 255 - 8 * lane - j;
          const unsigned long long cnt = hist[bin];
          if (static_cast<long long>(acc + cnt) >= r) {
            res->prefix = prefix | (static_cast<uint64_t>(bin) << shift);
            res->shift = shift;
            res->remaining = r - static_cast<long long>(acc);
            // The whole bin is kept: no need to look at lower digits.
            hist[256] = (static_cast<long long>(cnt) == res->remaining) ? 1u : 0u;
            break;
          }
          acc += cnt;
        }
      }
    }
    __syncthreads();
    done = hist[256] != 0;
    __syncthreads();
    if (done) break;
  }
}

// Kept-or-not of one key against a radix result, packed for one scan:
// bit 0..15 "greater", bit 16..31 "equal".
__device__ OBC_INLINE int rank_flags(uint64_t key, const RadixResult& r) {
  const uint64_t k = key >> r.shift, t = r.prefix >> r.shift;
  return k > t ? 1 : (k == t ? (1 << 16) : 0);
}

}  // namespace sel
}  // namespace obc

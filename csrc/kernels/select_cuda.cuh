// Device building blocks of the select kernels: a block-wide radix select over
// uint64 keys, or uint32 ones where the pooled scores are float values
// (select_params.h), that finds the m-th best key without sorting, and a
// ranker that numbers flagged positions in ascending order.
//
// Radix select: passes of 8 bits, most significant first. Each pass
// histograms (256 shared-memory bins) the next digit of the keys that still
// match the prefix found so far, and one warp finds the bin where the running
// count from the top reaches the number still to keep. The result (prefix,
// shift, remaining) says: keep a key when (key >> shift) is greater than
// (prefix >> shift), or equal and it is among the first `remaining` such keys
// by index. A pass whose chosen bin is kept whole stops early.
//
// Why it is shaped this way (one block per row has to hide memory latency on
// its own, and a row is too short to be worth a grid-wide sync):
// - Each thread has kItems keys in flight per sweep.
// - Once the chosen bin holds at most kCandidates keys, the next pass over
//   global memory also copies them into shared memory; every later pass reads
//   only those. Scores of one head share their sign and most of their
//   exponent, so that happens after two or three of the eight digits, and the
//   rest costs no global traffic.
// - Histogram atomics are warp-aggregated: the first digits of similar scores
//   fall in one or two bins, and 32 lanes on one shared address serialise.
#pragma once

#include <cstdint>

#include "cuda_compat.h"
#include "select_params.h"

namespace obc {
namespace sel {

constexpr int kBlock = 512;
constexpr int kWarps = kBlock / 32;
constexpr int kItems = 8;                // per thread and sweep
constexpr int kChunk = kBlock * kItems;  // positions per sweep
constexpr int kCandidates = 4096;        // 32 KiB of keys in shared memory
constexpr unsigned kNoBin = 256;         // a lane with nothing to count

struct RadixResult {
  uint64_t prefix;  // a key of the kernel's key type
  int shift;
  long long remaining;
};

// The shift of a key type's top digit: 56 for uint64_t, 24 for uint32_t.
template <typename Key>
constexpr int top_shift() {
  return 8 * static_cast<int>(sizeof(Key)) - 8;
}

// A select block's shared memory (static: 33 KiB with 8-byte keys, 17 KiB
// with 4-byte ones, under the 48 KiB any GPU grants without opting in).
template <typename Key>
struct Smem {
  Key cand[kCandidates];
  unsigned int hist[256];
  RadixResult res;
  unsigned int cursor;         // keys appended to cand so far (32 bits: a native shared atomic)
  int filter;                  // the next pass copies the chosen bin's keys into cand
  int done;
  int warp_counts[2][kWarps];  // rank_sweep's
};

__device__ OBC_INLINE unsigned lanes_below() { return (1u << (threadIdx.x & 31)) - 1u; }

// One histogram count per lane whose bin is not kNoBin, one atomic per
// distinct bin of the warp. All lanes of the warp call it.
__device__ OBC_INLINE void count_bin(unsigned bin, unsigned int* hist) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 700  // no match.any before Volta
  if (bin != kNoBin) atomicAdd(&hist[bin], 1u);
#else
  const unsigned peers = __match_any_sync(0xffffffffu, bin);
  if (bin != kNoBin && (peers & lanes_below()) == 0) atomicAdd(&hist[bin], static_cast<unsigned>(__popc(peers)));
#endif
}

// The bin of `key` at digit `shift` when it matches `prefix` above the digit,
// else kNoBin.
template <typename Key>
__device__ OBC_INLINE unsigned digit_bin(Key key, bool valid, uint64_t prefix, int shift) {
  const Key above = shift == top_shift<Key>() ? Key(0) : static_cast<Key>(~Key(0) << (shift + 8));
  const bool match = valid && (key & above) == static_cast<Key>(prefix);
  return match ? static_cast<unsigned>((key >> shift) & 255u) : kNoBin;
}

// Appends the keys of lanes with `take` to s.cand (order is irrelevant for
// histograms): one shared atomic per warp.
template <typename Key>
__device__ OBC_INLINE void append_candidates(Key key, bool take, Smem<Key>& s) {
  const unsigned taking = __ballot_sync(0xffffffffu, take);
  unsigned int base = 0;
  if ((threadIdx.x & 31) == static_cast<unsigned>(__ffs(static_cast<int>(taking)) - 1))
    base = atomicAdd(&s.cursor, static_cast<unsigned>(__popc(taking)));
  base = __shfl_sync(0xffffffffu, base, taking ? __ffs(static_cast<int>(taking)) - 1 : 0);
  if (take) s.cand[base + __popc(taking & lanes_below())] = key;
}

// Positions of one sweep: warp w covers [w * 32 * kItems, (w + 1) * 32 * kItems),
// item j of a lane at w * 32 * kItems + 32 j + lane (coalesced loads, and an
// order that ballots can rank).
__device__ OBC_INLINE long long sweep_offset(int j) {
  return static_cast<long long>((threadIdx.x >> 5) * 32 * kItems + 32 * j + (threadIdx.x & 31));
}

// One histogram pass over keys[0, n) (global memory, or s.cand); with
// `filter`, the keys of the current prefix are also copied into s.cand.
template <typename Key>
__device__ OBC_INLINE void histogram_pass(const Key* keys, long long n, int shift, bool filter, Smem<Key>& s) {
  const uint64_t prefix = s.res.prefix;
  for (long long base = 0; base < n; base += kChunk) {
    Key k[kItems];
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const long long i = base + sweep_offset(j);
      k[j] = i < n ? keys[i] : 0;
    }
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const unsigned bin = digit_bin(k[j], base + sweep_offset(j) < n, prefix, shift);
      count_bin(bin, s.hist);
      if (filter) append_candidates(k[j], bin != kNoBin, s);
    }
  }
}

// Warp 0: the bin where the count from the top reaches s.res.remaining;
// updates s.res, s.done and s.filter. `from_global`: this pass read global
// memory, so a small enough chosen bin is worth copying into s.cand.
template <typename Key>
__device__ OBC_INLINE void pick_bin(int shift, bool from_global, Smem<Key>& s) {
  // Lane l owns bins 255 - 8l .. 248 - 8l (best first).
  const int lane = threadIdx.x;
  const long long r = s.res.remaining;
  const uint64_t prefix = s.res.prefix;
  unsigned long long c = 0;
  for (int j = 0; j < 8; ++j) c += s.hist[255 - 8 * lane - j];
  unsigned long long inc = c;
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long y = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += y;
  }
  const unsigned long long excl = inc - c;
  // Every lane has read s.res before the one lane below writes it (shuffles
  // are no memory barrier in the PTX memory model).
  __syncwarp();
  if (static_cast<long long>(excl) < r && static_cast<long long>(inc) >= r) {
    unsigned long long acc = excl;
    for (int j = 0; j < 8; ++j) {
      const int bin = 255 - 8 * lane - j;
      const long long cnt = s.hist[bin];
      if (static_cast<long long>(acc) + cnt >= r) {
        s.res.prefix = prefix | (static_cast<uint64_t>(bin) << shift);
        s.res.shift = shift;
        s.res.remaining = r - static_cast<long long>(acc);
        // The whole bin is kept: no need to look at lower digits.
        s.done = shift == 0 || cnt == s.res.remaining;
        s.filter = from_global && cnt <= kCandidates;
        break;
      }
      acc += static_cast<unsigned long long>(cnt);
    }
  }
}

// Block-wide: the m-th best of keys[0, n) (1 <= m <= n), result in s.res.
// `top_counted`: the caller already histogrammed the top digit of these keys
// into s.hist (while writing them), so the first pass is skipped.
template <typename Key>
__device__ OBC_INLINE void radix_select(const Key* keys, long long n, long long m, bool top_counted,
                                        Smem<Key>& s) {
  if (threadIdx.x == 0) {
    s.res.prefix = 0;
    s.res.shift = 8 * static_cast<int>(sizeof(Key));
    s.res.remaining = m;
    s.cursor = 0;
    s.filter = 0;
    s.done = 0;
  }
  __syncthreads();
  long long cand_n = -1;  // keys in s.cand once copied (the same in every thread)
  for (int shift = top_shift<Key>(); shift >= 0; shift -= 8) {
    if (shift != top_shift<Key>() || !top_counted) {
      for (int i = threadIdx.x; i < 256; i += kBlock) s.hist[i] = 0;
      __syncthreads();
      const bool filter = s.filter != 0;
      histogram_pass(cand_n < 0 ? keys : s.cand, cand_n < 0 ? n : cand_n, shift, filter, s);
      __syncthreads();
      if (filter) cand_n = static_cast<long long>(s.cursor);
    }
    if (threadIdx.x < 32) pick_bin(shift, cand_n < 0, s);
    __syncthreads();
    if (s.done) break;
  }
}

// Kept-or-not of one key (of either width) against a radix result.
__device__ OBC_INLINE bool above_threshold(uint64_t key, const RadixResult& r) {
  return (key >> r.shift) > (r.prefix >> r.shift);
}
__device__ OBC_INLINE bool at_threshold(uint64_t key, const RadixResult& r) {
  return (key >> r.shift) == (r.prefix >> r.shift);
}

// Ranks two sets of flags over one sweep in position order: rank_a[j] is the
// number of positions before item j with flag a (likewise b); the sweep's
// totals go to *total_a / *total_b. All threads call it; warp_counts is
// shared memory.
__device__ OBC_INLINE void rank_sweep(const bool (&a)[kItems], const bool (&b)[kItems], int (&rank_a)[kItems],
                                      int (&rank_b)[kItems], int* total_a, int* total_b,
                                      int (&warp_counts)[2][kWarps]) {
  const int warp = threadIdx.x >> 5;
  int run_a = 0, run_b = 0;
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const unsigned ba = __ballot_sync(0xffffffffu, a[j]), bb = __ballot_sync(0xffffffffu, b[j]);
    rank_a[j] = run_a + __popc(ba & lanes_below());
    rank_b[j] = run_b + __popc(bb & lanes_below());
    run_a += __popc(ba);
    run_b += __popc(bb);
  }
  if ((threadIdx.x & 31) == 0) {
    warp_counts[0][warp] = run_a;
    warp_counts[1][warp] = run_b;
  }
  __syncthreads();
  int before_a = 0, before_b = 0, sum_a = 0, sum_b = 0;
  for (int w = 0; w < kWarps; ++w) {
    before_a += w < warp ? warp_counts[0][w] : 0;
    before_b += w < warp ? warp_counts[1][w] : 0;
    sum_a += warp_counts[0][w];
    sum_b += warp_counts[1][w];
  }
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    rank_a[j] += before_a;
    rank_b[j] += before_b;
  }
  *total_a = sum_a;
  *total_b = sum_b;
  __syncthreads();  // warp_counts is reused by the next sweep
}

}  // namespace sel
}  // namespace obc

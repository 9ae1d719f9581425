// CUDA select and select_adaptive (torch-free; see select_cuda.cuh for the
// radix select). NOT a sort: per row a few sweeps over 4- or 8-byte keys,
// in shared memory where the row's keys fit there, else in global memory
// and the later digits in shared memory.
//
// select: one block of 512 threads per (b, h). The block pools the candidate
// scores of [start + sink, N - recent) once into keys (uint32 keys where the
// pooled scores are float values: float32 scores, max pooling or none;
// uint64 for float64 scores or average pooling), counting the keys' top
// digit on the way. The keys go to dynamic shared memory where the row's
// fit beside the block's static buffers (up to ~53k 4-byte keys on sm_90,
// ~37k on sm_80, ~21k on sm_86 / sm_89), else to the global workspace. The
// block runs alone on its SM (B * H_kv blocks: 8 at B = 1, H_kv = 8), so
// its passes over global keys went at what one SM pulls from L2 (20 B per
// key: the key written, read in two digit passes and the emission); in
// shared memory only the scores' reads are global (pool_kernel reads per
// candidate, mostly L1 hits). It radix-selects the (budget - sink -
// recent)-th best key, then walks the candidates in ascending order, 4096
// per sweep, ranking the keys above the threshold and those equal to it
// (ties go to the lower index: an equal key is kept while fewer than
// `remaining` equal keys precede it). Output position = greater-before +
// min(equal-before, remaining), so indices come out ascending.
//
// select_adaptive: (1) per (b, h) block: keys as above over [sink, N-recent),
// the head's own top f - sink - recent marked in keep and their keys zeroed
// (key 0 = not a candidate, below every score); (2) per b block: one radix
// select over the H * N flat keys of the batch row (flat order = lower head,
// then lower index, the reference's tie order); (3) per (b, h): lengths;
// (4) after the host reads max(lengths): per (b, h) ascending emission padded
// with -1.
#include "select_cuda.h"

#include <algorithm>

#include "cuda_compat.h"
#include "device_caps_cuda.h"
#include "select_cuda.cuh"

namespace obc {
namespace {

using sel::kBlock;
using sel::kWarps;

__device__ OBC_INLINE const void* score_row(const void* base, DType dt, long long off) {
  return dt == DType::F64 ? static_cast<const void*>(static_cast<const double*>(base) + off)
                          : static_cast<const void*>(static_cast<const float*>(base) + off);
}

__device__ OBC_INLINE long long min_ll(long long a, long long b) { return a < b ? a : b; }

// Writes the keys of row positions [lo, hi), position q's at keys[q - lo],
// and counts the candidates' top digits into s.hist. key_of(q, &key) sets
// the key and says whether q is a candidate (a position that is not keeps
// key 0).
template <typename Key, typename KeyOf>
__device__ OBC_INLINE void write_keys(Key* keys, long long lo, long long hi, KeyOf key_of, sel::Smem<Key>& s) {
  for (int i = threadIdx.x; i < 256; i += kBlock) s.hist[i] = 0;
  __syncthreads();
  for (long long base = lo; base < hi; base += sel::kChunk) {
    Key k[sel::kItems];
    bool cand[sel::kItems];
#pragma unroll
    for (int j = 0; j < sel::kItems; ++j) {
      const long long q = base + sel::sweep_offset(j);
      k[j] = 0;
      cand[j] = q < hi && key_of(q, &k[j]);
      if (q < hi) keys[q - lo] = k[j];
    }
#pragma unroll
    for (int j = 0; j < sel::kItems; ++j)
      sel::count_bin(sel::digit_bin(k[j], cand[j], 0, sel::top_shift<Key>()), s.hist);
  }
  __syncthreads();
}

// Calls keep(q, greater, equal_rank) in ascending q for every position q in
// [lo, hi) (its key at keys[q - lo]) that the radix result keeps (above the threshold, or at it and
// among the first `remaining` there), until m are kept. greater / equal_rank:
// how many kept-above / at-threshold positions precede q.
template <typename Key, typename Keep>
__device__ OBC_INLINE void for_each_kept(const Key* keys, long long lo, long long hi, long long m,
                                         const sel::RadixResult& rr, Keep keep, sel::Smem<Key>& s) {
  long long gt_before = 0, eq_before = 0;
  for (long long base = lo; base < hi; base += sel::kChunk) {
    bool gt[sel::kItems], eq[sel::kItems];
#pragma unroll
    for (int j = 0; j < sel::kItems; ++j) {
      const long long q = base + sel::sweep_offset(j);
      const Key k = q < hi ? keys[q - lo] : Key(0);
      gt[j] = q < hi && sel::above_threshold(k, rr);
      eq[j] = q < hi && sel::at_threshold(k, rr);
    }
    int rank_gt[sel::kItems], rank_eq[sel::kItems], total_gt, total_eq;
    sel::rank_sweep(gt, eq, rank_gt, rank_eq, &total_gt, &total_eq, s.warp_counts);
#pragma unroll
    for (int j = 0; j < sel::kItems; ++j) {
      const long long g = gt_before + rank_gt[j], e = eq_before + rank_eq[j];
      if (gt[j] || (eq[j] && e < rr.remaining)) keep(base + sel::sweep_offset(j), g, min_ll(e, rr.remaining));
    }
    gt_before += total_gt;
    eq_before += total_eq;
    if (gt_before + min_ll(eq_before, rr.remaining) >= m) break;  // uniform across the block
  }
}

// Key: uint32_t where the pooled scores are float values (score_key32: half
// the bytes of every pass over the keys), else uint64_t (select_cuda_key_bytes).
// keys_all holds N keys of that type per row; with in_smem the row's keys
// go to the dynamic shared memory instead (N - sink - recent of them at most).
template <typename Key>
__global__ void __launch_bounds__(kBlock) select_kernel(SelectParams p, Key* keys_all, bool in_smem) {
  __shared__ sel::Smem<Key> s;
  OBC_DYNAMIC_SMEM(Key, row_keys);
  const long long row = blockIdx.x, b = row / p.H, h = row % p.H;
  const long long N = p.N, budget = p.budget;
  long long st = p.start ? p.start[b] : 0;
  st = st < 0 ? 0 : (st > N ? N : st);
  int64_t* out = p.out + row * budget;
  if (N - st <= budget) {
    for (long long i = threadIdx.x; i < budget; i += kBlock) out[i] = N - budget + i;
    return;
  }
  const long long lo = st + p.sink, hi = N - p.recent, m = budget - p.sink - p.recent;
  for (long long i = threadIdx.x; i < p.sink; i += kBlock) out[i] = st + i;
  for (long long i = threadIdx.x; i < p.recent; i += kBlock) out[budget - p.recent + i] = hi + i;
  if (m == 0) return;
  Key* keys = in_smem ? row_keys : keys_all + row * N + lo;  // position q's key at keys[q - lo]
  const void* r = score_row(p.scores, p.dtype, b * p.s_sb + h * p.s_sh);
  const auto key_of = [&](long long q, Key* k) {
    const double x = pooled_score(r, p.dtype, q, st, hi, p.pool_kernel, p.pool);
    if constexpr (sizeof(Key) == 4)
      *k = score_key32(x);
    else
      *k = score_key(x);
    return true;
  };
  write_keys(keys, lo, hi, key_of, s);
  sel::radix_select(keys, hi - lo, m, true, s);
  const sel::RadixResult rr = s.res;
  for_each_kept(keys, lo, hi, m, rr, [&](long long q, long long g, long long e) { out[p.sink + g + e] = q; }, s);
}

// Stage 1 of select_adaptive: one block per (b, h). Its registers (92-124)
// allow one 512-thread block per SM anyway; saying so (the minimum 1) keeps
// ptxas from squeezing it to 64 registers and spilling 28 B on sm_100.
__global__ void __launch_bounds__(kBlock, 1)
    adaptive_head_kernel(SelectAdaptiveParams p, uint64_t* keys_all, uint8_t* keep_all) {
  __shared__ sel::Smem<uint64_t> s;
  const long long row = blockIdx.x, b = row / p.H, h = row % p.H, N = p.N;
  const long long hi = N - p.recent, m1 = p.floor_tokens - p.sink - p.recent;
  uint64_t* keys = keys_all + row * N;
  uint8_t* keep = keep_all + row * N;
  const void* r = score_row(p.scores, p.dtype, b * p.s_sb + h * p.s_sh);
  const auto key_of = [&](long long q, uint64_t* k) {
    const bool fixed = q < p.sink || q >= hi;
    keep[q] = fixed ? 1 : 0;
    if (!fixed) *k = score_key(pooled_score(r, p.dtype, q, 0, hi, p.pool_kernel, p.pool));
    return !fixed;
  };
  write_keys(keys, 0, N, key_of, s);
  if (m1 == 0) return;
  sel::radix_select(keys + p.sink, hi - p.sink, m1, true, s);
  const sel::RadixResult rr = s.res;
  for_each_kept(keys + p.sink, p.sink, hi, m1, rr, [&](long long q, long long, long long) {
    keep[q] = 1;
    keys[q] = 0;  // kept by the head itself: no longer a shared candidate
  }, s);
}

// Stage 2: one block per batch row; the H * N keys of row b compete.
__global__ void __launch_bounds__(kBlock)
    adaptive_shared_kernel(SelectAdaptiveParams p, const uint64_t* keys_all, uint8_t* keep_all) {
  __shared__ sel::Smem<uint64_t> s;
  const long long n = p.H * p.N;
  const uint64_t* keys = keys_all + blockIdx.x * n;
  uint8_t* keep = keep_all + blockIdx.x * n;
  sel::radix_select(keys, n, p.extra, false, s);
  const sel::RadixResult rr = s.res;
  for_each_kept(keys, 0, n, p.extra, rr, [&](long long q, long long, long long) { keep[q] = 1; }, s);
}

// Ranks keep[0, N) by sweeps: on_sweep(base, flags, ranks, before) per sweep,
// `before` = kept positions in earlier sweeps; returns the row's count.
template <typename OnSweep>
__device__ OBC_INLINE long long sweep_keep(const uint8_t* keep, long long N, OnSweep on_sweep) {
  __shared__ int warp_counts[2][kWarps];
  const bool none[sel::kItems] = {};
  long long before = 0;
  for (long long base = 0; base < N; base += sel::kChunk) {
    bool f[sel::kItems];
#pragma unroll
    for (int j = 0; j < sel::kItems; ++j) {
      const long long q = base + sel::sweep_offset(j);
      f[j] = q < N && keep[q];
    }
    int rank[sel::kItems], unused[sel::kItems], total, unused_total;
    sel::rank_sweep(f, none, rank, unused, &total, &unused_total, warp_counts);
    on_sweep(base, f, rank, before);
    before += total;
  }
  return before;
}

// Stage 3: kept tokens per (b, h).
__global__ void __launch_bounds__(kBlock) adaptive_count_kernel(const uint8_t* keep_all, long long N,
                                                                int64_t* lengths) {
  const long long kept = sweep_keep(keep_all + blockIdx.x * N, N, [](long long, const bool (&)[sel::kItems],
                                                                      const int (&)[sel::kItems], long long) {});
  if (threadIdx.x == 0) lengths[blockIdx.x] = kept;
}

// Stage 4: ascending emission, padded with -1.
__global__ void __launch_bounds__(kBlock)
    adaptive_emit_kernel(const uint8_t* keep_all, long long N, long long Lmax, int64_t* out_all) {
  int64_t* out = out_all + blockIdx.x * Lmax;
  const auto emit = [&](long long base, const bool (&f)[sel::kItems], const int (&rank)[sel::kItems],
                        long long before) {
#pragma unroll
    for (int j = 0; j < sel::kItems; ++j)
      if (f[j]) out[before + rank[j]] = base + sel::sweep_offset(j);
  };
  const long long kept = sweep_keep(keep_all + blockIdx.x * N, N, emit);
  for (long long i = kept + threadIdx.x; i < Lmax; i += kBlock) out[i] = -1;
}

}  // namespace

namespace {

// select_kernel's static shared memory, as ptxas lays it out: its Smem, then
// the dynamic keys from the next 16-byte boundary (17,584 B with 4-byte
// keys, 33,968 B with 8-byte ones, as -Xptxas -v reports).
template <typename Key>
constexpr size_t select_static_smem() {
  return (sizeof(sel::Smem<Key>) + 15) / 16 * 16;
}

// select_kernel with the row's keys in shared memory where they fit beside
// its static buffers (the device's opt-in limit covers both), else in keys.
template <typename Key>
int launch_select(const SelectParams& p, Key* keys, cudaStream_t st) {
  size_t limit = 0;
  cudaError_t err = smem_optin_limit(&limit);
  if (err != cudaSuccess) return static_cast<int>(err);
  const long long cand = p.N - p.sink - p.recent;  // the most keys a row selects among
  const size_t fixed = select_static_smem<Key>(), bytes = cand > 0 ? static_cast<size_t>(cand) * sizeof(Key) : 0;
  const bool in_smem = fixed + bytes <= std::max(limit, size_t{48 * 1024});
  auto* kernel = &select_kernel<Key>;
  if (in_smem && (err = allow_smem(kernel, bytes, limit, fixed)) != cudaSuccess) return static_cast<int>(err);
  OBC_LAUNCH(kernel, dim3(static_cast<unsigned>(p.B * p.H)), dim3(kBlock), in_smem ? bytes : 0, st, p, keys,
             in_smem);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int select_cuda(const SelectParams& p, void* keys, void* stream) {
  if (p.B * p.H == 0 || p.budget == 0) return 0;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (select_cuda_key_bytes(p) == 4)  // the width the caller sized keys for
    return launch_select(p, static_cast<uint32_t*>(keys), st);
  return launch_select(p, static_cast<uint64_t*>(keys), st);
}

int select_adaptive_mark_cuda(const SelectAdaptiveParams& p, uint64_t* keys, uint8_t* keep,
                              int64_t* lengths, void* stream) {
  if (p.B * p.H == 0) return 0;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const dim3 block(kBlock), rows(static_cast<unsigned>(p.B * p.H)), batch(static_cast<unsigned>(p.B));
  OBC_LAUNCH(adaptive_head_kernel, rows, block, 0, st, p, keys, keep);
  int err = static_cast<int>(cudaGetLastError());
  if (err) return err;
  if (p.extra > 0) {
    OBC_LAUNCH(adaptive_shared_kernel, batch, block, 0, st, p, static_cast<const uint64_t*>(keys), keep);
    err = static_cast<int>(cudaGetLastError());
    if (err) return err;
  }
  OBC_LAUNCH(adaptive_count_kernel, rows, block, 0, st, static_cast<const uint8_t*>(keep),
             static_cast<long long>(p.N), lengths);
  return static_cast<int>(cudaGetLastError());
}

int select_adaptive_emit_cuda(const uint8_t* keep, int64_t B, int64_t H, int64_t N, int64_t Lmax,
                              int64_t* out, void* stream) {
  if (B * H == 0 || Lmax == 0) return 0;
  const dim3 grid(static_cast<unsigned>(B * H)), block(kBlock);
  OBC_LAUNCH(adaptive_emit_kernel, grid, block, 0, static_cast<cudaStream_t>(stream), keep,
             static_cast<long long>(N), static_cast<long long>(Lmax), out);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace obc

// CUDA select and select_adaptive (torch-free; see select_cuda.cuh for the
// radix select). NOT a sort: per row O(N * passes) reads of 8-byte keys.
//
// select: one block of 512 threads per (b, h). The block pools the candidate
// scores of [start + sink, N - recent) once into a uint64 key workspace (the
// only global traffic proportional to N besides reading the scores, which is
// pool_kernel reads per candidate, mostly L1 hits), radix-selects the
// (budget - sink - recent)-th best key, then walks the candidates in ascending
// order in chunks of 512 with one block scan per chunk that counts, in one
// packed int, the keys above the threshold and those equal to it (ties go to
// the lower index: an equal key is kept while fewer than `remaining` equal
// keys precede it). Output position = greater-before + min(equal-before,
// remaining), so indices come out ascending.
//
// select_adaptive: (1) per (b, h) block: keys as above over [sink, N-recent),
// the head's own top f - sink - recent marked in keep and their keys zeroed
// (key 0 = not a candidate, below every score); (2) per b block: one radix
// select over the H * N flat keys of the batch row (flat order = lower head,
// then lower index, the reference's tie order); (3) per (b, h): lengths;
// (4) after the host reads max(lengths): per (b, h) ascending emission padded
// with -1.
#include "select_cuda.h"

#include "cuda_compat.h"
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

__global__ void __launch_bounds__(kBlock) select_kernel(SelectParams p, uint64_t* keys_all) {
  __shared__ unsigned int hist[257];
  __shared__ sel::RadixResult res;
  __shared__ int scratch[kWarps + 1];
  const long long row = blockIdx.x, b = row / p.H, h = row % p.H;
  const long long N = p.N, budget = p.budget;
  long long s = p.start ? p.start[b] : 0;
  s = s < 0 ? 0 : (s > N ? N : s);
  int64_t* out = p.out + row * budget;
  if (N - s <= budget) {
    for (long long i = threadIdx.x; i < budget; i += kBlock) out[i] = N - budget + i;
    return;
  }
  const long long lo = s + p.sink, hi = N - p.recent, m = budget - p.sink - p.recent;
  for (long long i = threadIdx.x; i < p.sink; i += kBlock) out[i] = s + i;
  for (long long i = threadIdx.x; i < p.recent; i += kBlock) out[budget - p.recent + i] = hi + i;
  if (m == 0) return;
  uint64_t* keys = keys_all + row * N;
  const void* r = score_row(p.scores, p.dtype, b * p.s_sb + h * p.s_sh);
  for (long long q = lo + threadIdx.x; q < hi; q += kBlock)
    keys[q] = score_key(pooled_score(r, p.dtype, q, s, hi, p.pool_kernel, p.pool));
  __syncthreads();
  sel::radix_select(keys + lo, hi - lo, m, &res, hist);
  const sel::RadixResult rr = res;
  long long gt_before = 0, eq_before = 0;
  for (long long base = lo; base < hi; base += kBlock) {
    const long long q = base + threadIdx.x;
    const int f = q < hi ? sel::rank_flags(keys[q], rr) : 0;
    int tot;
    const int ex = sel::block_exclusive_scan(f, scratch, &tot);
    const long long g = gt_before + (ex & 0xffff), e = eq_before + (ex >> 16);
    if ((f & 1) || ((f >> 16) && e < rr.remaining)) out[p.sink + g + min_ll(e, rr.remaining)] = q;
    gt_before += tot & 0xffff;
    eq_before += tot >> 16;
    if (gt_before + min_ll(eq_before, rr.remaining) >= m) break;  // uniform across the block
  }
}

// Stage 1 of select_adaptive: one block per (b, h).
__global__ void __launch_bounds__(kBlock)
    adaptive_head_kernel(SelectAdaptiveParams p, uint64_t* keys_all, uint8_t* keep_all) {
  __shared__ unsigned int hist[257];
  __shared__ sel::RadixResult res;
  __shared__ int scratch[kWarps + 1];
  const long long row = blockIdx.x, b = row / p.H, h = row % p.H, N = p.N;
  const long long hi = N - p.recent, m1 = p.floor_tokens - p.sink - p.recent;
  uint64_t* keys = keys_all + row * N;
  uint8_t* keep = keep_all + row * N;
  const void* r = score_row(p.scores, p.dtype, b * p.s_sb + h * p.s_sh);
  for (long long q = threadIdx.x; q < N; q += kBlock) {
    const bool fixed = q < p.sink || q >= hi;
    keys[q] = fixed ? 0 : score_key(pooled_score(r, p.dtype, q, 0, hi, p.pool_kernel, p.pool));
    keep[q] = fixed ? 1 : 0;
  }
  __syncthreads();
  if (m1 == 0) return;
  sel::radix_select(keys + p.sink, hi - p.sink, m1, &res, hist);
  const sel::RadixResult rr = res;
  long long eq_before = 0, kept = 0;
  for (long long base = p.sink; base < hi; base += kBlock) {
    const long long q = base + threadIdx.x;
    const int f = q < hi ? sel::rank_flags(keys[q], rr) : 0;
    int tot;
    const int ex = sel::block_exclusive_scan(f, scratch, &tot);
    if ((f & 1) || ((f >> 16) && eq_before + (ex >> 16) < rr.remaining)) {
      keep[q] = 1;
      keys[q] = 0;  // kept by the head itself: no longer a shared candidate
    }
    eq_before += tot >> 16;
    kept += (tot & 0xffff);
    if (kept + min_ll(eq_before, rr.remaining) >= m1) break;
  }
}

// Stage 2: one block per batch row; the H * N keys of row b compete.
__global__ void __launch_bounds__(kBlock)
    adaptive_shared_kernel(SelectAdaptiveParams p, const uint64_t* keys_all, uint8_t* keep_all) {
  __shared__ unsigned int hist[257];
  __shared__ sel::RadixResult res;
  __shared__ int scratch[kWarps + 1];
  const long long n = p.H * p.N;
  const uint64_t* keys = keys_all + blockIdx.x * n;
  uint8_t* keep = keep_all + blockIdx.x * n;
  sel::radix_select(keys, n, p.extra, &res, hist);
  const sel::RadixResult rr = res;
  long long eq_before = 0, kept = 0;
  for (long long base = 0; base < n; base += kBlock) {
    const long long q = base + threadIdx.x;
    const int f = q < n ? sel::rank_flags(keys[q], rr) : 0;
    int tot;
    const int ex = sel::block_exclusive_scan(f, scratch, &tot);
    if ((f & 1) || ((f >> 16) && eq_before + (ex >> 16) < rr.remaining)) keep[q] = 1;
    eq_before += tot >> 16;
    kept += (tot & 0xffff);
    if (kept + min_ll(eq_before, rr.remaining) >= p.extra) break;
  }
}

// Stage 3: kept tokens per (b, h).
__global__ void __launch_bounds__(kBlock) adaptive_count_kernel(const uint8_t* keep_all, long long N,
                                                                int64_t* lengths) {
  __shared__ int scratch[kWarps + 1];
  const uint8_t* keep = keep_all + blockIdx.x * N;
  long long c = 0;
  for (long long q = threadIdx.x; q < N; q += kBlock) c += keep[q];
  // Per-thread counts fit an int (N < 2^31); the block total too.
  int tot;
  sel::block_exclusive_scan(static_cast<int>(c), scratch, &tot);
  if (threadIdx.x == 0) lengths[blockIdx.x] = tot;
}

// Stage 4: ascending emission, padded with -1.
__global__ void __launch_bounds__(kBlock)
    adaptive_emit_kernel(const uint8_t* keep_all, long long N, long long Lmax, int64_t* out_all) {
  __shared__ int scratch[kWarps + 1];
  const uint8_t* keep = keep_all + blockIdx.x * N;
  int64_t* out = out_all + blockIdx.x * Lmax;
  long long before = 0;
  for (long long base = 0; base < N; base += kBlock) {
    const long long q = base + threadIdx.x;
    const int f = q < N ? keep[q] : 0;
    int tot;
    const int ex = sel::block_exclusive_scan(f, scratch, &tot);
    if (f) out[before + ex] = q;
    before += tot;
  }
  for (long long i = before + threadIdx.x; i < Lmax; i += kBlock) out[i] = -1;
}

}  // namespace

int select_cuda(const SelectParams& p, uint64_t* keys, void* stream) {
  if (p.B * p.H == 0 || p.budget == 0) return 0;
  const dim3 grid(static_cast<unsigned>(p.B * p.H)), block(kBlock);
  OBC_LAUNCH(select_kernel, grid, block, 0, static_cast<cudaStream_t>(stream), p, keys);
  return static_cast<int>(cudaGetLastError());
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

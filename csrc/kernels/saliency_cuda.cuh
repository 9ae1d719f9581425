// Device kernels of `saliency` (see saliency_cuda.cu for the algorithm and
// launch shapes). Plain SIMT CUDA: dynamic shared memory through
// OBC_DYNAMIC_SMEM, __syncthreads, warp shuffles, expf; so the same source
// also runs under the host SIMT emulation (tests/cpp/simt).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common.h"
#include "cuda_compat.h"
#include "mma_tiles_cuda.cuh"
#include "saliency_params.h"
#include "score_math.h"

namespace obc {
namespace salc {

constexpr int kThreads = 128;                 // threads per block, every kernel
constexpr int kTile = 32;                     // keys per tile = warp size
constexpr int kWarps = kThreads / kTile;      // 4
// Window rows per warp (and per thread): 8, a 32-row chunk; fewer where the
// device's shared memory cannot hold the larger tiles (saliency_cuda.cu).
constexpr int kRowsPerWarp = 8;
constexpr int kRows = kWarps * kRowsPerWarp;
constexpr int kMaxSplits = 64;

// Shared-memory row strides in floats. Rows are zero-padded to a multiple of
// 4 floats so the products read float4s with no tail loop. A K / V tile row
// is an odd number of float4s long, so the 8 lanes of one LDS.128 phase
// (8 keys) hit distinct banks. The probabilities of pass 1 are stored
// transposed, [key][row], rows + 4 floats per key (an odd number of float4s
// for 8 and 4 rows per warp) for the same reason.
OBC_HD OBC_INLINE int row_stride(long long D) { return static_cast<int>((D + 3) / 4 * 4); }
OBC_HD OBC_INLINE int tile_stride(long long D) {
  const int s = row_stride(D);
  return (s / 4) % 2 ? s : s + 4;
}
OBC_HD constexpr int prob_stride(int rows) { return rows + 4; }

// Rows of one (b, h): R = G * Wr window rows, row r = (g = r / Wr, query
// i = i0 + r % Wr); Wr = 1, i0 = W - 1 for `tova`, else Wr = W, i0 = 0.
struct Shape {
  long long R, Wr, i0, splits, keys_per_split;
  // Every row of q, k and v (16-bit) starts 16-byte aligned and D is a
  // multiple of 8: the tensor-core passes load tiles 16 bytes at a time.
  bool vec16;
  // Pass 2 walks the heads last to first (pass2_bh). Pass 1's blocks run in
  // head order, so when pass 2 starts the L2 holds the last heads' K and V;
  // in head order pass 2's misses would evict them before their turn.
  // OBCACHE_CUDA_L2_REUSE=0 keeps head order (bench/bench_gpu.py times both).
  bool heads_reversed;
};

// The (b, h) a pass-2 block works on: blockIdx.y, or its mirror.
__device__ OBC_INLINE unsigned pass2_bh(const Shape& s) {
  return s.heads_reversed ? gridDim.y - 1 - blockIdx.y : blockIdx.y;
}

// Workspace (floats), all indexed by bh = b * Hkv + h:
//   part_m, part_l [bh][split][R]; part_o [bh][split][R][D]  (pass 1)
//   fin_m, fin_il, fin_on2 [bh][R]; fin_o [bh][R][D]         (combine)
// (the O arrays only for the scores that need o: key, joint, loo), and for
// 16-bit key / joint, whose pass 2 may run on the tensor cores, fin_o's
// three terms in the input's type (mma::split3), else null:
//   o_terms [bh][ceil(R / kOTermRows)][3][kOTermRows][mma_depth(D)] (combine)
// in the order pass 2 copies them (a chunk's three terms in one run of
// rows), zero past D and past R. float16's terms are of the row's O times a
// power of two that puts its largest element just below 2^15 (f16 has no
// step finer than 2^-24: O's small rows would lose their third term), and
//   fin_os [bh][R]: the inverse of that power of two (null for bfloat16).
constexpr int kOTermRows = 32;  // pass2_mma_kernel's row chunk for key / joint (mma_pass2_rows)
struct Work {
  float *part_m, *part_l, *part_o, *fin_m, *fin_il, *fin_on2, *fin_o, *fin_os;
  uint16_t* o_terms;  // bf16 or f16 bits, as the inputs
};

// Index arithmetic in 32 bits: a 64-bit division is a subroutine call, and
// ptxas spilled the registers live across those calls to the stack in
// several pass-2 kernels. bh = b * Hkv + h is a grid index (< 65536) and a
// row r < R = G * Wr <= 65535 * 16 (checked by the op, saliency_op_cuda.cpp).
struct BH {
  long long b, h;
};
__device__ OBC_INLINE BH split_bh(const SaliencyParams& p, unsigned bh) {
  const unsigned hkv = static_cast<unsigned>(p.Hkv);
  return {bh / hkv, bh % hkv};
}
// K and V of (b, h) and q of its first query head.
template <typename E>
struct HeadPtrs {
  const E *k, *v, *q;
};
template <typename E>
__device__ OBC_INLINE HeadPtrs<E> head_ptrs(const SaliencyParams& p, unsigned bh) {
  const BH x = split_bh(p, bh);
  return {static_cast<const E*>(p.k) + x.b * p.k_sb + x.h * p.k_sh,
          static_cast<const E*>(p.v) + x.b * p.v_sb + x.h * p.v_sh,
          static_cast<const E*>(p.q) + x.b * p.q_sb + x.h * p.G * p.q_sh};
}
// Row r (< R) of a (b, h): query head g = r / Wr, query i = i0 + r % Wr.
struct RowQuery {
  int g, i;
};
__device__ OBC_INLINE RowQuery row_query(const Shape& s, int r) {
  const int wr = static_cast<int>(s.Wr);
  return {r / wr, static_cast<int>(s.i0) + r % wr};
}
// Offset of row r's query from q_bh.
__device__ OBC_INLINE long long query_offset(const SaliencyParams& p, const Shape& s, int r) {
  const RowQuery x = row_query(s, r);
  return x.g * p.q_sh + x.i * p.q_sw;
}

// Per row of the chunk [r0, r0 + rows): the last key it sees (-1 past R,
// so no key is visible), its query head g and, with q_off, the offset of its
// query from q_bh (-1 past R). One division per row per chunk here, instead
// of one per row in every tile (or in every load of a row's part).
// kOneTrip: rows <= kThreads (the tensor-core kernels' 64-row chunks), so
// no loop (whose unrolled copies the compiler would otherwise emit).
template <bool kOneTrip = false>
__device__ OBC_INLINE void row_info(const SaliencyParams& p, const Shape& s, long long r0, int rows, long long* lim,
                                    int* head_of, long long* q_off = nullptr) {
  const auto one = [&](int rr) {
    const long long r = r0 + rr;
    const bool in = r < s.R;
    const int ri = in ? static_cast<int>(r) : 0;
    const RowQuery x = row_query(s, ri);
    lim[rr] = !in ? -1 : p.causal ? query_position(p.N, p.W, x.i) : p.N;
    if (head_of) head_of[rr] = in ? x.g : 0;
    if (q_off) q_off[rr] = in ? query_offset(p, s, ri) : -1;
  };
  if (kOneTrip) {
    if (static_cast<int>(threadIdx.x) < rows) one(threadIdx.x);
  } else {
    for (int rr = threadIdx.x; rr < rows; rr += kThreads) one(rr);
  }
}

// How many of the chunk's rows r0 .. r0 + rows - 1 lie before R.
__device__ OBC_INLINE int chunk_rows(const Shape& s, long long r0, int rows) {
  return s.R - r0 < rows ? static_cast<int>(s.R - r0) : rows;
}

// The offset in a tile of tn keys from p0 of the last key a row sees (lim:
// row_info's), clamped to tn - 1; negative when it sees none. Visibility is
// then one 32-bit compare per key (a 64-bit one holds two registers per row
// and key index, which ptxas spilled in several pass-2 kernels).
__device__ OBC_INLINE int last_visible(long long lim, long long p0, int tn) {
  const long long lr = lim - p0;
  return static_cast<int>(lr < tn - 1 ? lr : tn - 1);
}

// Whether every window query sees all keys [p0, p0 + keys), which lie before
// N: all key blocks but the last at W << N, where a kernel may skip the
// visibility test of every (row, key) pair. Rows past R see no key; the
// tensor-core kernels read them as zero rows, whose pass-1 statistics are
// never written and whose pass-2 A is 2^-inf = 0 (log2 of their 1 / sum, 0).
__device__ OBC_INLINE bool all_rows_see(const SaliencyParams& p, long long p0, int keys) {
  return p0 + keys <= p.N && (!p.causal || p0 + keys - 1 <= p.N - p.W);
}

// Loads window rows [r0, r0 + rows) of (b, h) (q_bh: its first query head)
// as scaled floats into
// dst[rows][row_stride(D)]; rows past R and the padding are zero. A warp
// per row, lanes along d: one row address per row, coalesced loads.
template <typename E>
__device__ OBC_INLINE void load_queries(const SaliencyParams& p, const Shape& s, const E* q_bh, long long r0,
                                        int rows, float* dst) {
  const int Di = static_cast<int>(p.D), sq = row_stride(p.D);
  for (int rr = threadIdx.x / kTile; rr < rows; rr += kWarps) {
    const long long r = r0 + rr;
    const E* q = r < s.R ? q_bh + query_offset(p, s, static_cast<int>(r)) : nullptr;
    for (int d = threadIdx.x % kTile; d < sq; d += kTile)
      dst[rr * sq + d] = q && d < Di ? Elem<E>::load(q[d]) * p.scale : 0.0f;
  }
}

// The same layout, rows sq floats apart, from a [R][D] float array of one
// (b, h) (combine's O).
__device__ OBC_INLINE void load_rows(const float* src, long long R, long long D, long long r0, int rows, int sq,
                                     float* dst) {
  const int Di = static_cast<int>(D);
  for (int rr = threadIdx.x / kTile; rr < rows; rr += kWarps) {
    const float* x = r0 + rr < R ? src + (r0 + rr) * D : nullptr;
    for (int d = threadIdx.x % kTile; d < sq; d += kTile) dst[rr * sq + d] = x && d < Di ? x[d] : 0.0f;
  }
}

// dst[c][0:tile_stride(D)] = keys p0 + c of one (b, h) for c < tn; zero for
// tn <= c < kKeys and in the padding.
template <typename E, int kKeys = kTile>
__device__ OBC_INLINE void load_key_tile(const E* src, long long sn, long long D, long long p0, long long tn,
                                         float* dst) {
  const int Di = static_cast<int>(D), sk = tile_stride(D);
  for (int e = threadIdx.x; e < kKeys * sk; e += kThreads) {
    const int c = e / sk, d = e % sk;
    dst[e] = c < tn && d < Di ? Elem<E>::load(src[(p0 + c) * sn + d]) : 0.0f;
  }
}

__device__ OBC_INLINE float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ OBC_INLINE float dot4(float acc, float4 a, float4 b) {
  acc = fmaf(a.x, b.x, acc);
  acc = fmaf(a.y, b.y, acc);
  acc = fmaf(a.z, b.z, acc);
  return fmaf(a.w, b.w, acc);
}

__device__ OBC_INLINE float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ OBC_INLINE float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// The logits of this warp's RPW rows against keys lane + 32 u,
// u < KPL, of a tile (Kt: key `lane`'s row): one float4 of K per key and 4 d,
// reused by the RPW rows, and each row's float4 (a warp-wide broadcast) by the
// KPL keys. RPW = 8, KPL = 1: 32 FMAs per 9 shared loads, where one row per thread and one
// float per load gave 0.8 FMAs per load (sm_90 SASS, bench/results/kernels.md).
template <int KPL, int RPW>
__device__ OBC_INLINE void tile_logits(const float* Qw, const float* Kt, int sq, int sk, float (&z)[KPL][RPW]) {
#pragma unroll 2
  for (int d = 0; d < sq; d += 4) {
    float4 k[KPL];
#pragma unroll
    for (int u = 0; u < KPL; ++u) k[u] = load4(Kt + u * kTile * sk + d);
#pragma unroll
    for (int j = 0; j < RPW; ++j) {
      const float4 q = load4(Qw + j * sq + d);
#pragma unroll
      for (int u = 0; u < KPL; ++u) z[u][j] = dot4(z[u][j], q, k[u]);
    }
  }
}

// ---- Pass 1: partial softmax statistics (and unnormalised O) of the rows
// [chunk * rows, +rows) over the keys of one split, rows = 4 * RPW.
// grid (splits, row chunks, B * Hkv), kThreads threads. Warp w owns rows
// w * RPW .. w * RPW + RPW - 1 and keeps their running max and sum in
// registers (every lane the same values); lane = key of the tile.
// smem: lim rows (64-bit) | Qs rows*sq | KV kTile*sk, and for O:
// Pt kTile*prob_stride(rows) | Os rows*sq | corr rows (floats); pass1_smem in
// saliency_cuda.cu is the same sum.
template <typename E, bool kNeedO, int RPW>
__global__ void __launch_bounds__(kThreads) pass1_kernel(SaliencyParams p, Shape s, Work w) {
  static_assert(RPW % 4 == 0, "P is stored a float4 of rows at a time");
  constexpr int kR = kWarps * RPW, kPs = prob_stride(kR);
  OBC_DYNAMIC_SMEM(float, smem);
  const long long D = p.D, N = p.N;
  const int sq = row_stride(D), sk = tile_stride(D), nd4 = sq / 4;
  const long long split = blockIdx.x, r0 = static_cast<long long>(blockIdx.y) * kR, bh = blockIdx.z;
  long long* lim = reinterpret_cast<long long*>(smem);
  float* Qs = smem + 2 * kR;
  float* KV = Qs + kR * sq;
  float* Pt = KV + kTile * sk;
  float* Os = Pt + kTile * kPs;
  float* corr = Os + kR * sq;
  const HeadPtrs<E> hp = head_ptrs<E>(p, blockIdx.z);
  const E *K = hp.k, *V = hp.v, *q_bh = hp.q;
  const int tid = threadIdx.x, lane = tid % kTile, warp = tid / kTile, row0 = warp * RPW;

  row_info(p, s, r0, kR, lim, nullptr);
  load_queries<E>(p, s, q_bh, r0, kR, Qs);
  if (kNeedO)
    for (int e = tid; e < kR * sq; e += kThreads) Os[e] = 0.0f;
  float m[RPW], l[RPW];
#pragma unroll
  for (int j = 0; j < RPW; ++j) m[j] = -INFINITY, l[j] = 0.0f;
  const long long k_begin = split * s.keys_per_split;
  const long long k_end = k_begin + s.keys_per_split < N ? k_begin + s.keys_per_split : N;
  for (long long p0 = k_begin; p0 < k_end; p0 += kTile) {
    const int tn = static_cast<int>(k_end - p0 < kTile ? k_end - p0 : kTile);
    load_key_tile<E>(K, p.k_sn, D, p0, tn, KV);
    __syncthreads();
    float zz[1][RPW] = {};
    tile_logits<1, RPW>(Qs + row0 * sq, KV + lane * sk, sq, sk, zz);
    const float(&z)[RPW] = zz[0];
    // Online softmax of each row over the tile's 32 keys, one key per lane.
    float pe[RPW];
#pragma unroll
    for (int j = 0; j < RPW; ++j) {
      const bool vis = lane <= last_visible(lim[row0 + j], p0, tn);
      const float x = vis ? z[j] : -INFINITY;
      const float m_new = fmaxf(m[j], warp_max(x));
      // m_new = -inf: nothing visible yet; keep the state as it is.
      const float e = m_new == -INFINITY || x == -INFINITY ? 0.0f : expf(x - m_new);
      const float c = m_new == -INFINITY ? 1.0f : expf(m[j] - m_new);
      l[j] = l[j] * c + warp_sum(e);
      m[j] = m_new;
      pe[j] = e;
      if (kNeedO && lane == 0) corr[row0 + j] = c;
    }
    if (kNeedO) {
      // RPW / 4 float4 stores per lane (a key's rows are contiguous in Pt).
      float4* pt = reinterpret_cast<float4*>(Pt + lane * kPs + row0);
#pragma unroll
      for (int v = 0; v < RPW / 4; ++v) pt[v] = make_float4(pe[4 * v], pe[4 * v + 1], pe[4 * v + 2], pe[4 * v + 3]);
      __syncthreads();  // every warp is done with K; Pt and corr are complete
      load_key_tile<E>(V, p.v_sn, D, p0, tn, KV);
      __syncthreads();
      // O[rows][d:d+4] += P[rows][c] V[c][d:d+4] for RPW rows and one float4
      // column per thread (RPW = 8: 32 FMAs per three shared loads), O in
      // registers for the whole tile.
      for (int it = tid; it < kWarps * nd4; it += kThreads) {
        const int rb = it / nd4 * RPW, d = it % nd4 * 4;
        float4 o[RPW];
#pragma unroll
        for (int j = 0; j < RPW; ++j) {
          const float cj = corr[rb + j];
          o[j] = load4(Os + (rb + j) * sq + d);
          o[j].x *= cj, o[j].y *= cj, o[j].z *= cj, o[j].w *= cj;
        }
        for (int c = 0; c < tn; ++c) {
          const float4 v = load4(KV + c * sk + d);
          float pr[RPW];
#pragma unroll
          for (int u = 0; u < RPW / 4; ++u) {
            const float4 pu = load4(Pt + c * kPs + rb + 4 * u);
            pr[4 * u] = pu.x, pr[4 * u + 1] = pu.y, pr[4 * u + 2] = pu.z, pr[4 * u + 3] = pu.w;
          }
#pragma unroll
          for (int j = 0; j < RPW; ++j) {
            o[j].x = fmaf(pr[j], v.x, o[j].x);
            o[j].y = fmaf(pr[j], v.y, o[j].y);
            o[j].z = fmaf(pr[j], v.z, o[j].z);
            o[j].w = fmaf(pr[j], v.w, o[j].w);
          }
        }
#pragma unroll
        for (int j = 0; j < RPW; ++j) *reinterpret_cast<float4*>(Os + (rb + j) * sq + d) = o[j];
      }
    }
    __syncthreads();  // KV, Pt and corr are rewritten by the next tile
  }
  const long long base = (bh * s.splits + split) * s.R;
  if (lane == 0)
#pragma unroll
    for (int j = 0; j < RPW; ++j)
      if (r0 + row0 + j < s.R) {
        w.part_m[base + r0 + row0 + j] = m[j];
        w.part_l[base + r0 + row0 + j] = l[j];
      }
  if (kNeedO) {
    const int Di = static_cast<int>(D);
    for (int e = tid; e < kR * Di; e += kThreads) {
      const int rr = e / Di, d = e % Di;
      if (r0 + rr < s.R) w.part_o[(base + r0) * D + e] = Os[rr * sq + d];
    }
  }
}

// ---- Combine the splits of one row (flash-decoding): final max, 1 / sum,
// normalised O (or the given one, p.o, when pass 1 skipped O) and ||O||^2.
// grid (R, B * Hkv), kThreads threads.
template <typename E, bool kNeedO>
__global__ void __launch_bounds__(kThreads) combine_kernel(SaliencyParams p, Shape s, Work w) {
  __shared__ float weight[kMaxSplits];
  __shared__ float red[kThreads / 32], red_max[kThreads / 32];
  __shared__ float inv_l;
  const long long r = blockIdx.x, bh = blockIdx.y, D = p.D;
  const int tid = threadIdx.x;
  // Split 0 holds key 0, which every row sees: M is finite.
  float M = -INFINITY;
  for (long long sp = 0; sp < s.splits; ++sp) M = fmaxf(M, w.part_m[(bh * s.splits + sp) * s.R + r]);
  if (tid == 0) {
    float L = 0.0f;
    for (long long sp = 0; sp < s.splits; ++sp) {
      const long long i = (bh * s.splits + sp) * s.R + r;
      const float m = w.part_m[i];
      const float x = m == -INFINITY ? 0.0f : expf(m - M);
      weight[sp] = x;
      L += w.part_l[i] * x;
    }
    inv_l = 1.0f / L;
  }
  __syncthreads();
  // float16 scales each row of O's tensor-core terms by its largest element.
  constexpr bool kRowScale = kNeedO && std::is_same<E, half_t>::value;
  float sq = 0.0f, amax = 0.0f;
  if (kNeedO) {
    const BH x = split_bh(p, blockIdx.y);
    const RowQuery rq = row_query(s, blockIdx.x);
    const E* given =
        p.o ? static_cast<const E*>(p.o) + x.b * p.o_sb + (x.h * p.G + rq.g) * p.o_sh + rq.i * p.o_sw : nullptr;
    for (long long d = tid; d < D; d += kThreads) {
      float o = 0.0f;
      if (given) {
        o = Elem<E>::load(given[d]);
      } else {
        for (long long sp = 0; sp < s.splits; ++sp)
          o += weight[sp] * w.part_o[((bh * s.splits + sp) * s.R + r) * D + d];
        o *= inv_l;
      }
      w.fin_o[(bh * s.R + r) * D + d] = o;
      sq += o * o;
      if constexpr (kRowScale) amax = fmaxf(amax, fabsf(o));
    }
  }
  sq = warp_sum(sq);
  if constexpr (kRowScale) amax = warp_max(amax);
  if (tid % 32 == 0) {
    red[tid / 32] = sq;
    if constexpr (kRowScale) red_max[tid / 32] = amax;
  }
  __syncthreads();  // also: the row's fin_o, read back below, is written
  if (tid == 0) {
    float t = 0.0f;
    for (int i = 0; i < kThreads / 32; ++i) t += red[i];
    w.fin_m[bh * s.R + r] = M;
    w.fin_il[bh * s.R + r] = inv_l;
    w.fin_on2[bh * s.R + r] = t;
  }
  // O's three terms for the tensor-core pass 2, split once per row here:
  // split by each key block of pass 2, they cost ~12 instructions per float
  // in every block, and now that pass copies them like Q. float16 scales
  // the row by 2^sh first (Work::fin_os), its largest element to [2^14,
  // 2^15); the clamp keeps 2^sh and 2^-sh normal floats (a row of float
  // subnormals stays below f16's steps anyway).
  if constexpr (kNeedO && mma::kOperandType<E>) {
    if (!w.o_terms) return;
    float up = 1.0f;
    if constexpr (kRowScale) {
      for (int i = 0; i < kThreads / 32; ++i) amax = fmaxf(amax, red_max[i]);
      int ex = 0;
      frexpf(amax, &ex);  // amax = f 2^ex, f in [0.5, 1)
      const int sh = 15 - ex < -126 ? -126 : (15 - ex > 126 ? 126 : 15 - ex);
      up = ldexpf(1.0f, sh);
      if (tid == 0) w.fin_os[bh * s.R + r] = ldexpf(1.0f, -sh);
    }
    const int depth = mma::mma_depth(D), chunk = static_cast<int>(r) / kOTermRows;
    const long long chunks = (s.R + kOTermRows - 1) / kOTermRows;
    const float* o = w.fin_o + (bh * s.R + r) * D;
    // Term k of row r' of this row's chunk at t + (k * kOTermRows + r') * depth.
    uint16_t* t = w.o_terms + (bh * chunks + chunk) * 3 * kOTermRows * depth;
    const int rr = static_cast<int>(r) % kOTermRows;
    // The last row also zeroes its chunk's rows past R, which pass 2 copies.
    const int rows = r == s.R - 1 ? kOTermRows - rr : 1;
    for (int d = 2 * tid; d < depth; d += 2 * kThreads)
      for (int i = 0; i < rows; ++i) {
        uint32_t x[3] = {0u, 0u, 0u};
        if (i == 0) mma::split3<E>(d < D ? o[d] * up : 0.0f, d + 1 < D ? o[d + 1] * up : 0.0f, x[0], x[1], x[2]);
        for (int k = 0; k < 3; ++k) {
          uint16_t* e = t + (k * kOTermRows + rr + i) * depth + d;
          e[0] = static_cast<uint16_t>(x[k]);
          e[1] = static_cast<uint16_t>(x[k] >> 16);
        }
      }
  }
}

// The part of pass 2's shared memory after its tiles (both pass 2 kernels):
// head G*keys | vn1, vn2 keys | rm, ril, ron2, ros rows | head_of rows (int).
struct Pass2Smem {
  float *head, *vn1, *vn2, *rm, *ril, *ron2, *ros;
  int* head_of;
};
__device__ OBC_INLINE Pass2Smem carve_pass2(float* at, long long G, int keys, int rows) {
  Pass2Smem m;
  m.head = at;
  m.vn1 = m.head + G * keys;
  m.vn2 = m.vn1 + keys;
  m.rm = m.vn2 + keys;
  m.ril = m.rm + rows;
  m.ron2 = m.ril + rows;
  m.ros = m.ron2 + rows;
  m.head_of = reinterpret_cast<int*>(m.ros + rows);
  return m;
}

// One element of ||v||_1 and ||v||^2, summed in the order of d by both
// pass-2 kernels (the zero padding past D adds exact zeros); only the norms
// score S reads (vn1 alone took a third of the instructions: the stores to
// shared memory kept the other alive).
template <Score S>
__device__ OBC_INLINE void add_norms(float v, float& a1, float& a2) {
  if (score_needs_vn1(S)) a1 += fabsf(v);
  if (score_needs_vn2(S)) a2 += v * v;
}

// Pass 2's start, once the tile is in shared memory (callers sync first):
// head = the query reduction's identity; vn1, vn2 = ||v_c||_1, ||v_c||^2 of
// the tile's keys, norms(c, a1, a2) adding key c's (zero when the score
// reads no V), vn2 left to the caller without kVn2 (the tensor-core pass
// makes it with mma). Read after the first row chunk's barrier. kNT: the
// block's threads (kThreads but for the wide tensor-core pass 2).
template <int kKeys, bool kNeedV, bool kVn2 = true, int kNT = kThreads, typename Norms>
__device__ OBC_INLINE void start_pass2(const SaliencyParams& p, const Pass2Smem& m, Norms norms) {
  const float qinit = query_reduce_init<float>(p.query_reduce);
  for (long long e = threadIdx.x; e < p.G * kKeys; e += kNT) m.head[e] = qinit;
  const int c = threadIdx.x;
  if (c < kKeys) {
    float a1 = 0.0f, a2 = 0.0f;
    if (kNeedV) norms(c, a1, a2);
    m.vn1[c] = a1;
    if (kVn2) m.vn2[c] = a2;
  }
}

// Pass 2's per-row statistics of rows [r0, r0 + rows) (zero past R): the
// softmax max, 1 / sum, ||o||^2 from combine and the scale of O's f16 terms
// (Work::fin_os; 1 where there is none). With kLog2Il, log2(1 / sum) in
// place of 1 / sum (-inf past R), for A = 2^((z - max) log2(e) + log2(1 /
// sum)): one fused multiply-add per (row, key) pair where the multiply by
// 1 / sum took one more.
template <bool kLog2Il>
__device__ OBC_INLINE void load_row_stats(const Shape& s, const Work& w, long long bh, long long r0, int rows,
                                          const Pass2Smem& m) {
  const int rr = threadIdx.x;
  if (rr >= rows) return;
  const long long r = r0 + rr;
  m.rm[rr] = r < s.R ? w.fin_m[bh * s.R + r] : 0.0f;
  const float il = r < s.R ? w.fin_il[bh * s.R + r] : 0.0f;
  m.ril[rr] = kLog2Il ? log2f(il) : il;
  m.ron2[rr] = r < s.R ? w.fin_on2[bh * s.R + r] : 0.0f;
  m.ros[rr] = w.fin_os && r < s.R ? w.fin_os[bh * s.R + r] : 1.0f;
}

// Pass 2's reduction of a chunk's contributions Cs [nr rows][kKeys + 1]
// over the queries into head [G][kKeys]: thread c owns column c, so no two
// threads write one entry. Barriers on both sides: every thread has written
// Cs before, and has read it (and head_of) after. With rows_per_entry > 1,
// Cs row e holds rows e * rows_per_entry .. + rows_per_entry - 1 already
// reduced (one query head's rows: the tensor-core pass 2 reduces a warp's
// rows in registers).
template <int kKeys>
__device__ OBC_INLINE void reduce_queries(const SaliencyParams& p, int nr, const float* Cs, const int* head_of,
                                          float* head, int rows_per_entry = 1) {
  __syncthreads();
  const int c = threadIdx.x;
  if (c < kKeys)
    for (int rr = 0; rr < nr; rr += rows_per_entry) {
      float* hp = head + head_of[rr] * kKeys + c;
      *hp = query_reduce_step(p.query_reduce, *hp, Cs[rr / rows_per_entry * (kKeys + 1) + c]);
    }
  __syncthreads();
}

// Pass 2's output: the group reduction of head [G][kKeys] for the tile's tn
// keys from p0, written once.
template <int kKeys>
__device__ OBC_INLINE void write_scores(const SaliencyParams& p, long long bh, long long p0, int tn,
                                        const float* head) {
  const int c = threadIdx.x;
  if (c >= tn) return;
  float acc = group_reduce_init<float>(p.group_reduce);
  for (long long g = 0; g < p.G; ++g) acc = group_reduce_step(p.group_reduce, acc, head[g * kKeys + c]);
  static_cast<float*>(p.out)[bh * p.N + p0 + c] = finite_or_nan(group_reduce_finish(p.group_reduce, acc, p.G));
}

// Pass 2's blocks per SM, told to ptxas as __launch_bounds__'s minimum: 2,
// what shared memory grants the usual tiles (KPL = 2, RPW = 8) at D = 128 on
// sm_90 (2-3 blocks of 61-111 KB). The register cap is 255 either way, but
// without a minimum ptxas kept registers low enough for far more blocks than
// shared memory allows and stored 1-3 registers to the stack in 12 of the 63
// instantiations; with it none spills (bench/results/kernels.md).
constexpr int kPass2MinBlocks = 2;

// ---- Pass 2: one block per (key tile, b, h) recomputes Z, A (and v.o,
// ||v - o||) for every window row against its kTile * KPL keys, reduces over
// the queries and the group, and writes its scores once.
// grid (ceil(N / (kTile * KPL)), B * Hkv), kThreads threads; per chunk of
// rows = 4 * RPW rows, warp w owns rows w * RPW .. w * RPW + RPW - 1, lane
// the keys lane + 32 u. KPL = 2 halves the shared loads per FMA (every row
// float4 serves two keys) and the re-reads of Q and O per key; KPL = 1 and
// RPW = 2 shrink the tiles for GPUs whose shared memory does not hold the
// larger ones (pass2_smem).
// smem: lim rows (64-bit) | Ks kKeys*sk | Vs kKeys*sk (scores that read V) |
// Qs rows*sq | Os rows*sq (scores that read O) | Cs rows*(kKeys+1) |
// head G*kKeys | vn1, vn2 kKeys | rm, ril, ron2 rows | head_of rows (int);
// pass2_smem in saliency_cuda.cu is the same sum.
template <typename E, Score S, int KPL, int RPW>
__global__ void __launch_bounds__(kThreads, kPass2MinBlocks) pass2_kernel(SaliencyParams p, Shape s, Work w) {
  constexpr int kKeys = kTile * KPL, kCs = kKeys + 1, kR = kWarps * RPW;
  constexpr bool kVo = score_needs_vo(S), kDist = score_needs_dist(S);
  constexpr bool kNeedO = kVo || kDist;
  constexpr bool kNeedV = kNeedO || score_needs_vn1(S) || score_needs_vn2(S);
  OBC_DYNAMIC_SMEM(float, smem);
  const long long D = p.D, N = p.N;
  const int Di = static_cast<int>(D), sq = row_stride(D), sk = tile_stride(D);
  const long long p0 = static_cast<long long>(blockIdx.x) * kKeys, bh = pass2_bh(s);
  const int tn = static_cast<int>(N - p0 < kKeys ? N - p0 : kKeys);
  const HeadPtrs<E> hp = head_ptrs<E>(p, static_cast<unsigned>(bh));
  const E* q_bh = hp.q;
  const float* o_bh = w.fin_o + bh * s.R * D;
  long long* lim = reinterpret_cast<long long*>(smem);
  float* Ks = smem + 2 * kR;
  float* Vs = Ks + kKeys * sk;
  float* Qs = Vs + (kNeedV ? kKeys * sk : 0);
  float* Os = Qs + kR * sq;
  float* Cs = Os + (kNeedO ? kR * sq : 0);
  const Pass2Smem m = carve_pass2(Cs + kR * kCs, p.G, kKeys, kR);
  float *head = m.head, *vn1 = m.vn1, *vn2 = m.vn2, *rm = m.rm, *ril = m.ril, *ron2 = m.ron2;
  int* head_of = m.head_of;
  const int tid = threadIdx.x, lane = tid % kTile, warp = tid / kTile, row0 = warp * RPW;

  load_key_tile<E, kKeys>(hp.k, p.k_sn, D, p0, tn, Ks);
  if (kNeedV) load_key_tile<E, kKeys>(hp.v, p.v_sn, D, p0, tn, Vs);
  __syncthreads();
  start_pass2<kKeys, kNeedV>(p, m, [&](int c, float& a1, float& a2) {
    for (int d = 0; d < Di; ++d) add_norms<S>(Vs[c * sk + d], a1, a2);
  });
  for (long long r0 = 0; r0 < s.R; r0 += kR) {
    row_info(p, s, r0, kR, lim, head_of);
    load_queries<E>(p, s, q_bh, r0, kR, Qs);
    if (kNeedO) load_rows(o_bh, s.R, D, r0, kR, sq, Os);
    load_row_stats<false>(s, w, bh, r0, kR, m);
    __syncthreads();
    // RPW rows x KPL keys per thread, float4 loads: each K / V float4 serves
    // RPW rows, each row float4 (a warp-wide broadcast) KPL keys.
    float z[KPL][RPW] = {}, vo[KPL][RPW] = {}, dd[KPL][RPW] = {};
    if (kNeedO) {
      for (int d = 0; d < sq; d += 4) {
        float4 kx[KPL], vx[KPL];
#pragma unroll
        for (int u = 0; u < KPL; ++u) {
          kx[u] = load4(Ks + (lane + u * kTile) * sk + d);
          vx[u] = load4(Vs + (lane + u * kTile) * sk + d);
        }
#pragma unroll
        for (int j = 0; j < RPW; ++j) {
          const float4 q = load4(Qs + (row0 + j) * sq + d), o = load4(Os + (row0 + j) * sq + d);
#pragma unroll
          for (int u = 0; u < KPL; ++u) {
            z[u][j] = dot4(z[u][j], q, kx[u]);
            if (kVo) vo[u][j] = dot4(vo[u][j], o, vx[u]);
            if (kDist) {
              const float4 t = make_float4(vx[u].x - o.x, vx[u].y - o.y, vx[u].z - o.z, vx[u].w - o.w);
              dd[u][j] = dot4(dd[u][j], t, t);
            }
          }
        }
      }
    } else {
      tile_logits<KPL, RPW>(Qs + row0 * sq, Ks + lane * sk, sq, sk, z);
    }
#pragma unroll
    for (int j = 0; j < RPW; ++j) {
      const int rr = row0 + j, last = last_visible(lim[rr], p0, tn);
#pragma unroll
      for (int u = 0; u < KPL; ++u) {
        const int c = lane + u * kTile;
        float x = 0.0f;
        if (c <= last) {
          const float a = expf(z[u][j] - rm[rr]) * ril[rr];
          x = score_contribution<S, float>(a, z[u][j], vn1[c], vn2[c], vo[u][j], ron2[rr], sqrtf(dd[u][j]));
        }
        Cs[rr * kCs + c] = x;
      }
    }
    reduce_queries<kKeys>(p, chunk_rows(s, r0, kR), Cs, head_of, head);
  }
  write_scores<kKeys>(p, bh, p0, tn, head);
}

}  // namespace salc
}  // namespace obc

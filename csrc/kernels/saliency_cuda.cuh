// Device kernels of `saliency` (see saliency_cuda.cu for the algorithm and
// launch shapes). Plain SIMT CUDA: dynamic shared memory through
// OBC_DYNAMIC_SMEM, __syncthreads, warp shuffles, expf; so the same source
// also runs under the host SIMT emulation (tests/cpp/simt).
#pragma once

#include <cstdint>

#include "common.h"
#include "cuda_compat.h"
#include "saliency_params.h"
#include "score_math.h"

namespace obc {
namespace salc {

constexpr int kThreads = 128;                 // threads per block, every kernel
constexpr int kTile = 32;                     // keys per tile = warp size
constexpr int kRowGroups = kThreads / kTile;  // 4
constexpr int kRowsPerThread = 4;
constexpr int kRows = kRowGroups * kRowsPerThread;  // window rows per chunk: 16
constexpr int kMaxSplits = 64;

// Rows of one (b, h): R = G * Wr window rows, row r = (g = r / Wr, query
// i = i0 + r % Wr); Wr = 1, i0 = W - 1 for `tova`, else Wr = W, i0 = 0.
struct Shape {
  long long R, Wr, i0, splits, keys_per_split;
};

// Workspace (floats), all indexed by bh = b * Hkv + h:
//   part_m, part_l [bh][split][R]; part_o [bh][split][R][D]  (pass 1)
//   fin_m, fin_il, fin_on2 [bh][R]; fin_o [bh][R][D]         (combine)
// (the O arrays only for the scores that need o: key, joint, loo).
struct Work {
  float *part_m, *part_l, *part_o, *fin_m, *fin_il, *fin_on2, *fin_o;
};

__device__ OBC_INLINE long long row_position(const SaliencyParams& p, const Shape& s, long long r) {
  return query_position(p.N, p.W, s.i0 + r % s.Wr);
}

// Loads window rows [r0, r0 + kRows) of (b, h) as scaled floats into
// dst[kRows][D]; rows past R are zero.
template <typename E>
__device__ OBC_INLINE void load_queries(const SaliencyParams& p, const Shape& s, long long b, long long h,
                                        long long r0, float* dst) {
  const long long D = p.D;
  const E* q = static_cast<const E*>(p.q);
  const int Di = static_cast<int>(D);  // <= 256: 32-bit division (64-bit is a long software routine)
  for (int e = threadIdx.x; e < kRows * Di; e += kThreads) {
    const int rr = e / Di, d = e % Di;
    const long long r = r0 + rr;
    float x = 0.0f;
    if (r < s.R) {
      const long long g = r / s.Wr, i = s.i0 + r % s.Wr;
      x = Elem<E>::load(q[b * p.q_sb + (h * p.G + g) * p.q_sh + i * p.q_sw + d]) * p.scale;
    }
    dst[rr * D + d] = x;
  }
}

// dst[c][0:D] (row stride D + 1, against bank conflicts) = keys p0 + c of
// one (b, h) for c < tn; zero for c >= tn.
template <typename E>
__device__ OBC_INLINE void load_key_tile(const E* src, long long sn, long long D, long long p0, long long tn,
                                         float* dst) {
  const int Di = static_cast<int>(D);  // <= 256: 32-bit division
  for (int e = threadIdx.x; e < kTile * Di; e += kThreads) {
    const int c = e / Di, d = e % Di;
    dst[c * (D + 1) + d] = c < tn ? Elem<E>::load(src[(p0 + c) * sn + d]) : 0.0f;
  }
}

__device__ OBC_INLINE float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ OBC_INLINE float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// ---- Pass 1: partial softmax statistics (and unnormalised O) of the rows
// [chunk * kRows, +kRows) over the keys of one split.
// grid (splits, row chunks, B * Hkv), kThreads threads.
// smem floats: Qs kRows*D | KV kTile*(D+1) | Ps kRows*(kTile+1) | Os kRows*D |
// m, l, corr kRows each.
template <typename E, bool kNeedO>
__global__ void __launch_bounds__(kThreads) pass1_kernel(SaliencyParams p, Shape s, Work w) {
  OBC_DYNAMIC_SMEM(float, smem);
  const long long D = p.D, N = p.N;
  const int Di = static_cast<int>(D);  // <= 256 (the op checks): 32-bit index division
  const long long split = blockIdx.x, r0 = static_cast<long long>(blockIdx.y) * kRows, bh = blockIdx.z;
  const long long b = bh / p.Hkv, h = bh % p.Hkv;
  float* Qs = smem;
  float* KV = Qs + kRows * D;
  float* Ps = KV + kTile * (D + 1);
  float* Os = Ps + kRows * (kTile + 1);
  float* m = Os + kRows * D;
  float* l = m + kRows;
  float* corr = l + kRows;
  const E* K = static_cast<const E*>(p.k) + b * p.k_sb + h * p.k_sh;
  const E* V = static_cast<const E*>(p.v) + b * p.v_sb + h * p.v_sh;
  const int tid = threadIdx.x, lane = tid % kTile, rg = tid / kTile;

  load_queries<E>(p, s, b, h, r0, Qs);
  if (kNeedO)
    for (long long e = tid; e < kRows * D; e += kThreads) Os[e] = 0.0f;
  if (tid < kRows) {
    m[tid] = -INFINITY;
    l[tid] = 0.0f;
  }
  const long long k_begin = split * s.keys_per_split;
  const long long k_end = k_begin + s.keys_per_split < N ? k_begin + s.keys_per_split : N;
  for (long long p0 = k_begin; p0 < k_end; p0 += kTile) {
    const long long tn = k_end - p0 < kTile ? k_end - p0 : kTile;
    load_key_tile<E>(K, p.k_sn, D, p0, tn, KV);
    __syncthreads();
    // Logits: thread (lane = key, rg) computes rows rg, rg + 4, ...
    float acc[kRowsPerThread] = {};
    for (long long d = 0; d < D; ++d) {
      const float kv = KV[lane * (D + 1) + d];
#pragma unroll
      for (int j = 0; j < kRowsPerThread; ++j) acc[j] += Qs[(rg + j * kRowGroups) * D + d] * kv;
    }
#pragma unroll
    for (int j = 0; j < kRowsPerThread; ++j) {
      const long long rr = rg + j * kRowGroups, r = r0 + rr;
      const bool vis = lane < tn && r < s.R && key_visible(p.causal, p0 + lane, row_position(p, s, r));
      Ps[rr * (kTile + 1) + lane] = vis ? acc[j] : -INFINITY;
    }
    __syncthreads();
    // Online softmax: warp rg owns rows rg, rg + 4, ... (one key per lane).
    for (int j = 0; j < kRowsPerThread; ++j) {
      const int rr = rg + j * kRowGroups;
      const float z = Ps[rr * (kTile + 1) + lane];
      const float m_old = m[rr];
      const float m_new = fmaxf(m_old, warp_max(z));
      // m_new = -inf: nothing visible yet; keep the state as it is.
      const float e = m_new == -INFINITY || z == -INFINITY ? 0.0f : expf(z - m_new);
      const float c = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
      const float sum = warp_sum(e);
      Ps[rr * (kTile + 1) + lane] = e;  // each lane its own entry
      // Each lane's read of m[rr] feeds its warp_sum input, so all reads are
      // done before lane 0 leaves warp_sum and overwrites m[rr].
      if (lane == 0) {
        l[rr] = l[rr] * c + sum;
        m[rr] = m_new;
        corr[rr] = c;
      }
    }
    __syncthreads();
    if (kNeedO) {
      load_key_tile<E>(V, p.v_sn, D, p0, tn, KV);
      __syncthreads();
      for (int e = tid; e < kRows * Di; e += kThreads) {
        const int rr = e / Di, d = e % Di;
        float o = Os[e] * corr[rr];
        for (long long c = 0; c < tn; ++c) o += Ps[rr * (kTile + 1) + c] * KV[c * (D + 1) + d];
        Os[e] = o;
      }
      __syncthreads();
    }
  }
  const long long base = (bh * s.splits + split) * s.R;
  for (long long rr = tid; rr < kRows; rr += kThreads)
    if (r0 + rr < s.R) {
      w.part_m[base + r0 + rr] = m[rr];
      w.part_l[base + r0 + rr] = l[rr];
    }
  if (kNeedO)
    for (int e = tid; e < kRows * Di; e += kThreads) {
      const int rr = e / Di;
      if (r0 + rr < s.R) w.part_o[(base + r0) * D + e] = Os[e];
    }
}

// ---- Combine the splits of one row (flash-decoding): final max, 1 / sum,
// normalised O (or the given one, p.o, when pass 1 skipped O) and ||O||^2.
// grid (R, B * Hkv), kThreads threads.
template <typename E, bool kNeedO>
__global__ void __launch_bounds__(kThreads) combine_kernel(SaliencyParams p, Shape s, Work w) {
  __shared__ float weight[kMaxSplits];
  __shared__ float red[kThreads / 32];
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
  float sq = 0.0f;
  if (kNeedO) {
    const long long b = bh / p.Hkv, h = bh % p.Hkv, g = r / s.Wr, i = s.i0 + r % s.Wr;
    const E* given = p.o ? static_cast<const E*>(p.o) + b * p.o_sb + (h * p.G + g) * p.o_sh + i * p.o_sw : nullptr;
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
    }
  }
  sq = warp_sum(sq);
  if (tid % 32 == 0) red[tid / 32] = sq;
  __syncthreads();
  if (tid == 0) {
    float t = 0.0f;
    for (int i = 0; i < kThreads / 32; ++i) t += red[i];
    w.fin_m[bh * s.R + r] = M;
    w.fin_il[bh * s.R + r] = inv_l;
    w.fin_on2[bh * s.R + r] = t;
  }
}

// ---- Pass 2: one block per (key tile, b, h) recomputes Z, A (and v.o,
// ||v - o||) for every window row against its kTile keys, reduces over the
// queries and the group, and writes its kTile scores once.
// grid (ceil(N / kTile), B * Hkv), kThreads threads.
// smem floats: Ks, Vs kTile*(D+1) each | Qs, Os kRows*D each |
// Cs kRows*(kTile+1) | head G*kTile | vn1, vn2 kTile | rm, ril, ron2 kRows.
template <typename E, Score S>
__global__ void __launch_bounds__(kThreads) pass2_kernel(SaliencyParams p, Shape s, Work w) {
  constexpr bool kNeedO = score_needs_vo(S) || score_needs_dist(S);
  constexpr bool kNeedV = kNeedO || score_needs_vn1(S) || score_needs_vn2(S);
  OBC_DYNAMIC_SMEM(float, smem);
  const long long D = p.D, N = p.N, G = p.G;
  const int Di = static_cast<int>(D);
  const long long p0 = static_cast<long long>(blockIdx.x) * kTile, bh = blockIdx.y;
  const long long b = bh / p.Hkv, h = bh % p.Hkv;
  const long long tn = N - p0 < kTile ? N - p0 : kTile;
  float* Ks = smem;
  float* Vs = Ks + kTile * (D + 1);
  float* Qs = Vs + kTile * (D + 1);
  float* Os = Qs + kRows * D;
  float* Cs = Os + kRows * D;
  float* head = Cs + kRows * (kTile + 1);
  float* vn1 = head + G * kTile;
  float* vn2 = vn1 + kTile;
  float* rm = vn2 + kTile;
  float* ril = rm + kRows;
  float* ron2 = ril + kRows;
  const int tid = threadIdx.x, lane = tid % kTile, rg = tid / kTile;

  load_key_tile<E>(static_cast<const E*>(p.k) + b * p.k_sb + h * p.k_sh, p.k_sn, D, p0, tn, Ks);
  if (kNeedV) load_key_tile<E>(static_cast<const E*>(p.v) + b * p.v_sb + h * p.v_sh, p.v_sn, D, p0, tn, Vs);
  const float qinit = query_reduce_init<float>(p.query_reduce);
  for (long long e = tid; e < G * kTile; e += kThreads) head[e] = qinit;
  __syncthreads();
  if (tid < kTile) {
    float a1 = 0.0f, a2 = 0.0f;
    if (kNeedV)
      for (long long d = 0; d < D; ++d) {
        const float x = Vs[tid * (D + 1) + d];
        a1 += fabsf(x);
        a2 += x * x;
      }
    vn1[tid] = a1;
    vn2[tid] = a2;
  }
  for (long long r0 = 0; r0 < s.R; r0 += kRows) {
    load_queries<E>(p, s, b, h, r0, Qs);
    if (kNeedO)
      for (int e = tid; e < kRows * Di; e += kThreads) {
        const long long r = r0 + e / Di;
        Os[e] = r < s.R ? w.fin_o[(bh * s.R + r0) * D + e] : 0.0f;
      }
    if (tid < kRows) {
      const long long r = r0 + tid;
      rm[tid] = r < s.R ? w.fin_m[bh * s.R + r] : 0.0f;
      ril[tid] = r < s.R ? w.fin_il[bh * s.R + r] : 0.0f;
      ron2[tid] = r < s.R ? w.fin_on2[bh * s.R + r] : 0.0f;
    }
    __syncthreads();
    float z[kRowsPerThread] = {}, vo[kRowsPerThread] = {}, dd[kRowsPerThread] = {};
    for (long long d = 0; d < D; ++d) {
      const float kx = Ks[lane * (D + 1) + d];
      const float vx = kNeedO ? Vs[lane * (D + 1) + d] : 0.0f;
#pragma unroll
      for (int j = 0; j < kRowsPerThread; ++j) {
        const long long rr = rg + j * kRowGroups;
        z[j] += Qs[rr * D + d] * kx;
        if (score_needs_vo(S)) vo[j] += Os[rr * D + d] * vx;
        if (score_needs_dist(S)) {
          const float t = vx - Os[rr * D + d];
          dd[j] += t * t;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kRowsPerThread; ++j) {
      const long long rr = rg + j * kRowGroups, r = r0 + rr;
      const bool vis = lane < tn && r < s.R && key_visible(p.causal, p0 + lane, row_position(p, s, r));
      float c = 0.0f;
      if (vis) {
        const float a = expf(z[j] - rm[rr]) * ril[rr];
        c = score_contribution<S, float>(a, z[j], vn1[lane], vn2[lane], vo[j], ron2[rr], sqrtf(dd[j]));
      }
      Cs[rr * (kTile + 1) + lane] = c;
    }
    __syncthreads();
    // Query reduction: thread c owns head[:, c], so no two threads write one.
    if (tid < kTile) {
      const long long nr = s.R - r0 < kRows ? s.R - r0 : kRows;
      for (long long rr = 0; rr < nr; ++rr) {
        float* hp = head + ((r0 + rr) / s.Wr) * kTile + tid;
        *hp = query_reduce_step(p.query_reduce, *hp, Cs[rr * (kTile + 1) + tid]);
      }
    }
    __syncthreads();
  }
  if (tid < tn) {
    float acc = group_reduce_init<float>(p.group_reduce);
    for (long long g = 0; g < G; ++g) acc = group_reduce_step(p.group_reduce, acc, head[g * kTile + tid]);
    static_cast<float*>(p.out)[bh * N + p0 + tid] = finite_or_nan(group_reduce_finish(p.group_reduce, acc, G));
  }
}

}  // namespace salc
}  // namespace obc

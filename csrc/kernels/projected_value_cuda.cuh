// projected_value_norm on CUDA: out[b, j, n] = ||v_n W_o^j||_p as a tiled
// GEMM [tokens, D] x [D, hidden] whose epilogue is the row norm, so the
// [N, hidden] product only ever exists as one 64 x 64 tile in registers.
//
// Launch: grid (ceil(N / 64), B * Hq), 256 threads. A block owns 64 tokens
// of one query head j and walks all hidden columns in 64-wide tiles; each
// tile is built from 16-deep slices of V (64 x 16) and W_o^j (16 x 64) staged
// in shared memory as float, each thread computing a 4 x 4 sub-tile (rows
// ty + 16 i, columns tx + 16 jj). Per thread, |x| or x^2 of its columns is
// summed per row across tiles; a final shared-memory pass adds the 16 column
// threads of each row in a fixed order (deterministic, no atomics).
// Memory: each block reads its 64 value rows ceil(hidden / 64) times (L2 hits)
// and W_o^j once; tiles of W_o^j are shared by the N / 64 blocks of a head.
#pragma once

#include <cstdint>

#include "common.h"
#include "cuda_compat.h"
#include "projected_value_params.h"

namespace obc {
namespace pvn {

constexpr int kThreads = 256;
constexpr int kRows = 64;   // tokens per block
constexpr int kCols = 64;   // hidden columns per tile
constexpr int kDepth = 16;  // head-dim slice staged per step
constexpr int kSub = 4;     // rows and columns per thread

template <typename E, int P>
__global__ void __launch_bounds__(kThreads) projected_value_kernel(ProjectedValueParams p) {
  // +1: the staging stores walk d fastest, which would hit one bank 16 times.
  __shared__ float vs[kDepth][kRows + 1];
  __shared__ float wsm[kDepth][kCols + 1];
  __shared__ float red[kRows][kThreads / kRows * kSub + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t Hq = p.Hkv * p.G;
  const int64_t bj = blockIdx.y, b = bj / Hq, j = bj % Hq, h = j / p.G;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const E* v = static_cast<const E*>(p.v) + b * p.v_sb + h * p.v_sh;
  const E* w = static_cast<const E*>(p.wo) + j * p.D;
  float part[kSub];
#pragma unroll
  for (int i = 0; i < kSub; ++i) part[i] = 0.0f;
  for (int64_t c0 = 0; c0 < p.hidden; c0 += kCols) {
    float acc[kSub][kSub];
#pragma unroll
    for (int i = 0; i < kSub; ++i)
#pragma unroll
      for (int jj = 0; jj < kSub; ++jj) acc[i][jj] = 0.0f;
    for (int64_t d0 = 0; d0 < p.D; d0 += kDepth) {
      // 64 x 16 elements of each operand, 4 per thread, d fastest (16
      // consecutive elements of one row per 16 lanes). Out of range: 0.
#pragma unroll
      for (int it = 0; it < kRows * kDepth / kThreads; ++it) {
        const int e = it * kThreads + tid, r = e / kDepth, d = e % kDepth;
        const int64_t dd = d0 + d, n = n0 + r, col = c0 + r;
        vs[d][r] = (n < p.N && dd < p.D) ? Elem<E>::load(v[n * p.v_sn + dd]) : 0.0f;
        wsm[d][r] = (col < p.hidden && dd < p.D) ? Elem<E>::load(w[col * p.wo_so + dd]) : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int d = 0; d < kDepth; ++d) {
        float a[kSub], c[kSub];
#pragma unroll
        for (int i = 0; i < kSub; ++i) a[i] = vs[d][ty + 16 * i], c[i] = wsm[d][tx + 16 * i];
#pragma unroll
        for (int i = 0; i < kSub; ++i)
#pragma unroll
          for (int jj = 0; jj < kSub; ++jj) acc[i][jj] += a[i] * c[jj];
      }
      __syncthreads();  // the slice is read by all before the next overwrites it
    }
    // Padded columns are left out (an Inf in v would make 0 * Inf = NaN).
#pragma unroll
    for (int jj = 0; jj < kSub; ++jj) {
      if (c0 + tx + 16 * jj >= p.hidden) continue;
#pragma unroll
      for (int i = 0; i < kSub; ++i) part[i] += P == 1 ? fabsf(acc[i][jj]) : acc[i][jj] * acc[i][jj];
    }
  }
#pragma unroll
  for (int i = 0; i < kSub; ++i) red[ty + 16 * i][tx] = part[i];
  __syncthreads();
  if (tid < kRows && n0 + tid < p.N) {
    float s = 0.0f;
    for (int t = 0; t < 16; ++t) s += red[tid][t];
    static_cast<float*>(p.out)[bj * p.N + n0 + tid] = P == 1 ? s : sqrtf(s);
  }
}

}  // namespace pvn
}  // namespace obc

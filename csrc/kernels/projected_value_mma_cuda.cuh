// projected_value_norm on the tensor cores (mma.sync m16n8k16, sm_80 and
// later) for bfloat16 or float16 v and W_o with head sizes up to 256:
// out[b, j, n] = ||v_n W_o^j||_p as a GEMM [tokens, D] x [D, hidden] whose
// epilogue is the row norm, as projected_value_kernel
// (projected_value_cuda.cuh) does on the FP32 units, which runs wherever this
// cannot (float32, D > 256, GPUs before sm_80). v and W_o are 16-bit values
// of one type, so every product is exact in float and only the float
// accumulation rounds, as on the FP32 path: no operand needs splitting.
//
// Launch: grid (ceil(N / rows), B * Hq), 256 threads (8 warps). Warp w owns
// MT 16-row m-tiles of tokens and keeps their A fragments (v, all of D:
// MT x D / 16 x 4 registers, 64 at MT = 2, D = 128 or MT = 1, D = 256) in
// registers for the whole kernel: MT = 2 (rows = 256 tokens per block) up to
// D = 128, MT = 1 (128 tokens) up to D = 256. The block walks hidden in
// 64-column tiles of W_o^j (64 rows of wo, D contiguous: the "column-major"
// B operand as stored), double-buffered in shared memory by cp.async, so the
// next tile's copy runs under this tile's products. Per 16-deep step a warp
// loads two n-tiles' B fragments with one ldmatrix .x4 and issues 2 MT
// mma.sync; each (16 MT) x 64 float tile then goes into |x| or x^2 per row in
// registers, and at the end the 4 lanes of a row add theirs (shuffles in a
// fixed order: deterministic, no atomics). 256 tokens per block where the
// registers allow: W_o^j, read from L2 by every block of its head, costs
// 2 D bytes per column per block, half of what 128 tokens would.
#pragma once

#include <cstdint>

#include "common.h"
#include "cuda_compat.h"
#include "mma.h"
#include "mma_tiles_cuda.cuh"
#include "projected_value_params.h"

namespace obc {
namespace pvn {

constexpr int kMmaWarps = 8;
constexpr int kMmaThreads = kMmaWarps * mma::kWarpSize;
constexpr int kMmaCols = 64;  // columns of hidden per tile: 8 n-tiles
// v's fragments in registers: MT x (D / 16) x 4 of them, 64 at most.
OBC_HD constexpr int mma_max_depth(int MT) { return 256 / MT; }
constexpr int kMmaMaxDepth = mma_max_depth(1);
// Two m-tiles per warp where D allows (fewer W_o reads per token).
OBC_HD OBC_INLINE int mma_m_tiles(long long D) { return D <= mma_max_depth(2) ? 2 : 1; }
OBC_HD constexpr int mma_rows(int MT) { return kMmaWarps * 16 * MT; }  // tokens per block
// v is staged through the two W_o buffers before the first tile: 128 rows
// at a time.
constexpr int kMmaStageRows = 2 * kMmaCols;

// Dynamic shared memory: two W_o tiles of 16-bit-pair rows (34 KiB at D =
// 128, under the 48 KiB a block gets without an opt-in; 66 KiB at D = 256).
OBC_HD OBC_INLINE size_t mma_smem_bytes(long long D) {
  return sizeof(uint32_t) * 2 * kMmaCols * static_cast<size_t>(mma::pair_stride(D));
}

// vec: D is a multiple of 8 and every row of v and wo starts 16-byte
// aligned (cp.async of 16-byte pieces).
template <typename E, int P, int MT>
__global__ void __launch_bounds__(kMmaThreads, 1) projected_value_mma_kernel(ProjectedValueParams p, bool vec) {
  constexpr int kSteps = mma_max_depth(MT) / 16, kWarpRows = 16 * MT, kRows = mma_rows(MT);
  OBC_DYNAMIC_SMEM(uint32_t, smem);
  const int Di = static_cast<int>(p.D), depth = mma::mma_depth(p.D), pw = mma::pair_stride(p.D);
  const int tid = threadIdx.x, lane = tid % mma::kWarpSize, warp = tid / mma::kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const long long Hq = p.Hkv * p.G, bj = blockIdx.y, b = bj / Hq, j = bj % Hq, h = j / p.G;
  const long long n0 = static_cast<long long>(blockIdx.x) * kRows;
  const int rows_in = static_cast<int>(p.N - n0 < kRows ? p.N - n0 : kRows);
  const E* v = static_cast<const E*>(p.v) + b * p.v_sb + h * p.v_sh + n0 * p.v_sn;
  const E* w = static_cast<const E*>(p.wo) + j * p.D;
  // Warps whose rows are all past N load and barrier with the rest but
  // multiply nothing.
  const bool active = warp * kWarpRows < rows_in;

  // v's A fragments, staged 128 rows at a time through the W_o buffers.
  uint32_t a[MT][kSteps][4];
#pragma unroll
  for (int s0 = 0; s0 < kRows; s0 += kMmaStageRows) {
    const int left = rows_in - s0, valid = left < 0 ? 0 : left < kMmaStageRows ? left : kMmaStageRows;
    if (s0 > 0) __syncthreads();  // the previous stage's fragments are read
    mma::load_pair_rows<kMmaThreads, mma_max_depth(MT), kMmaStageRows>([&](int c) { return v + (s0 + c) * p.v_sn; },
                                                                       valid, Di, pw, vec, smem);
    mma::sync_tiles();
    if (warp * kWarpRows / kMmaStageRows == s0 / kMmaStageRows) {
      const int row0 = warp * kWarpRows - s0;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int ks = 0; ks < kSteps; ++ks)
          if (16 * ks < depth) mma::load_a(a[mt][ks], smem, pw, row0 + 16 * mt, 16 * ks, lane);
    }
  }
  __syncthreads();  // every warp holds its fragments before W_o's tiles overwrite them

  // Tile c's buffer; by offset, not from an array of two pointers (which a
  // run-time index puts on the stack).
  const auto buf = [&](long long c) { return smem + (c % 2) * kMmaCols * pw; };
  const long long tiles = (p.hidden + kMmaCols - 1) / kMmaCols;
  const auto load_w = [&](long long c, uint32_t* dst) {
    const long long c0 = c * kMmaCols;
    const int valid = static_cast<int>(p.hidden - c0 < kMmaCols ? p.hidden - c0 : kMmaCols);
    const E* wc = w + c0 * p.wo_so;
    mma::load_pair_rows<kMmaThreads, mma_max_depth(MT), kMmaCols>([&](int r) { return wc + r * p.wo_so; }, valid, Di,
                                                                  pw, vec, dst);
  };
  float part[MT][2] = {};  // m-tile x rows g, g + 8: this lane's columns' |x| or x^2
  if (tiles > 0) load_w(0, buf(0));
  for (long long c = 0; c < tiles; ++c) {
    mma::sync_tiles();  // tile c has landed, and every warp is done with tile c - 1's buffer
    if (c + 1 < tiles) load_w(c + 1, buf(c + 1));
    if (!active) continue;
    const uint32_t* ws = buf(c);
    float acc[MT][8][4] = {};  // m-tile x n-tile: rows g, g + 8 x columns 8 nt + 2t, + 1
    // Unrolled to the largest depth with a guard: the fragment indices stay
    // compile-time (registers, not local memory). The first step always runs
    // (D >= 1), so its products start from zero without the zeroing.
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks)
      if (ks == 0 || 16 * ks < depth)
#pragma unroll
        for (int nt = 0; nt < 8; nt += 2) {
          uint32_t bw[4];
          mma::load_b_pair(bw, ws, pw, 8 * nt, 16 * ks, lane);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma::m16n8k16_of<E>(acc[mt][nt], a[mt][ks], {bw[0], bw[1]});
            mma::m16n8k16_of<E>(acc[mt][nt + 1], a[mt][ks], {bw[2], bw[3]});
          }
        }
    // Columns past hidden (the last tile's zero rows of W_o) are left out: an
    // Inf in v would make their 0 * Inf a NaN.
    const long long cols = p.hidden - c * kMmaCols;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (cols >= kMmaCols || 8 * nt + 2 * t + e % 2 < cols)
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            const float x = acc[mt][nt][e];
            part[mt][e / 2] += P == 1 ? fabsf(x) : x * x;
          }
  }
  // The 4 lanes of a row (t = 0..3) hold its columns 2t, 2t + 1 of every n-tile.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float s = part[mt][hr];
      s += __shfl_xor_sync(0xffffffffu, s, 1);
      s += __shfl_xor_sync(0xffffffffu, s, 2);
      const int r = warp * kWarpRows + 16 * mt + 8 * hr + g;
      if (t == 0 && r < rows_in) static_cast<float*>(p.out)[bj * p.N + n0 + r] = P == 1 ? s : sqrtf(s);
    }
}

}  // namespace pvn
}  // namespace obc

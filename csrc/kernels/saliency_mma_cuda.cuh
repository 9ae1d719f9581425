// `saliency` on the tensor cores (mma.sync m16n8k16, sm_80 and later) for
// bfloat16 and float16 inputs (E = bf16_t, half_t): pass 1 for head sizes up
// to 128 and pass 2 for every score but `loo` (whose ||v - o|| is a
// difference, not a product). Same grids, workspace, reductions and outputs
// as pass1_kernel / pass2_kernel (saliency_cuda.cuh), which run wherever
// these cannot (older GPUs, loo, float32, D > 128 in pass 1, too little
// shared memory for these tiles); only the products move from the FP32 units
// to the tensor cores.
// q, k and v are 16-bit values, so their products are exact and only the
// float accumulation rounds, as on the FP32 path. The float operands (P in
// pass 1; O in pass 2, split once per row by combine_kernel) are split into
// three terms of E, hi + mid + lo, each the rounded remainder of the ones
// before, which carry them to float precision (2^-24 relative) at three
// products each: a single bf16 O would lose 2^-9 of v . o to the
// cancellation in ||v||^2 - 2 v . o + ||o||^2 (key and joint), and O comes
// from P V. f16 terms have no step finer than 2^-24 (mma::split3), so
// float16 scales the operands by powers of two first, which the float
// results undo exactly: P by 2^15 (kPScaleLog2), each row of O by its own
// (Work::fin_os).
// Shared memory: Q, K, V and O's three terms as 16-bit pairs (32-bit words),
// rows padded so that every fragment load is free of bank conflicts (the
// stride, mma::pair_stride in mma_tiles_cuda.cuh, says how).
#pragma once

#include <cstdint>
#include <type_traits>

#include "mma.h"
#include "mma_tiles_cuda.cuh"
#include "saliency_cuda.cuh"

namespace obc {
namespace salc {

// Pass 1's block: 64 rows x 64-key tiles (a warp's 16 rows whole), 4
// warps; wide, 128 rows and 8 warps, so that a split's K and V tiles cross
// the L2 once for all its rows (at G = 4, W = 32: 268 -> 134 MB at N = 32k,
// H_kv = 8), their next tile loading while the warps work on this one (one
// 8-warp block per SM, where three 4-warp blocks hid each other's loads).
constexpr int kMmaRows = 64, kMmaKeys = 64;
OBC_HD constexpr int mma_pass1_rows(bool wide) { return (wide ? 2 : 1) * kMmaRows; }
OBC_HD constexpr int mma_pass1_threads(bool wide) { return mma_pass1_rows(wide) / 16 * 32; }
OBC_HD constexpr int mma_pass1_buffers(bool wide) { return wide ? 2 : 1; }
// Pass 2's block: 4 warps, each 32 rows x 32 keys, over 64 rows x 64 keys,
// or 32 rows x 128 keys for the scores that read O (key, joint). Loading a
// chunk's O (three 16-bit terms), like its Q and row statistics, costs the
// same whatever the block's keys, so its cost per (row, key) pair halves at
// 128 keys (bench/results/kernels.md); K and V take the shared memory that
// Q and O give up (the same at D = 128). The other scores load only Q per
// chunk and keep 64 keys: at 128 their K and V would take the shared memory
// of two more blocks per SM.
// The key / joint row chunk is the one combine_kernel lays O's terms out in.
// Wide (key, joint): 8 warps over 32 rows x 256 keys, where the shared
// memory holds the tiles (~181 KB at D = 128: sm_90), which reads Q and O's
// terms through the L2 half as often per key (268 -> 134 MB at N = 32k,
// H_kv = 8) with the same registers per thread and the same 8 warps per SM
// as two 128-key blocks.
OBC_HD constexpr int mma_pass2_rows(Score s) { return score_needs_vo(s) ? kOTermRows : 64; }
OBC_HD constexpr int mma_pass2_keys(Score s, bool wide = false) { return (wide ? 2 : 1) * 64 * 64 / mma_pass2_rows(s); }
OBC_HD constexpr int mma_pass2_threads(Score s, bool wide) {
  return mma_pass2_rows(s) / 32 * (mma_pass2_keys(s, wide) / 32) * 32;
}
using mma::load_a;
using mma::load_b_pair;
using mma::load_b_pair_trans;
using mma::mma_depth;
using mma::pair_stride;
using mma::sync_tiles;

// Pass 1 keeps a warp's 16 rows of O in registers: head sizes up to 128.
constexpr int kMmaPass1MaxDepth = 128;
// float16's P = e^(z - max) <= 1 is split as P 2^15 (< 65504), whose f16
// terms are exact down to P = 2^-16 and within 2^-40 below: unscaled, P's
// smallest terms would be f16 subnormals, 2^-25 off each (as far off as
// float rounding is at P = 1, for every one of N keys). The sum and O
// carry the factor, which pass 1 takes out as it stores them.
constexpr float kPScaleLog2 = 15.0f;
// Pass 2 unrolls its products to this depth (kSaliencyCudaMaxHeadDim, the
// largest D the kernels take): a loop over D recomputed each ldmatrix
// address from k0 (77 instructions per step of D; 47 unrolled, with
// immediate offsets).
constexpr int kMmaPass2MaxDepth = 256;

template <Score S>
OBC_HD constexpr bool mma_pass2_supports() {
  return S != Score::Loo;
}

// ---- Pass 1 on the tensor cores (bfloat16, D <= 128): the partial softmax
// statistics (and unnormalised O) of rows [chunk * 64, +64) over one split of
// the keys, as pass1_kernel, in 64-key tiles. Warp w owns rows 16 w .. 16 w +
// 15 whole, flash-attention-2 style: O stays in registers for the kernel,
// each tile's logits come out of mma as accumulator fragments,
// the row max and sum are reduced over the 4 lanes sharing a row, and the
// probabilities are the A fragments of P V as they stand (the accumulator
// layout of keys 16j .. 16j + 15 is the A layout of that 16-wide step).
// P is split into three terms like o in pass 2, so O is as exact as on
// the FP32 path (the key and joint scores difference it against v).
// smem: lim rows (64-bit) | Qw rows*pw | Kw bufs*keys*pw | Vw bufs*keys*pw
// (for O); pass1_mma_smem in saliency_cuda.cu is the same sum.
// Pass 1's 64-row blocks per SM, told to ptxas as __launch_bounds__'s
// minimum: 3, what their 52 KB of shared memory (D = 128) allows on sm_80
// (sm_90's would hold 4). Left free since its tile loads form each row's
// address once (mma::load_pair_rows), ptxas kept those addresses across the
// tile loop and took 203-208 registers, room for 2 blocks; held to 168 it
// recomputes the ldmatrix row addresses per tile instead (27 instructions,
// against the 146 its loads saved; bench/results/kernels.md). The wide
// block (105 KB at D = 128, 256 threads) runs one per SM: sm_80's shared
// memory holds one, and sm_90's two would need at most 128 registers a
// thread, which its O, logits and P's terms alone exceed; so ptxas may
// take up to 255 (197 with O on sm_90).
// Wide, the tiles are double-buffered: tile i + 1's copies are issued into
// the other buffer once every warp is past tile i - 1 (the barrier that
// also shows tile i), so they travel while the warps compute on tile i;
// one barrier per tile. The 64-row block loads each tile after the
// previous one is done with (two barriers), its SM's other blocks
// computing meanwhile.
constexpr int kMmaPass1MinBlocks = 3;
template <typename E, bool kNeedO, bool kWide>
__global__ void __launch_bounds__(mma_pass1_threads(kWide), kWide ? 1 : kMmaPass1MinBlocks)
    pass1_mma_kernel(SaliencyParams p, Shape s, Work w) {
  constexpr int kR = mma_pass1_rows(kWide), kNT = mma_pass1_threads(kWide), kBufs = mma_pass1_buffers(kWide);
  constexpr int kKeys = kMmaKeys, kSteps = kMmaPass1MaxDepth / 16;
  constexpr bool kHalf = std::is_same<E, half_t>::value;
  OBC_DYNAMIC_SMEM(float, smem);
  const long long D = p.D, N = p.N;
  const int Di = static_cast<int>(D), depth = mma_depth(D), pw = pair_stride(D), buf_words = kKeys * pw;
  const long long split = blockIdx.x, r0 = static_cast<long long>(blockIdx.y) * kR, bh = blockIdx.z;
  long long* lim = reinterpret_cast<long long*>(smem);
  uint32_t* Qw = reinterpret_cast<uint32_t*>(smem + 2 * kR);
  uint32_t* Kbuf = Qw + kR * pw;
  uint32_t* Vbuf = Kbuf + kBufs * buf_words;
  const HeadPtrs<E> hp = head_ptrs<E>(p, blockIdx.z);
  const E *K = hp.k, *V = hp.v, *q_bh = hp.q;
  const int tid = threadIdx.x, lane = tid % kTile, warp = tid / kTile;
  const int g = lane / 4, t = lane % 4, row_w = warp * 16;

  row_info<true>(p, s, r0, kR, lim, nullptr);
  const int rows_in = chunk_rows(s, r0, kR);
  const long long k_begin = split * s.keys_per_split;
  const long long k_end = k_begin + s.keys_per_split < N ? k_begin + s.keys_per_split : N;
  const int tiles = static_cast<int>((k_end - k_begin + kKeys - 1) / kKeys);
  const auto tile_start = [&](int i) { return k_begin + static_cast<long long>(i) * kKeys; };
  const auto tile_keys = [&](long long p0) { return static_cast<int>(k_end - p0 < kKeys ? k_end - p0 : kKeys); };
  // Tile i's K (and V) into buffer i % kBufs, by the whole block.
  const auto load_tile = [&](int i) {
    const long long p0 = tile_start(i);
    const int tn = tile_keys(p0);
    const E *Kt = K + p0 * p.k_sn, *Vt = V + p0 * p.v_sn;
    const auto k_row = [&](int c) { return Kt + c * p.k_sn; };
    mma::load_pair_rows<kNT, kMmaPass1MaxDepth, kKeys>(k_row, tn, Di, pw, s.vec16, Kbuf + i % kBufs * buf_words);
    if (kNeedO) {
      const auto v_row = [&](int c) { return Vt + c * p.v_sn; };
      mma::load_pair_rows<kNT, kMmaPass1MaxDepth, kKeys>(v_row, tn, Di, pw, s.vec16, Vbuf + i % kBufs * buf_words);
    }
  };
  const auto q_row = [&](int rr) { return q_bh + query_offset(p, s, static_cast<int>(r0 + rr)); };
  mma::load_pair_rows<kNT, kMmaPass1MaxDepth, kR>(q_row, rows_in, Di, pw, s.vec16, Qw);
  if (kBufs == 2 && tiles > 0) load_tile(0);
  sync_tiles();
  const long long lim_row[2] = {lim[row_w + g], lim[row_w + g + 8]};
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float o[2 * kSteps][4] = {};  // rows g, g + 8 x columns 8 dn + 2t, + 1
  for (int i = 0; i < tiles; ++i) {
    if (kBufs == 1) {
      __syncthreads();  // every warp is done with the previous tile
      load_tile(i);
    }
    if (kBufs == 1 || i > 0) sync_tiles();
    if (kBufs == 2 && i + 1 < tiles) load_tile(i + 1);
    // A warp whose rows all lie past R (R = 96: the last two of a wide
    // block's) only loads.
    if (row_w >= rows_in) continue;
    const long long p0 = tile_start(i);
    const int tn = tile_keys(p0);
    const uint32_t *Kw = Kbuf + i % kBufs * buf_words, *Vw = Vbuf + i % kBufs * buf_words;
    float sc[8][4] = {};  // logits: rows g, g + 8 x keys 8 nt + 2t, + 1
    // Q's fragments are re-read from shared memory per tile: held in
    // registers for the kernel, with O's, they pushed it into spilling.
    // Unrolled to the largest depth with a guard (as P V below): no loop
    // counter, and no remainder code peeled off a partly unrolled loop.
#pragma unroll
    for (int k0 = 0; k0 < kMmaPass1MaxDepth; k0 += 16)
      if (k0 < depth) {
        uint32_t aq[4];
        load_a(aq, Qw, pw, row_w, k0, lane);
#pragma unroll
        for (int nt = 0; nt < 8; nt += 2) {
          uint32_t bk[4];
          load_b_pair(bk, Kw, pw, 8 * nt, k0, lane);
          mma::m16n8k16_of<E>(sc[nt], aq, {bk[0], bk[1]});
          mma::m16n8k16_of<E>(sc[nt + 1], aq, {bk[2], bk[3]});
        }
      }
    // Online softmax of rows g (hr = 0) and g + 8 (hr = 1) over the tile.
    // Where every row sees every key of the tile (all_rows_see), the logits
    // are scaled without the visibility test's compare and select per pair.
    const int last[2] = {last_visible(lim_row[0], p0, tn), last_visible(lim_row[1], p0, tn)};
    const bool sees_all = all_rows_see(p, p0, kKeys);
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float mx = -INFINITY;
      const auto scale_and_max = [&](auto masked) {
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            float& x = sc[nt][2 * hr + j];
            x = !decltype(masked)::value || 8 * nt + 2 * t + j <= last[hr] ? x * p.scale : -INFINITY;
            mx = fmaxf(mx, x);
          }
      };
      if (sees_all)
        scale_and_max(std::false_type());
      else
        scale_and_max(std::true_type());
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[hr], mx);
      // m_new = -inf: nothing visible yet; keep the state as it is. The exps
      // need no test per key: a masked logit is -inf, and ex2 of -inf is 0
      // (against m_new, or 0 where m_new is -inf too). float16's P is 2^15 P.
      const float corr = m_new == -INFINITY ? 1.0f : expf(m[hr] - m_new);
      const float m_sub = m_new == -INFINITY ? 0.0f : m_new;
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          float& x = sc[nt][2 * hr + j];
          x = mma::exp2_approx(kHalf ? mul_add(x - m_sub, mma::kLog2e, kPScaleLog2) : (x - m_sub) * mma::kLog2e);
          sum += x;
        }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      l[hr] = l[hr] * corr + sum;
      m[hr] = m_new;
      // O's rescale (64 multiplies per lane) only where a row's max moved:
      // after the first tiles it rarely does, and a factor of 1 changes
      // nothing.
      if (kNeedO && __any_sync(0xffffffffu, corr != 1.0f))
#pragma unroll
        for (int dn = 0; dn < 2 * kSteps; ++dn) o[dn][2 * hr] *= corr, o[dn][2 * hr + 1] *= corr;
    }
    if (kNeedO) {
      // O += P V, 16 keys at a time: P's A fragment is logits tiles 2kk and
      // 2kk + 1; V's B fragment pairs keys 2t, 2t + 1 (and + 8) of column g.
      uint32_t ap[kKeys / 16][3][4];  // P split once; the logits are dead after
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float* x = sc[2 * kk + i / 2] + 2 * (i % 2);
          mma::split3<E>(x[0], x[1], ap[kk][0][i], ap[kk][1][i], ap[kk][2][i]);
        }
      // V's B fragments two column tiles at a time (depth is whole 16s),
      // kPairs such pairs per pass: each o[dn] takes 12 products (4 key
      // steps x P's 3 terms), and with only its pair partner between them
      // ptxas padded a dependent mma with a NOP 12 times per pair of column
      // tiles (96 per 64-key tile at D = 128); 8 accumulators in turn leave
      // 2 per tile (328 -> 233 instructions for P V). Each o[dn] still sums
      // in the same order. Fully unrolled with guards, not an exit, so o
      // stays in registers (an exit makes its index dynamic: local memory).
      constexpr int kPairs = 4;
#pragma unroll
      for (int dn = 0; dn < 2 * kSteps; dn += 2 * kPairs)
        if (8 * dn < depth)
#pragma unroll
          for (int kk = 0; kk < kKeys / 16; ++kk) {
            uint32_t bv[kPairs][4];
#pragma unroll
            for (int h = 0; h < kPairs; ++h)
              if (8 * (dn + 2 * h) < depth) load_b_pair_trans(bv[h], Vw, pw, 16 * kk, 8 * (dn + 2 * h), lane);
#pragma unroll
            for (int part = 0; part < 3; ++part)
#pragma unroll
              for (int h = 0; h < kPairs; ++h)
                if (8 * (dn + 2 * h) < depth) {
                  mma::m16n8k16_of<E>(o[dn + 2 * h], ap[kk][part], {bv[h][0], bv[h][1]});
                  mma::m16n8k16_of<E>(o[dn + 2 * h + 1], ap[kk][part], {bv[h][2], bv[h][3]});
                }
          }
    }
  }
  const long long base = (bh * s.splits + split) * s.R;
  const float unscale = kHalf ? 1.0f / 32768.0f : 1.0f;  // 2^-kPScaleLog2
#pragma unroll
  for (int hr = 0; hr < 2; ++hr) {
    const long long r = r0 + row_w + g + 8 * hr;
    if (r >= s.R) continue;
    if (t == 0) w.part_m[base + r] = m[hr], w.part_l[base + r] = kHalf ? l[hr] * unscale : l[hr];
    if (kNeedO)
#pragma unroll
      for (int dn = 0; dn < 2 * kSteps; ++dn)
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int d = 8 * dn + 2 * t + j;
          if (d < Di) w.part_o[(base + r) * D + d] = kHalf ? o[dn][2 * hr + j] * unscale : o[dn][2 * hr + j];
        }
  }
}

// ||v||^2 of a pass-2 block's kKeys keys (rows of Vw, zero past D and past
// the tile) as the diagonal of V V^T: per m-tile of 16 keys and 16-wide
// step of D, the keys' A and B fragments (V^T's columns are V's rows: the
// same 8 x 8 matrices, which the B pair would take from the A fragment's
// halves at 4 register moves a step) and two mma. Lane (g, t) holds the
// diagonal's entries for keys g and 8 + g where t = g / 2. ~185
// instructions per warp and 128 keys at D = 128, addressing included,
// where the per-key sums of squares took ~290. The squares of 16-bit
// values are exact in float, as in the products of Q K^T and O V^T; only
// the order of the float sum differs from the FP32 path's.
template <typename E, int kKeys, int kNT>
__device__ OBC_INLINE void key_sq_norms(const uint32_t* Vw, int pw, int depth, int lane, int warp, float* vn2) {
  const int g = lane / 4, t = lane % 4;
  for (int k0 = 16 * warp; k0 < kKeys; k0 += 16 * (kNT / kTile)) {
    float d0[4] = {}, d1[4] = {};
#pragma unroll
    for (int s0 = 0; s0 < kMmaPass2MaxDepth; s0 += 16) {
      if (s0 >= depth) break;
      uint32_t a[4], b[4];
      load_a(a, Vw, pw, k0, s0, lane);
      load_b_pair(b, Vw, pw, k0, s0, lane);
      mma::m16n8k16_of<E>(d0, a, {b[0], b[1]});
      mma::m16n8k16_of<E>(d1, a, {b[2], b[3]});
    }
    if (t == g / 2) {  // selects: an index into d0 or d1 at run time would put them in local memory
      vn2[k0 + g] = g % 2 ? d0[1] : d0[0];
      vn2[k0 + 8 + g] = g % 2 ? d1[3] : d1[2];
    }
  }
}

// ---- Pass 2 on the tensor cores: block of 128 threads (256 wide) over a
// chunk of kR rows x kKeys keys (mma_pass2_keys), each warp 32 rows (two
// m-tiles of 16) x 32 keys (four n-tiles of 8): 2 x 2 warps at 64 x 64,
// 1 x 4 at 32 x 128, 1 x 8 at 32 x 256 (wide).
// Per 16-wide step of D a warp loads two ldmatrix .x4 each of Q, K and V and
// six of O's terms for 8 + 24 products.
// smem: lim, q_off rows (64-bit) | Kw keys*pw | Vw keys*pw (scores that read V) |
// Qw rows*pw, then Op 3*rows*pw (key, joint: O's three 16-bit terms, copied
// from combine_kernel's Work::o_terms like Q), both dead once the chunk's
// products are done, so Cs rows*(keys+1) takes the same space (the larger
// of the two) | head G*keys | vn1, vn2 keys | rm, ril, ron2, ros rows |
// head_of rows (int); pass2_mma_smem in saliency_cuda.cu is the same sum.
// Pass 2's blocks per SM, told to ptxas as __launch_bounds__'s minimum where
// its tiles are 64 x 64 (the scores that read no O): 3, what ~50 KB of
// shared memory allows on sm_80 (D = 128). Without a minimum, ptxas held
// these kernels to 80 registers on sm_80 and put two product-loop addresses
// on the stack; the key and joint kernels (164-186 registers: two 128-key
// blocks per SM, or one wide block) keep ptxas's default.
template <Score S>
OBC_HD constexpr int mma_pass2_min_blocks() {
  return score_needs_vo(S) ? 1 : 3;
}
template <typename E, Score S, bool kWide>
__global__ void __launch_bounds__(mma_pass2_threads(S, kWide), mma_pass2_min_blocks<S>())
    pass2_mma_kernel(SaliencyParams p, Shape s, Work w) {
  constexpr int kKeys = mma_pass2_keys(S, kWide), kR = mma_pass2_rows(S), kCs = kKeys + 1, kKeyWarps = kKeys / 32;
  constexpr int kNT = mma_pass2_threads(S, kWide);
  static_assert(!kWide || score_needs_vo(S), "only the scores that read O go wide");
  constexpr bool kHalf = std::is_same<E, half_t>::value;
  constexpr bool kVo = score_needs_vo(S);
  constexpr bool kNeedV = kVo || score_needs_vn1(S) || score_needs_vn2(S);
  static_assert(mma_pass2_supports<S>(), "loo runs on the FP32 path");
  OBC_DYNAMIC_SMEM(float, smem);
  const long long D = p.D, N = p.N;
  const int Di = static_cast<int>(D), depth = mma_depth(D), pw = pair_stride(D), plane = kR * pw;
  const long long p0 = static_cast<long long>(blockIdx.x) * kKeys, bh = pass2_bh(s);
  const int tn = static_cast<int>(N - p0 < kKeys ? N - p0 : kKeys);
  const HeadPtrs<E> hp = head_ptrs<E>(p, static_cast<unsigned>(bh));
  const E *K = hp.k, *V = hp.v, *q_bh = hp.q;
  // O's three terms (combine_kernel's Work::o_terms), a chunk's in one run
  // of 3 kR rows of depth values: 16-byte pieces wherever the workspace
  // starts 16-byte aligned.
  const long long o_chunks = (s.R + kR - 1) / kR;
  const E* o_bh = kVo ? reinterpret_cast<const E*>(w.o_terms) + bh * o_chunks * 3 * kR * depth : nullptr;
  const bool o_vec = reinterpret_cast<uintptr_t>(w.o_terms) % 16 == 0;
  long long *lim = reinterpret_cast<long long*>(smem), *q_off = lim + kR;
  uint32_t* Kw = reinterpret_cast<uint32_t*>(smem + 4 * kR);
  uint32_t* Vw = Kw + kKeys * pw;
  uint32_t* Qw = Vw + (kNeedV ? kKeys * pw : 0);
  uint32_t* Op = Qw + plane;
  float* Cs = reinterpret_cast<float*>(Qw);
  const int rows_words = (kVo ? 4 : 1) * plane;
  const Pass2Smem sm = carve_pass2(Cs + (rows_words > kR * kCs ? rows_words : kR * kCs), p.G, kKeys, kR);
  float *head = sm.head, *vn1 = sm.vn1, *vn2 = sm.vn2, *rm = sm.rm, *ril = sm.ril, *ron2 = sm.ron2, *ros = sm.ros;
  int* head_of = sm.head_of;
  const int tid = threadIdx.x, lane = tid % kTile, warp = tid / kTile;
  const int g = lane / 4, t = lane % 4, row_w = warp / kKeyWarps * 32, key_w = warp % kKeyWarps * 32;

  const E *Kt = K + p0 * p.k_sn, *Vt = V + p0 * p.v_sn;
  constexpr int kDepth = kMmaPass2MaxDepth;
  mma::load_pair_rows<kNT, kDepth, kKeys>([&](int c) { return Kt + c * p.k_sn; }, tn, Di, pw, s.vec16, Kw);
  if (kNeedV)
    mma::load_pair_rows<kNT, kDepth, kKeys>([&](int c) { return Vt + c * p.v_sn; }, tn, Di, pw, s.vec16, Vw);
  sync_tiles();
  // ||v||^2 (value, key, joint) as the diagonal of V V^T (key_sq_norms);
  // ||v||_1 (vatp) from 16-byte shared loads, 8 values each (a 32-bit load
  // and a select per value: 75 instructions per 16 values, now 56).
  constexpr bool kMmaNorms = score_needs_vn2(S) && !score_needs_vn1(S);
  if (kMmaNorms) key_sq_norms<E, kKeys, kNT>(Vw, pw, depth, lane, warp, vn2);
  start_pass2<kKeys, kNeedV && !kMmaNorms, !kMmaNorms, kNT>(p, sm, [&](int c, float& a1, float& a2) {
    const uint4* row = reinterpret_cast<const uint4*>(Vw + c * pw);
    for (int i = 0; i < depth / 8; ++i) {
      const uint32_t w4[4] = {row[i].x, row[i].y, row[i].z, row[i].w};
      for (const uint32_t x : w4) add_norms<S>(mma::low_of<E>(x), a1, a2), add_norms<S>(mma::high_of<E>(x), a1, a2);
    }
  });
  const bool sees_all = all_rows_see(p, p0, kKeys);
  for (long long r0 = 0; r0 < s.R; r0 += kR) {
    row_info<true>(p, s, r0, kR, lim, head_of, q_off);
    __syncthreads();  // q_off (and Cs of the previous chunk read: reduce_queries)
    const int rows_in = chunk_rows(s, r0, kR);
    const auto q_row = [&](int rr) { return q_bh + q_off[rr]; };
    // The chunk's rows by the first 128 threads (whole passes of quads; a
    // wide block's other warps skip them, a uniform branch per warp).
    if (kNT == kThreads || static_cast<int>(threadIdx.x) < kThreads) {
      mma::load_pair_rows<kThreads, kDepth, kR>(q_row, rows_in, Di, pw, s.vec16, Qw);
      if (kVo) {
        const E* ot = o_bh + r0 * 3 * depth;  // chunk r0 / kR
        const auto o_row = [&](int c) { return ot + c * depth; };
        mma::load_pair_rows<kThreads, kDepth, 3 * kR>(o_row, 3 * kR, depth, pw, o_vec, Op);
      }
    }
    load_row_stats<true>(s, w, bh, r0, kR, sm);
    sync_tiles();
    // This warp's 32 rows x 32 keys: z[mt][nt] and vo[mt][nt] are the
    // accumulator fragments of rows row_w + 16 mt, keys key_w + 8 nt.
    float z[2][4][4] = {}, vo[2][4][4] = {};
#pragma unroll
    for (int k0 = 0; k0 < kMmaPass2MaxDepth; k0 += 16) {
      if (k0 >= depth) break;
      uint32_t aq[2][4], ao[2][3][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        load_a(aq[mt], Qw, pw, row_w + 16 * mt, k0, lane);
        if (kVo)
#pragma unroll
          for (int part = 0; part < 3; ++part) load_a(ao[mt][part], Op + part * plane, pw, row_w + 16 * mt, k0, lane);
      }
#pragma unroll
      for (int nt = 0; nt < 4; nt += 2) {
        uint32_t bk[4];
        load_b_pair(bk, Kw, pw, key_w + 8 * nt, k0, lane);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          mma::m16n8k16_of<E>(z[mt][nt], aq[mt], {bk[0], bk[1]});
          mma::m16n8k16_of<E>(z[mt][nt + 1], aq[mt], {bk[2], bk[3]});
        }
        if (kVo) {
          uint32_t bv[4];
          load_b_pair(bv, Vw, pw, key_w + 8 * nt, k0, lane);
#pragma unroll
          for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int part = 0; part < 3; ++part) {
              mma::m16n8k16_of<E>(vo[mt][nt], ao[mt][part], {bv[0], bv[1]});
              mma::m16n8k16_of<E>(vo[mt][nt + 1], ao[mt][part], {bv[2], bv[3]});
            }
        }
      }
    }
    // The contributions. A lane's fragments cover 4 rows and 8 keys: their
    // statistics are read into registers once (the compiler cannot keep them
    // across the Cs stores, which may alias), and the visibility test is a
    // 32-bit compare of the key's offset in the tile against the row's last
    // visible offset (clamped: tn <= kKeys), a select rather than a branch
    // (a pair past it may compute inf or NaN, which the select drops). When
    // every query head's rows come in whole 32s (Wr % 32 == 0), a warp's 32
    // rows are one head's (or all past R): they are reduced over in
    // registers (the lane's 4 rows, then the 8 lanes of a key column by
    // shuffles), one Cs row per 32 rows, instead of a Cs store per (row,
    // key) and a serial reduction over the chunk's rows. The reduction (Cs
    // rows, in-warp sum, in-warp max) is a compile-time mode: one copy of
    // this code each. So is the visibility test: where every row sees all
    // the block's keys (all_rows_see), a copy without it saves the compare
    // and select of every pair.
    const bool in_warp = s.Wr % 32 == 0;
    __syncthreads();  // every warp is done with Qw and Op, which Cs reuses
    float k1[4][2], k2[4][2];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int c = key_w + 8 * nt + 2 * t + j;
        k1[nt][j] = vn1[c], k2[nt][j] = vn2[c];
      }
    const auto contributions = [&](auto mode, auto masked) {
      constexpr int kMode = decltype(mode)::value;  // 0: Cs rows; 1, 2: in-warp sum, max
      constexpr bool kMasked = decltype(masked)::value;
      constexpr QueryReduce kQr = kMode == 2 ? QueryReduce::Max : QueryReduce::Sum;
      float acc[4][2];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const int rr = row_w + 16 * mt + g + 8 * hr;
          const int last = last_visible(lim[rr], p0, tn);
          const float m = rm[rr], log2_il = ril[rr], on2 = ron2[rr], os = ros[rr];
#pragma unroll
          for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int j = 0; j < 2; ++j) {
              const int c = key_w + 8 * nt + 2 * t + j, i = 2 * hr + j;
              const float zz = z[mt][nt][i] * p.scale;
              const float a = mma::exp2_approx(mul_add(zz - m, mma::kLog2e, log2_il));
              const float vox = kHalf ? vo[mt][nt][i] * os : vo[mt][nt][i];  // f16: O's terms were of O / os
              const float xv = score_contribution<S, float>(a, zz, k1[nt][j], k2[nt][j], vox, on2, 0.0f);
              const float x = !kMasked || c <= last ? xv : 0.0f;
              if (kMode == 0)
                Cs[rr * kCs + c] = x;
              else
                acc[nt][j] = mt + hr == 0 ? x : query_reduce_step(kQr, acc[nt][j], x);
            }
        }
      if (kMode != 0)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            float& a = acc[nt][j];
#pragma unroll
            for (int o = 4; o < kTile; o *= 2)  // lanes 4 g + t: g's bits
              a = query_reduce_step(kQr, a, __shfl_xor_sync(0xffffffffu, a, o));
            if (g == 0) Cs[(row_w / 32) * kCs + key_w + 8 * nt + 2 * t + j] = a;
          }
    };
    const auto reduce_by = [&](auto mode) {
      if (sees_all)  // uniform over the block
        contributions(mode, std::false_type());
      else
        contributions(mode, std::true_type());
    };
    if (!in_warp)
      reduce_by(std::integral_constant<int, 0>());
    else if (p.query_reduce == QueryReduce::Max)
      reduce_by(std::integral_constant<int, 2>());
    else
      reduce_by(std::integral_constant<int, 1>());
    reduce_queries<kKeys>(p, rows_in, Cs, head_of, head, in_warp ? 32 : 1);
  }
  write_scores<kKeys>(p, bh, p0, tn, head);
}

}  // namespace salc
}  // namespace obc

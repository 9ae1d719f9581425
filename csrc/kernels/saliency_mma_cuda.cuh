// Pass 2 of `saliency` on the bf16 tensor cores (mma.sync, sm_80 and later)
// for bfloat16 inputs and every score but `loo` (whose ||v - o|| is a
// difference, not a product). Same grid, reductions and output as
// pass2_kernel<bf16_t, S, 2, 8> (saliency_cuda.cuh), which runs wherever this
// one cannot (older GPUs, loo, float32 / float16, too little shared memory
// for this kernel's tiles); only the two products per (row, key) pair move
// from the FP32 units to the tensor cores:
//   Z = scale (q . k): q and k are bf16 values, so every product is exact and
//     only the float accumulation rounds, as on the FP32 path;
//   v . o: o is float (combine's output). It is split into three bf16 terms,
//     hi + mid + lo, each the rounded remainder of the ones before, which
//     carry o to float precision (2^-24 relative), so v . o takes three
//     products where a single bf16 o would lose 2^-9 to the cancellation in
//     ||v||^2 - 2 v . o + ||o||^2 (key and joint).
// Block: 128 threads, 2 x 2 warps over a chunk of 64 rows x 64 keys, each
// warp 32 rows (two m-tiles of 16) x 32 keys (four n-tiles of 8). Q, K and V
// sit in shared memory as bf16 pairs, rows pair_stride(D) words apart: the 8
// rows x 4 words of one fragment load hit 32 distinct banks. O sits as
// floats, rows o_stride(D) floats apart (float2 loads, conflict-free per
// half warp). Per 16-wide step of D a warp loads 8 words of Q, 8 float2 of
// O, 8 words of K and 8 of V per lane for 8 + 24 products.
#pragma once

#include "mma.h"
#include "saliency_cuda.cuh"

namespace obc {
namespace salc {

constexpr int kMmaRows = 64, kMmaKeys = 64;

// D rounded up to whole 16-wide steps of the product.
OBC_HD OBC_INLINE int mma_depth(long long D) { return static_cast<int>((D + 15) / 16 * 16); }
// Words per bf16-pair row: an odd number of 4-word groups, so rows g = 0..7
// of a fragment load start in 8 different 4-bank groups.
OBC_HD OBC_INLINE int pair_stride(long long D) { return mma_depth(D) / 2 + 4; }
// Floats per O row: 8 mod 32, so the 4 rows x 4 float2 of a half warp's
// load cover the 32 banks once.
OBC_HD OBC_INLINE int o_stride(long long D) { return mma_depth(D) + 8; }

template <Score S>
OBC_HD constexpr bool mma_pass2_supports() {
  return S != Score::Loo;
}

// One warp: dst[0:pw] = x[0:D] as bf16 pairs (zero past D, all zero when x is
// null).
__device__ OBC_INLINE void load_pair_row(const bf16_t* x, int Di, int pw, uint32_t* dst) {
  for (int i = threadIdx.x % kTile; i < pw; i += kTile) {
    const int d = 2 * i;
    const uint32_t lo = x && d < Di ? x[d].bits : 0u, hi = x && d + 1 < Di ? x[d + 1].bits : 0u;
    dst[i] = lo | hi << 16;
  }
}

// smem: lim rows (64-bit) | Kw keys*pw | Vw keys*pw (scores that read V) |
// Qw rows*pw | Os rows*ow (key, joint) | Cs rows*(keys+1) | head G*keys |
// vn1, vn2 keys | rm, ril, ron2 rows | head_of rows (int); pass2_mma_smem in
// saliency_cuda.cu is the same sum.
template <Score S>
__global__ void __launch_bounds__(kThreads) pass2_mma_kernel(SaliencyParams p, Shape s, Work w) {
  constexpr int kKeys = kMmaKeys, kR = kMmaRows, kCs = kKeys + 1;
  constexpr bool kVo = score_needs_vo(S);
  constexpr bool kNeedV = kVo || score_needs_vn1(S) || score_needs_vn2(S);
  static_assert(mma_pass2_supports<S>(), "loo runs on the FP32 path");
  OBC_DYNAMIC_SMEM(float, smem);
  const long long D = p.D, N = p.N, G = p.G;
  const int Di = static_cast<int>(D), depth = mma_depth(D), pw = pair_stride(D), ow = o_stride(D);
  const long long p0 = static_cast<long long>(blockIdx.x) * kKeys, bh = blockIdx.y;
  const long long b = bh / p.Hkv, h = bh % p.Hkv;
  const int tn = static_cast<int>(N - p0 < kKeys ? N - p0 : kKeys);
  const bf16_t* K = static_cast<const bf16_t*>(p.k) + b * p.k_sb + h * p.k_sh;
  const bf16_t* V = static_cast<const bf16_t*>(p.v) + b * p.v_sb + h * p.v_sh;
  const bf16_t* q_bh = static_cast<const bf16_t*>(p.q) + b * p.q_sb + h * p.G * p.q_sh;
  const float* o_bh = w.fin_o + bh * s.R * D;
  long long* lim = reinterpret_cast<long long*>(smem);
  uint32_t* Kw = reinterpret_cast<uint32_t*>(smem + 2 * kR);
  uint32_t* Vw = Kw + kKeys * pw;
  uint32_t* Qw = Vw + (kNeedV ? kKeys * pw : 0);
  float* Os = reinterpret_cast<float*>(Qw + kR * pw);
  float* Cs = Os + (kVo ? kR * ow : 0);
  float* head = Cs + kR * kCs;
  float* vn1 = head + G * kKeys;
  float* vn2 = vn1 + kKeys;
  float* rm = vn2 + kKeys;
  float* ril = rm + kR;
  float* ron2 = ril + kR;
  int* head_of = reinterpret_cast<int*>(ron2 + kR);
  const int tid = threadIdx.x, lane = tid % kTile, warp = tid / kTile;
  const int g = lane / 4, t = lane % 4, row_w = (warp / 2) * 32, key_w = (warp % 2) * 32;

  for (int c = warp; c < kKeys; c += kWarps) {
    load_pair_row(c < tn ? K + (p0 + c) * p.k_sn : nullptr, Di, pw, Kw + c * pw);
    if (kNeedV) load_pair_row(c < tn ? V + (p0 + c) * p.v_sn : nullptr, Di, pw, Vw + c * pw);
  }
  const float qinit = query_reduce_init<float>(p.query_reduce);
  for (long long e = tid; e < G * kKeys; e += kThreads) head[e] = qinit;
  __syncthreads();
  if (tid < kKeys) {
    float a1 = 0.0f, a2 = 0.0f;
    if (kNeedV)
      for (int d = 0; d < Di; ++d) {
        const uint32_t pr = Vw[tid * pw + d / 2];
        const float x = d % 2 ? mma::high_of(pr) : mma::low_of(pr);
        a1 += fabsf(x);
        a2 += x * x;
      }
    vn1[tid] = a1;
    vn2[tid] = a2;
  }
  for (long long r0 = 0; r0 < s.R; r0 += kR) {
    row_info(p, s, r0, kR, lim, head_of);
    for (int rr = warp; rr < kR; rr += kWarps) {
      const long long r = r0 + rr;
      const bf16_t* x = r < s.R ? q_bh + (r / s.Wr) * p.q_sh + (s.i0 + r % s.Wr) * p.q_sw : nullptr;
      load_pair_row(x, Di, pw, Qw + rr * pw);
    }
    if (kVo) load_rows(o_bh, s.R, D, r0, kR, ow, Os);
    load_row_stats(s, w, bh, r0, kR, rm, ril, ron2);
    __syncthreads();
    // This warp's 32 rows x 32 keys: z[mt][nt] and vo[mt][nt] are the
    // accumulator fragments of rows row_w + 16 mt, keys key_w + 8 nt.
    float z[2][4][4] = {}, vo[2][4][4] = {};
    for (int k0 = 0; k0 < depth; k0 += 16) {
      const int kw = k0 / 2 + t;
      uint32_t aq[2][4], ao[2][3][4];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const int m = row_w + 16 * mt + g;
#pragma unroll
        for (int i = 0; i < 4; ++i) {  // rows m, m + 8; columns k0 + 2t, k0 + 8 + 2t
          const int row = m + 8 * (i % 2), half = i / 2;
          aq[mt][i] = Qw[row * pw + kw + 4 * half];
          if (kVo) {
            const float2 x = *reinterpret_cast<const float2*>(Os + row * ow + k0 + 2 * t + 8 * half);
            mma::split3(x.x, x.y, ao[mt][0][i], ao[mt][1][i], ao[mt][2][i]);
          }
        }
      }
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int n = key_w + 8 * nt + g;
        const uint32_t bk[2] = {Kw[n * pw + kw], Kw[n * pw + kw + 4]};
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) mma::m16n8k16(z[mt][nt], aq[mt], bk);
        if (kVo) {
          const uint32_t bv[2] = {Vw[n * pw + kw], Vw[n * pw + kw + 4]};
#pragma unroll
          for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int part = 0; part < 3; ++part) mma::m16n8k16(vo[mt][nt], ao[mt][part], bv);
        }
      }
    }
    // The contributions. A lane's fragments cover 4 rows and 8 keys: their
    // statistics are read into registers once (the compiler cannot keep them
    // across the Cs stores, which may alias), and the visibility test is a
    // 32-bit compare of the key's offset in the tile against the row's last
    // visible offset (clamped: tn <= 64).
    float k1[4][2], k2[4][2];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int c = key_w + 8 * nt + 2 * t + j;
        k1[nt][j] = vn1[c], k2[nt][j] = vn2[c];
      }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int rr = row_w + 16 * mt + g + 8 * hr;
        const long long lr = lim[rr] - p0;
        const int last = static_cast<int>(lr < tn - 1 ? lr : tn - 1);  // < 0: no key visible
        const float m = rm[rr], il = ril[rr], on2 = ron2[rr];
        float x[4][2];
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int c = key_w + 8 * nt + 2 * t + j, i = 2 * hr + j;
            x[nt][j] = 0.0f;
            if (c <= last) {
              const float zz = z[mt][nt][i] * p.scale;
              const float a = expf(zz - m) * il;
              x[nt][j] = score_contribution<S, float>(a, zz, k1[nt][j], k2[nt][j], vo[mt][nt][i], on2, 0.0f);
            }
          }
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int j = 0; j < 2; ++j) Cs[rr * kCs + key_w + 8 * nt + 2 * t + j] = x[nt][j];
      }
    __syncthreads();
    reduce_queries<kKeys>(p, s.R - r0 < kR ? static_cast<int>(s.R - r0) : kR, Cs, head_of, head);
    __syncthreads();
  }
  write_scores<kKeys>(p, bh, p0, tn, head);
}

}  // namespace salc
}  // namespace obc

// CUDA saliency (torch-free; kernels in saliency_cuda.cuh and, for the
// tensor cores, saliency_mma_cuda.cuh; score formulas in score_math.h). Two
// passes over K and V per (b, h), as shared/DESIGN.md section 6, R = G * W
// window rows (G for `tova`):
//   1. pass 1, grid (splits, row chunks, B * Hkv), 128 threads (256 in the
//      tensor cores' 128-row blocks):
//      flash-attention forward of a chunk of window rows over one split of
//      the keys: per row the partial max, sum and, for key / joint / loo, the
//      unnormalised O. N is split across blocks (flash-decoding, splits of
//      whole 64-key tiles) so that a small B * Hkv still fills the GPU.
//   2. combine_kernel, grid (R, B * Hkv): merges the splits into the final
//      max, 1 / sum, O and ||O||^2 (O read from p.o instead when the caller
//      gives it: pass 1 then computes only the max and sum).
//   3. pass 2, grid (ceil(N / keys), B * Hkv), heads last to first (the L2
//      still holds the K and V pass 1 read last; Shape::heads_reversed):
//      one block per key tile (64
//      keys; 128 for key / joint on the tensor cores, 256 where sm_90's
//      shared memory holds them, 32 on the FP32 units where the device's
//      shared memory is too small) keeps its K and V tile
//      in shared memory, walks all R rows in chunks (recomputing Z, A, v.o,
//      ||v - o||), reduces over the queries (one owner thread per key column:
//      no atomics) and the group, and writes its scores once.
// Where the products run:
//   - bfloat16 and float16 on sm_80+ (more than 16 rows and D <= 128 for
//     pass 1, more than 8 rows and tiles that fit for pass 2, every score
//     but loo in pass 2): on the tensor cores, mma.sync m16n8k16 with the
//     float operand (P in pass 1, O in pass 2) split into three terms of the
//     input's type, so the results keep float precision
//     (saliency_mma_cuda.cuh);
//   - otherwise on the FP32 units: pass 1 32 rows x 32-key tiles, each
//     thread 8 rows against one key (its P V: 8 rows x one float4 of D);
//     pass 2 two keys per thread, float4 reads from zero-padded shared rows,
//     so that shared-memory bandwidth does not bound the FMAs
//     (bench/results/kernels.md has the SASS counts of both).
// Memory traffic: K read once per row chunk in pass 1 (mostly L2 hits) and
// once in pass 2, V likewise when the score needs it; window queries, O and
// the per-row statistics are re-read per pass-2 key tile from L2; the workspace is
// O(B * Hkv * splits * R * D) floats and the output is written once.
// No [R, N] matrix ever exists in global memory. float32 / float16 /
// bfloat16 inputs, float32 accumulation; float64 is CPU-only.
#include "saliency_cuda.h"

#include <algorithm>
#include <type_traits>

#include "cuda_compat.h"
#include "device_caps_cuda.h"
#include "saliency_cuda.cuh"
#include "saliency_mma_cuda.cuh"

namespace obc {

static_assert(salc::kMmaPass2MaxDepth >= kSaliencyCudaMaxHeadDim, "pass2_mma_kernel unrolls over every head size");

namespace {

using salc::kRows;
using salc::kThreads;
using salc::kTile;

// Enough blocks in pass 1 to fill a large GPU (about 1024), without splits
// shorter than 256 keys or more than kMaxSplits.
salc::Shape make_shape(const SaliencyParams& p) {
  salc::Shape s;
  s.Wr = score_last_query_only(p.score) ? 1 : p.W;
  s.i0 = p.W - s.Wr;
  s.R = saliency_rows(p);
  const long long chunks = (s.R + kRows - 1) / kRows;
  const long long base = p.B * p.Hkv * chunks;
  long long splits = (1024 + base - 1) / (base > 0 ? base : 1);
  const long long max_by_len = (p.N + 255) / 256;
  splits = splits < max_by_len ? splits : max_by_len;
  splits = splits < salc::kMaxSplits ? splits : salc::kMaxSplits;
  splits = splits > 0 ? splits : 1;
  // Whole tiles per split (64 keys: the tensor-core pass 1's tile, two of
  // the FP32 one's); recompute splits so none is empty.
  long long per = (p.N + splits - 1) / splits;
  per = (per + salc::kMmaKeys - 1) / salc::kMmaKeys * salc::kMmaKeys;
  s.keys_per_split = per > 0 ? per : salc::kMmaKeys;
  s.splits = (p.N + s.keys_per_split - 1) / s.keys_per_split;
  if (s.splits < 1) s.splits = 1;
  s.vec16 = p.D % 8 == 0 && mma::rows_aligned16(p.q, p.q_sb, p.q_sh, p.q_sw) &&
            mma::rows_aligned16(p.k, p.k_sb, p.k_sh, p.k_sn) &&
            mma::rows_aligned16(p.v, p.v_sb, p.v_sh, p.v_sn);
  s.heads_reversed = !switched_off("OBCACHE_CUDA_L2_REUSE");
  return s;
}

bool needs_o(Score sc) { return score_needs_vo(sc) || score_needs_dist(sc); }
// Pass 1 accumulates O: the score reads it and the caller did not give it.
bool owns_o(const SaliencyParams& p) { return needs_o(p.score) && p.o == nullptr; }

bool is_16bit(DType t) { return t == DType::BF16 || t == DType::F16; }
// Floats of the workspace for O's 16-bit terms (Work::o_terms): bfloat16 and
// float16 key / joint, whose pass 2 may run on the tensor cores; a row of
// depth 16-bit values is a whole number of 16-byte pieces.
size_t o_terms_floats(const SaliencyParams& p, const salc::Shape& s) {
  if (!is_16bit(p.dtype) || !score_needs_vo(p.score)) return 0;
  const size_t rows = static_cast<size_t>((s.R + salc::kOTermRows - 1) / salc::kOTermRows * salc::kOTermRows);
  return static_cast<size_t>(p.B * p.Hkv) * rows * 3 * static_cast<size_t>(mma::mma_depth(p.D)) / 2;
}

// Work::fin_os, the per-row scale of float16's O terms: one float per row.
size_t o_scales_floats(const SaliencyParams& p, const salc::Shape& s) {
  const bool has = p.dtype == DType::F16 && o_terms_floats(p, s) > 0;
  return has ? static_cast<size_t>(p.B * p.Hkv) * static_cast<size_t>(s.R) : 0;
}

size_t floats_of(const SaliencyParams& p, const salc::Shape& s) {
  const size_t bh = static_cast<size_t>(p.B * p.Hkv), R = static_cast<size_t>(s.R), D = static_cast<size_t>(p.D);
  const size_t S = static_cast<size_t>(s.splits), o = needs_o(p.score) ? 1 : 0, own = owns_o(p) ? 1 : 0;
  return o_terms_floats(p, s) + o_scales_floats(p, s) + bh * S * R * (2 + own * D) + bh * R * (3 + o * D);
}

salc::Work carve(const SaliencyParams& p, const salc::Shape& s, void* ws) {
  const size_t bh = static_cast<size_t>(p.B * p.Hkv), R = static_cast<size_t>(s.R), D = static_cast<size_t>(p.D);
  const size_t S = static_cast<size_t>(s.splits), own = owns_o(p) ? 1 : 0, terms = o_terms_floats(p, s);
  const size_t scales = o_scales_floats(p, s);
  float* f = static_cast<float*>(ws);
  salc::Work w;
  // o_terms first: at the workspace's own alignment, for pass 2's 16-byte copies.
  w.o_terms = terms ? reinterpret_cast<uint16_t*>(f) : nullptr, f += terms;
  w.fin_os = scales ? f : nullptr, f += scales;
  w.fin_o = f, f += (needs_o(p.score) ? 1 : 0) * bh * R * D;
  w.part_m = f, f += bh * S * R;
  w.part_l = f, f += bh * S * R;
  w.part_o = f, f += own * bh * S * R * D;
  w.fin_m = f, f += bh * R;
  w.fin_il = f, f += bh * R;
  w.fin_on2 = f;
  return w;
}

// Pass 1's shared memory with rpw rows per warp.
size_t pass1_smem(const SaliencyParams& p, int rpw) {
  const size_t sq = static_cast<size_t>(salc::row_stride(p.D)), sk = static_cast<size_t>(salc::tile_stride(p.D));
  const int rows_i = salc::kWarps * rpw;
  const size_t rows = static_cast<size_t>(rows_i);
  const size_t o = owns_o(p) ? kTile * static_cast<size_t>(salc::prob_stride(rows_i)) + rows * sq + rows : 0;
  return sizeof(float) * (2 * rows + rows * sq + kTile * sk + o);
}
// Pass 2's with kpl keys per lane (a tile of 32 * kpl keys) and rpw rows per warp.
size_t pass2_smem(const SaliencyParams& p, int kpl, int rpw) {
  const size_t sq = static_cast<size_t>(salc::row_stride(p.D)), sk = static_cast<size_t>(salc::tile_stride(p.D));
  const size_t G = static_cast<size_t>(p.G), o = needs_o(p.score) ? 1 : 0, keys = static_cast<size_t>(kTile * kpl);
  const size_t v = o || score_needs_vn1(p.score) || score_needs_vn2(p.score) ? 1 : 0;
  const size_t rows = static_cast<size_t>(salc::kWarps * rpw);
  return sizeof(float) * (2 * rows + (1 + v) * keys * sk + (1 + o) * rows * sq + rows * (keys + 1) + G * keys +
                          2 * keys + 4 * rows) +
         sizeof(int) * rows;
}

// The tensor-core pass 1's and pass 2's (saliency_mma_cuda.cuh).
size_t pass1_mma_smem(const SaliencyParams& p, bool wide) {
  const size_t pw = static_cast<size_t>(mma::pair_stride(p.D)), rows = salc::mma_pass1_rows(wide);
  const size_t keys = salc::kMmaKeys * salc::mma_pass1_buffers(wide), o = owns_o(p) ? 1 : 0;
  return sizeof(float) * (2 * rows + rows * pw + (1 + o) * keys * pw);
}
size_t pass2_mma_smem(const SaliencyParams& p, bool wide) {
  const size_t pw = static_cast<size_t>(mma::pair_stride(p.D));
  const size_t G = static_cast<size_t>(p.G), o = score_needs_vo(p.score) ? 1 : 0;
  const size_t v = o || score_needs_vn1(p.score) || score_needs_vn2(p.score) ? 1 : 0;
  const size_t keys = salc::mma_pass2_keys(p.score, wide), rows = salc::mma_pass2_rows(p.score);
  const size_t rows_words = std::max((1 + 3 * o) * rows * pw, rows * (keys + 1));  // Q, O's terms | Cs
  return sizeof(float) * (4 * rows + (1 + v) * keys * pw + rows_words + G * keys + 2 * keys + 4 * rows) +
         sizeof(int) * rows;
}

// What every launch needs: the shape, the workspace, the stream, the
// device's shared-memory opt-in limit and whether it has bf16 / f16 tensor
// cores.
struct Launch {
  salc::Shape s;
  salc::Work w;
  cudaStream_t stream;
  size_t limit, fits;  // opt-in limit; what a block may use (at least 48 KiB)
  bool mma;            // bf16 / f16 mma.sync (sm_80+)
  unsigned bh;
  int sms;             // streaming multiprocessors
};

// Whether a pass takes its wide blocks (8 warps, twice the rows or keys of
// the 4-warp ones, one per SM; each tile crosses the L2 once for both
// halves) given how many 4-warp blocks it would launch: where those
// outnumber the SMs, some SM would run two of them, as long as one wide
// block; where they do not, each has an SM of its own and ends sooner.
bool wide_pays(long long narrow_blocks, const Launch& L) { return narrow_blocks > L.sms; }

// Pass 1. bfloat16 and float16 on sm_80+: on the tensor cores for head
// sizes up to 128 (O in registers) and more than 16 rows (fewer leave most
// of a warp's 16-row tile empty); 52 KiB at D = 128 fit every GPU. More than
// 64 rows go wide (128-row blocks, 8 warps, double-buffered tiles: K and V
// read once per split instead of once per 64 rows) where those tiles fit
// (with O, 103 KiB at D = 128: sm_80, sm_90, sm_100; 91 KiB at D = 112 and
// 69 KiB without O: every sm_80+ GPU) and the 64-row blocks would
// outnumber the SMs (wide_pays); OBCACHE_CUDA_PASS1_WIDE=0 keeps 64 rows.
// Otherwise on the FP32 units with the largest tiles the device's shared
// memory holds: 8 rows per warp everywhere on sm_90 and up to D = 128 on
// sm_80; 4 for the largest head sizes on sm_80 / sm_86 / sm_89
// (bench/results/kernels.md has the sizes), and for few rows (`tova`:
// R = G), which compute fewer padding rows.
template <typename E, bool kNeedO, bool kWide>
cudaError_t launch_pass1_mma(const SaliencyParams& p, const Launch& L) {
  auto* k1 = owns_o(p) ? &salc::pass1_mma_kernel<E, kNeedO, kWide> : &salc::pass1_mma_kernel<E, false, kWide>;
  const size_t sm1 = pass1_mma_smem(p, kWide);
  const cudaError_t err = allow_smem(k1, sm1, L.limit);
  if (err != cudaSuccess) return err;
  constexpr int kR = salc::mma_pass1_rows(kWide);
  const long long chunks = (L.s.R + kR - 1) / kR;
  OBC_LAUNCH(k1, dim3(static_cast<unsigned>(L.s.splits), static_cast<unsigned>(chunks), L.bh),
             dim3(salc::mma_pass1_threads(kWide)), sm1, L.stream, p, L.s, L.w);
  return cudaGetLastError();
}
template <typename E, Score S>
cudaError_t launch_pass1(const SaliencyParams& p, const Launch& L) {
  constexpr bool kNeedO = score_needs_vo(S) || score_needs_dist(S);
  const salc::Shape& s = L.s;
  cudaError_t err;
  if constexpr (mma::kOperandType<E>) {
    if (L.mma && s.R > 16 && p.D <= salc::kMmaPass1MaxDepth && pass1_mma_smem(p, false) <= L.fits) {
      const long long narrow_blocks = s.splits * ((s.R + salc::kMmaRows - 1) / salc::kMmaRows) * L.bh;
      if (s.R > salc::kMmaRows && pass1_mma_smem(p, true) <= L.fits && wide_pays(narrow_blocks, L) &&
          !switched_off("OBCACHE_CUDA_PASS1_WIDE"))
        return launch_pass1_mma<E, kNeedO, true>(p, L);
      return launch_pass1_mma<E, kNeedO, false>(p, L);
    }
  }
  const int rpw1 = s.R > 16 && pass1_smem(p, 8) <= L.fits ? 8 : 4;
  const long long chunks = (s.R + salc::kWarps * rpw1 - 1) / (salc::kWarps * rpw1);
  if (chunks > 65535) return cudaErrorInvalidValue;
  auto* k1 = owns_o(p) ? (rpw1 == 8 ? &salc::pass1_kernel<E, kNeedO, 8> : &salc::pass1_kernel<E, kNeedO, 4>)
                       : (rpw1 == 8 ? &salc::pass1_kernel<E, false, 8> : &salc::pass1_kernel<E, false, 4>);
  const size_t sm1 = pass1_smem(p, rpw1);
  if ((err = allow_smem(k1, sm1, L.limit)) != cudaSuccess) return err;
  OBC_LAUNCH(k1, dim3(static_cast<unsigned>(s.splits), static_cast<unsigned>(chunks), L.bh), dim3(kThreads), sm1,
             L.stream, p, s, L.w);
  return cudaGetLastError();
}

// Pass 2. bfloat16 and float16 on sm_80+, every score but loo: the products
// on the tensor cores where its tiles fit (joint, G = 4: every D up to 256 on
// sm_90, up to 128 on sm_80, up to 112 on sm_86 / sm_89, whose 99 KiB are
// 7 KiB short of the 106 KiB at 128) and there are more than 8 rows.
// Key and joint go wide (256 keys, 8 warps) where those tiles fit (D = 128:
// 181 KiB, sm_90) and the 128-key blocks would outnumber the SMs
// (wide_pays); OBCACHE_CUDA_PASS2_WIDE=0 keeps 128 keys.
// Otherwise on the FP32 units: two keys per lane and 8 rows per warp where
// they fit, else one key, else 2 rows.
template <typename E, Score S, bool kWide>
cudaError_t launch_pass2_mma(const SaliencyParams& p, const Launch& L, size_t smem) {
  auto* km = &salc::pass2_mma_kernel<E, S, kWide>;
  const cudaError_t err = allow_smem(km, smem, L.limit);
  if (err != cudaSuccess) return err;
  constexpr int kKeys = salc::mma_pass2_keys(S, kWide);
  const long long tiles = (p.N + kKeys - 1) / kKeys;
  OBC_LAUNCH(km, dim3(static_cast<unsigned>(tiles), L.bh), dim3(salc::mma_pass2_threads(S, kWide)), smem, L.stream,
             p, L.s, L.w);
  return cudaGetLastError();
}
template <typename E, Score S>
cudaError_t launch_pass2(const SaliencyParams& p, const Launch& L) {
  const salc::Shape& s = L.s;
  cudaError_t err;
  if constexpr (mma::kOperandType<E> && salc::mma_pass2_supports<S>()) {
    const size_t smm = pass2_mma_smem(p, false);
    if (L.mma && s.R > 8 && smm <= L.fits && (!score_needs_vo(S) || L.w.o_terms)) {
      if constexpr (score_needs_vo(S)) {
        const size_t smw = pass2_mma_smem(p, true);
        constexpr int kKeys = salc::mma_pass2_keys(S, false);
        const long long narrow_blocks = (p.N + kKeys - 1) / kKeys * L.bh;
        if (smw <= L.fits && wide_pays(narrow_blocks, L) && !switched_off("OBCACHE_CUDA_PASS2_WIDE"))
          return launch_pass2_mma<E, S, true>(p, L, smw);
      }
      return launch_pass2_mma<E, S, false>(p, L, smm);
    }
  }
  int kpl = s.R > 8 ? 2 : 1, rpw2 = s.R > 8 ? 8 : 2;
  if (pass2_smem(p, kpl, rpw2) > L.fits) kpl = 1;
  if (pass2_smem(p, kpl, rpw2) > L.fits) rpw2 = 2;
  auto* k2 = kpl == 2 ? &salc::pass2_kernel<E, S, 2, 8>
                      : (rpw2 == 8 ? &salc::pass2_kernel<E, S, 1, 8> : &salc::pass2_kernel<E, S, 1, 2>);
  const size_t sm2 = pass2_smem(p, kpl, rpw2);
  if ((err = allow_smem(k2, sm2, L.limit)) != cudaSuccess) return err;
  const long long tiles = (p.N + kTile * kpl - 1) / (kTile * kpl);
  OBC_LAUNCH(k2, dim3(static_cast<unsigned>(tiles), L.bh), dim3(kThreads), sm2, L.stream, p, s, L.w);
  return cudaGetLastError();
}

template <typename E, Score S>
cudaError_t run(const SaliencyParams& p, void* workspace, cudaStream_t stream) {
  constexpr bool kNeedO = score_needs_vo(S) || score_needs_dist(S);
  Launch L;
  L.s = make_shape(p);
  L.w = carve(p, L.s, workspace);
  L.stream = stream;
  if (p.B * p.Hkv > 65535 || L.s.R > kSaliencyCudaMaxRows || p.D > kSaliencyCudaMaxHeadDim)
    return cudaErrorInvalidValue;
  L.bh = static_cast<unsigned>(p.B * p.Hkv);
  cudaError_t err = smem_optin_limit(&L.limit);
  if (err != cudaSuccess) return err;
  L.fits = std::max(L.limit, size_t{48 * 1024});
  L.mma = false;
  if (mma::kOperandType<E> && (err = has_tensor_cores(&L.mma)) != cudaSuccess) return err;
  if ((err = device_attribute(cudaDevAttrMultiProcessorCount, &L.sms)) != cudaSuccess) return err;

  if ((err = launch_pass1<E, S>(p, L)) != cudaSuccess) return err;
  auto* kc = &salc::combine_kernel<E, kNeedO>;
  OBC_LAUNCH(kc, dim3(static_cast<unsigned>(L.s.R), L.bh), dim3(kThreads), 0, stream, p, L.s, L.w);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  return launch_pass2<E, S>(p, L);
}

template <typename E>
cudaError_t run_score(const SaliencyParams& p, void* ws, cudaStream_t stream) {
  switch (p.score) {
    case Score::Attn: return run<E, Score::Attn>(p, ws, stream);
    case Score::Tova: return run<E, Score::Tova>(p, ws, stream);
    case Score::Vatp: return run<E, Score::Vatp>(p, ws, stream);
    case Score::Value: return run<E, Score::Value>(p, ws, stream);
    case Score::Key: return run<E, Score::Key>(p, ws, stream);
    case Score::Joint: return run<E, Score::Joint>(p, ws, stream);
    case Score::Loo: return run<E, Score::Loo>(p, ws, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

size_t saliency_cuda_workspace_bytes(const SaliencyParams& p) {
  if (p.N <= 0 || p.W <= 0 || p.B * p.Hkv <= 0) return 0;
  return sizeof(float) * floats_of(p, make_shape(p));
}

int saliency_cuda(const SaliencyParams& p, void* workspace, void* stream) {
  if (p.N <= 0 || p.W <= 0 || p.B * p.Hkv <= 0) return cudaSuccess;  // nothing to write
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::F32: return run_score<float>(p, workspace, st);
    case DType::F16: return run_score<half_t>(p, workspace, st);
    case DType::BF16: return run_score<bf16_t>(p, workspace, st);
    case DType::F64: return cudaErrorInvalidValue;  // CPU-only
  }
  return cudaErrorInvalidValue;
}

}  // namespace obc

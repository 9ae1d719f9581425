// The CPU saliency entry points (saliency_cpu.h): each call hands one job to
// the kernel compiled for this CPU's ISA (saliency_cpu_kernel.h), picked
// once (OBCACHE_CPU_VARIANT or the CPU's features; cpu_tiles.h).
#include "saliency_cpu.h"

#include "saliency_cpu_kernel.h"

namespace obc {
namespace {

#ifndef OBC_X86_VARIANTS
const SaliencyRunFn saliency_run_avx2 = saliency_run_baseline, saliency_run_avx512 = saliency_run_baseline,
                    saliency_run_avx512bf16 = saliency_run_baseline, saliency_run_amx = saliency_run_baseline,
                    saliency_run_amx_emulated = saliency_run_baseline;
#endif

void run(const SaliencyParams& p, const SaliencyJob& j, void* ws) {
  static const SaliencyRunFn fn =
      pick_cpu_variant<SaliencyRunFn>(saliency_run_baseline, saliency_run_avx2, saliency_run_avx512,
                                      saliency_run_avx512bf16, saliency_run_amx_emulated, saliency_run_amx);
  fn(p, j, ws);
}

size_t elem_bytes(const SaliencyParams& p) { return p.dtype == DType::F64 ? 8 : 4; }

}  // namespace

size_t saliency_cpu_workspace_bytes(const SaliencyParams& p) { return make_layout(p, false).total; }

void saliency_cpu(const SaliencyParams& p, int64_t bh_begin, int64_t bh_end, void* workspace) {
  if (p.N <= 0 || p.W <= 0) return;
  run(p, SaliencyJob{SaliencyJob::Rows, bh_begin, bh_end, 0, 0, nullptr, 0, nullptr}, workspace);
}

size_t saliency_cpu_split_workspace_bytes(const SaliencyParams& p) { return make_layout(p, true).total; }

size_t saliency_cpu_split_state_bytes(const SaliencyParams& p) {
  const size_t R = static_cast<size_t>(make_layout(p, true).R);
  return R * (2 + static_cast<size_t>(p.D)) * elem_bytes(p);
}

size_t saliency_cpu_split_logit_bytes(const SaliencyParams& p) {
  const size_t R = static_cast<size_t>(make_layout(p, true).R);
  const size_t padded_n = (static_cast<size_t>(std::max<int64_t>(p.N, 0)) + kTile - 1) / kTile * kTile;
  return R * padded_n * elem_bytes(p);
}

void saliency_cpu_split_pass1(const SaliencyParams& p, int64_t bh, int64_t s, void* workspace, void* state,
                              void* logits) {
  if (p.N <= 0 || p.W <= 0) return;
  run(p, SaliencyJob{SaliencyJob::SplitPass1, bh, bh + 1, s, s + 1, state, 0, logits}, workspace);
}

void saliency_cpu_split_pass2(const SaliencyParams& p, int64_t bh, int64_t s0, int64_t s1, const void* states,
                              void* workspace, const void* logits) {
  if (p.N <= 0 || p.W <= 0 || s1 <= s0) return;
  const int64_t stride = static_cast<int64_t>(saliency_cpu_split_state_bytes(p) / elem_bytes(p));
  run(p,
      SaliencyJob{SaliencyJob::SplitPass2, bh, bh + 1, s0, s1, const_cast<void*>(states), stride,
                  const_cast<void*>(logits)},
      workspace);
}

}  // namespace obc

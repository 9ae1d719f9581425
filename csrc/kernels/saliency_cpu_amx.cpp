// The saliency kernel with Q K^T, P V and v.o on AMX's tiles (cpu_amx.h),
// and the same kernel with the tile instructions emulated, for the tests.
#include "saliency_cpu_kernel.h"

namespace obc {
#ifdef OBC_X86_VARIANTS
namespace {

bool amx_runs(const SaliencyParams& p) { return amx_applies(p.dtype, p.D) && p.G * window_queries(p) >= kAmxRows; }

}  // namespace

// Where amx_applies and a row holds at least 32 window queries; the rest as
// saliency_run_avx512, since the CPUs with AMX run the pair path at half the
// float rate (cpu_tiles.h).
OBC_AMX_FN void saliency_run_amx(const SaliencyParams& p, const SaliencyJob& j, void* ws) {
  if (!amx_runs(p)) return saliency_run_avx512(p, j, ws);
  AmxTiles tiles;
  run_job<bf16_t, kRBAvx512, kAvx512W, true, AmxHw>(p, j, ws);
}

// saliency_run_amx with the tile instructions emulated (AmxEmu): runs on any
// CPU with AVX512-BF16.
__attribute__((target("arch=x86-64-v4,avx512bf16"))) void saliency_run_amx_emulated(const SaliencyParams& p,
                                                                                      const SaliencyJob& j,
                                                                                      void* ws) {
  if (!amx_runs(p)) return saliency_run_avx512(p, j, ws);
  run_job<bf16_t, kRBAvx512, kAvx512W, true, AmxEmu>(p, j, ws);
}

#endif
}  // namespace obc

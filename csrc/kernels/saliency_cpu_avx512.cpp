// The saliency kernel for AVX-512 (x86-64-v4; 8 x 32 intrinsic blocks), and
// with AVX512-BF16 its pair path for bfloat16 Q K^T (cpu_tiles.h).
#include "saliency_cpu_kernel.h"

namespace obc {
#ifdef OBC_X86_VARIANTS

__attribute__((target("arch=x86-64-v4"))) void saliency_run_avx512(const SaliencyParams& p, const SaliencyJob& j,
                                                                     void* ws) {
  run_dtype<kRBAvx512, kAvx512W>(p, j, ws);
}

// The pair path where pairs_apply; the rest as saliency_run_avx512.
__attribute__((target("arch=x86-64-v4,avx512bf16"))) void saliency_run_avx512bf16(const SaliencyParams& p,
                                                                                    const SaliencyJob& j, void* ws) {
  if (!pairs_apply(p.dtype, p.D)) return saliency_run_avx512(p, j, ws);
  run_job<bf16_t, kRBAvx512, kAvx512W, true>(p, j, ws);
}

#endif
}  // namespace obc

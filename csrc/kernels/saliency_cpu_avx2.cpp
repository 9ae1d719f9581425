// The saliency kernel for AVX2 + FMA (x86-64-v3): 6 x 16 intrinsic blocks.
#include "saliency_cpu_kernel.h"

namespace obc {
#ifdef OBC_X86_VARIANTS

__attribute__((target("arch=x86-64-v3"))) void saliency_run_avx2(const SaliencyParams& p, const SaliencyJob& j,
                                                                   void* ws) {
  run_dtype<kRBAvx2, kAvx2W>(p, j, ws);
}

#endif
}  // namespace obc

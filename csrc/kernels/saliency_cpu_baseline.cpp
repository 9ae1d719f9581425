// The saliency kernel for any CPU: the generic loops, 4 x 32 blocks.
#include "saliency_cpu_kernel.h"

namespace obc {

void saliency_run_baseline(const SaliencyParams& p, const SaliencyJob& j, void* ws) {
  run_dtype<kRBWide, kNoVec>(p, j, ws);
}

}  // namespace obc

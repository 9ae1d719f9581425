// ckv_bounds, compiled per ISA as the saliency kernel is (cpu_tiles.h): in
// the baseline's SSE2 the float64 norms took ~17% of the CriticalKV op on
// SmolLM2 (~6 ms of a 2048-token prefill on one thread), 2 doubles a vector.
#include "criticalkv_bounds_cpu.h"

#include <algorithm>
#include <cmath>

#include "cpu_tiles.h"

namespace obc {
namespace {

template <typename E>
OBC_ALWAYS_INLINE bool bounds(const E* v, int64_t n, int64_t D, const float* base, float nb, float eps, float slack,
                              float* hi, float* lo) {
  constexpr int kLanes = 8;
  bool ok = true;
  for (int64_t t = 0; t < n; ++t) {
    const E* x = v + t * D;
    double acc[kLanes] = {};
    int64_t d = 0;
    for (; d + kLanes <= D; d += kLanes)
      for (int k = 0; k < kLanes; ++k) {
        const double y = static_cast<double>(Elem<E>::load(x[d + k]));
        acc[k] += y * y;
      }
    for (; d < D; ++d) {
      const double y = static_cast<double>(Elem<E>::load(x[d]));
      acc[0] += y * y;
    }
    double s = 0.0;
    for (int k = 0; k < kLanes; ++k) s += acc[k];
    const float f = base[t] + eps, b = nb * static_cast<float>(std::sqrt(s)) * (1 + slack);
    hi[t] = std::max(f, 0.0f) * b, lo[t] = std::min(f, 0.0f) * b;
    ok &= std::isfinite(hi[t]) & std::isfinite(lo[t]);
  }
  return ok;
}

OBC_ALWAYS_INLINE bool bounds_of(DType dt, const void* v, int64_t n, int64_t D, const float* base, float nb, float eps,
                                 float slack, float* hi, float* lo) {
  switch (dt) {
    case DType::F32: return bounds(static_cast<const float*>(v), n, D, base, nb, eps, slack, hi, lo);
    case DType::F64: return bounds(static_cast<const double*>(v), n, D, base, nb, eps, slack, hi, lo);
    case DType::F16: return bounds(static_cast<const half_t*>(v), n, D, base, nb, eps, slack, hi, lo);
    case DType::BF16: return bounds(static_cast<const bf16_t*>(v), n, D, base, nb, eps, slack, hi, lo);
  }
  return false;
}

using Fn = bool (*)(DType, const void*, int64_t, int64_t, const float*, float, float, float, float*, float*);
bool run_baseline(DType dt, const void* v, int64_t n, int64_t D, const float* base, float nb, float eps, float slack,
                  float* hi, float* lo) {
  return bounds_of(dt, v, n, D, base, nb, eps, slack, hi, lo);
}
#ifdef OBC_X86_VARIANTS
__attribute__((target("arch=x86-64-v4"))) bool run_avx512(DType dt, const void* v, int64_t n, int64_t D,
                                                          const float* base, float nb, float eps, float slack,
                                                          float* hi, float* lo) {
  return bounds_of(dt, v, n, D, base, nb, eps, slack, hi, lo);
}
__attribute__((target("arch=x86-64-v3"))) bool run_avx2(DType dt, const void* v, int64_t n, int64_t D,
                                                        const float* base, float nb, float eps, float slack, float* hi,
                                                        float* lo) {
  return bounds_of(dt, v, n, D, base, nb, eps, slack, hi, lo);
}
#else
const Fn run_avx512 = run_baseline, run_avx2 = run_baseline;
#endif

}  // namespace

bool ckv_bounds(DType dt, const void* v, int64_t n, int64_t D, const float* base, float norm_bound, float eps,
                float slack, float* hi, float* lo) {
  static const Fn fn = pick_cpu_variant<Fn>(run_baseline, run_avx2, run_avx512);
  return fn(dt, v, n, D, base, norm_bound, eps, slack, hi, lo);
}

}  // namespace obc

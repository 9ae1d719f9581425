// A naive double-precision projected_value_norm for the C++ tests: the full
// projection row v_n W_o^j of length hidden, then its norm.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "projected_value_params.h"

namespace naive {

// v: [B, Hkv, N, D] contiguous apart from a row stride v_sn (v_sh = N * v_sn,
// v_sb = Hkv * v_sh), wo: [hidden, Hq * D] with row stride wo_so; values as
// double. Returns [B, Hq, N].
inline std::vector<double> projected_value_norm(const std::vector<double>& v, const std::vector<double>& wo,
                                                const obc::ProjectedValueParams& p) {
  const int64_t Hq = p.Hkv * p.G;
  std::vector<double> out(p.B * Hq * p.N);
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t j = 0; j < Hq; ++j)
      for (int64_t n = 0; n < p.N; ++n) {
        const double* vr = v.data() + b * p.v_sb + (j / p.G) * p.v_sh + n * p.v_sn;
        double s = 0;
        for (int64_t o = 0; o < p.hidden; ++o) {
          double x = 0;
          for (int64_t d = 0; d < p.D; ++d) x += vr[d] * wo[o * p.wo_so + j * p.D + d];
          s += p.p == 1 ? std::fabs(x) : x * x;
        }
        out[(b * Hq + j) * p.N + n] = p.p == 1 ? s : std::sqrt(s);
      }
  return out;
}

}  // namespace naive

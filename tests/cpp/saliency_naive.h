// A naive double-precision statement of obcache.reference.saliency for the
// C++ tests: one (b, h, g, i) at a time, the full softmax row, the formulas
// of shared/DESIGN.md section 3 written out again (not via score_math.h).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "common.h"
#include "saliency_params.h"

namespace naive {

// Element data for a test tensor: values on a grid (k / 64, times a power of
// two) that float16 and bfloat16 hold exactly, so every dtype sees the same
// numbers.
inline uint16_t float_to_half_bits_exact(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  if ((u & 0x7fffffffu) == 0) return static_cast<uint16_t>(sign);
  const float mag = std::fabs(f);
  if (mag < 6.103515625e-05f)  // below 2^-14: a subnormal, a whole number of 2^-24 steps
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(mag * 16777216.0f));
  const int exp = static_cast<int>((u >> 23) & 0xff) - 127 + 15;
  return static_cast<uint16_t>(sign | (static_cast<uint32_t>(exp) << 10) | ((u >> 13) & 0x3ffu));
}
inline uint16_t float_to_bf16_bits_exact(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);
}

template <typename E>
E from_float(float f);
template <>
inline float from_float<float>(float f) {
  return f;
}
template <>
inline double from_float<double>(float f) {
  return f;
}
template <>
inline obc::half_t from_float<obc::half_t>(float f) {
  return obc::half_t{float_to_half_bits_exact(f)};
}
template <>
inline obc::bf16_t from_float<obc::bf16_t>(float f) {
  return obc::bf16_t{float_to_bf16_bits_exact(f)};
}

// Random grid values in [-2, 2] (multiples of 1/64).
inline std::vector<float> grid_values(size_t n, std::mt19937& rng, int range = 128) {
  std::uniform_int_distribution<int> u(-range, range);
  std::vector<float> x(n);
  for (auto& e : x) e = static_cast<float>(u(rng)) / 64.0f;
  return x;
}

// Strided tensor values: x(b, h, n, d) = base[b * sb + h * sh + n * sn + d].
struct View {
  const float* base;
  int64_t sb, sh, sn;
  double at(int64_t b, int64_t h, int64_t n, int64_t d) const { return base[b * sb + h * sh + n * sn + d]; }
};

// out [B, Hkv, N] in double.
inline std::vector<double> saliency(const obc::SaliencyParams& p, const View& K, const View& V, const View& Q,
                                    double scale) {
  const int64_t B = p.B, H = p.Hkv, G = p.G, W = p.W, N = p.N, D = p.D;
  std::vector<double> out(B * H * N);
  std::vector<double> z(N), a(N), o(D), head(N);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      std::vector<double> grp(N, p.group_reduce == obc::GroupReduce::Max ? -INFINITY : 0.0);
      for (int64_t g = 0; g < G; ++g) {
        const int64_t qh = h * G + g;
        const bool tova = p.score == obc::Score::Tova;
        std::fill(head.begin(), head.end(), p.query_reduce == obc::QueryReduce::Max && !tova ? -INFINITY : 0.0);
        for (int64_t i = tova ? W - 1 : 0; i < W; ++i) {
          const int64_t pos = N - W + i;
          double mx = -INFINITY;
          for (int64_t n = 0; n < N; ++n) {
            double s = 0;
            for (int64_t d = 0; d < D; ++d) s += Q.at(b, qh, i, d) * K.at(b, h, n, d);
            z[n] = scale * s;
            if (!p.causal || n <= pos) mx = std::max(mx, z[n]);
          }
          double sum = 0;
          for (int64_t n = 0; n < N; ++n) {
            a[n] = (!p.causal || n <= pos) ? std::exp(z[n] - mx) : 0.0;
            sum += a[n];
          }
          std::fill(o.begin(), o.end(), 0.0);
          for (int64_t n = 0; n < N; ++n) {
            a[n] /= sum;
            for (int64_t d = 0; d < D; ++d) o[d] += a[n] * V.at(b, h, n, d);
          }
          for (int64_t n = 0; n < N; ++n) {
            double c = 0;
            if (!p.causal || n <= pos) {
              double l1 = 0, l2 = 0, vo = 0, diff2 = 0;
              for (int64_t d = 0; d < D; ++d) {
                const double x = V.at(b, h, n, d);
                l1 += std::fabs(x), l2 += x * x, vo += x * o[d], diff2 += (x - o[d]) * (x - o[d]);
              }
              const double A = a[n], Z = z[n];
              switch (p.score) {
                case obc::Score::Attn:
                case obc::Score::Tova: c = A; break;
                case obc::Score::Vatp: c = A * l1; break;
                case obc::Score::Value: c = A * A * l2; break;
                case obc::Score::Key: c = A * Z * A * Z * diff2; break;
                case obc::Score::Joint: c = A * A * l2 + A * Z * A * Z * diff2 + 2 * A * A * Z * (l2 - vo); break;
                case obc::Score::Loo: c = A / std::max(1.0 - A, 1e-4) * std::sqrt(diff2); break;
              }
            }
            if (p.query_reduce == obc::QueryReduce::Max && !tova) head[n] = std::max(head[n], c);
            else head[n] += c;
          }
        }
        for (int64_t n = 0; n < N; ++n) {
          if (p.group_reduce == obc::GroupReduce::Max) grp[n] = std::max(grp[n], head[n]);
          else grp[n] += head[n];
        }
      }
      for (int64_t n = 0; n < N; ++n)
        out[(b * H + h) * N + n] = p.group_reduce == obc::GroupReduce::Mean ? grp[n] / G : grp[n];
    }
  return out;
}

}  // namespace naive

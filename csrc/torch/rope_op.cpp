// torch.ops.obcache._rope_rotate_half (CPU): the rotate-half rotary embedding
// of transformers' Llama-family attention, q * cos + rotate_half(q) * sin,
// in one call. obcache.hf recomputes each evicting layer's window queries
// from q_proj's output; the model's apply_rotary_pos_emb spends ~30 small
// ATen calls on them, ~0.3 ms a layer inside a running prefill (cold
// dispatch), as much as a tenth of what evicting the layer costs on
// SmolLM2-135M. Values: each of the three operations rounds to q's dtype as
// ATen's does (a product in float then rounded for 16-bit types; the sum of
// the two rounded products), so the result is the model's to the bit
// (obcache/hf/queries.py checks that once per rope function, dtype and head
// dim).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "torch/checks.h"

namespace obcache {

namespace {

// out[d] = x[d] * c[d] + rot[d] * s[d], rot = (-x[D/2:], x[:D/2]), with every
// product and the sum rounded to T. The products go to separate arrays and
// are added in a loop of their own: in one expression the compiler may
// contract a product and the sum into an FMA (one rounding instead of two)
// where the target has FMA.
template <typename T>
void rotate_row(const T* x, int64_t sx, const T* c, int64_t sc, const T* s, int64_t ss, int64_t D, T* out,
                T* rotated) {
  const int64_t half = D / 2;
  for (int64_t d = 0; d < D; ++d) out[d] = x[d * sx] * c[d * sc];
  for (int64_t d = 0; d < half; ++d) rotated[d] = -x[(d + half) * sx] * s[d * ss];
  for (int64_t d = half; d < D; ++d) rotated[d] = x[(d - half) * sx] * s[d * ss];
  for (int64_t d = 0; d < D; ++d) out[d] = out[d] + rotated[d];
}

at::Tensor rope_rotate_half_impl(const at::Tensor& q, const at::Tensor& cos, const at::Tensor& sin) {
  check_dims(q, "q", 4, "[B, H, T, D]");
  check_dims(cos, "cos", 3, "[B or 1, T, D]");
  TORCH_CHECK(cos.sizes() == sin.sizes(), "cos and sin must have the same shape, got ", cos.sizes(), " and ",
              sin.sizes());
  TORCH_CHECK(q.is_cpu() && cos.is_cpu() && sin.is_cpu(), "_rope_rotate_half runs on CPU tensors, got q on ",
              q.device(), ", cos on ", cos.device(), ", sin on ", sin.device());
  check_same_dtype(q, "q", cos, "cos");
  check_same_dtype(q, "q", sin, "sin");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  TORCH_CHECK(D % 2 == 0, "q's head dim D must be even, got shape ", q.sizes());
  TORCH_CHECK((cos.size(0) == B || cos.size(0) == 1) && cos.size(1) == T && cos.size(2) == D,
              "cos must have shape [", B, " or 1, ", T, ", ", D, "] to match q ", q.sizes(), ", got ", cos.sizes());
  at::Tensor out = at::empty({B, H, T, D}, q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "_rope_rotate_half", [&] {
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* cp = cos.data_ptr<scalar_t>();
    const scalar_t* sp = sin.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    // Rows (b, h, t) over the threads in ATen's grain of elements: a small
    // model's window runs on one, every prompt position (H2O-style rows) on all.
    const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(D, 1));
    at::parallel_for(0, B * H * T, grain, [&](int64_t i0, int64_t i1) {
      std::vector<scalar_t> rotated(D);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / (H * T), h = i / T % H, t = i % T, bc = cos.size(0) == 1 ? 0 : b;
        rotate_row(qp + b * q.stride(0) + h * q.stride(1) + t * q.stride(2), q.stride(3),
                   cp + bc * cos.stride(0) + t * cos.stride(1), cos.stride(2),
                   sp + bc * sin.stride(0) + t * sin.stride(1), sin.stride(2), D, op + i * D, rotated.data());
      }
    });
  });
  return out;
}

}  // namespace

}  // namespace obcache

TORCH_LIBRARY_FRAGMENT(obcache, m) { m.def("_rope_rotate_half(Tensor q, Tensor cos, Tensor sin) -> Tensor"); }

TORCH_LIBRARY_IMPL(obcache, CPU, m) { m.impl("_rope_rotate_half", &obcache::rope_rotate_half_impl); }

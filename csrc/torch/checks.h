// Argument checks shared by the op bindings. Every message names the argument
// and the value seen, e.g. "q_window must have 4 dims [B, H_q, W, D], got 3".
// Bindings run all checks before any kernel touches k or v.
#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>

#include <string>

#include "kernels/common.h"

namespace obcache {

inline void check_dims(const at::Tensor& t, const char* name, int64_t dims, const char* layout) {
  TORCH_CHECK(t.dim() == dims, name, " must have ", dims, " dims ", layout, ", got ", t.dim(),
              " (shape ", t.sizes(), ")");
}

// Last dim contiguous; other strides arbitrary (narrowed cache views).
inline void check_last_dim_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, name,
              " must have a contiguous last dim (stride 1), got strides ", t.strides());
}

inline obc::DType to_obc_dtype(const at::Tensor& t, const char* name, bool allow_f64) {
  switch (t.scalar_type()) {
    case at::kFloat: return obc::DType::F32;
    case at::kHalf: return obc::DType::F16;
    case at::kBFloat16: return obc::DType::BF16;
    case at::kDouble:
      if (allow_f64) return obc::DType::F64;
      break;
    default: break;
  }
  TORCH_CHECK(false, name, " must be float32, float16 or bfloat16", allow_f64 ? " (or float64)" : "",
              ", got ", t.scalar_type());
}

inline void check_same_dtype(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), an, " and ", bn, " must have the same dtype, got ",
              a.scalar_type(), " and ", b.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn) {
  TORCH_CHECK(a.device() == b.device(), an, " and ", bn, " must be on the same device, got ", a.device(),
              " and ", b.device());
}

}  // namespace obcache

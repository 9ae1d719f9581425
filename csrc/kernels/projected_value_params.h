// Plain description of one projected_value_norm call, filled by the torch
// binding (or a test) and read by the CPU kernel and the CUDA kernel alike.
// Strides are in elements; the last dims of v and wo are contiguous.
#pragma once

#include <cstdint>

#include "common.h"

namespace obc {

struct ProjectedValueParams {
  const void* v = nullptr;   // [B, Hkv, N, D]
  const void* wo = nullptr;  // [hidden, Hq * D], nn.Linear's o_proj weight; Hq = Hkv * G
  void* out = nullptr;       // contiguous [B, Hq, N]; float32, or float64 for F64 inputs
  DType dtype = DType::F32;  // of v and wo (the same)
  int64_t B = 0, Hkv = 0, G = 1, N = 0, D = 0, hidden = 0;
  int64_t v_sb = 0, v_sh = 0, v_sn = 0;
  int64_t wo_so = 0;  // row stride of wo: wo[o, j * D + d] sits at o * wo_so + j * D + d
  int p = 1;          // the norm: 1 or 2
};

}  // namespace obc

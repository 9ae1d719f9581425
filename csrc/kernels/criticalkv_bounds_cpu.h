// Step 1 of the pruned CriticalKV stage 2 on CPU (obcache/policies/
// criticalkv_pruned.py, _bounds): per token, bounds hi >= critical score
// >= lo from ||v|| alone, before any v W_o product.
#pragma once

#include <cstdint>

#include "common.h"

namespace obc {

// Tokens [0, n) of one (batch, KV head) row, v [n, D] of type dt
// (contiguous): f = base[t] + eps, b = norm_bound * ||v_t|| * (1 + slack),
// hi[t] = max(f, 0) * b, lo[t] = min(f, 0) * b, in float32 with ||v_t||
// summed in float64 over 8 lanes and rounded to float32 once, as the torch
// form's v.double().norm(dim=-1).float() (the order of float64 additions is
// below float32's rounding). Returns whether every bound is finite.
bool ckv_bounds(DType dt, const void* v, int64_t n, int64_t D, const float* base, float norm_bound, float eps,
                float slack, float* hi, float* lo);

}  // namespace obc

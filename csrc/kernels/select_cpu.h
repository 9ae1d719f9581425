// CPU kernels of `select` and `select_adaptive` (torch-free; see select_params.h).
#pragma once

#include <cstdint>

#include "select_params.h"

namespace obc {

// Rows [row_begin, row_end) of the flattened (b, h) grid. Thread-safe across
// disjoint row ranges (the binding runs it under at::parallel_for).
void select_rows_cpu(const SelectParams& p, int64_t row_begin, int64_t row_end);

// AdaKV selection for batch rows [b_begin, b_end): writes keep [B, H, N]
// (1 = kept) and lengths [B, H] (kept tokens per head).
void select_adaptive_mark_cpu(const SelectAdaptiveParams& p, uint8_t* keep, int64_t* lengths,
                              int64_t b_begin, int64_t b_end);

// Ascending kept positions of keep [B, H, N] into out [B, H, Lmax], padded
// with -1, for flattened rows [row_begin, row_end).
void select_adaptive_emit_cpu(const uint8_t* keep, int64_t N, int64_t Lmax, int64_t* out,
                              int64_t row_begin, int64_t row_end);

}  // namespace obc

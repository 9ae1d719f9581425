// CPU kernels of `compact_` (torch-free; see compact_params.h).
#pragma once

#include <cstdint>

#include "compact_params.h"

namespace obc {

// Validates rows [row_begin, row_end) of indices (and lengths): each used
// prefix strictly increasing within [0, N), lengths within [0, L).
IndexError check_compact_indices(const int64_t* indices, const int64_t* lengths, int64_t H, int64_t L,
                                 int64_t N, int64_t row_begin, int64_t row_end);

// Compacts rows [row_begin, row_end) of the flattened (tensor, b, h) grid
// (tensor-major: row r is tensor r / (B * H)). Assumes valid indices.
void compact_rows_cpu(const CompactParams& p, int64_t row_begin, int64_t row_end);

}  // namespace obc

// CPU kernel of `projected_value_norm` (torch-free; see
// projected_value_params.h): out[b, j, n] = ||v[b, j / G, n, :] W_o^j||_p,
// W_o^j = wo[:, j D : (j + 1) D]^T, a [D, hidden] slice of o_proj's weight.
// Tiled over tokens and hidden columns; never forms [N, hidden].
#pragma once

#include <cstddef>
#include <cstdint>

#include "projected_value_params.h"

namespace obc {

// Independent work items: one per (query head j, batch b, block of tokens).
int64_t projected_value_cpu_tasks(const ProjectedValueParams& p);

// Bytes of workspace ONE worker needs (O(D * (rows + columns) of a tile)),
// 64-byte aligned pieces; the pointer passed in needs 8-byte alignment.
size_t projected_value_cpu_workspace_bytes(const ProjectedValueParams& p);

// Runs tasks [task_begin, task_end). Disjoint ranges may run concurrently,
// each with its own workspace.
void projected_value_cpu(const ProjectedValueParams& p, int64_t task_begin, int64_t task_end, void* workspace);

}  // namespace obc

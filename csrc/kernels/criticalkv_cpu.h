// The selection steps of a CriticalKV eviction on CPU: stage 1's picks by
// the pooled base score, the steps of the pruned stage 2 (obcache/policies/
// criticalkv_pruned.py explains the algorithm) and the kept rows; the op
// that strings them together around the exact critical scores is
// csrc/torch/criticalkv_keep_op.cpp. Plain loops over arrays of a few
// thousand entries per head: the torch version spends most of its time
// dispatching ~300 small ops per layer.
//
// Layout: per-token arrays are [rows, N] (a row is a (batch, KV head)),
// per-candidate arrays [rows, C], candidate c being token sink + c and
// C = N - sink - recent. A group (the rows one selection ranks together) is
// one row, or the H rows of a batch row for a layer-wide selection; its
// candidates are ordered by (value desc, row, index asc), as
// obcache.policies.criticalkv._top orders them.
#pragma once

#include <cstdint>

#include "select_params.h"

namespace obc {

struct CkvLayout {
  int64_t rows = 0, N = 0, sink = 0, recent = 0;
  int64_t pool_kernel = 0;  // 0, 1 (no pooling) or odd
  Pool pool = Pool::Max;
  int64_t group_rows = 1;  // rows ranked together: 1 (per head) or H
  int64_t C() const { return N - sink - recent; }
};

// out[r, c] (float64): x [rows, N] pooled over the tokens [0, N - recent) as
// obcache.reference.pool_scores pools them, at candidate c.
void ckv_pool(const CkvLayout& l, const float* x, double* out);

// picks[r, c] = 1 for the k best candidates of each group among those with
// taken == 0 (fewer where fewer remain), else 0.
void ckv_top_free(const CkvLayout& l, const double* pooled, const uint8_t* taken, int64_t k, uint8_t* picks);

// kth[g]: the k-th largest pooled value of group g among the candidates with
// taken == 0, -inf where fewer than k remain.
void ckv_kth_free(const CkvLayout& l, const double* pooled, const uint8_t* taken, int64_t k, double* kth);

// out[r, t] (float64, [rows, N]): the least val[r, c] over the candidates c
// with mark[r, c] != 0 whose pooling window holds token t (radius
// pool_kernel / 2, 0 without pooling); +inf where none does.
void ckv_window_min(const CkvLayout& l, const uint8_t* mark, const double* val, double* out);

// The kept tokens of each row: [0, sink), the candidates with keep != 0 and
// [N - recent, N). kept_lengths writes their counts and returns the largest;
// kept_rows writes them ascending into idx [rows, len_max], -1 past a row's
// count (obcache.policies.criticalkv.padded_indices).
int64_t kept_lengths(const CkvLayout& l, const uint8_t* keep, int64_t* lengths);
void kept_rows(const CkvLayout& l, const uint8_t* keep, int64_t len_max, int64_t* idx);

}  // namespace obc

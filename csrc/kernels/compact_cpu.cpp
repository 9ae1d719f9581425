// CPU compact_: per (tensor, b, h), rows are moved in ascending destination
// order with memcpy. Safe in place: destination i reads source
// indices[i] >= i, and every row written before it is < i <= indices[i], so no
// source is overwritten before it is read; sources and destinations of one
// step are distinct rows (skipped when equal), so memcpy never overlaps.
// Memory: one read and one write of each moved row (D * elem_size bytes);
// the unmoved prefix (indices[i] == i) costs nothing.
#include "compact_cpu.h"

#include <cstring>

namespace obc {

IndexError check_compact_indices(const int64_t* indices, const int64_t* lengths, int64_t H, int64_t L,
                                 int64_t N, int64_t row_begin, int64_t row_end) {
  IndexError e;
  for (int64_t row = row_begin; row < row_end; ++row) {
    e.b = row / H;
    e.h = row % H;
    int64_t n = L;
    if (lengths) {
      n = lengths[row];
      if (n < 0 || n > L) {
        e.kind = IndexError::BadLength;
        e.value = n;
        return e;
      }
    }
    const int64_t* idx = indices + row * L;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t x = idx[i];
      if (x < 0 || x >= N) {
        e.kind = IndexError::OutOfRange;
        e.i = i;
        e.value = x;
        return e;
      }
      if (i > 0 && x <= idx[i - 1]) {
        e.kind = IndexError::NotIncreasing;
        e.i = i;
        e.value = x;
        e.prev = idx[i - 1];
        return e;
      }
    }
  }
  e.kind = IndexError::Ok;
  return e;
}

void compact_rows_cpu(const CompactParams& p, int64_t row_begin, int64_t row_end) {
  const int64_t BH = p.B * p.H;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const CompactTensor& t = p.t[r / BH];
    const int64_t row = r % BH, b = row / p.H, h = row % p.H;
    const int64_t n = p.lengths ? p.lengths[row] : p.L;
    const int64_t* idx = p.indices + row * p.L;
    char* base = static_cast<char*>(t.data) + (b * t.sb + h * t.sh) * t.elem_size;
    const int64_t row_stride = t.sn * t.elem_size, row_bytes = t.D * t.elem_size;
    for (int64_t i = 0; i < n; ++i) {
      if (idx[i] == i) continue;
      std::memcpy(base + i * row_stride, base + idx[i] * row_stride, static_cast<size_t>(row_bytes));
    }
  }
}

}  // namespace obc

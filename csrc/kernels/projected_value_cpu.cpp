// CPU projected_value_norm. One task = (query head j, batch b, 64 tokens).
// Per task the 64 value rows are converted to the accumulation type once;
// then for each tile of 32 hidden columns the [D, 32] slice of W_o^j is
// packed (transposed, contiguous in the column) and every row computes its
// 32 projections with a fixed-length inner loop over the columns, which the
// compiler keeps in vector registers; |x| or x^2 is added to the row's norm
// and the tile is dropped. Memory: v read once, wo read once per task
// (tasks of the same j are adjacent, so W_o^j stays in cache).
#include "projected_value_cpu.h"

#include <algorithm>
#include <cmath>

namespace obc {
namespace {

constexpr int64_t kRows = 64;  // tokens per task
constexpr int64_t kCols = 32;  // hidden columns per tile

size_t align64(size_t n) { return (n + 63) / 64 * 64; }

int64_t row_blocks(const ProjectedValueParams& p) { return (p.N + kRows - 1) / kRows; }

template <typename E, int P>
void run_task(const ProjectedValueParams& p, int64_t task, void* workspace) {
  using Acc = typename Elem<E>::acc;
  const int64_t nblk = row_blocks(p);
  const int64_t j = task / (p.B * nblk), b = (task / nblk) % p.B, n0 = (task % nblk) * kRows;
  const int64_t h = j / p.G, rows = std::min(kRows, p.N - n0), D = p.D;
  char* ws = static_cast<char*>(workspace);
  Acc* vbuf = reinterpret_cast<Acc*>(ws);  // [kRows, D]
  Acc* wbuf = reinterpret_cast<Acc*>(ws + align64(sizeof(Acc) * kRows * D));  // [D, kCols]
  Acc norm[kRows];
  const E* v = static_cast<const E*>(p.v) + b * p.v_sb + h * p.v_sh + n0 * p.v_sn;
  for (int64_t r = 0; r < rows; ++r) {
    norm[r] = Acc(0);
    for (int64_t d = 0; d < D; ++d) vbuf[r * D + d] = Elem<E>::load(v[r * p.v_sn + d]);
  }
  const E* w = static_cast<const E*>(p.wo) + j * D;
  for (int64_t c0 = 0; c0 < p.hidden; c0 += kCols) {
    const int64_t cols = std::min(kCols, p.hidden - c0);
    for (int64_t c = 0; c < kCols; ++c)
      for (int64_t d = 0; d < D; ++d)
        wbuf[d * kCols + c] = c < cols ? Elem<E>::load(w[(c0 + c) * p.wo_so + d]) : Acc(0);
    for (int64_t r = 0; r < rows; ++r) {
      Acc acc[kCols] = {};
      const Acc* vr = vbuf + r * D;
      for (int64_t d = 0; d < D; ++d) {
        const Acc x = vr[d];
        const Acc* wd = wbuf + d * kCols;
        for (int64_t c = 0; c < kCols; ++c) acc[c] += x * wd[c];
      }
      // Padded columns are left out (not added as 0 * v): an Inf in v would
      // make them NaN.
      Acc s = Acc(0);
      for (int64_t c = 0; c < cols; ++c) s += P == 1 ? std::fabs(acc[c]) : acc[c] * acc[c];
      norm[r] += s;
    }
  }
  Acc* out = static_cast<Acc*>(p.out) + (b * p.Hkv * p.G + j) * p.N + n0;
  for (int64_t r = 0; r < rows; ++r) out[r] = P == 1 ? norm[r] : std::sqrt(norm[r]);
}

template <typename E>
void run(const ProjectedValueParams& p, int64_t t0, int64_t t1, void* ws) {
  for (int64_t t = t0; t < t1; ++t) {
    if (p.p == 1) run_task<E, 1>(p, t, ws);
    else run_task<E, 2>(p, t, ws);
  }
}

}  // namespace

int64_t projected_value_cpu_tasks(const ProjectedValueParams& p) { return p.B * p.Hkv * p.G * row_blocks(p); }

size_t projected_value_cpu_workspace_bytes(const ProjectedValueParams& p) {
  const size_t acc = p.dtype == DType::F64 ? sizeof(double) : sizeof(float);
  return align64(acc * kRows * p.D) + align64(acc * p.D * kCols);
}

void projected_value_cpu(const ProjectedValueParams& p, int64_t t0, int64_t t1, void* ws) {
  switch (p.dtype) {
    case DType::F32: return run<float>(p, t0, t1, ws);
    case DType::F16: return run<half_t>(p, t0, t1, ws);
    case DType::BF16: return run<bf16_t>(p, t0, t1, ws);
    case DType::F64: return run<double>(p, t0, t1, ws);
  }
}

}  // namespace obc

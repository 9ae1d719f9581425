// CPU projected_value_norm. One task = (query head j, batch b, kRows tokens).
// Per task the value rows are converted to the accumulation type once; then
// for each tile of kTile hidden columns the [D, kTile] slice of W_o^j is
// loaded transposed (contiguous in the column) and each block of RB rows
// computes its [RB, kTile] projections with the saliency kernel's register
// block (cpu_tiles.h: AVX2 intrinsics where the CPU has them). |x| or x^2 is
// added lane-wise into the rows' [kTile] partial sums, which are reduced to
// one norm per row when the task ends: a per-tile horizontal sum would be a
// chain of dependent scalar adds as long as the block's FMAs. Never forms
// [N, hidden]. Memory: v read once, wo once per task (tasks of the same j are
// adjacent, so W_o^j stays in cache). Compiled per ISA as saliency_cpu.cpp is.
#include "projected_value_cpu.h"

#include <algorithm>
#include <cmath>

#include "cpu_tiles.h"

namespace obc {
namespace {

constexpr int64_t kRows = 64;  // tokens per task

size_t align64(size_t n) { return (n + 63) / 64 * 64; }

int64_t row_blocks(const ProjectedValueParams& p) { return (p.N + kRows - 1) / kRows; }

// Byte offsets of the workspace pieces (arrays of the accumulation type).
struct Layout {
  size_t v, w, c, part, total;
};

Layout make_layout(const ProjectedValueParams& p) {
  const size_t e = p.dtype == DType::F64 ? sizeof(double) : sizeof(float), D = static_cast<size_t>(p.D);
  Layout L;
  L.v = 0;                                            // [kRows, D] value rows
  L.w = L.v + align64(e * kRows * D);                 // [D, kTile] W_o^j tile, transposed
  L.c = L.w + align64(e * D * kTile);                 // [kMaxRB, kTile] one block's projections
  L.part = L.c + align64(e * kMaxRB * kTile);         // [kRows, kTile] partial norms
  L.total = L.part + align64(e * kRows * kTile);
  return L;
}

template <typename E, int P, int kRB, int kVW>
struct Task {
  using Acc = typename Elem<E>::acc;
  const ProjectedValueParams& p;
  Acc* vbuf;  // [kRows, D]
  Acc* wbuf;  // [D, kTile]
  Acc* cbuf;  // [RB, kTile]
  Acc* part;  // [kRows, kTile]

  // Rows [r0, r0 + RB) against the tile's columns [0, cols).
  template <int RB>
  OBC_ALWAYS_INLINE void block(int64_t r0, int64_t cols) {
    xyt_tile<RB, kVW>(vbuf + r0 * p.D, p.D, wbuf, cbuf);
    for (int r = 0; r < RB; ++r) {
      Acc t[kTile];
      const Acc* c = cbuf + r * kTile;
      for (int k = 0; k < kTile; ++k) t[k] = P == 1 ? std::fabs(c[k]) : c[k] * c[k];
      // Padded columns are zeroed, not summed as 0 * v: an Inf in v makes
      // them NaN. (Every lane first, then the tail: a per-lane select does
      // not vectorise on AVX2.)
      for (int64_t k = cols; k < kTile; ++k) t[k] = Acc(0);
      Acc* s = part + (r0 + r) * kTile;
      for (int k = 0; k < kTile; ++k) s[k] += t[k];
    }
  }

  // Rows [r0, rows) in blocks of RB, then the tail in halving blocks.
  template <int RB>
  OBC_ALWAYS_INLINE void rows_from(int64_t r0, int64_t rows, int64_t cols) {
    for (; r0 + RB <= rows; r0 += RB) block<RB>(r0, cols);
    if constexpr (RB > 1) rows_from<(RB > 2 ? RB / 2 : 1)>(r0, rows, cols);
  }

  OBC_ALWAYS_INLINE void run(int64_t task) {
    const int64_t nblk = row_blocks(p), D = p.D;
    const int64_t j = task / (p.B * nblk), b = (task / nblk) % p.B, n0 = (task % nblk) * kRows;
    const int64_t rows = std::min(kRows, p.N - n0);
    const E* v = static_cast<const E*>(p.v) + b * p.v_sb + (j / p.G) * p.v_sh + n0 * p.v_sn;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t d = 0; d < D; ++d) vbuf[r * D + d] = Elem<E>::load(v[r * p.v_sn + d]);
    std::fill(part, part + rows * kTile, Acc(0));
    const E* w = static_cast<const E*>(p.wo) + j * D;  // row c of this is column c of W_o^j
    for (int64_t c0 = 0; c0 < p.hidden; c0 += kTile) {
      const int64_t cols = std::min(kTile, p.hidden - c0);
      transposed_tile<kVW>(w + c0 * p.wo_so, p.wo_so, cols, D, wbuf);
      rows_from<kRB>(0, rows, cols);
    }
    Acc* out = static_cast<Acc*>(p.out) + (b * p.Hkv * p.G + j) * p.N + n0;
    for (int64_t r = 0; r < rows; ++r) {
      Acc s = Acc(0);
      for (int k = 0; k < kTile; ++k) s += part[r * kTile + k];
      out[r] = P == 1 ? s : std::sqrt(s);
    }
  }
};

template <typename E, int P, int RB, int kVW>
OBC_ALWAYS_INLINE void run_tasks(const ProjectedValueParams& p, int64_t t0, int64_t t1, char* ws) {
  using Acc = typename Elem<E>::acc;
  const Layout L = make_layout(p);
  auto at = [&](size_t off) { return reinterpret_cast<Acc*>(ws + off); };
  Task<E, P, RB, kVW> task{p, at(L.v), at(L.w), at(L.c), at(L.part)};
  for (int64_t t = t0; t < t1; ++t) task.run(t);
}

template <typename E, int RB, int kVW>
OBC_ALWAYS_INLINE void run_norm(const ProjectedValueParams& p, int64_t t0, int64_t t1, char* ws) {
  if (p.p == 1) return run_tasks<E, 1, RB, kVW>(p, t0, t1, ws);
  run_tasks<E, 2, RB, kVW>(p, t0, t1, ws);
}

template <int RB, int kVW>
OBC_ALWAYS_INLINE void run_dtype(const ProjectedValueParams& p, int64_t t0, int64_t t1, void* workspace) {
  char* ws = static_cast<char*>(workspace);
  switch (p.dtype) {
    case DType::F32: return run_norm<float, RB, kVW>(p, t0, t1, ws);
    case DType::F16: return run_norm<half_t, RB, kVW>(p, t0, t1, ws);
    case DType::BF16: return run_norm<bf16_t, RB, kVW>(p, t0, t1, ws);
    case DType::F64: return run_norm<double, RB, kVW>(p, t0, t1, ws);
  }
}

using RunFn = void (*)(const ProjectedValueParams&, int64_t, int64_t, void*);
void run_baseline(const ProjectedValueParams& p, int64_t t0, int64_t t1, void* ws) { run_dtype<kRBWide, kNoVec>(p, t0, t1, ws); }
#ifdef OBC_X86_VARIANTS
__attribute__((target("arch=x86-64-v4"))) void run_avx512(const ProjectedValueParams& p, int64_t t0, int64_t t1,
                                                          void* ws) {
  run_dtype<kRBAvx512, kAvx512W>(p, t0, t1, ws);
}
__attribute__((target("arch=x86-64-v3"))) void run_avx2(const ProjectedValueParams& p, int64_t t0, int64_t t1,
                                                        void* ws) {
  run_dtype<kRBAvx2, kAvx2W>(p, t0, t1, ws);
}
#else
const RunFn run_avx512 = run_baseline, run_avx2 = run_baseline;
#endif

}  // namespace

int64_t projected_value_cpu_tasks(const ProjectedValueParams& p) { return p.B * p.Hkv * p.G * row_blocks(p); }

size_t projected_value_cpu_workspace_bytes(const ProjectedValueParams& p) { return make_layout(p).total; }

void projected_value_cpu(const ProjectedValueParams& p, int64_t t0, int64_t t1, void* ws) {
  static const RunFn run = pick_cpu_variant<RunFn>(run_baseline, run_avx2, run_avx512);
  run(p, t0, t1, ws);
}

}  // namespace obc

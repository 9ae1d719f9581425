// CPU projected_value_norm. One task = (query head j, batch b, task_tiles
// tiles of kTile tokens). The task's value rows are loaded transposed once, as
// [D, kTile] tiles (contiguous in the token), and W_o^j's rows (hidden columns
// of the projection, contiguous in d) are the broadcast operand of the
// saliency kernel's register block (cpu_tiles.h: AVX2 / AVX-512 intrinsics
// where the CPU has them): each block of RB hidden columns gives [RB, kTile]
// projections a tile, whose |x| or x^2 is added lane-wise (one lane a token)
// into kParts partial sums per token, summed when the task ends. Loading
// W_o^j's tiles transposed instead cost as much as the products for the few
// rows a pruned CriticalKV layer asks for (~50 a head); a token tile costs
// D * kTile loads per task. Never forms [N, hidden]. Memory: v read once, wo
// once per task (tasks of the same j are adjacent, so W_o^j stays in cache). A
// token's norm does not depend on the other tokens of its task (lanes are
// independent, padding lanes are discarded), so a call on any subset of tokens
// gives them the same values. Compiled per ISA as the saliency kernel is;
// bfloat16 on a CPU with AVX512-BF16 multiplies pairs of d (cpu_tiles.h), the
// float products' rate doubled, and with AMX (cpu_amx.h) 32 hidden columns a
// step on the tile registers.
#include "projected_value_cpu.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "cpu_amx.h"
#include "cpu_tiles.h"

namespace obc {
namespace {

// Token tiles per task: each task reads all of W_o^j (hidden x D), so
// more tokens a task read it less often. 16 tiles against 2 ran 1.7-1.8x
// faster on AMX where W_o^j is 256 KiB to 1 MiB of bfloat16 (Llama-3.2-1B,
// -3B, -3.1-8B), 1.36x at Qwen2.5-1.5B's 384 KiB, as fast at SmolLM2's and
// Qwen2-0.5B's 72-112 KiB, and 1.07-1.25x on the float kernels
// (bench/results/kernels.md). Fewer where that would leave under kMinTasks
// tasks to share out over the threads, but not under 2, the size before:
// the pruned CriticalKV op makes a call per (batch, KV head) row of ~50
// tokens and shares all the calls' tasks out together.
constexpr int64_t kMinTiles = 2, kMaxTiles = 16, kMinTasks = 64;
int64_t task_tiles(const ProjectedValueParams& p) {
  const int64_t tiles = p.B * p.Hkv * p.G * ((p.N + kTile - 1) / kTile);
  return std::max(kMinTiles, std::min(kMaxTiles, tiles / kMinTasks));
}
// Partial sums per token: hidden column c adds to partial c % kParts, so a
// sum's chain is hidden / kParts long (accuracy) whatever the block size.
constexpr int kParts = 8;

size_t align64(size_t n) { return (n + 63) / 64 * 64; }

int64_t row_blocks(const ProjectedValueParams& p) {
  const int64_t rows = task_tiles(p) * kTile;
  return (p.N + rows - 1) / rows;
}

// Byte offsets of the workspace pieces (arrays of the accumulation type).
struct Layout {
  size_t vt, w, c, part, total;
};

Layout make_layout(const ProjectedValueParams& p) {
  const size_t e = p.dtype == DType::F64 ? sizeof(double) : sizeof(float), D = static_cast<size_t>(p.D);
  // Sized for kMaxTiles whatever task_tiles says: offsets that varied with
  // the shape made the AMX path 10% slower at SmolLM2's (measured; why, not
  // known).
  const size_t tiles = kMaxTiles;
  Layout L;
  L.vt = 0;                                          // [tiles, D, kTile] value rows, transposed
  L.w = L.vt + align64(e * tiles * D * kTile);       // [kMaxRB, D] W_o^j rows converted (16-bit inputs)
  L.c = L.w + align64(e * kMaxRB * D);               // [kAmxRows, kTile] one block's projections
  L.part = L.c + align64(e * kAmxRows * kTile);      // [tiles, kParts, kTile] partial norms
  L.total = L.part + align64(e * tiles * kParts * kTile);
  return L;
}

// kPairs: bfloat16 on the AVX512-BF16 pair path (cpu_tiles.h): the value
// tiles are pair tiles and W_o's rows are read as pairs where they lie.
// kAmx (with kPairs): blocks of kAmxRows hidden columns on AMX's tiles
// (cpu_amx.h, inside the caller's AmxTiles scope), the rest as kPairs.
static_assert(kAmxRows >= kMaxRB, "cbuf holds a block of either kind");
template <typename E, int P, int kRB, int kVW, bool kPairs, typename Amx>
struct Task {
  static constexpr bool kAmx = Amx::on;
  using Acc = typename Elem<E>::acc;
  const ProjectedValueParams& p;
  Acc* vt;    // [tiles, D, kTile] (kPairs: [tiles, D / 2, kTile] words, at the same tile offsets)
  Acc* wbuf;  // [kMaxRB, D]
  Acc* cbuf;  // [RB, kTile], RB <= kAmxRows
  Acc* part;  // [tiles, kParts, kTile]
  int64_t task_rows;  // task_tiles(p) * kTile

  // Hidden columns [c0, c0 + RB) (rows of w, wo_so apart) against the task's
  // `tiles` token tiles.
  template <int RB>
  OBC_ALWAYS_INLINE void block(int64_t c0, const E* w, int64_t tiles) {
    // The next block's rows of W_o, whose lines arrive while this block
    // computes: read cold (a layer's weight is evicted by the model's other
    // layers), the broadcasts of the product stalled on each line otherwise
    // (1.5x slower than loading transposed tiles, which overlaps the misses).
    for (int r = RB; r < 2 * RB && c0 + r < p.hidden; ++r) prefetch_row<3>(w + r * p.wo_so, p.D);
#ifdef OBC_X86_VARIANTS
    if constexpr (kAmx && RB == kAmxRows) {
      for (int64_t t = 0; t < tiles; ++t) {
        amx_xyt32<Amx>(w, p.wo_so, p.D, reinterpret_cast<const uint32_t*>(vt + t * p.D * kTile), cbuf);
        add_norms<RB>(c0, t);
      }
    } else if constexpr (kPairs) {
      for (int64_t t = 0; t < tiles; ++t) {
        avx512bf16_xyt<RB>(w, p.wo_so, p.D, reinterpret_cast<const uint32_t*>(vt + t * p.D * kTile), cbuf);
        add_norms<RB>(c0, t);
      }
    } else
#endif
      float_block<RB>(c0, w, tiles);
  }

  // block() on the FMA units: W_o's rows (converted once where 16-bit) times
  // the float tiles. Never instantiated with RB > kMaxRB (wbuf's rows).
  template <int RB>
  OBC_ALWAYS_INLINE void float_block(int64_t c0, const E* w, int64_t tiles) {
    static_assert(RB <= kMaxRB, "wbuf holds kMaxRB rows");
    const Acc* x = wbuf;
    int64_t ldx = p.D;
    if constexpr (std::is_same<E, Acc>::value) {
      x = w, ldx = p.wo_so;
    } else {  // 16-bit weights: converted once per block
      for (int r = 0; r < RB; ++r)
        for (int64_t d = 0; d < p.D; ++d) wbuf[r * p.D + d] = Elem<E>::load(w[r * p.wo_so + d]);
    }
    for (int64_t t = 0; t < tiles; ++t) {
      xyt_tile<RB, kVW>(x, ldx, p.D, vt + t * p.D * kTile, cbuf);
      add_norms<RB>(c0, t);
    }
  }

  // |x| or x^2 of one block's projections (cbuf) into tile t's partial sums.
  template <int RB>
  OBC_ALWAYS_INLINE void add_norms(int64_t c0, int64_t t) {
    for (int r = 0; r < RB; ++r) {
      const Acc* c = cbuf + r * kTile;
      Acc* s = part + (t * kParts + (c0 + r) % kParts) * kTile;
      for (int k = 0; k < kTile; ++k) s[k] += P == 1 ? std::fabs(c[k]) : c[k] * c[k];
    }
  }

  // Hidden columns [c0, hidden) in blocks of RB, then the tail in halving blocks.
  template <int RB>
  OBC_ALWAYS_INLINE void columns_from(int64_t c0, const E* w, int64_t tiles) {
    for (; c0 + RB <= p.hidden; c0 += RB) block<RB>(c0, w + c0 * p.wo_so, tiles);
    if constexpr (RB > 1) columns_from<(RB > 2 ? RB / 2 : 1)>(c0, w, tiles);
  }

  // Every hidden column: kAmxRows a step on AMX where kAmx, then the rest.
  OBC_ALWAYS_INLINE void columns(const E* w, int64_t tiles) {
    int64_t c0 = 0;
    if constexpr (kAmx)
      for (; c0 + kAmxRows <= p.hidden; c0 += kAmxRows) block<kAmxRows>(c0, w + c0 * p.wo_so, tiles);
    columns_from<kRB>(c0, w, tiles);
  }

  OBC_ALWAYS_INLINE void run(int64_t task) {
    const int64_t nblk = (p.N + task_rows - 1) / task_rows, D = p.D;  // row_blocks(p)
    const int64_t j = task / (p.B * nblk), b = (task / nblk) % p.B, n0 = (task % nblk) * task_rows;
    const int64_t rows = std::min(task_rows, p.N - n0), tiles = (rows + kTile - 1) / kTile;
    const E* v = static_cast<const E*>(p.v) + b * p.v_sb + (j / p.G) * p.v_sh + n0 * p.v_sn;
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t tn = std::min(kTile, rows - t * kTile);
#ifdef OBC_X86_VARIANTS
      if constexpr (kPairs) {
        avx512bf16_load_pairs(v + t * kTile * p.v_sn, p.v_sn, tn, D, reinterpret_cast<uint32_t*>(vt + t * D * kTile));
        continue;
      }
#endif
      transposed_tile<kVW>(v + t * kTile * p.v_sn, p.v_sn, tn, D, vt + t * D * kTile);
    }
    std::fill(part, part + tiles * kParts * kTile, Acc(0));
    columns(static_cast<const E*>(p.wo) + j * D, tiles);  // row c of this is column c of W_o^j
    Acc* out = static_cast<Acc*>(p.out) + (b * p.Hkv * p.G + j) * p.N + n0;
    for (int64_t r = 0; r < rows; ++r) {
      const Acc* s = part + ((r / kTile) * kParts) * kTile + r % kTile;
      Acc sum = Acc(0);
      for (int q = 0; q < kParts; ++q) sum += s[q * kTile];
      out[r] = P == 1 ? sum : std::sqrt(sum);
    }
  }
};

template <typename E, int P, int RB, int kVW, bool kPairs, typename Amx>
OBC_ALWAYS_INLINE void run_tasks(const ProjectedValueParams& p, int64_t t0, int64_t t1, char* ws) {
  using Acc = typename Elem<E>::acc;
  const Layout L = make_layout(p);
  auto at = [&](size_t off) { return reinterpret_cast<Acc*>(ws + off); };
  Task<E, P, RB, kVW, kPairs, Amx> task{p, at(L.vt), at(L.w), at(L.c), at(L.part), task_tiles(p) * kTile};
  for (int64_t t = t0; t < t1; ++t) task.run(t);
}

template <typename E, int RB, int kVW, bool kPairs = false, typename Amx = NoAmx>
OBC_ALWAYS_INLINE void run_norm(const ProjectedValueParams& p, int64_t t0, int64_t t1, char* ws) {
  if (p.p == 1) return run_tasks<E, 1, RB, kVW, kPairs, Amx>(p, t0, t1, ws);
  run_tasks<E, 2, RB, kVW, kPairs, Amx>(p, t0, t1, ws);
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
// The pair path where pairs_apply; the rest as run_avx512.
__attribute__((target("arch=x86-64-v4,avx512bf16"))) void run_avx512bf16(const ProjectedValueParams& p, int64_t t0,
                                                                         int64_t t1, void* ws) {
  if (!pairs_apply(p.dtype, p.D)) return run_avx512(p, t0, t1, ws);
  run_norm<bf16_t, kRBAvx512, kAvx512W, true>(p, t0, t1, static_cast<char*>(ws));
}
// AMX where amx_applies; the rest as run_avx512, since the CPUs with AMX
// run the pair path at half the float rate (cpu_tiles.h).
OBC_AMX_FN void run_amx(const ProjectedValueParams& p, int64_t t0, int64_t t1, void* ws) {
  if (!amx_applies(p.dtype, p.D)) return run_avx512(p, t0, t1, ws);
  AmxTiles tiles;
  run_norm<bf16_t, kRBAvx512, kAvx512W, true, AmxHw>(p, t0, t1, static_cast<char*>(ws));
}
// run_amx with the tile instructions emulated (AmxEmu), for the tests.
__attribute__((target("arch=x86-64-v4,avx512bf16"))) void run_amx_emulated(const ProjectedValueParams& p, int64_t t0,
                                                                           int64_t t1, void* ws) {
  if (!amx_applies(p.dtype, p.D)) return run_avx512(p, t0, t1, ws);
  run_norm<bf16_t, kRBAvx512, kAvx512W, true, AmxEmu>(p, t0, t1, static_cast<char*>(ws));
}
#else
const RunFn run_avx512 = run_baseline, run_avx2 = run_baseline, run_avx512bf16 = run_baseline, run_amx = run_baseline,
            run_amx_emulated = run_baseline;
#endif

}  // namespace

int64_t projected_value_cpu_tasks(const ProjectedValueParams& p) { return p.B * p.Hkv * p.G * row_blocks(p); }

size_t projected_value_cpu_workspace_bytes(const ProjectedValueParams& p) { return make_layout(p).total; }

void projected_value_cpu(const ProjectedValueParams& p, int64_t t0, int64_t t1, void* ws) {
  static const RunFn run =
      pick_cpu_variant<RunFn>(run_baseline, run_avx2, run_avx512, run_avx512bf16, run_amx_emulated, run_amx);
  run(p, t0, t1, ws);
}

}  // namespace obc

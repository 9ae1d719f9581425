// torch.ops.obcache._criticalkv_keep: a CriticalKV eviction of one layer on
// CPU (obcache.policies.pruned_keep): stage 1's picks by the pooled base
// score, stage 2 with the critical score computed exactly only where the
// picks depend on it (the algorithm of obcache/policies/criticalkv_pruned.py,
// whose torch form pruned_stage2_torch is what this op is tested against),
// and the kept indices. The exact critical scores go through the same
// projected_value_norm kernel and ATen ops (critical_from_norms) as the
// torch version, so they are the same numbers to the bit; the steps between
// them are plain loops
// (kernels/criticalkv_cpu.cpp): as torch ops, stage 1 and the kept indices
// alone cost ~0.8 ms a layer on SmolLM2-135M, ~0.4% of its prefill.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/criticalkv_bounds_cpu.h"
#include "kernels/criticalkv_cpu.h"
#include "kernels/projected_value_cpu.h"
#include "torch/checks.h"
#include "torch/projected_value_args.h"
#include "torch/select_compact.h"

namespace obcache {

namespace {

// As BOUND_SLACK in obcache/policies/criticalkv_pruned.py.
constexpr float kBoundSlack = 1e-3f;

// The critical score's bounds hi >= score >= lo per token of the (b, h)
// grid, both set to the exact score where it was computed (done).
struct Scores {
  const at::Tensor &base, &v, &wo;  // base [B, H, N] float32 contiguous, v contiguous
  std::vector<float> hi, lo;        // [B * H, N]
  uint8_t* done;                    // [B * H, N], the op's third output
  bool finite = true;               // every bound is finite

  Scores(const at::Tensor& base_, const at::Tensor& v_, const at::Tensor& wo_, const at::Tensor& norm_bound,
         uint8_t* done_)
      : base(base_), v(v_), wo(wo_), hi(base_.numel()), lo(base_.numel()), done(done_) {
    // hi >= score >= lo with b = mean_g sqrt(hidden) sigma_max(W_o^g) ||v||,
    // in chunks of kChunk tokens of a row (3 rows on 2 threads would idle one)
    constexpr int64_t kChunk = 512;
    const int64_t H = base.size(1), N = base.size(2), D = v.size(3), chunks = (N + kChunk - 1) / kChunk;
    const obc::DType dt = to_obc_dtype(v, "v", true);
    const char* vp = static_cast<const char*>(v.data_ptr());
    const int64_t row_bytes = N * D * static_cast<int64_t>(v.element_size());
    std::vector<uint8_t> part_finite(base.size(0) * H * chunks, 1);
    at::parallel_for(0, base.size(0) * H * chunks, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t r = i / chunks, t0 = i % chunks * kChunk, n = std::min(kChunk, N - t0), o = r * N + t0;
        part_finite[i] = obc::ckv_bounds(dt, vp + r * row_bytes + t0 * D * v.element_size(), n, D,
                                         base.data_ptr<float>() + o, norm_bound.data_ptr<float>()[r % H],
                                         static_cast<float>(kCriticalEps), kBoundSlack, hi.data() + o, lo.data() + o);
      }
    });
    finite = std::all_of(part_finite.begin(), part_finite.end(), [](uint8_t ok) { return ok != 0; });
  }

  // The exact score (base + 1e-4) * mean_g ||v W_o^g||_1 at need & ~done
  // (need [B * H, N]). The tokens of every (batch, KV head) row are
  // gathered into one buffer, row after row; each row's projected_value_norm
  // tasks (query head x a run of token tiles) read its part with the
  // columns of W_o its query heads use, and all rows' tasks share out over
  // the threads together (row by row, 3 KV heads on 2 threads left one
  // thread idle a third of the time). Then critical_from_norms once, on the rows' norms
  // side by side (padded to the longest row), as critical_score computes
  // it: a token's score depends on its own norms only, so these are the
  // torch form's numbers, to the bit. (Per row, index_select and
  // critical_from_norms were ~20 ATen calls a layer, each cold inside a
  // running model: a fifth of the op's samples on SmolLM2-135M. One norm
  // call over every head's tokens padded to the longest head computed a
  // third more rows.)
  void compute(const uint8_t* need) {
    const int64_t rows = base.size(0) * base.size(1), H = base.size(1), N = base.size(2), D = v.size(3);
    const int64_t GD = wo.size(1) / H, G = GD / D, elem = v.element_size();
    std::vector<int64_t> todo, first(rows + 1, 0);  // row r's tokens: todo[first[r], first[r + 1])
    int64_t widest = 0;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t t = 0; t < N; ++t)
        if (need[r * N + t] && !done[r * N + t]) todo.push_back(t);
      first[r + 1] = static_cast<int64_t>(todo.size());
      widest = std::max(widest, first[r + 1] - first[r]);
    }
    const int64_t total = first[rows];
    if (total == 0) return;
    const at::Tensor gathered = at::empty({total, D}, v.options());
    const char* vp = static_cast<const char*>(v.data_ptr());
    char* gp = static_cast<char*>(gathered.data_ptr());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = first[r]; j < first[r + 1]; ++j)
        std::memcpy(gp + j * D * elem, vp + (r * N + todo[j]) * D * elem, D * elem);
    const bool f64 = v.scalar_type() == at::kDouble;
    const at::Tensor pn = at::empty({total * G}, v.options().dtype(f64 ? at::kDouble : at::kFloat));
    std::vector<obc::ProjectedValueParams> prm(rows);
    std::vector<int64_t> first_task(rows + 1, 0);
    size_t ws_bytes = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t M = first[r + 1] - first[r];
      first_task[r + 1] = first_task[r];
      if (M == 0) continue;
      prm[r] = describe_projected_value(gathered.narrow(0, first[r], M).view({1, 1, M, D}),
                                        wo.narrow(1, (r % H) * GD, GD), 1);
      prm[r].out = static_cast<char*>(pn.data_ptr()) + first[r] * G * pn.element_size();  // [G, M]
      first_task[r + 1] += obc::projected_value_cpu_tasks(prm[r]);
      ws_bytes = std::max(ws_bytes, obc::projected_value_cpu_workspace_bytes(prm[r]));
    }
    at::parallel_for(0, first_task[rows], 1, [&](int64_t t0, int64_t t1) {
      c10::DataPtr ws = c10::GetCPUAllocator()->allocate(ws_bytes);
      for (int64_t r = 0; r < rows; ++r) {  // the chunk's tasks of row r
        const int64_t a = std::max(t0, first_task[r]), b = std::min(t1, first_task[r + 1]);
        if (a < b) obc::projected_value_cpu(prm[r], a - first_task[r], b - first_task[r], ws.get());
      }
    });
    // The rows side by side, [1, rows, widest] and [1, rows * G, widest].
    const at::Tensor side_base = at::zeros({1, rows, widest}, base.options());
    const at::Tensor side_pn = at::zeros({1, rows * G, widest}, pn.options());
    float* sb = side_base.data_ptr<float>();
    const float* bp = base.data_ptr<float>();
    char* sp = static_cast<char*>(side_pn.data_ptr());
    const char* pp = static_cast<const char*>(pn.data_ptr());
    const int64_t pe = pn.element_size();
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t M = first[r + 1] - first[r];
      for (int64_t j = 0; j < M; ++j) sb[r * widest + j] = bp[r * N + todo[first[r] + j]];
      for (int64_t g = 0; g < G; ++g)
        std::memcpy(sp + (r * G + g) * widest * pe, pp + (first[r] * G + g * M) * pe, M * pe);
    }
    // float64 for a float64 v: the bounds are float32
    const at::Tensor exact = critical_from_norms(side_base, side_pn).to(at::kFloat).contiguous();
    const float* ep = exact.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = first[r]; j < first[r + 1]; ++j) {
        const int64_t t = r * N + todo[j];
        hi[t] = lo[t] = ep[r * widest + j - first[r]];
        done[t] = 1;
      }
  }
};

void check_args(const at::Tensor& base, const at::Tensor& v, const at::Tensor& wo, const at::Tensor& norm_bound,
                int64_t floor, int64_t first, int64_t rest, int64_t sink, int64_t recent, int64_t pool_kernel,
                const std::string& pool) {
  check_dims(base, "base", 3, "[B, H_kv, N]");
  TORCH_CHECK(base.scalar_type() == at::kFloat, "base must be float32, got ", base.scalar_type());
  check_projected_value_args(v, wo, 1);
  for (const at::Tensor* t : {&base, &v, &wo, &norm_bound})
    TORCH_CHECK(t->is_cpu(), "_criticalkv_keep runs on CPU tensors only, got one on ", t->device());
  TORCH_CHECK(v.size(0) == base.size(0) && v.size(1) == base.size(1) && v.size(2) == base.size(2),
              "v must be [B, H_kv, N, D] with base's [B, H_kv, N] = ", base.sizes(), ", got ", v.sizes());
  TORCH_CHECK(norm_bound.dim() == 1 && norm_bound.size(0) == base.size(1) && norm_bound.scalar_type() == at::kFloat,
              "norm_bound must be float32 [H_kv] = [", base.size(1), "], got ", norm_bound.scalar_type(), " ",
              norm_bound.sizes());
  TORCH_CHECK(sink >= 0 && recent >= 0 && kept_ends(sink, recent) <= static_cast<uint64_t>(base.size(2)),
              "sink = ", sink, " and recent = ", recent,
              " must be >= 0 with sink + recent <= N = ", base.size(2));
  TORCH_CHECK(floor >= 0, "floor must be >= 0, got ", floor);
  TORCH_CHECK(first >= 0, "first must be >= 0, got ", first);
  TORCH_CHECK(rest >= 0, "rest must be >= 0, got ", rest);
  TORCH_CHECK(pool_kernel == 0 || pool_kernel % 2 == 1, "pool_kernel must be 0 or odd, got ", pool_kernel);
  TORCH_CHECK(pool == "max" || pool == "avg", "pool must be 'max' or 'avg', got '", pool, "'");
}

// The steps of one group, rows [r0, r0 + l.rows) of the (b, h) grid
// (l.group_rows == l.rows; tk, need and out from row r0 on), in the order
// criticalkv_keep_impl runs them with the exact scores between; tk [l.rows,
// C] is stage 1's candidates. criticalkv_pruned.py explains the steps.

// Stage 1: tk = each head's `floor` best, then the group's `first` best by
// the pooled base score.
void stage1(const obc::CkvLayout& l, const float* base, int64_t floor, int64_t first, uint8_t* tk) {
  const int64_t n = l.rows * l.C();
  std::vector<double> pooled(n);
  std::vector<uint8_t> picks(n);
  obc::ckv_pool(l, base, pooled.data());
  std::fill(tk, tk + n, uint8_t{0});
  if (floor > 0) {
    obc::CkvLayout per = l;
    per.group_rows = 1;
    obc::ckv_top_free(per, pooled.data(), tk, floor, picks.data());
    std::copy(picks.begin(), picks.end(), tk);
  }
  obc::ckv_top_free(l, pooled.data(), tk, first, picks.data());
  for (int64_t i = 0; i < n; ++i) tk[i] |= picks[i];
}

// Step 2, the seed: need = the tokens the picks by the bound depend on (the
// max of a window needs only the tokens holding its bound's max, an average
// every token); every token when a bound anywhere is not finite.
void seed(const obc::CkvLayout& l, const Scores& sc, int64_t r0, const uint8_t* tk, int64_t rest, uint8_t* need) {
  const int64_t N = l.N, C = l.C();
  if (!sc.finite) {
    std::fill(need, need + l.rows * N, uint8_t{1});
    return;
  }
  const float* hi = sc.hi.data() + r0 * N;
  const bool by_max = l.pool == obc::Pool::Max && l.pool_kernel > 1;
  std::vector<double> hi_p(l.rows * C), wmin(l.rows * N);
  std::vector<uint8_t> mark(l.rows * C);
  obc::ckv_pool(l, hi, hi_p.data());
  obc::ckv_top_free(l, hi_p.data(), tk, rest, mark.data());
  if (!by_max) std::fill(hi_p.begin(), hi_p.end(), 0.0);  // any marked window
  obc::ckv_window_min(l, mark.data(), hi_p.data(), wmin.data());
  for (int64_t i = 0; i < l.rows * N; ++i) need[i] = by_max ? hi[i] >= wmin[i] : wmin[i] < INFINITY;
}

// Steps 3 and 4 (finite bounds only): `rest` candidates score at least tau,
// open windows can still make the cut; need = what settles all of them.
void settle(const obc::CkvLayout& l, const Scores& sc, int64_t r0, const uint8_t* tk, int64_t rest, uint8_t* need) {
  const int64_t N = l.N, C = l.C();
  const float *hi = sc.hi.data() + r0 * N, *lo = sc.lo.data() + r0 * N;
  const bool by_max = l.pool == obc::Pool::Max && l.pool_kernel > 1;
  std::vector<double> hi_p(l.rows * C), lo_p(l.rows * C), wmin(l.rows * N);
  std::vector<uint8_t> mark(l.rows * C);
  double tau = 0.0;
  obc::ckv_pool(l, hi, hi_p.data());
  obc::ckv_pool(l, lo, lo_p.data());
  obc::ckv_kth_free(l, lo_p.data(), tk, rest, &tau);
  for (int64_t i = 0; i < l.rows * C; ++i) mark[i] = !tk[i] && hi_p[i] >= tau && hi_p[i] > lo_p[i];
  if (!by_max) std::fill(lo_p.begin(), lo_p.end(), 0.0);
  obc::ckv_window_min(l, mark.data(), lo_p.data(), wmin.data());
  for (int64_t i = 0; i < l.rows * N; ++i)
    need[i] = by_max ? hi[i] > wmin[i] && hi[i] >= tau : wmin[i] < INFINITY;
}

// Step 5: every candidate that can make the cut has its exact pooled score;
// out = tk and the best `rest` others by it.
void finish(const obc::CkvLayout& l, const Scores& sc, int64_t r0, const uint8_t* tk, int64_t rest, uint8_t* out) {
  const int64_t n = l.rows * l.C();
  std::vector<double> hi_p(n);
  obc::ckv_pool(l, sc.hi.data() + r0 * l.N, hi_p.data());
  obc::ckv_top_free(l, hi_p.data(), tk, rest, out);
  for (int64_t i = 0; i < n; ++i) out[i] |= tk[i];
}

}  // namespace

// (indices int64 [B, H, L] ascending, -1 past a head's length; lengths
// int64 [B, H]; exact bool [B, H, N], the tokens whose critical score was
// computed). Stage 1 keeps `floor` candidates of each head, then `first`
// more of each group (a head when per_head, else a batch row's heads), by
// the pooled base score; stage 2 `rest` more of each group by the pooled
// critical score (obcache.policies.criticalkv.Stage1Sizes).
std::tuple<at::Tensor, at::Tensor, at::Tensor> criticalkv_keep_impl(
    const at::Tensor& base_in, const at::Tensor& v, const at::Tensor& wo, const at::Tensor& norm_bound,
    int64_t floor, int64_t first, int64_t rest, bool per_head, int64_t sink, int64_t recent, int64_t pool_kernel,
    c10::string_view pool_sv) {
  const std::string pool(pool_sv.data(), pool_sv.size());
  check_args(base_in, v, wo, norm_bound, floor, first, rest, sink, recent, pool_kernel, pool);
  const int64_t B = base_in.size(0), H = base_in.size(1), N = base_in.size(2);
  obc::CkvLayout l;
  l.rows = B * H, l.N = N, l.sink = sink, l.recent = recent, l.pool_kernel = pool_kernel;
  l.pool = pool == "max" ? obc::Pool::Max : obc::Pool::Avg;
  l.group_rows = per_head ? 1 : H;
  const int64_t C = l.C();
  const at::Tensor base = base_in.contiguous();
  at::Tensor exact = at::zeros({B, H, N}, base.options().dtype(at::kBool));

  const at::Tensor vc = v.contiguous();
  // Stage 2's bounds, when there is a stage 2.
  const bool stage2 = rest > 0 && C > 0;
  std::optional<Scores> sc;
  if (stage2) sc.emplace(base, vc, wo, norm_bound.contiguous(), reinterpret_cast<uint8_t*>(exact.data_ptr<bool>()));
  // The groups are independent; each step runs for all of them at once
  // (a group per thread at a time), and the exact scores between the steps
  // share out over the threads by row and query head (Scores::compute). As
  // in the torch form, Scores decided for all of them whether the bounds
  // are finite.
  const int64_t groups = l.rows / l.group_rows;
  obc::CkvLayout g = l;
  g.rows = l.group_rows;
  auto each_group = [&](const auto& step) {
    at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t gi = g0; gi < g1; ++gi) step(gi * g.rows);
    });
  };
  std::vector<uint8_t> taken(l.rows * C), keep(l.rows * C), need(stage2 ? l.rows * N : 0);
  each_group([&](int64_t r0) {
    stage1(g, base.data_ptr<float>() + r0 * N, floor, first, taken.data() + r0 * C);
    if (stage2) seed(g, *sc, r0, taken.data() + r0 * C, rest, need.data() + r0 * N);
  });
  if (!stage2) {
    keep.swap(taken);
  } else {
    sc->compute(need.data());
    if (sc->finite) {
      each_group([&](int64_t r0) { settle(g, *sc, r0, taken.data() + r0 * C, rest, need.data() + r0 * N); });
      sc->compute(need.data());
    }
    each_group([&](int64_t r0) { finish(g, *sc, r0, taken.data() + r0 * C, rest, keep.data() + r0 * C); });
  }
  // The kept rows: stage 1's and stage 2's candidates.
  at::Tensor lengths = at::empty({B, H}, base.options().dtype(at::kLong));
  const int64_t len_max = obc::kept_lengths(l, keep.data(), lengths.data_ptr<int64_t>());
  at::Tensor idx = at::empty({B, H, len_max}, lengths.options());
  obc::kept_rows(l, keep.data(), len_max, idx.data_ptr<int64_t>());
  return {idx, lengths, exact};
}

}  // namespace obcache

TORCH_LIBRARY_FRAGMENT(obcache, m) {
  m.def(
      "_criticalkv_keep(Tensor base, Tensor v, Tensor wo, Tensor norm_bound, int floor, int first, int rest, "
      "bool per_head, int sink, int recent, int pool_kernel, str pool) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(obcache, CPU, m) { m.impl("_criticalkv_keep", &obcache::criticalkv_keep_impl); }

// torch.ops.obcache._criticalkv_stage2: CriticalKV's pruned stage 2 on CPU,
// the algorithm of obcache/policies/criticalkv_pruned.py (`pruned_stage2`,
// whose torch version runs on other devices and is what this op is tested
// against). The exact critical scores go through the same ATen ops and
// projected_value_norm kernel as the torch version, so they are the same
// numbers to the bit; the selection steps between them are plain loops
// (kernels/criticalkv_stage2_cpu.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/criticalkv_stage2_cpu.h"
#include "torch/checks.h"
#include "torch/projected_value_args.h"

namespace obcache {

namespace {

// As BOUND_SLACK in obcache/policies/criticalkv_pruned.py.
constexpr float kBoundSlack = 1e-3f;

struct Scores {
  const at::Tensor &base, &v, &wo;  // base [B, H, N] float32 contiguous
  std::vector<float> hi, lo;        // bounds per token, the exact score where done
  uint8_t* done;  // [B, H, N], the op's second output

  // The exact score (base + 1e-4) * mean_g ||v W_o^g||_1 at need & ~done:
  // one projected_value_norm call on the rows of every head gathered side
  // by side, padded to the longest head with token 0 (ignored).
  void compute(const std::vector<uint8_t>& need) {
    const int64_t B = base.size(0), H = base.size(1), N = base.size(2), D = v.size(3);
    std::vector<std::vector<int64_t>> todo(B * H);
    int64_t M = 0;
    for (int64_t r = 0; r < B * H; ++r) {
      for (int64_t t = 0; t < N; ++t)
        if (need[r * N + t] && !done[r * N + t]) todo[r].push_back(t);
      M = std::max<int64_t>(M, todo[r].size());
    }
    if (M == 0) return;
    at::Tensor idx = at::zeros({B, H, M}, base.options().dtype(at::kLong));
    int64_t* ip = idx.data_ptr<int64_t>();
    for (int64_t r = 0; r < B * H; ++r) std::copy(todo[r].begin(), todo[r].end(), ip + r * M);
    const at::Tensor rows = v.gather(2, idx.unsqueeze(-1).expand({B, H, M, D}));
    // float64 for a float64 v: the bounds are float32
    const at::Tensor exact = critical_score(base.gather(-1, idx), rows, wo).to(at::kFloat).contiguous();
    const float* ep = exact.data_ptr<float>();
    for (int64_t r = 0; r < B * H; ++r)
      for (size_t i = 0; i < todo[r].size(); ++i) {
        const int64_t t = r * N + todo[r][i];
        hi[t] = lo[t] = ep[r * M + i];
        done[t] = 1;
      }
  }
};

void check_args(const at::Tensor& base, const at::Tensor& v, const at::Tensor& wo, const at::Tensor& norm_bound,
                const at::Tensor& taken, int64_t rest, int64_t sink, int64_t recent, int64_t pool_kernel,
                const std::string& pool) {
  check_dims(base, "base", 3, "[B, H_kv, N]");
  TORCH_CHECK(base.scalar_type() == at::kFloat, "base must be float32, got ", base.scalar_type());
  check_projected_value_args(v, wo, 1);
  for (const at::Tensor* t : {&base, &v, &wo, &norm_bound, &taken})
    TORCH_CHECK(t->is_cpu(), "_criticalkv_stage2 runs on CPU tensors only, got one on ", t->device());
  TORCH_CHECK(v.size(0) == base.size(0) && v.size(1) == base.size(1) && v.size(2) == base.size(2),
              "v must be [B, H_kv, N, D] with base's [B, H_kv, N] = ", base.sizes(), ", got ", v.sizes());
  TORCH_CHECK(norm_bound.dim() == 1 && norm_bound.size(0) == base.size(1) && norm_bound.scalar_type() == at::kFloat,
              "norm_bound must be float32 [H_kv] = [", base.size(1), "], got ", norm_bound.scalar_type(), " ",
              norm_bound.sizes());
  TORCH_CHECK(sink >= 0 && recent >= 0 && sink + recent <= base.size(2), "sink = ", sink, " and recent = ", recent,
              " must be >= 0 with sink + recent <= N = ", base.size(2));
  const int64_t C = base.size(2) - sink - recent;
  TORCH_CHECK(taken.scalar_type() == at::kBool && taken.dim() == 3 && taken.size(0) == base.size(0) &&
                  taken.size(1) == base.size(1) && taken.size(2) == C,
              "taken must be bool [B, H_kv, N - sink - recent] = [", base.size(0), ", ", base.size(1), ", ", C,
              "], got ", taken.scalar_type(), " ", taken.sizes());
  TORCH_CHECK(rest >= 0, "rest must be >= 0, got ", rest);
  TORCH_CHECK(pool_kernel == 0 || pool_kernel % 2 == 1, "pool_kernel must be 0 or odd, got ", pool_kernel);
  TORCH_CHECK(pool == "max" || pool == "avg", "pool must be 'max' or 'avg', got '", pool, "'");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> criticalkv_stage2_impl(const at::Tensor& base_in, const at::Tensor& v, const at::Tensor& wo,
                                  const at::Tensor& norm_bound, const at::Tensor& taken_in, int64_t rest,
                                  bool per_head, int64_t sink, int64_t recent, int64_t pool_kernel,
                                  c10::string_view pool_sv) {
  const std::string pool(pool_sv.data(), pool_sv.size());
  check_args(base_in, v, wo, norm_bound, taken_in, rest, sink, recent, pool_kernel, pool);
  const int64_t B = base_in.size(0), H = base_in.size(1), N = base_in.size(2);
  obc::Stage2Layout l;
  l.rows = B * H, l.N = N, l.sink = sink, l.recent = recent, l.pool_kernel = pool_kernel;
  l.pool = pool == "max" ? obc::Pool::Max : obc::Pool::Avg;
  l.group_rows = per_head ? 1 : H;
  const int64_t C = l.C(), groups = l.rows / l.group_rows;
  at::Tensor picks = at::zeros({B, H, C}, taken_in.options());
  at::Tensor exact = at::zeros({B, H, N}, taken_in.options());
  if (rest == 0 || C == 0) return {picks, exact};

  const at::Tensor base = base_in.contiguous();
  const at::Tensor taken = taken_in.contiguous();
  const uint8_t* tk = reinterpret_cast<const uint8_t*>(taken.data_ptr<bool>());
  Scores sc{base, v, wo, std::vector<float>(l.rows * N), std::vector<float>(l.rows * N),
            reinterpret_cast<uint8_t*>(exact.data_ptr<bool>())};
  // Step 1: hi >= score >= lo with b = mean_g sqrt(hidden) sigma_max(W_o^g) ||v||.
  const at::Tensor vnorm = at::linalg_vector_norm(v.to(at::kFloat), 2, {-1}).contiguous();
  const float *bp = base.data_ptr<float>(), *vn = vnorm.data_ptr<float>(), *nb = norm_bound.data_ptr<float>();
  bool finite = true;
  for (int64_t i = 0; i < l.rows * N; ++i) {
    const float f = bp[i] + static_cast<float>(kCriticalEps), b = nb[(i / N) % H] * vn[i] * (1 + kBoundSlack);
    sc.hi[i] = std::max(f, 0.0f) * b, sc.lo[i] = std::min(f, 0.0f) * b;
    finite = finite && std::isfinite(sc.hi[i]) && std::isfinite(sc.lo[i]);
  }
  std::vector<double> hi_p(l.rows * C), lo_p(l.rows * C), wmin(l.rows * N), tau(groups);
  std::vector<uint8_t> mark(l.rows * C), need(l.rows * N);
  uint8_t* out = reinterpret_cast<uint8_t*>(picks.data_ptr<bool>());
  if (!finite) {
    sc.compute(std::vector<uint8_t>(l.rows * N, 1));
    obc::stage2_pool(l, sc.hi.data(), hi_p.data());
    obc::stage2_top_free(l, hi_p.data(), tk, rest, out);
    return {picks, exact};
  }
  const bool by_max = l.pool == obc::Pool::Max && pool_kernel > 1;
  // Step 2, the seed: the picks by the bound; the max of a window needs only
  // the tokens holding its bound's max, an average every token.
  obc::stage2_pool(l, sc.hi.data(), hi_p.data());
  obc::stage2_top_free(l, hi_p.data(), tk, rest, mark.data());
  if (!by_max) std::fill(hi_p.begin(), hi_p.end(), 0.0);  // any marked window
  obc::stage2_window_min(l, mark.data(), hi_p.data(), wmin.data());
  for (int64_t i = 0; i < l.rows * N; ++i) need[i] = by_max ? sc.hi[i] >= wmin[i] : wmin[i] < INFINITY;
  sc.compute(need);
  // Step 3: `rest` candidates score at least tau; open windows can still make the cut.
  obc::stage2_pool(l, sc.hi.data(), hi_p.data());
  obc::stage2_pool(l, sc.lo.data(), lo_p.data());
  obc::stage2_kth_free(l, lo_p.data(), tk, rest, tau.data());
  const auto tau_of = [&](int64_t row) { return tau[row / l.group_rows]; };
  for (int64_t i = 0; i < l.rows * C; ++i)
    mark[i] = !tk[i] && hi_p[i] >= tau_of(i / C) && hi_p[i] > lo_p[i];
  // Step 4: one round settles every open window.
  if (!by_max) std::fill(lo_p.begin(), lo_p.end(), 0.0);
  obc::stage2_window_min(l, mark.data(), lo_p.data(), wmin.data());
  for (int64_t i = 0; i < l.rows * N; ++i)
    need[i] = by_max ? sc.hi[i] > wmin[i] && sc.hi[i] >= tau_of(i / N) : wmin[i] < INFINITY;
  sc.compute(need);
  // Step 5: every candidate that can make the cut has its exact pooled score.
  obc::stage2_pool(l, sc.hi.data(), hi_p.data());
  obc::stage2_top_free(l, hi_p.data(), tk, rest, out);
  return {picks, exact};
}

}  // namespace obcache

TORCH_LIBRARY_FRAGMENT(obcache, m) {
  m.def(
      "_criticalkv_stage2(Tensor base, Tensor v, Tensor wo, Tensor norm_bound, Tensor taken, int rest, "
      "bool per_head, int sink, int recent, int pool_kernel, str pool) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(obcache, CPU, m) { m.impl("_criticalkv_stage2", &obcache::criticalkv_stage2_impl); }

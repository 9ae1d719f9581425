// torch.ops.obcache.select and select_adaptive: schemas, argument checks and
// the CPU implementations (select_op_cuda.cpp has the CUDA ones). The
// specification is obcache/reference.py `select` / `select_adaptive`.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "kernels/select_cpu.h"
#include "torch/checks.h"
#include "torch/select_compact.h"

namespace obcache {

bool debug_checks_enabled() {
  const char* e = std::getenv("OBCACHE_DEBUG_CHECKS");
  return e != nullptr && std::strcmp(e, "0") != 0 && e[0] != '\0';
}

obc::Pool parse_pool(c10::string_view pool) {
  if (pool == "max") return obc::Pool::Max;
  if (pool == "avg") return obc::Pool::Avg;
  TORCH_CHECK(false, "pool must be one of ('max', 'avg'), got '", std::string(pool.data(), pool.size()), "'");
}

void check_pool_kernel(int64_t pool_kernel) {
  TORCH_CHECK(pool_kernel == 0 || pool_kernel == 1 || (pool_kernel > 1 && pool_kernel % 2 == 1),
              "pool_kernel must be 0, 1 (no pooling) or an odd number > 1, got ", pool_kernel);
}

namespace {

void check_start_meta(const std::optional<at::Tensor>& start, int64_t B, const at::Device& device) {
  if (!start.has_value()) return;
  const at::Tensor& s = *start;
  TORCH_CHECK(s.dim() == 1 && s.size(0) == B, "start must have shape [B] = [", B, "], got ", s.sizes());
  TORCH_CHECK(s.scalar_type() == at::kLong, "start must be int64, got ", s.scalar_type());
  TORCH_CHECK(s.device() == device, "start must be on the same device as the scores (", device, "), got ",
              s.device());
}

void check_start_values(const at::Tensor& start_cpu, int64_t N) {
  const at::Tensor s = start_cpu.contiguous();
  const int64_t* p = s.data_ptr<int64_t>();
  for (int64_t b = 0; b < s.numel(); ++b)
    TORCH_CHECK(p[b] >= 0 && p[b] <= N, "start[", b, "] must be in [0, N] = [0, ", N, "], got ", p[b]);
}

// float32 / float64 scores with a contiguous last dim; other float dtypes are
// converted (exactly) to float32.
at::Tensor score_operand(const at::Tensor& scores) {
  at::Tensor s = scores;
  if (s.scalar_type() != at::kFloat && s.scalar_type() != at::kDouble) s = s.to(at::kFloat);
  if (s.size(-1) > 1 && s.stride(-1) != 1) s = s.contiguous();
  return s;
}

void check_scores(const at::Tensor& scores) {
  check_dims(scores, "scores", 3, "[B, H, N]");
  TORCH_CHECK(at::isFloatingType(scores.scalar_type()), "scores must be a floating-point tensor, got ",
              scores.scalar_type());
}

at::Tensor keep_all(int64_t B, int64_t H, int64_t N, const at::TensorOptions& opts) {
  return at::arange(N, opts.dtype(at::kLong)).expand({B, H, N}).contiguous();
}

}  // namespace

void check_select_scalars(int64_t B, int64_t N, int64_t budget, int64_t sink, int64_t recent,
                          int64_t pool_kernel, c10::string_view pool, const std::optional<at::Tensor>& start,
                          const at::Device& device, const std::string& budget_note) {
  check_pool_kernel(pool_kernel);
  parse_pool(pool);
  TORCH_CHECK(sink >= 0, "sink must be >= 0, got ", sink);
  TORCH_CHECK(recent >= 0, "recent must be >= 0, got ", recent);
  check_start_meta(start, B, device);
  if (budget >= N) return;  // keeps everything
  const uint64_t kept = kept_ends(sink, recent);
  TORCH_CHECK(budget > 0 && static_cast<uint64_t>(budget) >= kept, "budget must be >= sink + recent = ", kept,
              " and > 0, got ", budget, budget_note);
  if (start.has_value() && (start->is_cpu() || debug_checks_enabled())) check_start_values(start->cpu(), N);
}

void check_select_args(const at::Tensor& scores, int64_t budget, int64_t sink, int64_t recent,
                       int64_t pool_kernel, c10::string_view pool, const std::optional<at::Tensor>& start) {
  check_scores(scores);
  check_select_scalars(scores.size(0), scores.size(2), budget, sink, recent, pool_kernel, pool, start,
                       scores.device());
}

at::Tensor select_run_cpu(const obc::SelectParams& base, const at::Tensor& scores, const at::Tensor& start) {
  obc::SelectParams p = base;
  at::Tensor out = at::empty({p.B, p.H, p.budget}, scores.options().dtype(at::kLong));
  at::Tensor st = start.defined() ? start.contiguous() : start;
  p.scores = scores.data_ptr();
  p.start = st.defined() ? st.data_ptr<int64_t>() : nullptr;
  p.out = out.data_ptr<int64_t>();
  at::parallel_for(0, p.B * p.H, 1, [&](int64_t r0, int64_t r1) { obc::select_rows_cpu(p, r0, r1); });
  return out;
}

at::Tensor select_impl(const at::Tensor& scores_in, int64_t budget, int64_t sink, int64_t recent,
                       int64_t pool_kernel, c10::string_view pool, const std::optional<at::Tensor>& start) {
  check_select_args(scores_in, budget, sink, recent, pool_kernel, pool, start);
  const int64_t B = scores_in.size(0), H = scores_in.size(1), N = scores_in.size(2);
  if (budget >= N) return keep_all(B, H, N, scores_in.options());
  const at::Tensor scores = score_operand(scores_in);
  obc::SelectParams p;
  p.dtype = scores.scalar_type() == at::kDouble ? obc::DType::F64 : obc::DType::F32;
  p.B = B;
  p.H = H;
  p.N = N;
  p.s_sb = scores.stride(0);
  p.s_sh = scores.stride(1);
  p.budget = budget;
  p.sink = sink;
  p.recent = recent;
  p.pool_kernel = pool_kernel;
  p.pool = parse_pool(pool);
  const at::Tensor st = start.has_value() ? *start : at::Tensor();
  if (scores.is_cuda()) {
#ifdef OBCACHE_WITH_CUDA
    return select_run_cuda(p, scores, st);
#else
    TORCH_CHECK(false, "obcache was built without CUDA kernels; scores is on ", scores.device());
#endif
  }
  TORCH_CHECK(scores.is_cpu(), "scores must be a CPU or CUDA tensor, got ", scores.device());
  return select_run_cpu(p, scores, st);
}

std::tuple<at::Tensor, at::Tensor> select_adaptive_impl(const at::Tensor& scores_in, int64_t total_budget,
                                                      double floor, int64_t sink, int64_t recent,
                                                      int64_t pool_kernel, c10::string_view pool) {
  check_scores(scores_in);
  check_pool_kernel(pool_kernel);
  const obc::Pool pl = parse_pool(pool);
  TORCH_CHECK(sink >= 0, "sink must be >= 0, got ", sink);
  TORCH_CHECK(recent >= 0, "recent must be >= 0, got ", recent);
  TORCH_CHECK(std::isfinite(floor) && floor >= 0.0 && floor <= 1.0, "floor must be in [0, 1], got ", floor);
  const int64_t B = scores_in.size(0), H = scores_in.size(1), N = scores_in.size(2);
  const auto long_opts = scores_in.options().dtype(at::kLong);
  if (H == 0 || total_budget >= H * N)
    return {keep_all(B, H, N, scores_in.options()), at::full({B, H}, N, long_opts)};
  // As the reference: per_head = total_budget // H (floor division),
  // f = max(sink + recent, int(floor * per_head)).
  int64_t per_head = total_budget / H;
  if (total_budget % H != 0 && total_budget < 0) per_head -= 1;
  const uint64_t kept = kept_ends(sink, recent);
  const int64_t share = std::max<int64_t>(0, static_cast<int64_t>(floor * static_cast<double>(per_head)));
  const uint64_t f = std::max(kept, static_cast<uint64_t>(share));
  // f <= N first: H * f then fits in int64 (H * N is the scores' size).
  TORCH_CHECK(f <= static_cast<uint64_t>(N) && H * static_cast<int64_t>(f) <= total_budget, "total_budget=",
              total_budget, " cannot give each of ", H, " heads its floor of ", f, " tokens (floor=", floor,
              ", sink + recent = ", kept, ", N = ", N, ")");
  const at::Tensor scores = score_operand(scores_in);
  obc::SelectAdaptiveParams p;
  p.scores = scores.data_ptr();
  p.dtype = scores.scalar_type() == at::kDouble ? obc::DType::F64 : obc::DType::F32;
  p.B = B;
  p.H = H;
  p.N = N;
  p.s_sb = scores.stride(0);
  p.s_sh = scores.stride(1);
  p.floor_tokens = static_cast<int64_t>(f);
  p.extra = total_budget - H * p.floor_tokens;
  p.sink = sink;
  p.recent = recent;
  p.pool_kernel = pool_kernel;
  p.pool = pl;
  if (scores.is_cuda()) {
#ifdef OBCACHE_WITH_CUDA
    return select_adaptive_run_cuda(p, scores);
#else
    TORCH_CHECK(false, "obcache was built without CUDA kernels; scores is on ", scores.device());
#endif
  }
  at::Tensor keep = at::empty({B, H, N}, scores.options().dtype(at::kByte));
  at::Tensor lengths = at::empty({B, H}, long_opts);
  uint8_t* kp = keep.data_ptr<uint8_t>();
  int64_t* lp = lengths.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) { obc::select_adaptive_mark_cpu(p, kp, lp, b0, b1); });
  const int64_t Lmax = B == 0 ? 0 : lengths.max().item<int64_t>();
  at::Tensor out = at::empty({B, H, Lmax}, long_opts);
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, B * H, 1, [&](int64_t r0, int64_t r1) { obc::select_adaptive_emit_cpu(kp, N, Lmax, op, r0, r1); });
  return {out, lengths};
}

}  // namespace obcache

TORCH_LIBRARY_FRAGMENT(obcache, m) {
  m.def(
      "select(Tensor scores, int budget, *, int sink=0, int recent=0, int pool_kernel=0, str pool=\"max\", "
      "Tensor? start=None) -> Tensor");
  m.def(
      "select_adaptive(Tensor scores, int total_budget, *, float floor=0.2, int sink=0, int recent=0, "
      "int pool_kernel=0, str pool=\"max\") -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(obcache, CPU, m) {
  m.impl("select", &obcache::select_impl);
  m.impl("select_adaptive", &obcache::select_adaptive_impl);
}

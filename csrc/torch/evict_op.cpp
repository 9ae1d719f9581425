// torch.ops.obcache.evict = saliency + select + compact_ in one call, with
// every check (saliency arguments, budget, sink/recent, pooling, start, k/v
// aliasing) done before k or v is written. CPU registration here; the CUDA
// one (device guard) is in evict_op_cuda.cpp. Both run evict_impl, whose
// pieces dispatch on the device themselves.
#include <torch/library.h>

#include "torch/saliency_args.h"
#include "torch/select_compact.h"

namespace obcache {

at::Tensor evict_impl(at::Tensor k, at::Tensor v, const at::Tensor& q_window, int64_t budget,
                      c10::string_view score, int64_t sink, std::optional<int64_t> recent, int64_t pool_kernel,
                      c10::string_view pool, c10::string_view group_reduce, std::optional<double> scale,
                      const std::optional<at::Tensor>& start, const std::optional<at::Tensor>& o) {
  check_saliency_args(k, v, q_window, score, group_reduce, scale, /*causal=*/true, "sum", o);
  const int64_t B = k.size(0), H = k.size(1), N = k.size(2), W = q_window.size(2);
  const int64_t rec = recent.value_or(W);
  // A caller who left recent out may not know it became W: say so.
  const std::string note = recent.has_value() ? "" : " (recent was not given, so it is W = " + std::to_string(W) +
                                                         ", the window's length; pass recent=0 to keep no recent tokens)";
  check_select_scalars(B, N, budget, sink, rec, pool_kernel, pool, start, k.device(), note);
  check_writable(k, v);
  if (budget >= N) return at::arange(N, k.options().dtype(at::kLong)).expand({B, H, N}).contiguous();
  const at::Tensor scores = saliency_impl(k, v, q_window, score, group_reduce, scale, /*causal=*/true, "sum", o);
  const at::Tensor idx = select_impl(scores, budget, sink, rec, pool_kernel, pool, start);
  compact_run(k, v, idx, std::nullopt);  // indices valid by construction
  bump_versions(k, v);
  return idx;
}

}  // namespace obcache

TORCH_LIBRARY_FRAGMENT(obcache, m) {
  m.def(
      "evict(Tensor(a!) k, Tensor(b!) v, Tensor q_window, int budget, *, str score=\"joint\", int sink=0, "
      "int? recent=None, int pool_kernel=7, str pool=\"max\", str group_reduce=\"sum\", float? scale=None, "
      "Tensor? start=None, Tensor? o=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(obcache, CPU, m) { m.impl("evict", &obcache::evict_impl); }

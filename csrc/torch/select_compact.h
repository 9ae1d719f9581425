// What select_op.cpp, compact_op.cpp, evict_op.cpp and their *_cuda.cpp
// halves share: argument checks (run before anything is written) and the
// device-dispatching implementations. The CUDA halves are defined only in
// CUDA builds (OBCACHE_WITH_CUDA).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>
#include <string>

#include "kernels/compact_params.h"
#include "kernels/select_params.h"

namespace obcache {

// OBCACHE_DEBUG_CHECKS=1 makes the CUDA compact_ copy indices (and lengths)
// to the host and validate them before the kernel runs (a device sync).
bool debug_checks_enabled();

// ---- select ----
obc::Pool parse_pool(c10::string_view pool);
void check_pool_kernel(int64_t pool_kernel);
// Checks everything select needs about its arguments; N is scores.size(-1).
void check_select_args(const at::Tensor& scores, int64_t budget, int64_t sink, int64_t recent,
                       int64_t pool_kernel, c10::string_view pool, const std::optional<at::Tensor>& start);
// Same checks without a scores tensor (evict checks before computing scores);
// budget_note is appended to the message of a budget below sink + recent
// (evict: where recent came from).
void check_select_scalars(int64_t B, int64_t N, int64_t budget, int64_t sink, int64_t recent,
                          int64_t pool_kernel, c10::string_view pool, const std::optional<at::Tensor>& start,
                          const at::Device& device, const std::string& budget_note = "");
// sink + recent for sink, recent >= 0, unsigned: two huge values would wrap
// an int64 sum negative, which every budget would then pass.
inline uint64_t kept_ends(int64_t sink, int64_t recent) {
  return static_cast<uint64_t>(sink) + static_cast<uint64_t>(recent);
}

at::Tensor select_impl(const at::Tensor& scores, int64_t budget, int64_t sink, int64_t recent, int64_t pool_kernel,
                       c10::string_view pool, const std::optional<at::Tensor>& start);
std::tuple<at::Tensor, at::Tensor> select_adaptive_impl(const at::Tensor& scores, int64_t total_budget,
                                                        double floor, int64_t sink, int64_t recent,
                                                        int64_t pool_kernel, c10::string_view pool);
// Kernel only (arguments already checked, budget < N).
at::Tensor select_run_cpu(const obc::SelectParams& base, const at::Tensor& scores, const at::Tensor& start);
#ifdef OBCACHE_WITH_CUDA
at::Tensor select_run_cuda(const obc::SelectParams& base, const at::Tensor& scores, const at::Tensor& start);
std::tuple<at::Tensor, at::Tensor> select_adaptive_run_cuda(const obc::SelectAdaptiveParams& base,
                                                            const at::Tensor& scores);
#endif

// ---- compact_ ----
// Shapes, dtypes, devices (cheap; no data read).
void check_compact_meta(const at::Tensor& k, const at::Tensor& v, const at::Tensor& indices,
                        const std::optional<at::Tensor>& lengths);
// Index values on the host (indices/lengths are CPU tensors here).
void check_compact_values(const at::Tensor& indices_cpu, const std::optional<at::Tensor>& lengths_cpu, int64_t N);
// Kernel parameters for k, v and the contiguous idx (and len, or undefined),
// which must outlive them.
obc::CompactParams compact_params(at::Tensor& k, at::Tensor& v, const at::Tensor& idx, const at::Tensor& len);
// Checks (values on CPU always, on CUDA with OBCACHE_DEBUG_CHECKS=1), then compacts.
void compact_impl(at::Tensor& k, at::Tensor& v, const at::Tensor& indices, const std::optional<at::Tensor>& lengths);
// The kernel only (everything already checked).
void compact_run(at::Tensor& k, at::Tensor& v, const at::Tensor& indices, const std::optional<at::Tensor>& lengths);
// compact_ and evict write k and v in place: neither may overlap itself, nor
// share an element with the other (it would be compacted twice), as far as
// at::get_overlap_status and, for views of one buffer it cannot judge,
// obc::views_share_elements can tell. They have no derivative: with grad
// mode on, neither may require grad (a leaf's value, or a non-leaf's history,
// would silently go wrong), and an inference tensor is written only inside
// inference mode, as ATen's in-place ops require. Checked before any write.
void check_writable(const at::Tensor& k, const at::Tensor& v);
// check_writable's grad part.
void check_no_grad(const at::Tensor& k, const at::Tensor& v);
// The Autograd kernel of compact_ and evict (module.cpp): check_no_grad, then
// on to the device kernel. The generic fallback the other ops have refuses a
// leaf k that requires grad before the op's checks run, in words that name
// neither k nor v; there is no graph to build (the outputs are int64 indices
// or nothing), so nothing else is lost.
void writes_kv_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack);
// After the write: k's and v's version counters move on, as after an
// in-place ATen op, so a copy autograd saved of either fails backward.
void bump_versions(at::Tensor& k, at::Tensor& v);
#ifdef OBCACHE_WITH_CUDA
void compact_run_cuda(at::Tensor& k, at::Tensor& v, const at::Tensor& indices,
                      const std::optional<at::Tensor>& lengths);
#endif

// ---- evict (evict_op.cpp) ----
at::Tensor evict_impl(at::Tensor k, at::Tensor v, const at::Tensor& q_window, int64_t budget,
                      c10::string_view score, int64_t sink, std::optional<int64_t> recent, int64_t pool_kernel,
                      c10::string_view pool, c10::string_view group_reduce, std::optional<double> scale,
                      const std::optional<at::Tensor>& start, const std::optional<at::Tensor>& o);

}  // namespace obcache

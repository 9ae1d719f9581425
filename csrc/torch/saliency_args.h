// Argument checks of `saliency` and the device-dispatching implementation,
// shared by saliency_op.cpp (schema, CPU), saliency_op_cuda.cpp (CUDA) and
// evict_op.cpp (which validates everything before it touches k or v).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <optional>

#include "kernels/saliency_params.h"

namespace obcache {

obc::Score parse_score(c10::string_view score);
obc::GroupReduce parse_group_reduce(c10::string_view group_reduce);
obc::QueryReduce parse_query_reduce(c10::string_view query_reduce);

// Every check of saliency's arguments (ranks, shapes, H_q % H_kv, 0 < W <= N,
// dtypes, devices, names, contiguous last dims, finite scale; o, when given,
// shaped, typed and placed as q_window); throws a c10::Error naming the
// argument and the value seen. Reads no tensor data.
void check_saliency_args(const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_window,
                         c10::string_view score, c10::string_view group_reduce, std::optional<double> scale,
                         bool causal, c10::string_view query_reduce, const std::optional<at::Tensor>& o);

// Scores [B, H_kv, N]: float32, or float64 for float64 inputs (CPU only).
// Checks its arguments, then runs the CPU or the CUDA kernel (k's device).
// Any non-last strides of k, v, q_window, o are read in place, without
// copies. o: the window queries' attention output [B, H_q, W, D] when the
// caller has it (read by key, joint and loo instead of computing it).
at::Tensor saliency_impl(const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_window,
                         c10::string_view score, c10::string_view group_reduce, std::optional<double> scale,
                         bool causal, c10::string_view query_reduce, const std::optional<at::Tensor>& o);

// The op torch.ops.obcache.saliency (registered for CPU and CUDA): the scores
// of saliency_impl (wo must be None), and `critical` and `laprox`, which need
// wo (o_proj's weight [hidden, H_q * D]) and are composed from saliency_impl
// and projected_value_norm_impl.
at::Tensor saliency_op(const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_window,
                       c10::string_view score, c10::string_view group_reduce, std::optional<double> scale,
                       bool causal, c10::string_view query_reduce, const std::optional<at::Tensor>& wo,
                       const std::optional<at::Tensor>& o);

#ifdef OBCACHE_WITH_CUDA
// CUDA half of saliency_impl (saliency_op_cuda.cpp): p fully described except
// p.out; allocates the output and the workspace, launches on the current
// stream under a device guard.
at::Tensor saliency_run_cuda(const obc::SaliencyParams& p, const at::Tensor& k);
#endif

}  // namespace obcache

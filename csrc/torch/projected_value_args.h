// torch.ops.obcache.projected_value_norm: argument checks and the
// device-dispatching implementation, shared by projected_value_op.cpp
// (schema, CPU), projected_value_op_cuda.cpp (CUDA) and the saliency binding
// (the `critical` and `laprox` scores).
#pragma once

#include <ATen/ATen.h>

#include "kernels/projected_value_params.h"

namespace obcache {

// Every check (ranks, wo's columns a positive multiple of v's D with
// H_q % H_kv == 0, dtypes, devices, contiguous last dims, p in {1, 2});
// throws a c10::Error naming the argument and the value seen.
void check_projected_value_args(const at::Tensor& v, const at::Tensor& wo, int64_t p);

// The kernel's description of v and wo (checked arguments), out unset.
obc::ProjectedValueParams describe_projected_value(const at::Tensor& v, const at::Tensor& wo, int64_t p);

// [B, H_q, N]: ||v_n W_o^j||_p per query head j (float32; float64 for
// float64 inputs, CPU only). Checks its arguments first.
at::Tensor projected_value_norm_impl(const at::Tensor& v, const at::Tensor& wo, int64_t p);

// obcache.reference.CRITICAL_EPS: CriticalKV's floor under the attention
// score, so that a token no query attends to still ranks by its value.
constexpr double kCriticalEps = 1e-4;

// CriticalKV's score, (attn + kCriticalEps) * the mean over each KV head's
// query heads of ||v_n W_o^j||_1: attn [B, H_kv, N] (float32), v
// [B, H_kv, N, D]. One expression for the saliency op and the stage-2 op, so
// that they round alike.
at::Tensor critical_score(const at::Tensor& attn, const at::Tensor& v, const at::Tensor& wo);
// The same from the norms pn = projected_value_norm(v, wo, 1) [B, H_q, N].
at::Tensor critical_from_norms(const at::Tensor& attn, const at::Tensor& pn);

#ifdef OBCACHE_WITH_CUDA
// CUDA half (projected_value_op_cuda.cpp): prm fully described except out.
at::Tensor projected_value_run_cuda(const obc::ProjectedValueParams& prm, const at::Tensor& v);
#endif

}  // namespace obcache

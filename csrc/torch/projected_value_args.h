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

// [B, H_q, N]: ||v_n W_o^j||_p per query head j (float32; float64 for
// float64 inputs, CPU only). Checks its arguments first.
at::Tensor projected_value_norm_impl(const at::Tensor& v, const at::Tensor& wo, int64_t p);

#ifdef OBCACHE_WITH_CUDA
// CUDA half (projected_value_op_cuda.cpp): prm fully described except out.
at::Tensor projected_value_run_cuda(const obc::ProjectedValueParams& prm, const at::Tensor& v);
#endif

}  // namespace obcache

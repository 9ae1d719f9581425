// torch.ops.obcache.projected_value_norm: schema, argument checks and the CPU
// implementation (projected_value_op_cuda.cpp registers the CUDA one). The
// specification is obcache/reference.py `projected_value_norm`; the kernel is
// kernels/projected_value_cpu.cpp.
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include "kernels/projected_value_cpu.h"
#include "torch/checks.h"
#include "torch/projected_value_args.h"

namespace obcache {

void check_projected_value_args(const at::Tensor& v, const at::Tensor& wo, int64_t p) {
  TORCH_CHECK(p == 1 || p == 2, "p must be 1 or 2, got ", p);
  check_dims(v, "v", 4, "[B, H_kv, N, D]");
  check_dims(wo, "wo", 2, "[hidden, H_q * D] (o_proj.weight)");
  check_same_device(v, "v", wo, "wo");
  TORCH_CHECK(v.is_cpu() || v.is_cuda(), "v must be a CPU or CUDA tensor, got ", v.device());
  TORCH_CHECK(v.is_cpu() || v.scalar_type() != at::kDouble,
              "v is float64, which projected_value_norm supports on CPU only (CUDA: float32, float16, bfloat16)");
  to_obc_dtype(v, "v", /*allow_f64=*/v.is_cpu());
  check_same_dtype(v, "v", wo, "wo");
  const int64_t Hkv = v.size(1), D = v.size(3);
  TORCH_CHECK(D > 0, "v must have a head dim D > 0, got shape ", v.sizes());
  TORCH_CHECK(Hkv > 0, "v must have at least one KV head, got H_kv = 0 (shape ", v.sizes(), ")");
  TORCH_CHECK(wo.size(1) % D == 0 && wo.size(1) > 0, "wo must have H_q * D columns, a positive multiple of v's D = ",
              D, ", got ", wo.size(1), " (shape ", wo.sizes(), ")");
  const int64_t Hq = wo.size(1) / D;
  TORCH_CHECK(Hq % Hkv == 0, "wo's H_q = wo.shape[1] / D = ", Hq, " must be a multiple of v's H_kv = ", Hkv,
              " (wo shape ", wo.sizes(), ", D = ", D, ")");
  check_last_dim_contiguous(v, "v");
  check_last_dim_contiguous(wo, "wo");
}

obc::ProjectedValueParams describe_projected_value(const at::Tensor& v, const at::Tensor& wo, int64_t p) {
  obc::ProjectedValueParams prm;
  prm.dtype = to_obc_dtype(v, "v", true);
  prm.v = v.data_ptr();
  prm.wo = wo.data_ptr();
  prm.B = v.size(0), prm.Hkv = v.size(1), prm.N = v.size(2), prm.D = v.size(3);
  prm.G = wo.size(1) / prm.D / prm.Hkv;
  prm.hidden = wo.size(0);
  prm.v_sb = v.stride(0), prm.v_sh = v.stride(1), prm.v_sn = v.stride(2);
  prm.wo_so = wo.stride(0);
  prm.p = static_cast<int>(p);
  return prm;
}

at::Tensor projected_value_norm_impl(const at::Tensor& v, const at::Tensor& wo, int64_t p) {
  check_projected_value_args(v, wo, p);
  obc::ProjectedValueParams prm = describe_projected_value(v, wo, p);
  if (v.is_cuda()) {
#ifdef OBCACHE_WITH_CUDA
    return projected_value_run_cuda(prm, v);
#else
    TORCH_CHECK(false, "obcache was built without CUDA kernels; v is on ", v.device());
#endif
  }
  const bool f64 = prm.dtype == obc::DType::F64;
  at::Tensor out = at::empty({prm.B, prm.Hkv * prm.G, prm.N}, v.options().dtype(f64 ? at::kDouble : at::kFloat));
  if (out.numel() == 0) return out;
  prm.out = out.data_ptr();
  const size_t ws_bytes = obc::projected_value_cpu_workspace_bytes(prm);
  at::parallel_for(0, obc::projected_value_cpu_tasks(prm), 1, [&](int64_t t0, int64_t t1) {
    c10::DataPtr ws = c10::GetCPUAllocator()->allocate(ws_bytes);
    obc::projected_value_cpu(prm, t0, t1, ws.get());
  });
  return out;
}

at::Tensor critical_score(const at::Tensor& attn, const at::Tensor& v, const at::Tensor& wo) {
  return critical_from_norms(attn, projected_value_norm_impl(v, wo, 1));
}

at::Tensor critical_from_norms(const at::Tensor& attn, const at::Tensor& pn) {
  return (attn + kCriticalEps) * pn.view({attn.size(0), attn.size(1), -1, attn.size(2)}).mean(2);
}

}  // namespace obcache

TORCH_LIBRARY_FRAGMENT(obcache, m) { m.def("projected_value_norm(Tensor v, Tensor wo, int p=1) -> Tensor"); }

TORCH_LIBRARY_IMPL(obcache, CPU, m) { m.impl("projected_value_norm", &obcache::projected_value_norm_impl); }

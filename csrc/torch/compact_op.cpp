// torch.ops.obcache.compact_: schema, checks and the CPU implementation
// (compact_op_cuda.cpp registers the CUDA one). In place: k and v keep their
// storage; row i of each (b, h) becomes old row indices[b, h, i].
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include "kernels/compact_cpu.h"
#include "kernels/view_overlap.h"
#include "torch/checks.h"
#include "torch/select_compact.h"

namespace obcache {

void check_compact_meta(const at::Tensor& k, const at::Tensor& v, const at::Tensor& indices,
                        const std::optional<at::Tensor>& lengths) {
  check_dims(k, "k", 4, "[B, H_kv, N, D]");
  check_dims(v, "v", 4, "[B, H_kv, N, D]");
  TORCH_CHECK(at::isFloatingType(k.scalar_type()), "k must be a floating-point tensor, got ", k.scalar_type());
  TORCH_CHECK(at::isFloatingType(v.scalar_type()), "v must be a floating-point tensor, got ", v.scalar_type());
  check_same_device(k, "k", v, "v");
  TORCH_CHECK(k.size(0) == v.size(0) && k.size(1) == v.size(1) && k.size(2) == v.size(2),
              "k and v must agree on [B, H_kv, N], got ", k.sizes(), " and ", v.sizes());
  check_last_dim_contiguous(k, "k");
  check_last_dim_contiguous(v, "v");
  const int64_t B = k.size(0), H = k.size(1), N = k.size(2);
  check_dims(indices, "indices", 3, "[B, H_kv, L]");
  TORCH_CHECK(indices.scalar_type() == at::kLong, "indices must be int64, got ", indices.scalar_type());
  check_same_device(indices, "indices", k, "k");
  TORCH_CHECK(indices.size(0) == B && indices.size(1) == H && indices.size(2) <= N,
              "indices must have shape [B, H_kv, L] = [", B, ", ", H, ", L <= ", N, "], got ", indices.sizes());
  if (lengths.has_value()) {
    const at::Tensor& l = *lengths;
    TORCH_CHECK(l.dim() == 2 && l.size(0) == B && l.size(1) == H, "lengths must have shape [B, H_kv] = [", B,
                ", ", H, "], got ", l.sizes());
    TORCH_CHECK(l.scalar_type() == at::kLong, "lengths must be int64, got ", l.scalar_type());
    check_same_device(l, "lengths", k, "k");
  }
}

void check_compact_values(const at::Tensor& indices_cpu, const std::optional<at::Tensor>& lengths_cpu, int64_t N) {
  const at::Tensor idx = indices_cpu.contiguous();
  at::Tensor len;
  if (lengths_cpu.has_value()) len = lengths_cpu->contiguous();
  const int64_t H = idx.size(1), L = idx.size(2);
  const obc::IndexError e = obc::check_compact_indices(idx.data_ptr<int64_t>(),
                                                       len.defined() ? len.data_ptr<int64_t>() : nullptr, H, L, N,
                                                       0, idx.size(0) * H);
  switch (e.kind) {
    case obc::IndexError::Ok: return;
    case obc::IndexError::BadLength:
      TORCH_CHECK(false, "lengths[", e.b, ", ", e.h, "] must be in [0, L] = [0, ", L, "], got ", e.value);
    case obc::IndexError::OutOfRange:
      TORCH_CHECK(false, "indices[", e.b, ", ", e.h, ", ", e.i, "] must be in [0, N) = [0, ", N, "), got ",
                  e.value);
    case obc::IndexError::NotIncreasing:
      TORCH_CHECK(false, "indices must be strictly increasing along the last dim (sorted, no duplicates), got indices[",
                  e.b, ", ", e.h, ", ", e.i, "] = ", e.value, " after ", e.prev);
  }
}

namespace {

obc::CompactTensor describe(at::Tensor& t) {
  obc::CompactTensor d;
  d.data = t.data_ptr();
  d.elem_size = static_cast<int64_t>(t.element_size());
  d.D = t.size(3);
  d.sb = t.stride(0);
  d.sh = t.stride(1);
  d.sn = t.stride(2);
  return d;
}

}  // namespace

obc::CompactParams compact_params(at::Tensor& k, at::Tensor& v, const at::Tensor& idx, const at::Tensor& len) {
  obc::CompactParams p;
  p.t[0] = describe(k);
  p.t[1] = describe(v);
  p.B = k.size(0);
  p.H = k.size(1);
  p.N = k.size(2);
  p.indices = idx.data_ptr<int64_t>();
  p.L = idx.size(2);
  p.lengths = len.defined() ? len.data_ptr<int64_t>() : nullptr;
  return p;
}

void compact_run(at::Tensor& k, at::Tensor& v, const at::Tensor& indices, const std::optional<at::Tensor>& lengths) {
  if (k.is_cuda()) {
#ifdef OBCACHE_WITH_CUDA
    compact_run_cuda(k, v, indices, lengths);
    return;
#else
    TORCH_CHECK(false, "obcache was built without CUDA kernels; k is on ", k.device());
#endif
  }
  TORCH_CHECK(k.is_cpu(), "k must be a CPU or CUDA tensor, got ", k.device());
  const at::Tensor idx = indices.contiguous();
  at::Tensor len;
  if (lengths.has_value()) len = lengths->contiguous();
  const obc::CompactParams p = compact_params(k, v, idx, len);
  if (p.L == 0) return;
  at::parallel_for(0, 2 * p.B * p.H, 1, [&](int64_t r0, int64_t r1) { obc::compact_rows_cpu(p, r0, r1); });
}

namespace {

// t's bytes as a strided view of its storage's (a last dim of element_size()
// bytes, stride 1), so that views of different dtypes compare too.
obc::StridedView byte_view(const at::Tensor& t) {
  const int64_t e = static_cast<int64_t>(t.element_size());
  obc::StridedView v{t.storage_offset() * e, {}, {}};
  for (int64_t j = 0; j < t.dim(); ++j) {
    v.sizes.push_back(t.size(j));
    v.strides.push_back(t.stride(j) * e);
  }
  v.sizes.push_back(e);
  v.strides.push_back(1);
  return v;
}

}  // namespace

void check_no_grad(const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(!at::GradMode::is_enabled() || (!k.requires_grad() && !v.requires_grad()),
              "k and v are rewritten in place and have no derivative: they must not require grad while grad mode "
              "is on (call under torch.no_grad() or pass detached tensors), got k.requires_grad = ",
              k.requires_grad(), ", v.requires_grad = ", v.requires_grad());
}

void writes_kv_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const auto args = stack->end() - static_cast<std::ptrdiff_t>(op.schema().arguments().size());
  check_no_grad(args[0].toTensor(), args[1].toTensor());
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

void check_writable(const at::Tensor& k, const at::Tensor& v) {
  at::assert_no_internal_overlap(k);
  at::assert_no_internal_overlap(v);
  const auto ov = at::get_overlap_status(k, v);
  // Too hard for ATen (views that are not dense, as narrowed caches are): if
  // they are views of one buffer, view_overlap.h tells them apart.
  const bool shared = ov == at::MemOverlapStatus::Full || ov == at::MemOverlapStatus::Partial ||
                      (ov == at::MemOverlapStatus::TooHard && k.storage().is_alias_of(v.storage()) &&
                       obc::views_share_elements(byte_view(k), byte_view(v)) == obc::Sharing::Yes);
  TORCH_CHECK(!shared, "k and v must not share memory (they would be compacted twice), got views of one buffer "
              "with sizes ", k.sizes(), ", ", v.sizes(), ", strides ", k.strides(), ", ", v.strides(),
              " and storage offsets ", k.storage_offset(), ", ", v.storage_offset());
  check_no_grad(k, v);
  TORCH_CHECK(c10::InferenceMode::is_enabled() || (!k.is_inference() && !v.is_inference()),
              "k and v are rewritten in place: inference tensors only inside torch.inference_mode(), got "
              "k.is_inference() = ", k.is_inference(), ", v.is_inference() = ", v.is_inference());
}

void bump_versions(at::Tensor& k, at::Tensor& v) {
  k.unsafeGetTensorImpl()->bump_version();
  v.unsafeGetTensorImpl()->bump_version();
}

void compact_impl(at::Tensor& k, at::Tensor& v, const at::Tensor& indices, const std::optional<at::Tensor>& lengths) {
  check_compact_meta(k, v, indices, lengths);
  check_writable(k, v);
  if (k.is_cpu() || debug_checks_enabled()) {
    std::optional<at::Tensor> len_cpu;
    if (lengths.has_value()) len_cpu = lengths->cpu();
    check_compact_values(indices.cpu(), len_cpu, k.size(2));
  }
  compact_run(k, v, indices, lengths);
  bump_versions(k, v);
}

namespace {

void compact_op(at::Tensor k, at::Tensor v, const at::Tensor& indices, const std::optional<at::Tensor>& lengths) {
  compact_impl(k, v, indices, lengths);
}

}  // namespace
}  // namespace obcache

TORCH_LIBRARY_FRAGMENT(obcache, m) {
  m.def("compact_(Tensor(a!) k, Tensor(b!) v, Tensor indices, Tensor? lengths=None) -> ()");
}

TORCH_LIBRARY_IMPL(obcache, CPU, m) { m.impl("compact_", &obcache::compact_op); }

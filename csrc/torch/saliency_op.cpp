// torch.ops.obcache.saliency: schema, argument checks and the CPU
// implementation (saliency_op_cuda.cpp registers the CUDA one). The
// specification is obcache/reference.py `saliency`; the kernel is
// kernels/saliency_cpu_kernel.h (entry points: kernels/saliency_cpu.cpp).
#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/saliency_cpu.h"
#include "torch/checks.h"
#include "torch/projected_value_args.h"
#include "torch/saliency_args.h"

namespace obcache {

namespace {

std::string str(c10::string_view s) { return std::string(s.data(), s.size()); }

constexpr const char* kScoreNames = "('attn', 'tova', 'vatp', 'value', 'key', 'joint', 'loo')";
// The scores of torch.ops.obcache.saliency: kScoreNames plus those needing wo.
constexpr const char* kAllScoreNames =
    "('attn', 'tova', 'vatp', 'value', 'key', 'joint', 'loo', 'critical', 'laprox')";

bool is_base_score(c10::string_view s) {
  return s == "attn" || s == "tova" || s == "vatp" || s == "value" || s == "key" || s == "joint" || s == "loo";
}

}  // namespace

obc::Score parse_score(c10::string_view s) {
  if (s == "attn") return obc::Score::Attn;
  if (s == "tova") return obc::Score::Tova;
  if (s == "vatp") return obc::Score::Vatp;
  if (s == "value") return obc::Score::Value;
  if (s == "key") return obc::Score::Key;
  if (s == "joint") return obc::Score::Joint;
  if (s == "loo") return obc::Score::Loo;
  TORCH_CHECK(false, "score must be one of ", kScoreNames, ", got '", str(s), "'");
}

obc::GroupReduce parse_group_reduce(c10::string_view s) {
  if (s == "sum") return obc::GroupReduce::Sum;
  if (s == "mean") return obc::GroupReduce::Mean;
  if (s == "max") return obc::GroupReduce::Max;
  TORCH_CHECK(false, "group_reduce must be one of ('sum', 'mean', 'max'), got '", str(s), "'");
}

obc::QueryReduce parse_query_reduce(c10::string_view s) {
  if (s == "sum") return obc::QueryReduce::Sum;
  if (s == "max") return obc::QueryReduce::Max;
  TORCH_CHECK(false, "query_reduce must be one of ('sum', 'max'), got '", str(s), "'");
}

void check_saliency_args(const at::Tensor& k, const at::Tensor& v, const at::Tensor& q, c10::string_view score,
                         c10::string_view group_reduce, std::optional<double> scale, bool /*causal*/,
                         c10::string_view query_reduce, const std::optional<at::Tensor>& o) {
  parse_score(score);
  parse_group_reduce(group_reduce);
  parse_query_reduce(query_reduce);
  check_dims(k, "k", 4, "[B, H_kv, N, D]");
  check_dims(v, "v", 4, "[B, H_kv, N, D]");
  check_dims(q, "q_window", 4, "[B, H_q, W, D]");
  check_same_device(k, "k", v, "v");
  check_same_device(k, "k", q, "q_window");
  TORCH_CHECK(k.is_cpu() || k.is_cuda(), "k must be a CPU or CUDA tensor, got ", k.device());
  TORCH_CHECK(k.is_cpu() || k.scalar_type() != at::kDouble,
              "k is float64, which saliency supports on CPU only (CUDA: float32, float16, bfloat16)");
  to_obc_dtype(k, "k", /*allow_f64=*/k.is_cpu());
  check_same_dtype(k, "k", v, "v");
  check_same_dtype(k, "k", q, "q_window");
  TORCH_CHECK(k.sizes() == v.sizes(), "k and v must have the same shape [B, H_kv, N, D], got ", k.sizes(),
              " and ", v.sizes());
  const int64_t B = k.size(0), Hkv = k.size(1), N = k.size(2), D = k.size(3);
  const int64_t Hq = q.size(1), W = q.size(2);
  TORCH_CHECK(q.size(0) == B, "q_window must have the batch size of k (", B, "), got ", q.size(0), " (shape ",
              q.sizes(), ")");
  TORCH_CHECK(q.size(3) == D, "q_window must have the head dim D of k (", D, "), got ", q.size(3), " (shape ",
              q.sizes(), ")");
  TORCH_CHECK(Hkv > 0, "k must have at least one KV head, got H_kv = 0 (shape ", k.sizes(), ")");
  // D = 0 would make the default scale 1/sqrt(D) infinite: the tensor-core
  // kernels, which scale after the product, would give NaN (0 * inf).
  TORCH_CHECK(D > 0, "k must have a head dim D > 0, got shape ", k.sizes());
  TORCH_CHECK(Hq % Hkv == 0 && Hq > 0, "q_window's H_q must be a positive multiple of k's H_kv = ", Hkv,
              ", got H_q = ", Hq);
  TORCH_CHECK(W > 0, "q_window must hold at least one window query, got W = 0 (shape ", q.sizes(), ")");
  TORCH_CHECK(W <= N, "q_window's W must be <= N = ", N, " (the window queries are the last W tokens), got W = ",
              W);
  check_last_dim_contiguous(k, "k");
  check_last_dim_contiguous(v, "v");
  check_last_dim_contiguous(q, "q_window");
  if (scale.has_value())
    TORCH_CHECK(std::isfinite(*scale), "scale must be finite (or None for 1/sqrt(D)), got ", *scale);
  if (o.has_value()) {
    check_same_device(q, "q_window", *o, "o");
    check_same_dtype(q, "q_window", *o, "o");
    TORCH_CHECK(o->sizes() == q.sizes(), "o must have q_window's shape [B, H_q, W, D] = ", q.sizes(),
                " (the window queries' attention output), got ", o->sizes());
    check_last_dim_contiguous(*o, "o");
  }
}

namespace {

// Everything of p except out (and, for float64 inputs, q: see below).
obc::SaliencyParams describe(const at::Tensor& k, const at::Tensor& v, const at::Tensor& q,
                             c10::string_view score, c10::string_view group_reduce, std::optional<double> scale,
                             bool causal, c10::string_view query_reduce, const std::optional<at::Tensor>& o) {
  obc::SaliencyParams p;
  p.dtype = to_obc_dtype(k, "k", true);
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.q = q.data_ptr();
  p.B = k.size(0);
  p.Hkv = k.size(1);
  p.N = k.size(2);
  p.D = k.size(3);
  p.G = q.size(1) / p.Hkv;
  p.W = q.size(2);
  p.k_sb = k.stride(0), p.k_sh = k.stride(1), p.k_sn = k.stride(2);
  p.v_sb = v.stride(0), p.v_sh = v.stride(1), p.v_sn = v.stride(2);
  p.q_sb = q.stride(0), p.q_sh = q.stride(1), p.q_sw = q.stride(2);
  if (o.has_value() && o->numel() > 0) {
    p.o = o->data_ptr();
    p.o_sb = o->stride(0), p.o_sh = o->stride(1), p.o_sw = o->stride(2);
  }
  p.scale = static_cast<float>(scale.value_or(1.0 / std::sqrt(static_cast<double>(p.D))));
  p.causal = causal;
  p.score = parse_score(score);
  p.group_reduce = parse_group_reduce(group_reduce);
  p.query_reduce = parse_query_reduce(query_reduce);
  return p;
}

// saliency_cpu with each row's key ranges spread over the threads
// (kernels/saliency_cpu.h): every range's pass 1, then pass 2, each thread
// merging the states once per row of its chunk, with the rows' logits kept
// between the passes when `keep_logits`. Bitwise the same output as
// saliency_cpu.
void saliency_split_cpu(const obc::SaliencyParams& p, bool keep_logits) {
  const int64_t S = obc::saliency_cpu_ranges(p), tasks = p.B * p.Hkv * S;
  const size_t st_bytes = obc::saliency_cpu_split_state_bytes(p), ws_bytes = obc::saliency_cpu_split_workspace_bytes(p);
  const size_t z_bytes = keep_logits ? obc::saliency_cpu_split_logit_bytes(p) : 0;
  c10::DataPtr states = c10::GetCPUAllocator()->allocate(static_cast<size_t>(tasks) * st_bytes);
  c10::DataPtr logits = c10::GetCPUAllocator()->allocate(static_cast<size_t>(p.B * p.Hkv) * z_bytes);
  char* st = static_cast<char*>(states.get());
  char* z = static_cast<char*>(logits.get());
  auto row_logits = [&](int64_t bh) { return keep_logits ? z + bh * z_bytes : nullptr; };
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    c10::DataPtr ws = c10::GetCPUAllocator()->allocate(ws_bytes);
    for (int64_t t = t0; t < t1; ++t)
      obc::saliency_cpu_split_pass1(p, t / S, t % S, ws.get(), st + t * st_bytes, row_logits(t / S));
  });
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    c10::DataPtr ws = c10::GetCPUAllocator()->allocate(ws_bytes);
    for (int64_t t = t0; t < t1;) {  // the chunk's ranges of one row at a time
      const int64_t bh = t / S, end = std::min(t1, (bh + 1) * S);
      obc::saliency_cpu_split_pass2(p, bh, t % S, t % S + (end - t), st + bh * S * st_bytes, ws.get(),
                                    row_logits(bh));
      t = end;
    }
  });
}

// Whether to split the rows over key ranges, and whether to keep their
// logits meanwhile: with the logits kept (they fit the memory the whole-row
// form's workers may hold), whenever the busiest thread gets less work than
// with whole rows (3 rows on 2 threads: 1.5 rows instead of 2); without,
// pass 2 recomputes Q K^T, which pays only when some threads would idle.
struct SplitPlan {
  bool split, keep_logits;
};
SplitPlan plan_split(const obc::SaliencyParams& p) {
  const int64_t threads = at::get_num_threads(), rows = p.B * p.Hkv, S = obc::saliency_cpu_ranges(p);
  if (S <= 1 || threads <= 1) return {false, false};
  const bool fits = static_cast<size_t>(rows) * obc::saliency_cpu_split_logit_bytes(p) <=
                    static_cast<size_t>(threads) * obc::kSaliencyLogitCacheBytes;
  const int64_t whole = (rows + threads - 1) / threads * S, split = (rows * S + threads - 1) / threads;  // in ranges
  if (fits && split < whole) return {true, true};
  return {rows < threads, false};
}

at::Tensor saliency_run_cpu(obc::SaliencyParams p, const at::Tensor& k) {
  const bool f64 = p.dtype == obc::DType::F64;
  at::Tensor out = at::empty({p.B, p.Hkv, p.N}, k.options().dtype(f64 ? at::kDouble : at::kFloat));
  if (out.numel() == 0) return out;
  p.out = out.data_ptr();
  const SplitPlan plan = plan_split(p);
  if (plan.split) {
    saliency_split_cpu(p, plan.keep_logits);
    return out;
  }
  const size_t ws_bytes = obc::saliency_cpu_workspace_bytes(p);
  // One workspace per chunk (at most one chunk per thread with grain 1): a
  // few hundred KiB and the logit cache (up to kSaliencyLogitCacheBytes),
  // allocated by torch's CPU allocator (64-byte aligned).
  at::parallel_for(0, p.B * p.Hkv, 1, [&](int64_t bh0, int64_t bh1) {
    c10::DataPtr ws = c10::GetCPUAllocator()->allocate(ws_bytes);
    obc::saliency_cpu(p, bh0, bh1, ws.get());
  });
  return out;
}

}  // namespace

at::Tensor saliency_impl(const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_window,
                         c10::string_view score, c10::string_view group_reduce, std::optional<double> scale,
                         bool causal, c10::string_view query_reduce, const std::optional<at::Tensor>& o) {
  check_saliency_args(k, v, q_window, score, group_reduce, scale, causal, query_reduce, o);
  obc::SaliencyParams p = describe(k, v, q_window, score, group_reduce, scale, causal, query_reduce, o);
  if (k.is_cuda()) {
#ifdef OBCACHE_WITH_CUDA
    return saliency_run_cuda(p, k);
#else
    TORCH_CHECK(false, "obcache was built without CUDA kernels; k is on ", k.device());
#endif
  }
  if (p.dtype == obc::DType::F64) {
    // SaliencyParams carries a float scale; a float64 caller gets a float64
    // scale by pre-scaling its (small, [B, H_q, W, D]) queries instead.
    const double s = scale.value_or(1.0 / std::sqrt(static_cast<double>(p.D)));
    const at::Tensor qs = q_window * s;
    p.q = qs.data_ptr();
    p.q_sb = qs.stride(0), p.q_sh = qs.stride(1), p.q_sw = qs.stride(2);
    p.scale = 1.0f;
    return saliency_run_cpu(p, k);
  }
  return saliency_run_cpu(p, k);
}

namespace {

// A weight with the same per-head L2 norms ||v W_o^g||_2 for every v, D
// rows instead of hidden: with wo's head block wo[:, gD:(g+1)D] = Q_g R_g
// (Q_g orthonormal columns), v W_o^g = (v R_g^T) Q_g^T has the norm of
// v R_g^T. projected_value_norm then costs a D x D product per token and
// head instead of D x hidden (9x less on SmolLM2, 32x on Llama-3.1-8B);
// the QR is computed in float64 per call (hidden * D^2 per head: a few
// tokens' worth). 16-bit weights keep the direct product: R_g rounded to
// 16 bits would cost the float32 accuracy the kernel keeps on 16-bit inputs.
at::Tensor l2_equivalent_weight(const at::Tensor& wo, int64_t Hq, int64_t D) {
  const int64_t hidden = wo.size(0);
  const bool wide = wo.scalar_type() == at::kFloat || wo.scalar_type() == at::kDouble;
  if (hidden <= D || !wide) return wo;
  const at::Tensor blocks = wo.to(at::kDouble).contiguous().view({hidden, Hq, D}).permute({1, 0, 2});
  const at::Tensor r = std::get<1>(at::linalg_qr(blocks, "r"));  // [Hq, D, D]
  return r.permute({1, 0, 2}).reshape({D, Hq * D}).to(wo.scalar_type()).contiguous();
}

// `critical` and `laprox`, composed from the saliency kernel and the
// projected_value_norm kernel (specification: obcache.reference._wo_saliency).
at::Tensor saliency_wo_score(const at::Tensor& k, const at::Tensor& v, const at::Tensor& q,
                             c10::string_view score, c10::string_view group_reduce, std::optional<double> scale,
                             bool causal, c10::string_view query_reduce, const at::Tensor& wo,
                             const std::optional<at::Tensor>& o) {
  const bool critical = score == "critical";
  check_saliency_args(k, v, q, "attn", group_reduce, scale, causal, query_reduce, o);  // o: checked, not read
  check_projected_value_args(v, wo, critical ? 1 : 2);
  const int64_t B = k.size(0), Hkv = k.size(1), N = k.size(2), D = k.size(3), Hq = q.size(1), G = Hq / Hkv;
  TORCH_CHECK(wo.size(1) == Hq * D, "wo must have H_q * D = ", Hq, " * ", D, " = ", Hq * D,
              " columns (q_window's heads times the head dim), got ", wo.size(1), " (shape ", wo.sizes(), ")");
  TORCH_CHECK(critical || query_reduce == "sum", "score 'laprox' reduces the window queries by an L2 norm; ",
              "query_reduce must be 'sum', got '", str(query_reduce), "'");
  if (critical) {
    // (attn + eps) * mean over the group of ||v_p W_o^g||_1.
    return critical_score(saliency_impl(k, v, q, "attn", group_reduce, scale, causal, query_reduce, std::nullopt),
                          v, wo);
  }
  // laprox: per query head ||A_{g,:,p}||_2 * ||v_p W_o^g||_2, then the group.
  // sum_i A^2 per query head is the `value` score of one head (G = 1: the
  // strided view of q_window's heads g, g + G, ...) with every ||v_p||^2 = 1:
  // a unit vector broadcast over the cache (stride 0, nothing allocated).
  at::Tensor unit = at::zeros({D}, v.options());
  unit.select(0, 0).fill_(1);
  const at::Tensor v_unit = unit.expand({B, Hkv, N, D});
  const at::Tensor pn = projected_value_norm_impl(v, l2_equivalent_weight(wo, Hq, D), 2).view({B, Hkv, G, N});
  at::Tensor per_head = at::empty_like(pn);
  for (int64_t g = 0; g < G; ++g) {
    const at::Tensor a2 =
        saliency_impl(k, v_unit, q.slice(1, g, Hq, G), "value", "sum", scale, causal, "sum", std::nullopt);
    per_head.select(2, g).copy_(a2.sqrt() * pn.select(2, g));
  }
  switch (parse_group_reduce(group_reduce)) {
    case obc::GroupReduce::Sum: return per_head.sum(2);
    case obc::GroupReduce::Mean: return per_head.mean(2);
    case obc::GroupReduce::Max: return per_head.amax(2);
  }
  TORCH_CHECK(false, "unreachable group_reduce");
}

}  // namespace

at::Tensor saliency_op(const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_window,
                       c10::string_view score, c10::string_view group_reduce, std::optional<double> scale,
                       bool causal, c10::string_view query_reduce, const std::optional<at::Tensor>& wo,
                       const std::optional<at::Tensor>& o) {
  if (score == "critical" || score == "laprox") {
    TORCH_CHECK(wo.has_value(), "score '", str(score), "' needs wo, the o_proj weight [hidden, H_q * D]; got wo=None");
    return saliency_wo_score(k, v, q_window, score, group_reduce, scale, causal, query_reduce, *wo, o);
  }
  TORCH_CHECK(is_base_score(score), "score must be one of ", kAllScoreNames, ", got '", str(score), "'");
  TORCH_CHECK(!wo.has_value(), "wo is not used by score '", str(score), "' (only by 'critical' and 'laprox'); ",
              "pass wo=None");
  return saliency_impl(k, v, q_window, score, group_reduce, scale, causal, query_reduce, o);
}

}  // namespace obcache

TORCH_LIBRARY_FRAGMENT(obcache, m) {
  m.def(
      "saliency(Tensor k, Tensor v, Tensor q_window, str score, *, str group_reduce=\"sum\", float? scale=None, "
      "bool causal=True, str query_reduce=\"sum\", Tensor? wo=None, Tensor? o=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(obcache, CPU, m) { m.impl("saliency", &obcache::saliency_op); }

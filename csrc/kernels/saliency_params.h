// Plain description of one saliency call, filled by the torch binding (or a
// test) and read by the CPU kernel, the CUDA kernels and the emulated CUDA
// kernels alike. Strides are in elements; the last dim of k, v, q is
// contiguous (stride 1). Output is contiguous [B, Hkv, N].
#pragma once

#include <cstdint>

#include "common.h"

namespace obc {

// Score names of shared/DESIGN.md section 3. Values are part of the ABI
// between bindings and kernels only (not persisted).
enum class Score : int32_t {
  Attn = 0,   // sum_i A
  Tova = 1,   // A of the last window query
  Vatp = 2,   // sum_i A * ||v_p||_1
  Value = 3,  // sum_i A^2 ||v_p||^2
  Key = 4,    // sum_i (A Z)^2 ||v_p - o_i||^2
  Joint = 5,  // value + key + 2 A^2 Z (||v_p||^2 - v_p.o_i)
  Loo = 6,    // sum_i A/(1-A) ||v_p - o_i||_2 (exact leave-one-out)
};

// How the G query heads sharing one KV head are combined.
enum class GroupReduce : int32_t { Sum = 0, Mean = 1, Max = 2 };
// How the W window queries are combined (per query head, before the group).
enum class QueryReduce : int32_t { Sum = 0, Max = 1 };

struct SaliencyParams {
  const void* k = nullptr;  // [B, Hkv, N, D]
  const void* v = nullptr;  // [B, Hkv, N, D]
  const void* q = nullptr;  // [B, Hq, W, D], Hq = Hkv * G
  // [B, Hq, W, D], same dtype as q, or null: the window queries' attention
  // output softmax(Z) V, when the caller already has it (a model's attention
  // has just computed it). The key, joint and loo scores then read it instead
  // of accumulating O in pass 1, which saves a third of the key score's FLOPs.
  const void* o = nullptr;
  void* out = nullptr;      // [B, Hkv, N]; float32, or float64 for F64 inputs
  DType dtype = DType::F32;
  int64_t B = 0, Hkv = 0, G = 1, W = 0, N = 0, D = 0;
  int64_t k_sb = 0, k_sh = 0, k_sn = 0;
  int64_t v_sb = 0, v_sh = 0, v_sn = 0;
  int64_t q_sb = 0, q_sh = 0, q_sw = 0;
  int64_t o_sb = 0, o_sh = 0, o_sw = 0;
  float scale = 1.0f;
  // Window query i (0-based) sits at absolute position N - W + i and sees keys
  // 0 .. N - W + i when causal; every key otherwise.
  bool causal = true;
  Score score = Score::Joint;
  GroupReduce group_reduce = GroupReduce::Sum;
  QueryReduce query_reduce = QueryReduce::Sum;
};

}  // namespace obc

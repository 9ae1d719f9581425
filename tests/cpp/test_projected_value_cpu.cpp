// The CPU projected_value_norm kernel against a naive double computation, at
// sizes that hit the tile edges: N not a multiple of the 32-token tile or of
// the task (task_tiles tiles: 2 to 16 with the problem's size), D not a multiple of 8 (the AVX2 tile transpose's step),
// hidden columns in every register-block tail, G in {1, 3}, padded strides,
// both norms, every dtype, and tasks split across workspaces; and a token's
// norm the same to the bit whichever other tokens share its call (the pruned
// CriticalKV op computes a few gathered tokens and is tested against the
// torch form, which computes them all).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "projected_value_cpu.h"
#include "projected_value_naive.h"
#include "saliency_naive.h"  // grid_values, from_float

namespace {

struct Case {
  int64_t B, Hkv, G, N, D, hidden, pad;
};

template <typename E>
void check(const Case& c, obc::DType dt, int norm, std::mt19937& rng, int64_t split = 1) {
  obc::ProjectedValueParams p;
  p.dtype = dt, p.B = c.B, p.Hkv = c.Hkv, p.G = c.G, p.N = c.N, p.D = c.D, p.hidden = c.hidden, p.p = norm;
  p.v_sn = c.D + c.pad, p.v_sh = c.N * p.v_sn, p.v_sb = c.Hkv * p.v_sh;
  p.wo_so = c.Hkv * c.G * c.D + c.pad;
  const std::vector<float> vf = naive::grid_values(c.B * p.v_sb, rng);
  const std::vector<float> wf = naive::grid_values(c.hidden * p.wo_so, rng);
  std::vector<E> v(vf.size()), wo(wf.size());
  for (size_t i = 0; i < vf.size(); ++i) v[i] = naive::from_float<E>(vf[i]);
  for (size_t i = 0; i < wf.size(); ++i) wo[i] = naive::from_float<E>(wf[i]);
  const std::vector<double> want =
      naive::projected_value_norm(std::vector<double>(vf.begin(), vf.end()), std::vector<double>(wf.begin(), wf.end()), p);
  using Out = typename obc::Elem<E>::acc;
  std::vector<Out> got(want.size(), Out(-1));
  p.v = v.data(), p.wo = wo.data(), p.out = got.data();
  const int64_t tasks = obc::projected_value_cpu_tasks(p);
  std::vector<double> ws(obc::projected_value_cpu_workspace_bytes(p) / 8 + 8);
  for (int64_t s = 0; s < split; ++s) obc::projected_value_cpu(p, tasks * s / split, tasks * (s + 1) / split, ws.data());
  const double tol = dt == obc::DType::F64 ? 1e-12 : 2e-6;
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(got[i], want[i], tol * (1 + std::fabs(want[i]))) << "p=" << norm << " N=" << c.N << " at " << i;
}

TEST(ProjectedValueCpu, Float32OddSizesBothNorms) {
  std::mt19937 rng(1);
  for (int norm : {1, 2}) {
    check<float>({2, 2, 3, 70, 72, 45, 3}, obc::DType::F32, norm, rng, 3);
    check<float>({1, 3, 1, 1, 32, 100, 0}, obc::DType::F32, norm, rng);
    check<float>({1, 1, 4, 130, 8, 7, 1}, obc::DType::F32, norm, rng, 2);
    check<float>({1, 2, 2, 59, 36, 64, 1}, obc::DType::F32, norm, rng);
  }
}

TEST(ProjectedValueCpu, EveryDtype) {
  std::mt19937 rng(2);
  check<double>({1, 2, 2, 65, 16, 33, 2}, obc::DType::F64, 2, rng);
  check<obc::half_t>({1, 2, 2, 65, 16, 33, 2}, obc::DType::F16, 1, rng);
  check<obc::bf16_t>({1, 2, 2, 65, 16, 33, 2}, obc::DType::BF16, 2, rng);
}

// bfloat16 at the shapes of the AVX512-BF16 pair path (cpu_tiles.h, picked
// by default on AMD CPUs with it, by OBCACHE_CPU_VARIANT=avx512bf16 on any):
// D a multiple of 32 (the 16 x 16 word transposes) with an even and an odd
// row stride (the scalar pair loads), D = 48 (8 x 8 word transposes), D = 20
// (scalar pair loads), odd D (the float path), N not a multiple of the tile. Under the amx variant D = 32, 64 and 128 take
// AMX's tiles (cpu_amx.h) for each whole 32 hidden columns, the pair path for
// the rest (hidden 70, 33, 17). The products are exact either way, so the
// float tolerance holds.
TEST(ProjectedValueCpu, Bfloat16PairShapes) {
  std::mt19937 rng(5);
  for (int norm : {1, 2}) {
    check<obc::bf16_t>({1, 2, 2, 100, 64, 70, 0}, obc::DType::BF16, norm, rng, 2);
    check<obc::bf16_t>({2, 1, 3, 64, 128, 33, 2}, obc::DType::BF16, norm, rng);
    check<obc::bf16_t>({1, 2, 1, 45, 32, 17, 1}, obc::DType::BF16, norm, rng);
    check<obc::bf16_t>({1, 1, 2, 33, 48, 20, 0}, obc::DType::BF16, norm, rng);
    check<obc::bf16_t>({1, 1, 2, 70, 20, 21, 0}, obc::DType::BF16, norm, rng);
    check<obc::bf16_t>({1, 1, 2, 40, 9, 20, 0}, obc::DType::BF16, norm, rng);
  }
}

// Tasks of several token tiles (task_tiles: 4 a task at the first shape, 16
// at the second), the last one partial, split across workspaces.
TEST(ProjectedValueCpu, SeveralTilesPerTask) {
  std::mt19937 rng(6);
  check<float>({1, 2, 4, 1000, 24, 37, 1}, obc::DType::F32, 1, rng, 3);
  check<obc::bf16_t>({1, 1, 2, 16400, 32, 40, 0}, obc::DType::BF16, 2, rng, 2);
}

// Float32, and bfloat16 (the pair path where the CPU has it).
template <typename E>
void check_token_norm_independent(obc::DType dt) {
  std::mt19937 rng(4);
  std::normal_distribution<float> nd;
  obc::ProjectedValueParams p;
  // N = 1100: 3 tiles a task in the full call, 2 in the call on the picks.
  p.dtype = dt, p.B = 1, p.Hkv = 2, p.G = 3, p.N = 1100, p.D = 64, p.hidden = 83, p.p = 1;
  p.v_sn = p.D, p.v_sh = p.N * p.D, p.v_sb = p.Hkv * p.v_sh, p.wo_so = p.Hkv * p.G * p.D;
  std::vector<E> v(p.B * p.v_sb), wo(p.hidden * p.wo_so);
  for (auto& x : v) x = naive::from_float<E>(nd(rng));
  for (auto& x : wo) x = naive::from_float<E>(nd(rng));
  // other lanes, tiles and tasks than in the full call
  const std::vector<int64_t> pick = {0, 5, 31, 32, 33, 64, 100, 149, 96, 500, 1099};
  for (int norm : {1, 2}) {
    p.p = norm, p.N = 1100, p.v_sh = p.N * p.D, p.v = v.data(), p.wo = wo.data();
    std::vector<float> all(p.Hkv * p.G * p.N);
    p.out = all.data();
    std::vector<double> ws(obc::projected_value_cpu_workspace_bytes(p) / 8 + 8);
    obc::projected_value_cpu(p, 0, obc::projected_value_cpu_tasks(p), ws.data());
    const int64_t M = static_cast<int64_t>(pick.size());
    std::vector<E> sub(p.Hkv * M * p.D);
    std::vector<float> got(p.Hkv * p.G * M);
    for (int64_t h = 0; h < p.Hkv; ++h)
      for (int64_t i = 0; i < M; ++i)
        for (int64_t d = 0; d < p.D; ++d) sub[(h * M + i) * p.D + d] = v[h * p.v_sh + pick[i] * p.D + d];
    obc::ProjectedValueParams q = p;
    q.N = M, q.v_sh = M * p.D, q.v_sb = p.Hkv * q.v_sh, q.v = sub.data(), q.out = got.data();
    obc::projected_value_cpu(q, 0, obc::projected_value_cpu_tasks(q), ws.data());
    for (int64_t j = 0; j < p.Hkv * p.G; ++j)
      for (int64_t i = 0; i < M; ++i)
        ASSERT_EQ(got[j * M + i], all[j * p.N + pick[i]]) << "p=" << norm << " head " << j << " token " << pick[i];
  }
}

TEST(ProjectedValueCpu, TokenNormIndependentOfItsNeighbours) {
  check_token_norm_independent<float>(obc::DType::F32);
  check_token_norm_independent<obc::bf16_t>(obc::DType::BF16);
}

TEST(ProjectedValueCpu, ZeroHiddenGivesZero) {
  std::mt19937 rng(3);
  check<float>({1, 1, 2, 5, 8, 0, 0}, obc::DType::F32, 2, rng);
}

}  // namespace

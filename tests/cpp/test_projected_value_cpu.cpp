// The CPU projected_value_norm kernel against a naive double computation, at
// sizes that hit the tile edges: N not a multiple of the 64-token task,
// hidden not a multiple of the 32-column tile, D not a multiple of 8 (the
// AVX2 tile transpose's step) and rows in every register-block tail, G in
// {1, 3}, padded strides, both norms, every dtype, and tasks split across
// workspaces.
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

TEST(ProjectedValueCpu, ZeroHiddenGivesZero) {
  std::mt19937 rng(3);
  check<float>({1, 1, 2, 5, 8, 0, 0}, obc::DType::F32, 2, rng);
}

}  // namespace

// The real CUDA select kernels (select_cuda.cu, compiled here under the SIMT
// emulation) against the CPU kernels, at sizes that hit the edges: N not a
// multiple of the 512-thread block, budget = N - 1 and = sink + recent, ties,
// NaN / inf, start offsets, every pooling mode, rows longer than one
// 4096-key sweep and than the 4096-key shared-memory candidate buffer,
// both key widths (4 bytes where the pooled scores are float values), and
// the rows' keys in shared memory (where they fit) and in global memory.
// cuda_compat.h first: under OBC_SIMT_EMULATION it brings the emulated
// __host__ / __device__ that common.h uses.
#include "cuda_compat.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "select_cpu.h"
#include "select_cuda.cu"  // the real source

namespace {

std::vector<float> make_scores(int64_t n, int kind, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<float> u(0, 1);
  std::vector<float> s(n);
  for (auto& x : s) {
    if (kind == 0) x = nd(rng);
    else if (kind == 1) x = static_cast<float>(rng() % 3);  // ties
    else if (kind == 3) x = rng() % 2 ? 1.0f : std::nextafter(1.0f, 2.0f);  // adjacent floats
    else {
      const float r = u(rng);
      // -0.0 and +0.0 both: they tie (the keys map -0.0 to +0.0).
      x = r < 0.1f ? NAN : r < 0.2f ? INFINITY : r < 0.3f ? -INFINITY : r < 0.4f ? -0.0f : r < 0.5f ? 0.0f : nd(rng);
    }
  }
  return s;
}

struct SelCase {
  int64_t B, H, N, budget, sink, recent, kernel;
  bool avg;
  int kind;
  bool with_start;
};

void run(const SelCase& c, std::mt19937& rng) {
  const std::vector<float> s = make_scores(c.B * c.H * c.N, c.kind, rng);
  std::vector<int64_t> start(c.B, 0);
  if (c.with_start)
    for (auto& x : start) x = static_cast<int64_t>(rng() % (c.N + 1));
  obc::SelectParams p;
  p.scores = s.data();
  p.B = c.B, p.H = c.H, p.N = c.N, p.s_sb = c.H * c.N, p.s_sh = c.N;
  p.start = c.with_start ? start.data() : nullptr;
  p.budget = c.budget, p.sink = c.sink, p.recent = c.recent, p.pool_kernel = c.kernel;
  p.pool = c.avg ? obc::Pool::Avg : obc::Pool::Max;
  std::vector<int64_t> want(c.B * c.H * c.budget, -1), got(want.size(), -2);
  p.out = want.data();
  obc::select_rows_cpu(p, 0, c.B * c.H);
  std::vector<uint64_t> keys(c.B * c.H * c.N);
  p.out = got.data();
  ASSERT_EQ(obc::select_cuda(p, keys.data(), nullptr), 0);
  ASSERT_EQ(got, want) << "N=" << c.N << " budget=" << c.budget << " sink=" << c.sink << " recent=" << c.recent
                       << " k=" << c.kernel << " avg=" << c.avg << " kind=" << c.kind;
  // Where the keys went: the global workspace (a candidate's key is never 0)
  // only where the row's keys do not fit in shared memory beside the block's
  // own buffers, under the emulated device's opt-in limit.
  size_t limit = 0;
  ASSERT_EQ(obc::smem_optin_limit(&limit), cudaSuccess);
  const bool four = obc::select_cuda_key_bytes(p) == 4;
  const size_t fixed = four ? obc::select_static_smem<uint32_t>() : obc::select_static_smem<uint64_t>();
  const bool global = fixed + (c.N - c.sink - c.recent) * (four ? 4 : 8) > std::max<size_t>(limit, 48 * 1024);
  bool selects = false, wrote = false;
  for (int64_t b = 0; b < c.B; ++b) selects |= c.N - start[b] > c.budget && c.budget > c.sink + c.recent;
  for (uint64_t k : keys) wrote |= k != 0;
  EXPECT_EQ(wrote, global && selects) << "N=" << c.N << " limit=" << limit << " selects=" << selects;
}

// f() under two emulated devices: sm_90's 227 KiB opt-in (rows of up to ~53k
// 4-byte keys in shared memory) and a GPU without the opt-in (48 KiB: ~7.6k;
// rows of 20,000 keys through global memory).
template <typename F>
void for_each_smem_limit(F f) {
  for (const size_t limit : {size_t{227 * 1024}, size_t{48 * 1024}}) {
    simt::set_smem_optin_limit(limit);
    f();
  }
  simt::set_smem_optin_limit(227 * 1024);
}

TEST(EmuSelect, MatchesCpuAtEdgeSizes) {
  std::mt19937 rng(11);
  for (int64_t N : {2, 37, 511, 512, 513, 1100}) {  // N = 1 has no budget in (0, N)
    for (int kind = 0; kind < 3; ++kind) {
      const int64_t sink = N > 8 ? 2 : 0, recent = N > 8 ? 3 : 0;
      for (int64_t budget : {N - 1, sink + recent, N / 3}) {
        if (budget <= 0 || budget < sink + recent) continue;
        run({1, 2, N, budget, sink, recent, kind == 2 ? 7 : 3, kind == 1, kind, false}, rng);
      }
    }
  }
}

// N = 20000: five sweeps per pass. Where the keys are in global memory,
// normal scores (average-pooled) fit the candidate buffer after the first
// digit or two, so later digits are read from shared memory; three tied
// values without pooling (~6,700 keys each) never fit, so every pass reads
// global memory; specials (max-pooled, with start offsets) mix both. With
// the keys in shared memory, the same passes read them there.
TEST(EmuSelect, MatchesCpuOnRowsLongerThanTheCandidateBuffer) {
  std::mt19937 rng(14);
  const int64_t kernels[] = {5, 0, 3};
  for_each_smem_limit([&] {
    for (int kind = 0; kind < 3; ++kind)
      for (int64_t budget : {int64_t(2005), int64_t(15000)})
        run({1, 2, 20000, budget, 4, 16, kernels[kind], kind == 0, kind, kind == 2}, rng);
  });
}

// Rows too long for shared memory even with sm_90's opt-in: 60,000 4-byte
// keys (234 KiB).
TEST(EmuSelect, RowsLongerThanSharedMemoryGoThroughGlobalMemory) {
  std::mt19937 rng(17);
  run({1, 1, 60000, 6000, 4, 32, 7, false, 0, false}, rng);
}

// Specials without pooling (kernel 0 or 1, the 4-byte keys), budgets that
// put the threshold among the zeros (+inf and positive normals are ~35% of
// the keys from the top, the zeros the next ~20%): -0.0 and +0.0 must tie,
// the earlier index first, as the CPU kernel's 8-byte keys have them.
TEST(EmuSelect, SignedZerosTieAtTheThreshold) {
  std::mt19937 rng(15);
  for_each_smem_limit([&] {
    for (const int64_t N : {int64_t(1100), int64_t(20000)})
      for (const int64_t budget : {N * 2 / 5, N / 2})
        for (const int64_t kernel : {0, 1}) run({1, 2, N, budget, 0, 0, kernel, false, 2, false}, rng);
  });
}

// Average pooling of adjacent floats (1 and 1 + 2^-23): the averages, exact
// in float64, fall between floats (1 + 2^-23 / 3, ...), so a select over
// 4-byte keys would make ties of distinct scores. These go by 8-byte keys.
TEST(EmuSelect, AveragesBetweenFloatsKeepTheirOrder) {
  std::mt19937 rng(16);
  for_each_smem_limit([&] {
    for (const int64_t N : {int64_t(1100), int64_t(20000)})
      for (const int64_t budget : {N / 3, N / 2})
        for (const int64_t kernel : {3, 5}) run({1, 2, N, budget, 0, 0, kernel, true, 3, false}, rng);
  });
}

TEST(EmuSelect, MatchesCpuWithStartAndPooling) {
  std::mt19937 rng(12);
  const int64_t kernels[] = {0, 1, 3, 7};
  for (int t = 0; t < 16; ++t)
    run({3, 1, 45 + t, 10, 1, 2, kernels[t % 4], t % 2 == 1, t % 3, true}, rng);
}

TEST(EmuSelectAdaptive, MatchesCpu) {
  std::mt19937 rng(13);
  for (int t = 0; t < 10; ++t) {
    // t >= 8: H * N above the 4096-key candidate buffer and one sweep.
    const int64_t B = 1 + t % 2, H = 1 + t % 4, N = t < 8 ? 30 + 97 * t : 5000 + 1111 * t, sink = t % 3, recent = t % 2;
    const std::vector<float> s = make_scores(B * H * N, t % 3, rng);
    const int64_t total = H * N / 4 + t, f = std::max<int64_t>(sink + recent, (total / H) / 5);
    obc::SelectAdaptiveParams p;
    p.scores = s.data();
    p.B = B, p.H = H, p.N = N, p.s_sb = H * N, p.s_sh = N;
    p.floor_tokens = f, p.extra = total - H * f, p.sink = sink, p.recent = recent;
    p.pool_kernel = t % 2 ? 7 : 0;
    p.pool = t % 4 >= 2 ? obc::Pool::Avg : obc::Pool::Max;
    std::vector<uint8_t> keep_cpu(B * H * N), keep_gpu(B * H * N, 0);
    std::vector<int64_t> len_cpu(B * H), len_gpu(B * H);
    obc::select_adaptive_mark_cpu(p, keep_cpu.data(), len_cpu.data(), 0, B);
    std::vector<uint64_t> keys(B * H * N);
    ASSERT_EQ(obc::select_adaptive_mark_cuda(p, keys.data(), keep_gpu.data(), len_gpu.data(), nullptr), 0);
    ASSERT_EQ(keep_gpu, keep_cpu) << "t=" << t;
    ASSERT_EQ(len_gpu, len_cpu);
    const int64_t Lmax = *std::max_element(len_cpu.begin(), len_cpu.end());
    std::vector<int64_t> out_cpu(B * H * Lmax), out_gpu(B * H * Lmax);
    obc::select_adaptive_emit_cpu(keep_cpu.data(), N, Lmax, out_cpu.data(), 0, B * H);
    ASSERT_EQ(obc::select_adaptive_emit_cuda(keep_gpu.data(), B, H, N, Lmax, out_gpu.data(), nullptr), 0);
    ASSERT_EQ(out_gpu, out_cpu);
  }
}

}  // namespace

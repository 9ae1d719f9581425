// The real CUDA compaction kernel (compact_cuda.cu under the SIMT emulation)
// against the CPU kernel: worst overlap patterns, many chunks, odd row bytes
// (2-byte vectors), narrowed strides, lengths.
// cuda_compat.h first: under OBC_SIMT_EMULATION it brings the emulated
// __host__ / __device__ that common.h uses.
#include "cuda_compat.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "compact_cpu.h"
#include "compact_patterns.h"
#include "compact_cuda.cu"  // the real source

namespace {

template <typename T>
void run(int64_t B, int64_t H, int64_t N, int64_t M, int64_t D, int64_t L, int kind, bool lengths_on,
         std::mt19937& rng) {
  std::vector<T> k(B * H * M * D), v(B * H * M * (D + 1));
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<T>(rng());
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<T>(rng());
  std::vector<T> k2 = k, v2 = v;
  const std::vector<int64_t> idx = patterns::compact_indices(B * H, N, L, kind, rng);
  std::vector<int64_t> lengths(B * H);
  for (auto& x : lengths) x = lengths_on ? static_cast<int64_t>(rng() % (L + 1)) : L;
  auto params = [&](std::vector<T>& kk, std::vector<T>& vv) {
    obc::CompactParams p;
    p.t[0] = {kk.data(), static_cast<int64_t>(sizeof(T)), D, H * M * D, M * D, D};
    p.t[1] = {vv.data(), static_cast<int64_t>(sizeof(T)), D + 1, H * M * (D + 1), M * (D + 1), D + 1};
    p.B = B, p.H = H, p.N = N, p.indices = idx.data(), p.L = L;
    p.lengths = lengths_on ? lengths.data() : nullptr;
    return p;
  };
  obc::compact_rows_cpu(params(k, v), 0, 2 * B * H);
  ASSERT_EQ(obc::compact_cuda(params(k2, v2), nullptr), 0);
  ASSERT_EQ(k2, k) << "N=" << N << " D=" << D << " L=" << L << " kind=" << kind;
  ASSERT_EQ(v2, v);
}

TEST(EmuCompact, MatchesCpuOnOverlapPatterns) {
  std::mt19937 rng(21);
  for (int kind = 0; kind < 4; ++kind)
    for (int64_t N : {1, 9, 130, 700}) {
      for (int64_t L : {int64_t(1), N / 2, N - 1, N}) {
        if (L <= 0) continue;
        run<uint32_t>(1, 2, N, N + 3, 12, L, kind, false, rng);  // 48-byte rows: 16-byte vectors
        run<uint16_t>(2, 1, N, N, 3, L, kind, kind == 3, rng);   // 6-byte rows: 2-byte vectors
      }
    }
}

TEST(EmuCompact, WideRowsSplitIntoSlices) {
  std::mt19937 rng(22);
  run<double>(1, 1, 300, 300, 600, 150, 3, false, rng);  // 4800-byte rows: several column slices
}

}  // namespace

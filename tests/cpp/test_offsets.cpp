// 64-bit offsets: the CPU kernels address tensors whose element offsets pass
// 2^31 (and 2^32), as a [B, H, N, D] cache of more than 2^31 elements has.
// Every kernel computes offsets as int64 products of int64 strides; an int32
// product anywhere (b * sb, p * sn, row * N, ...) would read or write the
// wrong element here. The big buffers are reserved with mmap(MAP_NORESERVE)
// and only the pages the test touches are ever backed by memory (a few MiB).
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "compact_cpu.h"
#include "saliency_cpu.h"
#include "select_cpu.h"

namespace {

constexpr int64_t kTwo31 = int64_t(1) << 31;

// A zero-filled virtual region of `bytes`, unmapped on destruction.
struct Region {
  void* p = MAP_FAILED;
  size_t bytes = 0;
  explicit Region(size_t n) : bytes(n) {
    p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  }
  ~Region() {
    if (p != MAP_FAILED) munmap(p, bytes);
  }
  template <typename T>
  T* at(int64_t elem) const {
    return static_cast<T*>(p) + elem;
  }
};

TEST(Offsets, CompactMovesRowsPast2Pow31Elements) {
  // k: float16-sized elements (2 bytes), [B=2, H=2, N=64, D=8] with a batch
  // stride of 2^31 + 40 elements and a head stride of 2^30: batch 1 starts past
  // element 2^31, its head 1 past 2^31 + 2^30 (total ~7 GiB of address space).
  const int64_t Bn = 2, Hn = 2, N = 64, D = 8;
  obc::CompactTensor k;
  k.elem_size = 2, k.D = D, k.sb = kTwo31 + 40, k.sh = int64_t(1) << 30, k.sn = D + 4;
  const int64_t span = (Bn - 1) * k.sb + (Hn - 1) * k.sh + N * k.sn;
  Region r(static_cast<size_t>(span * k.elem_size));
  ASSERT_NE(r.p, MAP_FAILED);
  k.data = r.p;
  auto elem = [&](int64_t b, int64_t h, int64_t n, int64_t d) {
    return r.at<uint16_t>(b * k.sb + h * k.sh + n * k.sn + d);
  };
  for (int64_t b = 0; b < Bn; ++b)
    for (int64_t h = 0; h < Hn; ++h)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t d = 0; d < D; ++d) *elem(b, h, n, d) = static_cast<uint16_t>((b * 7 + h * 3) * 1000 + n * 10 + d);
  // Every row keeps the odd positions, plus the last one.
  std::vector<int64_t> idx;
  const int64_t L = N / 2;
  for (int64_t row = 0; row < Bn * Hn; ++row)
    for (int64_t i = 0; i < L; ++i) idx.push_back(2 * i + 1);
  obc::CompactParams p;
  p.t[0] = k, p.num_tensors = 1, p.B = Bn, p.H = Hn, p.N = N, p.indices = idx.data(), p.L = L;
  ASSERT_EQ(obc::check_compact_indices(idx.data(), nullptr, Hn, L, N, 0, Bn * Hn).kind, obc::IndexError::Ok);
  obc::compact_rows_cpu(p, 0, Bn * Hn);
  for (int64_t b = 0; b < Bn; ++b)
    for (int64_t h = 0; h < Hn; ++h) {
      for (int64_t i = 0; i < L; ++i)
        for (int64_t d = 0; d < D; ++d)
          ASSERT_EQ(*elem(b, h, i, d), (b * 7 + h * 3) * 1000 + (2 * i + 1) * 10 + d) << b << h << i << d;
      for (int64_t n = L; n < N; ++n)  // rows past L untouched
        ASSERT_EQ(*elem(b, h, n, 0), (b * 7 + h * 3) * 1000 + n * 10) << b << h << n;
    }
}

TEST(Offsets, SelectReadsScoreRowsPast2Pow32Elements) {
  // scores float32 [B=2, H=2, N=100], batch stride 2^32 + 16, head stride 2^31 + 8.
  const int64_t Bn = 2, Hn = 2, N = 100, budget = 10;
  const int64_t sb = (int64_t(1) << 32) + 16, sh = kTwo31 + 8;
  Region r(static_cast<size_t>(((Bn - 1) * sb + (Hn - 1) * sh + N) * 4));
  ASSERT_NE(r.p, MAP_FAILED);
  std::vector<std::vector<int64_t>> want(Bn * Hn);
  for (int64_t b = 0; b < Bn; ++b)
    for (int64_t h = 0; h < Hn; ++h) {
      float* s = r.at<float>(b * sb + h * sh);
      for (int64_t n = 0; n < N; ++n) s[n] = 0.0f;
      // The kept positions differ per (b, h): a wrong row would pick others.
      for (int64_t i = 0; i < budget; ++i) {
        const int64_t pos = (b * 31 + h * 17 + i * 9) % N;
        s[pos] = 1.0f + static_cast<float>(i);
      }
    }
  for (int64_t b = 0; b < Bn; ++b)
    for (int64_t h = 0; h < Hn; ++h) {
      std::vector<int64_t>& w = want[b * Hn + h];
      for (int64_t n = 0; n < N; ++n)
        if (r.at<float>(b * sb + h * sh)[n] > 0.0f) w.push_back(n);
      ASSERT_EQ(static_cast<int64_t>(w.size()), budget);
    }
  obc::SelectParams p;
  p.scores = r.p, p.dtype = obc::DType::F32, p.B = Bn, p.H = Hn, p.N = N, p.s_sb = sb, p.s_sh = sh;
  p.budget = budget;
  std::vector<int64_t> out(Bn * Hn * budget, -1);
  p.out = out.data();
  obc::select_rows_cpu(p, 0, Bn * Hn);
  for (int64_t row = 0; row < Bn * Hn; ++row)
    for (int64_t i = 0; i < budget; ++i) ASSERT_EQ(out[row * budget + i], want[row][i]) << row << " " << i;
}

TEST(Offsets, SaliencyReadsKvAndQueriesPast2Pow31Elements) {
  // k and v float32 [B=2, H=1, N=40, D=8] in one region: batch stride 2^31 + 64,
  // v starting 2^32 elements in; q [2, 1, W=3, 8] with batch stride 2^31 + 32
  // in a second region. Batch 1 must score exactly like a compact copy of it.
  const int64_t Bn = 2, N = 40, D = 8, W = 3;
  const int64_t sb = kTwo31 + 64, v_off = int64_t(1) << 32, q_sb = kTwo31 + 32;
  Region kv(static_cast<size_t>((v_off + sb + N * D) * 4));
  Region qr(static_cast<size_t>((q_sb + W * D) * 4));
  ASSERT_NE(kv.p, MAP_FAILED);
  ASSERT_NE(qr.p, MAP_FAILED);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<float> k(Bn * N * D), v(Bn * N * D), q(Bn * W * D);  // the compact copy
  for (auto* t : {&k, &v, &q})
    for (auto& x : *t) x = nd(rng);
  for (int64_t b = 0; b < Bn; ++b) {
    std::memcpy(kv.at<float>(b * sb), k.data() + b * N * D, N * D * 4);
    std::memcpy(kv.at<float>(v_off + b * sb), v.data() + b * N * D, N * D * 4);
    std::memcpy(qr.at<float>(b * q_sb), q.data() + b * W * D, W * D * 4);
  }
  for (int s = 0; s < 7; ++s) {
    obc::SaliencyParams p;
    p.dtype = obc::DType::F32, p.B = Bn, p.Hkv = 1, p.G = 1, p.W = W, p.N = N, p.D = D;
    p.scale = 0.3f, p.score = static_cast<obc::Score>(s);
    p.q_sw = D, p.q_sh = W * D;
    p.k_sn = p.v_sn = D, p.k_sh = p.v_sh = N * D;
    std::vector<float> want(Bn * N), got(Bn * N, -1.0f);
    std::vector<double> ws(obc::saliency_cpu_workspace_bytes(p) / 8 + 8);
    // Compact copy.
    p.k = k.data(), p.v = v.data(), p.q = q.data(), p.k_sb = p.v_sb = N * D, p.q_sb = W * D, p.out = want.data();
    obc::saliency_cpu(p, 0, Bn, ws.data());
    // Far strides.
    p.k = kv.p, p.v = kv.at<float>(v_off), p.q = qr.p, p.k_sb = p.v_sb = sb, p.q_sb = q_sb, p.out = got.data();
    obc::saliency_cpu(p, 0, Bn, ws.data());
    for (int64_t i = 0; i < Bn * N; ++i) {
      ASSERT_TRUE(std::isfinite(want[i]));
      ASSERT_EQ(got[i], want[i]) << "score " << s << " at " << i;  // same arithmetic, bit for bit
    }
  }
}

}  // namespace

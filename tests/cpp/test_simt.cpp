// Tests of the SIMT emulation itself (tests/cpp/simt): the kernels below are
// written as CUDA code and launched through cuda_compat.h, as the real kernels
// are. SimtTester.* checks that the emulation catches what it is meant to
// catch; it races on purpose, so the ThreadSanitizer run filters it out with
// --gtest_filter=-SimtTester.*
#include "cuda_compat.h"
#include "mma.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <random>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <thread>
#include <vector>

namespace {

constexpr int kThreads = 256;

// Tree reduction in static shared memory. kBarrier = false removes every
// barrier (the bug to catch). delay_writers makes the bug deterministic: the
// threads that publish partial sums sleep first, so thread t reads s[t + stride]
// before its owner has written it.
template <bool kBarrier>
__global__ void block_sum(const int* in, int* out, int delay_writers) {
  __shared__ int s[kThreads];
  const int t = threadIdx.x;
  if (delay_writers && t != 0) std::this_thread::sleep_for(std::chrono::milliseconds(30));
  s[t] = in[blockIdx.x * kThreads + t];
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (kBarrier) __syncthreads();
    if (t < stride) s[t] += s[t + stride];
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

struct Sums {
  std::vector<int> got, want;
};

template <bool kBarrier>
Sums run_block_sum(int blocks, int delay_writers) {
  std::vector<int> in(blocks * kThreads);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<int>(i * 7 % 1000) - 300;
  Sums r{std::vector<int>(blocks, 0), std::vector<int>(blocks, 0)};
  for (size_t i = 0; i < in.size(); ++i) r.want[i / kThreads] += in[i];
  OBC_LAUNCH(block_sum<kBarrier>, dim3(blocks), dim3(kThreads), 0, nullptr, in.data(), r.got.data(),
             delay_writers);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  return r;
}

TEST(Simt, BlockReductionWithBarriersIsExact) {
  const Sums r = run_block_sum<true>(40, 0);
  EXPECT_EQ(r.got, r.want);
}

TEST(SimtTester, MissingBarrierIsDetected) {
  // With the barriers and the same delays the result is right: the delay alone
  // does not break the kernel; removing the barriers does.
  const Sums ok = run_block_sum<true>(2, 1);
  EXPECT_EQ(ok.got, ok.want);
  const Sums broken = run_block_sum<false>(2, 1);
  EXPECT_NE(broken.got, broken.want) << "threads of a block did not run concurrently";
}

// Two warps; every lane records what each collective returned.
struct WarpOut {
  double xor_sum;
  int down1, up2, bcast_w8, xor16_w16;
  unsigned long long scan;
  unsigned ballot_odd, match_mod3, match_hi;
  int any5, all_lt32, all_ne7;
};

__global__ void warp_ops(WarpOut* out) {
  const int t = threadIdx.x, lane = t % warpSize;
  const int x = 3 * t + 1;
  const unsigned full = 0xffffffffu;
  double sum = x;
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(full, sum, o);
  unsigned long long inc = static_cast<unsigned long long>(x);
  for (unsigned o = 1; o < 32; o <<= 1) {
    const unsigned long long y = __shfl_up_sync(full, inc, o);
    if (lane >= static_cast<int>(o)) inc += y;
  }
  WarpOut& r = out[t];
  r.xor_sum = sum;
  r.scan = inc;
  r.down1 = __shfl_down_sync(full, x, 1);
  r.up2 = __shfl_up_sync(full, x, 2);
  r.bcast_w8 = __shfl_sync(full, x, 3, 8);
  r.xor16_w16 = __shfl_xor_sync(full, x, 16, 16);
  r.ballot_odd = __ballot_sync(full, x & 1);
  r.any5 = __any_sync(full, lane == 5);
  r.all_lt32 = __all_sync(full, lane < 32);
  r.all_ne7 = __all_sync(full, lane != 7);
  r.match_mod3 = __match_any_sync(full, static_cast<unsigned>(x % 3));
  r.match_hi = __match_any_sync(full, static_cast<unsigned long long>(lane / 8) << 40);
}

TEST(Simt, WarpShufflesAndVotesFollowCudaSemantics) {
  constexpr int n = 64;
  std::vector<WarpOut> out(n);
  OBC_LAUNCH(warp_ops, dim3(1), dim3(n), 0, nullptr, out.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  auto x = [](int t) { return 3 * t + 1; };
  for (int t = 0; t < n; ++t) {
    const int lane = t % 32, w0 = t - lane;
    double sum = 0;
    unsigned long long scan = 0;
    unsigned odd = 0;
    for (int l = 0; l < 32; ++l) {
      sum += x(w0 + l);
      if (l <= lane) scan += x(w0 + l);
      odd |= static_cast<unsigned>(x(w0 + l) & 1) << l;
    }
    SCOPED_TRACE(t);
    EXPECT_EQ(out[t].xor_sum, sum);
    EXPECT_EQ(out[t].scan, scan);
    EXPECT_EQ(out[t].down1, lane < 31 ? x(t + 1) : x(t));  // out of range: own value
    EXPECT_EQ(out[t].up2, lane >= 2 ? x(t - 2) : x(t));
    EXPECT_EQ(out[t].bcast_w8, x(w0 + (lane & ~7) + 3));
    // Width 16: lanes 0-15 would read the later group, so keep their own value;
    // lanes 16-31 may read the earlier group.
    EXPECT_EQ(out[t].xor16_w16, lane < 16 ? x(t) : x(t - 16));
    EXPECT_EQ(out[t].ballot_odd, odd);
    EXPECT_TRUE(out[t].any5);
    EXPECT_TRUE(out[t].all_lt32);
    EXPECT_FALSE(out[t].all_ne7);
    unsigned mod3 = 0, hi = 0;  // lanes whose value equals this lane's
    for (int l = 0; l < 32; ++l) {
      mod3 |= static_cast<unsigned>(x(w0 + l) % 3 == x(t) % 3) << l;
      hi |= static_cast<unsigned>(l / 8 == lane / 8) << l;
    }
    EXPECT_EQ(out[t].match_mod3, mod3);
    EXPECT_EQ(out[t].match_hi, hi);  // 64-bit values that differ only above bit 32
  }
}

struct Counters {
  int count;
  unsigned ucount;
  unsigned long long ull;
  float fsum;
  double dsum;
  int imax, imin;
  unsigned long long ullmax;
  int cas_ticket;
};

__global__ void atomics(Counters* c, int* tickets) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(&c->count, 1);
  atomicAdd(&c->ucount, 2u);
  atomicAdd(&c->ull, 3ull);
  atomicAdd(&c->fsum, 0.5f);
  atomicAdd(&c->dsum, 0.25);
  atomicMax(&c->imax, g);
  atomicMin(&c->imin, -g);
  atomicMax(&c->ullmax, static_cast<unsigned long long>(g) << 33);
  // A ticket per thread by compare-and-swap: every ticket handed out once.
  int old = 0, seen;
  while ((seen = atomicCAS(&c->cas_ticket, old, old + 1)) != old) old = seen;
  tickets[old] = g;
}

TEST(Simt, AtomicsFromAllThreadsOfManyBlocksAreExact) {
  constexpr int blocks = 24, n = blocks * kThreads;
  Counters c{0, 0, 0, 0.f, 0.0, -1, 1, 0, 0};
  std::vector<int> tickets(n, -1);
  OBC_LAUNCH(atomics, dim3(blocks), dim3(kThreads), 0, nullptr, &c, tickets.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(c.count, n);
  EXPECT_EQ(c.ucount, 2u * n);
  EXPECT_EQ(c.ull, 3ull * n);
  EXPECT_EQ(c.fsum, 0.5f * n);  // exact: every partial sum is a multiple of 0.5 below 2^24
  EXPECT_EQ(c.dsum, 0.25 * n);
  EXPECT_EQ(c.imax, n - 1);
  EXPECT_EQ(c.imin, -(n - 1));
  EXPECT_EQ(c.ullmax, static_cast<unsigned long long>(n - 1) << 33);
  EXPECT_EQ(c.cas_ticket, n);
  std::vector<int> seen(n, 0);
  for (int g : tickets) {
    ASSERT_GE(g, 0);
    ++seen[g];
  }
  EXPECT_EQ(seen, std::vector<int>(n, 1));
}

// 72 threads: two full warps and a partial one of 8 lanes.
__global__ void reverse_in_smem(const float* in, float* out, int* poisoned, int* aligned) {
  OBC_DYNAMIC_SMEM(float, buf);
  const int t = threadIdx.x, n = blockDim.x, base = blockIdx.x * n;
  if (t == 0) aligned[blockIdx.x] = reinterpret_cast<uintptr_t>(buf) % 16 == 0;
  poisoned[base + t] = std::isnan(buf[t]);  // nothing wrote it yet in this block
  __syncthreads();                           // every poison check before any write
  buf[t] = in[base + t];
  __syncthreads();
  out[base + t] = buf[n - 1 - t];
}

TEST(Simt, DynamicSharedMemoryIsPoisonedPerBlockWithPartialWarp) {
  constexpr int n = 72, blocks = 3;
  std::vector<float> in(n * blocks), out(n * blocks, 0.f);
  for (int i = 0; i < n * blocks; ++i) in[i] = static_cast<float>(i);
  std::vector<int> poisoned(n * blocks, 0), aligned(blocks, 0);
  OBC_LAUNCH(reverse_in_smem, dim3(blocks), dim3(n), n * sizeof(float), nullptr, in.data(), out.data(),
             poisoned.data(), aligned.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  for (int b = 0; b < blocks; ++b) {
    EXPECT_TRUE(aligned[b]);
    for (int t = 0; t < n; ++t) {
      EXPECT_TRUE(poisoned[b * n + t]) << "block " << b << " thread " << t;
      EXPECT_EQ(out[b * n + t], in[b * n + n - 1 - t]);
    }
  }
}

__global__ void warp_masks(unsigned* ballot, unsigned* active, int* sum) {
  const int t = threadIdx.x;
  ballot[t] = __ballot_sync(0xffffffffu, 1);
  active[t] = __activemask();
  int x = 1;
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  sum[t] = x;  // lanes that read a missing lane get poison (-1) in the sum
}

TEST(Simt, PartialWarpCollectivesSeeOnlyExistingLanes) {
  constexpr int n = 72;
  std::vector<unsigned> ballot(n), active(n);
  std::vector<int> sum(n);
  OBC_LAUNCH(warp_masks, dim3(1), dim3(n), 0, nullptr, ballot.data(), active.data(), sum.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  for (int t = 0; t < n; ++t) {
    EXPECT_EQ(ballot[t], t < 64 ? 0xffffffffu : 0xffu) << t;
    EXPECT_EQ(active[t], ballot[t]) << t;
  }
  EXPECT_EQ(sum[0], 32);
  EXPECT_NE(sum[64], 8);  // a butterfly over 32 lanes in an 8-lane warp reads missing lanes
}

__global__ void where_am_i(uint32_t* out) {
  const unsigned bid = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned g = bid * (blockDim.x * blockDim.y * blockDim.z) + tid;
  // Every coordinate in one word, 4 bits each, to check them all on the host.
  out[g] = blockIdx.x | blockIdx.y << 4 | blockIdx.z << 8 | threadIdx.x << 12 | threadIdx.y << 16 |
           threadIdx.z << 20 | (gridDim.x * gridDim.y * gridDim.z == 12 && blockDim.x * blockDim.y == 12) << 24;
}

TEST(Simt, GridAndBlockIndicesCover3dLaunches) {
  const dim3 grid(3, 2, 2), block(4, 3, 2);
  std::vector<uint32_t> out(12 * 24, 0);
  OBC_LAUNCH(where_am_i, grid, block, 0, nullptr, out.data());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  size_t g = 0;
  for (unsigned bz = 0; bz < 2; ++bz)
    for (unsigned by = 0; by < 2; ++by)
      for (unsigned bx = 0; bx < 3; ++bx)
        for (unsigned tz = 0; tz < 2; ++tz)
          for (unsigned ty = 0; ty < 3; ++ty)
            for (unsigned tx = 0; tx < 4; ++tx, ++g)
              ASSERT_EQ(out[g], bx | by << 4 | bz << 8 | tx << 12 | ty << 16 | tz << 20 | 1u << 24) << g;
}

__global__ void count_calls(int* calls) { atomicAdd(calls, 1); }

TEST(Simt, BadLaunchConfigurationSetsLastErrorAndRunsNothing) {
  int calls = 0;
  OBC_LAUNCH(count_calls, dim3(1), dim3(1025), 0, nullptr, &calls);
  EXPECT_EQ(cudaPeekAtLastError(), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // reading it clears it
  OBC_LAUNCH(count_calls, dim3(0), dim3(32), 0, nullptr, &calls);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  OBC_LAUNCH(count_calls, dim3(1), dim3(32, 32, 2), 0, nullptr, &calls);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  OBC_LAUNCH(count_calls, dim3(1), dim3(32), 64 * 1024, nullptr, &calls);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);  // over 48 KiB without the opt-in
  EXPECT_EQ(calls, 0);
  OBC_LAUNCH(count_calls, dim3(2), dim3(1024), 0, nullptr, &calls);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(calls, 2048);
}

__global__ void count_calls_optin(int* calls) { atomicAdd(calls, 1); }

TEST(Simt, DynamicSharedMemoryOptInIsPerKernel) {
  int calls = 0;
  EXPECT_EQ(cudaFuncSetAttribute(count_calls_optin, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024),
            cudaSuccess);
  OBC_LAUNCH(count_calls_optin, dim3(1), dim3(32), 100 * 1024, nullptr, &calls);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(calls, 32);
  OBC_LAUNCH(count_calls_optin, dim3(1), dim3(32), 100 * 1024 + 1, nullptr, &calls);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);  // past what was opted into
  OBC_LAUNCH(count_calls, dim3(1), dim3(32), 100 * 1024, nullptr, &calls);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);  // another kernel has no opt-in
  EXPECT_EQ(cudaFuncSetAttribute(count_calls_optin, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024),
            cudaErrorInvalidValue);  // above the sm_90 maximum
  EXPECT_EQ(calls, 32);
}

__global__ void throw_in_thread(int victim) {
  if (static_cast<int>(threadIdx.x) == victim) throw std::out_of_range("kernel failed");
  __syncthreads();  // the others must not wait for the thread that threw
  __syncthreads();
}

TEST(Simt, KernelExceptionReachesTheLauncher) {
  EXPECT_THROW(OBC_LAUNCH(throw_in_thread, dim3(2), dim3(64), 0, nullptr, 37), std::out_of_range);
  int calls = 0;  // the pool survives and runs the next launch
  OBC_LAUNCH(count_calls, dim3(1), dim3(64), 0, nullptr, &calls);
  EXPECT_EQ(calls, 64);
}

__global__ void divergent_barriers(int /*unused: OBC_LAUNCH needs an argument*/) {
  if (threadIdx.x == 0)
    __syncthreads();
  else
    __syncwarp();
}

TEST(Simt, DivergentBarrierThrowsInsteadOfHanging) {
  EXPECT_THROW(OBC_LAUNCH(divergent_barriers, dim3(1), dim3(32), 0, nullptr, 0), std::runtime_error);
}

__global__ void half_warp_mask(int* out) { out[threadIdx.x] = __shfl_sync(0x0000ffffu, 1, 0); }

__global__ void shuffle_after_return(int* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1, 1);
}

TEST(Simt, UnsupportedWarpCollectivesThrowInsteadOfHanging) {
  std::vector<int> out(32);
  EXPECT_THROW(OBC_LAUNCH(half_warp_mask, dim3(1), dim3(32), 0, nullptr, out.data()), std::runtime_error);
  EXPECT_THROW(OBC_LAUNCH(shuffle_after_return, dim3(1), dim3(32), 0, nullptr, out.data()), std::runtime_error);
}

// One warp: D = A B + A B' for A [16][16] and B given as Bt [8][16] (row n =
// column n of B), every fragment loaded by the layout written in mma.h, D
// stored by the same layout. The emulation places elements by its own copy
// of the PTX table, so a slip in either shows up as a wrong product.
__global__ void mma_tile(const float* A, const float* Bt, const float* Bt2, float* D) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  uint32_t a[4], b[2], b2[2];
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i % 2), col = 2 * t + 8 * (i / 2);
    a[i] = obc::mma::pack_rn<obc::bf16_t>(A[row * 16 + col], A[row * 16 + col + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    b[i] = obc::mma::pack_rn<obc::bf16_t>(Bt[g * 16 + 2 * t + 8 * i], Bt[g * 16 + 2 * t + 8 * i + 1]);
    b2[i] = obc::mma::pack_rn<obc::bf16_t>(Bt2[g * 16 + 2 * t + 8 * i], Bt2[g * 16 + 2 * t + 8 * i + 1]);
  }
  float d[4] = {};
  const uint32_t(&ac)[4] = a;
  obc::mma::m16n8k16_of<obc::bf16_t>(d, ac, b);
  obc::mma::m16n8k16_of<obc::bf16_t>(d, ac, b2);
  for (int i = 0; i < 4; ++i) D[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = d[i];
}

TEST(Simt, MmaM16n8k16MatchesTheMatrixProduct) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> u(-64, 64);
  // Multiples of 1/8 below 8: bf16-exact, and every sum exact in float.
  std::vector<float> A(256), Bt(128), Bt2(128), D(128, -1.0f);
  for (auto* v : {&A, &Bt, &Bt2})
    for (float& x : *v) x = static_cast<float>(u(rng)) / 8.0f;
  const long long before = simt::mma_instructions();
  OBC_LAUNCH(mma_tile, dim3(1), dim3(32), 0, nullptr, A.data(), Bt.data(), Bt2.data(), D.data());
  EXPECT_EQ(simt::mma_instructions() - before, 2);
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      double want = 0;
      for (int k = 0; k < 16; ++k) want += double(A[m * 16 + k]) * (Bt[n * 16 + k] + double(Bt2[n * 16 + k]));
      ASSERT_EQ(D[m * 8 + n], want) << "m=" << m << " n=" << n;
    }
}

// ldmatrix (mma.h's ldsm_x4) feeding mma: A [16][16], and B [16][16] given
// twice, as Bt (row n = column n of B: K's layout in the kernels) loaded
// plainly and as B itself (V's layout) loaded transposed, each x4 giving the
// B fragments of two 8-column tiles. D = A B both ways. The emulation's
// ldmatrix follows the PTX ldmatrix table and its mma the mma table, so a
// lane-to-row slip in either shows up as a wrong product. Rows are 12 words
// (48 bytes: 16-byte aligned, an odd number of 16-byte groups, as in the
// kernels); `bad` makes lane 0 pass a misaligned row (1) or a global one (2).
__global__ void ldmatrix_mma(const float* A, const float* B, float* D1, float* D2, int bad) {
  constexpr int kStride = 12;
  OBC_DYNAMIC_SMEM(uint32_t, smem);
  uint32_t *As = smem, *Bts = As + 16 * kStride, *Bs = Bts + 16 * kStride;
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  for (int i = lane; i < 16 * 8; i += 32) {
    const int r = i / 8, c = 2 * (i % 8);
    As[r * kStride + i % 8] = obc::mma::pack_rn<obc::bf16_t>(A[r * 16 + c], A[r * 16 + c + 1]);
    Bts[r * kStride + i % 8] = obc::mma::pack_rn<obc::bf16_t>(B[c * 16 + r], B[(c + 1) * 16 + r]);
    Bs[r * kStride + i % 8] = obc::mma::pack_rn<obc::bf16_t>(B[r * 16 + c], B[r * 16 + c + 1]);
  }
  __syncthreads();
  uint32_t a[4], bt[4], b[4];
  const uint32_t* arow = As + (lane % 16) * kStride + 4 * (lane / 16);
  if (lane == 0 && bad == 1) arow = reinterpret_cast<const uint32_t*>(reinterpret_cast<const char*>(arow) + 4);
  if (lane == 0 && bad == 2) arow = reinterpret_cast<const uint32_t*>(A);
  obc::mma::ldsm_x4(a, arow);
  obc::mma::ldsm_x4(bt, Bts + (lane % 8 + 8 * (lane / 16)) * kStride + 4 * (lane / 8 % 2));
  obc::mma::ldsm_x4<true>(b, Bs + (lane % 16) * kStride + 4 * (lane / 16));
  const uint32_t(&ac)[4] = a;
  for (int nt = 0; nt < 2; ++nt) {
    float d1[4] = {}, d2[4] = {};
    obc::mma::m16n8k16_of<obc::bf16_t>(d1, ac, {bt[2 * nt], bt[2 * nt + 1]});
    obc::mma::m16n8k16_of<obc::bf16_t>(d2, ac, {b[2 * nt], b[2 * nt + 1]});
    for (int i = 0; i < 4; ++i) {
      const int at = (g + 8 * (i / 2)) * 16 + 8 * nt + 2 * t + i % 2;
      D1[at] = d1[i], D2[at] = d2[i];
    }
  }
}

TEST(Simt, LdmatrixFeedsMmaInTheFragmentLayout) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> u(-64, 64);
  // Multiples of 1/8 below 8: bf16-exact, and every sum exact in float.
  std::vector<float> A(256), B(256), D1(256, -1.0f), D2(256, -1.0f);
  for (auto* v : {&A, &B})
    for (float& x : *v) x = static_cast<float>(u(rng)) / 8.0f;
  const size_t smem = 3 * 16 * 12 * sizeof(uint32_t);
  OBC_LAUNCH(ldmatrix_mma, dim3(1), dim3(32), smem, nullptr, A.data(), B.data(), D1.data(), D2.data(), 0);
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      double want = 0;
      for (int k = 0; k < 16; ++k) want += double(A[m * 16 + k]) * B[k * 16 + n];
      ASSERT_EQ(D1[m * 16 + n], want) << "plain m=" << m << " n=" << n;
      ASSERT_EQ(D2[m * 16 + n], want) << "transposed m=" << m << " n=" << n;
    }
  // ldmatrix faults on a row that is not 16-byte aligned shared memory.
  for (int bad : {1, 2})
    EXPECT_THROW(OBC_LAUNCH(ldmatrix_mma, dim3(1), dim3(32), smem, nullptr, A.data(), B.data(), D1.data(),
                            D2.data(), bad),
                 std::logic_error)
        << bad;
}

// cp.async (mma.h's cp_async16_if_lt): each thread copies the even 16-byte
// pieces of src into shared memory and issues none for the odd ones, whose
// slots keep the poison, and records what its first piece's slot held
// before the wait (`early`: the poison, since the emulation lands copies at
// the wait). mode 1 skips the wait, 2 passes a misaligned destination, 3 a
// destination in global memory.
__global__ void async_copy(const uint4* src, uint4* out, uint32_t* early, int n, int mode) {
  OBC_DYNAMIC_SMEM(uint32_t, smem);
  uint4* tile = reinterpret_cast<uint4*>(smem);
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    uint32_t* dst = smem + 4 * i;
    if (mode == 2 && i == 0) dst += 1;
    if (mode == 3 && i == 0) dst = reinterpret_cast<uint32_t*>(out);
    obc::mma::cp_async16_if_lt(i % 2, 1, dst, src + i);
  }
  early[threadIdx.x] = smem[4 * threadIdx.x];
  if (mode != 1) obc::mma::cp_async_wait();
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = tile[(i + 1) % n];  // another thread's piece
}

TEST(Simt, CpAsyncLandsAtTheWaitOnlyWherePredicatedAndChecksItsAddresses) {
  const int n = 96, threads = 32;
  std::vector<uint4> src(n), out(n);
  for (int i = 0; i < n; ++i) src[i] = {4u * i + 1, 4u * i + 2, 4u * i + 3, 4u * i + 4};
  std::vector<uint32_t> early(threads, 0);
  const size_t smem = n * sizeof(uint4);
  OBC_LAUNCH(async_copy, dim3(1), dim3(threads), smem, nullptr, src.data(), out.data(), early.data(), n, 0);
  for (int i = 0; i < n; ++i) {
    const int from = (i + 1) % n;
    const uint4 want = from % 2 == 0 ? src[from] : uint4{~0u, ~0u, ~0u, ~0u};
    ASSERT_EQ(std::memcmp(&out[i], &want, sizeof(uint4)), 0) << "piece " << from;
  }
  for (int t = 0; t < threads; ++t) EXPECT_EQ(early[t], 0xFFFFFFFFu) << "thread " << t << " saw its copy early";
  for (int mode : {1, 2, 3})
    EXPECT_THROW(OBC_LAUNCH(async_copy, dim3(1), dim3(threads), smem, nullptr, src.data(), out.data(),
                            early.data(), n, mode),
                 std::logic_error)
        << mode;
}

template <typename E>
__global__ void split_floats(const float* x, float* hi, float* mid, float* lo, int n) {
  for (int i = 2 * threadIdx.x; i + 1 < n; i += 2 * blockDim.x) {
    uint32_t h, m, l;
    obc::mma::split3<E>(x[i], x[i + 1], h, m, l);
    hi[i] = obc::mma::low_of<E>(h), hi[i + 1] = obc::mma::high_of<E>(h);
    mid[i] = obc::mma::low_of<E>(m), mid[i + 1] = obc::mma::high_of<E>(m);
    lo[i] = obc::mma::low_of<E>(l), lo[i + 1] = obc::mma::high_of<E>(l);
  }
}

// split3's three bf16 terms add up to the float exactly (normal floats), the
// first being the float rounded to nearest even.
TEST(Simt, Bf16SplitIsExactAndRoundsToNearestEven) {
  std::mt19937 rng(6);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(4096), hi(x.size()), mid(x.size()), lo(x.size());
  for (float& v : x) v = u(rng) * std::ldexp(1.0f, static_cast<int>(rng() % 60) - 30);
  x[0] = 1.0f + std::ldexp(1.0f, -8);  // a tie: rounds to the even 1.0
  x[1] = 1.0f + 3 * std::ldexp(1.0f, -8);  // a tie: rounds up to 1 + 2^-6
  OBC_LAUNCH(split_floats<obc::bf16_t>, dim3(1), dim3(64), 0, nullptr, x.data(), hi.data(), mid.data(), lo.data(),
             static_cast<int>(x.size()));
  EXPECT_EQ(hi[0], 1.0f);
  EXPECT_EQ(hi[1], 1.0f + std::ldexp(1.0f, -6));
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(static_cast<double>(hi[i]) + mid[i] + lo[i], static_cast<double>(x[i])) << i;
    ASSERT_LE(std::fabs(x[i] - hi[i]), std::fabs(x[i]) * std::ldexp(1.0f, -8)) << i;
  }
}

// split3's three f16 terms add up to the float exactly from 2^-1 to below
// 65520 (f16's smallest step, 2^-24, is then at most the float's), and to
// within 2^-25 below; the first is the float rounded to nearest even, an
// f16 subnormal below 2^-14, inf from 65520 on. (mma::half_rn, which this
// runs on CPUs, matched numpy's float16 rounding on every 7th float32 bit
// pattern, 613,566,757 of them, when it was written.)
TEST(Simt, HalfSplitIsExactAboveOneHalfAndRoundsToNearestEven) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(4096), hi(x.size()), mid(x.size()), lo(x.size());
  for (float& v : x) v = u(rng) * std::ldexp(1.0f, static_cast<int>(rng() % 46) - 30);  // |x| < 2^15
  x[0] = 1.0f + std::ldexp(1.0f, -11);      // a tie: rounds to the even 1.0
  x[1] = 1.0f + 3 * std::ldexp(1.0f, -11);  // a tie: rounds up to 1 + 2^-9
  x[2] = 3 * std::ldexp(1.0f, -25);         // subnormal ties: 1.5 steps of 2^-24 round to 2,
  x[3] = 5 * std::ldexp(1.0f, -25);         // and 2.5 steps round to 2 as well
  x[4] = 65520.0f, x[5] = -65519.0f;        // inf; -65504
  OBC_LAUNCH(split_floats<obc::half_t>, dim3(1), dim3(64), 0, nullptr, x.data(), hi.data(), mid.data(), lo.data(),
             static_cast<int>(x.size()));
  EXPECT_EQ(hi[0], 1.0f);
  EXPECT_EQ(hi[1], 1.0f + std::ldexp(1.0f, -9));
  EXPECT_EQ(hi[2], std::ldexp(1.0f, -23));
  EXPECT_EQ(hi[3], std::ldexp(1.0f, -23));
  EXPECT_EQ(hi[4], INFINITY);
  EXPECT_EQ(hi[5], -65504.0f);
  for (size_t i = 6; i < x.size(); ++i) {
    const double sum = static_cast<double>(hi[i]) + mid[i] + lo[i], ax = std::fabs(x[i]);
    if (ax >= 0.5) {
      ASSERT_EQ(sum, static_cast<double>(x[i])) << i;
    } else {
      ASSERT_LE(std::fabs(sum - x[i]), std::ldexp(1.0, -25)) << i;
    }
    if (ax >= std::ldexp(1.0f, -14)) {
      ASSERT_LE(std::fabs(x[i] - hi[i]), ax * std::ldexp(1.0f, -11)) << i;
    }
  }
}

}  // namespace

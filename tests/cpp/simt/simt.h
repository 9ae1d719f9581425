// SIMT emulation: the CUDA kernel sources (csrc/kernels/*.cu, *.cuh) compiled
// by the host C++ compiler (-DOBC_SIMT_EMULATION) and run on CPU threads, so
// tests compare the real CUDA kernels with CPU references on machines without
// a GPU. cuda_compat.h includes this header; kernels stay plain CUDA.
//
// Execution model (see README.md for what it does and does not check):
// - Blocks of a launch run one after another; the threads of one block run
//   CONCURRENTLY, each on its own OS thread (a pool reused across blocks), so a
//   missing __syncthreads shows up as a wrong result or a ThreadSanitizer race.
// - Because blocks run sequentially, `__shared__` is `static`: a function-local
//   static is exactly "one instance shared by the running block's threads".
//   Launches from several host threads are serialised by a global mutex.
// - Barriers, warp collectives and atomics are real synchronisation: a mutex
//   for the bookkeeping, acquire/release atomics for the hand-over, __atomic
//   builtins for atomicXxx; TSan models all three. (Threads sleep on the
//   atomic words with a futex, which carries no ordering itself.)
// - Warp collectives need every existing lane of the warp (a partial last warp
//   has fewer) to take part with a mask covering them: the converged,
//   full-mask style our kernels use. Anything else throws instead of hanging.
// - An exception in a kernel thread (including a detected deadlock) stops the
//   block and is rethrown by simt::launch in the launching thread.
#pragma once

#if defined(__CUDACC__) || defined(__CUDA_ARCH__)
#error "simt.h emulates CUDA for host compilers; nvcc must not include it"
#endif

#include <math.h>  // ::expf, ::sqrtf, ... in the global namespace, as in CUDA

#include <atomic>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

// ---- Qualifiers. __restrict__ is already a g++/clang keyword; __noinline__
// is left alone because libstdc++ spells __attribute__((__noinline__)). ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static  // blocks run sequentially: see the top of this file
#define __constant__ static

// ---- Built-in vector types, with CUDA's sizes and alignments. ----
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return {x, y, z}; }
};
#define SIMT_VEC2(name, T, align) \
  struct alignas(align) name {    \
    T x, y;                       \
  };                              \
  inline name make_##name(T x, T y) { return {x, y}; }
#define SIMT_VEC4(name, T, align) \
  struct alignas(align) name {    \
    T x, y, z, w;                 \
  };                              \
  inline name make_##name(T x, T y, T z, T w) { return {x, y, z, w}; }
SIMT_VEC2(int2, int, 8)
SIMT_VEC2(uint2, unsigned int, 8)
SIMT_VEC2(float2, float, 8)
SIMT_VEC2(double2, double, 16)
SIMT_VEC4(int4, int, 16)
SIMT_VEC4(uint4, unsigned int, 16)
SIMT_VEC4(float4, float, 16)
#undef SIMT_VEC2
#undef SIMT_VEC4

// ---- The slice of the CUDA runtime that kernel launchers use. ----
// Same names and values as CUDA's driver_types.h.
typedef struct CUstream_st* cudaStream_t;
enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
typedef enum cudaError cudaError_t;
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97
};

namespace simt {
namespace detail {

constexpr int kWarp = 32;
// Launch limits of every GPU since sm_30. Dynamic shared memory above 48 KiB
// needs a per-kernel opt-in (cudaFuncSetAttribute), up to the sm_90 maximum.
constexpr unsigned kMaxThreads = 1024, kMaxBlockZ = 64, kMaxGridYZ = 65535;
constexpr size_t kDefaultDynamicSmem = 48 * 1024, kMaxOptInDynamicSmem = 227 * 1024;
// The emulated device's opt-in maximum: sm_90's unless a test models another
// GPU with set_smem_optin_limit.
inline std::atomic<size_t> smem_optin_limit{kMaxOptInDynamicSmem};
// The emulated device's compute capability (major): 9, or another one a test
// sets with set_compute_capability_major to run a launcher's fallback for an
// older GPU (e.g. one without bf16 / f16 tensor cores, major < 8).
inline std::atomic<int> cc_major{9};
// Its streaming multiprocessors: an H100 SXM's 132, or what a test sets with
// set_sm_count to take a launcher's choice for a larger grid on a small one.
inline std::atomic<int> sm_count{132};
// Warp-level mma instructions executed so far (tests check which kernel ran).
inline std::atomic<long long> mma_count{0};
// The most threads a block of any launch so far had (likewise).
inline std::atomic<unsigned> widest_block{0};

// cudaFuncAttributeMaxDynamicSharedMemorySize per kernel, keyed by its address.
inline std::mutex smem_optin_mutex;
inline std::map<const void*, size_t> smem_optin;
inline size_t dynamic_smem_limit(const void* kernel) {
  std::lock_guard<std::mutex> lock(smem_optin_mutex);
  const auto it = smem_optin.find(kernel);
  return it == smem_optin.end() ? kDefaultDynamicSmem : it->second;
}

inline thread_local cudaError_t last_error = cudaSuccess;  // per host thread, as in CUDA

// Thrown in the other threads of a block once one failed, so they leave their
// barriers instead of waiting for a thread that will never come.
struct BlockAborted {};

// Sleep while `word` still holds `old`. Waiting on the word itself, not on a
// condition variable, wakes each thread once, without a herd contending for
// the block mutex: barriers cost about one context switch per thread. The
// acquire load is what orders the waiter after the waker (and what TSan sees).
inline void wait_while(const std::atomic<uint32_t>& word, uint32_t old) {
  while (word.load(std::memory_order_acquire) == old) {
#if defined(__linux__)
    syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, old, nullptr, nullptr, 0);
#else
    std::this_thread::yield();
#endif
  }
}
inline void wake(std::atomic<uint32_t>& word) {
#if defined(__linux__)
  syscall(SYS_futex, &word, FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
#else
  (void)word;
#endif
}
inline void bump_and_wake(std::atomic<uint32_t>& word) {
  word.fetch_add(1, std::memory_order_release);
  wake(word);
}

struct Barrier {
  int arrived = 0, waiting = 0;  // guarded by the block mutex
  std::atomic<uint32_t> gen{0};  // bumped by each release; waiters sleep on it
};

struct Warp {
  Barrier bar;
  int lanes = 0, live = 0;  // lanes that exist / have not returned yet
  unsigned lane_mask = 0;
  // Double-buffered: a lane writes slot[p] for collective k only after every
  // lane passed collective k-1's barrier, i.e. finished reading slot[p] at k-2.
  // kWords words per lane: mma.sync moves three (its A and B fragments).
  static constexpr int kWords = 3;
  uint64_t slot[2][kWarp][kWords] = {};
};

// Barrier state of the running block. One mutex for the block barrier and the
// warp barriers keeps deadlock detection simple: `blocked == live` means every
// thread still running waits, so nobody can release anybody.
class Block {
 public:
  explicit Block(int n) : live_(n), warps_((n + kWarp - 1) / kWarp) {
    for (int w = 0; w < static_cast<int>(warps_.size()); ++w) {
      const int lanes = n - w * kWarp < kWarp ? n - w * kWarp : kWarp;
      warps_[w].lanes = warps_[w].live = lanes;
      warps_[w].lane_mask = lanes == kWarp ? ~0u : (1u << lanes) - 1;
    }
  }
  Warp& warp(int tid) { return warps_[tid / kWarp]; }
  std::exception_ptr error() const { return error_; }

  void sync_threads() {
    std::unique_lock<std::mutex> lk(m_);
    arrive(lk, bar_, live_);  // returned threads count as arrived, as on the hardware
  }

  // All lanes of the warp publish `n` <= Warp::kWords words; returns every
  // lane's words, row[lane][i]. (__syncwarp is an exchange whose result
  // nobody reads.)
  const uint64_t (*warp_exchange(int tid, unsigned mask, const uint64_t* words, int n,
                                 unsigned& phase))[Warp::kWords] {
    Warp& w = warp(tid);
    std::unique_lock<std::mutex> lk(m_);
    check_warp(lk, w, mask);
    uint64_t(*row)[Warp::kWords] = w.slot[phase ^= 1u];
    std::memcpy(row[tid % kWarp], words, sizeof(uint64_t) * n);
    arrive(lk, w.bar, w.lanes);
    return row;
  }
  const uint64_t (*warp_exchange(int tid, unsigned mask, uint64_t bits, unsigned& phase))[Warp::kWords] {
    return warp_exchange(tid, mask, &bits, 1, phase);
  }

  // A kernel thread returned (normally or by an exception).
  void exit(int tid) {
    std::unique_lock<std::mutex> lk(m_);
    --live_;
    Warp& w = warp(tid);
    --w.live;
    if (aborted_) return;
    if (w.bar.waiting > 0) {
      fail_locked("a lane returned while other lanes of its warp wait in a warp collective");
    } else if (bar_.arrived > 0 && bar_.arrived == live_) {
      release(bar_);
      lk.unlock();
      wake(bar_.gen);
    } else if (live_ > 0 && blocked_ == live_) {
      fail_locked("deadlock: every remaining thread waits at a barrier the others never reach");
    }
  }
  void fail(std::exception_ptr e) {
    std::lock_guard<std::mutex> lk(m_);
    fail_locked(e);
  }

 private:
  void check_warp(std::unique_lock<std::mutex>&, Warp& w, unsigned mask) {
    if ((mask & w.lane_mask) != w.lane_mask)
      abort_locked("warp collective with a mask that leaves out existing lanes (unsupported)");
    if (w.live != w.lanes) abort_locked("warp collective after a lane of the warp returned");
  }
  // Called with the mutex held; unlocks it before any sleep or wake-up.
  // (Waking under the mutex would make the woken threads queue on it.)
  void arrive(std::unique_lock<std::mutex>& lk, Barrier& b, int expected) {
    if (aborted_) throw BlockAborted{};
    if (++b.arrived == expected) {
      release(b);
      lk.unlock();
      return wake(b.gen);
    }
    const uint32_t gen = b.gen.load(std::memory_order_relaxed);
    ++b.waiting;
    if (++blocked_ == live_)
      abort_locked("deadlock: every remaining thread waits at a barrier the others never reach");
    lk.unlock();
    wait_while(b.gen, gen);
    if (aborted_) throw BlockAborted{};
  }
  void release(Barrier& b) {  // the caller wakes b.gen after unlocking
    blocked_ -= b.waiting;
    b.arrived = b.waiting = 0;
    b.gen.fetch_add(1, std::memory_order_release);
  }
  [[noreturn]] void abort_locked(const char* why) {
    fail_locked(why);
    throw BlockAborted{};
  }
  void fail_locked(const char* why) { fail_locked(std::make_exception_ptr(std::runtime_error(why))); }
  void fail_locked(std::exception_ptr e) {
    if (!error_) error_ = e;
    aborted_ = true;
    bump_and_wake(bar_.gen);
    for (Warp& w : warps_) bump_and_wake(w.bar.gen);
  }

  std::mutex m_;
  int live_, blocked_ = 0;
  std::atomic<bool> aborted_{false};  // also read by woken threads, without the mutex
  std::exception_ptr error_;
  Barrier bar_;
  std::vector<Warp> warps_;  // sized once: Warp holds atomics
};

// A cp.async copy issued and not yet waited for: its 16 bytes (read at the
// issue) and where they go.
struct AsyncCopy {
  unsigned char* dst;
  unsigned char bytes[16];
};
// What a kernel thread sees as its built-in variables.
struct Ctx {
  uint3 thread_idx{0, 0, 0}, block_idx{0, 0, 0};
  dim3 block_dim, grid_dim;
  Block* block = nullptr;
  int tid = 0;  // linear thread index in the block
  unsigned phase = 0;
  unsigned char* smem = nullptr;
  size_t smem_bytes = 0;  // of the dynamic shared memory at smem
  std::vector<AsyncCopy> async_copies;
};
inline thread_local Ctx ctx;

inline Ctx& kernel_ctx() {
  if (!ctx.block) throw std::logic_error("CUDA device function called outside a simt::launch kernel");
  return ctx;
}

// Worker threads reused across blocks and launches; run(n, f) calls f(0..n-1)
// concurrently on workers 0..n-1 and returns when all have returned. Only the
// launching thread (holding the launch mutex) calls run.
class Pool {
 public:
  ~Pool() {
    stop_ = true;
    for (auto& w : workers_) bump_and_wake(w->go);
    for (auto& w : workers_) w->thread.join();
  }
  void run(int n, const std::function<void(int)>& job) {
    while (static_cast<int>(workers_.size()) < n) {
      workers_.push_back(std::make_unique<Worker>());
      Worker* w = workers_.back().get();
      w->thread = std::thread([this, w, id = static_cast<int>(workers_.size()) - 1] { loop(*w, id); });
    }
    job_ = &job;  // published to the workers by the release in bump_and_wake
    pending_.store(n, std::memory_order_relaxed);
    const uint32_t done = done_.load(std::memory_order_relaxed);
    for (int i = 0; i < n; ++i) bump_and_wake(workers_[i]->go);  // only the threads the block needs
    wait_while(done_, done);
  }

 private:
  struct Worker {
    std::atomic<uint32_t> go{0};
    std::thread thread;
  };
  void loop(Worker& w, int id) {
    for (uint32_t seen = 0;;) {
      wait_while(w.go, seen);
      seen = w.go.load(std::memory_order_acquire);
      if (stop_) return;
      (*job_)(id);  // never throws: the job catches kernel exceptions
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) bump_and_wake(done_);
    }
  }
  std::vector<std::unique_ptr<Worker>> workers_;
  const std::function<void(int)>* job_ = nullptr;
  std::atomic<int> pending_{0};
  std::atomic<uint32_t> done_{0};
  std::atomic<bool> stop_{false};
};

inline cudaError_t check_config(dim3 g, dim3 b, size_t smem, size_t smem_limit) {
  const unsigned long long threads = 1ull * b.x * b.y * b.z;
  if (threads == 0 || threads > kMaxThreads || b.x > kMaxThreads || b.y > kMaxThreads || b.z > kMaxBlockZ)
    return cudaErrorInvalidConfiguration;
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > kMaxGridYZ || g.z > kMaxGridYZ)
    return cudaErrorInvalidConfiguration;
  return smem > smem_limit ? cudaErrorInvalidValue : cudaSuccess;
}

inline void run_grid(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()>& kernel) {
  static Pool pool;
  static std::mutex launch_mutex;  // one launch at a time: `__shared__` is static
  std::lock_guard<std::mutex> serial(launch_mutex);
  const int n = static_cast<int>(block.x * block.y * block.z);
  std::vector<uint4> smem(smem_bytes / sizeof(uint4) + 1);  // 16-byte aligned, never empty
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        // Poison (0xFF bytes: NaN floats, -1 ints) so reads before writes show.
        std::memset(smem.data(), 0xFF, smem.size() * sizeof(uint4));
        Block blk(n);
        pool.run(n, [&](int tid) {
          Ctx& c = ctx;
          c.thread_idx = {tid % block.x, tid / block.x % block.y, tid / (block.x * block.y)};
          c.block_idx = {bx, by, bz};
          c.block_dim = block;
          c.grid_dim = grid;
          c.block = &blk;
          c.tid = tid;
          c.phase = 0;
          c.smem = reinterpret_cast<unsigned char*>(smem.data());
          c.smem_bytes = smem_bytes;
          c.async_copies.clear();
          try {
            kernel();
            if (!c.async_copies.empty()) throw std::logic_error("cp.async copies never waited for");
          } catch (const BlockAborted&) {  // the block's first error is already recorded
          } catch (...) {
            blk.fail(std::current_exception());
          }
          blk.exit(tid);
          c.block = nullptr;
        });
        if (blk.error()) std::rethrow_exception(blk.error());
      }
}

template <typename T>
uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "warp collectives move <= 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <typename T>
T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}
inline int lane() { return kernel_ctx().tid % kWarp; }
inline int check_width(int width) {
  if (width < 1 || width > kWarp || (width & (width - 1)))
    throw std::invalid_argument("shuffle width must be a power of two in [1, 32]");
  return width;
}
// Every lane calls this (also those that keep their own value, src == own).
// A source lane that does not exist (partial warp) reads as poison, all bits 1.
template <typename T>
T shuffle(unsigned mask, T v, int src) {
  Ctx& c = kernel_ctx();
  const auto row = c.block->warp_exchange(c.tid, mask, to_bits(v), c.phase);
  return (c.block->warp(c.tid).lane_mask >> src & 1u) ? from_bits<T>(row[src][0]) : from_bits<T>(~0ull);
}
inline unsigned ballot(unsigned mask, bool pred) {
  Ctx& c = kernel_ctx();
  const auto row = c.block->warp_exchange(c.tid, mask, pred, c.phase);
  const Warp& w = c.block->warp(c.tid);
  unsigned bits = 0;
  for (int l = 0; l < w.lanes; ++l) bits |= static_cast<unsigned>(row[l][0] != 0) << l;
  return bits & mask;
}

// float/double atomics and min/max: a compare-and-swap loop.
template <typename T, typename F>
T atomic_update(T* p, F f) {
  T old, next;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  do {
    next = f(old);
  } while (!__atomic_compare_exchange(p, &old, &next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return old;
}

}  // namespace detail

template <typename T>
T* dynamic_smem() {
  return reinterpret_cast<T*>(detail::kernel_ctx().smem);
}

// kernel<<<grid, block, smem_bytes, stream>>>(args...): synchronous. A bad
// configuration sets the last error and runs nothing, like CUDA; an exception
// thrown by a kernel thread is rethrown here.
template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t /*stream*/, Kernel kernel, Args... args) {
  if (detail::ctx.block) throw std::logic_error("kernel launch from a kernel (dynamic parallelism) is unsupported");
  const cudaError_t err = detail::check_config(grid, block, smem_bytes,
                                               detail::dynamic_smem_limit(reinterpret_cast<const void*>(kernel)));
  if (err != cudaSuccess) {
    detail::last_error = err;
    return;
  }
  const unsigned threads = block.x * block.y * block.z;
  unsigned seen = detail::widest_block.load();
  while (threads > seen && !detail::widest_block.compare_exchange_weak(seen, threads)) {
  }
  detail::run_grid(grid, block, smem_bytes, [&] { kernel(args...); });
}

// Models a GPU with less shared memory per block than sm_90's 227 KiB (sm_80:
// 163 KiB, sm_86 / sm_89: 99 KiB), so that launchers' fallbacks for such
// GPUs run too. Earlier opt-ins are dropped, as on a freshly opened device.
inline void set_smem_optin_limit(size_t bytes) {
  detail::smem_optin_limit = bytes;
  std::lock_guard<std::mutex> lock(detail::smem_optin_mutex);
  detail::smem_optin.clear();
}

// Models an older GPU generation (see detail::cc_major).
inline void set_compute_capability_major(int major) { detail::cc_major = major; }
// Models a GPU with another number of SMs (see detail::sm_count).
inline void set_sm_count(int sms) { detail::sm_count = sms; }
// How many warp-level mma instructions kernels have executed.
inline long long mma_instructions() { return detail::mma_count.load(); }
// The most threads per block any launch had since the last call (0: none).
inline unsigned take_widest_block() { return detail::widest_block.exchange(0); }

}  // namespace simt

// ---- Built-in variables (read-only, per emulated thread). ----
#define threadIdx (static_cast<const uint3&>(::simt::detail::kernel_ctx().thread_idx))
#define blockIdx (static_cast<const uint3&>(::simt::detail::kernel_ctx().block_idx))
#define blockDim (static_cast<const dim3&>(::simt::detail::kernel_ctx().block_dim))
#define gridDim (static_cast<const dim3&>(::simt::detail::kernel_ctx().grid_dim))
constexpr int warpSize = 32;

// ---- Runtime API. ----
inline cudaError_t cudaGetLastError() {
  const cudaError_t e = simt::detail::last_error;
  simt::detail::last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return simt::detail::last_error; }
// Only the attribute kernels use: the per-kernel dynamic shared memory opt-in.
template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      static_cast<size_t>(value) > simt::detail::smem_optin_limit.load())
    return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(simt::detail::smem_optin_mutex);
  simt::detail::smem_optin[reinterpret_cast<const void*>(kernel)] = static_cast<size_t>(value);
  return cudaSuccess;
}
// One emulated device, an sm_90 one (its shared memory limit settable).
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidValue;
  if (attr == cudaDevAttrMaxSharedMemoryPerBlockOptin) {
    *value = static_cast<int>(simt::detail::smem_optin_limit.load());
  } else if (attr == cudaDevAttrComputeCapabilityMajor) {
    *value = simt::detail::cc_major.load();
  } else if (attr == cudaDevAttrMultiProcessorCount) {
    *value = simt::detail::sm_count.load();
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unrecognized error code";
}
// Launches are synchronous, so "async" copies are plain host copies.
inline cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t = nullptr) {
  if (n && !p) return cudaErrorInvalidValue;
  if (n) std::memset(p, value, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t = nullptr) {
  if (n && (!dst || !src)) return cudaErrorInvalidValue;
  if (n) std::memcpy(dst, src, n);
  return cudaSuccess;
}

// ---- Synchronisation and warp collectives. ----
inline void __syncthreads() { simt::detail::kernel_ctx().block->sync_threads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  auto& c = simt::detail::kernel_ctx();
  c.block->warp_exchange(c.tid, mask, 0, c.phase);
}
inline unsigned __activemask() {  // converged code only: every existing lane
  auto& c = simt::detail::kernel_ctx();
  return c.block->warp(c.tid).lane_mask;
}
// CUDA 9+: a fence orders this thread's accesses. TSan does not model
// standalone fences; kernels here synchronise with barriers instead.
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  const int w = simt::detail::check_width(width), lane = simt::detail::lane();
  return simt::detail::shuffle(mask, var, (lane & ~(w - 1)) + (src_lane & (w - 1)));
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  const int w = simt::detail::check_width(width), lane = simt::detail::lane();
  return simt::detail::shuffle(mask, var, static_cast<unsigned>(lane & (w - 1)) >= delta ? lane - static_cast<int>(delta) : lane);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  const int w = simt::detail::check_width(width), lane = simt::detail::lane();
  return simt::detail::shuffle(mask, var, delta < static_cast<unsigned>(w - (lane & (w - 1))) ? lane + static_cast<int>(delta) : lane);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  // A lane may read from earlier width-groups, not later ones (CUDA's rule).
  const int w = simt::detail::check_width(width), lane = simt::detail::lane();
  const int src = lane ^ (lane_mask & (warpSize - 1));
  return simt::detail::shuffle(mask, var, src >= (lane & ~(w - 1)) + w ? lane : src);
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return simt::detail::ballot(mask, pred != 0); }
// The lanes of `mask` whose value equals this lane's (sm_70+).
template <typename T>
unsigned __match_any_sync(unsigned mask, T value) {
  static_assert(std::is_integral<T>::value, "match.any takes 32- or 64-bit integers");
  auto& c = simt::detail::kernel_ctx();
  const uint64_t mine = simt::detail::to_bits(value);
  const auto row = c.block->warp_exchange(c.tid, mask, mine, c.phase);
  const simt::detail::Warp& w = c.block->warp(c.tid);
  unsigned peers = 0;
  for (int l = 0; l < w.lanes; ++l) peers |= static_cast<unsigned>(row[l][0] == mine) << l;
  return peers & mask;
}
inline int __any_sync(unsigned mask, int pred) { return simt::detail::ballot(mask, pred != 0) != 0; }
inline int __all_sync(unsigned mask, int pred) {
  return simt::detail::ballot(mask, pred != 0) == (mask & __activemask());
}

// ---- Atomics: relaxed, device-wide, like CUDA's atomicXxx. ----
#define SIMT_ATOMIC_INT(T)                                                                                   \
  inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }                      \
  inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }                     \
  inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }                       \
  inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }                         \
  inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }                       \
  inline T atomicCAS(T* p, T cmp, T v) {                                                                     \
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);                      \
    return cmp; /* the old value, whether or not the swap happened */                                       \
  }
#define SIMT_ATOMIC_MINMAX(T)                                                                                 \
  inline T atomicMin(T* p, T v) { return simt::detail::atomic_update(p, [v](T o) { return v < o ? v : o; }); } \
  inline T atomicMax(T* p, T v) { return simt::detail::atomic_update(p, [v](T o) { return o < v ? v : o; }); }
SIMT_ATOMIC_INT(int)
SIMT_ATOMIC_INT(unsigned int)
SIMT_ATOMIC_INT(unsigned long long)
SIMT_ATOMIC_MINMAX(int)
SIMT_ATOMIC_MINMAX(unsigned int)
SIMT_ATOMIC_MINMAX(long long)
SIMT_ATOMIC_MINMAX(unsigned long long)
#undef SIMT_ATOMIC_INT
#undef SIMT_ATOMIC_MINMAX
inline int atomicSub(int* p, int v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
inline unsigned int atomicSub(unsigned int* p, unsigned int v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
inline float atomicAdd(float* p, float v) { return simt::detail::atomic_update(p, [v](float o) { return o + v; }); }
inline double atomicAdd(double* p, double v) {
  return simt::detail::atomic_update(p, [v](double o) { return o + v; });
}
inline float atomicExch(float* p, float v) {
  float old;
  __atomic_exchange(p, &v, &old, __ATOMIC_RELAXED);
  return old;
}

// ---- Math and bit intrinsics. expf, sqrtf, fmaxf, ... come from <math.h>. ----
// glibc declares (but does not export) __expf and __logf; define them inline.
extern "C" inline float __expf(float x) noexcept { return std::exp(x); }
extern "C" inline float __logf(float x) noexcept { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline unsigned int __float_as_uint(float x) { return simt::detail::from_bits<unsigned int>(simt::detail::to_bits(x)); }
inline float __uint_as_float(unsigned int x) { return simt::detail::from_bits<float>(x); }
inline int __float_as_int(float x) { return simt::detail::from_bits<int>(simt::detail::to_bits(x)); }
inline float __int_as_float(int x) { return simt::detail::from_bits<float>(simt::detail::to_bits(x)); }
inline long long __double_as_longlong(double x) { return simt::detail::from_bits<long long>(simt::detail::to_bits(x)); }
inline double __longlong_as_double(long long x) { return simt::detail::from_bits<double>(simt::detail::to_bits(x)); }
template <typename T>
T __ldg(const T* p) {
  return *p;
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz(static_cast<unsigned>(x)) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll(static_cast<unsigned long long>(x)) : 64; }
inline unsigned int __brev(unsigned int x) {
  x = (x >> 1 & 0x55555555u) | (x & 0x55555555u) << 1;
  x = (x >> 2 & 0x33333333u) | (x & 0x33333333u) << 2;
  x = (x >> 4 & 0x0f0f0f0fu) | (x & 0x0f0f0f0fu) << 4;
  return __builtin_bswap32(x);
}
inline unsigned long long __brevll(unsigned long long x) {
  return static_cast<unsigned long long>(__brev(static_cast<unsigned>(x))) << 32 | __brev(static_cast<unsigned>(x >> 32));
}
// CUDA's global min/max overloads. Non-templates, so they win over std::min /
// std::max on an exact match even under `using namespace std`.
#define SIMT_MINMAX(T)                                    \
  inline T min(T a, T b) { return b < a ? b : a; }        \
  inline T max(T a, T b) { return a < b ? b : a; }
SIMT_MINMAX(int)
SIMT_MINMAX(unsigned int)
SIMT_MINMAX(long)
SIMT_MINMAX(unsigned long)
SIMT_MINMAX(long long)
SIMT_MINMAX(unsigned long long)
#undef SIMT_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// ---- Tensor-core instructions (after the bit intrinsics they use). ----
namespace simt {
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 of the
// calling warp, d += A B (every lane of a full warp takes part); decode(h)
// is the element type's 16 bits as a float (mma.h passes common.h's exact
// conversions: the product of two such values is exact in float either
// way). The element positions are written out here from the PTX ISA's
// table ("Matrix Fragments for mma.m16n8k16 with floating point type"), as
// the inverse of the mapping the kernels use to load fragments
// (csrc/kernels/mma.h), so a kernel that loads the wrong element computes a
// wrong product here too. With g = lane / 4,
// t = lane % 4, element e of a register is its low (e = 0) or high half:
//   A[m][k]: lane (m % 8) * 4 + (k % 8) / 2, register (m / 8) + 2 (k / 8), half k % 2
//   B[k][n]: lane n * 4 + (k % 8) / 2, register k / 8, half k % 2
//   D[m][n]: lane (m % 8) * 4 + n / 2, register 2 (m / 8) + n % 2
// Products are summed in float in k order (the hardware's order and
// rounding inside one instruction are unspecified; both are float-accurate).
template <typename Decode>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], Decode decode) {
  using namespace detail;
  Ctx& c = kernel_ctx();
  if (c.block->warp(c.tid).lanes != kWarp) throw std::logic_error("mma.sync needs a full warp");
  // One exchange: words 0, 1 = a[0..3], word 2 = b[0..1] (two registers
  // per word, the lower-numbered in the low half). The rows stay valid until
  // this lane's next collective.
  const uint64_t mine[3] = {uint64_t{a[0]} | uint64_t{a[1]} << 32, uint64_t{a[2]} | uint64_t{a[3]} << 32,
                            uint64_t{b[0]} | uint64_t{b[1]} << 32};
  const auto row = c.block->warp_exchange(c.tid, 0xffffffffu, mine, 3, c.phase);
  const auto reg = [row](int lane, int word, int r) -> uint32_t {
    const uint64_t x = row[lane][word + r / 2];
    return static_cast<uint32_t>(r % 2 ? x >> 32 : x);
  };
  const auto elem = [decode](uint32_t r, int half) { return decode(static_cast<uint16_t>(half ? r >> 16 : r)); };
  const int lane = c.tid % kWarp, g = lane / 4, t = lane % 4;
  if (lane == 0) ++mma_count;
  for (int i = 0; i < 4; ++i) {
    const int m = g + 8 * (i / 2), n = 2 * t + i % 2;
    float acc = d[i];
    for (int k = 0; k < 16; ++k) {
      const float x = elem(reg((m % 8) * 4 + (k % 8) / 2, 0, m / 8 + 2 * (k / 8)), k % 2);
      const float y = elem(reg(n * 4 + (k % 8) / 2, 2, k / 8), k % 2);
      acc = std::fma(x, y, acc);
    }
    d[i] = acc;
  }
}

// cp.async.cg.shared.global [dst], [src], 16 of the calling thread: 16
// bytes into the block's dynamic shared memory, written when the thread
// waits (cp_async_wait), so that a read before the wait sees the poison.
// Both addresses 16-byte aligned.
inline void cp_async16(void* dst, const void* src) {
  using namespace detail;
  Ctx& c = kernel_ctx();
  const auto a = reinterpret_cast<uintptr_t>(dst), base = reinterpret_cast<uintptr_t>(c.smem);
  if (a % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0)
    throw std::logic_error("cp.async: an address is not 16-byte aligned");
  if (a < base || a + 16 > base + c.smem_bytes)
    throw std::logic_error("cp.async: the destination lies outside the block's dynamic shared memory");
  AsyncCopy copy{static_cast<unsigned char*>(dst), {}};
  std::memcpy(copy.bytes, src, 16);
  c.async_copies.push_back(copy);
}
// cp.async.wait_all: the calling thread's copies land.
inline void cp_async_wait() {
  detail::Ctx& c = detail::kernel_ctx();
  for (const detail::AsyncCopy& copy : c.async_copies) std::memcpy(copy.dst, copy.bytes, 16);
  c.async_copies.clear();
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 of the calling warp: four
// 8 x 8 matrices of 16-bit elements. Lane l gives the address of row l % 8 of
// matrix l / 8 (16 bytes, 16-byte aligned; here it must lie in the block's
// dynamic shared memory, the only shared memory the kernels load fragments
// from). Register j of lane l receives matrix j's row l / 4, elements
// 2 (l % 4) and 2 (l % 4) + 1 (low half first), as in the PTX ISA's
// "Warp-level matrix load instruction: ldmatrix"; with .trans, the elements
// [2 (l % 4)][l / 4] and [2 (l % 4) + 1][l / 4] instead.
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool trans) {
  using namespace detail;
  Ctx& c = kernel_ctx();
  if (c.block->warp(c.tid).lanes != kWarp) throw std::logic_error("ldmatrix needs a full warp");
  const auto a = reinterpret_cast<uintptr_t>(row), base = reinterpret_cast<uintptr_t>(c.smem);
  if (a % 16 != 0) throw std::logic_error("ldmatrix: a row address is not 16-byte aligned");
  if (a < base || a + 16 > base + c.smem_bytes)
    throw std::logic_error("ldmatrix: a row lies outside the block's dynamic shared memory");
  const auto rows = c.block->warp_exchange(c.tid, 0xffffffffu, static_cast<uint64_t>(a), c.phase);
  const int lane = c.tid % kWarp;
  const auto elem = [rows](int matrix, int i, int j) {  // element [i][j] of a matrix
    uint16_t x;
    std::memcpy(&x, reinterpret_cast<const unsigned char*>(rows[8 * matrix + i][0]) + 2 * j, 2);
    return uint32_t{x};
  };
  // Lane l's row i and column col in each matrix (transposed: the two rows
  // of one column).
  const int i = trans ? 2 * (lane % 4) : lane / 4, col = trans ? lane / 4 : 2 * (lane % 4);
  for (int j = 0; j < 4; ++j)
    r[j] = trans ? elem(j, i, col) | elem(j, i + 1, col) << 16 : elem(j, i, col) | elem(j, i, col + 1) << 16;
}
}  // namespace simt

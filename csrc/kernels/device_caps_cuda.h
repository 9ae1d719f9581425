// What the current CUDA device offers the launchers (saliency_cuda.cu,
// projected_value_cuda.cu): its attributes, the shared memory a block may opt
// in to, and whether 16-bit inputs run on its tensor cores. Host code, included
// by .cu files only (the SIMT emulation provides the same runtime calls).
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "cuda_compat.h"

namespace obc {

// An attribute of the current device.
inline cudaError_t device_attribute(cudaDeviceAttr attr, int* value) {
  int device = 0;
  *value = 0;
  const cudaError_t err = cudaGetDevice(&device);
  return err == cudaSuccess ? cudaDeviceGetAttribute(value, attr, device) : err;
}

// Dynamic shared memory one block may opt in to on the current device
// (above the default 48 KiB, a per-kernel opt-in is needed; the SIMT
// emulation enforces the same rule).
inline cudaError_t smem_optin_limit(size_t* limit) {
  int value = 0;
  const cudaError_t err = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin, &value);
  *limit = static_cast<size_t>(value);
  return err;
}

// Whether the environment variable `name` is "0": a switch that turns a
// kernel choice off, read per call, so that bench/bench_gpu.py times both
// choices in one process.
inline bool switched_off(const char* name) {
  const char* env = std::getenv(name);
  return env && std::strcmp(env, "0") == 0;
}

// The tensor cores' bf16 and f16 mma.sync m16n8k16 exist from sm_80 on.
// OBCACHE_CUDA_TENSOR_CORES=0 keeps 16-bit inputs on the FP32 kernels.
inline cudaError_t has_tensor_cores(bool* yes) {
  *yes = false;
  if (switched_off("OBCACHE_CUDA_TENSOR_CORES")) return cudaSuccess;
  int major = 0;
  const cudaError_t err = device_attribute(cudaDevAttrComputeCapabilityMajor, &major);
  *yes = major >= 8;
  return err;
}

// Lets kernel take bytes of dynamic shared memory beside static_bytes of
// static ones; past 48 KiB in all that needs the opt-in. The opt-in is the
// most the kernel can take (the device's limit less its static buffers),
// not this call's size: host threads calling with different shapes would
// otherwise lower it under each other's launches.
template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes, size_t limit, size_t static_bytes = 0) {
  if (static_bytes + bytes <= 48 * 1024) return cudaSuccess;
  if (static_bytes + bytes > limit) return cudaErrorInvalidValue;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(limit - static_bytes));
}

}  // namespace obc

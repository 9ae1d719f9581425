// Helpers of the tests that run the nvcc-built kernels on a real GPU.
#pragma once

#include <cuda_runtime.h>

#include <vector>

namespace cuda_test {

// False without a device or a driver (every machine we build on): the tests
// then GTEST_SKIP.
inline bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// A device copy of h (one spare byte so an empty vector still allocates), or
// nullptr when cudaMalloc fails.
template <typename T>
T* to_device(const std::vector<T>& h) {
  T* d = nullptr;
  if (cudaMalloc(&d, h.size() * sizeof(T) + 1) != cudaSuccess) return nullptr;
  cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

}  // namespace cuda_test

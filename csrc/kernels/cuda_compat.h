// What lets one .cu source build two ways: with nvcc for the extension, and
// with the host compiler under the SIMT emulation (tests/cpp/simt) so every
// CUDA kernel also runs, and is checked, on machines without a GPU.
//
// Kernel sources use only these spellings for the two CUDA features that are
// not plain C++ functions: the launch (`<<<...>>>` is not C++) and dynamic
// shared memory (`extern __shared__` has no host meaning).
#pragma once

#if defined(OBC_SIMT_EMULATION)
#include "simt.h"  // tests/cpp/simt: emulated CUDA runtime and builtins
#define OBC_LAUNCH(kernel, grid, block, smem_bytes, stream, ...) \
  ::simt::launch((grid), (block), (smem_bytes), (stream), kernel, __VA_ARGS__)
#define OBC_DYNAMIC_SMEM(type, name) type* name = ::simt::dynamic_smem<type>()
#else
#include <cuda_runtime.h>
#define OBC_LAUNCH(kernel, grid, block, smem_bytes, stream, ...) \
  kernel<<<(grid), (block), (smem_bytes), (stream)>>>(__VA_ARGS__)
#define OBC_DYNAMIC_SMEM(type, name)                          \
  extern __shared__ __align__(16) unsigned char obc_smem_raw[]; \
  type* name = reinterpret_cast<type*>(obc_smem_raw)
#endif

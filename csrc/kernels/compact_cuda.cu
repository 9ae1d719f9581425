// Launcher of the in-place compaction kernel (compact_cuda.cuh has the
// algorithm and the hazard argument). Picks the widest vector (16, 8, 4, 2 or
// 1 bytes) that divides both tensors' base addresses, row bytes and strides,
// and enough column slices to give the GPU ~512 blocks when B * H is small.
#include "compact_cuda.h"

#include "compact_cuda.cuh"
#include "cuda_compat.h"

namespace obc {
namespace {

bool aligned_to(const CompactParams& p, long long bytes) {
  for (int i = 0; i < p.num_tensors; ++i) {
    const CompactTensor& t = p.t[i];
    const long long es = t.elem_size;
    if (reinterpret_cast<uintptr_t>(t.data) % bytes != 0) return false;
    if ((t.D * es) % bytes || (t.sb * es) % bytes || (t.sh * es) % bytes || (t.sn * es) % bytes) return false;
  }
  return true;
}

template <typename V>
int launch(const CompactParams& p, cudaStream_t stream) {
  long long row_vecs = 0;
  for (int i = 0; i < p.num_tensors; ++i) {
    const long long rv = p.t[i].D * p.t[i].elem_size / static_cast<long long>(sizeof(V));
    row_vecs = rv > row_vecs ? rv : row_vecs;
  }
  if (row_vecs == 0) return 0;
  // Slices of at least 32 bytes (one memory sector) per row.
  const long long min_slice = sizeof(V) >= 32 ? 1 : 32 / static_cast<long long>(sizeof(V));
  const long long blocks_per_slice = p.B * p.H * p.num_tensors;
  long long slices = (512 + blocks_per_slice - 1) / blocks_per_slice;
  const long long max_slices = (row_vecs + min_slice - 1) / min_slice;
  slices = slices < 1 ? 1 : (slices > max_slices ? max_slices : slices);
  // A chunk must hold whole rows of the slice: at most kBlock * kItems vectors.
  const long long chunk = cmp::kBlock * cmp::kItems;
  if (slices < (row_vecs + chunk - 1) / chunk) slices = (row_vecs + chunk - 1) / chunk;
  const long long slice_vecs = (row_vecs + slices - 1) / slices;
  slices = (row_vecs + slice_vecs - 1) / slice_vecs;
  const dim3 grid(static_cast<unsigned>(p.B * p.H), static_cast<unsigned>(p.num_tensors),
                  static_cast<unsigned>(slices));
  const dim3 block(cmp::kBlock);
  OBC_LAUNCH(cmp::compact_kernel<V>, grid, block, 0, stream, p, slice_vecs);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int compact_cuda(const CompactParams& p, void* stream) {
  if (p.B * p.H == 0 || p.L == 0 || p.num_tensors == 0) return 0;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (aligned_to(p, 16)) return launch<uint4>(p, st);
  if (aligned_to(p, 8)) return launch<uint2>(p, st);
  if (aligned_to(p, 4)) return launch<uint32_t>(p, st);
  if (aligned_to(p, 2)) return launch<uint16_t>(p, st);
  return launch<uint8_t>(p, st);
}

}  // namespace obc

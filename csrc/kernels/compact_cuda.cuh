// In-place, order-preserving row gather: row i of each (b, h) becomes old row
// indices[i] (i < n), with indices strictly increasing, so indices[i] >= i.
//
// Hazard-free design (no workspace): one block owns ALL rows of one (tensor,
// b, h) for a slice of columns (columns never interact, so slices of the same
// rows run in parallel blocks). The block walks destinations in ascending
// chunks of R rows: every thread loads its part of the chunk's source rows
// into registers, __syncthreads, then stores. Within a chunk the barrier
// orders every read before any write. Across chunks: chunk c writes rows
// [j0, j0 + R) while every later chunk reads rows >= j0 + R (indices[j] >= j),
// and every source row a later chunk overwrites was read by an earlier chunk
// before that chunk's barrier, which precedes the later write. So no row is
// overwritten before it is read, at any size, with one barrier per chunk.
// The unmoved prefix (indices[j] == j; a prefix since indices[j] > j implies
// indices[j'] > j' for j' > j) is found by binary search and skipped.
// Memory: each moved element read once and written once, in vectors of V
// (16 bytes when pointers and strides allow).
// Launch: grid (B * H, tensors, column slices), 256 threads, ITEMS vectors
// per thread per chunk.
#pragma once

#include <cstdint>

#include "compact_params.h"
#include "cuda_compat.h"

namespace obc {
namespace cmp {

constexpr int kBlock = 256;
constexpr int kItems = 4;

template <typename V>
__global__ void __launch_bounds__(kBlock) compact_kernel(CompactParams p, long long slice_vecs) {
  __shared__ long long first_moved;
  const CompactTensor t = p.t[blockIdx.y];
  const long long row = blockIdx.x, b = row / p.H, h = row % p.H;
  const long long row_vecs = t.D * t.elem_size / static_cast<long long>(sizeof(V));
  const long long c0 = static_cast<long long>(blockIdx.z) * slice_vecs;
  if (c0 >= row_vecs) return;  // uniform: the whole block leaves
  const long long sw = row_vecs - c0 < slice_vecs ? row_vecs - c0 : slice_vecs;
  const long long n = p.lengths ? p.lengths[row] : p.L;
  const int64_t* idx = p.indices + row * p.L;
  if (threadIdx.x == 0) {
    long long lo = 0, hi = n;
    while (lo < hi) {
      const long long mid = (lo + hi) / 2;
      if (idx[mid] == mid) lo = mid + 1; else hi = mid;
    }
    first_moved = lo;
  }
  __syncthreads();
  char* base = static_cast<char*>(t.data) + (b * t.sb + h * t.sh) * t.elem_size + c0 * sizeof(V);
  const long long rs = t.sn * t.elem_size;
  const long long R = (kBlock * kItems) / sw > 0 ? (kBlock * kItems) / sw : 1;
  for (long long j0 = first_moved; j0 < n; j0 += R) {
    V val[kItems];
    long long dst[kItems];
#pragma unroll
    for (int it = 0; it < kItems; ++it) {
      const long long e = static_cast<long long>(it) * kBlock + threadIdx.x;
      const long long jj = e / sw, col = e % sw, j = j0 + jj;
      dst[it] = -1;
      if (jj < R && j < n) {
        val[it] = *reinterpret_cast<const V*>(base + idx[j] * rs + col * sizeof(V));
        dst[it] = j * rs + col * static_cast<long long>(sizeof(V));
      }
    }
    __syncthreads();  // every read of this chunk before any write of it
#pragma unroll
    for (int it = 0; it < kItems; ++it)
      if (dst[it] >= 0) *reinterpret_cast<V*>(base + dst[it]) = val[it];
  }
}

}  // namespace cmp
}  // namespace obc

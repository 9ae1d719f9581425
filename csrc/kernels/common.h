// Shared vocabulary of the torch-free kernels: host/device qualifiers, the
// element types the ops accept, and their conversion to float.
//
// Why our own 16-bit types: the same kernel source is compiled by g++ (CPU
// kernels, the SIMT emulation in tests/cpp) and by nvcc. Storage structs with
// bit-level conversions behave identically everywhere and are layout-compatible
// with at::Half / at::BFloat16 / __half / __nv_bfloat16 (one uint16_t), so the
// torch bindings pass data_ptr() through a reinterpret_cast.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__) || defined(OBC_SIMT_EMULATION)
#define OBC_HD __host__ __device__
#define OBC_DEVICE __device__
#define OBC_INLINE __forceinline__
#else
#define OBC_HD
#define OBC_DEVICE
#define OBC_INLINE inline
#endif

#if defined(__CUDA_ARCH__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace obc {

// Element type tags shared by params structs and dispatch.
enum class DType : int32_t { F32 = 0, F16 = 1, BF16 = 2, F64 = 3 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::F64: return "float64";
  }
  return "unknown";
}

struct half_t {
  uint16_t bits;
};
struct bf16_t {
  uint16_t bits;
};

// A float's bits and back (a memcpy on the host, an intrinsic on the GPU).
OBC_HD OBC_INLINE float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}
OBC_HD OBC_INLINE uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

// IEEE binary16 -> binary32, exact for every input (subnormals, inf, NaN).
OBC_HD OBC_INLINE float half_bits_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return bits_to_float(sign | 0x7f800000u | (mant << 13));
  if (exp == 0) {
    if (mant == 0) return bits_to_float(sign);
    // Subnormal: value = mant * 2^-24, exactly representable in float.
    const float mag = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return sign ? -mag : mag;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
#endif
}

OBC_HD OBC_INLINE float bf16_bits_to_float(uint16_t b) {
  return bits_to_float(static_cast<uint32_t>(b) << 16);
}

// bf16 bits of x rounded to nearest even (NaN stays a NaN).
OBC_HD OBC_INLINE uint32_t bf16_rn(float x) {
  const uint32_t u = float_to_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

// Elem<T>::load(x): an element in its accumulation type Elem<T>::acc (float
// for the 16/32-bit inputs, double for float64 inputs).
template <typename T>
struct Elem;
template <>
struct Elem<float> {
  using acc = float;
  OBC_HD static OBC_INLINE float load(float x) { return x; }
};
template <>
struct Elem<double> {
  using acc = double;
  OBC_HD static OBC_INLINE double load(double x) { return x; }
};
template <>
struct Elem<half_t> {
  using acc = float;
  OBC_HD static OBC_INLINE float load(half_t x) { return half_bits_to_float(x.bits); }
};
template <>
struct Elem<bf16_t> {
  using acc = float;
  OBC_HD static OBC_INLINE float load(bf16_t x) { return bf16_bits_to_float(x.bits); }
};

}  // namespace obc

// decode.cuh: the exact element and scale decodes and the output rounding, shared by every kernel
// of the library (one implementation of each).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace dq {

// E8M0 byte -> 2^(e - 127). Built from the float32 bit pattern: byte 0 is 2^-127, a subnormal
// that an exp2 instruction would flush to zero; byte 255 is NaN.
__device__ __forceinline__ float decode_e8m0(uint32_t e) {
  const uint32_t bits = e == 0 ? 0x00400000u : e == 255 ? 0x7FC00000u : e << 23;
  return __uint_as_float(bits);
}

// float8_e4m3fn byte -> float32 (exact; 0x7F and 0xFF are NaN).
__device__ __forceinline__ float decode_e4m3(uint32_t byte) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(byte), __NV_E4M3);
  return __half2float(__half(h));
}

// e2m1 code (0..15) -> float32. Codes 2..7 are normal numbers 2^(E - 1) * (1 + M / 2) with the
// 3-bit magnitude read as E (2 bits) and M (1 bit), which is the float32 pattern (code + 252) << 22.
__device__ __forceinline__ float decode_e2m1(uint32_t code) {
  const uint32_t magnitude = code & 7;
  const float value = magnitude < 2 ? 0.5f * magnitude : __uint_as_float((magnitude + 252) << 22);
  return (code & 8) ? -value : value;  // code 8 gives -0.0
}

template <typename Out>
__device__ __forceinline__ Out from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}

}  // namespace dq

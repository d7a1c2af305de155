// decode.cuh: the exact element and scale decodes and the output rounding, shared by every kernel
// of the library (one implementation of each).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <cstring>

#include "dq_kernels.h"
#include "scale_layout.cuh"

namespace dq {

// float32 <-> its bit pattern, on the host and the device (the quantizers in quantize.cuh are
// tested on the host against dq_kernels.formats).
__host__ __device__ __forceinline__ uint32_t bits_of_float(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
#endif
}

__host__ __device__ __forceinline__ float float_of_bits(uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// E8M0 byte -> 2^(e - 127). Built from the float32 bit pattern: byte 0 is 2^-127, a subnormal
// that an exp2 instruction would flush to zero; byte 255 is NaN.
__host__ __device__ __forceinline__ float decode_e8m0(uint32_t e) {
  const uint32_t bits = e == 0 ? 0x00400000u : e == 255 ? 0x7FC00000u : e << 23;
  return float_of_bits(bits);
}

// float8_e4m3fn byte -> float32 (exact; 0x7F and 0xFF are NaN).
__host__ __device__ __forceinline__ float decode_e4m3(uint32_t byte) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(byte), __NV_E4M3);
  return __half2float(__half(h));
}

// e2m1 code (0..15) -> float32. Codes 2..7 are normal numbers 2^(E - 1) * (1 + M / 2) with the
// 3-bit magnitude read as E (2 bits) and M (1 bit), which is the float32 pattern (code + 252) << 22.
__host__ __device__ __forceinline__ float decode_e2m1(uint32_t code) {
  const uint32_t magnitude = code & 7;
  const float value = magnitude < 2 ? 0.5f * magnitude : float_of_bits((magnitude + 252) << 22);
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

// Rounds 16 values to Out and writes them to dst (16-byte aligned) with 16-byte stores.
template <typename Out>
__device__ __forceinline__ void store_16_values(Out* dst, const float (&v)[16]) {
  struct alignas(16) Values {
    Out x[16];
  } values;
#pragma unroll
  for (int i = 0; i < 16; ++i) values.x[i] = from_float<Out>(v[i]);
  *reinterpret_cast<Values*>(dst) = values;
}

// Decodes chunk c (16 consecutive elements of a row) of canonical MXFP8 operands into out: q [M, K]
// e4m3 bytes (16-byte aligned), s the swizzled E8M0 bytes, out [M, K]; chunks_per_row = K / 16.
// Bit-identical to dq_kernels.formats.dequantize_mxfp8: exact decodes, a float32 product, one rounding.
template <typename Out>
__device__ __forceinline__ void dequantize_mxfp8_chunk(const uint8_t* __restrict__ q, const uint8_t* __restrict__ s,
                                                       Out* __restrict__ out, int64_t c, int64_t chunks_per_row,
                                                       int64_t scale_padded_cols) {
  const int64_t row = c / chunks_per_row;
  const int64_t col = (c - row * chunks_per_row) * 16;
  const float scale = decode_e8m0(s[swizzled_scale_offset(row, col / 32, scale_padded_cols)]);
  const uint4 packed = *reinterpret_cast<const uint4*>(q + c * 16);
  const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
  float v[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) v[i] = decode_e4m3((words[i / 4] >> (8 * (i % 4))) & 0xFF) * scale;
  store_16_values(out + c * 16, v);
}

// A GEMM's bias [N] in its own dtype (DQ_FLOAT32, DQ_BFLOAT16 or DQ_FLOAT16), read as float32: exact
// for all three, so the epilogue adds what the reference adds (the bias in float32).
struct Bias {
  const void* data;  // null: no bias
  int dtype;
  __device__ __forceinline__ float operator[](int64_t i) const {
    if (!data) return 0.f;
    if (dtype == DQ_BFLOAT16) return __bfloat162float(static_cast<const __nv_bfloat16*>(data)[i]);
    if (dtype == DQ_FLOAT16) return __half2float(static_cast<const __half*>(data)[i]);
    return static_cast<const float*>(data)[i];
  }
};

// Whether a bias pointer and dtype code are ones Bias reads (host-side argument check).
inline bool bias_dtype_ok(const void* data, int dtype) {
  return !data || dtype == DQ_FLOAT32 || dtype == DQ_BFLOAT16 || dtype == DQ_FLOAT16;
}

// ---- packed decodes for the MMA kernels (two or more elements per instruction) -------------------

// Two e4m3 bytes (the low and high byte of `pair`) -> f16x2, exact.
__device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint32_t pair) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(pair & 0xFFFF), __NV_E4M3);
  return uint32_t(h.x) | (uint32_t(h.y) << 16);
}

// 8 e2m1 codes (a 32-bit word, code i in bits 4i .. 4i + 3) -> 8 e4m3 bytes of value(code) / 64:
// `even` holds codes 0, 2, 4, 6 (bytes 0..3), `odd` codes 1, 3, 5, 7. A code c becomes the e4m3
// byte (c & 7) << 2 | (c & 8) << 4, which is exactly value(c) / 64 (e4m3's subnormals hold the
// 0.5 code).
__device__ __forceinline__ void e2m1x8_to_e4m3(uint32_t w, uint32_t& even, uint32_t& odd) {
  even = ((w << 2) & 0x1C1C1C1Cu) | ((w << 4) & 0x80808080u);
  odd = ((w >> 2) & 0x1C1C1C1Cu) | (w & 0x80808080u);
}

// f16x2 * f16x2 on the raw bits.
__device__ __forceinline__ uint32_t hmul2_bits(uint32_t x, uint32_t y) {
  const __half2 v = __hmul2(*reinterpret_cast<const __half2*>(&x), *reinterpret_cast<const __half2*>(&y));
  return *reinterpret_cast<const uint32_t*>(&v);
}

// 8 e2m1 codes (as for e2m1x8_to_e4m3) times their block scale -> 4 f16x2 pairs, exact: codes
// (0, 2), (4, 6), (1, 3), (5, 7). scale64 holds the block scale times 64 in both halves (at most
// 448 * 64, exact in f16), so each product is value(code) * scale, at most 6 significant bits.
__device__ __forceinline__ void decode_e2m1_word(uint32_t w, uint32_t scale64, uint32_t (&pairs)[4]) {
  uint32_t even, odd;
  e2m1x8_to_e4m3(w, even, odd);
  pairs[0] = hmul2_bits(e4m3x2_to_f16x2(even), scale64);
  pairs[1] = hmul2_bits(e4m3x2_to_f16x2(even >> 16), scale64);
  pairs[2] = hmul2_bits(e4m3x2_to_f16x2(odd), scale64);
  pairs[3] = hmul2_bits(e4m3x2_to_f16x2(odd >> 16), scale64);
}

// An e4m3 block scale byte -> f16x2 of (scale * 64, scale * 64); 0 for a block past K.
__device__ __forceinline__ uint32_t nvfp4_scale64(uint32_t byte, bool valid) {
  const __half scale(__nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(byte & 0xFF), __NV_E4M3));
  const __half2 s = __hmul2(__half2half2(scale), __float2half2_rn(64.f));
  return valid ? *reinterpret_cast<const uint32_t*>(&s) : 0u;
}

// f16x2 -> bf16x2 (exact for the decoded NVFP4 values, which have at most 6 significant bits).
__device__ __forceinline__ uint32_t f16x2_to_bf16x2(uint32_t pair) {
  const __nv_bfloat162 v = __float22bfloat162_rn(__half22float2(*reinterpret_cast<const __half2*>(&pair)));
  return *reinterpret_cast<const uint32_t*>(&v);
}

}  // namespace dq

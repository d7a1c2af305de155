// decode.cuh: the exact element and scale decodes and the output rounding, shared by every kernel
// of the library (one implementation of each).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <cstring>

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

template <typename Out>
__device__ __forceinline__ Out from_double(double v);
template <>
__device__ __forceinline__ float from_double<float>(double v) {
  return __double2float_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_double<__nv_bfloat16>(double v) {
  return __double2bfloat16(v);
}
template <>
__device__ __forceinline__ __half from_double<__half>(double v) {
  return __double2half(v);
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

// ---- the MXFP8 row form (dq_kernels.formats.mxfp8_row_form, /work/ROWFORM.md) ----------------------
//
// A row of MXFP8 values decoded to f16 against one reference exponent R per row: block b with E8M0
// byte s holds q * 2^(s - R), exact in f16 for s - R in [-15, 7]. "Considered" bytes are 3..254;
// R = max(7, largest considered byte) - 7; the row is flagged (kRowFlagged instead of R) if a byte is
// 255 (NaN) or a considered byte lies more than 15 below R. Blocks below 2^-15 in an unflagged row
// (bytes 0..2 only) decode to q * 0.

constexpr int kRowFlagged = -1;  // dq_kernels.formats.MXFP8_ROW_FLAGGED
constexpr int kFlaggedShift = -1024;  // row_form_shift of a flagged row: every multiplier is 0

// R and the flag of one row, gathered over its scale bytes (in any order, split among threads and
// merged). Bytes past the row's last block must be added as 0 (or not at all).
struct RowExponent {
  uint32_t top = 0;              // the largest byte (bytes 0..2 do not move R; 255 flags the row)
  uint32_t bottom = 0xFFFFFFFFu;  // the smallest considered byte minus 3: bytes 0..2 wrap above every considered one
  __device__ __forceinline__ void add(uint32_t byte) {
    top = max(top, byte);
    bottom = min(bottom, byte - 3u);
  }
  __device__ __forceinline__ void add_word(uint32_t word) {  // four bytes
#pragma unroll
    for (int i = 0; i < 4; ++i) add((word >> (8 * i)) & 0xFF);
  }
  __device__ __forceinline__ void merge(const RowExponent& other) {
    top = max(top, other.top);
    bottom = min(bottom, other.bottom);
  }
  // Merges over the `lanes` consecutive lanes (a power of two up to 32, aligned) that share the row.
  template <int kLanes>
  __device__ __forceinline__ void merge_lanes() {
#pragma unroll
    for (int i = 1; i < kLanes; i *= 2)
      merge(RowExponent{__shfl_xor_sync(0xFFFFFFFFu, top, i), __shfl_xor_sync(0xFFFFFFFFu, bottom, i)});
  }
  // R, or kRowFlagged.
  __device__ __forceinline__ int value() const {
    const int r = int(max(top, 7u)) - 7;
    const bool too_wide = bottom <= 251u && int(bottom) + 3 - r < -15;
    return top == 255 || too_wide ? kRowFlagged : r;
  }
};

// What a decode adds to a block's byte s to get the f16 exponent field of 2^(s - R + 1): 16 - R, or
// kFlaggedShift for a flagged row (R = kRowFlagged).
__device__ __forceinline__ int row_form_shift(int r) { return r == kRowFlagged ? kFlaggedShift : 16 - r; }

// The f16x2 multiplier 2^(s - R) of a block with E8M0 byte s (both halves); 0 where s - R < -15 or
// the row is flagged. Built as 2^(s - R + 1) from its exponent field and halved in f16, so that
// 2^-15 comes out as the subnormal 0x0200 without a special case (4 instructions).
__device__ __forceinline__ uint32_t row_form_multiplier(uint32_t s, int shift) {
  const uint32_t field = max(int(s) + shift, 0);  // at most 23 for the bytes of an unflagged row
  return hmul2_bits(field * 0x04000400u, 0x38003800u);  // field << 10 in both halves, times 0.5
}

// f16x2 -> bf16x2 (exact for the decoded NVFP4 values, which have at most 6 significant bits).
__device__ __forceinline__ uint32_t f16x2_to_bf16x2(uint32_t pair) {
  const __nv_bfloat162 v = __float22bfloat162_rn(__half22float2(*reinterpret_cast<const __half2*>(&pair)));
  return *reinterpret_cast<const uint32_t*>(&v);
}

}  // namespace dq

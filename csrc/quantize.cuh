// quantize.cuh: the quantizers of dq_kernels.formats, element by element, for the cast kernels
// (csrc/cast.cu) and any kernel that quantizes its own activation. One implementation of each step.
//
// Everything here is __host__ __device__ and bit-identical to formats.quantize_mxfp8 /
// quantize_nvfp4 (and so to torchao): python_tests/test_quantize_cuh.py builds
// these functions into a host library and compares them with formats on the CPU; the GPU tests
// compare the kernels. The arithmetic is the reference's, step by step, with float32 roundings where
// torch rounds; do not build with --use_fast_math (it flushes float32 subnormals, which the scales
// and the scaled values reach).
//
// Divisions by a constant (amax / 448, / 6, / 2688) follow torch on the device it runs on: on CUDA
// tensors torch multiplies by the float32 reciprocal of a Python-number divisor, on CPU tensors it
// divides. The kernels pass by_reciprocal = true (their results are compared with formats on CUDA);
// the host test passes false (formats on CPU). Divisions of two tensors are IEEE divisions on both.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cmath>
#include <cstdint>

#include "decode.cuh"

namespace dq {

constexpr float kE4m3Max = 448.f;
constexpr float kE4m3Tiny = 0.015625f;  // 2^-6, the smallest normal e4m3 value

__host__ __device__ __forceinline__ int min_int(int a, int b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int max_int(int a, int b) { return a > b ? a : b; }

// x / c as torch computes it for a Python-number divisor c (see the top of the file).
__host__ __device__ __forceinline__ float div_const(float x, float c, bool by_reciprocal) {
  return by_reciprocal ? x * (1.f / c) : x / c;
}

// |x| as float32 bits. Non-negative floats order like their bits, and a NaN's bits exceed inf's, so
// the max of these over a block (or a tensor) read back as a float is torch's amax(|x|): NaN if the
// block holds a NaN (its payload aside, which no step below looks at).
__host__ __device__ __forceinline__ uint32_t abs_bits(float x) { return bits_of_float(x) & 0x7FFFFFFFu; }

// Exact ceil(log2(d)) for finite float32 d >= 0 from its bits (formats._ceil_log2); d = 0 and
// subnormals below 2^-127 give -127 or less, which every caller clamps to -127.
__host__ __device__ __forceinline__ int ceil_log2(float d) {
  const uint32_t bits = bits_of_float(d);
  const int exponent = int((bits >> 23) & 0xFF);
  const uint32_t mantissa = bits & 0x7FFFFFu;
  if (exponent == 0) return mantissa > 0x400000u ? -126 : -127;  // d = mantissa * 2^-149
  return exponent - 127 + (mantissa != 0 ? 1 : 0);
}

// float32 -> float8_e4m3fn byte as formats does it, y.clamp(-448, 448).to(float8_e4m3fn): round to
// nearest even; finite values and infinities beyond 448 become +-448; NaN becomes 0x7F (torch writes
// 0xFF for a NaN with the sign bit set: NaN bytes are compared as NaN, formats.py). The saturating
// conversion (cvt.rn.satfinite on sm_89 and newer, CUDA's exact emulation elsewhere and on the host)
// is the clamp and the cast in one: values in (448, 464) round to 448 either way.
__host__ __device__ __forceinline__ uint32_t encode_e4m3x2(float lo, float hi) {  // lo in the low byte
  return __nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3);
}
__host__ __device__ __forceinline__ uint32_t encode_e4m3(float y) {
  return __nv_cvt_float_to_fp8(y, __NV_SATFINITE, __NV_E4M3);
}

// ---- MXFP8 -----------------------------------------------------------------------------------

// The E8M0 scale of a 32-element block and what its elements are multiplied by before encode_e4m3.
struct Mxfp8BlockScale {
  uint32_t byte;     // E8M0: the block decodes as q * 2^(byte - 127); 255 is NaN
  float multiplier;  // q = encode_e4m3(x * multiplier)
};

// formats.quantize_mxfp8's scale of a block whose amax(|x|) is `amax` (NaN if it holds a NaN).
//  FLOOR: byte = clamp(floor(log2(amax)) - 8, -127, 128) + 127 read off the exponent field (a zero
//    block: 0; inf: 247; NaN: 255). formats divides by 2^(byte - 127), at least 2^-126; that equals
//    the product with the exact reciprocal 2^(127 - max(byte, 1)) (a normal float32, byte <= 247),
//    both being the one rounding of the same real number. A NaN block divides by inf, which is the
//    product with 0 (finite -> signed zero, inf and NaN -> NaN).
//  RCEIL: byte = clamp(ceil_log2(amax / 448), -127, 127) + 127 (a zero block: 0; inf: 254; NaN:
//    255); multiplier 2^(127 - byte) (byte 254: 2^-127, a float32 subnormal), 1 for byte 0 (the
//    values stay as they are), and the NaN descale for a NaN block (every element NaN).
__host__ __device__ __forceinline__ Mxfp8BlockScale mxfp8_block_scale(float amax, int scaling, bool by_reciprocal) {
  if (scaling == DQ_SCALING_FLOOR) {
    const int unbiased = int((bits_of_float(amax) >> 23) & 0xFF) - 127 - 8;
    const int byte = amax != amax ? 255 : min_int(max_int(unbiased, -127), 128) + 127;
    const float multiplier = byte == 255 ? 0.f : float_of_bits(uint32_t(254 - max_int(byte, 1)) << 23);
    return {uint32_t(byte), multiplier};
  }
  const float descale = div_const(amax, kE4m3Max, by_reciprocal);
  int byte = min_int(max_int(ceil_log2(descale), -127), 127) + 127;
  if (descale == INFINITY) byte = 254;
  if (descale != descale) byte = 255;
  const float multiplier = byte == 0 ? 1.f : byte == 255 ? descale : decode_e8m0(uint32_t(254 - byte));
  return {uint32_t(byte), multiplier};
}

// Two e4m3 bytes (low and high byte of `pair`) with E8M0 scale byte `byte` -> their exact bf16
// decode as bf16x2 bits (formats.dequantize_mxfp8 to bfloat16: q * 2^(byte - 127) in float32,
// rounded once): MXFP8's quantize-dequantize.
__host__ __device__ __forceinline__ uint32_t decode_mxfp8_bf16x2(uint32_t pair, uint32_t byte) {
  const float scale = decode_e8m0(byte);
  const __nv_bfloat16_raw lo = __float2bfloat16_rn(decode_e4m3(pair & 0xFF) * scale);
  const __nv_bfloat16_raw hi = __float2bfloat16_rn(decode_e4m3((pair >> 8) & 0xFF) * scale);
  return uint32_t(lo.x) | (uint32_t(hi.x) << 16);
}

// ---- NVFP4 -----------------------------------------------------------------------------------

// formats.nvfp4_tensor_scale from amax(|x|) over the tensor: amax / (448 * 6).
__host__ __device__ __forceinline__ float nvfp4_tensor_scale(float amax, bool by_reciprocal) {
  return div_const(amax, 2688.f, by_reciprocal);
}

// The e4m3 scale of a 16-element block and what its elements are multiplied by before encode_e2m1.
struct Nvfp4BlockScale {
  uint32_t byte;     // float8_e4m3fn bits, positive or NaN (0x7F)
  float reciprocal;  // code = encode_e2m1(x * reciprocal)
};

// formats.quantize_nvfp4's scale of a block whose amax(|x|) is `amax`, for a tensor scale ts:
// s = e4m3(clamp((amax / 6) / ts, 2^-6, 448)) (NaN kept; ts = 0, an all-zero tensor, divides by 1),
// and reciprocal = (1 / ts) / s, each step one float32 rounding.
__host__ __device__ __forceinline__ Nvfp4BlockScale nvfp4_block_scale(float amax, float tensor_scale, bool by_reciprocal) {
  const float divisor = tensor_scale == 0.f ? 1.f : tensor_scale;
  float s = div_const(amax, 6.f, by_reciprocal) / divisor;
  s = s < kE4m3Tiny ? kE4m3Tiny : s;  // comparisons with NaN are false: NaN stays (torch.clamp)
  s = s > kE4m3Max ? kE4m3Max : s;
  const uint32_t byte = encode_e4m3(s);
  return {byte, (1.f / divisor) / decode_e4m3(byte)};
}

// float32 y -> e2m1 code (0..15), formats._encode_e2m1 after formats' clamp to [-6, 6]: round to
// nearest even on the magnitude (formats' thresholds: > at 0.25, 1.25, 2.5, 5; >= at 0.75, 1.75,
// 3.5), sign bit 3. In few instructions, as the NVFP4 cast is near ALU-bound: the e2m1 grid has step
// 0.5 below 2 (codes 0..4), 1 up to 4 (codes 4..6) and 2 up to 6 (codes 6, 7); a + magic, where
// float32's spacing at the power of two magic is that step, rounds a to the grid once, ties to an
// even number of steps (an even e2m1 mantissa), and its bits less magic's count the steps. NaN gives
// 7 or 15 (its sign): codes in a NaN block are unspecified (formats.py).
__host__ __device__ __forceinline__ uint32_t encode_e2m1(float y) {
  const float a = fminf(fabsf(y), 6.f);
  const uint32_t exponent = bits_of_float(a) >> 23;
  const uint32_t binade = exponent > 127 ? exponent : 127;      // 127: a < 2, 128: [2, 4), 129: [4, 6]
  const float magic = float_of_bits((binade + 22) << 23);         // 2^(binade - 105): spacing 2^(binade - 128)
  const uint32_t steps = bits_of_float(a + magic) - bits_of_float(magic);
  return (steps + 2 * (binade - 127)) | ((bits_of_float(y) >> 28) & 8);
}

// Two e2m1 codes with e4m3 block scale byte `byte` -> their values code * scale as f16x2 bits (the low
// code in the low half), without the tensor scale: exact (at most 6 significant bits, |v| <= 2688),
// formats.dequantize_nvfp4 to float16 with a tensor scale of 1, which is how the sm_90a mixed-input
// GEMM takes an NVFP4 activation.
__host__ __device__ __forceinline__ uint32_t decode_nvfp4_f16x2(uint32_t code_lo, uint32_t code_hi, uint32_t byte) {
  const float scale = decode_e4m3(byte);
  const __half2_raw raw = __floats2half2_rn(decode_e2m1(code_lo) * scale, decode_e2m1(code_hi) * scale);
  return uint32_t(raw.x) | (uint32_t(raw.y) << 16);
}

}  // namespace dq

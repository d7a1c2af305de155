// Host harness for csrc/quantize.cuh: the device quantizers run on the CPU over whole tensors, so
// python_tests/test_quantize_cuh.py can compare them with dq_kernels.formats bit for bit. Built into
// a throwaway shared library by that test (nvcc, host code only); not part of the package.
//
// Layouts: x float32 [rows, k] row-major; scales unswizzled [rows, k / block] (the test swizzles
// or unswizzles with formats); q as formats stores it.

#include <cstdint>

#include "quantize.cuh"

extern "C" {

void h_encode_e4m3(const float* y, int64_t n, uint8_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = uint8_t(dq::encode_e4m3(y[i]));
}

void h_encode_e4m3x2(const float* y, int64_t pairs, uint8_t* out) {  // y[2i] in out[2i]
  for (int64_t i = 0; i < pairs; ++i) {
    const uint32_t two = dq::encode_e4m3x2(y[2 * i], y[2 * i + 1]);
    out[2 * i] = uint8_t(two & 0xFF);
    out[2 * i + 1] = uint8_t(two >> 8);
  }
}

void h_encode_e2m1(const float* y, int64_t n, uint8_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = uint8_t(dq::encode_e2m1(y[i]));
}

// MXFP8: q [rows, k] e4m3 bytes, e [rows, k / 32] E8M0 bytes, as cast.cu computes them per block.
void h_quantize_mxfp8(const float* x, int64_t rows, int64_t k, int scaling, int by_reciprocal, uint8_t* q,
                      uint8_t* e) {
  for (int64_t b = 0; b < rows * (k / 32); ++b) {
    const float* xb = x + b * 32;
    uint32_t amax = 0;
    for (int i = 0; i < 32; ++i) amax = amax > dq::abs_bits(xb[i]) ? amax : dq::abs_bits(xb[i]);
    const dq::Mxfp8BlockScale scale = dq::mxfp8_block_scale(dq::float_of_bits(amax), scaling, by_reciprocal != 0);
    e[b] = uint8_t(scale.byte);
    for (int i = 0; i < 32; i += 2) {
      const uint32_t two = dq::encode_e4m3x2(xb[i] * scale.multiplier, xb[i + 1] * scale.multiplier);
      q[b * 32 + i] = uint8_t(two & 0xFF);
      q[b * 32 + i + 1] = uint8_t(two >> 8);
    }
  }
}

float h_nvfp4_tensor_scale(float amax, int by_reciprocal) { return dq::nvfp4_tensor_scale(amax, by_reciprocal != 0); }

// NVFP4 with tensor scale ts: q [rows, k / 2] (element 2i in the low nibble), s [rows, k / 16].
void h_quantize_nvfp4(const float* x, int64_t rows, int64_t k, float ts, int by_reciprocal, uint8_t* q, uint8_t* s) {
  for (int64_t b = 0; b < rows * (k / 16); ++b) {
    const float* xb = x + b * 16;
    uint32_t amax = 0;
    for (int i = 0; i < 16; ++i) amax = amax > dq::abs_bits(xb[i]) ? amax : dq::abs_bits(xb[i]);
    const dq::Nvfp4BlockScale scale = dq::nvfp4_block_scale(dq::float_of_bits(amax), ts, by_reciprocal != 0);
    s[b] = uint8_t(scale.byte);
    for (int i = 0; i < 16; i += 2) {
      q[b * 8 + i / 2] = uint8_t(dq::encode_e2m1(xb[i] * scale.reciprocal) |
                                 (dq::encode_e2m1(xb[i + 1] * scale.reciprocal) << 4));
    }
  }
}

// The f16 values [rows, k] of NVFP4 q [rows, k / 2] and s [rows, k / 16] without the tensor scale.
void h_decode_nvfp4_f16(const uint8_t* q, const uint8_t* s, int64_t rows, int64_t k, uint16_t* values) {
  for (int64_t i = 0; i < rows * k; i += 2) {
    const uint32_t two = dq::decode_nvfp4_f16x2(q[i / 2] & 0xF, q[i / 2] >> 4, s[i / 16]);
    values[i] = uint16_t(two & 0xFFFF);
    values[i + 1] = uint16_t(two >> 16);
  }
}

}  // extern "C"

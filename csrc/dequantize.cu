// dequantize.cu: MXFP8 and NVFP4 -> float32 / bfloat16 / float16, for any GPU arch.
//
// Memory-bound elementwise kernels. The [M, K] tensor is cut into chunks of 16 consecutive
// elements (row-major, so a chunk never crosses a row: K is a multiple of 16). Each thread handles
// one chunk per step of a grid-stride loop: one vector load of q (16 bytes of MXFP8 or 8 bytes of
// NVFP4), one scale byte (a chunk lies inside one scale block in both formats), 16 values, and one
// 32- or 64-byte vector store. Consecutive threads take consecutive chunks, so loads and stores
// are coalesced.
//
// The arithmetic must match dq_kernels.formats bit for bit: exact decodes, float32 products, one
// rounding to the output dtype. Do not build with --use_fast_math: it flushes subnormals (the
// E8M0 scale 2^-127 is one) to zero.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "dq_kernels.h"
#include "decode.cuh"
#include "scale_layout.cuh"

namespace {

using dq::decode_e2m1;
using dq::decode_e4m3;

constexpr int kChunk = 16;  // elements per thread per step
constexpr int kThreadsPerBlock = 256;
constexpr int64_t kMaxBlocks = 65536;  // enough to fill any GPU; larger tensors loop

// q: [M, K] e4m3 bytes; s: swizzled E8M0 bytes; out: [M, K]. chunks_per_row = K / 16.
template <typename Out>
__global__ void __launch_bounds__(kThreadsPerBlock)
    dequantize_mxfp8_kernel(const uint8_t* __restrict__ q, const uint8_t* __restrict__ s, Out* __restrict__ out,
                            int64_t chunks_per_row, int64_t num_chunks, int64_t scale_padded_cols) {
  for (int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; c < num_chunks;
       c += int64_t{gridDim.x} * blockDim.x) {
    dq::dequantize_mxfp8_chunk(q, s, out, c, chunks_per_row, scale_padded_cols);
  }
}

// q: [M, K / 2] packed e2m1 bytes; s: swizzled e4m3 bytes; tensor_scale: one float32 or null (1);
// out: [M, K]. chunks_per_row = K / 16, so chunk c is exactly the scale block (row, c % chunks_per_row).
template <typename Out>
__global__ void __launch_bounds__(kThreadsPerBlock)
    dequantize_nvfp4_kernel(const uint8_t* __restrict__ q, const uint8_t* __restrict__ s,
                            const float* __restrict__ tensor_scale, Out* __restrict__ out, int64_t chunks_per_row,
                            int64_t num_chunks, int64_t scale_padded_cols) {
  const float global_scale = tensor_scale ? *tensor_scale : 1.f;
  for (int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; c < num_chunks;
       c += int64_t{gridDim.x} * blockDim.x) {
    const int64_t row = c / chunks_per_row;
    const int64_t block = c - row * chunks_per_row;
    const float scale = decode_e4m3(s[dq::swizzled_scale_offset(row, block, scale_padded_cols)]);

    const uint2 packed = *reinterpret_cast<const uint2*>(q + c * (kChunk / 2));
    const uint32_t words[2] = {packed.x, packed.y};
    float v[kChunk];
#pragma unroll
    for (int i = 0; i < kChunk; ++i) {
      const uint32_t code = (words[i / 8] >> (4 * (i % 8))) & 0xF;  // element 2j in the low nibble of byte j
      v[i] = (decode_e2m1(code) * scale) * global_scale;
    }
    dq::store_16_values(out + c * kChunk, v);
  }
}

bool aligned(const void* p, uintptr_t alignment) { return reinterpret_cast<uintptr_t>(p) % alignment == 0; }

// Shared argument checks; block_size is 32 (MXFP8) or 16 (NVFP4).
int check_args(const void* q, const void* s, const void* out, int64_t M, int64_t K, int64_t block_size,
               int out_dtype, uintptr_t q_alignment) {
  if (q == nullptr || s == nullptr || out == nullptr) return DQ_ERR_NULL_POINTER;
  if (M < 1 || K < 1 || K % block_size != 0 || M > INT64_MAX / K) return DQ_ERR_BAD_SHAPE;
  if (out_dtype != DQ_FLOAT32 && out_dtype != DQ_BFLOAT16 && out_dtype != DQ_FLOAT16) return DQ_ERR_BAD_DTYPE;
  if (!aligned(q, q_alignment) || !aligned(out, 16)) return DQ_ERR_MISALIGNED;
  return DQ_OK;
}

unsigned int num_blocks(int64_t num_chunks) {
  const int64_t blocks = (num_chunks + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<unsigned int>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

}  // namespace

extern "C" int dq_dequantize_mxfp8(const uint8_t* q, const uint8_t* s, void* out, int64_t M, int64_t K,
                                   int out_dtype, void* stream) {
  if (int err = check_args(q, s, out, M, K, 32, out_dtype, 16)) return err;
  const int64_t chunks_per_row = K / kChunk;
  const int64_t num_chunks = M * chunks_per_row;
  const int64_t scale_padded_cols = dq::swizzled_padded_cols(K / 32);
  const dim3 grid(num_blocks(num_chunks));
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (out_dtype) {
    case DQ_FLOAT32:
      dequantize_mxfp8_kernel<<<grid, kThreadsPerBlock, 0, st>>>(q, s, static_cast<float*>(out), chunks_per_row,
                                                                  num_chunks, scale_padded_cols);
      break;
    case DQ_BFLOAT16:
      dequantize_mxfp8_kernel<<<grid, kThreadsPerBlock, 0, st>>>(q, s, static_cast<__nv_bfloat16*>(out),
                                                                  chunks_per_row, num_chunks, scale_padded_cols);
      break;
    case DQ_FLOAT16:
      dequantize_mxfp8_kernel<<<grid, kThreadsPerBlock, 0, st>>>(q, s, static_cast<__half*>(out), chunks_per_row,
                                                                  num_chunks, scale_padded_cols);
      break;
  }
  return cudaGetLastError();
}

extern "C" int dq_dequantize_nvfp4(const uint8_t* q, const uint8_t* s, const float* tensor_scale, void* out,
                                   int64_t M, int64_t K, int out_dtype, void* stream) {
  if (int err = check_args(q, s, out, M, K, 16, out_dtype, 8)) return err;
  const int64_t chunks_per_row = K / kChunk;
  const int64_t num_chunks = M * chunks_per_row;
  const int64_t scale_padded_cols = dq::swizzled_padded_cols(K / 16);
  const dim3 grid(num_blocks(num_chunks));
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (out_dtype) {
    case DQ_FLOAT32:
      dequantize_nvfp4_kernel<<<grid, kThreadsPerBlock, 0, st>>>(q, s, tensor_scale, static_cast<float*>(out),
                                                                  chunks_per_row, num_chunks, scale_padded_cols);
      break;
    case DQ_BFLOAT16:
      dequantize_nvfp4_kernel<<<grid, kThreadsPerBlock, 0, st>>>(
          q, s, tensor_scale, static_cast<__nv_bfloat16*>(out), chunks_per_row, num_chunks, scale_padded_cols);
      break;
    case DQ_FLOAT16:
      dequantize_nvfp4_kernel<<<grid, kThreadsPerBlock, 0, st>>>(q, s, tensor_scale, static_cast<__half*>(out),
                                                                  chunks_per_row, num_chunks, scale_padded_cols);
      break;
  }
  return cudaGetLastError();
}

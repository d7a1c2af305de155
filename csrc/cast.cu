// cast.cu: activation casts, x [M, K] (bf16, f16 or f32) -> MXFP8 / NVFP4, for any GPU arch.
//
// What each entry point writes is in dq_kernels.h; the arithmetic is quantize.cuh's, bit-identical
// to dq_kernels.formats on CUDA tensors. Memory-bound kernels: one read of x and one write of the
// outputs (NVFP4 with a dynamic tensor scale reads x twice: an amax pass first, or for a small x
// every CTA reads all of it).
//
// The dynamic tensor scale without zeroed memory or atomics: the amax pass (a 1-D grid of a few CTAs
// per SM, at most kAmaxMaxCtas, each striding over its part of x) writes one partial maximum per
// CTA to the scratch, and every CTA of the cast reduces those partials (a few hundred words, from L2)
// before it uses the tensor scale. max is exact, so the amax is the same however x is split. For a
// small x (kSelfAmaxElements) there is no amax pass: every CTA of the cast reads all of x first.
//
// Work split. A thread takes "chunks" of 16 consecutive elements of a row (two 16-byte loads for a
// 16-bit input, four for float32): an NVFP4 block, or half an MXFP8 block, whose two halves sit in
// neighbouring lanes and meet through one shuffle. CTAs of 256 threads as a 2-D block of `tx`
// chunks along a row (a power of two up to 64) by 256 / tx rows, one chunk per thread, so short
// rows (K = 32) still fill warps. The grid of a cast to canonical operands covers the padded rows of
// the swizzled scales too: a padding row is a zero block, whose scale byte the padding holds (0),
// and the thread of a row's first chunk writes the row's padding columns.
//
// Do not build with --use_fast_math: it flushes float32 subnormals (scales and scaled values).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "dependent_launch.cuh"
#include "device_info.h"
#include "dq_kernels.h"
#include "quantize.cuh"
#include "scale_layout.cuh"

namespace {

constexpr int kChunk = 16;    // elements per chunk
constexpr int kThreads = 256;  // threads per CTA
constexpr int kMaxChunksAlongRow = 64;
constexpr int kAmaxMaxCtas = DQ_NVFP4_CAST_SCRATCH_BYTES / sizeof(uint32_t);  // one partial amax each
// The largest x (elements) whose NVFP4 dynamic tensor scale every CTA of the cast computes itself,
// reading all of x (32 KB of bf16, from L2) instead of waiting for an amax pass. On the H100 that
// won for a Linear of 1 x 3072 x 18432 and lost at 16 x 3072 x 18432 (docs/skinny-kernels.md).
constexpr int64_t kSelfAmaxElements = 16384;

// 16 consecutive elements of x, loaded with 16-byte vector loads (16-byte aligned), and their
// float32 values (exact for every input dtype).
template <typename In>
struct Chunk {
  static constexpr int kVectors = sizeof(In);  // 16 elements of sizeof(In) bytes in 16-byte vectors
  uint4 raw[kVectors];

  __device__ __forceinline__ void load(const In* p) {
    const uint4* v = reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int i = 0; i < kVectors; ++i) raw[i] = v[i];
  }

  __device__ __forceinline__ void values(float (&v)[kChunk]) const {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(raw);
#pragma unroll
    for (int i = 0; i < kChunk / 2; ++i) {
      if constexpr (sizeof(In) == 4) {
        v[2 * i] = __uint_as_float(w[2 * i]);
        v[2 * i + 1] = __uint_as_float(w[2 * i + 1]);
      } else if constexpr (std::is_same_v<In, __nv_bfloat16>) {
        v[2 * i] = __uint_as_float(w[i] << 16);
        v[2 * i + 1] = __uint_as_float(w[i] & 0xFFFF0000u);
      } else {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
        v[2 * i] = f.x;
        v[2 * i + 1] = f.y;
      }
    }
  }
};

// max |v| over the chunk as float32 bits (dq::abs_bits: NaN wins).
__device__ __forceinline__ uint32_t chunk_amax_bits(const float (&v)[kChunk]) {
  uint32_t amax = 0;
#pragma unroll
  for (int i = 0; i < kChunk; ++i) amax = max(amax, dq::abs_bits(v[i]));
  return amax;
}

// max |x| over chunk `chunk` of row `row` of x as float32 bits.
template <typename In>
__device__ __forceinline__ uint32_t chunk_amax_at(const In* x, int64_t x_stride, int64_t row, int64_t chunk) {
  Chunk<In> c;
  c.load(x + row * x_stride + chunk * kChunk);
  float v[kChunk];
  c.values(v);
  return chunk_amax_bits(v);
}

// The max of every thread's `value` over the CTA of kThreads threads, returned to every thread. Every
// thread calls it, at most once per kernel (its shared array is not guarded for reuse).
__device__ __forceinline__ uint32_t cta_max(uint32_t value) {
  __shared__ uint32_t warp_max[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) value = max(value, __shfl_xor_sync(0xFFFFFFFFu, value, offset));
  const int thread = threadIdx.y * blockDim.x + threadIdx.x;
  if (thread % 32 == 0) warp_max[thread / 32] = value;
  __syncthreads();
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) value = max(value, warp_max[w]);
  return value;
}

// The chunk's 16 e4m3 bytes for an MXFP8 block scale, as four words (element 0 in the low byte).
__device__ __forceinline__ void encode_mxfp8_chunk(const float (&v)[kChunk], float multiplier, uint32_t (&q)[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    q[i] = dq::encode_e4m3x2(v[4 * i] * multiplier, v[4 * i + 1] * multiplier) |
           (dq::encode_e4m3x2(v[4 * i + 2] * multiplier, v[4 * i + 3] * multiplier) << 16);
  }
}

__device__ __forceinline__ void store_32_bytes(void* dst, const uint32_t (&w)[8]) {
  uint4* d = reinterpret_cast<uint4*>(dst);
  d[0] = make_uint4(w[0], w[1], w[2], w[3]);
  d[1] = make_uint4(w[4], w[5], w[6], w[7]);
}

// The thread's (row, chunk) in the 2-D CTA layout.
struct Place {
  int64_t row, chunk;
  __device__ __forceinline__ Place() : Place(blockIdx.x, blockIdx.y) {}
  // The place in CTA (bx, by) of the 2-D grid, for a kernel that runs the cast on part of a 1-D grid.
  __device__ __forceinline__ Place(unsigned bx, unsigned by)
      : row(int64_t(bx) * blockDim.y + threadIdx.y), chunk(int64_t(by) * blockDim.x + threadIdx.x) {}
};

// Zero scale bytes of the row's padding columns (scale_cols .. padded_cols - 1), by the row's first chunk.
__device__ __forceinline__ void zero_padding_columns(uint8_t* s, const Place& at, int64_t scale_cols, int64_t padded_cols) {
  if (at.chunk != 0) return;
  for (int64_t col = scale_cols; col < padded_cols; ++col) s[dq::swizzled_scale_offset(at.row, col, padded_cols)] = 0;
}

// MXFP8 element cast. Canonical (kDecoded false): q [M, K] e4m3 and s swizzled, grid over the padded
// rows. kDecoded: out [M, K] bf16, the values q and s stand for, grid over the M rows.
template <typename In, bool kDecoded>
__device__ __forceinline__ void mxfp8_cast_chunk(const Place& at, const In* __restrict__ x, int64_t x_stride,
                                                 uint8_t* __restrict__ q, uint8_t* __restrict__ s,
                                                 uint32_t* __restrict__ out, int64_t M, int64_t K, int64_t grid_rows,
                                                 int scaling) {
  const int64_t chunks_per_row = K / kChunk;
  const bool in_row = at.chunk < chunks_per_row;
  const bool valid = in_row && at.row < M;
  float v[kChunk] = {};
  if (valid) {
    Chunk<In> c;
    c.load(x + at.row * x_stride + at.chunk * kChunk);
    c.values(v);
  }
  uint32_t amax = chunk_amax_bits(v);
  amax = max(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, 1));  // the block's other half
  const dq::Mxfp8BlockScale scale = dq::mxfp8_block_scale(__uint_as_float(amax), scaling, true);
  uint32_t words[4];
  encode_mxfp8_chunk(v, scale.multiplier, words);
  const int64_t element = at.row * K + at.chunk * kChunk;
  if constexpr (kDecoded) {
    if (!valid) return;
    uint32_t values[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) values[i] = dq::decode_mxfp8_bf16x2(words[i / 2] >> (16 * (i % 2)), scale.byte);
    store_32_bytes(out + element / 2, values);
  } else {
    if (at.row >= grid_rows) return;
    if (valid) *reinterpret_cast<uint4*>(q + element) = make_uint4(words[0], words[1], words[2], words[3]);
    const int64_t scale_cols = K / 32, padded_cols = dq::swizzled_padded_cols(scale_cols);
    if (in_row && at.chunk % 2 == 0) s[dq::swizzled_scale_offset(at.row, at.chunk / 2, padded_cols)] = uint8_t(scale.byte);
    zero_padding_columns(s, at, scale_cols, padded_cols);
  }
}

template <typename In, bool kDecoded>
__global__ void __launch_bounds__(kThreads)
    mxfp8_cast_kernel(const In* __restrict__ x, int64_t x_stride, uint8_t* __restrict__ q, uint8_t* __restrict__ s,
                      uint32_t* __restrict__ out, int64_t M, int64_t K, int64_t grid_rows, int scaling) {
  dq::allow_dependents();
  mxfp8_cast_chunk<In, kDecoded>(Place(), x, x_stride, q, s, out, M, K, grid_rows, scaling);
}

// The operands of an MXFP8 Linear as a dense bfloat16 GEMM, in one launch (dq_decoded_mxfp8_linear):
// CTAs [0, cast_ctas) are the decoded cast of x into x_out [M, K] (mxfp8_cast_kernel<In, true> with
// cast_grid_x CTAs along the rows), the others decode the weight (b_q, b_s) [N, K] into w_out [N, K]
// as dequantize.cu's kernel does, striding over its 16-element chunks.
template <typename In>
__global__ void __launch_bounds__(kThreads)
    mxfp8_linear_operands_kernel(const In* __restrict__ x, int64_t x_stride, uint32_t* __restrict__ x_out, int64_t M,
                                 int64_t K, int scaling, unsigned cast_grid_x, unsigned cast_ctas,
                                 const uint8_t* __restrict__ b_q, const uint8_t* __restrict__ b_s,
                                 __nv_bfloat16* __restrict__ w_out, int64_t N) {
  if (blockIdx.x < cast_ctas) {
    const Place at(blockIdx.x % cast_grid_x, blockIdx.x / cast_grid_x);
    mxfp8_cast_chunk<In, true>(at, x, x_stride, nullptr, nullptr, x_out, M, K, M, scaling);
    return;
  }
  const int64_t chunks_per_row = K / kChunk, num_chunks = N * chunks_per_row;
  const int64_t scale_padded_cols = dq::swizzled_padded_cols(K / 32);
  const int64_t stride = int64_t{gridDim.x - cast_ctas} * kThreads;
  for (int64_t c = int64_t{blockIdx.x - cast_ctas} * kThreads + threadIdx.y * blockDim.x + threadIdx.x;
       c < num_chunks; c += stride) {
    dq::dequantize_mxfp8_chunk(b_q, b_s, w_out, c, chunks_per_row, scale_padded_cols);
  }
}

// NVFP4 element cast with the tensor scale *tensor_scale, or (kDynamic) amax / 2688, the amax the
// max of amax_partials[0 .. partial_count - 1] (float32 bits, amax_kernel's), or with partial_count 0
// the max over x, which each CTA then reads whole; thread 0 writes the
// tensor scale used to tensor_scale_out. Canonical (kDecoded false): q [M, K / 2] and s swizzled, grid
// over the padded rows. kDecoded: out [M, K] f16 (e2m1 x block scale), grid over M.
template <typename In, bool kDecoded, bool kDynamic>
__global__ void __launch_bounds__(kThreads)
    nvfp4_cast_kernel(const In* __restrict__ x, int64_t x_stride, const float* __restrict__ tensor_scale,
                      const uint32_t* __restrict__ amax_partials, int partial_count,
                      float* __restrict__ tensor_scale_out, uint8_t* __restrict__ q, uint8_t* __restrict__ s,
                      uint32_t* __restrict__ out, int64_t M, int64_t K, int64_t grid_rows) {
  dq::allow_dependents();
  const Place at;
  const int64_t chunks_per_row = K / kChunk;  // a chunk is a block
  const bool in_row = at.chunk < chunks_per_row;
  const bool valid = in_row && at.row < M;
  Chunk<In> c;
  if (valid) c.load(x + at.row * x_stride + at.chunk * kChunk);  // in flight while the partials are reduced
  float ts;
  if constexpr (kDynamic) {
    const int thread = threadIdx.y * blockDim.x + threadIdx.x;
    uint32_t amax = 0;
    if (partial_count > 0) {
      dq::wait_for_prior_grids();  // launched as the amax pass's dependent: its partials are ready now
      for (int i = thread; i < partial_count; i += kThreads) amax = max(amax, amax_partials[i]);
    } else {  // a small x (kSelfAmaxElements): the CTA finds the amax itself, with no amax pass
      for (int64_t i = thread; i < M * chunks_per_row; i += kThreads)
        amax = max(amax, chunk_amax_at(x, x_stride, i / chunks_per_row, i % chunks_per_row));
    }
    ts = dq::nvfp4_tensor_scale(__uint_as_float(cta_max(amax)), true);  // every thread, before any returns
  } else {
    ts = *tensor_scale;
  }
  if ((blockIdx.x | blockIdx.y | threadIdx.x | threadIdx.y) == 0) *tensor_scale_out = ts;
  if (!(kDecoded ? valid : in_row && at.row < grid_rows)) return;
  float v[kChunk] = {};
  if (valid) c.values(v);
  const dq::Nvfp4BlockScale scale = dq::nvfp4_block_scale(__uint_as_float(chunk_amax_bits(v)), ts, true);
  uint32_t codes[kChunk];
#pragma unroll
  for (int i = 0; i < kChunk; ++i) codes[i] = dq::encode_e2m1(v[i] * scale.reciprocal);
  const int64_t element = at.row * K + at.chunk * kChunk;
  if constexpr (kDecoded) {
    uint32_t values[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) values[i] = dq::decode_nvfp4_f16x2(codes[2 * i], codes[2 * i + 1], scale.byte);
    store_32_bytes(out + element / 2, values);
  } else {
    if (valid) {
      uint32_t packed[2] = {0, 0};
#pragma unroll
      for (int i = 0; i < kChunk; ++i) packed[i / 8] |= codes[i] << (4 * (i % 8));  // element 2j: low nibble of byte j
      *reinterpret_cast<uint2*>(q + element / 2) = make_uint2(packed[0], packed[1]);
    }
    const int64_t padded_cols = dq::swizzled_padded_cols(chunks_per_row);
    // a padding row holds zero bytes, not a zero block's scale (2^-6)
    s[dq::swizzled_scale_offset(at.row, at.chunk, padded_cols)] = valid ? uint8_t(scale.byte) : 0;
    zero_padding_columns(s, at, chunks_per_row, padded_cols);
  }
}

// partials[blockIdx.x] <- max of dq::abs_bits over the CTA's part of x [M, K] (0 for none), with a
// 1-D grid of CTAs of blockDim.x chunks by blockDim.y rows. x's columns are cut into tiles of
// blockDim.x chunks; with col_stride = gridDim.x / row_groups, CTA b takes the column tiles b %
// col_stride, + col_stride, ..., and in each the rows (b / col_stride) * blockDim.y + threadIdx.y,
// + row_groups * blockDim.y, .... The host makes gridDim.x either the column tiles times row_groups
// (one column tile per CTA), or at most the column tiles with row_groups 1 (whole columns per CTA).
template <typename In>
__global__ void __launch_bounds__(kThreads)
    amax_kernel(const In* __restrict__ x, int64_t x_stride, uint32_t* __restrict__ partials, int64_t M, int64_t K,
                int row_groups) {
  dq::allow_dependents();
  const int col_stride = int(gridDim.x) / row_groups;
  const int64_t chunks_per_row = K / kChunk;
  uint32_t amax = 0;
  for (int64_t chunk = int64_t(blockIdx.x % col_stride) * blockDim.x + threadIdx.x; chunk < chunks_per_row;
       chunk += int64_t(col_stride) * blockDim.x) {
    for (int64_t row = int64_t(blockIdx.x / col_stride) * blockDim.y + threadIdx.y; row < M;
         row += int64_t(row_groups) * blockDim.y) {
      amax = max(amax, chunk_amax_at(x, x_stride, row, chunk));
    }
  }
  amax = cta_max(amax);
  if ((threadIdx.x | threadIdx.y) == 0) partials[blockIdx.x] = amax;
}

// ---- host side ---------------------------------------------------------------------------------

bool aligned(const void* p, uintptr_t alignment) { return reinterpret_cast<uintptr_t>(p) % alignment == 0; }

int element_size(int dtype) { return dtype == DQ_FLOAT32 ? 4 : 2; }

// Checks shared by every cast: x [M, K] of x_dtype with row stride x_row_stride (elements), block 32
// or 16. Rows must be 16-byte aligned (x and the row stride in bytes).
int check_input(const void* x, int x_dtype, int64_t x_row_stride, int64_t M, int64_t K, int64_t block) {
  if (x == nullptr) return DQ_ERR_NULL_POINTER;
  if (x_dtype != DQ_FLOAT32 && x_dtype != DQ_BFLOAT16 && x_dtype != DQ_FLOAT16) return DQ_ERR_BAD_DTYPE;
  if (M < 1 || K < block || K % block != 0 || x_row_stride < K || M > INT64_MAX / x_row_stride) return DQ_ERR_BAD_SHAPE;
  if (M > INT32_MAX - 128 || K / kChunk > int64_t{kMaxChunksAlongRow} * 65535) return DQ_ERR_BAD_SHAPE;  // grid limits
  if (!aligned(x, 16) || (x_row_stride * element_size(x_dtype)) % 16 != 0) return DQ_ERR_MISALIGNED;
  return DQ_OK;
}

int check_scaling(int scaling) {
  return scaling == DQ_SCALING_RCEIL || scaling == DQ_SCALING_FLOOR ? DQ_OK : DQ_ERR_BAD_CONFIG;
}

// The 2-D CTAs over `rows` rows of K / 16 chunks.
struct Launch {
  dim3 grid, block;
  Launch(int64_t rows, int64_t K) {
    const int64_t chunks_per_row = K / kChunk;
    unsigned tx = 2;
    while (tx < chunks_per_row && tx < kMaxChunksAlongRow) tx *= 2;
    block = dim3(tx, kThreads / tx);
    grid = dim3(unsigned((rows + block.y - 1) / block.y), unsigned((chunks_per_row + tx - 1) / tx));
  }
};

// Calls f with a value of the C++ type of x_dtype (checked before).
template <typename F>
void with_input_type(int x_dtype, F&& f) {
  switch (x_dtype) {
    case DQ_FLOAT32:
      f(float{});
      break;
    case DQ_BFLOAT16:
      f(__nv_bfloat16{});
      break;
    default:
      f(__half{});
  }
}

int64_t padded_rows(int64_t M) { return (M + 127) / 128 * 128; }

int mxfp8_cast(const void* x, int x_dtype, int64_t x_row_stride, int64_t M, int64_t K, int scaling, uint8_t* q,
               uint8_t* s, void* out, cudaStream_t stream) {
  const bool decoded = out != nullptr;
  const int64_t rows = decoded ? M : padded_rows(M);
  const Launch launch(rows, K);
  with_input_type(x_dtype, [&](auto tag) {
    using In = decltype(tag);
    const In* xt = static_cast<const In*>(x);
    if (decoded) {
      mxfp8_cast_kernel<In, true><<<launch.grid, launch.block, 0, stream>>>(
          xt, x_row_stride, nullptr, nullptr, static_cast<uint32_t*>(out), M, K, rows, scaling);
    } else {
      mxfp8_cast_kernel<In, false><<<launch.grid, launch.block, 0, stream>>>(xt, x_row_stride, q, s, nullptr, M, K,
                                                                             rows, scaling);
    }
  });
  return cudaGetLastError();
}

int nvfp4_cast(const void* x, int x_dtype, int64_t x_row_stride, int64_t M, int64_t K, const float* tensor_scale,
               uint8_t* q, uint8_t* s, void* out, float* tensor_scale_out, uint32_t* scratch, cudaStream_t stream) {
  const bool decoded = out != nullptr, dynamic = tensor_scale == nullptr;
  int partial_count = 0;  // the amax pass's CTAs, one partial maximum each in scratch; 0: none
  if (dynamic && M * K > kSelfAmaxElements) {
    const Launch tiles(M, K);  // grid.x: tiles of block.y rows, grid.y: tiles of block.x chunks
    const unsigned most = unsigned(std::min(4 * dq::sm_count(), kAmaxMaxCtas));  // a few waves
    const unsigned col_tiles = tiles.grid.y;
    const unsigned row_groups = col_tiles >= most ? 1 : std::min(tiles.grid.x, most / col_tiles);
    partial_count = int(col_tiles >= most ? most : col_tiles * row_groups);
    with_input_type(x_dtype, [&](auto tag) {
      using In = decltype(tag);
      amax_kernel<In><<<partial_count, tiles.block, 0, stream>>>(static_cast<const In*>(x), x_row_stride, scratch, M,
                                                                 K, int(row_groups));
    });
    if (cudaError_t e = cudaGetLastError()) return e;
  }
  const int64_t rows = decoded ? M : padded_rows(M);
  const Launch launch(rows, K);
  cudaError_t error = cudaSuccess;
  with_input_type(x_dtype, [&](auto tag) {
    using In = decltype(tag);
    const In* xt = static_cast<const In*>(x);
    uint32_t* o = static_cast<uint32_t*>(out);
    const auto args = [&](auto kernel) {  // after an amax pass, the cast begins while that ends
      return dq::launch(kernel, launch.grid, launch.block, 0, stream, partial_count > 0, xt, x_row_stride, tensor_scale,
                        scratch, partial_count, tensor_scale_out, q, s, o, M, K, rows);
    };
    if (decoded) {
      error = dynamic ? args(nvfp4_cast_kernel<In, true, true>) : args(nvfp4_cast_kernel<In, true, false>);
    } else {
      error = dynamic ? args(nvfp4_cast_kernel<In, false, true>) : args(nvfp4_cast_kernel<In, false, false>);
    }
  });
  return error;
}

}  // namespace

extern "C" int dq_quantize_mxfp8(const void* x, int x_dtype, int64_t x_row_stride, int64_t M, int64_t K, int scaling,
                                 uint8_t* q, uint8_t* s, void* stream) {
  if (int err = check_input(x, x_dtype, x_row_stride, M, K, 32)) return err;
  if (int err = check_scaling(scaling)) return err;
  if (q == nullptr || s == nullptr) return DQ_ERR_NULL_POINTER;
  if (!aligned(q, 16)) return DQ_ERR_MISALIGNED;
  return mxfp8_cast(x, x_dtype, x_row_stride, M, K, scaling, q, s, nullptr, static_cast<cudaStream_t>(stream));
}

extern "C" int dq_quantize_dequantize_mxfp8(const void* x, int x_dtype, int64_t x_row_stride, int64_t M, int64_t K,
                                            int scaling, void* out, void* stream) {
  if (int err = check_input(x, x_dtype, x_row_stride, M, K, 32)) return err;
  if (int err = check_scaling(scaling)) return err;
  if (out == nullptr) return DQ_ERR_NULL_POINTER;
  if (!aligned(out, 16)) return DQ_ERR_MISALIGNED;
  return mxfp8_cast(x, x_dtype, x_row_stride, M, K, scaling, nullptr, nullptr, out, static_cast<cudaStream_t>(stream));
}

namespace dq {

// The weight decode's CTAs in mxfp8_linear_operands: one chunk per thread, at most 65536 CTAs (more
// stride), as dequantize.cu launches.
constexpr int64_t kWeightDecodeMaxCtas = 65536;

int mxfp8_linear_operands(const void* x, int x_dtype, int64_t x_row_stride, int64_t M, int64_t K, int scaling,
                          void* x_out, const uint8_t* b_q, const uint8_t* b_s, void* w_out, int64_t N,
                          cudaStream_t stream) {
  if (int err = check_input(x, x_dtype, x_row_stride, M, K, 32)) return err;
  if (int err = check_scaling(scaling)) return err;
  if (x_out == nullptr || b_q == nullptr || b_s == nullptr || w_out == nullptr) return DQ_ERR_NULL_POINTER;
  if (N < 1 || N > INT64_MAX / K) return DQ_ERR_BAD_SHAPE;
  if (!aligned(x_out, 16) || !aligned(b_q, 16) || !aligned(w_out, 16)) return DQ_ERR_MISALIGNED;
  const Launch cast(M, K);
  const int64_t cast_ctas = int64_t{cast.grid.x} * cast.grid.y;
  const int64_t weight_ctas = std::min((N * (K / kChunk) + kThreads - 1) / kThreads, kWeightDecodeMaxCtas);
  if (cast_ctas + weight_ctas > INT32_MAX) return DQ_ERR_BAD_SHAPE;  // the 1-D grid's limit
  with_input_type(x_dtype, [&](auto tag) {
    using In = decltype(tag);
    mxfp8_linear_operands_kernel<In><<<unsigned(cast_ctas + weight_ctas), cast.block, 0, stream>>>(
        static_cast<const In*>(x), x_row_stride, static_cast<uint32_t*>(x_out), M, K, scaling, cast.grid.x,
        unsigned(cast_ctas), b_q, b_s, static_cast<__nv_bfloat16*>(w_out), N);
  });
  return cudaGetLastError();
}

}  // namespace dq

extern "C" int dq_quantize_nvfp4(const void* x, int x_dtype, int64_t x_row_stride, int64_t M, int64_t K,
                                 const float* tensor_scale, uint8_t* q, uint8_t* s, float* tensor_scale_out,
                                 uint32_t* scratch, void* stream) {
  if (int err = check_input(x, x_dtype, x_row_stride, M, K, 16)) return err;
  if (q == nullptr || s == nullptr || tensor_scale_out == nullptr || (tensor_scale == nullptr && scratch == nullptr)) {
    return DQ_ERR_NULL_POINTER;
  }
  if (!aligned(q, 8)) return DQ_ERR_MISALIGNED;
  return nvfp4_cast(x, x_dtype, x_row_stride, M, K, tensor_scale, q, s, nullptr, tensor_scale_out, scratch,
                    static_cast<cudaStream_t>(stream));
}

extern "C" int dq_quantize_dequantize_nvfp4(const void* x, int x_dtype, int64_t x_row_stride, int64_t M, int64_t K,
                                            const float* tensor_scale, void* out, float* tensor_scale_out,
                                            uint32_t* scratch, void* stream) {
  if (int err = check_input(x, x_dtype, x_row_stride, M, K, 16)) return err;
  if (out == nullptr || tensor_scale_out == nullptr || (tensor_scale == nullptr && scratch == nullptr)) {
    return DQ_ERR_NULL_POINTER;
  }
  if (!aligned(out, 16)) return DQ_ERR_MISALIGNED;
  return nvfp4_cast(x, x_dtype, x_row_stride, M, K, tensor_scale, nullptr, nullptr, out, tensor_scale_out, scratch,
                    static_cast<cudaStream_t>(stream));
}

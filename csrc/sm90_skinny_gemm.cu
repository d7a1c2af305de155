// sm90_skinny_gemm.cu: Hopper GEMMs for few activation rows (M <= 64), where streaming the weight
// is the whole cost: MXFP8 (W8A8), NVFP4 (W4A4) and NVFP4 weight-only (W4A16, bf16/fp16 activation).
//
// out[m, n] = alpha * sum_k A[m, k] * W[n, k] + bias[n], computed as out^T = W A^T with
// mma.sync.m16n8k16: the weight is the 16-row A operand and every 8 activation rows ("tokens") an
// 8-column B tile. A warp owns one or two 16-row groups of weight rows (launch_out picks per format
// and M) and a contiguous range of K chunks; the CTA's warps split K between them and add their
// sums in shared memory at the end. Each lane reads its share of a weight chunk straight from
// global memory into registers one chunk ahead of the MMAs (no shared-memory staging: each weight
// byte is used once), decodes it exactly to f16 (bf16 for a bf16 W4A16 activation) and reads the
// same K positions of the activation (small, so L1/L2 resident).
//
// A fused Linear (dq_sm90_*_skinny_linear) takes the bf16/f16 activation and quantizes it in the
// kernel with csrc/quantize.cuh: each warp quantizes the K positions it multiplies, for all tokens,
// into the registers a quantized activation is loaded into (no shared memory, no extra barrier), so
// the MMAs see the bytes and scales the cast would have written. A CTA spans all of K (its warps
// split it), so every CTA quantizes the whole activation once, reading 2 M K bytes from L2: cheap
// next to its weight rows while M is small. An NVFP4 dynamic tensor scale (amax(|x|) / 2688, needed
// before any block scale) is computed by every CTA first, by the same reasoning: one launch, no
// scratch memory, no zeroing.
//
// Which K positions a lane feeds to which MMA slots does not matter for the dot product as long as
// the weight and the activation use the same assignment, so each lane takes contiguous bytes.
//
// Exactness:
//  - MXFP8: e4m3 values are exact in f16, so each MMA over one 32-wide scale block sums exact
//    products in float32; the block's result is then promoted into the float32 accumulator with
//    the product of its two E8M0 scales (exact while the two bytes add up to 105..381).
//  - NVFP4: e2m1 x e4m3 (block scale) is exact in f16 (at most 6 significant bits: 2 of e2m1 times 4 of e4m3, 2^-10 to 2688)
//    and in bf16, so the block scales are applied while decoding and the MMAs accumulate directly.
//    The tensor scales multiply the float32 sum in the epilogue.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "decode.cuh"
#include "dependent_launch.cuh"
#include "device_info.h"
#include "quantize.cuh"
#include "dq_kernels.h"
#include "scale_layout.cuh"
#include "sm90_after_cast.h"

namespace dq::sm90_skinny {
namespace {

enum class Format { kMxfp8, kNvfp4 };  // of the weight
// The activation: kQuantized, the weight's format (bytes and swizzled scales); kBf16 / kFloat16, a
// 16-bit activation multiplied as it is (NVFP4 W4A16); kCastBf16 / kCastFloat16, a 16-bit
// activation that the kernel quantizes to the weight's format (a fused Linear): each warp quantizes
// the K range it multiplies into the registers kQuantized would load, the same bytes and scales as
// the cast (quantize.cuh), so the MMAs and the result are those of cast + kQuantized bit for bit.
enum class Activation { kQuantized, kBf16, kFloat16, kCastBf16, kCastFloat16 };
constexpr bool is_cast(Activation a) { return a == Activation::kCastBf16 || a == Activation::kCastFloat16; }

constexpr int kRows = 16;        // weight rows per group: the MMA's M
constexpr int kChunkBytes = 128;  // weight bytes per row per K chunk (MXFP8: 128 K, NVFP4: 256 K)
constexpr int kMaxWarps = 8;      // warps per CTA, each taking a share of the K chunks
constexpr int kMaxTokens = 64;

// One K chunk: kChunkBytes of every weight row. Lane t of each quad reads the same kLaneBytes of
// each row per chunk, and the rows' scales sit kScaleStride bytes after the previous chunk's (the
// swizzled layout puts 4 scale columns in each 512-byte tile).
template <Format F>
struct Chunk;
template <>
struct Chunk<Format::kMxfp8> {
  static constexpr int kK = 128;         // 4 scale blocks of 32
  static constexpr int kLaneBytes = 8;   // bytes 8t .. 8t + 7 of each block; the scales: one word
  static constexpr int kScaleStride = 512;
};
template <>
struct Chunk<Format::kNvfp4> {
  static constexpr int kK = 256;         // 16 scale blocks of 16
  static constexpr int kLaneBytes = 32;  // bytes 32t .. 32t + 31 (blocks 4t .. 4t + 3, one scale word)
  static constexpr int kScaleStride = 4 * 512;
};

struct Problem {
  const uint8_t* a;    // activation: quantized bytes [M, K / elements per byte], or bf16/f16 [M, K]
  const uint8_t* a_s;  // activation block scales (kQuantized only), swizzled
  const uint8_t* w;    // weight bytes [N, K / elements per byte]
  const uint8_t* w_s;  // weight block scales, swizzled
  const float* a_ts;   // NVFP4 tensor scales (device pointers) or null; a cast's null a_ts: the
  const float* w_ts;   //   activation's dynamic scale amax(|x|) / 2688, computed by every CTA
  Bias bias;           // [N] in its own dtype, or none
  void* out;           // [M, N]
  int M, N, K;
  int scale_cols;      // round_up(K / block, 4): the padded scale columns of both scale buffers
  int scaling;         // an MXFP8 cast's scale rule: DQ_SCALING_RCEIL or DQ_SCALING_FLOOR
};

// ---- loads ---------------------------------------------------------------------------------------

// Streaming loads of the weight: read once, so they skip L1.
__device__ __forceinline__ uint2 load_stream(const uint8_t* p) {
  uint2 v;
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}
__device__ __forceinline__ uint4 load_stream16(const uint8_t* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// ---- the MMA -----------------------------------------------------------------------------------

// d = A B + c for one m16n8k16 tile: a[0..3] = (row g, slots P), (row g + 8, P), (row g, Q),
// (row g + 8, Q); b[0..1] = (token g, P), (token g, Q) with g = lane / 4 and P, Q the lane's two
// slot pairs. d[0..3] = (row g, token 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1), t = lane % 4.
template <bool kBf16>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                                    const float (&c)[4]) {
  if constexpr (kBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  }
}

// ---- one K chunk of one warp ---------------------------------------------------------------------

// Where one lane reads, at K chunk 0. Rows past N and tokens past M read row N - 1 and token
// M - 1 instead (their results are never stored), so the loads need no predicates.
template <Format F, Activation A, int kGroups, int kTiles>
struct LanePointers {
  const uint8_t* w[kGroups][2];    // weight rows g and g + 8 of each 16-row group
  const uint8_t* w_s[kGroups][2];  // their scale words
  const uint8_t* a[kTiles];        // the activation row of token 8j + g (the MMA's B fragment)
  const uint8_t* a_s[kTiles][2];   // MXFP8: scale words of tokens 8j + 2t, 8j + 2t + 1 (the
                                   // accumulator's columns); NVFP4: [j][0] of token 8j + g

  __device__ LanePointers(const Problem& p, int row0, int g, int t) {
    constexpr bool kMx = F == Format::kMxfp8;
    const int64_t w_row_bytes = kMx ? p.K : p.K / 2;
    const int scale_col = kMx ? 0 : 4 * t;
#pragma unroll
    for (int r = 0; r < kGroups; ++r)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = min(row0 + kRows * r + g + 8 * h, p.N - 1);
        w[r][h] = p.w + row * w_row_bytes + Chunk<F>::kLaneBytes * t;
        w_s[r][h] = p.w_s + swizzled_scale_offset(row, scale_col, p.scale_cols);
      }
    // 16-bit activations: NVFP4 64 elements per lane (4 blocks), an MXFP8 cast 8 of each block
    const int64_t a_row_bytes = A == Activation::kQuantized ? w_row_bytes : 2 * int64_t(p.K);
    const int a_lane_bytes = A == Activation::kQuantized ? Chunk<F>::kLaneBytes : kMx ? 16 : 128;
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
      a[j] = p.a + min(8 * j + g, p.M - 1) * a_row_bytes + a_lane_bytes * t;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int token = min(kMx ? 8 * j + 2 * t + i : 8 * j + g, p.M - 1);
        a_s[j][i] = p.a_s ? p.a_s + swizzled_scale_offset(token, scale_col, p.scale_cols) : nullptr;
      }
    }
  }
};

__device__ __forceinline__ uint32_t load_word(const uint8_t* p) { return __ldg(reinterpret_cast<const uint32_t*>(p)); }

// The lane's weight bytes of one chunk and their scale words. kTail: the chunk may run past K
// (parts past K read as zero).
template <Format F, int kGroups>
struct WeightChunk;
template <int kGroups>
struct WeightChunk<Format::kMxfp8, kGroups> {
  uint2 q[kGroups][2][4];  // [group][row g, g + 8][block]: bytes 8t .. 8t + 7 of the block
  uint32_t s[kGroups][2];  // the 4 E8M0 bytes of the chunk's blocks
};
template <int kGroups>
struct WeightChunk<Format::kNvfp4, kGroups> {
  uint4 q[kGroups][2][2];  // [group][row][half]: bytes 32t + 16 * half .. + 15
  uint32_t s[kGroups][2];  // the e4m3 scales of blocks 4t .. 4t + 3
};

template <bool kTail, Format F, Activation A, int kGroups, int kTiles>
__device__ __forceinline__ WeightChunk<F, kGroups> load_weight(const Problem& p, const LanePointers<F, A, kGroups, kTiles>& lp,
                                                               int chunk, int t) {
  WeightChunk<F, kGroups> c;
  const int64_t offset = int64_t(chunk) * kChunkBytes, scale_offset = int64_t(chunk) * Chunk<F>::kScaleStride;
  const int k0 = chunk * Chunk<F>::kK;
#pragma unroll
  for (int r = 0; r < kGroups; ++r)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if constexpr (F == Format::kMxfp8) {
#pragma unroll
        for (int b = 0; b < 4; ++b)
          c.q[r][h][b] = !kTail || k0 + 32 * b < p.K ? load_stream(lp.w[r][h] + offset + 32 * b) : make_uint2(0, 0);
        c.s[r][h] = load_word(lp.w_s[r][h] + scale_offset);
      } else {
        const int lane_k = k0 + 64 * t;
#pragma unroll
        for (int half = 0; half < 2; ++half)
          c.q[r][h][half] = !kTail || lane_k + 32 * half < p.K ? load_stream16(lp.w[r][h] + offset + 16 * half)
                                                              : make_uint4(0, 0, 0, 0);
        c.s[r][h] = !kTail || lane_k < p.K ? load_word(lp.w_s[r][h] + scale_offset) : 0u;
      }
    }
  return c;
}

// ---- the fused cast (Activation kCastBf16 / kCastFloat16) -----------------------------------------

// |x| of the 8 16-bit floats of v as bits, halfword-wise maxed into one word (bits of nonnegative
// bf16 and f16 values order like the values, and NaN's above inf's, so a NaN wins as in torch.amax).
__device__ __forceinline__ uint32_t abs_bits_max(uint4 v) {
  constexpr uint32_t kMagnitude = 0x7FFF7FFFu;
  return __vmaxu2(__vmaxu2(v.x & kMagnitude, v.y & kMagnitude), __vmaxu2(v.z & kMagnitude, v.w & kMagnitude));
}

// The 16-bit float of bits h (the activation's dtype) as float32, exactly.
template <Activation A>
__device__ __forceinline__ float float_of_half_bits(uint32_t h) {
  if constexpr (A == Activation::kCastBf16)
    return __uint_as_float(h << 16);
  else
    return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
}

// The larger of a word's two halfwords, as float32.
template <Activation A>
__device__ __forceinline__ float max_of_halves(uint32_t w) {
  return float_of_half_bits<A>(max(w & 0xFFFF, w >> 16));
}

// amax(|x|) over the whole activation [M, K], by all threads of the CTA (a barrier inside).
template <Activation A>
__device__ float activation_amax(const Problem& p) {
  __shared__ uint32_t warp_max[kMaxWarps];
  const uint4* x = reinterpret_cast<const uint4*>(p.a);
  const int64_t vectors = int64_t(p.M) * p.K / 8;
  uint32_t m = 0;
  for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) m = __vmaxu2(m, abs_bits_max(__ldg(x + i)));
  m = __reduce_max_sync(~0u, max(m & 0xFFFF, m >> 16));
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = m;
  __syncthreads();
  for (int w = 0; w < int(blockDim.x / 32); ++w) m = max(m, warp_max[w]);
  return float_of_half_bits<A>(m);
}

// MXFP8: the lane's 8 elements 8t .. 8t + 7 of a 32-wide block (x: their first byte; zeros past
// K), quantized. The 4 lanes of a quad hold one block of one token: their amax gives its E8M0 byte
// (in e), with which each lane writes its 8 e4m3 bytes. All 32 lanes must call it.
template <Activation A>
__device__ __forceinline__ uint2 cast_mxfp8_lane(const uint8_t* x, bool valid, int scaling, uint32_t& e) {
  const uint4 v = valid ? __ldg(reinterpret_cast<const uint4*>(x)) : make_uint4(0, 0, 0, 0);
  uint32_t m = abs_bits_max(v);
  m = __vmaxu2(m, __shfl_xor_sync(~0u, m, 1));
  m = __vmaxu2(m, __shfl_xor_sync(~0u, m, 2));
  const Mxfp8BlockScale scale = mxfp8_block_scale(max_of_halves<A>(m), scaling, true);
  e = scale.byte;
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
  uint32_t pairs[4];  // e4m3 bytes of elements (0, 1), (2, 3), (4, 5), (6, 7)
#pragma unroll
  for (int i = 0; i < 4; ++i)
    pairs[i] = encode_e4m3x2(float_of_half_bits<A>(words[i] & 0xFFFF) * scale.multiplier,
                             float_of_half_bits<A>(words[i] >> 16) * scale.multiplier);
  return make_uint2(pairs[0] | pairs[1] << 16, pairs[2] | pairs[3] << 16);
}

// MXFP8, one token (M = 1): the token's 128 elements of a chunk quantized by the whole warp, 4 per
// lane (x: lane L's elements 4L .. 4L + 3, in block L / 8; zeros past K). Returns the lane's 4 e4m3
// bytes, and in e their block's E8M0 byte. Without it the 8 quads of lanes would each quantize the
// same token (cast_mxfp8_lane). All 32 lanes must call it.
template <Activation A>
__device__ __forceinline__ uint32_t cast_mxfp8_token(const uint8_t* x, bool valid, int scaling, uint32_t& e) {
  constexpr uint32_t kMagnitude = 0x7FFF7FFFu;
  const uint2 v = valid ? __ldg(reinterpret_cast<const uint2*>(x)) : make_uint2(0, 0);
  uint32_t m = __vmaxu2(v.x & kMagnitude, v.y & kMagnitude);
#pragma unroll
  for (int lanes = 1; lanes < 8; lanes *= 2) m = __vmaxu2(m, __shfl_xor_sync(~0u, m, lanes));
  const Mxfp8BlockScale scale = mxfp8_block_scale(max_of_halves<A>(m), scaling, true);
  e = scale.byte;
  const uint32_t low = encode_e4m3x2(float_of_half_bits<A>(v.x & 0xFFFF) * scale.multiplier,
                                     float_of_half_bits<A>(v.x >> 16) * scale.multiplier);
  const uint32_t high = encode_e4m3x2(float_of_half_bits<A>(v.y & 0xFFFF) * scale.multiplier,
                                      float_of_half_bits<A>(v.y >> 16) * scale.multiplier);
  return low | high << 16;
}

// The e2m1 codes of 8 16-bit elements times r, code i in bits 4i .. 4i + 3 (the W4A4 byte order).
template <Activation A>
__device__ __forceinline__ uint32_t e2m1_codes(uint4 v, float r) {
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
  uint32_t codes = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    codes |= encode_e2m1(float_of_half_bits<A>(words[i] & 0xFFFF) * r) << (8 * i);
    codes |= encode_e2m1(float_of_half_bits<A>(words[i] >> 16) * r) << (8 * i + 4);
  }
  return codes;
}

// NVFP4: the lane's 64 elements of a chunk (x: their first byte; 4 blocks of 16), quantized under
// the tensor scale ts into what a W4A4 activation loads: codes[w] the e2m1 codes of elements
// 8w .. 8w + 7, scale64[b] the block scales as nvfp4_scale64 gives them (0 past K).
template <Activation A, typename Valid>
__device__ __forceinline__ void cast_nvfp4_lane(const uint8_t* x, const Valid& valid, float ts, uint32_t (&codes)[8],
                                                uint32_t (&scale64)[4]) {
#pragma unroll
  for (int b = 0; b < 4; ++b) {
    uint4 v[2];
#pragma unroll
    for (int h = 0; h < 2; ++h)
      v[h] = valid(b) ? __ldg(reinterpret_cast<const uint4*>(x + 32 * b + 16 * h)) : make_uint4(0, 0, 0, 0);
    const Nvfp4BlockScale scale =
        nvfp4_block_scale(max_of_halves<A>(__vmaxu2(abs_bits_max(v[0]), abs_bits_max(v[1]))), ts, true);
    codes[2 * b] = e2m1_codes<A>(v[0], scale.reciprocal);
    codes[2 * b + 1] = e2m1_codes<A>(v[1], scale.reciprocal);
    scale64[b] = nvfp4_scale64(scale.byte, valid(b));
  }
}

// NVFP4, one token (M = 1): what cast_nvfp4_lane gives lane t of every quad, with the token's 256
// elements of the chunk quantized once by the whole warp, 8 per lane (x: lane L's elements
// 8L .. 8L + 7, half of block L / 2; zeros past K), then handed out by shuffles. All 32 lanes must
// call it.
template <Activation A, typename Valid>
__device__ __forceinline__ void cast_nvfp4_token(const uint8_t* x, bool lane_valid, const Valid& valid, float ts, int t,
                                                 uint32_t (&codes)[8], uint32_t (&scale64)[4]) {
  const uint4 v = lane_valid ? __ldg(reinterpret_cast<const uint4*>(x)) : make_uint4(0, 0, 0, 0);
  uint32_t m = abs_bits_max(v);
  m = __vmaxu2(m, __shfl_xor_sync(~0u, m, 1));
  const Nvfp4BlockScale scale = nvfp4_block_scale(max_of_halves<A>(m), ts, true);
  const uint32_t word = e2m1_codes<A>(v, scale.reciprocal);
#pragma unroll
  for (int q = 0; q < 8; ++q) codes[q] = __shfl_sync(~0u, word, 8 * t + q);  // elements 64t + 8q .. + 7
#pragma unroll
  for (int b = 0; b < 4; ++b) scale64[b] = nvfp4_scale64(__shfl_sync(~0u, scale.byte, 8 * t + 2 * b), valid(b));
}

// The tensor scale a cast quantizes with: NVFP4's given scale, or amax(|x|) / 2688 (every CTA
// computes it: a barrier inside); 1 for MXFP8 and the other activations.
template <Format F, Activation A>
__device__ __forceinline__ float cast_tensor_scale(const Problem& p) {
  if constexpr (F == Format::kNvfp4 && is_cast(A))
    return p.a_ts ? *p.a_ts : nvfp4_tensor_scale(activation_amax<A>(p), true);
  return 1.f;
}

// ---- MMAs of one K chunk -------------------------------------------------------------------------

// E8M0 byte i of word -> 2^(e - 127), or 0 for a block past K.
__device__ __forceinline__ float e8m0_of(uint32_t word, int i, bool valid) {
  return valid ? decode_e8m0((word >> (8 * i)) & 0xFF) : 0.f;
}

// MXFP8: acc[r][j] += the chunk's products of group r and token tile j, one promotion per
// 32-wide block with the product of its two scales.
template <bool kTail, Activation A, int kGroups, int kTiles>
__device__ __forceinline__ void mma_chunk(const Problem& p, const LanePointers<Format::kMxfp8, A, kGroups, kTiles>& lp,
                                          int chunk, int t, const WeightChunk<Format::kMxfp8, kGroups>& w,
                                          float (&acc)[kGroups][kTiles][4], float /* a_ts: NVFP4's cast */) {
  const int k0 = chunk * 128;
  const int64_t offset = int64_t(chunk) * kChunkBytes, scale_offset = int64_t(chunk) * 512;
  // A cast of one token (M = 1): the lane's e4m3 bytes of the chunk and their block's E8M0 byte.
  uint32_t token_q = 0, token_e = 0;
  if constexpr (is_cast(A) && kTiles == 1) {
    const int lane = threadIdx.x % 32;  // the row of the token is lp.a[0] less the lane's offset 16t
    if (p.M == 1)
      token_q = cast_mxfp8_token<A>(lp.a[0] - 16 * t + 2 * offset + 8 * lane, !kTail || k0 + 4 * lane < p.K,
                                    p.scaling, token_e);
  }
  uint32_t a_s[kTiles][2];
  if constexpr (A == Activation::kQuantized)
#pragma unroll
    for (int j = 0; j < kTiles; ++j)
#pragma unroll
      for (int i = 0; i < 2; ++i) a_s[j][i] = load_word(lp.a_s[j][i] + scale_offset);
#pragma unroll
  for (int b = 0; b < 4; ++b) {
    const bool valid = !kTail || k0 + 32 * b < p.K;
    uint32_t frag[kGroups][2][4];  // [group][MMA][register]: the weight of the block, decoded
    float w_scale[kGroups][2];
#pragma unroll
    for (int r = 0; r < kGroups; ++r) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const uint32_t r0 = i == 0 ? w.q[r][0][b].x : w.q[r][0][b].y, r1 = i == 0 ? w.q[r][1][b].x : w.q[r][1][b].y;
        frag[r][i][0] = e4m3x2_to_f16x2(r0);
        frag[r][i][1] = e4m3x2_to_f16x2(r1);
        frag[r][i][2] = e4m3x2_to_f16x2(r0 >> 16);
        frag[r][i][3] = e4m3x2_to_f16x2(r1 >> 16);
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) w_scale[r][h] = e8m0_of(w.s[r][h], b, valid);
    }
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
      uint2 a_q;      // e4m3 bytes 8t .. 8t + 7 of block b of token 8j + g
      float s0, s1;   // the block's scales of tokens 8j + 2t and 8j + 2t + 1
      if constexpr (A == Activation::kQuantized) {
        a_q = valid ? __ldg(reinterpret_cast<const uint2*>(lp.a[j] + offset + 32 * b)) : make_uint2(0, 0);
      } else if (kTiles == 1 && p.M == 1) {  // bytes 8t .. 8t + 7 of block b are lanes 8b + 2t's and 8b + 2t + 1's
        a_q = make_uint2(__shfl_sync(~0u, token_q, 8 * b + 2 * t), __shfl_sync(~0u, token_q, 8 * b + 2 * t + 1));
        s0 = s1 = valid ? decode_e8m0(__shfl_sync(~0u, token_e, 8 * b)) : 0.f;
      } else {
        uint32_t e;  // the E8M0 byte of block b of token 8j + g, which its quad of lanes shares
        a_q = cast_mxfp8_lane<A>(lp.a[j] + 2 * (offset + 32 * b), valid, p.scaling, e);
        s0 = valid ? decode_e8m0(__shfl_sync(~0u, e, 8 * t)) : 0.f;  // lane 4 * (2t) holds token 2t
        s1 = valid ? decode_e8m0(__shfl_sync(~0u, e, 8 * t + 4)) : 0.f;
      }
      const uint32_t b0 = e4m3x2_to_f16x2(a_q.x), b1 = e4m3x2_to_f16x2(a_q.x >> 16);
      const uint32_t b2 = e4m3x2_to_f16x2(a_q.y), b3 = e4m3x2_to_f16x2(a_q.y >> 16);
      if constexpr (A == Activation::kQuantized) s0 = e8m0_of(a_s[j][0], b, valid), s1 = e8m0_of(a_s[j][1], b, valid);
#pragma unroll
      for (int r = 0; r < kGroups; ++r) {
        const float zero[4] = {0.f, 0.f, 0.f, 0.f};
        float block[4];
        mma<false>(block, frag[r][0], b0, b1, zero);
        mma<false>(block, frag[r][1], b2, b3, block);
        acc[r][j][0] = fmaf(block[0], w_scale[r][0] * s0, acc[r][j][0]);
        acc[r][j][1] = fmaf(block[1], w_scale[r][0] * s1, acc[r][j][1]);
        acc[r][j][2] = fmaf(block[2], w_scale[r][1] * s0, acc[r][j][2]);
        acc[r][j][3] = fmaf(block[3], w_scale[r][1] * s1, acc[r][j][3]);
      }
    }
  }
}

// NVFP4: acc[r][j] += the chunk's products of group r and token tile j (the block scales are
// applied in the decode, so the MMAs accumulate directly).
template <bool kTail, Activation A, int kGroups, int kTiles>
__device__ __forceinline__ void mma_chunk(const Problem& p, const LanePointers<Format::kNvfp4, A, kGroups, kTiles>& lp,
                                          int chunk, int t, const WeightChunk<Format::kNvfp4, kGroups>& w,
                                          float (&acc)[kGroups][kTiles][4], float a_ts) {
  constexpr bool kBf16 = A == Activation::kBf16;
  const int lane_k = chunk * 256 + 64 * t;
  auto valid = [&](int block) { return !kTail || lane_k + 16 * block < p.K; };
  const int64_t scale_offset = int64_t(chunk) * Chunk<Format::kNvfp4>::kScaleStride;
  uint32_t w_scale[kGroups][2][4];  // [group][row][block]: scale * 64 as f16x2
#pragma unroll
  for (int r = 0; r < kGroups; ++r)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int b = 0; b < 4; ++b) w_scale[r][h][b] = nvfp4_scale64(w.s[r][h] >> (8 * b), valid(b));
  // The activation for the chunk: W4A4 (and a cast) 32 bytes of e2m1 codes and a scale word per
  // tile, W4A16 64 16-bit elements.
  constexpr bool kW4A16 = A == Activation::kBf16 || A == Activation::kFloat16;
  constexpr int kActWords = kW4A16 ? 32 : 8;
  uint32_t a_raw[kTiles][kActWords];
  uint32_t a_scale[kTiles][4];
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    const uint8_t* base = lp.a[j] + int64_t(chunk) * (A == Activation::kQuantized ? kChunkBytes : 512);
    if constexpr (is_cast(A)) {
      const int lane = threadIdx.x % 32;  // the row of the token is base less the lane's offset 128t
      if (kTiles == 1 && p.M == 1)
        cast_nvfp4_token<A>(base - 128 * t + 16 * lane, !kTail || chunk * 256 + 8 * lane < p.K, valid, a_ts, t,
                            a_raw[j], a_scale[j]);
      else
        cast_nvfp4_lane<A>(base, valid, a_ts, a_raw[j], a_scale[j]);
    } else {
#pragma unroll
      for (int v = 0; v < kActWords / 4; ++v) {
        const bool ok = A == Activation::kQuantized ? valid(2 * v) : valid(2 * (v / 4));
        const uint4 x = ok ? __ldg(reinterpret_cast<const uint4*>(base + 16 * v)) : make_uint4(0, 0, 0, 0);
        a_raw[j][4 * v] = x.x, a_raw[j][4 * v + 1] = x.y, a_raw[j][4 * v + 2] = x.z, a_raw[j][4 * v + 3] = x.w;
      }
      if constexpr (A == Activation::kQuantized) {
        const uint32_t word = valid(0) ? load_word(lp.a_s[j][0] + scale_offset) : 0u;
#pragma unroll
        for (int b = 0; b < 4; ++b) a_scale[j][b] = nvfp4_scale64(word >> (8 * b), valid(b));
      }
    }
  }
#pragma unroll
  for (int q = 0; q < 8; ++q) {  // word q of the lane's 32 bytes: elements lane_k + 8q .. + 7, block q / 2
    uint32_t w_pairs[kGroups][2][4];
#pragma unroll
    for (int r = 0; r < kGroups; ++r)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint4& v = w.q[r][h][q / 4];
        const uint32_t word = q % 4 == 0 ? v.x : q % 4 == 1 ? v.y : q % 4 == 2 ? v.z : v.w;
        decode_e2m1_word(word, w_scale[r][h][q / 2], w_pairs[r][h]);
        if constexpr (kBf16)
#pragma unroll
          for (int i = 0; i < 4; ++i) w_pairs[r][h][i] = f16x2_to_bf16x2(w_pairs[r][h][i]);
      }
#pragma unroll
    for (int j = 0; j < kTiles; ++j) {
      uint32_t a_pairs[4];  // the activation's elements in the pair order of decode_e2m1_word
      if constexpr (!kW4A16) {
        decode_e2m1_word(a_raw[j][q], a_scale[j][q / 2], a_pairs);
      } else {
        const uint32_t* x = &a_raw[j][4 * q];  // elements (0, 1), (2, 3), (4, 5), (6, 7)
        a_pairs[0] = __byte_perm(x[0], x[1], 0x5410);  // (0, 2)
        a_pairs[1] = __byte_perm(x[2], x[3], 0x5410);  // (4, 6)
        a_pairs[2] = __byte_perm(x[0], x[1], 0x7632);  // (1, 3)
        a_pairs[3] = __byte_perm(x[2], x[3], 0x7632);  // (5, 7)
      }
#pragma unroll
      for (int r = 0; r < kGroups; ++r) {
        // Two MMAs per word: slots P, Q = pairs (0, 2), (4, 6), then (1, 3), (5, 7).
        const uint32_t first[4] = {w_pairs[r][0][0], w_pairs[r][1][0], w_pairs[r][0][1], w_pairs[r][1][1]};
        const uint32_t second[4] = {w_pairs[r][0][2], w_pairs[r][1][2], w_pairs[r][0][3], w_pairs[r][1][3]};
        mma<kBf16>(acc[r][j], first, a_pairs[0], a_pairs[1], acc[r][j]);
        mma<kBf16>(acc[r][j], second, a_pairs[2], a_pairs[3], acc[r][j]);
      }
    }
  }
}

// ---- the kernel --------------------------------------------------------------------------------

// One CTA: kGroups * 16 weight rows, its warps splitting the K chunks; warp 0 adds the other
// warps' sums and stores.
template <Format F, Activation A, int kGroups, int kTiles, typename Out>
__global__ void __launch_bounds__(32 * kMaxWarps) skinny_gemm_kernel(const Problem p) {
  __shared__ float partial[kMaxWarps - 1][kGroups * kTiles * 4][32];  // [warp - 1][register][lane]
  const int warp = threadIdx.x / 32, warps = blockDim.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4, row0 = blockIdx.x * kGroups * kRows;
  const LanePointers<F, A, kGroups, kTiles> lp(p, row0, g, t);
  const int chunks = (p.K + Chunk<F>::kK - 1) / Chunk<F>::kK, full_chunks = p.K / Chunk<F>::kK;
  const int first = chunks * warp / warps, last = chunks * (warp + 1) / warps;
  const int full_last = min(last, full_chunks);

  float acc[kGroups][kTiles][4] = {};
  WeightChunk<F, kGroups> current;
  // In flight during the fused cast's amax pass, or while the cast kernel this one follows ends.
  if (first < full_last) current = load_weight<false>(p, lp, first, t);
  wait_for_prior_grids();  // the activation may come from the cast kernel this one was launched after
  const float a_ts = cast_tensor_scale<F, A>(p);
  if (first < full_last) {
    for (int chunk = first; chunk < full_last; ++chunk) {
      decltype(current) next;
      if (chunk + 1 < full_last) next = load_weight<false>(p, lp, chunk + 1, t);  // in flight during the MMAs
      mma_chunk<false>(p, lp, chunk, t, current, acc, a_ts);
      current = next;
    }
  }
  if (full_last < last) {  // the chunk that runs past K
    const auto tail = load_weight<true>(p, lp, full_last, t);
    mma_chunk<true>(p, lp, full_last, t, tail, acc, a_ts);
  }

  constexpr int kRegs = kGroups * kTiles * 4;
  float* flat = &acc[0][0][0];
  if (warp > 0) {
#pragma unroll
    for (int i = 0; i < kRegs; ++i) partial[warp - 1][i][lane] = flat[i];
  }
  __syncthreads();
  if (warp > 0) return;
  for (int other = 0; other + 1 < warps; ++other)
#pragma unroll
    for (int i = 0; i < kRegs; ++i) flat[i] += partial[other][i][lane];

  float alpha = 1.f;
  if constexpr (is_cast(A))
    alpha *= a_ts;
  else if (p.a_ts)
    alpha *= *p.a_ts;
  if (p.w_ts) alpha *= *p.w_ts;
  Out* out = static_cast<Out*>(p.out);
#pragma unroll
  for (int r = 0; r < kGroups; ++r)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row0 + kRows * r + g + 8 * h;
      if (row >= p.N) continue;
      const float bias = p.bias[row];
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int token = 8 * j + 2 * t + i;
          if (token < p.M) out[int64_t(token) * p.N + row] = from_float<Out>(acc[r][j][2 * h + i] * alpha + bias);
        }
    }
}

// ---- host side ---------------------------------------------------------------------------------

// Warps per CTA: enough to keep about 12 warps per SM streaming (the row groups alone give one
// warp per CTA), at most kMaxWarps and one K chunk each.
int warps_per_cta(int64_t ctas, int chunks) {
  const int sms = sm_count();
  int warps = 1;
  while (warps < kMaxWarps && ctas * warps < 12 * sms && 2 * warps <= chunks) warps *= 2;
  return warps;
}

template <Format F, Activation A, int kGroups, int kTiles, typename Out>
int launch_tiles(const Problem& p, cudaStream_t stream, bool after_cast) {
  const int64_t ctas = (p.N + kGroups * kRows - 1) / (kGroups * kRows);
  const int chunks = (p.K + Chunk<F>::kK - 1) / Chunk<F>::kK;
  return launch(skinny_gemm_kernel<F, A, kGroups, kTiles, Out>, dim3(ctas), dim3(32 * warps_per_cta(ctas, chunks)), 0,
                stream, after_cast, p);
}

// Token tiles of 8 for M; two 16-row weight groups per warp (each activation fragment serves both)
// except with 8 tiles, where the accumulators leave no registers for a second group, and for
// NVFP4 with one tile: there the activation is cheap to decode again and a single group (fewer
// registers, twice the CTAs) streams faster (1x3072x18432 W4A4 25.2 -> 21.2 us, W4A16 28.1 ->
// 21.3 us on the H100; MXFP8, slower that way at 4 of 5 M = 1 shapes, and two tiles keep two groups).
template <Format F, Activation A, typename Out>
int launch_out(const Problem& p, cudaStream_t stream, bool after_cast) {
  const int tiles = (p.M + 7) / 8;
  if (tiles <= 1) {
    if constexpr (F == Format::kNvfp4)
      return launch_tiles<F, A, 1, 1, Out>(p, stream, after_cast);
    else
      return launch_tiles<F, A, 2, 1, Out>(p, stream, after_cast);
  }
  if (tiles <= 2) return launch_tiles<F, A, 2, 2, Out>(p, stream, after_cast);
  if (tiles <= 4) return launch_tiles<F, A, 2, 4, Out>(p, stream, after_cast);
  return launch_tiles<F, A, 1, 8, Out>(p, stream, after_cast);
}

// after_cast: launched as the programmatic dependent of the cast kernel enqueued just before it
// by the same call (dependent_launch.cuh), which wrote the activation.
template <Format F, Activation A>
int launch_gemm(const Problem& p, int out_dtype, cudaStream_t stream, bool after_cast) {
  switch (out_dtype) {
    case DQ_FLOAT32: return launch_out<F, A, float>(p, stream, after_cast);
    case DQ_BFLOAT16: return launch_out<F, A, __nv_bfloat16>(p, stream, after_cast);
    case DQ_FLOAT16: return launch_out<F, A, __half>(p, stream, after_cast);
    default: return DQ_ERR_BAD_DTYPE;
  }
}

// A fused Linear: the 16-bit activation (a_dtype, which out has too) quantized in the kernel.
template <Format F>
int launch_cast(const Problem& p, int a_dtype, cudaStream_t stream) {
  switch (a_dtype) {
    case DQ_BFLOAT16: return launch_out<F, Activation::kCastBf16, __nv_bfloat16>(p, stream, false);
    case DQ_FLOAT16: return launch_out<F, Activation::kCastFloat16, __half>(p, stream, false);
    default: return DQ_ERR_BAD_DTYPE;
  }
}

// The argument checks every entry point shares; DQ_OK or a DQ_ERR_* code.
int check(const Problem& p, int64_t M, int64_t N, int64_t K) {
  if (!p.a || !p.w || !p.w_s || !p.out) return DQ_ERR_NULL_POINTER;
  if (M < 1 || M > kMaxTokens || N < 1 || N % 8 != 0 || N > INT32_MAX - 2 * kRows || K < 32 || K % 32 != 0 ||
      K > INT32_MAX / 2)
    return DQ_ERR_BAD_SHAPE;
  for (const void* ptr : {static_cast<const void*>(p.a), static_cast<const void*>(p.a_s),
                          static_cast<const void*>(p.w), static_cast<const void*>(p.w_s),
                          p.bias.data, static_cast<const void*>(p.out)})
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return DQ_ERR_MISALIGNED;
  return bias_dtype_ok(p.bias.data, p.bias.dtype) ? DQ_OK : DQ_ERR_BAD_DTYPE;
}

}  // namespace
}  // namespace dq::sm90_skinny

using namespace dq::sm90_skinny;

int dq::sm90_mxfp8_skinny_mm(const uint8_t* a_q, const uint8_t* a_s, const uint8_t* b_q, const uint8_t* b_s,
                             const void* bias, int bias_dtype, void* out, int64_t M, int64_t N, int64_t K,
                             int out_dtype, void* stream, bool after_cast) {
  const Problem p{a_q, a_s, b_q, b_s, nullptr, nullptr, dq::Bias{bias, bias_dtype}, out, int(M), int(N), int(K),
                  int(dq::swizzled_padded_cols(K / 32))};
  if (!a_s) return DQ_ERR_NULL_POINTER;
  if (int e = check(p, M, N, K)) return e;
  return launch_gemm<Format::kMxfp8, Activation::kQuantized>(p, out_dtype, static_cast<cudaStream_t>(stream),
                                                             after_cast);
}

int dq::sm90_nvfp4_skinny_mm(const uint8_t* a_q, const uint8_t* a_s, const float* a_ts, const uint8_t* b_q,
                             const uint8_t* b_s, const float* b_ts, const void* bias, int bias_dtype, void* out,
                             int64_t M, int64_t N, int64_t K, int out_dtype, void* stream, bool after_cast) {
  const Problem p{a_q, a_s, b_q, b_s, a_ts, b_ts, dq::Bias{bias, bias_dtype}, out, int(M), int(N), int(K),
                  int(dq::swizzled_padded_cols(K / 16))};
  if (!a_s || !a_ts || !b_ts) return DQ_ERR_NULL_POINTER;
  if (int e = check(p, M, N, K)) return e;
  return launch_gemm<Format::kNvfp4, Activation::kQuantized>(p, out_dtype, static_cast<cudaStream_t>(stream),
                                                             after_cast);
}

extern "C" int dq_sm90_mxfp8_skinny_mm(const uint8_t* a_q, const uint8_t* a_s, const uint8_t* b_q,
                                       const uint8_t* b_s, const void* bias, int bias_dtype, void* out, int64_t M,
                                       int64_t N, int64_t K, int out_dtype, void* stream) {
  return dq::sm90_mxfp8_skinny_mm(a_q, a_s, b_q, b_s, bias, bias_dtype, out, M, N, K, out_dtype, stream, false);
}

extern "C" int dq_sm90_nvfp4_skinny_mm(const uint8_t* a_q, const uint8_t* a_s, const float* a_ts,
                                       const uint8_t* b_q, const uint8_t* b_s, const float* b_ts, const void* bias,
                                       int bias_dtype, void* out, int64_t M, int64_t N, int64_t K, int out_dtype,
                                       void* stream) {
  return dq::sm90_nvfp4_skinny_mm(a_q, a_s, a_ts, b_q, b_s, b_ts, bias, bias_dtype, out, M, N, K, out_dtype, stream,
                                  false);
}

extern "C" int dq_sm90_nvfp4_w4a16_skinny_mm(const void* a, int a_dtype, const uint8_t* b_q, const uint8_t* b_s,
                                             const float* b_ts, const void* bias, int bias_dtype, void* out,
                                             int64_t M, int64_t N, int64_t K, int out_dtype, void* stream) {
  const Problem p{static_cast<const uint8_t*>(a), nullptr, b_q, b_s, nullptr, b_ts, dq::Bias{bias, bias_dtype}, out,
                  int(M), int(N), int(K), int(dq::swizzled_padded_cols(K / 16))};
  if (!b_ts) return DQ_ERR_NULL_POINTER;
  if (int e = check(p, M, N, K)) return e;
  auto s = static_cast<cudaStream_t>(stream);
  switch (a_dtype) {
    case DQ_BFLOAT16: return launch_gemm<Format::kNvfp4, Activation::kBf16>(p, out_dtype, s, false);
    case DQ_FLOAT16: return launch_gemm<Format::kNvfp4, Activation::kFloat16>(p, out_dtype, s, false);
    default: return DQ_ERR_BAD_DTYPE;
  }
}

extern "C" int dq_sm90_mxfp8_skinny_linear(const void* a, int a_dtype, const uint8_t* b_q, const uint8_t* b_s,
                                           const void* bias, int bias_dtype, void* out, int64_t M, int64_t N,
                                           int64_t K, int scaling, void* stream) {
  Problem p{static_cast<const uint8_t*>(a), nullptr, b_q, b_s, nullptr, nullptr, dq::Bias{bias, bias_dtype}, out,
            int(M), int(N), int(K), int(dq::swizzled_padded_cols(K / 32))};
  if (scaling != DQ_SCALING_RCEIL && scaling != DQ_SCALING_FLOOR) return DQ_ERR_BAD_CONFIG;
  p.scaling = scaling;
  if (int e = check(p, M, N, K)) return e;
  return launch_cast<Format::kMxfp8>(p, a_dtype, static_cast<cudaStream_t>(stream));
}

extern "C" int dq_sm90_nvfp4_skinny_linear(const void* a, int a_dtype, const uint8_t* b_q, const uint8_t* b_s,
                                           const float* a_ts, const float* b_ts, const void* bias, int bias_dtype,
                                           void* out, int64_t M, int64_t N, int64_t K, void* stream) {
  const Problem p{static_cast<const uint8_t*>(a), nullptr, b_q, b_s, a_ts, b_ts, dq::Bias{bias, bias_dtype}, out,
                  int(M), int(N), int(K), int(dq::swizzled_padded_cols(K / 16))};
  if (!b_ts) return DQ_ERR_NULL_POINTER;
  if (int e = check(p, M, N, K)) return e;
  return launch_cast<Format::kNvfp4>(p, a_dtype, static_cast<cudaStream_t>(stream));
}

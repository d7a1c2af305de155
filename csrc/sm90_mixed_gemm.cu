// sm90_mixed_gemm.cu: the mixed-input Hopper GEMM (sm_90a) for M above the skinny kernels' range:
// a bf16/f16 activation times an MXFP8 or NVFP4 weight decoded exactly in registers.
//
//   out[m, n] = alpha * sum_k A[m, k] * W[n, k] + bias[n]
//
// computed as out^T = W A^T with wgmma m64nTk16, where the decoded weight is wgmma's register
// operand (64 weight rows per consumer warpgroup) and T activation rows ("tokens") are its
// shared-memory operand. Only the weight is transformed, once per CTA, and only on the CUDA
// cores; the tensor cores run bf16/f16 MMAs at their full rate. The activation arrives already
// exact in bf16/f16: the caller's for W4A16, or the exact decode of a quantized activation (the
// native dequantize kernel) for MXFP8 and NVFP4 W4A4.
//
// Exactness: an e2m1 value times its e4m3 block scale is exact in f16 and bf16 (at most 6
// significant bits, 2^-10 to 2688), so NVFP4 products are exact and the tensor scales (alpha) go to
// the float32 epilogue. An e4m3 value times its E8M0 scale is exact in bf16 unless it falls below
// bf16's subnormal grid (a scale byte below 3 with nonzero data; bf16 overflows where float32
// does), so MXFP8 computes in bf16 and is exact away from that end of the E8M0 range.
// (docs/hopper-mixed-input.md compares this design with FP8 wgmma plus per-32 promotion, which was
// exact over the whole range and 2.3x slower.)
//
// CTA: a producer warp (warpgroup 0, one thread) streams each 64-wide K step through a ring of
// stages with TMA: the activation tile (T tokens x 64 K, 128-byte swizzle: the wgmma descriptor
// reads it as it lands), the weight tile (128 rows x 64 K of bytes as stored, 64- or 32-byte
// swizzle so the consumers' reads are free of bank conflicts) and the 512-byte tile of the
// canonical swizzled scales that covers the step (a tensor copy too: compute-sanitizer's racecheck
// does not see the barrier ordering of plain bulk copies and flags every stage reuse). Two consumer warpgroups own 64 weight rows each;
// per K step every thread reads its weight bytes, decodes them into the four k16 A fragments and
// issues the four wgmmas, while the other warpgroup's wgmmas keep the tensor cores busy.
//
// The A fragment of m64nTk16 (per warp: 16 rows) holds, for lane l with g = l / 4, c = l % 4,
// rows g and g + 8 at K slots 2c, 2c + 1 (registers 0, 1) and 2c + 8, 2c + 9 (registers 2, 3).
// The weight rows are stored K-contiguous, so each lane reads the 16-byte (MXFP8) or 8-byte (NVFP4)
// piece of a row that holds one k16 step (shared by the four lanes of a quad: a broadcast) and
// picks its bytes with byte permutes.
//
// Grid: one CTA fits per SM. Up to one CTA per SM (a walker) runs the whole tiles, tile c, c +
// walkers, ... in tile_of's grouped order: its producer loads the next tile's first K steps while
// its consumers run the epilogue of the last. A last wave holding fewer tiles than SMs would
// leave SMs idle. Then its tiles are split along K
// into up to 4 parts, one CTA each, or (fewer than two waves of tiles, operands that fit in L2)
// all tiles are shared by one wave of CTAs in equal runs of (tile, K step) iterations (stream-K);
// see range_of and plan_for. The CTA that finishes a tile adds the others' float32
// sums from a workspace before the epilogue.
//
// Edges: TMA fills tokens past M, weight rows past N and K past the end with zeros; the scales of
// blocks past K are set to 0 so the (zero) data decodes to 0 whatever the padding bytes hold. Rows
// past N may decode padding scales to anything, but the MMA keeps rows apart and they are not
// stored. The epilogue goes through shared memory (the accumulator holds an [n, m] tile; the
// output is [M, N] row-major) and writes 16-byte vectors, masked to M x N.
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <new>
#include <utility>

#include "cute/arch/copy_sm90_tma.hpp"
#include "cute/arch/mma_sm90_desc.hpp"
#include "cute/arch/mma_sm90_gmma.hpp"
#include "cutlass/arch/barrier.h"
#include "cutlass/arch/reg_reconfig.h"
#include "cutlass/cuda_host_adapter.hpp"
#include "decode.cuh"
#include "dependent_launch.cuh"
#include "device_info.h"
#include "dq_kernels.h"
#include "scale_layout.cuh"
#include "sm90_after_cast.h"

namespace dq::sm90_mixed {
namespace {

enum class Format { kMxfp8, kNvfp4 };  // of the weight

constexpr int kRows = 128;       // weight rows per CTA: two consumer warpgroups x wgmma's M of 64
constexpr int kTileK = 64;       // K per stage: one 128-byte swizzle row of the 16-bit activation
constexpr int kMaxStages = 8;
constexpr int kSharedBytesLimit = 227 * 1024;     // dynamic shared memory of one sm_90 CTA
constexpr int kConsumers = 2;
constexpr int kThreads = 128 * (1 + kConsumers);  // warpgroup 0 is the producer
constexpr int kScaleTileBytes = 512;              // 128 rows x 4 scale columns, canonical layout
constexpr int kPassTokens = 64;                   // tokens per epilogue pass through shared memory
constexpr int kPitch = 72;  // staging row pitch (elements): 16-byte rows, bank-conflict-free bf16 stores

template <Format F>
struct WeightTile {
  static constexpr int kRowBytes = F == Format::kMxfp8 ? 64 : 32;  // one K step of one row
  static constexpr int kSwizzleBits = F == Format::kMxfp8 ? 2 : 1;   // TMA's 64- / 32-byte swizzle
  static constexpr CUtensorMapSwizzle kSwizzle =
      F == Format::kMxfp8 ? CU_TENSOR_MAP_SWIZZLE_64B : CU_TENSOR_MAP_SWIZZLE_32B;
};

// Where byte `offset` of a TMA-swizzled weight tile lies: the 16-byte chunk index (bits 4 and up)
// is XORed with address bits 7 and up (TMA's swizzle pattern for 64- and 32-byte spans).
template <Format F>
__device__ __forceinline__ int swizzled(int offset) {
  constexpr int kMask = (1 << WeightTile<F>::kSwizzleBits) - 1;
  return offset ^ (((offset >> 7) & kMask) << 4);
}

// One stage of the load ring; the activation tile is 1024-byte aligned (the 128-byte swizzle's period).
template <Format F, int kTokens>
struct alignas(1024) Stage {
  uint16_t a[kTokens * kTileK];                     // tokens x 64 K, 128-byte swizzle
  uint8_t w[kRows * WeightTile<F>::kRowBytes];      // weight rows x one K step of bytes, swizzled
  uint8_t w_scales[kScaleTileBytes];                // the canonical scale tile covering the step
};

// The load ring: 4 stages of 256 tokens, as many of 128 or 64 as fit beside the epilogue's staging
// (at most kMaxStages). A K step of the smaller tiles takes less time, so the ring must hold more
// of them to cover the weight's first read from HBM (H100, bf16 output, 4 -> 8 stages: M = 128
// GEMMs with 48 or more K steps per CTA 4-11 % faster; 5 stages of 256 tokens were up to 5 % slower
// than 4 at M 512-4608: benchmarks/results/mixed-ring-h100.json).
template <Format F, int kTokens, typename Out>
struct SharedStorage {
  static constexpr int kStaging = kConsumers * kPassTokens * kPitch * int(sizeof(Out));
  static constexpr int kStages =
      kTokens == 256 ? 4
                     : std::min<int>(kMaxStages, (kSharedBytesLimit - 2048 - kStaging - 16 * kMaxStages) /
                                                     int(sizeof(Stage<F, kTokens>)));
  Stage<F, kTokens> stages[kStages];
  Out staging[kConsumers][kPassTokens * kPitch];  // epilogue: [token][weight row] per consumer
  cutlass::arch::ClusterTransactionBarrier full[kStages];  // the producer's TMA bytes have landed
  cutlass::arch::ClusterBarrier empty[kStages];            // every consumer warp is done with it
};

constexpr uint64_t kEvictNormal = 0x1000000000000000ull;  // CacheHintSm90::EVICT_NORMAL

template <Format F, int kTokens>
__host__ __device__ constexpr int stage_bytes() {  // TMA bytes per stage
  return kTokens * kTileK * 2 + kRows * WeightTile<F>::kRowBytes + kScaleTileBytes;
}

// A wgmma shared-memory descriptor for the K-major activation tile written by TMA with the
// 128-byte swizzle: rows of 128 bytes, 8-row groups 1024 bytes apart. `address`: the k16 step's
// first byte (tile base + 32 bytes per step).
__device__ __forceinline__ uint64_t sw128_descriptor(uint32_t address) {
  cute::GmmaDescriptor desc;
  desc.bitfield.start_address_ = address >> 4;
  desc.bitfield.leading_byte_offset_ = 1;  // unused by swizzled K-major layouts
  desc.bitfield.stride_byte_offset_ = 1024 >> 4;
  desc.bitfield.base_offset_ = 0;  // tiles are 1024-byte aligned
  desc.bitfield.layout_type_ = 1;  // SWIZZLE_128B
  return desc.desc_;
}

// The wgmma m64n{kTokens}k16 with A from registers, float32 accumulators.
template <bool kBf16, int kTokens>
struct Wgmma;
#define DQ_MIXED_WGMMA(T)                                                                                 \
  template <>                                                                                             \
  struct Wgmma<true, T> {                                                                                 \
    using Op = cute::SM90::GMMA::MMA_64x##T##x16_F32BF16BF16_RS<cute::SM90::GMMA::Major::K,             \
                                                                cute::SM90::GMMA::Major::K>;              \
  };                                                                                                      \
  template <>                                                                                             \
  struct Wgmma<false, T> {                                                                                \
    using Op =                                                                                            \
        cute::SM90::GMMA::MMA_64x##T##x16_F32F16F16_RS<cute::SM90::GMMA::Major::K, cute::SM90::GMMA::Major::K>; \
  };
DQ_MIXED_WGMMA(64)
DQ_MIXED_WGMMA(128)
DQ_MIXED_WGMMA(256)
#undef DQ_MIXED_WGMMA

template <typename Op, int N, size_t... I>
__device__ __forceinline__ void wgmma(const uint32_t (&a)[4], uint64_t b, float (&d)[N], std::index_sequence<I...>) {
  Op::fma(a[0], a[1], a[2], a[3], b, d[I]...);
}

template <int N>
__device__ __forceinline__ void fence(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) cute::warpgroup_fence_operand(r[i]);
}
__device__ __forceinline__ void fence(uint32_t (&r)[4][4]) {
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) cute::warpgroup_fence_operand(r[j][i]);
}

// ---- the weight decode: one K step of rows g and g + 8 into the four k16 A fragments ------------

// The 4 scale bytes of row `row` (0..127) of a 512-byte scale tile: one 32-bit word of the
// canonical layout (a tile is the layout of 128 rows with 4 scale columns).
__device__ __forceinline__ uint32_t scale_word(const uint8_t* tile, int row) {
  return *reinterpret_cast<const uint32_t*>(tile + swizzled_scale_offset(row, 0, 4));
}

// Two e4m3 bytes (low 16 bits of `pair`) times 2^(e - 127) -> bf16x2, exact within the domain in
// the file comment. Fast form: the exact f16x2 of the bytes, reread as bf16 by moving the f16
// exponent and mantissa fields (e4m3 values are normal in f16 and use 3 of its 10 mantissa bits)
// into bf16's, which is the value times 2^(15 - 127), then one bf16x2 multiply by 2^(e - 15)
// (`multiplier`, both halves), a bf16 value for scale bytes e <= kFastMaxByte. An e4m3 NaN code
// (0x7F, 0xFF) does not stay NaN in this form; the quantizers (ours, torchao's) give a block with a
// NaN the scale byte 255, which takes the general form.
constexpr uint32_t kFastMaxByte = 142;
__device__ __forceinline__ uint32_t mxfp8_pair(uint32_t pair, uint32_t multiplier) {
  const uint32_t h = e4m3x2_to_f16x2(pair);
  const uint32_t scaled_down = ((h >> 3) & 0x0FFF0FFFu) | (h & 0x80008000u);
  const __nv_bfloat162 v = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&scaled_down),
                                   *reinterpret_cast<const __nv_bfloat162*>(&multiplier));
  return *reinterpret_cast<const uint32_t*>(&v);
}
// General form, for any scale byte: float32 holds the product exactly; one rounding to bf16.
__device__ __forceinline__ uint32_t mxfp8_pair(uint32_t pair, float scale) {
  const uint32_t h = e4m3x2_to_f16x2(pair);
  const float2 v = __half22float2(*reinterpret_cast<const __half2*>(&h));
  const __nv_bfloat162 b = __floats2bfloat162_rn(v.x * scale, v.y * scale);
  return *reinterpret_cast<const uint32_t*>(&b);
}

// MXFP8: k16 step j of the stage uses scale block j / 2 of the step, which is byte
// 2 * (ks % 2) + j / 2 of the row's scale word (a scale tile covers two 64-wide steps). A thread
// whose four scale bytes are all at most kFastMaxByte (any real weight: it takes a block amax
// above 448 * 2^15 to exceed it) decodes in the fast form.
template <bool kBf16>
__device__ __forceinline__ void decode_step(const uint8_t* w, const uint8_t* scales, int ks, int K, int row, int c,
                                            uint32_t (&frag)[4][4], std::integral_constant<Format, Format::kMxfp8>) {
  static_assert(kBf16, "MXFP8 decodes to bf16 (2^(e - 127) leaves f16's range)");
  constexpr int kRow = WeightTile<Format::kMxfp8>::kRowBytes;
  const uint32_t words[2] = {scale_word(scales, row), scale_word(scales, row + 8)};
  uint32_t bytes[2][2];  // [row g, g + 8][block of the step]; 0 for a block past K (its data is 0)
  bool fast = true;
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      const bool valid = ks * kTileK + 32 * b < K;
      bytes[h][b] = valid ? (words[h] >> (8 * (2 * (ks % 2) + b))) & 0xFF : 0u;
      fast = fast && bytes[h][b] <= kFastMaxByte;
    }
  const uint32_t select = (2 * c) | ((2 * c + 1) << 4);  // bytes 2c, 2c + 1 of 8
  auto decode_with = [&](auto scale_of) {
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint4 v = *reinterpret_cast<const uint4*>(w + swizzled<Format::kMxfp8>((row + 8 * h) * kRow + 16 * j));
        frag[j][h] = mxfp8_pair(__byte_perm(v.x, v.y, select), scale_of(h, j / 2));
        frag[j][2 + h] = mxfp8_pair(__byte_perm(v.z, v.w, select), scale_of(h, j / 2));
      }
  };
  if (fast) {
    // 2^(e - 15) as bf16 bits in both halves (byte 0 of a block past K gives 2^-15: its data is 0)
    decode_with([&](int h, int b) { return ((bytes[h][b] + 112) << 7) * 0x00010001u; });
  } else {
    decode_with([&](int h, int b) { return decode_e8m0(bytes[h][b]); });
  }
}

// NVFP4: k16 step j is scale block j of the step (byte j of the row's scale word). Byte c of a
// row's 8-byte k16 piece holds K slots 2c, 2c + 1 and byte c + 4 slots 2c + 8, 2c + 9.
template <bool kBf16>
__device__ __forceinline__ void decode_step(const uint8_t* w, const uint8_t* scales, int ks, int K, int row, int c,
                                            uint32_t (&frag)[4][4], std::integral_constant<Format, Format::kNvfp4>) {
  constexpr int kRow = WeightTile<Format::kNvfp4>::kRowBytes;
  const uint32_t words[2] = {scale_word(scales, row), scale_word(scales, row + 8)};
  const uint32_t select = c | ((c + 4) << 4);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const bool valid = ks * kTileK + 16 * j < K;
    uint32_t bytes[2];  // rows g, g + 8: [byte c, byte c + 4] in the low half
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint2 v = *reinterpret_cast<const uint2*>(w + swizzled<Format::kNvfp4>((row + 8 * h) * kRow + 8 * j));
      bytes[h] = __byte_perm(v.x, v.y, select);
    }
    // codes: (g, 2c), (g, 2c + 1), (g, 2c + 8), (g, 2c + 9), then the same for row g + 8
    uint32_t even, odd;  // e4m3 bytes of (g, 2c), (g, 2c + 8), (g + 8, 2c), (g + 8, 2c + 8) / 2c + 1, 2c + 9
    e2m1x8_to_e4m3(__byte_perm(bytes[0], bytes[1], 0x5410), even, odd);
    const uint32_t scale64[2] = {nvfp4_scale64(words[0] >> (8 * j), valid), nvfp4_scale64(words[1] >> (8 * j), valid)};
    // register (row h, slots 2c.. or 2c + 8..): the even and odd byte of the same position side by side
    frag[j][0] = hmul2_bits(e4m3x2_to_f16x2(__byte_perm(even, odd, 0x40)), scale64[0]);
    frag[j][1] = hmul2_bits(e4m3x2_to_f16x2(__byte_perm(even, odd, 0x62)), scale64[1]);
    frag[j][2] = hmul2_bits(e4m3x2_to_f16x2(__byte_perm(even, odd, 0x51)), scale64[0]);
    frag[j][3] = hmul2_bits(e4m3x2_to_f16x2(__byte_perm(even, odd, 0x73)), scale64[1]);
    if constexpr (kBf16)
#pragma unroll
      for (int i = 0; i < 4; ++i) frag[j][i] = f16x2_to_bf16x2(frag[j][i]);
  }
}

struct Problem {
  const float* alpha_a;   // NVFP4 tensor scales (device pointers) or null
  const float* alpha_b;
  Bias bias;              // [N] in its own dtype, or none
  int M, N, K;
  int scale_tiles_per_row;  // round_up(K / block, 4) / 4: 512-byte scale tiles per 128-row block
  // Shared tiles (Plan): CTAs below whole_tiles take one tile each, all of K; the last
  // shared_tiles tiles are shared by the shared_ctas CTAs after them (range_of): each cut into
  // `parts` equal runs of K steps, or (parts 0) all cut into shared_ctas equal runs. Their float32
  // partial sums meet in `partials`, each flagged in `arrivals`.
  int whole_tiles, shared_tiles, shared_ctas, parts;
  int walkers;      // CTAs 0..walkers-1 run the whole tiles: tile c, c + walkers, ... (persistent)
  float* partials;  // [shared CTA][consumer][accumulator register / 4][thread][4]
  int* arrivals;    // [shared CTA][consumer]: 1 once those sums are stored; zero before the launch
};

// The (weight tile, token tile) of tile `index`. Tiles go through the weight tiles in groups of
// kGroupTiles: all token tiles of a group, weight tile fastest, before the next group. So a wave of
// CTAs shares a slice of at most kGroupTiles weight tiles and few token tiles, which stay in L2
// (row by row over all weight tiles, a weight larger than L2 would be read again for every token
// tile: 18 times at 4608 x 15360 x 3072).
constexpr int kGroupTiles = 32;
struct Tile {
  int w, token;  // weight tile (128 rows of N), token tile (kTokens rows of M)
};
template <int kTokens>
__device__ __forceinline__ Tile tile_of(int index, const Problem& p) {
  const int w_tiles = (p.N + kRows - 1) / kRows, token_tiles = (p.M + kTokens - 1) / kTokens;
  const int group = index / (kGroupTiles * token_tiles), first = group * kGroupTiles;
  const int size = min(kGroupTiles, w_tiles - first), in_group = index - first * token_tiles;
  return {first + in_group % size, in_group / size};
}

// What CTA `cta` computes: a range of the problem's (tile, K step) iterations, tile-major (tile
// t's K step ks is iteration t * k_steps + ks; tiles in tile_of's order). A whole tile is one CTA's
// range. A shared tile is cut along K: either each into `parts` equal runs, one per CTA (the CTAs
// of a wave then read the same K steps of their tiles at about the same time, which keeps the
// operands they share in L2), or all shared tiles' iterations into shared_ctas equal runs, so that
// a CTA may end one tile and begin others (stream-K: the best balance, for operands that fit in
// L2). A CTA walks its tiles from the last down (K ascending within each): the tile its range ends
// in comes first, and the tile it begins in comes last. So of a tile cut between CTAs, every CTA but
// the highest one computes its part first and leaves the sums in `partials`; the highest computes
// its part (the tile's last K steps) last, adds the others' sums and runs the epilogue. It waits
// only for lower CTAs, which the GPU starts first (in index order: CUDA does not promise it;
// CUTLASS's stream-K fixup relies on the same), so they are running or done when it spins.
struct Range {
  int64_t begin, end;  // iterations [begin, end), at least one
  int k_steps;
  __device__ int first_tile() const { return int(begin / k_steps); }
  __device__ int last_tile() const { return int((end - 1) / k_steps); }
  __device__ int first_step(int tile) const {  // the range's first K step in `tile`
    return int(max(begin, int64_t(tile) * k_steps) - int64_t(tile) * k_steps);
  }
  __device__ int end_step(int tile) const {  // one past the range's last K step in `tile`
    return int(min(end, int64_t(tile + 1) * k_steps) - int64_t(tile) * k_steps);
  }
};
__device__ __forceinline__ Range range_of(int cta, const Problem& p, int k_steps) {
  if (cta < p.whole_tiles) return {int64_t(cta) * k_steps, int64_t(cta + 1) * k_steps, k_steps};
  const int shared = cta - p.whole_tiles;
  if (p.parts) {
    const int64_t first = (int64_t(p.whole_tiles) + shared / p.parts) * k_steps, part = shared % p.parts;
    return {first + k_steps * part / p.parts, first + k_steps * (part + 1) / p.parts, k_steps};
  }
  const int64_t first = int64_t(p.whole_tiles) * k_steps, total = int64_t(p.shared_tiles) * k_steps;
  return {first + total * shared / p.shared_ctas, first + total * (shared + 1) / p.shared_ctas, k_steps};
}

// kStreamK: a CTA's range may span several tiles (stream-K plans); without it every range lies in
// one tile and the K loop is the plain one (the multi-tile walk's index arithmetic makes the loop
// 808 instead of 717 SASS instructions per two K steps, MXFP8 with 256 tokens).
template <Format F, bool kBf16, int kTokens, typename Out, bool kStreamK>
__global__ void __launch_bounds__(kThreads, 1)
    mixed_gemm_kernel(const __grid_constant__ CUtensorMap a_map, const __grid_constant__ CUtensorMap w_map,
                      const __grid_constant__ CUtensorMap s_map, const Problem p, Out* __restrict__ out) {
  using Storage = SharedStorage<F, kTokens, Out>;
  constexpr int kStages = Storage::kStages;
  extern __shared__ uint8_t smem_raw[];
  // Aligned by pointer arithmetic on smem_raw, so the compiler still knows it is shared memory.
  const uint32_t misalignment = cute::cast_smem_ptr_to_uint(smem_raw) % 1024;
  Storage& smem = *reinterpret_cast<Storage*>(smem_raw + (1024 - misalignment) % 1024);

  const int k_steps = (p.K + kTileK - 1) / kTileK;
  // A walker runs whole tiles (its first is tile blockIdx.x); the CTAs after the walkers are
  // range_of's shared CTAs, numbered as there.
  const bool walker = blockIdx.x < p.walkers;
  const int cta = walker ? int(blockIdx.x) : int(blockIdx.x) - p.walkers + p.whole_tiles;
  const Range range = range_of(cta, p, k_steps);
  const int steps = int(range.end - range.begin);  // a shared CTA's K steps; its i-th uses stage i % kStages
  const int warpgroup = threadIdx.x / 128;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      smem.full[s].init(1);
      smem.empty[s].init(kConsumers * 4);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();
  wait_for_prior_grids();  // the activation and its tensor scale may come from the cast launched just before

  if (warpgroup == 0) {  // producer: one thread issues every load, in the consumers' order
    cutlass::arch::warpgroup_reg_dealloc<40>();
    if (threadIdx.x == 0) {
      int i = 0;
      auto load = [&](const int t, const int ks) {
        const Tile tile = tile_of<kTokens>(t, p);
        const int s = i % kStages;
        smem.empty[s].wait(((i / kStages) & 1) ^ 1);
        Stage<F, kTokens>& stage = smem.stages[s];
        uint64_t* bar = reinterpret_cast<uint64_t*>(&smem.full[s]);
        smem.full[s].arrive_and_expect_tx(stage_bytes<F, kTokens>());
        cute::SM90_TMA_LOAD_2D::copy(&a_map, bar, kEvictNormal, stage.a, ks * kTileK, tile.token * kTokens);
        cute::SM90_TMA_LOAD_2D::copy(&w_map, bar, kEvictNormal, stage.w, ks * WeightTile<F>::kRowBytes,
                                     tile.w * kRows);
        // The scale tile: 4 scale columns cover 128 K (MXFP8) or 64 K (NVFP4); 32 rows of 16 bytes each.
        const int scale_tile = tile.w * p.scale_tiles_per_row + (F == Format::kMxfp8 ? ks / 2 : ks);
        cute::SM90_TMA_LOAD_2D::copy(&s_map, bar, kEvictNormal, stage.w_scales, 0, scale_tile * 32);
        ++i;
      };
      if (walker) {
        for (int t = blockIdx.x; t < p.whole_tiles; t += p.walkers)
          for (int ks = 0; ks < k_steps; ++ks) load(t, ks);
      } else {
        for (int t = range.last_tile(); t >= range.first_tile(); --t)
          for (int ks = range.first_step(t); ks < range.end_step(t); ++ks) load(t, ks);
      }
    }
    return;
  }

  cutlass::arch::warpgroup_reg_alloc<232>();
  const int consumer = warpgroup - 1;
  const int t = threadIdx.x % 128, warp = t / 32, lane = t % 32;
  const int row = kRows / kConsumers * consumer + 16 * warp + lane / 4;  // rows row, row + 8 of the tile
  using Op = typename Wgmma<kBf16, kTokens>::Op;
  constexpr int kAcc = kTokens / 2;  // float32 per thread of the 64 x kTokens accumulator
  float acc[kAcc];
#pragma unroll
  for (int i = 0; i < kAcc; ++i) acc[i] = 0.f;

  // Step i below counts from `base`, the steps of a walker's earlier tiles (0 for a shared CTA):
  // the CTA's step base + i uses stage (base + i) % kStages, in the producer's order.
  int base = 0;
  // Decodes step i (K step ks of its tile) into f once its stage has landed.
  auto decode = [&](int i, int ks, uint32_t(&f)[4][4]) {
    const Stage<F, kTokens>& stage = smem.stages[(base + i) % kStages];
    smem.full[(base + i) % kStages].wait(((base + i) / kStages) & 1);
    decode_step<kBf16>(stage.w, stage.w_scales, ks, p.K, row, lane % 4, f, std::integral_constant<Format, F>{});
  };
  // The CTA's K step i of `count`: issues its four wgmmas on `cur`, decodes step i + 1 (K step
  // next_ks of its tile) into `next` while they run, then waits for them and releases the stage.
  // No wgmma stays in flight across steps (ptxas serializes every wgmma of a loop that keeps one in
  // flight across its back edge).
  auto step = [&](int i, int next_ks, uint32_t(&cur)[4][4], uint32_t(&next)[4][4], int count) {
    const int s = (base + i) % kStages;
    fence(cur);
    fence(acc);
    cute::warpgroup_arrive();
    const uint32_t a = cute::cast_smem_ptr_to_uint(smem.stages[s].a);
#pragma unroll
    for (int j = 0; j < 4; ++j) wgmma<Op>(cur[j], sw128_descriptor(a + 32 * j), acc, std::make_index_sequence<kAcc>{});
    cute::warpgroup_commit_batch();
    if (i + 1 < count) decode(i + 1, next_ks, next);
    cute::warpgroup_wait<0>();
    fence(acc);
    fence(cur);  // keeps cur's registers from being reused before the wgmmas are done
    // The decode read the stage's weight bytes through the generic proxy; the producer's next TMA
    // writes into the stage go through the async proxy: order them across proxies.
    cutlass::arch::fence_view_async_shared();
    if (lane == 0) smem.empty[s].arrive();  // every wgmma reading the stage is done
  };
  // A shared CTA's partial sums: float4 pieces, [accumulator register / 4][thread].
  auto partials_of = [&](int shared_cta) {
    return reinterpret_cast<float4*>(p.partials) +
           (int64_t(shared_cta - p.whole_tiles) * kConsumers + consumer) * (kAcc / 4) * 128;
  };
  auto arrival_of = [&](int shared_cta) { return p.arrivals + (shared_cta - p.whole_tiles) * kConsumers + consumer; };

  // Epilogue of a finished tile: v = alpha * acc + bias in float32, rounded once, staged as
  // [token][weight row] and written as 16-byte row pieces. Accumulator register 4q + h holds weight
  // row `row` + 8 (h / 2) and token 8q + 2 (lane % 4) + h % 2 of the tile.
  auto epilogue = [&](const Tile tile) {
    const float alpha = (p.alpha_a ? *p.alpha_a : 1.f) * (p.alpha_b ? *p.alpha_b : 1.f);
    const int n0 = tile.w * kRows + row;
    const float bias[2] = {n0 < p.N ? p.bias[n0] : 0.f, n0 + 8 < p.N ? p.bias[n0 + 8] : 0.f};
    Out* staging = smem.staging[consumer];
    const int local_row = row - kRows / kConsumers * consumer;
    constexpr int kVec = 16 / sizeof(Out);
    constexpr int kVecsPerToken = kRows / kConsumers / kVec;
#pragma unroll
    for (int pass = 0; pass < kTokens / kPassTokens; ++pass) {
      if constexpr (sizeof(Out) == 2) {
        // Four 8x8 blocks (tokens x weight rows) per stmatrix.trans: block i = lane / 8 is tokens
        // 8 (2 qq + i / 2).. and weight rows 8 (i % 2).. of the warp's 16; lane % 8 addresses its token.
        const int i = lane / 8;
#pragma unroll
        for (int qq = 0; qq < kPassTokens / 16; ++qq) {
          uint32_t r[4];
#pragma unroll
          for (int b = 0; b < 4; ++b) {
            const int a0 = 4 * (pass * kPassTokens / 8 + 2 * qq + b / 2) + 2 * (b % 2);
            const Out lo = from_float<Out>(acc[a0] * alpha + bias[b % 2]);
            const Out hi = from_float<Out>(acc[a0 + 1] * alpha + bias[b % 2]);
            r[b] = uint32_t(*reinterpret_cast<const uint16_t*>(&lo)) | (uint32_t(*reinterpret_cast<const uint16_t*>(&hi)) << 16);
          }
          const int token = 8 * (2 * qq + i / 2) + lane % 8;
          const uint32_t address = cute::cast_smem_ptr_to_uint(staging + token * kPitch + 16 * warp + 8 * (i % 2));
          asm volatile("stmatrix.sync.aligned.x4.trans.m8n8.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(address),
                       "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3]));
        }
      } else {  // float32: one element per store
#pragma unroll
        for (int q = 0; q < kPassTokens / 8; ++q)
#pragma unroll
          for (int h = 0; h < 4; ++h) {
            const int token = 8 * q + 2 * (lane % 4) + h % 2;
            const float v = acc[4 * (pass * kPassTokens / 8 + q) + h] * alpha + bias[h / 2];
            staging[token * kPitch + local_row + 8 * (h / 2)] = from_float<Out>(v);
          }
      }
      cutlass::arch::NamedBarrier::sync(128, 1 + consumer);
      for (int i = t; i < kPassTokens * kVecsPerToken; i += 128) {
        const int token = i / kVecsPerToken, piece = i % kVecsPerToken;
        const int m = tile.token * kTokens + pass * kPassTokens + token;
        const int n = tile.w * kRows + kRows / kConsumers * consumer + piece * kVec;
        if (m < p.M && n < p.N)
          *reinterpret_cast<uint4*>(out + int64_t(m) * p.N + n) =
              *reinterpret_cast<const uint4*>(staging + token * kPitch + piece * kVec);
      }
      cutlass::arch::NamedBarrier::sync(128, 1 + consumer);
    }
  };

  // After the tile's K steps [begin, end) (the CTA's own part of it): leave the sums for the CTA
  // that finishes the tile, or add the lower CTAs' parts and run the epilogue; then start afresh.
  auto finish = [&](int tile_index, int begin, int end) {
    if (end < k_steps) {  // a part of a tile that a higher CTA finishes: leave the sums there
      float4* mine = partials_of(cta);
#pragma unroll
      for (int r = 0; r < kAcc / 4; ++r)
        __stcg(mine + r * 128 + t, make_float4(acc[4 * r], acc[4 * r + 1], acc[4 * r + 2], acc[4 * r + 3]));
      __threadfence();
      cutlass::arch::NamedBarrier::sync(128, 1 + consumer);
      if (t == 0) atomicExch(arrival_of(cta), 1);
    } else {
      if (begin > 0) {  // the tile's last part: add the parts of the lower CTAs that share it
        int lowest = cta - 1;
        while (range_of(lowest, p, k_steps).begin > int64_t(tile_index) * k_steps) --lowest;
        if (t == 0) {
          for (int other = lowest; other < cta; ++other)
            while (*reinterpret_cast<volatile int*>(arrival_of(other)) == 0) __nanosleep(128);
          __threadfence();
        }
        cutlass::arch::NamedBarrier::sync(128, 1 + consumer);
        for (int other = lowest; other < cta; ++other) {
          const float4* theirs = partials_of(other);
#pragma unroll
          for (int r = 0; r < kAcc / 4; ++r) {
            const float4 v = __ldcg(theirs + r * 128 + t);
            acc[4 * r] += v.x, acc[4 * r + 1] += v.y, acc[4 * r + 2] += v.z, acc[4 * r + 3] += v.w;
          }
        }
      }
      epilogue(tile_of<kTokens>(tile_index, p));
    }
#pragma unroll
    for (int r = 0; r < kAcc; ++r) acc[r] = 0.f;
  };

  uint32_t frag[2][4][4];  // two K steps' A fragments: one feeds the wgmmas, the other is decoded
  if constexpr (!kStreamK) {  // one tile (whole, or a part of a split one): K steps begin + i, i < steps
    if (walker) {  // whole tiles; the producer loads the next tile's first steps during the epilogue
      for (int tile_index = blockIdx.x; tile_index < p.whole_tiles; tile_index += p.walkers, base += k_steps) {
        decode(0, 0, frag[0]);
        int i = 0;
        for (; i + 1 < k_steps; i += 2) {
          step(i, i + 1, frag[0], frag[1], k_steps);
          step(i + 1, i + 2, frag[1], frag[0], k_steps);
        }
        if (i < k_steps) step(i, i + 1, frag[0], frag[1], k_steps);
        epilogue(tile_of<kTokens>(tile_index, p));
#pragma unroll
        for (int r = 0; r < kAcc; ++r) acc[r] = 0.f;
      }
      return;
    }
    const int tile_index = range.first_tile(), begin = range.first_step(tile_index);
    decode(0, begin, frag[0]);
    int i = 0;
    for (; i + 1 < steps; i += 2) {
      step(i, begin + i + 1, frag[0], frag[1], steps);
      step(i + 1, begin + i + 2, frag[1], frag[0], steps);
    }
    if (i < steps) step(i, begin + i + 1, frag[0], frag[1], steps);
    finish(tile_index, begin, begin + steps);
    return;
  }
  // Stream-K: the CTA's tiles from the last down.
  decode(0, range.first_step(range.last_tile()), frag[0]);
  int i = 0;  // the CTA's step: its stage is i % kStages
  for (int tile_index = range.last_tile(); tile_index >= range.first_tile(); --tile_index) {
    const int begin = range.first_step(tile_index), end = range.end_step(tile_index);
    const int last = i + end - begin, to_ks = begin - i;  // steps [i, last) are K steps [begin, end)
    const int after = tile_index > range.first_tile() ? range.first_step(tile_index - 1) : 0;  // next tile's first K step
    auto next_ks = [&](int s) { return s + 1 < last ? s + 1 + to_ks : after; };  // K step of step s + 1
    for (; i + 1 < last; i += 2) {
      step(i, next_ks(i), frag[0], frag[1], steps);
      step(i + 1, next_ks(i + 1), frag[1], frag[0], steps);
    }
    if (i < last) {
      step(i, next_ks(i), frag[0], frag[1], steps);
      ++i;
#pragma unroll
      for (int q = 0; q < 4; ++q)
#pragma unroll
        for (int r = 0; r < 4; ++r) frag[0][q][r] = frag[1][q][r];  // the next tile starts from frag[0]
    }
    finish(tile_index, begin, end);
  }
}

// The arguments of a TMA map (make_map): the map is a pure function of them.
struct MapKey {
  const void* base;
  int64_t rows, cols;
  int element_bytes, box_cols, box_rows;
  CUtensorMapSwizzle swizzle;

  bool operator==(const MapKey& o) const {
    return base == o.base && rows == o.rows && cols == o.cols && element_bytes == o.element_bytes &&
           box_cols == o.box_cols && box_rows == o.box_rows && swizzle == o.swizzle;
  }
  // A slot of the kept maps: the fields that vary between a model's maps (several weights, an
  // activation buffer reused at several M), mixed so that nearby addresses spread.
  size_t slot(size_t slots) const {
    uint64_t h = reinterpret_cast<uintptr_t>(base) ^ (uint64_t(rows) * 0x9E3779B97F4A7C15ull) ^
                 (uint64_t(cols) << 32) ^ uint64_t(box_rows) ^ (uint64_t(swizzle) << 16);
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
    return size_t(h % slots);
  }
};

struct KeptMap {
  MapKey key;  // base == nullptr: an empty slot (run refuses null operands)
  CUtensorMap map;
};

// Maps kept per thread, so that a model's repeated launches skip the driver's encode of their three
// maps (cuTensorMapEncodeTiled, each after CUTLASS's lookup of its entry point). Keyed by every
// argument a map is made from, so a kept map is the one the encode would give now, whatever memory
// lies at that address. Direct-mapped: a map replaces the one in its slot, so of n maps in use each
// stays in place with a probability of about exp(-n / kKeptMaps) (78 % at 1000 maps, the weights
// of 500 Linears); one that does not is encoded again. 768 KiB, allocated on a thread's first launch.
constexpr size_t kKeptMaps = 4096;

// A 2-D TMA map over a row-major [rows, cols] matrix of `element_bytes`-byte elements.
int make_map(CUtensorMap* map, const void* base, int64_t rows, int64_t cols, int element_bytes, int box_cols,
             int box_rows, CUtensorMapSwizzle swizzle) {
  thread_local const std::unique_ptr<KeptMap[]> kept(new (std::nothrow) KeptMap[kKeptMaps]());  // null: none kept
  const MapKey key{base, rows, cols, element_bytes, box_cols, box_rows, swizzle};
  KeptMap* slot = kept ? &kept[key.slot(kKeptMaps)] : nullptr;
  if (slot && slot->key == key) {
    *map = slot->map;
    return DQ_OK;
  }
  const cuuint64_t dims[2] = {cuuint64_t(cols), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(cols * element_bytes)};
  const cuuint32_t box[2] = {cuuint32_t(box_cols), cuuint32_t(box_rows)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = CUTLASS_CUDA_DRIVER_WRAPPER_CALL(cuTensorMapEncodeTiled)(
      map, element_bytes == 2 ? CU_TENSOR_MAP_DATA_TYPE_UINT16 : CU_TENSOR_MAP_DATA_TYPE_UINT8, 2,
      const_cast<void*>(base), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) return DQ_ERR_UNSUPPORTED;
  if (slot) *slot = KeptMap{key, *map};
  return DQ_OK;
}

template <Format F, bool kBf16, int kTokens, typename Out>
int launch_kernel(const void* a, const uint8_t* w_q, const uint8_t* w_s, const Problem& p, int64_t ctas, void* out,
                  cudaStream_t stream, bool after_cast) {
  const bool stream_k = p.shared_ctas && !p.parts;
  CUtensorMap a_map, w_map, s_map;
  if (int e = make_map(&a_map, a, p.M, p.K, 2, kTileK, kTokens, CU_TENSOR_MAP_SWIZZLE_128B)) return e;
  constexpr int kRowBytes = WeightTile<F>::kRowBytes;
  const int64_t w_cols = F == Format::kMxfp8 ? p.K : p.K / 2;
  if (int e = make_map(&w_map, w_q, p.N, w_cols, 1, kRowBytes, kRows, WeightTile<F>::kSwizzle)) return e;
  // The swizzled scales as rows of 16 bytes: a 512-byte scale tile is 32 of them.
  const int64_t scale_rows = int64_t((p.N + kRows - 1) / kRows) * p.scale_tiles_per_row * (kScaleTileBytes / 16);
  if (int e = make_map(&s_map, w_s, scale_rows, 16, 1, 16, 32, CU_TENSOR_MAP_SWIZZLE_NONE)) return e;
  auto kernel = stream_k ? mixed_gemm_kernel<F, kBf16, kTokens, Out, true> : mixed_gemm_kernel<F, kBf16, kTokens, Out, false>;
  constexpr int kSharedBytes = sizeof(SharedStorage<F, kTokens, Out>) + 1024;  // + alignment slack
  static_assert(kSharedBytes <= kSharedBytesLimit);
  if (cudaError_t e = allow_dynamic_shared_memory(kernel, kSharedBytes)) return e;
  return launch(kernel, dim3(ctas), dim3(kThreads), kSharedBytes, stream, after_cast, a_map, w_map, s_map, p,
                static_cast<Out*>(out));
}

template <Format F, bool kBf16, int kTokens>
int launch_out(const void* a, const uint8_t* w_q, const uint8_t* w_s, const Problem& p, int64_t ctas, void* out,
               int out_dtype, cudaStream_t stream, bool after_cast) {
  switch (out_dtype) {
    case DQ_FLOAT32: return launch_kernel<F, kBf16, kTokens, float>(a, w_q, w_s, p, ctas, out, stream, after_cast);
    case DQ_BFLOAT16:
      return launch_kernel<F, kBf16, kTokens, __nv_bfloat16>(a, w_q, w_s, p, ctas, out, stream, after_cast);
    case DQ_FLOAT16: return launch_kernel<F, kBf16, kTokens, __half>(a, w_q, w_s, p, ctas, out, stream, after_cast);
    default: return DQ_ERR_BAD_DTYPE;
  }
}

// How a problem runs: the token tile and the tiles CTAs share. One CTA fits per SM, so `tiles` CTAs
// would run in waves of sm_count(), the last one partly idle when the tiles do not fill it. Then
// either that wave's tiles are each split along K into up to kMaxParts parts (as many as the idle
// SMs allow), or, for fewer than two waves of tiles, all tiles are shared by one wave of CTAs
// (stream-K; only when the operands fit in L2, since its CTAs read unrelated K steps at any time). The CTAs add their float32 sums through a workspace:
// [shared CTA][consumer] arrival flags (rounded up to 16 bytes), then the partial sums.
struct Plan {
  int tokens;
  int64_t whole_tiles, shared_tiles, shared_ctas, parts, workspace_bytes;
  double cost;  // estimated time: K steps on the busiest SM times the token tile's cost per step, plus sharing's
};

// The estimated cost of sharing tiles, in K steps of the 256-token tile (scaled with the tile's
// partial sums): a CTA of a split tile stores its float32 sums or adds the others'; a stream-K CTA
// mostly does both (twice the cost). Calibrated on an H100 by A/B runs in both orders, bf16 output
// (shapes as M, N, K): with it, 512, 3072, 3072 is split in two (3-5 % faster than stream-K) and
// 512, 3072, 12288 takes stream-K (5-15 % faster than splitting in two). A tile is split into at
// most kMaxParts parts, and stream-K is taken only where that many CTAs per tile fill the SMs (an
// owner adds each lower CTA's sums in turn).
constexpr double kShareCost = 10.0;
constexpr int64_t kMaxParts = 4;

// The plan for token tile `tokens`, whose K step costs `step_cost`: every tile whole, or (if `share`)
// one of the two ways of sharing the last waves' tiles, whichever is estimated fastest.
Plan plan_for(int64_t M, int64_t N, int64_t K, int tokens, double step_cost, bool share) {
  const int64_t sms = sm_count(), k_steps = (K + kTileK - 1) / kTileK;
  const int64_t tiles = (N + kRows - 1) / kRows * ((M + tokens - 1) / tokens), tail = tiles % sms;
  Plan best{tokens, tiles, 0, 0, 0, 0, double((tiles + sms - 1) / sms) * double(k_steps) * step_cost};
  if (!share || tail == 0 || k_steps == 1) return best;
  auto consider = [&](int64_t shared_tiles, int64_t shared_ctas, int64_t parts) {
    Plan plan{tokens, tiles - shared_tiles, shared_tiles, shared_ctas, parts, 0, 0};
    // shared_tiles * k_steps stays small: at most 2 * sms tiles are shared
    const double busiest = double(plan.whole_tiles / sms) * double(k_steps) +
                           double((shared_tiles * k_steps + shared_ctas - 1) / shared_ctas);
    plan.cost = busiest * step_cost + kShareCost * tokens * (parts ? 1 : 2);
    plan.workspace_bytes = (shared_ctas * kConsumers * 4 + 15) / 16 * 16 + shared_ctas * kConsumers * (tokens / 2) * 128 * 4;
    if (plan.cost < best.cost) best = plan;
  };
  const int64_t parts = std::min({kMaxParts, sms / tail, k_steps});
  if (parts > 1) consider(tail, tail * parts, parts);
  // Stream-K for fewer than two waves of tiles (whole tiles before them would run its longer K
  // loop) and at least sms / kMaxParts of them, with the operand bytes (the bf16/f16 activation and
  // an MXFP8 weight; NVFP4's is half) within L2.
  if (tiles < 2 * sms && tiles * kMaxParts >= sms && M * K * 2 + N * K <= l2_bytes())
    consider(tiles, std::min(sms, tiles * k_steps), 0);
  return best;
}

// The plan for a problem: the token tile with the least estimated cost, where a K step of the
// smaller tiles costs more per token (the same weight decode and barriers for fewer MMAs), measured
// on an H100 at 4096 x 3072 x 3072: 1.45x (128) and 2.2x (64) the time per token of 256.
// `requested` (64, 128 or 256) fixes the token tile; without `share` (no workspace) every tile runs whole.
Plan choose_plan(int64_t M, int64_t N, int64_t K, int requested, bool share) {
  Plan best{};
  for (const auto [tokens, per_token] : {std::pair{256, 1.0}, std::pair{128, 1.45}, std::pair{64, 2.2}}) {
    if (requested && tokens != requested) continue;
    const Plan plan = plan_for(M, N, K, tokens, tokens * per_token, share);
    if (best.tokens == 0 || plan.cost < best.cost) best = plan;
  }
  return best;
}

// after_cast: see sm90_after_cast.h; a plan with shared tiles zeroes its flags between the cast and
// the GEMM, which then follows that as any launch does.
template <Format F, bool kBf16>
int launch_plan(const void* a, const uint8_t* w_q, const uint8_t* w_s, Problem p, const Plan& plan, void* workspace,
                void* out, int out_dtype, cudaStream_t stream, bool after_cast) {
  p.whole_tiles = int(plan.whole_tiles);
  p.shared_tiles = int(plan.shared_tiles);
  p.shared_ctas = int(plan.shared_ctas);
  p.parts = int(plan.parts);
  // Walkers run the whole tiles. The stream-K instance has no walker loop: its plans share every tile.
  if (plan.shared_ctas && !plan.parts && plan.whole_tiles) return DQ_ERR_UNSUPPORTED;
  p.walkers = int(std::min<int64_t>(plan.whole_tiles, sm_count()));
  if (plan.shared_ctas) {
    const int64_t flags = (plan.shared_ctas * kConsumers * 4 + 15) / 16 * 16;
    p.arrivals = static_cast<int*>(workspace);
    p.partials = reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) + flags);
    if (cudaError_t e = cudaMemsetAsync(workspace, 0, flags, stream)) return e;
    after_cast = false;
  }
  const int64_t ctas = p.walkers + plan.shared_ctas;
  switch (plan.tokens) {
    case 256: return launch_out<F, kBf16, 256>(a, w_q, w_s, p, ctas, out, out_dtype, stream, after_cast);
    case 128: return launch_out<F, kBf16, 128>(a, w_q, w_s, p, ctas, out, out_dtype, stream, after_cast);
    default: return launch_out<F, kBf16, 64>(a, w_q, w_s, p, ctas, out, out_dtype, stream, after_cast);
  }
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Shared argument checks and the launch for a weight of format F.
template <Format F>
int run(const void* a, int a_dtype, const uint8_t* w_q, const uint8_t* w_s, const float* alpha_a,
        const float* alpha_b, const void* bias, int bias_dtype, void* out, int64_t M, int64_t N, int64_t K,
        int out_dtype, int tokens, void* workspace, int64_t workspace_bytes, void* stream, bool after_cast) {
  if (!a || !w_q || !w_s || !out) return DQ_ERR_NULL_POINTER;
  // Tile coordinates, row indices, the CTA index and TMA's coordinates are int: keep M and N a
  // tile below INT32_MAX, the CTA count (at the smallest token tile, with room for the shared tiles)
  // within the 1-D grid and the 16-byte rows of the scales within TMA's reach.
  const int block = F == Format::kMxfp8 ? 32 : 16;
  const int64_t scale_tiles_per_row = swizzled_padded_cols(K / block) / 4;
  if (M < 1 || N < 1 || K < 32 || K % 32 != 0 || N % 8 != 0 || M > INT32_MAX - 256 || N > INT32_MAX - kRows ||
      K > INT32_MAX - kTileK || (N + kRows - 1) / kRows * ((M + 63) / 64) > INT32_MAX / 2 ||
      (N + kRows - 1) / kRows * scale_tiles_per_row * 32 > INT32_MAX)
    return DQ_ERR_BAD_SHAPE;
  if (a_dtype != DQ_BFLOAT16 && a_dtype != DQ_FLOAT16) return DQ_ERR_BAD_DTYPE;
  if (!bias_dtype_ok(bias, bias_dtype)) return DQ_ERR_BAD_DTYPE;
  if (tokens != 0 && tokens != 64 && tokens != 128 && tokens != 256) return DQ_ERR_BAD_CONFIG;
  for (const void* ptr : {a, static_cast<const void*>(w_q), static_cast<const void*>(w_s),
                          bias, static_cast<const void*>(out),
                          static_cast<const void*>(workspace)})
    if (!aligned16(ptr)) return DQ_ERR_MISALIGNED;
  const Plan plan = choose_plan(M, N, K, tokens, workspace != nullptr);
  if (workspace_bytes < plan.workspace_bytes) return DQ_ERR_BAD_CONFIG;
  const Problem p{alpha_a, alpha_b, Bias{bias, bias_dtype}, int(M), int(N), int(K), int(scale_tiles_per_row),
                  0, 0, 0, 0, 0, nullptr, nullptr};
  auto s = static_cast<cudaStream_t>(stream);
  if (a_dtype == DQ_BFLOAT16)
    return launch_plan<F, true>(a, w_q, w_s, p, plan, workspace, out, out_dtype, s, after_cast);
  if constexpr (F == Format::kNvfp4)
    return launch_plan<F, false>(a, w_q, w_s, p, plan, workspace, out, out_dtype, s, after_cast);
  return DQ_ERR_BAD_DTYPE;  // MXFP8 decodes to bf16 only
}

}  // namespace
}  // namespace dq::sm90_mixed

extern "C" int dq_sm90_mixed_mm_plan(int64_t M, int64_t N, int64_t K, int tokens, int* tokens_out,
                                    int64_t* shared_tiles, int64_t* shared_ctas, int64_t* parts,
                                    int64_t* workspace_bytes) {
  using namespace dq::sm90_mixed;
  if (!tokens_out || !shared_tiles || !shared_ctas || !parts || !workspace_bytes) return DQ_ERR_NULL_POINTER;
  if (M < 1 || N < 1 || K < 32 || K % 32 != 0 || N % 8 != 0 || M > INT32_MAX - 256 || N > INT32_MAX - kRows ||
      K > INT32_MAX - kTileK)
    return DQ_ERR_BAD_SHAPE;
  if (tokens != 0 && tokens != 64 && tokens != 128 && tokens != 256) return DQ_ERR_BAD_CONFIG;
  const Plan plan = choose_plan(M, N, K, tokens, true);
  *tokens_out = plan.tokens;
  *shared_tiles = plan.shared_tiles;
  *shared_ctas = plan.shared_ctas;
  *parts = plan.parts;
  *workspace_bytes = plan.workspace_bytes;
  return DQ_OK;
}

int dq::sm90_mxfp8_mixed_mm(const void* a, const uint8_t* b_q, const uint8_t* b_s, const void* bias, int bias_dtype,
                            void* out, int64_t M, int64_t N, int64_t K, int out_dtype, int tokens, void* workspace,
                            int64_t workspace_bytes, void* stream, bool after_cast) {
  using namespace dq::sm90_mixed;
  return run<Format::kMxfp8>(a, DQ_BFLOAT16, b_q, b_s, nullptr, nullptr, bias, bias_dtype, out, M, N, K, out_dtype,
                             tokens, workspace, workspace_bytes, stream, after_cast);
}

int dq::sm90_nvfp4_mixed_mm(const void* a, int a_dtype, const uint8_t* b_q, const uint8_t* b_s, const float* a_ts,
                            const float* b_ts, const void* bias, int bias_dtype, void* out, int64_t M, int64_t N,
                            int64_t K, int out_dtype, int tokens, void* workspace, int64_t workspace_bytes,
                            void* stream, bool after_cast) {
  using namespace dq::sm90_mixed;
  if (!b_ts) return DQ_ERR_NULL_POINTER;
  return run<Format::kNvfp4>(a, a_dtype, b_q, b_s, a_ts, b_ts, bias, bias_dtype, out, M, N, K, out_dtype, tokens,
                             workspace, workspace_bytes, stream, after_cast);
}

extern "C" int dq_sm90_mxfp8_mixed_mm(const void* a, const uint8_t* b_q, const uint8_t* b_s, const void* bias,
                                      int bias_dtype, void* out, int64_t M, int64_t N, int64_t K, int out_dtype,
                                      int tokens, void* workspace, int64_t workspace_bytes, void* stream) {
  return dq::sm90_mxfp8_mixed_mm(a, b_q, b_s, bias, bias_dtype, out, M, N, K, out_dtype, tokens, workspace,
                                 workspace_bytes, stream, false);
}

extern "C" int dq_sm90_nvfp4_mixed_mm(const void* a, int a_dtype, const uint8_t* b_q, const uint8_t* b_s,
                                      const float* a_ts, const float* b_ts, const void* bias, int bias_dtype,
                                      void* out, int64_t M, int64_t N, int64_t K, int out_dtype, int tokens,
                                      void* workspace, int64_t workspace_bytes, void* stream) {
  return dq::sm90_nvfp4_mixed_mm(a, a_dtype, b_q, b_s, a_ts, b_ts, bias, bias_dtype, out, M, N, K, out_dtype, tokens,
                                 workspace, workspace_bytes, stream, false);
}

// sm90_mxfp8_gemm.cu: the exact MXFP8 GEMM for Hopper (sm_90a), behind dq_sm90_mxfp8_mm.
//
//   out[m, n] = sum_k A[m, k] * B[n, k] * 2^(ea[m, k / 32] + eb[n, k / 32] - 254) + bias[n]
//
// Hopper has no block-scaled MMA, but its FP8 wgmma (m64nNk32) covers exactly one MX block of 32
// along K. So each 32-wide K slice runs one wgmma into a fresh float32 "partial" accumulator, and
// the partial is then added into the main accumulator scaled by its two block scales on the CUDA
// cores ("promotion"): acc = fma(partial, sa[m] * sb[n], acc). That is the MXFP8 product up to the
// float32 accumulation order and the wgmma's own summation of a slice's 32 products (less precise
// than float32: 4.5e-5 relative to the float32 reference at 4096 x 3072 x 3072), with scale bytes 0
// and 254 included, as long as each scale product 2^(ea + eb - 254) is a float32: ea + eb <= 381
// (beyond, it is inf and so is the result; no real tensor has two scales above 2^63). Promotion costs two float32 instructions per accumulator element per 32 K, twice the
// tensor-core time of the slice, so the design's ceiling is the bf16 wgmma rate; it gets near it
// only if the promotions never leave the tensor cores idle:
//   - each consumer warpgroup splits its 64 x 128 output into two 64-column halves, each a
//     separate wgmma (m64n64k32) into its own partial, and issues the next half's wgmma before it
//     promotes the previous one, so one wgmma is always in flight during a promotion (64 + 2 x 32
//     accumulator registers per thread: full-width double buffering would need 192, more than
//     ptxas gives a 384-thread CTA);
//   - two consumer warpgroups share the tensor cores, so one's MMAs also fill the other's gaps;
//   - a producer warp streams A, B and both scale tiles with TMA through a ring of stages.
//
// CTA tile 128 (M) x 128 (N) x 128 (K, four MX blocks); consumer warpgroup c owns rows
// 64c .. 64c + 63 of the tile and all 128 columns, as two halves of 64 columns: wgmma m64n64k32,
// both operands K-major in shared memory with the 128-byte swizzle (TMA writes it, the wgmma
// descriptors read it).
//
// Scales: for a 128-row tile and a 128-wide K step, the canonical 128x4 swizzled layout
// (scale_layout.cuh) stores the 4 x 128 scale bytes as one contiguous 512-byte tile, so each stage
// gets its scales with two 512-byte bulk copies. Each consumer warpgroup decodes them once per K
// step into float32 tables in shared memory (double-buffered by K-step parity), which its
// promotions then read.
//
// Edges: TMA fills rows past M or N and columns past K with zeros, and the scale buffers are padded
// to 128 rows and 4 columns (canonical layout), so every load stays in bounds. The last K step skips
// the 32-wide slices past K (their padded scale bytes are never read). Stores are masked to M x N.
#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "cute/arch/copy_sm90_tma.hpp"
#include "cute/arch/mma_sm90_desc.hpp"
#include "cute/arch/mma_sm90_gmma.hpp"
#include "cutlass/arch/barrier.h"
#include "cutlass/arch/reg_reconfig.h"
#include "cutlass/cuda_host_adapter.hpp"
#include "decode.cuh"
#include "dq_kernels.h"
#include "scale_layout.cuh"

namespace dq::sm90 {
namespace {

constexpr int kTileM = 128;
constexpr int kTileN = 128;
constexpr int kTileK = 128;   // elements (= bytes) of K per stage: four MX blocks
constexpr int kBlock = 32;    // MX block along K, and the K of one FP8 wgmma
constexpr int kSlices = kTileK / kBlock;
constexpr int kStages = 6;
constexpr int kConsumers = 2;              // consumer warpgroups, 64 rows of the tile each
constexpr int kRowsPerConsumer = kTileM / kConsumers;
constexpr int kThreads = 128 * (1 + kConsumers);  // warpgroup 0 is the producer
constexpr int kScaleTileBytes = 512;       // 128 rows x 4 scale columns, canonical layout
constexpr int kHalfN = kTileN / 2;         // columns of one wgmma: the unit of MMA and promotion
constexpr int kHalfRegs = kRowsPerConsumer * kHalfN / 128;  // float32 per thread per half: 32

using Wgmma = cute::SM90::GMMA::MMA_64x64x32_F32E4M3E4M3_SS_TN<>;
static_assert(kHalfRegs == 32, "the wgmma below is m64n64: 32 accumulator registers per thread");

// One stage of the load ring. Each operand tile is 1024-byte aligned (the 128-byte swizzle's period).
struct alignas(1024) Stage {
  uint8_t a[kTileM * kTileK];  // A rows m0 .. m0 + 127, K columns k0 .. k0 + 127, swizzled
  uint8_t b[kTileN * kTileK];  // B rows n0 .. n0 + 127
  uint8_t a_scales[kScaleTileBytes];
  uint8_t b_scales[kScaleTileBytes];
};

// Decoded scales of one K step for one consumer warpgroup: [slice][row or column].
struct ScaleTables {
  float a[kSlices][kRowsPerConsumer];
  float b[kSlices][kTileN];
};

struct SharedStorage {
  Stage stages[kStages];
  ScaleTables tables[kConsumers][2];  // [consumer][K-step parity]
  cutlass::arch::ClusterTransactionBarrier full[kStages];  // the producer's TMA bytes have landed
  cutlass::arch::ClusterBarrier empty[kStages];            // every consumer warp is done with it
};

constexpr int kStageBytes = 2 * kTileM * kTileK + 2 * kScaleTileBytes;  // TMA bytes per stage
constexpr uint64_t kEvictNormal = 0x1000000000000000ull;                // CacheHintSm90::EVICT_NORMAL
constexpr int kSharedBytes = sizeof(SharedStorage) + 1024;              // + alignment slack

// A wgmma shared-memory descriptor for a K-major operand tile written by TMA with the 128-byte
// swizzle: rows of 128 bytes, 8-row groups 1024 bytes apart. `address` is the shared-memory byte
// address of the slice's first row, already advanced by the slice's byte offset along K.
__device__ __forceinline__ uint64_t sw128_descriptor(uint32_t address) {
  cute::GmmaDescriptor desc;
  desc.bitfield.start_address_ = address >> 4;
  desc.bitfield.leading_byte_offset_ = 1;      // unused by swizzled K-major layouts
  desc.bitfield.stride_byte_offset_ = 1024 >> 4;
  desc.bitfield.base_offset_ = 0;              // tiles are 1024-byte aligned
  desc.bitfield.layout_type_ = 1;              // SWIZZLE_128B
  return desc.desc_;
}

template <size_t... I>
__device__ __forceinline__ void wgmma_zero_init(uint64_t da, uint64_t db, float (&d)[kHalfRegs],
                                                std::index_sequence<I...>) {
  Wgmma::fma(da, db, d[I]..., cute::SM90::GMMA::ScaleOut::Zero);
}

template <int N>
__device__ __forceinline__ void fence(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) cute::warpgroup_fence_operand(r[i]);
}

// Issues partial = A_slice x B_half^T: one m64n64k32 wgmma over 32-wide K slice `slice` of the
// stage, this warpgroup's 64 rows of A and columns 64 * half .. 64 * half + 63 of the tile; the
// partial's old value is ignored.
__device__ __forceinline__ void issue(const Stage& stage, int consumer, int slice, int half,
                                      float (&partial)[kHalfRegs]) {
  const uint32_t a = cute::cast_smem_ptr_to_uint(stage.a) + consumer * kRowsPerConsumer * kTileK + slice * kBlock;
  const uint32_t b = cute::cast_smem_ptr_to_uint(stage.b) + half * kHalfN * kTileK + slice * kBlock;
  fence(partial);
  cute::warpgroup_arrive();
  wgmma_zero_init(sw128_descriptor(a), sw128_descriptor(b), partial, std::make_index_sequence<kHalfRegs>{});
  cute::warpgroup_commit_batch();
}

// The block scales one promotion needs, loaded into registers before the wait for the wgmma (so
// their latency hides under it): sa for the thread's two rows, sb for its 16 columns of the half.
struct UnitScales {
  float a0, a1;
  float2 b[kHalfRegs / 4];
};

// The wgmma accumulator layout (m64n64): register 4q + h of thread (warp w, lane l) holds row
// 16w + l / 4 + 8 * (h / 2) and column 8q + 2 * (l % 4) + h % 2 of the warpgroup's 64 x 64 output.
__device__ __forceinline__ UnitScales load_scales(const ScaleTables& t, int slice, int half, int warp, int lane) {
  UnitScales u;
  const int row = 16 * warp + lane / 4;
  u.a0 = t.a[slice][row];
  u.a1 = t.a[slice][row + 8];
#pragma unroll
  for (int q = 0; q < kHalfRegs / 4; ++q)
    u.b[q] = *reinterpret_cast<const float2*>(&t.b[slice][half * kHalfN + 8 * q + 2 * (lane % 4)]);
  return u;
}

// acc_half += partial * sa[row] * sb[col] for one finished wgmma.
__device__ __forceinline__ void promote(float* acc_half, float (&partial)[kHalfRegs], const UnitScales& u) {
  fence(partial);
#pragma unroll
  for (int q = 0; q < kHalfRegs / 4; ++q) {
    acc_half[4 * q + 0] = fmaf(partial[4 * q + 0], u.a0 * u.b[q].x, acc_half[4 * q + 0]);
    acc_half[4 * q + 1] = fmaf(partial[4 * q + 1], u.a0 * u.b[q].y, acc_half[4 * q + 1]);
    acc_half[4 * q + 2] = fmaf(partial[4 * q + 2], u.a1 * u.b[q].x, acc_half[4 * q + 2]);
    acc_half[4 * q + 3] = fmaf(partial[4 * q + 3], u.a1 * u.b[q].y, acc_half[4 * q + 3]);
  }
}

// Decodes the stage's scale tiles into this warpgroup's tables (thread t: column t of B and, for
// t < 64, row 64c + t of A). In a 512-byte scale tile, the 4 scale bytes of tile row r are the
// 32-bit word at (r % 32) * 16 + (r / 32) * 4. Slices from `valid_slices` on lie past K: their
// data is TMA's zero fill and their scales are set to 0, so they add exactly 0 whatever the
// padding bytes hold.
__device__ __forceinline__ void decode_scales(const Stage& stage, int consumer, int t, int valid_slices,
                                              ScaleTables& out) {
  auto word = [](const uint8_t* tile, int r) {
    return *reinterpret_cast<const uint32_t*>(tile + (r % 32) * 16 + (r / 32) * 4);
  };
  const uint32_t b = word(stage.b_scales, t);
#pragma unroll
  for (int s = 0; s < kSlices; ++s) out.b[s][t] = s < valid_slices ? decode_e8m0((b >> (8 * s)) & 0xFF) : 0.f;
  if (t < kRowsPerConsumer) {
    const uint32_t a = word(stage.a_scales, consumer * kRowsPerConsumer + t);
#pragma unroll
    for (int s = 0; s < kSlices; ++s) out.a[s][t] = s < valid_slices ? decode_e8m0((a >> (8 * s)) & 0xFF) : 0.f;
  }
}

template <typename Out>
__device__ __forceinline__ void store_pair(Out* p, float x, float y);
template <>
__device__ __forceinline__ void store_pair<float>(float* p, float x, float y) {
  *reinterpret_cast<float2*>(p) = make_float2(x, y);
}
template <>
__device__ __forceinline__ void store_pair<__nv_bfloat16>(__nv_bfloat16* p, float x, float y) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(x, y);
}
template <>
__device__ __forceinline__ void store_pair<__half>(__half* p, float x, float y) {
  *reinterpret_cast<__half2*>(p) = __floats2half2_rn(x, y);
}

struct Problem {
  const uint8_t* a_s;
  const uint8_t* b_s;
  const float* bias;
  int M, N, K;
  int scale_tiles_per_row;  // round_up(K / 32, 4) / 4: 512-byte scale tiles per 128-row block
};

template <typename Out>
__global__ void __launch_bounds__(kThreads, 1)
    mxfp8_gemm_kernel(const __grid_constant__ CUtensorMap a_map, const __grid_constant__ CUtensorMap b_map,
                      const Problem p, Out* __restrict__ out) {
  extern __shared__ uint8_t smem_raw[];
  // Aligned by pointer arithmetic on smem_raw, so the compiler still knows it is shared memory.
  const uint32_t misalignment = cute::cast_smem_ptr_to_uint(smem_raw) % 1024;
  SharedStorage& smem = *reinterpret_cast<SharedStorage*>(smem_raw + (1024 - misalignment) % 1024);

  const int m_tile = blockIdx.x, n_tile = blockIdx.y;
  const int k_steps = (p.K + kTileK - 1) / kTileK;
  const int k_slices = p.K / kBlock;
  const int warpgroup = threadIdx.x / 128;
  const int lane = threadIdx.x % 32;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      smem.full[s].init(1);
      smem.empty[s].init(kConsumers * 4);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  if (warpgroup == 0) {  // producer: one thread issues every load
    cutlass::arch::warpgroup_reg_dealloc<40>();
    if (threadIdx.x == 0) {
      const uint8_t* a_scales = p.a_s + int64_t(m_tile) * p.scale_tiles_per_row * kScaleTileBytes;
      const uint8_t* b_scales = p.b_s + int64_t(n_tile) * p.scale_tiles_per_row * kScaleTileBytes;
      for (int ks = 0; ks < k_steps; ++ks) {
        const int s = ks % kStages;
        smem.empty[s].wait(((ks / kStages) & 1) ^ 1);
        Stage& stage = smem.stages[s];
        uint64_t* bar = reinterpret_cast<uint64_t*>(&smem.full[s]);
        smem.full[s].arrive_and_expect_tx(kStageBytes);
        cute::SM90_TMA_LOAD_2D::copy(&a_map, bar, kEvictNormal, stage.a, ks * kTileK, m_tile * kTileM);
        cute::SM90_TMA_LOAD_2D::copy(&b_map, bar, kEvictNormal, stage.b, ks * kTileK, n_tile * kTileN);
        cute::SM90_BULK_COPY_G2S::copy(a_scales + ks * kScaleTileBytes, bar, stage.a_scales, kScaleTileBytes);
        cute::SM90_BULK_COPY_G2S::copy(b_scales + ks * kScaleTileBytes, bar, stage.b_scales, kScaleTileBytes);
      }
    }
    return;
  }

  cutlass::arch::warpgroup_reg_alloc<232>();
  const int consumer = warpgroup - 1;
  const int t = threadIdx.x % 128;
  const int warp = t / 32;
  // acc[64 * half + i]: the two 64-column halves of the warpgroup's 64 x 128 output, each in the
  // m64n64 accumulator layout. partial[h] receives the wgmmas of half h. Within a K step the eight
  // units (slice j, half h), slice-major, keep one wgmma in flight while the one before is
  // promoted: issue unit u, wait for unit u - 1, promote it. The step ends with every wgmma done
  // (ptxas serializes all wgmmas when one is still in flight across a loop back edge).
  float acc[2 * kHalfRegs], partial[2][kHalfRegs];
#pragma unroll
  for (int i = 0; i < 2 * kHalfRegs; ++i) acc[i] = 0.f;

  for (int ks = 0; ks < k_steps; ++ks) {
    const int s = ks % kStages;
    const Stage& stage = smem.stages[s];
    ScaleTables& tables = smem.tables[consumer][ks & 1];
    smem.full[s].wait((ks / kStages) & 1);
    issue(stage, consumer, 0, 0, partial[0]);
    // `tables` was last read two K steps ago, before every thread of this warpgroup reached the
    // barrier below in the previous step; the barrier makes this step's decode visible to all.
    decode_scales(stage, consumer, t, k_slices - ks * kSlices, tables);
    cutlass::arch::NamedBarrier::sync(128, 1 + consumer);
#pragma unroll
    for (int unit = 1; unit < 2 * kSlices; ++unit) {
      const int slice = unit / 2, half = unit % 2;
      issue(stage, consumer, slice, half, partial[half]);
      const UnitScales u = load_scales(tables, (unit - 1) / 2, 1 - half, warp, lane);
      cute::warpgroup_wait<1>();
      promote(acc + (1 - half) * kHalfRegs, partial[1 - half], u);
    }
    const UnitScales u = load_scales(tables, kSlices - 1, 1, warp, lane);
    cute::warpgroup_wait<0>();
    // decode_scales read the stage's scale bytes through the generic proxy; the producer's next
    // bulk copies into the stage write through the async proxy: order them across proxies.
    cutlass::arch::fence_view_async_shared();
    if (lane == 0) smem.empty[s].arrive();  // every wgmma reading the stage is done
    promote(acc + kHalfRegs, partial[1], u);
  }

  // Epilogue: out = acc + bias, rounded once; each thread writes column pairs of two rows.
  const int row0 = m_tile * kTileM + consumer * kRowsPerConsumer + 16 * warp + lane / 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
#pragma unroll
    for (int q = 0; q < kHalfRegs / 4; ++q) {
      const float* v = acc + half * kHalfRegs + 4 * q;
      const int col = n_tile * kTileN + half * kHalfN + 8 * q + 2 * (lane % 4);
      if (col >= p.N) continue;  // N is even, so col + 1 < N too
      const float b0 = p.bias ? p.bias[col] : 0.f;
      const float b1 = p.bias ? p.bias[col + 1] : 0.f;
      if (row0 < p.M) store_pair(out + int64_t(row0) * p.N + col, v[0] + b0, v[1] + b1);
      if (row0 + 8 < p.M) store_pair(out + int64_t(row0 + 8) * p.N + col, v[2] + b0, v[3] + b1);
    }
  }
}

// A 2-D TMA map over a row-major [rows, K] byte matrix with 128 x 128 boxes and the 128-byte swizzle.
int make_operand_map(CUtensorMap* map, const uint8_t* base, int64_t rows, int64_t K) {
  const cuuint64_t dims[2] = {cuuint64_t(K), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(K)};
  const cuuint32_t box[2] = {kTileK, kTileM};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = CUTLASS_CUDA_DRIVER_WRAPPER_CALL(cuTensorMapEncodeTiled)(
      map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<uint8_t*>(base), dims, strides, box, element_strides,
      CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? DQ_OK : DQ_ERR_UNSUPPORTED;
}

template <typename Out>
int launch(const CUtensorMap& a_map, const CUtensorMap& b_map, const Problem& p, void* out, cudaStream_t stream) {
  auto kernel = mxfp8_gemm_kernel<Out>;
  // The attribute belongs to the current device's context: set it on every launch (it is cheap).
  if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes))
    return e;
  const dim3 grid((p.M + kTileM - 1) / kTileM, (p.N + kTileN - 1) / kTileN);
  kernel<<<grid, kThreads, kSharedBytes, stream>>>(a_map, b_map, p, static_cast<Out*>(out));
  return cudaGetLastError();
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace
}  // namespace dq::sm90

extern "C" int dq_sm90_mxfp8_mm(const uint8_t* a_q, const uint8_t* a_s, const uint8_t* b_q, const uint8_t* b_s,
                                const float* bias, void* out, int64_t M, int64_t N, int64_t K, int out_dtype,
                                void* stream) {
  using namespace dq::sm90;
  if (!a_q || !a_s || !b_q || !b_s || !out) return DQ_ERR_NULL_POINTER;
  // Tile coordinates and row indices are int: keep M a tile below INT32_MAX (N is bounded by the
  // 65535 tile columns of the grid).
  if (M < 1 || N < 1 || K < kBlock || K % kBlock != 0 || N % 8 != 0 || M > INT32_MAX - kTileM ||
      K > INT32_MAX || (N + kTileN - 1) / kTileN > 65535)
    return DQ_ERR_BAD_SHAPE;
  for (const void* ptr : {static_cast<const void*>(a_q), static_cast<const void*>(a_s),
                          static_cast<const void*>(b_q), static_cast<const void*>(b_s),
                          static_cast<const void*>(bias), static_cast<const void*>(out)})
    if (!aligned16(ptr)) return DQ_ERR_MISALIGNED;

  CUtensorMap a_map, b_map;
  if (int e = make_operand_map(&a_map, a_q, M, K)) return e;
  if (int e = make_operand_map(&b_map, b_q, N, K)) return e;
  const Problem p{a_s, b_s, bias, int(M), int(N), int(K), int(dq::swizzled_padded_cols(K / kBlock) / 4)};
  auto s = static_cast<cudaStream_t>(stream);
  switch (out_dtype) {
    case DQ_FLOAT32: return launch<float>(a_map, b_map, p, out, s);
    case DQ_BFLOAT16: return launch<__nv_bfloat16>(a_map, b_map, p, out, s);
    case DQ_FLOAT16: return launch<__half>(a_map, b_map, p, out, s);
    default: return DQ_ERR_BAD_DTYPE;
  }
}

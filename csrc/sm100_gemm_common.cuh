// sm100_gemm_common.cuh: the CUTLASS 4.2 block-scaled GEMM behind dq_sm100_{mxfp8,nvfp4}_mm, for
// Blackwell sm_100a (tcgen05 block-scaled MMA). sm100_mxfp8_gemm.cu and sm100_nvfp4_gemm.cu each
// instantiate it for one format; everything else (kernel types, argument building, checks, the tile
// heuristic) is here, once.
//
// The product, for canonical operands (dq_kernels/formats.py):
//   out[m, n] = alpha * sum_k A[m, k] * B[n, k] + bias[n]
//   A:     [M, K] row-major (K contiguous): CUTLASS RowMajor A.
//   B:     [N, K] row-major (K contiguous), like a Linear weight: CUTLASS ColumnMajor B (K-major).
//   scales of A and B: the 128x4 swizzled layout of scale_layout.cuh, which is the layout CUTLASS
//          builds with Sm1xxBlkScaledConfig::tile_atom_to_shape_SFA / _SFB for the problem shape
//          (checked on the CPU: dq_sm100_*_mm_plan reports CUTLASS's offsets, and
//          python_tests/test_sm100.py compares them with dq_kernels.formats.to_blocked).
//          Rows are padded to 128 and scale columns to 4 in the buffers; qdata is not padded: TMA
//          loads zeros past M, N and K.
//   alpha: a_ts * b_ts read from device memory in the epilogue (NVFP4), or 1 (MXFP8).
//   bias:  float32 [N] or none; out: bfloat16 or float32 [M, N] row-major.
// The accumulator is float32; the epilogue computes fma(alpha, acc, bias) in float32 and rounds once.
//
// Two tile configurations per format and output dtype (4 kernels per format):
//   DQ_SM100_CONFIG_1SM: one CTA per 128 x 128 output tile (cluster 1x1).
//   DQ_SM100_CONFIG_2SM: a 2-CTA cluster per 256 x 128 output tile (tcgen05 2-SM MMA, cluster 2x1:
//                        each CTA holds 128 rows of A and half of the tile's 128 rows of B).
// The K step is 128 elements for MXFP8 (128 bytes) and 256 for NVFP4 (128 bytes).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"
#include "dq_kernels.h"

namespace dq::sm100 {

using namespace cute;

// ------------------------------------------------------------------------------------------------
// Formats
// ------------------------------------------------------------------------------------------------

struct Mxfp8 {
  using ElementPair = cutlass::mx_float8_t<cutlass::float_e4m3_t>;  // e4m3 data, E8M0 scale per 32
  static constexpr int kBlock = 32;                                  // elements per scale
  static constexpr int kTileK = 128;                                 // elements per K step
  static constexpr int kAlignment = 16;                              // elements in 16 bytes (TMA)
  using Schedule1Sm = cutlass::gemm::KernelTmaWarpSpecialized1SmMxf8f6f4Sm100;
  using Schedule2Sm = cutlass::gemm::KernelTmaWarpSpecialized2SmMxf8f6f4Sm100;
};

struct Nvfp4 {
  using ElementPair = cutlass::nv_float4_t<cutlass::float_e2m1_t>;  // e2m1 data, e4m3 scale per 16
  static constexpr int kBlock = 16;
  static constexpr int kTileK = 256;
  static constexpr int kAlignment = 32;
  using Schedule1Sm = cutlass::gemm::KernelTmaWarpSpecialized1SmNvf4Sm100;
  using Schedule2Sm = cutlass::gemm::KernelTmaWarpSpecialized2SmNvf4Sm100;
};

// ------------------------------------------------------------------------------------------------
// The kernel of one (format, output dtype, tile configuration)
// ------------------------------------------------------------------------------------------------

// The epilogue: out = fma(alpha, acc, bias[n]) rounded to Out, with alpha the product of two scalars
// (each read from its pointer when that is not null, else taken from the arguments) and bias a row
// vector along N (zero when its pointer is null). CtaTile is the output tile of one CTA.
template <class Out, class CtaTile>
using AlphaAccBias = cutlass::epilogue::fusion::Sm90EVT<
    cutlass::epilogue::fusion::Sm90Compute<cutlass::homogeneous_multiply_add, Out, float,
                                           cutlass::FloatRoundStyle::round_to_nearest>,
    cutlass::epilogue::fusion::Sm90ScalarBroadcast<float, Stride<_0, _0, _0>, 2>,  // alpha = s0 * s1
    cutlass::epilogue::fusion::Sm90AccFetch,                                         // acc
    cutlass::epilogue::fusion::Sm90RowBroadcast<0, CtaTile, float, float, Stride<_0, _1, int64_t>, 4>>;  // bias

template <class Format, class Out, bool kTwoSm>
struct Kernel {
  using MmaTile = Shape<Int<kTwoSm ? 256 : 128>, _128, Int<Format::kTileK>>;
  using ClusterShape = Shape<Int<kTwoSm ? 2 : 1>, _1, _1>;
  using CtaTile = Shape<_128, _128, Int<Format::kTileK>>;  // a 2-SM MMA tile splits M over 2 CTAs
  using MainloopSchedule = std::conditional_t<kTwoSm, typename Format::Schedule2Sm, typename Format::Schedule1Sm>;
  using EpilogueSchedule =
      std::conditional_t<kTwoSm, cutlass::epilogue::TmaWarpSpecialized2Sm, cutlass::epilogue::TmaWarpSpecialized1Sm>;
  static constexpr int kAlignmentOut = 16 / sizeof(Out);  // elements in 16 bytes (TMA)

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm100, cutlass::arch::OpClassBlockScaledTensorOp, MmaTile, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,  // accumulator, epilogue compute
      void, cutlass::layout::RowMajor, kAlignmentOut,                 // no C operand
      Out, cutlass::layout::RowMajor, kAlignmentOut,                  // D = out [M, N]
      EpilogueSchedule, AlphaAccBias<Out, CtaTile>>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm100, cutlass::arch::OpClassBlockScaledTensorOp,
      typename Format::ElementPair, cutlass::layout::RowMajor, Format::kAlignment,     // A [M, K]
      typename Format::ElementPair, cutlass::layout::ColumnMajor, Format::kAlignment,  // B [N, K]
      float, MmaTile, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      MainloopSchedule>::CollectiveOp;

  using GemmKernel =
      cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue, void>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;
  using Arguments = typename Gemm::Arguments;
};

// ------------------------------------------------------------------------------------------------
// Arguments
// ------------------------------------------------------------------------------------------------

// Device pointers of one call (all null when only the layouts are wanted, as in plan()).
struct Operands {
  const uint8_t* a_q = nullptr;  // [M, K] elements
  const uint8_t* a_s = nullptr;  // swizzled scales of A
  const uint8_t* b_q = nullptr;  // [N, K] elements
  const uint8_t* b_s = nullptr;  // swizzled scales of B
  const float* alpha_factors[2] = {nullptr, nullptr};  // NVFP4: a_ts, b_ts; null: 1
  const float* bias = nullptr;                         // [N] or null
  void* out = nullptr;                                 // [M, N]
};

inline Operands make_operands(const uint8_t* a_q, const uint8_t* a_s, const float* a_ts, const uint8_t* b_q,
                              const uint8_t* b_s, const float* b_ts, const float* bias, void* out) {
  Operands ops;
  ops.a_q = a_q;
  ops.a_s = a_s;
  ops.b_q = b_q;
  ops.b_s = b_s;
  ops.alpha_factors[0] = a_ts;
  ops.alpha_factors[1] = b_ts;
  ops.bias = bias;
  ops.out = out;
  return ops;
}

// The CUTLASS arguments for out = A @ B^T with packed (dense, row-major) operands. Strides are in
// elements (an NVFP4 row of K elements is K / 2 bytes).
template <class KernelT>
typename KernelT::Arguments make_arguments(const Operands& ops, int M, int N, int K) {
  using Mainloop = typename KernelT::CollectiveMainloop;
  using ScaleConfig = typename Mainloop::Sm1xxBlkScaledConfig;
  using GemmKernel = typename KernelT::GemmKernel;
  typename KernelT::Arguments args{};
  const auto problem = make_shape(M, N, K, 1);
  args.mode = cutlass::gemm::GemmUniversalMode::kGemm;
  args.problem_shape = problem;

  auto& mainloop = args.mainloop;
  mainloop.ptr_A = reinterpret_cast<decltype(mainloop.ptr_A)>(ops.a_q);
  mainloop.dA = cutlass::make_cute_packed_stride(typename GemmKernel::StrideA{}, make_shape(M, K, 1));
  mainloop.ptr_B = reinterpret_cast<decltype(mainloop.ptr_B)>(ops.b_q);
  mainloop.dB = cutlass::make_cute_packed_stride(typename GemmKernel::StrideB{}, make_shape(N, K, 1));
  mainloop.ptr_SFA = reinterpret_cast<decltype(mainloop.ptr_SFA)>(ops.a_s);
  mainloop.layout_SFA = ScaleConfig::tile_atom_to_shape_SFA(problem);
  mainloop.ptr_SFB = reinterpret_cast<decltype(mainloop.ptr_SFB)>(ops.b_s);
  mainloop.layout_SFB = ScaleConfig::tile_atom_to_shape_SFB(problem);

  auto& epilogue = args.epilogue;
  epilogue.thread = {
      {{1.0f, 1.0f}, {ops.alpha_factors[0], ops.alpha_factors[1]}, {}},  // alpha: scalars, pointers, strides
      {},                                                               // acc
      {ops.bias, 0.0f, {}},                                             // bias: pointer, value if null, stride
      {},                                                               // fma
  };
  epilogue.ptr_D = static_cast<decltype(epilogue.ptr_D)>(ops.out);
  epilogue.dD = cutlass::make_cute_packed_stride(typename GemmKernel::StrideD{}, make_shape(M, N, 1));
  return args;
}

// DQ_ERR_UNSUPPORTED unless CUTLASS accepts the arguments and needs no workspace (the library
// allocates nothing). Host only: needs no GPU.
template <class KernelT>
int check_arguments(const typename KernelT::Arguments& args) {
  using Gemm = typename KernelT::Gemm;
  if (Gemm::can_implement(args) != cutlass::Status::kSuccess) return DQ_ERR_UNSUPPORTED;
  if (Gemm::get_workspace_size(args) != 0) return DQ_ERR_UNSUPPORTED;
  return DQ_OK;
}

template <class KernelT>
int launch(const typename KernelT::Arguments& args, cudaStream_t stream) {
  typename KernelT::Gemm gemm;
  if (gemm.initialize(args, nullptr, stream) != cutlass::Status::kSuccess ||
      gemm.run(stream) != cutlass::Status::kSuccess) {
    const cudaError_t error = cudaGetLastError();
    return error != cudaSuccess ? static_cast<int>(error) : DQ_ERR_LAUNCH_FAILED;
  }
  return cudaGetLastError();
}

// Whether the CUDA driver encoded `descriptor`, as far as can be told here. cute's make_tma_copy
// reports a refusal of cuTensorMapEncodeTiled only on stderr (and an assert, compiled out in release
// builds). A descriptor left all zero is caught; a refused one the driver left non-zero is not: on an
// H100 the driver refused NVFP4's 4-bit type (CU_TENSOR_MAP_DATA_TYPE_16U4_ALIGN8B, printed by cute)
// and this returned true. So the NVFP4 entry point is refused before Blackwell (prepare()).
inline bool encoded(const cute::TmaDescriptor* descriptor) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(descriptor);
  for (size_t i = 0; i < sizeof(*descriptor); ++i) {
    if (bytes[i] != 0) return true;
  }
  return false;
}

// What launch() does before it launches, on the host only: the kernel's Params from the arguments,
// which has the CUDA driver encode the TMA descriptors of A, B, their scales and out. Not
// GemmUniversalAdapter::initialize, which also sets the kernel's shared memory attribute and so fails
// on a GPU without sm_100 code; nothing here needs the kernel's device code.
template <class KernelT>
int encode_descriptors(const typename KernelT::Arguments& args) {
  const auto params = KernelT::GemmKernel::to_underlying_arguments(args, nullptr);
  const cute::TmaDescriptor* descriptors[] = {
      params.mainloop.tma_load_a.get_tma_descriptor(),   params.mainloop.tma_load_b.get_tma_descriptor(),
      params.mainloop.tma_load_sfa.get_tma_descriptor(), params.mainloop.tma_load_sfb.get_tma_descriptor(),
      params.epilogue.tma_store_d.get_tma_descriptor(),
  };
  for (const cute::TmaDescriptor* descriptor : descriptors) {
    if (!encoded(descriptor)) return DQ_ERR_UNSUPPORTED;
  }
  return DQ_OK;
}

// ------------------------------------------------------------------------------------------------
// Checks, the tile heuristic, dispatch
// ------------------------------------------------------------------------------------------------

// Checks of everything but pointers; shape limits beyond these (alignment) are CUTLASS's.
template <class Format>
int check_problem(int64_t M, int64_t N, int64_t K, int out_dtype, int config) {
  constexpr int64_t kMaxDim = INT32_MAX;  // CUTLASS's problem shape is int
  if (M < 1 || N < 1 || K < 1 || M > kMaxDim || N > kMaxDim || K > kMaxDim || K % Format::kBlock != 0) {
    return DQ_ERR_BAD_SHAPE;
  }
  if (out_dtype != DQ_FLOAT32 && out_dtype != DQ_BFLOAT16) return DQ_ERR_BAD_DTYPE;
  if (config != DQ_SM100_CONFIG_AUTO && config != DQ_SM100_CONFIG_1SM && config != DQ_SM100_CONFIG_2SM) {
    return DQ_ERR_BAD_CONFIG;
  }
  return DQ_OK;
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

inline int check_pointers(const Operands& ops, bool needs_alpha_factors) {
  if (!ops.a_q || !ops.a_s || !ops.b_q || !ops.b_s || !ops.out) return DQ_ERR_NULL_POINTER;
  if (needs_alpha_factors && (!ops.alpha_factors[0] || !ops.alpha_factors[1])) return DQ_ERR_NULL_POINTER;
  // TMA reads and writes every tensor but the bias (whose loads are 16-byte vectors): all 16-byte
  // aligned. (A misaligned TMA descriptor would not fail here but fault in the kernel.)
  const void* pointers[] = {ops.a_q, ops.a_s, ops.b_q, ops.b_s, ops.out, ops.bias};
  for (const void* p : pointers) {
    if (!aligned16(p)) return DQ_ERR_MISALIGNED;
  }
  return DQ_OK;
}

// DQ_SM100_CONFIG_AUTO: the 1-SM 128-row tile below M = 256 (a 256-row tile would be at least half
// padding at M <= 128), the 2-SM 256-row tile from there on (both launch one CTA per 128 x 128 of
// output; the 2-SM MMA halves each CTA's share of B). Not tuned on hardware.
inline int resolve_config(int config, int64_t M) {
  if (config != DQ_SM100_CONFIG_AUTO) return config;
  return M >= 256 ? DQ_SM100_CONFIG_2SM : DQ_SM100_CONFIG_1SM;
}

// fn(Kernel<Format, Out, two_sm>{}) for out_dtype (DQ_FLOAT32 or DQ_BFLOAT16) and a resolved config.
template <class Format, class Fn>
int with_kernel(int out_dtype, int config, Fn&& fn) {
  const bool two_sm = config == DQ_SM100_CONFIG_2SM;
  if (out_dtype == DQ_BFLOAT16) {
    return two_sm ? fn(Kernel<Format, cutlass::bfloat16_t, true>{}) : fn(Kernel<Format, cutlass::bfloat16_t, false>{});
  }
  return two_sm ? fn(Kernel<Format, float, true>{}) : fn(Kernel<Format, float, false>{});
}

// ------------------------------------------------------------------------------------------------
// The entry points each format exports (see dq_kernels.h)
// ------------------------------------------------------------------------------------------------

// The argument checks of the _mm function, then fn(KernelT{}, args) with the CUTLASS arguments
// of the kernel it runs (AUTO resolved).
template <class Format, class Fn>
int with_arguments(const Operands& ops, int64_t M, int64_t N, int64_t K, int out_dtype, int config, Fn&& fn) {
  if (int error = check_problem<Format>(M, N, K, out_dtype, config)) return error;
  if (int error = check_pointers(ops, std::is_same_v<Format, Nvfp4>)) return error;
  return with_kernel<Format>(out_dtype, resolve_config(config, M), [&](auto kernel) {
    using KernelT = decltype(kernel);
    const auto args = make_arguments<KernelT>(ops, M, N, K);
    if (int error = check_arguments<KernelT>(args)) return error;
    return fn(kernel, args);
  });
}

template <class Format>
int mm(const Operands& ops, int64_t M, int64_t N, int64_t K, int out_dtype, int config, void* stream) {
  return with_arguments<Format>(ops, M, N, K, out_dtype, config, [&](auto kernel, const auto& args) {
    return launch<decltype(kernel)>(args, static_cast<cudaStream_t>(stream));
  });
}

template <class Format>
int prepare(const Operands& ops, int64_t M, int64_t N, int64_t K, int out_dtype, int config) {
  return with_arguments<Format>(ops, M, N, K, out_dtype, config, [](auto kernel, const auto& args) {
    return encode_descriptors<decltype(kernel)>(args);
  });
}

// Writes layout(row, c * block, 0) for row < rows and scale column c < K / block to offsets
// [rows * (K / block)], row-major: the element offset of each scale in the scale buffer.
template <class Layout>
void write_scale_offsets(const Layout& layout, int64_t rows, int64_t K, int block, int64_t* offsets) {
  const int64_t cols = K / block;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) offsets[r * cols + c] = layout(int(r), int(c * block), 0);
  }
}

template <class Format>
int plan(int64_t M, int64_t N, int64_t K, int out_dtype, int config, int64_t* strides, int64_t* sfa_offsets,
         int64_t* sfb_offsets) {
  if (int error = check_problem<Format>(M, N, K, out_dtype, config)) return error;
  config = resolve_config(config, M);
  return with_kernel<Format>(out_dtype, config, [&](auto kernel) {
    using KernelT = decltype(kernel);
    const auto args = make_arguments<KernelT>(Operands{}, M, N, K);
    if (int error = check_arguments<KernelT>(args)) return error;
    if (strides) {
      strides[0] = get<0>(args.mainloop.dA);
      strides[1] = get<0>(args.mainloop.dB);
      strides[2] = get<0>(args.epilogue.dD);
    }
    if (sfa_offsets) write_scale_offsets(args.mainloop.layout_SFA, M, K, Format::kBlock, sfa_offsets);
    if (sfb_offsets) write_scale_offsets(args.mainloop.layout_SFB, N, K, Format::kBlock, sfb_offsets);
    return config;
  });
}

}  // namespace dq::sm100

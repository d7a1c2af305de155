// sm90_linear.cu: a quantized Linear on Hopper in one call. The activation cast (csrc/cast.cu) and
// the GEMM (csrc/sm90_skinny_gemm.cu or csrc/sm90_mixed_gemm.cu) are enqueued back to back, the
// cast's output in a workspace the caller provides: the same kernels, bit for bit the same result,
// as the two calls from Python, for the host time of one call and one allocation. The GEMM is the
// cast's programmatic dependent (csrc/dependent_launch.cuh): it starts, and the skinny kernel
// loads its first weight chunk, while the cast ends.

#include <cstdint>

#include "decode.cuh"
#include "dq_kernels.h"
#include "sm90_after_cast.h"

namespace {

// Where the pieces of a Linear's workspace lie, in bytes from its start (each 256-byte aligned).
struct Layout {
  int64_t activation = 0;    // the cast's output: q [M, K / elements per byte], or the decoded [M, K]
  int64_t scales = 0;        // DQ_SM90_LINEAR_SKINNY: the activation's swizzled block scales
  int64_t tensor_scale = 0;  // NVFP4: the activation's tensor scale (float32)
  int64_t amax_scratch = 0;  // NVFP4: the dynamic tensor scale's amax partials (DQ_NVFP4_CAST_SCRATCH_BYTES)
  int64_t gemm = 0;          // DQ_SM90_LINEAR_MIXED: the mixed-input GEMM's shared-tile workspace
  int64_t gemm_bytes = 0;
  int64_t total = 0;
};

constexpr int64_t kSkinnyMaxTokens = 64;  // the skinny kernels' largest M

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

// The layout for a weight [N, K] of `format` and an activation of M rows; DQ_OK or an error code.
int layout_of(int format, int kernel, int64_t M, int64_t N, int64_t K, Layout* layout) {
  if (format != DQ_FORMAT_MXFP8 && format != DQ_FORMAT_NVFP4) return DQ_ERR_BAD_CONFIG;
  if (M < 1 || K < 32 || K % 32 != 0 || N < 1 || (kernel != DQ_SM90_LINEAR_MIXED && M > kSkinnyMaxTokens))
    return DQ_ERR_BAD_SHAPE;
  const bool nvfp4 = format == DQ_FORMAT_NVFP4;
  Layout l;
  int64_t end = 0;
  const auto take = [&end](int64_t bytes) {
    const int64_t at = end;
    end = round_up(at + bytes, 256);
    return at;
  };
  switch (kernel) {
    case DQ_SM90_LINEAR_QUANTIZING_SKINNY:
      break;  // the skinny kernel quantizes the activation in registers: no workspace
    case DQ_SM90_LINEAR_SKINNY: {
      const int block = nvfp4 ? 16 : 32;
      l.activation = take(nvfp4 ? M * K / 2 : M * K);
      l.scales = take(round_up(M, 128) * round_up(K / block, 4));
      if (nvfp4) {
        l.tensor_scale = take(sizeof(float));
        l.amax_scratch = take(DQ_NVFP4_CAST_SCRATCH_BYTES);
      }
      break;
    }
    case DQ_SM90_LINEAR_MIXED: {
      l.activation = take(M * K * 2);  // bfloat16 (MXFP8) or float16 (NVFP4)
      if (nvfp4) {
        l.tensor_scale = take(sizeof(float));
        l.amax_scratch = take(DQ_NVFP4_CAST_SCRATCH_BYTES);
      }
      int tokens = 0;
      int64_t shared_tiles = 0, shared_ctas = 0, parts = 0;
      if (int e = dq_sm90_mixed_mm_plan(M, N, K, 0, &tokens, &shared_tiles, &shared_ctas, &parts, &l.gemm_bytes))
        return e;
      if (l.gemm_bytes) l.gemm = take(l.gemm_bytes);
      break;
    }
    default:
      return DQ_ERR_BAD_CONFIG;
  }
  l.total = end;
  *layout = l;
  return DQ_OK;
}

// The workspace's layout after the checks every Linear shares (those that would otherwise fail
// only after the cast was enqueued: the GEMMs check the rest themselves); DQ_OK or an error code.
int prepare(int format, int kernel, int64_t M, int64_t N, int64_t K, int64_t x_row_stride, int x_dtype,
            const void* weight, const void* weight_scales, const void* bias, int bias_dtype, const void* out,
            void* workspace, int64_t workspace_bytes, Layout* layout) {
  if (int e = layout_of(format, kernel, M, N, K, layout)) return e;
  if (!weight || !weight_scales || !out) return DQ_ERR_NULL_POINTER;
  if (N % 8 != 0) return DQ_ERR_BAD_SHAPE;
  if (!dq::bias_dtype_ok(bias, bias_dtype)) return DQ_ERR_BAD_DTYPE;
  for (const void* p : {weight, weight_scales, bias, out})
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return DQ_ERR_MISALIGNED;
  if (workspace_bytes < layout->total || (layout->total && !workspace)) return DQ_ERR_BAD_CONFIG;
  if (reinterpret_cast<uintptr_t>(workspace) % 256 != 0) return DQ_ERR_MISALIGNED;
  if (x_dtype != DQ_FLOAT32 && x_dtype != DQ_BFLOAT16 && x_dtype != DQ_FLOAT16) return DQ_ERR_BAD_DTYPE;
  // The quantizing skinny kernel reads a contiguous 16-bit activation.
  if (kernel == DQ_SM90_LINEAR_QUANTIZING_SKINNY && (x_row_stride != K || x_dtype == DQ_FLOAT32))
    return x_dtype == DQ_FLOAT32 ? DQ_ERR_BAD_DTYPE : DQ_ERR_BAD_SHAPE;
  return DQ_OK;
}

template <typename T>
T* at(void* workspace, int64_t offset) {
  return reinterpret_cast<T*>(static_cast<uint8_t*>(workspace) + offset);
}

}  // namespace

extern "C" int dq_sm90_linear_workspace_bytes(int format, int kernel, int64_t M, int64_t N, int64_t K,
                                              int64_t* bytes) {
  if (!bytes) return DQ_ERR_NULL_POINTER;
  Layout layout;
  if (int e = layout_of(format, kernel, M, N, K, &layout)) return e;
  *bytes = layout.total;
  return DQ_OK;
}

extern "C" int dq_sm90_mxfp8_linear(const void* x, int x_dtype, int64_t x_row_stride, const uint8_t* b_q,
                                    const uint8_t* b_s, const void* bias, int bias_dtype, void* out, int64_t M,
                                    int64_t N, int64_t K, int scaling, int kernel, void* workspace,
                                    int64_t workspace_bytes, void* stream) {
  Layout l;
  if (int e = prepare(DQ_FORMAT_MXFP8, kernel, M, N, K, x_row_stride, x_dtype, b_q, b_s, bias, bias_dtype, out,
                      workspace, workspace_bytes, &l))
    return e;
  if (kernel == DQ_SM90_LINEAR_QUANTIZING_SKINNY)
    return dq_sm90_mxfp8_skinny_linear(x, x_dtype, b_q, b_s, bias, bias_dtype, out, M, N, K, scaling, stream);
  if (kernel == DQ_SM90_LINEAR_SKINNY) {
    uint8_t *q = at<uint8_t>(workspace, l.activation), *s = at<uint8_t>(workspace, l.scales);
    if (int e = dq_quantize_mxfp8(x, x_dtype, x_row_stride, M, K, scaling, q, s, stream)) return e;
    return dq::sm90_mxfp8_skinny_mm(q, s, b_q, b_s, bias, bias_dtype, out, M, N, K, x_dtype, stream, true);
  }
  void* a = at<void>(workspace, l.activation);
  if (int e = dq_quantize_dequantize_mxfp8(x, x_dtype, x_row_stride, M, K, scaling, a, stream)) return e;
  return dq::sm90_mxfp8_mixed_mm(a, b_q, b_s, bias, bias_dtype, out, M, N, K, x_dtype, 0,
                                 l.gemm_bytes ? at<void>(workspace, l.gemm) : nullptr, l.gemm_bytes, stream, true);
}

extern "C" int dq_sm90_nvfp4_linear(const void* x, int x_dtype, int64_t x_row_stride, const uint8_t* b_q,
                                    const uint8_t* b_s, const float* b_ts, const float* activation_scale,
                                    const void* bias, int bias_dtype, void* out, int64_t M, int64_t N, int64_t K,
                                    int kernel, void* workspace, int64_t workspace_bytes, void* stream) {
  Layout l;
  if (!b_ts) return DQ_ERR_NULL_POINTER;
  if (int e = prepare(DQ_FORMAT_NVFP4, kernel, M, N, K, x_row_stride, x_dtype, b_q, b_s, bias, bias_dtype, out,
                      workspace, workspace_bytes, &l))
    return e;
  if (kernel == DQ_SM90_LINEAR_QUANTIZING_SKINNY)
    return dq_sm90_nvfp4_skinny_linear(x, x_dtype, b_q, b_s, activation_scale, b_ts, bias, bias_dtype, out, M, N, K,
                                       stream);
  float* a_ts = at<float>(workspace, l.tensor_scale);
  uint32_t* scratch = at<uint32_t>(workspace, l.amax_scratch);
  if (kernel == DQ_SM90_LINEAR_SKINNY) {
    uint8_t *q = at<uint8_t>(workspace, l.activation), *s = at<uint8_t>(workspace, l.scales);
    if (int e = dq_quantize_nvfp4(x, x_dtype, x_row_stride, M, K, activation_scale, q, s, a_ts, scratch, stream))
      return e;
    return dq::sm90_nvfp4_skinny_mm(q, s, a_ts, b_q, b_s, b_ts, bias, bias_dtype, out, M, N, K, x_dtype, stream,
                                    true);
  }
  void* a = at<void>(workspace, l.activation);
  if (int e = dq_quantize_dequantize_nvfp4(x, x_dtype, x_row_stride, M, K, activation_scale, a, a_ts, scratch, stream))
    return e;
  return dq::sm90_nvfp4_mixed_mm(a, DQ_FLOAT16, b_q, b_s, a_ts, b_ts, bias, bias_dtype, out, M, N, K, x_dtype, 0,
                                 l.gemm_bytes ? at<void>(workspace, l.gemm) : nullptr, l.gemm_bytes, stream, true);
}

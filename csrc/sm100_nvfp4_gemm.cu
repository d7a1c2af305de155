// sm100_nvfp4_gemm.cu: NVFP4 x NVFP4 GEMM for Blackwell sm_100a (CUTLASS 4.2, tcgen05
// kind::mxf4nvf4 block-scaled MMA with 4 scales per 64 elements; UTCOMMA in SASS). The kernels and
// their arguments are sm100_gemm_common.cuh, shared with MXFP8; this file instantiates them for
// NVFP4, whose two tensor scales become the epilogue's alpha = a_ts * b_ts.

#include "sm100_gemm_common.cuh"

extern "C" int dq_sm100_nvfp4_mm(const uint8_t* a_q, const uint8_t* a_s, const float* a_ts, const uint8_t* b_q,
                                 const uint8_t* b_s, const float* b_ts, const float* bias, void* out, int64_t M,
                                 int64_t N, int64_t K, int out_dtype, int config, void* stream) {
  const auto ops = dq::sm100::make_operands(a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out);
  return dq::sm100::mm<dq::sm100::Nvfp4>(ops, M, N, K, out_dtype, config, stream);
}

extern "C" int dq_sm100_nvfp4_mm_prepare(const uint8_t* a_q, const uint8_t* a_s, const float* a_ts,
                                         const uint8_t* b_q, const uint8_t* b_s, const float* b_ts, const float* bias,
                                         void* out, int64_t M, int64_t N, int64_t K, int out_dtype, int config) {
  const auto ops = dq::sm100::make_operands(a_q, a_s, a_ts, b_q, b_s, b_ts, bias, out);
  return dq::sm100::prepare<dq::sm100::Nvfp4>(ops, M, N, K, out_dtype, config);
}

extern "C" int dq_sm100_nvfp4_mm_plan(int64_t M, int64_t N, int64_t K, int out_dtype, int config, int64_t* strides,
                                      int64_t* sfa_offsets, int64_t* sfb_offsets) {
  return dq::sm100::plan<dq::sm100::Nvfp4>(M, N, K, out_dtype, config, strides, sfa_offsets, sfb_offsets);
}

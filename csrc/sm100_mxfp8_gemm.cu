// sm100_mxfp8_gemm.cu: MXFP8 x MXFP8 GEMM for Blackwell sm_100a (CUTLASS 4.2, tcgen05
// kind::mxf8f6f4 block-scaled MMA; UTCQMMA in SASS). The kernels and their arguments are
// sm100_gemm_common.cuh, shared with NVFP4; this file instantiates them for MXFP8.

#include "sm100_gemm_common.cuh"

extern "C" int dq_sm100_mxfp8_mm(const uint8_t* a_q, const uint8_t* a_s, const uint8_t* b_q, const uint8_t* b_s,
                                 const float* bias, void* out, int64_t M, int64_t N, int64_t K, int out_dtype,
                                 int config, void* stream) {
  const auto ops = dq::sm100::make_operands(a_q, a_s, nullptr, b_q, b_s, nullptr, bias, out);
  return dq::sm100::mm<dq::sm100::Mxfp8>(ops, M, N, K, out_dtype, config, stream);
}

extern "C" int dq_sm100_mxfp8_mm_prepare(const uint8_t* a_q, const uint8_t* a_s, const uint8_t* b_q,
                                         const uint8_t* b_s, const float* bias, void* out, int64_t M, int64_t N,
                                         int64_t K, int out_dtype, int config) {
  const auto ops = dq::sm100::make_operands(a_q, a_s, nullptr, b_q, b_s, nullptr, bias, out);
  return dq::sm100::prepare<dq::sm100::Mxfp8>(ops, M, N, K, out_dtype, config);
}

extern "C" int dq_sm100_mxfp8_mm_plan(int64_t M, int64_t N, int64_t K, int out_dtype, int config, int64_t* strides,
                                      int64_t* sfa_offsets, int64_t* sfb_offsets) {
  return dq::sm100::plan<dq::sm100::Mxfp8>(M, N, K, out_dtype, config, strides, sfa_offsets, sfb_offsets);
}

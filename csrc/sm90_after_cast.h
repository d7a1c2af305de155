// sm90_after_cast.h: the sm_90a GEMMs as csrc/sm90_linear.cu launches them, right after its cast.
#pragma once

#include <cstdint>

namespace dq {

// dq_sm90_mxfp8_skinny_mm, dq_sm90_nvfp4_skinny_mm, dq_sm90_mxfp8_mixed_mm and dq_sm90_nvfp4_mixed_mm
// (dq_kernels.h) with after_cast: launched as the programmatic dependent of the cast kernel the
// same call enqueued just before it, which writes the activation (csrc/dependent_launch.cuh), so
// the GEMM starts (and the skinny one streams its first weight bytes) while the cast ends.
int sm90_mxfp8_skinny_mm(const uint8_t* a_q, const uint8_t* a_s, const uint8_t* b_q, const uint8_t* b_s,
                         const void* bias, int bias_dtype, void* out, int64_t M, int64_t N, int64_t K, int out_dtype,
                         void* stream, bool after_cast);
int sm90_nvfp4_skinny_mm(const uint8_t* a_q, const uint8_t* a_s, const float* a_ts, const uint8_t* b_q,
                         const uint8_t* b_s, const float* b_ts, const void* bias, int bias_dtype, void* out, int64_t M,
                         int64_t N, int64_t K, int out_dtype, void* stream, bool after_cast);
int sm90_mxfp8_mixed_mm(const void* a, const uint8_t* b_q, const uint8_t* b_s, const void* bias, int bias_dtype,
                        void* out, int64_t M, int64_t N, int64_t K, int out_dtype, int tokens, void* workspace,
                        int64_t workspace_bytes, void* stream, bool after_cast);
int sm90_nvfp4_mixed_mm(const void* a, int a_dtype, const uint8_t* b_q, const uint8_t* b_s, const float* a_ts,
                        const float* b_ts, const void* bias, int bias_dtype, void* out, int64_t M, int64_t N,
                        int64_t K, int out_dtype, int tokens, void* workspace, int64_t workspace_bytes, void* stream,
                        bool after_cast);

}  // namespace dq

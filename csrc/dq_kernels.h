/*
 * dq_kernels.h: the C ABI of libdq_kernels_native.so.
 *
 * The library is torch-free: it takes raw device pointers and a CUDA stream, links the CUDA runtime
 * statically (it needs only the driver, libcuda.so, at run time), and exports nothing but the
 * functions below. Python reaches it through ctypes in dq_kernels/native.py.
 *
 * Conventions for every kernel entry point:
 *   - All pointers are device pointers on the current CUDA device (the caller selects the device).
 *   - Tensors are dense and row-major; "[M, K]" means M rows of K contiguous elements.
 *   - The work is enqueued on `stream` (a cudaStream_t; NULL is the legacy default stream). Nothing
 *     synchronizes and nothing allocates, so the calls are safe inside CUDA-graph capture.
 *   - Return value: DQ_OK (0); or a negative DQ_ERR_* code when an argument is invalid (nothing was
 *     launched); or a positive cudaError_t reported by cudaGetLastError() right after the launch.
 *     dq_error_string() turns any of them into text.
 *
 * Block scales use the "128x4 swizzled" layout of cuBLAS, CUTLASS and torch._scaled_mm (see
 * csrc/scale_layout.cuh): for R rows and S scale columns, with S_pad = round_up(S, 4), the scale
 * of (row r, scale column c) is the byte at
 *     (r / 128) * (S_pad / 4) * 512 + (c / 4) * 512 + (r % 32) * 16 + ((r % 128) / 32) * 4 + c % 4
 * and the buffer holds round_up(R, 128) * S_pad bytes. The padding bytes (rows >= R, columns >= S)
 * must be zero, as the quantizers write them: Blackwell's block-scaled MMAs (tcgen05 and the sm_120
 * mma.sync) read the padding columns of a K step (S not a multiple of 4) and multiply them with
 * zero-filled data, so a NaN byte there makes valid outputs NaN. `dq-kernels selftest` checks each
 * backend with NaN padding.
 */
#ifndef DQ_KERNELS_H
#define DQ_KERNELS_H

#include <stdint.h>

#define DQ_API __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The version of this ABI: the functions below, their arguments and their meaning. Raised with every
 * change a caller could misread; dq_kernels/native.py refuses a library whose dq_abi_version()
 * differs from its own ABI_VERSION (a stale build), instead of calling it with the wrong arguments.
 */
#define DQ_ABI_VERSION 6

/* Tensor dtypes (the out_dtype, x_dtype, a_dtype and bias_dtype arguments). */
enum {
  DQ_FLOAT32 = 0,
  DQ_BFLOAT16 = 1,
  DQ_FLOAT16 = 2,
};

/* Return codes other than cudaError_t values. */
enum {
  DQ_OK = 0,
  DQ_ERR_NULL_POINTER = -1, /* a tensor pointer is NULL */
  DQ_ERR_BAD_SHAPE = -2,    /* a dimension out of the range the function documents (block multiples, limits) */
  DQ_ERR_BAD_DTYPE = -3,    /* out_dtype (or a cast's x_dtype) is not one the function supports */
  DQ_ERR_MISALIGNED = -4,   /* a pointer is not aligned as documented for the function */
  DQ_ERR_UNSUPPORTED = -5,  /* the kernel cannot run this problem (CUTLASS can_implement or the TMA descriptor setup refused it) */
  DQ_ERR_BAD_CONFIG = -6,   /* config (or tokens, or a cast's scaling) is not one of the values the function documents */
  DQ_ERR_LAUNCH_FAILED = -7, /* CUTLASS failed to initialize or launch without a CUDA error */
  DQ_ERR_CUBLAS = -8         /* cuBLASLt is not loadable, or returned an error (dq_decoded_mxfp8_linear) */
};

/*
 * MXFP8 -> high precision.
 *   q:     float8_e4m3fn bytes [M, K]. 16-byte aligned.
 *   s:     E8M0 bytes, one per 32 elements along K, in the 128x4 swizzled layout for M rows and
 *          K / 32 scale columns (round_up(M, 128) * round_up(K / 32, 4) bytes).
 *   out:   [M, K] of out_dtype. 16-byte aligned.
 *   M >= 1, K >= 32, K % 32 == 0.
 * out[m, k] = round(float(q[m, k]) * 2^(e - 127)) with e the scale byte of (m, k / 32), the product
 * in float32 and round() float32 -> out_dtype with round-to-nearest-even. Scale byte 0 is 2^-127
 * (a float32 subnormal, kept), byte 255 is NaN; q bytes 0x7F and 0xFF are NaN. Bit-identical to
 * dq_kernels.formats.dequantize_mxfp8.
 */
DQ_API int dq_dequantize_mxfp8(const uint8_t* q, const uint8_t* s, void* out, int64_t M, int64_t K,
                               int out_dtype, void* stream);

/*
 * NVFP4 -> high precision.
 *   q:            uint8 [M, K / 2], two e2m1 codes per byte, element 2i in the low nibble and
 *                 2i + 1 in the high nibble. 8-byte aligned. Codes 0..7 are
 *                 {0, 0.5, 1, 1.5, 2, 3, 4, 6}, codes 8..15 their negatives (code 8 is -0.0).
 *   s:            float8_e4m3fn bytes, one per 16 elements along K, in the 128x4 swizzled layout
 *                 for M rows and K / 16 scale columns (round_up(M, 128) * round_up(K / 16, 4) bytes).
 *   tensor_scale: a device pointer to one float32, or NULL for 1 (the block-scaled values alone,
 *                 which is how the sm90 mixed-input GEMM takes an NVFP4 activation).
 *   out:          [M, K] of out_dtype. 16-byte aligned.
 *   M >= 1, K >= 16, K % 16 == 0.
 * out[m, k] = round((e2m1(q, m, k) * float(s of (m, k / 16))) * tensor_scale), both products in
 * float32 in this order, round() as above. Bit-identical to dq_kernels.formats.dequantize_nvfp4.
 */
DQ_API int dq_dequantize_nvfp4(const uint8_t* q, const uint8_t* s, const float* tensor_scale, void* out,
                               int64_t M, int64_t K, int out_dtype, void* stream);

/*
 * Hopper mixed-input GEMMs (present only when the library was built with the sm90_gemm kernel
 * family, i.e. with 90a in DQ_KERNELS_CUDA_ARCHS; the device code runs on compute capability 9.0
 * only), csrc/sm90_mixed_gemm.cu: a 16-bit activation times an MXFP8 or NVFP4 weight that the kernel
 * decodes exactly to bf16/f16 in registers (wgmma's register operand); bf16/f16 wgmma with float32
 * accumulation. The callers decode a quantized activation with dq_dequantize_* first.
 *
 *   out[m, n] = alpha * sum_k A[m, k] * B[n, k] + bias[n]     (out = alpha * A @ B^T + bias)
 *
 *   a:        [M, K] row-major, 16-byte aligned: bfloat16 for MXFP8; bfloat16 or float16 (a_dtype,
 *             else DQ_ERR_BAD_DTYPE) for NVFP4.
 *   b_q, b_s: the weight B [N, K]. MXFP8: float8_e4m3fn bytes, row-major with K contiguous, not
 *             padded, and E8M0 bytes, block 32, in the 128x4 swizzled layout for N rows and K / 32
 *             scale columns, padding included (zero: see the layout note above). NVFP4: as for
 *             dq_sm100_nvfp4_mm. All 16-byte aligned.
 *   MXFP8 (alpha = 1): each weight element times its E8M0 scale, rounded to bf16, which is exact
 *     unless a scale byte below 3 meets nonzero data (the value falls below bf16's subnormals);
 *     an e4m3 NaN code stays NaN only in a block with a scale byte above 142 (quantizers give a
 *     block holding a NaN the byte 255).
 *   NVFP4 (alpha = a_ts * b_ts; a_ts NULL for a weight-only product): e2m1 x e4m3 is exact in f16
 *     and bf16. Both formats: exact up to the float32 accumulation order within that domain.
 *   bias:     NULL or [N] of bias_dtype (DQ_FLOAT32, DQ_BFLOAT16 or DQ_FLOAT16, else DQ_ERR_BAD_DTYPE),
 *             16-byte aligned, read as float32 (exact).
 *   out:      [M, N] row-major of out_dtype (DQ_FLOAT32, DQ_BFLOAT16 or DQ_FLOAT16), 16-byte aligned.
 *   M, N, K:  1 <= M <= INT32_MAX - 256, 1 <= N <= INT32_MAX - 128 with N % 8 == 0, 32 <= K <=
 *             INT32_MAX - 64 with K % 32 == 0, ceil(N / 128) * ceil(M / 64) <= INT32_MAX / 2 (CTAs) and
 *             ceil(N / 128) * ceil(K / (4 * block)) * 32 <= INT32_MAX (16-byte scale rows), else
 *             DQ_ERR_BAD_SHAPE.
 *   tokens:   the token tile (activation rows per CTA, with 128 weight rows): 64, 128 or 256, or 0
 *             for the kernel's choice; else DQ_ERR_BAD_CONFIG.
 *   workspace: NULL, or workspace_bytes >= the plan's (dq_sm90_mixed_mm_plan) of device memory,
 *             16-byte aligned, for shared tiles: when the tiles leave the last wave of CTAs partly
 *             idle and the plan estimates it faster, that wave's tiles are split along K into up to
 *             4 parts, or (33 to 263 tiles on 132 SMs, operands that fit in L2) all tiles are shared
 *             along K by one wave of CTAs (stream-K); the CTAs of a tile add their float32 sums
 *             there (its flags are zeroed on the stream first). NULL runs every tile whole. A smaller workspace_bytes than the plan's: DQ_ERR_BAD_CONFIG. One
 *             workspace per launch in flight: launches that may run at the same time (other
 *             streams) need their own.
 * The epilogue computes acc * alpha + bias in float32 and rounds once. Nothing is allocated.
 * DQ_ERR_UNSUPPORTED if the driver refuses the TMA descriptors.
 */
DQ_API int dq_sm90_mxfp8_mixed_mm(const void* a, const uint8_t* b_q, const uint8_t* b_s, const void* bias,
                                  int bias_dtype, void* out, int64_t M, int64_t N, int64_t K, int out_dtype,
                                  int tokens, void* workspace, int64_t workspace_bytes, void* stream);
DQ_API int dq_sm90_nvfp4_mixed_mm(const void* a, int a_dtype, const uint8_t* b_q, const uint8_t* b_s,
                                  const float* a_ts, const float* b_ts, const void* bias, int bias_dtype, void* out,
                                  int64_t M, int64_t N, int64_t K, int out_dtype, int tokens, void* workspace,
                                  int64_t workspace_bytes, void* stream);
/* The plan of dq_sm90_*_mixed_mm with a workspace for an M x N x K problem and `tokens` (0: the
 * kernel's choice) on the current device: the token tile, the tiles shared along K, the CTAs
 * sharing them (0 and 0: every tile whole), the parts each shared tile is split into (0: stream-K,
 * the shared tiles' K steps cut into equal runs per CTA) and the workspace bytes it needs (0: none). DQ_OK,
 * DQ_ERR_NULL_POINTER, DQ_ERR_BAD_SHAPE (the shape limits above, but those of the scale rows and
 * the CTA count) or DQ_ERR_BAD_CONFIG. */
DQ_API int dq_sm90_mixed_mm_plan(int64_t M, int64_t N, int64_t K, int tokens, int* tokens_out, int64_t* shared_tiles,
                                 int64_t* shared_ctas, int64_t* parts, int64_t* workspace_bytes);

/*
 * Hopper GEMMs for few activation rows (present with the sm90_gemm family, like dq_sm90_mxfp8_mixed_mm),
 * csrc/sm90_skinny_gemm.cu: mma.sync with the weight streamed from global memory and decoded
 * exactly to f16 (bf16 for a bf16 activation). For M <= 64, where reading the weight is the cost.
 *
 *   out[m, n] = alpha * sum_k A[m, k] * B[n, k] + bias[n]     (out = alpha * A @ B^T + bias)
 *
 *   MXFP8 (alpha = 1): a_q [M, K] and a_s laid out as b_q and b_s of dq_sm90_mxfp8_mixed_mm (with
 *     M rows). Each 32-wide block is summed in float32 from exact products and promoted with its
 *     two E8M0 scales: exact up to the float32 accumulation order while ea + eb is 105..381 for
 *     every pair of block scales.
 *   NVFP4 W4A4 (alpha = a_ts * b_ts): a_q, b_q, a_s, b_s, a_ts, b_ts as for dq_sm100_nvfp4_mm.
 *   NVFP4 W4A16 (alpha = b_ts): a is [M, K] of a_dtype (DQ_BFLOAT16 or DQ_FLOAT16, else
 *     DQ_ERR_BAD_DTYPE), 16-byte aligned; b_q, b_s, b_ts as for W4A4.
 *   NVFP4 products (e2m1 x e4m3 block scale, both operands) are exact in f16 and bf16: exact up to
 *   the float32 accumulation order.
 *   bias, bias_dtype: as for dq_sm90_mxfp8_mixed_mm.
 *   out:      [M, N] row-major of out_dtype (DQ_FLOAT32, DQ_BFLOAT16 or DQ_FLOAT16), 16-byte aligned.
 *   M, N, K:  1 <= M <= 64, 1 <= N <= INT32_MAX - 32 with N % 8 == 0, 32 <= K <= INT32_MAX / 2 with
 *             K % 32 == 0, else DQ_ERR_BAD_SHAPE.
 * The epilogue computes acc * alpha + bias in float32 and rounds once. Nothing is allocated.
 */
DQ_API int dq_sm90_mxfp8_skinny_mm(const uint8_t* a_q, const uint8_t* a_s, const uint8_t* b_q,
                                   const uint8_t* b_s, const void* bias, int bias_dtype, void* out, int64_t M,
                                   int64_t N, int64_t K, int out_dtype, void* stream);
DQ_API int dq_sm90_nvfp4_skinny_mm(const uint8_t* a_q, const uint8_t* a_s, const float* a_ts, const uint8_t* b_q,
                                   const uint8_t* b_s, const float* b_ts, const void* bias, int bias_dtype,
                                   void* out, int64_t M, int64_t N, int64_t K, int out_dtype, void* stream);
DQ_API int dq_sm90_nvfp4_w4a16_skinny_mm(const void* a, int a_dtype, const uint8_t* b_q, const uint8_t* b_s,
                                         const float* b_ts, const void* bias, int bias_dtype, void* out, int64_t M,
                                         int64_t N, int64_t K, int out_dtype, void* stream);

/*
 * A quantized Linear for few rows in one launch (with the sm90_gemm family): the skinny kernels
 * above with the activation quantized inside the kernel, bit for bit the cast
 * (dq_kernels.formats.quantize_mxfp8 / quantize_nvfp4 on CUDA) followed by dq_sm90_mxfp8_skinny_mm /
 * dq_sm90_nvfp4_skinny_mm: the same bytes and scales, the same MMAs. Each CTA quantizes the whole
 * activation (each warp the K range it multiplies), so the activation is read once per CTA of 16 or
 * 32 weight rows: meant for small M.
 *
 *   out[m, n] = alpha * sum_k quantized(A)[m, k] * B[n, k] + bias[n]
 *
 *   a:        the activation A [M, K] of a_dtype (DQ_BFLOAT16 or DQ_FLOAT16, else DQ_ERR_BAD_DTYPE),
 *             16-byte aligned.
 *   b_q, b_s, b_ts, bias, bias_dtype: the weight and bias as for dq_sm90_mxfp8_skinny_mm /
 *             dq_sm90_nvfp4_skinny_mm.
 *   out:      [M, N] row-major of a_dtype, 16-byte aligned.
 *   scaling (MXFP8): 0 (DQ_SCALING_RCEIL) or 1 (DQ_SCALING_FLOOR), formats.quantize_mxfp8's "rceil" /
 *             "floor" (the enum comes with the casts of csrc/cast.cu), else DQ_ERR_BAD_CONFIG; alpha = 1.
 *   a_ts (NVFP4): NULL for the dynamic tensor scale amax(|A|) / 2688 (every CTA computes the amax
 *             over the whole activation before its MMAs), or a device pointer to the given float32
 *             activation scale; alpha = a_ts * b_ts.
 *   M, N, K:  as for dq_sm90_mxfp8_skinny_mm.
 * Nothing is allocated, no scratch memory is used.
 */
DQ_API int dq_sm90_mxfp8_skinny_linear(const void* a, int a_dtype, const uint8_t* b_q, const uint8_t* b_s,
                                       const void* bias, int bias_dtype, void* out, int64_t M, int64_t N, int64_t K,
                                       int scaling, void* stream);
DQ_API int dq_sm90_nvfp4_skinny_linear(const void* a, int a_dtype, const uint8_t* b_q, const uint8_t* b_s,
                                       const float* a_ts, const float* b_ts, const void* bias, int bias_dtype,
                                       void* out, int64_t M, int64_t N, int64_t K, void* stream);

/*
 * A quantized Linear on Hopper in one call (with the sm90_gemm family), csrc/sm90_linear.cu: the
 * activation cast of csrc/cast.cu and one of the GEMMs above, enqueued back to back on `stream`, the
 * cast's output in the caller's workspace, the GEMM launched as the cast's programmatic dependent
 * (it starts while the cast ends: csrc/dependent_launch.cuh; not after a shared-tile plan's
 * zeroing of its flags). Bit for bit the cast followed by the GEMM, by `kernel`:
 *   DQ_SM90_LINEAR_QUANTIZING_SKINNY  dq_sm90_*_skinny_linear (M <= 64; x bfloat16 or float16 with
 *                                     x_row_stride == K; no workspace)
 *   DQ_SM90_LINEAR_SKINNY             dq_quantize_* then dq_sm90_*_skinny_mm (M <= 64)
 *   DQ_SM90_LINEAR_MIXED              dq_quantize_dequantize_* then dq_sm90_*_mixed_mm (the kernel's
 *                                     token tile; shared tiles where its plan takes them)
 *
 *   out[m, n] = alpha * sum_k quantized(x)[m, k] * B[n, k] + bias[n]
 *
 *   x, x_dtype, x_row_stride: the activation [M, K] as for dq_quantize_mxfp8 (float32, bfloat16 or
 *             float16; unit column stride, 16-byte aligned rows).
 *   b_q, b_s, b_ts, bias, bias_dtype: as for the GEMMs above.
 *   out:      [M, N] row-major of x_dtype, 16-byte aligned.
 *   scaling (MXFP8): DQ_SCALING_RCEIL or DQ_SCALING_FLOOR.
 *   activation_scale (NVFP4): NULL for the dynamic tensor scale amax(|x|) / 2688, or a device
 *             pointer to the given one; alpha = activation scale * b_ts.
 *   workspace: 256-byte aligned device memory of at least dq_sm90_linear_workspace_bytes(format,
 *             kernel, M, N, K) bytes (NULL where that is 0), else DQ_ERR_BAD_CONFIG (DQ_ERR_MISALIGNED);
 *             one per call in flight, like the mixed-input GEMM's.
 * Each step's checks and error codes as its function's; nothing is allocated.
 */
enum {
  DQ_FORMAT_MXFP8 = 0,
  DQ_FORMAT_NVFP4 = 1,
};
enum {
  DQ_SM90_LINEAR_QUANTIZING_SKINNY = 0,
  DQ_SM90_LINEAR_SKINNY = 1,
  DQ_SM90_LINEAR_MIXED = 2,
};
DQ_API int dq_sm90_linear_workspace_bytes(int format, int kernel, int64_t M, int64_t N, int64_t K, int64_t* bytes);
DQ_API int dq_sm90_mxfp8_linear(const void* x, int x_dtype, int64_t x_row_stride, const uint8_t* b_q,
                                const uint8_t* b_s, const void* bias, int bias_dtype, void* out, int64_t M, int64_t N,
                                int64_t K, int scaling, int kernel, void* workspace, int64_t workspace_bytes,
                                void* stream);
DQ_API int dq_sm90_nvfp4_linear(const void* x, int x_dtype, int64_t x_row_stride, const uint8_t* b_q,
                                const uint8_t* b_s, const float* b_ts, const float* activation_scale, const void* bias,
                                int bias_dtype, void* out, int64_t M, int64_t N, int64_t K, int kernel,
                                void* workspace, int64_t workspace_bytes, void* stream);

/*
 * Blackwell GEMMs (present only when the library was built with the sm100_gemm kernel family, i.e.
 * with 100f, 100a or 103a in DQ_KERNELS_CUDA_ARCHS: dq_build_info() lists the family; the device
 * code of 100f runs on compute capability 10.0 and 10.3, that of 100a on 10.0, that of 103a on 10.3). CUTLASS 4.2 block-scaled tcgen05 kernels, csrc/sm100_*_gemm.cu.
 *
 *   out[m, n] = alpha * sum_k A[m, k] * B[n, k] + bias[n]     (out = A @ B^T + bias)
 *
 *   a_q, b_q: A [M, K] and B [N, K] (B like a Linear weight), row-major with K contiguous, not
 *             padded, 16-byte aligned. MXFP8: float8_e4m3fn bytes. NVFP4: [rows, K / 2] bytes, two
 *             e2m1 codes per byte, element 2i in the low nibble (as for dq_dequantize_nvfp4).
 *   a_s, b_s: block scales in the 128x4 swizzled layout for M (N) rows and K / block scale
 *             columns, padding included, 16-byte aligned. MXFP8: E8M0 bytes, block 32; NVFP4: e4m3
 *             bytes, block 16.
 *   a_ts, b_ts (NVFP4): device pointers to one float32 each, the tensor scales; alpha = a_ts * b_ts
 *             (MXFP8: alpha = 1).
 *   bias:     NULL or float32 [N], 16-byte aligned.
 *   out:      [M, N] row-major of out_dtype, DQ_BFLOAT16 or DQ_FLOAT32 (DQ_FLOAT16: DQ_ERR_BAD_DTYPE),
 *             16-byte aligned.
 *   M, N, K:  1 <= M, N, K <= INT32_MAX; K % 32 == 0 (MXFP8) or K % 16 == 0 (NVFP4), else
 *             DQ_ERR_BAD_SHAPE. CUTLASS's TMA alignment adds, through DQ_ERR_UNSUPPORTED: N % 8 == 0
 *             for bf16 out and N % 4 == 0 for fp32 out; K % 32 == 0 for NVFP4 (16-byte rows).
 *   config:   a DQ_SM100_CONFIG_* value.
 * Accumulation in float32; the epilogue computes fma(alpha, acc, bias) in float32 and rounds once to
 * the output dtype. Nothing is allocated (DQ_ERR_UNSUPPORTED if CUTLASS asked for a workspace).
 */
enum {
  DQ_SM100_CONFIG_AUTO = 0, /* 2SM when M >= 256, else 1SM (not tuned on hardware) */
  DQ_SM100_CONFIG_1SM = 1,  /* one CTA per 128 x 128 output tile */
  DQ_SM100_CONFIG_2SM = 2,  /* a 2-CTA cluster (2-SM MMA) per 256 x 128 output tile */
};

DQ_API int dq_sm100_mxfp8_mm(const uint8_t* a_q, const uint8_t* a_s, const uint8_t* b_q, const uint8_t* b_s,
                             const float* bias, void* out, int64_t M, int64_t N, int64_t K, int out_dtype, int config,
                             void* stream);

DQ_API int dq_sm100_nvfp4_mm(const uint8_t* a_q, const uint8_t* a_s, const float* a_ts, const uint8_t* b_q,
                             const uint8_t* b_s, const float* b_ts, const float* bias, void* out, int64_t M, int64_t N,
                             int64_t K, int out_dtype, int config, void* stream);

/*
 * Host only (launches nothing, allocates nothing, sets no kernel attribute; needs a CUDA driver but
 * no sm_100 GPU): everything the _mm function of the same format does before its launch, for the
 * same arguments (stream aside). The argument checks, CUTLASS's can_implement, and the kernel's
 * Params (GemmKernel::to_underlying_arguments), for which the CUDA driver encodes the TMA descriptors
 * of a_q, b_q, a_s, b_s and out (cuTensorMapEncodeTiled) from these pointers, shapes and strides.
 * Runs on any GPU, e.g. an H100, to check the descriptors a B200 launch would get.
 * Returns DQ_OK, or the negative DQ_ERR_* code the _mm function would return (DQ_ERR_MISALIGNED
 * for a pointer that is not 16-byte aligned), or DQ_ERR_UNSUPPORTED when the driver refused a
 * descriptor and left it zero (CUTLASS prints every refusal to stderr). Not every refusal is seen:
 * on an H100 the driver refuses NVFP4's 4-bit TMA type (CU_TENSOR_MAP_DATA_TYPE_16U4_ALIGN8B) and
 * dq_sm100_nvfp4_mm_prepare still returned DQ_OK, so call it on a Blackwell GPU only
 * (dq_kernels.native.sm100_mm_prepare refuses it elsewhere); the MXFP8 descriptors encode on an H100.
 */
DQ_API int dq_sm100_mxfp8_mm_prepare(const uint8_t* a_q, const uint8_t* a_s, const uint8_t* b_q, const uint8_t* b_s,
                                     const float* bias, void* out, int64_t M, int64_t N, int64_t K, int out_dtype,
                                     int config);
DQ_API int dq_sm100_nvfp4_mm_prepare(const uint8_t* a_q, const uint8_t* a_s, const float* a_ts, const uint8_t* b_q,
                                     const uint8_t* b_s, const float* b_ts, const float* bias, void* out, int64_t M,
                                     int64_t N, int64_t K, int out_dtype, int config);

/*
 * Host only (needs no GPU; allocates nothing): builds the CUTLASS arguments that the _mm function of
 * the same format builds for this problem, with null data pointers, and reports them.
 *   strides:     NULL or int64_t[3]: the row strides, in elements, CUTLASS gets for A, B and out
 *                (K, K and N for the packed operands above).
 *   sfa_offsets: NULL or int64_t[M * (K / block)]: entry r * (K / block) + c is the byte offset that
 *                CUTLASS's scale-factor layout (Sm1xxBlkScaledConfig::tile_atom_to_shape_SFA for this
 *                problem shape) gives the scale of row r and scale column c of A.
 *   sfb_offsets: NULL or int64_t[N * (K / block)]: the same for B.
 * Returns the config the _mm function would run (DQ_SM100_CONFIG_1SM or _2SM; AUTO resolved), or a
 * negative DQ_ERR_* code: the argument checks of the _mm function (pointers aside), and
 * DQ_ERR_UNSUPPORTED when CUTLASS's can_implement refuses the problem or asks for a workspace.
 */
DQ_API int dq_sm100_mxfp8_mm_plan(int64_t M, int64_t N, int64_t K, int out_dtype, int config, int64_t* strides,
                                  int64_t* sfa_offsets, int64_t* sfb_offsets);
DQ_API int dq_sm100_nvfp4_mm_plan(int64_t M, int64_t N, int64_t K, int out_dtype, int config, int64_t* strides,
                                  int64_t* sfa_offsets, int64_t* sfb_offsets);

/*
 * Activation casts (csrc/cast.cu, any GPU arch), high precision -> MXFP8 / NVFP4, bit-identical to
 * dq_kernels.formats.quantize_mxfp8 / quantize_nvfp4 computed on a CUDA device (torch divides by
 * 448, 6 and 2688 there as a multiplication by the float32 reciprocal; on a CPU tensor it divides,
 * which can move a scale at amax values within an ulp of a step). Exceptions, as formats.py
 * documents them: a NaN element byte is 0x7F whatever its sign, and the e2m1 codes of a block
 * whose scale is NaN, or of every block under a non-finite tensor scale, are unspecified.
 *
 * Common arguments:
 *   x:            [M, K] of x_dtype (DQ_FLOAT32, DQ_BFLOAT16 or DQ_FLOAT16, else DQ_ERR_BAD_DTYPE),
 *                 row i at x + i * x_row_stride elements (x_row_stride >= K); x and every row
 *                 16-byte aligned (x_row_stride * element size a multiple of 16), else
 *                 DQ_ERR_MISALIGNED.
 *   M, K:         1 <= M <= INT32_MAX - 128; K a positive multiple of the block (32 for MXFP8, 16
 *                 for NVFP4), K <= 67107840; else DQ_ERR_BAD_SHAPE.
 *   scaling:      the MXFP8 block scale, DQ_SCALING_RCEIL (amax / 448 rounded up to a power of two,
 *                 nothing saturates) or DQ_SCALING_FLOOR (the OCP rule, 2^(floor(log2 amax) - 8));
 *                 else DQ_ERR_BAD_CONFIG.
 * Nothing is allocated; everything is enqueued on `stream`.
 */
enum {
  DQ_SCALING_RCEIL = 0,
  DQ_SCALING_FLOOR = 1,
};

/*
 * MXFP8, canonical operands: q float8_e4m3fn bytes [M, K] (16-byte aligned) and s E8M0 bytes in the
 * 128x4 swizzled layout for M rows and K / 32 scale columns, padding written as zero bytes
 * (round_up(M, 128) * round_up(K / 32, 4) bytes). One pass over x.
 */
DQ_API int dq_quantize_mxfp8(const void* x, int x_dtype, int64_t x_row_stride, int64_t M, int64_t K, int scaling,
                             uint8_t* q, uint8_t* s, void* stream);

/*
 * MXFP8, decoded: out bfloat16 [M, K] (16-byte aligned), the values (q, s) of dq_quantize_mxfp8
 * stand for (dq_dequantize_mxfp8 of them to bfloat16), in one pass without writing q and s.
 */
DQ_API int dq_quantize_dequantize_mxfp8(const void* x, int x_dtype, int64_t x_row_stride, int64_t M, int64_t K,
                                        int scaling, void* out, void* stream);

/*
 * NVFP4, canonical operands: q uint8 [M, K / 2] (two e2m1 codes per byte, element 2i in the low
 * nibble; 8-byte aligned) and s float8_e4m3fn bytes in the 128x4 swizzled layout for M rows and
 * K / 16 scale columns, padding written as zero bytes.
 *   tensor_scale:     a device pointer to one float32, or NULL for the dynamic tensor scale
 *                     amax(|x|) / 2688 (formats.nvfp4_tensor_scale): an amax pass over x first,
 *                     one partial maximum per CTA into `scratch`, which the cast reduces; for an x
 *                     of at most 16384 elements no pass: each CTA of the cast reads all of x.
 *   scratch:          with tensor_scale NULL, DQ_NVFP4_CAST_SCRATCH_BYTES of device memory, 4-byte
 *                     aligned, of any content (nothing zeroes it); one per launch in flight. Unused
 *                     (may be NULL) with a given tensor_scale.
 *   tensor_scale_out: one float32, always written: the tensor scale used.
 */
#define DQ_NVFP4_CAST_SCRATCH_BYTES 4096 /* the amax pass's at most 1024 CTAs, a uint32 each */
DQ_API int dq_quantize_nvfp4(const void* x, int x_dtype, int64_t x_row_stride, int64_t M, int64_t K,
                             const float* tensor_scale, uint8_t* q, uint8_t* s, float* tensor_scale_out,
                             uint32_t* scratch, void* stream);

/*
 * NVFP4, decoded without the tensor scale: out float16 [M, K] (16-byte aligned), e2m1 x e4m3 block
 * scale of the (q, s) dq_quantize_nvfp4 writes (exact in f16; how the sm_90a mixed-input GEMM takes
 * an NVFP4 activation), plus tensor_scale_out; tensor_scale and scratch as for dq_quantize_nvfp4.
 */
DQ_API int dq_quantize_dequantize_nvfp4(const void* x, int x_dtype, int64_t x_row_stride, int64_t M, int64_t K,
                                        const float* tensor_scale, void* out, float* tensor_scale_out,
                                        uint32_t* scratch, void* stream);

/*
 * The MXFP8 Linear through a dense bfloat16 GEMM (csrc/decoded_linear.cpp; every arch, any GPU
 * cuBLASLt runs bfloat16 on): out = x rounded to MXFP8 @ (b_q, b_s)^T + bias, as two launches on
 * `stream`: one kernel writes x as dq_quantize_dequantize_mxfp8 does and the weight as
 * dq_dequantize_mxfp8 does (to bfloat16), both into the workspace, then a cuBLASLt GEMM (float32 accumulation, the bias added to the
 * float32 sums by its epilogue, one rounding to bfloat16; split-K partial sums reduced in float32 only).
 * cuBLASLt is found at run time (libcublasLt.so.13, else .12, the process's copy first), not linked.
 *   x, x_dtype, x_row_stride, M, K, scaling: as for dq_quantize_dequantize_mxfp8;
 *   b_q, b_s:  the MXFP8 weight [N, K] as for dq_dequantize_mxfp8;
 *   bias:      NULL or bfloat16 [N] (bias_dtype DQ_BFLOAT16, else DQ_ERR_BAD_DTYPE), 256-byte aligned;
 *   out:       bfloat16 [M, N], 256-byte aligned (the alignment cuBLASLt's heuristic assumes);
 *   M, N, K:   M, N >= 1, K a positive multiple of 32, each at most INT32_MAX (else DQ_ERR_BAD_SHAPE);
 *   workspace: 256-byte aligned, at least dq_decoded_linear_workspace_bytes(M, N, K) bytes (else
 *              DQ_ERR_BAD_CONFIG): the decoded activation, the decoded weight and cuBLASLt's
 *              workspace; one per call in flight.
 * DQ_ERR_CUBLAS when cuBLASLt cannot be loaded or returns an error (dq_error_string gives its
 * status). The first call per thread, device, shape and bias-or-not creates the cuBLASLt handle and
 * descriptors and asks its heuristic for the algorithm (host work only: capturable once made).
 */
DQ_API int dq_decoded_linear_available(void); /* 1 if cuBLASLt was found, else 0 */
DQ_API int dq_decoded_linear_workspace_bytes(int64_t M, int64_t N, int64_t K, int64_t* bytes);
DQ_API int dq_decoded_mxfp8_linear(const void* x, int x_dtype, int64_t x_row_stride, const uint8_t* b_q,
                                   const uint8_t* b_s, const void* bias, int bias_dtype, void* out, int64_t M,
                                   int64_t N, int64_t K, int scaling, void* workspace, int64_t workspace_bytes,
                                   void* stream);

/*
 * A static JSON object describing this build, for example
 *   {"version": "0.1.0", "cuda_version": 13000, "archs": ["90a", "100a"],
 *    "families": {"dequantize": ["90a", "100a"]},
 *    "skipped": [{"family": "sm90_gemm", "arch": "100a", "why": "..."}]}
 * cuda_version is CUDART_VERSION (1000 * major + 10 * minor); "archs" lists every arch with device
 * code in the library; "families" maps each kernel family to the archs it was compiled for.
 */
DQ_API const char* dq_build_info(void);

/* DQ_ABI_VERSION of the headers the library was built from. */
DQ_API int dq_abi_version(void);

/* Text for a return code of this library: a DQ_ERR_* description or cudaGetErrorString(code). */
DQ_API const char* dq_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif /* DQ_KERNELS_H */

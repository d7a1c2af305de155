// decoded_linear.cpp: dq_decoded_mxfp8_linear, the MXFP8 Linear as the activation cast and the weight
// decoded to bfloat16 (one launch, csrc/cast.cu) and a cuBLASLt GEMM, from one call (the
// decode_cublas backend's launcher).
//
// cuBLASLt is not linked: the build needs only the CUDA compiler (an isolated pip build has no cuBLAS
// headers), and a process that runs this library has torch's libcublasLt loaded already. It is
// found at run time by its soname (dlopen, the process's copy first), and the handful of
// declarations below are those of cublasLt.h (CUDA 12 and 13), their values checked against the
// header by python_tests/test_decode_cublas.py where the header is installed.

#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cstdint>
#include <unordered_map>

#include "dq_kernels.h"

namespace dq {
// csrc/cast.cu: the decoded cast of x and the weight decode to bfloat16, in one launch.
int mxfp8_linear_operands(const void* x, int x_dtype, int64_t x_row_stride, int64_t M, int64_t K, int scaling,
                          void* x_out, const uint8_t* b_q, const uint8_t* b_s, void* w_out, int64_t N,
                          cudaStream_t stream);
}  // namespace dq

namespace {

// ------------------------------------------------------------------------------------------------
// The cuBLASLt API used here (cublasLt.h).
// ------------------------------------------------------------------------------------------------
using LtStatus = int;  // cublasStatus_t; 0 is CUBLAS_STATUS_SUCCESS
using LtHandle = void*;  // cublasLtHandle_t
using LtMatmulDesc = void*;  // cublasLtMatmulDesc_t
using LtLayout = void*;  // cublasLtMatrixLayout_t
using LtPreference = void*;  // cublasLtMatmulPreference_t
struct LtAlgo {  // cublasLtMatmulAlgo_t
  uint64_t data[8];
};
struct LtHeuristic {  // cublasLtMatmulHeuristicResult_t
  LtAlgo algo;
  size_t workspace_size;
  LtStatus state;
  float waves_count;
  int reserved[4];
};

constexpr int kComputeF32 = 68;  // CUBLAS_COMPUTE_32F
constexpr int kTypeF32 = 0;  // CUDA_R_32F (cudaDataType_t)
constexpr int kTypeBF16 = 14;  // CUDA_R_16BF
constexpr int32_t kOpN = 0;  // CUBLAS_OP_N
constexpr int32_t kOpT = 1;  // CUBLAS_OP_T
constexpr int kDescTransA = 3;  // CUBLASLT_MATMUL_DESC_TRANSA
constexpr int kDescTransB = 4;  // CUBLASLT_MATMUL_DESC_TRANSB
constexpr int kDescEpilogue = 7;  // CUBLASLT_MATMUL_DESC_EPILOGUE
constexpr int kDescBiasPointer = 8;  // CUBLASLT_MATMUL_DESC_BIAS_POINTER
constexpr uint32_t kEpilogueDefault = 1;  // CUBLASLT_EPILOGUE_DEFAULT
constexpr uint32_t kEpilogueBias = 4;  // CUBLASLT_EPILOGUE_BIAS
constexpr int kPrefMaxWorkspaceBytes = 1;  // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES
constexpr int kPrefReductionSchemeMask = 3;  // CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK
// Split-K partial sums may be reduced only in the compute type (float32): CUBLASLT_REDUCTION_SCHEME_NONE
// (0) | _COMPUTE_TYPE (2), not in place in the bfloat16 output (_INPLACE, _OUTPUT_TYPE), which would
// round the sums twice.
constexpr uint32_t kFloat32Reductions = 2;
constexpr LtStatus kNotSupported = 15;  // CUBLAS_STATUS_NOT_SUPPORTED: the heuristic found no algorithm

struct CublasLt {
  LtStatus (*create)(LtHandle*);
  LtStatus (*desc_create)(LtMatmulDesc*, int compute_type, int scale_type);
  LtStatus (*desc_set)(LtMatmulDesc, int attribute, const void* value, size_t size);
  LtStatus (*layout_create)(LtLayout*, int type, uint64_t rows, uint64_t cols, int64_t ld);
  LtStatus (*preference_create)(LtPreference*);
  LtStatus (*preference_set)(LtPreference, int attribute, const void* value, size_t size);
  LtStatus (*preference_destroy)(LtPreference);
  LtStatus (*heuristic)(LtHandle, LtMatmulDesc, LtLayout a, LtLayout b, LtLayout c, LtLayout d, LtPreference,
                        int requested, LtHeuristic* results, int* returned);
  LtStatus (*matmul)(LtHandle, LtMatmulDesc, const void* alpha, const void* a, LtLayout, const void* b, LtLayout,
                     const void* beta, const void* c, LtLayout, void* d, LtLayout, const LtAlgo*, void* workspace,
                     size_t workspace_size, cudaStream_t);
  bool loaded;
};

template <typename F>
bool resolve(void* library, const char* name, F* fn) {
  *fn = reinterpret_cast<F>(dlsym(library, name));
  return *fn != nullptr;
}

CublasLt load_cublaslt() {
  CublasLt lt{};
  constexpr const char* kNames[] = {"libcublasLt.so.13", "libcublasLt.so.12"};
  void* library = nullptr;
  for (const char* name : kNames) {  // the copy torch loaded, of either version, first
    if (library == nullptr) library = dlopen(name, RTLD_NOW | RTLD_NOLOAD);
  }
  for (const char* name : kNames) {
    if (library == nullptr) library = dlopen(name, RTLD_NOW | RTLD_LOCAL);
  }
  lt.loaded = library != nullptr && resolve(library, "cublasLtCreate", &lt.create) &&
              resolve(library, "cublasLtMatmulDescCreate", &lt.desc_create) &&
              resolve(library, "cublasLtMatmulDescSetAttribute", &lt.desc_set) &&
              resolve(library, "cublasLtMatrixLayoutCreate", &lt.layout_create) &&
              resolve(library, "cublasLtMatmulPreferenceCreate", &lt.preference_create) &&
              resolve(library, "cublasLtMatmulPreferenceSetAttribute", &lt.preference_set) &&
              resolve(library, "cublasLtMatmulPreferenceDestroy", &lt.preference_destroy) &&
              resolve(library, "cublasLtMatmulAlgoGetHeuristic", &lt.heuristic) &&
              resolve(library, "cublasLtMatmul", &lt.matmul);
  return lt;
}

const CublasLt& cublaslt() {
  static const CublasLt lt = load_cublaslt();  // thread-safe static initialization
  return lt;
}

// The cuBLASLt workspace of one GEMM: what its heuristic may ask for, beside the decoded operands.
constexpr int64_t kGemmWorkspaceBytes = 4 << 20;

int64_t align_256(int64_t bytes) { return (bytes + 255) / 256 * 256; }

// One GEMM shape's cuBLASLt state on one device, made once per thread: the handle, the descriptors
// and the heuristic's algorithm. Per thread because a call sets the bias pointer on the descriptor.
// Never freed: a few hundred bytes per (device, shape, bias or not) a thread runs.
struct GemmPlan {
  LtHandle handle = nullptr;  // the thread's handle for the device
  LtMatmulDesc desc = nullptr;
  LtLayout a = nullptr, b = nullptr, d = nullptr;
  LtAlgo algo{};
};

thread_local LtStatus last_cublas_status = 0;  // reported by dq_error_string(DQ_ERR_CUBLAS)

int cublas_error(LtStatus status) {
  last_cublas_status = status;
  return DQ_ERR_CUBLAS;
}

// out [M, N] (column-major D [N, M]) = w [N, K] @ x^T, with w as cuBLAS's A read transposed and the
// decoded activation [M, K] as B.
int make_plan(const CublasLt& lt, int device, int64_t m, int64_t n, int64_t k, bool bias, GemmPlan* plan) {
  thread_local std::unordered_map<int, LtHandle> handles;  // per device
  LtStatus status = 0;
  auto handle = handles.find(device);
  if (handle == handles.end()) {
    LtHandle created = nullptr;
    status = lt.create(&created);
    if (status != 0) return cublas_error(status);
    handle = handles.emplace(device, created).first;
  }
  plan->handle = handle->second;
  status = lt.desc_create(&plan->desc, kComputeF32, kTypeF32);
  const uint32_t epilogue = bias ? kEpilogueBias : kEpilogueDefault;
  if (status == 0) status = lt.desc_set(plan->desc, kDescTransA, &kOpT, sizeof(kOpT));
  if (status == 0) status = lt.desc_set(plan->desc, kDescTransB, &kOpN, sizeof(kOpN));
  if (status == 0) status = lt.desc_set(plan->desc, kDescEpilogue, &epilogue, sizeof(epilogue));
  if (status == 0) status = lt.layout_create(&plan->a, kTypeBF16, k, n, k);
  if (status == 0) status = lt.layout_create(&plan->b, kTypeBF16, k, m, k);
  if (status == 0) status = lt.layout_create(&plan->d, kTypeBF16, n, m, n);
  if (status != 0) return cublas_error(status);

  LtPreference preference = nullptr;
  status = lt.preference_create(&preference);
  const uint64_t max_workspace = kGemmWorkspaceBytes;
  if (status == 0) status = lt.preference_set(preference, kPrefMaxWorkspaceBytes, &max_workspace, sizeof(max_workspace));
  if (status == 0)
    status = lt.preference_set(preference, kPrefReductionSchemeMask, &kFloat32Reductions, sizeof(kFloat32Reductions));
  LtHeuristic result{};
  int returned = 0;
  if (status == 0)
    status = lt.heuristic(plan->handle, plan->desc, plan->a, plan->b, plan->d, plan->d, preference, 1, &result, &returned);
  if (preference != nullptr) lt.preference_destroy(preference);
  if (status != 0) return cublas_error(status);
  if (returned < 1) return cublas_error(kNotSupported);
  plan->algo = result.algo;
  return DQ_OK;
}

struct PlanKey {
  int device;
  int64_t m, n, k;
  bool bias;
  bool operator==(const PlanKey& o) const {
    return device == o.device && m == o.m && n == o.n && k == o.k && bias == o.bias;
  }
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& key) const {
    size_t h = std::hash<int64_t>()(key.m);
    for (int64_t v : {key.n, key.k, int64_t(key.device), int64_t(key.bias)}) h = h * 1000003u ^ std::hash<int64_t>()(v);
    return h;
  }
};

}  // namespace

extern "C" int dq_decoded_linear_available(void) { return cublaslt().loaded ? 1 : 0; }

int dq_last_cublas_status() { return last_cublas_status; }

extern "C" int dq_decoded_linear_workspace_bytes(int64_t M, int64_t N, int64_t K, int64_t* bytes) {
  if (bytes == nullptr) return DQ_ERR_NULL_POINTER;
  if (M < 1 || N < 1 || K < 32 || K % 32 || M > INT32_MAX || N > INT32_MAX || K > INT32_MAX) return DQ_ERR_BAD_SHAPE;
  *bytes = align_256(M * K * 2) + align_256(N * K * 2) + kGemmWorkspaceBytes;
  return DQ_OK;
}

extern "C" int dq_decoded_mxfp8_linear(const void* x, int x_dtype, int64_t x_row_stride, const uint8_t* b_q,
                                       const uint8_t* b_s, const void* bias, int bias_dtype, void* out, int64_t M,
                                       int64_t N, int64_t K, int scaling, void* workspace, int64_t workspace_bytes,
                                       void* stream) {
  int64_t needed = 0;
  int code = dq_decoded_linear_workspace_bytes(M, N, K, &needed);
  if (code != DQ_OK) return code;
  if (x == nullptr || b_q == nullptr || b_s == nullptr || out == nullptr || workspace == nullptr)
    return DQ_ERR_NULL_POINTER;
  if (bias != nullptr && bias_dtype != DQ_BFLOAT16) return DQ_ERR_BAD_DTYPE;
  if (workspace_bytes < needed) return DQ_ERR_BAD_CONFIG;
  // 256 bytes: the alignment cuBLASLt's heuristic assumes of C, D and the bias when none is given.
  if (reinterpret_cast<uintptr_t>(workspace) % 256 || reinterpret_cast<uintptr_t>(out) % 256 ||
      (bias != nullptr && reinterpret_cast<uintptr_t>(bias) % 256))
    return DQ_ERR_MISALIGNED;
  const CublasLt& lt = cublaslt();
  if (!lt.loaded) return cublas_error(-1);

  char* base = static_cast<char*>(workspace);
  void* activation = base;  // x rounded to MXFP8, decoded: bfloat16 [M, K]
  void* weight = base + align_256(M * K * 2);  // the weight decoded: bfloat16 [N, K]
  void* gemm_workspace = static_cast<char*>(weight) + align_256(N * K * 2);
  code = dq::mxfp8_linear_operands(x, x_dtype, x_row_stride, M, K, scaling, activation, b_q, b_s, weight, N,
                                   static_cast<cudaStream_t>(stream));
  if (code != DQ_OK) return code;

  int device = 0;
  cudaError_t error = cudaGetDevice(&device);
  if (error != cudaSuccess) return error;
  thread_local std::unordered_map<PlanKey, GemmPlan, PlanKeyHash> plans;
  const PlanKey key{device, M, N, K, bias != nullptr};
  auto found = plans.find(key);
  if (found == plans.end()) {
    // Host work only, but cuBLASLt's setup may call APIs a global-mode stream capture forbids.
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    cudaThreadExchangeStreamCaptureMode(&mode);
    GemmPlan plan;
    code = make_plan(lt, device, M, N, K, bias != nullptr, &plan);
    cudaThreadExchangeStreamCaptureMode(&mode);
    if (code != DQ_OK) return code;
    found = plans.emplace(key, plan).first;
  }
  const GemmPlan& plan = found->second;
  if (bias != nullptr) {
    LtStatus status = lt.desc_set(plan.desc, kDescBiasPointer, &bias, sizeof(bias));
    if (status != 0) return cublas_error(status);
  }
  const float one = 1.0f, zero = 0.0f;
  LtStatus status = lt.matmul(plan.handle, plan.desc, &one, weight, plan.a, activation, plan.b, &zero, out, plan.d, out,
                              plan.d, &plan.algo, gemm_workspace, kGemmWorkspaceBytes,
                              static_cast<cudaStream_t>(stream));
  if (status != 0) return cublas_error(status);
  return static_cast<int>(cudaGetLastError());
}

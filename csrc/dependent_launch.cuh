// dependent_launch.cuh: programmatic dependent launch (Hopper and later) between the kernels that
// one native call enqueues back to back, so that a kernel's start-up and its first loads overlap
// the end of the kernel before it.
//
// A kernel launched with launch(..., after_previous = true) may begin once every CTA of the kernel
// before it in the stream has called allow_dependents() (or exited), so before that kernel is done.
// Until it calls wait_for_prior_grids() (which returns once the previous kernel has completed and
// its writes are visible) it may only read memory that no kernel of the call writes (the weight,
// its scales, the bias) and write no global memory at all. The call's first kernel is launched
// without the attribute, so it, and every dependent after it, began only after everything enqueued
// before the call had completed: those reads see finished data. On a GPU below 9.0 the attribute
// is not set; for a kernel launched without it both device functions do nothing.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "device_info.h"

namespace dq {

// Lets a kernel launched after this one with after_previous = true begin (each CTA calls it).
__device__ __forceinline__ void allow_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Waits until the kernel this one was launched after has completed and its writes are visible.
__device__ __forceinline__ void wait_for_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// kernel<<<grid, block, shared_bytes, stream>>>(args...), as a programmatic dependent of the
// kernel enqueued before it when after_previous is true (see above).
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                   bool after_previous, Args&&... args) {
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = after_previous && device_attribute<cudaDevAttrComputeCapabilityMajor>(0) >= 9 ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace dq

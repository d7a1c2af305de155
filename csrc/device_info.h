// device_info.h: host-side facts about the current CUDA device that kernel launches need.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <mutex>
#include <set>
#include <utility>

namespace dq {

// An attribute of the current device, queried once per device (`fallback` if the query fails).
template <cudaDeviceAttr kAttribute>
int device_attribute(int fallback) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices] = {};  // 0: not queried yet
  int device = 0, value = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return fallback;
  if (device < kMaxDevices && (value = cached[device].load(std::memory_order_relaxed)) > 0) return value;
  if (cudaDeviceGetAttribute(&value, kAttribute, device) != cudaSuccess || value < 1) value = fallback;
  if (device < kMaxDevices) cached[device].store(value, std::memory_order_relaxed);
  return value;
}

// Streaming multiprocessors of the current device (132, an H100's, if the query fails).
inline int sm_count() { return device_attribute<cudaDevAttrMultiProcessorCount>(132); }

// L2 cache bytes of the current device (50 MiB, an H100's, if the query fails).
inline int l2_bytes() { return device_attribute<cudaDevAttrL2CacheSize>(50 << 20); }

// Raises `kernel`'s dynamic shared-memory limit to `bytes` on the current device, once per kernel
// and device: the limit belongs to the device's context, and setting it on every launch cost host
// time on every GEMM call.
template <typename Kernel>
cudaError_t allow_dynamic_shared_memory(Kernel kernel, int bytes) {
  static std::mutex mutex;
  static std::set<std::pair<const void*, int>> done;  // (kernel, device)
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device)) return e;
  const std::pair<const void*, int> key{reinterpret_cast<const void*>(kernel), device};
  std::lock_guard<std::mutex> lock(mutex);
  if (done.count(key)) return cudaSuccess;
  if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)) return e;
  done.insert(key);
  return cudaSuccess;
}

}  // namespace dq

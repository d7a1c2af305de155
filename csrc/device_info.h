// device_info.h: host-side facts about the current CUDA device that kernel launches need.
#pragma once

#include <cuda_runtime.h>

#include <atomic>

namespace dq {

// Streaming multiprocessors of the current device, queried once per device (132, an H100's, if the
// query fails).
inline int sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices] = {};  // 0: not queried yet
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 132;
  if (device < kMaxDevices && (sms = cached[device].load(std::memory_order_relaxed)) > 0) return sms;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms < 1) sms = 132;
  if (device < kMaxDevices) cached[device].store(sms, std::memory_order_relaxed);
  return sms;
}

}  // namespace dq

// gradcomm/core/cuda/error.cuh — CUDA runtime errors as gradcomm::error.
//
//   GRADCOMM_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, stream));
//   // on failure throws gradcomm::error with cuda_category(), naming the call
//
// CUDA-only: include it from .cu files compiled by nvcc.
#pragma once

#if !defined(__CUDACC__)
#error "gradcomm/core/cuda/error.cuh needs nvcc (a CUDA compiler): include it only from .cu files"
#endif

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/error.hpp>

#include <cuda_runtime.h>

#include <string>

namespace gradcomm {
inline namespace v0 {

/// Throws gradcomm::error (category cuda_category(), value the cudaError_t) when
/// `status` is not cudaSuccess; `call` names what was called.
inline void cuda_check(cudaError_t status, const char* call, int rank = -1) {
  if (status != cudaSuccess) {
    throw error(std::error_code(static_cast<int>(status), cuda_category()), call, rank,
                std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status));
  }
}

/// The number of CUDA devices, 0 where there is no driver or no device (no throw).
inline int cuda_device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" state
    return 0;
  }
  return n;
}

}  // namespace v0
}  // namespace gradcomm

/// Checks a CUDA runtime call; the expression's text names the call in the error.
#define GRADCOMM_CUDA_CHECK(expr) ::gradcomm::cuda_check((expr), #expr)

// gradcomm/core/cuda/stream.cuh — the CUDA stream execution context.
//
//   cudaStream_t s; cudaStreamCreate(&s);
//   codec.encode(gradcomm::cuda_stream{s}, device_in, device_out);  // enqueued, not waited
//
// A call given a cuda_stream enqueues its kernels and copies on that stream and
// returns without synchronizing. CUDA-only: include it from .cu files.
#pragma once

#if !defined(__CUDACC__)
#error "gradcomm/core/cuda/stream.cuh needs nvcc (a CUDA compiler): include it only from .cu files"
#endif

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/cuda/error.cuh>
#include <gradcomm/core/execution.hpp>

#include <cuda_runtime.h>

namespace gradcomm {
inline namespace v0 {

/// Device work goes on `stream` (0 is the legacy default stream).
struct cuda_stream {
  /// The memory its calls read and write: a view given with it must be a device view.
  static constexpr memory_space space = memory_space::device;

  cudaStream_t stream = nullptr;

  /// Blocks until everything enqueued so far has finished (not for the hot path).
  void synchronize() const { GRADCOMM_CUDA_CHECK(cudaStreamSynchronize(stream)); }
};

static_assert(ExecutionContext<cuda_stream>);

}  // namespace v0
}  // namespace gradcomm

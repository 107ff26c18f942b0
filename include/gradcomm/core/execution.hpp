// gradcomm/core/execution.hpp — where a call's work runs.
//
//   codec.encode(gradcomm::on_host, in, out);          // finishes before returning
//   codec.encode(gradcomm::cuda_stream{s}, din, dout); // enqueued on s (cuda/stream.cuh)
//
// Every call that may run on a GPU takes an execution context as its first
// argument. Host calls finish before they return; device calls enqueue on the
// stream and never synchronize on the hot path. This header names the host
// context; the CUDA stream context is in core/cuda/stream.cuh (nvcc only).
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/tensor.hpp>

#include <concepts>

namespace gradcomm {
inline namespace v0 {

/// The host execution context: the calling thread does the work.
struct host_context {
  /// The memory its calls read and write: a view given with it must be a host view.
  static constexpr memory_space space = memory_space::host;
  friend constexpr bool operator==(host_context, host_context) noexcept { return true; }
};

/// The one host context value.
inline constexpr host_context on_host{};

/// ExecutionContext<Ctx>: a context a call may take; `Ctx::space` is the memory its
/// work reads and writes (host_context: host; cuda_stream: device).
template <class Ctx>
concept ExecutionContext = requires {
  { Ctx::space } -> std::convertible_to<memory_space>;
};
static_assert(ExecutionContext<host_context>);

/// ExecutionContextFor<Ctx, S>: an execution context whose work reads and writes memory
/// space S. A transport whose memory is the device's orders its work on one whose space is
/// device (transport/transport.hpp, Transport requirement 0).
///
///   template <gradcomm::ExecutionContextFor<gradcomm::memory_space::device> Ctx>
///   explicit my_device_transport(Ctx ctx);
template <class Ctx, memory_space S>
concept ExecutionContextFor = ExecutionContext<Ctx> && Ctx::space == S;
static_assert(ExecutionContextFor<host_context, memory_space::host>);
static_assert(!ExecutionContextFor<host_context, memory_space::device>);

}  // namespace v0
}  // namespace gradcomm

// Must not compile (nvcc): host memory handed to a codec with a cuda_stream, whose work is
// enqueued on the GPU. The message says that the view's memory space must match its
// execution context (codec/codec.hpp, Codec requirement 7).
#include <gradcomm/codec/cast.hpp>
#include <gradcomm/core/cuda/stream.cuh>

#include <cstddef>
#include <vector>

int main() {
  const std::vector<float> g(16);
  std::vector<std::byte> wire(64);
  gradcomm::bf16_codec c;
  c.encode(gradcomm::cuda_stream{}, gradcomm::host_view<const float>(g), wire);
}

// Must not compile: device memory handed to a codec with on_host, whose work the calling
// thread does on host memory. The message says that the view's memory space must match
// its execution context (codec/codec.hpp, Codec requirement 7).
#include <gradcomm/codec/cast.hpp>

#include <cstddef>
#include <vector>

int main() {
  float* d = nullptr;  // as from cudaMalloc
  const gradcomm::device_view<const float> in(d, 16);
  std::vector<std::byte> wire(64);
  gradcomm::bf16_codec c;
  c.encode(gradcomm::on_host, in, wire);
}

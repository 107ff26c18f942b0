// Must not compile: a device accumulator given to a wrapper's decode_add with on_host. The
// wrapper hands its context on to its inner codec, which refuses the view with the same
// sentence as every codec (codec/codec.hpp, Codec requirement 7).
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/sign.hpp>

#include <cstddef>
#include <vector>

int main() {
  float* d = nullptr;  // as from cudaMalloc
  const gradcomm::device_view<float> acc(d, 16);
  const std::vector<std::byte> wire(64);
  gradcomm::error_feedback<gradcomm::sign_codec> c;
  c.decode_add(gradcomm::on_host, wire, acc);
}

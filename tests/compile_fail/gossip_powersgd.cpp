// Must not compile: PowerSGD keeps its own error feedback and warm start, a second
// feedback loop inside gossip's public copies (a loss of 1e51 on least squares over a
// ring of 4 at every γ tried); the refusal reads codec_traits::stateful, not the type.
#include <gradcomm/codec/powersgd.hpp>
#include <gradcomm/comm/gossip.hpp>
#include <gradcomm/transport/local.hpp>

int main() {
  using g = gradcomm::gossip<gradcomm::powersgd_codec, gradcomm::local_transport,
                             gradcomm::ring_topology>;
  return sizeof(g) > 0;
}

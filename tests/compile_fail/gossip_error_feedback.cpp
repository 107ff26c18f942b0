// Must not compile: gossip keeps its own public copies; a codec with its own residual
// would count the error twice.
#include <gradcomm/codec/error_feedback.hpp>
#include <gradcomm/codec/sign.hpp>
#include <gradcomm/comm/gossip.hpp>
#include <gradcomm/transport/local.hpp>

int main() {
  using g = gradcomm::gossip<gradcomm::error_feedback<gradcomm::sign_codec>,
                             gradcomm::local_transport, gradcomm::ring_topology>;
  return sizeof(g) > 0;
}

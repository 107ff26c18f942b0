// Must not compile: the parameter server takes pushes from whichever worker sends first,
// and a transport without a receive from any source (NCCL) cannot do that.
#include "../unit/forwarding_transport.hpp"  // every Transport call, no recv_any

#include <gradcomm/codec/identity.hpp>
#include <gradcomm/comm/parameter_server.hpp>

int main() {
  using ps = gradcomm::parameter_server<gradcomm::identity_codec, forwarding_transport>;
  return sizeof(ps) > 0;
}

// Must not compile: a codec over something that is no transport.
#include <gradcomm/codec/identity.hpp>
#include <gradcomm/comm/allreduce.hpp>

struct not_a_transport {
  int rank() const { return 0; }
};

int main() {
  not_a_transport t;
  gradcomm::allreduce<gradcomm::identity_codec, not_a_transport> ar(t, {});
}

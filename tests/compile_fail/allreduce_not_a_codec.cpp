// Must not compile: an int is no codec. The message names the requirement.
#include <gradcomm/comm/allreduce.hpp>
#include <gradcomm/transport/local.hpp>

int main() {
  gradcomm::local_world w(1);
  w.run([](gradcomm::local_transport& t) {
    gradcomm::allreduce<int, gradcomm::local_transport> ar(t, 0);
  });
}

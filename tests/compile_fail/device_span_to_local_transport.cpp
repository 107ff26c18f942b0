// Must not compile: device memory handed to the local transport, which moves host memory
// between threads (its space is memory_space::host). The message says that a device span
// needs a device transport or a copy to host first (transport/transport.hpp,
// host_transport_calls).
#include <gradcomm/transport/local.hpp>

#include <cstddef>

int main() {
  gradcomm::local_world world(2);
  world.run([](gradcomm::local_transport& t) {
    std::byte* d = nullptr;  // as from cudaMalloc
    const gradcomm::device_bytes buf(d, 64);
    t.broadcast(buf, /*root=*/0);
  });
}

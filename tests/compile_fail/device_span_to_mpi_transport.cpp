// Must not compile: device memory handed to the MPI transport, which moves host memory
// (its space is memory_space::host). The message says that a device span needs a device
// transport or a copy to host first (transport/transport.hpp, host_transport_calls).
// Compiled with GRADCOMM_HAS_MPI=1 and mpi.h's include path (tests/compile_fail.cmake).
#include <gradcomm/transport/mpi.hpp>

#include <cstddef>

int main(int argc, char** argv) {
  gradcomm::mpi_environment env(argc, argv);
  gradcomm::mpi_transport t(env.world());
  std::byte* d = nullptr;  // as from cudaMalloc
  const gradcomm::const_device_bytes in(d, 64);
  const gradcomm::device_bytes out(d, 64 * static_cast<std::size_t>(t.size()));
  t.allgather(in, out);
}

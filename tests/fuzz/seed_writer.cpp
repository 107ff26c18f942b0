// Linked into every fuzz target: with GRADCOMM_FUZZ_WRITE_SEEDS=<dir> in the environment,
// the program writes gradcomm_fuzz::seeds() (when the target defines it) into <dir> as
// seed-0, seed-1, ... and exits before fuzzing. ctest runs it so to make the corpus.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace gradcomm_fuzz {
// Weak: a target without seeds links, and the address is null.
__attribute__((weak)) std::vector<std::vector<std::uint8_t>> seeds();
}  // namespace gradcomm_fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* dir = std::getenv("GRADCOMM_FUZZ_WRITE_SEEDS");
  if (dir == nullptr) return 0;
  std::size_t written = 0;
  if (&gradcomm_fuzz::seeds != nullptr) {
    std::filesystem::create_directories(dir);
    for (const auto& s : gradcomm_fuzz::seeds()) {
      const auto path = std::filesystem::path(dir) / ("seed-" + std::to_string(written++));
      std::ofstream f(path, std::ios::binary | std::ios::trunc);
      f.write(reinterpret_cast<const char*>(s.data()), static_cast<std::streamsize>(s.size()));
      if (!f) {
        std::fprintf(stderr, "gradcomm fuzz: cannot write %s\n", path.c_str());
        std::exit(1);
      }
    }
  }
  std::printf("gradcomm fuzz: wrote %zu seeds to %s\n", written, dir);
  std::exit(0);
}

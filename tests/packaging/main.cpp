// The program every packaging consumer builds and runs: it uses gradcomm through
// the include directories and compile definitions that the CMake targets carry,
// and calls into each vendor library that the consumer linked through an optional
// part (gradcomm::cuda, gradcomm::nccl, gradcomm::mpi, gradcomm::eigen). Exits nonzero on
// failure.
#include <gradcomm/gradcomm.hpp>

#include <cstdio>
#include <string>
#include <vector>

// Linking an optional part defines GRADCOMM_HAS_<PART>=1 and brings the vendor's
// include directories and libraries; without it the macro is 0.
#if defined(GC_CONSUMER_LINKS_CUDA)
static_assert(GRADCOMM_HAS_CUDA == 1, "gradcomm::cuda must define GRADCOMM_HAS_CUDA=1");
#include <cuda_runtime_api.h>
#else
static_assert(GRADCOMM_HAS_CUDA == 0, "GRADCOMM_HAS_CUDA set without gradcomm::cuda");
#endif
#if defined(GC_CONSUMER_LINKS_NCCL)
static_assert(GRADCOMM_HAS_NCCL == 1, "gradcomm::nccl must define GRADCOMM_HAS_NCCL=1");
#include <nccl.h>
#else
static_assert(GRADCOMM_HAS_NCCL == 0, "GRADCOMM_HAS_NCCL set without gradcomm::nccl");
#endif
#if defined(GC_CONSUMER_LINKS_MPI)
static_assert(GRADCOMM_HAS_MPI == 1, "gradcomm::mpi must define GRADCOMM_HAS_MPI=1");
#include <mpi.h>
#else
static_assert(GRADCOMM_HAS_MPI == 0, "GRADCOMM_HAS_MPI set without gradcomm::mpi");
#endif
#if defined(GC_CONSUMER_LINKS_EIGEN)
static_assert(GRADCOMM_HAS_EIGEN == 1, "gradcomm::eigen must define GRADCOMM_HAS_EIGEN=1");
#include <Eigen/Core>
static_assert(gradcomm::Codec<gradcomm::powersgd_codec>, "the umbrella brings PowerSGD");
#else
static_assert(GRADCOMM_HAS_EIGEN == 0, "GRADCOMM_HAS_EIGEN set without gradcomm::eigen");
#endif

namespace {

int failures = 0;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

}  // namespace

int main() {
  std::vector<float> grads{1.0f, 2.0f, 3.0f};
  gradcomm::host_view<const float> view = grads;
  check(view.size() == 3 && view[2] == 3.0f, "host_view over a std::vector");
  check(view.element_dtype() == gradcomm::dtype::f32, "host_view<const float> is f32");
  check(view.subview(1, 2).size_bytes() == 2 * sizeof(float), "subview size");

  try {
    throw gradcomm::decode_error("consumer::decode", "truncated header", 2);
  } catch (const gradcomm::error& e) {
    check(e.code() == gradcomm::errc::decode, "decode_error carries errc::decode");
    check(e.rank() == 2 && e.call() == "consumer::decode", "decode_error's call and rank");
    // std::system_error may append the category's message after the text.
    const std::string what = e.what();
    check(what.rfind("gradcomm: consumer::decode on rank 2: truncated header [gradcomm:1]", 0) == 0,
          "decode_error's what() names the call, the rank, the reason and the code");
  }

#if defined(GC_PACKAGE_VERSION_MAJOR)
  check(gradcomm::version.major == GC_PACKAGE_VERSION_MAJOR &&
            gradcomm::version.minor == GC_PACKAGE_VERSION_MINOR &&
            gradcomm::version.patch == GC_PACKAGE_VERSION_PATCH,
        "the package's version is the headers' version");
#endif

  // No call below needs a GPU or an MPI launcher: each only proves that the
  // vendor library was linked.
#if defined(GC_CONSUMER_LINKS_CUDA)
  int cuda_runtime = 0;
  check(cudaRuntimeGetVersion(&cuda_runtime) == cudaSuccess && cuda_runtime > 0,
        "cudaRuntimeGetVersion");
  std::printf("CUDA runtime %d\n", cuda_runtime);
#endif
#if defined(GC_CONSUMER_LINKS_NCCL)
  int nccl = 0;
  check(ncclGetVersion(&nccl) == ncclSuccess && nccl > 0, "ncclGetVersion");
  std::printf("NCCL %d\n", nccl);
#endif
#if defined(GC_CONSUMER_LINKS_MPI)
  int mpi_major = 0, mpi_minor = 0;
  check(MPI_Get_version(&mpi_major, &mpi_minor) == MPI_SUCCESS && mpi_major >= 3,
        "MPI_Get_version");
  std::printf("MPI %d.%d\n", mpi_major, mpi_minor);
#endif
#if defined(GC_CONSUMER_LINKS_EIGEN)
  std::printf("Eigen %d.%d.%d\n", EIGEN_WORLD_VERSION, EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION);
#endif

  std::printf("gradcomm %d.%d.%d consumer: %s\n", gradcomm::version.major, gradcomm::version.minor,
              gradcomm::version.patch, failures ? "FAILED" : "ok");
  return failures == 0 ? 0 : 1;
}

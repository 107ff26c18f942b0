// Philox on the device draws bit-for-bit what the host draws: the Random123 known answers
// and philox_stream words and uniforms over a few thousand indices of several streams.
// Skips (does not fail) where no GPU is present.
#include <gradcomm/core/philox.hpp>

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace gc = gradcomm;

namespace {

#define CUDA_OK(expr)                                                          \
  do {                                                                         \
    const cudaError_t err_ = (expr);                                           \
    ASSERT_EQ(err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(err_); \
  } while (0)

// Empty when a GPU can be used, else why not.
std::string no_gpu_reason() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky error for the rest of the program
    return std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(err);
  }
  if (n == 0) return "cudaGetDeviceCount found no CUDA device";
  return {};
}

#define SKIP_WITHOUT_GPU()                                                           \
  do {                                                                               \
    const std::string why_ = no_gpu_reason();                                        \
    if (!why_.empty()) GTEST_SKIP() << "no GPU, CUDA test skipped (" << why_ << ")"; \
  } while (0)

__global__ void kat_kernel(const gc::u32x4* counters, const gc::u32x2* keys, gc::u32x4* out,
                           int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = gc::philox4x32_10(counters[i], keys[i]);
}

__global__ void stream_kernel(gc::philox_stream s, std::uint64_t first, std::uint32_t n,
                              std::uint32_t* words, float* uniforms) {
  const std::uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    const std::uint32_t w = s.at(first + i);
    words[i] = w;
    uniforms[i] = gc::philox_uniform(w);
  }
}

template <class T>
struct device_buffer {
  T* p = nullptr;
  explicit device_buffer(std::size_t n) { cudaMalloc(&p, n * sizeof(T)); }
  ~device_buffer() { cudaFree(p); }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
};

}  // namespace

TEST(philox_cuda, known_answers_on_device) {
  SKIP_WITHOUT_GPU();
  const std::vector<gc::u32x4> counters = {{{0, 0, 0, 0}},
                                           {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}},
                                           {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}}};
  const std::vector<gc::u32x2> keys = {
      {{0, 0}}, {{0xffffffff, 0xffffffff}}, {{0xa4093822, 0x299f31d0}}};
  const std::uint32_t expected[3][4] = {{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
                                        {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
                                        {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}};
  const int n = 3;
  device_buffer<gc::u32x4> dc(n), dout(n);
  device_buffer<gc::u32x2> dk(n);
  ASSERT_NE(dc.p, nullptr);
  CUDA_OK(cudaMemcpy(dc.p, counters.data(), n * sizeof(gc::u32x4), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dk.p, keys.data(), n * sizeof(gc::u32x2), cudaMemcpyHostToDevice));
  kat_kernel<<<1, 32>>>(dc.p, dk.p, dout.p, n);
  CUDA_OK(cudaGetLastError());
  std::vector<gc::u32x4> got(n);
  CUDA_OK(cudaMemcpy(got.data(), dout.p, n * sizeof(gc::u32x4), cudaMemcpyDeviceToHost));
  for (int k = 0; k < n; ++k)
    for (int w = 0; w < 4; ++w) EXPECT_EQ(got[k].v[w], expected[k][w]) << "vector " << k;
}

TEST(philox_cuda, streams_match_host_bit_for_bit) {
  SKIP_WITHOUT_GPU();
  struct run {
    gc::philox_stream s;
    std::uint64_t first;
  };
  const run runs[] = {
      {{0, 0, 0, 0}, 0},
      {{0x0123456789abcdefull, 7, 3, 11}, 0},
      {{42, 1000, 7, 0xffffffff}, 12345},
      {{0xffffffffffffffffull, 0xffffffff, 0xffffffff, 0xffffffff}, (1ull << 34) - 5000},
  };
  constexpr std::uint32_t n = 5000;  // not a multiple of the block size or of 4
  device_buffer<std::uint32_t> dw(n);
  device_buffer<float> du(n);
  ASSERT_NE(dw.p, nullptr);
  ASSERT_NE(du.p, nullptr);
  for (const run& r : runs) {
    stream_kernel<<<(n + 255) / 256, 256>>>(r.s, r.first, n, dw.p, du.p);
    CUDA_OK(cudaGetLastError());
    std::vector<std::uint32_t> words(n);
    std::vector<float> uniforms(n);
    CUDA_OK(cudaMemcpy(words.data(), dw.p, n * sizeof(std::uint32_t), cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(uniforms.data(), du.p, n * sizeof(float), cudaMemcpyDeviceToHost));
    std::size_t mismatches = 0;
    for (std::uint32_t i = 0; i < n; ++i) {
      const std::uint32_t w = r.s.at(r.first + i);
      const float u = gc::philox_uniform(w);
      std::uint32_t ub = 0, gb = 0;
      std::memcpy(&ub, &u, 4);
      std::memcpy(&gb, &uniforms[i], 4);
      if (words[i] != w || ub != gb) {
        if (++mismatches <= 5)
          ADD_FAILURE() << "index " << r.first + i << ": device " << words[i] << " host " << w;
      }
    }
    EXPECT_EQ(mismatches, 0u) << "first index " << r.first;
  }
}

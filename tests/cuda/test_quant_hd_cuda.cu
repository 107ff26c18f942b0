// The per-element and per-block arithmetic of the casts, block-scaled fp8 and vector
// quantization gives the same bits on the device as on the host: fp8/f16/bf16 conversions
// both ways, fp8_block_encode / fp8_block_decode, the VQ block norm and vq_nearest.
// Skips (does not fail) where no GPU is present.
#include <gradcomm/codec/cast.hpp>
#include <gradcomm/codec/fp8_block.hpp>
#include <gradcomm/codec/vector_quant.hpp>

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace gc = gradcomm;

namespace {

#define CUDA_OK(expr)                                                          \
  do {                                                                         \
    const cudaError_t err_ = (expr);                                           \
    ASSERT_EQ(err_, cudaSuccess) << #expr << ": " << cudaGetErrorString(err_); \
  } while (0)

std::string no_gpu_reason() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
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

// A device copy of a host vector, copied back by `get`.
template <class T>
struct device_vector {
  T* p = nullptr;
  std::size_t n = 0;
  explicit device_vector(const std::vector<T>& h) : n(h.size()) {
    if (cudaMalloc(&p, sizeof(T) * (n ? n : 1)) != cudaSuccess) p = nullptr;
    if (p && n) cudaMemcpy(p, h.data(), sizeof(T) * n, cudaMemcpyHostToDevice);
  }
  explicit device_vector(std::size_t count) : device_vector(std::vector<T>(count)) {}
  ~device_vector() { cudaFree(p); }
  device_vector(const device_vector&) = delete;
  device_vector& operator=(const device_vector&) = delete;
  std::vector<T> get() const {
    std::vector<T> h(n);
    if (p && n) cudaMemcpy(h.data(), p, sizeof(T) * n, cudaMemcpyDeviceToHost);
    return h;
  }
};

std::vector<float> inputs() {
  std::vector<float> xs;
  std::mt19937 gen(3);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    const std::uint32_t u = bits(gen);
    float f;
    std::memcpy(&f, &u, 4);
    xs.push_back(f);
  }
  for (unsigned b = 0; b < 255; ++b) {  // fp8 ties
    xs.push_back((gc::to_float(gc::fp8_e4m3{static_cast<std::uint8_t>(b)}) +
                  gc::to_float(gc::fp8_e4m3{static_cast<std::uint8_t>(b + 1)})) /
                 2);
    xs.push_back((gc::to_float(gc::fp8_e5m2{static_cast<std::uint8_t>(b)}) +
                  gc::to_float(gc::fp8_e5m2{static_cast<std::uint8_t>(b + 1)})) /
                 2);
  }
  return xs;
}

__global__ void convert_kernel(const float* x, int n, std::uint32_t* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out[4 * i + 0] = gc::to_fp8_e4m3(x[i]).bits;
  out[4 * i + 1] = gc::to_fp8_e5m2(x[i]).bits;
  out[4 * i + 2] = gc::to_f16(x[i]).bits;
  out[4 * i + 3] = gc::to_bf16(x[i]).bits;
}

__global__ void widen_kernel(float* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= 65536) return;
  const auto b = static_cast<std::uint16_t>(i);
  out[4 * i + 0] = gc::to_float(gc::f16{b});
  out[4 * i + 1] = gc::to_float(gc::bf16{b});
  out[4 * i + 2] = gc::to_float(gc::fp8_e4m3{static_cast<std::uint8_t>(i & 255)});
  out[4 * i + 3] = gc::to_float(gc::fp8_e5m2{static_cast<std::uint8_t>(i & 255)});
}

template <gc::dtype E>
__global__ void fp8_block_kernel(const float* x, int n, std::uint8_t* scales, std::uint8_t* elems,
                                 float* out) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  const int begin = 32 * b;
  if (begin >= n) return;
  const unsigned count = n - begin < 32 ? n - begin : 32;
  scales[b] = gc::fp8_block_encode<E>(x + begin, count, elems + begin);
  gc::fp8_block_decode<E, false>(scales[b], elems + begin, count, out + begin);
}

template <int D>
__global__ void vq_kernel(const float* y, int groups, const gc::vq_search_tables* t,
                          std::uint8_t* codes) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  if (g < groups) codes[g] = gc::vq_nearest<D>(y + D * g, *t);
}

__global__ void vq_norm_kernel(const float* x, int blocks, float* scale, float* y) {
  const int b = blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= blocks) return;
  const gc::detail::vq_norm nm = gc::detail::vq_block_norm<false>(x + 256 * b, 256);
  scale[b] = nm.scale;
  for (int i = 0; i < 256; ++i)
    y[256 * b + i] = gc::detail::vq_normalize<false>(x + 256 * b, i, nm);
}

std::uint32_t bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

}  // namespace

TEST(QuantHdCuda, ConversionsMatchTheHost) {
  SKIP_WITHOUT_GPU();
  const auto x = inputs();
  const int n = static_cast<int>(x.size());
  device_vector<float> dx(x);
  device_vector<std::uint32_t> dout(4 * x.size());
  convert_kernel<<<(n + 255) / 256, 256>>>(dx.p, n, dout.p);
  CUDA_OK(cudaDeviceSynchronize());
  const auto got = dout.get();
  for (int i = 0; i < n; ++i) {
    ASSERT_EQ(got[4 * i + 0], gc::to_fp8_e4m3(x[i]).bits) << x[i];
    ASSERT_EQ(got[4 * i + 1], gc::to_fp8_e5m2(x[i]).bits) << x[i];
    ASSERT_EQ(got[4 * i + 2], gc::to_f16(x[i]).bits) << x[i];
    ASSERT_EQ(got[4 * i + 3], gc::to_bf16(x[i]).bits) << x[i];
  }
  device_vector<float> dw(4 * 65536);
  widen_kernel<<<256, 256>>>(dw.p);
  CUDA_OK(cudaDeviceSynchronize());
  const auto w = dw.get();
  for (int i = 0; i < 65536; ++i) {
    const auto b = static_cast<std::uint16_t>(i);
    const auto b8 = static_cast<std::uint8_t>(i & 255);
    ASSERT_EQ(bits(w[4 * i + 0]), bits(gc::to_float(gc::f16{b}))) << i;
    ASSERT_EQ(bits(w[4 * i + 1]), bits(gc::to_float(gc::bf16{b}))) << i;
    ASSERT_EQ(bits(w[4 * i + 2]), bits(gc::to_float(gc::fp8_e4m3{b8}))) << i;
    ASSERT_EQ(bits(w[4 * i + 3]), bits(gc::to_float(gc::fp8_e5m2{b8}))) << i;
  }
}

TEST(QuantHdCuda, Fp8BlocksMatchTheHost) {
  SKIP_WITHOUT_GPU();
  std::mt19937 gen(5);
  std::uniform_real_distribution<double> mant(1.0, 2.0);
  std::uniform_int_distribution<int> ex(-140, 120), spread(-25, 5);
  const int n = 32 * 4000 + 17;
  std::vector<float> x(n);
  int be = 0;
  for (int i = 0; i < n; ++i) {
    if (i % 32 == 0) be = ex(gen);
    x[i] =
        static_cast<float>(std::ldexp(mant(gen), std::max(-149, std::min(127, be + spread(gen)))));
    if (i % 3 == 0) x[i] = -x[i];
    if (i % 29 == 0) x[i] = 0.0f;
  }
  const int nb = (n + 31) / 32;
  for (gc::dtype t : {gc::dtype::fp8_e4m3, gc::dtype::fp8_e5m2}) {
    device_vector<float> dx(x), dout(static_cast<std::size_t>(n));
    device_vector<std::uint8_t> ds(static_cast<std::size_t>(nb)), de(static_cast<std::size_t>(n));
    if (t == gc::dtype::fp8_e4m3) {
      fp8_block_kernel<gc::dtype::fp8_e4m3><<<(nb + 127) / 128, 128>>>(dx.p, n, ds.p, de.p, dout.p);
    } else {
      fp8_block_kernel<gc::dtype::fp8_e5m2><<<(nb + 127) / 128, 128>>>(dx.p, n, ds.p, de.p, dout.p);
    }
    CUDA_OK(cudaDeviceSynchronize());
    const gc::fp8_block_codec codec(t);
    std::vector<std::byte> wire(codec.max_encoded_bytes(x.size()));
    codec.encode(x, wire);
    std::vector<float> out(x.size());
    codec.decode(wire, out);
    const auto s = ds.get(), e = de.get();
    const auto o = dout.get();
    for (int b = 0; b < nb; ++b) {
      ASSERT_EQ(s[b], std::to_integer<std::uint8_t>(wire[gc::wire_header_bytes + b])) << b;
    }
    for (int i = 0; i < n; ++i) {
      ASSERT_EQ(e[i], std::to_integer<std::uint8_t>(wire[gc::wire_header_bytes + nb + i])) << i;
      ASSERT_EQ(bits(o[i]), bits(out[i])) << i;
    }
  }
}

TEST(QuantHdCuda, VectorQuantMatchesTheHost) {
  SKIP_WITHOUT_GPU();
  std::mt19937 gen(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int blocks = 2000;
  std::vector<float> x(256 * blocks);
  for (int b = 0; b < blocks; ++b) {
    const float s = std::ldexp(1.0f, b % 60 - 30);  // scales far apart, some in double
    for (int i = 0; i < 256; ++i) x[256 * b + i] = s * nd(gen);
  }
  x[5] = 1e-42f;
  device_vector<float> dx(x), dscale(static_cast<std::size_t>(blocks)), dy(x.size());
  vq_norm_kernel<<<(blocks + 63) / 64, 64>>>(dx.p, blocks, dscale.p, dy.p);
  CUDA_OK(cudaDeviceSynchronize());
  const auto ys = dy.get(), scales = dscale.get();
  for (int b = 0; b < blocks; ++b) {
    const auto nm = gc::detail::vq_block_norm<false>(x.data() + 256 * b, 256);
    ASSERT_EQ(bits(scales[b]), bits(nm.scale)) << b;
    for (int i = 0; i < 256; ++i) {
      ASSERT_EQ(bits(ys[256 * b + i]),
                bits(gc::detail::vq_normalize<false>(x.data() + 256 * b, i, nm)))
          << b << " " << i;
    }
  }
  for (unsigned d : {2u, 4u, 8u}) {
    const gc::vq_search_tables& t = gc::detail::vq_gaussian_tables(d);
    device_vector<gc::vq_search_tables> dt(std::vector<gc::vq_search_tables>{t});
    const int groups = static_cast<int>(ys.size() / d);
    device_vector<std::uint8_t> dc(static_cast<std::size_t>(groups));
    const int grid = (groups + 255) / 256;
    if (d == 2) vq_kernel<2><<<grid, 256>>>(dy.p, groups, dt.p, dc.p);
    if (d == 4) vq_kernel<4><<<grid, 256>>>(dy.p, groups, dt.p, dc.p);
    if (d == 8) vq_kernel<8><<<grid, 256>>>(dy.p, groups, dt.p, dc.p);
    CUDA_OK(cudaDeviceSynchronize());
    const auto codes = dc.get();
    // The host's codes: the codec's own (dispatched) encode of the same blocks.
    const gc::vq_gaussian_codec codec({.dim = d});
    std::vector<std::byte> wire(codec.max_encoded_bytes(x.size()));
    codec.encode(x, wire);
    const std::size_t at = gc::wire_header_bytes + 8 + 4 * static_cast<std::size_t>(blocks);
    for (int g = 0; g < groups; ++g) {
      ASSERT_EQ(codes[g], std::to_integer<std::uint8_t>(wire[at + g]))
          << "d " << d << " group " << g;
    }
  }
}

// gradcomm/core/tensor.hpp — views of tensors that know where their memory lives.
//
//   std::vector<float> g(1024);
//   gradcomm::host_view<const float> in = g;          // host memory: implicit
//   float* d = ...;                                   // from cudaMalloc
//   auto dv = gradcomm::device_view<float>(d, 1024);  // device memory: explicit
//   // codec.encode(dv, out) does not compile where encode takes a host_view.
//
// A view is a pointer and an element count; it owns nothing. The memory space is
// part of the type, so host code cannot be handed device memory by mistake, and
// only host views can be indexed or iterated.
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/dtype.hpp>

#include <cstddef>
#include <ranges>
#include <span>
#include <type_traits>
#include <vector>

namespace gradcomm {
inline namespace v0 {

/// Where a buffer lives.
enum class memory_space : unsigned char { host, device };

/// A typed, non-owning view of `size()` elements of T in memory space S.
template <class T, memory_space S>
class tensor_view {
 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  static constexpr memory_space space = S;

  constexpr tensor_view() noexcept = default;
  /// From a raw pointer: explicit, because only the caller knows where it points.
  constexpr tensor_view(T* data, std::size_t size) noexcept : data_(data), size_(size) {}

  /// Host views convert implicitly from contiguous host containers.
  template <class U, std::size_t E>
  requires(
      S == memory_space::host &&
      std::is_convertible_v<U (*)[], T (*)[]>) constexpr tensor_view(std::span<U, E> s) noexcept
      : data_(s.data()), size_(s.size()) {}
  template <class U, class A>
  requires(
      S == memory_space::host &&
      std::is_convertible_v<U (*)[], T (*)[]>) constexpr tensor_view(std::vector<U, A>& v) noexcept
      : data_(v.data()), size_(v.size()) {}
  template <class U, class A>
  requires(S == memory_space::host && std::is_const_v<T> &&
           std::is_convertible_v<
               const U (*)[], T (*)[]>) constexpr tensor_view(const std::vector<U, A>& v) noexcept
      : data_(v.data()), size_(v.size()) {}

  /// view<T> converts to view<const T> in the same space, never across spaces.
  template <class U>
  requires(!std::is_same_v<U, T> && std::is_convertible_v<U (*)[], T (*)[]>) constexpr tensor_view(
      tensor_view<U, S> o) noexcept
      : data_(o.data()), size_(o.size()) {}

  GRADCOMM_HD constexpr T* data() const noexcept { return data_; }
  GRADCOMM_HD constexpr std::size_t size() const noexcept { return size_; }
  GRADCOMM_HD constexpr std::size_t size_bytes() const noexcept { return size_ * sizeof(T); }
  GRADCOMM_HD constexpr bool empty() const noexcept { return size_ == 0; }
  /// The element type's tag (element types only).
  static constexpr gradcomm::dtype element_dtype() noexcept requires gradcomm::element_type<T> {
    return dtype_of<T>;
  }

  /// Elements [offset, offset + count); the caller keeps it in range.
  constexpr tensor_view subview(std::size_t offset, std::size_t count) const noexcept {
    return {data_ + offset, count};
  }

  constexpr T& operator[](std::size_t i) const noexcept requires(S == memory_space::host) {
    return data_[i];
  }
  constexpr T* begin() const noexcept requires(S == memory_space::host) { return data_; }
  constexpr T* end() const noexcept requires(S == memory_space::host) { return data_ + size_; }
  /// The same elements as a std::span (host only).
  constexpr std::span<T> span() const noexcept requires(S == memory_space::host) {
    return {data_, size_};
  }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

template <class T>
using host_view = tensor_view<T, memory_space::host>;
template <class T>
using device_view = tensor_view<T, memory_space::device>;

/// Bytes in a memory space: what transports move. A host one converts to the
/// std::span<std::byte> (or span of const bytes) that host code and the host transports take;
/// a device one converts to nothing host code can read.
///
///   gradcomm::const_host_bytes in = std::as_bytes(std::span(v));
///   gradcomm::device_bytes d(static_cast<std::byte*>(p), n);  // p from cudaMalloc
template <memory_space S>
using byte_view = tensor_view<std::byte, S>;
template <memory_space S>
using const_byte_view = tensor_view<const std::byte, S>;
using host_bytes = byte_view<memory_space::host>;
using const_host_bytes = const_byte_view<memory_space::host>;
using device_bytes = byte_view<memory_space::device>;
using const_device_bytes = const_byte_view<memory_space::device>;

template <class T, class A>
tensor_view(std::vector<T, A>&) -> tensor_view<T, memory_space::host>;
template <class T, class A>
tensor_view(const std::vector<T, A>&) -> tensor_view<const T, memory_space::host>;

/// A type-erased view (pointer, count, dtype, space) for code that handles many
/// tensors of different types at run time, such as bucketing.
struct tensor_ref {
  void* data = nullptr;
  std::size_t size = 0;
  gradcomm::dtype type = gradcomm::dtype::f32;
  memory_space space = memory_space::host;

  tensor_ref() = default;
  template <element_type T, memory_space S>
  tensor_ref(tensor_view<T, S> v) noexcept
      : data(const_cast<std::remove_cv_t<T>*>(v.data())),
        size(v.size()),
        type(dtype_of<T>),
        space(S) {}
  std::size_t size_bytes() const noexcept { return size * dtype_size(type); }
};

}  // namespace v0
}  // namespace gradcomm

namespace std::ranges {
/// A view owns nothing: its elements outlive it, so a host view converts to a std::span
/// even as a temporary (`std::span<std::byte> s = gradcomm::host_bytes(p, n);`).
template <class T, gradcomm::memory_space S>
inline constexpr bool enable_borrowed_range<gradcomm::tensor_view<T, S>> = true;
}  // namespace std::ranges

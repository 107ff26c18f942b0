// gradcomm/core/error.hpp — one exception type with categories, and its kinds.
//
//   try { codec.decode(bytes, out); }
//   catch (const gradcomm::decode_error& e) { log(e.what()); }  // names the defect
//
// `gradcomm::error` is a std::system_error. Its code's category says where the
// failure came from: the library itself, CUDA, NCCL or MPI. Every error names the
// call that failed, the rank it failed on (or -1 where no rank applies) and why.
#pragma once

#include <gradcomm/core/config.hpp>

#include <cstddef>
#include <string>
#include <system_error>
#include <utility>

namespace gradcomm {
inline namespace v0 {

/// The library's own error codes (category `library_category()`).
enum class errc : int {
  decode = 1,   ///< malformed bytes handed to a decoder
  timeout = 2,  ///< a peer did not arrive before the deadline
  peer = 3,     ///< a peer failed and released this rank
  invalid_argument = 4,
  buffer_too_small = 5,
  unsupported = 6,
  internal = 7,
};

namespace detail {

class library_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "gradcomm"; }
  std::string message(int c) const override {
    switch (static_cast<errc>(c)) {
      case errc::decode: return "malformed payload";
      case errc::timeout: return "deadline passed";
      case errc::peer: return "peer failed";
      case errc::invalid_argument: return "invalid argument";
      case errc::buffer_too_small: return "buffer too small";
      case errc::unsupported: return "unsupported";
      case errc::internal: return "internal error";
    }
    return "unknown gradcomm error " + std::to_string(c);
  }
};

// Vendor categories hold the vendor's numeric code; the vendor's own text (from
// cudaGetErrorString, ncclGetErrorString, MPI_Error_string) travels as the reason,
// so this header needs none of their headers.
class vendor_category_impl final : public std::error_category {
 public:
  explicit constexpr vendor_category_impl(const char* n) noexcept : name_(n) {}
  const char* name() const noexcept override { return name_; }
  std::string message(int c) const override {
    return std::string(name_) + " error " + std::to_string(c);
  }

 private:
  const char* name_;
};

}  // namespace detail

/// Category of errors raised by gradcomm itself.
inline const std::error_category& library_category() noexcept {
  static const detail::library_category_impl c;
  return c;
}
/// Category of CUDA runtime errors (value: the cudaError_t).
inline const std::error_category& cuda_category() noexcept {
  static const detail::vendor_category_impl c("cuda");
  return c;
}
/// Category of NCCL errors (value: the ncclResult_t).
inline const std::error_category& nccl_category() noexcept {
  static const detail::vendor_category_impl c("nccl");
  return c;
}
/// Category of MPI errors (value: the MPI error code).
inline const std::error_category& mpi_category() noexcept {
  static const detail::vendor_category_impl c("mpi");
  return c;
}

inline std::error_code make_error_code(errc e) noexcept {
  return {static_cast<int>(e), library_category()};
}

/// The one exception type of gradcomm. what() reads
/// "gradcomm: <call> on rank <r>: <reason> [<category>:<code>]".
class error : public std::system_error {
 public:
  error(std::error_code code, std::string call, int rank, std::string reason)
      : std::system_error(code),
        call_(std::move(call)),
        reason_(std::move(reason)),
        what_(format(code, call_, rank, reason_)),
        rank_(rank) {}

  /// "gradcomm: <call> on rank <r>: <reason> [<category>:<code>]".
  const char* what() const noexcept override { return what_.c_str(); }

  /// The API call that failed, e.g. "local_transport::allreduce".
  const std::string& call() const noexcept { return call_; }
  /// The rank the failure was seen on, or -1.
  int rank() const noexcept { return rank_; }
  /// Why it failed, in words.
  const std::string& reason() const noexcept { return reason_; }

 private:
  static std::string format(const std::error_code& code, const std::string& call, int rank,
                            const std::string& reason) {
    std::string s = "gradcomm: " + call;
    if (rank >= 0) s += " on rank " + std::to_string(rank);
    s += ": " + reason + " [" + code.category().name() + ":" + std::to_string(code.value()) + "]";
    return s;
  }

  std::string call_;
  std::string reason_;
  std::string what_;
  int rank_;
};

/// Malformed bytes: a decoder names the defect (truncation, bad magic, out-of-range
/// index, ...). Thrown before anything is written outside the caller's buffers.
class decode_error : public error {
 public:
  decode_error(std::string call, std::string defect, int rank = -1)
      : error(make_error_code(errc::decode), std::move(call), rank, std::move(defect)) {}
};

/// A peer did not arrive before the deadline. `peer()` names it (or -1 when
/// several did not; the reason lists them).
class timeout_error : public error {
 public:
  timeout_error(std::string call, int rank, int peer, std::string reason)
      : error(make_error_code(errc::timeout), std::move(call), rank, std::move(reason)),
        peer_(peer) {}
  int peer() const noexcept { return peer_; }

 private:
  int peer_;
};

/// A peer failed (threw, exited); this rank was released instead of left waiting.
class peer_error : public error {
 public:
  peer_error(std::string call, int rank, int peer, std::string reason)
      : error(make_error_code(errc::peer), std::move(call), rank, std::move(reason)), peer_(peer) {}
  int peer() const noexcept { return peer_; }

 private:
  int peer_;
};

namespace detail {
[[noreturn]] inline void throw_invalid_argument(std::string call, std::string reason,
                                                int rank = -1) {
  throw error(make_error_code(errc::invalid_argument), std::move(call), rank, std::move(reason));
}
[[noreturn]] inline void throw_buffer_too_small(std::string call, std::size_t need,
                                                std::size_t have, int rank = -1) {
  throw error(make_error_code(errc::buffer_too_small), std::move(call), rank,
              "needs " + std::to_string(need) + " bytes, the buffer has " + std::to_string(have));
}
}  // namespace detail

}  // namespace v0
}  // namespace gradcomm

template <>
struct std::is_error_code_enum<gradcomm::errc> : std::true_type {};

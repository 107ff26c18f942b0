// tests/support/allocation_counter.hpp — a global operator new that counts every allocation
// of the program, for tests that check a call allocates nothing once its buffers exist.
//
//   #include "../support/allocation_counter.hpp"  // in one translation unit of the program
//   using gradcomm_test::g_allocations;
//   const long before = g_allocations.load();
//   codec.encode(in, out);
//   EXPECT_EQ(g_allocations.load() - before, 0);
//
// It replaces operator new and delete (plain and nothrow, the latter for std::stable_sort's
// buffer) with malloc and free that count: replacements cannot be inline, so only one
// translation unit of a program may include this header.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

// GCC sees free() on memory from operator new, not knowing that this program's operator
// new is malloc.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

namespace gradcomm_test {
/// Allocations made by this program so far (operator new, plain and nothrow).
inline std::atomic<long> g_allocations{0};
}  // namespace gradcomm_test

void* operator new(std::size_t n) {
  gradcomm_test::g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {  // std::stable_sort's
  gradcomm_test::g_allocations.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n ? n : 1);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }

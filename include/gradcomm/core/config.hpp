// gradcomm/core/config.hpp — version, the host/device macro and feature tests.
//
// Every gradcomm header includes this one first. It pulls in no CUDA, NCCL, MPI or
// Eigen header: the feature macros below only say what the build linked, and code that
// needs the vendor headers lives in `.cuh` files or behind those macros.
#pragma once

#define GRADCOMM_VERSION_MAJOR 0
#define GRADCOMM_VERSION_MINOR 1
#define GRADCOMM_VERSION_PATCH 0

/// GRADCOMM_HD marks functions that run on the host and, under nvcc, on the device.
/// The arithmetic of one element or one block is written once with it and shared
/// by the CPU loops and the CUDA kernels.
#if defined(__CUDACC__)
#define GRADCOMM_HD __host__ __device__
#define GRADCOMM_CUDA_COMPILER 1
#else
#define GRADCOMM_HD
#define GRADCOMM_CUDA_COMPILER 0
#endif

/// Code compiled for the device pass of nvcc.
#if defined(__CUDA_ARCH__)
#define GRADCOMM_DEVICE_PASS 1
#else
#define GRADCOMM_DEVICE_PASS 0
#endif

// Set to 1 by the optional CMake targets gradcomm::cuda, gradcomm::nccl,
// gradcomm::mpi and gradcomm::eigen; 0 when the program was not linked with that part.
#ifndef GRADCOMM_HAS_CUDA
#define GRADCOMM_HAS_CUDA 0
#endif
#ifndef GRADCOMM_HAS_NCCL
#define GRADCOMM_HAS_NCCL 0
#endif
#ifndef GRADCOMM_HAS_MPI
#define GRADCOMM_HAS_MPI 0
#endif
#ifndef GRADCOMM_HAS_EIGEN
#define GRADCOMM_HAS_EIGEN 0
#endif

#if defined(__has_builtin)
#define GRADCOMM_HAS_BUILTIN(x) __has_builtin(x)
#else
#define GRADCOMM_HAS_BUILTIN(x) 0
#endif

#if __cplusplus < 202002L && !defined(_MSVC_LANG)
#error "gradcomm needs C++20"
#endif

namespace gradcomm {
inline namespace v0 {

/// The library's version as numbers, for run-time checks against the headers.
struct version_info {
  int major, minor, patch;
};
inline constexpr version_info version{GRADCOMM_VERSION_MAJOR, GRADCOMM_VERSION_MINOR,
                                      GRADCOMM_VERSION_PATCH};

}  // namespace v0
}  // namespace gradcomm

# Resolves GRADCOMM_WITH_{CUDA,NCCL,MPI,EIGEN} (AUTO / ON / OFF) into the optional
# INTERFACE targets gradcomm_cuda, gradcomm_nccl, gradcomm_mpi and gradcomm_eigen
# (exported as gradcomm::cuda, gradcomm::nccl, gradcomm::mpi, gradcomm::eigen). Sets
# GRADCOMM_HAS_<PART> to ON or OFF. AUTO uses what is found; ON and missing stops
# configuration.

function(_gradcomm_missing part what package)
  message(FATAL_ERROR
    "GRADCOMM_WITH_${part}=ON but ${what} was not found. Install it "
    "(${package}) or configure with -DGRADCOMM_WITH_${part}=AUTO or OFF.")
endfunction()

foreach(_part CUDA NCCL MPI EIGEN)
  string(TOUPPER "${GRADCOMM_WITH_${_part}}" _v)
  if(NOT _v MATCHES "^(AUTO|ON|OFF|TRUE|FALSE|YES|NO|1|0)$")
    message(FATAL_ERROR "GRADCOMM_WITH_${_part} must be AUTO, ON or OFF (got '${GRADCOMM_WITH_${_part}}')")
  endif()
  if(_v MATCHES "^(TRUE|YES|1)$")
    set(_v ON)
  elseif(_v MATCHES "^(FALSE|NO|0)$")
    set(_v OFF)
  endif()
  set(_gc_want_${_part} ${_v})
endforeach()

# ---- CUDA ------------------------------------------------------------------
# The toolkit (headers, cudart) makes gradcomm::cuda; nvcc, where present, also
# lets this project build its CUDA tests (GRADCOMM_CUDA_LANGUAGE).
set(GRADCOMM_HAS_CUDA OFF)
set(GRADCOMM_CUDA_LANGUAGE OFF)
if(NOT _gc_want_CUDA STREQUAL "OFF")
  if(NOT CUDAToolkit_ROOT AND EXISTS /usr/local/cuda AND NOT DEFINED ENV{CUDAToolkit_ROOT})
    set(CUDAToolkit_ROOT /usr/local/cuda)
  endif()
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND)
    set(GRADCOMM_HAS_CUDA ON)
    add_library(gradcomm_cuda INTERFACE)
    add_library(gradcomm::cuda ALIAS gradcomm_cuda)
    set_target_properties(gradcomm_cuda PROPERTIES EXPORT_NAME cuda)
    target_link_libraries(gradcomm_cuda INTERFACE gradcomm CUDA::cudart)
    target_compile_definitions(gradcomm_cuda INTERFACE GRADCOMM_HAS_CUDA=1)
    include(CheckLanguage)
    if(NOT CMAKE_CUDA_COMPILER AND CUDAToolkit_NVCC_EXECUTABLE)
      set(CMAKE_CUDA_COMPILER "${CUDAToolkit_NVCC_EXECUTABLE}")
    endif()
    check_language(CUDA)
    if(CMAKE_CUDA_COMPILER)
      if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
        # Hopper (H100/H200) by default; override with -DCMAKE_CUDA_ARCHITECTURES.
        set(CMAKE_CUDA_ARCHITECTURES 90)
      endif()
      enable_language(CUDA)
      set(GRADCOMM_CUDA_LANGUAGE ON)
    endif()
  elseif(_gc_want_CUDA STREQUAL "ON")
    _gradcomm_missing(CUDA "the CUDA Toolkit" "Debian package nvidia-cuda-toolkit, or NVIDIA's toolkit under /usr/local/cuda")
  endif()
endif()

# ---- NCCL ------------------------------------------------------------------
# Looked for in the usual places and inside the CUDA toolkit's own folders.
set(GRADCOMM_HAS_NCCL OFF)
if(NOT _gc_want_NCCL STREQUAL "OFF")
  if(GRADCOMM_HAS_CUDA)
    set(_gc_nccl_hints ${CUDAToolkit_INCLUDE_DIRS} ${CUDAToolkit_LIBRARY_DIR}
        ${CUDAToolkit_LIBRARY_ROOT} ${CUDAToolkit_TARGET_DIR})
    find_path(GRADCOMM_NCCL_INCLUDE_DIR nccl.h
      HINTS ENV NCCL_ROOT ${NCCL_ROOT} ${_gc_nccl_hints} PATH_SUFFIXES include)
    find_library(GRADCOMM_NCCL_LIBRARY nccl
      HINTS ENV NCCL_ROOT ${NCCL_ROOT} ${_gc_nccl_hints} PATH_SUFFIXES lib lib64)
  endif()
  if(GRADCOMM_HAS_CUDA AND GRADCOMM_NCCL_INCLUDE_DIR AND GRADCOMM_NCCL_LIBRARY)
    set(GRADCOMM_HAS_NCCL ON)
    add_library(gradcomm_nccl INTERFACE)
    add_library(gradcomm::nccl ALIAS gradcomm_nccl)
    set_target_properties(gradcomm_nccl PROPERTIES EXPORT_NAME nccl)
    target_include_directories(gradcomm_nccl INTERFACE ${GRADCOMM_NCCL_INCLUDE_DIR})
    target_link_libraries(gradcomm_nccl INTERFACE gradcomm_cuda ${GRADCOMM_NCCL_LIBRARY})
    target_compile_definitions(gradcomm_nccl INTERFACE GRADCOMM_HAS_NCCL=1)
  elseif(_gc_want_NCCL STREQUAL "ON")
    if(_gc_want_CUDA STREQUAL "OFF")
      message(FATAL_ERROR
        "GRADCOMM_WITH_NCCL=ON needs gradcomm::cuda, but GRADCOMM_WITH_CUDA=OFF. Configure with "
        "-DGRADCOMM_WITH_CUDA=AUTO or ON (Debian package nvidia-cuda-toolkit), or with "
        "-DGRADCOMM_WITH_NCCL=AUTO or OFF.")
    elseif(NOT GRADCOMM_HAS_CUDA)
      _gradcomm_missing(NCCL "the CUDA Toolkit (NCCL needs it)" "GRADCOMM_WITH_CUDA, Debian package nvidia-cuda-toolkit")
    endif()
    _gradcomm_missing(NCCL "NCCL (nccl.h, libnccl)" "Debian package libnccl-dev, or set NCCL_ROOT")
  endif()
endif()

# ---- MPI -------------------------------------------------------------------
set(GRADCOMM_HAS_MPI OFF)
if(NOT _gc_want_MPI STREQUAL "OFF")
  # The C API through the CXX component (this project enables no C language, and
  # neither need its users); MPI_CXX_SKIP_MPICXX keeps the deprecated C++ binding
  # declarations out of mpi.h, though MPI::MPI_CXX still links their library.
  set(MPI_CXX_SKIP_MPICXX ON CACHE BOOL "Skip the MPI C++ bindings")
  find_package(MPI QUIET COMPONENTS CXX)
  if(MPI_CXX_FOUND)
    set(GRADCOMM_HAS_MPI ON)
    add_library(gradcomm_mpi INTERFACE)
    add_library(gradcomm::mpi ALIAS gradcomm_mpi)
    set_target_properties(gradcomm_mpi PROPERTIES EXPORT_NAME mpi)
    target_link_libraries(gradcomm_mpi INTERFACE gradcomm MPI::MPI_CXX)
    target_compile_definitions(gradcomm_mpi INTERFACE GRADCOMM_HAS_MPI=1)
  elseif(_gc_want_MPI STREQUAL "ON")
    _gradcomm_missing(MPI "MPI (C bindings)" "Debian packages libopenmpi-dev and openmpi-bin")
  endif()
endif()

# ---- Eigen -----------------------------------------------------------------
# Headers only: the CPU linear algebra of PowerSGD (codec/powersgd.hpp).
set(GRADCOMM_HAS_EIGEN OFF)
if(NOT _gc_want_EIGEN STREQUAL "OFF")
  find_package(Eigen3 3.3 QUIET NO_MODULE)
  if(TARGET Eigen3::Eigen)
    set(GRADCOMM_HAS_EIGEN ON)
    add_library(gradcomm_eigen INTERFACE)
    add_library(gradcomm::eigen ALIAS gradcomm_eigen)
    set_target_properties(gradcomm_eigen PROPERTIES EXPORT_NAME eigen)
    target_link_libraries(gradcomm_eigen INTERFACE gradcomm Eigen3::Eigen)
    target_compile_definitions(gradcomm_eigen INTERFACE GRADCOMM_HAS_EIGEN=1)
  elseif(_gc_want_EIGEN STREQUAL "ON")
    _gradcomm_missing(EIGEN "Eigen 3.3 or later (Eigen3Config.cmake)" "Debian package libeigen3-dev")
  endif()
endif()

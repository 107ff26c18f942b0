# Combinations that cannot work must not compile, and must say why (ctest label
# compile_fail): each tests/compile_fail/<name>.cpp is compiled with -fsyntax-only and
# the test passes when the compiler's output holds the expected sentence.
set(_gc_cf_dir ${CMAKE_CURRENT_SOURCE_DIR}/compile_fail)
set(_gc_cf_cases
  "allreduce_not_a_codec|C must model gradcomm::Codec"
  "allreduce_not_a_transport|T must model gradcomm::Transport"
  "gossip_error_feedback|GossipCodec"
  "gossip_powersgd|GossipCodec|eigen"
  "parameter_server_without_recv_any|T must model gradcomm::AsyncTransport"
  "device_view_on_host|a view's memory space must match its execution context"
  "device_view_decode_add_on_host|a view's memory space must match its execution context"
  "device_span_to_local_transport|the local transport moves host memory.*a device span needs a device transport")
foreach(_case IN LISTS _gc_cf_cases)
  string(REPLACE "|" ";" _parts "${_case}")
  list(GET _parts 0 _name)
  list(GET _parts 1 _expect)
  # A third field "eigen": the case includes PowerSGD, which needs Eigen's include
  # directory and GRADCOMM_HAS_EIGEN=1; no test where Eigen is missing.
  set(_flags "")
  list(LENGTH _parts _n)
  if(_n GREATER 2)
    if(NOT TARGET Eigen3::Eigen)
      continue()
    endif()
    get_target_property(_eigen Eigen3::Eigen INTERFACE_INCLUDE_DIRECTORIES)
    set(_flags -DGRADCOMM_HAS_EIGEN=1 -I${_eigen})
  endif()
  add_test(NAME compile_fail.${_name}
           COMMAND ${CMAKE_CXX_COMPILER} -std=c++20 -fsyntax-only ${_flags}
                   -I${gradcomm_SOURCE_DIR}/include ${_gc_cf_dir}/${_name}.cpp)
  # With a pass expression ctest ignores the exit code: the sentence is the check
  # (and a successful compile prints none).
  set_tests_properties(compile_fail.${_name} PROPERTIES
    LABELS compile_fail PASS_REGULAR_EXPRESSION "${_expect}")
endforeach()

# With MPI (gradcomm::mpi), the refusals that name the MPI transport: compiled with its
# definitions and mpi.h's include path, as a target linking gradcomm::mpi would be. Without
# MPI they are skipped, not failed.
set(_gc_cf_mpi_cases
  "device_span_to_mpi_transport|the MPI transport moves host memory.*a device span needs a device transport")
if(TARGET gradcomm::mpi)
  set(_gc_cf_mpi_flags -DGRADCOMM_HAS_MPI=1 ${MPI_CXX_COMPILE_OPTIONS})
  foreach(_def IN LISTS MPI_CXX_COMPILE_DEFINITIONS)
    list(APPEND _gc_cf_mpi_flags -D${_def})
  endforeach()
  foreach(_dir IN LISTS MPI_CXX_INCLUDE_DIRS)
    list(APPEND _gc_cf_mpi_flags -I${_dir})
  endforeach()
  foreach(_case IN LISTS _gc_cf_mpi_cases)
    string(REPLACE "|" ";" _parts "${_case}")
    list(GET _parts 0 _name)
    list(GET _parts 1 _expect)
    add_test(NAME compile_fail.${_name}
             COMMAND ${CMAKE_CXX_COMPILER} -std=c++20 -fsyntax-only ${_gc_cf_mpi_flags}
                     -I${gradcomm_SOURCE_DIR}/include ${_gc_cf_dir}/${_name}.cpp)
    set_tests_properties(compile_fail.${_name} PROPERTIES
      LABELS compile_fail PASS_REGULAR_EXPRESSION "${_expect}")
  endforeach()
else()
  message(STATUS "gradcomm: no gradcomm::mpi; compile_fail tests naming the MPI transport skipped")
endif()

# Under nvcc (GRADCOMM_CUDA_LANGUAGE), the refusals that name core/cuda/stream.cuh's
# cuda_stream: compiled to an object file, since nvcc has no -fsyntax-only.
if(GRADCOMM_CUDA_LANGUAGE)
  set(_gc_cf_cuda_cases
    "host_view_on_cuda_stream|a view's memory space must match its execution context")
  foreach(_case IN LISTS _gc_cf_cuda_cases)
    string(REPLACE "|" ";" _parts "${_case}")
    list(GET _parts 0 _name)
    list(GET _parts 1 _expect)
    add_test(NAME compile_fail.${_name}
             COMMAND ${CMAKE_CUDA_COMPILER} -std=c++20 -c -I${gradcomm_SOURCE_DIR}/include
                     ${_gc_cf_dir}/${_name}.cu -o ${CMAKE_CURRENT_BINARY_DIR}/compile_fail_${_name}.o)
    set_tests_properties(compile_fail.${_name} PROPERTIES
      LABELS compile_fail PASS_REGULAR_EXPRESSION "${_expect}")
  endforeach()
endif()

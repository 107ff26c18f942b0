# cmake -DINCLUDE_DIR=<include> -P check_vendor_includes.cmake
#
# A plain-C++ header (.hpp) may include a vendor header (CUDA, NCCL, MPI, Eigen) only
# inside a preprocessor block whose condition names a GRADCOMM_HAS_... macro, so
# that a program built without that part never needs the vendor's headers. .cuh
# files are CUDA-only and not checked.
if(NOT INCLUDE_DIR)
  message(FATAL_ERROR "usage: cmake -DINCLUDE_DIR=<include dir> -P check_vendor_includes.cmake")
endif()

set(_vendor "cuda[a-z0-9_]*\\.h|cuda/[^>\"]*|nccl[a-z_]*\\.h|mpi[a-z_]*\\.h|cub/[^>\"]*|thrust/[^>\"]*|Eigen/[^>\"]*|unsupported/Eigen/[^>\"]*")
file(GLOB_RECURSE _headers ${INCLUDE_DIR}/gradcomm/*.hpp)
set(_bad "")
foreach(_file IN LISTS _headers)
  # One list item a line: take the list's own separators and brackets out first.
  file(READ ${_file} _text)
  string(REPLACE ";" "," _text "${_text}")
  string(REPLACE "[" "(" _text "${_text}")
  string(REPLACE "]" ")" _text "${_text}")
  string(REPLACE "\n" ";" _lines "${_text}")
  file(RELATIVE_PATH _rel ${INCLUDE_DIR} ${_file})
  # One entry a nesting level: 1 where the block's live branch is guarded by a
  # GRADCOMM_HAS_ condition, 0 elsewhere.
  set(_stack "")
  set(_n 0)
  foreach(_line IN LISTS _lines)
    math(EXPR _n "${_n} + 1")
    if(_line MATCHES "^[ \t]*#[ \t]*(if|ifdef|ifndef|elif|else|endif)([ \t].*)?$")
      set(_kw ${CMAKE_MATCH_1})
      set(_cond "${CMAKE_MATCH_2}")
      set(_guard 0)
      # `#if GRADCOMM_HAS_MPI`, `#elif ... && GRADCOMM_HAS_NCCL`; not `#ifdef` nor
      # `defined(...)` (config.hpp defines every GRADCOMM_HAS_ macro, 0 or 1), not
      # a negation.
      if(_kw MATCHES "^(if|elif)$" AND _cond MATCHES "GRADCOMM_HAS_(CUDA|NCCL|MPI|EIGEN)"
         AND NOT _cond MATCHES "(!|defined)[ \t(]*GRADCOMM_HAS_")
        set(_guard 1)
      endif()
      if(_kw MATCHES "^if")
        list(APPEND _stack ${_guard})
      elseif(_stack)
        list(POP_BACK _stack)
        if(NOT _kw STREQUAL "endif")
          list(APPEND _stack ${_guard})  # #elif / #else: a new branch
        endif()
      endif()
    elseif(_line MATCHES "^[ \t]*#[ \t]*include[ \t]*[<\"](${_vendor})[>\"]")
      set(_inc "${CMAKE_MATCH_1}")
      if(NOT _stack MATCHES "1")
        list(APPEND _bad "${_rel}:${_n}: #include <${_inc}> outside #if GRADCOMM_HAS_...")
      endif()
    endif()
  endforeach()
endforeach()

list(LENGTH _headers _count)
if(_bad)
  list(JOIN _bad "\n  " _text)
  message(FATAL_ERROR "vendor headers reachable from plain C++:\n  ${_text}")
endif()
message(STATUS "${_count} headers: vendor includes only behind GRADCOMM_HAS_...")

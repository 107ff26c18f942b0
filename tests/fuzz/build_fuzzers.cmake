# cmake -DCXX=<clang++> -DSOURCE_DIR=<tests/fuzz> -DBINARY_DIR=<dir> -DOUTPUT_DIR=<dir>
#       -DINCLUDE_DIR=<include> -DGENERATOR=<generator> [-DMAKE_PROGRAM=<path>]
#       -P build_fuzzers.cmake
#
# Configures (when needed) and builds tests/fuzz/project with clang++; the programs land in
# OUTPUT_DIR. A target that fails to build does not fail the main build: its executable is
# removed and OUTPUT_DIR/<target>.build-failed holds the compiler's output, which its
# ctest (run_fuzz.cmake) reports. So one broken fuzz target costs only its own test.
foreach(_v CXX SOURCE_DIR BINARY_DIR OUTPUT_DIR INCLUDE_DIR GENERATOR)
  if(NOT DEFINED ${_v})
    message(FATAL_ERROR "build_fuzzers.cmake: -D${_v}=... is required")
  endif()
endforeach()

# Configure again only when the arguments changed; `cmake --build` re-runs the configure
# step by itself when a fuzz_*.cpp appears (CONFIGURE_DEPENDS).
set(_args -G "${GENERATOR}" -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_BUILD_TYPE=
    -DGRADCOMM_INCLUDE_DIR=${INCLUDE_DIR} -DCMAKE_RUNTIME_OUTPUT_DIRECTORY=${OUTPUT_DIR})
if(MAKE_PROGRAM)
  list(APPEND _args -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM})
endif()
string(JOIN " " _stamp_text ${_args})
set(_stamp ${BINARY_DIR}/gradcomm-fuzz-args.txt)
set(_old "")
if(EXISTS ${_stamp})
  file(READ ${_stamp} _old)
endif()

file(GLOB _sources ${SOURCE_DIR}/fuzz_*.cpp)
set(_targets "")
foreach(_src IN LISTS _sources)
  get_filename_component(_name ${_src} NAME_WE)
  list(APPEND _targets ${_name})
endforeach()

function(_mark_failed target text)
  file(WRITE ${OUTPUT_DIR}/${target}.build-failed "${text}")
  file(REMOVE ${OUTPUT_DIR}/${target})
endfunction()

if(NOT EXISTS ${BINARY_DIR}/CMakeCache.txt OR NOT _old STREQUAL _stamp_text)
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/project -B ${BINARY_DIR} ${_args}
                  RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
  if(NOT _rc EQUAL 0)
    message(NOTICE "${_out}")
    message(WARNING "gradcomm: configuring the fuzz targets with ${CXX} failed (output "
                    "above); the fuzz tests will fail")
    foreach(_t IN LISTS _targets)
      _mark_failed(${_t} "configuring the fuzz targets failed:\n${_out}")
    endforeach()
    return()
  endif()
  file(WRITE ${_stamp} "${_stamp_text}")
endif()

execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY_DIR} RESULT_VARIABLE _rc)
if(_rc EQUAL 0)
  foreach(_t IN LISTS _targets)
    file(REMOVE ${OUTPUT_DIR}/${_t}.build-failed)
  endforeach()
  return()
endif()

# Something failed: build the targets one by one to learn which.
set(_failed "")
foreach(_t IN LISTS _targets)
  execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY_DIR} --target ${_t}
                  RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
  if(_rc EQUAL 0)
    file(REMOVE ${OUTPUT_DIR}/${_t}.build-failed)
  else()
    _mark_failed(${_t} "${_out}")
    list(APPEND _failed ${_t})
  endif()
endforeach()
if(_failed)
  message(WARNING "gradcomm: fuzz targets that failed to build (their tests will fail): "
                  "${_failed}")
endif()

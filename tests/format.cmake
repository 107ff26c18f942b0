# Formatting (label "format"): every C++ and CUDA source under include/, tests/,
# benchmarks/ and examples/ is as clang-format (pinned by .clang-format: version
# 14, Debian 12's) leaves it. The file list is taken when the test runs
# (check_format.cmake), so new files are checked without reconfiguring.
find_program(GRADCOMM_CLANG_FORMAT NAMES clang-format-14 clang-format
             DOC "clang-format for the format test (version 14)")
if(NOT GRADCOMM_CLANG_FORMAT)
  message(STATUS "gradcomm: clang-format not found (Debian package clang-format); format test skipped")
  return()
endif()

execute_process(COMMAND ${GRADCOMM_CLANG_FORMAT} --version OUTPUT_VARIABLE _gc_cf_version
                ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _gc_cf_version MATCHES "version 14\\.")
  message(STATUS "gradcomm: ${GRADCOMM_CLANG_FORMAT} is not clang-format 14 (${_gc_cf_version}); "
                 "the format test may disagree with CI")
endif()

add_test(NAME format
         COMMAND ${CMAKE_COMMAND} -DCLANG_FORMAT=${GRADCOMM_CLANG_FORMAT}
                 -DSOURCE_DIR=${gradcomm_SOURCE_DIR} -P ${CMAKE_CURRENT_LIST_DIR}/check_format.cmake)
set_tests_properties(format PROPERTIES LABELS format TIMEOUT 300)

# cmake -DCLANG_FORMAT=<clang-format> -DSOURCE_DIR=<gradcomm source> -P check_format.cmake
#
# Runs `clang-format --dry-run -Werror` over every *.hpp *.cuh *.cpp *.cu under
# include/ tests/ benchmarks/ examples/ and fails naming each file it would change.
if(NOT CLANG_FORMAT OR NOT SOURCE_DIR)
  message(FATAL_ERROR "usage: cmake -DCLANG_FORMAT=<exe> -DSOURCE_DIR=<dir> -P check_format.cmake")
endif()

set(_files "")
foreach(_dir include tests benchmarks examples)
  foreach(_ext hpp cuh cpp cu)
    file(GLOB_RECURSE _found ${SOURCE_DIR}/${_dir}/*.${_ext})
    list(APPEND _files ${_found})
  endforeach()
endforeach()
list(SORT _files)
list(LENGTH _files _count)
if(_count EQUAL 0)
  message(STATUS "no sources to check")
  return()
endif()

# One file at a time would cost a process each; batches keep command lines short.
set(_bad "")
set(_batch "")
set(_i 0)
foreach(_f IN LISTS _files)
  list(APPEND _batch ${_f})
  math(EXPR _i "${_i} + 1")
  list(LENGTH _batch _n)
  if(_n EQUAL 64 OR _i EQUAL _count)
    execute_process(COMMAND ${CLANG_FORMAT} --style=file --dry-run -Werror ${_batch}
                    WORKING_DIRECTORY ${SOURCE_DIR} RESULT_VARIABLE _rc
                    OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
    if(NOT _rc EQUAL 0)
      # Diagnostics read "<file>:<line>:<col>: error: code should be clang-formatted".
      string(REGEX MATCHALL "[^\n]+:[0-9]+:[0-9]+: (error|warning): code should be clang-formatted"
             _diags "${_out}")
      set(_named "")
      foreach(_d IN LISTS _diags)
        string(REGEX REPLACE ":[0-9]+:[0-9]+: .*$" "" _d "${_d}")
        list(APPEND _named ${_d})
      endforeach()
      if(NOT _named)
        message(FATAL_ERROR "${CLANG_FORMAT} failed (${_rc}):\n${_out}")
      endif()
      list(APPEND _bad ${_named})
    endif()
    set(_batch "")
  endif()
endforeach()

if(_bad)
  list(REMOVE_DUPLICATES _bad)
  set(_rel "")
  foreach(_f IN LISTS _bad)
    file(RELATIVE_PATH _r ${SOURCE_DIR} ${_f})
    list(APPEND _rel ${_r})
  endforeach()
  list(JOIN _rel " " _text)
  message(FATAL_ERROR "not formatted (fix with: clang-format -i ${_text})")
endif()
message(STATUS "${_count} files formatted as .clang-format says")

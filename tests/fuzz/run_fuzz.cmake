# cmake -DFUZZER=<program> -DCORPUS=<dir> -DARTIFACTS=<dir> -DRUNS=<n> -DSECONDS=<s>
#       -P run_fuzz.cmake
#
# One bounded fuzz run, as ctest runs it: the target writes its seeds into CORPUS (kept
# between runs, so the corpus grows), then libFuzzer runs until RUNS inputs (0: no
# limit) or SECONDS seconds, whichever comes first. The environment variables
# GRADCOMM_FUZZ_RUNS and GRADCOMM_FUZZ_SECONDS override both. A crash, a sanitizer report,
# a failed check or an exception other than decode_error fails the test; the input is
# saved under ARTIFACTS and the command that replays it is printed.
foreach(_v FUZZER CORPUS ARTIFACTS RUNS SECONDS)
  if(NOT DEFINED ${_v})
    message(FATAL_ERROR "run_fuzz.cmake: -D${_v}=... is required")
  endif()
endforeach()
if(DEFINED ENV{GRADCOMM_FUZZ_RUNS})
  set(RUNS $ENV{GRADCOMM_FUZZ_RUNS})
endif()
if(DEFINED ENV{GRADCOMM_FUZZ_SECONDS})
  set(SECONDS $ENV{GRADCOMM_FUZZ_SECONDS})
endif()

get_filename_component(_name ${FUZZER} NAME)
if(EXISTS ${FUZZER}.build-failed)
  file(READ ${FUZZER}.build-failed _log)
  message(NOTICE "${_log}")  # as the compiler wrote it (FATAL_ERROR would re-wrap it)
  message(FATAL_ERROR "${_name} failed to build with clang++ (output above)")
endif()
if(NOT EXISTS ${FUZZER})
  message(FATAL_ERROR "${FUZZER} does not exist: build the project first (target gradcomm_fuzzers)")
endif()

file(MAKE_DIRECTORY ${CORPUS} ${ARTIFACTS})
file(GLOB _old_seeds ${CORPUS}/seed-*)
if(_old_seeds)
  file(REMOVE ${_old_seeds})
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -E env GRADCOMM_FUZZ_WRITE_SEEDS=${CORPUS} ${FUZZER}
                RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
if(NOT _rc EQUAL 0)
  message(NOTICE "${_out}")
  message(FATAL_ERROR "${_name}: writing the seed corpus failed (${_rc}; output above)")
endif()

set(_args -max_total_time=${SECONDS} -timeout=25 -print_final_stats=1
    -artifact_prefix=${ARTIFACTS}/)
if(RUNS GREATER 0)
  list(APPEND _args -runs=${RUNS})
endif()
# A fixed seed by default, so that CI's bounded run explores the same inputs each time (up to
# the time bound); GRADCOMM_FUZZ_SEED=0 lets libFuzzer pick one, for exploratory runs.
set(_seed 1)
if(DEFINED ENV{GRADCOMM_FUZZ_SEED})
  set(_seed $ENV{GRADCOMM_FUZZ_SEED})
endif()
if(NOT _seed EQUAL 0)
  list(APPEND _args -seed=${_seed})
endif()
file(GLOB _before ${ARTIFACTS}/*)
execute_process(COMMAND ${CMAKE_COMMAND} -E env UBSAN_OPTIONS=print_stacktrace=1
                        ${FUZZER} ${_args} ${CORPUS}
                RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
if(NOT _rc EQUAL 0)
  file(GLOB _after ${ARTIFACTS}/*)
  if(_before)
    list(REMOVE_ITEM _after ${_before})
  endif()
  set(_replay "")
  foreach(_a IN LISTS _after)
    string(APPEND _replay "\n  replay: ${FUZZER} ${_a}")
  endforeach()
  message(NOTICE "${_out}${_replay}")
  message(FATAL_ERROR "${_name} failed (${_rc}; libFuzzer's report above)")
endif()
# Passed: the summary lines only.
string(REGEX MATCHALL "(INFO: Seed: [^\n]*|INFO: seed corpus:[^\n]*|Done [^\n]*|stat::[^\n]*)" _summary "${_out}")
list(JOIN _summary "\n" _summary)
message(STATUS "${_name}: ${_summary}")

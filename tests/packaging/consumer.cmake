# Shared by the consumer projects in this folder: one program that links
# gradcomm::gradcomm and each optional part (gradcomm::cuda, gradcomm::nccl,
# gradcomm::mpi, gradcomm::eigen) that the package or subproject provides.
#
# GC_EXPECT_<PART> (CUDA, NCCL, MPI, EIGEN), when set, says whether gradcomm::<part> must
# exist (ON) or must not (OFF): the packaging tests pass what the library was
# configured with, so a part that silently went missing fails configuration.
set(_gc_consumer_main ${CMAKE_CURRENT_LIST_DIR}/main.cpp)

function(gradcomm_consumer name)
  add_executable(${name} ${_gc_consumer_main})
  target_link_libraries(${name} PRIVATE gradcomm::gradcomm)
  target_compile_options(${name} PRIVATE
    $<$<COMPILE_LANG_AND_ID:CXX,GNU,Clang>:-Wall -Wextra -Wpedantic -Werror>)
  foreach(_part CUDA NCCL MPI EIGEN)
    string(TOLOWER ${_part} _lc)
    if(TARGET gradcomm::${_lc})
      target_link_libraries(${name} PRIVATE gradcomm::${_lc})
      target_compile_definitions(${name} PRIVATE GC_CONSUMER_LINKS_${_part}=1)
      set(_have ON)
    else()
      set(_have OFF)
    endif()
    message(STATUS "consumer: gradcomm::${_lc} ${_have}")
    if(DEFINED GC_EXPECT_${_part})
      if(GC_EXPECT_${_part} AND NOT _have)
        message(FATAL_ERROR "gradcomm::${_lc} is missing, but the library was built with it")
      elseif(NOT GC_EXPECT_${_part} AND _have)
        message(FATAL_ERROR "gradcomm::${_lc} exists, but the library was built without it")
      endif()
    endif()
  endforeach()
endfunction()

# Packaging tests (label "packaging"): gradcomm used the three ways consumers use it.
#
#   packaging.library.*        configure, build and `cmake --install` the library
#                              (tests, benchmarks, examples off) into a prefix, with
#                              the optional parts this build found switched ON
#   packaging.subdir.*         consumer that add_subdirectory()s the source folder
#   packaging.fetchcontent.*   consumer that FetchContent_MakeAvailable()s it
#   packaging.installed.*      consumer that find_package()s the installed prefix
#   packaging.buildtree.*      consumer that find_package()s the library's build folder
#   packaging.installed.missing_component  asking for a part that does not exist
#                              fails find_package and names the part
#
# Each consumer is configured, built and run as three tests chained by fixtures,
# so `ctest -R packaging.installed.run` brings in what it needs. The inner builds
# use this build's generator and compiler; everything lives under
# <build>/tests/packaging-work and is wiped by packaging.clean first.

set(_gc_pkg_src ${CMAKE_CURRENT_LIST_DIR})
set(_gc_pkg_work ${CMAKE_CURRENT_BINARY_DIR}/packaging-work)
set(_gc_pkg_prefix ${_gc_pkg_work}/prefix)
set(_gc_pkg_library ${_gc_pkg_work}/library)

set(_gc_pkg_common -G "${CMAKE_GENERATOR}" -DCMAKE_CXX_COMPILER=${CMAKE_CXX_COMPILER}
    -DCMAKE_BUILD_TYPE=Release)
if(CMAKE_GENERATOR_PLATFORM)
  list(APPEND _gc_pkg_common -A "${CMAKE_GENERATOR_PLATFORM}")
endif()
if(CMAKE_GENERATOR_TOOLSET)
  list(APPEND _gc_pkg_common -T "${CMAKE_GENERATOR_TOOLSET}")
endif()
if(CMAKE_MAKE_PROGRAM)
  list(APPEND _gc_pkg_common -DCMAKE_MAKE_PROGRAM=${CMAKE_MAKE_PROGRAM})
endif()
# Inner builds of the library itself: only the library.
set(_gc_pkg_lib_only -DGRADCOMM_BUILD_TESTS=OFF -DGRADCOMM_BUILD_BENCHMARKS=OFF
    -DGRADCOMM_BUILD_EXAMPLES=OFF)

# The installed package gets every part this build has, asked for with ON so that
# a part that cannot be found fails loudly instead of going missing.
foreach(_part CUDA NCCL MPI EIGEN)
  if(GRADCOMM_HAS_${_part})
    set(_gc_pkg_${_part} ON)
  else()
    set(_gc_pkg_${_part} OFF)
  endif()
endforeach()
set(_gc_pkg_parts -DGRADCOMM_WITH_CUDA=${_gc_pkg_CUDA} -DGRADCOMM_WITH_NCCL=${_gc_pkg_NCCL}
    -DGRADCOMM_WITH_MPI=${_gc_pkg_MPI} -DGRADCOMM_WITH_EIGEN=${_gc_pkg_EIGEN})
if(GRADCOMM_HAS_CUDA AND CMAKE_CUDA_COMPILER)
  list(APPEND _gc_pkg_parts -DCMAKE_CUDA_COMPILER=${CMAKE_CUDA_COMPILER})
endif()
set(_gc_pkg_expect_all -DGC_EXPECT_CUDA=${_gc_pkg_CUDA} -DGC_EXPECT_NCCL=${_gc_pkg_NCCL}
    -DGC_EXPECT_MPI=${_gc_pkg_MPI} -DGC_EXPECT_EIGEN=${_gc_pkg_EIGEN})
set(_gc_pkg_components "")
if(GRADCOMM_HAS_MPI)
  list(APPEND _gc_pkg_components mpi)
endif()
if(GRADCOMM_HAS_EIGEN)
  list(APPEND _gc_pkg_components eigen)
endif()
# Comma-separated: one command-line argument (the consumer splits it).
string(REPLACE ";" "," _gc_pkg_components "${_gc_pkg_components}")

function(_gc_pkg_test name)
  cmake_parse_arguments(A "" "SETUP" "REQUIRES;COMMAND" ${ARGN})
  add_test(NAME packaging.${name} COMMAND ${A_COMMAND})
  set_tests_properties(packaging.${name} PROPERTIES LABELS packaging TIMEOUT 300)
  if(A_SETUP)
    set_tests_properties(packaging.${name} PROPERTIES FIXTURES_SETUP "${A_SETUP}")
  endif()
  if(A_REQUIRES)
    set_tests_properties(packaging.${name} PROPERTIES FIXTURES_REQUIRED "${A_REQUIRES}")
  endif()
endfunction()

# configure -> build -> run of one consumer project.
function(_gc_pkg_consumer name source)
  cmake_parse_arguments(A "" "" "REQUIRES;ARGS" ${ARGN})
  set(bin ${_gc_pkg_work}/${name})
  _gc_pkg_test(${name}.configure SETUP gc_pkg_${name}_configured
    REQUIRES gc_pkg_clean ${A_REQUIRES}
    COMMAND ${CMAKE_COMMAND} -S ${_gc_pkg_src}/${source} -B ${bin} ${_gc_pkg_common} ${A_ARGS})
  _gc_pkg_test(${name}.build SETUP gc_pkg_${name}_built REQUIRES gc_pkg_${name}_configured
    COMMAND ${CMAKE_COMMAND} --build ${bin} --config Release)
  _gc_pkg_test(${name}.run REQUIRES gc_pkg_${name}_built COMMAND ${bin}/gradcomm_consumer)
endfunction()

_gc_pkg_test(clean SETUP gc_pkg_clean COMMAND ${CMAKE_COMMAND} -E rm -rf ${_gc_pkg_work})

# The library, built and installed.
_gc_pkg_test(library.configure SETUP gc_pkg_library_configured REQUIRES gc_pkg_clean
  COMMAND ${CMAKE_COMMAND} -S ${gradcomm_SOURCE_DIR} -B ${_gc_pkg_library} ${_gc_pkg_common}
          ${_gc_pkg_lib_only} ${_gc_pkg_parts} -DCMAKE_INSTALL_PREFIX=${_gc_pkg_prefix})
_gc_pkg_test(library.build SETUP gc_pkg_library_built REQUIRES gc_pkg_library_configured
  COMMAND ${CMAKE_COMMAND} --build ${_gc_pkg_library} --config Release)
_gc_pkg_test(library.install SETUP gc_pkg_installed REQUIRES gc_pkg_library_built
  COMMAND ${CMAKE_COMMAND} --install ${_gc_pkg_library} --config Release
          --prefix ${_gc_pkg_prefix})

# add_subdirectory and FetchContent: CUDA and NCCL off to keep them quick; MPI and
# Eigen as this build has them.
_gc_pkg_consumer(subdir add_subdirectory
  ARGS -DGRADCOMM_SOURCE_DIR=${gradcomm_SOURCE_DIR} ${_gc_pkg_lib_only}
       -DGRADCOMM_WITH_CUDA=OFF -DGRADCOMM_WITH_NCCL=OFF -DGRADCOMM_WITH_MPI=${_gc_pkg_MPI}
       -DGRADCOMM_WITH_EIGEN=${_gc_pkg_EIGEN}
       -DGC_EXPECT_CUDA=OFF -DGC_EXPECT_NCCL=OFF -DGC_EXPECT_MPI=${_gc_pkg_MPI}
       -DGC_EXPECT_EIGEN=${_gc_pkg_EIGEN})
_gc_pkg_consumer(fetchcontent fetchcontent
  ARGS -DGRADCOMM_SOURCE_DIR=${gradcomm_SOURCE_DIR} ${_gc_pkg_lib_only}
       -DGRADCOMM_WITH_CUDA=OFF -DGRADCOMM_WITH_NCCL=OFF -DGRADCOMM_WITH_MPI=${_gc_pkg_MPI}
       -DGRADCOMM_WITH_EIGEN=${_gc_pkg_EIGEN}
       -DGC_EXPECT_CUDA=OFF -DGC_EXPECT_NCCL=OFF -DGC_EXPECT_MPI=${_gc_pkg_MPI}
       -DGC_EXPECT_EIGEN=${_gc_pkg_EIGEN})

# find_package against the install prefix, and against the build folder.
_gc_pkg_consumer(installed find_package REQUIRES gc_pkg_installed
  ARGS -DCMAKE_PREFIX_PATH=${_gc_pkg_prefix} -DGC_REQUIRE_COMPONENTS=${_gc_pkg_components}
       -DGC_EXPECT_CONFIG_IN=${_gc_pkg_prefix} -DGC_EXPECT_INCLUDE_IN=${_gc_pkg_prefix}
       ${_gc_pkg_expect_all})
_gc_pkg_consumer(buildtree find_package REQUIRES gc_pkg_library_configured
  ARGS -Dgradcomm_DIR=${_gc_pkg_library} -DGC_REQUIRE_COMPONENTS=${_gc_pkg_components}
       -DGC_EXPECT_CONFIG_IN=${_gc_pkg_library}
       -DGC_EXPECT_INCLUDE_IN=${gradcomm_SOURCE_DIR}/include ${_gc_pkg_expect_all})

# A component the package does not have fails find_package, naming it.
_gc_pkg_test(installed.missing_component REQUIRES "gc_pkg_clean;gc_pkg_installed"
  COMMAND ${CMAKE_COMMAND} -S ${_gc_pkg_src}/find_package
          -B ${_gc_pkg_work}/missing_component ${_gc_pkg_common}
          -DCMAKE_PREFIX_PATH=${_gc_pkg_prefix} -DGC_REQUIRE_COMPONENTS=no_such_part)
set_tests_properties(packaging.installed.missing_component PROPERTIES
  PASS_REGULAR_EXPRESSION "no[ \n]+component[ \n]+\"no_such_part\"")  # CMake wraps lines

# A part asked for with ON that is missing stops configuration with a message that
# names the switch and what to install; a value other than AUTO/ON/OFF is refused.
# CMAKE_DISABLE_FIND_PACKAGE_<dep> stands in for a machine without the dependency.
# CMake wraps messages, so words are matched across line breaks.
function(_gc_pkg_option_test name regex)
  _gc_pkg_test(options.${name} REQUIRES gc_pkg_clean
    COMMAND ${CMAKE_COMMAND} -S ${gradcomm_SOURCE_DIR} -B ${_gc_pkg_work}/options-${name}
            ${_gc_pkg_common} ${_gc_pkg_lib_only} ${ARGN})
  set_tests_properties(packaging.options.${name} PROPERTIES PASS_REGULAR_EXPRESSION "${regex}")
endfunction()
_gc_pkg_option_test(mpi_missing "GRADCOMM_WITH_MPI=ON[ \n]+but[ \n]+MPI.*libopenmpi-dev"
  -DGRADCOMM_WITH_CUDA=OFF -DGRADCOMM_WITH_MPI=ON -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON)
_gc_pkg_option_test(eigen_missing "GRADCOMM_WITH_EIGEN=ON[ \n]+but.*libeigen3-dev"
  -DGRADCOMM_WITH_CUDA=OFF -DGRADCOMM_WITH_MPI=OFF -DGRADCOMM_WITH_EIGEN=ON
  -DCMAKE_DISABLE_FIND_PACKAGE_Eigen3=ON)
_gc_pkg_option_test(cuda_missing "GRADCOMM_WITH_CUDA=ON[ \n]+but.*nvidia-cuda-toolkit"
  -DGRADCOMM_WITH_CUDA=ON -DGRADCOMM_WITH_MPI=OFF -DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=ON)
_gc_pkg_option_test(nccl_without_cuda
  "GRADCOMM_WITH_NCCL=ON[ \n]+needs.*GRADCOMM_WITH_CUDA=OFF.*nvidia-cuda-toolkit"
  -DGRADCOMM_WITH_CUDA=OFF -DGRADCOMM_WITH_NCCL=ON -DGRADCOMM_WITH_MPI=OFF)
_gc_pkg_option_test(bad_value "GRADCOMM_WITH_CUDA[ \n]+must[ \n]+be[ \n]+AUTO,[ \n]+ON[ \n]+or[ \n]+OFF"
  -DGRADCOMM_WITH_CUDA=bogus)

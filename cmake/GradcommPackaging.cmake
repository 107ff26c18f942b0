# Install rules, the installed package config, and a build-tree export, so that
# find_package(gradcomm) works against an install prefix or against a build folder.
include(CMakePackageConfigHelpers)

set(GRADCOMM_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/gradcomm)
set(_gc_targets gradcomm)
foreach(_part cuda nccl mpi eigen)
  if(TARGET gradcomm_${_part})
    list(APPEND _gc_targets gradcomm_${_part})
  endif()
endforeach()

configure_package_config_file(
  ${CMAKE_CURRENT_LIST_DIR}/gradcommConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/gradcommConfig.cmake
  INSTALL_DESTINATION ${GRADCOMM_CMAKE_DIR})
# Headers only: any architecture may use the package.
write_basic_package_version_file(
  ${CMAKE_CURRENT_BINARY_DIR}/gradcommConfigVersion.cmake
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)

# Build tree: find_package(gradcomm) with gradcomm_DIR=<build folder>.
export(TARGETS ${_gc_targets} NAMESPACE gradcomm::
       FILE ${CMAKE_CURRENT_BINARY_DIR}/gradcommTargets.cmake)

if(GRADCOMM_INSTALL)
  install(TARGETS ${_gc_targets} EXPORT gradcommTargets)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/gradcomm
          DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  install(EXPORT gradcommTargets NAMESPACE gradcomm:: DESTINATION ${GRADCOMM_CMAKE_DIR})
  install(FILES ${CMAKE_CURRENT_BINARY_DIR}/gradcommConfig.cmake
                ${CMAKE_CURRENT_BINARY_DIR}/gradcommConfigVersion.cmake
          DESTINATION ${GRADCOMM_CMAKE_DIR})
  install(FILES ${PROJECT_SOURCE_DIR}/LICENSE DESTINATION ${CMAKE_INSTALL_DATADIR}/doc/gradcomm)
endif()

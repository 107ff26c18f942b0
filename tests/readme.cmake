# The README's opening example is compiled and run as a test, so it stays true,
# and stays at most 15 lines.
file(READ ${PROJECT_SOURCE_DIR}/README.md _gc_readme)
string(REGEX MATCH "```cpp\n([^`]*)```" _gc_block "${_gc_readme}")
set(_gc_example "${CMAKE_MATCH_1}")
if(NOT _gc_example)
  message(FATAL_ERROR "README.md has no ```cpp example block")
endif()
file(GENERATE OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/readme_example.cpp CONTENT "${_gc_example}")
add_executable(readme_example ${CMAKE_CURRENT_BINARY_DIR}/readme_example.cpp)
target_link_libraries(readme_example PRIVATE gradcomm::gradcomm)
add_test(NAME readme_example COMMAND readme_example)
set_tests_properties(readme_example PROPERTIES PASS_REGULAR_EXPRESSION "mean gradient: 2.5 "
                     TIMEOUT 60)

string(REGEX MATCHALL "\n" _gc_newlines "${_gc_example}")
list(LENGTH _gc_newlines _gc_lines)
if(_gc_lines GREATER 15)
  set(_gc_verdict false)
else()
  set(_gc_verdict true)
endif()
add_test(NAME readme_example_is_at_most_15_lines COMMAND ${CMAKE_COMMAND} -E ${_gc_verdict})

# Shared CMake helpers for kvlab's libraries, apps and tests.

# Compile options every kvlab target gets (warnings, sanitizers).
function(kvlab_target_defaults target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
  if(KVLAB_WARNINGS_AS_ERRORS)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(KVLAB_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=address,undefined -fno-omit-frame-pointer)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
endfunction()

# kvlab_add_library(<name> SOURCES ... [PUBLIC_DEPS ...] [PRIVATE_DEPS ...])
# Creates the static target kvlab_<name>, aliased kvlab::<name>, with public headers under
# lib<name>/include/kvlab/<name>/.
function(kvlab_add_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(kvlab_${name} STATIC ${ARG_SOURCES})
  add_library(kvlab::${name} ALIAS kvlab_${name})
  target_include_directories(kvlab_${name} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include)
  target_link_libraries(kvlab_${name} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  kvlab_target_defaults(kvlab_${name})
endfunction()

# Writes version.hpp with the project version and the git SHA of the source tree.
function(kvlab_configure_version)
  set(KVLAB_GIT_SHA "unknown")
  find_package(Git QUIET)
  if(GIT_FOUND)
    execute_process(COMMAND ${GIT_EXECUTABLE} rev-parse --short=10 HEAD
                    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
                    OUTPUT_VARIABLE sha OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE rc)
    if(rc EQUAL 0 AND sha)
      execute_process(COMMAND ${GIT_EXECUTABLE} status --porcelain --untracked-files=no
                      WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
                      OUTPUT_VARIABLE dirty OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
      set(KVLAB_GIT_SHA "${sha}")
      if(dirty)
        set(KVLAB_GIT_SHA "${sha}-dirty")
      endif()
    endif()
  endif()
  set(KVLAB_GIT_SHA "${KVLAB_GIT_SHA}" PARENT_SCOPE)
  configure_file(${PROJECT_SOURCE_DIR}/cmake/version.hpp.in
                 ${PROJECT_BINARY_DIR}/generated/kvlab/core/version.hpp @ONLY)
endfunction()

# kvlab_add_unit_test(<name> SOURCES ... DEPS ...): one doctest executable registered with ctest
# as a whole (a torch-linked process costs ~0.7 s to start, so not one process per test case).
function(kvlab_add_unit_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES} ${PROJECT_SOURCE_DIR}/tests/unit/main.cpp)
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} doctest::doctest)
  # See tests/unit/prelude.hpp: c10's CHECK macros must not replace doctest's.
  target_compile_options(${name} PRIVATE -include ${PROJECT_SOURCE_DIR}/tests/unit/prelude.hpp)
  set_source_files_properties(${PROJECT_SOURCE_DIR}/tests/unit/main.cpp PROPERTIES
      COMPILE_DEFINITIONS DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN)
  target_compile_definitions(${name} PRIVATE
      KVLAB_SOURCE_DIR="${PROJECT_SOURCE_DIR}" KVLAB_BINARY_DIR="${PROJECT_BINARY_DIR}")
  kvlab_target_defaults(${name})
  set(labels unit ${ARG_LABELS})
  add_test(NAME ${name} COMMAND ${name} --no-version --duration=false)
  set_tests_properties(${name} PROPERTIES LABELS "${labels}")
endfunction()

# kvlab_add_cli_test(<name> SCRIPT <file.sh> [LABELS ...]): runs a shell script against the built
# binary (KVLAB env var), in a scratch directory.
function(kvlab_add_cli_test name)
  cmake_parse_arguments(ARG "" "SCRIPT" "LABELS" ${ARGN})
  set(labels cli ${ARG_LABELS})
  add_test(NAME ${name} COMMAND bash ${ARG_SCRIPT})
  set_tests_properties(${name} PROPERTIES LABELS "${labels}"
      ENVIRONMENT "KVLAB=$<TARGET_FILE:kvlab>;KVLAB_SOURCE_DIR=${PROJECT_SOURCE_DIR};KVLAB_TEST_TMP=${PROJECT_BINARY_DIR}/test-tmp/${name}")
endfunction()

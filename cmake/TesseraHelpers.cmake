# Helpers every folder uses, so targets share warnings and layout.

# Project warnings: on and clean in project code.
function(tessera_warnings target)
  # -Wno-restrict: GCC 12 reports false positives inside libstdc++ for `"lit" + std::string`
  # (GCC bug 105329); the warning is useless there and fixed in GCC 13.
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-missing-field-initializers
                                           $<$<CXX_COMPILER_ID:GNU>:-Wno-restrict>)
endfunction()

# tessera_library(NAME SOURCES ... [DEPS ...] [PRIVATE_DEPS ...])
# A static library whose public headers live in its folder; included as "folder/header.h" from the
# project root (e.g. #include "devices/device.h", #include "host/gguf/gguf.h").
function(tessera_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR}/generated)
  target_link_libraries(${name} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  tessera_warnings(${name})
endfunction()

# tessera_test(NAME SOURCES ... [DEPS ...] [LABELS ...] [ENV ...] [TIMEOUT s] [COST n])
# A GoogleTest binary in build/tests, its cases registered with CTest under the given labels
# (default: unit). ENV entries (VAR=value) are set for every case. COST: CTest starts cases of a
# higher cost first (a fresh build has no timings of its own), so a long case does not run alone
# at the end of `ctest -j`.
function(tessera_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT;COST" "SOURCES;DEPS;LABELS;ENV" ${ARGN})
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 1500)  # a cold PoCL kernel cache on a 2-core machine compiles for minutes
  endif()
  add_executable(${name} ${ARG_SOURCES})
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gtest_main)
  # Tests start devices as the command does (cli::discover_devices: caches and kernel sources from
  # the environment's settings).
  if(TARGET tessera_cli_settings)
    target_link_libraries(${name} PRIVATE tessera_cli_settings)
  endif()
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  tessera_warnings(${name})
  # An empty ENVIRONMENT value would vanish from the forwarded list and shift the pairs after it
  # (TIMEOUT became the environment and no timeout applied): name it only when there is one.
  set(props LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT})
  if(ARG_COST)
    list(APPEND props COST ${ARG_COST})
  endif()
  if(ARG_ENV)
    list(APPEND props ENVIRONMENT "${ARG_ENV}")
  endif()
  gtest_discover_tests(${name}
    TEST_PREFIX "${name}."
    DISCOVERY_MODE PRE_TEST
    PROPERTIES ${props})
endfunction()

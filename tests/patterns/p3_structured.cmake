# Pattern 3 (handlers/p3_structured.c): at SIGTERM, detached welcome tasks lose events silently;
# scoped ones write them or report each cancellation. Fault tests: the built binary, signalled,
# on a database of each test's own (created on TEST_DATABASE_URL's server, dropped after).
if(CURL_FOUND)
    hs_add_test(test_pattern_structured LABEL fault
                SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_pattern_structured.c
                        ${CMAKE_CURRENT_LIST_DIR}/pattern_fault.c
                        ${CMAKE_SOURCE_DIR}/tests/e2e/e2e.c
                LIBS PkgConfig::CURL PkgConfig::JANSSON PkgConfig::PQ
                TIMEOUT 240)
    add_dependencies(test_pattern_structured hindsight)
endif()

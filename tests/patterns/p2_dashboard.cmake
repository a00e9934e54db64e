# Pattern 2, join (handlers/p2_dashboard.c): the dashboard, sequential vs joined, against the
# built binary.
if(CURL_FOUND)
    find_package(Threads REQUIRED)
    hs_add_test(test_pattern_dashboard LABEL e2e
                SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_pattern_dashboard.c
                        ${CMAKE_CURRENT_LIST_DIR}/pt_async.c ${CMAKE_SOURCE_DIR}/tests/e2e/e2e.c
                LIBS PkgConfig::CURL PkgConfig::JANSSON PkgConfig::PQ Threads::Threads
                TIMEOUT 180)
    add_dependencies(test_pattern_dashboard hindsight)
endif()

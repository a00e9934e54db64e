# Pattern 0 (handlers/p0_blocking.c): /healthz stalls behind `before` users and not behind `after`.
# An end-to-end test: the built binary on a free port, with TEST_DATABASE_URL as its database.
if(CURL_FOUND)
    find_package(Threads REQUIRED)
    hs_add_test(test_pattern_blocking LABEL e2e
                SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_pattern_blocking.c
                        ${CMAKE_CURRENT_LIST_DIR}/pt_async.c ${CMAKE_SOURCE_DIR}/tests/e2e/e2e.c
                LIBS PkgConfig::CURL PkgConfig::JANSSON PkgConfig::PQ Threads::Threads
                TIMEOUT 180)
    add_dependencies(test_pattern_blocking hindsight)
endif()

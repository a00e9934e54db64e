# Pattern 2, bounded stream (handlers/p2_batch.c): the batch, sequential vs a bounded stream that
# drains at shutdown, against the built binary.
# The batch tests count rows of batch_results, so they never run at the same time as each other.
if(CURL_FOUND)
    find_package(Threads REQUIRED)
    foreach(t batch:e2e batch_shutdown:fault)
        string(REPLACE ":" ";" parts ${t})
        list(GET parts 0 name)
        list(GET parts 1 label)
        hs_add_test(test_pattern_${name} LABEL ${label}
                    SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_pattern_${name}.c
                            ${CMAKE_CURRENT_LIST_DIR}/pt_async.c
                            ${CMAKE_SOURCE_DIR}/tests/e2e/e2e.c
                    LIBS PkgConfig::CURL PkgConfig::JANSSON PkgConfig::PQ Threads::Threads
                    TIMEOUT 180)
        add_dependencies(test_pattern_${name} hindsight)
    endforeach()
    set_tests_properties(test_pattern_batch test_pattern_batch_shutdown
                         test_pattern_batch_workers2 test_pattern_batch_shutdown_workers2
                         PROPERTIES RESOURCE_LOCK hs_batch_results)
    # Serial: the drain test times the answer against the delay its items play (three delays
    # after the signal), which a neighbouring test's load can stretch, most with WORKERS=2
    # under the sanitizers (661 ms against 600 once, in a -j2 run).
    set_tests_properties(test_pattern_batch_shutdown test_pattern_batch_shutdown_workers2
                         PROPERTIES RUN_SERIAL TRUE)
endif()

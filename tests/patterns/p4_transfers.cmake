# Pattern 4 (handlers/p4_transfers.c): deadlines and SIGTERM break the
# invariant with `before` and never with `after` (fault); idempotency keys, refusals and lock
# order (e2e); a deadline that passes after COMMIT was sent is answered with the outcome or 503,
# never as cancelled (fault).
# Each binary runs the service on a database of its own (created on TEST_DATABASE_URL's server,
# dropped after), since these tests move money and break the invariant on purpose.
if(CURL_FOUND)
    foreach(t transfers:fault transfers_api:e2e commit_unknown:fault)
        string(REPLACE ":" ";" parts ${t})
        list(GET parts 0 name)
        list(GET parts 1 label)
        hs_add_test(test_pattern_${name} LABEL ${label}
                    SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_pattern_${name}.c
                            ${CMAKE_CURRENT_LIST_DIR}/pattern_fault.c
                            ${CMAKE_SOURCE_DIR}/tests/e2e/e2e.c
                    LIBS PkgConfig::CURL PkgConfig::JANSSON PkgConfig::PQ
                    TIMEOUT 240)
        add_dependencies(test_pattern_${name} hindsight)
    endforeach()
    # The contract test puts the fault proxy (tests/fault/pgproxy.py) in front of the database
    # for one case.
    target_compile_definitions(test_pattern_transfers_api PRIVATE
                               HS_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
    target_include_directories(test_pattern_transfers_api PRIVATE ${CMAKE_SOURCE_DIR}/tests/fault)
endif()

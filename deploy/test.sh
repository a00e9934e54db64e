#!/usr/bin/env bash
# Builds and tests everything, the way CI does: installs what is missing (deploy/setup.sh),
# builds a normal tree (build/) and an AddressSanitizer + UndefinedBehaviorSanitizer tree
# (build-asan/), with -Werror when CI=true, starts the throwaway PostgreSQL cluster unless
# TEST_DATABASE_URL is set, runs every CTest layer (unit, db, e2e, edge, fault) in both trees, prints
# a summary, and exits non-zero if anything failed. The cluster it started is stopped at the end.
#
#   deploy/test.sh                 both trees, every label
#   HS_TEST_LABEL=unit deploy/test.sh      one label (a ctest -L regex)
#   HS_TEST_TREES=build deploy/test.sh     one tree
#   HS_TEST_REGEX=transfers deploy/test.sh  only the tests whose names match (a ctest -R regex)
set -euo pipefail

# shellcheck source=deploy/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$hs_root"

werror=OFF
if [ "${CI:-}" = true ]; then
    werror=ON
fi
trees=${HS_TEST_TREES:-"build build-asan"}
label=${HS_TEST_LABEL:-}
regex=${HS_TEST_REGEX:-}
# The two cores of a small CI machine are shared by the build, the service under test and its
# clients; timing-sensitive tests stay reliable with two tests at a time.
test_jobs=${HS_TEST_JOBS:-2}

hs_pg_use TEST_DATABASE_URL
export TEST_DATABASE_URL
echo "test: database $TEST_DATABASE_URL" >&2

# halt_on_error: a sanitizer report fails the test that caused it, not just its log.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

declare -A result
failed=0
for tree in $trees; do
    flags=(-DWERROR="$werror" -DENABLE_SANITIZERS=OFF)
    if [ "$tree" = build-asan ]; then
        flags=(-DWERROR="$werror" -DENABLE_SANITIZERS=ON)
    fi
    start=$(date +%s)
    echo "test: configuring and building $tree/ (WERROR=$werror)" >&2
    if ! cmake -S . -B "$tree" -DCMAKE_BUILD_TYPE=RelWithDebInfo "${flags[@]}" >/dev/null ||
        ! cmake --build "$tree" -j"$hs_jobs"; then
        result[$tree]="BUILD FAILED"
        failed=1
        continue
    fi
    log="$tree/ctest-summary.log"
    ctest_args=(--test-dir "$tree" --output-on-failure -j"$test_jobs")
    if [ -n "$label" ]; then
        ctest_args+=(-L "$label")
    fi
    if [ -n "$regex" ]; then
        ctest_args+=(-R "$regex")
    fi
    if ctest "${ctest_args[@]}" 2>&1 | tee "$log"; then
        ok=1
    else
        ok=0
        failed=1
    fi
    # The line ctest ends with: "100% tests passed, 0 tests failed out of 57".
    counts=$(grep -E "tests passed, [0-9]+ tests? failed out of" "$log" | tail -1 || true)
    result[$tree]="${counts:-no tests ran} ($(( $(date +%s) - start )) s)"
    if [ "$ok" = 0 ] && [ -z "$counts" ]; then
        result[$tree]="CTEST FAILED"
    fi
done

echo
echo "================ summary ================"
for tree in $trees; do
    printf '%-11s %s\n' "$tree/" "${result[$tree]}"
done
if [ "$failed" != 0 ]; then
    echo "FAILED"
    exit 1
fi
echo "all passed"

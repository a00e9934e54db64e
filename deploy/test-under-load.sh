#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The loaded-machine check: runs deploy/test.sh several times in a row while CPU hogs (`yes`,
# one per HS_LOAD_HOGS, default 2: as many as a small CI machine has cores) compete with it, and
# exits non-zero unless every round passed. A timing proof that holds only on a quiet machine
# fails here. The hogs run at normal priority, are started fresh for each round and are killed
# (by their own PIDs) when a round ends, and when this script is interrupted.
#
#   deploy/test-under-load.sh                        3 rounds of the full suite, 2 hogs
#   HS_LOAD_ROUNDS=1 HS_LOAD_HOGS=4 deploy/test-under-load.sh
#   HS_TEST_LABEL=fault HS_TEST_TREES=build-asan deploy/test-under-load.sh   (deploy/test.sh's own
#                                                    variables narrow each round as usual)
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=${HS_LOAD_ROUNDS:-3}
n_hogs=${HS_LOAD_HOGS:-2}
hogs=()

stop_hogs() {
    local pid
    for pid in "${hogs[@]}"; do
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    hogs=()
}
trap stop_hogs EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

passed=0
failed=0
for round in $(seq 1 "$rounds"); do
    for _ in $(seq 1 "$n_hogs"); do
        yes >/dev/null &
        hogs+=($!)
    done
    echo "test-under-load: round $round of $rounds, $n_hogs CPU hogs (PIDs ${hogs[*]})," \
        "load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    start=$(date +%s)
    if "$root/deploy/test.sh"; then
        passed=$((passed + 1))
        verdict=passed
    else
        failed=$((failed + 1))
        verdict=FAILED
    fi
    stop_hogs
    echo "test-under-load: round $round $verdict in $(($(date +%s) - start)) s" >&2
done
echo "test-under-load: $passed passed, $failed failed"
[ "$failed" = 0 ]

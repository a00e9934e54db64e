#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The service as PID 1, the way the Dockerfile's exec-form ENTRYPOINT runs it: in a new PID
# namespace (unshare), where the kernel delivers to PID 1 only the signals it has a handler for,
# `docker stop`'s SIGTERM (and Ctrl-C's SIGINT under `docker run -it`) must still run the shutdown
# sequence and end in exit status 0, within DRAIN_DELAY_MS + SHUTDOWN_GRACE_MS and a margin. No
# Docker engine exists on the test machines; this is the part of the container's contract that
# can be checked without one. It needs the right to create PID namespaces (root), and reports
# itself skipped without it. Uses TEST_DATABASE_URL when set; without a database the service runs
# unready, which changes nothing here.
set -uo pipefail

# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../deploy/lib.sh"
bin=${HINDSIGHT_BIN:-}
drain_ms=300
grace_ms=2000

[ -x "$bin" ] || { echo "FAIL: HINDSIGHT_BIN ($bin) is not an executable"; exit 1; }
command -v unshare >/dev/null || { echo "SKIP: unshare (util-linux) is missing"; exit 77; }
command -v curl >/dev/null || { echo "SKIP: curl is missing"; exit 77; }
unshare --pid --fork true 2>/dev/null || { echo "SKIP: cannot create a PID namespace here"; exit 77; }

work=$(mktemp -d /tmp/hs-pid1.XXXXXX)
runner=
passed=0
failed=0

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$runner" ]; then
        kill -KILL "$runner" 2>/dev/null # the namespace's PID 1 dies with it (--kill-child)
        wait "$runner" 2>/dev/null
    fi
    if [ $rc -eq 0 ]; then
        rm -rf "$work"
    else
        tail -n 20 "$work"/*.log
        echo "logs kept in $work"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# one_run <SIGTERM|SIGINT>: start the service as PID 1, wait until it answers, signal it from
# outside the namespace (as the container runtime does), expect exit 0 in time.
one_run() {
    local sig=$1 port child="" end start rc nspid
    port=$(hs_free_port)
    unshare --pid --fork --kill-child env -i PATH="$PATH" PORT="$port" \
        DATABASE_URL="${TEST_DATABASE_URL:-}" DRAIN_DELAY_MS=$drain_ms \
        SHUTDOWN_GRACE_MS=$grace_ms LOG_LEVEL=info LOG_FORMAT=text "$bin" \
        >>"$work/service-$sig.log" 2>&1 &
    runner=$!
    end=$(($(hs_now_ms) + 10000))
    while [ -z "$child" ] && [ "$(hs_now_ms)" -lt $end ]; do
        child=$(cat "/proc/$runner/task/$runner/children" 2>/dev/null | tr -d ' ')
        [ -n "$child" ] || sleep 0.05
    done
    nspid=$(awk '/^NSpid:/ { print $NF }' "/proc/$child/status" 2>/dev/null)
    hs_check "$sig: the service is PID 1 in its namespace (NSpid ${nspid:-none})" [ "$nspid" = 1 ]
    end=$(($(hs_now_ms) + 15000))
    until curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz"; do
        if [ "$(hs_now_ms)" -ge $end ]; then
            echo "FAIL: $sig: the service never answered /healthz on port $port"
            exit 1
        fi
        sleep 0.1
    done
    start=$(hs_now_ms)
    kill -s "$sig" "$child"
    end=$((start + drain_ms + grace_ms + 5000))
    while kill -0 "$runner" 2>/dev/null && [ "$(hs_now_ms)" -lt $end ]; do
        sleep 0.05
    done
    if kill -0 "$runner" 2>/dev/null; then
        echo "FAIL: $sig: PID 1 still runs $((end - start)) ms after the signal (ignored?)"
        exit 1
    fi
    wait "$runner"
    rc=$?
    runner=
    echo "$sig: PID 1 exited with status $rc, $(($(hs_now_ms) - start)) ms after the signal"
    hs_check "$sig: PID 1 exits 0 (got $rc)" [ $rc -eq 0 ]
}

one_run SIGTERM
one_run SIGINT
echo "pid1_signals: $passed passed, $failed failed"
[ $failed -eq 0 ]

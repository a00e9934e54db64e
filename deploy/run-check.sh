#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Checks the README's first command end to end: starts `deploy/run.sh` (which installs what is
# missing, builds, starts the throwaway cluster and serves in the foreground), waits until
# /readyz and GET /after/users/3 answer 200, then stops it the two ways a person does and expects
# a clean exit each time, and the throwaway cluster stopped again:
#   1. Ctrl-C: SIGINT to the whole process group of run.sh (what a terminal sends);
#   2. a supervisor: SIGTERM to run.sh alone, which forwards it once to the service.
# The first start may take minutes (apt-get, the build); the second reuses both.
#
#   deploy/run-check.sh                 on a free loopback port
#   HS_RUN_CHECK_READY_S=1200 deploy/run-check.sh
#
# Exits 0 only if every expectation held; each failed one is named.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/lib.sh
source "$root/deploy/lib.sh"
ready_s=${HS_RUN_CHECK_READY_S:-1800}
port=${PORT:-$(hs_free_port)}
pg_port=${HS_PG_PORT:-54329}
base=http://127.0.0.1:$port
log_dir=$(mktemp -d)
passed=0
failed=0
pid=""

cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -rf "$log_dir"
}
trap cleanup EXIT

port_closed() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

code_of() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$base$1" 2>/dev/null || true
}

# wait_ready SECONDS: 0 once /readyz answers 200, 1 when run.sh died or the time ran out.
wait_ready() {
    local deadline=$(($(date +%s) + $1))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        [ "$(code_of /readyz)" = 200 ] && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}

# wait_exit SECONDS: 0 once run.sh has exited (its status in $status), 1 if still running.
wait_exit() {
    local deadline=$(($(hs_now_ms) + $1 * 1000))
    while kill -0 "$pid" 2>/dev/null; do
        [ "$(hs_now_ms)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
    wait "$pid"
    status=$?
    return 0
}

round() {
    local how=$1 t0 log=$log_dir/$1.log status=""
    t0=$(date +%s)
    # Its own session and process group (setsid), so that a signal to the group reaches run.sh
    # and the service as Ctrl-C in a terminal would, and nothing else.
    PORT=$port setsid "$root/deploy/run.sh" >"$log" 2>&1 </dev/null &
    pid=$!
    if ! wait_ready "$ready_s"; then
        echo "FAIL: $how: not ready within $ready_s s; the last lines of its output:"
        tail -n 20 "$log"
        failed=$((failed + 1))
        return
    fi
    echo "run-check: $how: ready $(($(date +%s) - t0)) s after start on $base"
    hs_check "$how: GET /readyz 200" test "$(code_of /readyz)" = 200
    hs_check "$how: GET /after/users/3 200" test "$(code_of /after/users/3)" = 200
    t0=$(hs_now_ms)
    if [ "$how" = sigint-group ]; then
        kill -INT -- "-$pid"
    else
        kill -TERM "$pid"
    fi
    # The shutdown sequence's defaults fit inside 10 s; the cluster's fast stop comes after.
    if wait_exit 30; then
        echo "run-check: $how: exited with status $status $(($(hs_now_ms) - t0)) ms after the signal"
        hs_check "$how: run.sh exits 0" test "$status" = 0
    else
        echo "FAIL: $how: still running 30 s after the signal"
        failed=$((failed + 1))
    fi
    pid=""
    hs_check "$how: the service logged its shutdown" grep -q '"shutdown' "$log"
    hs_check "$how: the throwaway cluster is stopped (nothing listens on $pg_port)" port_closed "$pg_port"
    if [ "$failed" != 0 ]; then
        tail -n 20 "$log"
    fi
}

hs_require run-check curl setsid
if [ -n "${DATABASE_URL:-}" ]; then
    echo "run-check: unset DATABASE_URL: this checks run.sh with its own throwaway cluster" >&2
    exit 2
fi
if ! port_closed "$pg_port"; then
    echo "run-check: something listens on 127.0.0.1:$pg_port already (HS_PG_PORT)" >&2
    exit 2
fi
round sigint-group
round sigterm-script
echo "run-check: $passed passed, $failed failed"
[ "$failed" = 0 ]

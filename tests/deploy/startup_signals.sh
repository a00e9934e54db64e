#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# SIGTERM and SIGINT end the service within 1 s with status 0 at every moment of its life, not
# only once it serves: `docker stop` sends SIGTERM and SIGKILLs 10 s later, so a start-up that
# waits for its database without a handler turns every stop of a container whose database is
# unreachable into exit 137. Each case waits for an observable state before it signals:
#   refused     DATABASE_URL names a port where nothing listens: after the first failed attempt
#               is logged (the migration retries for up to 30 s)
#   black hole  a listener that accepts and never answers (libpq waits inside its connect): after
#               the listener has accepted the service's connection; SIGTERM and SIGINT
#   lock        another session holds the migration lock (TEST_DATABASE_URL only): after
#               pg_locks shows the service's session waiting for it
#   serving     ready and idle, with the default settings: after /readyz answers.
# The 1 s is read from the service's own log, whose lines carry the time to the millisecond: the
# start-up handler's line (step=startup) must come within 1 s of the moment the signal was sent,
# and so must the shutdown sequence's end when serving (step=close since_signal_ms). The process
# must then be gone within 3 s as seen from here: polling a loaded machine with `date` and
# `kill -0`, and an ASan build's leak scan at exit, cost time that is not the service's.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=deploy/lib.sh
source "$root/deploy/lib.sh"
bin=${HINDSIGHT_BIN:-}
limit_ms=1000
exit_limit_ms=3000
lock_key=7523383421053626228
lock_app=hs-startup-signals-lock

[ -x "$bin" ] || { echo "FAIL: HINDSIGHT_BIN ($bin) is not an executable"; exit 1; }
command -v python3 >/dev/null || { echo "SKIP: python3 is missing"; exit 77; }
command -v curl >/dev/null || { echo "SKIP: curl is missing"; exit 77; }

work=$(mktemp -d /tmp/hs-startsig.XXXXXX)
svc=""
svc_port=""
hole=""
holder=""
passed=0
failed=0

release_lock() {
    if [ -n "$holder" ]; then
        psql "$TEST_DATABASE_URL" -qAtc "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
            WHERE application_name = '$lock_app'" >/dev/null 2>&1
        kill "$holder" 2>/dev/null
        wait "$holder" 2>/dev/null
        holder=""
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for p in $svc $hole; do
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    release_lock
    if [ $rc -eq 0 ]; then
        rm -rf "$work"
    else
        tail -n 5 "$work"/*.log
        echo "logs kept in $work"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# start NAME URL: the service on a free port, DATABASE_URL=URL, text logs in $work/NAME.log.
start() {
    local name=$1 url=$2
    svc_port=$(hs_free_port)
    env -i PATH="$PATH" PORT="$svc_port" HOST=127.0.0.1 DATABASE_URL="$url" \
        LOG_FORMAT=text ASAN_OPTIONS="${ASAN_OPTIONS:-}" UBSAN_OPTIONS="${UBSAN_OPTIONS:-}" \
        "$bin" >"$work/$name.log" 2>&1 &
    svc=$!
}

# wait_for WHAT COMMAND...: polls COMMAND until it succeeds (up to 60 s); fails the script if the
# service died or the time ran out.
wait_for() {
    local what=$1 end
    shift
    end=$(($(hs_now_ms) + 60000))
    until "$@"; do
        if ! kill -0 "$svc" 2>/dev/null || [ "$(hs_now_ms)" -ge $end ]; then
            echo "FAIL: never saw: $what"
            exit 1
        fi
        sleep 0.05
    done
}

# signal_and_expect NAME SIG LOG: sends SIG and expects exit status 0 within exit_limit_ms; with
# LOG (start-up cases), expects the start-up handler's line in it within limit_ms of the signal.
signal_and_expect() {
    local name=$1 sig=$2 log=${3:-} limit=$exit_limit_ms start end rc took ts logged
    start=$(hs_now_ms)
    kill -s "$sig" "$svc"
    end=$((start + 10000))
    while kill -0 "$svc" 2>/dev/null && [ "$(hs_now_ms)" -lt $end ]; do
        sleep 0.01
    done
    took=$(($(hs_now_ms) - start))
    if kill -0 "$svc" 2>/dev/null; then
        echo "FAIL: $name: still running 10 s after $sig"
        failed=$((failed + 1))
        kill -KILL "$svc"
        wait "$svc" 2>/dev/null
        svc=""
        return
    fi
    wait "$svc"
    rc=$?
    svc=""
    echo "$name: $sig -> exit status $rc after $took ms"
    hs_check "$name: $sig ends the process within $limit ms (took $took ms)" \
        [ "$took" -lt "$limit" ]
    hs_check "$name: $sig -> exit status 0 (got $rc)" [ "$rc" -eq 0 ]
    if [ -n "$log" ]; then
        ts=$(sed -n 's/^\([^ ]*\) WARN shutdown step=startup .*/\1/p' "$work/$log.log" | head -n 1)
        logged=$([ -n "$ts" ] && date -d "$ts" +%s%3N)
        reacted() { [ -n "$logged" ] && [ $((logged - start)) -lt "$limit_ms" ]; }
        hs_check "$name: $sig handled within $limit_ms ms (logged $((${logged:-0} - start)) ms after)" \
            reacted
    fi
}

logged() { grep -q "$1" "$work/$2.log"; }
accepted_twice() { [ "$(grep -c accepted "$work/$1.log")" -ge 2 ]; }

# refused: the migration's retry loop.
port=$(hs_free_port)
start refused "postgresql://hs@127.0.0.1:$port/hs"
wait_for "the first failed connection attempt logged" logged "step=connect" refused
signal_and_expect refused SIGTERM refused

# black hole: libpq blocked in its connect, waiting for the server's first answer.
for sig in SIGTERM SIGINT; do
    port=$(hs_free_port)
    python3 -c '
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(8)
held = []
while True:
    c, _ = s.accept()
    held.append(c)
    print("accepted", flush=True)
' "$port" >"$work/hole-$sig.log" 2>&1 &
    hole=$!
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.05; done
    start "blackhole-$sig" "postgresql://hs@127.0.0.1:$port/hs"
    # The probe above was the first connection; the service's is the second.
    wait_for "the black hole accepting the service's connection" accepted_twice "hole-$sig"
    signal_and_expect "black hole" "$sig" "blackhole-$sig"
    kill "$hole" 2>/dev/null
    wait "$hole" 2>/dev/null
    hole=""
done

if [ -n "${TEST_DATABASE_URL:-}" ] && command -v psql >/dev/null; then
    # lock: the migration waiting for another instance's migration lock.
    PGAPPNAME=$lock_app psql "$TEST_DATABASE_URL" -qAt -c "SELECT pg_advisory_lock($lock_key)" \
        -c "SELECT pg_sleep(120)" >/dev/null 2>&1 &
    holder=$!
    lock_waits() {
        [ "$(psql "$TEST_DATABASE_URL" -qAtc "SELECT count(*) FROM pg_locks
            WHERE locktype = 'advisory' AND NOT granted AND pid <> pg_backend_pid()")" -gt 0 ]
    }
    lock_held() {
        [ "$(psql "$TEST_DATABASE_URL" -qAtc "SELECT count(*) FROM pg_stat_activity
            WHERE application_name = '$lock_app' AND wait_event = 'PgSleep'")" -gt 0 ]
    }
    until lock_held; do
        kill -0 "$holder" 2>/dev/null || { echo "FAIL: could not take the migration lock"; exit 1; }
        sleep 0.05
    done
    start lock "$TEST_DATABASE_URL"
    wait_for "the service waiting for the migration lock" lock_waits
    signal_and_expect lock SIGTERM lock
    release_lock

    # serving: ready, idle, default shutdown settings.
    start serving "$TEST_DATABASE_URL"
    ready() { curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$svc_port/readyz"; }
    wait_for "the service ready" ready
    signal_and_expect serving SIGTERM
    closed_ms=$(sed -n 's/.* shutdown step=close\( worker=0\)\{0,1\} since_signal_ms=\([0-9]*\).*/\2/p' \
        "$work/serving.log")
    closed_in_time() { [ -n "$closed_ms" ] && [ "$closed_ms" -lt "$limit_ms" ]; }
    hs_check "serving: the shutdown sequence ended within $limit_ms ms of the signal (step=close
        after ${closed_ms:-no} ms)" closed_in_time
else
    echo "lock, serving: skipped (no TEST_DATABASE_URL)"
fi

echo "startup_signals: $passed passed, $failed failed"
[ $failed -eq 0 ]

#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Horizontal scale without a failed request: two instances of the built service behind nginx
# (deploy/nginx/lb.conf.template), one PostgreSQL (TEST_DATABASE_URL), wrk load through the
# balancer, and a rolling restart: instance A gets SIGTERM, drains, exits and is started again,
# then B. It passes when
#   - no request through the balancer failed (wrk's non-2xx/3xx and socket errors are all 0),
#   - every instance exited 0, within DRAIN_DELAY_MS + SHUTDOWN_GRACE_MS and a margin,
#   - each instance's /readyz turned 503 while it was draining (service/shutdown.h, step 1),
#   - both instances served traffic through the balancer.
# The load is GET /healthz plus GET /after/users/{id} when GET /routes lists it; without it, the
# second stream is GET /readyz and the test says so. Everything listens on 127.0.0.1 only; every
# process started here is stopped on any exit (trap), and the logs stay in a temporary folder when
# the test fails.
set -uo pipefail

root=${HS_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
# shellcheck source=deploy/lib.sh
source "$root/deploy/lib.sh"
bin=${HINDSIGHT_BIN:-$root/build/hindsight}
drain_ms=1500
grace_ms=5000
duration=20 # seconds of load; the restarts must finish inside it

skip() {
    echo "SKIP: $*"
    exit 77
}
[ -x "$bin" ] || { echo "FAIL: HINDSIGHT_BIN ($bin) is not an executable"; exit 1; }
[ -n "${TEST_DATABASE_URL:-}" ] || skip "TEST_DATABASE_URL is not set (deploy/test.sh sets it)"
for tool in nginx wrk curl; do
    command -v "$tool" >/dev/null || skip "$tool is not installed (deploy/setup.sh installs it)"
done

work=$(mktemp -d /tmp/hs-rolling.XXXXXX)
chmod 755 "$work" # nginx workers drop root privileges and must reach their temp folders
declare -A pid=() port=()
nginx_pid=
wrk_pids=()
passed=0
failed=0

# stop_pid <pid> <ms>: SIGTERM, then SIGKILL after <ms>; only for processes this script started.
stop_pid() {
    local p=$1 waited=0
    kill -TERM "$p" 2>/dev/null || return 0
    while kill -0 "$p" 2>/dev/null && [ $waited -lt "$2" ]; do
        sleep 0.1
        waited=$((waited + 100))
    done
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for p in "${wrk_pids[@]}" "${pid[@]}" $nginx_pid; do
        stop_pid "$p" 8000
    done
    if [ $rc -eq 0 ] && [ $failed -eq 0 ]; then
        rm -rf "$work"
    else
        for f in "$work"/*.log; do
            [ "$f" = "$work/access.log" ] && continue # one line per request: too long to show
            echo "--- last lines of $f"
            tail -n 15 "$f"
        done
        echo "logs kept in $work"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 1' INT TERM

status_of() { # status_of <url>: the HTTP status, 000 when nothing answered
    curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1"
}

wait_ready() { # wait_ready <port>: until /readyz answers 200, at most 30 s
    local end=$(($(hs_now_ms) + 30000))
    while [ "$(hs_now_ms)" -lt $end ]; do
        [ "$(status_of "http://127.0.0.1:$1/readyz")" = 200 ] && return 0
        sleep 0.1
    done
    return 1
}

start_instance() { # start_instance <name>: start it on its port and wait until it is ready
    local name=$1
    env -i PATH="$PATH" PORT="${port[$name]}" DATABASE_URL="$TEST_DATABASE_URL" \
        DRAIN_DELAY_MS=$drain_ms SHUTDOWN_GRACE_MS=$grace_ms LOG_LEVEL=warn LOG_FORMAT=text \
        "$bin" >>"$work/instance-$name.log" 2>&1 &
    pid[$name]=$!
    if ! wait_ready "${port[$name]}"; then
        echo "FAIL: instance $name did not become ready on port ${port[$name]}"
        exit 1
    fi
}

# roll <name>: SIGTERM the instance, watch readiness turn 503 while it drains, wait for its exit
# (bounded), check the status, start it again.
roll() {
    local name=$1 p=${pid[$1]} start saw_draining=no end rc code seen=""
    start=$(hs_now_ms)
    kill -TERM "$p"
    # Until readiness says 503, or the listener is gone (then the drain was missed), or the
    # process exits: tied to the service's state rather than to DRAIN_DELAY_MS on the clock, which
    # a busy machine's slow probes can use up before one of them is answered.
    end=$((start + drain_ms + grace_ms + 5000))
    while kill -0 "$p" 2>/dev/null && [ "$(hs_now_ms)" -lt $end ]; do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
            "http://127.0.0.1:${port[$name]}/readyz")
        if [ "$code" = 503 ]; then
            saw_draining=yes
            break
        fi
        seen="$seen $code"
        [ "$code" = 000 ] && break
        sleep 0.05
    done
    hs_check "instance $name: /readyz turns 503 during DRAIN_DELAY_MS (before: ${seen:- none})" \
        [ $saw_draining = yes ]
    end=$((start + drain_ms + grace_ms + 5000))
    while kill -0 "$p" 2>/dev/null && [ "$(hs_now_ms)" -lt $end ]; do
        sleep 0.05
    done
    if kill -0 "$p" 2>/dev/null; then
        echo "FAIL: instance $name still runs $((drain_ms + grace_ms + 5000)) ms after SIGTERM"
        exit 1
    fi
    wait "$p"
    rc=$?
    echo "instance $name: exit status $rc, $(($(hs_now_ms) - start)) ms after SIGTERM"
    hs_check "instance $name exits 0 after SIGTERM (got $rc)" [ $rc -eq 0 ]
    start_instance "$name"
    echo "instance $name: restarted and ready $(($(hs_now_ms) - start)) ms after SIGTERM"
}

field() { # field <name> <file>: a value of the wrk-result line (deploy/wrk/common.lua)
    sed -n "s/^wrk-result.* $1=\([^ ]*\).*/\1/p" "$2"
}

port[a]=$(hs_free_port)
port[b]=$(hs_free_port)
while [ "${port[b]}" = "${port[a]}" ]; do
    port[b]=$(hs_free_port)
done
lb=$(hs_free_port)
start_instance a
start_instance b

sed -e "s,@RUN_DIR@,$work,g" -e "s,@LISTEN@,$lb,g" -e "s,@PORT_A@,${port[a]},g" \
    -e "s,@PORT_B@,${port[b]},g" "$root/deploy/nginx/lb.conf.template" >"$work/nginx.conf"
nginx -p "$work" -e "$work/error.log" -c "$work/nginx.conf" -g 'daemon off;' \
    >"$work/nginx-stdout.log" 2>&1 &
nginx_pid=$!
wait_ready "$lb" || { echo "FAIL: nginx on port $lb does not reach the instances"; exit 1; }
url=http://127.0.0.1:$lb

if curl -fsS --max-time 5 "$url/routes" | grep -q '"/after/users/[^"/]*"'; then
    streams=("healthz.lua" "users.lua variant=after delay_ms=0")
    echo "load: GET /healthz and GET /after/users/{id} through nginx"
else
    streams=("healthz.lua" "healthz.lua path=/readyz")
    echo "load: GET /healthz and GET /readyz through nginx (/after/users/{id} is not routed yet)"
fi

for i in "${!streams[@]}"; do
    read -r -a s <<<"${streams[$i]}"
    wrk -t1 -c8 -d"${duration}s" --timeout 5s --latency -s "$root/deploy/wrk/${s[0]}" "$url" \
        -- "${s[@]:1}" >"$work/wrk-$i.log" 2>&1 &
    wrk_pids+=($!)
done

load_start=$(hs_now_ms)
sleep 2
roll a
sleep 2
roll b
rolled_ms=$(($(hs_now_ms) - load_start))
hs_check "both restarts finished inside the ${duration} s of load (took $rolled_ms ms)" \
    [ $rolled_ms -lt $((duration * 1000 - 1000)) ]

for i in "${!wrk_pids[@]}"; do
    wait "${wrk_pids[$i]}"
    hs_check "wrk ${streams[$i]} exits 0" [ $? -eq 0 ]
done
wrk_pids=()
for i in "${!streams[@]}"; do
    f=$work/wrk-$i.log
    echo "${streams[$i]}: $(grep '^wrk-result' "$f" | cut -d' ' -f2-)"
    errors=$(($(field connect "$f") + $(field read "$f") + $(field write "$f") \
              + $(field timeout "$f")))
    hs_check "${streams[$i]}: requests were made ($(field requests "$f"))" \
        [ "$(field requests "$f")" -gt 1000 ]
    hs_check "${streams[$i]}: no non-2xx/3xx answer ($(field non2xx "$f"))" \
        [ "$(field non2xx "$f")" = 0 ]
    hs_check "${streams[$i]}: no socket error ($errors)" [ $errors -eq 0 ]
done

for name in a b; do
    start=$(hs_now_ms)
    p=${pid[$name]}
    stop_pid "$p" $((drain_ms + grace_ms + 5000))
    wait "$p" 2>/dev/null
    rc=$?
    unset "pid[$name]"
    hs_check "restarted instance $name exits 0 on SIGTERM (got $rc)" [ $rc -eq 0 ]
done

# The balancer's view: how many requests each instance answered and how many were retried on the
# other one (that is the failover path at work).
stop_pid "$nginx_pid" 5000
nginx_pid=
for name in a b; do
    n=$(grep -c "|127.0.0.1:${port[$name]}|" "$work/access.log")
    echo "instance $name answered $n requests through nginx on its first try"
    hs_check "instance $name served traffic through the balancer" [ "$n" -gt 0 ]
done
echo "requests retried on the other instance: $(grep -c '|[^|]*, [^|]*|' "$work/access.log")"
echo "rolling_restart: $passed passed, $failed failed"
[ $failed -eq 0 ]

#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Memory soak: one private instance of the built service under a steady, moderate mix of the
# `after` routes (users, dashboard, batch, welcome in both scopes, transfers with Idempotency-Keys)
# plus GET /healthz, for DURATION. Every few seconds it samples the process's resident memory
# (VmRSS in /proc/<pid>/status) and, from /metrics, requests served, tasks alive and the pool's
# gauges, and prints them as a table. The target (docs/benchmarks.md) is a flat RSS over a 10-minute
# soak:
# the verdict compares RSS once warmed up (at WARMUP_PCT of the run) with RSS at the end.
#
#   deploy/bench-soak.sh                  10 minutes
#   deploy/bench-soak.sh -d 60            one minute (also: -d 90s, -d 2m, or DURATION=60)
#
# Environment: HINDSIGHT_BIN (default build/hindsight), DATABASE_URL (a postgresql:// URL of a
# server where a throwaway database may be created; default deploy/pg.sh url), DURATION (600),
# INTERVAL (seconds between samples, 5), WARMUP_PCT (20), GROWTH_PCT (10) and GROWTH_MB (4).
#
# It exits non-zero when RSS grew by more than GROWTH_PCT percent *and* more than GROWTH_MB after
# warm-up (both, so that neither a small heap's noise nor a large heap's slow creep passes
# unseen), when any request got a 5xx or a socket error (connect, read, write, timeout), or when
# the service does not exit 0 on SIGTERM at the end. 409s (a transfer meeting an exhausted
# balance) are a normal answer and counted, not failed.
#
# wrk has no rate option: each connection waits a fixed think time between requests (a delay()
# added by a small wrapper around each deploy/wrk script), so the load stays well below what the
# machine can serve and RSS reflects steady work, not a growing backlog. Traffic goes to
# 127.0.0.1 only. The writing routes add rows, so the instance gets its own database, created
# here and dropped on exit, as the instance is stopped, whatever happens.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/lib.sh
source "$root/deploy/lib.sh"
bin=${HINDSIGHT_BIN:-$root/build/hindsight}
duration=${DURATION:-600}
interval=${INTERVAL:-5}
warmup_pct=${WARMUP_PCT:-20}
growth_pct=${GROWTH_PCT:-10}
growth_mb=${GROWTH_MB:-4}

usage() {
    sed -n '11,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case $1 in
    -d | --duration) [ $# -ge 2 ] || usage; duration=$2; shift 2 ;;
    --duration=*) duration=${1#*=}; shift ;;
    *) usage ;;
    esac
done

# 600, 600s or 10m: seconds.
case $duration in
*m) duration=$(( ${duration%m} * 60 )) ;;
*s) duration=${duration%s} ;;
esac
if ! [[ $duration =~ ^[0-9]+$ ]] || [ "$duration" -lt 20 ]; then
    echo "bench-soak: DURATION must be at least 20 seconds" >&2
    exit 2
fi

die() {
    echo "bench-soak: $*" >&2
    exit 1
}

[ -x "$bin" ] || die "$bin is not an executable (build it, or set HINDSIGHT_BIN)"
hs_require bench-soak curl psql wrk
hs_db_server "${DATABASE_URL:-$("$root/deploy/pg.sh" url)}" ||
    die "DATABASE_URL must be a postgresql:// URL"
db_url() { hs_db_url "$1"; }
admin_url=$(db_url postgres)
db=hs_soak_$$_$RANDOM
svc_url=$(db_url "$db")
sql() { psql -X -q -t -A -v ON_ERROR_STOP=1 -d "$admin_url" -c "$1"; }

work=$(mktemp -d /tmp/hs-soak.XXXXXX)
svc_pid=
db_made=0
load_pids=()

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${load_pids[@]}" $svc_pid; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${load_pids[@]}" $svc_pid; do
        for _ in $(seq 100); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    if [ $db_made = 1 ]; then
        sql "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null ||
            echo "bench-soak: could not drop database $db" >&2
    fi
    if [ $rc -eq 0 ]; then
        rm -rf "$work"
    else
        echo "bench-soak: logs kept in $work" >&2
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# A port nothing listens on now, outside the kernel's ephemeral range.
sql "CREATE DATABASE $db" >/dev/null || die "cannot create database $db"
db_made=1

port=$(hs_free_port)
url=http://127.0.0.1:$port
# Warnings only: one log line per request would fill the disk, not the heap.
env -i PATH="$PATH" HOST=127.0.0.1 PORT="$port" DATABASE_URL="$svc_url" LOG_LEVEL=warn \
    "$bin" >"$work/service.log" 2>&1 &
svc_pid=$!
for _ in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url/readyz")" = 200 ] && break
    kill -0 "$svc_pid" 2>/dev/null || break
    sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url/readyz")" = 200 ] ||
    { tail -n 20 "$work/service.log" >&2; die "the service did not become ready"; }

# The load: name, script, connections, think time (ms) per connection, script options. At these
# settings the service answers some 500 requests/s, a fraction of what it can do on two cores.
loads=(
    "users      users      4 20  delay_ms=5"
    "dashboard  dashboard  2 20  delay_ms=5"
    "batch      batch      1 100 size=20 delay_ms=5 concurrency=4"
    "welcome    welcome    1 100 events=3 delay_ms=10 wait=false"
    "welcome-w  welcome    1 100 events=3 delay_ms=10 wait=true"
    "transfers  transfers  2 20  max_amount=5"
    "healthz    healthz    1 10"
)

# wrapper NAME SCRIPT THINK_MS: the deploy/wrk script plus a think time between requests and a
# count of answers by status, printed by done() as one `wrk-status 200=n 409=m` line.
wrapper() {
    cat >"$work/$1.lua" <<LUA
dofile("$root/deploy/wrk/$2.lua")
function delay() return $3 end
local base_setup, base_done, all = setup, done, {}
function setup(thread) base_setup(thread); all[#all + 1] = thread end
statuses = {}
function response(status) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
    base_done(summary, latency, requests)
    local sum, words = {}, {}
    for _, t in ipairs(all) do
        for s, n in pairs(t:get("statuses")) do sum[s] = (sum[s] or 0) + n end
    end
    for s, n in pairs(sum) do words[#words + 1] = s .. "=" .. n end
    table.sort(words)
    io.write("wrk-status " .. table.concat(words, " ") .. "\n")
end
LUA
}

echo "bench-soak: $bin on $url, database $db, ${duration}s, a sample every ${interval}s"
for l in "${loads[@]}"; do
    read -r name script conns think opts <<<"$l"
    wrapper "$name" "$script" "$think"
    # shellcheck disable=SC2086 # opts is a list of words on purpose
    timeout $((duration + 60)) wrk -t1 -c"$conns" -d"${duration}s" --timeout 10s \
        -s "$work/$name.lua" "$url" -- $opts >"$work/$name.wrk" 2>&1 &
    load_pids+=($!)
    printf '  %-10s %d conn, think %3d ms  %s\n' "$name" "$conns" "$think" "${opts:-}"
done

# metric NAME [LABEL-REGEX]: the sum of the samples of NAME (whose labels match) in $metrics.
metric() {
    awk -v n="$1" -v re="${2:-}" '{ split($1, a, "{") }
        a[1] == n && (re == "" || $1 ~ re) { s += $2 } END { printf "%d", s }' <<<"$metrics"
}
rss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$svc_pid/status"; }
hwm_kb() { awk '$1 == "VmHWM:" { print $2 }' "/proc/$svc_pid/status"; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

samples=$work/samples.tsv
header='%7s %8s %10s %8s %6s %8s %8s %8s %8s\n'
# shellcheck disable=SC2059 # the format is ours
printf "$header" "t (s)" "RSS MB" requests "req/s" 5xx tasks db_busy db_idle db_queue
start=$SECONDS
last_t=0 last_n=0
while :; do
    sleep "$interval"
    t=$((SECONDS - start))
    kill -0 "$svc_pid" 2>/dev/null || { tail -n 20 "$work/service.log" >&2; die "the service died"; }
    metrics=$(curl -s --max-time 5 "$url/metrics" || true)
    n=$(metric hs_http_requests_total)
    rss=$(rss_kb)
    row=("$t" "$(mb "$rss")" "$n" "$(( (n - last_n) / (t - last_t > 0 ? t - last_t : 1) ))"
         "$(metric hs_http_requests_total 'status="5')" "$(metric hs_tasks_live)"
         "$(metric hs_db_connections 'state="busy"')" "$(metric hs_db_connections 'state="idle"')"
         "$(metric hs_db_queue_depth)")
    # shellcheck disable=SC2059
    printf "$header" "${row[@]}"
    printf '%s\t%s\n' "$t" "$rss" >>"$samples"
    last_t=$t last_n=$n
    [ "$t" -lt "$duration" ] || break
done

load_failed=0
for p in "${load_pids[@]}"; do
    wait "$p" || load_failed=1
done
load_pids=()

# Work left over from the load (welcome events in the service scope) ends within seconds.
for _ in $(seq 150); do
    metrics=$(curl -s --max-time 5 "$url/metrics" || true)
    [ "$(metric hs_tasks_live)" = 0 ] && [ "$(metric hs_http_requests_in_flight)" -le 1 ] && break
    sleep 0.2
done
idle_rss=$(rss_kb)
peak_kb=$(hwm_kb)
served=$(metric hs_http_requests_total)

kill -TERM "$svc_pid"
exit_rc=
for _ in $(seq 300); do
    kill -0 "$svc_pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$svc_pid" 2>/dev/null; then
    exit_rc="killed: still running 30 s after SIGTERM"
else
    wait "$svc_pid" && exit_rc=0 || exit_rc=$?
fi
svc_pid=

# field NAME FILE: the value of NAME= on the wrk-result line of FILE (deploy/wrk/common.lua).
field() { sed -n "s/^wrk-result.* $1=\([^ ]*\).*/\1/p" "$2"; }

echo
printf '%-10s %9s %8s %8s %8s %7s  %s\n' load requests "req/s" "p99 ms" "max ms" errors statuses
total_5xx=0 total_err=0 total_req=0
for l in "${loads[@]}"; do
    read -r name _ <<<"$l"
    f=$work/$name.wrk
    if ! grep -q '^wrk-result' "$f"; then
        cat "$f" >&2
        load_failed=1
        continue
    fi
    err=$(( $(field connect "$f") + $(field read "$f") + $(field write "$f") + $(field timeout "$f") ))
    statuses=$(sed -n 's/^wrk-status //p' "$f")
    fivexx=$(tr ' ' '\n' <<<"$statuses" | awk -F= '$1 >= 500 { s += $2 } END { print s + 0 }')
    printf '%-10s %9s %8s %8s %8s %7s  %s\n' "$name" "$(field requests "$f")" "$(field rps "$f")" \
        "$(field p99_ms "$f")" "$(field max_ms "$f")" "$err" "$statuses"
    total_5xx=$((total_5xx + fivexx))
    total_err=$((total_err + err))
    total_req=$((total_req + $(field requests "$f")))
done

# The first sample at WARMUP_PCT of the run, the last one, and the largest after warm-up.
read -r warm_t warm_kb end_t end_kb max_kb < <(awk -v w="$((duration * warmup_pct / 100))" '
    $1 >= w && warm == "" { warm = $2; wt = $1 }
    $1 >= w && $2 > max { max = $2 }
    { end = $2; et = $1 }
    END { print wt, warm, et, end, max }' "$samples")
growth_kb=$((end_kb - warm_kb))
verdict=$(awk -v w="$warm_kb" -v g="$growth_kb" -v p="$growth_pct" -v m="$growth_mb" '
    BEGIN { pct = 100 * g / w
            printf "%+.1f MB (%+d kB, %+.1f%%) %s", g / 1024, g, pct,
                   (pct > p && g > m * 1024) ? "GROWS" : "flat" }')

echo
echo "requests served: $served (wrk counted $total_req), 5xx: $total_5xx, socket errors: $total_err"
echo "RSS after warm-up (t=${warm_t}s): $(mb "$warm_kb") MB; at the end (t=${end_t}s):" \
    "$(mb "$end_kb") MB; growth $verdict (limit: > ${growth_pct}% and > ${growth_mb} MB)"
echo "RSS max after warm-up: $(mb "$max_kb") MB; peak of the whole run (VmHWM): $(mb "$peak_kb")" \
    "MB; idle after the load: $(mb "$idle_rss") MB"
echo "exit status after SIGTERM: $exit_rc"

failed=0
[[ $verdict == *GROWS ]] && { echo "FAIL: RSS grew after warm-up"; failed=1; }
[ "$total_5xx" -eq 0 ] || { echo "FAIL: $total_5xx responses were 5xx"; failed=1; }
[ "$total_err" -eq 0 ] || { echo "FAIL: $total_err socket errors"; failed=1; }
[ "$load_failed" -eq 0 ] || { echo "FAIL: a wrk run failed (output in $work)"; failed=1; }
[ "$exit_rc" = 0 ] || { echo "FAIL: the service did not exit 0 on SIGTERM"; failed=1; }
[ $failed -eq 0 ] || exit 1
echo "PASS"

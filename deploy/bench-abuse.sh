#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The service under abusive clients: slowhttptest's slowloris (slow headers), slow body
# (R-U-Dead-Yet) and slow read modes, and a body-hold flood (clients that send most of a declared
# 1 MB body and wait). For each phase it prints /healthz p50/p99 measured during the attack (a
# new connection per probe, as an orchestrator's probe makes), the probes that failed, the peak
# RSS, and whether the service recovered afterwards (/healthz answers and RSS is back within
# 32 MB of where it started). A benchmark a person runs, not a test.
#
#   deploy/bench-abuse.sh                          1,000 attack connections, 20 s per phase
#   CONNECTIONS=4000 DURATION=60 HOLDERS=300 deploy/bench-abuse.sh
#
# It builds build/ in release mode if needed and runs its own instance without a database on a
# free loopback port (the settings of the phases are the service's defaults, plus EXTRA_ENV).
set -euo pipefail

# shellcheck source=deploy/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# shellcheck source=deploy/lib.sh
source "$hs_root/deploy/lib.sh"
cd "$hs_root"

hs_require bench-abuse slowhttptest curl python3

connections=${CONNECTIONS:-1000}
duration=${DURATION:-20}
holders=${HOLDERS:-300}

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$hs_jobs" --target hindsight >/dev/null

tmp=$(mktemp -d)
svc_pid=
attack_pid=
cleanup() {
    [ -n "$attack_pid" ] && kill "$attack_pid" 2>/dev/null && wait "$attack_pid" 2>/dev/null
    [ -n "$svc_pid" ] && kill -TERM "$svc_pid" 2>/dev/null && wait "$svc_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

port=$(hs_free_port)
# shellcheck disable=SC2086 # EXTRA_ENV is a list of NAME=value words
env -u DATABASE_URL PORT="$port" HOST=127.0.0.1 LOG_LEVEL=warn ${EXTRA_ENV:-} build/hindsight \
    2>"$tmp/service.log" &
svc_pid=$!
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && break
    sleep 0.1
done

rss_kb() {
    awk '/^VmRSS:/ {print $2}' "/proc/$svc_pid/status"
}

# probe SECONDS: /healthz once every 50 ms for SECONDS, each on a new connection; writes one line
# per probe ("<status> <seconds>") to $tmp/probes and the peak RSS seen to $tmp/peak.
probe() {
    local until peak=0 r
    until=$(($(hs_now_ms) + $1 * 1000))
    : >"$tmp/probes"
    while [ "$(hs_now_ms)" -lt "$until" ]; do
        curl -s -o /dev/null --max-time 5 -w '%{http_code} %{time_total}\n' \
            "http://127.0.0.1:$port/healthz" >>"$tmp/probes" || true
        r=$(rss_kb)
        [ "$r" -gt "$peak" ] && peak=$r
        sleep 0.05
    done
    echo "$peak" >"$tmp/peak"
}

# The body-hold flood: HOLDERS connections each declare a 1 MB body, send all of it but 4 KB,
# and wait; those the service refuses at once (503) are counted.
hold_flood() {
    python3 - "$port" "$holders" "$duration" <<'PY'
import socket, sys, time
port, n, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
head = b"POST /after/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n"
chunk = b" " * (1048576 - 4096)
socks = []
for _ in range(n):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(head)
        s.setblocking(False)
        try:
            s.send(chunk)
        except (BlockingIOError, OSError):
            pass
        socks.append(s)
    except OSError:
        pass
time.sleep(secs)
for s in socks:
    s.close()
PY
}

# phase NAME COMMAND...: runs COMMAND in the background for DURATION seconds while probing, then
# stops it and checks recovery.
declare -a rows
base_rss=$(rss_kb)
phase() {
    local name=$1 p50 p99 failed total peak recovered after held
    shift
    "$@" >"$tmp/$name.log" 2>&1 &
    attack_pid=$!
    sleep 2 # let the attack reach its connection count
    probe "$((duration - 3))"
    kill "$attack_pid" 2>/dev/null || true
    wait "$attack_pid" 2>/dev/null || true
    attack_pid=
    read -r p50 p99 failed total < <(python3 - "$tmp/probes" <<'PY'
import sys
ok, failed = [], 0
for line in open(sys.argv[1]):
    code, t = line.split()
    if code == "200":
        ok.append(float(t) * 1000)
    else:
        failed += 1
ok.sort()
pick = lambda q: ok[min(len(ok) - 1, int(q * len(ok)))] if ok else float("nan")
print(f"{pick(0.50):.2f} {pick(0.99):.2f} {failed} {len(ok) + failed}")
PY
)
    peak=$(($(cat "$tmp/peak") / 1024))
    # The most connections slowhttptest held open at once (its status lines), or "-".
    held=$(sed 's/\x1b\[[0-9;]*m//g' "$tmp/$name.log" |
        awk '/^connected:/ {if ($2 > m) m = $2} END {print m ? m : "-"}')
    # Recovered: /healthz answers within 10 s and RSS is back near where the run began.
    recovered=no
    for _ in $(seq 1 100); do
        if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz" 2>/dev/null &&
            [ "$(rss_kb)" -lt $((base_rss + 32 * 1024)) ]; then
            recovered=yes
            break
        fi
        sleep 0.1
    done
    after=$(($(rss_kb) / 1024))
    rows+=("$(printf '%-22s %7s %9s %9s %9s %9s %10s %10s' "$name" "$held" "$p50" "$p99" \
        "$failed/$total" "$peak" "$after" "$recovered")")
    echo "bench-abuse: $name done" >&2
}

url="http://127.0.0.1:$port"
phase "baseline" sleep "$duration"
phase "slowloris (-H)" slowhttptest -H -c "$connections" -r 500 -i 5 -l "$duration" \
    -u "$url/healthz" -p 3
phase "slow body (-B)" slowhttptest -B -c "$connections" -r 500 -i 5 -s 8192 -l "$duration" \
    -u "$url/after/batch" -p 3
phase "slow read (-X)" slowhttptest -X -c "$connections" -r 500 -k 10 -n 2 -w 1 -y 64 -z 16 \
    -l "$duration" -u "$url/routes" -p 3
phase "body-hold flood" hold_flood

printf '\n%s connections per slowhttptest phase, %s holders of 1 MB, %s s each; RSS at start %s MB\n' \
    "$connections" "$holders" "$duration" "$((base_rss / 1024))"
printf '%-22s %7s %9s %9s %9s %9s %10s %10s\n' "phase" "held" "p50 (ms)" "p99 (ms)" \
    "failed" "RSS MB" "RSS after" "recovered"
printf '%s\n' "${rows[@]}"

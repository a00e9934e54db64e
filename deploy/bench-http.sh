#!/usr/bin/env bash
# GET /healthz of the service against nginx (Debian's) answering a fixed 200, with the same
# worker count (WORKERS, default 1: the service's event loops, nginx's worker processes) and the
# same wrk settings, in one run on one machine: prints both requests/s, their ratio, the p99
# latency (wrk --latency) and the CPU time per request of every process serving. The target
# (docs/benchmarks.md): the service at least matches nginx, p99 under 2 ms at 64 connections.
# Absolute numbers drift on shared machines; the ratios are the result.
#
#   deploy/bench-http.sh                    64 connections, 2 rounds of 10 s each
#   CONNECTIONS=128 DURATION=20s ROUNDS=5 PIN=1 THREADS=1 deploy/bench-http.sh
#   WORKERS=2 deploy/bench-http.sh          two loops against two nginx workers
#
# It builds build/ in release mode if needed, runs the service without a database (/healthz
# never touches it) and nginx from a private temporary configuration on free loopback ports.
set -euo pipefail

# shellcheck source=deploy/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# shellcheck source=deploy/lib.sh
source "$hs_root/deploy/lib.sh"
cd "$hs_root"

connections=${CONNECTIONS:-64}
threads=${THREADS:-}
duration=${DURATION:-10s}
rounds=${ROUNDS:-2}
workers=${WORKERS:-1}

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$hs_jobs" --target hindsight >/dev/null

tmp=$(mktemp -d)
svc_pid=
nginx_pid=
cleanup() {
    [ -n "$svc_pid" ] && kill -TERM "$svc_pid" 2>/dev/null && wait "$svc_pid" 2>/dev/null
    [ -n "$nginx_pid" ] && kill -QUIT "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

wait_http() {
    local i
    for i in $(seq 1 100); do
        if curl -fsS -o /dev/null "http://127.0.0.1:$1/healthz" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "bench: nothing answers on port $1" >&2
    return 1
}

# PIN=1 (on a quiet machine with two or more cores): each server gets the last core and wrk the
# others, the same for both, so the servers do not fight their own load generator for a core. On
# a machine shared with other work, pinning only ties the server to a busy core: off by default.
server_cpu=()
client_cpu=()
if [ "${PIN:-0}" = 1 ] && [ "$hs_jobs" -ge 2 ] && command -v taskset >/dev/null; then
    server_cpu=(taskset -c "$((hs_jobs - 1))")
    client_cpu=(taskset -c "0-$((hs_jobs - 2))")
fi

# One wrk thread per core it may use, leaving one for the server.
threads=${threads:-$(( hs_jobs >= 2 ? hs_jobs - 1 : 1 ))}

svc_port=$(hs_free_port)
nginx_port=$(hs_free_port)
while [ "$nginx_port" = "$svc_port" ]; do nginx_port=$(hs_free_port); done

env -u DATABASE_URL PORT="$svc_port" LOG_LEVEL=info WORKERS="$workers" "${server_cpu[@]}" build/hindsight \
    2>"$tmp/service.log" &
svc_pid=$!

mkdir -p "$tmp/nginx"
cat >"$tmp/nginx/nginx.conf" <<CONF
worker_processes $workers;
daemon off;
# With one worker, one process serving, as the service is. With more, a master and its workers:
# the CPU time measured is then the whole process group's (cpu_ticks).
master_process $([ "$workers" = 1 ] && echo off || echo on);
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            default_type application/json;
            return 200 '{"status":"ok"}';
        }
    }
}
CONF
"${server_cpu[@]}" nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" 2>"$tmp/nginx/stderr.log" &
nginx_pid=$!

wait_http "$svc_port"
wait_http "$nginx_port"

# CPU time (user + system), in clock ticks, of the process $1 and of every process whose parent it
# is (nginx's workers; the service's loops are threads of the one process and already counted).
# A process that exits between the glob and the read is skipped (on a busy machine one does).
cpu_ticks() {
    local f
    for f in /proc/[0-9]*/stat; do cat "$f" 2>/dev/null || true; done | awk -v p="$1" '{
        pid = $1; s = $0; sub(/^.*\) /, "", s); split(s, a, " ")
        if (pid == p || a[2] == p) t += a[12] + a[13]
    } END { print t + 0 }'
}

# Prints "<requests/s> <p99 in ms> <CPU microseconds per request>" for one wrk run against the
# server on port $1 whose pid is $2. The CPU cost per request does not depend on how much of a
# core the server got from a busy machine, so its ratio is the steadier comparison.
measure() {
    local out rps p99 t0 t1 n us
    t0=$(cpu_ticks "$2")
    out=$("${client_cpu[@]}" wrk -t"$threads" -c"$connections" -d"$duration" --latency \
        "http://127.0.0.1:$1/healthz")
    t1=$(cpu_ticks "$2")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    us=$(awk -v d="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" -v n="$n" \
        'BEGIN {printf "%.2f", d / hz * 1e6 / n}')
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {v = $2; if (v ~ /us$/) {sub(/us$/, "", v); v /= 1000}
                            else if (v ~ /ms$/) sub(/ms$/, "", v);
                            else if (v ~ /s$/) {sub(/s$/, "", v); v *= 1000}
                            print v}' <<<"$out")
    echo "$rps $p99 $us"
}

echo "bench: wrk -t$threads -c$connections -d$duration --latency, $rounds alternating rounds," \
    "servers on: ${server_cpu[*]:-any core}, wrk on: ${client_cpu[*]:-any core}" >&2
# A short warm-up of each, then alternating rounds so that neither side gets the quieter moment
# of a shared machine; the best round of each is reported.
"${client_cpu[@]}" wrk -t"$threads" -c"$connections" -d2s "http://127.0.0.1:$svc_port/healthz" >/dev/null
"${client_cpu[@]}" wrk -t"$threads" -c"$connections" -d2s "http://127.0.0.1:$nginx_port/healthz" \
    >/dev/null
best_svc=0 best_svc_p99=0 best_nginx=0 best_nginx_p99=0
svc_us=() nginx_us=()
for round in $(seq 1 "$rounds"); do
    read -r rps p99 us < <(measure "$svc_port" "$svc_pid")
    echo "round $round  hindsight  ${rps} req/s  p99 ${p99} ms  ${us} us CPU/request" >&2
    svc_us+=("$us")
    if awk -v a="$rps" -v b="$best_svc" 'BEGIN {exit !(a > b)}'; then
        best_svc=$rps best_svc_p99=$p99
    fi
    read -r rps p99 us < <(measure "$nginx_port" "$nginx_pid")
    echo "round $round  nginx      ${rps} req/s  p99 ${p99} ms  ${us} us CPU/request" >&2
    nginx_us+=("$us")
    if awk -v a="$rps" -v b="$best_nginx" 'BEGIN {exit !(a > b)}'; then
        best_nginx=$rps best_nginx_p99=$p99
    fi
done
# The lowest CPU cost seen: interference only ever adds to it.
min() { printf '%s\n' "$@" | sort -g | head -1; }
svc_cost=$(min "${svc_us[@]}")
nginx_cost=$(min "${nginx_us[@]}")

printf '\n%-28s %12s %10s %14s\n' "GET /healthz, $connections conns" "requests/s" "p99 (ms)" \
    "CPU us/request"
printf '%-28s %12.0f %10.3f %14.2f\n' "hindsight ($workers loop(s))" "$best_svc" "$best_svc_p99" \
    "$svc_cost"
printf '%-28s %12.0f %10.3f %14.2f\n' "nginx ($workers worker(s))" "$best_nginx" "$best_nginx_p99" \
    "$nginx_cost"
awk -v a="$best_svc" -v b="$best_nginx" -v ca="$svc_cost" -v cb="$nginx_cost" 'BEGIN {
    printf "%-28s %12.2fx %25.2fx\n", "ratio hindsight/nginx", a / b, cb / ca
    printf "(requests/s: best round of each; CPU: nginx cost / hindsight cost, >1 = cheaper)\n"
}'

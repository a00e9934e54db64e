#!/usr/bin/env bash
# GET /healthz of the service against nginx (Debian's, one worker) answering a fixed 200, with
# the same wrk settings, in one run on one machine: prints both requests/s, their ratio and the
# p99 latency (wrk --latency). DESIGN.md's target: the service at least matches nginx, p99 under
# 2 ms at 64 connections. Absolute numbers drift on shared machines; the ratio is the result.
#
#   deploy/bench-http.sh                    64 connections, 2 rounds of 10 s each
#   CONNECTIONS=128 DURATION=20s ROUNDS=5 PIN=1 THREADS=1 deploy/bench-http.sh
#
# It builds build/ in release mode if needed, runs the service without a database (/healthz
# never touches it) and nginx from a private temporary configuration on free loopback ports.
set -euo pipefail

# shellcheck source=deploy/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$hs_root"

connections=${CONNECTIONS:-64}
threads=${THREADS:-}
duration=${DURATION:-10s}
rounds=${ROUNDS:-2}

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

# A loopback port nobody answers on (bash's /dev/tcp: connecting fails when it is free).
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 30000))
        if ! (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

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

svc_port=$(free_port)
nginx_port=$(free_port)
while [ "$nginx_port" = "$svc_port" ]; do nginx_port=$(free_port); done

env -u DATABASE_URL PORT="$svc_port" LOG_LEVEL=info "${server_cpu[@]}" build/hindsight \
    2>"$tmp/service.log" &
svc_pid=$!

mkdir -p "$tmp/nginx"
cat >"$tmp/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
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

# Prints "<requests/s> <p99 in ms>" for one wrk run.
measure() {
    local out rps p99
    out=$("${client_cpu[@]}" wrk -t"$threads" -c"$connections" -d"$duration" --latency \
        "http://127.0.0.1:$1/healthz")
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {v = $2; if (v ~ /us$/) {sub(/us$/, "", v); v /= 1000}
                            else if (v ~ /ms$/) sub(/ms$/, "", v);
                            else if (v ~ /s$/) {sub(/s$/, "", v); v *= 1000}
                            print v}' <<<"$out")
    echo "$rps $p99"
}

echo "bench: wrk -t$threads -c$connections -d$duration --latency, $rounds alternating rounds," \
    "servers on: ${server_cpu[*]:-any core}, wrk on: ${client_cpu[*]:-any core}" >&2
# A short warm-up of each, then alternating rounds so that neither side gets the quieter moment
# of a shared machine; the best round of each is reported.
"${client_cpu[@]}" wrk -t"$threads" -c"$connections" -d2s "http://127.0.0.1:$svc_port/healthz" >/dev/null
"${client_cpu[@]}" wrk -t"$threads" -c"$connections" -d2s "http://127.0.0.1:$nginx_port/healthz" \
    >/dev/null
best_svc=0 best_svc_p99=0 best_nginx=0 best_nginx_p99=0
for round in $(seq 1 "$rounds"); do
    read -r rps p99 < <(measure "$svc_port")
    echo "round $round  hindsight  ${rps} req/s  p99 ${p99} ms" >&2
    if awk -v a="$rps" -v b="$best_svc" 'BEGIN {exit !(a > b)}'; then
        best_svc=$rps best_svc_p99=$p99
    fi
    read -r rps p99 < <(measure "$nginx_port")
    echo "round $round  nginx      ${rps} req/s  p99 ${p99} ms" >&2
    if awk -v a="$rps" -v b="$best_nginx" 'BEGIN {exit !(a > b)}'; then
        best_nginx=$rps best_nginx_p99=$p99
    fi
done

printf '\n%-28s %12s %10s\n' "GET /healthz, $connections conns" "requests/s" "p99 (ms)"
printf '%-28s %12.0f %10.3f\n' "hindsight (one loop)" "$best_svc" "$best_svc_p99"
printf '%-28s %12.0f %10.3f\n' "nginx (one worker)" "$best_nginx" "$best_nginx_p99"
awk -v a="$best_svc" -v b="$best_nginx" 'BEGIN {printf "%-28s %12.2fx\n", "ratio hindsight/nginx", a / b}'

#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Builds the image from the Dockerfile and checks it running, as docker or podman would run it in
# production:
#   A. plain run: PID 1 runs as uid 10001; /healthz, /readyz and GET /after/users/3 answer 200;
#      the image's HEALTHCHECK passes; `stop` (SIGTERM, SIGKILL after the default 10 s) ends in
#      exit 0 while idle, and again while a welcome task of 20 s of work runs (the defaults'
#      grace and cancellation fit inside the 10 s);
#   B. --read-only with every capability dropped and no-new-privileges (the Kubernetes
#      securityContext): ready, a transfer commits, HEALTHCHECK passes, exit 0;
#   C. a database that is not there: `stop` during the start-up wait ends in exit 0 within 2 s,
#      not in a SIGKILL (exit 137).
#
#   deploy/container-check.sh              docker if installed, else podman
#   HS_CONTAINER_ENGINE=podman deploy/container-check.sh
#   HS_CONTAINER_BUILD_ARGS="--pull=never" deploy/container-check.sh   extra `build` arguments
#   HS_CONTAINER_IMAGE=hindsight:local deploy/container-check.sh      skip the build, check this
#
# The containers use the host's network (the service listens on 127.0.0.1 and a free port) and
# DATABASE_URL, or the throwaway cluster of deploy/pg.sh when it is unset. podman builds with
# --format docker: its default OCI format drops HEALTHCHECK. Without systemd, podman runs no
# health check timer, so the check runs it by hand (`podman healthcheck run`); with docker it
# waits for the engine's own verdict.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/lib.sh
source "$root/deploy/lib.sh"
engine=${HS_CONTAINER_ENGINE:-$(command -v docker >/dev/null && echo docker || echo podman)}
image=${HS_CONTAINER_IMAGE:-}
hs_require container-check "$engine" curl
passed=0
failed=0
names=()
pg_started=0

cleanup() {
    local n
    for n in "${names[@]}"; do
        "$engine" rm -f "$n" >/dev/null 2>&1
    done
    if [ "$pg_started" = 1 ]; then
        "$root/deploy/pg.sh" stop || true
    fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# podman without systemd warns about it on every run and stop; that is noise here.
quiet() { grep -v -i 'systemd' || true; }
code_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" 2>/dev/null || true; }
wait_code() {
    local url=$1 want=$2
    for _ in $(seq 1 300); do
        [ "$(code_of "$url")" = "$want" ] && return 0
        sleep 0.2
    done
    return 1
}

if [ -z "$image" ]; then
    image=hindsight:check
    build=(build -t "$image" --network host)
    [ "$engine" = podman ] && build+=(--format docker)
    # shellcheck disable=SC2206 # words on purpose
    build+=(${HS_CONTAINER_BUILD_ARGS:-})
    echo "container-check: $engine ${build[*]} $root" >&2
    t0=$(date +%s)
    if ! nice -n 10 "$engine" "${build[@]}" "$root" >/tmp/hs-container-build.log 2>&1; then
        tail -n 30 /tmp/hs-container-build.log
        echo "FAIL: the image does not build (log: /tmp/hs-container-build.log)"
        exit 1
    fi
    echo "container-check: built $image in $(($(date +%s) - t0)) s" >&2
fi

url=${DATABASE_URL:-}
if [ -z "$url" ]; then
    "$root/deploy/pg.sh" status || pg_started=1
    url=$("$root/deploy/pg.sh" start) || exit 1
fi
port=$(hs_free_port)
base=http://127.0.0.1:$port

# run NAME [engine run options...]: starts the image detached on the host network.
run() {
    local n=$1
    shift
    "$engine" rm -f "$n" >/dev/null 2>&1
    names+=("$n")
    "$engine" run -d --name "$n" --network host -e HOST=127.0.0.1 -e PORT="$port" \
        -e DATABASE_URL="${db_url:-$url}" "$@" "$image" 2>&1 | quiet >/dev/null
}

exit_code() { "$engine" inspect -f '{{.State.ExitCode}}' "$1"; }

# stop_expect NAME LIMIT_S: `stop` with the engine's default timeout (10 s); expects exit 0 in
# under LIMIT_S seconds.
stop_expect() {
    local n=$1 limit=$2 t0 took rc
    t0=$(hs_now_ms)
    "$engine" stop "$n" 2>&1 | quiet | grep -v "^$n\$"
    took=$(($(hs_now_ms) - t0))
    rc=$(exit_code "$n")
    echo "container-check: $n: stop took $took ms, exit $rc; last log line:" \
        "$("$engine" logs "$n" 2>&1 | quiet | tail -n 1 | cut -c1-160)"
    hs_check "$n: stop -> exit 0 (got $rc)" [ "$rc" = 0 ]
    hs_check "$n: stop within $limit s (took $took ms)" [ "$took" -lt $((limit * 1000)) ]
}

healthcheck() {
    local n=$1 status
    if [ "$engine" = podman ]; then
        "$engine" healthcheck run "$n" 2>&1 | quiet
        return "${PIPESTATUS[0]}"
    fi
    # docker: the first probe runs one interval (10 s) after start.
    for _ in $(seq 1 60); do
        status=$("$engine" inspect -f '{{.State.Health.Status}}' "$n" 2>/dev/null)
        [ "$status" = healthy ] && return 0
        sleep 1
    done
    return 1
}

echo "== A. plain run"
hc=$("$engine" image inspect -f '{{json .Config.Healthcheck}}' "$image" 2>/dev/null)
hs_check "the image has a HEALTHCHECK (got $hc)" grep -q healthz <<<"$hc"
run ctr-check-a
if wait_code "$base/readyz" 200; then
    uid=$("$engine" exec ctr-check-a cat /proc/1/status 2>&1 | awk '/^Uid:/ { print $2 }')
    hs_check "PID 1 runs as uid 10001 (got $uid)" [ "$uid" = 10001 ]
    for r in /healthz /readyz /after/users/3; do
        c=$(code_of "$base$r")
        hs_check "GET $r 200 (got $c)" [ "$c" = 200 ]
    done
    hs_check "HEALTHCHECK passes" healthcheck ctr-check-a
    stop_expect ctr-check-a 10
else
    echo "FAIL: ctr-check-a: not ready; log:"
    "$engine" logs ctr-check-a 2>&1 | quiet | tail -n 5
    failed=$((failed + 1))
fi

echo "== A2. stop with a welcome task of 20 s in flight (defaults: 4 s grace, then cancel)"
run ctr-check-busy
if wait_code "$base/readyz" 200; then
    c=$(code_of -XPOST -H 'content-type: application/json' \
        -d '{"events":100,"delay_ms":200}' "$base/after/users/1/welcome")
    hs_check "POST /after/users/1/welcome 202 (got $c)" [ "$c" = 202 ]
    stop_expect ctr-check-busy 10
    hs_check "the shutdown cancelled the task (logged)" \
        bash -c "$engine logs ctr-check-busy 2>&1 | grep -q 'cancel'"
else
    echo "FAIL: ctr-check-busy: not ready"
    failed=$((failed + 1))
fi

echo "== B. --read-only, all capabilities dropped, no-new-privileges"
ro=(--read-only --cap-drop=ALL --security-opt no-new-privileges)
[ "$engine" = podman ] && ro+=(--read-only-tmpfs=false)
run ctr-check-ro "${ro[@]}"
if wait_code "$base/readyz" 200; then
    c=$(code_of -XPOST -H 'content-type: application/json' \
        -H "Idempotency-Key: ctr-check-$$-$RANDOM" -d '{"from":1,"to":2,"amount":1}' \
        "$base/after/transfers")
    hs_check "read-only: POST /after/transfers 200 (got $c)" [ "$c" = 200 ]
    hs_check "read-only: HEALTHCHECK passes" healthcheck ctr-check-ro
    stop_expect ctr-check-ro 10
else
    echo "FAIL: ctr-check-ro: not ready; log:"
    "$engine" logs ctr-check-ro 2>&1 | quiet | tail -n 5
    failed=$((failed + 1))
fi

echo "== C. stop while start-up waits for a database that is not there"
db_url="postgresql://hs@127.0.0.1:$(hs_free_port)/hs"
run ctr-check-nodb
db_url=""
# Observable: the first failed attempt is in the log (the service waits up to 30 s).
for _ in $(seq 1 100); do
    "$engine" logs ctr-check-nodb 2>&1 | grep -q '"connect"' && break
    sleep 0.1
done
stop_expect ctr-check-nodb 2

echo "container-check: $passed passed, $failed failed"
[ "$failed" = 0 ]

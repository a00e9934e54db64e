#!/usr/bin/env bash
# Shared set-up for deploy/run.sh and deploy/test.sh: makes sure every Debian package the build,
# the service, the tests and the benchmarks use is installed. On a fresh Debian 12 or 13 machine
# (as root) that means one `apt-get update` and one `apt-get install`; when everything is present
# already, it does nothing and touches no network. The names are the same on both releases
# (nginx-light is a transitional package for nginx on Debian 13; postgresql brings 15 or 17).
#
#   deploy/setup.sh              install what is missing
#   deploy/setup.sh --deps-only  only what building the binary needs (the Dockerfile's build stage)
#   source deploy/setup.sh       the same as the first, from another script (defines hs_root,
#                                hs_jobs and hs_pg_use)
set -euo pipefail

hs_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The machine's cores, for make -j; nproc is in coreutils, which every Debian has.
hs_jobs=$(nproc 2>/dev/null || echo 2)

# What each is for: the build (gcc, libc6-dev, make, cmake, pkg-config and the -dev libraries),
# the throwaway database (postgresql), the tests (libcmocka-dev, libcurl4-openssl-dev, python3,
# python3-yaml, procps, curl, docker-compose for the compose check, clang-format for the format
# check, pgbouncer for the driver behind a transaction pooler), the benchmarks (wrk, nginx-light,
# gnuplot-nox, postgresql's pgbench, slowhttptest for deploy/bench-abuse.sh). No recommends:
# nothing we did not ask for.
hs_build_packages=(
    gcc libc6-dev make cmake pkg-config
    libmicrohttpd-dev libuv1-dev libpq-dev libjansson-dev libcmocka-dev libcurl4-openssl-dev
)
# The operations checks (tests/operations/) only: the OpenAPI lint (nodejs and npm fetch
# @redocly/cli from the npm registry), the contract test (python3-jsonschema), and the
# Prometheus rules, alerts and dashboard queries against a real Prometheus (prometheus, which
# brings promtool; about 100 MB installed, npm with its node modules about as much again). The
# service and its image need none of them.
hs_operations_packages=(prometheus python3-jsonschema)
# A Node.js installed otherwise (nodesource's nodejs bundles npm, and conflicts with Debian's npm)
# is used as it is.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    hs_operations_packages+=(nodejs npm)
fi
hs_packages=(
    "${hs_build_packages[@]}"
    postgresql pgbouncer procps curl python3 python3-yaml clang-format
    wrk nginx-light docker-compose gnuplot-nox slowhttptest
    "${hs_operations_packages[@]}"
)
# Only when run as a command: a script sourcing this one has arguments of its own.
if [ "${BASH_SOURCE[0]}" = "$0" ] && [ "${1:-}" = --deps-only ]; then
    hs_packages=("${hs_build_packages[@]}")
fi

hs_missing_packages() {
    local p
    for p in "${hs_packages[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            echo "$p"
        fi
    done
}

hs_setup() {
    local missing
    missing=$(hs_missing_packages | tr '\n' ' ')
    if [ -z "${missing// /}" ]; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "setup: missing Debian packages: $missing" >&2
        echo "setup: run this as root (or: sudo apt-get install --no-install-recommends $missing)" >&2
        return 1
    fi
    echo "setup: installing $missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086 # one word per package
    apt-get install -y -q --no-install-recommends $missing
}

hs_setup


# As root, the throwaway cluster belongs to the postgres user (initdb refuses root), which cannot
# enter a checkout under a private home such as /root: keep the cluster in postgres's own home
# then, unless the caller chose a place.
if [ "$(id -u)" = 0 ] && [ -z "${HS_PG_DATA:-}" ] && id postgres >/dev/null 2>&1 &&
    ! runuser -u postgres -- test -x "$hs_root"; then
    export HS_PG_DATA=/var/lib/postgresql/hindsight-${HS_PG_PORT:-54329}
fi

# hs_pg_use NAME: unless the variable NAME is set already, starts the throwaway cluster
# (deploy/pg.sh) and exports its URL as NAME. A cluster that was not running before is stopped
# again when the calling script exits (this sets its EXIT trap).
hs_pg_use() {
    local name=$1
    local url
    if [ -n "${!name:-}" ]; then
        return 0
    fi
    if ! "$hs_root/deploy/pg.sh" status; then
        trap hs_pg_stop EXIT
    fi
    url=$("$hs_root/deploy/pg.sh" start)
    printf -v "$name" '%s' "$url"
    export "${name?}"
}

hs_pg_stop() {
    "$hs_root/deploy/pg.sh" stop || true
    echo "$(basename "$0" .sh): PostgreSQL stopped" >&2
}

#!/usr/bin/env bash
# Runs the service locally in the foreground: installs what is missing (deploy/setup.sh), builds
# build/, starts the throwaway PostgreSQL cluster (deploy/pg.sh) unless DATABASE_URL is set, and
# serves on PORT (8080). Ctrl-C (or SIGTERM to this script) runs the service's shutdown sequence;
# then the cluster this script started is stopped. Extra arguments go to the service as flags:
#
#   deploy/run.sh                          http://127.0.0.1:8080/healthz
#   deploy/run.sh --drain-delay-ms=2000    any flag from `build/hindsight --help`
set -euo pipefail

# shellcheck source=deploy/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$hs_root"

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$hs_jobs" --target hindsight >/dev/null

if [ -z "${DATABASE_URL:-}" ]; then
    hs_pg_use DATABASE_URL
    echo "run: using the throwaway cluster at $DATABASE_URL" >&2
fi
export PORT=${PORT:-8080}
echo "run: serving on http://127.0.0.1:$PORT (Ctrl-C to stop)" >&2

# The service runs as a child so that this script can stop the cluster after it. Ctrl-C reaches
# the service directly (same process group), so the script ignores SIGINT itself rather than
# forwarding it: a second signal would skip the service's graceful drain. SIGTERM sent to the
# script alone (a supervisor) is forwarded once.
build/hindsight "$@" &
pid=$!
trap '' INT
trap 'kill -TERM "$pid" 2>/dev/null || true' TERM
status=0
while kill -0 "$pid" 2>/dev/null; do
    if wait "$pid"; then
        status=0
    else
        status=$?
    fi
done
exit "$status"

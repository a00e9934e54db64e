#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for running and testing the service locally, with the newest
# server major installed (15 on Debian 12, 17 on Debian 13; deploy/lib.sh's hs_pg_bindir).
#
#   deploy/pg.sh start     initdb (first time) and start; prints the DATABASE_URL
#   deploy/pg.sh stop      fast shutdown
#   deploy/pg.sh restart   stop and start again (used by the fault tests)
#   deploy/pg.sh url       print the DATABASE_URL
#   deploy/pg.sh status    exit 0 when it is running
#
# The cluster lives under .pgdata/ in the checkout (ignored by git), listens on 127.0.0.1 only,
# on HS_PG_PORT (default 54329, never 5432), and is started with pg_ctl, not a system service.
# initdb refuses to run as root, so as root the cluster belongs to the `postgres` user.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
port=${HS_PG_PORT:-54329}
data=${HS_PG_DATA:-$root/.pgdata}
# shellcheck source=deploy/lib.sh
source "$root/deploy/lib.sh"
bin=$(hs_pg_bindir) || bin=""
# A cluster made earlier keeps the major it was made with, while that major is installed.
if [ -f "$data/PG_VERSION" ] && [ -x "/usr/lib/postgresql/$(cat "$data/PG_VERSION")/bin/pg_ctl" ]; then
    bin=/usr/lib/postgresql/$(cat "$data/PG_VERSION")/bin
fi
db=hindsight

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

url() {
    local user
    user=$( [ "$(id -u)" = 0 ] && echo postgres || id -un )
    echo "postgresql://$user@127.0.0.1:$port/$db"
}

is_running() {
    [ -f "$data/PG_VERSION" ] && as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1
}

start() {
    if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
        echo "pg.sh: no PostgreSQL server is installed (no /usr/lib/postgresql/*/bin/initdb);" \
            "run deploy/setup.sh" >&2
        exit 1
    fi
    mkdir -p "$data"
    if [ "$(id -u)" = 0 ]; then
        chown postgres:postgres "$data"
        chmod 700 "$data"
        if ! runuser -u postgres -- test -w "$data"; then
            echo "pg.sh: the postgres user cannot reach $data; set HS_PG_DATA to a folder it can" >&2
            exit 1
        fi
    fi
    if [ ! -f "$data/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$data" --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
            >"$data.initdb.log" 2>&1 || { cat "$data.initdb.log" >&2; exit 1; }
        cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$data'
max_connections = 200
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
    fi
    if ! is_running; then
        as_owner "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start >/dev/null
    fi
    # The database itself, created once.
    if ! as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$db'" 2>/dev/null | grep -q 1; then
        as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -d postgres -qc "CREATE DATABASE $db" >/dev/null
    fi
    url
}

stop() {
    if is_running; then
        as_owner "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
restart) stop; start >/dev/null ;;
url) url ;;
status) is_running ;;
*) echo "usage: $0 start|stop|restart|url|status" >&2; exit 2 ;;
esac

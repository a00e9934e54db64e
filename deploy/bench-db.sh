#!/usr/bin/env bash
# The PostgreSQL driver alone (no HTTP) against pgbench, at equal numbers of connections.
#
#   deploy/bench-db.sh [seconds] [rounds]   seconds per run (default 5), rounds (default 3)
#
# Builds a Release tree (HS_BENCH_BUILD, default build-bench/), makes sure the throwaway cluster
# runs (deploy/pg.sh, or DATABASE_URL), and prepares two databases beside the service's:
# hindsight_bench (deploy/sql/*.sql: schema and seeded users) and hindsight_pgbench
# (pgbench -i -s 1). Then, for 1, 8 and 32 concurrent tasks, it runs bench_db (single-row
# primary-key reads of users, prepared) and right after it `pgbench -S -M prepared` with the same
# number of connections, alternating the two a few times, and prints the median rates and their
# ratio:
#   - without pipelining: one connection per task (pool = tasks, depth 1);
#   - four tasks per connection (pool = tasks / 4), without pipelining (depth 1: the extra tasks
#     wait in the pool's queue) and with it (depth 8), compared with pgbench at that smaller
#     number of connections.
# pgbench runs with PGBENCH_JOBS threads (default 1: the driver runs on one loop thread too).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
secs=${1:-5}
rounds=${2:-3}
build=${HS_BENCH_BUILD:-$root/build-bench}
jobs=${PGBENCH_JOBS:-1}
# shellcheck source=deploy/lib.sh
source "$root/deploy/lib.sh"
pgbin=$(hs_pg_bindir) || { echo "bench-db: no PostgreSQL server installed; run deploy/setup.sh" >&2; exit 1; }

base=${DATABASE_URL:-$("$root/deploy/pg.sh" start)}
server=${base%/*}
bench_url=$server/hindsight_bench
pgbench_url=$server/hindsight_pgbench

psql() { PGOPTIONS="-c client_min_messages=warning" "$pgbin/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" --target bench_db -j2 >/dev/null
bench_db=$build/tests/bin/bench_db

for db in hindsight_bench hindsight_pgbench; do
    if ! psql "$server/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" |
        grep -q 1; then
        psql "$server/postgres" -c "CREATE DATABASE $db"
    fi
done
for f in "$root"/deploy/sql/*.sql; do
    psql "$bench_url" -f "$f" >/dev/null
done
if ! psql "$pgbench_url" -tAc "SELECT to_regclass('pgbench_accounts') IS NOT NULL" | grep -q t; then
    "$pgbin/pgbench" -i -s 1 -q "$pgbench_url" >/dev/null 2>&1
fi

# value of key=value in a bench_db line
kv() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }

pgbench_tps() {
    "$pgbin/pgbench" -n -S -M prepared -c "$1" -j "$(($1 < jobs ? $1 : jobs))" -T "$secs" \
        "$pgbench_url" 2>/dev/null | awk '/^tps/ { print int($3); exit }'
}

median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# One configuration: bench_db and pgbench alternate `rounds` times (the machine is shared, so
# each side's median is taken over runs interleaved with the other's).
row() { # tasks conns depth
    local line qs="" ts="" p50s="" p99s="" pipes="" qps tps
    for _ in $(seq "$rounds"); do
        line=$("$bench_db" --url "$bench_url" --tasks "$1" --pool "$2" --depth "$3" \
            --seconds "$secs")
        qs+=" $(kv qps "$line")"
        p50s+=" $(kv p50_us "$line")"
        p99s+=" $(kv p99_us "$line")"
        pipes+=" $(kv pipelined "$line")"
        ts+=" $(pgbench_tps "$2")"
    done
    qps=$(median <<<"$qs")
    tps=$(median <<<"$ts")
    printf '%5s %5s %5s %12s %12s %6s %8s %8s %9s   runs: [%s ] [%s ]\n' "$1" "$2" "$3" \
        "$qps" "$tps" "$(awk -v a="$qps" -v b="$tps" 'BEGIN { printf "%.2f", a / b }')" \
        "$(median <<<"$p50s")" "$(median <<<"$p99s")" "$(median <<<"$pipes")" "$qs" "$ts"
}

echo "bench-db: medians of $rounds alternating runs of $secs s, pgbench -j $jobs, $(nproc) CPUs," \
    "$(date -u +%FT%TZ)"
printf '%5s %5s %5s %12s %12s %6s %8s %8s %9s\n' tasks conns depth driver_q/s pgbench_tps \
    ratio p50_us p99_us pipelined
for t in 1 8 32; do
    row "$t" "$t" 1
done
# Pipelining, at equal tasks and connections: without it the extra tasks wait in the queue.
for t in 8 32; do
    row "$t" "$((t / 4))" 1
    row "$t" "$((t / 4))" 8
done

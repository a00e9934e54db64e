#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The before/after demonstration: every pattern pair of API.md run side by side on private
# instances of the built service, ending in one Markdown table that can be pasted into
# docs/patterns.md.
#
#   deploy/demo.sh [--quick] [--bin PATH] [--out DIR]
#
# --out keeps compare.sh's numbers and chart and the table (table.md) in DIR, by default
# out/demo-<UTC time> in the checkout (ignored by git).
# --bin (or HINDSIGHT_BIN) names the binary, build/hindsight by default; DATABASE_URL (a
# postgresql:// URL) names the server, deploy/pg.sh url by default. A run takes about two minutes,
# --quick about 45 s (3 s instead of 10 s per compare.sh run; everything else is the same).
#
# Speed and loop health come from deploy/wrk/compare.sh (its results.tsv is read back, nothing of
# it is redone here). What makes welcome and transfers differ is not speed but what a shutdown or
# a deadline does to their work, and a shutdown cannot be inflicted on somebody else's running
# service: so the script starts its OWN instances of the binary on free loopback ports, against
# throwaway databases it creates on DATABASE_URL's server (or deploy/pg.sh url's) and drops again,
# and sends SIGTERM to them itself:
#   1. compare.sh against one instance (-d 10s, or 3s with --quick; 8 connections, delay_ms=20);
#   2. single requests with a known delay on the same instance: a dashboard (delay_ms=100) and a
#      batch of 50 ids (delay_ms=50, concurrency 10), timed by curl;
#   3. welcome, per variant: 20 tasks of 20 events at 40 ms, SIGTERM 200 ms after the last answer
#      (SHUTDOWN_GRACE_MS=300, far less than the 800 ms the tasks need); the audit_events rows of
#      those task ids are counted against what was asked, and the cancellations the service
#      logged are subtracted: lost = asked - written - reported cancelled;
#   4. transfers, per variant and on a fresh database each (REQUEST_TIMEOUT_MS=300): 100
#      concurrent transfers whose debit-credit gap (delay_ms=500) outlasts the deadline, then
#      GET /accounts/invariant (shown) and the same sums in SQL (checked); then 100 more
#      (delay_ms=100) with SIGTERM once 4 of them sit between debit and credit
#      (pg_stat_activity) and SHUTDOWN_GRACE_MS=50, so that shutdown, not the deadline, cuts
#      them; the invariant and partial transfers are then read with SQL once the process has
#      exited.
# It exits non-zero when something that should work does not: an `after` variant loses an event
# or breaks the invariant, a `before` variant fails to show its documented failure, a request of
# the runs fails, or an instance does not exit 0. Everything it started (processes, databases,
# the work folder) is removed on any exit; the instances' logs are kept when a check failed.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/lib.sh
source "$root/deploy/lib.sh"
bin=${HINDSIGHT_BIN:-$root/build/hindsight}
quick=0
out=

usage() {
    sed -n "7,13p" "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case $1 in
    --quick) quick=1 ;;
    --bin) [ $# -ge 2 ] || usage; bin=$2; shift ;;
    --bin=*) bin=${1#--bin=} ;;
    --out) [ $# -ge 2 ] || usage; out=$2; shift ;;
    --out=*) out=${1#--out=} ;;
    *) usage ;;
    esac
    shift
done

compare_duration=10s
[ $quick = 1 ] && compare_duration=3s
compare_delay=20
dash_delay=100
batch_ids=50 batch_delay=50 batch_conc=10
welcome_tasks=20 welcome_events=20 welcome_delay=40 welcome_grace=300 welcome_term_after=0.2
xfer_count=100 xfer_timeout=300 xfer_delay=500 xfer_amount=10
term_delay=100 term_at=4 term_grace=50

die() {
    echo "demo: $*" >&2
    exit 1
}

[ -x "$bin" ] || die "$bin is not an executable (build it, or pass --bin / HINDSIGHT_BIN)"
hs_require demo curl psql wrk
hs_db_server "${DATABASE_URL:-$("$root/deploy/pg.sh" url)}" ||
    die "DATABASE_URL must be a postgresql:// URL"
db_url() { hs_db_url "$1"; }

# wait_sleeping <database> <op> <n>: waits, up to 60 s, until the number of sessions on the
# database that sit in pg_sleep (a transfer between its debit and its credit) compares to n with
# op (= or >=). The loop runs in the server, 10 ms a turn, so the wait reacts faster than the
# 100 ms a transfer sleeps; pg_stat_clear_snapshot makes each turn read the current sessions.
wait_sleeping() {
    sql "$1" "DO \$\$ BEGIN FOR i IN 1..6000 LOOP
                PERFORM pg_stat_clear_snapshot();
                EXIT WHEN (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                           AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()) $2 $3;
                PERFORM pg_sleep(0.01);
              END LOOP; END \$\$"
}

sql() { # sql <database> <statement>: one unaligned result, errors on stderr
    psql -X -q -t -A -v ON_ERROR_STOP=1 -d "$(db_url "$1")" -c "$2"
}

out=${out:-$root/out/demo-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out" || die "cannot create $out"
work=$(mktemp -d /tmp/hs-demo.XXXXXX)
db_prefix=hs_demo_$$_$RANDOM
dbs=()
declare -A pid=() port=() exit_status=()
bg_pids=()
passed=0
failed=0

cleanup() {
    local rc=$? p d
    trap - EXIT INT TERM
    for p in "${bg_pids[@]}" "${pid[@]}"; do
        if kill -0 "$p" 2>/dev/null; then
            kill -TERM "$p" 2>/dev/null
            sleep 1
            kill -KILL "$p" 2>/dev/null
        fi
        wait "$p" 2>/dev/null
    done
    for d in "${dbs[@]}"; do
        sql postgres "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null ||
            echo "demo: could not drop database $d" >&2
    done
    if [ $rc -eq 0 ] && [ $failed -eq 0 ]; then
        rm -rf "$work"
    else
        echo "demo: logs kept in $work" >&2
        [ $rc -ne 0 ] || rc=1
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 1' INT TERM

check() { # check <description> <command...>: one expectation, counted and shown
    local what=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
        echo "  ok    $what"
    else
        failed=$((failed + 1))
        echo "  FAIL  $what"
    fi
}

new_db() { # new_db <name>: create a throwaway database, dropped again by cleanup
    sql postgres "CREATE DATABASE $1" >/dev/null || die "cannot create database $1"
    dbs+=("$1")
}

# start_instance <name> <database> [VAR=value...]: the binary on a free port, with the service's
# defaults except the given settings; returns once /readyz answers 200 (it migrates and seeds a
# fresh database first).
start_instance() {
    local name=$1 db=$2 i
    shift 2
    port[$name]=$(hs_free_port)
    # One loop (WORKERS=1): a blocking `before` request then stalls the whole service, which is
    # what the demo shows; with several loops it stalls only its own worker
    # (docs/architecture.md, Workers).
    env -i PATH="$PATH" PORT="${port[$name]}" DATABASE_URL="$(db_url "$db")" LOG_LEVEL=warn \
        WORKERS=1 "$@" "$bin" >"$work/$name.log" 2>&1 &
    pid[$name]=$!
    for i in $(seq 300); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 \
            "http://127.0.0.1:${port[$name]}/readyz")" = 200 ] && return 0
        kill -0 "${pid[$name]}" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$work/$name.log" >&2
    die "instance $name did not become ready"
}

# stop_instance <name>: SIGTERM, then wait (at most 15 s: grace, drain and the service's own 5 s
# for cancelled work all fit) and record the exit status; 124 means it had to be killed.
stop_instance() {
    local name=$1 p=${pid[$1]} i rc=0
    kill -TERM "$p" 2>/dev/null
    for i in $(seq 150); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$p" 2>/dev/null; then
        kill -KILL "$p"
        wait "$p" 2>/dev/null
        rc=124
    else
        wait "$p" || rc=$?
    fi
    exit_status[$name]=$rc
    unset "pid[$name]"
}

# add_request <file> <url> <json>: one request block of a curl config; the body goes to
# <file>.N.json and the status to the burst's output, one line per request.
add_request() {
    local n=0
    [ -f "$1" ] && n=$(grep -c '^url' "$1") && echo next >>"$1"
    {
        printf 'url = "%s"\nrequest = "POST"\nheader = "Content-Type: application/json"\n' "$2"
        printf 'data = "%s"\noutput = "%s.%d.json"\nmax-time = 30\n' "${3//\"/\\\"}" "$1" "$n"
        printf 'write-out = "%%{http_code}\\n"\n'
    } >>"$1"
}

# burst <file>: all requests of the config at once; their statuses go to <file>.codes.
burst() {
    curl -s --parallel --parallel-immediate --parallel-max 200 -K "$1" >"$1.codes" 2>"$1.err"
}

codes() { # codes <file>: "100x504" or "20x200, 80x504", statuses in order
    sort "$1.codes" | uniq -c | awk '{ printf "%s%sx%s", sep, $1, $2; sep = ", " }'
}

count_code() { # count_code <file> <status>
    grep -c "^$2\$" "$1.codes"
}

ms() { # ms <seconds>: whole milliseconds
    awk -v s="$1" 'BEGIN { printf "%d", s * 1000 + 0.5 }'
}

json_field() { # json_field <name> <file>: a number or boolean field of a flat JSON body
    sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" "$2"
}

# --- 1. throughput, latency and loop health -------------------------------------------------

main_db=${db_prefix}_main
new_db "$main_db"
echo "# hindsight: before vs after"
echo
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), binary $bin, PostgreSQL ${hs_db_prefix##*@}," \
    "throwaway databases ${db_prefix}_*, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "## 1. Throughput and loop health: deploy/wrk/compare.sh -d $compare_duration -c 8" \
    "-D $compare_delay"
echo
start_instance main "$main_db"
main_url=http://127.0.0.1:${port[main]}
# In the background, so that a signal to this script is handled at once; `timeout` runs it in a
# process group of its own and passes a SIGTERM on to the whole group, its wrk processes too.
timeout 600 "$root/deploy/wrk/compare.sh" -d "$compare_duration" -c 8 -D "$compare_delay" \
    -o "$out/compare" "$main_url" > >(sed 's/^/    /') 2>&1 &
bg_pids=($!)
wait "${bg_pids[0]}" || die "deploy/wrk/compare.sh failed"
bg_pids=()
declare -A cmp=()
while IFS=$'\t' read -r fam variant rps p50 p99 non2xx errors hz; do
    [ "$fam" = family ] && continue
    cmp[$fam.$variant]="$rps $p50 $p99 $non2xx $errors $hz"
done <"$out/compare/results.tsv"

# --- 2. single requests with a known delay ---------------------------------------------------

# The last compare run may leave requests behind; a single request must not queue behind them.
for _ in $(seq 100); do
    curl -s --max-time 5 "$main_url/metrics" | awk '
        $1 == "hs_http_requests_in_flight" && $2 > 1 { busy = 1 }
        $1 == "hs_tasks_live" && $2 > 0 { busy = 1 }
        END { exit !busy }' || break
    sleep 0.2
done

echo
echo "## 2. Single requests with a known delay"
echo
declare -A single=() single_status=()
for variant in before after; do
    read -r code t < <(curl -s -o "$work/dash-$variant.json" -w '%{http_code} %{time_total}' \
        --max-time 30 "$main_url/$variant/users/7/dashboard?delay_ms=$dash_delay")
    single[dashboard.$variant]=$(ms "$t")
    single_status[dashboard.$variant]=$code
    echo "    dashboard $variant (3 queries of $dash_delay ms):" \
        "$code in ${single[dashboard.$variant]} ms"
done
ids=$(seq -s, 1 "$batch_ids")
for variant in before after; do
    read -r code t < <(curl -s -o "$work/batch-$variant.json" -w '%{http_code} %{time_total}' \
        --max-time 60 -H 'Content-Type: application/json' "$main_url/$variant/batch" \
        -d "{\"ids\":[$ids],\"delay_ms\":$batch_delay,\"concurrency\":$batch_conc}")
    single[batch.$variant]=$(ms "$t")
    single_status[batch.$variant]=$code
    echo "    batch $variant ($batch_ids ids x $batch_delay ms, concurrency $batch_conc):" \
        "$code in ${single[batch.$variant]} ms," \
        "completed $(json_field completed "$work/batch-$variant.json")"
done
stop_instance main

# --- 3. welcome: background work at SIGTERM --------------------------------------------------

echo
echo "## 3. Welcome: $welcome_tasks tasks x $welcome_events events every $welcome_delay ms," \
    "SIGTERM ${welcome_term_after}s after the last 202 (SHUTDOWN_GRACE_MS=$welcome_grace)"
echo
declare -A asked=() written=() reported=() lost=() accounted=()
for variant in before after; do
    name=welcome-$variant
    start_instance "$name" "$main_db" SHUTDOWN_GRACE_MS=$welcome_grace
    cfg=$work/$name.cfg
    for i in $(seq "$welcome_tasks"); do
        add_request "$cfg" "http://127.0.0.1:${port[$name]}/$variant/users/$i/welcome" \
            "{\"events\":$welcome_events,\"delay_ms\":$welcome_delay}"
    done
    burst "$cfg"
    sleep "$welcome_term_after"
    stop_instance "$name"
    # awk, not cat: the bodies end without a newline.
    awk 1 "$cfg".*.json | sed -n 's/.*"task_id":"\([^"]*\)".*/\1/p' >"$work/$name.tasks"
    task_list=$(sed "s/.*/'&'/" "$work/$name.tasks" | paste -sd,)
    # Rows per task, and the cancellations the service reported per task (its log lines).
    sql "$main_db" "SELECT task_id, count(*) FROM audit_events WHERE task_id IN (${task_list:-''})
                    GROUP BY task_id" | tr '|' ' ' >"$work/$name.rows"
    grep '"event":"task_cancelled"' "$work/$name.log" |
        sed -n 's/.*"task_id":"\([^"]*\)".*"events_cancelled":\([0-9]*\).*/\1 \2/p' \
            >"$work/$name.cancelled"
    asked[$variant]=$((welcome_tasks * welcome_events))
    written[$variant]=$(awk '{ s += $2 } END { print s + 0 }' "$work/$name.rows")
    reported[$variant]=$(awk '{ s += $2 } END { print s + 0 }' "$work/$name.cancelled")
    lost[$variant]=$((asked[$variant] - written[$variant] - reported[$variant]))
    # Tasks whose rows and reported cancellations add up to exactly what was asked.
    accounted[$variant]=$(awk -v n="$welcome_events" '
        FILENAME ~ /tasks$/ { t[$1] = 1; next }
        { got[$1] += $2 }
        END { for (k in t) if (got[k] == n) ok++; print ok + 0 }' \
        "$work/$name.tasks" "$work/$name.rows" "$work/$name.cancelled")
    echo "    $variant: $(codes "$cfg"); asked ${asked[$variant]}, written ${written[$variant]}," \
        "reported cancelled ${reported[$variant]}, lost ${lost[$variant]};" \
        "tasks fully accounted for ${accounted[$variant]} of $welcome_tasks;" \
        "exit status ${exit_status[$name]}"
done

# --- 4. transfers: a deadline, then SIGTERM, in the gap between debit and credit -------------

echo
echo "## 4. Transfers: $xfer_count at once with delay_ms=$xfer_delay >" \
    "REQUEST_TIMEOUT_MS=$xfer_timeout," \
    "then $xfer_count with delay_ms=$term_delay and SIGTERM once $term_at sit between debit" \
    "and credit" \
    "(SHUTDOWN_GRACE_MS=$term_grace)"
echo
# ledger_state <database>: accounts, total balance, transfers without a balanced pair of ledger
# rows, and transfers rows, on one line.
ledger_state() {
    sql "$1" "
        SELECT (SELECT count(*) FROM accounts), (SELECT sum(balance) FROM accounts),
               (SELECT count(*) FROM transfers t LEFT JOIN
                   (SELECT transfer_id, count(*) AS n, sum(delta) AS s FROM ledger
                    GROUP BY transfer_id) l ON l.transfer_id = t.id
                WHERE l.n IS DISTINCT FROM 2 OR l.s IS DISTINCT FROM 0),
               (SELECT count(*) FROM transfers)" | tr '|' ' '
}
declare -A deadline_broken=() inv_short=() inv_partial=() committed=() rows_after=() verdict=()
for variant in before after; do
    name=transfers-$variant
    db=${db_prefix}_t$variant
    new_db "$db"
    start_instance "$name" "$db" REQUEST_TIMEOUT_MS=$xfer_timeout SHUTDOWN_GRACE_MS=$term_grace
    url=http://127.0.0.1:${port[$name]}
    # Disjoint account pairs (2i-1 -> 2i): no transfer waits for another's row lock.
    for i in $(seq "$xfer_count"); do
        a=$((2 * i - 1)) b=$((2 * (xfer_count + i) - 1))
        add_request "$work/$name-deadline.cfg" "$url/$variant/transfers" \
            "{\"from\":$a,\"to\":$((a + 1)),\"amount\":$xfer_amount,\"delay_ms\":$xfer_delay}"
        add_request "$work/$name-term.cfg" "$url/$variant/transfers" \
            "{\"from\":$b,\"to\":$((b + 1)),\"amount\":$xfer_amount,\"delay_ms\":$term_delay}"
    done
    burst "$work/$name-deadline.cfg"
    # The deadline burst's statements are over before the invariant is read and before the second
    # burst starts.
    wait_sleeping "$db" = 0
    curl -s --max-time 10 -o "$work/$name-invariant.json" "$url/accounts/invariant"
    # The verdict comes from SQL: on a busy machine the route itself may pass its own 300 ms
    # deadline over 10,000 accounts and answer 504, which says nothing about the money.
    read -r accounts total partial n_rows < <(ledger_state "$db")
    deadline_broken[$variant]=$((accounts * 1000 != total || partial > 0))
    echo "    $variant, deadline burst: $(codes "$work/$name-deadline.cfg");" \
        "GET /accounts/invariant: $(cat "$work/$name-invariant.json");" \
        "SQL: total $total of $((accounts * 1000)), $partial partial transfers"
    # SIGTERM goes once the second burst's transfers are between debit and credit: tied to what
    # the service is doing, not to the clock, which a busy machine stretches.
    # The watcher starts (and is seen running) before the burst: with REQUEST_TIMEOUT_MS=300 the
    # whole burst may last less than a psql takes to start on a busy machine.
    PGAPPNAME=hs-demo-term-watch wait_sleeping "$db" ">=" "$term_at" &
    watcher=$!
    bg_pids=("$watcher")
    until [ "$(sql "$db" "SELECT count(*) FROM pg_stat_activity
                          WHERE application_name = 'hs-demo-term-watch'")" -gt 0 ]; do
        sleep 0.05
    done
    burst "$work/$name-term.cfg" &
    bg_pids+=($!)
    wait "$watcher"
    stop_instance "$name"
    wait "${bg_pids[1]}"
    bg_pids=()
    read -r accounts total partial n_rows < <(ledger_state "$db")
    inv_short[$variant]=$((accounts * 1000 - total))
    inv_partial[$variant]=$partial
    committed[$variant]=$(($(count_code "$work/$name-deadline.cfg" 200) +
        $(count_code "$work/$name-term.cfg" 200)))
    rows_after[$variant]=$n_rows
    if [ "${inv_short[$variant]}" = 0 ] && [ "$partial" = 0 ]; then
        verdict[$variant]="held: 0 missing, 0 partial; ${committed[$variant]} committed"
    else
        verdict[$variant]="broken: ${inv_short[$variant]} missing, $partial partial"
    fi
    echo "    $variant, SIGTERM burst: $(codes "$work/$name-term.cfg"); exit status" \
        "${exit_status[$name]}; then SQL: total $total of $((accounts * 1000))," \
        "$partial partial transfers, $n_rows transfers rows, ${committed[$variant]} answered 200"
done

# --- the table -------------------------------------------------------------------------------

cell() { # cell <family> <variant> <field number>: a number from compare.sh's results, 0.1 ms
    local v
    read -r -a v <<<"${cmp[$1.$2]:-}"
    if [ -n "${v[$3]:-}" ]; then
        printf '%.1f' "${v[$3]}"
    else
        echo -
    fi
}

# table: the Markdown table and the note on its settings.
table() {
    local fam variant label one lossc invc
    echo "| pattern | variant | req/s | p50 ms | p99 ms | /healthz p99 ms | single request ms |" \
        "events lost (welcome) | invariant (transfers) |"
    echo "|---|---|---:|---:|---:|---:|---:|---|---|"
    for fam in users dashboard batch welcome transfers; do
        for variant in before after; do
            case $fam in
            users) label="0 blocking: GET /users/{id}" ;;
            dashboard) label="2 join: GET /users/{id}/dashboard" ;;
            batch) label="2 bounded stream: POST /batch" ;;
            welcome) label="3 structured: POST /users/{id}/welcome" ;;
            transfers) label="4 cancellation-safe: POST /transfers" ;;
            esac
            one=- lossc=- invc=-
            [ -n "${single[$fam.$variant]:-}" ] && one=${single[$fam.$variant]}
            if [ "$fam" = welcome ]; then
                lossc="${lost[$variant]} of ${asked[$variant]}"
                if [ "$variant" = before ]; then
                    lossc+=" (silently; ${written[$variant]} written)"
                else
                    lossc+=" (${written[$variant]} written,"
                    lossc+=" ${reported[$variant]} reported cancelled)"
                fi
            fi
            [ "$fam" = transfers ] && invc=${verdict[$variant]}
            echo "| $label | $variant | $(cell "$fam" "$variant" 0) |" \
                "$(cell "$fam" "$variant" 1) | $(cell "$fam" "$variant" 2) |" \
                "$(cell "$fam" "$variant" 5) | $one | $lossc | $invc |"
        done
    done
    echo
    echo "req/s, p50, p99 and /healthz p99: compare.sh, $compare_duration per run, 8 connections," \
        "delay_ms=$compare_delay. Single request: dashboard delay_ms=$dash_delay; batch" \
        "$batch_ids ids, delay_ms=$batch_delay, concurrency $batch_conc. Welcome:" \
        "$welcome_tasks tasks x $welcome_events events at $welcome_delay ms, SIGTERM" \
        "${welcome_term_after}s later. Transfers: $xfer_count with delay_ms=$xfer_delay >" \
        "REQUEST_TIMEOUT_MS=$xfer_timeout, then $xfer_count with SIGTERM once $term_at are" \
        "between debit and credit;" \
        "missing = 1000 x accounts - total balance."
}

echo
echo "## Before vs after"
echo
table | tee "$out/table.md"
echo
echo "compare.sh's numbers and chart, and this table: $out"

# --- what must hold --------------------------------------------------------------------------

echo
echo "## Checks"
echo
all_clean() {
    local k v
    [ "${#cmp[@]}" = 10 ] || return 1
    for k in "${!cmp[@]}"; do
        read -r -a v <<<"${cmp[$k]}"
        [ "${v[3]}" = 0 ] && [ "${v[4]}" = 0 ] || return 1
    done
}
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 >= b + 0) }'; }
welcome_before_silent() { [ "${lost[before]}" -gt 0 ] && [ "${reported[before]}" = 0 ]; }
transfers_before_broken() { [ "${inv_short[before]}" -gt 0 ] && [ "${deadline_broken[before]}" = 1 ]; }
transfers_after_intact() { [ "${inv_short[after]}" = 0 ] && [ "${inv_partial[after]}" = 0 ]; }
batches_complete() {
    [ "$(json_field completed "$work/batch-before.json")" = "$batch_ids" ] &&
        [ "$(json_field completed "$work/batch-after.json")" = "$batch_ids" ]
}
check "compare.sh ran all 10 routes without a non-2xx answer or socket error" all_clean
check "users before: /healthz p99 ($(cell users before 5) ms) >= one delay ($compare_delay ms)" \
    ge "$(cell users before 5)" "$compare_delay"
check "every single request answered 200" [ "${single_status[*]}" = "200 200 200 200" ]
check "dashboard before (${single[dashboard.before]} ms) >= 2.5 x $dash_delay ms: sequential" \
    ge "${single[dashboard.before]}" $((dash_delay * 5 / 2))
# Joined, the three queries cost one delay instead of three: the saving is two delays, and a
# busy machine adds the same overhead to both, so the check asks for one delay saved, not a ratio.
check "dashboard after (${single[dashboard.after]} ms) <= before - $dash_delay ms: joined" \
    ge "${single[dashboard.before]}" $(("${single[dashboard.after]}" + dash_delay))
check "batch before (${single[batch.before]} ms) >= 0.9 x $batch_ids x $batch_delay ms" \
    ge "${single[batch.before]}" $((batch_ids * batch_delay * 9 / 10))
check "batch after (${single[batch.after]} ms) <= a third of before: bounded concurrency" \
    ge "${single[batch.before]}" $(("${single[batch.after]}" * 3))
check "both batches completed all $batch_ids ids" batches_complete
check "every instance exited 0 after SIGTERM" \
    [ "$(printf '%s\n' "${exit_status[@]}" | sort -u)" = 0 ]
check "welcome: every request answered 202" [ "$(cat "$work"/welcome-*.cfg.codes | sort -u)" = 202 ]
check "welcome before lost events (${lost[before]}) without reporting them" welcome_before_silent
check "welcome after lost nothing: written + reported cancelled = asked" [ "${lost[after]}" = 0 ]
check "welcome after: each of the $welcome_tasks tasks accounted for exactly" \
    [ "${accounted[after]}" = "$welcome_tasks" ]
check "transfers before broke the invariant (${verdict[before]})" transfers_before_broken
check "transfers after kept the invariant through the deadline (SQL: 0 missing, 0 partial)" \
    [ "${deadline_broken[after]}" = 0 ]
check "transfers after kept it through SIGTERM (SQL: 0 missing, 0 partial)" transfers_after_intact
check "transfers after: rows written (${rows_after[after]}) = answers 200 (${committed[after]})" \
    [ "${rows_after[after]}" = "${committed[after]}" ]

echo
if [ $failed -gt 0 ]; then
    echo "demo: $failed of $((passed + failed)) checks failed"
    exit 1
fi
echo "demo: all $passed checks passed"

#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Before/after comparison against a running service: for each pattern of API.md, run the
# `before` route and then the `after` route with the same wrk settings, one after the other in
# the same run (absolute numbers drift on shared machines; the ratio between neighbours does not),
# while a second, small wrk measures GET /healthz the whole time, which is how a blocked event
# loop shows. Prints a table, and writes the numbers (results.tsv) and a chart (compare.png,
# gnuplot) into the output folder.
#
#   deploy/wrk/compare.sh [-d 10s] [-c 8] [-t 2] [-D 20] [-f users,dashboard] [-o DIR] URL
#
#   -d  duration of each run (wrk syntax)          -c  connections of the route's wrk
#   -t  threads of the route's wrk                 -D  delay_ms sent to every route (0..5000)
#   -f  families to run, comma-separated (default: users,dashboard,batch,welcome,transfers)
#   -o  output folder (default: out/compare-<UTC time> in the checkout, ignored by git)
#
# Families whose routes are not in GET /routes are reported and skipped (BEFORE_ROUTES=off
# removes every `before` route). The writing routes (welcome, transfers) add rows to the
# database they run against: point this at a development database, not at production.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

duration=10s
# Eight connections keep the database pool (DB_POOL_SIZE, 16 by default) from limiting both
# variants at once: with 32, a dashboard's three queries or a batch's twenty queue for the pool
# either way, and both throughputs converge on what the pool allows, hiding the difference.
conns=8
threads=2
delay=20
families=users,dashboard,batch,welcome,transfers
out=

usage() {
    sed -n '11,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while getopts "d:c:t:D:f:o:h" opt; do
    case $opt in
    d) duration=$OPTARG ;;
    c) conns=$OPTARG ;;
    t) threads=$OPTARG ;;
    D) delay=$OPTARG ;;
    f) families=$OPTARG ;;
    o) out=$OPTARG ;;
    *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || usage
url=${1%/}
out=${out:-$root/out/compare-$(date -u +%Y%m%dT%H%M%SZ)}

for tool in wrk curl gnuplot; do
    command -v "$tool" >/dev/null || { echo "compare.sh: $tool is not installed" >&2; exit 1; }
done
# A service started a moment ago (docker-compose's load run) gets 30 s to come up.
for _ in $(seq 60); do
    curl -fs --max-time 2 -o /dev/null "$url/healthz" && break
    sleep 0.5
done
if ! curl -fsS --max-time 5 -o /dev/null "$url/healthz"; then
    echo "compare.sh: $url/healthz does not answer 200; is the service running?" >&2
    exit 1
fi
routes=$(curl -fsS --max-time 5 "$url/routes")
mkdir -p "$out"

# The route each family's script requests, as GET /routes lists it (an example path such as
# /before/users/1/dashboard, or the pattern /before/users/{id}/dashboard: only the fixed parts are
# matched).
route_regex() {
    case $1 in
    users) echo "\"/$2/users/[^\"/]*\"" ;;
    dashboard) echo "\"/$2/users/[^\"/]*/dashboard\"" ;;
    batch) echo "\"/$2/batch\"" ;;
    welcome) echo "\"/$2/users/[^\"/]*/welcome\"" ;;
    transfers) echo "\"/$2/transfers\"" ;;
    *) echo "compare.sh: unknown family '$1'" >&2; exit 2 ;;
    esac
}

# Options each family's script gets besides variant and delay_ms: a batch of 20 users, 5 welcome
# events, small transfer amounts.
family_args() {
    case $1 in
    batch) echo "size=20" ;;
    welcome) echo "events=5" ;;
    transfers) echo "max_amount=5" ;;
    esac
}

# Waits until the service has worked off what the previous run left behind (a `before` run can
# leave dozens of loop-blocking requests queued when wrk stops, and welcome runs leave background
# tasks): /metrics shows no request in flight but its own and no live task (at most 60 s), then
# five /healthz answers in a row come under 10 ms (at most 15 s more: on a busy machine curl alone
# may take longer, and the first condition is the one that matters). Without it the next run
# measures the last one.
settle() {
    local fast=0 end=$((SECONDS + 60)) t m
    while [ $SECONDS -lt $end ]; do
        m=$(curl -s --max-time 5 "$url/metrics" || true)
        if awk '$1 == "hs_http_requests_in_flight" && $2 > 1 { busy = 1 }
                $1 == "hs_tasks_live" && $2 > 0 { busy = 1 }
                END { exit busy }' <<<"$m"; then
            break
        fi
        sleep 0.2
    done
    end=$((SECONDS + 15))
    while [ $fast -lt 5 ] && [ $SECONDS -lt $end ]; do
        t=$(curl -s -o /dev/null -w '%{time_total}' --max-time 5 "$url/healthz" || echo 5)
        if awk -v t="$t" 'BEGIN { exit !(t < 0.010) }'; then
            fast=$((fast + 1))
        else
            fast=0
            sleep 0.1
        fi
    done
}

# field NAME FILE: the value of NAME= on the wrk-result line of FILE (see common.lua).
field() {
    sed -n "s/^wrk-result.* $1=\([^ ]*\).*/\1/p" "$2"
}

tsv=$out/results.tsv
printf 'family\tvariant\trps\tp50_ms\tp99_ms\tnon2xx\terrors\thealthz_p99_ms\n' >"$tsv"
printf '%-10s %-7s %10s %9s %9s %8s %7s %15s\n' family variant "req/s" "p50 ms" "p99 ms" \
    non-2xx errors "healthz p99 ms"

IFS=, read -r -a fams <<<"$families"
for fam in "${fams[@]}"; do
    for variant in before after; do
        if ! grep -Eq "$(route_regex "$fam" "$variant")" <<<"$routes"; then
            printf '%-10s %-7s %s\n' "$fam" "$variant" "skipped: route not in GET /routes"
            continue
        fi
        settle
        log=$out/$fam-$variant.txt
        probe=$out/$fam-$variant-healthz.txt
        wrk -t1 -c4 -d"$duration" --timeout 60s --latency -s "$here/healthz.lua" "$url" >"$probe" 2>&1 &
        probe_pid=$!
        # shellcheck disable=SC2046 # family_args is a list of words on purpose
        wrk -t"$threads" -c"$conns" -d"$duration" --timeout 10s --latency -s "$here/$fam.lua" \
            "$url" -- variant="$variant" delay_ms="$delay" $(family_args "$fam") >"$log" 2>&1 \
            || { cat "$log" >&2; exit 1; }
        wait "$probe_pid" || { cat "$probe" >&2; exit 1; }
        errors=$(( $(field connect "$log") + $(field read "$log") + $(field write "$log") \
                   + $(field timeout "$log") ))
        row=("$fam" "$variant" "$(field rps "$log")" "$(field p50_ms "$log")" \
             "$(field p99_ms "$log")" "$(field non2xx "$log")" "$errors" \
             "$(field p99_ms "$probe")")
        (IFS=$'\t'; echo "${row[*]}") >>"$tsv"
        printf '%-10s %-7s %10s %9s %9s %8s %7s %15s\n' "${row[@]}"
    done
done

# gnuplot wants one line per family with before and after side by side.
wide=$out/results-wide.tsv
awk -F'\t' '
    NR > 1 { key = $1; if (!(key in seen)) { seen[key] = 1; order[++n] = key }
             v[key, $2, "rps"] = $3; v[key, $2, "p99"] = $5; v[key, $2, "hz"] = $8 }
    END {
        print "family\trps_before\trps_after\tp99_before\tp99_after\thz_before\thz_after"
        for (i = 1; i <= n; i++) {
            k = order[i]; line = k
            split("rps p99 hz", m, " ")
            for (j = 1; j <= 3; j++)
                for (w = 0; w < 2; w++) {
                    var = w ? "after" : "before"
                    x = v[k, var, m[j]]
                    line = line "\t" (x == "" ? "NaN" : x)
                }
            print line
        }
    }' "$tsv" >"$wide"

if [ "$(wc -l <"$wide")" -gt 1 ]; then
    gnuplot <<EOF
set terminal pngcairo size 1100,1200 font "sans,10"
set output "$out/compare.png"
set datafile separator "\t"
set datafile columnheaders
set termoption noenhanced
set key top left
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set grid ytics
set logscale y
set style line 1 lc rgb "#c0504d"
set style line 2 lc rgb "#4f81bd"
set multiplot layout 3,1 \
    title "hindsight before vs after (delay_ms=$delay, $conns connections, $duration each)"
set title "throughput (requests/s, higher is better)"
plot "$wide" using 2:xtic(1) title "before" ls 1, "" using 3 title "after" ls 2
set title "route latency p99 (ms, lower is better)"
plot "$wide" using 4:xtic(1) title "before" ls 1, "" using 5 title "after" ls 2
set title "GET /healthz p99 during the run (ms): a blocked event loop shows here"
plot "$wide" using 6:xtic(1) title "before" ls 1, "" using 7 title "after" ls 2
unset multiplot
EOF
    echo "chart: $out/compare.png"
fi
echo "numbers: $tsv"

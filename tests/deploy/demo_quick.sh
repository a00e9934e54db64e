#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# deploy/demo.sh --quick, from the outside: it must exit 0 and print the before/after table with
# a row per variant of each pattern, every row with a measured throughput, the `after` rows of
# welcome and transfers showing 0 events lost and the invariant held, and the `before` rows
# showing events lost and the invariant broken. The demo checks its own numbers as well; this
# test also holds the table, which is what a reader sees, to the same claims.
set -uo pipefail

root=${HS_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
[ -n "${TEST_DATABASE_URL:-}" ] || { echo "SKIP: TEST_DATABASE_URL is not set"; exit 77; }
for tool in curl psql wrk gnuplot; do
    command -v "$tool" >/dev/null || { echo "SKIP: $tool is not installed"; exit 77; }
done

dir=$(mktemp -d /tmp/hs-demo-test.XXXXXX)
out=$dir/stdout
trap 'rm -rf "$dir"' EXIT
failed=0
fail() {
    echo "FAIL: $*"
    failed=1
}

DATABASE_URL=$TEST_DATABASE_URL bash "$root/deploy/demo.sh" --quick --out "$dir/out" >"$out" 2>&1
rc=$?
[ $rc -eq 0 ] || fail "deploy/demo.sh --quick exited $rc"

# row <pattern number> <variant>: the table row's cells, '|'-separated, spaces trimmed.
row() {
    awk -F'|' -v p="$1" -v v="$2" '
        { for (i = 2; i < NF; i++) gsub(/^ +| +$/, "", $i) }
        $2 ~ "^" p " " && $3 == v {
            line = $2
            for (i = 3; i < NF; i++) line = line "|" $i
            print line
        }
    ' "$out"
}

rows=$(grep -c '^| [0-9] .* | \(before\|after\) |' "$out")
[ "$rows" = 10 ] || fail "the table has $rows rows, not 10 (5 families x before/after)"
for p in 0 2 3 4; do
    for v in before after; do
        while IFS='|' read -r -a cells; do
            [[ ${cells[2]} =~ ^[0-9]+(\.[0-9]+)?$ ]] || fail "row $p $v has no req/s: ${cells[*]}"
        done < <(row "$p" "$v")
    done
done

IFS='|' read -r -a wb < <(row 3 before)
IFS='|' read -r -a wa < <(row 3 after)
IFS='|' read -r -a tb < <(row 4 before)
IFS='|' read -r -a ta < <(row 4 after)
[[ ${wa[7]:-} =~ ^0\ of\ [1-9] ]] || fail "welcome after does not show 0 events lost: '${wa[7]:-}'"
[[ ${wb[7]:-} =~ ^[1-9][0-9]*\ of\ [1-9] ]] ||
    fail "welcome before does not show a loss: '${wb[7]:-}'"
[[ ${ta[8]:-} == "held: 0 missing, 0 partial"* ]] || fail "transfers after not held: '${ta[8]:-}'"
[[ ${tb[8]:-} == broken:* ]] || fail "transfers before not broken: '${tb[8]:-}'"
grep -q '^demo: all [0-9]* checks passed$' "$out" ||
    fail "the demo did not report all checks passed"
if [ ! -s "$dir/out/table.md" ] || [ ! -s "$dir/out/compare/results.tsv" ]; then
    fail "table.md and compare.sh's results.tsv are not in --out"
fi

if [ $failed -ne 0 ]; then
    echo "--- deploy/demo.sh --quick printed:"
    cat "$out"
    exit 1
fi
sed -n '/^## Before vs after/,/^compare.sh/p' "$out"
echo "PASS"

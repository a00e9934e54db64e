#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The configuration table of docs/operations.md is the built service's own `--help=markdown`
# output (from the settings table in service/config.c, the one source of the settings), kept
# between two marker lines. This check fails, showing the difference, when the two disagree: a
# setting added, renamed or given another default, range or help line without the docs following.
#
#   tests/lint/check_config_doc.sh [--update] [SOURCE_DIR]
#
# HINDSIGHT_BIN names the binary (default SOURCE_DIR/build/hindsight). --update rewrites the
# table in place from the binary instead of checking it: run it after changing a setting.
set -euo pipefail

update=0
if [ "${1:-}" = "--update" ]; then
    update=1
    shift
fi
root=${1:-${HS_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}}
bin=${HINDSIGHT_BIN:-$root/build/hindsight}
doc=$root/docs/operations.md
begin='<!-- BEGIN hindsight --help=markdown -->'
end='<!-- END hindsight --help=markdown -->'

if [ ! -x "$bin" ]; then
    echo "check_config_doc: FAILED: no service binary at $bin (build it, or set HINDSIGHT_BIN)"
    exit 1
fi
for marker in "$begin" "$end"; do
    if [ "$(grep -cxF -- "$marker" "$doc")" != 1 ]; then
        echo "check_config_doc: FAILED: $doc must hold the line '$marker' exactly once"
        exit 1
    fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" --help=markdown >"$tmp/want"
# The lines strictly between the markers.
awk -v b="$begin" -v e="$end" '$0 == e { inside = 0 } inside { print } $0 == b { inside = 1 }' \
    "$doc" >"$tmp/have"

if [ "$update" = 1 ]; then
    awk -v b="$begin" -v e="$end" -v t="$tmp/want" '
        $0 == b { print; while ((getline line < t) > 0) print line; skip = 1; next }
        $0 == e { skip = 0 }
        !skip { print }' "$doc" >"$tmp/doc"
    cat "$tmp/doc" >"$doc"
    echo "check_config_doc: $doc updated from $bin --help=markdown"
    exit 0
fi

if ! diff -u --label "docs/operations.md (between the markers)" --label "$bin --help=markdown" \
    "$tmp/have" "$tmp/want"; then
    echo "check_config_doc: FAILED: the configuration table differs from the service's settings"
    echo "check_config_doc: regenerate it with: tests/lint/check_config_doc.sh --update"
    exit 1
fi
echo "check_config_doc: docs/operations.md's table is $bin --help=markdown"

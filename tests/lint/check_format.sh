#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Every C source and header of the project (runtime/, service/, handlers/, tests/) is formatted
# as .clang-format says: `clang-format --dry-run --Werror` must have nothing to say. Prints the
# files that differ (and how to fix them) and exits 1 when any does.
#
# clang-format's output changes between major versions, so the check is pinned to the major the
# CI machine (Debian 12) installs: with another major (Debian 13 has 19) it reports itself skipped
# (exit 77) instead of failing on differences the code does not have. HS_CLANG_FORMAT names
# another binary (for example clang-format-14 next to a newer default).
#
#   tests/lint/check_format.sh [SOURCE_DIR]
set -euo pipefail

root=${1:-${HS_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}}
pinned=14
cf=${HS_CLANG_FORMAT:-clang-format-$pinned}
command -v "$cf" >/dev/null || cf=clang-format
if ! command -v "$cf" >/dev/null; then
    echo "check_format: SKIPPED: clang-format is not installed (deploy/setup.sh installs it)"
    exit 77
fi
major=$("$cf" --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p')
if [ "$major" != "$pinned" ]; then
    echo "check_format: SKIPPED: $cf is version $major; the format is pinned to clang-format $pinned"
    exit 77
fi

cd "$root"
mapfile -d '' files < <(find runtime service handlers tests -name '*.[ch]' -print0 | sort -z)
# One run over every file; each difference is reported as "file:line:col: error: ...", and any
# other failure (a broken .clang-format, say) fails the check too.
rc=0
out=$("$cf" --dry-run --Werror "${files[@]}" 2>&1) || rc=$?
mapfile -t bad < <(sed -n 's/^\([^:]*\.[ch]\):[0-9]*:[0-9]*: error:.*/\1/p' <<<"$out" | sort -u)
if [ "$rc" != 0 ] && [ "${#bad[@]}" = 0 ]; then
    printf '%s\n' "$out" | head -20
    echo "check_format: FAILED: $cf exited $rc"
    exit 1
fi

if [ "${#bad[@]}" != 0 ]; then
    printf 'check_format: not formatted: %s\n' "${bad[@]}"
    echo "check_format: FAILED; fix with: $cf -i ${bad[*]}"
    exit 1
fi
echo "check_format: every C file is formatted ($cf $major)"

#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# openapi.json is a valid OpenAPI 3.1 document by the ecosystem's own linter (Redocly CLI, its
# recommended rules; a warning fails too). Node.js and npm come from deploy/setup.sh; the linter
# from the npm registry, pinned, cached in the build tree. Exit 77 (skipped) only when the
# package cannot be fetched: no node or npm, or no registry.
set -uo pipefail

root=${HS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
cli=@redocly/cli@1.34.5
export npm_config_cache=${HS_NPM_CACHE:-$root/build/npm-cache}
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

if ! command -v node >/dev/null || ! command -v npx >/dev/null; then
    echo "SKIP: node or npx is not installed (deploy/setup.sh installs nodejs and npm)"
    exit 77
fi
if ! timeout 240 npx --yes "$cli" --version >/dev/null 2>&1; then
    echo "SKIP: npm could not fetch $cli"
    exit 77
fi
out=$(timeout 120 npx --yes "$cli" lint --format=stylish "$root/openapi.json" 2>&1)
rc=$?
echo "$out"
if [ $rc -ne 0 ]; then
    echo "FAIL: $cli lint exited $rc"
    exit 1
fi
if grep -qE '^ +[0-9]+:[0-9]+ +warning ' <<<"$out"; then
    echo "FAIL: $cli lint reported warnings"
    exit 1
fi
echo "openapi lint: valid, no warnings"

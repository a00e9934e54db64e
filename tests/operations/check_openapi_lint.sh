#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# openapi.json is a valid OpenAPI 3.1 document by the ecosystem's own linter (Redocly CLI, its
# recommended rules; a warning fails too). Node.js and npm come from deploy/setup.sh; the linter
# from the npm registry, pinned, kept in npm's own cache (~/.npm, shared by every build tree).
# Exit 77 (skipped) only when the package cannot be fetched: no node or npm, or no registry.
set -uo pipefail

root=${HS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
cli=@redocly/cli@1.34.5
# prefer-offline: a cached copy of the pinned version is used without asking the registry again.
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
export npm_config_prefer_offline=true

if ! command -v node >/dev/null || ! command -v npx >/dev/null; then
    echo "SKIP: node or npx is not installed (deploy/setup.sh installs nodejs and npm)"
    exit 77
fi
out=$(timeout 300 npx --yes "$cli" lint --format=stylish "$root/openapi.json" 2>&1)
rc=$?
echo "$out"
# npm's own failures (no registry, no such version) print "npm error" / "npm ERR!" and never
# reach the linter: that is a package that cannot be fetched, not a document that fails.
if [ $rc -ne 0 ] && grep -qE '^npm (error|ERR!)' <<<"$out"; then
    echo "SKIP: npm could not fetch $cli"
    exit 77
fi
if [ $rc -ne 0 ]; then
    echo "FAIL: $cli lint exited $rc"
    exit 1
fi
if grep -qE '^ +[0-9]+:[0-9]+ +warning ' <<<"$out"; then
    echo "FAIL: $cli lint reported warnings"
    exit 1
fi
echo "openapi lint: valid, no warnings"

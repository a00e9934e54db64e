#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The layering of docs/architecture.md, checked on every #include of the C sources:
#   runtime/   includes nothing of service/ or handlers/, and neither libmicrohttpd nor jansson
#              (the runtime knows nothing of HTTP or of the API's JSON);
#   service/   includes nothing of handlers/, except main.c (the composition root);
#   handlers/  include no libmicrohttpd header (they speak the service's request interface).
# Prints each offending line as file:line: text, and exits 1 when there is any.
#
#   tests/lint/check_layers.sh [SOURCE_DIR]
set -euo pipefail

root=${1:-${HS_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}}
cd "$root"
bad=0

# forbid LAYER EXCEPT PATTERN WHY: every #include in LAYER/*.{c,h} (but the file EXCEPT) whose
# target matches the extended regex PATTERN is reported with WHY. Relative includes ("../x") are
# resolved against the including file's folder first, so they cannot slip past.
forbid() {
    local layer=$1 except=$2 pattern=$3 why=$4 f n line target
    for f in "$layer"/*.c "$layer"/*.h; do
        [ -e "$f" ] || continue
        [ "$f" = "$except" ] && continue
        n=0
        while IFS= read -r line; do
            n=$((n + 1))
            [[ $line =~ ^[[:space:]]*#[[:space:]]*include[[:space:]]*[\<\"]([^\>\"]+)[\>\"] ]] || continue
            target=${BASH_REMATCH[1]}
            if [[ $target == ../* || $target == ./* ]]; then
                target=$(realpath -m --relative-to=. "$layer/$target")
            fi
            if [[ $target =~ $pattern ]]; then
                echo "$f:$n: $line    <- $why"
                bad=1
            fi
        done <"$f"
    done
}

forbid runtime - '^(service|handlers)/' "runtime/ must not depend on service/ or handlers/"
forbid runtime - '^(microhttpd|jansson)\.h$' "runtime/ knows nothing of HTTP or the API's JSON"
forbid service service/main.c '^handlers/' "only service/main.c, the composition root, knows handlers"
forbid handlers - '^microhttpd\.h$' "handlers/ speak service/'s request interface, not libmicrohttpd"

if [ "$bad" != 0 ]; then
    echo "check_layers: FAILED (docs/architecture.md, 'Where things live')"
    exit 1
fi
echo "check_layers: runtime/, service/ and handlers/ keep their layers"

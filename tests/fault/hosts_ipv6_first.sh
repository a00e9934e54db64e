#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# hosts_ipv6_first.sh BINARY [ARGS...] - runs a test with a stock Debian /etc/hosts, where
# `localhost` resolves to ::1 first and 127.0.0.1 second, while the test server listens on IPv4
# only: a client that tries only the first address of a host fails there. The file is
# bind-mounted in a private mount namespace, so the machine's own /etc/hosts is never touched.
# Exit 77 (skipped) where mount namespaces are denied.
set -euo pipefail
hosts=$(mktemp)
trap 'rm -f "$hosts"' EXIT
printf '::1\tlocalhost ip6-localhost ip6-loopback\n127.0.0.1\tlocalhost\n' >"$hosts"
if ! unshare -m true 2>/dev/null; then
    echo "hosts_ipv6_first: mount namespaces are denied here; skipped" >&2
    exit 77
fi
exec unshare -m bash -c 'mount --bind "$0" /etc/hosts && first=$(getent ahosts localhost | head -n1) &&
    case "$first" in ::1*) ;; *) echo "localhost does not resolve to ::1 first" >&2; exit 1;; esac &&
    exec "$@"' "$hosts" "$@"

#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Shell functions that the deploy scripts and the deploy tests share. Sourcing this file only
# defines them: it runs nothing, installs nothing and reads no environment (deploy/setup.sh is
# the file that installs packages).
#
#   source "$root/deploy/lib.sh"

# hs_free_port: prints a loopback port nothing listens on now (bash's /dev/tcp: the connection
# fails when the port is free). The kernel's ephemeral range (32768 and up) is avoided, so that
# no outgoing connection can take the port between this check and the bind.
hs_free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

# hs_pg_bindir: prints the server binaries' folder (initdb, pg_ctl, pgbench) of the newest
# PostgreSQL major installed: Debian keeps them off PATH, under /usr/lib/postgresql/MAJOR/bin,
# and the major is the distribution's (15 on Debian 12, 17 on Debian 13). Returns 1 when no
# server is installed. HS_PG_BINDIR chooses one explicitly.
hs_pg_bindir() {
    local d
    if [ -n "${HS_PG_BINDIR:-}" ]; then
        echo "$HS_PG_BINDIR"
        return 0
    fi
    d=$(for d in /usr/lib/postgresql/*/bin/initdb; do [ -x "$d" ] && dirname "$d"; done |
        sort -V | tail -n 1)
    [ -n "$d" ] || return 1
    echo "$d"
}

# hs_require WHO TOOL...: exits 1, naming WHO and the first TOOL that is not installed.
hs_require() {
    local who=$1 tool
    shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null ||
            { echo "$who: $tool is not installed (deploy/setup.sh installs it)" >&2; exit 1; }
    done
}

# hs_db_server URL: remembers the server of a postgresql:// URL, so that hs_db_url can point it
# at another database of that server (throwaway databases; `postgres` to create and drop them).
# Only URLs are understood, not key=value strings; returns 1 for anything else.
hs_db_server() {
    [[ $1 =~ ^(postgres(ql)?://[^/?]*)(/[^?]*)?(\?.*)?$ ]] || return 1
    hs_db_prefix=${BASH_REMATCH[1]}
    hs_db_query=${BASH_REMATCH[4]}
}

# hs_db_url DATABASE: the remembered URL with DATABASE as its database.
hs_db_url() {
    echo "$hs_db_prefix/$1$hs_db_query"
}

# hs_now_ms: milliseconds since the epoch.
hs_now_ms() {
    date +%s%3N
}

# hs_check DESCRIPTION COMMAND...: runs COMMAND as one expectation of a test script, adding it to
# the caller's `passed` or `failed` counter and naming it when it fails, so that a script reports
# every failed expectation of a run rather than stopping at the first.
hs_check() {
    local what=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: $what"
    fi
}


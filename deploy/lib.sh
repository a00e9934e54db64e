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

#!/usr/bin/env bash
# The service against a peer implementation of the same API.md routes written on tokio + hyper +
# tokio-postgres, on one PostgreSQL cluster (each service its own database), with the same wrk
# load, in alternating rounds: requests/s, p99, and CPU microseconds per request of each service
# and of PostgreSQL. CPU per request is the steadier figure on a shared machine.
#
#   PEER_DIR=/path/to/peers deploy/bench-peer.sh
#   ROUNDS=3 DURATION=5 POOL=8 WORKERS=1 ROUTES="healthz user dashboard transfer" deploy/bench-peer.sh
#
# PEER_DIR is the folder with the peer's `compare-services.sh`, `rust/` and its README (default:
# ../shared/peers next to the repository, when it is there). The peer builds offline from Debian's
# Rust packages (its README lists them) into build/peer/. Without cargo or the peer, the script
# says so and exits 0: the comparison is optional, the service's own benchmarks are not.
# Goals (docs): throughput >= 1.0x (healthz), 1.3x (user), 1.5x (dashboard), 1.5x (transfer) the
# peer's, and service CPU per request <= 1/1.5 of the peer's on every route that touches PostgreSQL.
set -euo pipefail

# shellcheck source=deploy/setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# shellcheck source=deploy/lib.sh
source "$hs_root/deploy/lib.sh"
cd "$hs_root"

peer_dir=${PEER_DIR:-$hs_root/../shared/peers}
if [ ! -x "$peer_dir/compare-services.sh" ] || [ ! -d "$peer_dir/rust" ]; then
    echo "bench-peer: no peer at $peer_dir (set PEER_DIR); nothing to compare" >&2
    exit 0
fi
if ! command -v cargo >/dev/null; then
    echo "bench-peer: cargo is not installed; see $peer_dir/README.md" >&2
    exit 0
fi
pool=${POOL:-8}
workers=${WORKERS:-1}
export ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5} ROUTES=${ROUTES:-"healthz user dashboard transfer"}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$hs_root/build/peer}
# The cluster's files live here; its server runs as postgres when this runs as root.
export BENCH_WORKDIR=${BENCH_WORKDIR:-$(mktemp -d /tmp/hs-bench-peer.XXXXXX)}
chmod 755 "$BENCH_WORKDIR"

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$hs_jobs" --target hindsight >/dev/null
echo "bench-peer: building the peer (offline, release) in $CARGO_TARGET_DIR" >&2
(cd "$peer_dir/rust" && cargo build --release --offline --quiet --target-dir "$CARGO_TARGET_DIR")

# Each service gets its own database on the cluster compare-services.sh starts; the service
# migrates and seeds an empty one itself. The peer's WORKERS is tokio's: one thread per CPU.
hs_cmd="psql -q \"\$DATABASE_URL\" -c 'DROP DATABASE IF EXISTS hs WITH (FORCE)' -c 'CREATE DATABASE hs'"
hs_cmd+=" && DATABASE_URL=\${DATABASE_URL%/*}/hs DB_POOL_SIZE=$pool WORKERS=$workers LOG_LEVEL=warn"
hs_cmd+=" exec $hs_root/build/hindsight"
peer_cmd="NO_BUILD=1 DB_POOL_SIZE=$pool exec $peer_dir/rust/run.sh"
echo "bench-peer: $ROUNDS rounds of ${DURATION}s per route, pool $pool, WORKERS=$workers," \
    "$(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
PGBIN=${PGBIN:-$(hs_pg_bindir)} "$peer_dir/compare-services.sh" hindsight="$hs_cmd" peer="$peer_cmd"

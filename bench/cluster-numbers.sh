#!/usr/bin/env bash
# The cluster's headline numbers, with one command:
#
#     bench/cluster-numbers.sh
#
# Installs what it needs if missing (wrk from apt, moto from pip), builds nearcache and
# nearcache-loadtest (release), starts moto and three nodes on loopback (fresh data dirs,
# replication factor 2), measures, stops everything, writes bench/results/<date>-cluster.md:
#
#   a. hot GET of one 4 KiB object through the owner node and through a non-owner node
#      (proxied over HTTP/2 to the owner), wrk -t1 -c64, RUNS runs each, alternating; with
#      requests per CPU-second of all three nodes together;
#   b. catch-up (RUNS times): kill -9 one node, write WRITES x 1 KiB objects through another (level 0),
#      restart it and time until it has pulled every peer journal to the end; then check
#      a sample of the objects it owns is served by it, from its own disk.
#
# Knobs: RUNS [3], DURATION [10s], CONNS [64], WRITES [10000], SHARDS [1 per node],
# BENCH_DIR [/var/tmp], CARGO_TARGET_DIR [<repo>/target/h-bench], OUT, NEARCACHE_BIN,
# LOADTEST_BIN.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export RUNS=${RUNS:-3} DURATION=${DURATION:-10s} CONNS=${CONNS:-64} WRITES=${WRITES:-10000}
export SHARDS=${SHARDS:-1}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/h-bench}
export OUT=${OUT:-$ROOT/bench/results/$(date -u +%F)-cluster.md}

log() { printf '[cluster-numbers %s] %s\n' "$(date -u +%T)" "$*" >&2; }

if ! command -v wrk >/dev/null; then
    log "installing wrk"
    apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi
if ! python3 -c 'import moto.server' 2>/dev/null; then
    log "installing moto[server]"
    python3 -m pip install --quiet 'moto[server]'
fi
if [[ -z ${NEARCACHE_BIN:-} || -z ${LOADTEST_BIN:-} ]]; then
    log "building nearcache and nearcache-loadtest (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --release -p nearcache -p nearcache-loadtest --quiet)
fi
export NEARCACHE_BIN=${NEARCACHE_BIN:-$CARGO_TARGET_DIR/release/nearcache}
export LOADTEST_BIN=${LOADTEST_BIN:-$CARGO_TARGET_DIR/release/nearcache-loadtest}
export WORK
WORK=$(mktemp -d "$BENCH_DIR/nearcache-cluster-bench.XXXXXX")
log "work dir $WORK"
python3 "$ROOT/bench/cluster_numbers.py"
rm -rf "$WORK"
log "wrote $OUT"

#!/usr/bin/env bash
# Prewarm rate (objects/s, MB/s), with one command:
#
#     bench/prewarm-numbers.sh
#
# Installs moto if missing, builds nearcache (release), starts moto, seeds objects straight
# into it (boto3, 32 threads), then for each case starts fresh nodes, runs
# POST /api/v1/jobs/prewarm, polls the job to the end and records its counters, the wall
# time and the nodes' CPU seconds. Writes bench/results/<date>-prewarm.md.
#
# Cases: one node (2 shards) with jobs.concurrency 8 (default) and 32, small objects
# (OBJECTS x 4 KiB) and large ones (LARGE x 1 MiB); a 3-node cluster (1 shard each, R=1)
# with concurrency 32, small objects. A baseline: the same GETs straight from moto with
# boto3 (32 threads), the origin's own ceiling on this machine.
#
# Knobs: OBJECTS [10000], LARGE [200], BENCH_DIR [/var/tmp],
# CARGO_TARGET_DIR [<repo>/target/h-bench], OUT, NEARCACHE_BIN.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export OBJECTS=${OBJECTS:-10000} LARGE=${LARGE:-200}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/h-bench}
export OUT=${OUT:-$ROOT/bench/results/$(date -u +%F)-prewarm.md}

log() { printf '[prewarm-numbers %s] %s\n' "$(date -u +%T)" "$*" >&2; }

if ! python3 -c 'import moto.server, boto3' 2>/dev/null; then
    log "installing moto[server]"
    python3 -m pip install --quiet 'moto[server]'
fi
if [[ -z ${NEARCACHE_BIN:-} ]]; then
    log "building nearcache (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --release -p nearcache --quiet)
fi
export NEARCACHE_BIN=${NEARCACHE_BIN:-$CARGO_TARGET_DIR/release/nearcache}
export WORK
WORK=$(mktemp -d "$BENCH_DIR/nearcache-prewarm-bench.XXXXXX")
log "work dir $WORK"
python3 "$ROOT/bench/prewarm_numbers.py"
rm -rf "$WORK"
log "wrote $OUT"

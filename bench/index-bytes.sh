#!/usr/bin/env bash
# Index memory per cached object (for deploy/TUNING.md's memory sizing): seeds N objects of
# 1 KiB at level 0 into a fresh one-shard node (embedded origin), restarts it so that only
# what recovery rebuilds is resident, and compares RssAnon with the fresh node's.
#
#   cargo build [--release] --bin nearcache -p nearcache-loadtest
#   N=100000 bench/index-bytes.sh [target/debug]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-target/release}
BIN=$DIR/nearcache
LT=$DIR/nearcache-loadtest
N=${N:-100000}
PORT=${PORT:-28090}
WORK=$(mktemp -d)
trap 'kill "$(cat "$WORK/pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$WORK"' EXIT
start() {
  "$BIN" serve --listen "127.0.0.1:$PORT" --s3-listen "127.0.0.1:$((PORT + 1))" \
    --data-dir "$WORK/data" --shards 1 --memory-capacity 1GiB > "$WORK/log.$1" 2>&1 &
  echo $! > "$WORK/pid"
  for _ in $(seq 300); do curl -fs "127.0.0.1:$PORT/healthz" >/dev/null && return; sleep 0.1; done
  echo "the node did not start: $(tail -5 "$WORK/log.$1")" >&2; exit 1
}
stop() {
  local pid; pid=$(cat "$WORK/pid"); kill "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}
anon_kb() { awk '$1 == "RssAnon:" { print $2 }' "/proc/$(cat "$WORK/pid")/status"; }

start 0; sleep 1
A0=$(anon_kb)
"$LT" seed --target "http://127.0.0.1:$PORT" --objects "$N" --size 1KiB --level 0 \
  --manifest "$WORK/m.json" --connections 16 > "$WORK/seed.log" 2>&1
OBJ=$(curl -fs "127.0.0.1:$PORT/api/v1/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"]["objects"])')
stop
start 1; sleep 1
A1=$(anon_kb)
stop
echo "objects=$OBJ fresh_rss_anon_kib=$A0 after_restart_rss_anon_kib=$A1 index_bytes_per_object=$(( (A1 - A0) * 1024 / OBJ ))"

#!/usr/bin/env bash
# Starts N local nearcache nodes on loopback that form one cluster, for trying things out.
#
#   deploy/dev-cluster.sh start [N]   # default 3; builds the release binary first
#   deploy/dev-cluster.sh status
#   deploy/dev-cluster.sh stop
#
# Node i (0-based) serves the native API on 127.0.0.1:808i, the S3 API on 127.0.0.1:900i,
# and the private cluster address (gossip UDP + node-to-node HTTP/2 TCP) on 127.0.0.1:794i.
# Nodes 1.. join through node 0. Data and logs live in ${NEARCACHE_DEV_DIR:-/tmp/nearcache-dev}.
# Without S3 settings the nodes share one embedded local origin directory; set
# NEARCACHE_S3_ENDPOINT / NEARCACHE_S3_BUCKET / NEARCACHE_S3_ACCESS_KEY / NEARCACHE_S3_SECRET_KEY
# (and NEARCACHE_S3_PATH_STYLE=true for most S3-compatible stores) to use a real one.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${NEARCACHE_DEV_DIR:-/tmp/nearcache-dev}
CMD=${1:-start}
N=${2:-3}
BIN=${NEARCACHE_BIN:-target/release/nearcache}

start() {
  if [ -z "${NEARCACHE_BIN:-}" ]; then cargo build --release --bin nearcache; fi
  mkdir -p "$DIR"
  local extra=()
  if [ -z "${NEARCACHE_S3_BUCKET:-}" ]; then
    # One shared local origin stands in for the bucket all nodes write behind to.
    extra+=(--config "$DIR/shared-origin.toml")
    printf '[origin]\nlocal_dir = "%s/origin"\n' "$DIR" > "$DIR/shared-origin.toml"
  fi
  for i in $(seq 0 $((N - 1))); do
    if [ -f "$DIR/node$i.pid" ] && kill -0 "$(cat "$DIR/node$i.pid")" 2>/dev/null; then
      echo "node$i already running (pid $(cat "$DIR/node$i.pid"))"; continue
    fi
    local join=()
    if [ "$i" -gt 0 ]; then join=(--join 127.0.0.1:7940); fi
    "$BIN" serve "${extra[@]}" --data-dir "$DIR/node$i" --shards "${NEARCACHE_SHARDS:-2}" \
      --listen "127.0.0.1:808$i" --s3-listen "127.0.0.1:900$i" \
      --cluster-listen "127.0.0.1:794$i" "${join[@]}" \
      --replication-factor "${NEARCACHE_REPLICATION_FACTOR:-2}" \
      >"$DIR/node$i.log" 2>&1 &
    echo $! > "$DIR/node$i.pid"
    echo "node$i: http://127.0.0.1:808$i (S3 API :900$i, cluster :794$i), log $DIR/node$i.log"
  done
  for i in $(seq 0 $((N - 1))); do
    for _ in $(seq 1 100); do
      curl -sf "http://127.0.0.1:808$i/healthz" >/dev/null && break
      sleep 0.1
    done
  done
  sleep 1
  status
}

status() {
  for f in "$DIR"/node*.pid; do
    [ -e "$f" ] || { echo "no nodes"; return; }
    local i; i=$(basename "$f" .pid); i=${i#node}
    if kill -0 "$(cat "$f")" 2>/dev/null; then
      curl -s "http://127.0.0.1:808$i/api/v1/cluster" | python3 -c '
import json, sys
v = json.load(sys.stdin)
members = " ".join(m["id"][-6:] + ":" + m["state"] for m in v["members"])
print("node" + sys.argv[1], v["node_id"], " members:", members)' "$i"
    else
      echo "node$i: not running"
    fi
  done
}

stop() {
  for f in "$DIR"/node*.pid; do
    [ -e "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  echo "stopped"
}

case "$CMD" in
  start) start ;;
  status) status ;;
  stop) stop ;;
  *) echo "usage: $0 start [N] | status | stop" >&2; exit 2 ;;
esac

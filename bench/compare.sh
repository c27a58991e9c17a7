#!/usr/bin/env bash
# Side-by-side benchmark: nearcache vs nginx (static files), nginx proxy_cache and Varnish
# in front of the same S3 server, and that S3 server directly — one run, same objects,
# same load generator, on loopback. Installs what it needs, starts everything, stops
# everything, writes bench/results/<date>/{results.md,results.json,*.svg}.
#
#   bench/compare.sh                 # defaults below
#   DURATION=5s RUNS=1 CONNS="64" bench/compare.sh
#
# Env: DURATION (10s), WARMUP (2s), RUNS (3, the median is reported), CONNS ("16 128"),
#      SIZES ("4KiB 64KiB 1MiB"), OBJECTS ("2000 500 100": per size), LT_THREADS (1),
#      NC_SHARDS (2), NGINX_WORKERS (2), OUT (bench/results/<date>),
#      NC_BASELINE (path to another nearcache binary, e.g. a build of an earlier commit:
#      it runs beside this one as target "nearcache-baseline", for A/B in one run),
#      ONLY (space-separated target names to measure; default all).
#
#   # A/B of the working tree against a commit, hot GETs only:
#   git worktree add --detach /tmp/nc-base <commit> && (cd /tmp/nc-base && cargo build --release -p nearcache)
#   NC_BASELINE=/tmp/nc-base/target/release/nearcache ONLY="nearcache nearcache-baseline nginx-static" \
#     SIZES=4KiB OBJECTS=2000 CONNS=32 RUNS=5 bench/compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-10s}; WARMUP=${WARMUP:-2s}; RUNS=${RUNS:-3}
CONNS=${CONNS:-"16 128"}; SIZES=(${SIZES:-4KiB 64KiB 1MiB}); OBJECTS=(${OBJECTS:-2000 500 100})
LT_THREADS=${LT_THREADS:-1}; NC_SHARDS=${NC_SHARDS:-2}; NGINX_WORKERS=${NGINX_WORKERS:-2}
DATE=$(date -u +%Y-%m-%d)
OUT=${OUT:-$ROOT/bench/results/$DATE}
WORK=$ROOT/bench/work
P_S3=19000 P_NC=19080 P_STATIC=19081 P_PROXY=19082 P_VARNISH=19083 P_NCB=19084 BUCKET=bench
NC_BASELINE=${NC_BASELINE:-}; ONLY=${ONLY:-}

log() { printf '[compare] %s\n' "$*" >&2; }

# --- install -------------------------------------------------------------------------
need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx)
command -v varnishd >/dev/null || need_apt+=(varnish)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null
fi
python3 -c 'import moto.server' 2>/dev/null || { log "installing moto[server]"; python3 -m pip install -q 'moto[server]'; }
log "building nearcache and nearcache-loadtest (release)"
cargo build --release -q -p nearcache -p nearcache-loadtest
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
NC=$TARGET_DIR/release/nearcache
LT=$TARGET_DIR/release/nearcache-loadtest

# --- start ---------------------------------------------------------------------------
rm -rf "$WORK"; mkdir -p "$WORK"/{static,nginx-proxy-cache,varnish,nc-data,tmp} "$OUT"
# nginx workers run as an unprivileged user: let them write the files they serve and cache.
chmod 777 "$WORK"/{static,nginx-proxy-cache,tmp}
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx-static.pid" ] && kill "$(cat "$WORK/nginx-static.pid")" 2>/dev/null || true
  [ -f "$WORK/nginx-proxy.pid" ] && kill "$(cat "$WORK/nginx-proxy.pid")" 2>/dev/null || true
  pkill -f "varnishd.*$WORK/varnish" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() { for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; log "port $1 never opened"; return 1; }

log "starting moto (S3) on :$P_S3"
python3 -m moto.server -H 127.0.0.1 -p $P_S3 >"$WORK/moto.log" 2>&1 &
PIDS+=($!); S3_PID=$!
wait_port $P_S3
curl -sf -X PUT "http://127.0.0.1:$P_S3/$BUCKET" >/dev/null
# The caches in front of S3 fetch anonymously (as they would from a public bucket):
# moto refuses anonymous GETs unless a bucket policy allows them.
printf '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"arn:aws:s3:::%s/*"}]}' "$BUCKET" >"$WORK/policy.json"
curl -sf -X PUT -T "$WORK/policy.json" "http://127.0.0.1:$P_S3/$BUCKET?policy" >/dev/null

log "starting nearcache on :$P_NC ($NC_SHARDS shards)"
"$NC" --listen 127.0.0.1:$P_NC --data-dir "$WORK/nc-data" --shards $NC_SHARDS \
  --s3-endpoint http://127.0.0.1:$P_S3 --s3-bucket $BUCKET --s3-access-key test --s3-secret-key test \
  --s3-path-style --memory-capacity 1GiB --disk-capacity 8GiB --log-level warn >"$WORK/nearcache.log" 2>&1 &
PIDS+=($!); NC_PID=$!
wait_port $P_NC
if [ -n "$NC_BASELINE" ]; then
  log "starting the baseline nearcache ($NC_BASELINE) on :$P_NCB"
  mkdir -p "$WORK/ncb-data"
  "$NC_BASELINE" --listen 127.0.0.1:$P_NCB --data-dir "$WORK/ncb-data" --shards $NC_SHARDS \
    --s3-listen 127.0.0.1:19085 \
    --s3-endpoint http://127.0.0.1:$P_S3 --s3-bucket $BUCKET --s3-access-key test --s3-secret-key test \
    --s3-path-style --memory-capacity 1GiB --disk-capacity 8GiB --log-level warn >"$WORK/nearcache-baseline.log" 2>&1 &
  PIDS+=($!); NCB_PID=$!
  wait_port $P_NCB
fi

cat >"$WORK/nginx-static.conf" <<CONF
worker_processes $NGINX_WORKERS;
pid $WORK/nginx-static.pid;
error_log $WORK/nginx-static.err warn;
daemon off;
events { worker_connections 4096; }
http {
  access_log off; sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_timeout 120s; keepalive_requests 1000000;
  client_body_temp_path $WORK/tmp; client_max_body_size 0;
  server {
    listen 127.0.0.1:$P_STATIC reuseport;
    root $WORK/static;
    location / { dav_methods PUT; create_full_put_path on; }
  }
}
CONF
cat >"$WORK/nginx-proxy.conf" <<CONF
worker_processes $NGINX_WORKERS;
pid $WORK/nginx-proxy.pid;
error_log $WORK/nginx-proxy.err warn;
daemon off;
events { worker_connections 4096; }
http {
  access_log off; tcp_nodelay on; keepalive_timeout 120s; keepalive_requests 1000000;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp;
  proxy_cache_path $WORK/nginx-proxy-cache levels=1:2 keys_zone=s3:64m max_size=8g inactive=1d use_temp_path=off;
  upstream s3 { server 127.0.0.1:$P_S3; keepalive 64; }
  server {
    listen 127.0.0.1:$P_PROXY reuseport;
    location / {
      proxy_pass http://s3/$BUCKET/;
      proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache s3; proxy_cache_valid 200 1d; proxy_cache_lock on;
      proxy_ignore_headers Cache-Control Expires Set-Cookie;
    }
  }
}
CONF
log "starting nginx static on :$P_STATIC and nginx proxy_cache on :$P_PROXY"
nginx -c "$WORK/nginx-static.conf" & PIDS+=($!)
nginx -c "$WORK/nginx-proxy.conf" & PIDS+=($!)
wait_port $P_STATIC; wait_port $P_PROXY

cat >"$WORK/varnish.vcl" <<VCL
vcl 4.1;
backend s3 { .host = "127.0.0.1"; .port = "$P_S3"; }
sub vcl_recv { set req.url = "/$BUCKET" + req.url; unset req.http.Cookie; return (hash); }
sub vcl_backend_response { set beresp.ttl = 1d; set beresp.grace = 1h; }
VCL
log "starting varnish on :$P_VARNISH"
varnishd -F -n "$WORK/varnish" -a 127.0.0.1:$P_VARNISH -f "$WORK/varnish.vcl" -s malloc,2G \
  -p thread_pools=2 >"$WORK/varnish.log" 2>&1 &
PIDS+=($!)
wait_port $P_VARNISH

# --- seed: the same deterministic objects into S3 and into nginx's static root ---------
sizes_csv=$(IFS=,; echo "${SIZES[*]}"); objects_csv=$(IFS=,; echo "${OBJECTS[*]}")
log "seeding $objects_csv objects of $sizes_csv into S3 and the static root"
"$LT" seed --target http://127.0.0.1:$P_S3 --api s3 --bucket $BUCKET --size "$sizes_csv" \
  --objects "$objects_csv" --seed 7 --connections 16 --manifest "$WORK/manifest.json" --quiet --fail-on-error >/dev/null
"$LT" seed --target http://127.0.0.1:$P_STATIC --api plain --size "$sizes_csv" \
  --objects "$objects_csv" --seed 7 --connections 16 --manifest "$WORK/manifest-static.json" --quiet --fail-on-error >/dev/null

# name|url|path template|api (how answers are checked)|command printing the pids to account
nginx_pids() { local m; m=$(pgrep -f "nginx.*$1" | head -1); [ -n "$m" ] && echo "$m $(pgrep -P "$m" | tr '\n' ' ')"; }
TARGETS=(
  "nearcache|http://127.0.0.1:$P_NC|/api/v1/get/{id}|native|echo $NC_PID"
  "nginx-static|http://127.0.0.1:$P_STATIC|/{key}|plain|nginx_pids nginx-static.conf"
  "nginx-proxy_cache|http://127.0.0.1:$P_PROXY|/{key}|plain|nginx_pids nginx-proxy.conf"
  "varnish|http://127.0.0.1:$P_VARNISH|/{key}|plain|pgrep -f 'varnishd.*$WORK/varnish'"
  "s3-direct|http://127.0.0.1:$P_S3|/$BUCKET/{key}|plain|echo $S3_PID"
)
if [ -n "$NC_BASELINE" ]; then
  TARGETS+=("nearcache-baseline|http://127.0.0.1:$P_NCB|/api/v1/get/{id}|native|echo $NCB_PID")
fi
if [ -n "$ONLY" ]; then
  kept=()
  for t in "${TARGETS[@]}"; do
    name=${t%%|*}
    for o in $ONLY; do [ "$o" = "$name" ] && kept+=("$t"); done
  done
  TARGETS=("${kept[@]}")
fi

cpu_ticks() { local t=0; for p in $(eval "$1"); do
    [ -r /proc/$p/stat ] && t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }
CLK=$(getconf CLK_TCK)

log "warming every cache (one GET of every object)"
for t in "${TARGETS[@]}"; do
  IFS='|' read -r name url tmpl _ _ <<<"$t"
  [ "$name" = s3-direct ] && continue
  python3 - "$url" "$tmpl" "$WORK/manifest.json" <<'PY2'
import http.client, json, sys, urllib.parse
url, tmpl, manifest = sys.argv[1:]
u = urllib.parse.urlparse(url)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
for o in json.load(open(manifest))["objects"]:
    conn.request("GET", tmpl.replace("{id}", o["id"]).replace("{key}", o["key"]))
    r = conn.getresponse()
    body = r.read()
    if r.status != 200 or len(body) != o["size"]:
        sys.exit(f"warming {url}: {o['key']} answered {r.status} with {len(body)} bytes")
PY2
done

RAW=$OUT/raw.jsonl; : >"$RAW"
for size in "${SIZES[@]}"; do
  for conns in $CONNS; do
    for t in "${TARGETS[@]}"; do
      IFS='|' read -r name url tmpl api pids <<<"$t"
      # The Python S3 server is a reference point, not a contender: one light run.
      if [ "$name" = s3-direct ] && [ "$conns" != "$(echo $CONNS | awk '{print $1}')" ]; then continue; fi
      for run in $(seq 1 "$RUNS"); do
        c0=$(cpu_ticks "$pids")
        json=$("$LT" get --target "$url" --api "$api" --path-template "$tmpl" --manifest "$WORK/manifest.json" \
          --size "$size" --connections "$conns" --threads "$LT_THREADS" --duration "$DURATION" \
          --warmup "$WARMUP" --json --quiet) || { log "$name $size c$conns run $run failed"; continue; }
        c1=$(cpu_ticks "$pids")
        python3 - "$name" "$size" "$conns" "$run" "$((c1 - c0))" "$CLK" "$json" >>"$RAW" <<'PY'
import json, sys
name, size, conns, run, ticks, clk, raw = sys.argv[1:]
r = json.loads(raw)
r.update(target=name, size=size, conns=int(conns), run=int(run),
         server_cpu_s=int(ticks) / int(clk))
print(json.dumps(r))
PY
        log "$(tail -1 "$RAW" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%-18s %6s c%-4d run%d: %9.0f req/s  p99 %7.2f ms  errors %d" % (r["target"], r["size"], r["conns"], r["run"], r["rps"], r["p99_us"] / 1000, sum(r["errors"].values())))')"
      done
    done
  done
done

python3 "$ROOT/bench/report.py" "$RAW" "$OUT"
log "results in $OUT"

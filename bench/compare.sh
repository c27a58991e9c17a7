#!/usr/bin/env bash
# Side-by-side benchmark, one run, same objects, same load generator (wrk), on loopback:
# nearcache's native API, its S3 API (SigV4 header-signed and presigned), a 2-node
# nearcache cluster read through the owner and through the other node, nginx serving
# static files, nginx proxy_cache and Varnish in front of the same S3 server, and that S3
# server directly; plus nearcache-loadtest beside wrk on nginx static (the generator
# check). Installs what it needs, starts everything, stops everything, writes
# bench/results/<date>/{results.md,results.json,raw.jsonl,*.svg}.
#
#   bench/compare.sh                 # defaults below
#   DURATION=3s RUNS=1 SIZES=4KiB OBJECTS=500 bench/compare.sh     # a quick look
#
# Env: DURATION (10s), WARMUP (2s), RUNS (3, the median is reported), CONNS ("32"),
#      WRK_THREADS (2), SIZES ("4KiB 64KiB 1MiB"), OBJECTS ("2000 500 100": per size),
#      LT_THREADS (1), NC_SHARDS (2), NGINX_WORKERS (2), OUT (bench/results/<date>),
#      NEARCACHE_BIN / LOADTEST_BIN (use these binaries instead of building),
#      NC_BASELINE (path to another nearcache binary, e.g. a build of an earlier commit:
#      it runs beside this one as targets "nearcache-baseline" and
#      "nearcache-baseline-s3-presigned", for A/B in one run),
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
CONNS=${CONNS:-"32"}; WRK_THREADS=${WRK_THREADS:-2}; SIZES=(${SIZES:-4KiB 64KiB 1MiB}); OBJECTS=(${OBJECTS:-2000 500 100})
LT_THREADS=${LT_THREADS:-1}; NC_SHARDS=${NC_SHARDS:-2}; NGINX_WORKERS=${NGINX_WORKERS:-2}
DATE=$(date -u +%Y-%m-%d)
OUT=${OUT:-$ROOT/bench/results/$DATE}
WORK=$ROOT/bench/work
P_S3=19000 P_NC=19080 P_STATIC=19081 P_PROXY=19082 P_VARNISH=19083 P_NCB=19084 P_NC_S3=19085 P_NCB_S3=19086
P_C1=19087 P_C1_S3=19088 P_C1_CL=19089 P_C2=19090 P_C2_S3=19091 P_C2_CL=19092 BUCKET=bench
NC_BASELINE=${NC_BASELINE:-}; ONLY=${ONLY:-}

log() { printf '[compare] %s\n' "$*" >&2; }

# --- install -------------------------------------------------------------------------
need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx)
command -v varnishd >/dev/null || need_apt+=(varnish)
command -v wrk >/dev/null || need_apt+=(wrk)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null
fi
python3 -c 'import moto.server' 2>/dev/null || { log "installing moto[server]"; python3 -m pip install -q 'moto[server]'; }
if [ -z "${NEARCACHE_BIN:-}" ] || [ -z "${LOADTEST_BIN:-}" ]; then
  log "building nearcache and nearcache-loadtest (release)"
  cargo build --release -q -p nearcache -p nearcache-loadtest
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
NC=${NEARCACHE_BIN:-$TARGET_DIR/release/nearcache}
LT=${LOADTEST_BIN:-$TARGET_DIR/release/nearcache-loadtest}

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

# The S3 API's key (wrk_run.py signs with it).
cat >"$WORK/nc.toml" <<TOML
[[s3api.keys]]
access_key = "bench"
secret_key = "bench-secret"
TOML
log "starting nearcache on :$P_NC, its S3 API on :$P_NC_S3 ($NC_SHARDS shards)"
"$NC" --config "$WORK/nc.toml" --listen 127.0.0.1:$P_NC --s3-listen 127.0.0.1:$P_NC_S3 \
  --data-dir "$WORK/nc-data" --shards $NC_SHARDS \
  --s3-endpoint http://127.0.0.1:$P_S3 --s3-bucket $BUCKET --s3-access-key test --s3-secret-key test \
  --s3-path-style --memory-capacity 1GiB --disk-capacity 8GiB --log-level warn >"$WORK/nearcache.log" 2>&1 &
PIDS+=($!); NC_PID=$!
wait_port $P_NC
if [ -n "$NC_BASELINE" ]; then
  log "starting the baseline nearcache ($NC_BASELINE) on :$P_NCB"
  mkdir -p "$WORK/ncb-data"
  "$NC_BASELINE" --config "$WORK/nc.toml" --listen 127.0.0.1:$P_NCB --data-dir "$WORK/ncb-data" --shards $NC_SHARDS \
    --s3-listen 127.0.0.1:$P_NCB_S3 \
    --s3-endpoint http://127.0.0.1:$P_S3 --s3-bucket $BUCKET --s3-access-key test --s3-secret-key test \
    --s3-path-style --memory-capacity 1GiB --disk-capacity 8GiB --log-level warn >"$WORK/nearcache-baseline.log" 2>&1 &
  PIDS+=($!); NCB_PID=$!
  wait_port $P_NCB
fi

# A 2-node cluster (replication factor 1): the same objects read through the node that
# owns them and through the other one (proxied to the owner, or served from its near copy).
start_node() { # name port s3port clusterport [seed]
  mkdir -p "$WORK/$1"
  "$NC" --config "$WORK/nc.toml" --listen 127.0.0.1:$2 --s3-listen 127.0.0.1:$3 \
    --data-dir "$WORK/$1/data" --shards $NC_SHARDS --cluster-listen 127.0.0.1:$4 \
    --replication-factor 1 ${5:+--join 127.0.0.1:$5} \
    --s3-endpoint http://127.0.0.1:$P_S3 --s3-bucket $BUCKET --s3-access-key test --s3-secret-key test \
    --s3-path-style --memory-capacity 1GiB --disk-capacity 8GiB --log-level warn >"$WORK/$1.log" 2>&1 &
  PIDS+=($!)
  wait_port $2
}
log "starting a 2-node nearcache cluster on :$P_C1 and :$P_C2"
start_node c1 $P_C1 $P_C1_S3 $P_C1_CL; C1_PID=${PIDS[-1]}
start_node c2 $P_C2 $P_C2_S3 $P_C2_CL $P_C1_CL; C2_PID=${PIDS[-1]}
for _ in $(seq 1 300); do
  n=$(curl -sf "http://127.0.0.1:$P_C1/api/v1/cluster" | python3 -c 'import json,sys; print(sum(m["state"] == "alive" for m in json.load(sys.stdin)["members"]))' 2>/dev/null || echo 0)
  [ "$n" = 2 ] && break; sleep 0.1
done
[ "$n" = 2 ] || { log "the cluster never formed"; exit 1; }

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

# The cluster targets use the objects node c1 owns (the same set through both nodes).
python3 - "http://127.0.0.1:$P_C1" "$WORK/manifest.json" >"$WORK/c1-owned.txt" <<'PY'
import json, sys, urllib.request
base, manifest = sys.argv[1:]
node = json.load(urllib.request.urlopen(base + "/api/v1/cluster"))["node_id"]
for o in json.load(open(manifest))["objects"]:
    info = json.load(urllib.request.urlopen(f"{base}/api/v1/cluster?key={o['id']}"))
    if info["key"]["owners"][0] == node:
        print(o["id"])
PY
log "node c1 owns $(wc -l <"$WORK/c1-owned.txt") of the objects"

# name|generator|url|path template|signing|ids file|command printing the pids to account
nginx_pids() { local m; m=$(pgrep -f "nginx.*$1" | head -1); [ -n "$m" ] && echo "$m $(pgrep -P "$m" | tr '\n' ' ')"; }
TARGETS=(
  "nearcache|wrk|http://127.0.0.1:$P_NC|/api/v1/get/{id}|none||echo $NC_PID"
  "nearcache-s3-header|wrk|http://127.0.0.1:$P_NC_S3|/$BUCKET/{key}|header||echo $NC_PID"
  "nearcache-s3-presigned|wrk|http://127.0.0.1:$P_NC_S3|/$BUCKET/{key}|presign||echo $NC_PID"
  "cluster-owner|wrk|http://127.0.0.1:$P_C1|/api/v1/get/{id}|none|$WORK/c1-owned.txt|echo $C1_PID $C2_PID"
  "cluster-non-owner|wrk|http://127.0.0.1:$P_C2|/api/v1/get/{id}|none|$WORK/c1-owned.txt|echo $C1_PID $C2_PID"
  "nginx-static|wrk|http://127.0.0.1:$P_STATIC|/{key}|none||nginx_pids nginx-static.conf"
  "nginx-static-loadtest|loadtest|http://127.0.0.1:$P_STATIC|/{key}|none||nginx_pids nginx-static.conf"
  "nginx-proxy_cache|wrk|http://127.0.0.1:$P_PROXY|/{key}|none||nginx_pids nginx-proxy.conf"
  "varnish|wrk|http://127.0.0.1:$P_VARNISH|/{key}|none||pgrep -f 'varnishd.*$WORK/varnish'"
  "s3-direct|wrk|http://127.0.0.1:$P_S3|/$BUCKET/{key}|none||echo $S3_PID"
)
if [ -n "$NC_BASELINE" ]; then
  TARGETS+=("nearcache-baseline|wrk|http://127.0.0.1:$P_NCB|/api/v1/get/{id}|none||echo $NCB_PID")
  TARGETS+=("nearcache-baseline-s3-presigned|wrk|http://127.0.0.1:$P_NCB_S3|/$BUCKET/{key}|presign||echo $NCB_PID")
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

log "warming every cache (every object read twice and checked: a non-owner keeps a near copy after its second read)"
for t in "${TARGETS[@]}"; do
  IFS='|' read -r name gen url tmpl sign ids _ <<<"$t"
  case $name in s3-direct|nginx-static-loadtest|nearcache-s3-header) continue;; esac
  python3 - "$url" "$tmpl" "$sign" "$WORK/manifest.json" "$ids" <<'PY2'
import http.client, json, sys, urllib.parse
url, tmpl, sign, manifest, ids = sys.argv[1:]
keep = set(open(ids).read().split()) if ids else None
u = urllib.parse.urlparse(url)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
if sign == "presign":
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    creds = Credentials("bench", "bench-secret")
for o in json.load(open(manifest))["objects"]:
    if keep is not None and o["id"] not in keep:
        continue
    path = tmpl.replace("{id}", o["id"]).replace("{key}", o["key"])
    if sign == "presign":
        req = AWSRequest(method="GET", url=url + path)
        S3SigV4QueryAuth(creds, "s3", "us-east-1", expires=3600).add_auth(req)
        path = req.url[len(url):]
    for _ in range(2):
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200 or len(body) != o["size"]:
            sys.exit(f"warming {url}: {o['key']} answered {r.status} with {len(body)} bytes: {body[:300]!r}")
PY2
done

RAW=$OUT/raw.jsonl; : >"$RAW"
run_one() { # gen url tmpl sign ids size conns duration
  if [ "$1" = loadtest ]; then
    "$LT" get --target "$2" --api plain --path-template "$3" --manifest "$WORK/manifest.json" \
      --size "$6" --connections "$7" --threads "$LT_THREADS" --duration "$8" --warmup 0s --json --quiet
  else
    python3 "$ROOT/bench/wrk_run.py" --url "$2" --template "$3" --sign "$4" ${5:+--only "$5"} \
      --manifest "$WORK/manifest.json" --size "$6" --conns "$7" --threads "$WRK_THREADS" --duration "$8"
  fi
}
first_size=${SIZES[0]}
# Runs are interleaved (run 1 of every target, then run 2, ...) so a slow spell of the
# shared box does not land on one target's runs only.
for size in "${SIZES[@]}"; do
  for conns in $CONNS; do
    for run in $(seq 1 "$RUNS"); do
      for t in "${TARGETS[@]}"; do
        IFS='|' read -r name gen url tmpl sign ids pids <<<"$t"
        # The Python S3 server is a reference point, not a contender: one light run. The
        # generator check needs one size.
        if [ "$name" = s3-direct ] && { [ "$conns" != "$(echo $CONNS | awk '{print $1}')" ] || [ "$run" != 1 ]; }; then continue; fi
        if [ "$name" = nginx-static-loadtest ] && [ "$size" != "$first_size" ]; then continue; fi
        run_one "$gen" "$url" "$tmpl" "$sign" "$ids" "$size" "$conns" "$WARMUP" >/dev/null || true
        c0=$(cpu_ticks "$pids")
        json=$(run_one "$gen" "$url" "$tmpl" "$sign" "$ids" "$size" "$conns" "$DURATION") \
          || { log "$name $size c$conns run $run failed"; continue; }
        c1=$(cpu_ticks "$pids")
        python3 - "$name" "$gen" "$size" "$conns" "$run" "$((c1 - c0))" "$CLK" "$json" >>"$RAW" <<'PY'
import json, sys
name, gen, size, conns, run, ticks, clk, raw = sys.argv[1:]
r = json.loads(raw)
r.update(target=name, generator=gen, size=size, conns=int(conns), run=int(run),
         server_cpu_s=int(ticks) / int(clk))
print(json.dumps(r))
PY
        log "$(tail -1 "$RAW" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%-22s %6s c%-4d run%d: %9.0f req/s  p99 %7.2f ms  %8.0f req/CPU-s  errors %d" % (r["target"], r["size"], r["conns"], r["run"], r["rps"], r["p99_us"] / 1000, r["requests"] / r["server_cpu_s"] if r["server_cpu_s"] else 0, sum(r["errors"].values())))')"
      done
    done
  done
done

python3 "$ROOT/bench/report.py" "$RAW" "$OUT"
log "results in $OUT"

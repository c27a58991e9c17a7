#!/usr/bin/env bash
# The node's headline numbers, reproducible with one command:
#
#     bench/node-numbers.sh
#
# Installs what it needs if missing (wrk from apt, moto from pip), builds nearcache
# (release), starts moto (the S3 origin) and nearcache on loopback with fresh data dirs,
# measures, stops everything it started, and writes bench/results/<date>-node.md.
#
#   a. hot GET 4 KiB and 1 MiB (memory tier), wrk -t1 -c64 -d10s, 3 runs each;
#   b. cold-miss latency (read-through from moto) beside a direct GET to moto;
#   c. PUT 4 KiB at level 0 and level 1, wrk, 3 runs each;
#   d. recovery time of 100k × 1 KiB objects (SIGTERM, restart, start-up log);
#   e. memory per cached object (VmRSS / RssAnon) for the index and index + memory tier;
#   f. memory per tombstone: every object of d deleted (level 0), then a restart (the
#      index holds only the tombstones, kept store.tombstone_ttl_secs, 24 h by default).
#
# Every wrk number comes with server CPU: utime+stime of the nearcache pid from
# /proc/<pid>/stat before and after, so "req per server CPU-second" = requests / CPU s.
#
# Environment knobs (defaults in brackets): SHARDS [nproc], RUNS [3], DURATION [10s],
# CONNS [64], RECOVERY_OBJECTS [100000], COLD_OBJECTS [50], BENCH_DIR [/var/tmp]
# (must be a real disk, not tmpfs), CARGO_TARGET_DIR [<repo>/target/h-bench], OUT,
# NEARCACHE_BIN (use this binary instead of building).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARDS=${SHARDS:-$(nproc)}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
RECOVERY_OBJECTS=${RECOVERY_OBJECTS:-100000}
COLD_OBJECTS=${COLD_OBJECTS:-50}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/h-bench}
DATE=$(date -u +%F)
OUT=${OUT:-$ROOT/bench/results/$DATE-node.md}
BUCKET=bench
# moto answers unsigned GETs of objects with 403: sign requests to it (curl >= 7.75).
S3CURL=(curl -fs --max-time 60 --aws-sigv4 "aws:amz:us-east-1:s3" --user test:test)
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[node-numbers %s] %s\n' "$(date -u +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- prerequisites
if ! command -v wrk >/dev/null; then
    log "installing wrk"
    apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi
if ! python3 -c 'import moto.server' 2>/dev/null; then
    log "installing moto[server]"
    python3 -m pip install --quiet 'moto[server]'
fi
for tool in curl jq wrk python3; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

if [[ -n ${NEARCACHE_BIN:-} ]]; then
    BIN=$NEARCACHE_BIN
    log "using prebuilt $BIN (NEARCACHE_BIN), not building"
else
    log "building nearcache (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --release -p nearcache --quiet)
    BIN=$CARGO_TARGET_DIR/release/nearcache
fi
[[ -x $BIN ]] || die "no binary at $BIN"

WORK=$(mktemp -d "$BENCH_DIR/nearcache-node-bench.XXXXXX")
FSTYPE=$(df --output=fstype "$WORK" | tail -1)
[[ $FSTYPE == tmpfs ]] && log "warning: $WORK is on tmpfs: disk numbers will measure memory"

MOTO_PID=""
NC_PID=""
cleanup() {
    local rc=$?
    [[ -n $NC_PID ]] && kill "$NC_PID" 2>/dev/null && wait "$NC_PID" 2>/dev/null || true
    [[ -n $MOTO_PID ]] && kill "$MOTO_PID" 2>/dev/null && wait "$MOTO_PID" 2>/dev/null || true
    if [[ $rc -eq 0 && -z ${KEEP:-} ]]; then
        rm -rf "$WORK"
    else
        log "kept $WORK (logs: $WORK/*.log)"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() { # url, what
    for _ in $(seq 1 300); do
        curl -fs -o /dev/null "$1" && return 0
        sleep 0.1
    done
    die "$2 did not come up at $1"
}

# ---------------------------------------------------------------- moto
MOTO_PORT=$(free_port)
MOTO=http://127.0.0.1:$MOTO_PORT
log "starting moto on $MOTO"
# The interpreter itself, not a pyenv shim, so that $MOTO_PID is moto's pid.
PY=$(python3 -c 'import sys; print(sys.executable)')
"$PY" -m moto.server -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
MOTO_PID=$!
for _ in $(seq 1 300); do
    curl -s -o /dev/null "$MOTO/" && break
    sleep 0.1
done
curl -s -o /dev/null "$MOTO/" || die "moto did not come up"

# ---------------------------------------------------------------- nearcache
NC_PORT=$(free_port)
NC=http://127.0.0.1:$NC_PORT
NC_LOG=""
start_nc() { # data dir, log file
    NC_LOG=$2
    "$BIN" --listen "127.0.0.1:$NC_PORT" --data-dir "$1" --shards "$SHARDS" \
        --s3-endpoint "$MOTO" --s3-bucket "$BUCKET" --s3-access-key test --s3-secret-key test \
        --s3-path-style --s3-create-bucket \
        --memory-capacity 1GiB --disk-capacity 20GiB --log-level info >"$NC_LOG" 2>&1 &
    NC_PID=$!
    wait_http "$NC/healthz" nearcache
}
stop_nc() {
    kill -TERM "$NC_PID"
    local rc=0
    wait "$NC_PID" || rc=$?
    [[ $rc -eq 0 ]] || log "nearcache exited with status $rc after SIGTERM (log: $NC_LOG)"
    NC_PID=""
}

cpu_ticks() { # utime + stime of a pid, in clock ticks
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
rss_kb() { # field of /proc/<pid>/status, in kB
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}
stats_total() { # field of /api/v1/stats .total
    curl -fs "$NC/api/v1/stats" | jq -r ".total.$1"
}

# ---------------------------------------------------------------- wrk scripts
# Ids are ULIDs: "01JDB" + a 5-digit tag + 16 Crockford base32 digits of a counter, so
# every (tag, counter) names a distinct valid id, and get.lua can rotate over put.lua's.
cat >"$WORK/ids.lua" <<'EOF'
local alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
function make_id(tag, n)
  local digits = {}
  for k = 16, 1, -1 do
    local d = n % 32
    digits[k] = alphabet:sub(d + 1, d + 1)
    n = (n - d) / 32
  end
  return "01JDB" .. tag .. table.concat(digits)
end
function report(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d bytes=%d p50_us=%d p99_us=%d non2xx=%d sockerr=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
EOF
# put.lua TAG SIZE LEVEL [QUOTA IDFILE]: POST /api/v1/put with fresh ids. With a quota,
# appends every acknowledged id to IDFILE and, after QUOTA acks, touches $WORK/quota.done
# and stops (wrk_quota then interrupts wrk); extra requests are cheap GET /healthz.
# (wrk builds one request it never sends, so ids are taken from the answers.)
cat >"$WORK/put.lua" <<EOF
dofile("$WORK/ids.lua")
local tag, size, level, quota, idfile
local sent, done_ok = 0, 0
function init(args)
  tag, size, level = args[1], tonumber(args[2]), args[3]
  quota = tonumber(args[4] or "0")
  if args[5] then idfile = io.open(args[5], "a") end
  body = string.rep("x", size)
end
function request()
  if quota > 0 and done_ok >= quota then
    return wrk.format("GET", "/healthz")
  end
  local id = make_id(tag, sent)
  sent = sent + 1
  return wrk.format("POST", "/api/v1/put", {
    ["X-Meta-ID"] = id,
    ["X-Meta-ConsistencyLevel"] = level,
    ["Content-Type"] = "application/octet-stream",
  }, body)
end
function response(status, headers, body)
  if quota == 0 or done_ok >= quota then return end
  -- Only PUT answers carry X-Meta-ID (hyper sends header names in lower case).
  local id = headers["x-meta-id"] or headers["X-Meta-ID"]
  if status == 200 and id then
    done_ok = done_ok + 1
    if idfile then idfile:write(id, "\n") end
    if done_ok >= quota then
      if idfile then idfile:close(); idfile = nil end
      io.open("$WORK/quota.done", "w"):close()
      wrk.thread:stop()
    end
  end
end
done = report
EOF
# get.lua IDFILE [QUOTA [delete]]: GET the ids listed in IDFILE round robin (with
# "delete": DELETE them at level 0); with a quota, stops after QUOTA responses.
cat >"$WORK/get.lua" <<EOF
dofile("$WORK/ids.lua")
local ids, n, quota, delete
local i, got = 0, 0
function init(args)
  ids, n = {}, 0
  for line in io.lines(args[1]) do n = n + 1; ids[n] = line end
  quota = tonumber(args[2] or "0")
  delete = args[3] == "delete"
end
function request()
  local id = ids[(i % n) + 1]
  i = i + 1
  if delete then
    return wrk.format("DELETE", "/api/v1/delete/" .. id, { ["X-Meta-ConsistencyLevel"] = "0" })
  end
  return wrk.format("GET", "/api/v1/get/" .. id)
end
function response(status, headers, body)
  got = got + 1
  if quota > 0 and got == quota then
    io.open("$WORK/quota.done", "w"):close()
    wrk.thread:stop()
  end
end
done = report
EOF

# Runs wrk once against nearcache with server CPU accounting; prints one line:
# "req_s mb_s p50_ms p99_ms req_per_cpu_s non2xx sockerr".
wrk_measure() { # lua script, wrk args after --
    local script=$1
    shift
    local c0 c1 out
    c0=$(cpu_ticks "$NC_PID")
    out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$script" "$NC" -- "$@")
    c1=$(cpu_ticks "$NC_PID")
    echo "$out" >>"$WORK/wrk.log"
    echo "$out" | awk -v c0="$c0" -v c1="$c1" -v tck="$CLK_TCK" '/^RESULT/ {
        for (k = 2; k <= NF; k++) { split($k, kv, "="); r[kv[1]] = kv[2] }
        secs = r["duration_us"] / 1e6; cpu = (c1 - c0) / tck
        printf "%.0f %.1f %.3f %.3f %.0f %d %d\n", r["requests"] / secs, r["bytes"] / 1e6 / secs,
            r["p50_us"] / 1e3, r["p99_us"] / 1e3, (cpu > 0 ? r["requests"] / cpu : 0), r["non2xx"], r["sockerr"]
    }'
}
# Seeds or reads with a quota (wrk stops once it is reached); -d bounds it anyway. A long
# --timeout: a PUT that wrk gives up on is cancelled by the server and its id never stored.
wrk_quota() { # duration, lua script, args...
    local d=$1 script=$2 pid
    shift 2
    rm -f "$WORK/quota.done"
    wrk -t1 -c"$CONNS" -d"$d" --timeout 60s -s "$script" "$NC" -- "$@" >"$WORK/wrk-quota.out" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null && [[ ! -e $WORK/quota.done ]]; do sleep 0.1; done
    kill -INT "$pid" 2>/dev/null || true
    wait "$pid" || true
    tee -a "$WORK/wrk.log" <"$WORK/wrk-quota.out" | grep '^RESULT' >&2 || true
}
# Median row over RUNS wrk_measure lines (column-wise medians).
median_rows() {
    python3 -c '
import sys, statistics as st
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
cols = list(zip(*rows))
med = [st.median(c) for c in cols]
rng = (min(cols[0]), max(cols[0]))
print("%.0f %.0f %.0f %.1f %.3f %.3f %.0f %d %d" % (med[0], rng[0], rng[1], med[1], med[2], med[3], med[4], sum(cols[5]), sum(cols[6])))'
}
ROWS=""
add_row() { # label, median line
    read -r rps lo hi mbs p50 p99 rpc non2xx sockerr <<<"$2"
    ROWS+="| $1 | $rps | $lo–$hi | $mbs | $p50 | $p99 | $rpc | $non2xx / $sockerr |"$'\n'
}

# ================================================================ node 1: a, b, c
start_nc "$WORK/data1" "$WORK/nearcache-1.log"
log "nearcache pid $NC_PID on $NC, $SHARDS shards, data in $WORK/data1 ($FSTYPE)"

# ---- a. hot GET
log "a. seeding 1000 × 4KiB and 100 × 1MiB at level 0"
wrk_quota 120s "$WORK/put.lua" 00001 4096 0 1000 "$WORK/ids-4k"
wrk_quota 120s "$WORK/put.lua" 00002 1048576 0 100 "$WORK/ids-1m"
[[ $(stats_total objects) -ge 1100 ]] || die "expected 1100 objects after seeding, stats say $(stats_total objects)"
log "a. warming (one read of each object)"
wrk_quota 60s "$WORK/get.lua" "$WORK/ids-4k" 1000
wrk_quota 60s "$WORK/get.lua" "$WORK/ids-1m" 100
log "a. memory tier after warming: $(stats_total memory_objects) objects, $(stats_total memory_bytes) bytes"
for spec in "4 KiB:ids-4k" "1 MiB:ids-1m"; do
    IFS=: read -r label idfile <<<"$spec"
    lines=""
    for r in $(seq 1 "$RUNS"); do
        line=$(wrk_measure "$WORK/get.lua" "$WORK/$idfile")
        log "a. hot GET $label run $r: $line"
        lines+="$line"$'\n'
    done
    add_row "hot GET $label" "$(printf '%s' "$lines" | median_rows)"
done

# ---- b. cold miss vs direct S3 GET
log "b. putting ${COLD_OBJECTS} × 4KiB and ${COLD_OBJECTS} × 1MiB straight into moto"
head -c 4096 /dev/urandom >"$WORK/obj-4k"
head -c 1048576 /dev/urandom >"$WORK/obj-1m"
COLD=""
for spec in "4 KiB:obj-4k:3" "1 MiB:obj-1m:4"; do
    IFS=: read -r label file tagd <<<"$spec"
    : >"$WORK/cold-direct" && : >"$WORK/cold-miss" && : >"$WORK/cold-hit"
    for i in $(seq 0 $((COLD_OBJECTS - 1))); do
        id=$(printf '01JDB0000%s%016d' "$tagd" "$i")
        "${S3CURL[@]}" -o /dev/null -H 'Content-Type: application/octet-stream' -T "$WORK/$file" \
            "$MOTO/$BUCKET/$id" || die "PUT to moto failed for $id"
    done
    # Interleaved: direct GET of the object from moto, then the first GET through
    # nearcache (a miss: read-through), then a second one (a hit), same object.
    for i in $(seq 0 $((COLD_OBJECTS - 1))); do
        id=$(printf '01JDB0000%s%016d' "$tagd" "$i")
        # Both write the body to a file: the miss's bytes are compared below, and a
        # direct GET to /dev/null would skip the write the miss pays for.
        "${S3CURL[@]}" -o "$WORK/got-direct" -w '%{time_total}\n' "$MOTO/$BUCKET/$id" >>"$WORK/cold-direct"
        curl -fs --max-time 60 -o "$WORK/got" -w '%{time_total}\n' "$NC/api/v1/get/$id" >>"$WORK/cold-miss" \
            || die "GET $id through nearcache failed"
        cmp -s "$WORK/got" "$WORK/$file" || die "read-through of $id returned different bytes"
        curl -fs --max-time 60 -o /dev/null -w '%{time_total}\n' "$NC/api/v1/get/$id" >>"$WORK/cold-hit"
    done
    COLD+=$(python3 - "$label" "$WORK/cold-direct" "$WORK/cold-miss" "$WORK/cold-hit" <<'EOF'
import sys, statistics as st
label, paths = sys.argv[1], sys.argv[2:]
def q(path):
    v = sorted(float(x) * 1e3 for x in open(path) if x.strip())
    return st.median(v), v[min(len(v) - 1, int(0.9 * len(v)))]
(dm, d9), (mm, m9), (hm, h9) = (q(p) for p in paths)
print(f"| {label} | {dm:.2f} | {d9:.2f} | {mm:.2f} | {m9:.2f} | {mm - dm:+.2f} | {m9 - d9:+.2f} | {hm:.2f} | {h9:.2f} |")
EOF
)$'\n'
    log "b. $label done"
done
MISSES=$(stats_total misses)

# ---- c. PUT 4 KiB, level 0 and level 1 (level 1 last: it queues uploads to moto)
for level in 0 1; do
    lines=""
    for r in $(seq 1 "$RUNS"); do
        line=$(wrk_measure "$WORK/put.lua" "1${level}00$r" 4096 "$level")
        log "c. PUT 4 KiB level $level run $r: $line"
        lines+="$line"$'\n'
    done
    add_row "PUT 4 KiB level $level" "$(printf '%s' "$lines" | median_rows)"
done
PENDING_AFTER_L1=$(stats_total pending_uploads)

stop_nc

# ================================================================ node 2: d, e
log "d/e. fresh node for recovery and memory per object"
start_nc "$WORK/data2" "$WORK/nearcache-2.log"
sleep 1
RSS0=$(rss_kb "$NC_PID" VmRSS)
ANON0=$(rss_kb "$NC_PID" RssAnon)
log "d. seeding $RECOVERY_OBJECTS × 1KiB at level 0"
t0=$(date +%s.%N)
wrk_quota 900s "$WORK/put.lua" 00009 1024 0 "$RECOVERY_OBJECTS" "$WORK/ids-rec"
t1=$(date +%s.%N)
SEEDED=$(stats_total objects)
[[ $SEEDED -ge $RECOVERY_OBJECTS ]] || die "expected $RECOVERY_OBJECTS objects after seeding, stats say $SEEDED"
RSS_SEEDED=$(rss_kb "$NC_PID" VmRSS)
stop_nc
log "d. restarting"
r0=$(date +%s.%N)
start_nc "$WORK/data2" "$WORK/nearcache-3.log"
r1=$(date +%s.%N)
sleep 1
strip() { sed -r 's/\x1b\[[0-9;]*m//g' "$1"; }
RECOVERY_LINE=$(strip "$NC_LOG" | grep 'recovery complete' | head -1)
SHARD_LINES=$(strip "$NC_LOG" | grep 'shard recovered' || true)
REC_MS=$(sed -nr 's/.*elapsed_ms=([0-9]+).*/\1/p' <<<"$RECOVERY_LINE")
REC_OBJ=$(sed -nr 's/.* objects=([0-9]+).*/\1/p' <<<"$RECOVERY_LINE")
RSS_IDX=$(rss_kb "$NC_PID" VmRSS)
ANON_IDX=$(rss_kb "$NC_PID" RssAnon)
log "e. reading all $RECOVERY_OBJECTS objects once (memory tier fill)"
wrk_quota 900s "$WORK/get.lua" "$WORK/ids-rec" "$RECOVERY_OBJECTS"
MEM_OBJ=$(stats_total memory_objects)
RSS_MEM=$(rss_kb "$NC_PID" VmRSS)
ANON_MEM=$(rss_kb "$NC_PID" RssAnon)
log "f. deleting all $RECOVERY_OBJECTS objects (level 0)"
t2=$(date +%s.%N)
wrk_quota 900s "$WORK/get.lua" "$WORK/ids-rec" "$RECOVERY_OBJECTS" delete
t3=$(date +%s.%N)
LEFT=$(stats_total objects)
stop_nc
log "f. restarting with the tombstones ($LEFT objects left)"
start_nc "$WORK/data2" "$WORK/nearcache-4.log"
sleep 1
TOMBS=$(stats_total tombstones)
ANON_TOMB=$(rss_kb "$NC_PID" RssAnon)
RSS_TOMB=$(rss_kb "$NC_PID" VmRSS)
stop_nc

# ================================================================ report
per_obj() { python3 -c "print(f'{($1 - $2) * 1024 / $3:.0f}')"; }
mkdir -p "$(dirname "$OUT")"
{
    echo "# nearcache node numbers, $DATE"
    echo
    echo "Command: \`bench/node-numbers.sh\` (SHARDS=$SHARDS RUNS=$RUNS DURATION=$DURATION CONNS=$CONNS" \
        "RECOVERY_OBJECTS=$RECOVERY_OBJECTS COLD_OBJECTS=$COLD_OBJECTS), commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        "plus uncommitted changes if any; binary $BIN (modified $(date -u -r "$BIN" '+%F %T UTC'))."
    echo
    echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM," \
        "kernel $(uname -r), data dir on $FSTYPE ($(df --output=source "$WORK" | tail -1))." \
        "Loopback only: wrk, curl, moto (Python) and nearcache ($SHARDS shards) share the same cores," \
        "and the cores are shared with other work on the machine: **noise is large, compare only runs taken side by side.**"
    echo
    echo "## a, c. Hot GET and PUT (wrk -t1 -c$CONNS -d$DURATION, medians of $RUNS runs)"
    echo
    echo "Hot GET: ids seeded at level 0 and read once before measuring, so every GET is a memory-tier hit;"
    echo "wrk rotates over 1000 (4 KiB) or 100 (1 MiB) ids. PUT: fresh ULID per request, 4096-byte body;"
    echo "level 0 = local only, level 1 = local + queued for upload to moto (uploads run during and after"
    echo "the runs: $PENDING_AFTER_L1 still pending when the level-1 runs ended). Server CPU = utime+stime of the"
    echo "nearcache pid over the run (all shard threads, journal writers and the S3 thread)."
    echo
    echo "| test | req/s | req/s min–max | MB/s | p50 ms | p99 ms | req per server CPU-s | non-2xx / socket errors (sum) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s' "$ROWS"
    echo
    echo "## b. Cold miss (read-through from moto) vs direct S3 GET"
    echo
    echo "$COLD_OBJECTS objects per size put straight into moto; for each: a direct GET from moto, then the first"
    echo "GET through nearcache (a miss, read through and stored), then a second GET through nearcache (a hit)."
    echo "curl \`time_total\` per request (new process and connection each time, for both; the direct GET is"
    echo "SigV4-signed by curl, nearcache signs its own GET to moto). Measured before the level-1 PUT runs,"
    echo "so no uploads compete with it. ms."
    echo
    echo "| size | direct p50 | direct p90 | miss p50 | miss p90 | miss − direct p50 | miss − direct p90 | hit p50 | hit p90 |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s' "$COLD"
    echo
    echo "nearcache counted $MISSES misses on node 1 (expected $((2 * COLD_OBJECTS)))."
    echo
    echo "## d. Recovery of $RECOVERY_OBJECTS × 1 KiB objects"
    echo
    echo "Seeded at level 0 on a fresh node with wrk PUTs in $(python3 -c "print(f'{$t1 - $t0:.1f}')") s" \
        "($(python3 -c "print(f'{$RECOVERY_OBJECTS / ($t1 - $t0):.0f}')") PUT/s), then SIGTERM and restart."
    echo
    echo "| objects recovered | recovery elapsed_ms (log) | exec → /healthz ok |"
    echo "|---:|---:|---:|"
    echo "| $REC_OBJ | $REC_MS | $(python3 -c "print(f'{($r1 - $r0) * 1e3:.0f} ms')") |"
    echo
    echo "Start-up log lines:"
    echo
    echo '```'
    echo "$RECOVERY_LINE"
    echo "$SHARD_LINES"
    echo '```'
    echo
    echo "## e. Memory per cached object ($RECOVERY_OBJECTS × 1 KiB)"
    echo
    echo "RSS from /proc/<pid>/status. Baseline: the same node just started on an empty data dir."
    echo "Index only: after the restart (recovery loaded the index; LMDB pages touched by recovery"
    echo "count in VmRSS as file-backed memory, RssAnon excludes them). Index + memory tier: after one GET"
    echo "of every object ($MEM_OBJ objects in the memory tier afterwards, 1 GiB tier)."
    echo
    echo "| state | VmRSS KiB | RssAnon KiB | VmRSS bytes/object over baseline | RssAnon bytes/object over baseline |"
    echo "|---|---:|---:|---:|---:|"
    echo "| fresh start, 0 objects | $RSS0 | $ANON0 | – | – |"
    echo "| after seeding (same process) | $RSS_SEEDED | – | $(per_obj "$RSS_SEEDED" "$RSS0" "$RECOVERY_OBJECTS") | – |"
    echo "| after restart: index only | $RSS_IDX | $ANON_IDX | $(per_obj "$RSS_IDX" "$RSS0" "$RECOVERY_OBJECTS") | $(per_obj "$ANON_IDX" "$ANON0" "$RECOVERY_OBJECTS") |"
    echo "| after reading all once: index + memory tier | $RSS_MEM | $ANON_MEM | $(per_obj "$RSS_MEM" "$RSS0" "$RECOVERY_OBJECTS") | $(per_obj "$ANON_MEM" "$ANON0" "$RECOVERY_OBJECTS") |"
    echo
    echo "The memory-tier figure includes the 1 KiB body itself, and also whatever the $CONNS wrk connections"
    echo "and the read path left allocated (hyper connection buffers, allocator caches), spread over the"
    echo "objects; the difference between the two rows is an upper bound on the memory tier's cost per object."
    echo "Seeding stops after $RECOVERY_OBJECTS acknowledged PUTs; PUTs already in flight then also land,"
    echo "hence slightly more objects than that in d."
    echo
    echo "## f. Memory per tombstone"
    echo
    echo "Every object of d deleted at level 0 with wrk DELETEs ($(python3 -c "print(f'{$RECOVERY_OBJECTS / ($t3 - $t2):.0f}')") DELETE/s; $LEFT objects left), then a restart:"
    echo "the index then holds $TOMBS tombstones and nothing else. Baseline as in e."
    echo
    echo "| state | VmRSS KiB | RssAnon KiB | RssAnon bytes/tombstone over baseline |"
    echo "|---|---:|---:|---:|"
    echo "| after restart: $TOMBS tombstones | $RSS_TOMB | $ANON_TOMB | $(per_obj "$ANON_TOMB" "$ANON0" "$TOMBS") |"
} >"$OUT"

log "wrote $OUT"
cat "$OUT"

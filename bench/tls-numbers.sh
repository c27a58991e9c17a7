#!/usr/bin/env bash
# What TLS costs a hot read, in one run:
#
#     bench/tls-numbers.sh
#
# Starts two nodes from the same release build on loopback, one plain HTTP and one with
# TLS on its public listener (a certificate made here with openssl), both with the
# embedded origin; seeds the same N × 4 KiB objects at level 0 into each and reads them
# once (memory tier); then runs wrk (HTTP/1.1 keep-alive; over TLS one handshake per
# connection) against plain and TLS alternately, RUNS times, and writes medians of req/s,
# p50/p99 and requests per server CPU-second (utime+stime of that node's pid from /proc)
# to bench/results/<date>-tls.md. Then the cost of signing node-to-node requests with
# the cluster secret (the hmac_cost measurement, release build).
#
# Environment knobs [defaults]: SHARDS [2], RUNS [3], DURATION [10s], CONNS [64],
# OBJECTS [1000], BENCH_DIR [/var/tmp], CARGO_TARGET_DIR [<repo>/target/h-bench], OUT,
# NEARCACHE_BIN (use this binary instead of building).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARDS=${SHARDS:-2}
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
OBJECTS=${OBJECTS:-1000}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/h-bench}
DATE=$(date -u +%F)
OUT=${OUT:-$ROOT/bench/results/$DATE-tls.md}
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[tls-numbers %s] %s\n' "$(date -u +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

if ! command -v wrk >/dev/null; then
    log "installing wrk"
    apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi
for tool in curl wrk openssl python3; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
if [[ -n ${NEARCACHE_BIN:-} ]]; then
    BIN=$NEARCACHE_BIN
else
    log "building nearcache (release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$ROOT" && cargo build --release -p nearcache --bin nearcache --quiet)
    BIN=$CARGO_TARGET_DIR/release/nearcache
fi
[[ -x $BIN ]] || die "no binary at $BIN"

WORK=$(mktemp -d "$BENCH_DIR/nearcache-tls-bench.XXXXXX")
PIDS=()
cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    if [[ $rc -eq 0 ]]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT

log "certificates (test CA, leaf for 127.0.0.1)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench-ca -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$WORK/node.key" -out "$WORK/node.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$WORK/ext"
openssl x509 -req -in "$WORK/node.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" \
    -CAcreateserial -days 2 -extfile "$WORK/ext" -out "$WORK/node.crt" 2>/dev/null

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() { # name, extra args...
    local name=$1; shift
    local p s3
    p=$(port); s3=$(port)
    "$BIN" --listen "127.0.0.1:$p" --s3-listen "127.0.0.1:$s3" --shards "$SHARDS" \
        --data-dir "$WORK/$name" --log-level warn "$@" >/dev/null 2>"$WORK/$name.log" &
    echo "$! $p"
}
read -r PLAIN_PID PLAIN_PORT < <(start plain)
read -r TLS_PID TLS_PORT < <(start tls --tls-cert "$WORK/node.crt" --tls-key "$WORK/node.key")
PIDS+=("$PLAIN_PID" "$TLS_PID")
PLAIN="http://127.0.0.1:$PLAIN_PORT"
TLS="https://127.0.0.1:$TLS_PORT"
for url in "$PLAIN" "$TLS"; do
    for _ in $(seq 100); do
        curl -fs --cacert "$WORK/ca.crt" "$url/healthz" >/dev/null && break
        sleep 0.1
    done
    curl -fs --cacert "$WORK/ca.crt" "$url/healthz" >/dev/null || die "$url did not come up"
done

log "seeding $OBJECTS × 4 KiB at level 0 into both, reading each once"
python3 - "$WORK" "$OBJECTS" "$PLAIN_PORT" "$TLS_PORT" <<'EOF'
import http.client, os, ssl, sys
work, n, plain, tls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ctx = ssl.create_default_context(cafile=f"{work}/ca.crt")
conns = [http.client.HTTPConnection("127.0.0.1", plain),
         http.client.HTTPSConnection("127.0.0.1", tls, context=ctx)]
def req(c, method, path, body=None, headers={}):
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse(); data = r.read()
    assert r.status == 200, (method, path, r.status, data[:200])
    return data
ids = []
for i in range(n):
    body = os.urandom(4096)
    oid = req(conns[0], "GET", "/api/v1/id").decode()
    for c in conns:
        req(c, "POST", "/api/v1/put", body, {"X-Meta-ID": oid, "X-Meta-ConsistencyLevel": "0"})
        assert req(c, "GET", f"/api/v1/get/{oid}") == body
    ids.append(oid)
open(f"{work}/ids", "w").write("\n".join(ids) + "\n")
EOF

cat >"$WORK/get.lua" <<'EOF'
local ids, n, i = {}, 0, 0
function init(args)
  for line in io.lines(args[1]) do n = n + 1; ids[n] = line end
  i = math.random(n)
end
function request()
  i = i + 1
  return wrk.format("GET", "/api/v1/get/" .. ids[(i % n) + 1])
end
function response(status)
  if status ~= 200 then error("status " .. status) end
end
EOF

cpu() { awk -v t="$CLK_TCK" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"; }
# One wrk run: "req/s p50_ms p99_ms req_per_cpu_s".
measure() { # url, pid
    local before after out
    before=$(cpu "$2")
    out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$WORK/get.lua" "$1" -- "$WORK/ids")
    after=$(cpu "$2")
    python3 - "$before" "$after" <<EOF
import re, sys
out = """$out"""
def ms(v, u): return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
total = int(re.search(r"(\d+) requests in", out).group(1))
p50 = ms(*re.search(r"50%\s+([\d.]+)(us|ms|s)", out).groups())
p99 = ms(*re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups())
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
assert errors is None, out
cpu = float(sys.argv[2]) - float(sys.argv[1])
print(f"{rps:.0f} {p50:.2f} {p99:.2f} {total / cpu:.0f}")
EOF
}

declare -a PLAIN_RUNS TLS_RUNS
for r in $(seq "$RUNS"); do
    log "run $r/$RUNS: plain"
    PLAIN_RUNS+=("$(measure "$PLAIN" "$PLAIN_PID")")
    log "run $r/$RUNS: TLS"
    TLS_RUNS+=("$(measure "$TLS" "$TLS_PID")")
    log "plain ${PLAIN_RUNS[-1]} | TLS ${TLS_RUNS[-1]}"
done

log "node-to-node signature cost (release test build)"
HMAC=$(cd "$ROOT" && cargo test --release -p nearcache --lib cluster::auth::tests::hmac_cost \
    -- --ignored --nocapture 2>&1 | grep 'node-to-node request signature' || echo "not measured")

median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
col() { local i=$1; shift; for x in "$@"; do echo "$x" | awk -v i="$i" '{ print $i }'; done; }
row() { # label, runs...
    local label=$1; shift
    printf '| %s | %s | %s | %s | %s |\n' "$label" \
        "$(median $(col 1 "$@"))" "$(median $(col 2 "$@"))" "$(median $(col 3 "$@"))" "$(median $(col 4 "$@"))"
}
{
    echo "# TLS and cluster-secret costs ($DATE)"
    echo
    echo "\`bench/tls-numbers.sh\` (SHARDS=$SHARDS RUNS=$RUNS DURATION=$DURATION CONNS=$CONNS"
    echo "OBJECTS=$OBJECTS), $(nproc) cores, $(uname -r); wrk -t1 -c$CONNS, HTTP/1.1 keep-alive,"
    echo "hot 4 KiB GETs from the memory tier; plain and TLS runs alternate. TLS: rustls"
    echo "(aws-lc-rs), TLS 1.3, ECDSA P-256 certificate; wrk's OpenSSL client."
    echo
    echo "| hot GET 4 KiB (median of $RUNS) | req/s | p50 ms | p99 ms | req per server CPU-s |"
    echo "|---|---|---|---|---|"
    row plain "${PLAIN_RUNS[@]}"
    row TLS "${TLS_RUNS[@]}"
    echo
    echo "Every run (req/s, p50 ms, p99 ms, req per CPU-s): plain: $(IFS='; '; echo "${PLAIN_RUNS[*]}");"
    echo "TLS: $(IFS='; '; echo "${TLS_RUNS[*]}")."
    echo
    echo "Cluster secret, per node-to-node request (\`hmac_cost\`, release): $HMAC"
} >"$OUT"
log "wrote $OUT"
cat "$OUT"

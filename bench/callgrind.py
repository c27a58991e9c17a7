#!/usr/bin/env python3
"""Instructions per request on nearcache's hot paths, counted by callgrind.

Wall-clock numbers on the shared 2-core box move by 10-30% between runs; instruction counts
do not (same binary, same requests: the same count within a fraction of a percent), so an
A/B of a hot-path change is read here, and the req/s of bench/compare.sh says what it is
worth. One node (1 shard, moto as its origin) runs under `valgrind --tool=callgrind`; for
each case the counters are zeroed, N requests are sent one after another over one
keep-alive connection, and the counters dumped: instructions / N, every thread of the
server counted (shard, journal and origin threads alike), user space only (the kernel's
share of a request, about two thirds of a hot GET's CPU, is not in these counts).

    cargo build --release -p nearcache -p nearcache-loadtest
    bench/callgrind.py [--bin target/release/nearcache] [--requests 2000] [--out DIR]

Cases: hot 4 KiB GET through the native API, through the S3 API header-signed and
presigned (signed by botocore), a native level-0 4 KiB PUT, and a native 4 KiB GET of a
key the cache does not hold (read-through from moto, origin time not counted: moto is
another process). Writes results.md and the raw callgrind files (callgrind_annotate reads
them) to --out. The server runs on the epoll driver (`server.io = "epoll"`): valgrind
cannot follow io_uring's shared rings, so syscall counts differ from production; the user-
space work per request (parsing, routing, signing, the index, rendering) is the same code.
"""
import argparse
import glob
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wrk_run import signed  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "bench"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# The software SHA-256 block function valgrind runs instead of SHA-NI.
SHA_SOFT = "sha2::sha256::soft"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, proc, what, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode} before it served")
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except Exception:
            time.sleep(0.2)
    sys.exit(f"{what} did not answer {url} within {timeout} s")


def make_id(tag, n):
    digits = []
    for _ in range(16):
        digits.append(CROCKFORD[n % 32])
        n //= 32
    return "01JDB" + tag + "".join(reversed(digits))


class Conn:
    """One keep-alive HTTP/1.1 connection; every answer is read whole and checked."""

    def __init__(self, port):
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def send(self, method, path, headers=None, body=None, want=200):
        self.c.request(method, path, body=body, headers=headers or {})
        r = self.c.getresponse()
        data = r.read()
        if r.status != want:
            sys.exit(f"{method} {path}: {r.status} (wanted {want}): {data[:300]!r}")
        return r, data


def callgrind_control(*args):
    p = subprocess.run(["callgrind_control", *args], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"callgrind_control {' '.join(args)} failed: {p.stderr or p.stdout}")


def total_ir(path):
    with open(path) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    sys.exit(f"no totals in {path}")


def self_ir(path, name_part):
    """Instructions spent in functions whose name contains `name_part` (self cost)."""
    names, fn, total, skip = {}, None, 0, False
    with open(path) as f:
        for line in f:
            if line.startswith(("fn=", "cfn=")):
                ref, _, name = line.rstrip("\n").partition(")")
                ref = ref.split("(")[1]
                if name.strip():
                    names[ref] = name.strip()
                if line.startswith("fn="):
                    fn = names.get(ref, "")
                continue
            if line.startswith("calls="):
                skip = True
                continue
            if line[:1].isdigit() or line[:1] in ("+", "-", "*"):
                if skip:
                    skip = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and fn and name_part in fn:
                    total += int(parts[1])
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/nearcache"))
    ap.add_argument("--loadtest", default=os.path.join(ROOT, "target/release/nearcache-loadtest"))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results", time.strftime("%Y-%m-%d") + "-callgrind"))
    ap.add_argument("--label", default="", help="written beside the numbers (e.g. the commit)")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is required (apt-get install valgrind)")
    n = args.requests
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="nc-callgrind-")
    procs = []
    try:
        p_s3, p_nc, p_nc_s3 = free_port(), free_port(), free_port()
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(p_s3)],
                                stdout=open(os.path.join(work, "moto.log"), "w"), stderr=subprocess.STDOUT)
        procs.append(moto)
        wait_http(f"http://127.0.0.1:{p_s3}/", moto, "moto", 60)
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{p_s3}/{BUCKET}", method="PUT")).read()
        manifest = os.path.join(work, "manifest.json")
        subprocess.run([args.loadtest, "seed", "--target", f"http://127.0.0.1:{p_s3}", "--api", "s3",
                        "--bucket", BUCKET, "--size", "4KiB", "--objects", "200", "--seed", "7",
                        "--connections", "8", "--manifest", manifest, "--quiet", "--fail-on-error"],
                       check=True, stdout=subprocess.DEVNULL)
        objs = [o for o in json.load(open(manifest))["objects"]]
        hot, cold = objs[:100], objs[100:]

        with open(os.path.join(work, "nc.toml"), "w") as f:
            f.write('[server]\nio = "epoll"\n\n[store]\nlmdb_map_size = "256MiB"\n\n'
                    '[[s3api.keys]]\naccess_key = "bench"\nsecret_key = "bench-secret"\n')
        out_base = os.path.join(args.out, "callgrind.out")
        for old in glob.glob(out_base + "*"):
            os.remove(old)
        nc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_base}.%p",
             "--dump-instr=no", "--collect-systime=no", "--vgdb=yes",
             args.bin, "--config", os.path.join(work, "nc.toml"),
             "--listen", f"127.0.0.1:{p_nc}", "--s3-listen", f"127.0.0.1:{p_nc_s3}",
             "--data-dir", os.path.join(work, "data"), "--shards", "1",
             "--s3-endpoint", f"http://127.0.0.1:{p_s3}", "--s3-bucket", BUCKET,
             "--s3-access-key", "test", "--s3-secret-key", "test", "--s3-path-style",
             "--memory-capacity", "256MiB", "--disk-capacity", "1GiB", "--log-level", "warn"],
            stdout=open(os.path.join(work, "nearcache.log"), "w"), stderr=subprocess.STDOUT)
        procs.append(nc)
        wait_http(f"http://127.0.0.1:{p_nc}/healthz", nc, "nearcache under callgrind")

        native = Conn(p_nc)
        s3 = Conn(p_nc_s3)
        url = f"http://127.0.0.1:{p_nc_s3}"
        header_reqs = [signed(argparse.Namespace(access_key="bench", secret_key="bench-secret",
                                                 region="us-east-1", sign="header"),
                              url, f"/{BUCKET}/{o['key']}") for o in hot]
        presigned = [signed(argparse.Namespace(access_key="bench", secret_key="bench-secret",
                                               region="us-east-1", sign="presign"),
                            url, f"/{BUCKET}/{o['key']}")[0] for o in hot]
        # Warm: every hot object read through once, then served from the cache; every
        # request kind sent once so that lazily built state is not counted.
        for _ in range(2):
            for o in hot:
                native.send("GET", f"/api/v1/get/{o['id']}")
        for (path, headers), p in zip(header_reqs, presigned):
            s3.send("GET", path, headers)
            s3.send("GET", p)
        body = b"x" * 4096
        put_headers = {"X-Meta-ConsistencyLevel": "0", "Content-Type": "application/octet-stream"}
        for i in range(20):
            native.send("POST", "/api/v1/put", {**put_headers, "X-Meta-ID": make_id("0000W", i)}, body)

        def put(i):
            native.send("POST", "/api/v1/put", {**put_headers, "X-Meta-ID": make_id("0000P", i)}, body)

        cases = [
            ("native GET 4 KiB, hot", lambda i: native.send("GET", f"/api/v1/get/{hot[i % len(hot)]['id']}")),
            ("S3 GET 4 KiB, hot, header-signed", lambda i: s3.send("GET", *header_reqs[i % len(hot)])),
            ("S3 GET 4 KiB, hot, presigned", lambda i: s3.send("GET", presigned[i % len(hot)])),
            ("native PUT 4 KiB, level 0", put),
        ]
        rows = []
        pid = str(nc.pid)
        for name, run in cases:
            callgrind_control("-z", pid)
            for i in range(n):
                run(i)
            before = set(glob.glob(f"{out_base}.{pid}*"))
            callgrind_control("-d", name.replace(" ", "_").replace(",", ""), pid)
            dumped = sorted(set(glob.glob(f"{out_base}.{pid}*")) - before)
            if not dumped:
                sys.exit(f"callgrind wrote no dump for {name}")
            ir = total_ir(dumped[-1])
            sha = self_ir(dumped[-1], SHA_SOFT)
            rows.append((name, n, ir, sha, os.path.basename(dumped[-1])))
            print(f"{name}: {ir / n:,.0f} instructions per request, {(ir - sha) / n:,.0f} without SHA-256",
                  flush=True)
        # A miss: each cold object once (moto's time is another process's).
        callgrind_control("-z", pid)
        for o in cold:
            native.send("GET", f"/api/v1/get/{o['id']}")
        before = set(glob.glob(f"{out_base}.{pid}*"))
        callgrind_control("-d", "native_GET_miss", pid)
        dumped = sorted(set(glob.glob(f"{out_base}.{pid}*")) - before)
        ir = total_ir(dumped[-1])
        rows.append(("native GET 4 KiB, miss (read-through)", len(cold), ir, self_ir(dumped[-1], SHA_SOFT),
                     os.path.basename(dumped[-1])))
        print(f"miss: {ir / len(cold):,.0f} instructions per request", flush=True)

        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(f"# Instructions per request (callgrind){' — ' + args.label if args.label else ''}\n\n")
            f.write(f"`bench/callgrind.py --requests {n}` on {time.strftime('%Y-%m-%d')}: one node, 1 shard, "
                    "epoll driver, moto origin, requests one after another over one keep-alive connection. "
                    "Every thread of the server, user space only.\n\n")
            f.write("| case | requests | instructions | per request | per request without SHA-256 | dump |\n"
                    "|---|---|---|---|---|---|\n")
            for name, count, ir, sha, dump in rows:
                f.write(f"| {name} | {count} | {ir:,} | **{ir / count:,.0f}** | {(ir - sha) / count:,.0f} | {dump} |\n")
            f.write("\nSHA-256 runs in software under valgrind (it does not offer the CPU's SHA extensions), "
                    "about 1,700 instructions per 64-byte block where SHA-NI takes about a tenth of that, "
                    "so SigV4's hashing is counted apart; the MD5 of a PUT's ETag is counted as natively.\n")
            f.write("\n`callgrind_annotate <dump>` lists where the instructions go.\n")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

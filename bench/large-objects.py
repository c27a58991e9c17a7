#!/usr/bin/env python3
"""Large objects through nearcache beside a direct S3 GET of the same object, in one run.

    bench/large-objects.py --bin target/release/nearcache [--big-mib 1024] [--runs 3]

Starts moto (the S3 origin) on loopback, puts a 64 MiB object and a BIG object (1 GiB by
default) into it, then for each mode starts a fresh nearcache (empty data dir: every
read is cold) and measures, each run on a fresh node:

  a. cold full GET of the 64 MiB object (curl: time to first byte and total), its MD5
     checked, and the origin body bytes nearcache received (/metrics);
  b. cold 4 KiB range of the BIG object at 70 % of its size, the same.

Modes: `chunked` ([chunks] threshold 16MiB, chunk_size 8MiB, fetch_concurrency 4) and
`whole` ([chunks] enabled = false: one whole-object GET per miss, as before chunking).
`direct` is the same request signed straight to moto. Writes a markdown table to
--out (default bench/results/<date>-large-objects.md). Stops everything it started.
"""
import argparse
import datetime
import hashlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

MIB = 1 << 20


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_http(url, what, secs=60):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    sys.exit(f"{what} did not come up at {url}")


def curl(url, rng=None, sign=False):
    """(ttfb s, total s, md5 hex, bytes) of one GET."""
    cmd = ["curl", "-s", "--max-time", "600", "-o", "-", "-w", "\n%{time_starttransfer} %{time_total} %{http_code}"]
    if sign:
        cmd += ["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", "test:test"]
    if rng:
        cmd += ["-H", f"Range: bytes={rng[0]}-{rng[1]}"]
    out = subprocess.run(cmd + [url], capture_output=True, check=True).stdout
    body, _, tail = out.rpartition(b"\n")
    ttfb, total, code = tail.decode().split()
    if code not in ("200", "206"):
        sys.exit(f"GET {url} answered {code}: {body[:200]!r}")
    return float(ttfb), float(total), hashlib.md5(body).hexdigest(), len(body)


def metric(base, name):
    text = urllib.request.urlopen(f"{base}/metrics").read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--out")
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = a.out or os.path.join(root, "bench/results", f"{datetime.date.today()}-large-objects.md")
    work = tempfile.mkdtemp(prefix="nearcache-large.", dir=a.dir)
    procs = []

    def stop(p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    try:
        mport = free_port()
        moto_url = f"http://127.0.0.1:{mport}"
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(mport)],
                                stdout=open(f"{work}/moto.log", "w"), stderr=subprocess.STDOUT)
        procs.append(moto)
        wait_http(moto_url + "/", "moto")
        import boto3
        s3 = boto3.client("s3", endpoint_url=moto_url, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
        s3.create_bucket(Bucket="bench")
        # Native ids (ULIDs) as S3 keys, so the native API reads them through.
        small_id, big_id = "01JDB7ARGE0000000000000064", "01JDB7ARGE000000000000B1G0"
        block = os.urandom(64 * MIB)
        small_md5 = hashlib.md5(block).hexdigest()
        s3.put_object(Bucket="bench", Key=small_id, Body=block)
        big = a.big_mib * MIB
        # Stream the big object in: 64 MiB blocks, each a little different.
        path = f"{work}/big.bin"
        with open(path, "wb") as f:
            for i in range(big // (64 * MIB)):
                f.write(i.to_bytes(8, "little") + block[8:])
        with open(path, "rb") as f:
            s3.upload_fileobj(f, "bench", big_id)
        at = big * 7 // 10
        with open(path, "rb") as f:
            f.seek(at)
            range_md5 = hashlib.md5(f.read(4096)).hexdigest()
        os.remove(path)

        results = {}  # (mode, case) -> list of (ttfb, total, origin bytes)

        def record(mode, case, ttfb, total, ob):
            results.setdefault((mode, case), []).append((ttfb, total, ob))

        import concurrent.futures
        for _ in range(a.runs):
            t, tt, md5, _ = curl(f"{moto_url}/bench/{small_id}", sign=True)
            assert md5 == small_md5
            record("direct", "64", t, tt, 64 * MIB)
            # What the origin itself takes for the chunked fill's GETs: 8 MiB ranges,
            # 4 at a time (moto serves ranged GETs far slower than whole ones).
            start = time.time()
            with concurrent.futures.ThreadPoolExecutor(4) as ex:
                parts = list(ex.map(lambda i: curl(f"{moto_url}/bench/{small_id}",
                                                   rng=(i * 8 * MIB, (i + 1) * 8 * MIB - 1), sign=True), range(8)))
            record("direct, 8 MiB ranges x4", "64", parts[0][0], time.time() - start, 64 * MIB)
            t, tt, md5, _ = curl(f"{moto_url}/bench/{big_id}", rng=(at, at + 4095), sign=True)
            assert md5 == range_md5
            record("direct", "range", t, tt, 4096)

        modes = {
            "chunked": "[chunks]\nenabled = true\nthreshold = \"16MiB\"\nchunk_size = \"8MiB\"\nfetch_concurrency = 4\n",
            "whole": "[chunks]\nenabled = false\n",
        }
        for mode, toml in modes.items():
            cfg = f"{work}/{mode}.toml"
            with open(cfg, "w") as f:
                f.write(toml)
            for run in range(a.runs):
                for case in ("64", "range"):
                    data = f"{work}/data-{mode}-{run}-{case}"
                    port = free_port()
                    base = f"http://127.0.0.1:{port}"
                    nc = subprocess.Popen(
                        [a.bin, "--config", cfg, "--listen", f"127.0.0.1:{port}", "--data-dir", data,
                         "--shards", "2", "--s3-endpoint", moto_url, "--s3-bucket", "bench",
                         "--s3-access-key", "test", "--s3-secret-key", "test", "--s3-path-style",
                         "--disk-capacity", "8GiB", "--memory-capacity", "256MiB", "--fetch-default", "true"],
                        stdout=open(f"{work}/nc-{mode}.log", "a"), stderr=subprocess.STDOUT)
                    procs.append(nc)
                    wait_http(f"{base}/healthz", "nearcache")
                    if case == "64":
                        t, tt, md5, _ = curl(f"{base}/api/v1/get/{small_id}")
                        assert md5 == small_md5, f"{mode}: 64 MiB body differs"
                    else:
                        t, tt, md5, _ = curl(f"{base}/api/v1/get/{big_id}", rng=(at, at + 4095))
                        assert md5 == range_md5, f"{mode}: range differs"
                    # Chunk stores finish after the answer: let the counter settle.
                    time.sleep(1.0)
                    record(mode, case, t, tt, metric(base, "nearcache_origin_body_bytes_total"))
                    stop(nc)
                    shutil.rmtree(data, ignore_errors=True)

        def row(mode, case):
            rs = results[(mode, case)]
            med = lambda i: statistics.median(r[i] for r in rs)
            ob = med(2)
            size = f"{ob / MIB:.2f} MiB" if ob >= MIB else f"{ob / 1024:.0f} KiB"
            return f"| {mode} | {med(0) * 1000:.1f} ms | {med(1) * 1000:.1f} ms | {size} |"

        lines = [
            f"# Large objects: chunked fills vs whole-object fills vs direct S3 ({datetime.date.today()})",
            "",
            f"`bench/large-objects.py --big-mib {a.big_mib} --runs {a.runs}`: moto on loopback as S3, nearcache "
            "release build, 2 shards, a fresh data dir for every measured request (all cold), native API, "
            "curl. Medians of the runs. Origin bytes: `nearcache_origin_body_bytes_total` after the request "
            "(for `direct`: what the request itself moved). 2-core VM shared with other builds: "
            "absolute times are noisy; compare rows of one table.",
            "",
            "## Cold full GET of a 64 MiB object",
            "",
            "| path | time to first byte | total | origin bytes |",
            "|---|---|---|---|",
            row("direct", "64"), row("direct, 8 MiB ranges x4", "64"), row("chunked", "64"), row("whole", "64"),
            "",
            f"## Cold 4 KiB range of a {a.big_mib} MiB object (at 70 %)",
            "",
            "| path | time to first byte | total | origin bytes |",
            "|---|---|---|---|",
            row("direct", "range"), row("chunked", "range"), row("whole", "range"),
            "",
        ]
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as f:
            f.write("\n".join(lines))
        print("\n".join(lines))
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

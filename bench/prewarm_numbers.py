"""Driver of bench/prewarm-numbers.sh (see there). Needs boto3 (installed with moto)."""

import concurrent.futures as cf
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import boto3

BIN = os.environ["NEARCACHE_BIN"]
WORK = os.environ["WORK"]
OBJECTS = int(os.environ["OBJECTS"])
LARGE = int(os.environ["LARGE"])
OUT = os.environ["OUT"]
TCK = os.sysconf("SC_CLK_TCK")
BUCKET = "prewarm-bench"


def say(msg):
    print(f"[prewarm-numbers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, method="GET"):
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
            try:
                return r.status, json.loads(body or b"null")
            except ValueError:
                return r.status, body
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, None


def until(what, secs, ok):
    end = time.time() + secs
    while not ok():
        if time.time() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


moto_port = port()
moto = subprocess.Popen(
    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
    stdout=subprocess.DEVNULL, stderr=open(f"{WORK}/moto.log", "w"))
endpoint = f"http://127.0.0.1:{moto_port}"
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")


def seed(prefix, n, size):
    body = os.urandom(size)
    t = time.time()
    with cf.ThreadPoolExecutor(32) as ex:
        list(ex.map(lambda i: s3.put_object(Bucket=BUCKET, Key=f"{prefix}{i:06}", Body=body),
                    range(n)))
    say(f"seeded {n} x {size} B under {prefix} in {time.time() - t:.1f} s")


def moto_get_rate(prefix, n):
    t = time.time()
    with cf.ThreadPoolExecutor(32) as ex:
        total = sum(ex.map(
            lambda i: len(s3.get_object(Bucket=BUCKET, Key=f"{prefix}{i:06}")["Body"].read()),
            range(n)))
    dt = time.time() - t
    return n / dt, total / dt / 1e6


class Node:
    def __init__(self, name, concurrency, shards, seed=None):
        self.dir = f"{WORK}/{name}-{time.time_ns()}"
        os.makedirs(self.dir)
        self.port, self.cport = port(), port()
        with open(f"{self.dir}/node.toml", "w") as f:
            f.write(f"[jobs]\nconcurrency = {concurrency}\n\n"
                    "[cluster]\ngossip_interval_ms = 200\nsync_interval_ms = 200\n")
        args = [BIN, "serve", "--config", f"{self.dir}/node.toml", "--data-dir", f"{self.dir}/d",
                "--listen", f"127.0.0.1:{self.port}", "--s3-listen", f"127.0.0.1:{port()}",
                "--shards", str(shards), "--s3-endpoint", endpoint, "--s3-bucket", BUCKET,
                "--s3-access-key", "test", "--s3-secret-key", "test", "--s3-path-style",
                "--memory-capacity", "512MiB", "--disk-capacity", "8GiB", "--log-level", "warn"]
        if seed is not None:
            args += ["--cluster-listen", f"127.0.0.1:{self.cport}"]
            if seed:
                args += ["--join", f"127.0.0.1:{seed}"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=open(f"{self.dir}/log", "w"))
        nodes.append(self)
        self.base = f"http://127.0.0.1:{self.port}"
        until(f"{name} up", 30, lambda: call(f"{self.base}/healthz")[0] == 200)

    def cpu(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
        return (int(v[11]) + int(v[12])) / TCK

    def members(self):
        s, v = call(f"{self.base}/api/v1/cluster")
        return sum(m["state"] == "alive" for m in v["members"]) if s == 200 else 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def prewarm(nodes, prefix):
    cpu0 = [n.cpu() for n in nodes]
    t = time.time()
    s, job = call(f"{nodes[0].base}/api/v1/jobs/prewarm?bucket={BUCKET}&prefix={prefix}", "POST")
    assert s == 202, (s, job)
    url = f"{nodes[0].base}/api/v1/jobs/{job['id']}"
    until("the prewarm", 1800, lambda: call(url)[1]["state"] != "running")
    wall = time.time() - t
    job = call(url)[1]
    cpu = sum(n.cpu() - c for n, c in zip(nodes, cpu0))
    assert job["state"] == "done" and job["errors"] == 0, job
    return {"objects/s": job["fetched"] / wall, "MB/s": job["bytes"] / wall / 1e6,
            "fetched": job["fetched"], "wall s": wall, "cpu s": cpu,
            "job objects/s": job["rate_objects_per_sec"]}


rows = []
nodes = []
try:
    until("moto", 30, lambda: call(endpoint)[0] != 0)
    s3.create_bucket(Bucket=BUCKET)
    seed("small/", OBJECTS, 4096)
    seed("large/", LARGE, 1 << 20)
    base_small = moto_get_rate("small/", min(OBJECTS, 2000))
    base_large = moto_get_rate("large/", LARGE)
    rows.append(("moto alone, boto3 GET x32 threads", "4 KiB", base_small[0], base_small[1], "", ""))
    rows.append(("moto alone, boto3 GET x32 threads", "1 MiB", base_large[0], base_large[1], "", ""))
    for conc in (8, 32):
        for prefix, size in (("small/", "4 KiB"), ("large/", "1 MiB")):
            node = Node("one", conc, 2)
            r = prewarm([node], prefix)
            node.stop()
            say(f"1 node, concurrency {conc}, {size}: {r}")
            rows.append((f"1 node (2 shards), concurrency {conc}", size, r["objects/s"], r["MB/s"],
                         f"{r['wall s']:.1f}", f"{r['cpu s']:.1f}"))
    a = Node("a", 32, 1, seed=0)
    b, c = Node("b", 32, 1, seed=a.cport), Node("c", 32, 1, seed=a.cport)
    until("3 members", 30, lambda: all(n.members() == 3 for n in (a, b, c)))
    r = prewarm([a, b, c], "small/")
    say(f"3 nodes, concurrency 32, 4 KiB: {r}")
    rows.append(("3 nodes (1 shard each, R=1), concurrency 32", "4 KiB", r["objects/s"], r["MB/s"],
                 f"{r['wall s']:.1f}", f"{r['cpu s']:.1f}"))
    for n in (a, b, c):
        n.stop()
finally:
    for n in nodes:
        n.stop()
    moto.terminate()

with open(OUT, "w") as f:
    f.write(f"# Prewarm rate ({time.strftime('%Y-%m-%d')})\n\n"
            f"`bench/prewarm-numbers.sh` (OBJECTS={OBJECTS}, LARGE={LARGE}): moto on loopback as the "
            "origin, release build, everything on the same 2-core VM (nodes, moto, the driver).\n"
            "A prewarm of a cold cache: `POST /api/v1/jobs/prewarm` to the end, one run per row; "
            "objects/s and MB/s over the wall time of the job, CPU seconds of the nearcache "
            "processes.\n\n"
            "| setup | object size | objects/s | MB/s | wall s | nearcache CPU s |\n"
            "|---|---|---|---|---|---|\n")
    for setup, size, ops, mbs, wall, cpu in rows:
        f.write(f"| {setup} | {size} | {ops:.0f} | {mbs:.1f} | {wall} | {cpu} |\n")
print(open(OUT).read())

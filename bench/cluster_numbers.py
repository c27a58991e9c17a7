"""Driver of bench/cluster-numbers.sh (see there). Standard library only."""

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

BIN = os.environ["NEARCACHE_BIN"]
LT = os.environ["LOADTEST_BIN"]
WORK = os.environ["WORK"]
RUNS = int(os.environ["RUNS"])
DURATION = os.environ["DURATION"]
CONNS = os.environ["CONNS"]
WRITES = int(os.environ["WRITES"])
SHARDS = os.environ["SHARDS"]
OUT = os.environ["OUT"]
TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[cluster-numbers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def http(url, method="GET", data=None, headers=None):
    req = urllib.request.Request(url, method=method, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait(what, secs, f):
    deadline = time.time() + secs
    while not f():
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


moto_port = free_port()
moto = subprocess.Popen(
    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
    stdout=subprocess.DEVNULL, stderr=open(f"{WORK}/moto.log", "w"))


def moto_up():
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{moto_port}/", timeout=1)
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


wait("moto", 30, moto_up)


class Node:
    def __init__(self, name, seed):
        self.name, self.seed = name, seed
        self.port, self.cport, self.s3port = free_port(), free_port(), free_port()
        self.dir = f"{WORK}/{name}"
        self.proc = None
        os.makedirs(self.dir, exist_ok=True)
        with open(f"{self.dir}/node.toml", "w") as f:
            f.write("[cluster]\ngossip_interval_ms = 200\nsync_interval_ms = 200\n")

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        args = [BIN, "serve", "--config", f"{self.dir}/node.toml", "--data-dir", f"{self.dir}/data",
                "--listen", f"127.0.0.1:{self.port}", "--s3-listen", f"127.0.0.1:{self.s3port}",
                "--shards", SHARDS, "--s3-endpoint", f"http://127.0.0.1:{moto_port}",
                "--s3-bucket", "cluster-bench", "--s3-access-key", "test", "--s3-secret-key", "test",
                "--s3-path-style", "--s3-create-bucket", "--memory-capacity", "512MiB",
                "--cluster-listen", f"127.0.0.1:{self.cport}", "--replication-factor", "2",
                "--log-level", "warn"]
        if self.seed:
            args += ["--join", f"127.0.0.1:{self.seed}"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=open(f"{self.dir}/log", "a"))
        wait(f"{self.name} up", 30, lambda: self.cluster() is not None)
        self.id = self.cluster()["node_id"]

    def cluster(self, key=None):
        try:
            q = f"?key={key}" if key else ""
            s, _, b = http(f"{self.base}/api/v1/cluster{q}")
            return json.loads(b) if s == 200 else None
        except OSError:
            return None

    def alive(self):
        c = self.cluster()
        return 0 if c is None else sum(m["state"] == "alive" for m in c["members"])

    def cpu(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TCK

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


a = Node("a", None)
a.start()
b, c = Node("b", a.cport), Node("c", a.cport)
b.start()
c.start()
nodes = [a, b, c]
try:
    wait("3 alive members everywhere", 30, lambda: all(n.alive() == 3 for n in nodes))

    # ---- a. hot GET through the owner and through a non-owner
    body = os.urandom(4096)
    s, h, _ = http(f"{a.base}/api/v1/put", "POST", body, {"X-Meta-ConsistencyLevel": "0"})
    assert s == 200, s
    hot = h.get("x-meta-id") or h.get("X-Meta-ID")
    owners = a.cluster(hot)["key"]["owners"]
    owner = next(n for n in nodes if n.id == owners[0])
    other = next(n for n in nodes if n.id not in owners)
    time.sleep(1)
    for n in (owner, other):
        s, h, got = http(f"{n.base}/api/v1/get/{hot}")
        assert s == 200 and got == body, (n.name, s)
    log(f"hot key {hot}: owner {owner.name}, non-owner {other.name}")

    def wrk(node):
        cpu0 = sum(n.cpu() for n in nodes)
        out = subprocess.run(["wrk", "-t1", f"-c{CONNS}", f"-d{DURATION}", "--latency",
                              f"{node.base}/api/v1/get/{hot}"], capture_output=True, text=True).stdout
        cpu = sum(n.cpu() for n in nodes) - cpu0
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        total = int(re.search(r"(\d+) requests in", out).group(1))
        p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
        p99ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        assert not bad, out
        return rps, p99ms, total / cpu if cpu > 0 else 0

    res = {"owner": [], "non-owner": []}
    for r in range(RUNS):
        for label, node in (("owner", owner), ("non-owner", other)):
            x = wrk(node)
            res[label].append(x)
            log(f"run {r + 1} {label}: {x[0]:.0f} req/s, p99 {x[1]:.2f} ms, {x[2]:.0f} req/CPU-s")
    med = {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in res.items()}

    # ---- b. catch-up after WRITES writes elsewhere, RUNS times
    def metric(node, name):
        m = urllib.request.urlopen(f"{node.base}/metrics").read().decode()
        return sum(float(x) for x in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)", m, re.M))

    def caught_up():
        info = c.cluster()
        if info is None:
            return False
        peers = [p for pid, p in info["sync"].items() if pid in (a.id, b.id)]
        return len(peers) == 2 and all(
            p["peer_last_seq"] and len(p["peer_last_seq"]) == len(p["applied_seq"])
            and all(x >= y for x, y in zip(p["applied_seq"], p["peer_last_seq"])) for p in peers)

    catch_ups, write_s, pulled, batched, served, mine = [], 0.0, 0.0, 0.0, 0, []
    for r in range(RUNS):
        log("kill -9 node c")
        c.kill9()
        wait("c declared down", 30, lambda: a.alive() == 2 and b.alive() == 2)
        manifest = f"{WORK}/m{r}.json"
        t0 = time.time()
        lt = subprocess.run([LT, "seed", "--target", a.base, "--objects", str(WRITES), "--size", "1KiB",
                             "--level", "0", "--connections", "16", "--manifest", manifest, "--quiet",
                             "--seed", str(r + 1)],
                            capture_output=True, text=True)
        assert lt.returncode == 0, lt.stderr
        write_s = time.time() - t0
        log(f"wrote {WRITES} objects through a in {write_s:.1f} s")
        start = time.time()
        c.start()
        up_s = time.time() - start
        wait("c to catch up", 600, caught_up)
        catch_ups.append((time.time() - start, up_s))
        log(f"c caught up {catch_ups[-1][0]:.2f} s after its restart (answering after {up_s:.2f} s)")
        ids = [o["id"] for o in json.load(open(manifest))["objects"]]
        sample = ids[:: max(1, len(ids) // 300)]
        owned = [i for i in sample if c.id in c.cluster(i)["key"]["owners"]]
        for i in owned:
            s, h, got = http(f"{c.base}/api/v1/get/{i}", headers={"X-Meta-Fetch": "0"})
            served += s == 200 and h.get("x-nearcache-node") == c.id
        mine += owned
        log(f"sample: {served} of {len(mine)} owned objects served by c from its own store")
        # c's counters start at 0 with each restart: this run's pulls only.
        pulled = metric(c, "nearcache_cluster_sync_received_bytes_total")
        batched = metric(c, "nearcache_cluster_sync_batched_objects_total")
        # The next kill comes once c has saved its sync positions (about once a second):
        # else the next round also re-reads this round's changes.
        done = time.time()
        book = f"{c.dir}/data/cluster-sync.json"
        wait("c to save its sync positions", 30,
             lambda: os.path.exists(book) and os.path.getmtime(book) > done)
    catch_up_s = statistics.median(x for x, _ in catch_ups)

    with open(OUT, "w") as f:
        f.write(f"""# Cluster numbers ({time.strftime('%Y-%m-%d')})

`bench/cluster-numbers.sh`: three nodes on one {os.cpu_count()}-core box ({SHARDS} shard each),
moto as S3, replication factor 2, HTTP/1.1 clients (wrk -t1 -c{CONNS} -d{DURATION}), medians of
{RUNS} alternating runs. The three nodes, wrk and moto share the cores, so absolute numbers
are low; the ratio is the point. req/CPU-s counts the CPU of all three nodes.

## Hot GET of one 4 KiB object

| through | req/s | p99 ms | req per CPU-s (all nodes) |
|---|---|---|---|
| owner node | {med['owner'][0]:.0f} | {med['owner'][1]:.2f} | {med['owner'][2]:.0f} |
| non-owner node (proxied over HTTP/2) | {med['non-owner'][0]:.0f} | {med['non-owner'][1]:.2f} | {med['non-owner'][2]:.0f} |

Non-owner / owner: {med['non-owner'][0] / med['owner'][0]:.2f}x req/s,
{med['non-owner'][2] / med['owner'][2]:.2f}x req per CPU-s.

Runs (req/s, p99 ms, req/CPU-s): owner {[tuple(round(v, 2) for v in x) for x in res['owner']]};
non-owner {[tuple(round(v, 2) for v in x) for x in res['non-owner']]}.

## Catch-up after {WRITES} writes elsewhere

Node c killed with SIGKILL; {WRITES} x 1 KiB objects written through node a at level 0
(nearcache-loadtest seed, 16 connections: {write_s:.1f} s); c restarted.

- c pulled every peer journal to the end **{catch_up_s:.2f} s** (median of {RUNS}) after it
  was started (process start, recovery, rejoin and anti-entropy included). Runs (s to caught
  up, s to answering): {[tuple(round(v, 2) for v in x) for x in catch_ups]}.
- Last run: {pulled / 1e6:.1f} MB of bodies pulled, {batched:.0f} objects of them from
  batched answers (`cluster.sync_inline_max`).
- Check: {served} of {len(mine)} sampled objects that c owns were served by c from its own
  store (X-Meta-Fetch: 0).
""")
finally:
    for n in nodes:
        try:
            n.stop()
        except Exception:  # noqa: BLE001 - best effort cleanup
            n.proc.kill()
    moto.terminate()

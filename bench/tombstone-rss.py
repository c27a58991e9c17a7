#!/usr/bin/env python3
"""RssAnon per tombstone after a restart, one shard, no load generator needed.

    cargo build --release -p nearcache
    bench/tombstone-rss.py [N] [--bin target/release/nearcache]
    MIMALLOC_PURGE_DELAY=0 bench/tombstone-rss.py 30000   # memory freed at start-up returned at once

PUTs N 1 KiB objects at level 0 over one keep-alive connection, DELETEs them all, restarts
the node (the index then holds N tombstones and nothing else) and prints RssAnon over a
freshly started node, right after the restart and again after 3,000 GETs of deleted ids.
"""
import argparse, http.client, os, shutil, subprocess, tempfile, time, socket

ap = argparse.ArgumentParser()
ap.add_argument("n", nargs="?", type=int, default=30000)
ap.add_argument("--bin", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "nearcache"))
args = ap.parse_args()

with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
data = tempfile.mkdtemp(dir="/var/tmp")


def start():
    p = subprocess.Popen([args.bin, "--listen", f"127.0.0.1:{port}", "--data-dir", data, "--shards", "1",
                          "--memory-capacity", "64MiB", "--disk-capacity", "4GiB", "--log-level", "warn"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/healthz"); c.getresponse().read()
            return p
        except OSError:
            time.sleep(0.05)
    raise SystemExit("nearcache did not come up")


def rss_anon(p):
    for line in open(f"/proc/{p.pid}/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1])


try:
    p = start(); time.sleep(1); base = rss_anon(p)
    c = http.client.HTTPConnection("127.0.0.1", port)
    ids = []
    for _ in range(args.n):
        c.request("GET", "/api/v1/id"); ids.append(c.getresponse().read().decode().strip())
    for i in ids:
        c.request("POST", "/api/v1/put", body=b"x" * 1024, headers={"X-Meta-ID": i, "X-Meta-Level": "0"})
        r = c.getresponse(); r.read(); assert r.status == 200, r.status
    for i in ids:
        c.request("DELETE", f"/api/v1/delete/{i}", headers={"X-Meta-Level": "0"})
        r = c.getresponse(); r.read(); assert r.status == 200, r.status
    p.terminate(); p.wait()
    p = start(); time.sleep(2); after = rss_anon(p)
    c = http.client.HTTPConnection("127.0.0.1", port)
    for i in ids[:3000]:
        c.request("GET", f"/api/v1/get/{i}"); c.getresponse().read()
    time.sleep(1); later = rss_anon(p)
    p.terminate(); p.wait()
    per = lambda kib: (kib - base) * 1024 / args.n
    print(f"fresh node {base} KiB; after restart {after} KiB ({per(after):.0f} B per tombstone); "
          f"after 3000 GETs {later} KiB ({per(later):.0f} B per tombstone)")
finally:
    shutil.rmtree(data, ignore_errors=True)

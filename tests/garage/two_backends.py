#!/usr/bin/env python3
"""Two S3 backends behind one node, one of them a real store (Garage): issue 13's
write fan-out, durable sync log and repair, checked against more than moto.

Not part of `cargo test` (Garage takes ~25 minutes to install). Run it by hand:

    ../shared/scripts/garage-dev.sh start > /tmp/garage.env && source /tmp/garage.env
    cargo build --release -p nearcache
    python3 tests/garage/two_backends.py    # NEARCACHE_BIN=... to pick a binary

Backends "garage" (from S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY as
garage-dev.sh prints them) and "moto" (started here), write policy "any". Checks:
1. level-1 writes reach both backends, byte for byte (ETag = MD5);
2. with Garage stopped (SIGSTOP) writes are still acknowledged (moto took them) and
   queued for Garage in the sync log;
3. the node is killed with SIGKILL and restarted: the sync log survives;
4. Garage comes back (SIGCONT): the log drains and Garage holds every object, verified;
5. deletes reach both backends;
6. a multipart upload through the S3 API (on the primary) reaches the other backend
   through the sync log, verified.
"""
import hashlib, json, os, signal, socket, subprocess, sys, tempfile, time, urllib.request

import boto3
from botocore.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("NEARCACHE_BIN", os.path.join(ROOT, "target/release/nearcache"))
GARAGE = os.environ["S3_ENDPOINT"]
GARAGE_AK, GARAGE_SK = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
GARAGE_PID = int(open(os.environ.get("GARAGE_DIR", "/tmp/nearcache-garage") + "/garage.pid").read())
BUCKET = f"nc-two-{os.getpid()}"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def log(msg):
    print(f"[two_backends {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait(what, secs, cond):
    end = time.time() + secs
    while time.time() < end:
        if cond():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out: {what}")


def client(endpoint, ak, sk):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ak,
                        aws_secret_access_key=sk, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def listing(c):
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["ETag"].strip('"')
    return out


def http(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, b""


def main():
    tmp = tempfile.mkdtemp(prefix="nc-two-")
    moto_port, port, s3_port = free_port(), free_port(), free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(moto_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    moto_url = f"http://127.0.0.1:{moto_port}"
    garage, motoc = client(GARAGE, GARAGE_AK, GARAGE_SK), client(moto_url, "test", "test")
    wait("moto", 30, lambda: http("GET", moto_url)[0] != 0)
    for c in (garage, motoc):
        c.create_bucket(Bucket=BUCKET)
    cfg = os.path.join(tmp, "node.toml")
    open(cfg, "w").write(f"""
[server]
listen = "127.0.0.1:{port}"
data_dir = "{tmp}/data"
[s3api]
listen = "127.0.0.1:{s3_port}"
[[s3api.keys]]
access_key = "NCTWOBACKENDS"
secret_key = "two-backends-secret"
buckets = ["*"]
[origin]
bucket = "{BUCKET}"
backends = ["garage", "moto"]
write_policy = "any"
breaker_cooldown_ms = 500
[[origin.backend]]
name = "garage"
endpoint = "{GARAGE}"
region = "us-east-1"
access_key = "{GARAGE_AK}"
secret_key = "{GARAGE_SK}"
path_style = true
request_deadline_ms = 3000
background_attempt_timeout_ms = 3000
[[origin.backend]]
name = "moto"
endpoint = "{moto_url}"
region = "us-east-1"
access_key = "test"
secret_key = "test"
path_style = true
""")
    base = f"http://127.0.0.1:{port}"
    node = None

    def start():
        nonlocal node
        node = subprocess.Popen([BIN, "serve", "--config", cfg, "--log-level", "warn"])
        wait("the node", 30, lambda: http("GET", base + "/healthz")[0] == 200)

    def backends():
        return json.loads(http("GET", base + "/api/v1/backends")[1])

    def backlog(name):
        for b in backends()["backends"]:
            if b["name"] == name:
                return b["sync_backlog"]["entries"]
        raise KeyError(name)

    bodies = {}

    def put(i):
        body = os.urandom(1000 + i * 997)
        key = f"01JDBTWXBACKENDS{i:010d}"
        s, r = http("POST", base + "/api/v1/put", body,
                    {"X-Meta-ID": key, "X-Meta-ConsistencyLevel": "1"})
        assert s == 200, (s, r)
        bodies[key] = hashlib.md5(body).hexdigest()

    def holds_all(c):
        try:
            got = listing(c)
        except Exception:
            return False
        return all(got.get(k) == v for k, v in bodies.items())

    try:
        start()
        for i in range(20):
            put(i)
        wait("both backends to hold the first 20 writes", 60,
             lambda: holds_all(garage) and holds_all(motoc))
        log("1. 20 level-1 writes reached Garage and moto, ETags match")

        os.kill(GARAGE_PID, signal.SIGSTOP)
        try:
            t = time.time()
            for i in range(20, 40):
                put(i)
            log(f"2. 20 writes acknowledged with Garage stopped in {time.time() - t:.1f} s")
            wait("moto to hold all 40", 60, lambda: holds_all(motoc))
            wait("the sync log to hold Garage's share", 60, lambda: backlog("garage") >= 20)
            n = backlog("garage")
            log(f"2. sync log: {n} entries for garage")
            node.send_signal(signal.SIGKILL)
            node.wait()
            start()
            assert backlog("garage") >= 20, backends()
            log(f"3. after kill -9 and restart the sync log still holds {backlog('garage')} entries")
        finally:
            os.kill(GARAGE_PID, signal.SIGCONT)
        wait("the sync log to drain", 120, lambda: backlog("garage") == 0)
        wait("Garage to hold all 40", 60, lambda: holds_all(garage))
        for k in list(bodies)[:5]:
            got = garage.get_object(Bucket=BUCKET, Key=k)["Body"].read()
            assert hashlib.md5(got).hexdigest() == bodies[k]
        log("4. Garage came back: the log drained, Garage holds all 40 objects byte for byte")

        gone = list(bodies)[:5]
        for k in gone:
            s, r = http("DELETE", f"{base}/api/v1/delete/{k}", headers={"X-Meta-ConsistencyLevel": "1"})
            assert s == 200, (s, r)
            del bodies[k]
        wait("deletes to reach both", 60, lambda: all(
            not (set(gone) & set(listing(c))) for c in (garage, motoc)))
        log("5. 5 deletes reached both backends")

        nc = client(f"http://127.0.0.1:{s3_port}", "NCTWOBACKENDS", "two-backends-secret")
        parts = [os.urandom(5 << 20), os.urandom(1 << 20)]
        up = nc.create_multipart_upload(Bucket=BUCKET, Key="mp/big")
        etags = [nc.upload_part(Bucket=BUCKET, Key="mp/big", UploadId=up["UploadId"], PartNumber=i + 1,
                                Body=p)["ETag"] for i, p in enumerate(parts)]
        nc.complete_multipart_upload(
            Bucket=BUCKET, Key="mp/big", UploadId=up["UploadId"],
            MultipartUpload={"Parts": [{"ETag": e, "PartNumber": i + 1} for i, e in enumerate(etags)]})
        want = hashlib.md5(b"".join(parts)).hexdigest()

        def has_mp(c):
            try:
                return hashlib.md5(c.get_object(Bucket=BUCKET, Key="mp/big")["Body"].read()).hexdigest() == want
            except Exception:
                return False
        wait("the multipart object on both backends", 120, lambda: has_mp(garage) and has_mp(motoc))
        log("6. a 6 MiB multipart upload through the S3 API reached both backends byte for byte")
        print("OK")
    finally:
        if node and node.poll() is None:
            node.terminate()
            node.wait()
        moto.terminate()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""One wrk run for bench/compare.sh: GETs spread over a manifest's objects of one size.

wrk fetches one fixed URL unless a Lua script says otherwise, so this writes a script that
pre-formats one request per object (paths, and for the S3 API SigV4 headers or presigned
query strings made with botocore, independent of nearcache's own SigV4 code) and cycles
through them; formatting happens once per thread, not per request, so wrk stays cheap.
Prints one JSON line with the fields compare.sh and report.py read (the same as
`nearcache-loadtest get --json`): rps, mbps, p50_us, p99_us, p999_us, requests, errors.

    wrk_run.py --url http://127.0.0.1:9000 --manifest m.json --size 4KiB \
        --template '/bench/{key}' --sign header --bucket bench --conns 32 --duration 10s
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

SIZES = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def parse_size(s):
    for unit in ("KiB", "MiB", "GiB", "B"):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * SIZES[unit])
    return int(s)


def lua_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def signed(args, url, path):
    """(path with query, extra headers) for one GET, signed as the S3 API wants."""
    from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    creds = Credentials(args.access_key, args.secret_key)
    req = AWSRequest(method="GET", url=url + path)
    if args.sign == "header":
        S3SigV4Auth(creds, "s3", args.region).add_auth(req)
        keep = ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256")
        return path, {k: req.headers[k] for k in keep}
    S3SigV4QueryAuth(creds, "s3", args.region, expires=3600).add_auth(req)
    return req.url[len(url):], {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="http://host:port")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--size", required=True)
    ap.add_argument("--template", required=True, help="path with {id} or {key}")
    ap.add_argument("--sign", choices=["none", "header", "presign"], default="none")
    ap.add_argument("--access-key", default="bench")
    ap.add_argument("--secret-key", default="bench-secret")
    ap.add_argument("--region", default="us-east-1")
    ap.add_argument("--only", help="file with the ids to use (one per line); default all of the size")
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--wrk", default="wrk")
    args = ap.parse_args()

    size = parse_size(args.size)
    objs = [o for o in json.load(open(args.manifest))["objects"] if o["size"] == size]
    if args.only:
        keep = set(open(args.only).read().split())
        objs = [o for o in objs if o["id"] in keep]
    if not objs:
        sys.exit(f"no objects of {args.size} in {args.manifest}")
    reqs = []
    for o in objs:
        path = args.template.replace("{id}", o["id"]).replace("{key}", o["key"])
        headers = {}
        if args.sign != "none":
            path, headers = signed(args, args.url, path)
        reqs.append((path, headers))

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        lua = ["local reqs = {"]
        for path, headers in reqs:
            h = ", ".join(f"[{lua_str(k)}] = {lua_str(v)}" for k, v in headers.items())
            lua.append(f"  {{{lua_str(path)}, {{{h}}}}},")
        lua.append("}")
        lua.append(f"""
local formatted, i = {{}}, 0
function init(args)
  for n, r in ipairs(reqs) do formatted[n] = wrk.format("GET", r[1], r[2]) end
  i = math.random(#formatted) - 1
end
function request()
  i = i % #formatted + 1
  return formatted[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  local f = io.open({lua_str(out)}, "w")
  f:write(string.format('{{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d}}',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50.0), latency:percentile(99.0), latency:percentile(99.9)))
  f:close()
end
""")
        script = os.path.join(tmp, "run.lua")
        with open(script, "w") as f:
            f.write("\n".join(lua))
        p = subprocess.run([args.wrk, f"-t{args.threads}", f"-c{args.conns}", f"-d{args.duration}",
                            "--timeout", "10s", "-s", script, args.url + "/"],
                           capture_output=True, text=True)
        if p.returncode != 0 or not os.path.exists(out):
            sys.exit(f"wrk failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")
        w = json.load(open(out))
    secs = w["duration_us"] / 1e6
    errors = {k: w[k] for k in ("connect", "read", "write", "status", "timeout") if w[k]}
    print(json.dumps({
        "generator": "wrk",
        "requests": w["requests"],
        "rps": w["requests"] / secs if secs else 0,
        "mbps": w["bytes"] / secs / 1e6 if secs else 0,
        "p50_us": w["p50_us"], "p99_us": w["p99_us"], "p999_us": w["p999_us"],
        "errors": errors,
    }))


if __name__ == "__main__":
    main()

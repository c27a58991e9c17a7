#!/usr/bin/env python3
"""Turns compare.sh's raw runs into results.md, results.json and SVG charts (stdlib only).

Medians over runs per (target, size, connections); headline numbers are ratios of
nearcache over each peer measured in the same run.
"""
import json
import os
import platform
import statistics
import subprocess
import sys
from collections import defaultdict

raw_path, out = sys.argv[1], sys.argv[2]
runs = [json.loads(l) for l in open(raw_path) if l.strip()]
groups = defaultdict(list)
for r in runs:
    groups[(r["target"], r["size"], r["conns"])].append(r)

def med(rs, f):
    return statistics.median(f(r) for r in rs)

rows = []
for (target, size, conns), rs in groups.items():
    rows.append(dict(
        target=target, size=size, conns=conns, runs=len(rs),
        generator=rs[0].get("generator", "nearcache-loadtest"),
        rps=med(rs, lambda r: r["rps"]),
        mbps=med(rs, lambda r: r["mbps"]),
        p50_ms=med(rs, lambda r: r["p50_us"] / 1000),
        p99_ms=med(rs, lambda r: r["p99_us"] / 1000),
        p999_ms=med(rs, lambda r: r["p999_us"] / 1000),
        req_per_cpu_s=med(rs, lambda r: r["requests"] / r["server_cpu_s"] if r["server_cpu_s"] > 0 else 0),
        errors=sum(sum(r["errors"].values()) for r in rs),
    ))
order = ["nearcache", "nearcache-s3-header", "nearcache-s3-presigned", "cluster-owner", "cluster-non-owner",
         "nginx-static", "nginx-static-loadtest", "nginx-proxy_cache", "varnish", "s3-direct", "nearcache-baseline"]
PEERS = ["nginx-static", "nginx-proxy_cache", "varnish", "s3-direct", "nearcache-baseline"]
size_key = lambda s: float(s.rstrip("KMGiB") or 0) * {"K": 1, "M": 1024, "G": 1 << 20}.get(s.rstrip("iB")[-1], 1)
rows.sort(key=lambda r: (size_key(r["size"]), r["conns"], order.index(r["target"]) if r["target"] in order else 99))

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return "?"

os.makedirs(out, exist_ok=True)
machine = {
    "cpus": os.cpu_count(),
    "cpu_model": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
    "memory": sh("free -g | awk '/Mem:/ {print $2 \" GiB\"}'"),
    "kernel": platform.release(),
    "nginx": sh("nginx -v 2>&1"),
    "varnish": sh("varnishd -V 2>&1 | head -1"),
    "nearcache": sh("git rev-parse --short HEAD"),
}
json.dump({"machine": machine, "rows": rows}, open(os.path.join(out, "results.json"), "w"), indent=1)

lines = ["# nearcache side by side", "",
         f"Machine: {machine['cpus']} cores ({machine['cpu_model']}), {machine['memory']}, Linux {machine['kernel']}; "
         f"{machine['nginx']}; {machine['varnish']}; nearcache {machine['nearcache']}. "
         "Server, peers and load generator share the cores (loopback), so req/s is noisy; "
         "requests per server CPU-second is steadier. Medians of the runs shown. "
         "cluster-* count the CPU of both cluster nodes.", "",
         "| size | conns | target | generator | req/s | MB/s | p50 ms | p99 ms | p99.9 ms | req per server CPU-s | errors | runs |",
         "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    lines.append(f"| {r['size']} | {r['conns']} | {r['target']} | {r['generator']} | {r['rps']:.0f} | {r['mbps']:.1f} | {r['p50_ms']:.2f} | "
                 f"{r['p99_ms']:.2f} | {r['p999_ms']:.2f} | {r['req_per_cpu_s']:.0f} | {r['errors']} | {r['runs']} |")
by = {(r["target"], r["size"], r["conns"]): r for r in rows}
ratio = lambda a, b: a / b if b else float("nan")
lines += ["", "## Paths within nearcache (same run)", "",
          "| size | conns | path / reference | req/s ratio | req per CPU-s ratio | p99 ratio (lower is better) |",
          "|---|---:|---|---:|---:|---:|"]
for a, b in (("nearcache-s3-header", "nearcache"), ("nearcache-s3-presigned", "nearcache"),
             ("cluster-non-owner", "cluster-owner"), ("nearcache", "nginx-static")):
    for r in rows:
        if r["target"] != a:
            continue
        ref = by.get((b, r["size"], r["conns"]))
        if ref:
            lines.append(f"| {r['size']} | {r['conns']} | {a} / {b} | {ratio(r['rps'], ref['rps']):.2f} | "
                         f"{ratio(r['req_per_cpu_s'], ref['req_per_cpu_s']):.2f} | {ratio(r['p99_ms'], ref['p99_ms']):.2f} |")
lt = [r for r in rows if r["target"] == "nginx-static-loadtest"]
if lt:
    lines += ["", "## Generator check: nearcache-loadtest beside wrk on nginx static", "",
              "| size | conns | loadtest req/s | wrk req/s | loadtest / wrk |", "|---|---:|---:|---:|---:|"]
    for r in lt:
        w = by.get(("nginx-static", r["size"], r["conns"]))
        if w:
            lines.append(f"| {r['size']} | {r['conns']} | {r['rps']:.0f} | {w['rps']:.0f} | {ratio(r['rps'], w['rps']):.2f} |")
lines += ["", "## Ratios: nearcache / peer (same run)", "",
          "| size | conns | peer | req/s ratio | p99 ratio (lower is better) | req per CPU-s ratio | MB/s ratio |",
          "|---|---:|---|---:|---:|---:|---:|"]
for r in rows:
    if r["target"] not in PEERS:
        continue
    nc = by.get(("nearcache", r["size"], r["conns"]))
    if not nc or r["rps"] == 0:
        continue
    lines.append(f"| {r['size']} | {r['conns']} | {r['target']} | {ratio(nc['rps'], r['rps']):.2f} | "
                 f"{ratio(nc['p99_ms'], r['p99_ms']):.2f} | {ratio(nc['req_per_cpu_s'], r['req_per_cpu_s']):.2f} | "
                 f"{ratio(nc['mbps'], r['mbps']):.2f} |")

# Charts: one SVG per metric, grouped bars per (size, conns), one bar per target.
colors = {"nearcache": "#d95f02", "nearcache-s3-header": "#fdae6b", "nearcache-s3-presigned": "#fd8d3c",
          "cluster-owner": "#a6761d", "cluster-non-owner": "#e6ab02", "nginx-static": "#1b9e77",
          "nginx-static-loadtest": "#66c2a5", "nginx-proxy_cache": "#7570b3", "varnish": "#e7298a",
          "s3-direct": "#999999", "nearcache-baseline": "#333333"}
def chart(metric, title, fname):
    cats = sorted({(r["size"], r["conns"]) for r in rows}, key=lambda c: (size_key(c[0]), c[1]))
    targets = [t for t in order if any(r["target"] == t for r in rows)]
    vmax = max((r[metric] for r in rows), default=1) or 1
    bw, gap, h, left, top = 14, 18, 260, 60, 30
    gw = bw * len(targets) + gap
    w = left + gw * len(cats) + 160
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 90}" font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="18" font-size="14">{title}</text>']
    for i in range(5):
        y = top + h - h * i / 4
        svg.append(f'<line x1="{left}" y1="{y}" x2="{left + gw * len(cats)}" y2="{y}" stroke="#ddd"/>')
        svg.append(f'<text x="{left - 4}" y="{y + 4}" text-anchor="end">{vmax * i / 4:.3g}</text>')
    for ci, (size, conns) in enumerate(cats):
        x0 = left + ci * gw + gap / 2
        for ti, t in enumerate(targets):
            r = by.get((t, size, conns))
            if not r:
                continue
            bh = h * r[metric] / vmax
            svg.append(f'<rect x="{x0 + ti * bw}" y="{top + h - bh}" width="{bw - 2}" height="{bh}" fill="{colors.get(t, "#333")}"/>')
        svg.append(f'<text x="{x0 + bw * len(targets) / 2}" y="{top + h + 14}" text-anchor="middle">{size}</text>')
        svg.append(f'<text x="{x0 + bw * len(targets) / 2}" y="{top + h + 28}" text-anchor="middle">c{conns}</text>')
    for ti, t in enumerate(targets):
        y = top + 10 + ti * 16
        svg.append(f'<rect x="{left + gw * len(cats) + 10}" y="{y - 9}" width="10" height="10" fill="{colors.get(t, "#333")}"/>')
        svg.append(f'<text x="{left + gw * len(cats) + 24}" y="{y}">{t}</text>')
    svg.append("</svg>")
    open(os.path.join(out, fname), "w").write("\n".join(svg))
    lines.extend(["", f"![{title}]({fname})"])

chart("rps", "GET req/s (higher is better)", "rps.svg")
chart("p99_ms", "GET p99 latency, ms (lower is better)", "p99.svg")
chart("req_per_cpu_s", "Requests per server CPU-second (higher is better)", "req_per_cpu.svg")
open(os.path.join(out, "results.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))

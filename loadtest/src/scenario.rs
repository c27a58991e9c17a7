//! The scenarios: turn command-line arguments into a [`Plan`], run it, and build the report.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::json;

use crate::cli::{Command, Common, DistArg, KeyChoice, SeedArgs, StormArgs};
use crate::content;
use crate::engine::{self, Dist, Limit, Mode, Obj, ObjFactory, Plan};
use crate::manifest::{parse_md5, Entry, Manifest, MANIFEST_VERSION};
use crate::stats::Report;
use crate::target::{Api, Target};
use crate::zipf::Zipf;

/// Default connections when `--connections` is not given.
pub const DEFAULT_CONNECTIONS: usize = 32;
/// Default measured duration when neither `--duration` nor `--requests` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Counters whose deltas `--metrics` prints (summed over shards and targets).
pub const SCRAPED: &[&str] = &[
    "nearcache_origin_fetches_total",
    "nearcache_coalesced_requests_total",
    "nearcache_cache_hits_total",
    "nearcache_cache_misses_total",
];

/// Runs one command and returns its report (the caller prints it).
pub fn run(cmd: Command) -> anyhow::Result<Report> {
    match cmd {
        Command::Seed(a) => seed(a),
        Command::Get(a) => {
            let (objs, factory, keys_desc) = load_objects(&a.common, &a.keys.sizes)?;
            let dist = dist(&a.keys, objs.len());
            let params = json!({
                "dist": dist_name(&a.keys), "keys": keys_desc,
            });
            let mode = Mode::Read { dist };
            run_plan("get", &a.common, objs, factory, mode, None, params)
        }
        Command::Mixed(a) => {
            if !(0.0..=1.0).contains(&a.read_ratio) {
                bail!("--read-ratio must be within 0..=1");
            }
            let (objs, factory, keys_desc) = load_objects(&a.common, &a.keys.sizes)?;
            let dist = dist(&a.keys, objs.len());
            let params = json!({
                "dist": dist_name(&a.keys), "keys": keys_desc, "read_ratio": a.read_ratio,
                "level": a.level,
            });
            let mode = Mode::Mixed {
                read_ratio: a.read_ratio,
                dist,
            };
            run_plan("mixed", &a.common, objs, factory, mode, a.level, params)
        }
        Command::Put(a) => {
            let seed = a.seed.unwrap_or_else(clock_nonce);
            let factory = factory(&a.common, seed)?;
            let params = json!({
                "level": a.level, "sizes": a.sizes, "seed": seed,
            });
            let mode = Mode::Put {
                sizes: a.sizes.clone(),
                seed,
            };
            run_plan("put", &a.common, Vec::new(), factory, mode, a.level, params)
        }
        Command::MissStorm(a) => storm(a),
    }
}

fn clock_nonce() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn factory(c: &Common, seed: u64) -> anyhow::Result<ObjFactory> {
    ObjFactory::new(
        c.api,
        c.path_template.as_deref(),
        &c.bucket,
        &c.prefix,
        seed,
    )
}

fn dist(k: &KeyChoice, n: usize) -> Dist {
    match k.dist {
        DistArg::Uniform => Dist::Uniform,
        DistArg::Zipf => Dist::Zipf(Arc::new(Zipf::new(n, k.zipf_s))),
    }
}

fn dist_name(k: &KeyChoice) -> String {
    match k.dist {
        DistArg::Uniform => "uniform".into(),
        DistArg::Zipf => format!("zipf(s={})", k.zipf_s),
    }
}

/// Manifest objects, optionally only some sizes.
fn load_objects(c: &Common, sizes: &[u64]) -> anyhow::Result<(Vec<Obj>, ObjFactory, String)> {
    let m = Manifest::load(&c.manifest)?;
    let factory = factory(c, m.seed)?;
    let mut objs = Vec::new();
    for e in &m.objects {
        if !sizes.is_empty() && !sizes.contains(&e.size) {
            continue;
        }
        let md5 = parse_md5(&e.md5)?;
        objs.push(factory.make(&e.id, Some(&e.key), e.size, Some(md5)));
    }
    if objs.is_empty() {
        bail!(
            "manifest {} has no objects{}",
            c.manifest.display(),
            if sizes.is_empty() {
                ""
            } else {
                " of the requested sizes"
            }
        );
    }
    let desc = format!("{} from {}", objs.len(), c.manifest.display());
    Ok((objs, factory, desc))
}

fn targets(c: &Common) -> anyhow::Result<Vec<Target>> {
    c.targets.iter().map(|t| Target::parse(t)).collect()
}

fn limit(c: &Common) -> Limit {
    match (c.duration, c.requests) {
        (_, Some(n)) => Limit::Requests(n),
        (Some(d), None) => Limit::Duration(d),
        (None, None) => Limit::Duration(DEFAULT_DURATION),
    }
}

#[expect(clippy::too_many_arguments)]
fn plan(
    c: &Common,
    objects: Vec<Obj>,
    factory: ObjFactory,
    mode: Mode,
    level: Option<u8>,
    limit: Limit,
    warmup: Duration,
    connections: usize,
    verify_sample: f64,
) -> anyhow::Result<Plan> {
    if !(0.0..=1.0).contains(&verify_sample) {
        bail!("--verify-sample must be within 0..=1");
    }
    Ok(Plan {
        targets: targets(c)?,
        threads: c.threads,
        connections,
        http2: c.http2,
        streams: c.streams,
        limit,
        warmup,
        rate: c.rate,
        timeout: c.timeout,
        verify_sample,
        check_etag: c.api == Api::Native,
        level,
        quiet: c.quiet || c.json,
        api: c.api,
        objects: Arc::new(objects),
        factory,
        mode,
        rng_seed: clock_nonce(),
    })
}

/// Parameters every report carries.
fn common_params(c: &Common, p: &Plan, scenario_params: serde_json::Value) -> serde_json::Value {
    let mut v = json!({
        "api": c.api.name(),
        "targets": c.targets,
        "threads": p.threads.min(p.connections),
        "connections": p.connections,
        "protocol": if p.http2 { "h2c" } else { "http/1.1" },
        "streams": if p.http2 { Some(p.streams) } else { None },
        "loop": if p.rate.is_some() { "open" } else { "closed" },
        "rate": p.rate,
        "warmup_s": p.warmup.as_secs_f64(),
    });
    match p.limit {
        Limit::Duration(d) => v["limit_duration_s"] = json!(d.as_secs_f64()),
        Limit::Requests(n) => v["limit_requests"] = json!(n),
        Limit::Exhaust => {}
    }
    if let (Some(m), Some(extra)) = (v.as_object_mut(), scenario_params.as_object()) {
        for (k, x) in extra {
            m.insert(k.clone(), x.clone());
        }
    }
    v
}

fn run_plan(
    name: &str,
    c: &Common,
    objects: Vec<Obj>,
    factory: ObjFactory,
    mode: Mode,
    level: Option<u8>,
    params: serde_json::Value,
) -> anyhow::Result<Report> {
    let connections = c.connections.unwrap_or(DEFAULT_CONNECTIONS);
    let p = plan(
        c,
        objects,
        factory,
        mode,
        level,
        limit(c),
        c.warmup,
        connections,
        c.verify_sample,
    )?;
    let params = common_params(c, &p, params);
    let before = scrape_if(c, &p)?;
    let out = engine::run(p.clone())?;
    let mut report = Report::new(name, params, &out.stats, out.measured);
    add_metric_deltas(&mut report, c, &p, before)?;
    Ok(report)
}

fn seed(a: SeedArgs) -> anyhow::Result<Report> {
    let c = &a.common;
    if c.duration.is_some() || c.requests.is_some() {
        bail!("seed runs until every object is written: drop --duration/--requests");
    }
    let counts: Vec<u64> = match a.objects.len() {
        1 => vec![a.objects[0]; a.sizes.len()],
        n if n == a.sizes.len() => a.objects.clone(),
        n => bail!("--objects has {n} values for {} sizes", a.sizes.len()),
    };
    let factory = factory(c, a.seed)?;
    let mut objs = Vec::new();
    for (&size, &count) in a.sizes.iter().zip(&counts) {
        for i in 0..count {
            objs.push(factory.generated(size, i));
        }
    }
    let connections = c.connections.unwrap_or(DEFAULT_CONNECTIONS);
    let p = plan(
        c,
        objs.clone(),
        factory,
        Mode::Seed,
        a.level,
        Limit::Exhaust,
        Duration::ZERO,
        connections,
        0.0,
    )?;
    let params = common_params(
        c,
        &p,
        json!({
            "objects": counts, "sizes": a.sizes, "seed": a.seed, "level": a.level,
            "manifest": c.manifest.display().to_string(),
        }),
    );
    let before = scrape_if(c, &p)?;
    let out = engine::run(p.clone())?;
    let mut md5s: Vec<Option<[u8; 16]>> = vec![None; objs.len()];
    for (i, m) in &out.seeded {
        md5s[*i] = Some(*m);
    }
    let objects = objs
        .iter()
        .zip(md5s)
        .map(|(o, m)| Entry {
            id: o.id.clone(),
            key: o.key.clone(),
            size: o.size,
            md5: hex::encode(m.unwrap_or_else(|| content::body_md5(o.body_seed, o.size))),
        })
        .collect();
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        seed: a.seed,
        api: c.api.name().into(),
        prefix: c.prefix.clone(),
        objects,
    };
    manifest.save(&c.manifest)?;
    let mut report = Report::new("seed", params, &out.stats, out.measured);
    add_metric_deltas(&mut report, c, &p, before)?;
    Ok(report)
}

fn storm(a: StormArgs) -> anyhow::Result<Report> {
    let c = &a.common;
    if a.keys == 0 || a.clients == 0 {
        bail!("--keys and --clients must be at least 1");
    }
    let (objs, factory, keys_desc) = if a.fresh {
        let factory = factory(c, 0)?;
        let nonce = clock_nonce();
        let objs: Vec<Obj> = (0..a.keys as u64)
            .map(|i| {
                let id = engine::fresh_id(nonce, i).to_string();
                let mut o = factory.make(&id, None, 0, None);
                o.expect_missing = true;
                o
            })
            .collect();
        (objs, factory, format!("{} fresh ids (expect 404)", a.keys))
    } else {
        let (all, factory, _) = load_objects(c, &a.sizes)?;
        let objs: Vec<Obj> = all.into_iter().skip(a.offset).take(a.keys).collect();
        if objs.len() < a.keys {
            bail!(
                "manifest {} has only {} objects after --offset {}, --keys is {}",
                c.manifest.display(),
                objs.len(),
                a.offset,
                a.keys
            );
        }
        let desc = format!(
            "{} from {} at offset {}",
            a.keys,
            c.manifest.display(),
            a.offset
        );
        (objs, factory, desc)
    };
    let requests = a.clients * a.keys;
    let spc = if c.http2 { c.streams.max(1) } else { 1 };
    let connections = c.connections.unwrap_or(requests.div_ceil(spc));
    if connections * spc < requests {
        bail!(
            "{connections} connections × {spc} streams < {requests} concurrent requests \
             (clients × keys): raise --connections or --streams"
        );
    }
    let p = plan(
        c,
        objs,
        factory,
        Mode::Storm {
            keys: a.keys,
            requests,
        },
        None,
        Limit::Exhaust,
        Duration::ZERO,
        connections,
        1.0,
    )?;
    let params = common_params(
        c,
        &p,
        json!({"clients": a.clients, "keys": keys_desc, "concurrent_requests": requests}),
    );
    let before = scrape_if(c, &p)?;
    let out = engine::run(p.clone())?;
    let mut report = Report::new("miss-storm", params, &out.stats, out.measured);
    let correct = report.errors_total == 0 && report.requests == requests as u64;
    report.extra.insert("correct".into(), correct.into());
    add_metric_deltas(&mut report, c, &p, before)?;
    Ok(report)
}

fn scrape_if(c: &Common, p: &Plan) -> anyhow::Result<Option<BTreeMap<String, f64>>> {
    if !c.metrics {
        return Ok(None);
    }
    scrape_all(&p.targets).map(Some)
}

fn add_metric_deltas(
    report: &mut Report,
    c: &Common,
    p: &Plan,
    before: Option<BTreeMap<String, f64>>,
) -> anyhow::Result<()> {
    let Some(before) = before else {
        return Ok(());
    };
    if !c.metrics {
        return Ok(());
    }
    let after = scrape_all(&p.targets)?;
    let mut delta = serde_json::Map::new();
    for name in SCRAPED {
        if let Some(a) = after.get(*name) {
            let d = a - before.get(*name).copied().unwrap_or(0.0);
            delta.insert((*name).to_string(), json!(d as i64));
        }
    }
    report.extra.insert("metrics_delta".into(), delta.into());
    Ok(())
}

/// Sums of the [`SCRAPED`] counters over all targets.
pub fn scrape_all(targets: &[Target]) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut total = BTreeMap::new();
    for t in targets {
        let text = http_get_text(t, "/metrics")?;
        for (k, v) in parse_metrics(&text, SCRAPED) {
            *total.entry(k).or_insert(0.0) += v;
        }
    }
    Ok(total)
}

/// Sums every sample of the named metrics over their labels (Prometheus text format).
pub fn parse_metrics(text: &str, names: &[&str]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !names.contains(&name) {
            continue;
        }
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *out.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

/// A one-off blocking HTTP/1.0 GET (for /metrics; not on any hot path).
fn http_get_text(t: &Target, path: &str) -> anyhow::Result<String> {
    let url = t.url(path);
    let mut s = TcpStream::connect_timeout(&t.addrs[0], Duration::from_secs(5))
        .with_context(|| format!("connecting to {url}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {}{path} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
        t.base_path, t.authority
    )
    .with_context(|| format!("requesting {url}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .with_context(|| format!("reading {url}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{url}: no HTTP response"))?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        bail!("{url} answered {status}");
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_labels() {
        let text = "# HELP nearcache_origin_fetches_total x\n\
            # TYPE nearcache_origin_fetches_total counter\n\
            nearcache_origin_fetches_total{shard=\"0\"} 3\n\
            nearcache_origin_fetches_total{shard=\"1\"} 4\n\
            nearcache_coalesced_requests_total 10\n\
            nearcache_origin_fetches_total_other 99\n";
        let m = parse_metrics(text, SCRAPED);
        assert_eq!(m["nearcache_origin_fetches_total"], 7.0);
        assert_eq!(m["nearcache_coalesced_requests_total"], 10.0);
        assert_eq!(m.len(), 2);
    }
}

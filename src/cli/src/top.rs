//! `top`: a live view of each node's request rate, hit ratio, latency percentiles and
//! pending uploads, from the differences between two scrapes of `/metrics`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::conn::{Common, Conn, NodeConfig};
use crate::error::CliError;
use crate::util::table;

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub c: Common,
    /// Nodes to watch (comma-separated URLs) [default: --server and, in a cluster, every
    /// live member it knows the address of]
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2.0)]
    pub interval: f64,
    /// Stop after this many refreshes [default: run until interrupted]
    #[arg(long)]
    pub iterations: Option<u64>,
}

/// What one scrape of a node's `/metrics` says (requests for `/metrics` itself excluded).
#[derive(Debug, Default, Clone)]
struct Scrape {
    requests: f64,
    hits: f64,
    misses: f64,
    /// Latency histogram, cumulative counts by upper bound (seconds).
    buckets: BTreeMap<u64, f64>,
    pending_uploads: f64,
    inflight: f64,
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(&labels[start..end])
}

fn parse(text: &str) -> Scrape {
    let mut s = Scrape::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let scrape = label(labels, "route") == Some("metrics");
        match name {
            "nearcache_http_requests_total" if !scrape => s.requests += value,
            "nearcache_http_request_duration_seconds_bucket" if !scrape => {
                if let Some(le) = label(labels, "le").and_then(|l| l.parse::<f64>().ok()) {
                    // Keyed by micro-seconds so that +Inf sorts last.
                    let key = if le.is_finite() {
                        (le * 1e6) as u64
                    } else {
                        u64::MAX
                    };
                    *s.buckets.entry(key).or_default() += value;
                }
            }
            "nearcache_cache_hits_total" => s.hits += value,
            "nearcache_cache_misses_total" => s.misses += value,
            "nearcache_pending_uploads" => s.pending_uploads += value,
            "nearcache_inflight_requests" => s.inflight += value,
            _ => {}
        }
    }
    s
}

/// The `q` quantile (0..1) of the requests between two scrapes, in milliseconds,
/// interpolated inside its histogram bucket.
fn quantile(before: &Scrape, after: &Scrape, q: f64) -> Option<f64> {
    let delta: Vec<(u64, f64)> = after
        .buckets
        .iter()
        .map(|(le, n)| (*le, n - before.buckets.get(le).copied().unwrap_or(0.0)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0u64, 0.0);
    for (le, cum) in delta {
        if cum >= rank {
            if le == u64::MAX {
                return Some(prev.0 as f64 / 1e3);
            }
            let within = if cum > prev.1 {
                (rank - prev.1) / (cum - prev.1)
            } else {
                1.0
            };
            return Some((prev.0 as f64 + within * (le - prev.0) as f64) / 1e3);
        }
        prev = (le, cum);
    }
    None
}

/// The node and, in a cluster, every other live member whose public URL it has
/// learnt (from their node-to-node requests).
fn cluster_nodes(first: Conn, common: &Common) -> Result<Vec<Conn>, CliError> {
    let Ok(v) = first.call_json("cluster", first.get("/api/v1/cluster")) else {
        return Ok(vec![first]);
    };
    let mut others = Vec::new();
    for m in v["members"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let alive = matches!(m["state"].as_str(), Some("alive") | Some("suspect"));
        if m["is_self"] == true || !alive {
            continue;
        }
        if let Some(url) = m["id"]
            .as_str()
            .and_then(|id| v["public_urls"][id].as_str())
        {
            others.push(Conn::to(url, common, NodeConfig::default())?);
        }
    }
    let mut conns = vec![first];
    conns.extend(others);
    Ok(conns)
}

pub fn top(a: TopArgs) -> Result<(), CliError> {
    let first = Conn::new(&a.c)?;
    let conns = if a.nodes.is_empty() {
        cluster_nodes(first, &a.c)?
    } else {
        a.nodes
            .iter()
            .map(|n| Conn::to(n, &a.c, NodeConfig::default()))
            .collect::<Result<Vec<_>, _>>()?
    };
    if !a.interval.is_finite() || a.interval <= 0.0 {
        return Err(CliError::Usage(
            "--interval must be a positive number of seconds".into(),
        ));
    }
    let interval = Duration::from_secs_f64(a.interval);
    let scrape = |c: &Conn| -> Result<Scrape, CliError> {
        let resp = c.call("metrics", c.get("/metrics"))?;
        Ok(parse(&resp.text().map_err(|e| c.transport(e))?))
    };
    let mut prev: Vec<(Instant, Result<Scrape, CliError>)> =
        conns.iter().map(|c| (Instant::now(), scrape(c))).collect();
    let tty = std::io::stdout().is_terminal() && !a.c.json;
    let mut n = 0u64;
    let mut any_ok = false;
    while a.iterations.is_none_or(|max| n < max) {
        std::thread::sleep(interval);
        let mut rows = Vec::new();
        let mut nodes = Vec::new();
        for (c, p) in conns.iter().zip(prev.iter_mut()) {
            let now = (Instant::now(), scrape(c));
            let node = match (&p.1, &now.1) {
                (Ok(before), Ok(after)) => {
                    any_ok = true;
                    let secs = now.0.duration_since(p.0).as_secs_f64().max(1e-3);
                    let (dh, dm) = (after.hits - before.hits, after.misses - before.misses);
                    serde_json::json!({
                        "server": c.base,
                        "req_per_sec": (after.requests - before.requests).max(0.0) / secs,
                        "hit_ratio": (dh + dm > 0.0).then(|| dh / (dh + dm)),
                        "p50_ms": quantile(before, after, 0.50),
                        "p90_ms": quantile(before, after, 0.90),
                        "p99_ms": quantile(before, after, 0.99),
                        "pending_uploads": after.pending_uploads,
                        // The scrape that read this is in flight itself.
                        "inflight": (after.inflight - 1.0).max(0.0),
                    })
                }
                (_, Err(e)) | (Err(e), _) => {
                    serde_json::json!({ "server": c.base, "error": e.to_string() })
                }
            };
            let f = |k: &str, unit: &str| {
                node[k]
                    .as_f64()
                    .map_or("-".into(), |x| format!("{x:.1}{unit}"))
            };
            rows.push(match node["error"].as_str() {
                Some(e) => vec![c.base.clone(), format!("error: {e}")],
                None => vec![
                    c.base.clone(),
                    f("req_per_sec", ""),
                    node["hit_ratio"]
                        .as_f64()
                        .map_or("-".into(), |r| format!("{:.1}%", r * 100.0)),
                    f("p50_ms", " ms"),
                    f("p90_ms", " ms"),
                    f("p99_ms", " ms"),
                    format!("{}", node["inflight"].as_f64().unwrap_or(0.0)),
                    format!("{}", node["pending_uploads"].as_f64().unwrap_or(0.0)),
                ],
            });
            nodes.push(node);
            *p = now;
        }
        n += 1;
        if a.c.json {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            println!(
                "{}",
                serde_json::json!({ "time_unix_ms": ms, "nodes": nodes })
            );
        } else {
            let mut out = std::io::stdout().lock();
            if tty {
                // Clear the screen and go home: the view refreshes in place.
                let _ = write!(out, "\x1b[2J\x1b[H");
            }
            let _ = writeln!(
                out,
                "nearcache top: every {:.1} s (Ctrl-C quits)\n{}\n",
                a.interval,
                table(
                    &[
                        "NODE",
                        "REQ/S",
                        "HIT RATIO",
                        "P50",
                        "P90",
                        "P99",
                        "IN FLIGHT",
                        "PENDING UPLOADS"
                    ],
                    &rows
                )
            );
        }
        let _ = std::io::stdout().flush();
    }
    if !any_ok {
        if let Some((_, Err(e))) = prev.into_iter().next() {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
nearcache_http_requests_total{shard=\"0\",route=\"get\",status=\"200\"} 10
nearcache_http_requests_total{shard=\"0\",route=\"metrics\",status=\"200\"} 5
nearcache_http_request_duration_seconds_bucket{shard=\"0\",route=\"get\",le=\"0.001\"} 10
nearcache_http_request_duration_seconds_bucket{shard=\"0\",route=\"get\",le=\"0.01\"} 10
nearcache_http_request_duration_seconds_bucket{shard=\"0\",route=\"get\",le=\"+Inf\"} 10
nearcache_cache_hits_total{shard=\"0\"} 4
nearcache_cache_misses_total{shard=\"0\"} 6
";
    const AFTER: &str = "\
nearcache_http_requests_total{shard=\"0\",route=\"get\",status=\"200\"} 110
nearcache_http_requests_total{shard=\"0\",route=\"metrics\",status=\"200\"} 6
nearcache_http_request_duration_seconds_bucket{shard=\"0\",route=\"get\",le=\"0.001\"} 60
nearcache_http_request_duration_seconds_bucket{shard=\"0\",route=\"get\",le=\"0.01\"} 110
nearcache_http_request_duration_seconds_bucket{shard=\"0\",route=\"get\",le=\"+Inf\"} 110
nearcache_cache_hits_total{shard=\"0\"} 94
nearcache_cache_misses_total{shard=\"0\"} 16
nearcache_pending_uploads{shard=\"0\"} 3
";

    /// Fuzz target (bolero, bounded for `cargo test`; raise with BOLERO_RANDOM_ITERATIONS):
    /// any `/metrics` text, mangled metric lines included, parses without a panic, and
    /// quantiles between any two scrapes are None or finite and non-negative.
    #[test]
    fn fuzz_metrics_text_parses_without_panics() {
        let seeds = [BEFORE, AFTER];
        bolero::check!()
            .with_iterations(3000)
            .with_max_len(512)
            .for_each(|input: &[u8]| {
                let text = String::from_utf8_lossy(input);
                // Half the cases splice the input into a real scrape, so labels, `le`
                // values and numbers get mangled in place.
                let spliced = match input.first() {
                    Some(b) if b % 2 == 0 => {
                        let seed = seeds[usize::from(b % 4 == 0)];
                        let at = usize::from(input.get(1).copied().unwrap_or(0)) * seed.len() / 256;
                        let at = (0..=at)
                            .rev()
                            .find(|i| seed.is_char_boundary(*i))
                            .unwrap_or(0);
                        format!("{}{text}{}", &seed[..at], &seed[at..])
                    }
                    _ => text.into_owned(),
                };
                let a = parse(&spliced);
                let b = parse(BEFORE);
                for q in [0.0, 0.5, 0.99, 1.0] {
                    for v in [
                        quantile(&b, &a, q),
                        quantile(&a, &b, q),
                        quantile(&a, &a, q),
                    ] {
                        assert!(v.is_none_or(|v| v.is_finite() && v >= 0.0), "{v:?}");
                    }
                }
            });
    }

    #[test]
    fn rates_and_percentiles_come_from_the_difference_of_two_scrapes() {
        let (b, a) = (parse(BEFORE), parse(AFTER));
        assert_eq!(
            a.requests - b.requests,
            100.0,
            "the scrapes themselves are not counted"
        );
        assert_eq!(a.hits - b.hits, 90.0);
        assert_eq!(a.pending_uploads, 3.0);
        // 50 requests took <= 1 ms, 50 between 1 and 10 ms.
        let p50 = quantile(&b, &a, 0.5).unwrap();
        assert!((p50 - 1.0).abs() < 1e-9, "{p50}");
        let p90 = quantile(&b, &a, 0.9).unwrap();
        assert!((p90 - 8.2).abs() < 1e-9, "{p90}");
        assert_eq!(quantile(&a, &a, 0.5), None, "no requests, no percentile");
    }
}

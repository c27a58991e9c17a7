//! Prometheus exposition helpers and the HTTP edges' request metrics. Imports nothing
//! of the server: each layer owns its counters and a table of its families (name, kind,
//! help), and `/metrics` concatenates what every layer writes into one [`Exposition`].
//!
//! Every counter is written by one shard thread and read by whichever shard serves
//! `/metrics`: plain relaxed atomics, no locks. Labels are shard, route, status and
//! the like; never object ids.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A metric family: its name (with its unit), type and help text.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

impl Family {
    pub const fn new(name: &'static str, kind: Kind, help: &'static str) -> Family {
        Family { name, kind, help }
    }
}

/// The Prometheus text being written for one `/metrics` answer.
pub struct Exposition {
    out: String,
}

impl Default for Exposition {
    fn default() -> Self {
        Exposition {
            out: String::with_capacity(16 << 10),
        }
    }
}

impl Exposition {
    /// The `# HELP` and `# TYPE` lines of a family; its samples follow.
    pub fn family(&mut self, f: &Family) {
        let _ = writeln!(
            self.out,
            "# HELP {} {}\n# TYPE {} {}",
            f.name,
            f.help,
            f.name,
            f.kind.as_str()
        );
    }

    /// One sample line; `labels` is empty or `a="x",b="y"`.
    pub fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, f: &Family, value: impl std::fmt::Display) {
        self.family(f);
        self.sample(f.name, "", value);
    }

    /// A family with one sample per shard (`values` in shard order).
    pub fn per_shard(&mut self, f: &Family, values: impl IntoIterator<Item = u64>) {
        self.family(f);
        for (shard, v) in values.into_iter().enumerate() {
            let _ = writeln!(self.out, "{}{{shard=\"{shard}\"}} {v}", f.name);
        }
    }

    /// A histogram family's samples for one label set: cumulative buckets, sum, count.
    pub fn histogram(
        &mut self,
        f: &Family,
        labels: &str,
        bounds: &[f64],
        buckets: &[u64],
        sum: f64,
    ) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (i, b) in buckets.iter().enumerate() {
            cum += b;
            let le = bounds.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(
                self.out,
                "{}_bucket{{{labels}{sep}le=\"{le}\"}} {cum}",
                f.name
            );
        }
        self.sample(&format!("{}_sum", f.name), labels, sum);
        self.sample(&format!("{}_count", f.name), labels, cum);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Checks an exposition: every family declared once with HELP and TYPE, and every
/// sample belongs to a declared family. Err says what is wrong.
pub fn check_exposition(text: &str) -> Result<usize, String> {
    use std::collections::{HashMap, HashSet};
    let mut help = HashSet::new();
    let mut types: HashMap<&str, &str> = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            if !help.insert(name) {
                return Err(format!("family {name} is declared twice"));
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
            if types.insert(name, kind).is_some() {
                return Err(format!("family {name} has two TYPE lines"));
            }
        } else if !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|f| types.get(f) == Some(&"histogram"))
                })
                .unwrap_or(name);
            if !types.contains_key(family) || !help.contains(family) {
                return Err(format!("sample {name} has no HELP or TYPE"));
            }
        }
    }
    if help.len() != types.len() {
        return Err("a family has HELP without TYPE or the reverse".into());
    }
    Ok(types.len())
}

macro_rules! routes {
    ($($v:ident => $name:literal),* $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Route { $($v),* }
        impl Route {
            pub const ALL: &'static [Route] = &[$(Route::$v),*];
            pub fn name(self) -> &'static str { match self { $(Route::$v => $name),* } }
        }
    };
}

routes! {
    NewId => "id", Put => "put", Get => "get", Head => "head", Meta => "meta",
    Delete => "delete", Version => "version", Ping => "ping", Stats => "stats",
    Health => "healthz", Metrics => "metrics", Cluster => "cluster", Unknown => "unknown",
    Backends => "backends",
    S3Read => "s3_read", S3Write => "s3_write", S3List => "s3_list", S3Other => "s3_other",
    Ui => "ui",
    Invalidate => "invalidate", Jobs => "jobs", Cachenator => "cachenator",
}

const STATUSES: [u16; 22] = [
    200, 201, 202, 204, 206, 304, 400, 403, 404, 405, 408, 409, 412, 413, 416, 431, 500, 502, 503,
    504, 507, 0,
];

/// Upper bounds of the request latency histogram, seconds.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

const NR: usize = Route::ALL.len();
const NS: usize = STATUSES.len();
const NB: usize = LATENCY_BOUNDS.len() + 1;

#[derive(Default)]
struct RouteStats {
    by_status: [AtomicU64; NS],
    buckets: [AtomicU64; NB],
    sum_micros: AtomicU64,
}

/// Per-shard counters of the HTTP edges.
#[derive(Default)]
pub struct HttpMetrics {
    routes: [RouteStats; NR],
    pub inflight_requests: AtomicU64,
    pub connections: AtomicU64,
    /// Connections closed because they sent nothing within the header timeout.
    pub idle_closed: AtomicU64,
}

impl HttpMetrics {
    pub fn record(&self, route: Route, status: u16, elapsed: Duration) {
        let r = &self.routes[route as usize];
        let si = STATUSES.iter().position(|&s| s == status).unwrap_or(NS - 1);
        r.by_status[si].fetch_add(1, Relaxed);
        let secs = elapsed.as_secs_f64();
        let bi = LATENCY_BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(NB - 1);
        r.buckets[bi].fetch_add(1, Relaxed);
        r.sum_micros.fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// Requests of the routes `include` picks, and their latency histogram (not
    /// cumulative; bucket i counts latencies up to `LATENCY_BOUNDS[i]`, the last one above).
    pub fn totals(&self, include: impl Fn(Route) -> bool) -> (u64, [u64; NB]) {
        let (mut n, mut buckets) = (0, [0u64; NB]);
        for &route in Route::ALL.iter().filter(|r| include(**r)) {
            let r = &self.routes[route as usize];
            for (b, c) in buckets.iter_mut().zip(&r.buckets) {
                let c = c.load(Relaxed);
                *b += c;
                n += c;
            }
        }
        (n, buckets)
    }
}

impl HttpMetrics {
    pub const FAMILIES: &'static [Family] = &[
        Family::new(
            "nearcache_http_requests_total",
            Kind::Counter,
            "HTTP requests by route and status.",
        ),
        Family::new(
            "nearcache_http_request_duration_seconds",
            Kind::Histogram,
            "Time to response head.",
        ),
        Family::new(
            "nearcache_inflight_requests",
            Kind::Gauge,
            "Requests being handled.",
        ),
        Family::new(
            "nearcache_open_connections",
            Kind::Gauge,
            "Client connections open.",
        ),
        Family::new(
            "nearcache_idle_connections_closed_total",
            Kind::Counter,
            "Connections closed because they sent no request within header_read_timeout_secs.",
        ),
    ];

    /// Writes the families for every shard (`shards[i]` is shard i's metrics).
    pub fn render(shards: &[Arc<HttpMetrics>], out: &mut Exposition) {
        let [requests, duration, inflight, connections, idle_closed] = Self::FAMILIES else {
            unreachable!("five families")
        };
        out.family(requests);
        for (id, s) in shards.iter().enumerate() {
            for &route in Route::ALL {
                let r = &s.routes[route as usize];
                for (i, &code) in STATUSES.iter().enumerate() {
                    let n = r.by_status[i].load(Relaxed);
                    if n > 0 {
                        let status = if code == 0 {
                            "other".to_string()
                        } else {
                            code.to_string()
                        };
                        let labels = format!(
                            "shard=\"{id}\",route=\"{}\",status=\"{status}\"",
                            route.name()
                        );
                        out.sample(requests.name, &labels, n);
                    }
                }
            }
        }
        out.family(duration);
        for (id, s) in shards.iter().enumerate() {
            for &route in Route::ALL {
                let r = &s.routes[route as usize];
                let buckets: Vec<u64> = r.buckets.iter().map(|b| b.load(Relaxed)).collect();
                if buckets.iter().all(|&b| b == 0) {
                    continue;
                }
                let labels = format!("shard=\"{id}\",route=\"{}\"", route.name());
                let sum = r.sum_micros.load(Relaxed) as f64 / 1e6;
                out.histogram(duration, &labels, &LATENCY_BOUNDS, &buckets, sum);
            }
        }
        out.per_shard(
            inflight,
            shards.iter().map(|s| s.inflight_requests.load(Relaxed)),
        );
        out.per_shard(
            connections,
            shards.iter().map(|s| s.connections.load(Relaxed)),
        );
        out.per_shard(
            idle_closed,
            shards.iter().map(|s| s.idle_closed.load(Relaxed)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_families_render_valid_exposition() {
        let m = Arc::new(HttpMetrics::default());
        m.record(Route::Get, 200, Duration::from_micros(300));
        m.record(Route::Put, 599, Duration::from_secs(9));
        let mut out = Exposition::default();
        HttpMetrics::render(&[m.clone(), m], &mut out);
        let text = out.finish();
        assert_eq!(check_exposition(&text), Ok(5), "{text}");
        assert!(text.contains("route=\"put\",status=\"other\"} 1"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 1"), "{text}");
    }

    #[test]
    fn the_checker_finds_duplicates_and_undeclared_samples() {
        let f = Family::new("x_total", Kind::Counter, "x");
        let mut out = Exposition::default();
        out.single(&f, 1);
        out.single(&f, 2);
        assert!(check_exposition(&out.finish()).is_err());
        assert!(check_exposition("y_total 3\n").is_err());
    }
}

//! Per-thread results (histogram, counters, errors by kind), their merge, and the report
//! in table and JSON form.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Histogram bounds: 1 µs .. 60 s, 3 significant digits. Fixed, so histograms of all
/// threads (and of separate runs) merge without loss.
pub const HIST_LOW_US: u64 = 1;
pub const HIST_HIGH_US: u64 = 60_000_000;
pub const HIST_SIGFIG: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, HIST_SIGFIG).expect("valid bounds")
}

/// Why a request did not count as served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// TCP connect or HTTP handshake failed.
    Connect,
    /// No complete answer within `--timeout`.
    Timeout,
    /// Unexpected status code.
    Status(u16),
    /// Fewer body bytes than the manifest size (or the connection died mid-body).
    ShortBody,
    /// More bytes than the manifest size, or Content-Length disagrees with it.
    SizeMismatch,
    /// The body's MD5 differs from the manifest's.
    ChecksumMismatch,
    /// The ETag header is not the manifest's MD5 (native API only).
    EtagMismatch,
    /// The connection failed before the response head (reset, protocol error).
    Io,
}

impl ErrorKind {
    pub fn name(self) -> String {
        match self {
            ErrorKind::Connect => "connect".into(),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Status(c) => format!("status-{c}"),
            ErrorKind::ShortBody => "short-body".into(),
            ErrorKind::SizeMismatch => "size-mismatch".into(),
            ErrorKind::ChecksumMismatch => "checksum-mismatch".into(),
            ErrorKind::EtagMismatch => "etag-mismatch".into(),
            ErrorKind::Io => "io".into(),
        }
    }
}

/// What one thread measured. No sharing: merged once at the end.
#[derive(Debug, Clone)]
pub struct Stats {
    pub hist: Histogram<u64>,
    /// Requests served correctly (recorded in `hist`).
    pub requests: u64,
    /// Body bytes sent and received by those requests.
    pub bytes: u64,
    /// Bodies whose MD5 was checked.
    pub verified: u64,
    pub errors: BTreeMap<ErrorKind, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            hist: new_histogram(),
            requests: 0,
            bytes: 0,
            verified: 0,
            errors: BTreeMap::new(),
        }
    }
}

impl Stats {
    pub fn record_ok(&mut self, latency: Duration, bytes: u64) {
        let us = (latency.as_micros() as u64).max(HIST_LOW_US);
        self.hist.saturating_record(us);
        self.requests += 1;
        self.bytes += bytes;
    }

    pub fn record_err(&mut self, kind: ErrorKind) {
        *self.errors.entry(kind).or_default() += 1;
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, other: &Stats) {
        self.hist.add(&other.hist).expect("same bounds");
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.verified += other.verified;
        for (k, v) in &other.errors {
            *self.errors.entry(*k).or_default() += v;
        }
    }
}

/// The result of a run. Field names are stable: scripts read `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    /// The run's parameters (threads, connections, rate, ...).
    pub params: serde_json::Value,
    pub duration_s: f64,
    /// Requests served correctly.
    pub requests: u64,
    pub rps: f64,
    /// Body megabytes (10^6 bytes) per second, sent plus received.
    pub mbps: f64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
    /// Bodies whose MD5 was compared with the manifest.
    pub verified: u64,
    /// Scenario-specific results (e.g. miss-storm's metric deltas).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    pub fn new(scenario: &str, params: serde_json::Value, s: &Stats, duration: Duration) -> Self {
        let secs = duration.as_secs_f64().max(1e-9);
        let q = |p: f64| {
            if s.requests == 0 {
                0
            } else {
                s.hist.value_at_quantile(p)
            }
        };
        Report {
            scenario: scenario.to_string(),
            params,
            duration_s: round3(secs),
            requests: s.requests,
            rps: round3(s.requests as f64 / secs),
            mbps: round3(s.bytes as f64 / 1e6 / secs),
            mean_us: round3(if s.requests == 0 { 0.0 } else { s.hist.mean() }),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if s.requests == 0 { 0 } else { s.hist.max() },
            errors_total: s.errors_total(),
            errors: s.errors.iter().map(|(k, v)| (k.name(), *v)).collect(),
            verified: s.verified,
            extra: serde_json::Map::new(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    /// The human-readable table.
    pub fn render_table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "{} {}", self.scenario, describe_params(&self.params));
        let _ = writeln!(
            o,
            "{:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "requests", "req/s", "MB/s", "p50", "p90", "p99", "p99.9", "max", "errors"
        );
        let _ = writeln!(
            o,
            "{:>10} {:>11.1} {:>9.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            self.requests,
            self.rps,
            self.mbps,
            fmt_us(self.p50_us),
            fmt_us(self.p90_us),
            fmt_us(self.p99_us),
            fmt_us(self.p999_us),
            fmt_us(self.max_us),
            self.errors_total
        );
        let _ = write!(
            o,
            "duration {:.2}s, {} bodies verified by MD5, errors: ",
            self.duration_s, self.verified
        );
        if self.errors.is_empty() {
            o.push_str("none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            o.push_str(&list.join(" "));
        }
        o.push('\n');
        for (k, v) in &self.extra {
            let _ = writeln!(o, "{k}: {v}");
        }
        o
    }
}

fn describe_params(p: &serde_json::Value) -> String {
    let Some(map) = p.as_object() else {
        return String::new();
    };
    let parts: Vec<String> = map
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    format!("({})", parts.join(", "))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// 850 -> "850us", 1234 -> "1.23ms", 2_500_000 -> "2.50s".
pub fn fmt_us(us: u64) -> String {
    if us < 1000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_merge() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        for us in 1..=1000 {
            a.record_ok(Duration::from_micros(us), 10);
        }
        for _ in 0..1000 {
            b.record_ok(Duration::from_micros(100_000), 10);
        }
        b.record_ok(Duration::from_secs(3600), 1); // clamps to the 60 s bound
        b.record_err(ErrorKind::Status(503));
        a.record_err(ErrorKind::Status(503));
        a.record_err(ErrorKind::ChecksumMismatch);
        a.merge(&b);
        assert_eq!(a.requests, 2001);
        assert_eq!(a.bytes, 20_001);
        assert_eq!(a.hist.len(), 2001);
        assert!((495..=505).contains(&a.hist.value_at_quantile(0.25)));
        assert!(a.hist.value_at_quantile(0.75) >= 99_900);
        assert!(a.hist.max() >= 59_900_000 && a.hist.max() <= 60_100_000);
        assert_eq!(a.errors[&ErrorKind::Status(503)], 2);
        assert_eq!(a.errors_total(), 3);
    }

    #[test]
    fn json_has_stable_fields() {
        let mut s = Stats::default();
        for us in [100, 200, 300, 400] {
            s.record_ok(Duration::from_micros(us), 1_000_000);
        }
        s.record_err(ErrorKind::ShortBody);
        s.record_err(ErrorKind::Status(404));
        let params = serde_json::json!({"threads": 1, "connections": 4});
        let mut r = Report::new("get", params, &s, Duration::from_secs(2));
        r.extra.insert("correct".into(), true.into());
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        for f in [
            "requests",
            "rps",
            "mbps",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
            "errors",
            "duration_s",
            "scenario",
            "params",
            "errors_total",
        ] {
            assert!(v.get(f).is_some(), "missing field {f}");
        }
        assert_eq!(v["requests"], 4);
        assert_eq!(v["rps"], 2.0);
        assert_eq!(v["mbps"], 2.0);
        assert_eq!(v["duration_s"], 2.0);
        assert_eq!(v["errors"]["short-body"], 1);
        assert_eq!(v["errors"]["status-404"], 1);
        assert_eq!(v["scenario"], "get");
        assert_eq!(v["params"]["connections"], 4);
        assert_eq!(v["correct"], true);
        assert!((199..=201).contains(&v["p50_us"].as_u64().unwrap()));
        assert!((399..=401).contains(&v["max_us"].as_u64().unwrap()));
        let table = r.render_table();
        assert!(table.contains("short-body=1 status-404=1"), "{table}");
    }

    #[test]
    fn empty_report_is_zero() {
        let r = Report::new(
            "get",
            serde_json::json!({}),
            &Stats::default(),
            Duration::ZERO,
        );
        assert_eq!(r.p99_us, 0);
        assert_eq!(r.rps, 0.0);
    }

    #[test]
    fn formats_micros() {
        assert_eq!(fmt_us(850), "850us");
        assert_eq!(fmt_us(1234), "1.23ms");
        assert_eq!(fmt_us(2_500_000), "2.50s");
    }
}

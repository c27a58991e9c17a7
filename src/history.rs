//! The node's recent past, for the status page (`/ui`) and `GET /api/v1/history`:
//! node-wide counters sampled every [`INTERVAL`] and kept for [`KEEP`] samples (ten
//! minutes), rendered as rates, the hit ratio and latency percentiles per interval.
//!
//! One writer (a task on shard 0) and rare readers: the samples are swapped whole
//! (arc-swap), so a reader never blocks the writer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::metrics::LATENCY_BOUNDS;

/// Time between samples.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept: ten minutes at [`INTERVAL`].
pub const KEEP: usize = 300;

/// Counters and gauges of the whole node at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub unix_ms: u64,
    /// Object requests (native and S3 APIs; admin routes and the status page excluded).
    pub requests: u64,
    /// Their latency histogram, not cumulative, over `LATENCY_BOUNDS` then +Inf.
    pub latency: Vec<u64>,
    pub hits: u64,
    pub misses: u64,
    pub pending_uploads: u64,
    pub disk_bytes: u64,
    pub memory_bytes: u64,
    pub origin_requests: u64,
    pub origin_errors: u64,
}

#[derive(Default)]
pub struct History {
    samples: ArcSwap<VecDeque<Sample>>,
}

impl History {
    pub fn push(&self, s: Sample) {
        let mut v = (**self.samples.load()).clone();
        v.push_back(s);
        while v.len() > KEEP {
            v.pop_front();
        }
        self.samples.store(Arc::new(v));
    }

    /// `{"interval_ms", "points": [...]}`: one point per pair of consecutive samples.
    pub fn render(&self) -> serde_json::Value {
        let samples = self.samples.load();
        let points: Vec<serde_json::Value> = samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|(a, b)| point(a, b))
            .collect();
        serde_json::json!({ "interval_ms": INTERVAL.as_millis() as u64, "points": points })
    }
}

fn point(a: &Sample, b: &Sample) -> serde_json::Value {
    let secs = (b.unix_ms.saturating_sub(a.unix_ms) as f64 / 1e3).max(1e-3);
    let rate = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
    let (dh, dm) = (
        b.hits.saturating_sub(a.hits),
        b.misses.saturating_sub(a.misses),
    );
    let delta: Vec<u64> = b
        .latency
        .iter()
        .zip(a.latency.iter().chain(std::iter::repeat(&0)))
        .map(|(y, x)| y.saturating_sub(*x))
        .collect();
    serde_json::json!({
        "t": b.unix_ms,
        "req_per_sec": rate(a.requests, b.requests),
        "hit_ratio": (dh + dm > 0).then(|| dh as f64 / (dh + dm) as f64),
        "p50_ms": quantile_ms(&delta, 0.50),
        "p90_ms": quantile_ms(&delta, 0.90),
        "p99_ms": quantile_ms(&delta, 0.99),
        "pending_uploads": b.pending_uploads,
        "disk_bytes": b.disk_bytes,
        "memory_bytes": b.memory_bytes,
        "origin_req_per_sec": rate(a.origin_requests, b.origin_requests),
        "origin_errors_per_sec": rate(a.origin_errors, b.origin_errors),
    })
}

/// The `q` quantile of a (non-cumulative) latency histogram in milliseconds,
/// interpolated inside its bucket; None without requests. Above the last bound: the
/// last bound.
pub fn quantile_ms(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut cum = 0.0;
    let mut lower = 0.0;
    for (i, &n) in buckets.iter().enumerate() {
        let Some(&upper) = LATENCY_BOUNDS.get(i) else {
            return Some(lower * 1e3);
        };
        if n > 0 && cum + n as f64 >= rank {
            let within = (rank - cum) / n as f64;
            return Some((lower + within * (upper - lower)) * 1e3);
        }
        cum += n as f64;
        lower = upper;
    }
    Some(lower * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, requests: u64, latency: Vec<u64>, hits: u64, misses: u64) -> Sample {
        Sample {
            unix_ms: ms,
            requests,
            latency,
            hits,
            misses,
            ..Default::default()
        }
    }

    #[test]
    fn points_are_rates_ratios_and_percentiles_between_samples() {
        let h = History::default();
        let nb = LATENCY_BOUNDS.len() + 1;
        let mut lat = vec![0; nb];
        h.push(sample(1_000, 0, lat.clone(), 0, 0));
        // 100 requests in 2 s: 50 within 1 ms (bucket 3: 0.5..1 ms), 50 in 1..2.5 ms.
        lat[3] = 50;
        lat[4] = 50;
        h.push(sample(3_000, 100, lat.clone(), 75, 25));
        h.push(sample(5_000, 100, lat, 75, 25));
        let v = h.render();
        let p = v["points"].as_array().unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0]["req_per_sec"], 50.0);
        assert_eq!(p[0]["hit_ratio"], 0.75);
        assert_eq!(p[0]["p50_ms"], 1.0);
        let p99 = p[0]["p99_ms"].as_f64().unwrap();
        assert!(p99 > 1.0 && p99 <= 2.5, "{p99}");
        assert_eq!(p[1]["req_per_sec"], 0.0);
        assert!(p[1]["hit_ratio"].is_null() && p[1]["p50_ms"].is_null());
    }

    #[test]
    fn history_keeps_the_last_ten_minutes() {
        let h = History::default();
        for i in 0..(KEEP as u64 + 50) {
            h.push(sample(i * 2000, i, vec![], 0, 0));
        }
        let v = h.render();
        assert_eq!(v["points"].as_array().unwrap().len(), KEEP - 1);
        assert_eq!(quantile_ms(&[0, 0], 0.5), None);
        let mut over = vec![0; LATENCY_BOUNDS.len() + 1];
        *over.last_mut().unwrap() = 3;
        assert_eq!(
            quantile_ms(&over, 0.5),
            Some(5000.0),
            "above the last bound"
        );
    }
}

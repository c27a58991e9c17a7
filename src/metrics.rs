//! Prometheus metrics. Every counter is written by one shard thread and read by
//! whichever shard serves `/metrics`: plain relaxed atomics, no locks. Labels are shard,
//! route and status; never object ids.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::node::Node;

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
    S3Read => "s3_read", S3Write => "s3_write", S3List => "s3_list", S3Other => "s3_other",
}

const STATUSES: [u16; 20] = [
    200, 201, 204, 206, 304, 400, 404, 405, 408, 409, 412, 413, 416, 431, 500, 502, 503, 504, 507,
    0,
];

/// Upper bounds of the request latency histogram, seconds.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

const NR: usize = 17;
const NS: usize = STATUSES.len();
const NB: usize = LATENCY_BOUNDS.len() + 1;

#[derive(Default)]
struct RouteStats {
    by_status: [AtomicU64; NS],
    buckets: [AtomicU64; NB],
    sum_micros: AtomicU64,
}

/// Per-shard HTTP and cache-orchestration counters.
#[derive(Default)]
pub struct HttpMetrics {
    routes: [RouteStats; NR],
    /// Requests this shard sent to another shard (the key's owner).
    pub forwarded: AtomicU64,
    /// Misses that waited on another request's origin fetch instead of making their own.
    pub coalesced: AtomicU64,
    /// Origin GETs made for read-through.
    pub origin_fetches: AtomicU64,
    pub uploads_ok: AtomicU64,
    pub upload_failures: AtomicU64,
    pub origin_deletes_ok: AtomicU64,
    pub inflight_requests: AtomicU64,
    pub connections: AtomicU64,
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
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Renders the whole node's metrics in Prometheus text format.
pub fn render(node: &Node) -> String {
    let mut out = String::with_capacity(16 << 10);
    let o = &mut out;

    header(
        o,
        "nearcache_http_requests_total",
        "counter",
        "HTTP requests by route and status.",
    );
    for s in &node.shards {
        for &route in Route::ALL {
            let r = &s.http.routes[route as usize];
            for (i, &code) in STATUSES.iter().enumerate() {
                let n = r.by_status[i].load(Relaxed);
                if n > 0 {
                    let status = if code == 0 {
                        "other".to_string()
                    } else {
                        code.to_string()
                    };
                    let _ = writeln!(
                        o,
                        "nearcache_http_requests_total{{shard=\"{}\",route=\"{}\",status=\"{}\"}} {n}",
                        s.id,
                        route.name(),
                        status
                    );
                }
            }
        }
    }

    header(
        o,
        "nearcache_http_request_duration_seconds",
        "histogram",
        "Time to response head.",
    );
    for s in &node.shards {
        for &route in Route::ALL {
            let r = &s.http.routes[route as usize];
            let count: u64 = r.buckets.iter().map(|b| b.load(Relaxed)).sum();
            if count == 0 {
                continue;
            }
            let labels = format!("shard=\"{}\",route=\"{}\"", s.id, route.name());
            let mut cum = 0;
            for (i, b) in r.buckets.iter().enumerate() {
                cum += b.load(Relaxed);
                let le = LATENCY_BOUNDS
                    .get(i)
                    .map_or("+Inf".to_string(), |b| b.to_string());
                let _ = writeln!(
                    o,
                    "nearcache_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cum}"
                );
            }
            let sum = r.sum_micros.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(
                o,
                "nearcache_http_request_duration_seconds_sum{{{labels}}} {sum}"
            );
            let _ = writeln!(
                o,
                "nearcache_http_request_duration_seconds_count{{{labels}}} {count}"
            );
        }
    }

    macro_rules! per_shard {
        ($name:literal, $kind:literal, $help:literal, |$s:ident| $value:expr) => {
            header(o, $name, $kind, $help);
            for $s in &node.shards {
                let _ = writeln!(o, concat!($name, "{{shard=\"{}\"}} {}"), $s.id, $value);
            }
        };
    }
    per_shard!(
        "nearcache_forwarded_requests_total",
        "counter",
        "Requests forwarded to the owner shard.",
        |s| s.http.forwarded.load(Relaxed)
    );
    per_shard!(
        "nearcache_coalesced_requests_total",
        "counter",
        "Misses served by another request's origin fetch.",
        |s| s.http.coalesced.load(Relaxed)
    );
    per_shard!(
        "nearcache_origin_fetches_total",
        "counter",
        "Origin GETs for read-through.",
        |s| s.http.origin_fetches.load(Relaxed)
    );
    per_shard!(
        "nearcache_uploads_total",
        "counter",
        "Background uploads that reached the origin.",
        |s| s.http.uploads_ok.load(Relaxed)
    );
    per_shard!(
        "nearcache_upload_failures_total",
        "counter",
        "Upload attempts that failed (they are retried).",
        |s| s.http.upload_failures.load(Relaxed)
    );
    per_shard!(
        "nearcache_origin_deletes_total",
        "counter",
        "Deletes applied in the origin.",
        |s| s.http.origin_deletes_ok.load(Relaxed)
    );
    per_shard!(
        "nearcache_inflight_requests",
        "gauge",
        "Requests being handled.",
        |s| s.http.inflight_requests.load(Relaxed)
    );
    per_shard!(
        "nearcache_open_connections",
        "gauge",
        "Client connections open.",
        |s| s.http.connections.load(Relaxed)
    );
    per_shard!(
        "nearcache_cache_hits_total",
        "counter",
        "Lookups that found the key (object or tombstone).",
        |s| s.store.hits.load(Relaxed)
    );
    per_shard!(
        "nearcache_cache_memory_hits_total",
        "counter",
        "Hits served from the memory tier.",
        |s| s.store.memory_hits.load(Relaxed)
    );
    per_shard!(
        "nearcache_cache_misses_total",
        "counter",
        "Lookups that did not find the key.",
        |s| s.store.misses.load(Relaxed)
    );
    per_shard!(
        "nearcache_evictions_total",
        "counter",
        "Objects evicted from disk.",
        |s| s.store.evictions.load(Relaxed)
    );
    per_shard!(
        "nearcache_evicted_bytes_total",
        "counter",
        "Bytes evicted from disk.",
        |s| s.store.evicted_bytes.load(Relaxed)
    );
    per_shard!(
        "nearcache_checksum_failures_total",
        "counter",
        "Stored objects that failed checksum verification (never served).",
        |s| s.store.checksum_failures.load(Relaxed)
    );
    per_shard!("nearcache_objects", "gauge", "Objects stored.", |s| s
        .store
        .objects
        .load(Relaxed));
    per_shard!(
        "nearcache_tombstones",
        "gauge",
        "Tombstones of deleted ids.",
        |s| s.store.tombstones.load(Relaxed)
    );
    per_shard!(
        "nearcache_disk_bytes",
        "gauge",
        "Object bytes on disk.",
        |s| s.store.disk_bytes.load(Relaxed)
    );
    per_shard!(
        "nearcache_disk_capacity_bytes",
        "gauge",
        "Disk capacity for object bytes.",
        |s| s.store.disk_capacity.load(Relaxed)
    );
    per_shard!(
        "nearcache_memory_bytes",
        "gauge",
        "Object bytes in the memory tier.",
        |s| s.store.memory_bytes.load(Relaxed)
    );
    per_shard!(
        "nearcache_memory_capacity_bytes",
        "gauge",
        "Memory tier capacity.",
        |s| s.store.memory_capacity.load(Relaxed)
    );
    per_shard!(
        "nearcache_pinned_bytes",
        "gauge",
        "Bytes not yet safe in the origin (never evicted).",
        |s| s.store.pinned_bytes.load(Relaxed)
    );
    per_shard!(
        "nearcache_pending_uploads",
        "gauge",
        "Origin writes and deletes queued in the journal.",
        |s| s.store.pending_uploads.load(Relaxed)
    );
    per_shard!(
        "nearcache_journal_commits_total",
        "counter",
        "Journal group commits (fsyncs).",
        |s| s.store.journal_commits.load(Relaxed)
    );
    per_shard!(
        "nearcache_journal_records_total",
        "counter",
        "Journal records written.",
        |s| s.store.journal_records.load(Relaxed)
    );

    header(
        o,
        "nearcache_io_uring_active",
        "gauge",
        "1 when shards run on io_uring, 0 on the epoll fallback (blocking file I/O).",
    );
    let _ = writeln!(
        o,
        "nearcache_io_uring_active {}",
        u8::from(node.uring_active)
    );

    let st = node.bridge.stats();
    header(
        o,
        "nearcache_origin_requests_total",
        "counter",
        "Requests sent to the origin.",
    );
    for (op, v) in [
        ("get", &st.requests_get),
        ("head", &st.requests_head),
        ("put", &st.requests_put),
        ("delete", &st.requests_delete),
    ] {
        let _ = writeln!(
            o,
            "nearcache_origin_requests_total{{op=\"{op}\"}} {}",
            v.load(Relaxed)
        );
    }
    for (name, help, v) in [
        (
            "nearcache_origin_errors_total",
            "Origin requests that failed.",
            &st.errors,
        ),
        (
            "nearcache_origin_retries_total",
            "Origin request retries.",
            &st.retries,
        ),
        (
            "nearcache_origin_not_found_total",
            "Origin 404s.",
            &st.not_found,
        ),
        (
            "nearcache_origin_received_bytes_total",
            "Bytes read from the origin.",
            &st.bytes_in,
        ),
        (
            "nearcache_origin_sent_bytes_total",
            "Bytes written to the origin.",
            &st.bytes_out,
        ),
    ] {
        header(o, name, "counter", help);
        let _ = writeln!(o, "{name} {}", v.load(Relaxed));
    }
    header(
        o,
        "nearcache_origin_request_duration_seconds",
        "histogram",
        "Origin latency to response head.",
    );
    let mut cum = 0;
    for (i, b) in st.latency_buckets.iter().enumerate() {
        cum += b.load(Relaxed);
        let le = nearcache_s3::LATENCY_BOUNDS_SECONDS
            .get(i)
            .map_or("+Inf".to_string(), |b| b.to_string());
        let _ = writeln!(
            o,
            "nearcache_origin_request_duration_seconds_bucket{{le=\"{le}\"}} {cum}"
        );
    }
    let _ = writeln!(
        o,
        "nearcache_origin_request_duration_seconds_sum {}\nnearcache_origin_request_duration_seconds_count {}",
        st.latency_sum_micros.load(Relaxed) as f64 / 1e6,
        st.latency_count.load(Relaxed)
    );
    if let Some(cl) = &node.cluster {
        render_cluster(o, cl);
    }
    out
}

fn render_cluster(o: &mut String, cl: &crate::cluster::Cluster) {
    let m = &cl.metrics;
    let view = cl.view();
    header(
        o,
        "nearcache_cluster_members",
        "gauge",
        "Members by state, as this node sees them.",
    );
    use nearcache_membership::MemberState as S;
    for (s, state) in [
        (S::Alive, "alive"),
        (S::Suspect, "suspect"),
        (S::Down, "down"),
        (S::Left, "left"),
    ] {
        let n = view.members.iter().filter(|x| x.state == s).count();
        let _ = writeln!(o, "nearcache_cluster_members{{state=\"{state}\"}} {n}");
    }
    for (name, help, v) in [
        (
            "nearcache_cluster_proxied_requests_total",
            "Client requests proxied to an owner node.",
            &m.proxied_requests,
        ),
        (
            "nearcache_cluster_peer_errors_total",
            "Node-to-node requests that failed (connect, send or timeout).",
            &m.peer_errors,
        ),
        (
            "nearcache_cluster_replicas_pushed_total",
            "Replicas of fresh writes pushed to other owners.",
            &m.replicas_pushed,
        ),
        (
            "nearcache_cluster_replica_failures_total",
            "Replica or tombstone pushes that failed (anti-entropy repairs them).",
            &m.replica_failures,
        ),
        (
            "nearcache_cluster_sync_requests_total",
            "Journal change requests sent to peers.",
            &m.sync_requests,
        ),
        (
            "nearcache_cluster_sync_changes_applied_total",
            "Peer journal changes examined and applied (or found already applied).",
            &m.sync_changes_applied,
        ),
        (
            "nearcache_cluster_sync_received_bytes_total",
            "Object bytes pulled from peers by anti-entropy.",
            &m.sync_bytes,
        ),
        (
            "nearcache_cluster_sync_errors_total",
            "Failed sync pulls (retried).",
            &m.sync_errors,
        ),
        (
            "nearcache_cluster_sync_gaps_total",
            "Pulls that found a peer had trimmed unread journal records.",
            &m.sync_gaps,
        ),
    ] {
        header(o, name, "counter", help);
        let _ = writeln!(o, "{name} {}", v.load(Relaxed));
    }
    header(
        o,
        "nearcache_cluster_sync_lag_changes",
        "gauge",
        "Peer journal records not pulled yet, as of the last pulls.",
    );
    let _ = writeln!(o, "nearcache_cluster_sync_lag_changes {}", cl.book.lag());
}

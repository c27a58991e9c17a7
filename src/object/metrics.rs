//! The object service's metrics, and the tables of the store's and the origin's
//! counters it exports (those crates count; this layer, which runs them, names them).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use nearcache_s3::{OriginStats, LATENCY_BOUNDS_SECONDS};
use nearcache_shards::ShardMetrics;

use crate::metrics::{Exposition, Family, Kind};

/// Counters of the object service, per shard.
#[derive(Default)]
pub struct ObjectMetrics {
    /// Misses that waited on another request's origin fetch instead of making their own.
    pub coalesced: AtomicU64,
    /// Origin GETs made for read-through.
    pub origin_fetches: AtomicU64,
    pub uploads_ok: AtomicU64,
    pub upload_failures: AtomicU64,
    pub origin_deletes_ok: AtomicU64,
    /// Requests answered with an error because the origin did not answer in time.
    pub origin_waits_timed_out: AtomicU64,
    /// Revalidations of stale copies, by [`Revalidation`] outcome.
    pub revalidations: [AtomicU64; Revalidation::ALL.len()],
    /// Answers given from a stale copy, by [`StaleReason`].
    pub stale_responses: [AtomicU64; StaleReason::ALL.len()],
    /// Misses answered 404 from a remembered origin 404, without asking the origin.
    pub negative_hits: AtomicU64,
    /// Origin 404s remembered.
    pub negative_stored: AtomicU64,
    /// Sync log entries made (a backend missed a write or delete, drift, a check).
    pub sync_logged: AtomicU64,
    /// Sync log entries replayed and verified.
    pub sync_repaired: AtomicU64,
    pub sync_repaired_bytes: AtomicU64,
    pub sync_repair_failures: AtomicU64,
    /// The shard's sync log backlog per backend, as its syncer last saw it.
    pub sync_backlog:
        std::sync::Mutex<std::collections::BTreeMap<String, nearcache_shards::SyncBacklog>>,
    /// Ranged origin GETs of one chunk of a large object.
    pub chunk_fetches: AtomicU64,
    /// Chunks of large objects served from the store.
    pub chunk_hits: AtomicU64,
    /// Body bytes received from the origin by reads (read-through, revalidation, chunks).
    pub origin_body_bytes: AtomicU64,
    /// Second origin GETs sent because the first was slow.
    pub hedges_sent: AtomicU64,
    /// Hedged GETs whose second request answered first.
    pub hedges_won: AtomicU64,
}

/// How a revalidation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revalidation {
    /// 304: the copy was renewed, no body moved.
    NotModified,
    /// The origin has another version: it replaced the copy.
    Changed,
    /// The origin no longer has the object: the copy was dropped.
    Gone,
    /// The origin failed or timed out.
    Failed,
}

impl Revalidation {
    pub const ALL: [Revalidation; 4] = [
        Revalidation::NotModified,
        Revalidation::Changed,
        Revalidation::Gone,
        Revalidation::Failed,
    ];
    fn label(self) -> &'static str {
        match self {
            Revalidation::NotModified => "not_modified",
            Revalidation::Changed => "changed",
            Revalidation::Gone => "gone",
            Revalidation::Failed => "failed",
        }
    }
}

/// Why a stale copy was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// stale-while-revalidate: a background request is renewing it.
    Revalidating,
    /// stale-if-error: revalidation failed.
    OriginError,
}

impl StaleReason {
    pub const ALL: [StaleReason; 2] = [StaleReason::Revalidating, StaleReason::OriginError];
    fn label(self) -> &'static str {
        match self {
            StaleReason::Revalidating => "revalidating",
            StaleReason::OriginError => "origin_error",
        }
    }
}

impl ObjectMetrics {
    pub fn revalidated(&self, outcome: Revalidation) {
        self.revalidations[outcome as usize].fetch_add(1, Relaxed);
    }

    pub fn stale_served(&self, reason: StaleReason) {
        self.stale_responses[reason as usize].fetch_add(1, Relaxed);
    }
}

impl ObjectMetrics {
    pub const FAMILIES: &'static [Family] = &[
        Family::new(
            "nearcache_coalesced_requests_total",
            Kind::Counter,
            "Misses served by another request's origin fetch.",
        ),
        Family::new(
            "nearcache_origin_fetches_total",
            Kind::Counter,
            "Origin GETs for read-through.",
        ),
        Family::new(
            "nearcache_uploads_total",
            Kind::Counter,
            "Background uploads that reached the origin.",
        ),
        Family::new(
            "nearcache_upload_failures_total",
            Kind::Counter,
            "Upload attempts that failed (they are retried).",
        ),
        Family::new(
            "nearcache_origin_deletes_total",
            Kind::Counter,
            "Deletes applied in the origin.",
        ),
        Family::new(
            "nearcache_origin_wait_timeouts_total",
            Kind::Counter,
            "Requests answered with an error because the origin did not answer within origin_wait_secs.",
        ),
        Family::new(
            "nearcache_negative_cache_hits_total",
            Kind::Counter,
            "Misses answered 404 from a remembered origin 404, without asking the origin.",
        ),
        Family::new(
            "nearcache_negative_cache_stores_total",
            Kind::Counter,
            "Origin 404s remembered (freshness.negative_ttl_secs).",
        ),
        Family::new(
            "nearcache_sync_log_entries_total",
            Kind::Counter,
            "Sync log entries made: a backend missed a write or delete, drift, a consistency check.",
        ),
        Family::new(
            "nearcache_sync_repairs_total",
            Kind::Counter,
            "Sync log entries replayed on their backend and verified.",
        ),
        Family::new(
            "nearcache_sync_repaired_bytes_total",
            Kind::Counter,
            "Bytes copied to backends by sync log repairs.",
        ),
        Family::new(
            "nearcache_sync_repair_failures_total",
            Kind::Counter,
            "Sync log repair attempts that failed (they are retried).",
        ),
        Family::new(
            "nearcache_chunk_fetches_total",
            Kind::Counter,
            "Ranged origin GETs of one chunk of a large object.",
        ),
        Family::new(
            "nearcache_chunk_hits_total",
            Kind::Counter,
            "Chunks of large objects served from the store.",
        ),
        Family::new(
            "nearcache_origin_body_bytes_total",
            Kind::Counter,
            "Body bytes received from the origin by reads (read-through, revalidation, chunks).",
        ),
        Family::new(
            "nearcache_hedges_sent_total",
            Kind::Counter,
            "Second origin GETs sent because the first had not answered within the hedge delay.",
        ),
        Family::new(
            "nearcache_hedges_won_total",
            Kind::Counter,
            "Hedged origin GETs whose second request answered first.",
        ),
    ];

    /// Families labelled by shard and one more label.
    pub const LABELLED: &'static [Family] = &[
        Family::new(
            "nearcache_revalidations_total",
            Kind::Counter,
            "Revalidations of stale copies with the origin, by outcome (not_modified, changed, gone, failed).",
        ),
        Family::new(
            "nearcache_stale_responses_total",
            Kind::Counter,
            "Answers given from a stale copy, by reason (revalidating: stale-while-revalidate; origin_error: stale-if-error).",
        ),
    ];

    fn values(&self) -> [u64; 17] {
        [
            self.coalesced.load(Relaxed),
            self.origin_fetches.load(Relaxed),
            self.uploads_ok.load(Relaxed),
            self.upload_failures.load(Relaxed),
            self.origin_deletes_ok.load(Relaxed),
            self.origin_waits_timed_out.load(Relaxed),
            self.negative_hits.load(Relaxed),
            self.negative_stored.load(Relaxed),
            self.sync_logged.load(Relaxed),
            self.sync_repaired.load(Relaxed),
            self.sync_repaired_bytes.load(Relaxed),
            self.sync_repair_failures.load(Relaxed),
            self.chunk_fetches.load(Relaxed),
            self.chunk_hits.load(Relaxed),
            self.origin_body_bytes.load(Relaxed),
            self.hedges_sent.load(Relaxed),
            self.hedges_won.load(Relaxed),
        ]
    }

    /// Writes the families for every shard (`shards[i]` is shard i's metrics).
    pub fn render(shards: &[Arc<ObjectMetrics>], out: &mut Exposition) {
        let rows: Vec<[u64; 17]> = shards.iter().map(|m| m.values()).collect();
        for (i, f) in Self::FAMILIES.iter().enumerate() {
            out.per_shard(f, rows.iter().map(|r| r[i]));
        }
        let [revalidations, stale] = Self::LABELLED else {
            unreachable!("two labelled families")
        };
        out.family(revalidations);
        for o in Revalidation::ALL {
            for (shard, m) in shards.iter().enumerate() {
                let v = m.revalidations[o as usize].load(Relaxed);
                let labels = format!("shard=\"{shard}\",outcome=\"{}\"", o.label());
                out.sample(revalidations.name, &labels, v);
            }
        }
        out.family(stale);
        for r in StaleReason::ALL {
            for (shard, m) in shards.iter().enumerate() {
                let v = m.stale_responses[r as usize].load(Relaxed);
                let labels = format!("shard=\"{shard}\",reason=\"{}\"", r.label());
                out.sample(stale.name, &labels, v);
            }
        }
    }
}

type StoreCounter = fn(&ShardMetrics) -> &AtomicU64;

/// The store's counters and gauges, per shard.
const STORE: &[(Family, StoreCounter)] = &[
    (
        Family::new(
            "nearcache_cache_hits_total",
            Kind::Counter,
            "Lookups that found the key (object or tombstone).",
        ),
        |m| &m.hits,
    ),
    (
        Family::new(
            "nearcache_cache_memory_hits_total",
            Kind::Counter,
            "Hits served from the memory tier.",
        ),
        |m| &m.memory_hits,
    ),
    (
        Family::new(
            "nearcache_cache_misses_total",
            Kind::Counter,
            "Lookups that did not find the key.",
        ),
        |m| &m.misses,
    ),
    (
        Family::new(
            "nearcache_index_meta_reads_total",
            Kind::Counter,
            "Object metadata read back from the journal: the object was not among the \
             store.meta_cache_objects most recently used.",
        ),
        |m| &m.meta_reads,
    ),
    (
        Family::new(
            "nearcache_index_resident_metas",
            Kind::Gauge,
            "Objects whose metadata is held in memory.",
        ),
        |m| &m.resident_metas,
    ),
    (
        Family::new(
            "nearcache_evictions_total",
            Kind::Counter,
            "Objects evicted from disk.",
        ),
        |m| &m.evictions,
    ),
    (
        Family::new(
            "nearcache_evicted_bytes_total",
            Kind::Counter,
            "Bytes evicted from disk.",
        ),
        |m| &m.evicted_bytes,
    ),
    (
        Family::new(
            "nearcache_checksum_failures_total",
            Kind::Counter,
            "Stored objects that failed checksum verification (never served).",
        ),
        |m| &m.checksum_failures,
    ),
    (
        Family::new("nearcache_objects", Kind::Gauge, "Objects stored."),
        |m| &m.objects,
    ),
    (
        Family::new(
            "nearcache_tombstones",
            Kind::Gauge,
            "Tombstones of deleted ids.",
        ),
        |m| &m.tombstones,
    ),
    (
        Family::new("nearcache_disk_bytes", Kind::Gauge, "Object bytes on disk."),
        |m| &m.disk_bytes,
    ),
    (
        Family::new(
            "nearcache_disk_capacity_bytes",
            Kind::Gauge,
            "Disk capacity for object bytes.",
        ),
        |m| &m.disk_capacity,
    ),
    (
        Family::new(
            "nearcache_memory_bytes",
            Kind::Gauge,
            "Object bytes in the memory tier.",
        ),
        |m| &m.memory_bytes,
    ),
    (
        Family::new(
            "nearcache_memory_capacity_bytes",
            Kind::Gauge,
            "Memory tier capacity.",
        ),
        |m| &m.memory_capacity,
    ),
    (
        Family::new(
            "nearcache_pinned_bytes",
            Kind::Gauge,
            "Bytes not yet safe in the origin (never evicted).",
        ),
        |m| &m.pinned_bytes,
    ),
    (
        Family::new(
            "nearcache_pending_uploads",
            Kind::Gauge,
            "Origin writes and deletes queued in the journal.",
        ),
        |m| &m.pending_uploads,
    ),
    (
        Family::new(
            "nearcache_journal_commits_total",
            Kind::Counter,
            "Journal group commits (fsyncs).",
        ),
        |m| &m.journal_commits,
    ),
    (
        Family::new(
            "nearcache_journal_records_total",
            Kind::Counter,
            "Journal records written.",
        ),
        |m| &m.journal_records,
    ),
];

pub fn render_store(shards: &[Arc<ShardMetrics>], out: &mut Exposition) {
    for (f, counter) in STORE {
        out.per_shard(f, shards.iter().map(|m| counter(m).load(Relaxed)));
    }
}

const ORIGIN_REQUESTS: Family = Family::new(
    "nearcache_origin_requests_total",
    Kind::Counter,
    "Requests sent to the origin, by operation.",
);
const ORIGIN_LATENCY: Family = Family::new(
    "nearcache_origin_request_duration_seconds",
    Kind::Histogram,
    "Origin latency to response head.",
);
type OriginCounter = fn(&OriginStats) -> &AtomicU64;
const ORIGIN: &[(Family, OriginCounter)] = &[
    (
        Family::new(
            "nearcache_origin_errors_total",
            Kind::Counter,
            "Origin requests that failed.",
        ),
        |s| &s.errors,
    ),
    (
        Family::new(
            "nearcache_origin_retries_total",
            Kind::Counter,
            "Origin request retries.",
        ),
        |s| &s.retries,
    ),
    (
        Family::new(
            "nearcache_origin_not_found_total",
            Kind::Counter,
            "Origin 404s.",
        ),
        |s| &s.not_found,
    ),
    (
        Family::new(
            "nearcache_origin_received_bytes_total",
            Kind::Counter,
            "Bytes read from the origin.",
        ),
        |s| &s.bytes_in,
    ),
    (
        Family::new(
            "nearcache_origin_sent_bytes_total",
            Kind::Counter,
            "Bytes written to the origin.",
        ),
        |s| &s.bytes_out,
    ),
];

pub fn render_origin(st: &OriginStats, out: &mut Exposition) {
    out.family(&ORIGIN_REQUESTS);
    for (op, v) in [
        ("get", &st.requests_get),
        ("head", &st.requests_head),
        ("put", &st.requests_put),
        ("delete", &st.requests_delete),
    ] {
        out.sample(
            ORIGIN_REQUESTS.name,
            &format!("op=\"{op}\""),
            v.load(Relaxed),
        );
    }
    for (f, counter) in ORIGIN {
        out.single(f, counter(st).load(Relaxed));
    }
    out.family(&ORIGIN_LATENCY);
    let buckets: Vec<u64> = st.latency_buckets.iter().map(|b| b.load(Relaxed)).collect();
    let sum = st.latency_sum_micros.load(Relaxed) as f64 / 1e6;
    out.histogram(&ORIGIN_LATENCY, "", &LATENCY_BOUNDS_SECONDS, &buckets, sum);
}

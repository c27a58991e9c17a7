//! The object service: one API-neutral layer under the native and the S3 API.
//!
//! It owns what a cache does with an object, whichever API asked:
//! - reads ([`read`]): hits, conditional requests and ranges, read-through on a miss
//!   with coalescing (one origin GET per key at a time), HEAD and stat;
//! - freshness ([`fresh`]): TTL rules, the origin's Cache-Control, revalidation with
//!   conditional GETs (coalesced like misses), stale-while-revalidate, stale-if-error and
//!   remembered 404s;
//! - writes and deletes ([`write`]): levels, write conditions, replication to the other
//!   owners after a write (called once, here), waiting for the origin when asked;
//! - the uploader ([`uploader`]): drains the journal's pending origin writes;
//! - tombstone expiry ([`sweep_tombstones`]).
//!
//! API edges parse their requests into the types here, hand a [`read::Render`] for the
//! response head, and map [`ObjectError`] to their own errors. Nothing here knows which
//! API asked; the [`CacheKey`] knows where an object lives in the origin.

pub mod backends;
pub mod check;
pub mod chunks;
pub mod coalesce;
pub mod error;
pub mod fresh;
pub mod hedge;
pub mod invalidate;
pub mod jobs;
pub mod key;
pub mod metrics;
pub mod multipart;
pub mod origin_meta;
pub mod policy;
pub mod read;
pub mod syncer;
pub mod upload_fanout;
pub mod uploader;
pub mod write;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use nearcache_backends::Backends;
use nearcache_s3::Bridge;
use tokio::sync::oneshot;

pub use error::ObjectError;
pub use key::{CacheKey, MAX_CACHE_KEY};
pub use metrics::ObjectMetrics;

use crate::cluster::ClusterCtx;
use crate::config::Config;

/// What the object service needs of a shard's context.
pub trait ObjectCtx: ClusterCtx {
    fn objects(&self) -> &ObjectShard;
    /// Node-wide: jobs and invalidation counters.
    fn ops(&self) -> &Arc<jobs::Ops>;
}

/// One shard thread's part of the object service.
pub struct ObjectShard {
    pub cfg: Arc<Config>,
    /// The primary backend (the first of the default set): bucket-level, listing,
    /// multipart and copy operations of the S3 API go here.
    pub origin: Bridge,
    /// Every origin backend, their sets and health (one backend: today's single origin).
    pub backends: Arc<Backends>,
    /// The node's consistency checks.
    pub checks: Arc<check::CheckJobs>,
    /// Writes and repairs in flight per (backend, key).
    fanout: RefCell<backends::FanoutState>,
    /// Wakes this shard's syncer when a repair ends.
    sync_slot_freed: tokio::sync::Notify,
    pub metrics: Arc<ObjectMetrics>,
    /// Origin fetches and revalidations in progress on this (owner) shard, by key: later
    /// misses and stale hits wait on them.
    fetches: RefCell<HashMap<String, Rc<coalesce::Fetch>>>,
    /// The `[freshness]` rules.
    pub rules: fresh::Rules,
    /// Origin 404s remembered by this shard.
    negative: RefCell<fresh::NegativeCache>,
    /// This shard's origin GET latencies and hedge budget.
    hedger: hedge::Hedger,
    /// Writers waiting for the uploader, by (key, seq).
    upload_waiters: RefCell<HashMap<(String, u64), Vec<oneshot::Sender<Result<(), String>>>>>,
    /// Wakes this shard's uploader loop when an upload ends and frees a slot.
    upload_slot_freed: tokio::sync::Notify,
}

impl ObjectShard {
    pub fn new(cfg: Arc<Config>, backends: Arc<Backends>, checks: Arc<check::CheckJobs>) -> Self {
        let rules = fresh::Rules::new(&cfg.freshness, cfg.origin.bucket.as_deref());
        let hedger = hedge::Hedger::new(&cfg.hedge);
        ObjectShard {
            cfg,
            checks,
            origin: backends.primary().bridge.clone(),
            backends,
            fanout: Default::default(),
            sync_slot_freed: Default::default(),
            metrics: Arc::default(),
            fetches: Default::default(),
            rules,
            negative: Default::default(),
            hedger,
            upload_waiters: Default::default(),
            upload_slot_freed: Default::default(),
        }
    }

    /// How long a request waits for the origin (a write it must see there, a fetch).
    pub fn origin_wait(&self) -> Duration {
        Duration::from_secs(self.cfg.api.origin_wait_secs.max(1))
    }

    /// Forgets a remembered origin 404 of `key` (it was just written through nearcache).
    pub fn forget_missing(&self, key: &str) {
        self.negative.borrow_mut().forget(key);
    }

    /// Releases every writer waiting for the uploader at shutdown (their writes stay
    /// queued in the journal).
    pub fn release_waiters(&self) {
        self.upload_waiters.borrow_mut().clear();
    }

    /// Resolves the waiters of one pending op, and on success those of older ops of the
    /// key that it superseded before they were applied (the origin now has a newer state
    /// of the key; they would otherwise wait until `origin_wait_secs`).
    fn notify_upload(&self, key: &str, seq: u64, outcome: Result<(), String>) {
        let mut all = self.upload_waiters.borrow_mut();
        let mut waiters = all.remove(&(key.to_string(), seq)).unwrap_or_default();
        if outcome.is_ok() {
            let older: Vec<(String, u64)> = all
                .keys()
                .filter(|(k, s)| k == key && *s < seq)
                .cloned()
                .collect();
            for k in older {
                waiters.extend(all.remove(&k).unwrap_or_default());
            }
        }
        drop(all);
        for w in waiters {
            let _ = w.send(outcome.clone());
        }
    }
}

/// Drops expired tombstones once a minute until shutdown. In a cluster a tombstone
/// stays until every member has read past it.
pub async fn sweep_tombstones<C: ObjectCtx>(
    ctx: Rc<C>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let shard = ctx.mesh().id();
    loop {
        monoio::select! {
            _ = monoio::time::sleep(Duration::from_secs(60)) => {}
            _ = shutdown.changed() => return,
        }
        let cluster = ctx.cluster().map(|cs| {
            let peers = crate::cluster::sync::gc_peers(&cs.cl);
            (cs.cl.clone(), peers)
        });
        let swept = ctx
            .store()
            .sweep_tombstones_where(|t| match &cluster {
                Some((cl, peers)) => cl.book.seen_by_all(shard, t.seq, peers),
                None => true,
            })
            .await;
        match swept {
            Ok(0) => {}
            Ok(n) => tracing::debug!(shard, swept = n, "expired tombstones removed"),
            Err(e) => tracing::warn!(shard, error = %e, "tombstone sweep failed"),
        }
    }
}

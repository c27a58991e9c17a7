//! The consistency check job: lists a bucket (and prefix) on two backends side by side,
//! in key order, and queues repairs for the differences in the sync log of each key's
//! owner shard (cause `Check`). A key only one backend has is copied to the other,
//! unless the cache holds a tombstone for it (deleted through nearcache): then it is
//! deleted where it lingers. Keys with different sizes or ETags are copied from the
//! side whose ETag the cache holds; without a cached version they are only counted.
//! Keys something is queued for already are left to that entry.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use nearcache_s3::{ListEntry, ListParams};
use nearcache_shards::{Lookup, SyncCause, SyncEntry, SyncKind};
use serde::Serialize;

use super::backends::entry;
use super::{CacheKey, ObjectCtx};
use crate::mesh::on_shard;

/// Keys listed per page.
const PAGE: u32 = 1000;

/// Progress of one check, as `GET /api/v1/backends/check/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckStatus {
    pub id: String,
    /// None: the native API's bucket.
    pub bucket: Option<String>,
    pub prefix: String,
    pub backends: [String; 2],
    /// "running", "done" or "failed".
    pub state: &'static str,
    pub listed: [u64; 2],
    pub only_in: [u64; 2],
    pub mismatched: u64,
    /// Repairs queued in the sync log.
    pub queued: u64,
    pub error: Option<String>,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
}

/// The node's checks (shared by every shard).
#[derive(Default)]
pub struct CheckJobs {
    jobs: Mutex<BTreeMap<String, CheckStatus>>,
}

impl CheckJobs {
    pub fn get(&self, id: &str) -> Option<CheckStatus> {
        self.lock().get(id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, CheckStatus>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut CheckStatus)) {
        if let Some(s) = self.lock().get_mut(id) {
            f(s);
        }
    }
}

/// Starts a check of `bucket` (None: the native API's) under `prefix` between backends
/// `a` and `b` (default: the first two of the bucket's set); returns its id, or what is
/// wrong with the request.
pub fn start<C: ObjectCtx>(
    ctx: &Rc<C>,
    bucket: Option<String>,
    prefix: String,
    a: Option<String>,
    b: Option<String>,
) -> Result<String, String> {
    let bk = ctx.objects().backends.clone();
    let set = bk.set_for(bucket.as_deref());
    let pick = |name: Option<String>, nth: usize| -> Result<usize, String> {
        match name {
            Some(n) => bk
                .index_of(&n)
                .ok_or_else(|| format!("no backend named {n:?}")),
            None => set
                .members
                .get(nth)
                .copied()
                .ok_or_else(|| "the bucket's backend set has fewer than two backends".into()),
        }
    };
    let (ia, ib) = (pick(a, 0)?, pick(b, 1)?);
    if ia == ib {
        return Err("compare two different backends".into());
    }
    let id = ulid::Ulid::generate().to_string();
    let status = CheckStatus {
        id: id.clone(),
        bucket: bucket.clone(),
        prefix: prefix.clone(),
        backends: [
            bk.get_backend(ia).name.clone(),
            bk.get_backend(ib).name.clone(),
        ],
        state: "running",
        listed: [0; 2],
        only_in: [0; 2],
        mismatched: 0,
        queued: 0,
        error: None,
        started_ms: nearcache_shards::hlc::wall_ms(),
        finished_ms: None,
    };
    ctx.objects().checks.lock().insert(id.clone(), status);
    let c = ctx.clone();
    let job = id.clone();
    monoio::spawn(async move {
        let res = run(&c, &job, bucket, prefix, [ia, ib]).await;
        let checks = &c.objects().checks;
        checks.update(&job, |s| {
            s.finished_ms = Some(nearcache_shards::hlc::wall_ms());
            match res {
                Ok(()) => s.state = "done",
                Err(e) => {
                    s.state = "failed";
                    s.error = Some(e);
                }
            }
        });
        tracing::info!(check = %job, status = ?checks.get(&job), "consistency check ended");
    });
    Ok(id)
}

/// Pages of one backend's listing, in key order.
struct Lister {
    backend: usize,
    bucket: Option<String>,
    prefix: String,
    buf: VecDeque<ListEntry>,
    start_after: Option<String>,
    done: bool,
}

impl Lister {
    async fn peek<C: ObjectCtx>(&mut self, ctx: &C) -> Result<Option<&ListEntry>, String> {
        if self.buf.is_empty() && !self.done {
            let params = ListParams {
                prefix: self.prefix.clone(),
                delimiter: None,
                start_after: self.start_after.clone(),
                max_keys: PAGE,
            };
            let page = ctx
                .objects()
                .backends
                .list_on(self.backend, self.bucket.as_deref(), params)
                .await
                .map_err(|e| {
                    format!(
                        "listing {}: {e}",
                        ctx.objects().backends.get_backend(self.backend).name
                    )
                })?;
            self.done = !page.is_truncated || page.entries.is_empty();
            self.start_after = page.entries.last().map(|e| e.key.clone());
            self.buf.extend(page.entries);
        }
        Ok(self.buf.front())
    }
}

/// A difference found: the cache key, and which side has what.
struct Diff {
    key: String,
    have: [Option<ListEntry>; 2],
}

async fn run<C: ObjectCtx>(
    ctx: &Rc<C>,
    id: &str,
    bucket: Option<String>,
    prefix: String,
    pair: [usize; 2],
) -> Result<(), String> {
    // Native ids live under the configured prefix in the configured bucket.
    let key_prefix = match bucket {
        Some(_) => String::new(),
        None => ctx.objects().cfg.origin.prefix.clone(),
    };
    let mut listers = pair.map(|backend| Lister {
        backend,
        bucket: bucket.clone(),
        prefix: format!("{key_prefix}{prefix}"),
        buf: VecDeque::new(),
        start_after: None,
        done: false,
    });
    let cache_key = |k: &str| -> String {
        let k = k.strip_prefix(key_prefix.as_str()).unwrap_or(k);
        match &bucket {
            Some(b) => CacheKey::s3(b, k).into_string(),
            None => k.to_owned(),
        }
    };
    let checks = &ctx.objects().checks;
    let mut diffs = Vec::new();
    loop {
        let x = listers[0].peek(&**ctx).await?.cloned();
        let y = listers[1].peek(&**ctx).await?.cloned();
        let take = match (&x, &y) {
            (None, None) => break,
            (Some(_), None) => [true, false],
            (None, Some(_)) => [false, true],
            (Some(x), Some(y)) => match x.key.cmp(&y.key) {
                std::cmp::Ordering::Less => [true, false],
                std::cmp::Ordering::Greater => [false, true],
                std::cmp::Ordering::Equal => [true, true],
            },
        };
        let have = [
            take[0].then(|| x.clone()).flatten(),
            take[1].then(|| y.clone()).flatten(),
        ];
        for (side, t) in take.iter().enumerate() {
            if *t {
                listers[side].buf.pop_front();
            }
        }
        let same = match (&have[0], &have[1]) {
            (Some(a), Some(b)) => a.size == b.size && a.etag == b.etag,
            _ => false,
        };
        checks.update(id, |s| {
            for (listed, h) in s.listed.iter_mut().zip(&have) {
                *listed += u64::from(h.is_some());
            }
            match (&have[0], &have[1]) {
                (Some(_), None) => s.only_in[0] += 1,
                (None, Some(_)) => s.only_in[1] += 1,
                _ if !same => s.mismatched += 1,
                _ => {}
            }
        });
        if !same {
            let listed = have[0].as_ref().or(have[1].as_ref()).expect("one side");
            diffs.push(Diff {
                key: cache_key(&listed.key),
                have,
            });
        }
        if diffs.len() >= PAGE as usize {
            queue(ctx, id, pair, std::mem::take(&mut diffs)).await?;
        }
    }
    queue(ctx, id, pair, diffs).await
}

/// Queues the repairs of `diffs` on their keys' owner shards.
async fn queue<C: ObjectCtx>(
    ctx: &Rc<C>,
    id: &str,
    pair: [usize; 2],
    diffs: Vec<Diff>,
) -> Result<(), String> {
    let mut by_owner: HashMap<usize, Vec<Diff>> = HashMap::new();
    for d in diffs {
        if CacheKey::from_stored(&d.key).fits_store() {
            by_owner
                .entry(ctx.mesh().owner_of(&d.key))
                .or_default()
                .push(d);
        }
    }
    for (owner, diffs) in by_owner {
        let n = on_shard(ctx, owner, move |ctx| async move {
            let bk = ctx.objects().backends.clone();
            let mut entries: Vec<SyncEntry> = Vec::new();
            for d in diffs {
                let lookup = ctx.store().peek(&d.key);
                let cached_etag = match &lookup {
                    Lookup::Hit { meta, .. } => Some(meta.etag.clone()),
                    _ => None,
                };
                let deleted = matches!(lookup, Lookup::Deleted(_));
                for (side, &target) in pair.iter().enumerate() {
                    let (here, there) = (&d.have[side], &d.have[1 - side]);
                    let e = match (here, there) {
                        // Deleted through nearcache: a copy left behind goes.
                        (Some(_), _) if deleted => Some(SyncKind::Delete),
                        (None, Some(_)) if !deleted => Some(SyncKind::Put),
                        // Both have it, different: the side that differs from the cache.
                        (Some(h), Some(t)) => match &cached_etag {
                            Some(c) if h.etag != *c && t.etag == *c => Some(SyncKind::Put),
                            _ => None,
                        },
                        _ => None,
                    };
                    if let Some(kind) = e {
                        let (size, etag) = there
                            .as_ref()
                            .map_or((0, String::new()), |t| (t.size, t.etag.clone()));
                        entries.push(entry(
                            &bk,
                            target,
                            &d.key,
                            kind,
                            SyncCause::Check,
                            0,
                            size,
                            &etag,
                        ));
                    }
                }
            }
            let n = ctx.store().log_sync(entries, true).await;
            if let Ok(n) = n {
                ctx.objects()
                    .metrics
                    .sync_logged
                    .fetch_add(n as u64, Relaxed);
            }
            n
        })
        .await
        .map_err(|e| format!("reaching shard {owner}: {e}"))?
        .map_err(|e| format!("queueing repairs: {e}"))?;
        ctx.objects().checks.update(id, |s| s.queued += n as u64);
    }
    Ok(())
}

//! Several origin backends behind one cache: the object service's side.
//!
//! - [`write`]: the uploader's origin write or delete, fanned out to every backend of
//!   the key's set in parallel, each streaming from the local object file. Once the set's
//!   write policy is met (and at most `origin.straggler_ms` later for the others), the
//!   backends that missed it (error, timeout, maintenance, open circuit, or an older
//!   entry of theirs still queued for the key) become sync log entries, committed in the
//!   same journal transaction that marks the write done; until the policy is met the
//!   write stays pending and is retried, as with one origin.
//! - [`get`] / [`head`]: reads with failover; a 404 from a backend while another has the
//!   key is drift: counted, logged and queued for repair.
//! - Ordering per (backend, key): a write goes straight to a backend only when nothing
//!   of that key is queued or in flight for it there (`busy`, the sync log); otherwise it
//!   supersedes the queued entry. So a copy and a later delete reach a backend in order,
//!   and a late copy never undoes a delete.
//!
//! With one backend (today's single origin) the set is that backend with policy "all":
//! the uploader behaves as before (retry until it succeeds, nothing logged).

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use nearcache_backends::{Admit, BackendSet, Backends, Found, Target};
use nearcache_s3::{GetObject, PutMeta, PutSource, RemoteMeta};
use nearcache_shards::{
    BodyAt, ObjectMeta, PendingKind, PendingOp, Provenance, SyncCause, SyncEntry, SyncKind,
};

use super::{CacheKey, ObjectCtx, ObjectError};

/// Per-shard state of fan-out and repair.
#[derive(Default)]
pub struct FanoutState {
    /// (backend, key) with a write or repair in flight.
    pub(super) busy: HashSet<(usize, String)>,
    /// Backends that took a pending op already, by (key, seq): a retry skips them.
    acked: HashMap<(String, u64), Vec<usize>>,
}

/// Where `key` lives, before a backend's bucket mapping.
pub fn target(key: &CacheKey) -> Target {
    match key.loc() {
        Some(loc) => Target::Loc(loc),
        None => Target::Native(key.as_str().to_owned()),
    }
}

/// The backend set that holds `key`.
pub fn set_of<'a>(backends: &'a Backends, key: &CacheKey) -> &'a BackendSet {
    backends.set_for(key.bucket())
}

/// GET of `range` (None: whole) from the preferred backend of the key's set, failing
/// over to the next.
pub async fn get_range<C: ObjectCtx>(
    ctx: &C,
    key: &CacheKey,
    range: Option<(u64, u64)>,
) -> Result<GetObject, nearcache_s3::OriginError> {
    let b = &ctx.objects().backends;
    let found = b.get(set_of(b, key), &target(key), range).await?;
    note_drift(ctx, key, &found, &found.value.meta).await;
    Ok(found.value)
}

/// A revalidation: a conditional GET with failover, like [`get`].
pub async fn get_if_changed<C: ObjectCtx>(
    ctx: &C,
    key: &CacheKey,
    etag: &str,
) -> Result<GetObject, nearcache_s3::OriginError> {
    let b = &ctx.objects().backends;
    let found = b.get_if_changed(set_of(b, key), &target(key), etag).await?;
    note_drift(ctx, key, &found, &found.value.meta).await;
    Ok(found.value)
}

/// HEAD with failover, like [`get`].
pub async fn head<C: ObjectCtx>(ctx: &C, key: &CacheKey) -> Result<RemoteMeta, ObjectError> {
    let b = &ctx.objects().backends;
    let found = b.head(set_of(b, key), &target(key)).await?;
    note_drift(ctx, key, &found, &found.value).await;
    Ok(found.value)
}

/// A read found `key` on one backend after others answered 404: queue copies to them
/// (unless something of the key is queued already: that repair knows better).
async fn note_drift<C: ObjectCtx, T>(ctx: &C, key: &CacheKey, found: &Found<T>, meta: &RemoteMeta) {
    if found.missing_on.is_empty() {
        return;
    }
    let b = &ctx.objects().backends;
    let from = &b.get_backend(found.from).name;
    for &i in &found.missing_on {
        b.get_backend(i).health.drift.fetch_add(1, Relaxed);
        tracing::warn!(key = %key, missing_on = %b.get_backend(i).name, found_on = %from,
            "drift: a backend lacks an object another has; queued for repair");
    }
    if !key.fits_store() {
        return;
    }
    let entries = found
        .missing_on
        .iter()
        .map(|&i| {
            entry(
                b,
                i,
                key.as_str(),
                SyncKind::Put,
                SyncCause::Drift,
                0,
                meta.size,
                &meta.etag,
            )
        })
        .collect();
    match ctx.store().log_sync(entries, true).await {
        Ok(n) => {
            ctx.objects()
                .metrics
                .sync_logged
                .fetch_add(n as u64, Relaxed);
        }
        Err(e) => tracing::warn!(key = %key, error = %e, "queueing a drift repair failed"),
    }
}

/// A sync log entry for backend `i` (its id is given when it is logged).
#[expect(clippy::too_many_arguments, reason = "the fields of one entry")]
pub fn entry(
    b: &Backends,
    i: usize,
    key: &str,
    kind: SyncKind,
    cause: SyncCause,
    seq: u64,
    size: u64,
    etag: &str,
) -> SyncEntry {
    SyncEntry {
        backend: b.get_backend(i).name.clone(),
        key: key.to_owned(),
        kind,
        cause,
        seq,
        size: if kind == SyncKind::Put { size } else { 0 },
        etag: etag.to_owned(),
        created_ms: nearcache_shards::hlc::wall_ms(),
        id: 0,
    }
}

/// CreateBucket: on the primary backend (its answer is the client's), then on the other
/// backends of the bucket's set (best effort: one that fails is logged; writes to it
/// fail and stay in the sync log until the bucket exists there).
pub async fn create_bucket(objects: &super::ObjectShard, bucket: &str) -> Result<(), ObjectError> {
    objects.origin.create_bucket(bucket).await?;
    bucket_everywhere(objects, bucket, true).await;
    Ok(())
}

/// DeleteBucket, like [`create_bucket`].
pub async fn delete_bucket(objects: &super::ObjectShard, bucket: &str) -> Result<(), ObjectError> {
    objects.origin.delete_bucket(bucket).await?;
    bucket_everywhere(objects, bucket, false).await;
    Ok(())
}

async fn bucket_everywhere(objects: &super::ObjectShard, bucket: &str, create: bool) {
    let bk = &objects.backends;
    let primary = bk.primary().name.clone();
    for i in bk.all_members() {
        let b = bk.get_backend(i);
        if b.name == primary {
            continue;
        }
        let name = b.map_bucket(bucket).to_owned();
        let res = if create {
            b.bridge.create_bucket(&name).await
        } else {
            b.bridge.delete_bucket(&name).await
        };
        match res {
            Ok(()) => {}
            Err(nearcache_s3::OriginError::Service { code, .. })
                if code == "BucketAlreadyOwnedByYou" || code == "BucketAlreadyExists" => {}
            Err(e) => tracing::warn!(backend = %b.name, bucket = %name, create, error = %e,
                "bucket operation failed on a secondary backend"),
        }
    }
}

/// The origin metadata of a pending put.
pub fn put_meta(key: &CacheKey, meta: &nearcache_shards::ObjectMeta) -> PutMeta {
    PutMeta {
        content_type: meta.content_type.clone(),
        // The native name and level travel with the object, so a read-through restores them.
        user_meta: super::origin_meta::to_origin(
            key,
            &meta.user_meta,
            meta.name.as_deref(),
            meta.level,
        ),
        // Client writes carry the body's MD5 as ETag: let the origin verify it.
        md5_hex: (meta.provenance == Provenance::Client).then(|| meta.etag.clone()),
        headers: meta.headers.clone(),
    }
}

/// Uploads `src` to backend `i` (background bounds): a file over
/// `chunks.multipart_threshold` as a multipart upload (on an S3 backend), else one PUT.
/// Returns whether the backend's ETag is the body's MD5 (a single PUT), which a
/// verification may then compare.
pub async fn put_stored<C: ObjectCtx>(
    ctx: &C,
    i: usize,
    tgt: &Target,
    src: PutSource,
    meta: PutMeta,
) -> Result<bool, nearcache_s3::OriginError> {
    let objects = ctx.objects();
    let bk = &objects.backends;
    let cfg = &objects.cfg;
    let loc = bk.get_backend(i).loc_of(tgt, &cfg.origin.prefix);
    match (loc, &src) {
        (Some(loc), PutSource::File { path, offset, len })
            if super::multipart::wanted(cfg, *len) =>
        {
            let (path, offset, len) = (path.clone(), *offset, *len);
            bk.on(i, |b| async move {
                super::multipart::put(&b.background, &loc, path, offset, len, meta, &cfg.chunks)
                    .await
            })
            .await?;
            Ok(false)
        }
        _ => {
            bk.put(i, tgt, src, meta).await?;
            Ok(true)
        }
    }
}

/// Uploads a stored version to backend `i` ([`put_stored`]): from its file, or its inline
/// body read from the journal (small: held in memory for the upload).
pub async fn put_version<C: ObjectCtx>(
    ctx: &C,
    i: usize,
    tgt: &Target,
    key: &CacheKey,
    body: &BodyAt,
    meta: &ObjectMeta,
) -> Result<bool, nearcache_s3::OriginError> {
    let src = match body {
        BodyAt::File { path, offset } => PutSource::File {
            path: path.clone(),
            offset: *offset,
            len: meta.size,
        },
        BodyAt::Journal => ctx
            .store()
            .read_all(meta)
            .await
            .map(PutSource::Bytes)
            .map_err(|e| {
                nearcache_s3::OriginError::Rejected(format!("reading the stored copy: {e}"))
            })?,
    };
    put_stored(ctx, i, tgt, src, put_meta(key, meta)).await
}

/// Applies a pending op to the backends of its key's set. `Ok(missed)`: the policy is
/// met, and `missed` are the entries to log with its completion; `Err`: not met (the op
/// stays pending and is retried; backends that took it are not sent it again).
pub async fn write<C: ObjectCtx>(ctx: &Rc<C>, op: &PendingOp) -> Result<Vec<SyncEntry>, String> {
    let objects = ctx.objects();
    let bk = objects.backends.clone();
    let key = CacheKey::from_stored(&op.key);
    let set = set_of(&bk, &key).clone();
    let active = set
        .members
        .iter()
        .filter(|&&i| !bk.get_backend(i).health.in_maintenance())
        .count();
    let needed = set.policy.needed(active);
    // Acks of older ops of this key are moot (a newer op replaced them).
    objects
        .fanout
        .borrow_mut()
        .acked
        .retain(|(k, s), _| *k != op.key || *s == op.seq);
    let acked = objects
        .fanout
        .borrow()
        .acked
        .get(&(op.key.clone(), op.seq))
        .cloned()
        .unwrap_or_default();
    let mut ok = acked.len();
    let mut missed: Vec<usize> = Vec::new();
    let mut launch: Vec<usize> = Vec::new();
    for &i in &set.members {
        if acked.contains(&i) {
            continue;
        }
        let queued = objects.fanout.borrow().busy.contains(&(i, op.key.clone()))
            || ctx.store().sync_has(&bk.get_backend(i).name, &op.key);
        if queued || bk.admit(i) == Admit::No {
            missed.push(i);
        } else {
            launch.push(i);
        }
    }
    // One-writes that finish while this call coordinates record their ack here; later
    // ones (stragglers) clear the sync log entry made for them instead.
    objects
        .fanout
        .borrow_mut()
        .acked
        .entry((op.key.clone(), op.seq))
        .or_default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for &i in &launch {
        objects.fanout.borrow_mut().busy.insert((i, op.key.clone()));
        monoio::spawn(one_write(ctx.clone(), i, op.clone(), tx.clone()));
    }
    drop(tx);
    let started = Instant::now();
    tracing::debug!(key = %op.key, seq = op.seq, launched = launch.len(), queued = missed.len(), needed, "fan-out");
    let straggler = Duration::from_millis(objects.cfg.origin.straggler_ms);
    let mut in_flight = launch.len();
    let mut errors = Vec::new();
    let mut met_at = (ok >= needed).then(Instant::now);
    while in_flight > 0 {
        let next = match met_at {
            Some(t) => {
                let left = straggler.saturating_sub(t.elapsed());
                match monoio::time::timeout(left, rx.recv()).await {
                    Ok(v) => v,
                    Err(_) => break,
                }
            }
            None => rx.recv().await,
        };
        let Some((i, res)) = next else { break };
        in_flight -= 1;
        match res {
            Ok(()) => ok += 1,
            Err(e) => {
                errors.push(format!("{}: {e}", bk.get_backend(i).name));
                missed.push(i);
            }
        }
        if met_at.is_none() && ok >= needed {
            met_at = Some(Instant::now());
        }
        if met_at.is_none() && ok + in_flight < needed {
            break;
        }
    }
    tracing::debug!(key = %op.key, seq = op.seq, ok, needed, elapsed = ?started.elapsed(), "fan-out settled");
    if ok < needed {
        return Err(if errors.is_empty() {
            format!(
                "write policy {} not met: {ok} of {needed} backends took it (others unavailable or busy)",
                set.policy
            )
        } else {
            format!(
                "write policy {} not met ({ok} of {needed}): {}",
                set.policy,
                errors.join("; ")
            )
        });
    }
    // Stragglers still in flight are logged too; if they finish, they clear their entry.
    let acked_now = objects
        .fanout
        .borrow_mut()
        .acked
        .remove(&(op.key.clone(), op.seq))
        .unwrap_or_default();
    for &i in &launch {
        if !acked_now.contains(&i) && !missed.contains(&i) {
            missed.push(i);
        }
    }
    let (kind, size, etag) = match &op.kind {
        PendingKind::Put { meta, .. } => (SyncKind::Put, meta.size, meta.etag.as_str()),
        PendingKind::Delete => (SyncKind::Delete, 0, ""),
    };
    for &i in &missed {
        tracing::debug!(key = %op.key, backend = %bk.get_backend(i).name, ?kind,
            "origin backend missed a write; queued in the sync log");
    }
    Ok(missed
        .into_iter()
        .map(|i| entry(&bk, i, &op.key, kind, SyncCause::Missed, op.seq, size, etag))
        .collect())
}

/// One backend's share of a fan-out.
async fn one_write<C: ObjectCtx>(
    ctx: Rc<C>,
    i: usize,
    op: PendingOp,
    tx: tokio::sync::mpsc::UnboundedSender<(usize, Result<(), nearcache_s3::OriginError>)>,
) {
    let objects = ctx.objects();
    let bk = objects.backends.clone();
    let key = CacheKey::from_stored(&op.key);
    let tgt = target(&key);
    let res = match &op.kind {
        PendingKind::Put { body, meta, .. } => put_version(&*ctx, i, &tgt, &key, body, meta)
            .await
            .map(drop),
        PendingKind::Delete => bk.delete(i, &tgt).await,
    };
    objects
        .fanout
        .borrow_mut()
        .busy
        .remove(&(i, op.key.clone()));
    if res.is_ok() {
        let store = ctx.store();
        let coordinating = match objects
            .fanout
            .borrow_mut()
            .acked
            .get_mut(&(op.key.clone(), op.seq))
        {
            Some(acks) => {
                acks.push(i);
                true
            }
            None => false,
        };
        if !coordinating {
            // The op was completed without waiting for this backend, which was logged as
            // missing it: its entry (if still this op's) is done.
            let name = &bk.get_backend(i).name;
            let done = store
                .sync_entries(usize::MAX, |e| {
                    e.backend == *name && e.key == op.key && e.seq == op.seq
                })
                .pop();
            if let Some(e) = done {
                if let Ok(true) = store.complete_sync(name, &op.key, e.id).await {
                    objects.metrics.sync_repaired.fetch_add(1, Relaxed);
                }
            }
        }
    }
    let _ = tx.send((i, res));
}

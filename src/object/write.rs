//! Writes and deletes: on the key's owner shard, with their consistency levels, write
//! conditions, replication to the other owners (once, here, after the store has the
//! write), and waiting for the origin when the caller asks.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use nearcache_s3::PutMeta;
use nearcache_shards::{Lookup, Tombstone, WriteAttrs};
use tokio::sync::oneshot;

use super::{CacheKey, ObjectCtx, ObjectError};
use crate::mesh::on_shard;

/// Conditions on a write: `If-None-Match: *` and `If-Match`.
#[derive(Debug, Clone, Default)]
pub struct WriteCondition {
    /// Write only if no current version exists.
    pub if_none_match_any: bool,
    /// Write only if the current version's ETag is one of these (or `*`).
    pub if_match: Option<String>,
}

impl WriteCondition {
    fn is_empty(&self) -> bool {
        !self.if_none_match_any && self.if_match.is_none()
    }

    /// Checks against the cached version, else the origin's. Runs on the owner shard.
    async fn check<C: ObjectCtx>(&self, ctx: &C, key: &CacheKey) -> Result<(), ObjectError> {
        if self.is_empty() {
            return Ok(());
        }
        let current = match ctx.store().peek(key.as_str()) {
            Lookup::Hit { meta, .. } => Some(meta.etag.clone()),
            Lookup::Deleted(_) => None,
            Lookup::Miss => match super::read::origin_head(ctx, key).await {
                Ok(m) => Some(m.etag),
                Err(ObjectError::NotFound(_)) => None,
                Err(e) => return Err(e),
            },
        };
        if self.if_none_match_any && current.is_some() {
            return Err(ObjectError::PreconditionFailed(
                "If-None-Match: * and the object exists".into(),
            ));
        }
        if let Some(im) = &self.if_match {
            let Some(etag) = current else {
                return Err(ObjectError::NotFound(format!("{key} does not exist")));
            };
            let ok = im
                .split(',')
                .map(|t| t.trim().trim_start_matches("W/").trim_matches('"'))
                .any(|t| t == "*" || t == etag);
            if !ok {
                return Err(ObjectError::PreconditionFailed(
                    "If-Match did not match the current ETag".into(),
                ));
            }
        }
        Ok(())
    }
}

/// A write of one object, as both APIs ask it.
pub struct PutRequest {
    pub key: CacheKey,
    /// Content type, name, user metadata, stored headers, level.
    pub attrs: WriteAttrs,
    /// The body's declared length (the store reserves as bytes arrive either way).
    pub content_length: Option<u64>,
    /// Answer only once the origin has the write (bounded by `origin_wait_secs`).
    pub wait_origin: bool,
    pub cond: WriteCondition,
}

/// A stored write.
#[derive(Debug, Clone)]
pub struct Written {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub level: u8,
    pub in_origin: bool,
}

/// Why a write failed: the client's body (in the edge's own error type), or the service.
#[derive(Debug)]
pub enum WriteError<E> {
    /// The body stream failed after `got` bytes; nothing was stored.
    Body {
        got: u64,
        error: E,
    },
    Object(ObjectError),
}

impl<E> From<ObjectError> for WriteError<E> {
    fn from(e: ObjectError) -> Self {
        WriteError::Object(e)
    }
}

impl<E> From<nearcache_shards::StoreError> for WriteError<E> {
    fn from(e: nearcache_shards::StoreError) -> Self {
        WriteError::Object(e.into())
    }
}

/// A request body as the object service reads it: decoded and verified by the edge,
/// ending in an error of the edge's own type if the client's body was bad.
pub trait BodyStream<E>: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static {}
impl<E, S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static> BodyStream<E> for S {}

/// How fast a request body must arrive: some bytes at least every `idle`, and on
/// average `min_rate` bytes per second once `idle` has passed. A client that declares a
/// body and stalls cannot hold a writer (and its reserved space) for long.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    start: std::time::Instant,
    idle: std::time::Duration,
    min_rate: u64,
}

impl Pace {
    pub fn new(cfg: &crate::config::Config) -> Pace {
        Pace {
            start: std::time::Instant::now(),
            idle: std::time::Duration::from_secs(cfg.server.body_idle_timeout_secs.max(1)),
            min_rate: cfg.server.body_min_rate.0,
        }
    }

    /// The next chunk of `body`, or a timeout error saying what was too slow.
    pub async fn next<E, S: BodyStream<E>>(
        &self,
        body: &mut S,
        got: u64,
    ) -> Result<Option<Result<Bytes, E>>, ObjectError> {
        let Ok(item) = monoio::time::timeout(self.idle, body.next()).await else {
            return Err(ObjectError::RequestTimeout(format!(
                "no request body bytes arrived for {} s (after {got} bytes)",
                self.idle.as_secs()
            )));
        };
        let elapsed = self.start.elapsed();
        if elapsed > self.idle {
            let rate = got / elapsed.as_secs().max(1);
            if rate < self.min_rate {
                return Err(ObjectError::RequestTimeout(format!(
                    "the request body arrived at {rate} bytes/s, below the minimum of {} bytes/s",
                    self.min_rate
                )));
            }
        }
        Ok(item)
    }
}

/// PUT: stores the body on the key's owner shard, replicates it to the other owners,
/// and waits for the origin if asked. Keys too long for the store go to the origin
/// directly (staged in a file, never cached).
pub async fn put<C, E, S>(ctx: &Rc<C>, req: PutRequest, body: S) -> Result<Written, WriteError<E>>
where
    C: ObjectCtx,
    E: Send + 'static,
    S: BodyStream<E>,
{
    let owner = ctx.mesh().owner_of(req.key.as_str());
    // A bucket with cache_on_write = false only passes writes through to the origin.
    let cached = super::policy::caches_writes(&ctx.objects().cfg, &req.key);
    let fits = req.key.fits_store() && cached;
    let key = (!cached).then(|| req.key.clone());
    let written = on_shard(ctx, owner, move |ctx| async move {
        if fits {
            put_here(&ctx, req, body).await
        } else {
            put_uncached(&*ctx, req, body).await
        }
    })
    .await
    .map_err(|e| WriteError::Object(e.into()))??;
    if let Some(key) = key.filter(CacheKey::fits_store) {
        super::invalidate::after_pass_through(ctx, key).await;
    }
    Ok(written)
}

fn too_large(size: u64, max: u64) -> ObjectError {
    ObjectError::TooLarge { size, max }
}

async fn put_here<C: ObjectCtx, E, S: BodyStream<E>>(
    ctx: &Rc<C>,
    req: PutRequest,
    mut body: S,
) -> Result<Written, WriteError<E>> {
    let max = ctx.objects().cfg.api.max_object_size.0;
    if let Some(len) = req.content_length.filter(|&l| l > max) {
        return Err(too_large(len, max).into());
    }
    req.cond.check(&**ctx, &req.key).await?;
    ctx.objects().forget_missing(req.key.as_str());
    let mut writer = ctx
        .store()
        .begin_write(req.key.as_str(), req.content_length)
        .await?;
    let pace = Pace::new(&ctx.objects().cfg);
    loop {
        let item = match pace.next(&mut body, writer.written()).await {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(e) => {
                writer.abort().await;
                return Err(e.into());
            }
        };
        let chunk = match item {
            Ok(c) => c,
            Err(error) => {
                let got = writer.written();
                writer.abort().await;
                return Err(WriteError::Body { got, error });
            }
        };
        let size = writer.written().saturating_add(chunk.len() as u64);
        if size > max {
            writer.abort().await;
            return Err(too_large(size, max).into());
        }
        writer.write(chunk).await?;
    }
    if let Some(len) = req.content_length.filter(|&l| l != writer.written()) {
        let got = writer.written();
        writer.abort().await;
        return Err(ObjectError::IncompleteBody {
            got,
            expected: format!("Content-Length is {len}"),
        }
        .into());
    }
    let level = req.attrs.level;
    let meta = writer.finish(req.attrs).await?;
    // An older version held in chunks must not come back when this one is evicted.
    super::chunks::drop_manifest(ctx, req.key.as_str()).await;
    if let Some(cs) = ctx.cluster() {
        crate::cluster::route::replicate_put(ctx, cs, meta.clone())
            .await
            .map_err(ObjectError::from)?;
    }
    let mut in_origin = meta.in_origin;
    if req.wait_origin && level >= 1 && !in_origin {
        wait_for_origin(&**ctx, meta.key.clone(), meta.seq).await?;
        in_origin = true;
    }
    Ok(Written {
        key: meta.key.clone(),
        size: meta.size,
        etag: meta.etag.clone(),
        level: meta.level,
        in_origin,
    })
}

/// A body staged in a file of the shard's staging directory.
pub struct Staged {
    pub path: PathBuf,
    pub len: u64,
    pub md5_hex: String,
}

impl Staged {
    pub async fn remove(self) {
        if let Err(e) = monoio::fs::remove_file(&self.path).await {
            tracing::warn!(path = %self.path.display(), error = %e, "removing a staged body");
        }
    }
}

/// The shard's staging directory (made at start-up).
pub fn staging_dir(cfg: &crate::config::Config, shard: usize) -> PathBuf {
    cfg.server
        .data_dir
        .join(format!("shard-{shard}"))
        .join("staging")
}

/// Writes `body` to a fresh file in the shard's staging directory, up to `max` bytes.
pub async fn stage<C: ObjectCtx, E, S: BodyStream<E>>(
    ctx: &C,
    mut body: S,
    max: u64,
) -> Result<Staged, WriteError<E>> {
    let dir = staging_dir(&ctx.objects().cfg, ctx.mesh().id());
    let path = dir.join(format!("{}.part", ulid::Ulid::generate()));
    let file = monoio::fs::File::create(&path)
        .await
        .map_err(|e| ObjectError::Storage(format!("creating {}: {e}", path.display())))?;
    let mut staged = Staged {
        path,
        len: 0,
        md5_hex: String::new(),
    };
    let pace = Pace::new(&ctx.objects().cfg);
    let result = async {
        let mut md5 = Md5::new();
        while let Some(item) = pace.next(&mut body, staged.len).await? {
            let chunk = item.map_err(|error| WriteError::Body {
                got: staged.len,
                error,
            })?;
            let n = chunk.len() as u64;
            let size = staged.len.saturating_add(n);
            if size > max {
                return Err(too_large(size, max).into());
            }
            md5.update(&chunk);
            let (res, _) = file.write_all_at(chunk, staged.len).await;
            res.map_err(|e| {
                if e.raw_os_error() == Some(libc::ENOSPC) {
                    ObjectError::InsufficientStorage(format!("staging the body: {e}"))
                } else {
                    ObjectError::Storage(format!("staging the body: {e}"))
                }
            })?;
            staged.len = size;
        }
        Ok(hex::encode(md5.finalize()))
    }
    .await;
    let _ = file.close().await;
    match result {
        Ok(md5_hex) => {
            staged.md5_hex = md5_hex;
            Ok(staged)
        }
        Err(e) => {
            staged.remove().await;
            Err(e)
        }
    }
}

/// A PUT of a key too long for the store: staged, sent to the origin, never cached.
async fn put_uncached<C: ObjectCtx, E, S: BodyStream<E>>(
    ctx: &C,
    req: PutRequest,
    body: S,
) -> Result<Written, WriteError<E>> {
    let Some(loc) = req.key.loc() else {
        return Err(
            ObjectError::OriginOther("a native id never exceeds the key limit".into()).into(),
        );
    };
    req.cond.check(ctx, &req.key).await?;
    let staged = stage(ctx, body, ctx.objects().cfg.api.max_object_size.0).await?;
    if let Some(len) = req.content_length.filter(|&l| l != staged.len) {
        let got = staged.len;
        staged.remove().await;
        return Err(ObjectError::IncompleteBody {
            got,
            expected: format!("Content-Length is {len}"),
        }
        .into());
    }
    let meta = PutMeta {
        content_type: req.attrs.content_type.clone(),
        user_meta: req.attrs.user_meta.clone(),
        md5_hex: Some(staged.md5_hex.clone()),
        headers: req.attrs.headers.clone(),
    };
    let res = ctx
        .objects()
        .origin
        .put_file_in(&loc, staged.path.clone(), 0, staged.len, meta)
        .await;
    let size = staged.len;
    staged.remove().await;
    let put = res.map_err(ObjectError::from)?;
    Ok(Written {
        key: req.key.into_string(),
        size,
        etag: put.etag,
        level: 1,
        in_origin: true,
    })
}

/// Waits until the uploader has applied the pending op `(key, seq)` in the origin,
/// at most `origin_wait_secs`.
pub(super) async fn wait_for_origin<C: ObjectCtx>(
    ctx: &C,
    key: String,
    seq: u64,
) -> Result<(), ObjectError> {
    let objects = ctx.objects();
    // The uploader may have applied the op already (it starts as soon as the op is
    // queued, and its journal commit can land with the write's own): then there is
    // nothing to wait for. Checked and registered in one synchronous step.
    if ctx.store().pending_seq(&key) != Some(seq) {
        let done = match ctx.store().peek(&key) {
            Lookup::Hit { meta, .. } => meta.seq == seq && meta.in_origin,
            Lookup::Deleted(t) => t.seq == seq,
            Lookup::Miss => false,
        };
        if done {
            return Ok(());
        }
    }
    let (tx, rx) = oneshot::channel();
    objects
        .upload_waiters
        .borrow_mut()
        .entry((key, seq))
        .or_default()
        .push(tx);
    let bound = objects.origin_wait();
    match monoio::time::timeout(bound, rx).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(msg))) => Err(ObjectError::OriginWriteFailed(msg)),
        Ok(Err(_)) => Err(ObjectError::Unavailable(
            "stored locally and queued; shutting down before the origin write finished".into(),
        )),
        Err(_) => {
            objects.metrics.origin_waits_timed_out.fetch_add(1, Relaxed);
            Err(ObjectError::OriginWriteTimedOut {
                secs: bound.as_secs(),
            })
        }
    }
}

/// A delete of one object.
pub struct DeleteRequest {
    pub key: CacheKey,
    pub level: u8,
    /// Answer only once the origin has applied the delete (bounded).
    pub wait_origin: bool,
}

/// DELETE: a tombstone on the owner shard (queued for the origin at level >= 1),
/// pushed to the other owners. Keys too long for the store are deleted in the origin.
pub async fn delete<C: ObjectCtx>(ctx: &Rc<C>, req: DeleteRequest) -> Result<(), ObjectError> {
    if !req.key.fits_store() {
        let loc = req.key.loc().expect("only bucket keys are long");
        return Ok(ctx.objects().origin.delete_in(&loc).await?);
    }
    let owner = ctx.mesh().owner_of(req.key.as_str());
    on_shard(ctx, owner, move |ctx| async move {
        let t: Tombstone = ctx.store().delete(req.key.as_str(), req.level).await?;
        super::chunks::drop_manifest(&ctx, req.key.as_str()).await;
        if let Some(cs) = ctx.cluster() {
            crate::cluster::route::replicate_delete(cs, t.clone()).await?;
        }
        if req.wait_origin && req.level >= 1 {
            wait_for_origin(&*ctx, t.key.clone(), t.seq).await?;
        }
        Ok(())
    })
    .await?
}

/// Waits until a write or delete of `key` still pending upload has reached the origin
/// (so an origin-side operation such as a copy sees it).
pub async fn flush_pending<C: ObjectCtx>(ctx: &Rc<C>, key: CacheKey) -> Result<(), ObjectError> {
    if !key.fits_store() {
        return Ok(());
    }
    let owner = ctx.mesh().owner_of(key.as_str());
    on_shard(ctx, owner, move |ctx| async move {
        match ctx.store().pending_seq(key.as_str()) {
            Some(seq) => wait_for_origin(&*ctx, key.into_string(), seq).await,
            None => Ok(()),
        }
    })
    .await?
}

/// Checks a write condition against the current version of `key` (cached, else the
/// origin's), on its owner shard: for writes the origin makes (completing a multipart
/// upload), which the store never sees.
pub async fn check_condition<C: ObjectCtx>(
    ctx: &Rc<C>,
    key: CacheKey,
    cond: WriteCondition,
) -> Result<(), ObjectError> {
    if cond.is_empty() {
        return Ok(());
    }
    let owner = ctx.mesh().owner_of(key.as_str());
    on_shard(ctx, owner, move |ctx| async move {
        cond.check(&*ctx, &key).await
    })
    .await?
}

/// Drops the cached copy of `key` (the origin has a newer object).
pub async fn forget<C: ObjectCtx>(ctx: &Rc<C>, key: CacheKey) -> Result<(), ObjectError> {
    if !key.fits_store() {
        return Ok(());
    }
    let owner = ctx.mesh().owner_of(key.as_str());
    on_shard(ctx, owner, move |ctx| async move {
        ctx.store().forget(key.as_str()).await?;
        super::chunks::drop_manifest(&ctx, key.as_str()).await;
        Ok(())
    })
    .await?
}

/// Whether `key` was deleted through nearcache (its tombstone is still held).
pub async fn is_deleted<C: ObjectCtx>(ctx: &Rc<C>, key: CacheKey) -> Result<bool, ObjectError> {
    if !key.fits_store() {
        return Ok(false);
    }
    let owner = ctx.mesh().owner_of(key.as_str());
    Ok(on_shard(ctx, owner, move |ctx| async move {
        matches!(ctx.store().peek(key.as_str()), Lookup::Deleted(_))
    })
    .await?)
}

//! Large objects in chunks: objects over `chunks.threshold` are cached as fixed-size
//! chunks fetched with ranged origin GETs, so a range request moves only the chunks it
//! covers and a full GET fetches `chunks.fetch_concurrency` of them at a time.
//!
//! A miss asks the origin for the first chunk (`Range: bytes=0-(chunk_size-1)`); the
//! answer's Content-Range gives the object's size. Up to `chunk_size` the answer is the
//! whole object (stored whole, as before); up to `threshold` the rest is fetched with a
//! second ranged GET and the object is stored whole ([`Source`] chains the two); above
//! it the object is chunked.
//!
//! ## Store layout
//!
//! Chunks live in the store of the parent key's owner shard, under keys no API can
//! name (they begin with [`crate::cluster::sync::LOCAL_KEY_PREFIX`]: bucket names cannot
//! contain '~', native ids are ULIDs):
//!
//! ```text
//!  ~m/<key>                      manifest: the origin's metadata (ETag, Last-Modified,
//!                                content type, user metadata, headers) in its ObjectMeta;
//!                                body = {"size", "chunk_size", "etag"} (JSON)
//!  ~c/<etag>/<index>/<key>       chunk <index>: bytes [index*chunk_size, ...) of the
//!                                version with that ETag
//! ```
//!
//! Chunks are keyed by the version's ETag, so chunks of two versions never mix; a chunk
//! the origin answers with another ETag ends the response with an error and drops the
//! manifest (the next request reads the new version through). Chunks are stored and
//! verified (CRC32C per block) like any object and evicted on their own; a missing or
//! corrupt chunk is fetched again. Misses coalesce per chunk ([`super::coalesce`]).
//! These keys are node-local: anti-entropy never pulls them from peers. A write or
//! delete of the key through nearcache drops the manifest.

use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::{Bytes, BytesMut};
use futures::future::LocalBoxFuture;
use futures::StreamExt;
use nearcache_s3::{BodyStream, GetObject, OriginError, RemoteMeta};
use nearcache_shards::{FetchedFrom, Lookup, ObjectMeta, StoreError, WriteAttrs};
use tokio::sync::oneshot;

use super::coalesce::{fetch_in_progress, FetchGuard};
use super::origin_meta::Restored;
use super::{fresh, hedge, CacheKey, ObjectCtx, ObjectError, MAX_CACHE_KEY};
use crate::body::{BodyError, BodySender};
use crate::cluster::sync::LOCAL_KEY_PREFIX;

/// Room an ETag and a chunk index take in a chunk key (S3 ETags are at most ~45
/// characters; anything longer falls back to whole-object caching).
const CHUNK_KEY_ROOM: usize = 3 + 64 + 1 + 20 + 1;

/// How a chunked object is cut.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    pub size: u64,
    pub chunk_size: u64,
    pub etag: String,
}

impl Layout {
    /// Bytes of chunk `i`.
    fn bounds(&self, i: u64) -> Range<u64> {
        let start = i.saturating_mul(self.chunk_size);
        start..start.saturating_add(self.chunk_size).min(self.size)
    }

    /// The chunks `range` (non-empty, within the object) covers.
    fn covering(&self, range: &Range<u64>) -> std::ops::RangeInclusive<u64> {
        range.start / self.chunk_size..=(range.end - 1) / self.chunk_size
    }

    fn count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size)
    }
}

/// The store key of `key`'s manifest.
pub fn manifest_key(key: &str) -> String {
    format!("{LOCAL_KEY_PREFIX}m/{key}")
}

fn chunk_key(etag: &str, index: u64, key: &str) -> String {
    format!("{LOCAL_KEY_PREFIX}c/{etag}/{index}/{key}")
}

/// Whether `key` may be cached in chunks (its chunk keys fit the store).
fn chunkable(key: &CacheKey) -> bool {
    key.as_str().len() + CHUNK_KEY_ROOM <= MAX_CACHE_KEY
}

/// A chunked object held here: its manifest's stored metadata (the origin's) and layout.
pub struct Chunked {
    pub meta: Rc<ObjectMeta>,
    pub layout: Rc<Layout>,
}

/// The manifest of `key` in this shard's store, if any (a hit touches its eviction
/// state). An unreadable manifest is dropped.
pub async fn manifest<C: ObjectCtx>(ctx: &C, key: &CacheKey) -> Option<Chunked> {
    let mkey = manifest_key(key.as_str());
    // Peek first: a miss of the manifest is not a cache miss to count.
    if !matches!(ctx.store().peek(&mkey), Lookup::Hit { .. }) {
        return None;
    }
    let Lookup::Hit { meta, body } = ctx.store().lookup(&mkey) else {
        return None;
    };
    let body = match body {
        Some(b) => b,
        None => ctx.store().read_all(&meta).await.ok()?,
    };
    match serde_json::from_slice::<Layout>(&body) {
        Ok(layout) if layout.etag == meta.etag && layout.chunk_size > 0 => Some(Chunked {
            meta,
            layout: Rc::new(layout),
        }),
        _ => {
            tracing::warn!(key = %key, "dropping an unreadable chunk manifest");
            let _ = ctx.store().forget(&mkey).await;
            None
        }
    }
}

/// Drops `key`'s manifest (a newer version was written, deleted, or the origin changed
/// or lost it); its chunks are dropped in the background (or left to eviction).
pub async fn drop_manifest<C: ObjectCtx>(ctx: &Rc<C>, key: &str) {
    let mkey = manifest_key(key);
    let layout = match ctx.store().peek(&mkey) {
        Lookup::Hit { .. } => manifest(&**ctx, &CacheKey::from_stored(key))
            .await
            .map(|c| c.layout),
        _ => return,
    };
    if let Err(e) = ctx.store().forget(&mkey).await {
        tracing::warn!(key, error = %e, "dropping a chunk manifest failed");
    }
    if let Some(layout) = layout {
        let (ctx, key) = (ctx.clone(), key.to_owned());
        monoio::spawn(async move {
            for i in 0..layout.count() {
                let _ = ctx.store().forget(&chunk_key(&layout.etag, i, &key)).await;
            }
        });
    }
}

/// Stores the manifest of a chunked object (unless its Cache-Control forbids a shared
/// cache to keep it). Level 0: it is the origin's object, never uploaded or spread.
pub async fn write_manifest<C: ObjectCtx>(
    ctx: &C,
    key: &CacheKey,
    rmeta: &RemoteMeta,
    restored: &Restored,
    layout: &Layout,
) -> Option<Rc<ObjectMeta>> {
    if !fresh::storable(ctx.objects().rules.rule_for(key), &rmeta.headers) {
        return None;
    }
    let body = Bytes::from(serde_json::to_vec(layout).expect("a layout serializes"));
    let mkey = manifest_key(key.as_str());
    let attrs = WriteAttrs {
        content_type: rmeta.content_type.clone(),
        name: restored.name.clone(),
        user_meta: rmeta.user_meta.clone(),
        headers: rmeta.headers.clone(),
        level: 0,
        fetched: Some(FetchedFrom {
            etag: rmeta.etag.clone(),
            last_modified_ms: rmeta.last_modified_ms,
        }),
    };
    let stored = async {
        let mut w = ctx
            .store()
            .begin_fetched_write(&mkey, Some(body.len() as u64))
            .await?;
        w.write(body).await?;
        w.finish(attrs).await
    };
    match stored.await {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "chunk manifest not stored");
            None
        }
    }
}

/// What the first origin GET of a miss brought.
pub enum First {
    /// The whole object (its body may come in two ranged GETs).
    Whole(RemoteMeta, Source),
    /// A large object: the answer for chunk `.1`; it is cached in chunks.
    Chunked(GetObject, u64),
}

/// The body of a read-through: one origin answer, or the first chunk's answer followed
/// by a ranged GET of the rest (which must be the same version).
pub struct Source {
    cur: BodyStream,
    rest: Option<LocalBoxFuture<'static, Result<GetObject, OriginError>>>,
    etag: String,
}

impl Source {
    pub fn whole(obj: GetObject) -> (RemoteMeta, Source) {
        let etag = obj.meta.etag.clone();
        let src = Source {
            cur: obj.body,
            rest: None,
            etag,
        };
        (obj.meta, src)
    }

    /// The next piece of the body; `Err` when the stream broke (or the rest was
    /// another version).
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, String>> {
        loop {
            match self.cur.next_chunk().await {
                Some(Ok(b)) => return Some(Ok(b)),
                Some(Err(e)) => return Some(Err(e.to_string())),
                None => {}
            }
            match self.rest.take()?.await {
                Ok(obj) if obj.meta.etag == self.etag => self.cur = obj.body,
                Ok(_) => {
                    return Some(Err(
                        "the object changed in the origin while it was fetched".into()
                    ))
                }
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }
}

/// GET of `range` (end exclusive; None: whole) of `key` from the origin, hedged.
async fn origin_range<C: ObjectCtx>(
    ctx: &C,
    key: &CacheKey,
    range: Option<(u64, u64)>,
) -> Result<GetObject, OriginError> {
    let o = ctx.objects();
    // Each attempt (the hedge too) goes to the key's backends in read order, failing over.
    hedge::get(&o.hedger, &o.metrics, || {
        super::backends::get_range(ctx, key, range)
    })
    .await
}

/// The first origin GET of a miss (see the module doc). `start`: the first byte the
/// request wants; the first GET asks for the chunk holding it, so a range request of a
/// large object moves only the chunks it covers.
pub async fn first_get<C: ObjectCtx>(
    ctx: &Rc<C>,
    key: &CacheKey,
    start: u64,
) -> Result<First, ObjectError> {
    let cfg = &ctx.objects().cfg.chunks;
    if !cfg.enabled || !chunkable(key) {
        return Ok(whole(origin_range(&**ctx, key, None).await?));
    }
    let cs = cfg.chunk_size.0;
    let mut index = start / cs;
    let obj = loop {
        let a = index.saturating_mul(cs);
        match origin_range(&**ctx, key, Some((a, a.saturating_add(cs)))).await {
            Ok(o) => break o,
            // Past the end: ask from the first byte (the answer says the size).
            Err(OriginError::InvalidRange) if index > 0 => index = 0,
            // An empty object has no first byte to range over.
            Err(OriginError::InvalidRange) => {
                return Ok(whole(origin_range(&**ctx, key, None).await?));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let size = obj.meta.size;
    if size > cfg.threshold.0
        && chunk_key(&obj.meta.etag, index, key.as_str()).len() <= MAX_CACHE_KEY
    {
        return Ok(First::Chunked(obj, index));
    }
    if index > 0 {
        // Stored whole, but this answer holds the middle: read it from the start.
        drop(obj);
        return Ok(whole(origin_range(&**ctx, key, None).await?));
    }
    if obj.range.1 >= size {
        return Ok(whole(obj));
    }
    let (from, etag) = (obj.range.1, obj.meta.etag.clone());
    let (ctx2, key2) = (ctx.clone(), key.clone());
    let rest: LocalBoxFuture<'static, _> =
        Box::pin(async move { origin_range(&*ctx2, &key2, Some((from, size))).await });
    Ok(First::Whole(
        obj.meta,
        Source {
            cur: obj.body,
            rest: Some(rest),
            etag,
        },
    ))
}

fn whole(obj: GetObject) -> First {
    let (meta, src) = Source::whole(obj);
    First::Whole(meta, src)
}

/// The layout a chunked object's first answer describes.
pub fn layout_of<C: ObjectCtx>(ctx: &C, obj: &GetObject) -> Layout {
    Layout {
        size: obj.meta.size,
        chunk_size: ctx.objects().cfg.chunks.chunk_size.0,
        etag: obj.meta.etag.clone(),
    }
}

/// The chunk the first GET of a miss brought, as it arrives: the request that made
/// the GET gets its bytes directly, not back from the store.
pub struct FirstChunk {
    index: u64,
    rx: oneshot::Receiver<Result<Bytes, ObjectError>>,
}

/// Reads and stores chunk `index` from the first GET's answer, in its own task;
/// registered at once, so other readers of that chunk wait for it instead of asking the
/// origin again.
pub fn keep_first_chunk<C: ObjectCtx>(
    ctx: &Rc<C>,
    key: &CacheKey,
    layout: &Rc<Layout>,
    obj: GetObject,
    index: u64,
) -> FirstChunk {
    let ck = chunk_key(&layout.etag, index, key.as_str());
    let guard = FetchGuard::register(ctx.clone(), &ck);
    let (ctx, layout) = (ctx.clone(), layout.clone());
    ctx.objects().metrics.chunk_fetches.fetch_add(1, Relaxed);
    let (tx, rx) = oneshot::channel();
    monoio::spawn(async move {
        let r = collect(&*ctx, obj.body, layout.bounds(index)).await;
        deliver_and_store(&*ctx, &ck, r.map(|b| (b, obj.meta)), tx, guard).await;
    });
    FirstChunk { index, rx }
}

/// Hands a fetched chunk to the request that fetched it, then stores it, then lets the
/// requests waiting on the fetch read it from the store.
async fn deliver_and_store<C: ObjectCtx>(
    ctx: &C,
    ck: &str,
    fetched: Result<(Bytes, RemoteMeta), ObjectError>,
    tx: oneshot::Sender<Result<Bytes, ObjectError>>,
    guard: FetchGuard<impl ObjectCtx>,
) {
    match fetched {
        Ok((bytes, meta)) => {
            let _ = tx.send(Ok(bytes.clone()));
            store_chunk(ctx, ck, bytes, &meta).await;
            guard.finish(Ok(()));
        }
        Err(e) => {
            let _ = tx.send(Err(e.clone()));
            guard.finish(Err(e));
        }
    }
}

/// Whether every chunk `range` covers is held (a read that may not reach the origin).
pub fn all_held<C: ObjectCtx>(
    ctx: &C,
    key: &CacheKey,
    layout: &Layout,
    range: &Range<u64>,
) -> bool {
    range.is_empty()
        || layout.covering(range).all(|i| {
            matches!(
                ctx.store().peek(&chunk_key(&layout.etag, i, key.as_str())),
                Lookup::Hit { .. }
            )
        })
}

/// Streams `range` of a chunked object into `tx` from its own task: chunks in order,
/// `chunks.fetch_concurrency` loading at a time (held ones from the store, missing ones
/// from the origin). A failure ends the body with an error.
pub fn stream<C: ObjectCtx>(
    ctx: &Rc<C>,
    key: CacheKey,
    layout: Rc<Layout>,
    range: Range<u64>,
    tx: BodySender,
    mut first: Option<FirstChunk>,
) {
    let ctx = ctx.clone();
    monoio::spawn(async move {
        if range.is_empty() {
            return;
        }
        let conc = ctx.objects().cfg.chunks.fetch_concurrency.max(1);
        let parts = layout.covering(&range).map(|i| {
            let b = layout.bounds(i);
            let want = b.start.max(range.start) - b.start..b.end.min(range.end) - b.start;
            let part: LocalBoxFuture<'static, _> = match first.take_if(|f| f.index == i) {
                Some(f) => Box::pin(async move {
                    let chunk = f.rx.await.unwrap_or_else(|_| Err(abandoned()))?;
                    Ok(vec![slice(&chunk, &want)])
                }),
                None => Box::pin(load(ctx.clone(), key.clone(), layout.clone(), i, want)),
            };
            part
        });
        let mut parts = futures::stream::iter(parts).buffered(conc);
        while let Some(r) = parts.next().await {
            match r {
                Ok(pieces) => {
                    for p in pieces {
                        if tx.send(Ok(p)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(BodyError(e.to_string()))).await;
                    return;
                }
            }
        }
    });
}

/// `want` (relative to the chunk) of chunk `i`: from the store, or from the origin
/// (coalesced: one origin GET per chunk at a time; its own task, so it finishes for the
/// others waiting even if this request goes away).
async fn load<C: ObjectCtx>(
    ctx: Rc<C>,
    key: CacheKey,
    layout: Rc<Layout>,
    i: u64,
    want: Range<u64>,
) -> Result<Vec<Bytes>, ObjectError> {
    let ck = chunk_key(&layout.etag, i, key.as_str());
    let len = layout.bounds(i).end - layout.bounds(i).start;
    for _ in 0..2 {
        if let Some(parts) = stored(&*ctx, &ck, len, &want).await {
            ctx.objects().metrics.chunk_hits.fetch_add(1, Relaxed);
            return Ok(parts);
        }
        match fetch_in_progress(&*ctx, &CacheKey::from_stored(&ck)) {
            Some(f) => f.wait().await?,
            None => break,
        }
    }
    // Not held (or not kept after the fetch it waited on): fetch it.
    let guard = FetchGuard::register(ctx.clone(), &ck);
    let (tx, rx) = oneshot::channel();
    monoio::spawn(async move {
        let r = fetch_chunk(&ctx, &key, &layout, i).await;
        deliver_and_store(&*ctx, &ck, r, tx, guard).await;
    });
    let chunk = rx.await.unwrap_or_else(|_| Err(abandoned()))?;
    Ok(vec![slice(&chunk, &want)])
}

fn abandoned() -> ObjectError {
    ObjectError::Unavailable("the chunk fetch ended without an answer".into())
}

/// `want` of a chunk's bytes, clamped to them.
fn slice(chunk: &Bytes, want: &Range<u64>) -> Bytes {
    let e = (want.end as usize).min(chunk.len());
    chunk.slice((want.start as usize).min(e)..e)
}

/// `want` of the stored chunk `ck` (`len` bytes), verified; None when not held, of the
/// wrong size, or corrupt (the store dropped it).
async fn stored<C: ObjectCtx>(
    ctx: &C,
    ck: &str,
    len: u64,
    want: &Range<u64>,
) -> Option<Vec<Bytes>> {
    let Lookup::Hit { meta, body } = ctx.store().lookup(ck) else {
        return None;
    };
    if meta.size != len {
        return None;
    }
    if let Some(b) = body {
        return Some(vec![b.slice(want.start as usize..want.end as usize)]);
    }
    let mut reader = ctx.store().open_reader(&meta, want.clone()).await.ok()?;
    let mut parts = Vec::new();
    while let Some(r) = reader.next_chunk().await {
        parts.push(r.ok()?);
    }
    Some(parts)
}

/// One ranged origin GET of chunk `i`, read whole. Another ETag than the manifest's:
/// the object changed; the manifest is dropped.
async fn fetch_chunk<C: ObjectCtx>(
    ctx: &Rc<C>,
    key: &CacheKey,
    layout: &Layout,
    i: u64,
) -> Result<(Bytes, RemoteMeta), ObjectError> {
    ctx.objects().metrics.chunk_fetches.fetch_add(1, Relaxed);
    let b = layout.bounds(i);
    let obj = origin_range(&**ctx, key, Some((b.start, b.end))).await?;
    if obj.meta.etag != layout.etag || obj.meta.size != layout.size {
        drop_manifest(ctx, key.as_str()).await;
        return Err(ObjectError::OriginUnavailable(format!(
            "{key} changed in the origin while it was read in chunks (ETag {} is now {}); retry",
            layout.etag, obj.meta.etag
        )));
    }
    let meta = obj.meta.clone();
    Ok((collect(&**ctx, obj.body, b).await?, meta))
}

/// Reads a chunk's body from the origin whole, counting the bytes; it must be exactly
/// the chunk's length.
async fn collect<C: ObjectCtx>(
    ctx: &C,
    mut body: BodyStream,
    bounds: Range<u64>,
) -> Result<Bytes, ObjectError> {
    let len = bounds.end - bounds.start;
    let mut buf = BytesMut::with_capacity(len as usize);
    while let Some(r) = body.next_chunk().await {
        let piece = r.map_err(|e| {
            ObjectError::OriginOther(format!(
                "origin stream broke after {} bytes of a chunk: {e}",
                buf.len()
            ))
        })?;
        ctx.objects()
            .metrics
            .origin_body_bytes
            .fetch_add(piece.len() as u64, Relaxed);
        buf.extend_from_slice(&piece);
        if buf.len() as u64 > len {
            break;
        }
    }
    if buf.len() as u64 != len {
        return Err(ObjectError::OriginOther(format!(
            "origin sent {} bytes of a {len}-byte chunk (bytes {}..{})",
            buf.len(),
            bounds.start,
            bounds.end
        )));
    }
    Ok(buf.freeze())
}

async fn store_chunk<C: ObjectCtx>(ctx: &C, ck: &str, bytes: Bytes, rmeta: &RemoteMeta) {
    let attrs = WriteAttrs {
        fetched: Some(FetchedFrom {
            etag: rmeta.etag.clone(),
            last_modified_ms: rmeta.last_modified_ms,
        }),
        ..Default::default()
    };
    let stored = async {
        let mut w = ctx
            .store()
            .begin_fetched_write(ck, Some(bytes.len() as u64))
            .await?;
        w.write(bytes).await?;
        w.finish(attrs).await
    };
    match stored.await {
        Ok(_) | Err(StoreError::Superseded) => {}
        Err(e) => tracing::debug!(key = ck, error = %e, "chunk not cached"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_exactly_their_chunks() {
        let l = Layout {
            size: 100,
            chunk_size: 30,
            etag: "e".into(),
        };
        assert_eq!(l.count(), 4);
        assert_eq!(l.bounds(3), 90..100);
        assert_eq!(l.covering(&(0..100)), 0..=3);
        assert_eq!(l.covering(&(29..31)), 0..=1);
        assert_eq!(l.covering(&(30..60)), 1..=1);
        assert_eq!(l.covering(&(99..100)), 3..=3);
    }

    #[test]
    fn chunk_keys_cannot_be_api_keys() {
        let k = chunk_key("abc-3", 7, "bucket/some/key");
        assert_eq!(k, "~c/abc-3/7/bucket/some/key");
        assert!(crate::cluster::sync::is_local_key(&k));
        assert!(crate::cluster::sync::is_local_key(&manifest_key("01J0")));
        // An S3 key's text starts with its bucket, which cannot contain '~'.
        assert!(!crate::cluster::sync::is_local_key(
            CacheKey::s3("b", "~c/x").as_str()
        ));
    }
}

//! Reads: hits (conditional, ranged, from memory or disk), read-through on a miss with
//! coalescing, HEAD and stat. Runs on the key's owner shard.

use std::collections::BTreeMap;
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::Response;
use nearcache_s3::{GetObject, OriginError, RemoteMeta};
use nearcache_shards::{FetchedFrom, Lookup, ObjectMeta, ObjectWriter, StoreError, WriteAttrs};
use tokio::sync::oneshot;

use super::chunks::{self, Chunked, First};
use super::coalesce::{fetch_in_progress, FetchGuard};
use super::fresh::{self, Standing};
use super::metrics::{Revalidation, StaleReason};
use super::origin_meta::{self, Restored};
use super::{CacheKey, ObjectCtx, ObjectError};
use crate::body::{pump, Body, BodyError, BodySender, PUMP_DEPTH};
use crate::http_util::{resolve_range, Answer, ByteRangeSpec, Conditions};
use crate::mesh::on_shard;

/// A GET or HEAD of one object, as both APIs ask it.
pub struct GetRequest {
    pub key: CacheKey,
    pub head: bool,
    pub range: ByteRangeSpec,
    pub cond: Conditions,
    /// Read through from the origin on a miss.
    pub fetch: bool,
}

/// What a response head is rendered from: a stored object or the origin's description.
pub struct ObjectView<'a> {
    pub key: &'a str,
    pub size: u64,
    pub etag: &'a str,
    pub last_modified_ms: u64,
    pub content_type: Option<&'a str>,
    pub name: Option<&'a str>,
    pub user_meta: &'a BTreeMap<String, String>,
    pub headers: &'a BTreeMap<String, String>,
    pub parts_count: Option<u32>,
    /// The stored consistency level (None: described by the origin).
    pub level: Option<u8>,
    /// How the cache answered (the `X-Cache-Status` header).
    pub status: CacheStatus,
    /// Seconds since the copy was last known current (the `Age` header); None when the
    /// origin described it for this request.
    pub age_secs: Option<u64>,
    /// Where a stored version keeps its rendered header values (None: from the origin).
    derived: Option<&'a nearcache_shards::Derived>,
}

/// Header values of one stored version, rendered once and reused by every hit.
pub struct HeadValues {
    /// The ETag, quoted.
    pub etag: http::HeaderValue,
    pub last_modified: http::HeaderValue,
    /// The user metadata as one JSON object (None when there is none).
    pub user_meta_json: Option<http::HeaderValue>,
    /// The stored headers that are valid as such (names lowercase).
    pub stored_headers: Box<[(http::HeaderName, http::HeaderValue)]>,
    /// What its Cache-Control and Expires say (read by every freshness check).
    pub directives: fresh::OriginDirectives,
}

/// How the cache answered a read, as `X-Cache-Status` says (nginx's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// A fresh stored copy.
    Hit,
    /// Read through from the origin.
    Miss,
    /// A stale copy the origin confirmed (304) before this answer.
    Revalidated,
    /// A stale copy answered because revalidation failed (stale-if-error).
    Stale,
    /// A stale copy answered while a background request revalidates it
    /// (stale-while-revalidate).
    Updating,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Stale => "STALE",
            CacheStatus::Updating => "UPDATING",
        }
    }

    pub fn header_value(self) -> http::HeaderValue {
        http::HeaderValue::from_static(self.as_str())
    }
}

/// The response header that says how the cache answered.
pub const X_CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("x-cache-status");

impl<'a> ObjectView<'a> {
    pub fn stored(m: &'a ObjectMeta, status: CacheStatus) -> Self {
        let age_ms = super::fresh::now_ms().saturating_sub(m.validated_ms);
        ObjectView {
            key: &m.key,
            size: m.size,
            etag: &m.etag,
            last_modified_ms: m.last_modified_ms,
            content_type: m.content_type.as_deref(),
            name: m.name.as_deref(),
            user_meta: &m.user_meta,
            headers: &m.headers,
            parts_count: None,
            level: Some(m.level),
            status,
            age_secs: Some(age_ms / 1000),
            derived: Some(&m.derived),
        }
    }

    pub fn remote(key: &'a str, m: &'a RemoteMeta, restored: &'a Restored) -> Self {
        ObjectView {
            key,
            size: m.size,
            etag: &m.etag,
            last_modified_ms: m.last_modified_ms,
            content_type: m.content_type.as_deref(),
            name: restored.name.as_deref(),
            user_meta: &m.user_meta,
            headers: &m.headers,
            parts_count: m.parts_count,
            level: None,
            status: CacheStatus::Miss,
            age_secs: None,
            derived: None,
        }
    }

    /// The body came from the origin for this request (or a fetch it waited on).
    pub fn fetched(&self) -> bool {
        self.status == CacheStatus::Miss
    }

    /// A response head with ETag, Last-Modified, Accept-Ranges, X-Cache-Status and Age.
    /// Renderers add to its header map in place (`headers_mut`): each `.header()` of a
    /// builder moves the whole head, and a hot hit renders a dozen headers.
    pub fn head_builder(&self) -> http::response::Builder {
        let hv = self.head_values();
        let mut b = Response::builder();
        if let Some(h) = b.headers_mut() {
            h.reserve(HEAD_HEADERS);
            h.insert(http::header::ETAG, hv.etag.clone());
            h.insert(http::header::LAST_MODIFIED, hv.last_modified.clone());
            h.insert(
                http::header::ACCEPT_RANGES,
                http::HeaderValue::from_static("bytes"),
            );
            h.insert(X_CACHE_STATUS, self.status.header_value());
            if let Some(age) = self.age_secs {
                h.insert(http::header::AGE, http::HeaderValue::from(age));
            }
        }
        b
    }

    /// ETag, Last-Modified and user metadata as header values: for a stored version
    /// made on its first read and kept with it.
    pub fn head_values(&self) -> std::borrow::Cow<'a, HeadValues> {
        let make = || HeadValues {
            etag: crate::http_util::quoted(self.etag),
            last_modified: http::HeaderValue::from_str(&crate::http_util::http_date(
                self.last_modified_ms,
            ))
            .unwrap_or(http::HeaderValue::from_static("")),
            user_meta_json: (!self.user_meta.is_empty())
                .then(|| serde_json::to_string(self.user_meta).unwrap_or_default())
                .and_then(|j| http::HeaderValue::from_str(&j).ok()),
            stored_headers: self
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                        http::HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
            directives: fresh::origin_directives(self.headers),
        };
        match self.derived.and_then(|d| d.get_or_init(make)) {
            Some(v) => std::borrow::Cow::Borrowed(v),
            None => std::borrow::Cow::Owned(make()),
        }
    }
}

impl ObjectView<'_> {
    /// The Content-Type header: the stored one, or application/octet-stream when there
    /// is none (or it is not a valid header value).
    pub fn content_type_value(&self) -> http::HeaderValue {
        const OCTETS: http::HeaderValue =
            http::HeaderValue::from_static("application/octet-stream");
        match self.content_type {
            None | Some("application/octet-stream") => OCTETS,
            Some(t) => http::HeaderValue::from_str(t).unwrap_or(OCTETS),
        }
    }

    /// The stored consistency level as a header value.
    pub fn level_value(&self) -> Option<http::HeaderValue> {
        const LEVELS: [http::HeaderValue; 3] = [
            http::HeaderValue::from_static("0"),
            http::HeaderValue::from_static("1"),
            http::HeaderValue::from_static("2"),
        ];
        let l = self.level?;
        Some(match LEVELS.get(usize::from(l)) {
            Some(v) => v.clone(),
            None => http::HeaderValue::from(u16::from(l)),
        })
    }
}

/// Room for the headers of a typical read's response, reserved once.
const HEAD_HEADERS: usize = 16;

impl Clone for HeadValues {
    fn clone(&self) -> Self {
        HeadValues {
            etag: self.etag.clone(),
            last_modified: self.last_modified.clone(),
            user_meta_json: self.user_meta_json.clone(),
            stored_headers: self.stored_headers.clone(),
            directives: self.directives,
        }
    }
}

/// How an API edge renders a read's response head. Runs on the owner shard with the
/// metadata borrowed, so nothing is copied to render it.
pub trait Render: Send + 'static {
    /// Status and headers (Content-Length and Content-Range included) for `answer`.
    fn head(&self, view: &ObjectView<'_>, answer: &Answer) -> http::response::Builder;
}

/// Decides the answer to `req` for an object described by `view`: 304, 412, 416, or
/// the part of the body to send.
fn decide(req: &GetRequest, view: &ObjectView<'_>) -> Result<Answer, ObjectError> {
    if let Some(status) = req.cond.evaluate(view.etag, view.last_modified_ms, true) {
        if status == http::StatusCode::NOT_MODIFIED {
            return Ok(Answer::NotModified);
        }
        return Err(ObjectError::PreconditionFailed(
            "If-Match or If-Unmodified-Since did not hold".into(),
        ));
    }
    match resolve_range(req.range, view.size) {
        Ok(None) => Ok(Answer::Whole),
        Ok(Some(r)) => Ok(Answer::Partial(r)),
        Err(_) => Err(ObjectError::RangeNotSatisfiable { size: view.size }),
    }
}

fn respond(b: http::response::Builder, body: Body) -> Response<Body> {
    b.body(body).expect("valid response")
}

/// GET or HEAD: runs on the key's owner shard.
pub async fn get<C: ObjectCtx, R: Render>(
    ctx: &Rc<C>,
    req: GetRequest,
    render: R,
) -> Result<Response<Body>, ObjectError> {
    let owner = ctx.mesh().owner_of(req.key.as_str());
    on_shard(ctx, owner, move |ctx| async move {
        get_here(ctx, req, render).await
    })
    .await?
}

/// GET or HEAD in a cluster, on a node that is not the key's first owner: served here in
/// one hop if the owner shard holds a fresh copy this node may serve (it owns the key, or
/// the copy is level 2). `None`: nothing servable here; the caller proxies (a stale copy
/// is revalidated by the first owner, so that one request per key goes to the origin).
pub async fn get_held<C: ObjectCtx, R: Render>(
    ctx: &Rc<C>,
    req: GetRequest,
    render: R,
    owner_here: bool,
) -> Result<Option<Response<Body>>, ObjectError> {
    let owner = ctx.mesh().owner_of(req.key.as_str());
    on_shard(ctx, owner, move |ctx| async move {
        let held = match ctx.store().peek(req.key.as_str()) {
            Lookup::Hit { meta, .. } if !owner_here && meta.level < 2 => None,
            Lookup::Hit { meta, body } => Some((meta, body)),
            _ => None,
        };
        let Some((meta, body)) = held else {
            return Ok(get_near(&ctx, &req, &render).await);
        };
        if standing_of(&*ctx, &req.key, &meta) != Standing::Fresh {
            return Ok(None);
        }
        // Counted as a hit only when served.
        let _ = ctx.store().lookup(req.key.as_str());
        match serve_hit(&*ctx, &req, &render, &meta, body, CacheStatus::Hit).await {
            Ok(r) => r.map(Some),
            // Dropped as corrupt: not servable here any more.
            Err(Corrupted) => Ok(None),
        }
    })
    .await?
}

/// A read this node neither owns nor holds: answered from a near copy of the owner's
/// (`cluster::near`) when one is held and fresh; else None (the caller proxies), and a
/// key proxied twice recently gets a near copy fetched in the background.
async fn get_near<C: ObjectCtx, R: Render>(
    ctx: &Rc<C>,
    req: &GetRequest,
    render: &R,
) -> Option<Response<Body>> {
    let cs = ctx.cluster()?;
    let key = req.key.as_str();
    if let Some((meta, body)) = crate::cluster::near::lookup(cs, key) {
        if standing_of(&**ctx, &req.key, &meta) == Standing::Fresh {
            if let Ok(Ok(resp)) =
                serve_hit(&**ctx, req, render, &meta, Some(body), CacheStatus::Hit).await
            {
                return Some(resp);
            }
            // An error answer (a failed precondition, a bad range): the owner gives it.
            return None;
        }
        crate::cluster::near::drop_key(cs, key);
    }
    if crate::cluster::near::admit(cs, key) {
        let (cs, shards, ctx2) = (cs.clone(), ctx.mesh().shards(), ctx.clone());
        let (key, ckey) = (key.to_owned(), req.key.clone());
        monoio::spawn(async move {
            let fresh = |m: &ObjectMeta| standing_of(&*ctx2, &ckey, m) == Standing::Fresh;
            crate::cluster::near::fill(cs, shards, key, fresh).await;
        });
    }
    None
}

/// The stored copy failed verification (already dropped by the store).
struct Corrupted;

/// The freshness standing of a stored copy of `key` now.
fn standing_of<C: ObjectCtx>(ctx: &C, key: &CacheKey, meta: &ObjectMeta) -> Standing {
    let rule = ctx.objects().rules.rule_for(key);
    let view = ObjectView::stored(meta, CacheStatus::Hit);
    fresh::standing(rule, meta, &view.head_values().directives, fresh::now_ms())
}

async fn get_here<C: ObjectCtx, R: Render>(
    ctx: Rc<C>,
    req: GetRequest,
    render: R,
) -> Result<Response<Body>, ObjectError> {
    match ctx.store().lookup(req.key.as_str()) {
        Lookup::Hit { meta, body } => match standing_of(&*ctx, &req.key, &meta) {
            Standing::Fresh => serve_stored(ctx, req, render, &meta, body, CacheStatus::Hit).await,
            // The client asked not to reach the origin: what is here is the answer.
            Standing::Stale { .. } if !req.fetch => {
                serve_stored(ctx, req, render, &meta, body, CacheStatus::Stale).await
            }
            Standing::Stale {
                serve_while_revalidating: true,
                ..
            } => {
                revalidate_in_background(&ctx, &req.key, &meta);
                ctx.objects()
                    .metrics
                    .stale_served(StaleReason::Revalidating);
                serve_stored(ctx, req, render, &meta, body, CacheStatus::Updating).await
            }
            Standing::Stale { .. } => Box::pin(revalidate(ctx, req, render, meta)).await,
        },
        Lookup::Deleted(t) => Err(deleted(&req.key, t.deleted_at_ms)),
        // Boxed: the hot path's future (moved into a cross-shard job on every request)
        // stays the size of a hit's, not of a read-through's.
        Lookup::Miss => Box::pin(get_missing(ctx, req, render)).await,
    }
}

/// `get_here` of a key the index does not hold: its chunks, or read through.
async fn get_missing<C: ObjectCtx, R: Render>(
    ctx: Rc<C>,
    req: GetRequest,
    render: R,
) -> Result<Response<Body>, ObjectError> {
    match chunks::manifest(&*ctx, &req.key).await {
        Some(c) => serve_chunked(ctx, req, render, c).await,
        None if req.fetch => read_through(ctx, req, render).await,
        None => Err(ObjectError::NotFound(format!(
            "{} is not cached and read-through is off",
            req.key
        ))),
    }
}

/// Serves a stored copy; one that fails verification is read through again (or is a
/// miss when read-through is off).
async fn serve_stored<C: ObjectCtx, R: Render>(
    ctx: Rc<C>,
    req: GetRequest,
    render: R,
    meta: &ObjectMeta,
    body: Option<Bytes>,
    status: CacheStatus,
) -> Result<Response<Body>, ObjectError> {
    match serve_hit(&*ctx, &req, &render, meta, body, status).await {
        Ok(r) => r,
        Err(Corrupted) if req.fetch => Box::pin(read_through(ctx, req, render)).await,
        Err(Corrupted) => Err(ObjectError::NotFound(format!(
            "the stored copy of {} failed verification and was dropped; read-through is off",
            req.key
        ))),
    }
}

fn deleted(key: &CacheKey, at_ms: u64) -> ObjectError {
    ObjectError::Deleted {
        key: key.to_string(),
        at_ms,
    }
}

async fn serve_hit<C: ObjectCtx, R: Render>(
    ctx: &C,
    req: &GetRequest,
    render: &R,
    meta: &ObjectMeta,
    body: Option<Bytes>,
    status: CacheStatus,
) -> Result<Result<Response<Body>, ObjectError>, Corrupted> {
    let view = ObjectView::stored(meta, status);
    let answer = match decide(req, &view) {
        Ok(a) => a,
        Err(e) => return Ok(Err(e)),
    };
    let builder = render.head(&view, &answer);
    let range = match &answer {
        Answer::NotModified => return Ok(Ok(respond(builder, Body::Empty))),
        _ if req.head => return Ok(Ok(respond(builder, Body::Empty))),
        Answer::Whole => 0..meta.size,
        Answer::Partial(r) => r.clone(),
    };
    if let Some(b) = body {
        return Ok(Ok(respond(builder, Body::full(slice(&b, &range)))));
    }
    let store = ctx.store();
    if meta.size <= ctx.objects().cfg.store.memory_object_max.0 {
        return match store.read_all(meta).await {
            Ok(b) => Ok(Ok(respond(builder, Body::full(slice(&b, &range))))),
            Err(StoreError::Corrupt { .. } | StoreError::NotFound) => Err(Corrupted),
            Err(e) => Ok(Err(e.into())),
        };
    }
    if range.is_empty() {
        return Ok(Ok(respond(builder, Body::Empty)));
    }
    let len = range.end - range.start;
    let mut reader = match store.open_reader(meta, range).await {
        Ok(r) => r,
        Err(StoreError::Corrupt { .. } | StoreError::NotFound) => return Err(Corrupted),
        Err(e) => return Ok(Err(e.into())),
    };
    // Read the first chunk before answering, so a bad first block is still a clean miss.
    let first = match reader.next_chunk().await {
        Some(Ok(c)) => c,
        Some(Err(StoreError::Corrupt { .. } | StoreError::NotFound)) => return Err(Corrupted),
        Some(Err(e)) => return Ok(Err(e.into())),
        None => Bytes::new(),
    };
    let body = pump(len, Some(first), reader, "reading the stored object");
    Ok(Ok(respond(builder, body)))
}

/// `b[range]`, clamped: a stored body shorter than its metadata says is never sliced
/// out of bounds (the response then ends short and the connection is cut).
fn slice(b: &Bytes, range: &Range<u64>) -> Bytes {
    let len = b.len() as u64;
    let (s, e) = (range.start.min(len), range.end.min(len));
    b.slice(s as usize..e as usize)
}

/// Answers from what the store holds after a fetch or revalidation ended with
/// `error` (None: it succeeded). `revalidated`: the hlc of the stale copy the request
/// found (the same version now is REVALIDATED, another one came from the origin: MISS).
/// After a failure a stale copy is answered only within its stale-if-error bound.
async fn serve_current<C: ObjectCtx, R: Render>(
    ctx: &C,
    req: &GetRequest,
    render: &R,
    revalidated: Option<u64>,
    error: Option<&ObjectError>,
) -> Result<Response<Body>, ObjectError> {
    match ctx.store().peek(req.key.as_str()) {
        Lookup::Hit { meta, body } => {
            let status = match (error, standing_of(ctx, &req.key, &meta)) {
                (None, _) if revalidated == Some(meta.hlc) => CacheStatus::Revalidated,
                (None, _) => CacheStatus::Miss,
                (Some(_), Standing::Fresh) => CacheStatus::Hit,
                (
                    Some(e),
                    Standing::Stale {
                        serve_on_error_until_ms: until,
                        ..
                    },
                ) => {
                    if fresh::now_ms() >= until {
                        return Err(e.clone());
                    }
                    ctx.objects().metrics.stale_served(StaleReason::OriginError);
                    tracing::info!(key = %req.key, error = %e, "answering a stale copy (stale-if-error)");
                    CacheStatus::Stale
                }
            };
            match serve_hit(ctx, req, render, &meta, body, status).await {
                Ok(r) => r,
                Err(Corrupted) => Err(ObjectError::Corrupt(format!(
                    "the stored copy of {} failed verification and was dropped",
                    req.key
                ))),
            }
        }
        Lookup::Deleted(t) => Err(deleted(&req.key, t.deleted_at_ms)),
        Lookup::Miss => Err(error.cloned().unwrap_or_else(|| {
            ObjectError::Unavailable(format!(
                "the copy of {} was evicted while it was fetched; retry",
                req.key
            ))
        })),
    }
}

/// A stale copy that must not be answered before the origin confirms or replaces it:
/// one revalidation per key at a time (later requests wait for it, as misses do).
async fn revalidate<C: ObjectCtx, R: Render>(
    ctx: Rc<C>,
    req: GetRequest,
    render: R,
    stale: Rc<ObjectMeta>,
) -> Result<Response<Body>, ObjectError> {
    if let Some(fetch) = fetch_in_progress(&*ctx, &req.key) {
        let outcome = fetch.wait().await;
        let was = Some(stale.hlc);
        return serve_current(&*ctx, &req, &render, was, outcome.err().as_ref()).await;
    }
    let (resp_tx, resp_rx) = oneshot::channel();
    let guard = FetchGuard::register(ctx.clone(), req.key.as_str());
    // Its own task: the copy is renewed or replaced even if this client goes away.
    monoio::spawn(async move {
        let outcome = revalidate_task(&ctx, &req, &render, &stale, Some(resp_tx)).await;
        guard.finish(outcome);
    });
    resp_rx.await.unwrap_or_else(|_| {
        Err(ObjectError::Unavailable(
            "the revalidation task ended without answering".into(),
        ))
    })
}

/// stale-while-revalidate: renews `stale` in the background unless a fetch or
/// revalidation of the key is already under way.
fn revalidate_in_background<C: ObjectCtx>(ctx: &Rc<C>, key: &CacheKey, stale: &Rc<ObjectMeta>) {
    if ctx.objects().fetches.borrow().contains_key(key.as_str()) {
        return;
    }
    let guard = FetchGuard::register(ctx.clone(), key.as_str());
    let (ctx, stale) = (ctx.clone(), stale.clone());
    let req = GetRequest {
        key: key.clone(),
        head: false,
        range: ByteRangeSpec::Whole,
        cond: Conditions::default(),
        fetch: true,
    };
    monoio::spawn(async move {
        let outcome = revalidate_task(&ctx, &req, &Unrendered, &stale, None).await;
        guard.finish(outcome);
    });
}

/// The response head of a background request that answers nobody.
struct Unrendered;

impl Render for Unrendered {
    fn head(&self, _: &ObjectView<'_>, _: &Answer) -> http::response::Builder {
        Response::builder()
    }
}

type Responder = oneshot::Sender<Result<Response<Body>, ObjectError>>;

/// Asks the origin whether `stale` is still its current version (If-None-Match): a 304
/// renews the copy in place, another version replaces it (streamed to the client too),
/// a 404 drops it. Answers `resp_tx` (if any) and returns the outcome for waiters.
async fn revalidate_task<C: ObjectCtx, R: Render>(
    ctx: &Rc<C>,
    req: &GetRequest,
    render: &R,
    stale: &ObjectMeta,
    resp_tx: Option<Responder>,
) -> Result<(), ObjectError> {
    let objects = ctx.objects();
    let key = req.key.as_str();
    let res = super::backends::get_if_changed(&**ctx, &req.key, &stale.etag).await;
    let outcome = match res {
        Ok(obj) => {
            objects.metrics.revalidated(Revalidation::Changed);
            let (rmeta, body) = chunks::Source::whole(obj);
            return fill(ctx, req, render, rmeta, body, resp_tx).await;
        }
        Err(OriginError::NotModified) => {
            objects.metrics.revalidated(Revalidation::NotModified);
            match ctx.store().renew(key, stale.hlc, fresh::now_ms()).await {
                Ok(renewed) => tracing::debug!(key, renewed, "revalidated: not modified"),
                Err(e) => tracing::warn!(key, error = %e, "renewing a revalidated copy failed"),
            }
            Ok(())
        }
        Err(OriginError::NotFound) => {
            objects.metrics.revalidated(Revalidation::Gone);
            // Gone from the origin behind nearcache's back: drop the copy (not a delete
            // through nearcache: no tombstone), unless a newer write landed meanwhile.
            let still =
                matches!(ctx.store().peek(key), Lookup::Hit { meta, .. } if meta.hlc == stale.hlc);
            if still {
                if let Err(e) = ctx.store().forget(key).await {
                    tracing::warn!(key, error = %e, "dropping a copy the origin no longer has");
                }
                remember_missing(&**ctx, &req.key);
            }
            Err(ObjectError::NotFound(format!(
                "{key} is no longer in the origin; the cached copy was dropped"
            )))
        }
        Err(e) => {
            objects.metrics.revalidated(Revalidation::Failed);
            Err(ObjectError::from(e))
        }
    };
    if let Some(tx) = resp_tx {
        let was = Some(stale.hlc);
        let _ = tx.send(serve_current(&**ctx, req, render, was, outcome.as_ref().err()).await);
    }
    outcome
}

/// Remembers an origin 404 of `key` for `freshness.negative_ttl_secs`.
fn remember_missing<C: ObjectCtx>(ctx: &C, key: &CacheKey) {
    let o = ctx.objects();
    if o.rules.negative_ttl_ms == 0 {
        return;
    }
    let now = fresh::now_ms();
    let until = now.saturating_add(o.rules.negative_ttl_ms);
    o.negative
        .borrow_mut()
        .remember(key.as_str(), until, now, o.rules.negative_max_entries);
    o.metrics.negative_stored.fetch_add(1, Relaxed);
}

/// A miss: read through from the origin. The first miss for a key fetches; concurrent
/// misses wait for it and then read the stored copy.
async fn read_through<C: ObjectCtx, R: Render>(
    ctx: Rc<C>,
    req: GetRequest,
    render: R,
) -> Result<Response<Body>, ObjectError> {
    // While ownership moves, the copy may still be on a previous holder only: take it
    // from there (the origin may not have it at level 0) before asking the origin.
    if let Some(cs) = ctx.cluster() {
        if cs.cl.moving() {
            crate::cluster::sync::pull_from_holders(ctx.store(), cs, req.key.as_str()).await;
            // Asking took a while: the copy may be here now, from a holder or from an
            // origin fetch another request made and finished meanwhile (checking only
            // the fetches in progress would fetch a second time).
            match ctx.store().peek(req.key.as_str()) {
                Lookup::Hit { meta, body } => {
                    let status = CacheStatus::Hit;
                    if let Ok(r) = serve_hit(&*ctx, &req, &render, &meta, body, status).await {
                        return r;
                    }
                }
                Lookup::Deleted(t) => return Err(deleted(&req.key, t.deleted_at_ms)),
                Lookup::Miss => {}
            }
        }
    }
    let now = fresh::now_ms();
    if ctx
        .objects()
        .negative
        .borrow_mut()
        .is_missing(req.key.as_str(), now)
    {
        ctx.objects().metrics.negative_hits.fetch_add(1, Relaxed);
        return Err(ObjectError::NotFound(format!(
            "{} is not in the origin (its 404 is remembered for freshness.negative_ttl_secs)",
            req.key
        )));
    }
    if let Some(fetch) = fetch_in_progress(&*ctx, &req.key) {
        let outcome = fetch.wait().await;
        if let (Ok(()), Lookup::Miss) = (&outcome, ctx.store().peek(req.key.as_str())) {
            if let Some(c) = chunks::manifest(&*ctx, &req.key).await {
                return answer_stored_chunks(&ctx, &req, &render, &c, CacheStatus::Miss);
            }
            // Fetched but not cached (no room, or no-store): fetch for this request too.
            return fetch_and_respond(ctx, req, render).await;
        }
        return serve_current(&*ctx, &req, &render, None, outcome.err().as_ref()).await;
    }
    if req.head {
        // HEAD needs only the metadata: ask the origin, don't fill the cache.
        let mut rmeta = match origin_head(&*ctx, &req.key).await {
            Ok(m) => m,
            Err(e) => {
                if matches!(e, ObjectError::NotFound(_)) {
                    remember_missing(&*ctx, &req.key);
                }
                return Err(e);
            }
        };
        let restored = origin_meta::from_origin(&req.key, &mut rmeta.user_meta);
        let view = ObjectView::remote(req.key.as_str(), &rmeta, &restored);
        let answer = decide(&req, &view)?;
        return Ok(respond(render.head(&view, &answer), Body::Empty));
    }
    fetch_and_respond(ctx, req, render).await
}

pub(super) async fn origin_head<C: ObjectCtx>(
    ctx: &C,
    key: &CacheKey,
) -> Result<RemoteMeta, ObjectError> {
    super::backends::head(ctx, key).await
}

async fn fetch_and_respond<C: ObjectCtx, R: Render>(
    ctx: Rc<C>,
    req: GetRequest,
    render: R,
) -> Result<Response<Body>, ObjectError> {
    let (resp_tx, resp_rx) = oneshot::channel();
    // Registered before the task starts, so later misses on this shard wait for it.
    let guard = FetchGuard::register(ctx.clone(), req.key.as_str());
    // The fetch runs in its own task: it fills the cache even if this client goes away.
    monoio::spawn(async move {
        let outcome = fetch_task(&ctx, &req, &render, resp_tx).await;
        guard.finish(outcome);
    });
    resp_rx.await.unwrap_or_else(|_| {
        Err(ObjectError::Unavailable(
            "origin fetch task ended without answering".into(),
        ))
    })
}

/// How far the store may fall behind a read-through's client before caching is given
/// up: the client never waits on the disk, and the bytes queued for it stay bounded.
const STORE_BEHIND_MAX: u64 = 32 << 20;

/// What the store task of a read-through is told.
enum StoreMsg {
    Chunk(Bytes),
    Finish(WriteAttrs, oneshot::Sender<Option<Rc<ObjectMeta>>>),
}

/// The store's side of a read-through: a task of this shard writes the bytes while the
/// client is served, so the first byte goes out before anything waits on the disk and
/// later chunks never wait on it. Dropped without `finish`: the write is abandoned.
struct StoreFeed {
    tx: tokio::sync::mpsc::UnboundedSender<StoreMsg>,
    /// Bytes sent to the task and not yet written.
    behind: Rc<std::cell::Cell<u64>>,
}

impl StoreFeed {
    /// Starts writing `key` (`size` bytes) in its own task. The write's base (what the
    /// key holds) is taken when the task first runs, before it reads any chunk, so a
    /// write of the key that lands during the fill supersedes it.
    fn start(store: &Rc<nearcache_shards::Shard>, key: &str, size: u64, shard: usize) -> StoreFeed {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let behind = Rc::new(std::cell::Cell::new(0u64));
        let (store, key) = (store.clone(), key.to_owned());
        let left = behind.clone();
        monoio::spawn(async move {
            let mut writer = match store.begin_fetched_write(&key, Some(size)).await {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(shard, error = %e, "read-through not cached");
                    None
                }
            };
            while let Some(msg) = rx.recv().await {
                match msg {
                    StoreMsg::Chunk(chunk) => {
                        let len = chunk.len() as u64;
                        if let Some(w) = writer.as_mut() {
                            if let Err(e) = w.write(chunk).await {
                                tracing::warn!(shard, error = %e, "read-through: caching stopped");
                                if let Some(w) = writer.take() {
                                    w.abort().await;
                                }
                            }
                        }
                        left.set(left.get().saturating_sub(len));
                    }
                    StoreMsg::Finish(attrs, reply) => {
                        let stored = match writer.take() {
                            Some(w) => finish_fill(w, attrs, shard).await,
                            None => None,
                        };
                        let _ = reply.send(stored);
                        return;
                    }
                }
            }
            if let Some(w) = writer.take() {
                w.abort().await;
            }
        });
        StoreFeed { tx, behind }
    }

    /// Queues a chunk; false when the store has fallen too far behind (caching is then
    /// given up: dropping the feed abandons the write).
    fn push(&self, chunk: Bytes) -> bool {
        let behind = self.behind.get().saturating_add(chunk.len() as u64);
        if behind > STORE_BEHIND_MAX {
            return false;
        }
        self.behind.set(behind);
        self.tx.send(StoreMsg::Chunk(chunk)).is_ok()
    }

    async fn finish(self, attrs: WriteAttrs) -> Option<Rc<ObjectMeta>> {
        let (reply, stored) = oneshot::channel();
        self.tx.send(StoreMsg::Finish(attrs, reply)).ok()?;
        stored.await.ok().flatten()
    }
}

async fn finish_fill(w: ObjectWriter, attrs: WriteAttrs, shard: usize) -> Option<Rc<ObjectMeta>> {
    match w.finish(attrs).await {
        Ok(m) => Some(m),
        Err(StoreError::Superseded) => None,
        Err(e) => {
            tracing::warn!(shard, error = %e, "read-through: storing failed");
            None
        }
    }
}

/// Where the bytes of a read-through go: the client's part of the stream (if it wants
/// a body) and the store (if there is room).
struct Tee {
    client: Option<(BodySender, Range<u64>)>,
    store: Option<StoreFeed>,
    pos: u64,
    shard: usize,
}

impl Tee {
    async fn push(&mut self, chunk: Bytes) {
        let len = chunk.len() as u64;
        let end = self.pos.saturating_add(len);
        // The store first: queueing never waits, and the task writes while the client
        // is served.
        if let Some(feed) = &self.store {
            if !feed.push(chunk.clone()) {
                tracing::warn!(
                    shard = self.shard,
                    "read-through: the disk fell behind the client; not cached"
                );
                self.store = None;
            }
        }
        if let Some((tx, range)) = &self.client {
            let (s, e) = (self.pos.max(range.start), end.min(range.end));
            if s < e {
                let part = chunk.slice((s - self.pos) as usize..(e - self.pos) as usize);
                if tx.send(Ok(part)).await.is_err() {
                    self.client = None;
                }
            }
        }
        self.pos = end;
    }

    /// The stream broke: the client's body ends with an error, nothing is cached.
    async fn fail(mut self, msg: String) -> ObjectError {
        if let Some((tx, _)) = &self.client {
            let _ = tx.send(Err(BodyError(msg.clone()))).await;
        }
        // Dropping the feed abandons the write.
        self.store = None;
        ObjectError::OriginOther(msg)
    }

    /// The whole object arrived: store it with what nearcache kept of it in the origin
    /// (a native object's name and level). The stored version, if it was stored.
    async fn finish(mut self, rmeta: &RemoteMeta, restored: &Restored) -> Option<Rc<ObjectMeta>> {
        // The client has its whole body: let its stream end before the disk sync.
        self.client = None;
        let feed = self.store.take()?;
        let attrs = WriteAttrs {
            content_type: rmeta.content_type.clone(),
            name: restored.name.clone(),
            user_meta: rmeta.user_meta.clone(),
            headers: rmeta.headers.clone(),
            level: restored.level,
            fetched: Some(FetchedFrom {
                etag: rmeta.etag.clone(),
                last_modified_ms: rmeta.last_modified_ms,
            }),
        };
        feed.finish(attrs).await
    }
}

/// Fetches the object, answers the client as soon as the origin's head is in, then
/// streams the body to the client and the store. Returns the outcome for waiters.
async fn fetch_task<C: ObjectCtx, R: Render>(
    ctx: &Rc<C>,
    req: &GetRequest,
    render: &R,
    resp_tx: Responder,
) -> Result<(), ObjectError> {
    ctx.objects().metrics.origin_fetches.fetch_add(1, Relaxed);
    let start = match req.range {
        ByteRangeSpec::From { first, .. } if !req.head => first,
        _ => 0,
    };
    match chunks::first_get(ctx, &req.key, start).await {
        Ok(First::Whole(rmeta, body)) => fill(ctx, req, render, rmeta, body, Some(resp_tx)).await,
        Ok(First::Chunked(obj, index)) => fill_chunked(ctx, req, render, obj, index, resp_tx).await,
        Err(e) => {
            if matches!(e, ObjectError::NotFound(_)) {
                remember_missing(&**ctx, &req.key);
            }
            let _ = resp_tx.send(Err(e.clone()));
            Err(e)
        }
    }
}

/// Streams an object the origin sent to the client (answered on `resp_tx`, if any) and
/// into the store (unless its Cache-Control forbids a shared cache to keep it). A
/// restored level-2 object spreads to every node again.
async fn fill<C: ObjectCtx, R: Render>(
    ctx: &Rc<C>,
    req: &GetRequest,
    render: &R,
    mut rmeta: RemoteMeta,
    mut origin_body: chunks::Source,
    resp_tx: Option<Responder>,
) -> Result<(), ObjectError> {
    let restored = origin_meta::from_origin(&req.key, &mut rmeta.user_meta);
    let view = ObjectView::remote(req.key.as_str(), &rmeta, &restored);
    let mut client = None;
    if let Some(resp_tx) = resp_tx {
        match decide(req, &view) {
            Ok(answer) => {
                let builder = render.head(&view, &answer);
                let range = match &answer {
                    Answer::Whole => 0..rmeta.size,
                    Answer::Partial(r) => r.clone(),
                    Answer::NotModified => 0..0,
                };
                if range.is_empty() || req.head {
                    let _ = resp_tx.send(Ok(respond(builder, Body::Empty)));
                } else {
                    let (tx, body) = Body::channel(range.end - range.start, PUMP_DEPTH);
                    client = Some((tx, range));
                    let _ = resp_tx.send(Ok(respond(builder, body)));
                }
            }
            Err(e) => {
                let _ = resp_tx.send(Err(e));
            }
        }
    }
    let shard = ctx.mesh().id();
    let rule = ctx.objects().rules.rule_for(&req.key);
    let store = fresh::storable(rule, &rmeta.headers)
        .then(|| StoreFeed::start(ctx.store(), req.key.as_str(), rmeta.size, shard));
    let mut tee = Tee {
        client,
        store,
        pos: 0,
        shard,
    };
    loop {
        match origin_body.next_chunk().await {
            None => break,
            Some(Ok(chunk)) => {
                let n = chunk.len() as u64;
                let metrics = &ctx.objects().metrics;
                metrics.origin_body_bytes.fetch_add(n, Relaxed);
                tee.push(chunk).await
            }
            Some(Err(e)) => {
                let msg = format!("origin stream broke after {} bytes: {e}", tee.pos);
                return Err(tee.fail(msg).await);
            }
        }
    }
    if tee.pos != rmeta.size {
        let msg = format!("origin sent {} bytes of {}", tee.pos, rmeta.size);
        return Err(tee.fail(msg).await);
    }
    if let Some(meta) = tee.finish(&rmeta, &restored).await {
        if meta.level >= 2 {
            // Its own task: waiters need not wait for the other nodes.
            let ctx = ctx.clone();
            monoio::spawn(async move {
                if let Some(cs) = ctx.cluster() {
                    if let Err(e) = crate::cluster::route::replicate_put(&ctx, cs, meta).await {
                        tracing::warn!(error = %e, "spreading a restored level-2 object");
                    }
                }
            });
        }
    }
    Ok(())
}

/// A large object's first origin answer (chunk `index`): the chunk is kept, the
/// manifest stored, and the client served from chunks.
async fn fill_chunked<C: ObjectCtx, R: Render>(
    ctx: &Rc<C>,
    req: &GetRequest,
    render: &R,
    obj: GetObject,
    index: u64,
    resp_tx: Responder,
) -> Result<(), ObjectError> {
    let mut rmeta = obj.meta.clone();
    let restored = origin_meta::from_origin(&req.key, &mut rmeta.user_meta);
    let layout = Rc::new(chunks::layout_of(&**ctx, &obj));
    let first = Some(chunks::keep_first_chunk(ctx, &req.key, &layout, obj, index));
    let answer = match chunks::write_manifest(&**ctx, &req.key, &rmeta, &restored, &layout).await {
        Some(meta) => {
            let mut view = ObjectView::stored(&meta, CacheStatus::Miss);
            view.key = req.key.as_str();
            view.size = layout.size;
            answer_chunks(ctx, req, render, &view, &layout, first)
        }
        // Not kept (no-store, or no room): its chunks are never found without one.
        None => {
            let view = ObjectView::remote(req.key.as_str(), &rmeta, &restored);
            answer_chunks(ctx, req, render, &view, &layout, first)
        }
    };
    let _ = resp_tx.send(answer);
    Ok(())
}

/// A chunked object held here: served if fresh (or the client asked not to reach the
/// origin), else revalidated first (stale-while-revalidate does not apply to chunked
/// objects: a changed version must not mix with the old one's chunks).
async fn serve_chunked<C: ObjectCtx, R: Render>(
    ctx: Rc<C>,
    req: GetRequest,
    render: R,
    c: Chunked,
) -> Result<Response<Body>, ObjectError> {
    match standing_of(&*ctx, &req.key, &c.meta) {
        Standing::Fresh => answer_stored_chunks(&ctx, &req, &render, &c, CacheStatus::Hit),
        Standing::Stale { .. } if !req.fetch => {
            answer_stored_chunks(&ctx, &req, &render, &c, CacheStatus::Stale)
        }
        Standing::Stale {
            serve_on_error_until_ms,
            ..
        } => revalidate_chunked(ctx, req, render, c, serve_on_error_until_ms).await,
    }
}

fn answer_stored_chunks<C: ObjectCtx, R: Render>(
    ctx: &Rc<C>,
    req: &GetRequest,
    render: &R,
    c: &Chunked,
    status: CacheStatus,
) -> Result<Response<Body>, ObjectError> {
    let mut view = ObjectView::stored(&c.meta, status);
    view.key = req.key.as_str();
    view.size = c.layout.size;
    answer_chunks(ctx, req, render, &view, &c.layout, None)
}

/// Answers `req` for the chunked object `view` describes; the body streams from chunks.
fn answer_chunks<C: ObjectCtx, R: Render>(
    ctx: &Rc<C>,
    req: &GetRequest,
    render: &R,
    view: &ObjectView<'_>,
    layout: &Rc<chunks::Layout>,
    first: Option<chunks::FirstChunk>,
) -> Result<Response<Body>, ObjectError> {
    let answer = decide(req, view)?;
    let builder = render.head(view, &answer);
    let range = match &answer {
        Answer::NotModified => return Ok(respond(builder, Body::Empty)),
        _ if req.head => return Ok(respond(builder, Body::Empty)),
        Answer::Whole => 0..layout.size,
        Answer::Partial(r) => r.clone(),
    };
    if !req.fetch && !chunks::all_held(&**ctx, &req.key, layout, &range) {
        return Err(ObjectError::NotFound(format!(
            "{} is not wholly cached and read-through is off",
            req.key
        )));
    }
    if range.is_empty() {
        return Ok(respond(builder, Body::Empty));
    }
    let (tx, body) = Body::channel(range.end - range.start, PUMP_DEPTH);
    chunks::stream(ctx, req.key.clone(), layout.clone(), range, tx, first);
    Ok(respond(builder, body))
}

/// A stale chunked object: the origin's HEAD says whether it is the same version (the
/// manifest is renewed), another one (read through again, chunked anew) or gone. One
/// revalidation per key at a time, as for whole objects.
async fn revalidate_chunked<C: ObjectCtx, R: Render>(
    ctx: Rc<C>,
    req: GetRequest,
    render: R,
    c: Chunked,
    serve_on_error_until_ms: u64,
) -> Result<Response<Body>, ObjectError> {
    if let Some(fetch) = fetch_in_progress(&*ctx, &req.key) {
        let outcome = fetch.wait().await;
        if let Lookup::Hit { .. } = ctx.store().peek(req.key.as_str()) {
            return serve_current(&*ctx, &req, &render, None, outcome.err().as_ref()).await;
        }
        return match chunks::manifest(&*ctx, &req.key).await {
            Some(c) => answer_stored_chunks(&ctx, &req, &render, &c, CacheStatus::Revalidated),
            None => Err(outcome.err().unwrap_or_else(|| {
                ObjectError::Unavailable(format!("{} changed while it was read; retry", req.key))
            })),
        };
    }
    let guard = FetchGuard::register(ctx.clone(), req.key.as_str());
    let (resp_tx, resp_rx) = oneshot::channel();
    monoio::spawn(async move {
        let until = serve_on_error_until_ms;
        let outcome = revalidate_chunked_task(&ctx, &req, &render, c, until, resp_tx).await;
        guard.finish(outcome);
    });
    resp_rx.await.unwrap_or_else(|_| {
        Err(ObjectError::Unavailable(
            "the revalidation task ended without answering".into(),
        ))
    })
}

async fn revalidate_chunked_task<C: ObjectCtx, R: Render>(
    ctx: &Rc<C>,
    req: &GetRequest,
    render: &R,
    c: Chunked,
    serve_on_error_until_ms: u64,
    resp_tx: Responder,
) -> Result<(), ObjectError> {
    let metrics = &ctx.objects().metrics;
    let key = req.key.as_str();
    match origin_head(&**ctx, &req.key).await {
        Ok(m) if m.etag == c.layout.etag && m.size == c.layout.size => {
            metrics.revalidated(Revalidation::NotModified);
            let mkey = chunks::manifest_key(key);
            if let Err(e) = ctx.store().renew(&mkey, c.meta.hlc, fresh::now_ms()).await {
                tracing::warn!(key, error = %e, "renewing a revalidated chunk manifest failed");
            }
            let answer = answer_stored_chunks(ctx, req, render, &c, CacheStatus::Revalidated);
            let _ = resp_tx.send(answer);
            Ok(())
        }
        Ok(_) => {
            metrics.revalidated(Revalidation::Changed);
            chunks::drop_manifest(ctx, key).await;
            fetch_task(ctx, req, render, resp_tx).await
        }
        Err(ObjectError::NotFound(_)) => {
            metrics.revalidated(Revalidation::Gone);
            chunks::drop_manifest(ctx, key).await;
            remember_missing(&**ctx, &req.key);
            let e = ObjectError::NotFound(format!(
                "{key} is no longer in the origin; the cached copy was dropped"
            ));
            let _ = resp_tx.send(Err(e.clone()));
            Err(e)
        }
        Err(e) => {
            metrics.revalidated(Revalidation::Failed);
            let answer = if fresh::now_ms() < serve_on_error_until_ms {
                metrics.stale_served(StaleReason::OriginError);
                answer_stored_chunks(ctx, req, render, &c, CacheStatus::Stale)
            } else {
                Err(e.clone())
            };
            let _ = resp_tx.send(answer);
            Err(e)
        }
    }
}

/// What `stat` found: a stored object's metadata, or the origin's description (with
/// what nearcache kept there of a native object).
pub enum Stat {
    Cached(ObjectMeta),
    Origin(RemoteMeta, Restored),
}

/// The metadata of `key` without its body (read through to a HEAD when asked).
pub async fn stat<C: ObjectCtx>(
    ctx: &Rc<C>,
    key: CacheKey,
    fetch: bool,
) -> Result<Stat, ObjectError> {
    let owner = ctx.mesh().owner_of(key.as_str());
    on_shard(ctx, owner, move |ctx| async move {
        match ctx.store().peek(key.as_str()) {
            Lookup::Hit { meta, .. } => Ok(Stat::Cached((*meta).clone())),
            Lookup::Deleted(t) => Err(deleted(&key, t.deleted_at_ms)),
            Lookup::Miss => match chunks::manifest(&*ctx, &key).await {
                Some(c) => {
                    let mut m = (*c.meta).clone();
                    m.key = key.into_string();
                    m.size = c.layout.size;
                    Ok(Stat::Cached(m))
                }
                None if fetch => {
                    let mut m = origin_head(&*ctx, &key).await?;
                    let restored = origin_meta::from_origin(&key, &mut m.user_meta);
                    Ok(Stat::Origin(m, restored))
                }
                None => Err(ObjectError::NotFound(format!(
                    "{key} is not cached and read-through is off"
                ))),
            },
        }
    })
    .await?
}

/// `stat` in a cluster, on a node that is not the key's first owner: the metadata of a
/// copy held here that this node may serve (it owns the key, or the copy is level 2), in
/// one hop. `None`: nothing servable here; the caller proxies.
pub async fn stat_held<C: ObjectCtx>(
    ctx: &Rc<C>,
    key: CacheKey,
    owner_here: bool,
) -> Result<Option<Stat>, ObjectError> {
    let owner = ctx.mesh().owner_of(key.as_str());
    Ok(on_shard(ctx, owner, move |ctx| async move {
        match ctx.store().peek(key.as_str()) {
            Lookup::Hit { meta, .. } if owner_here || meta.level >= 2 => {
                Some(Stat::Cached((*meta).clone()))
            }
            _ => None,
        }
    })
    .await?)
}

/// A pending op of a bucket as a listing sees it: the object key, and Some(entry) for
/// a write, None for a delete.
pub type PendingItem = (String, Option<nearcache_s3::ListEntry>);

/// Writes and deletes of `bucket` under `prefix` not yet in the origin, from every shard
/// (a listing merges them, so a client always sees its own writes).
pub async fn pending_under<C: ObjectCtx>(
    ctx: &Rc<C>,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<PendingItem>, ObjectError> {
    let scope = CacheKey::s3(bucket, prefix).into_string();
    let strip = bucket.len() + 1;
    let per_shard = crate::mesh::on_every_shard(ctx, move |ctx| async move {
        ctx.store()
            .pending(usize::MAX)
            .into_iter()
            .filter(|op| op.key.starts_with(&scope))
            .map(|op| {
                let key = op.key.get(strip..).unwrap_or_default().to_owned();
                let entry = match op.kind {
                    nearcache_shards::PendingKind::Put { meta, .. } => {
                        Some(nearcache_s3::ListEntry {
                            key: key.clone(),
                            size: meta.size,
                            etag: meta.etag,
                            last_modified_ms: meta.last_modified_ms,
                            storage_class: Some("STANDARD".into()),
                        })
                    }
                    nearcache_shards::PendingKind::Delete => None,
                };
                (key, entry)
            })
            .collect::<Vec<PendingItem>>()
    })
    .await?;
    Ok(per_shard.into_iter().flatten().collect())
}

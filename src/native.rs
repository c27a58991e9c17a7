//! objstore's native API (`/api/v1`), plus `/healthz`, `/metrics`.
//!
//! Requests are parsed and validated on the shard that accepted the connection; the
//! typed request then runs on the key's owner shard ([`ShardCtx::on_owner`]).

use std::collections::BTreeMap;
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use nearcache_s3::{ObjectLoc, RemoteMeta};
use nearcache_shards::{FetchedFrom, Lookup, ObjectMeta, StoreError, WriteAttrs};
use tokio::sync::oneshot;
use ulid::Ulid;

use crate::body::{Body, BodyError};
use crate::error::ApiError;
use crate::http_util::{
    bool_header, drain_into, http_date, query_param, resolve_range, Conditions, DrainError,
};
use crate::metrics::Route;
use crate::node::{ActiveGuard, ApiErrorLite, Fetch, ShardCtx};

const X_META_ID: &str = "x-meta-id";
const X_META_NAME: &str = "x-meta-name";
const X_META_LEVEL: &str = "x-meta-consistencylevel";
const X_META_USERMETA: &str = "x-meta-usermeta";
const X_META_FETCH: &str = "x-meta-fetch";
const X_META_SYNC: &str = "x-meta-sync";
const X_META_FETCHED: &str = "x-meta-fetched";
const X_META_DELETED: &str = "x-meta-deleted";
/// Chunks buffered between a body producer task and the connection.
const BODY_DEPTH: usize = 4;

pub async fn handle(ctx: Rc<ShardCtx>, req: Request<Incoming>) -> Response<Body> {
    serve(ctx, req, false).await
}

/// A request proxied here by another node of the cluster: this node owns the key (or is
/// next in line), so it is served here and never forwarded again.
pub async fn handle_forwarded(ctx: Rc<ShardCtx>, req: Request<Incoming>) -> Response<Body> {
    serve(ctx, req, true).await
}

async fn serve(ctx: Rc<ShardCtx>, req: Request<Incoming>, forwarded: bool) -> Response<Body> {
    let start = Instant::now();
    let _active = ActiveGuard::new(&ctx);
    let (route, result) = dispatch(&ctx, req, forwarded).await;
    let mut resp = result.unwrap_or_else(ApiError::into_response);
    resp.headers_mut()
        .entry(crate::cluster::H_NODE)
        .or_insert_with(|| ctx.node.node_header.clone());
    ctx.http
        .record(route, resp.status().as_u16(), start.elapsed());
    resp
}

/// The key and level a request is placed by in a cluster, or None for node-local routes.
/// A PUT without an id gets one here, so that every node agrees on it.
fn placement_key(
    ctx: &ShardCtx,
    route: Route,
    path: &str,
    req: &mut Request<Incoming>,
) -> Result<Option<(String, u8)>, ApiError> {
    let default_level = ctx.node.cfg.api.default_level;
    let id_of = |prefix: &str| parse_id(&path[prefix.len()..], "id");
    Ok(Some(match route {
        Route::Get | Route::Head => (id_of("/api/v1/get/")?, 1),
        Route::Meta => (id_of("/api/v1/meta/")?, 1),
        Route::Delete => (
            id_of("/api/v1/delete/")?,
            level_header(req.headers(), default_level)?,
        ),
        Route::Put => {
            let h = req.headers_mut();
            let id = match h.get(X_META_ID) {
                Some(v) => parse_id(v.to_str().unwrap_or("<non-ASCII>"), "X-Meta-ID")?,
                None => Ulid::generate().to_string(),
            };
            h.insert(
                X_META_ID,
                HeaderValue::from_str(&id).expect("ulid is ascii"),
            );
            (id, level_header(h, default_level)?)
        }
        _ => return Ok(None),
    }))
}

async fn dispatch(
    ctx: &Rc<ShardCtx>,
    mut req: Request<Incoming>,
    forwarded: bool,
) -> (Route, Result<Response<Body>, ApiError>) {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let m = |allowed: &[Method]| allowed.contains(&method);
    let (route, allow): (Route, &[Method]) = match path.as_str() {
        "/healthz" => (Route::Health, &[Method::GET, Method::HEAD]),
        "/metrics" => (Route::Metrics, &[Method::GET]),
        "/api/v1/id" => (Route::NewId, &[Method::GET]),
        "/api/v1/put" => (Route::Put, &[Method::POST, Method::PUT]),
        "/api/v1/version" => (Route::Version, &[Method::GET]),
        "/api/v1/ping" => (Route::Ping, &[Method::GET, Method::HEAD]),
        "/api/v1/stats" => (Route::Stats, &[Method::GET]),
        "/api/v1/cluster" => (Route::Cluster, &[Method::GET]),
        "/api/v1/cluster/block" => (Route::Cluster, &[Method::POST]),
        p if p.starts_with("/api/v1/get/") => (
            if method == Method::HEAD {
                Route::Head
            } else {
                Route::Get
            },
            &[Method::GET, Method::HEAD],
        ),
        p if p.starts_with("/api/v1/meta/") => (Route::Meta, &[Method::GET]),
        p if p.starts_with("/api/v1/delete/") => (Route::Delete, &[Method::POST, Method::DELETE]),
        _ => {
            let e = ApiError::not_found(format!("no route for {method} {path}"));
            return (Route::Unknown, Err(e));
        }
    };
    if !m(allow) {
        let allowed = allow
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
            format!("{path} accepts {allowed}, not {method}"),
        )
        .with_header(
            header::ALLOW,
            HeaderValue::from_str(&allowed).expect("ascii"),
        );
        return (route, Err(e));
    }
    if let (false, Some(cl)) = (forwarded, ctx.node.cluster.clone()) {
        match placement_key(ctx, route, &path, &mut req) {
            Ok(None) => {}
            Ok(Some((key, level))) => {
                match crate::cluster::route::route(ctx, &cl, &key, level, req).await {
                    Ok(crate::cluster::route::Route::Local(r)) => req = r,
                    Ok(crate::cluster::route::Route::Remote(resp)) => return (route, Ok(resp)),
                    Err(e) => return (route, Err(e)),
                }
            }
            Err(e) => return (route, Err(e)),
        }
    }
    let result = match route {
        Route::Health => Ok(health(ctx)),
        Route::Metrics => Ok(text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            crate::metrics::render(&ctx.node),
        )),
        Route::NewId => Ok(text(
            StatusCode::OK,
            "text/plain",
            Ulid::generate().to_string(),
        )),
        Route::Version => Ok(json(
            StatusCode::OK,
            &serde_json::json!({
                "name": "nearcache", "version": env!("CARGO_PKG_VERSION"),
            }),
        )),
        Route::Ping => Ok(text(StatusCode::OK, "text/plain", "pong".into())),
        Route::Stats => Ok(stats(ctx)),
        Route::Cluster if method == Method::GET => cluster_info(ctx, &req),
        Route::Cluster => cluster_block(ctx, req).await,
        Route::Put => put(ctx, req).await,
        Route::Get | Route::Head => {
            get(
                ctx,
                req,
                route == Route::Head,
                &path["/api/v1/get/".len()..],
            )
            .await
        }
        Route::Meta => meta(ctx, req, &path["/api/v1/meta/".len()..]).await,
        Route::Delete => delete(ctx, req, &path["/api/v1/delete/".len()..]).await,
        Route::Unknown | Route::S3Read | Route::S3Write | Route::S3List | Route::S3Other => {
            unreachable!("not a native route")
        }
    };
    (route, result)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    text(status, "application/json", v.to_string())
}

fn health(ctx: &ShardCtx) -> Response<Body> {
    let stopping = ctx.node.shutting_down.load(Relaxed);
    let status = if stopping {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json(
        status,
        &serde_json::json!({
            "status": if stopping { "shutting down" } else { "ok" },
            "shards": ctx.node.shards.len(),
            "io": if ctx.node.uring_active { "io_uring" } else { "epoll" },
            "uptime_seconds": ctx.node.started.elapsed().as_secs(),
            "origin": ctx.node.bridge.describe(),
        }),
    )
}

fn stats(ctx: &ShardCtx) -> Response<Body> {
    let mut shards = Vec::new();
    let mut total = BTreeMap::<&str, u64>::new();
    for s in &ctx.node.shards {
        let m = &s.store;
        let row = [
            ("objects", m.objects.load(Relaxed)),
            ("bytes", m.disk_bytes.load(Relaxed)),
            ("capacity_bytes", m.disk_capacity.load(Relaxed)),
            ("memory_bytes", m.memory_bytes.load(Relaxed)),
            ("memory_capacity_bytes", m.memory_capacity.load(Relaxed)),
            ("memory_objects", m.memory_objects.load(Relaxed)),
            ("hits", m.hits.load(Relaxed)),
            ("misses", m.misses.load(Relaxed)),
            ("evictions", m.evictions.load(Relaxed)),
            ("pending_uploads", m.pending_uploads.load(Relaxed)),
            ("pinned_bytes", m.pinned_bytes.load(Relaxed)),
            ("tombstones", m.tombstones.load(Relaxed)),
            ("checksum_failures", m.checksum_failures.load(Relaxed)),
            ("forwarded", s.http.forwarded.load(Relaxed)),
            ("coalesced", s.http.coalesced.load(Relaxed)),
        ];
        let mut obj = serde_json::Map::new();
        obj.insert("shard".into(), s.id.into());
        for (k, v) in row {
            obj.insert(k.into(), v.into());
            *total.entry(k).or_default() += v;
        }
        shards.push(serde_json::Value::Object(obj));
    }
    let dir = &ctx.node.cfg.server.data_dir;
    json(
        StatusCode::OK,
        &serde_json::json!({
            "shards": shards,
            "total": total,
            "disk": {
                "data_dir": dir.display().to_string(),
                "filesystem_total_bytes": fs2::total_space(dir).ok(),
                "filesystem_available_bytes": fs2::available_space(dir).ok(),
            },
        }),
    )
}

fn cluster_of(ctx: &ShardCtx) -> Result<std::sync::Arc<crate::cluster::Cluster>, ApiError> {
    ctx.node.cluster.clone().ok_or_else(|| {
        ApiError::not_found(
            "this node runs alone: start it with --cluster-listen to form a cluster",
        )
    })
}

/// `GET /api/v1/cluster[?key=ID]`: members, their states, placement, sync positions.
fn cluster_info(ctx: &ShardCtx, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let cl = cluster_of(ctx)?;
    let key = query_param(req, "key");
    Ok(json(StatusCode::OK, &cl.describe(key.as_deref())))
}

/// `POST /api/v1/cluster/block?peer=ID&blocked=true|false`: the per-peer drop switch
/// (only with `cluster.fault_injection`).
async fn cluster_block(ctx: &ShardCtx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let cl = cluster_of(ctx)?;
    if !cl.cfg.fault_injection {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "fault injection disabled",
            "set cluster.fault_injection = true to use the drop switch",
        ));
    }
    let peer = query_param(&req, "peer")
        .ok_or_else(|| ApiError::bad_request("missing parameter", "peer=<node id> is required"))?;
    let blocked = match query_param(&req, "blocked").as_deref() {
        None | Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        Some(v) => {
            return Err(ApiError::bad_request(
                "invalid parameter",
                format!("blocked must be true or false, not {v:?}"),
            ))
        }
    };
    if peer == cl.self_id {
        return Err(ApiError::bad_request(
            "invalid peer",
            "a node cannot block itself",
        ));
    }
    let addr = cl.member(&peer).map(|m| m.addr);
    if addr.is_none() && blocked {
        return Err(ApiError::not_found(format!("no member {peer}")));
    }
    cl.set_blocked(&peer, addr, blocked);
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "blocked": cl.blocked_ids() }),
    ))
}

/// Validates an id: a ULID, returned in canonical form.
fn parse_id(raw: &str, what: &str) -> Result<String, ApiError> {
    Ulid::from_string(raw).map(|u| u.to_string()).map_err(|e| {
        ApiError::bad_request("invalid id", format!("{what} {raw:?} is not a ULID: {e}"))
    })
}

fn level_header(h: &HeaderMap, default: u8) -> Result<u8, ApiError> {
    let Some(v) = h.get(X_META_LEVEL) else {
        return Ok(default);
    };
    match v.to_str().unwrap_or("").trim() {
        "0" => Ok(0),
        "1" => Ok(1),
        "2" => Ok(2),
        other => Err(ApiError::bad_request(
            "invalid consistency level",
            format!("X-Meta-ConsistencyLevel must be 0, 1 or 2, not {other:?}"),
        )),
    }
}

/// X-Meta-UserMeta: a JSON object of string values; keys become x-amz-meta-* in S3, so
/// they must be header-safe.
fn user_meta_header(h: &HeaderMap) -> Result<BTreeMap<String, String>, ApiError> {
    let Some(v) = h.get(X_META_USERMETA) else {
        return Ok(BTreeMap::new());
    };
    let bad = |d: String| ApiError::bad_request("invalid user metadata", d);
    let s = v
        .to_str()
        .map_err(|_| bad("X-Meta-UserMeta is not ASCII".into()))?;
    let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(s)
        .map_err(|e| bad(format!("X-Meta-UserMeta is not a JSON object: {e}")))?;
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let serde_json::Value::String(v) = v else {
            return Err(bad(format!(
                "X-Meta-UserMeta value of {k:?} is not a string"
            )));
        };
        let key_ok = !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !key_ok {
            return Err(bad(format!(
                "X-Meta-UserMeta key {k:?} must be non-empty ASCII letters, digits, '-' or '_'"
            )));
        }
        if !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(bad(format!(
                "X-Meta-UserMeta value of {k:?} must be printable ASCII"
            )));
        }
        out.insert(k.to_ascii_lowercase(), v);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// PUT

struct PutReq {
    id: String,
    level: u8,
    sync: bool,
    attrs: WriteAttrs,
    content_length: Option<u64>,
    max_size: u64,
}

async fn put(ctx: &Rc<ShardCtx>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let h = req.headers();
    let id = match h.get(X_META_ID) {
        Some(v) => parse_id(v.to_str().unwrap_or("<non-ASCII>"), "X-Meta-ID")?,
        None => Ulid::generate().to_string(),
    };
    let level = level_header(h, ctx.node.cfg.api.default_level)?;
    let sync = bool_header(h, X_META_SYNC)?.unwrap_or(false);
    let name = match h.get(X_META_NAME) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("invalid name", "X-Meta-Name must be ASCII"))?
                .to_string(),
        ),
        None => None,
    };
    let explicit_type = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty() && !t.starts_with("application/x-www-form-urlencoded"))
        .map(str::to_string);
    let content_type = explicit_type.or_else(|| {
        name.as_deref()
            .and_then(|n| mime_guess::from_path(n).first())
            .map(|m| m.essence_str().to_string())
    });
    let content_length = match h.get(header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid content-length",
                        "Content-Length is not a number",
                    )
                })?,
        ),
        None => None,
    };
    let max_size = ctx.node.cfg.api.max_object_size.0;
    if let Some(len) = content_length.filter(|&l| l > max_size) {
        return Err(too_large(len, max_size));
    }
    let user_meta = user_meta_header(h)?;
    let attrs = WriteAttrs {
        content_type,
        name,
        user_meta,
        level,
        fetched: None,
        headers: BTreeMap::new(),
    };
    let preq = PutReq {
        id: id.clone(),
        level,
        sync,
        attrs,
        content_length,
        max_size,
    };
    let body = req.into_body();
    let result = ctx
        .on_owner(&id, move |ctx| exec_put(ctx, preq, body))
        .await?;
    // A failed PUT may leave its body unread: tell the client not to reuse the connection
    // (hyper closes it) rather than let a pooled request hit a closing socket.
    result.map_err(|e| e.with_header(header::CONNECTION, HeaderValue::from_static("close")))
}

fn too_large(len: u64, max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "object too large",
        format!("object of {len} bytes exceeds the limit of {max} bytes"),
    )
}

async fn exec_put(
    ctx: Rc<ShardCtx>,
    req: PutReq,
    mut body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let mut writer = ctx.shard.begin_write(&req.id, req.content_length).await?;
    match drain_into(&mut writer, &mut body, req.max_size).await {
        Ok(()) => {}
        Err(DrainError::TooLong) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "object too large",
                format!("body exceeds the limit of {} bytes", req.max_size),
            ));
        }
        Err(DrainError::Store(e)) => return Err(e.into()),
        Err(DrainError::Stream(got, e)) => {
            let expected = req
                .content_length
                .map_or("an unknown number of".into(), |l| l.to_string());
            return Err(ApiError::bad_request(
                "incomplete body",
                format!(
                    "request body failed after {got} of {expected} bytes: {e}; nothing was stored"
                ),
            ));
        }
    }
    if let Some(len) = req.content_length.filter(|&l| l != writer.written()) {
        let got = writer.written();
        writer.abort().await;
        return Err(ApiError::bad_request(
            "incomplete body",
            format!("received {got} bytes but Content-Length is {len}; nothing was stored"),
        ));
    }
    let meta = writer.finish(req.attrs).await?;
    if let Some(cl) = ctx.node.cluster.clone() {
        crate::cluster::route::replicate_put(&ctx, &cl, meta.clone()).await?;
    }
    let mut in_origin = meta.in_origin;
    if req.sync && req.level >= 1 && !in_origin {
        wait_for_origin(&ctx, &meta.key, meta.seq).await?;
        in_origin = true;
    }
    let mut resp = json(
        StatusCode::OK,
        &serde_json::json!({
            "id": meta.key, "size": meta.size, "etag": meta.etag, "level": meta.level,
            "in_origin": in_origin,
        }),
    );
    let h = resp.headers_mut();
    h.insert(
        X_META_ID,
        HeaderValue::from_str(&meta.key).expect("ulid is ascii"),
    );
    h.insert(header::ETAG, quoted(&meta.etag));
    Ok(resp)
}

/// Waits until the uploader has applied the pending op `(key, seq)` in the origin.
pub(crate) async fn wait_for_origin(
    ctx: &Rc<ShardCtx>,
    key: &str,
    seq: u64,
) -> Result<(), ApiError> {
    let (tx, rx) = oneshot::channel();
    ctx.upload_waiters
        .borrow_mut()
        .entry((key.to_string(), seq))
        .or_default()
        .push(tx);
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(msg)) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "origin write failed",
            format!(
                "stored locally and queued; the origin write failed and will be retried: {msg}"
            ),
        )),
        Err(_) => Err(ApiError::unavailable(
            "stored locally and queued; shutting down before the origin write finished",
        )),
    }
}

pub(crate) fn quoted(etag: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{etag}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

// ---------------------------------------------------------------------------------------
// DELETE

async fn delete(
    ctx: &Rc<ShardCtx>,
    req: Request<Incoming>,
    raw_id: &str,
) -> Result<Response<Body>, ApiError> {
    let id = parse_id(raw_id, "id")?;
    let level = level_header(req.headers(), ctx.node.cfg.api.default_level)?;
    let sync = bool_header(req.headers(), X_META_SYNC)?.unwrap_or(false);
    let key = id.clone();
    ctx.on_owner(&id, move |ctx| async move {
        let t = ctx.shard.delete(&key, level).await?;
        if let Some(cl) = ctx.node.cluster.clone() {
            crate::cluster::route::replicate_delete(&cl, t.clone()).await?;
        }
        if sync && level >= 1 {
            wait_for_origin(&ctx, &key, t.seq).await?;
        }
        let mut resp = json(
            StatusCode::OK,
            &serde_json::json!({
                "id": key, "deleted": true, "level": level,
            }),
        );
        resp.headers_mut()
            .insert(X_META_DELETED, HeaderValue::from_static("true"));
        Ok(resp)
    })
    .await?
}

// ---------------------------------------------------------------------------------------
// GET / HEAD

/// A GET or HEAD of one object, on its owner shard. Shared by both APIs.
pub(crate) struct GetReq {
    /// The cache key (native: the id; S3 API: `bucket/key`).
    pub key: String,
    /// Where the object lives in the origin: None = the configured bucket (with the
    /// configured prefix) under `key` (the native API).
    pub loc: Option<ObjectLoc>,
    pub head: bool,
    pub range: Option<String>,
    pub cond: Conditions,
    pub fetch: bool,
    /// Some: answer with the S3 API's headers (x-amz-meta-*, stored headers), then these
    /// response-* overrides. None: the native API's X-Meta-* headers.
    pub s3: Option<Vec<(header::HeaderName, HeaderValue)>>,
}

impl GetReq {
    async fn origin_get(&self, ctx: &ShardCtx) -> Result<nearcache_s3::GetObject, ApiError> {
        Ok(match &self.loc {
            None => ctx.node.bridge.get(&self.key, None).await?,
            Some(loc) => ctx.node.bridge.get_in(loc, None, None).await?,
        })
    }

    async fn origin_head(&self, ctx: &ShardCtx) -> Result<RemoteMeta, ApiError> {
        Ok(match &self.loc {
            None => ctx.node.bridge.head(&self.key).await?,
            Some(loc) => ctx.node.bridge.head_in(loc, None).await?,
        })
    }
}

async fn get(
    ctx: &Rc<ShardCtx>,
    req: Request<Incoming>,
    head: bool,
    raw_id: &str,
) -> Result<Response<Body>, ApiError> {
    let id = parse_id(raw_id, "id")?;
    let h = req.headers();
    let greq = GetReq {
        key: id.clone(),
        loc: None,
        s3: None,
        head,
        range: h
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        cond: Conditions::from_headers(h),
        fetch: bool_header(h, X_META_FETCH)?.unwrap_or(ctx.node.cfg.api.fetch_default),
    };
    ctx.on_owner(&id, move |ctx| exec_get(ctx, greq)).await?
}

/// What the response headers of an object need, from the store or from the origin.
struct ObjView<'a> {
    id: &'a str,
    size: u64,
    etag: &'a str,
    last_modified_ms: u64,
    content_type: Option<&'a str>,
    name: Option<&'a str>,
    user_meta: &'a BTreeMap<String, String>,
    headers: &'a BTreeMap<String, String>,
    parts_count: Option<u32>,
    level: Option<u8>,
    fetched: bool,
}

/// A GET/HEAD that stops before the body: 304 (a response) or an error (412, 416).
pub(crate) enum Early {
    Response(Response<Body>),
    Error(ApiError),
}

impl<'a> ObjView<'a> {
    fn stored(m: &'a ObjectMeta, fetched: bool) -> Self {
        ObjView {
            id: &m.key,
            size: m.size,
            etag: &m.etag,
            last_modified_ms: m.last_modified_ms,
            content_type: m.content_type.as_deref(),
            name: m.name.as_deref(),
            user_meta: &m.user_meta,
            headers: &m.headers,
            parts_count: None,
            level: Some(m.level),
            fetched,
        }
    }

    fn remote(id: &'a str, m: &'a RemoteMeta) -> Self {
        ObjView {
            id,
            size: m.size,
            etag: &m.etag,
            last_modified_ms: m.last_modified_ms,
            content_type: m.content_type.as_deref(),
            name: None,
            user_meta: &m.user_meta,
            headers: &m.headers,
            parts_count: m.parts_count,
            level: None,
            fetched: true,
        }
    }

    /// Status and headers for a GET/HEAD of this object, or the early answer (304, 412, 416).
    fn respond(&self, req: &GetReq) -> Result<(http::response::Builder, Range<u64>), Early> {
        let mut b = Response::builder()
            .header(header::ETAG, quoted(self.etag))
            .header(header::LAST_MODIFIED, http_date(self.last_modified_ms))
            .header(header::ACCEPT_RANGES, "bytes");
        if req.s3.is_none() {
            b = b.header(X_META_ID, self.id);
            if self.fetched {
                b = b.header(X_META_FETCHED, "true");
            }
        }
        if let Some(status) = req.cond.evaluate(self.etag, self.last_modified_ms, true) {
            if status == StatusCode::NOT_MODIFIED {
                return Err(Early::Response(
                    b.status(status).body(Body::Empty).expect("valid response"),
                ));
            }
            return Err(Early::Error(ApiError::new(
                status,
                "precondition failed",
                "If-Match or If-Unmodified-Since did not hold",
            )));
        }
        let range = resolve_range(req.range.as_deref(), self.size).map_err(Early::Error)?;
        b = b.header(
            header::CONTENT_TYPE,
            self.content_type.unwrap_or("application/octet-stream"),
        );
        if let Some(overrides) = &req.s3 {
            for (k, v) in self.user_meta {
                if let Ok(v) = HeaderValue::from_str(v) {
                    b = b.header(format!("x-amz-meta-{k}"), v);
                }
            }
            for (k, v) in self.headers {
                if let Ok(v) = HeaderValue::from_str(v) {
                    b = b.header(k.as_str(), v);
                }
            }
            if let Some(n) = self.parts_count {
                b = b.header("x-amz-mp-parts-count", n);
            }
            if let Some(h) = b.headers_mut() {
                for (k, v) in overrides {
                    h.insert(k.clone(), v.clone());
                }
            }
        } else {
            if let Some(n) = self.name.and_then(|n| HeaderValue::from_str(n).ok()) {
                b = b.header(X_META_NAME, n);
            }
            if let Some(l) = self.level {
                b = b.header(X_META_LEVEL, l.to_string());
            }
            if !self.user_meta.is_empty() {
                let j = serde_json::to_string(self.user_meta).unwrap_or_default();
                if let Ok(v) = HeaderValue::from_str(&j) {
                    b = b.header(X_META_USERMETA, v);
                }
            }
        }
        let r = match range {
            Some(r) => {
                b = b.status(StatusCode::PARTIAL_CONTENT).header(
                    header::CONTENT_RANGE,
                    format!("bytes {}-{}/{}", r.start, r.end - 1, self.size),
                );
                r
            }
            None => {
                b = b.status(StatusCode::OK);
                0..self.size
            }
        };
        Ok((b.header(header::CONTENT_LENGTH, r.end - r.start), r))
    }
}

/// The stored copy failed verification (already dropped by the store).
struct Corrupted;

pub(crate) async fn exec_get(ctx: Rc<ShardCtx>, req: GetReq) -> Result<Response<Body>, ApiError> {
    match ctx.shard.lookup(&req.key) {
        Lookup::Hit { meta, body } => match serve_hit(&ctx, &req, &meta, body, false).await {
            Ok(r) => r,
            Err(Corrupted) if req.fetch => read_through(ctx, req).await,
            Err(Corrupted) => Err(ApiError::not_found(
                "the stored copy failed verification and was dropped; X-Meta-Fetch is off",
            )),
        },
        Lookup::Deleted(t) => Err(deleted(&req.key, t.deleted_at_ms)),
        Lookup::Miss if req.fetch => read_through(ctx, req).await,
        Lookup::Miss => Err(ApiError::not_found(format!(
            "id {} is not cached and X-Meta-Fetch is off",
            req.key
        ))),
    }
}

fn deleted(id: &str, at_ms: u64) -> ApiError {
    ApiError::not_found(format!("id {id} was deleted at {}", http_date(at_ms))).with_header(
        header::HeaderName::from_static(X_META_DELETED),
        HeaderValue::from_static("true"),
    )
}

async fn serve_hit(
    ctx: &Rc<ShardCtx>,
    req: &GetReq,
    meta: &ObjectMeta,
    body: Option<Bytes>,
    fetched: bool,
) -> Result<Result<Response<Body>, ApiError>, Corrupted> {
    let (builder, range) = match ObjView::stored(meta, fetched).respond(req) {
        Ok(x) => x,
        Err(Early::Response(r)) => return Ok(Ok(r)),
        Err(Early::Error(e)) => return Ok(Err(e)),
    };
    if req.head {
        return Ok(Ok(builder.body(Body::Empty).expect("valid response")));
    }
    let slice = |b: &Bytes| b.slice(range.start as usize..range.end as usize);
    if let Some(b) = body {
        return Ok(Ok(builder
            .body(Body::full(slice(&b)))
            .expect("valid response")));
    }
    if meta.size <= ctx.node.cfg.store.memory_object_max.0 {
        return match ctx.shard.read_all(meta).await {
            Ok(b) => Ok(Ok(builder
                .body(Body::full(slice(&b)))
                .expect("valid response"))),
            Err(StoreError::Corrupt { .. } | StoreError::NotFound) => Err(Corrupted),
            Err(e) => Ok(Err(e.into())),
        };
    }
    if range.is_empty() {
        return Ok(Ok(builder.body(Body::Empty).expect("valid response")));
    }
    let mut reader = match ctx.shard.open_reader(meta, range.clone()).await {
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
    let (tx, body) = Body::channel(range.end - range.start, BODY_DEPTH);
    monoio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        while let Some(chunk) = reader.next_chunk().await {
            let item =
                chunk.map_err(|e| BodyError(format!("stored object failed mid-stream: {e}")));
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    Ok(Ok(builder.body(body).expect("valid response")))
}

/// A miss: read through from the origin. The first miss for a key fetches; concurrent
/// misses wait for it and then read the stored copy.
async fn read_through(ctx: Rc<ShardCtx>, req: GetReq) -> Result<Response<Body>, ApiError> {
    // While ownership moves, the copy may still be on a previous holder only: take it
    // from there (the origin may not have it at level 0) before asking the origin.
    if let Some(cl) = ctx.node.cluster.clone() {
        if cl.moving() && crate::cluster::sync::pull_from_holders(&ctx, &cl, &req.key).await {
            if let Lookup::Hit { meta, body } = ctx.shard.peek(&req.key) {
                if let Ok(r) = serve_hit(&ctx, &req, &meta, body, false).await {
                    return r;
                }
            }
        }
    }
    let existing = ctx.fetches.borrow().get(&req.key).cloned();
    if let Some(fetch) = existing {
        ctx.http.coalesced.fetch_add(1, Relaxed);
        fetch.wait().await.map_err(ApiError::from)?;
        return match ctx.shard.peek(&req.key) {
            Lookup::Hit { meta, body } => match serve_hit(&ctx, &req, &meta, body, true).await {
                Ok(r) => r,
                Err(Corrupted) => Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "storage error",
                    "the freshly fetched copy failed verification",
                )),
            },
            Lookup::Deleted(t) => Err(deleted(&req.key, t.deleted_at_ms)),
            // Fetched but not cached (no room): fetch for this request too.
            Lookup::Miss => fetch_and_respond(ctx, req).await,
        };
    }
    if req.head {
        // HEAD needs only the metadata: ask the origin, don't fill the cache.
        let rmeta = req.origin_head(&ctx).await?;
        let view = ObjView::remote(&req.key, &rmeta);
        return match view.respond(&req) {
            Ok((b, _)) => Ok(b.body(Body::Empty).expect("valid response")),
            Err(Early::Response(r)) => Ok(r),
            Err(Early::Error(e)) => Err(e),
        };
    }
    fetch_and_respond(ctx, req).await
}

async fn fetch_and_respond(ctx: Rc<ShardCtx>, req: GetReq) -> Result<Response<Body>, ApiError> {
    let fetch = Fetch::new();
    ctx.fetches
        .borrow_mut()
        .insert(req.key.clone(), fetch.clone());
    let (resp_tx, resp_rx) = oneshot::channel();
    // The fetch runs in its own task: it fills the cache even if this client goes away.
    monoio::spawn(fetch_task(ctx.clone(), req, fetch, resp_tx));
    resp_rx.await.unwrap_or_else(|_| {
        Err(ApiError::unavailable(
            "origin fetch task ended without answering",
        ))
    })
}

async fn fetch_task(
    ctx: Rc<ShardCtx>,
    req: GetReq,
    fetch: Rc<Fetch>,
    resp_tx: oneshot::Sender<Result<Response<Body>, ApiError>>,
) {
    let id = req.key.clone();
    let done = |outcome: Result<(), ApiErrorLite>| {
        let mut f = ctx.fetches.borrow_mut();
        if f.get(&id).is_some_and(|cur| Rc::ptr_eq(cur, &fetch)) {
            f.remove(&id);
        }
        drop(f);
        fetch.complete(outcome);
    };
    ctx.http.origin_fetches.fetch_add(1, Relaxed);
    let obj = match req.origin_get(&ctx).await {
        Ok(o) => o,
        Err(e) => {
            done(Err((&e).into()));
            let _ = resp_tx.send(Err(e));
            return;
        }
    };
    let rmeta = obj.meta.clone();
    let mut origin_body = obj.body;
    // The client's part of the stream, if it wants a body.
    let mut client = None;
    match ObjView::remote(&id, &rmeta).respond(&req) {
        Ok((builder, range)) if !range.is_empty() => {
            let (tx, body) = Body::channel(range.end - range.start, BODY_DEPTH);
            client = Some((tx, range));
            let _ = resp_tx.send(Ok(builder.body(body).expect("valid response")));
        }
        Ok((builder, _)) => {
            let _ = resp_tx.send(Ok(builder.body(Body::Empty).expect("valid response")));
        }
        Err(Early::Response(r)) => {
            let _ = resp_tx.send(Ok(r));
        }
        Err(Early::Error(e)) => {
            let _ = resp_tx.send(Err(e));
        }
    }
    let mut writer = match ctx.shard.begin_write(&id, Some(rmeta.size)).await {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(shard = ctx.id, error = %e, "read-through not cached");
            None
        }
    };
    let mut pos = 0u64;
    loop {
        match origin_body.next_chunk().await {
            None => break,
            Some(Ok(chunk)) => {
                let len = chunk.len() as u64;
                if let Some((tx, range)) = &client {
                    let (s, e) = (pos.max(range.start), (pos + len).min(range.end));
                    if s < e {
                        let part = chunk.slice((s - pos) as usize..(e - pos) as usize);
                        if tx.send(Ok(part)).await.is_err() {
                            client = None;
                        }
                    }
                }
                pos += len;
                if let Some(w) = writer.as_mut() {
                    if let Err(e) = w.write(chunk).await {
                        tracing::warn!(shard = ctx.id, error = %e, "read-through: caching stopped");
                        if let Some(w) = writer.take() {
                            w.abort().await;
                        }
                    }
                }
            }
            Some(Err(e)) => {
                let msg = format!("origin stream broke after {pos} bytes: {e}");
                if let Some((tx, _)) = &client {
                    let _ = tx.send(Err(BodyError(msg.clone()))).await;
                }
                if let Some(w) = writer.take() {
                    w.abort().await;
                }
                done(Err(ApiErrorLite {
                    status: StatusCode::BAD_GATEWAY,
                    error: "origin error",
                    detail: msg,
                    s3_code: None,
                }));
                return;
            }
        }
    }
    if pos != rmeta.size {
        let msg = format!("origin sent {pos} bytes of {}", rmeta.size);
        if let Some((tx, _)) = &client {
            let _ = tx.send(Err(BodyError(msg.clone()))).await;
        }
        if let Some(w) = writer.take() {
            w.abort().await;
        }
        done(Err(ApiErrorLite {
            status: StatusCode::BAD_GATEWAY,
            error: "origin error",
            detail: msg,
            s3_code: None,
        }));
        return;
    }
    if let Some(w) = writer {
        let attrs = WriteAttrs {
            content_type: rmeta.content_type.clone(),
            name: None,
            user_meta: rmeta.user_meta.clone(),
            headers: rmeta.headers.clone(),
            level: 1,
            fetched: Some(FetchedFrom {
                etag: rmeta.etag.clone(),
                last_modified_ms: rmeta.last_modified_ms,
            }),
        };
        match w.finish(attrs).await {
            Ok(_) | Err(StoreError::Superseded) => {}
            Err(e) => tracing::warn!(shard = ctx.id, error = %e, "read-through: storing failed"),
        }
    }
    done(Ok(()));
}

// ---------------------------------------------------------------------------------------
// META

async fn meta(
    ctx: &Rc<ShardCtx>,
    req: Request<Incoming>,
    raw_id: &str,
) -> Result<Response<Body>, ApiError> {
    let id = parse_id(raw_id, "id")?;
    let fetch = bool_header(req.headers(), X_META_FETCH)?.unwrap_or(ctx.node.cfg.api.fetch_default);
    let key = id.clone();
    ctx.on_owner(&id, move |ctx| async move {
        match ctx.shard.peek(&key) {
            Lookup::Hit { meta, .. } => Ok(json(StatusCode::OK, &serde_json::json!({
                "id": meta.key, "size": meta.size, "etag": meta.etag,
                "content_type": meta.content_type, "name": meta.name, "user_meta": meta.user_meta,
                "last_modified": http_date(meta.last_modified_ms), "last_modified_ms": meta.last_modified_ms,
                "level": meta.level, "in_origin": meta.in_origin, "hlc": meta.hlc, "seq": meta.seq,
                "cached": true, "deleted": false,
                "fetched": meta.provenance == nearcache_shards::Provenance::Fetched,
            }))),
            Lookup::Deleted(t) => Err(deleted(&key, t.deleted_at_ms)),
            Lookup::Miss if fetch => {
                let m = ctx.node.bridge.head(&key).await?;
                let mut r = json(StatusCode::OK, &serde_json::json!({
                    "id": key, "size": m.size, "etag": m.etag, "content_type": m.content_type,
                    "user_meta": m.user_meta, "last_modified": http_date(m.last_modified_ms),
                    "last_modified_ms": m.last_modified_ms, "in_origin": true, "cached": false,
                    "deleted": false, "fetched": true,
                }));
                r.headers_mut().insert(X_META_FETCHED, HeaderValue::from_static("true"));
                Ok(r)
            }
            Lookup::Miss => Err(ApiError::not_found(format!("id {key} is not cached and X-Meta-Fetch is off"))),
        }
    })
    .await?
}

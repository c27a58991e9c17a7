//! objstore's native API (`/api/v1`): ULID ids, `X-Meta-*` headers, consistency levels.
//!
//! Requests are parsed and validated on the shard that accepted the connection, into
//! the object service's types; the service runs them on the key's owner shard and this
//! edge renders its answers and errors (JSON).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nearcache_shards::WriteAttrs;
use ulid::Ulid;

use super::error::{ApiError, X_META_DELETED};
use crate::body::{json, text, Body};
use crate::ctx::{ActiveGuard, ShardCtx};
use crate::http_util::{answer_head, http_date, parse_byte_range, quoted, Answer, Conditions};
use crate::metrics::Route;
use crate::object::read::{GetRequest, ObjectView, Render, Stat};
use crate::object::write::{DeleteRequest, PutRequest, WriteCondition, WriteError};
use crate::object::CacheKey;

// Header names made once, not parsed from a string on every response.
const X_META_ID: HeaderName = HeaderName::from_static("x-meta-id");
const X_META_NAME: HeaderName = HeaderName::from_static("x-meta-name");
const X_META_LEVEL: HeaderName = HeaderName::from_static("x-meta-consistencylevel");
const X_META_USERMETA: HeaderName = HeaderName::from_static("x-meta-usermeta");
const X_META_FETCH: HeaderName = HeaderName::from_static("x-meta-fetch");
const X_META_SYNC: HeaderName = HeaderName::from_static("x-meta-sync");
const X_META_FETCHED: HeaderName = HeaderName::from_static("x-meta-fetched");

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
    let resp = result.unwrap_or_else(ApiError::into_response);
    ctx.finish(route, start, resp)
}

/// The bearer token's check for a request of `route` (nothing when JWT is off): reads
/// need READ, puts WRITE, deletes DELETE on the id, in the origin bucket; a new id
/// only a valid token.
fn check_token(
    ctx: &ShardCtx,
    route: Route,
    path: &str,
    h: &HeaderMap,
) -> Result<(), super::auth::AuthError> {
    use super::auth::{authenticate, authorize, native_bucket, Action};
    if !super::auth::enabled(ctx) {
        return Ok(());
    }
    // The canonical id when it parses (a token's prefix is matched against that); the
    // request fails on a bad id later, after the token.
    let id = |raw: &str| parse_id(raw, "id").unwrap_or_else(|_| raw.to_string());
    let (action, key) = match route {
        Route::Get | Route::Head => (Action::Read, id(&path["/api/v1/get/".len()..])),
        Route::Meta => (Action::Read, id(&path["/api/v1/meta/".len()..])),
        Route::Delete => (Action::Delete, id(&path["/api/v1/delete/".len()..])),
        // Without X-Meta-ID the id is made here: only a token for every key allows it.
        Route::Put => (
            Action::Write,
            h.get(X_META_ID)
                .and_then(|v| v.to_str().ok())
                .map(id)
                .unwrap_or_default(),
        ),
        _ => return authenticate(ctx, h).map(|_| ()),
    };
    authorize(ctx, h, action, native_bucket(&ctx.node), &key).map(|_| ())
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
        "/api/v1/id" => (Route::NewId, &[Method::GET]),
        "/api/v1/put" => (Route::Put, &[Method::POST, Method::PUT]),
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
    if !forwarded {
        if let Err(e) = check_token(ctx, route, &path, req.headers()) {
            return (route, Err(e.into()));
        }
    }
    if matches!(route, Route::Put | Route::Delete) {
        if let Err(e) = crate::object::policy::check_write(&ctx.node.cfg, None) {
            return (route, Err(e.into()));
        }
    }
    if let (false, Some(cs)) = (forwarded, ctx.cluster.clone()) {
        // A read this node may serve from its own copy takes one cross-shard hop.
        if matches!(route, Route::Get | Route::Head) {
            return (
                route,
                cluster_get(ctx, &cs, req, route == Route::Head, &path).await,
            );
        }
        if route == Route::Meta {
            return (route, Box::pin(cluster_meta(ctx, &cs, req, &path)).await);
        }
        match placement_key(ctx, route, &path, &mut req) {
            Ok(None) => {}
            Ok(Some((key, level))) => {
                let placed = crate::cluster::route::route_write(ctx, &cs, &key, level, req);
                match Box::pin(placed).await {
                    Ok(crate::cluster::route::Route::Local(r)) => req = r,
                    Ok(crate::cluster::route::Route::Remote(resp)) => return (route, Ok(resp)),
                    Err(e) => return (route, Err(e.into())),
                }
            }
            Err(e) => return (route, Err(e)),
        }
    }
    let result = match route {
        Route::NewId => Ok(text(
            StatusCode::OK,
            "text/plain",
            Ulid::generate().to_string(),
        )),
        // Writes and META run boxed: the hot GET's future stays the size of a GET's.
        Route::Put => Box::pin(put(ctx, req)).await,
        Route::Get | Route::Head => {
            get(
                ctx,
                req,
                route == Route::Head,
                &path["/api/v1/get/".len()..],
            )
            .await
        }
        Route::Meta => Box::pin(meta(ctx, req, &path["/api/v1/meta/".len()..])).await,
        Route::Delete => Box::pin(delete(ctx, req, &path["/api/v1/delete/".len()..])).await,
        _ => Err(ApiError::not_found(format!("no route for {method} {path}"))),
    };
    (route, result)
}

/// The native API's header parsers. Client input must not be able to panic them: they
/// deny unchecked indexing, arithmetic, `unwrap` and `expect` (README, "Errors and logs").
mod headers {
    #![cfg_attr(
        not(test),
        deny(
            clippy::indexing_slicing,
            clippy::arithmetic_side_effects,
            clippy::unwrap_used,
            clippy::expect_used
        )
    )]

    use super::*;

    /// A boolean header: `1`/`true`/`yes` or `0`/`false`/`no`.
    pub(crate) fn bool_header(h: &HeaderMap, name: &HeaderName) -> Result<Option<bool>, ApiError> {
        let Some(v) = h.get(name) else {
            return Ok(None);
        };
        match v
            .to_str()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "1" | "true" | "yes" => Ok(Some(true)),
            "0" | "false" | "no" => Ok(Some(false)),
            other => Err(ApiError::bad_request(
                "invalid header",
                format!(
                    "{} must be 0 or 1 (or true/false), not {other:?}",
                    display_name(name.as_str())
                ),
            )),
        }
    }

    /// `x-meta-sync` -> `X-Meta-Sync`, for error messages.
    fn display_name(name: &str) -> String {
        name.split('-')
            .map(|p| {
                let mut c = p.chars();
                c.next().map_or(String::new(), |f| {
                    f.to_ascii_uppercase().to_string() + c.as_str()
                })
            })
            .collect::<Vec<_>>()
            .join("-")
    }

    /// Validates an id: a ULID, returned in canonical form.
    pub(crate) fn parse_id(raw: &str, what: &str) -> Result<String, ApiError> {
        // 26 base32 digits hold 130 bits: `ulid` drops the top two, so a first digit above 7
        // would alias another id ("8..." is "0..."). The ULID spec refuses it; so do we.
        if is_canonical_ulid(raw) {
            // What parsing and printing it again would give.
            return Ok(raw.to_owned());
        }
        let overflow = raw.len() == 26 && !raw.starts_with(|c| ('0'..='7').contains(&c));
        let parsed = match Ulid::from_string(raw) {
            Ok(_) if overflow => Err("the value is larger than 128 bits".to_owned()),
            r => r.map_err(|e| e.to_string()),
        };
        parsed.map(|u| u.to_string()).map_err(|e| {
            ApiError::bad_request("invalid id", format!("{what} {raw:?} is not a ULID: {e}"))
        })
    }

    /// A ULID as `Ulid::to_string` prints it: 26 digits of Crockford's base32 in upper
    /// case, the first at most 7. Hot reads send ids like this; they need no decoding.
    pub(crate) fn is_canonical_ulid(raw: &str) -> bool {
        let b = raw.as_bytes();
        b.len() == 26
            && b.first().is_some_and(|c| (b'0'..=b'7').contains(c))
            && b.iter().all(|c| {
                // Crockford's base32: no I, L, O, U.
                matches!(c, b'0'..=b'9' | b'A'..=b'H' | b'J' | b'K' | b'M' | b'N' | b'P'..=b'T' | b'V'..=b'Z')
            })
    }

    pub(crate) fn level_header(h: &HeaderMap, default: u8) -> Result<u8, ApiError> {
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
    pub(crate) fn user_meta_header(h: &HeaderMap) -> Result<BTreeMap<String, String>, ApiError> {
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
            // Keys are case-insensitive (x-amz-meta-* headers): "A" and "a" are one key twice,
            // which would silently keep only one of the values.
            if out.insert(k.to_ascii_lowercase(), v).is_some() {
                return Err(bad(format!(
                    "X-Meta-UserMeta key {k:?} is given twice (keys are case-insensitive)"
                )));
            }
        }
        Ok(out)
    }
}

pub(crate) use headers::{bool_header, level_header, parse_id, user_meta_header};

// ---------------------------------------------------------------------------------------
// PUT

async fn put(ctx: &Rc<ShardCtx>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let h = req.headers();
    let id = match h.get(X_META_ID) {
        Some(v) => parse_id(v.to_str().unwrap_or("<non-ASCII>"), "X-Meta-ID")?,
        None => Ulid::generate().to_string(),
    };
    let level = level_header(h, ctx.node.cfg.api.default_level)?;
    let sync = bool_header(h, &X_META_SYNC)?.unwrap_or(false);
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
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid content-length",
                        "Content-Length is not a number",
                    )
                })?,
        ),
        None => None,
    };
    let user_meta = user_meta_header(h)?;
    let preq = PutRequest {
        key: CacheKey::native(id),
        attrs: WriteAttrs {
            content_type,
            name,
            user_meta,
            level,
            fetched: None,
            headers: BTreeMap::new(),
        },
        content_length,
        wait_origin: sync,
        cond: WriteCondition::default(),
    };
    let expected = content_length.map_or("an unknown number of".into(), |l| l.to_string());
    let body = req.into_body().into_data_stream();
    let result = crate::object::write::put(ctx, preq, body)
        .await
        .map_err(|e| match e {
            WriteError::Body { got, error } => ApiError::bad_request(
                "incomplete body",
                format!(
                    "request body failed after {got} of {expected} bytes: {error}; nothing was stored"
                ),
            ),
            WriteError::Object(e) => e.into(),
        });
    // A failed PUT may leave its body unread: tell the client not to reuse the connection
    // (hyper closes it) rather than let a pooled request hit a closing socket.
    let w =
        result.map_err(|e| e.with_header(header::CONNECTION, HeaderValue::from_static("close")))?;
    let mut resp = json(
        StatusCode::OK,
        &serde_json::json!({
            "id": w.key, "size": w.size, "etag": w.etag, "level": w.level,
            "in_origin": w.in_origin,
        }),
    );
    let h = resp.headers_mut();
    h.insert(
        X_META_ID,
        HeaderValue::from_str(&w.key).expect("ulid is ascii"),
    );
    h.insert(header::ETAG, quoted(&w.etag));
    Ok(resp)
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
    let sync = bool_header(req.headers(), &X_META_SYNC)?.unwrap_or(false);
    let dreq = DeleteRequest {
        key: CacheKey::native(id.clone()),
        level,
        wait_origin: sync,
    };
    crate::object::write::delete(ctx, dreq).await?;
    let mut resp = json(
        StatusCode::OK,
        &serde_json::json!({ "id": id, "deleted": true, "level": level }),
    );
    resp.headers_mut()
        .insert(X_META_DELETED, HeaderValue::from_static("true"));
    Ok(resp)
}

// ---------------------------------------------------------------------------------------
// GET / HEAD

/// The native API's response head: ETag, Last-Modified, X-Meta-* headers.
struct NativeRender;

impl Render for NativeRender {
    fn head(&self, v: &ObjectView<'_>, answer: &Answer) -> http::response::Builder {
        let mut b = v.head_builder();
        let hv = v.head_values();
        if let Some(h) = b.headers_mut() {
            if let Ok(id) = HeaderValue::from_str(v.key) {
                h.insert(X_META_ID, id);
            }
            if v.fetched() {
                h.insert(X_META_FETCHED, HeaderValue::from_static("true"));
            }
            if *answer != Answer::NotModified {
                h.insert(header::CONTENT_TYPE, v.content_type_value());
                if let Some(n) = v.name.and_then(|n| HeaderValue::from_str(n).ok()) {
                    h.insert(X_META_NAME, n);
                }
                if let Some(l) = v.level_value() {
                    h.insert(X_META_LEVEL, l);
                }
                if let Some(j) = &hv.user_meta_json {
                    h.insert(X_META_USERMETA, j.clone());
                }
            }
        }
        answer_head(b, v.size, answer)
    }
}

fn get_request(
    ctx: &ShardCtx,
    req: &Request<Incoming>,
    head: bool,
    raw_id: &str,
) -> Result<GetRequest, ApiError> {
    let id = parse_id(raw_id, "id")?;
    let h = req.headers();
    Ok(GetRequest {
        key: CacheKey::native(id),
        head,
        range: parse_byte_range(h.get(header::RANGE).and_then(|v| v.to_str().ok())),
        cond: Conditions::from_headers(h),
        fetch: bool_header(h, &X_META_FETCH)?.unwrap_or(ctx.node.cfg.api.fetch_default),
    })
}

async fn get(
    ctx: &Rc<ShardCtx>,
    req: Request<Incoming>,
    head: bool,
    raw_id: &str,
) -> Result<Response<Body>, ApiError> {
    let greq = get_request(ctx, &req, head, raw_id)?;
    Ok(crate::object::read::get(ctx, greq, NativeRender).await?)
}

/// GET or HEAD through a cluster node: here if this node is the first owner (read
/// through on a miss), else from a copy held here if it may serve one, else proxied.
async fn cluster_get(
    ctx: &Rc<ShardCtx>,
    cs: &crate::cluster::ClusterShard,
    req: Request<Incoming>,
    head: bool,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    use crate::cluster::route::{proxy, read_plan, ReadPlan, Route as Placed};
    let raw_id = &path["/api/v1/get/".len()..];
    let greq = get_request(ctx, &req, head, raw_id)?;
    let owner_here = match read_plan(cs, greq.key.as_str()) {
        ReadPlan::Here => return Ok(crate::object::read::get(ctx, greq, NativeRender).await?),
        ReadPlan::IfHeld { owner_here } => owner_here,
    };
    let key = greq.key.clone();
    if let Some(resp) = crate::object::read::get_held(ctx, greq, NativeRender, owner_here).await? {
        return Ok(resp);
    }
    match proxy(cs, key.as_str(), req).await? {
        Placed::Remote(resp) => Ok(resp),
        // Every better-ranked node is unreachable: serve (read through) here.
        Placed::Local(req) => get(ctx, req, head, raw_id).await,
    }
}

// ---------------------------------------------------------------------------------------
// META

/// META through a cluster node: here if this node is the first owner (read through on a
/// miss), else from a copy held here if it may serve one, else proxied.
async fn cluster_meta(
    ctx: &Rc<ShardCtx>,
    cs: &crate::cluster::ClusterShard,
    req: Request<Incoming>,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    use crate::cluster::route::{proxy, read_plan, ReadPlan, Route as Placed};
    let raw_id = &path["/api/v1/meta/".len()..];
    let id = parse_id(raw_id, "id")?;
    let owner_here = match read_plan(cs, &id) {
        ReadPlan::Here => return meta(ctx, req, raw_id).await,
        ReadPlan::IfHeld { owner_here } => owner_here,
    };
    let key = CacheKey::native(id.clone());
    if let Some(stat) = crate::object::read::stat_held(ctx, key, owner_here).await? {
        return Ok(render_meta(id, stat));
    }
    match proxy(cs, &id, req).await? {
        Placed::Remote(resp) => Ok(resp),
        // Every better-ranked node is unreachable: serve (read through) here.
        Placed::Local(req) => meta(ctx, req, raw_id).await,
    }
}

async fn meta(
    ctx: &Rc<ShardCtx>,
    req: Request<Incoming>,
    raw_id: &str,
) -> Result<Response<Body>, ApiError> {
    let id = parse_id(raw_id, "id")?;
    let fetch =
        bool_header(req.headers(), &X_META_FETCH)?.unwrap_or(ctx.node.cfg.api.fetch_default);
    let stat = crate::object::read::stat(ctx, CacheKey::native(id.clone()), fetch).await?;
    Ok(render_meta(id, stat))
}

/// META's JSON answer.
fn render_meta(id: String, stat: Stat) -> Response<Body> {
    match stat {
        Stat::Cached(meta) => json(
            StatusCode::OK,
            &serde_json::json!({
                "id": meta.key, "size": meta.size, "etag": meta.etag,
                "content_type": meta.content_type, "name": meta.name, "user_meta": meta.user_meta,
                "last_modified": http_date(meta.last_modified_ms), "last_modified_ms": meta.last_modified_ms,
                "level": meta.level, "in_origin": meta.in_origin, "hlc": meta.hlc, "seq": meta.seq,
                "cached": true, "deleted": false,
                "fetched": meta.provenance == nearcache_shards::Provenance::Fetched,
            }),
        ),
        Stat::Origin(m, restored) => {
            let mut r = json(
                StatusCode::OK,
                &serde_json::json!({
                    "id": id, "size": m.size, "etag": m.etag, "content_type": m.content_type,
                    "name": restored.name, "level": restored.level,
                    "user_meta": m.user_meta, "last_modified": http_date(m.last_modified_ms),
                    "last_modified_ms": m.last_modified_ms, "in_origin": true, "cached": false,
                    "deleted": false, "fetched": true,
                }),
            );
            r.headers_mut()
                .insert(X_META_FETCHED, HeaderValue::from_static("true"));
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::headers::is_canonical_ulid;
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The canonical fast path answers exactly what decoding and printing again would.
    #[test]
    fn parse_id_fast_path_agrees_with_decoding() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        // Crockford's digits, lower case, the letters it decodes leniently, and others.
        let alphabet: Vec<char> = "0123456789ABCDEFGHJKMNPQRSTVWXYZabcxyzILOUilou-_ 8"
            .chars()
            .collect();
        let mut canonical = 0;
        for i in 0..20_000 {
            let raw: String = if i % 2 == 0 {
                Ulid::from(rng.gen::<u128>()).to_string()
            } else {
                let len = if i % 7 == 0 {
                    rng.gen_range(24..28)
                } else {
                    26
                };
                (0..len)
                    .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                    .collect()
            };
            let overflow = raw.len() == 26 && !raw.starts_with(|c| ('0'..='7').contains(&c));
            let slow = match Ulid::from_string(&raw) {
                Ok(u) if !overflow => Some(u.to_string()),
                _ => None,
            };
            let fast = parse_id(&raw, "id").ok();
            assert_eq!(fast, slow, "{raw:?}");
            assert_eq!(
                is_canonical_ulid(&raw),
                slow.as_deref() == Some(raw.as_str()),
                "{raw:?}"
            );
            canonical += usize::from(is_canonical_ulid(&raw));
        }
        assert!(
            canonical >= 10_000,
            "only {canonical} canonical ids were tried"
        );
        assert_eq!(
            parse_id("01jdb000000000000000000000", "id").unwrap(),
            "01JDB000000000000000000000"
        );
        assert!(parse_id("81JDB000000000000000000000", "id").is_err());
    }
}

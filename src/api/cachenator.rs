//! cachenator-compatible endpoints on the public listener, so that cachenator's users
//! switch by changing the address only. Same methods, parameters, status codes and JSON
//! shapes as cachenator (github.com/adrianchifor/cachenator), served from the same cache
//! as the S3 API: object KEY of bucket B is one cached object either way.
//!
//! | route | what |
//! |---|---|
//! | `GET /get?bucket=&key=` | the object (`application/octet-stream`, `Content-Disposition: attachment`); 404 `{"error"}` |
//! | `POST /upload?bucket=&path=` | multipart form, field `files`: each file stored as `path/FILENAME`, streamed (in a cluster, to its key's first owner: `PUT /upload/part` node to node) |
//! | `GET /list?bucket=&prefix=` | `{"keys": [...]}`; 404 when there is none |
//! | `POST /prewarm?bucket=&prefix=` | starts a prewarm job (`"job"` in the answer); 404 when nothing matches |
//! | `POST /invalidate?bucket=&key=` (or `&prefix=`) | drops the cached copies on every node |
//! | `DELETE /delete?bucket=&key=` (or `&prefix=`) | deletes in S3 and the cache (tombstones); a prefix runs a delete job and waits for it |
//!
//! Errors are `{"error": "..."}`; successes carry `"message"` and `"error": ""`.

use std::rc::Rc;
use std::time::Instant;

use futures::StreamExt;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use nearcache_s3::ListParams;
use nearcache_shards::WriteAttrs;

use super::error::ApiError;
use crate::body::{json, Body};
use crate::ctx::{ActiveGuard, ShardCtx};
use crate::http_util::{answer_head, parse_byte_range, Answer, Conditions};
use crate::metrics::Route;
use crate::object::invalidate::{self, Scope};
use crate::object::jobs::{self, JobKind, JobState};
use crate::object::read::{GetRequest, ObjectView, Render};
use crate::object::write::{BodyStream, DeleteRequest, PutRequest, WriteCondition, WriteError};
use crate::object::{CacheKey, ObjectError};

/// The routes, with the method each accepts (GET also HEAD).
fn method_of(path: &str) -> Option<Method> {
    Some(match path {
        "/get" | "/list" => Method::GET,
        "/upload" | "/prewarm" | "/invalidate" => Method::POST,
        "/delete" => Method::DELETE,
        _ => return None,
    })
}

/// Whether this edge serves `path`.
pub fn serves(path: &str) -> bool {
    method_of(path).is_some()
}

pub async fn handle(ctx: Rc<ShardCtx>, req: Request<Incoming>) -> Response<Body> {
    serve(ctx, req, false).await
}

/// A `/get` or `/delete` proxied here by another node (this node owns the key).
pub async fn handle_forwarded(ctx: Rc<ShardCtx>, req: Request<Incoming>) -> Response<Body> {
    serve(ctx, req, true).await
}

/// A cachenator error: answered as `{"error": message}` with `status`.
fn err(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(status, "cachenator", msg)
}

/// An error in cachenator's shape (its status and headers kept).
fn from_api(e: ApiError) -> Response<Body> {
    let mut r = json(e.status, &serde_json::json!({ "error": e.detail }));
    for (k, v) in e.headers {
        r.headers_mut().insert(k, v);
    }
    r
}

fn message(msg: String, extra: serde_json::Value) -> Response<Body> {
    let mut v = serde_json::json!({ "message": msg, "error": "" });
    if let (Some(o), serde_json::Value::Object(x)) = (v.as_object_mut(), extra) {
        o.extend(x);
    }
    json(StatusCode::OK, &v)
}

async fn serve(ctx: Rc<ShardCtx>, req: Request<Incoming>, forwarded: bool) -> Response<Body> {
    let start = Instant::now();
    let _active = ActiveGuard::new(&ctx);
    let resp = route(&ctx, req, forwarded).await;
    ctx.finish(Route::Cachenator, start, resp)
}

/// The query parameters as cachenator reads them: decoded ('+' is a space), trimmed.
struct Params(Vec<(String, String)>);

impl Params {
    fn of(req: &Request<Incoming>) -> Params {
        Params(super::s3::parse_query(req.uri().query().unwrap_or("")))
    }

    fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.trim())
    }

    fn required(&self, name: &str) -> Result<&str, ApiError> {
        match self.get(name) {
            "" => Err(err(
                StatusCode::BAD_REQUEST,
                format!("'{name}' not found in querystring parameters"),
            )),
            v => Ok(v),
        }
    }
}

async fn route(ctx: &Rc<ShardCtx>, req: Request<Incoming>, forwarded: bool) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let want = match path.as_str() {
        "/upload/part" if forwarded => Method::PUT,
        _ => method_of(&path).unwrap_or(Method::GET),
    };
    let method = req.method().clone();
    if method != want && !(want == Method::GET && method == Method::HEAD) {
        return from_api(
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
                format!("{path} accepts {want}, not {method}"),
            )
            .with_header(
                header::ALLOW,
                HeaderValue::from_str(want.as_str()).expect("ascii"),
            ),
        );
    }
    let p = Params::of(&req);
    if !forwarded {
        if let Err(e) = check_token(ctx, &req, &p) {
            return from_api(e.into());
        }
    }
    let result = match path.as_str() {
        "/upload/part" if forwarded => upload_part(ctx, req, &p).await,
        "/get" => get(ctx, req, &p, forwarded).await,
        "/upload" => upload(ctx, req, &p).await,
        "/list" => list(ctx, &p).await,
        "/prewarm" => prewarm(ctx, &p).await,
        "/invalidate" => invalidate(ctx, &p).await,
        _ => delete(ctx, req, &p, forwarded).await,
    };
    let mut resp = result.unwrap_or_else(from_api);
    // A failed upload may leave its body unread: the client must not reuse the
    // connection (hyper closes it) rather than send its next request into a closing socket.
    if path.starts_with("/upload") && !resp.status().is_success() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The bearer token's check (nothing when JWT is off), as cachenator maps methods to
/// actions (GET: READ, POST: WRITE, DELETE: DELETE), on the bucket and the key, prefix
/// or upload path named. Requests another node forwarded were checked there.
fn check_token(
    ctx: &ShardCtx,
    req: &Request<Incoming>,
    p: &Params,
) -> Result<(), super::auth::AuthError> {
    use super::auth::{authorize, Action};
    let action = match *req.method() {
        Method::GET | Method::HEAD => Action::Read,
        Method::DELETE => Action::Delete,
        _ => Action::Write,
    };
    let key = ["key", "prefix", "path"]
        .into_iter()
        .map(|n| p.get(n))
        .find(|v| !v.is_empty())
        .unwrap_or("");
    authorize(ctx, req.headers(), action, p.get("bucket"), key).map(|_| ())
}

type Answered = Result<Response<Body>, ApiError>;

/// In a cluster, a write or delete of one object goes to the key's owners: the owner's
/// answer if it was proxied, `None` to serve it here.
async fn place(
    ctx: &Rc<ShardCtx>,
    mut req: Request<Incoming>,
    key: &CacheKey,
    forwarded: bool,
) -> Result<Option<Response<Body>>, ApiError> {
    let Some(cs) = ctx
        .cluster
        .clone()
        .filter(|_| !forwarded && key.fits_store())
    else {
        return Ok(None);
    };
    req.headers_mut().insert(
        crate::cluster::H_API,
        HeaderValue::from_static("cachenator"),
    );
    match crate::cluster::route::route_write(ctx, &cs, key.as_str(), 1, req).await {
        Ok(crate::cluster::route::Route::Local(_)) => Ok(None),
        Ok(crate::cluster::route::Route::Remote(resp)) => Ok(Some(resp)),
        Err(e) => Err(e.into()),
    }
}

/// cachenator's `/get` answer head.
struct CachenatorRender {
    disposition: Option<HeaderValue>,
}

impl Render for CachenatorRender {
    fn head(&self, v: &ObjectView<'_>, answer: &Answer) -> http::response::Builder {
        let mut b = v.head_builder();
        if let Some(h) = b.headers_mut() {
            let octets = HeaderValue::from_static("application/octet-stream");
            h.insert(header::CONTENT_TYPE, octets);
            if let Some(d) = &self.disposition {
                h.insert(header::CONTENT_DISPOSITION, d.clone());
            }
        }
        answer_head(b, v.size, answer)
    }
}

async fn get(ctx: &Rc<ShardCtx>, req: Request<Incoming>, p: &Params, forwarded: bool) -> Answered {
    use crate::cluster::route::{proxy_read, read_plan, ReadPlan};
    let bucket = p.required("bucket")?;
    let key = p.required("key")?;
    let ckey = CacheKey::s3(bucket, key);
    let (head, h) = (req.method() == Method::HEAD, req.headers());
    let range = parse_byte_range(h.get(header::RANGE).and_then(|v| v.to_str().ok()));
    let cond = Conditions::from_headers(h);
    let greq = |key: CacheKey| GetRequest {
        key,
        head,
        range,
        cond: cond.clone(),
        fetch: true,
    };
    let render = || CachenatorRender {
        disposition: HeaderValue::from_str(&format!("attachment; filename=\"{key}\"")).ok(),
    };
    let not_found = |e: ObjectError| match e {
        ObjectError::NotFound(_) | ObjectError::Deleted { .. } => err(
            StatusCode::NOT_FOUND,
            format!("Blob '{bucket}#{key}' not found"),
        ),
        e => e.into(),
    };
    // In a cluster, a node that is not the key's first owner serves a copy it may serve
    // in one hop, else proxies (the first owner reads through, so misses coalesce).
    let cluster = ctx
        .cluster
        .clone()
        .filter(|_| !forwarded && ckey.fits_store());
    if let Some(cs) = cluster {
        if let ReadPlan::IfHeld { owner_here } = read_plan(&cs, ckey.as_str()) {
            let held = crate::object::read::get_held(ctx, greq(ckey.clone()), render(), owner_here);
            if let Some(resp) = held.await.map_err(not_found)? {
                return Ok(resp);
            }
            let (mut parts, _) = req.into_parts();
            parts.headers.insert(
                crate::cluster::H_API,
                HeaderValue::from_static("cachenator"),
            );
            if let Some(resp) = proxy_read(&cs, ckey.as_str(), parts).await? {
                return Ok(resp);
            }
            // Every better-ranked node is unreachable: served (read through) here.
        }
    }
    crate::object::read::get(ctx, greq(ckey), render())
        .await
        .map_err(not_found)
}

/// Every key under `prefix`: the origin's listing with this node's writes and deletes
/// still pending upload merged in.
async fn list_keys(
    ctx: &Rc<ShardCtx>,
    bucket: &str,
    prefix: &str,
    limit: u32,
) -> Result<Vec<String>, ObjectError> {
    let mut keys = std::collections::BTreeSet::new();
    let mut start_after = None;
    loop {
        let page = ctx
            .objects
            .origin
            .list_objects(
                bucket,
                ListParams {
                    prefix: prefix.to_owned(),
                    delimiter: None,
                    start_after: start_after.take(),
                    max_keys: limit.min(1000),
                },
            )
            .await?;
        start_after = page.entries.last().map(|e| e.key.clone());
        keys.extend(page.entries.into_iter().map(|e| e.key));
        if !page.is_truncated || start_after.is_none() || keys.len() >= limit as usize {
            break;
        }
    }
    for (key, entry) in crate::object::read::pending_under(ctx, bucket, prefix).await? {
        match entry {
            Some(_) => keys.insert(key),
            None => keys.remove(&key),
        };
    }
    Ok(keys.into_iter().collect())
}

async fn list(ctx: &Rc<ShardCtx>, p: &Params) -> Answered {
    let bucket = p.required("bucket")?;
    let prefix = p.get("prefix");
    let keys = list_keys(ctx, bucket, prefix, u32::MAX)
        .await
        .map_err(ApiError::from)?;
    let status = if keys.is_empty() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    Ok(json(status, &serde_json::json!({ "keys": keys })))
}

async fn prewarm(ctx: &Rc<ShardCtx>, p: &Params) -> Answered {
    let bucket = p.required("bucket")?;
    let prefix = p.required("prefix")?;
    let any = list_keys(ctx, bucket, prefix, 1)
        .await
        .map_err(ApiError::from)?;
    if any.is_empty() {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!("No keys found with prefix '{prefix}' in S3 bucket '{bucket}'"),
        ));
    }
    let job = super::ops::start_job(ctx, JobKind::Prewarm, bucket, prefix)
        .await
        .map_err(ApiError::from)?;
    Ok(message(
        format!(
            "Pre-warming cache in the background with prefix '{prefix}' from S3 bucket '{bucket}'"
        ),
        serde_json::json!({ "job": job.to_json(&ctx.node.node_id) }),
    ))
}

/// `key` or `prefix`, exactly one.
fn key_or_prefix(p: &Params) -> Result<(Option<&str>, Option<&str>), ApiError> {
    match (p.get("key"), p.get("prefix")) {
        ("", "") => Err(err(
            StatusCode::BAD_REQUEST,
            "'key' or 'prefix' not found in querystring parameters",
        )),
        (k, pre) if !k.is_empty() && !pre.is_empty() => Err(err(
            StatusCode::BAD_REQUEST,
            "Only provide one of 'key' or 'prefix' in querystring parameters",
        )),
        ("", pre) => Ok((None, Some(pre))),
        (k, _) => Ok((Some(k), None)),
    }
}

async fn invalidate(ctx: &Rc<ShardCtx>, p: &Params) -> Answered {
    let bucket = p.required("bucket")?;
    let (key, prefix) = match key_or_prefix(p) {
        Ok(kp) => kp,
        // cachenator names only the key.
        Err(_) if p.get("prefix").is_empty() => return Err(p.required("key").unwrap_err()),
        Err(e) => return Err(e),
    };
    let scope = Scope::from_params(Some(bucket), key, prefix)
        .map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
    let out = invalidate::everywhere(ctx, &scope)
        .await
        .map_err(ApiError::from)?;
    let what = match (key, prefix) {
        (Some(k), _) => format!("'{bucket}#{k}'"),
        (_, pre) => format!("prefix '{bucket}#{}'", pre.unwrap_or_default()),
    };
    Ok(message(
        format!("{what} invalidated from cache"),
        serde_json::to_value(out).expect("serializes"),
    ))
}

async fn delete(
    ctx: &Rc<ShardCtx>,
    req: Request<Incoming>,
    p: &Params,
    forwarded: bool,
) -> Answered {
    let bucket = p.required("bucket")?.to_owned();
    let (key, prefix) = key_or_prefix(p)?;
    crate::object::policy::check_write(&ctx.node.cfg, Some(&bucket)).map_err(ApiError::from)?;
    if let Some(key) = key {
        let ckey = CacheKey::s3(&bucket, key);
        if let Some(resp) = place(ctx, req, &ckey, forwarded).await? {
            return Ok(resp);
        }
        let dreq = DeleteRequest {
            key: ckey,
            level: 1,
            wait_origin: true,
        };
        return match crate::object::write::delete(ctx, dreq).await {
            Ok(()) => Ok(message(
                format!("Deleted '{bucket}#{key}' from S3"),
                serde_json::json!({}),
            )),
            Err(e) => {
                let a = ApiError::from(e);
                Err(err(
                    a.status,
                    format!("Failed to delete '{bucket}#{key}' from S3: {}", a.detail),
                ))
            }
        };
    }
    let prefix = prefix.unwrap_or_default();
    let job = super::ops::start_job(ctx, JobKind::Delete, &bucket, prefix)
        .await
        .map_err(ApiError::from)?;
    jobs::wait(&job).await;
    let v = job.to_json(&ctx.node.node_id);
    if job.state() == JobState::Done && v["errors"] == 0 {
        Ok(message(
            format!("Deleted object(s) with prefix '{prefix}' from S3 bucket '{bucket}'"),
            serde_json::json!({ "job": v }),
        ))
    } else {
        let why = v["error"].as_str().unwrap_or("cancelled").to_owned();
        Ok(json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({
                "error": format!("Failed to batch delete '{bucket}#{prefix}' from S3: {why}"),
                "job": v,
            }),
        ))
    }
}

// ---------------------------------------------------------------------------------------
// /upload

/// The object key a form part is stored under, for parts of field `files` that carry a
/// file name (others: None): `path` (with a trailing '/' added when it has none) and the
/// file name's last path element, as cachenator takes it. An empty file name gives
/// `Err(key)`.
pub(crate) fn part_key(
    path: &str,
    field: Option<&str>,
    file_name: Option<&str>,
) -> Option<Result<String, String>> {
    let name = file_name.filter(|_| field == Some("files"))?;
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let sep = if path.is_empty() || path.ends_with('/') {
        ""
    } else {
        "/"
    };
    let key = format!("{path}{sep}{base}");
    Some(if base.is_empty() { Err(key) } else { Ok(key) })
}

async fn upload(ctx: &Rc<ShardCtx>, req: Request<Incoming>, p: &Params) -> Answered {
    let boundary = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .ok_or_else(|| err(StatusCode::BAD_REQUEST, "Expecting a multipart form"))?;
    let bucket = p.required("bucket")?.to_owned();
    let path = p.get("path").to_owned();
    crate::object::policy::check_write(&ctx.node.cfg, Some(&bucket)).map_err(ApiError::from)?;
    ctx.objects
        .origin
        .head_bucket(&bucket)
        .await
        .map_err(|e| ApiError::from(ObjectError::from(e)))?;
    let write_behind = ctx.node.cfg.bucket(&bucket).is_some_and(|b| b.write_behind);
    let mut form = multer::Multipart::new(req.into_body().into_data_stream(), boundary);
    let (mut uploaded, mut failed, mut details) = (0usize, Vec::new(), Vec::new());
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                // The form itself is broken: nothing after this point can be read.
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    format!("Expecting a multipart form: {e}"),
                ));
            }
        };
        let key = match part_key(&path, field.name(), field.file_name()) {
            // Not a file of `files`: skipped (multer drains its bytes).
            None => continue,
            Some(Ok(key)) => key,
            Some(Err(key)) => {
                failed.push(key.clone());
                details.push(format!("{key}: the part has an empty file name"));
                continue;
            }
        };
        let content_type = field.content_type().map(|m| m.essence_str().to_owned());
        let body = field.map(|r| r.map_err(|e| e.to_string()));
        match store_file(ctx, &bucket, &key, content_type, write_behind, body).await {
            Ok(()) => uploaded += 1,
            Err(why) => {
                failed.push(key.clone());
                details.push(format!("{key}: {why}"));
            }
        }
    }
    if uploaded == 0 && failed.is_empty() {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "'files' not found in multipart form",
        ));
    }
    if !failed.is_empty() {
        return Ok(json(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({
                "error": "Failed to upload some blobs",
                "uploadsFailed": failed,
                "details": details,
            }),
        ));
    }
    Ok(message(
        format!("Uploaded {uploaded} object(s) to S3 bucket '{bucket}'"),
        serde_json::json!({}),
    ))
}

/// Stores one uploaded file: here when this node owns its key (or runs alone), else
/// streamed to the key's first owner (stored here if that node cannot be reached).
async fn store_file<S>(
    ctx: &Rc<ShardCtx>,
    bucket: &str,
    key: &str,
    content_type: Option<String>,
    write_behind: bool,
    body: S,
) -> Result<(), String>
where
    S: BodyStream<String>,
{
    let ckey = CacheKey::s3(bucket, key);
    if let Some(cs) = ctx.cluster.clone().filter(|_| ckey.fits_store()) {
        let owners = cs.cl.owners(ckey.as_str(), 1);
        if let Some(first) = owners.first().filter(|_| !owners.iter().any(|m| m.is_self)) {
            match cs.channel(first).await {
                Ok(sender) => {
                    return send_file(ctx, &cs, first, sender, bucket, key, content_type, body)
                        .await
                }
                Err(e) => {
                    tracing::debug!(peer = %first.id, error = %e, "owner unreachable; the upload is stored here")
                }
            }
        }
    }
    put_file(ctx, ckey, content_type, write_behind, body).await
}

async fn put_file<S>(
    ctx: &Rc<ShardCtx>,
    key: CacheKey,
    content_type: Option<String>,
    write_behind: bool,
    body: S,
) -> Result<(), String>
where
    S: BodyStream<String>,
{
    let preq = PutRequest {
        key,
        attrs: WriteAttrs {
            content_type,
            level: 1,
            ..Default::default()
        },
        content_length: None,
        wait_origin: !write_behind,
        cond: WriteCondition::default(),
    };
    match crate::object::write::put(ctx, preq, body).await {
        Ok(_) => Ok(()),
        Err(WriteError::Body { got, error }) => {
            Err(format!("the part broke after {got} bytes: {error}"))
        }
        Err(WriteError::Object(e)) => Err(e.to_string()),
    }
}

/// Streams one file to `to` (`PUT /upload/part`, a node-to-node request).
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the parts of one request"
)]
async fn send_file<S>(
    ctx: &Rc<ShardCtx>,
    cs: &crate::cluster::ClusterShard,
    to: &nearcache_membership::Member,
    sender: hyper::client::conn::http2::SendRequest<crate::cluster::peer::PeerBody>,
    bucket: &str,
    key: &str,
    content_type: Option<String>,
    body: S,
) -> Result<(), String>
where
    S: BodyStream<String>,
{
    use http_body_util::StreamBody;
    let enc = |v: &str| {
        percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let frames = body.map(|r| {
        r.map(http_body::Frame::data)
            .map_err(crate::cluster::peer::BoxError::from)
    });
    let mut req = Request::builder()
        .method(Method::PUT)
        .uri(format!(
            "/upload/part?bucket={}&key={}",
            enc(bucket),
            enc(key)
        ))
        .header(crate::cluster::H_FORWARDED, "1")
        .header(crate::cluster::H_API, "cachenator");
    if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let req = req
        .body(StreamBody::new(frames).boxed_unsync())
        .map_err(|e| e.to_string())?;
    let ms = crate::object::jobs::node_timeout_ms(&ctx.node.cfg);
    let resp = cs
        .send_on_within(to, sender, req, ms)
        .await
        .map_err(|(e, _)| format!("node {}: {e}", to.id))?;
    let status = resp.status();
    let answer = crate::cluster::peer::read_body(resp, 64 << 10).await?;
    if status.is_success() {
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
    Err(format!(
        "node {}: {}",
        to.id,
        v["error"]
            .as_str()
            .unwrap_or(&String::from_utf8_lossy(&answer))
    ))
}

/// `PUT /upload/part?bucket=&key=`: one file of an upload another node took, sent here
/// because this node owns its key.
async fn upload_part(ctx: &Rc<ShardCtx>, req: Request<Incoming>, p: &Params) -> Answered {
    let bucket = p.required("bucket")?.to_owned();
    let key = p.required("key")?.to_owned();
    crate::object::policy::check_write(&ctx.node.cfg, Some(&bucket))?;
    let write_behind = ctx.node.cfg.bucket(&bucket).is_some_and(|b| b.write_behind);
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req
        .into_body()
        .into_data_stream()
        .map(|r| r.map_err(|e| e.to_string()));
    put_file(
        ctx,
        CacheKey::s3(&bucket, &key),
        content_type,
        write_behind,
        body,
    )
    .await
    .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(message(
        format!("stored '{bucket}#{key}'"),
        serde_json::json!({}),
    ))
}

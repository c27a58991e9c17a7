//! Cache operations on the public listener (JSON), and their node-to-node half:
//!
//! | route | what |
//! |---|---|
//! | `POST /api/v1/invalidate?bucket=B&key=K` (or `&prefix=P`, or `bucket` alone; without `bucket`, native ids) | drop cached copies on every node; `{"dropped","nodes","pending","failed_nodes"}` |
//! | `POST /api/v1/jobs/prewarm?bucket=B&prefix=P` | start a prewarm job: 202 with the job |
//! | `POST /api/v1/jobs/delete?bucket=B&prefix=P` | start a delete-by-prefix job: 202 with the job |
//! | `GET /api/v1/jobs` | `{"jobs": [...]}`, every node's, newest first |
//! | `GET /api/v1/jobs/{id}`, `DELETE /api/v1/jobs/{id}` | the job (on whichever node runs it); DELETE cancels it |
//!
//! Node-to-node (private address): `POST /_nc/v1/ops/invalidate?...` (this node's copies),
//! `POST /_nc/v1/ops/batch?kind&bucket` (a job's batch for the objects this node owns),
//! `GET /_nc/v1/ops/jobs`, `GET|DELETE /_nc/v1/ops/jobs/{id}` (this node's jobs only).

use std::rc::Rc;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::error::ApiError;
use crate::body::{json, Body};
use crate::ctx::{ActiveGuard, ShardCtx};
use crate::http_util::query_param;
use crate::metrics::Route;
use crate::object::invalidate::{self, Scope};
use crate::object::jobs::{self, BatchEntry, JobKind};

const JOBS: &str = "/api/v1/jobs";

/// Whether this edge serves `path` on the public listener.
pub fn serves(path: &str) -> bool {
    path == "/api/v1/invalidate" || path == JOBS || path.starts_with("/api/v1/jobs/")
}

pub async fn handle(ctx: Rc<ShardCtx>, req: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    let _active = ActiveGuard::new(&ctx);
    let path = req.uri().path().to_owned();
    let route = if path == "/api/v1/invalidate" {
        Route::Invalidate
    } else {
        Route::Jobs
    };
    let result = match check_token(&ctx, &req, &path) {
        Err(e) => Err(e.into()),
        Ok(()) if route == Route::Invalidate => public_invalidate(&ctx, &req).await,
        Ok(()) => public_jobs(&ctx, &req, &path).await,
    };
    ctx.finish(route, start, result.unwrap_or_else(ApiError::into_response))
}

/// The bearer token's check (nothing when JWT is off), as cachenator maps methods to
/// actions: an invalidation or a prewarm needs WRITE, a delete job DELETE, on the bucket
/// (native ids: the origin bucket) and the key or prefix named; reading jobs only a
/// valid token; cancelling one WRITE on every bucket (the job's scope is not known yet).
fn check_token(
    ctx: &ShardCtx,
    req: &Request<Incoming>,
    path: &str,
) -> Result<(), super::auth::AuthError> {
    use super::auth::{authenticate, authorize, native_bucket, Action};
    if !super::auth::enabled(ctx) {
        return Ok(());
    }
    let h = req.headers();
    let param = |name| query_param(req, name).unwrap_or_default();
    let bucket = match param("bucket") {
        b if b.is_empty() => native_bucket(&ctx.node).to_owned(),
        b => b,
    };
    let scoped = |action| {
        let key = match param("key") {
            k if k.is_empty() => param("prefix"),
            k => k,
        };
        authorize(ctx, h, action, &bucket, &key).map(|_| ())
    };
    if path == "/api/v1/invalidate" {
        return scoped(Action::Write);
    }
    let rest = path.strip_prefix(JOBS).unwrap_or("");
    match (req.method(), JobKind::parse(rest.trim_start_matches('/'))) {
        (&Method::POST, Some(JobKind::Delete)) => scoped(Action::Delete),
        (&Method::POST, Some(_)) => scoped(Action::Write),
        (&Method::DELETE, _) => authorize(ctx, h, Action::Write, "", "").map(|_| ()),
        _ => authenticate(ctx, h).map(|_| ()),
    }
}

fn method_not_allowed(path: &str, method: &Method, allowed: &'static str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed",
        format!("{path} accepts {allowed}, not {method}"),
    )
    .with_header(header::ALLOW, HeaderValue::from_static(allowed))
}

/// The scope named by `bucket`, `key` and `prefix`.
fn scope_of(req: &Request<Incoming>) -> Result<Scope, ApiError> {
    Scope::from_params(
        query_param(req, "bucket").as_deref(),
        query_param(req, "key").as_deref(),
        query_param(req, "prefix").as_deref(),
    )
    .map_err(|e| ApiError::bad_request("invalid parameters", e))
}

async fn public_invalidate(
    ctx: &Rc<ShardCtx>,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if req.method() != Method::POST {
        return Err(method_not_allowed(req.uri().path(), req.method(), "POST"));
    }
    let scope = scope_of(req)?;
    let out = invalidate::everywhere(ctx, &scope).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::to_value(out).expect("serializes"),
    ))
}

/// Starts a job after checking that it may run: the bucket exists, and a delete is not
/// refused by a read-only switch.
pub(crate) async fn start_job(
    ctx: &Rc<ShardCtx>,
    kind: JobKind,
    bucket: &str,
    prefix: &str,
) -> Result<std::sync::Arc<jobs::Job>, crate::object::ObjectError> {
    if kind == JobKind::Delete {
        crate::object::policy::check_write(&ctx.node.cfg, Some(bucket))?;
    }
    ctx.objects.origin.head_bucket(bucket).await?;
    Ok(jobs::start(ctx, kind, bucket, prefix))
}

async fn public_jobs(
    ctx: &Rc<ShardCtx>,
    req: &Request<Incoming>,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    let method = req.method();
    if path == JOBS {
        if method != Method::GET {
            return Err(method_not_allowed(path, method, "GET"));
        }
        let all = jobs::list_all(ctx).await;
        return Ok(json(StatusCode::OK, &serde_json::json!({ "jobs": all })));
    }
    let rest = &path[JOBS.len() + 1..];
    if let Some(kind) = JobKind::parse(rest) {
        if method != Method::POST {
            return Err(method_not_allowed(path, method, "POST"));
        }
        let bucket = query_param(req, "bucket")
            .filter(|b| !b.is_empty())
            .ok_or_else(|| ApiError::bad_request("missing parameter", "bucket is required"))?;
        let prefix = query_param(req, "prefix").unwrap_or_default();
        let job = start_job(ctx, kind, &bucket, &prefix).await?;
        return Ok(json(StatusCode::ACCEPTED, &job.to_json(&ctx.node.node_id)));
    }
    let cancel = match *method {
        Method::GET => false,
        Method::DELETE => true,
        _ => return Err(method_not_allowed(path, method, "GET, DELETE")),
    };
    match jobs::find(ctx, rest, cancel).await {
        Some(job) => Ok(json(StatusCode::OK, &job)),
        None => Err(ApiError::not_found(format!("no job {rest:?} on any node"))),
    }
}

/// Whether a node-to-node request is one of this edge's.
pub fn serves_internal(path: &str) -> bool {
    path.starts_with("/_nc/v1/ops/")
}

/// The node-to-node half: only this node's copies and jobs.
pub async fn internal(
    ctx: &Rc<ShardCtx>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_owned();
    let ok = |v: serde_json::Value| Ok(json(StatusCode::OK, &v));
    match (req.method().clone(), path.as_str()) {
        (Method::POST, "/_nc/v1/ops/invalidate") => {
            let scope = scope_of(&req)?;
            let d = invalidate::on_this_node(ctx, &scope).await?;
            ok(serde_json::to_value(d).expect("serializes"))
        }
        (Method::POST, "/_nc/v1/ops/batch") => {
            let kind = query_param(&req, "kind")
                .and_then(|k| JobKind::parse(&k))
                .ok_or_else(|| {
                    ApiError::bad_request("invalid parameter", "kind is prewarm or delete")
                })?;
            let bucket = query_param(&req, "bucket")
                .filter(|b| !b.is_empty())
                .ok_or_else(|| ApiError::bad_request("missing parameter", "bucket is required"))?;
            let body = crate::http_util::read_small_body(req.into_body(), 16 << 20).await?;
            let entries: Vec<BatchEntry> = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request("invalid batch", e.to_string()))?;
            let r = jobs::run_batch(ctx, kind, &bucket, entries).await;
            ok(serde_json::to_value(r).expect("serializes"))
        }
        (Method::GET, "/_nc/v1/ops/jobs") => {
            let ops = &ctx.node.ops;
            let all: Vec<_> = ops.list().iter().map(|j| j.to_json(&ops.node_id)).collect();
            ok(serde_json::json!({ "jobs": all }))
        }
        (m @ (Method::GET | Method::DELETE), p) if p.starts_with("/_nc/v1/ops/jobs/") => {
            let id = &p["/_nc/v1/ops/jobs/".len()..];
            let ops = &ctx.node.ops;
            let job = ops
                .get(id)
                .ok_or_else(|| ApiError::not_found(format!("no job {id:?} here")))?;
            if m == Method::DELETE {
                job.cancel();
            }
            ok(job.to_json(&ops.node_id))
        }
        (m, p) => Err(ApiError::not_found(format!(
            "no internal route for {m} {p}"
        ))),
    }
}

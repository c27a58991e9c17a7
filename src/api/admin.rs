//! The admin edge on the public listener: `/healthz`, `/metrics`, `/api/v1/version`,
//! `/api/v1/ping`, `/api/v1/stats`, `/api/v1/history`, `/api/v1/cluster` (and its drop
//! switch), and the status page `/ui` ([`super::ui`]).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::error::ApiError;
use super::params::bool_param;
use crate::body::{json, text, Body};
use crate::cluster::Cluster;
use crate::ctx::{ActiveGuard, Node, ShardCtx};
use crate::http_util::query_param;
use crate::metrics::{Exposition, HttpMetrics, Route};

/// The routes this edge serves, with the methods each accepts.
fn route_of(path: &str) -> Option<(Route, &'static [Method])> {
    Some(match path {
        "/healthz" => (Route::Health, &[Method::GET, Method::HEAD]),
        "/metrics" => (Route::Metrics, &[Method::GET]),
        "/api/v1/version" => (Route::Version, &[Method::GET]),
        "/api/v1/ping" => (Route::Ping, &[Method::GET, Method::HEAD]),
        "/api/v1/stats" => (Route::Stats, &[Method::GET]),
        "/api/v1/cluster" => (Route::Cluster, &[Method::GET]),
        "/api/v1/cluster/block" => (Route::Cluster, &[Method::POST]),
        "/api/v1/history" => (Route::Stats, &[Method::GET]),
        "/api/v1/drain" => (Route::Cluster, &[Method::GET, Method::POST]),
        p if super::ui::serves(p) => (Route::Ui, &[Method::GET, Method::HEAD]),
        p if super::backends::serves(p) => (Route::Backends, super::backends::allowed(p)),
        _ => return None,
    })
}

/// Whether this edge serves `path`.
pub fn serves(path: &str) -> bool {
    route_of(path).is_some()
}

pub async fn handle(ctx: Rc<ShardCtx>, req: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    let _active = ActiveGuard::new(&ctx);
    let path = req.uri().path().to_owned();
    let (route, allow) = route_of(&path).unwrap_or((Route::Unknown, &[]));
    let result = if !allow.contains(req.method()) {
        let allowed = allow
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
            format!("{path} accepts {allowed}, not {}", req.method()),
        )
        .with_header(
            header::ALLOW,
            HeaderValue::from_str(&allowed).expect("ascii"),
        ))
    } else if let Err(e) = check_token(&ctx, route, &req) {
        Err(e.into())
    } else {
        match route {
            Route::Health => Ok(health(&ctx)),
            Route::Metrics => Ok(text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                render_metrics(&ctx.node),
            )),
            Route::Version => Ok(json(
                StatusCode::OK,
                &serde_json::json!({
                    "name": "nearcache", "version": env!("CARGO_PKG_VERSION"),
                }),
            )),
            Route::Ping => Ok(text(StatusCode::OK, "text/plain", "pong".into())),
            Route::Stats if path == "/api/v1/history" => {
                Ok(json(StatusCode::OK, &ctx.node.history.render()))
            }
            Route::Stats => Ok(stats(&ctx)),
            Route::Ui => Ok(super::ui::asset(&path)),
            Route::Cluster if path == "/api/v1/drain" => drain(&ctx, &req),
            Route::Cluster if req.method() == Method::GET => cluster_info(&ctx, &req),
            Route::Cluster => cluster_block(&ctx, req).await,
            Route::Backends => super::backends::handle(&ctx, req).await,
            _ => Err(ApiError::not_found(format!("no route for {path}"))),
        }
    };
    let resp = result.unwrap_or_else(ApiError::into_response);
    ctx.finish(route, start, resp)
}

/// With JWT on: `/healthz` is open, `/metrics` too unless `auth.metrics_token`; the
/// cluster's drop switch needs WRITE, the other routes READ, on every bucket (they
/// show or change the whole node).
fn check_token(
    ctx: &ShardCtx,
    route: Route,
    req: &Request<Incoming>,
) -> Result<(), super::auth::AuthError> {
    use super::auth::{authenticate, authorize, Action};
    let h = req.headers();
    match route {
        Route::Health => Ok(()),
        Route::Metrics if !ctx.node.cfg.auth.metrics_token => Ok(()),
        Route::Metrics | Route::Version | Route::Ping => authenticate(ctx, h).map(|_| ()),
        Route::Cluster if req.method() == Method::POST => {
            authorize(ctx, h, Action::Write, "", "").map(|_| ())
        }
        _ => authorize(ctx, h, Action::Read, "", "").map(|_| ()),
    }
}

/// The whole node's metrics: every layer writes its own families.
pub fn render_metrics(node: &Node) -> String {
    let mut out = Exposition::default();
    let http: Vec<Arc<HttpMetrics>> = node.shards.iter().map(|s| s.http.clone()).collect();
    HttpMetrics::render(&http, &mut out);
    let mesh: Vec<_> = node.shards.iter().map(|s| s.mesh.clone()).collect();
    crate::mesh::MeshMetrics::render(&mesh, &mut out);
    let objects: Vec<_> = node.shards.iter().map(|s| s.objects.clone()).collect();
    crate::object::ObjectMetrics::render(&objects, &mut out);
    let stores: Vec<_> = node.shards.iter().map(|s| s.store.clone()).collect();
    crate::object::metrics::render_store(&stores, &mut out);
    crate::object::metrics::render_origin(&node.bridge.stats(), &mut out);
    super::backends::render_metrics(node, &mut out);
    out.single(&IO_URING, u8::from(node.uring_active));
    node.ops.render_metrics(&mut out);
    if let Some(cl) = &node.cluster {
        cl.render_metrics(&mut out);
    }
    super::auth::render_metrics(node, &mut out);
    out.finish()
}

const IO_URING: crate::metrics::Family = crate::metrics::Family::new(
    "nearcache_io_uring_active",
    crate::metrics::Kind::Gauge,
    "1 when shards run on io_uring, 0 on the epoll fallback (blocking file I/O).",
);

fn health(ctx: &ShardCtx) -> Response<Body> {
    let stopping = ctx.node.shutting_down.load(Relaxed);
    // A draining node tells load balancers to send clients elsewhere.
    let draining = ctx.node.cluster.as_ref().is_some_and(|c| c.drain.active());
    let status = if stopping || draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json(
        status,
        &serde_json::json!({
            "status": if stopping { "shutting down" } else if draining { "draining" } else { "ok" },
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
    for (id, s) in ctx.node.shards.iter().enumerate() {
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
            ("forwarded", s.mesh.forwarded.load(Relaxed)),
            ("coalesced", s.objects.coalesced.load(Relaxed)),
        ];
        let mut obj = serde_json::Map::new();
        obj.insert("shard".into(), id.into());
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

fn cluster_of(ctx: &ShardCtx) -> Result<Arc<Cluster>, ApiError> {
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

/// `POST /api/v1/drain[?all=true]` starts taking this node out of the cluster (202);
/// `GET /api/v1/drain` reports how far it is. See [`crate::cluster::drain`].
fn drain(ctx: &ShardCtx, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let cl = cluster_of(ctx)?;
    if req.method() == Method::GET {
        return Ok(json(StatusCode::OK, &cl.drain.describe()));
    }
    let all = bool_param(req, "all", false)?;
    let timeout = std::time::Duration::from_secs(cl.cfg.drain_timeout_secs);
    let started = crate::cluster::drain::start(&cl, ctx.node.shards.len(), all, timeout);
    let status = if started {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &cl.drain.describe()))
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
    let blocked = bool_param(&req, "blocked", true)?;
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
    // This thread's pooled connections go now; other threads notice broken ones on
    // their next request.
    if let Some(cs) = &ctx.cluster {
        cs.forget_all();
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "blocked": cl.blocked_ids() }),
    ))
}

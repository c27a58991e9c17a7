//! The admin edge on the public listener: `/healthz`, `/metrics`, `/api/v1/version`,
//! `/api/v1/ping`, `/api/v1/stats`, `/api/v1/cluster` (and its drop switch).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::error::ApiError;
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
            Route::Stats => Ok(stats(&ctx)),
            Route::Cluster if req.method() == Method::GET => cluster_info(&ctx, &req),
            Route::Cluster => cluster_block(&ctx, req).await,
            _ => Err(ApiError::not_found(format!("no route for {path}"))),
        }
    };
    let resp = result.unwrap_or_else(ApiError::into_response);
    ctx.finish(route, start, resp)
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
    out.single(&IO_URING, u8::from(node.uring_active));
    node.ops.render_metrics(&mut out);
    if let Some(cl) = &node.cluster {
        cl.render_metrics(&mut out);
    }
    out.finish()
}

const IO_URING: crate::metrics::Family = crate::metrics::Family::new(
    "nearcache_io_uring_active",
    crate::metrics::Kind::Gauge,
    "1 when shards run on io_uring, 0 on the epoll fallback (blocking file I/O).",
);

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

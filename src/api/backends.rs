//! The origin backends' admin routes (on the public listener, beside the other admin
//! routes):
//!
//! - `GET /api/v1/backends`: each backend's state (healthy, degraded, circuit_open,
//!   maintenance), error rate, latency, requests in flight, drift, and its sync log
//!   backlog summed over the shards (entries, bytes, oldest entry); the sets and policies;
//! - `POST /api/v1/backends/maintenance?backend=NAME&enabled=true|false`;
//! - `POST /api/v1/backends/check?bucket=B&prefix=P[&a=NAME&b=NAME]`: starts a
//!   consistency check (no `bucket`: the native API's), answers 202 with its id;
//! - `GET /api/v1/backends/check/{id}`: its progress.

use std::collections::BTreeMap;
use std::rc::Rc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use nearcache_shards::SyncBacklog;

use super::error::ApiError;
use super::params::bool_param;
use crate::body::{json, Body};
use crate::ctx::{Node, ShardCtx};
use crate::http_util::query_param;
use crate::metrics::{Exposition, Family, Kind};

pub const PREFIX: &str = "/api/v1/backends";

/// Whether `path` is one of these routes.
pub fn serves(path: &str) -> bool {
    path == PREFIX || path.starts_with("/api/v1/backends/")
}

/// The methods `path` accepts.
pub fn allowed(path: &str) -> &'static [Method] {
    match path {
        PREFIX => &[Method::GET],
        "/api/v1/backends/maintenance" | "/api/v1/backends/check" => &[Method::POST],
        _ => &[Method::GET],
    }
}

pub async fn handle(
    ctx: &Rc<ShardCtx>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        PREFIX => Ok(json(StatusCode::OK, &describe(&ctx.node))),
        "/api/v1/backends/maintenance" => maintenance(ctx, &req),
        "/api/v1/backends/check" => {
            let bucket = query_param(&req, "bucket").filter(|b| !b.is_empty());
            let prefix = query_param(&req, "prefix").unwrap_or_default();
            let (a, b) = (query_param(&req, "a"), query_param(&req, "b"));
            let id = crate::object::check::start(ctx, bucket, prefix, a, b)
                .map_err(|e| ApiError::bad_request("invalid check", e))?;
            Ok(json(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "id": id, "status": format!("{PREFIX}/check/{id}") }),
            ))
        }
        p => match p.strip_prefix("/api/v1/backends/check/") {
            Some(id) => match ctx.objects.checks.get(id) {
                Some(s) => Ok(json(
                    StatusCode::OK,
                    &serde_json::to_value(&s).expect("status serializes"),
                )),
                None => Err(ApiError::not_found(format!("no check {id}"))),
            },
            None => Err(ApiError::not_found(format!("no route for {p}"))),
        },
    }
}

fn maintenance(ctx: &ShardCtx, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let name = query_param(req, "backend")
        .ok_or_else(|| ApiError::bad_request("missing parameter", "backend=<name> is required"))?;
    let on = bool_param(req, "enabled", true)?;
    if !ctx.node.backends.set_maintenance(&name, on) {
        return Err(ApiError::not_found(format!("no backend {name:?}")));
    }
    Ok(json(StatusCode::OK, &describe(&ctx.node)))
}

/// Every shard's backlog, summed per backend.
fn backlog(node: &Node) -> BTreeMap<String, SyncBacklog> {
    let mut total: BTreeMap<String, SyncBacklog> = BTreeMap::new();
    for s in &node.shards {
        let b = s
            .objects
            .sync_backlog
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (name, x) in b.iter() {
            let t = total.entry(name.clone()).or_default();
            t.entries += x.entries;
            t.bytes += x.bytes;
            if t.oldest_ms == 0 || (x.oldest_ms != 0 && x.oldest_ms < t.oldest_ms) {
                t.oldest_ms = x.oldest_ms;
            }
        }
    }
    total
}

fn describe(node: &Node) -> serde_json::Value {
    let bk = &node.backends;
    let backlog = backlog(node);
    let now = nearcache_shards::hlc::wall_ms();
    let backends: Vec<serde_json::Value> = bk
        .status()
        .into_iter()
        .map(|s| {
            let b = backlog.get(&s.name).cloned().unwrap_or_default();
            let mut v = serde_json::to_value(&s).expect("status serializes");
            v["sync_backlog"] = serde_json::json!({
                "entries": b.entries,
                "bytes": b.bytes,
                "oldest_ms": (b.oldest_ms != 0).then_some(b.oldest_ms),
                "oldest_age_secs": (b.oldest_ms != 0).then(|| now.saturating_sub(b.oldest_ms) as f64 / 1e3),
            });
            v
        })
        .collect();
    let names = |m: &[usize]| -> Vec<String> {
        m.iter().map(|&i| bk.get_backend(i).name.clone()).collect()
    };
    let default = bk.set_for(None);
    let buckets: BTreeMap<String, serde_json::Value> = node
        .cfg
        .s3api
        .buckets
        .iter()
        .map(|b| {
            let set = bk.set_for(Some(&b.name));
            (
                b.name.clone(),
                serde_json::json!({ "backends": names(&set.members), "write_policy": set.policy.to_string() }),
            )
        })
        .collect();
    serde_json::json!({
        "backends": backends,
        "default_set": { "backends": names(&default.members), "write_policy": default.policy.to_string() },
        "bucket_sets": buckets,
    })
}

const STATE: Family = Family::new(
    "nearcache_backend_state",
    Kind::Gauge,
    "1 for each origin backend's current state (healthy, degraded, circuit_open, maintenance).",
);
const REQUESTS: Family = Family::new(
    "nearcache_backend_requests_total",
    Kind::Counter,
    "Requests to each origin backend (reads, writes, repairs).",
);
const FAILURES: Family = Family::new(
    "nearcache_backend_failures_total",
    Kind::Counter,
    "Requests to each origin backend that failed (timeouts, connection errors, 5xx).",
);
const ERROR_RATE: Family = Family::new(
    "nearcache_backend_error_ratio",
    Kind::Gauge,
    "Moving average of each origin backend's share of failed requests.",
);
const LATENCY: Family = Family::new(
    "nearcache_backend_latency_seconds",
    Kind::Gauge,
    "Moving average of each origin backend's request latency.",
);
const CIRCUIT_OPENS: Family = Family::new(
    "nearcache_backend_circuit_opens_total",
    Kind::Counter,
    "Times each origin backend's circuit breaker opened.",
);
const DRIFT: Family = Family::new(
    "nearcache_backend_drift_total",
    Kind::Counter,
    "Reads that found a key missing on a backend while another had it.",
);
const BACKLOG: Family = Family::new(
    "nearcache_backend_sync_backlog_entries",
    Kind::Gauge,
    "Sync log entries waiting for each origin backend.",
);
const BACKLOG_BYTES: Family = Family::new(
    "nearcache_backend_sync_backlog_bytes",
    Kind::Gauge,
    "Bytes still to copy to each origin backend.",
);
const BACKLOG_AGE: Family = Family::new(
    "nearcache_backend_sync_oldest_entry_age_seconds",
    Kind::Gauge,
    "Age of the oldest sync log entry waiting for each origin backend (0: none).",
);

type StatusValue = fn(&nearcache_backends::BackendStatus) -> f64;
type BacklogValue<'a> = &'a dyn Fn(&SyncBacklog) -> f64;

/// The backends' families, labelled by backend name (config, never a key).
pub fn render_metrics(node: &Node, out: &mut Exposition) {
    let status = node.backends.status();
    let backlog = backlog(node);
    let now = nearcache_shards::hlc::wall_ms();
    let label = |name: &str| format!("backend=\"{name}\"");
    out.family(&STATE);
    for s in &status {
        for st in ["healthy", "degraded", "circuit_open", "maintenance"] {
            let v = u8::from(s.state.as_str() == st);
            out.sample(STATE.name, &format!("{},state=\"{st}\"", label(&s.name)), v);
        }
    }
    let rows: [(&Family, StatusValue); 6] = [
        (&REQUESTS, |s| s.requests as f64),
        (&FAILURES, |s| s.failures as f64),
        (&ERROR_RATE, |s| s.error_rate),
        (&LATENCY, |s| s.latency_ms.unwrap_or(0.0) / 1e3),
        (&CIRCUIT_OPENS, |s| s.circuit_opens as f64),
        (&DRIFT, |s| s.drift as f64),
    ];
    for (f, value) in rows {
        out.family(f);
        for s in &status {
            out.sample(f.name, &label(&s.name), value(s));
        }
    }
    let rows: [(&Family, BacklogValue); 3] = [
        (&BACKLOG, &|b| b.entries as f64),
        (&BACKLOG_BYTES, &|b| b.bytes as f64),
        (&BACKLOG_AGE, &|b| {
            if b.oldest_ms == 0 {
                0.0
            } else {
                now.saturating_sub(b.oldest_ms) as f64 / 1e3
            }
        }),
    ];
    for (f, value) in rows {
        out.family(f);
        for s in &status {
            let b = backlog.get(&s.name).cloned().unwrap_or_default();
            out.sample(f.name, &label(&s.name), value(&b));
        }
    }
}

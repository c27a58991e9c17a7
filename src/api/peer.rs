//! The node-to-node API, served on the private cluster address (TCP, HTTP/2).
//!
//! | route                              | what                                             |
//! |------------------------------------|--------------------------------------------------|
//! | any `/api/v1/...` + `x-nc-forwarded` | a public request proxied by a non-owner: served here |
//! | S3 object request + `x-nc-forwarded`, `x-nc-api: s3` | the same for the S3-compatible API |
//! | `GET /_nc/v1/changes?shard&after&limit` | journal changes of one shard (anti-entropy)  |
//! | `GET /_nc/v1/index?shard&after&limit` | a page of one shard's index (resync after a journal gap) |
//! | `GET /_nc/v1/replica?key=K`        | the local copy of K with its metadata (never read through) |
//! | `POST /_nc/v1/replicas` (JSON keys, max) | the local copies of several small objects at once (anti-entropy) |
//! | `PUT /_nc/v1/replica` + `x-nc-meta` | store a replica if newer (last writer wins)     |
//! | `POST /_nc/v1/tombstone`           | apply a tombstone if newer                        |
//! | `/_nc/v1/ops/...`                  | cache operations: invalidation, job batches and lookups (see `api::ops`) |
//! | `PUT /upload/part` + `x-nc-forwarded`, `x-nc-api: cachenator` | one file of a cachenator upload, stored here (the key's owner) |
//!
//! Requests must carry this cluster's name and the sender's node id, and with a cluster
//! secret a valid signature (`cluster::auth`; refused with 401 and counted otherwise); a
//! peer cut off by the drop switch is refused. Proxied public requests are handed to their API edge by
//! the listener (see `server`), after [`admit`].

use std::rc::Rc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use nearcache_shards::{Lookup, Tombstone};

use super::error::ApiError;
use crate::body::{json, json_of, Body};
use crate::cluster::sync::{self, ChangesReply, ReplicaError};
use crate::cluster::{Cluster, H_CLUSTER, H_FROM, H_META, H_PUBLIC};
use crate::ctx::ShardCtx;
use crate::http_util::query_param;
use crate::mesh::{on_owner, on_shard};

/// Checks a node-to-node request: this node is in a cluster, the request is from this
/// cluster, names its sender, and the sender is not cut off.
pub fn admit(ctx: &ShardCtx, req: &Request<Incoming>) -> Result<std::sync::Arc<Cluster>, ApiError> {
    let Some(cl) = ctx.node.cluster.clone() else {
        return Err(ApiError::not_found("this node is not in a cluster"));
    };
    if let Some(auth) = &cl.auth {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Err(e) = auth.verify(req.method(), pq, req.headers()) {
            let counter = if e.is_replay() {
                &cl.metrics.replayed_requests
            } else {
                &cl.metrics.unauthenticated_requests
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(error = %e, "refused a node-to-node request");
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                e.to_string(),
            ));
        }
    }
    let h = req.headers();
    let name = h.get(H_CLUSTER).and_then(|v| v.to_str().ok());
    if name != Some(cl.cfg.name.as_str()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong cluster",
            format!(
                "this node belongs to cluster {:?}, the request to {:?}",
                cl.cfg.name,
                name.unwrap_or("<none>")
            ),
        ));
    }
    let from = h
        .get(H_FROM)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if from.is_empty() {
        return Err(ApiError::bad_request(
            "missing sender",
            format!("node-to-node requests carry {H_FROM}"),
        ));
    }
    if cl.is_blocked(from) {
        return Err(ApiError::unavailable(format!(
            "traffic from {from} is blocked (fault injection)"
        )));
    }
    if let Some(url) = h.get(H_PUBLIC).and_then(|v| v.to_str().ok()) {
        cl.note_public_url(from, url);
    }
    Ok(cl)
}

/// A node-to-node request (already admitted) that is not a proxied public request.
pub async fn handle(
    ctx: Rc<ShardCtx>,
    cl: std::sync::Arc<Cluster>,
    req: Request<Incoming>,
) -> Response<Body> {
    match route(&ctx, &cl, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn replica_error(e: ReplicaError) -> ApiError {
    match e {
        ReplicaError::TooLong(_) => ApiError::bad_request("replica too long", e.to_string()),
        ReplicaError::Stream { .. } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "replica stream failed",
            e.to_string(),
        ),
        ReplicaError::Store(s) => crate::object::ObjectError::from(s).into(),
    }
}

fn num(req: &Request<Incoming>, name: &str) -> Result<u64, ApiError> {
    let v = query_param(req, name)
        .ok_or_else(|| ApiError::bad_request("missing parameter", format!("{name} is required")))?;
    v.parse().map_err(|_| {
        ApiError::bad_request("invalid parameter", format!("{name}={v:?} is not a number"))
    })
}

async fn route(
    ctx: &Rc<ShardCtx>,
    cl: &std::sync::Arc<Cluster>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let from = req
        .headers()
        .get(H_FROM)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/_nc/v1/changes") => {
            let shard = num(&req, "shard")? as usize;
            let after = num(&req, "after")?;
            let limit = num(&req, "limit")?.clamp(1, 10_000) as usize;
            let n = ctx.node.shards.len();
            if shard >= n {
                return Err(ApiError::bad_request(
                    "invalid shard",
                    format!("this node has {n} shards, not shard {shard}"),
                ));
            }
            cl.book.record_ack(&from, shard, after);
            let batch = on_shard(ctx, shard, move |ctx| async move {
                ctx.shard.changes_since(after, limit)
            })
            .await?
            .map_err(store_error)?;
            Ok(json_of(StatusCode::OK, &ChangesReply { shards: n, batch }))
        }
        (Method::GET, "/_nc/v1/index") => {
            let shard = num(&req, "shard")? as usize;
            let limit = num(&req, "limit")?.clamp(1, 10_000) as usize;
            let after = query_param(&req, "after");
            let n = ctx.node.shards.len();
            if shard >= n {
                return Err(ApiError::bad_request(
                    "invalid shard",
                    format!("this node has {n} shards, not shard {shard}"),
                ));
            }
            let page = on_shard(ctx, shard, move |ctx| async move {
                ctx.shard.index_page(after.as_deref(), limit)
            })
            .await?
            .map_err(store_error)?;
            Ok(json_of(
                StatusCode::OK,
                &sync::IndexReply { shards: n, page },
            ))
        }
        (Method::GET, "/_nc/v1/replica") => {
            let key = query_param(&req, "key")
                .ok_or_else(|| ApiError::bad_request("missing parameter", "key is required"))?;
            let lease_for = (query_param(&req, "lease").as_deref() == Some("1")).then_some(from);
            on_owner(ctx, &key.clone(), move |ctx| {
                serve_replica(ctx, key, lease_for)
            })
            .await?
        }
        (Method::POST, "/_nc/v1/replicas") => {
            let body = crate::http_util::read_small_body(req.into_body(), 16 << 20).await?;
            let asked: sync::CopiesRequest = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request("invalid request", e.to_string()))?;
            let n = ctx.node.shards.len();
            let mut by_shard: Vec<Vec<String>> = vec![Vec::new(); n];
            for k in asked.keys {
                by_shard[crate::mesh::owner_of(&k, n)].push(k);
            }
            let busy = by_shard.iter().filter(|k| !k.is_empty()).count().max(1) as u64;
            let budget = sync::COPIES_BUDGET / busy;
            let max = asked.max;
            let per_shard = by_shard
                .into_iter()
                .enumerate()
                .filter(|(_, k)| !k.is_empty())
                .map(|(shard, keys)| {
                    on_shard(ctx, shard, move |ctx| async move {
                        sync::local_copies(&ctx.shard, keys, max, budget).await
                    })
                });
            let mut reply = sync::CopiesReply::default();
            for copies in futures::future::join_all(per_shard).await {
                reply.copies.extend(copies?);
            }
            Ok(json_of(StatusCode::OK, &reply))
        }
        (Method::POST, "/_nc/v1/near/drop") => {
            let body = crate::http_util::read_small_body(req.into_body(), 4 << 20).await?;
            let keys = crate::cluster::near::parse_drop(&body)
                .map_err(|e| ApiError::bad_request("invalid notice", e))?;
            let n = ctx.node.shards.len();
            let mut by_shard: Vec<Vec<String>> = vec![Vec::new(); n];
            for k in keys {
                by_shard[crate::mesh::owner_of(&k, n)].push(k);
            }
            for (shard, keys) in by_shard
                .into_iter()
                .enumerate()
                .filter(|(_, k)| !k.is_empty())
            {
                on_shard(ctx, shard, move |ctx| async move {
                    if let Some(cs) = &ctx.cluster {
                        crate::cluster::near::dropped(cs, &keys);
                    }
                })
                .await?;
            }
            Ok(json(StatusCode::OK, &serde_json::json!({ "ok": true })))
        }
        (Method::PUT, "/_nc/v1/replica") => {
            let meta = req
                .headers()
                .get(H_META)
                .ok_or_else(|| {
                    ApiError::bad_request("missing metadata", format!("{H_META} is required"))
                })
                .and_then(|v| {
                    sync::decode_meta(v.as_bytes())
                        .map_err(|e| ApiError::bad_request("invalid metadata", e))
                })?;
            let upload_after = sync::replica_upload_after(cl);
            let body = req.into_body();
            let key = meta.key.clone();
            let applied = on_owner(ctx, &key, move |ctx| async move {
                let applied = sync::store_replica(&ctx.shard, &meta, body, upload_after).await;
                if let (Ok(true), Some(cs)) = (&applied, &ctx.cluster) {
                    crate::cluster::near::release(cs, &meta.key).await;
                }
                applied
            })
            .await?
            .map_err(replica_error)?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "applied": applied }),
            ))
        }
        (Method::POST, "/_nc/v1/tombstone") => {
            let body = crate::http_util::read_small_body(req.into_body(), 64 << 10).await?;
            let t: Tombstone = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request("invalid tombstone", e.to_string()))?;
            let upload_after = sync::replica_upload_after(cl);
            let applied = on_owner(ctx, &t.key.clone(), move |ctx| async move {
                let applied = ctx.shard.apply_tombstone(&t, upload_after).await;
                if let (Ok(true), Some(cs)) = (&applied, &ctx.cluster) {
                    crate::cluster::near::release(cs, &t.key).await;
                }
                applied
            })
            .await?
            .map_err(store_error)?;
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "applied": applied }),
            ))
        }
        (_, p) if super::ops::serves_internal(p) => super::ops::internal(ctx, req).await,
        (m, p) => Err(ApiError::not_found(format!(
            "no internal route for {m} {p}"
        ))),
    }
}

/// The local copy of `key`, whole, with its metadata in `x-nc-meta`. `lease_for`: the
/// node asking for a near copy; it gets a lease (`x-nc-lease-ms`) when the object is
/// small enough to be kept as one.
async fn serve_replica(
    ctx: Rc<ShardCtx>,
    key: String,
    lease_for: Option<String>,
) -> Result<Response<Body>, ApiError> {
    let Lookup::Hit { meta, body } = ctx.shard.peek(&key) else {
        return Err(ApiError::not_found(format!("no local copy of {key:?}")));
    };
    let mut b = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, meta.size)
        .header(
            H_META,
            HeaderValue::from_str(&sync::encode_meta(&meta)).expect("base64 is ascii"),
        );
    if let (Some(holder), Some(cs)) = (lease_for, &ctx.cluster) {
        if !holder.is_empty() && meta.size <= cs.cl.cfg.near_object_max.0 {
            let len = crate::cluster::near::grant(cs, &ctx.shard, &key, &holder);
            b = b.header(crate::cluster::near::H_LEASE_MS, len.as_millis() as u64);
        }
    }
    if let Some(body) = body {
        return Ok(b.body(Body::full(body)).expect("valid response"));
    }
    if meta.size == 0 {
        b = b.header(header::CONTENT_LENGTH, 0);
        return Ok(b.body(Body::Empty).expect("valid response"));
    }
    let mut reader = ctx
        .shard
        .open_reader(&meta, 0..meta.size)
        .await
        .map_err(store_error)?;
    // The first chunk before answering: a bad first block is a clean error, not a cut.
    let first = match reader.next_chunk().await {
        Some(Ok(c)) => c,
        Some(Err(e)) => return Err(store_error(e)),
        None => bytes::Bytes::new(),
    };
    let body = crate::body::pump(meta.size, Some(first), reader, "reading the replica");
    Ok(b.body(body).expect("valid response"))
}

fn store_error(e: nearcache_shards::StoreError) -> ApiError {
    crate::object::ObjectError::from(e).into()
}

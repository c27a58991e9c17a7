//! The node-to-node API, served on the private cluster address (TCP, HTTP/2).
//!
//! | route                              | what                                             |
//! |------------------------------------|--------------------------------------------------|
//! | any `/api/v1/...` + `x-nc-forwarded` | a public request proxied by a non-owner: served here |
//! | S3 object request + `x-nc-forwarded`, `x-nc-api: s3` | the same for the S3-compatible API |
//! | `GET /_nc/v1/changes?shard&after&limit` | journal changes of one shard (anti-entropy)  |
//! | `GET /_nc/v1/index?shard&after&limit` | a page of one shard's index (resync after a journal gap) |
//! | `GET /_nc/v1/replica?key=K`        | the local copy of K with its metadata (never read through) |
//! | `PUT /_nc/v1/replica` + `x-nc-meta` | store a replica if newer (last writer wins)     |
//! | `POST /_nc/v1/tombstone`           | apply a tombstone if newer                        |
//!
//! Requests must carry this cluster's name and the sender's node id; a peer cut off by
//! the drop switch is refused.

use std::rc::Rc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use nearcache_shards::{Lookup, Tombstone};

use super::sync::{self, ChangesReply};
use super::{Cluster, H_CLUSTER, H_FORWARDED, H_FROM, H_META};
use crate::body::{Body, BodyError};
use crate::error::ApiError;
use crate::http_util::query_param;
use crate::node::ShardCtx;

pub async fn handle(ctx: Rc<ShardCtx>, req: Request<Incoming>) -> Response<Body> {
    let Some(cl) = ctx.node.cluster.clone() else {
        return ApiError::not_found("this node is not in a cluster").into_response();
    };
    match route(&ctx, &cl, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn num(req: &Request<Incoming>, name: &str) -> Result<u64, ApiError> {
    let v = query_param(req, name)
        .ok_or_else(|| ApiError::bad_request("missing parameter", format!("{name} is required")))?;
    v.parse().map_err(|_| {
        ApiError::bad_request("invalid parameter", format!("{name}={v:?} is not a number"))
    })
}

fn json(v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::full(v.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn route(
    ctx: &Rc<ShardCtx>,
    cl: &std::sync::Arc<Cluster>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
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
        .unwrap_or_default()
        .to_string();
    if from.is_empty() {
        return Err(ApiError::bad_request(
            "missing sender",
            format!("node-to-node requests carry {H_FROM}"),
        ));
    }
    if cl.is_blocked(&from) {
        return Err(ApiError::unavailable(format!(
            "traffic from {from} is blocked (fault injection)"
        )));
    }
    let path = req.uri().path().to_string();
    if h.contains_key(H_FORWARDED) {
        if h.get(super::H_API).is_some_and(|v| v == "s3") {
            return Ok(crate::s3api::handle_forwarded(ctx.clone(), req).await);
        }
        if path.starts_with("/api/v1/") {
            return Ok(crate::native::handle_forwarded(ctx.clone(), req).await);
        }
    }
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
            let batch = ctx
                .on_shard(shard, move |ctx| async move {
                    ctx.shard.changes_since(after, limit)
                })
                .await??;
            Ok(json(
                serde_json::to_value(ChangesReply { shards: n, batch }).expect("serializes"),
            ))
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
            let page = ctx
                .on_shard(shard, move |ctx| async move {
                    ctx.shard.index_page(after.as_deref(), limit)
                })
                .await??;
            Ok(json(
                serde_json::to_value(sync::IndexReply { shards: n, page }).expect("serializes"),
            ))
        }
        (Method::GET, "/_nc/v1/replica") => {
            let key = query_param(&req, "key")
                .ok_or_else(|| ApiError::bad_request("missing parameter", "key is required"))?;
            ctx.on_owner(&key.clone(), move |ctx| serve_replica(ctx, key))
                .await?
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
            let applied = ctx
                .on_owner(&key, move |ctx| async move {
                    sync::store_replica(&ctx, &meta, body, upload_after).await
                })
                .await??;
            Ok(json(serde_json::json!({ "applied": applied })))
        }
        (Method::POST, "/_nc/v1/tombstone") => {
            let body = crate::http_util::read_small_body(req.into_body(), 64 << 10).await?;
            let t: Tombstone = serde_json::from_slice(&body)
                .map_err(|e| ApiError::bad_request("invalid tombstone", e.to_string()))?;
            let upload_after = sync::replica_upload_after(cl);
            let applied = ctx
                .on_owner(&t.key.clone(), move |ctx| async move {
                    ctx.shard.apply_tombstone(&t, upload_after).await
                })
                .await??;
            Ok(json(serde_json::json!({ "applied": applied })))
        }
        (m, p) => Err(ApiError::not_found(format!(
            "no internal route for {m} {p}"
        ))),
    }
}

/// The local copy of `key`, whole, with its metadata in `x-nc-meta`.
async fn serve_replica(ctx: Rc<ShardCtx>, key: String) -> Result<Response<Body>, ApiError> {
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
    if let Some(body) = body {
        return Ok(b.body(Body::full(body)).expect("valid response"));
    }
    if meta.size == 0 {
        b = b.header(header::CONTENT_LENGTH, 0);
        return Ok(b.body(Body::Empty).expect("valid response"));
    }
    let mut reader = ctx.shard.open_reader(&meta, 0..meta.size).await?;
    let first = match reader.next_chunk().await {
        Some(Ok(c)) => c,
        Some(Err(e)) => return Err(e.into()),
        None => Bytes::new(),
    };
    let (tx, body) = Body::channel(meta.size, 4);
    monoio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        while let Some(chunk) = reader.next_chunk().await {
            let item = chunk.map_err(|e| BodyError(format!("replica read failed: {e}")));
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    Ok(b.body(body).expect("valid response"))
}

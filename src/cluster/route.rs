//! The request side of the cluster: proxying a public request to the key's owner, and
//! pushing a fresh write or delete to the other owners until the write quorum holds.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use nearcache_membership::Member;
use nearcache_shards::{ObjectMeta, Tombstone};
use tokio::sync::mpsc;

use super::peer::{self, PeerBody};
use super::{
    sync, Cluster, ClusterCtx, ClusterError, ClusterShard, H_FORWARDED, H_META, H_SYMLINK,
};
use crate::body::Body;
use crate::mesh::on_owner;

/// Hop-by-hop headers are not forwarded (RFC 9110 7.6.1); HTTP/2 forbids them. Host
/// stays: the S3 API's signatures cover it.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// What to do with a public request in a cluster.
pub enum Route {
    /// This node is an owner (or the next in line while the owners are unreachable).
    Local(Request<Incoming>),
    /// Proxied; this is the owner's answer.
    Remote(Response<Body>),
}

/// Where a read of a key goes, decided without leaving this thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPlan {
    /// This node is the key's first owner: it serves, reading through on a miss.
    Here,
    /// Serve a copy held here if this node owns the key (`owner_here`) or the copy is
    /// level 2; otherwise proxy it ([`proxy`]).
    IfHeld { owner_here: bool },
}

/// Misses are read through on the first owner only, so that concurrent misses anywhere
/// in the cluster coalesce into one origin GET. A copy held here serves if this node
/// owns the key or the copy is level 2 (on every node).
pub fn read_plan(cs: &ClusterShard, key: &str) -> ReadPlan {
    let cl = &cs.cl;
    let ranking = cl.ranking(key);
    if ranking.first().is_some_and(|m| m.is_self) {
        return ReadPlan::Here;
    }
    let owners = cl.owner_count(ranking.len(), 1);
    let owner_here = ranking.iter().take(owners).any(|m| m.is_self);
    ReadPlan::IfHeld { owner_here }
}

/// Places a write or delete of `key` (reads are placed by the object service's
/// `get_held`/`stat_held` with [`read_plan`], in one cross-shard hop): served here if
/// this node owns the key at `level`, else proxied to the first reachable node of the
/// ranking. Refused up front when the write quorum cannot be reached.
pub async fn route_write<C: ClusterCtx>(
    ctx: &Rc<C>,
    cs: &ClusterShard,
    key: &str,
    level: u8,
    req: Request<Incoming>,
) -> Result<Route, ClusterError> {
    let cl = &cs.cl;
    let ranking = cl.ranking(key);
    let owners = cl.owner_count(ranking.len(), level);
    let owner_here = ranking.iter().take(owners).any(|m| m.is_self);
    debug_assert!(!matches!(*req.method(), Method::GET | Method::HEAD));
    if !super::placement::quorum_reachable(cl.cfg.write_quorum, owners) {
        // Refused before anything is stored: with fewer alive owners than the quorum the
        // write could only be acknowledged with fewer copies than promised.
        cl.metrics.quorum_refusals.fetch_add(1, Relaxed);
        return Err(ClusterError::QuorumUnreachable {
            owners,
            quorum: cl.cfg.write_quorum,
        });
    } else if owner_here {
        return Ok(Route::Local(req));
    } else if cl.cfg.near_cache_bytes.0 > 0 {
        // This node's near copy must not answer its own client's next read with the
        // version this write replaces.
        let k = key.to_string();
        on_owner(ctx, key, move |ctx| async move {
            if let Some(cs) = ctx.cluster() {
                super::near::drop_key(cs, &k);
            }
        })
        .await?;
    }
    proxy(cs, key, req).await
}

/// Proxies `req` to the first reachable node of the key's ranking (this node serves if
/// every better-ranked one is unreachable).
pub async fn proxy(
    cs: &ClusterShard,
    key: &str,
    req: Request<Incoming>,
) -> Result<Route, ClusterError> {
    let (parts, body) = req.into_parts();
    match send_to_ranking(cs, key, parts, Some(body)).await? {
        Proxied::Remote(resp) => Ok(Route::Remote(resp)),
        Proxied::NextInLine(parts, Some(body)) => {
            Ok(Route::Local(Request::from_parts(parts, body)))
        }
        Proxied::NextInLine(_, None) => Err(unavailable(None)),
    }
}

/// Proxies a read (its head only: a read has no body) to the first reachable node of
/// the key's ranking. `None`: this node is next in line and serves it.
pub async fn proxy_read(
    cs: &ClusterShard,
    key: &str,
    parts: http::request::Parts,
) -> Result<Option<Response<Body>>, ClusterError> {
    match send_to_ranking(cs, key, parts, None).await? {
        Proxied::Remote(resp) => Ok(Some(resp)),
        Proxied::NextInLine(..) => Ok(None),
    }
}

enum Proxied {
    Remote(Response<Body>),
    /// Every better-ranked node is unreachable: this node is next in line.
    NextInLine(http::request::Parts, Option<Incoming>),
}

async fn send_to_ranking(
    cs: &ClusterShard,
    key: &str,
    parts: http::request::Parts,
    mut body: Option<Incoming>,
) -> Result<Proxied, ClusterError> {
    let cl = &cs.cl;
    let ranking = cl.ranking(key);
    let read = matches!(parts.method, Method::GET | Method::HEAD);
    // The proxied request, built once; it comes back from a send that never left.
    let mut out: Option<Request<PeerBody>> = None;
    let mut last_err = None;
    for m in ranking.iter() {
        if m.is_self {
            // Every better-ranked node is unreachable: this node is next in line (and
            // becomes an owner once membership notices).
            if !read && body.is_none() {
                return Err(unavailable(last_err));
            }
            return Ok(Proxied::NextInLine(parts, body.take()));
        }
        let sender = match cs.channel(m).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer = %m.id, error = %e, "owner unreachable; trying the next node");
                last_err = Some(e);
                continue;
            }
        };
        let req = match out.take() {
            Some(r) => r,
            None => {
                // A read's body is empty: it is rebuilt per node, and the original stays
                // here in case this node ends up serving it.
                let b = if read {
                    peer::empty()
                } else {
                    match body.take() {
                        Some(b) => peer::incoming(b),
                        None => return Err(unavailable(last_err)),
                    }
                };
                proxied(&parts, b)?
            }
        };
        cl.metrics.proxied_requests.fetch_add(1, Relaxed);
        match cs.send_on(m, sender, req).await {
            Ok(resp) => {
                let (mut rparts, rbody) = resp.into_parts();
                if read && rparts.status.is_success() {
                    rparts
                        .headers
                        .insert(H_SYMLINK, HeaderValue::from_static("true"));
                }
                return Ok(Proxied::Remote(Response::from_parts(
                    rparts,
                    Body::Peer(rbody),
                )));
            }
            Err((e, back)) => {
                tracing::debug!(peer = %m.id, error = %e, "proxying failed; trying the next node");
                if back.is_none() && !read {
                    // The body went (partly) to a node that failed: it cannot be replayed.
                    return Err(ClusterError::PeerFailed {
                        node: m.id.clone(),
                        detail: e.to_string(),
                    });
                }
                out = back;
                last_err = Some(e);
            }
        }
    }
    Err(unavailable(last_err))
}

fn unavailable(last: Option<peer::PeerError>) -> ClusterError {
    ClusterError::NoNode(last.map_or("no members".into(), |e| e.to_string()))
}

fn proxied(
    parts: &http::request::Parts,
    body: PeerBody,
) -> Result<Request<PeerBody>, ClusterError> {
    let mut b = Request::builder().method(parts.method.clone()).uri(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
    );
    for (k, v) in &parts.headers {
        if !HOP_BY_HOP.contains(k) {
            b = b.header(k, v);
        }
    }
    // An HTTP/2 client sent no Host, only the URI's authority (which is not forwarded).
    if !parts.headers.contains_key(header::HOST) {
        if let Some(a) = parts.uri.authority() {
            b = b.header(header::HOST, a.as_str());
        }
    }
    b.header(H_FORWARDED, "1")
        .body(body)
        .map_err(|e| ClusterError::BadRequest(e.to_string()))
}

/// The other owners a fresh write or delete of `key` goes to, and whether this node is
/// one of the owners.
fn targets(cl: &Cluster, key: &str, level: u8) -> (Vec<Member>, bool) {
    let owners = cl.owners(key, level);
    let here = owners.iter().any(|m| m.is_self);
    (owners.into_iter().filter(|m| !m.is_self).collect(), here)
}

/// Waits until `need` pushes succeeded (or all ended); the rest go on in the background.
async fn quorum(
    cl: &Cluster,
    mut rx: mpsc::UnboundedReceiver<Result<(), String>>,
    total: usize,
    need: usize,
) -> Result<(), ClusterError> {
    let (mut ok, mut failed) = (0, Vec::new());
    while ok < need {
        match rx.recv().await {
            Some(Ok(())) => ok += 1,
            Some(Err(e)) => failed.push(e),
            None => break,
        }
    }
    if ok >= need {
        return Ok(());
    }
    Err(ClusterError::Quorum {
        ok,
        total,
        quorum: cl.cfg.write_quorum,
        detail: failed.join("; "),
    })
}

/// Acknowledgements needed from `targets`; an error when they cannot add up to the
/// quorum (the local copy stays; anti-entropy spreads it once owners are back).
fn need(cl: &Cluster, targets: usize, owner_here: bool) -> Result<usize, ClusterError> {
    let need = super::placement::acks_needed(cl.cfg.write_quorum, owner_here);
    if need > targets {
        cl.metrics.quorum_refusals.fetch_add(1, Relaxed);
        return Err(ClusterError::Quorum {
            ok: 0,
            total: targets,
            quorum: cl.cfg.write_quorum,
            detail: format!(
                "only {} owner(s) of the key are alive",
                targets + usize::from(owner_here)
            ),
        });
    }
    Ok(need)
}

/// Pushes the stored version `meta` to the key's other owners (every node at level 2);
/// returns once the write quorum holds.
pub async fn replicate_put<C: ClusterCtx>(
    ctx: &Rc<C>,
    cs: &ClusterShard,
    meta: Rc<ObjectMeta>,
) -> Result<(), ClusterError> {
    // Near copies of the replaced version end before the write is answered.
    super::near::release(cs, &meta.key).await;
    let cl = &cs.cl;
    let (targets, owner_here) = targets(cl, &meta.key, meta.level);
    let need = need(cl, targets.len(), owner_here)?;
    if need == 0 && targets.is_empty() {
        return Ok(());
    }
    let (tx, rx) = mpsc::unbounded_channel();
    for m in targets.iter().cloned() {
        let (ctx, cs, meta, tx) = (ctx.clone(), cs.clone(), meta.clone(), tx.clone());
        monoio::spawn(async move {
            let cl = &cs.cl;
            let r = push_put(&*ctx, &cs, &m, &meta).await;
            match &r {
                Ok(()) => cl.metrics.replicas_pushed.fetch_add(1, Relaxed),
                Err(e) => {
                    tracing::warn!(peer = %m.id, key = %meta.key, error = %e, "replica push failed; anti-entropy will repair");
                    cl.metrics.replica_failures.fetch_add(1, Relaxed)
                }
            };
            let _ = tx.send(r);
        });
    }
    drop(tx);
    quorum(cl, rx, targets.len(), need).await
}

pub(super) async fn push_put<C: ClusterCtx>(
    ctx: &C,
    cs: &ClusterShard,
    to: &Member,
    meta: &ObjectMeta,
) -> Result<(), String> {
    let sender = cs.channel(to).await.map_err(|e| e.to_string())?;
    let body = if meta.size == 0 {
        Body::Empty
    } else {
        let reader = ctx
            .store()
            .open_reader(meta, 0..meta.size)
            .await
            .map_err(|e| format!("reading the stored copy: {e}"))?;
        crate::body::pump(meta.size, None, reader, "reading the stored copy")
    };
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/_nc/v1/replica")
        .header(header::CONTENT_LENGTH, meta.size)
        .header(H_META, sync::encode_meta(meta))
        .body(peer::ours(body))
        .expect("valid request");
    let resp = cs
        .send_on(to, sender, req)
        .await
        .map_err(|(e, _)| e.to_string())?;
    answer(resp).await
}

async fn answer(resp: Response<Incoming>) -> Result<(), String> {
    let status = resp.status();
    let body = peer::read_body(resp, 64 << 10).await.unwrap_or_default();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
    }
}

/// Pushes a fresh tombstone to the key's other owners; returns once the quorum holds.
pub async fn replicate_delete(cs: &ClusterShard, t: Tombstone) -> Result<(), ClusterError> {
    super::near::release(cs, &t.key).await;
    let cl = &cs.cl;
    let (targets, owner_here) = targets(cl, &t.key, t.level);
    let need = need(cl, targets.len(), owner_here)?;
    if need == 0 && targets.is_empty() {
        return Ok(());
    }
    let t = Rc::new(t);
    let (tx, rx) = mpsc::unbounded_channel();
    for m in targets.iter().cloned() {
        let (cs, t, tx) = (cs.clone(), t.clone(), tx.clone());
        monoio::spawn(async move {
            let r = push_tombstone(&cs, &m, &t).await;
            if let Err(e) = &r {
                tracing::warn!(peer = %m.id, error = %e, "tombstone push failed; anti-entropy will repair");
                cs.cl.metrics.replica_failures.fetch_add(1, Relaxed);
            }
            let _ = tx.send(r);
        });
    }
    drop(tx);
    quorum(cl, rx, targets.len(), need).await
}

/// Sends one tombstone to one peer.
pub(super) async fn push_tombstone(
    cs: &ClusterShard,
    to: &Member,
    t: &Tombstone,
) -> Result<(), String> {
    let body = Bytes::from(serde_json::to_vec(t).expect("tombstone serializes"));
    let req: Request<PeerBody> = Request::builder()
        .method(Method::POST)
        .uri("/_nc/v1/tombstone")
        .header(header::CONTENT_TYPE, "application/json")
        .body(peer::full(body))
        .expect("valid request");
    match cs.send(to, req).await {
        Ok(resp) => answer(resp).await,
        Err(e) => Err(e.to_string()),
    }
}

//! Requests this node sends to one peer or to every alive peer for node-wide operations
//! (invalidation, job batches and lookups): small JSON answers, collected.

use bytes::Bytes;
use http::{Method, Request};
use nearcache_membership::Member;

use super::peer::{self, PeerBody};
use super::ClusterShard;

/// Largest JSON answer read from a peer.
const MAX_ANSWER: usize = 64 << 20;

/// One peer's answer: its JSON body (2xx), or why there is none.
pub struct PeerAnswer {
    pub node: String,
    pub result: Result<serde_json::Value, String>,
}

/// Alive members other than this node.
pub fn peers(cs: &ClusterShard) -> Vec<Member> {
    cs.cl
        .view()
        .alive()
        .filter(|m| !m.is_self)
        .cloned()
        .collect()
}

/// The first node of `key`'s ranking (the node that reads it through).
pub fn first_owner(cs: &ClusterShard, key: &str) -> Option<Member> {
    cs.cl.ranking(key).first().cloned()
}

/// Sends one request to `to` and reads its JSON answer, which the peer sends once its
/// work is done: waited for up to `ms`.
pub async fn call(
    cs: &ClusterShard,
    to: &Member,
    method: Method,
    path_and_query: &str,
    body: Bytes,
    ms: u64,
) -> Result<serde_json::Value, String> {
    let req = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body::<PeerBody>(peer::full(body))
        .map_err(|e| format!("building the request: {e}"))?;
    let resp = cs
        .send_within(to, req, ms)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = peer::read_body(resp, MAX_ANSWER).await?;
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(512)])
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("peer answered with bad JSON: {e}"))
}

/// Sends the same request to every alive peer at once.
pub async fn to_peers(
    cs: &ClusterShard,
    method: Method,
    path_and_query: &str,
    body: Bytes,
    ms: u64,
) -> Vec<PeerAnswer> {
    let members = peers(cs);
    futures::future::join_all(members.iter().map(|m| {
        let (method, body) = (method.clone(), body.clone());
        async move {
            PeerAnswer {
                node: m.id.clone(),
                result: call(cs, m, method, path_and_query, body, ms).await,
            }
        }
    }))
    .await
}

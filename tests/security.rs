//! Transport security and access control, over real sockets against nodes started
//! in-process: the cluster secret (gossip and node-to-node requests), TLS on the public
//! and S3 listeners (ALPN, versions, certificate reload), mutual TLS between nodes, and
//! JWT on the native API.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::{HeaderMap, Method};
use nearcache::cluster::auth::RequestAuth;
use nearcache::config::{Config, Secret};
use nearcache_membership::auth::ClusterSecret;

const SECRET: &str = "test-cluster-secret-0123456789abcdef";
const DEADLINE: Duration = Duration::from_secs(30);

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A node of a cluster on loopback with the embedded origin (no S3 needed here).
fn cluster_node(tag: &str, secret: Option<&str>, seed: Option<&TestNode>) -> TestNode {
    let seed = seed.map(|s| cluster_addr(s).to_string());
    TestNode::start_with(tag, |c: &mut Config| {
        local_origin(c);
        c.cluster.listen = Some("127.0.0.1:0".parse().unwrap());
        c.cluster.gossip_interval_ms = 100;
        c.cluster.secret = secret.map(|s| Secret(s.into()));
        c.cluster.join = seed.into_iter().collect();
    })
}

fn local_origin(c: &mut Config) {
    c.origin.bucket = None;
    c.origin.endpoint = None;
    c.origin.access_key = None;
    c.origin.secret_key = None;
    c.origin.create_bucket = false;
}

fn cluster_addr(n: &TestNode) -> std::net::SocketAddr {
    n.handle.as_ref().unwrap().node.cluster.as_ref().unwrap().addr
}

fn cluster(n: &TestNode) -> &Arc<nearcache::cluster::Cluster> {
    n.handle.as_ref().unwrap().node.cluster.as_ref().unwrap()
}

fn alive(n: &TestNode) -> Vec<String> {
    cluster(n).view().alive().map(|m| m.id.clone()).collect()
}

/// A node-to-node request sent by hand: GET of one journal change of shard 0.
fn peer_get(to: &TestNode, headers: &HeaderMap) -> (u16, serde_json::Value) {
    let url = format!("http://{}{}", cluster_addr(to), CHANGES);
    let r = client().get(url).headers(headers.clone()).send().unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap_or_default())
}

const CHANGES: &str = "/_nc/v1/changes?shard=0&after=0&limit=1";

/// What a node sends (signed when `auth` is given), with the headers reqwest would add
/// after signing already in place.
fn peer_headers(from: &str, cluster: &str, auth: Option<&RequestAuth>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", "peer".parse().unwrap());
    h.insert("accept", "*/*".parse().unwrap());
    h.insert("x-nc-from", from.parse().unwrap());
    h.insert("x-nc-cluster", cluster.parse().unwrap());
    if let Some(a) = auth {
        a.sign(&Method::GET, CHANGES, &mut h);
    }
    h
}

fn request_auth(secret: &str) -> RequestAuth {
    RequestAuth::new(
        &ClusterSecret::new(secret.as_bytes()).unwrap(),
        Duration::from_secs(60),
    )
}

#[test]
fn cluster_secret_keeps_outsiders_out_and_refuses_replays() {
    let a = cluster_node("sec-a", Some(SECRET), None);
    let b = cluster_node("sec-b", Some(SECRET), Some(&a));
    let x = cluster_node("sec-x", Some("another-secret-0123456789abcdef"), Some(&a));
    let p = cluster_node("sec-p", None, Some(&a));
    wait_until("a and b see each other", || {
        alive(&a).len() == 2 && alive(&b).len() == 2
    });
    // The outsiders keep announcing to a: wait until a has refused several of each.
    wait_until("a refuses the outsiders' gossip", || {
        cluster(&a)
            .membership
            .metrics()
            .dropped_unauthenticated
            >= 4
    });
    for n in [&a, &b] {
        let ids = alive(n);
        for outsider in [&x, &p] {
            assert!(!ids.contains(&cluster(outsider).self_id), "an outsider became a member");
        }
    }
    assert_eq!(alive(&x).len(), 1);
    assert_eq!(alive(&p).len(), 1);

    // Node-to-node requests: unsigned, or signed with another secret, get 401 with a
    // reason that shows no signature; each is counted.
    let from = cluster(&b).self_id.clone();
    let before = a.metric("nearcache_cluster_unauthenticated_requests_total");
    let (status, body) = peer_get(&a, &peer_headers(&from, "nearcache", None));
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unauthenticated");
    assert!(body["detail"].as_str().unwrap().contains("x-nc-ts"), "{body}");
    let wrong = request_auth("another-secret-0123456789abcdef");
    let h = peer_headers(&from, "nearcache", Some(&wrong));
    let (status, body) = peer_get(&a, &h);
    assert_eq!(status, 401, "{body}");
    let sig = h["x-nc-sig"].to_str().unwrap();
    assert!(!body.to_string().contains(sig), "the refusal echoes the signature");
    assert!(!body.to_string().contains("another-secret"));
    assert_eq!(
        a.metric("nearcache_cluster_unauthenticated_requests_total") - before,
        2.0
    );

    // Signed with the secret: served once; the same request again is a replay.
    let right = request_auth(SECRET);
    let h = peer_headers(&from, "nearcache", Some(&right));
    let (status, body) = peer_get(&a, &h);
    assert_eq!(status, 200, "{body}");
    let (status, body) = peer_get(&a, &h);
    assert_eq!(status, 401, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("already seen"), "{body}");
    assert_eq!(a.metric("nearcache_cluster_replayed_requests_total"), 1.0);
    // A signed header changed on the way breaks the signature.
    let mut h = peer_headers(&from, "nearcache", Some(&right));
    h.insert("x-nc-from", cluster(&x).self_id.parse().unwrap());
    assert_eq!(peer_get(&a, &h).0, 401);

    // The members still work together through signed requests: a write through b is
    // readable through a (proxied to the owner, or replicated).
    let id = new_id(&b);
    let r = put(&b, &id, b"signed".to_vec(), &[("X-Meta-ConsistencyLevel", "0")]);
    assert_eq!(r.status(), 200);
    let got = client()
        .get(a.url(&format!("/api/v1/get/{id}")))
        .send()
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().unwrap().as_ref(), b"signed");
    assert_eq!(
        a.metric("nearcache_cluster_unauthenticated_requests_total")
            + b.metric("nearcache_cluster_unauthenticated_requests_total"),
        3.0,
        "no genuine request was refused"
    );
}

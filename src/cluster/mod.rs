//! The cluster layer: membership (SWIM, `nearcache-membership`), placement of keys on
//! nodes, forwarding to owners over HTTP/2, replication of writes, and anti-entropy over
//! the shards' journals.
//!
//! ```text
//!   client ──> any node ──(rendezvous: top R alive nodes for the key)──> owner node
//!                 │  not an owner: proxy the request over one persistent     │
//!                 │  HTTP/2 connection per peer per core (private address)   │
//!                 │                                                          v
//!                 │                                   owner shard (xxh3 % shards): store,
//!                 │                                   coalesced read-through, uploader
//!                 │                                          │ write: push replicas to the
//!                 │                                          │ other owners, ack at quorum
//!                 v                                          v
//!   every shard pulls peers' journal changes since its last seq (version vector per
//!   peer shard), applies those for keys this node owns, last writer wins by HLC
//! ```

pub mod auth;
pub mod drain;
pub mod fanout;
pub mod near;
pub mod peer;
pub mod placement;
pub mod route;
#[cfg(test)]
mod sim;
pub mod sync;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use arc_swap::ArcSwap;
use nearcache_membership::{Member, Membership, MembershipConfig, View};
use nearcache_shards::Shard;

use crate::config::ClusterConfig;
use crate::mesh::{MeshError, OnMesh};
use crate::metrics::{Exposition, Family, Kind};

/// What the cluster layer needs of a shard's context: its store, its end of the mesh
/// and its part of the cluster (None when the node runs alone).
pub trait ClusterCtx: OnMesh {
    fn store(&self) -> &Rc<Shard>;
    fn cluster(&self) -> Option<&ClusterShard>;
}

/// One shard thread's part of the cluster: the node-wide state and this thread's pool
/// of peer connections (their tasks live on this thread's executor).
#[derive(Clone)]
pub struct ClusterShard {
    pub cl: Arc<Cluster>,
    pool: Rc<peer::Pool>,
    /// This thread's near copies (held) and leases (granted): see [`near`].
    pub near: Rc<near::NearShard>,
}

impl ClusterShard {
    pub fn new(cl: Arc<Cluster>) -> Self {
        ClusterShard {
            cl,
            pool: Rc::default(),
            near: Rc::default(),
        }
    }
}

/// Errors of the cluster layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// Every node of the key's ranking was unreachable. Retrying later may help.
    #[error("no node of the cluster could take the request: {0}")]
    NoNode(String),
    /// The request body went (partly) to an owner that failed: it cannot be replayed.
    #[error("the owner node {node} failed mid-request: {detail}")]
    PeerFailed { node: String, detail: String },
    /// Stored here, but fewer copies than the write quorum are durable yet.
    #[error(
        "stored here and on {ok} of {total} other owners, but the write quorum of {quorum} \
         copies was not reached (it will still spread by anti-entropy): {detail}"
    )]
    Quorum {
        ok: usize,
        total: usize,
        quorum: usize,
        detail: String,
    },
    /// Fewer owners of the key are alive than the write quorum: refused before anything
    /// was stored. Retrying helps once enough nodes are back.
    #[error(
        "the write quorum of {quorum} copies cannot be reached: only {owners} owner(s) of \
         the key are alive in this node's view of the cluster; nothing was stored"
    )]
    QuorumUnreachable { owners: usize, quorum: usize },
    /// The request could not be rebuilt for a peer.
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Mesh(#[from] MeshError),
}

impl ClusterError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ClusterError::BadRequest(_))
    }
}

/// Which node served a response.
pub const H_NODE: http::HeaderName = http::HeaderName::from_static("x-nearcache-node");
/// objstore's name: the body came from a peer.
pub const H_SYMLINK: &str = "x-meta-symlink";
/// Node-to-node requests: the sender's node id.
pub const H_FROM: &str = "x-nc-from";
/// Node-to-node requests: the sender's cluster name (a mismatch is refused).
pub const H_CLUSTER: &str = "x-nc-cluster";
/// A public request proxied by another node: handle it here, never forward again.
pub const H_FORWARDED: &str = "x-nc-forwarded";
/// A proxied request's API (`s3`; absent = the native API).
pub const H_API: &str = "x-nc-api";
/// A replica's metadata (URL-safe base64 of JSON).
pub const H_META: &str = "x-nc-meta";
/// Node-to-node requests: the sender's public URL (for `nearcache top` and `/ui`).
pub const H_PUBLIC: &str = "x-nc-public";

type ClusterCounter = fn(&ClusterMetrics) -> &AtomicU64;

/// The cluster layer's counters, named.
const COUNTERS: &[(Family, ClusterCounter)] = &[
    (
        Family::new(
            "nearcache_cluster_proxied_requests_total",
            Kind::Counter,
            "Client requests proxied to an owner node.",
        ),
        |m| &m.proxied_requests,
    ),
    (
        Family::new(
            "nearcache_cluster_peer_errors_total",
            Kind::Counter,
            "Node-to-node requests that failed (connect, send or timeout).",
        ),
        |m| &m.peer_errors,
    ),
    (
        Family::new(
            "nearcache_cluster_replicas_pushed_total",
            Kind::Counter,
            "Replicas of fresh writes pushed to other owners.",
        ),
        |m| &m.replicas_pushed,
    ),
    (
        Family::new(
            "nearcache_cluster_replica_failures_total",
            Kind::Counter,
            "Replica or tombstone pushes that failed (anti-entropy repairs them).",
        ),
        |m| &m.replica_failures,
    ),
    (
        Family::new(
            "nearcache_cluster_quorum_refusals_total",
            Kind::Counter,
            "Writes and deletes refused because fewer owners were alive than the write quorum.",
        ),
        |m| &m.quorum_refusals,
    ),
    (
        Family::new(
            "nearcache_cluster_sync_requests_total",
            Kind::Counter,
            "Journal change, index page and batched copy requests sent to peers.",
        ),
        |m| &m.sync_requests,
    ),
    (
        Family::new(
            "nearcache_cluster_sync_changes_applied_total",
            Kind::Counter,
            "Peer journal changes examined and applied (or found already applied).",
        ),
        |m| &m.sync_changes_applied,
    ),
    (
        Family::new(
            "nearcache_cluster_sync_received_bytes_total",
            Kind::Counter,
            "Object bytes pulled from peers by anti-entropy.",
        ),
        |m| &m.sync_bytes,
    ),
    (
        Family::new(
            "nearcache_cluster_sync_batched_objects_total",
            Kind::Counter,
            "Objects anti-entropy stored from a peer's batched answer (up to cluster.sync_inline_max each) instead of a replica GET each.",
        ),
        |m| &m.sync_batched,
    ),
    (
        Family::new(
            "nearcache_cluster_sync_errors_total",
            Kind::Counter,
            "Failed sync pulls (retried).",
        ),
        |m| &m.sync_errors,
    ),
    (
        Family::new(
            "nearcache_cluster_sync_gaps_total",
            Kind::Counter,
            "Pulls that found a peer had trimmed unread journal records.",
        ),
        |m| &m.sync_gaps,
    ),
    (
        Family::new(
            "nearcache_cluster_unauthenticated_requests_total",
            Kind::Counter,
            "Node-to-node requests refused by the cluster secret (unsigned, or signed with another secret or altered).",
        ),
        |m| &m.unauthenticated_requests,
    ),
    (
        Family::new(
            "nearcache_cluster_replayed_requests_total",
            Kind::Counter,
            "Signed node-to-node requests refused as replays (nonce seen, or timestamp outside the window).",
        ),
        |m| &m.replayed_requests,
    ),
    (
        Family::new(
            "nearcache_near_hits_total",
            Kind::Counter,
            "Reads of objects other nodes own answered from a near copy held here.",
        ),
        |m| &m.near_hits,
    ),
    (
        Family::new(
            "nearcache_near_fills_total",
            Kind::Counter,
            "Near copies fetched from their owner with a lease.",
        ),
        |m| &m.near_fills,
    ),
    (
        Family::new(
            "nearcache_near_leases_granted_total",
            Kind::Counter,
            "Leases this node granted to other nodes for near copies of keys it owns.",
        ),
        |m| &m.near_leases,
    ),
    (
        Family::new(
            "nearcache_near_notices_sent_total",
            Kind::Counter,
            "Keys this node told lease holders had changed.",
        ),
        |m| &m.near_notices_sent,
    ),
    (
        Family::new(
            "nearcache_near_notices_applied_total",
            Kind::Counter,
            "Near copies dropped here because their owner said the key changed.",
        ),
        |m| &m.near_notices_applied,
    ),
];
const MEMBERS: Family = Family::new(
    "nearcache_cluster_members",
    Kind::Gauge,
    "Members by state, as this node sees them.",
);
const NEAR_BYTES: Family = Family::new(
    "nearcache_near_bytes",
    Kind::Gauge,
    "Bytes of near copies held here (objects other nodes own).",
);
const SYNC_LAG: Family = Family::new(
    "nearcache_cluster_sync_lag_changes",
    Kind::Gauge,
    "Peer journal records not pulled yet, as of the last pulls.",
);

/// Counters of the cluster layer (node-wide; no per-key labels).
#[derive(Default)]
pub struct ClusterMetrics {
    pub proxied_requests: AtomicU64,
    pub peer_errors: AtomicU64,
    pub replicas_pushed: AtomicU64,
    pub replica_failures: AtomicU64,
    pub quorum_refusals: AtomicU64,
    pub sync_requests: AtomicU64,
    pub sync_changes_applied: AtomicU64,
    pub sync_bytes: AtomicU64,
    pub sync_batched: AtomicU64,
    pub sync_errors: AtomicU64,
    pub sync_gaps: AtomicU64,
    pub unauthenticated_requests: AtomicU64,
    pub replayed_requests: AtomicU64,
    pub near_hits: AtomicU64,
    pub near_fills: AtomicU64,
    pub near_bytes: AtomicU64,
    pub near_leases: AtomicU64,
    pub near_notices_sent: AtomicU64,
    pub near_notices_applied: AtomicU64,
}

pub struct Cluster {
    pub cfg: ClusterConfig,
    pub self_id: String,
    /// The advertised private address (UDP gossip and TCP HTTP/2).
    pub addr: SocketAddr,
    pub membership: Arc<Membership>,
    pub book: Arc<sync::SyncBook>,
    /// Stops the book's saver thread.
    saver_stop: Arc<std::sync::atomic::AtomicBool>,
    pub metrics: ClusterMetrics,
    /// Fault injection: node ids whose traffic this node drops (both directions).
    blocked: ArcSwap<HashSet<String>>,
    /// Wall-clock ms of the last change of the alive set (ownership moved).
    last_move_ms: AtomicU64,
    /// With a cluster secret: signs and checks node-to-node requests.
    pub auth: Option<auth::RequestAuth>,
    /// With a cluster CA: mutual TLS to peers (the client side; the listener has the
    /// server side).
    pub tls: Option<crate::tls::ClusterTls>,
    /// Taking this node out (`POST /api/v1/drain`, SIGTERM): see [`drain`].
    pub drain: drain::Drain,
    /// This node's public URL, sent with every node-to-node request.
    pub public_url: std::sync::OnceLock<http::HeaderValue>,
    /// Peers' public URLs, as their requests said (member id -> URL).
    public_urls: ArcSwap<std::collections::BTreeMap<String, String>>,
}

/// A URL a page may render as a link: http(s), short, nothing that ends an attribute.
pub fn valid_public_url(url: &str) -> bool {
    url.len() <= 256
        && (url.starts_with("http://") || url.starts_with("https://"))
        && !url.contains(|c: char| c.is_whitespace() || c.is_control() || c == '"' || c == '<')
}

#[cfg(test)]
#[test]
fn only_plain_http_urls_are_kept_as_public_urls() {
    assert!(valid_public_url("http://10.0.0.5:8080"));
    assert!(valid_public_url("https://cache-1.example:8443"));
    assert!(!valid_public_url("javascript:alert(1)"));
    assert!(!valid_public_url("http://x\" onmouseover=\"y"));
    assert!(!valid_public_url(&format!("http://{}", "a".repeat(300))));
}

/// How long after a membership change owner misses first look for a previous holder.
const MOVE_WINDOW_MS: u64 = 10 * 60 * 1000;

impl Cluster {
    pub fn start(
        cfg: &ClusterConfig,
        node_id: &str,
        data_dir: PathBuf,
        tls: Option<crate::tls::ClusterTls>,
    ) -> anyhow::Result<Option<Arc<Cluster>>> {
        let Some(listen) = cfg.listen else {
            return Ok(None);
        };
        let advertise = cfg.advertise.unwrap_or(listen);
        let interval = std::time::Duration::from_millis(cfg.gossip_interval_ms.max(10));
        let secret = cfg
            .secret
            .as_ref()
            .map(|s| nearcache_membership::auth::ClusterSecret::new(s.0.as_bytes()))
            .transpose()
            .map_err(|e| anyhow::anyhow!("cluster.secret: {e}"))?;
        let window = std::time::Duration::from_secs(cfg.replay_window_secs.max(1));
        let membership = Membership::start(MembershipConfig {
            node_id: node_id.to_string(),
            cluster_name: cfg.name.clone(),
            bind: listen,
            advertise,
            seeds: cfg.join.clone(),
            probe_interval: interval,
            suspect_timeout: interval * 3,
            secret: secret.clone(),
            replay_window: window,
        })
        .map_err(|e| anyhow::anyhow!("starting cluster membership on {listen}: {e}"))?;
        let addr = membership.local_addr();
        let book = Arc::new(sync::SyncBook::open(data_dir)?);
        let saver_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        book.start_saver(saver_stop.clone())
            .map_err(|e| anyhow::anyhow!("starting the cluster book saver: {e}"))?;
        Ok(Some(Arc::new(Cluster {
            cfg: cfg.clone(),
            self_id: node_id.to_string(),
            addr,
            book,
            saver_stop,
            membership,
            metrics: ClusterMetrics::default(),
            blocked: ArcSwap::from_pointee(HashSet::new()),
            last_move_ms: AtomicU64::new(nearcache_shards::hlc::wall_ms()),
            auth: secret.map(|s| auth::RequestAuth::new(&s, window)),
            tls,
            drain: drain::Drain::default(),
            public_url: Default::default(),
            public_urls: Default::default(),
        })))
    }

    /// Notes that the alive set changed: keys may have moved to new owners.
    pub fn note_move(&self) {
        self.last_move_ms.store(
            nearcache_shards::hlc::wall_ms(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// True shortly after a membership change, or while anti-entropy is behind.
    pub fn moving(&self) -> bool {
        let since = nearcache_shards::hlc::wall_ms()
            .saturating_sub(self.last_move_ms.load(std::sync::atomic::Ordering::Relaxed));
        since < MOVE_WINDOW_MS || self.book.lag() > 0
    }

    /// The membership as placement uses it: while draining, this node is marked left
    /// in its own view, so it owns no key and sends every request elsewhere.
    pub fn view(&self) -> Arc<View> {
        let view = self.membership.view();
        if self.drain.active() {
            Arc::new(drain::without_self(&view))
        } else {
            view
        }
    }

    /// Alive nodes (self included) ranked for `key`: the first R own it.
    pub fn ranking(&self, key: &str) -> placement::Ranking {
        placement::Ranking::new(key, self.view())
    }

    /// How many of a ranking own a key at `level`: R, or every alive node for level 2.
    pub fn owner_count(&self, ranked: usize, level: u8) -> usize {
        placement::owner_count(self.cfg.replication_factor, ranked, level)
    }

    /// The owners of `key` at `level`: the top R of the ranking, or every alive node for
    /// level 2.
    pub fn owners(&self, key: &str, level: u8) -> Vec<Member> {
        let r = self.ranking(key);
        r.iter()
            .take(self.owner_count(r.len(), level))
            .cloned()
            .collect()
    }

    pub fn is_owner(&self, key: &str, level: u8) -> bool {
        placement::is_owner(self.cfg.replication_factor, level, || self.ranking(key))
    }

    pub fn member(&self, id: &str) -> Option<Member> {
        self.view().get(id).cloned()
    }

    pub fn is_blocked(&self, id: &str) -> bool {
        let b = self.blocked.load();
        !b.is_empty() && b.contains(id)
    }

    /// The drop switch: stop (or resume) all traffic with one peer.
    pub fn set_blocked(&self, id: &str, addr: Option<SocketAddr>, blocked: bool) {
        let mut set = (**self.blocked.load()).clone();
        if blocked {
            set.insert(id.to_string());
        } else {
            set.remove(id);
        }
        self.blocked.store(Arc::new(set));
        if let Some(addr) = addr {
            self.membership.set_blocked(addr, blocked);
        }
    }

    pub fn blocked_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.blocked.load().iter().cloned().collect();
        v.sort();
        v
    }

    /// Records a peer's public URL (from [`H_PUBLIC`]); only `http(s)://` URLs of
    /// reasonable length are kept, since pages render them as links.
    pub fn note_public_url(&self, id: &str, url: &str) {
        if !valid_public_url(url) || self.public_urls.load().get(id).is_some_and(|u| u == url) {
            return;
        }
        let mut m = (**self.public_urls.load()).clone();
        m.insert(id.to_string(), url.to_string());
        self.public_urls.store(Arc::new(m));
    }

    /// Graceful leave: peers see this node as left (not failed) right away.
    pub fn leave(&self) {
        self.membership.leave(std::time::Duration::from_secs(2));
        self.saver_stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.book.save() {
            tracing::warn!(error = %e, "saving cluster sync positions");
        }
    }

    fn public_urls_with_self(&self) -> std::collections::BTreeMap<String, String> {
        let mut m = (**self.public_urls.load()).clone();
        if let Some(u) = self.public_url.get().and_then(|v| v.to_str().ok()) {
            m.insert(self.self_id.clone(), u.to_string());
        }
        m
    }

    /// The cluster's metric families.
    pub fn render_metrics(&self, out: &mut Exposition) {
        use nearcache_membership::MemberState as S;
        use std::sync::atomic::Ordering::Relaxed;
        let view = self.view();
        out.family(&MEMBERS);
        for (s, state) in [
            (S::Alive, "alive"),
            (S::Suspect, "suspect"),
            (S::Down, "down"),
            (S::Left, "left"),
        ] {
            let n = view.members.iter().filter(|x| x.state == s).count();
            out.sample(MEMBERS.name, &format!("state=\"{state}\""), n);
        }
        for (f, counter) in COUNTERS {
            out.single(f, counter(&self.metrics).load(Relaxed));
        }
        out.single(&SYNC_LAG, self.book.lag());
        out.single(&NEAR_BYTES, self.metrics.near_bytes.load(Relaxed));
        // The gossip layer counts; this layer, which runs it, exports its table.
        for (info, value) in self.membership.counters().values() {
            let kind = match info.kind {
                nearcache_membership::MetricKind::Counter => Kind::Counter,
                nearcache_membership::MetricKind::Gauge => Kind::Gauge,
            };
            out.single(&Family::new(info.name, kind, info.help), value);
        }
    }

    /// `GET /api/v1/cluster`.
    pub fn describe(&self, key: Option<&str>) -> serde_json::Value {
        let view = self.view();
        let mut v = serde_json::json!({
            "node_id": self.self_id,
            "cluster": self.cfg.name,
            "addr": self.addr.to_string(),
            "epoch": view.epoch,
            "replication_factor": self.cfg.replication_factor,
            "write_quorum": self.cfg.write_quorum,
            "authenticated": self.auth.is_some(),
            "mutual_tls": self.tls.is_some(),
            "placement": "rendezvous hashing (xxh3 of key and node id) over alive nodes: the top \
                          replication_factor own a key (level 2: every node); inside a node, \
                          xxh3(key) % shards",
            "members": view.members,
            "blocked": self.blocked_ids(),
            "sync": self.book.describe(),
            "drain": self.drain.describe(),
            "public_urls": self.public_urls_with_self(),
        });
        if let Some(key) = key {
            let ranked = self.ranking(key);
            let r = self.cfg.replication_factor.max(1);
            v["key"] = serde_json::json!({
                "key": key,
                "owners": ranked.iter().take(r).map(|m| m.id.as_str()).collect::<Vec<_>>(),
                "ranking": ranked.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            });
        }
        v
    }
}

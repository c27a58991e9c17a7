//! The per-shard context, composed from each layer's part, and the node-wide state the
//! API edges read (read-only after start-up).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use nearcache_s3::Bridge;
use nearcache_shards::{Shard, ShardMetrics};
use tokio::sync::watch;

use crate::cluster::{Cluster, ClusterCtx, ClusterShard};
use crate::config::Config;
use crate::mesh::{Mesh, MeshMetrics, OnMesh};
use crate::metrics::HttpMetrics;
use crate::object::{ObjectCtx, ObjectMetrics, ObjectShard};

/// One shard's counters, as `/metrics` and `/api/v1/stats` read them from any shard.
pub struct ShardMetricsSet {
    pub store: Arc<ShardMetrics>,
    pub http: Arc<HttpMetrics>,
    pub objects: Arc<ObjectMetrics>,
    pub mesh: Arc<MeshMetrics>,
}

/// What every shard of the node shares.
pub struct Node {
    pub cfg: Arc<Config>,
    pub shards: Vec<ShardMetricsSet>,
    /// The primary origin backend.
    pub bridge: Bridge,
    /// Every origin backend (one: the single origin).
    pub backends: Arc<nearcache_backends::Backends>,
    pub started: Instant,
    pub uring_active: bool,
    pub shutting_down: AtomicBool,
    /// Flips to true once on shutdown; every shard watches it.
    pub shutdown_rx: watch::Receiver<bool>,
    /// Kept in the data dir across restarts.
    pub node_id: String,
    /// Shards done with their own in-flight requests at shutdown. A shard keeps running
    /// jobs forwarded by others until every shard is drained.
    pub drained: AtomicUsize,
    /// Present when the node runs in a cluster (`--cluster-listen`).
    pub cluster: Option<Arc<Cluster>>,
    /// `X-Nearcache-Node` of every response this node serves.
    pub node_header: http::HeaderValue,
    /// With `auth.jwt_key`: checks the bearer tokens of the API edges (`api::auth`).
    pub jwt: Option<Arc<crate::jwt::Verifier>>,
    /// The last minutes of node-wide counters, for `/ui` and `/api/v1/history`.
    pub history: crate::history::History,
    /// Background jobs and invalidation counters.
    pub ops: Arc<crate::object::jobs::Ops>,
}

/// What a shard thread keeps for its request tasks: each layer's part.
pub struct ShardCtx {
    pub id: usize,
    pub node: Arc<Node>,
    pub shard: Rc<Shard>,
    pub mesh: Mesh<ShardCtx>,
    pub objects: ObjectShard,
    pub cluster: Option<ClusterShard>,
    pub http: Arc<HttpMetrics>,
    pub active_requests: Cell<usize>,
}

impl OnMesh for ShardCtx {
    fn mesh(&self) -> &Mesh<Self> {
        &self.mesh
    }
}

impl ClusterCtx for ShardCtx {
    fn store(&self) -> &Rc<Shard> {
        &self.shard
    }

    fn cluster(&self) -> Option<&ClusterShard> {
        self.cluster.as_ref()
    }
}

impl ObjectCtx for ShardCtx {
    fn objects(&self) -> &ObjectShard {
        &self.objects
    }

    fn ops(&self) -> &Arc<crate::object::jobs::Ops> {
        &self.node.ops
    }
}

impl ShardCtx {
    /// Every answer of the API edges: says which node served it, and is counted.
    pub fn finish(
        &self,
        route: crate::metrics::Route,
        start: Instant,
        mut resp: http::Response<crate::body::Body>,
    ) -> http::Response<crate::body::Body> {
        resp.headers_mut()
            .entry(crate::cluster::H_NODE)
            .or_insert_with(|| self.node.node_header.clone());
        self.http
            .record(route, resp.status().as_u16(), start.elapsed());
        resp
    }
}

/// Counts a request as in flight while alive (graceful shutdown waits for zero).
pub struct ActiveGuard(Rc<ShardCtx>);

impl ActiveGuard {
    pub fn new(ctx: &Rc<ShardCtx>) -> Self {
        ctx.active_requests.set(ctx.active_requests.get() + 1);
        ctx.http.inflight_requests.fetch_add(1, Relaxed);
        ActiveGuard(ctx.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let n = self.0.active_requests.get();
        self.0.active_requests.set(n.saturating_sub(1));
        self.0.http.inflight_requests.fetch_sub(1, Relaxed);
    }
}

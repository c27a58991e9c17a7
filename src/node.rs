//! State shared by all shards of the node (read-only after start-up), the per-shard
//! context, and forwarding of work to a key's owner shard over channels.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;

use std::sync::Arc;
use std::time::Instant;

use nearcache_s3::Bridge;
use nearcache_shards::{Shard, ShardMetrics};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::HttpMetrics;

/// Work sent to another shard: runs there with that shard's context.
pub type Job = Box<dyn FnOnce(Rc<ShardCtx>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

pub struct ShardHandle {
    pub id: usize,
    pub inbox: mpsc::UnboundedSender<Job>,
    pub store: Arc<ShardMetrics>,
    pub http: Arc<HttpMetrics>,
}

pub struct Node {
    pub cfg: Config,
    pub shards: Vec<ShardHandle>,
    pub bridge: Bridge,
    pub started: Instant,
    pub uring_active: bool,
    pub shutting_down: AtomicBool,
    /// Flips to true once on shutdown; every shard watches it.
    pub shutdown_rx: watch::Receiver<bool>,
    /// Kept in the data dir across restarts.
    pub node_id: String,
    /// Shards done with their own in-flight requests at shutdown. A shard keeps running
    /// jobs forwarded by others until every shard is drained.
    pub drained: std::sync::atomic::AtomicUsize,
    /// The S3-compatible API's keys and bucket settings.
    pub s3: crate::s3api::S3State,
    /// Present when the node runs in a cluster (`--cluster-listen`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// `X-Nearcache-Node` of every response this node serves.
    pub node_header: http::HeaderValue,
}

impl Node {
    /// The shard that owns `key`. Stable for a given shard count (recorded in the data dir).
    pub fn owner_of(&self, key: &str) -> usize {
        owner_of(key, self.shards.len())
    }
}

pub fn owner_of(key: &str, shards: usize) -> usize {
    // xxh3 is stable across versions and platforms, unlike std's DefaultHasher.
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % shards as u64) as usize
}

/// What a shard thread keeps for its request tasks.
pub struct ShardCtx {
    pub id: usize,
    pub node: Arc<Node>,
    pub shard: Rc<Shard>,
    pub http: Arc<HttpMetrics>,
    /// Origin fetches in progress on this (owner) shard, by key: later misses wait on them.
    pub fetches: RefCell<HashMap<String, Rc<Fetch>>>,
    /// `X-Meta-Sync` writers waiting for the uploader, by (key, seq).
    pub upload_waiters: RefCell<HashMap<(String, u64), Vec<oneshot::Sender<Result<(), String>>>>>,
    pub active_requests: Cell<usize>,
}

/// One in-progress read-through. Waiters learn the outcome; on success they read the
/// now-stored object like any hit.
pub struct Fetch {
    done: watch::Sender<Option<Result<(), ApiErrorLite>>>,
}

/// The part of an error that waiters need (ApiError isn't Clone).
#[derive(Clone, Debug)]
pub struct ApiErrorLite {
    pub status: http::StatusCode,
    pub error: &'static str,
    pub detail: String,
    pub s3_code: Option<String>,
}

impl From<&ApiError> for ApiErrorLite {
    fn from(e: &ApiError) -> Self {
        ApiErrorLite {
            status: e.status,
            error: e.error,
            detail: e.detail.clone(),
            s3_code: e.s3_code.clone(),
        }
    }
}

impl From<ApiErrorLite> for ApiError {
    fn from(e: ApiErrorLite) -> Self {
        let mut a = ApiError::new(e.status, e.error, e.detail);
        a.s3_code = e.s3_code;
        a
    }
}

impl Fetch {
    pub fn new() -> Rc<Fetch> {
        Rc::new(Fetch {
            done: watch::channel(None).0,
        })
    }

    pub fn complete(&self, outcome: Result<(), ApiErrorLite>) {
        self.done.send_replace(Some(outcome));
    }

    pub async fn wait(&self) -> Result<(), ApiErrorLite> {
        let mut rx = self.done.subscribe();
        loop {
            if let Some(outcome) = rx.borrow_and_update().clone() {
                return outcome;
            }
            if rx.changed().await.is_err() {
                return Err(ApiErrorLite {
                    status: http::StatusCode::BAD_GATEWAY,
                    error: "origin error",
                    detail: "the origin fetch this request waited on was abandoned".into(),
                    s3_code: None,
                });
            }
        }
    }
}

impl ShardCtx {
    /// Runs `f` on the owner shard of `key` (here if this shard owns it) and returns its output.
    pub async fn on_owner<F, Fut, T>(self: &Rc<Self>, key: &str, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(Rc<ShardCtx>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let owner = self.node.owner_of(key);
        if owner == self.id {
            return Ok(f(self.clone()).await);
        }
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |ctx| {
            Box::pin(async move {
                let _ = tx.send(f(ctx).await);
            })
        });
        self.http
            .forwarded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.node.shards[owner]
            .inbox
            .send(job)
            .map_err(|_| ApiError::unavailable(format!("owner shard {owner} has stopped")))?;
        rx.await
            .map_err(|_| ApiError::unavailable(format!("owner shard {owner} dropped the request")))
    }

    /// Runs `f` on shard `id` (here if it is this one) and returns its output.
    pub async fn on_shard<F, Fut, T>(self: &Rc<Self>, id: usize, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(Rc<ShardCtx>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        if id == self.id {
            return Ok(f(self.clone()).await);
        }
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |ctx| {
            Box::pin(async move {
                let _ = tx.send(f(ctx).await);
            })
        });
        let shard = self
            .node
            .shards
            .get(id)
            .ok_or_else(|| ApiError::bad_request("invalid shard", format!("no shard {id}")))?;
        shard
            .inbox
            .send(job)
            .map_err(|_| ApiError::unavailable(format!("shard {id} has stopped")))?;
        rx.await
            .map_err(|_| ApiError::unavailable(format!("shard {id} dropped the request")))
    }

    /// Runs `f` on every shard (this one included) and returns the outputs in shard order.
    pub async fn on_every_shard<F, Fut, T>(self: &Rc<Self>, f: F) -> Result<Vec<T>, ApiError>
    where
        F: FnOnce(Rc<ShardCtx>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let mut waiting = Vec::with_capacity(self.node.shards.len());
        for shard in &self.node.shards {
            let (tx, rx) = oneshot::channel();
            let f = f.clone();
            let job: Job = Box::new(move |ctx| {
                Box::pin(async move {
                    let _ = tx.send(f(ctx).await);
                })
            });
            if shard.id == self.id {
                monoio::spawn(job(self.clone()));
            } else {
                shard.inbox.send(job).map_err(|_| {
                    ApiError::unavailable(format!("shard {} has stopped", shard.id))
                })?;
            }
            waiting.push((shard.id, rx));
        }
        let mut out = Vec::with_capacity(waiting.len());
        for (id, rx) in waiting {
            out.push(
                rx.await.map_err(|_| {
                    ApiError::unavailable(format!("shard {id} dropped the request"))
                })?,
            );
        }
        Ok(out)
    }

    /// Releases every `X-Meta-Sync` waiter at shutdown (their writes stay queued).
    pub fn notify_shutdown_waiters(&self) {
        self.upload_waiters.borrow_mut().clear();
    }

    /// Resolves the `X-Meta-Sync` waiters of one pending op.
    pub fn notify_upload(&self, key: &str, seq: u64, outcome: Result<(), String>) {
        let waiters = self
            .upload_waiters
            .borrow_mut()
            .remove(&(key.to_string(), seq));
        for w in waiters.into_iter().flatten() {
            let _ = w.send(outcome.clone());
        }
    }
}

/// Counts a request as in flight while alive (graceful shutdown waits for zero).
pub struct ActiveGuard(Rc<ShardCtx>);

impl ActiveGuard {
    pub fn new(ctx: &Rc<ShardCtx>) -> Self {
        ctx.active_requests.set(ctx.active_requests.get() + 1);
        ctx.http
            .inflight_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ActiveGuard(ctx.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_requests.set(self.0.active_requests.get() - 1);
        self.0
            .http
            .inflight_requests
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

//! The cross-shard mesh: runs work on the shard thread that owns a key (or on a given
//! shard) over unbounded channels, and brings the result back over a oneshot.
//!
//! Generic over the per-shard context `C`: the mesh knows nothing of what a shard holds.
//! A job is a `Send` closure that receives the target shard's `Rc<C>`; the future it
//! returns runs there (it need not be `Send`).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::metrics::{Exposition, Family, Kind};

/// Work sent to another shard: runs there with that shard's context.
pub type Job<C> = Box<dyn FnOnce(Rc<C>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Why work could not run on another shard. Only shutdown causes these.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MeshError {
    #[error("shard {0} has stopped")]
    Stopped(usize),
    #[error("shard {0} dropped the request")]
    Dropped(usize),
    #[error("there is no shard {0}")]
    NoShard(usize),
}

/// The shard that owns `key`. Stable for a given shard count (recorded in the data dir).
pub fn owner_of(key: &str, shards: usize) -> usize {
    // xxh3 is stable across versions and platforms, unlike std's DefaultHasher.
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % shards.max(1) as u64) as usize
}

/// Counters of the mesh, per shard.
#[derive(Default)]
pub struct MeshMetrics {
    /// Jobs this shard sent to another shard.
    pub forwarded: AtomicU64,
}

impl MeshMetrics {
    pub const FORWARDED: Family = Family::new(
        "nearcache_forwarded_requests_total",
        Kind::Counter,
        "Requests (jobs) forwarded to the owner shard.",
    );

    pub fn render(shards: &[Arc<MeshMetrics>], out: &mut Exposition) {
        out.per_shard(
            &Self::FORWARDED,
            shards.iter().map(|m| m.forwarded.load(Relaxed)),
        );
    }
}

/// One shard's end of the mesh: the inboxes of every shard (its own included).
pub struct Mesh<C> {
    id: usize,
    inboxes: Arc<[mpsc::UnboundedSender<Job<C>>]>,
    pub metrics: Arc<MeshMetrics>,
}

/// A context that carries its shard's end of the mesh.
pub trait OnMesh: Sized + 'static {
    fn mesh(&self) -> &Mesh<Self>;
}

/// Builds the mesh: one inbox per shard. Returns the senders (shared) and receivers.
pub fn channels<C>(
    shards: usize,
) -> (
    Arc<[mpsc::UnboundedSender<Job<C>>]>,
    Vec<mpsc::UnboundedReceiver<Job<C>>>,
) {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..shards).map(|_| mpsc::unbounded_channel()).unzip();
    (txs.into(), rxs)
}

impl<C: OnMesh> Mesh<C> {
    pub fn new(id: usize, inboxes: Arc<[mpsc::UnboundedSender<Job<C>>]>) -> Self {
        Mesh {
            id,
            inboxes,
            metrics: Arc::default(),
        }
    }

    pub fn id(&self) -> usize {
        self.id
    }

    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    pub fn owner_of(&self, key: &str) -> usize {
        owner_of(key, self.inboxes.len())
    }

    fn send(&self, id: usize, job: Job<C>) -> Result<(), MeshError> {
        let inbox = self.inboxes.get(id).ok_or(MeshError::NoShard(id))?;
        inbox.send(job).map_err(|_| MeshError::Stopped(id))?;
        if id != self.id {
            self.metrics.forwarded.fetch_add(1, Relaxed);
        }
        Ok(())
    }
}

fn job<C: 'static, F, Fut, T>(f: F, tx: oneshot::Sender<T>) -> Job<C>
where
    F: FnOnce(Rc<C>) -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    Box::new(move |ctx| {
        Box::pin(async move {
            let _ = tx.send(f(ctx).await);
        })
    })
}

/// Runs `f` on shard `id` (inline if it is `here`'s) and returns its output.
pub async fn on_shard<C, F, Fut, T>(here: &Rc<C>, id: usize, f: F) -> Result<T, MeshError>
where
    C: OnMesh,
    F: FnOnce(Rc<C>) -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    if id == here.mesh().id {
        return Ok(f(here.clone()).await);
    }
    let (tx, rx) = oneshot::channel();
    here.mesh().send(id, job(f, tx))?;
    rx.await.map_err(|_| MeshError::Dropped(id))
}

/// Runs `f` on the shard that owns `key` and returns its output.
pub async fn on_owner<C, F, Fut, T>(here: &Rc<C>, key: &str, f: F) -> Result<T, MeshError>
where
    C: OnMesh,
    F: FnOnce(Rc<C>) -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let owner = here.mesh().owner_of(key);
    on_shard(here, owner, f).await
}

/// Runs `f` on every shard (this one included, as a task of its own) and returns the
/// outputs in shard order.
pub async fn on_every_shard<C, F, Fut, T>(here: &Rc<C>, f: F) -> Result<Vec<T>, MeshError>
where
    C: OnMesh,
    F: FnOnce(Rc<C>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let mesh = here.mesh();
    let mut waiting = Vec::with_capacity(mesh.shards());
    for id in 0..mesh.shards() {
        let (tx, rx) = oneshot::channel();
        let j = job(f.clone(), tx);
        if id == mesh.id {
            monoio::spawn(j(here.clone()));
        } else {
            mesh.send(id, j)?;
        }
        waiting.push((id, rx));
    }
    let mut out = Vec::with_capacity(waiting.len());
    for (id, rx) in waiting {
        out.push(rx.await.map_err(|_| MeshError::Dropped(id))?);
    }
    Ok(out)
}

/// Runs the jobs other shards send to this one, each as its own task, until every
/// sender is gone.
pub async fn serve_inbox<C: OnMesh>(ctx: Rc<C>, mut inbox: mpsc::UnboundedReceiver<Job<C>>) {
    while let Some(job) = inbox.recv().await {
        monoio::spawn(job(ctx.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_spread() {
        assert_eq!(owner_of("a", 1), 0);
        assert_eq!(owner_of("x", 0), 0, "no shards is not a division by zero");
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[owner_of(&format!("key-{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(owner_of("key-1", 4), owner_of("key-1", 4));
    }
}

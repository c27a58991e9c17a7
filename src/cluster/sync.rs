//! Anti-entropy: version vectors over journal sequence numbers.
//!
//! Every shard journals each change with a per-shard sequence number and an HLC. For
//! every peer shard, this node remembers the highest sequence it has applied (its version
//! vector, persisted in `<data-dir>/cluster-sync.json`) and keeps asking that peer for the
//! changes after it. It applies those for keys it owns (or level-2 objects), last writer
//! wins by (HLC, ETag), fetching bodies from the peer. Applying is idempotent, so a lost
//! or stale position only costs a re-read. Pulls are incremental; nothing swaps key lists.
//!
//! A peer's request for our changes after seq X tells us it has seen everything up to X:
//! tombstones are garbage-collected only once every member has asked past them.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use nearcache_membership::{Member, MemberState};
use nearcache_shards::{hlc::wall_ms, Change, ChangeBatch, ObjectMeta, StoreError};
use serde::{Deserialize, Serialize};

use super::peer::{self, PeerBody};
use super::{Cluster, ClusterCtx, ClusterShard, H_META};
use crate::http_util::{drain_into, DrainError};
use crate::mesh::on_owner;

/// Keys that begin with this are node-local (the object service's chunks of large
/// objects and their manifests, kept on the parent key's owner shard): they are never
/// pulled from peers, so placement never routes them by their own hash. No API can
/// name such a key (bucket names cannot contain '~'; native ids are ULIDs).
pub const LOCAL_KEY_PREFIX: char = '~';

/// Whether `key` is node-local (see [`LOCAL_KEY_PREFIX`]).
pub fn is_local_key(key: &str) -> bool {
    key.starts_with(LOCAL_KEY_PREFIX)
}

const BOOK_FILE: &str = "cluster-sync.json";
const BOOK_FORMAT: u32 = 1;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct PeerPos {
    /// The peer's shard count (0 = not known yet).
    shards: usize,
    /// Highest applied journal seq, by peer shard.
    after: Vec<u64>,
    /// The peer's highest journal seq at the last pull, by peer shard (for lag).
    #[serde(skip)]
    last_seq: Vec<u64>,
    /// How far the peer has read our journals, by our shard.
    #[serde(skip)]
    acked: Vec<u64>,
    /// Index scans in progress, by peer shard (after a journal gap).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    resync: BTreeMap<usize, Resync>,
}

/// Where an index scan of a peer shard stands.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Resync {
    /// Continue after this key (None: from the start).
    after_key: Option<String>,
    /// The journal seq the first page reflected (0: no page yet).
    through: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Book {
    format: u32,
    peers: BTreeMap<String, PeerPos>,
    /// Rescans since start: a pull sent before one must not move the positions it reset.
    #[serde(skip)]
    rescans: u64,
}

/// Sync positions. Touched by the sync loops and peer requests, never by client
/// requests, so a mutex is fine here. Saved only by [`SyncBook::save`], which one thread
/// at a time runs (the book's saver thread, or shutdown), never a shard thread.
pub struct SyncBook {
    path: PathBuf,
    inner: Mutex<Book>,
    /// Serializes saves: they share one temp path.
    saving: Mutex<()>,
    dirty: std::sync::atomic::AtomicBool,
}

fn grow(v: &mut Vec<u64>, n: usize) {
    if v.len() < n {
        v.resize(n, 0);
    }
}

impl SyncBook {
    #[expect(clippy::disallowed_methods, reason = "start-up, on the main thread")]
    pub fn open(data_dir: PathBuf) -> anyhow::Result<SyncBook> {
        let path = data_dir.join(BOOK_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        SyncBook::from_saved(path, text.as_deref())
    }

    /// A book from the text [`SyncBook::saved_text`] gave (None: nothing saved yet), to
    /// be saved at `path`. No I/O: [`SyncBook::open`] reads the file, a simulation keeps
    /// the text in memory.
    pub fn from_saved(path: PathBuf, saved: Option<&str>) -> anyhow::Result<SyncBook> {
        let book = match saved {
            Some(text) => {
                let b: Book = serde_json::from_str(text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                if b.format != BOOK_FORMAT {
                    anyhow::bail!(
                        "{}: format {}, expected {BOOK_FORMAT}",
                        path.display(),
                        b.format
                    );
                }
                b
            }
            None => Book {
                format: BOOK_FORMAT,
                peers: BTreeMap::new(),
                rescans: 0,
            },
        };
        Ok(SyncBook {
            path,
            inner: Mutex::new(book),
            saving: Mutex::new(()),
            dirty: Default::default(),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Book) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Like `with`, for changes of what is saved.
    fn change<T>(&self, f: impl FnOnce(&mut Book) -> T) -> T {
        let out = self.with(f);
        self.dirty.store(true, Relaxed);
        out
    }

    /// Writes the positions atomically: a temp file, fsync, rename, fsync of the
    /// directory. A crash leaves the old or the new book, never a torn one. Blocking:
    /// call it from the saver thread or at shutdown, not from a shard thread.
    #[expect(
        clippy::disallowed_methods,
        reason = "runs on the book saver thread and at shutdown, never on a shard thread"
    )]
    pub fn save(&self) -> std::io::Result<()> {
        use std::io::Write;
        let _one = self.saving.lock().unwrap_or_else(|p| p.into_inner());
        self.dirty.store(false, Relaxed);
        let text = self.saved_text();
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// What [`SyncBook::save`] writes: the positions (not the peers' acks, which they
    /// send again with their next pull).
    pub fn saved_text(&self) -> String {
        self.with(|b| serde_json::to_string_pretty(&*b).expect("book serializes"))
    }

    /// Saves the book about once a second while it changes, on a thread of its own,
    /// until `stop` flips.
    pub fn start_saver(
        self: &Arc<Self>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let book = self.clone();
        std::thread::Builder::new()
            .name("cluster-book".into())
            .spawn(move || {
                while !stop.load(Relaxed) {
                    std::thread::park_timeout(Duration::from_secs(1));
                    if book.dirty.load(Relaxed) {
                        if let Err(e) = book.save() {
                            tracing::warn!(error = %e, path = %book.path.display(), "saving cluster sync positions");
                        }
                    }
                }
            })
    }

    pub fn peer_shards(&self, peer: &str) -> usize {
        self.with(|b| b.peers.get(peer).map_or(0, |p| p.shards))
    }

    pub fn after(&self, peer: &str, shard: usize) -> u64 {
        self.with(|b| {
            b.peers
                .get(peer)
                .and_then(|p| p.after.get(shard).copied())
                .unwrap_or(0)
        })
    }

    fn advance(&self, peer: &str, shard: usize, shards: usize, next: u64, last_seq: u64) {
        self.change(|b| {
            let p = b.peers.entry(peer.to_string()).or_default();
            p.shards = shards;
            grow(&mut p.after, shards.max(shard + 1));
            grow(&mut p.last_seq, shards.max(shard + 1));
            p.after[shard] = p.after[shard].max(next);
            p.last_seq[shard] = last_seq;
        })
    }

    pub(super) fn resync_of(&self, peer: &str, shard: usize) -> Option<Resync> {
        self.with(|b| {
            b.peers
                .get(peer)
                .and_then(|p| p.resync.get(&shard).cloned())
        })
    }

    /// The peer trimmed records we never read: scan its index instead.
    pub(super) fn start_resync(&self, peer: &str, shard: usize) {
        self.change(|b| {
            let p = b.peers.entry(peer.to_string()).or_default();
            p.resync.entry(shard).or_default();
        })
    }

    fn set_resync(&self, peer: &str, shard: usize, r: Resync) {
        self.change(|b| {
            b.peers
                .entry(peer.to_string())
                .or_default()
                .resync
                .insert(shard, r);
        })
    }

    /// How many rescans there were; a pull notes it when it starts and hands it to
    /// [`SyncBook::changes_applied`] or [`SyncBook::index_page_applied`].
    pub fn rescans(&self) -> u64 {
        self.with(|b| b.rescans)
    }

    /// A pulled batch of changes, asked for when the book had seen `rescans` rescans,
    /// was applied: the position moves to its `next_after`. True when the peer has more.
    /// If a rescan came in between, the position stays where the rescan put it: the
    /// batch was filtered by the ownership of before (another thread's pull may have
    /// been in flight while ownership moved).
    pub(super) fn changes_applied(
        &self,
        peer: &str,
        shard: usize,
        shards: usize,
        rescans: u64,
        batch: &ChangeBatch,
    ) -> bool {
        if self.rescans() != rescans {
            return true;
        }
        self.advance(peer, shard, shards, batch.next_after, batch.last_seq);
        batch.next_after < batch.last_seq
    }

    /// An index page of a scan that stood at `rs` was applied (its entries may have
    /// been taken). The scan's journal position is the first page's `through`; after the
    /// last page the journal resumes there. True when more pages follow. Like
    /// [`SyncBook::changes_applied`], a page asked for before a rescan (`rescans`) moves
    /// nothing.
    pub(super) fn index_page_applied(
        &self,
        peer: &str,
        shard: usize,
        shards: usize,
        rescans: u64,
        rs: &Resync,
        page: &nearcache_shards::IndexPage,
    ) -> bool {
        if self.rescans() != rescans {
            return true;
        }
        let through = if rs.through == 0 {
            page.through
        } else {
            rs.through
        };
        match page.next_key.clone() {
            None => {
                tracing::info!(
                    peer,
                    peer_shard = shard,
                    through,
                    "index resync done; back to the journal"
                );
                self.finish_resync(peer, shard, shards, through);
                false
            }
            Some(k) => {
                self.set_resync(
                    peer,
                    shard,
                    Resync {
                        after_key: Some(k),
                        through,
                    },
                );
                true
            }
        }
    }

    /// The scan is done: the journal resumes after what the scan reflected.
    fn finish_resync(&self, peer: &str, shard: usize, shards: usize, through: u64) {
        self.change(|b| {
            if let Some(p) = b.peers.get_mut(peer) {
                p.resync.remove(&shard);
            }
        });
        self.advance(peer, shard, shards, through, through);
    }

    /// A peer read our shard's journal past `after`.
    pub fn record_ack(&self, peer: &str, our_shard: usize, after: u64) {
        self.with(|b| {
            let p = b.peers.entry(peer.to_string()).or_default();
            grow(&mut p.acked, our_shard + 1);
            p.acked[our_shard] = p.acked[our_shard].max(after);
        })
    }

    /// True when every one of `peers` has read our shard's journal up to `seq`.
    pub fn seen_by_all(&self, our_shard: usize, seq: u64, peers: &[String]) -> bool {
        self.with(|b| {
            peers.iter().all(|id| {
                b.peers
                    .get(id)
                    .and_then(|p| p.acked.get(our_shard))
                    .is_some_and(|&a| a >= seq)
            })
        })
    }

    /// Ownership moved (a member went away): re-read peers' retained journals to pull
    /// what this node now owns. Keys already held are skipped cheaply (same HLC). Index
    /// scans in progress start over too: their earlier pages skipped keys not owned then.
    pub fn rescan(&self) {
        self.change(|b| {
            b.rescans += 1;
            for p in b.peers.values_mut() {
                p.after.iter_mut().for_each(|a| *a = 0);
                p.resync.values_mut().for_each(|r| *r = Resync::default());
            }
        })
    }

    /// Changes this node has not pulled yet, summed over peers' shards (from the last pulls).
    pub fn lag(&self) -> u64 {
        self.with(|b| {
            b.peers
                .values()
                .map(|p| {
                    p.last_seq
                        .iter()
                        .zip(&p.after)
                        .map(|(l, a)| l.saturating_sub(*a))
                        .sum::<u64>()
                })
                .sum()
        })
    }

    pub fn describe(&self) -> serde_json::Value {
        self.with(|b| {
            let peers: serde_json::Map<String, serde_json::Value> = b
                .peers
                .iter()
                .map(|(id, p)| {
                    (
                        id.clone(),
                        serde_json::json!({
                            "shards": p.shards, "applied_seq": p.after,
                            "peer_last_seq": p.last_seq, "peer_read_our_seq": p.acked,
                        }),
                    )
                })
                .collect();
            serde_json::Value::Object(peers)
        })
    }
}

/// True when a member alive `before` is not in `alive` now: ownership of some keys moved
/// to this node, so peers' retained journals are read again ([`SyncBook::rescan`]).
pub fn member_went_away(before: &HashSet<String>, alive: &HashSet<String>) -> bool {
    before.iter().any(|id| !alive.contains(id))
}

/// Bytes per second for body pulls on one shard thread.
struct RateLimiter {
    rate: f64,
    tokens: Cell<f64>,
    last: Cell<Instant>,
}

impl RateLimiter {
    fn new(rate: u64) -> Self {
        RateLimiter {
            rate: rate.max(1) as f64,
            tokens: Cell::new(rate as f64),
            last: Cell::new(Instant::now()),
        }
    }

    async fn take(&self, n: u64) {
        let now = Instant::now();
        let refill = now.duration_since(self.last.get()).as_secs_f64() * self.rate;
        self.last.set(now);
        let t = (self.tokens.get() + refill).min(self.rate) - n as f64;
        self.tokens.set(t);
        if t < 0.0 {
            monoio::time::sleep(Duration::from_secs_f64(-t / self.rate)).await;
        }
    }
}

impl Resync {
    /// The key the scan continues after (None: from the start).
    pub fn after_key(&self) -> Option<&str> {
        self.after_key.as_deref()
    }
}

/// The index page reply of a peer.
#[derive(Debug, Serialize, Deserialize)]
pub struct IndexReply {
    pub shards: usize,
    pub page: nearcache_shards::IndexPage,
}

/// The changes reply of a peer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChangesReply {
    pub shards: usize,
    pub batch: ChangeBatch,
}

/// A request for the local copies of several keys at once (`POST /_nc/v1/replicas`):
/// how a puller gets the bodies of small objects without a replica GET each.
#[derive(Debug, Serialize, Deserialize)]
pub struct CopiesRequest {
    pub keys: Vec<String>,
    /// Copies larger than this are left out (the puller fetches them apart).
    pub max: u64,
}

/// The answer to a [`CopiesRequest`]: the copies the peer holds, in no particular order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CopiesReply {
    pub copies: Vec<Copy>,
}

/// One key's local copy: its metadata and its body, base64.
#[derive(Debug, Serialize, Deserialize)]
pub struct Copy {
    pub meta: ObjectMeta,
    pub body: String,
}

/// Bytes of bodies one [`CopiesReply`] carries at most: bounds the answer (with base64
/// and JSON it stays far below the 64 MiB a puller reads) and what both sides hold.
pub const COPIES_BUDGET: u64 = 16 << 20;

/// The local copies of `keys` (keys of this shard) up to `max` bytes each and `budget` in
/// all. A copy that cannot be read is left out: the puller's replica GET then reports the
/// error. Runs on the keys' owner shard.
pub async fn local_copies(
    store: &Rc<nearcache_shards::Shard>,
    keys: Vec<String>,
    max: u64,
    mut budget: u64,
) -> Vec<Copy> {
    use base64::Engine;
    let mut found = Vec::new();
    for key in keys {
        if let nearcache_shards::Lookup::Hit { meta, .. } = store.peek(&key) {
            if meta.size <= max && meta.size <= budget {
                budget -= meta.size;
                found.push(meta);
            }
        }
    }
    // Small bodies are read on the journal's reader thread: keep a few reads in flight.
    futures::stream::iter(found)
        .map(|meta| async move { (store.read_all(&meta).await, meta) })
        .buffered(16)
        .filter_map(|(body, meta)| async move {
            Some(Copy {
                body: base64::engine::general_purpose::STANDARD.encode(body.ok()?),
                meta: (*meta).clone(),
            })
        })
        .collect()
        .await
}

pub fn encode_meta(m: &ObjectMeta) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(m).expect("meta serializes"))
}

pub fn decode_meta(v: &[u8]) -> Result<ObjectMeta, String> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(v)
        .map_err(|e| format!("{H_META} is not base64: {e}"))?;
    serde_json::from_slice(&raw).map_err(|e| format!("{H_META} is not object metadata: {e}"))
}

pub fn key_query(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Not-before time for a replica's own origin op: the writer normally reports first.
pub fn replica_upload_after(cl: &Cluster) -> Option<u64> {
    Some(wall_ms() + cl.cfg.replica_upload_delay_secs * 1000)
}

/// Why a replica was not stored.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The sender sent more than the replica's size. Its fault; a retry will not help.
    #[error("replica body exceeds its size {0}")]
    TooLong(u64),
    /// The sender's stream broke. A retry may help.
    #[error("replica stream failed after {got} of {size} bytes: {detail}")]
    Stream { got: u64, size: u64, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Stores a replica of `meta` whose body arrives in `body`. Runs on the key's owner shard.
/// Ok(false): the local copy was as new or newer.
pub async fn store_replica(
    store: &Rc<nearcache_shards::Shard>,
    meta: &ObjectMeta,
    mut body: Incoming,
    upload_after: Option<u64>,
) -> Result<bool, ReplicaError> {
    let Some(mut writer) = store.begin_replica(meta).await? else {
        return Ok(false);
    };
    match drain_into(&mut writer, &mut body, meta.size).await {
        Ok(()) => {}
        Err(DrainError::TooLong) => return Err(ReplicaError::TooLong(meta.size)),
        Err(DrainError::Store(e)) => return Err(e.into()),
        Err(DrainError::Stream(got, e)) => {
            return Err(ReplicaError::Stream {
                got,
                size: meta.size,
                detail: e.to_string(),
            });
        }
    }
    finish_replica(writer, meta, upload_after).await
}

/// [`store_replica`] of a body already at hand.
pub async fn store_replica_bytes(
    store: &Rc<nearcache_shards::Shard>,
    meta: &ObjectMeta,
    body: bytes::Bytes,
    upload_after: Option<u64>,
) -> Result<bool, ReplicaError> {
    if body.len() as u64 > meta.size {
        return Err(ReplicaError::TooLong(meta.size));
    }
    let Some(mut writer) = store.begin_replica(meta).await? else {
        return Ok(false);
    };
    if !body.is_empty() {
        writer.write(body).await?;
    }
    finish_replica(writer, meta, upload_after).await
}

/// Ok(false): a newer version or tombstone arrived while the body was written.
async fn finish_replica(
    writer: nearcache_shards::ObjectWriter,
    meta: &ObjectMeta,
    upload_after: Option<u64>,
) -> Result<bool, ReplicaError> {
    match writer.finish_replica(meta, upload_after).await {
        Ok(_) => Ok(true),
        Err(StoreError::Superseded) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The anti-entropy loop of one shard thread. Peer shard `s` is pulled by local shard
/// `s % n`, so the work spreads over cores.
pub async fn run<C: ClusterCtx>(
    ctx: Rc<C>,
    cs: ClusterShard,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let cl = &cs.cl;
    let (n, id) = (ctx.mesh().shards(), ctx.mesh().id());
    let limiter = RateLimiter::new(cl.cfg.sync_rate_limit.0 / n as u64);
    let interval = Duration::from_millis(cl.cfg.sync_interval_ms.max(10));
    let mut alive_before: Option<HashSet<String>> = None;
    let mut warned: std::collections::HashMap<String, Instant> = Default::default();
    // A membership change (a peer joined or came back) starts a round at once instead of
    // after the interval: a restarted node catches up as soon as it has rejoined.
    let mut epoch = cl.membership.subscribe();
    loop {
        if *shutdown.borrow() {
            return;
        }
        epoch.borrow_and_update();
        let view = cl.view();
        if id == 0 {
            let alive: HashSet<String> = view.alive().map(|m| m.id.clone()).collect();
            if let Some(before) = &alive_before {
                if *before != alive {
                    cl.note_move();
                }
                if member_went_away(before, &alive) {
                    tracing::info!(
                        "a member went away: rescanning peers' journals for keys that moved here"
                    );
                    cl.book.rescan();
                }
            }
            alive_before = Some(alive);
        }
        let mut more = false;
        let peers: Vec<Member> = view
            .alive()
            .filter(|m| !m.is_self && !cl.is_blocked(&m.id))
            .cloned()
            .collect();
        let mut pulls = Vec::new();
        for p in &peers {
            let shards = cl.book.peer_shards(&p.id);
            let mine: Vec<usize> = match shards {
                0 if id == 0 => vec![0],
                0 => vec![],
                s => (0..s).filter(|s| s % n == id).collect(),
            };
            pulls.extend(mine.into_iter().map(|s| (p, s)));
        }
        // Peers are pulled at the same time: a node back from a restart catches up with
        // all of them at once, and a slow peer does not hold up the others' rounds.
        let results = futures::future::join_all(
            pulls
                .iter()
                .map(|&(p, s)| pull_once(&ctx, &cs, p, s, &limiter)),
        )
        .await;
        for (&(p, s), result) in pulls.iter().zip(results) {
            match result {
                Ok(full) => more |= full,
                Err(e) => {
                    cl.metrics.sync_errors.fetch_add(1, Relaxed);
                    let now = Instant::now();
                    let last = warned.get(&p.id).copied();
                    if last.is_none_or(|t| now.duration_since(t) > Duration::from_secs(10)) {
                        warned.insert(p.id.clone(), now);
                        tracing::warn!(shard = id, peer = %p.id, peer_shard = s, error = %e, "sync pull failed; will retry");
                    }
                }
            }
        }
        if !more {
            monoio::select! {
                _ = monoio::time::sleep(interval) => {}
                _ = shutdown.changed() => {}
                // A closed channel (membership stopped) must not end every sleep early.
                _ = async {
                    if epoch.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                } => {}
            }
        }
    }
}

/// Pulls and applies one batch from a peer shard. Ok(true): the peer has more.
async fn pull_once<C: ClusterCtx>(
    ctx: &Rc<C>,
    cs: &ClusterShard,
    p: &Member,
    shard: usize,
    limiter: &RateLimiter,
) -> Result<bool, String> {
    let cl = &cs.cl;
    let rescans = cl.book.rescans();
    if let Some(rs) = cl.book.resync_of(&p.id, shard) {
        return resync_once(ctx, cs, p, shard, rescans, rs, limiter).await;
    }
    let after = cl.book.after(&p.id, shard);
    let uri = format!(
        "/_nc/v1/changes?shard={shard}&after={after}&limit={}",
        cl.cfg.sync_batch.max(1)
    );
    let reply: ChangesReply = get_json(cs, p, uri).await?;
    let batch = reply.batch;
    if batch.gap {
        // The scan covers everything the missed records did (current state only).
        cl.metrics.sync_gaps.fetch_add(1, Relaxed);
        tracing::info!(peer = %p.id, peer_shard = shard, after, "the peer trimmed journal records this node never pulled: resyncing from its index");
        cl.book.start_resync(&p.id, shard);
        return Ok(true);
    }
    let mut batch = batch;
    let changes = std::mem::take(&mut batch.changes)
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    apply_all(ctx, cs, p, changes, limiter).await?;
    Ok(cl
        .book
        .changes_applied(&p.id, shard, reply.shards, rescans, &batch))
}

/// GETs a JSON document from a peer's internal API.
async fn get_json<T: for<'de> Deserialize<'de>>(
    cs: &ClusterShard,
    p: &Member,
    uri: String,
) -> Result<T, String> {
    let req = Request::builder()
        .method(Method::GET)
        .uri(&uri)
        .body(peer::empty())
        .expect("valid request");
    exchange_json(cs, p, req).await
}

/// Sends a sync request to a peer's internal API and decodes its JSON answer.
async fn exchange_json<T: for<'de> Deserialize<'de>>(
    cs: &ClusterShard,
    p: &Member,
    req: Request<PeerBody>,
) -> Result<T, String> {
    let uri = req.uri().clone();
    cs.cl.metrics.sync_requests.fetch_add(1, Relaxed);
    let resp = cs.send(p, req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = peer::read_body(resp, 64 << 20).await?;
    if !status.is_success() {
        return Err(format!(
            "{uri} answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("decoding the answer to {uri}: {e}"))
}

/// A peer's copy of a key: its metadata and body.
type Fetched = (ObjectMeta, bytes::Bytes);

/// Applies changes; the first failure is returned after all have run (the position then
/// stays, and the batch is retried). First the Puts this node wants are picked (keys it
/// owns, with a newer version than it holds), then the small ones among them come from
/// the peer in one request per [`COPIES_BUDGET`] and are stored all at once (their
/// writes share journal commits); the rest are fetched `sync_concurrency` at a time.
async fn apply_all<C: ClusterCtx>(
    ctx: &Rc<C>,
    cs: &ClusterShard,
    p: &Member,
    changes: Vec<Change>,
    limiter: &RateLimiter,
) -> Result<(), String> {
    let cl = &cs.cl;
    let conc = cl.cfg.sync_concurrency.max(1);
    let picked: Vec<Result<Option<Change>, String>> = futures::stream::iter(changes)
        .map(|change| wanted(ctx, cl, change))
        .buffered(conc)
        .collect()
        .await;
    let mut results = Vec::new();
    let mut kept = Vec::new();
    for r in picked {
        match r {
            Ok(Some(c)) => kept.push(c),
            Ok(None) => results.push(Ok(())),
            Err(e) => results.push(Err(e)),
        }
    }
    let mut copies = fetch_copies(cs, p, &kept).await;
    let (inline, apart): (Vec<_>, Vec<_>) = kept
        .into_iter()
        .map(|c| {
            let copy = match &c {
                Change::Put(m) => copies.remove(&m.key),
                _ => None,
            };
            (c, copy)
        })
        .partition(|(_, copy)| copy.is_some());
    let all_at_once = inline.len().max(1);
    let (a, b) = futures::join!(
        futures::stream::iter(inline)
            .map(|(c, copy)| apply_change(ctx, p, c, copy, limiter))
            .buffer_unordered(all_at_once)
            .collect::<Vec<_>>(),
        futures::stream::iter(apart)
            .map(|(c, copy)| apply_change(ctx, p, c, copy, limiter))
            .buffer_unordered(conc)
            .collect::<Vec<_>>(),
    );
    results.extend(a);
    results.extend(b);
    let applied = results.iter().filter(|r| r.is_ok()).count() as u64;
    cl.metrics.sync_changes_applied.fetch_add(applied, Relaxed);
    results.into_iter().find(|r| r.is_err()).unwrap_or(Ok(()))
}

/// The change if this node applies it: not a node-local key and, for a Put, a key this
/// node owns with a newer version than the one it holds (asked on the owner shard).
async fn wanted<C: ClusterCtx>(
    ctx: &Rc<C>,
    cl: &Cluster,
    change: Change,
) -> Result<Option<Change>, String> {
    let key = match &change {
        Change::Put(m) => &m.key,
        Change::Delete(t) => &t.key,
        Change::Upgrade { key, .. } | Change::Uploaded { key, .. } => key,
    };
    if is_local_key(key) {
        return Ok(None);
    }
    if let Change::Put(m) = &change {
        if !cl.is_owner(&m.key, m.level) {
            return Ok(None);
        }
        let (key, hlc, etag) = (m.key.clone(), m.hlc, m.etag.clone());
        let newer = on_owner(ctx, &m.key, move |ctx| async move {
            ctx.store().is_newer(&key, hlc, &etag)
        })
        .await
        .map_err(|e| e.to_string())?;
        if !newer {
            return Ok(None);
        }
    }
    Ok(Some(change))
}

/// The peer's copies of the small objects among `changes`' Puts, by key, asked for in
/// requests of at most [`COPIES_BUDGET`] bytes. What the peer leaves out, or a failed
/// request (an older peer without the route, say), is fetched apart later.
async fn fetch_copies(
    cs: &ClusterShard,
    p: &Member,
    changes: &[Change],
) -> HashMap<String, Fetched> {
    let max = cs.cl.cfg.sync_inline_max.0;
    let mut chunks: Vec<Vec<String>> = Vec::new();
    let mut room = 0u64;
    for c in changes {
        let Change::Put(m) = c else { continue };
        if max == 0 || m.size > max {
            continue;
        }
        if chunks.is_empty() || m.size > room {
            chunks.push(Vec::new());
            room = COPIES_BUDGET;
        }
        room -= m.size;
        chunks.last_mut().expect("pushed above").push(m.key.clone());
    }
    let mut out = HashMap::new();
    for keys in chunks {
        match copies_of(cs, p, keys, max).await {
            Ok(copies) => out.extend(copies),
            Err(e) => {
                tracing::debug!(peer = %p.id, error = %e, "batched copies failed; fetching them one by one")
            }
        }
    }
    out
}

/// One `POST /_nc/v1/replicas`.
async fn copies_of(
    cs: &ClusterShard,
    p: &Member,
    keys: Vec<String>,
    max: u64,
) -> Result<Vec<(String, Fetched)>, String> {
    use base64::Engine;
    let body = serde_json::to_vec(&CopiesRequest { keys, max }).expect("serializes");
    let req = Request::builder()
        .method(Method::POST)
        .uri("/_nc/v1/replicas")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(peer::full(body))
        .expect("valid request");
    let reply: CopiesReply = exchange_json(cs, p, req).await?;
    reply
        .copies
        .into_iter()
        .map(|c| {
            let body = base64::engine::general_purpose::STANDARD
                .decode(&c.body)
                .map_err(|e| format!("the copy of {:?} is not base64: {e}", c.meta.key))?;
            Ok((c.meta.key.clone(), (c.meta, bytes::Bytes::from(body))))
        })
        .collect()
}

/// One page of an index scan of a peer shard. Ok(true): more pages to go.
async fn resync_once<C: ClusterCtx>(
    ctx: &Rc<C>,
    cs: &ClusterShard,
    p: &Member,
    shard: usize,
    rescans: u64,
    rs: Resync,
    limiter: &RateLimiter,
) -> Result<bool, String> {
    let cl = &cs.cl;
    let mut uri = format!(
        "/_nc/v1/index?shard={shard}&limit={}",
        cl.cfg.sync_batch.max(1)
    );
    if let Some(k) = &rs.after_key {
        uri.push_str("&after=");
        uri.push_str(&key_query(k));
    }
    let reply: IndexReply = get_json(cs, p, uri).await?;
    let mut page = reply.page;
    apply_all(ctx, cs, p, std::mem::take(&mut page.entries), limiter).await?;
    Ok(cl
        .book
        .index_page_applied(&p.id, shard, reply.shards, rescans, &rs, &page))
}

/// Applies one change [`wanted`] picked, with the peer's copy when it came batched.
async fn apply_change<C: ClusterCtx>(
    ctx: &Rc<C>,
    p: &Member,
    change: Change,
    copy: Option<Fetched>,
    limiter: &RateLimiter,
) -> Result<(), String> {
    let key = match &change {
        Change::Put(m) => {
            // Rate-limit on this thread before the job moves to the owner shard.
            limiter.take(m.size).await;
            m.key.clone()
        }
        Change::Delete(t) => t.key.clone(),
        Change::Upgrade { key, .. } | Change::Uploaded { key, .. } => key.clone(),
    };
    let p = p.clone();
    on_owner(ctx, &key, move |ctx| async move {
        let Some(cs) = ctx.cluster().cloned() else {
            return Err("the owner shard has no cluster part".to_string());
        };
        apply_on_owner(&*ctx, &cs, &p, change, copy).await
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn apply_on_owner<C: ClusterCtx>(
    ctx: &C,
    cs: &ClusterShard,
    p: &Member,
    change: Change,
    copy: Option<Fetched>,
) -> Result<(), String> {
    let cl = &cs.cl;
    let se = |e: StoreError| e.to_string();
    match change {
        Change::Put(m) => match copy {
            Some((meta, body)) => store_copy(ctx.store(), cl, &meta, body).await,
            None => pull_object(ctx.store(), cs, p, &m).await,
        },
        Change::Delete(t) => {
            // Observed even when not applied: once this node has read past the tombstone
            // its peers may sweep it, so a later write here must be stamped after it (or
            // a lagging clock stamps it older and it comes back as a resurrection).
            ctx.store().hlc().observe(t.hlc);
            let holds = !matches!(ctx.store().peek(&t.key), nearcache_shards::Lookup::Miss);
            if wants_tombstone(holds, || cl.is_owner(&t.key, t.level)) {
                ctx.store()
                    .apply_tombstone(&t, replica_upload_after(cl))
                    .await
                    .map_err(se)?;
            }
            Ok(())
        }
        Change::Upgrade { key, hlc, level } => {
            ctx.store()
                .upgrade_version(&key, hlc, level)
                .await
                .map_err(se)?;
            Ok(())
        }
        Change::Uploaded { key, hlc } => {
            ctx.store().mark_uploaded(&key, hlc).await.map_err(se)?;
            Ok(())
        }
    }
}

/// Whether anti-entropy applies a peer's tombstone here: when this node holds the key
/// (object or tombstone: a stale copy must not outlive the delete) or owns it.
pub fn wants_tombstone(holds: bool, owner: impl FnOnce() -> bool) -> bool {
    holds || owner()
}

/// Stores a peer's copy that came batched if it is newer than the local one (checked by
/// `begin_replica`, and again at commit).
async fn store_copy(
    store: &Rc<nearcache_shards::Shard>,
    cl: &Cluster,
    m: &ObjectMeta,
    body: bytes::Bytes,
) -> Result<(), String> {
    let stored = store_replica_bytes(store, m, body, replica_upload_after(cl))
        .await
        .map_err(|e| e.to_string())?;
    if stored {
        cl.metrics.sync_bytes.fetch_add(m.size, Relaxed);
        cl.metrics.sync_batched.fetch_add(1, Relaxed);
    }
    Ok(())
}

/// Fetches the peer's current copy of `m.key` and stores it if it is newer.
async fn pull_object(
    store: &Rc<nearcache_shards::Shard>,
    cs: &ClusterShard,
    p: &Member,
    m: &ObjectMeta,
) -> Result<(), String> {
    let cl = &cs.cl;
    if !store.is_newer(&m.key, m.hlc, &m.etag) {
        return Ok(());
    }
    let resp = fetch_replica(cs, p, &m.key).await?;
    let Some(resp) = resp else {
        // Gone or replaced on the peer: a later change in its journal covers it.
        return Ok(());
    };
    let meta = resp
        .headers()
        .get(H_META)
        .ok_or_else(|| format!("peer replica answer lacks {H_META}"))
        .and_then(|v| decode_meta(v.as_bytes()))?;
    let size = meta.size;
    let stored = store_replica(store, &meta, resp.into_body(), replica_upload_after(cl))
        .await
        .map_err(|e| e.to_string())?;
    if stored {
        cl.metrics.sync_bytes.fetch_add(size, Relaxed);
    }
    Ok(())
}

/// Asks the other alive nodes, best-ranked first, for their local copy of `key` and
/// stores the first one found (runs on the key's owner shard). True if one was stored.
pub async fn pull_from_holders(
    store: &Rc<nearcache_shards::Shard>,
    cs: &ClusterShard,
    key: &str,
) -> bool {
    let cl = &cs.cl;
    for p in cl.ranking(key).iter().filter(|m| !m.is_self) {
        let Ok(Some(resp)) = fetch_replica(cs, p, key).await else {
            continue;
        };
        let Some(Ok(meta)) = resp
            .headers()
            .get(H_META)
            .map(|v| decode_meta(v.as_bytes()))
        else {
            continue;
        };
        match store_replica(store, &meta, resp.into_body(), replica_upload_after(cl)).await {
            Ok(_) => return true,
            Err(e) => {
                tracing::debug!(peer = %p.id, key, error = %e, "pulling a moved key failed")
            }
        }
    }
    false
}

/// GET a peer's local copy of `key` (never read through). None when it has none.
pub async fn fetch_replica(
    cs: &ClusterShard,
    p: &Member,
    key: &str,
) -> Result<Option<http::Response<Incoming>>, String> {
    let req: Request<PeerBody> = Request::builder()
        .method(Method::GET)
        .uri(format!("/_nc/v1/replica?key={}", key_query(key)))
        .body(peer::empty())
        .expect("valid request");
    let resp = cs.send(p, req).await.map_err(|e| e.to_string())?;
    match resp.status() {
        StatusCode::OK => Ok(Some(resp)),
        StatusCode::NOT_FOUND => Ok(None),
        s => {
            let body = peer::read_body(resp, 64 << 10).await.unwrap_or_default();
            Err(format!(
                "replica fetch answered {s}: {}",
                String::from_utf8_lossy(&body)
            ))
        }
    }
}

/// Members whose acknowledgement a tombstone needs before it may be dropped: every
/// known member except this node and those that left gracefully.
pub fn gc_peers(cl: &Cluster) -> Vec<String> {
    gc_peers_of(&cl.view())
}

/// [`gc_peers`] of one membership view.
pub fn gc_peers_of(view: &nearcache_membership::View) -> Vec<String> {
    view.members
        .iter()
        .filter(|m| !m.is_self && m.state != MemberState::Left)
        .map(|m| m.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_survive_a_restart_and_rescan_resets_them() {
        let dir = tempfile::tempdir().unwrap();
        let book = SyncBook::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(book.after("P", 1), 0);
        book.advance("P", 1, 2, 40, 90);
        book.advance("P", 1, 2, 30, 90); // never backwards
        assert_eq!(book.after("P", 1), 40);
        assert_eq!(book.peer_shards("P"), 2);
        assert_eq!(book.lag(), 50);
        book.save().unwrap();

        let reopened = SyncBook::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(reopened.after("P", 1), 40);
        assert_eq!(reopened.after("P", 0), 0);
        reopened.rescan();
        assert_eq!(reopened.after("P", 1), 0);
    }

    #[test]
    fn a_tombstone_is_seen_only_when_every_peer_read_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let book = SyncBook::open(dir.path().to_path_buf()).unwrap();
        let peers = vec!["A".to_string(), "B".to_string()];
        assert!(!book.seen_by_all(0, 10, &peers), "nobody asked yet");
        book.record_ack("A", 0, 12);
        assert!(!book.seen_by_all(0, 10, &peers), "B has not read it");
        book.record_ack("B", 0, 9);
        assert!(!book.seen_by_all(0, 10, &peers), "B is behind seq 10");
        book.record_ack("B", 0, 10);
        assert!(book.seen_by_all(0, 10, &peers));
        assert!(!book.seen_by_all(1, 10, &peers), "positions are per shard");
        assert!(
            book.seen_by_all(1, 10, &[]),
            "a lone node drops by TTL only"
        );
    }

    #[test]
    fn concurrent_saves_never_leave_a_torn_book() {
        let dir = tempfile::tempdir().unwrap();
        let book = Arc::new(SyncBook::open(dir.path().to_path_buf()).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let book = book.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        book.advance(&format!("P{t}"), 0, 1, i, i);
                        book.save().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let reopened = SyncBook::open(dir.path().to_path_buf()).unwrap();
        for t in 0..4 {
            assert_eq!(reopened.after(&format!("P{t}"), 0), 49);
        }
        assert!(!dir.path().join("cluster-sync.json.tmp").exists());
    }

    #[test]
    fn a_book_of_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(BOOK_FILE), r#"{"format": 99, "peers": {}}"#).unwrap();
        let e = SyncBook::open(dir.path().to_path_buf()).err().unwrap();
        assert!(e.to_string().contains("format 99, expected 1"), "{e}");
    }

    #[test]
    fn replica_meta_round_trips_through_the_header() {
        let m = ObjectMeta {
            key: "bucket/ключ".into(),
            size: 3,
            etag: "abc".into(),
            crc32c: 7,
            content_type: Some("text/plain".into()),
            name: Some("naïve.txt".into()),
            user_meta: Default::default(),
            last_modified_ms: 1,
            hlc: 2,
            seq: 3,
            level: 1,
            in_origin: false,
            provenance: nearcache_shards::Provenance::Client,
            headers: Default::default(),
            validated_ms: 0,
            inline: false,
            derived: Default::default(),
        };
        let enc = encode_meta(&m);
        assert!(http::HeaderValue::from_str(&enc).is_ok());
        assert_eq!(decode_meta(enc.as_bytes()).unwrap(), m);
        assert!(decode_meta(b"not base64!").is_err());
    }
}

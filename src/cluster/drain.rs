//! Draining a node: taking it out of the cluster without losing what only it holds.
//!
//! ```text
//!   POST /api/v1/drain (or SIGTERM with cluster.drain_on_shutdown)
//!     1. handing_over: this node drops itself from its own placement (its requests and
//!        writes now go to the other nodes: it takes no new keys), and every shard pushes
//!        the keys it owns that are not safe in S3 (level 0, upload pending) and its
//!        tombstones to their successor (the node that owns the key once this one is
//!        gone); with all=true, every key it owns
//!     2. leaving: graceful SWIM leave; peers see `left` at once and stop routing here
//!     3. catching_up: changes that landed here meanwhile (replicas peers pushed before
//!        they saw the leave) go to the keys' owners
//!     4. left (or failed: some pushes failed, or the deadline passed)
//! ```
//!
//! A coordinator thread runs the phases; each shard does its part on its own thread
//! ([`run_shard`]) and reports through counters.

use std::rc::Rc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use nearcache_membership::{Member, View};
use nearcache_shards::{Change, Lookup, ObjectMeta, Tombstone};
use tokio::sync::watch;

use super::{route, Cluster, ClusterCtx, ClusterShard};

/// Pushes in flight per shard while handing over.
const CONCURRENCY: usize = 8;
/// Index entries and journal changes read per step.
const PAGE: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DrainState {
    Serving = 0,
    HandingOver = 1,
    Leaving = 2,
    CatchingUp = 3,
    Left = 4,
    Failed = 5,
}

impl DrainState {
    fn from_u8(v: u8) -> DrainState {
        match v {
            1 => DrainState::HandingOver,
            2 => DrainState::Leaving,
            3 => DrainState::CatchingUp,
            4 => DrainState::Left,
            5 => DrainState::Failed,
            _ => DrainState::Serving,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DrainState::Serving => "serving",
            DrainState::HandingOver => "handing_over",
            DrainState::Leaving => "leaving",
            DrainState::CatchingUp => "catching_up",
            DrainState::Left => "left",
            DrainState::Failed => "failed",
        }
    }
}

/// The node's drain: its state, the phase the shards work on, and progress counters.
pub struct Drain {
    state: AtomicU8,
    /// 0: nothing; 1: hand over; 2: catch up. Shards watch it.
    phase: watch::Sender<u8>,
    /// Hand over every owned key, not only those not safe in S3.
    all: AtomicBool,
    pub to_hand_over: AtomicU64,
    pub handed_over: AtomicU64,
    pub failed: AtomicU64,
    /// Shard phases finished (n per phase).
    shards_done: AtomicUsize,
    started_ms: AtomicU64,
    finished_ms: AtomicU64,
    error: Mutex<Option<String>>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            state: AtomicU8::new(0),
            phase: watch::channel(0).0,
            all: AtomicBool::new(false),
            to_hand_over: AtomicU64::new(0),
            handed_over: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            shards_done: AtomicUsize::new(0),
            started_ms: AtomicU64::new(0),
            finished_ms: AtomicU64::new(0),
            error: Mutex::new(None),
        }
    }
}

impl Drain {
    pub fn state(&self) -> DrainState {
        DrainState::from_u8(self.state.load(SeqCst))
    }

    /// True from the start of a drain on: this node no longer owns keys.
    pub fn active(&self) -> bool {
        self.state() != DrainState::Serving
    }

    fn set(&self, s: DrainState) {
        self.state.store(s as u8, SeqCst);
    }

    /// `GET /api/v1/drain`.
    pub fn describe(&self) -> serde_json::Value {
        let ms = |a: &AtomicU64| Some(a.load(Relaxed)).filter(|&v| v > 0);
        serde_json::json!({
            "state": self.state().as_str(),
            "all": self.all.load(Relaxed),
            "to_hand_over": self.to_hand_over.load(Relaxed),
            "handed_over": self.handed_over.load(Relaxed),
            "failed": self.failed.load(Relaxed),
            "started_unix_ms": ms(&self.started_ms),
            "finished_unix_ms": ms(&self.finished_ms),
            "error": self.error.lock().map(|e| e.clone()).unwrap_or_default(),
        })
    }

    fn fail(&self, e: String) {
        if let Ok(mut g) = self.error.lock() {
            g.get_or_insert(e);
        }
    }
}

/// This node's view as placement sees it while draining: itself marked left, so it
/// ranks no key (the raw view, from the membership, still has it alive).
pub fn without_self(view: &View) -> View {
    let mut v = view.clone();
    for m in v.members.iter_mut().filter(|m| m.is_self) {
        m.state = nearcache_membership::MemberState::Left;
    }
    v
}

/// Starts a drain on its own thread; false when one already started.
pub fn start(cl: &Arc<Cluster>, shards: usize, all: bool, timeout: Duration) -> bool {
    if cl
        .drain
        .state
        .compare_exchange(0, DrainState::HandingOver as u8, SeqCst, SeqCst)
        .is_err()
    {
        return false;
    }
    cl.drain.all.store(all, Relaxed);
    let cl = cl.clone();
    let spawned = std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || coordinate(&cl, shards, timeout));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the drain thread");
        return false;
    }
    true
}

/// Drains (or waits for a drain already running) until it ends or `timeout` passes:
/// what shutdown runs before it leaves.
pub fn run_blocking(cl: &Arc<Cluster>, shards: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    if cl
        .drain
        .state
        .compare_exchange(0, DrainState::HandingOver as u8, SeqCst, SeqCst)
        .is_ok()
    {
        coordinate(cl, shards, timeout);
        return;
    }
    while !matches!(cl.drain.state(), DrainState::Left | DrainState::Failed)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn coordinate(cl: &Arc<Cluster>, shards: usize, timeout: Duration) {
    let d = &cl.drain;
    let deadline = Instant::now() + timeout;
    d.started_ms
        .store(nearcache_shards::hlc::wall_ms(), Relaxed);
    tracing::info!(
        all = d.all.load(Relaxed),
        "drain: handing over the keys only this node holds"
    );
    d.set(DrainState::HandingOver);
    // Placement changed here: this node no longer ranks any key.
    cl.note_move();
    let wait = |target: usize| {
        while d.shards_done.load(SeqCst) < target {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    };
    d.phase.send_replace(1);
    let handed = wait(shards);
    d.set(DrainState::Leaving);
    cl.leave();
    d.set(DrainState::CatchingUp);
    d.phase.send_replace(2);
    let caught_up = handed && wait(2 * shards);
    d.finished_ms
        .store(nearcache_shards::hlc::wall_ms(), Relaxed);
    let failed = d.failed.load(Relaxed);
    if !caught_up {
        d.fail(format!(
            "the drain did not finish within {} s",
            timeout.as_secs()
        ));
    } else if failed > 0 {
        d.fail(format!("{failed} hand-over pushes failed"));
    }
    let ok = caught_up && failed == 0;
    d.set(if ok {
        DrainState::Left
    } else {
        DrainState::Failed
    });
    tracing::info!(
        handed_over = d.handed_over.load(Relaxed),
        failed,
        state = d.state().as_str(),
        "drain: done; this node left the cluster"
    );
}

/// One shard's part: waits for the coordinator's phases and works on this shard's keys.
pub async fn run_shard<C: ClusterCtx>(
    ctx: Rc<C>,
    cs: ClusterShard,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut phase = cs.cl.drain.phase.subscribe();
    let mut since = 0;
    loop {
        let p = *phase.borrow_and_update();
        match p {
            1 => {
                since = ctx.store().last_seq();
                hand_over(&ctx, &cs).await;
                cs.cl.drain.shards_done.fetch_add(1, SeqCst);
            }
            2 => {
                catch_up(&ctx, &cs, since).await;
                cs.cl.drain.shards_done.fetch_add(1, SeqCst);
                return;
            }
            _ => {}
        }
        monoio::select! {
            r = phase.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

/// The members that own a key once this node is gone, and which of them do not own it
/// now (the successors).
fn owners_after(cl: &Cluster, key: &str, level: u8) -> (Vec<Member>, Vec<Member>) {
    let raw = cl.membership.view();
    let before = super::placement::Ranking::new(key, raw.clone());
    let n_before = cl.owner_count(before.len(), level);
    let owners_before: Vec<&Member> = before.iter().take(n_before).collect();
    let after = super::placement::Ranking::new(key, Arc::new(without_self(&raw)));
    let n_after = cl.owner_count(after.len(), level);
    let owners: Vec<Member> = after.iter().take(n_after).cloned().collect();
    let successors = owners
        .iter()
        .filter(|m| !owners_before.iter().any(|b| b.id == m.id))
        .cloned()
        .collect();
    (owners, successors)
}

/// Whether this node owned the key before the drain (its copy may be the only one).
fn owned_here(cl: &Cluster, key: &str, level: u8) -> bool {
    let raw = cl.membership.view();
    super::placement::is_owner(cl.cfg.replication_factor, level, || {
        super::placement::Ranking::new(key, raw)
    })
}

enum Item {
    Object(Rc<ObjectMeta>),
    Tomb(Tombstone),
}

async fn push_to<C: ClusterCtx>(ctx: &C, cs: &ClusterShard, to: Vec<Member>, item: &Item) {
    let d = &cs.cl.drain;
    for m in to {
        d.to_hand_over.fetch_add(1, Relaxed);
        let r = match item {
            Item::Object(meta) => route::push_put(ctx, cs, &m, meta).await,
            Item::Tomb(t) => route::push_tombstone(cs, &m, t).await,
        };
        match r {
            Ok(()) => {
                d.handed_over.fetch_add(1, Relaxed);
            }
            Err(e) => {
                d.failed.fetch_add(1, Relaxed);
                let key = match item {
                    Item::Object(m) => m.key.as_str(),
                    Item::Tomb(t) => t.key.as_str(),
                };
                tracing::warn!(peer = %m.id, %key, error = %e, "drain: hand-over push failed");
                d.fail(format!("pushing {key} to {}: {e}", m.id));
            }
        }
    }
}

/// Phase 1: every key this shard owns that is not safe in S3 (all of them with
/// `all`), and every tombstone, goes to its successors.
async fn hand_over<C: ClusterCtx>(ctx: &Rc<C>, cs: &ClusterShard) {
    let cl = &cs.cl;
    let all = cl.drain.all.load(Relaxed);
    let mut after: Option<String> = None;
    loop {
        let page = match ctx.store().index_page(after.as_deref(), PAGE) {
            Ok(p) => p,
            Err(e) => {
                cl.drain.fail(format!("reading the index: {e}"));
                cl.drain.failed.fetch_add(1, Relaxed);
                return;
            }
        };
        let mut work = Vec::new();
        for entry in page.entries {
            let (key, level, item) = match entry {
                Change::Put(meta) => {
                    if !all && meta.in_origin && meta.level > 0 {
                        continue;
                    }
                    (meta.key.clone(), meta.level, Item::Object(Rc::new(meta)))
                }
                Change::Delete(t) => (t.key.clone(), t.level, Item::Tomb(t)),
                _ => continue,
            };
            if level >= 2 || !owned_here(cl, &key, level) {
                continue;
            }
            let (_, successors) = owners_after(cl, &key, level);
            if !successors.is_empty() {
                work.push((successors, item));
            }
        }
        futures::stream::iter(work)
            .for_each_concurrent(CONCURRENCY, |(to, item)| async move {
                push_to(&**ctx, cs, to, &item).await;
            })
            .await;
        match page.next_key {
            Some(k) => after = Some(k),
            None => return,
        }
    }
}

/// Phase 3: what changed on this shard since the hand-over began goes to the keys'
/// owners (as they are without this node).
async fn catch_up<C: ClusterCtx>(ctx: &Rc<C>, cs: &ClusterShard, mut after: u64) {
    let cl = &cs.cl;
    loop {
        let batch = match ctx.store().changes_since(after, PAGE) {
            Ok(b) => b,
            Err(e) => {
                cl.drain.fail(format!("reading the journal: {e}"));
                cl.drain.failed.fetch_add(1, Relaxed);
                return;
            }
        };
        let mut keys: Vec<String> = batch
            .changes
            .iter()
            .map(|(_, c)| match c {
                Change::Put(m) => m.key.clone(),
                Change::Delete(t) => t.key.clone(),
                Change::Upgrade { key, .. } | Change::Uploaded { key, .. } => key.clone(),
            })
            .collect();
        keys.sort();
        keys.dedup();
        let work: Vec<(Vec<Member>, Item)> = keys
            .into_iter()
            .filter_map(|k| {
                let item = match ctx.store().peek(&k) {
                    Lookup::Hit { meta, .. } => Item::Object(meta),
                    Lookup::Deleted(t) => Item::Tomb(t),
                    Lookup::Miss => return None,
                };
                let level = match &item {
                    Item::Object(m) => m.level,
                    Item::Tomb(t) => t.level,
                };
                Some((owners_after(cl, &k, level).0, item))
            })
            .collect();
        futures::stream::iter(work)
            .for_each_concurrent(CONCURRENCY, |(to, item)| async move {
                push_to(&**ctx, cs, to, &item).await;
            })
            .await;
        if batch.next_after <= after || batch.next_after >= batch.last_seq {
            return;
        }
        after = batch.next_after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, me: bool) -> Member {
        let mut m = super::super::placement::tests::member(id);
        m.is_self = me;
        m
    }

    #[test]
    fn a_draining_node_ranks_no_key_and_its_successor_takes_its_place() {
        let view = View {
            epoch: 1,
            members: vec![member("A", true), member("B", false), member("C", false)],
        };
        let drained = Arc::new(without_self(&view));
        for i in 0..200 {
            let key = format!("k{i}");
            let r = super::super::placement::Ranking::new(&key, drained.clone());
            assert_eq!(r.len(), 2);
            assert!(r.iter().all(|m| !m.is_self));
            // With R = 1 the successor of a key A owned is the second of the full ranking.
            let full = super::super::placement::Ranking::new(&key, Arc::new(view.clone()));
            let first: Vec<&str> = full.iter().map(|m| m.id.as_str()).collect();
            if first[0] == "A" {
                assert_eq!(r.first().unwrap().id, first[1]);
            } else {
                assert_eq!(
                    r.first().unwrap().id,
                    first[0],
                    "keys A did not own stay put"
                );
            }
        }
    }

    #[test]
    fn states_round_trip() {
        for s in [
            DrainState::Serving,
            DrainState::HandingOver,
            DrainState::Leaving,
            DrainState::CatchingUp,
            DrainState::Left,
            DrainState::Failed,
        ] {
            assert_eq!(DrainState::from_u8(s as u8), s);
        }
        let d = Drain::default();
        assert_eq!(d.describe()["state"], "serving");
        assert!(!d.active());
    }
}

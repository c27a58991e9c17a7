//! The shard: index, stores, journal and eviction wired together.
//!
//! State lives in one `RefCell<State>` borrowed only between `.await`s. A mutation
//! (write finish, delete, eviction, ...) checks and updates the in-memory index and
//! queues its journal batch in one synchronous step, then awaits the writer thread's
//! durable commit before acknowledging the caller and deleting replaced files. Queueing
//! in the same step as the index update keeps the index and LMDB in the same order when
//! several tasks of the shard change the same key concurrently.
//!
//! By job:
//! - `mod.rs`: the shared state (`State`, `Core`), journal submission, small accessors;
//! - [`recover`]: `Shard::open`, rebuilding the index from the journal;
//! - [`read`]: lookups, reads and verification of object files;
//! - [`write`]: `ObjectWriter` and its commit;
//! - [`pending`]: origin uploads and deletes not yet done, level upgrades;
//! - [`tombstones`]: deletes, tombstone expiry, forgetting objects;
//! - [`capacity`]: disk reservations and eviction, the memory tier.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};
use nearcache_file::{align_up, AlignedBuf, AnyDevice, AnyFile, Device, DeviceFile};

use crate::defaults::BLOCK_SIZE;
use crate::eviction::S3Fifo;
use crate::format::{self, Header, Mismatch, BODY_OFFSET, HEADER_SIZE};
use crate::hlc::wall_ms;
use crate::journal::{
    key_fingerprint, Ack, Journal, Op, PendingRec, PendingRecKind, Record, RecordKind, StoredEntry,
};
use crate::{
    BodyAt, ChangeBatch, Hlc, Lookup, NoSpaceReason, ObjectMeta, PendingKind, PendingOp,
    Provenance, RecoveryReport, ShardConfig, ShardMetrics, StoreError, Tombstone, WriteAttrs,
};

mod capacity;
mod freshness;
mod index;
mod pending;
mod read;
mod recover;
mod synclog;
mod tombstones;
mod write;

pub use read::ObjectReader;
pub use write::ObjectWriter;

/// LMDB's default maximum key size.
const MAX_KEY_LEN: usize = 511;

/// One shard. `!Send`: lives on its own monoio thread; methods take `&self`
/// (interior mutability, never borrowed across an `.await`) so that many request
/// tasks on the same thread can share it through an `Rc<Shard>`.
pub struct Shard {
    core: Rc<Core>,
}

/// A tombstone's fields without its key: what `fresh_tombs` keeps (the key is the
/// map's) and what a lookup reads back from the journal.
#[derive(Debug, Clone, Copy)]
struct Tomb {
    hlc: u64,
    seq: u64,
    deleted_at_ms: u64,
    level: u8,
}

impl Tomb {
    fn of(t: &Tombstone) -> Tomb {
        Tomb {
            hlc: t.hlc,
            seq: t.seq,
            deleted_at_ms: t.deleted_at_ms,
            level: t.level,
        }
    }

    /// The whole tombstone of `key`.
    fn with_key(&self, key: &str) -> Tombstone {
        Tombstone {
            key: key.to_owned(),
            hlc: self.hlc,
            seq: self.seq,
            deleted_at_ms: self.deleted_at_ms,
            level: self.level,
        }
    }
}

struct State {
    /// Objects only: a tombstone lives in the journal's `objects` db, where reads that
    /// find no object look for it (see [`State::tomb`]), so a delete-heavy day costs no
    /// index memory beyond a fingerprint. Metas of objects not used lately live there
    /// too (see [`index`]).
    ///
    /// Also the disk tier's eviction state: one node per object.
    index: index::Index,
    /// Tombstones queued to the journal and maybe not committed yet (the `objects` db
    /// does not show them until then). Dropped once committed, or when the key changes.
    fresh_tombs: HashMap<String, Tomb>,
    /// Fingerprints ([`key_fingerprint`]) of every key that may hold a tombstone in the
    /// `objects` db: a key whose fingerprint is absent holds none, so a miss reads the
    /// journal only for keys deleted (or sharing a fingerprint with one). Only grows
    /// between tombstone scans, which rebuild it.
    tomb_filter: HashSet<u64>,
    /// While a tombstone scan runs: fingerprints added since it started (kept on swap).
    tomb_filter_added: Option<Vec<u64>>,
    /// Earliest `deleted_at_ms` of any tombstone, or lower (`u64::MAX`: none): the sweep
    /// scans the journal only once something may have expired.
    oldest_tomb_ms: u64,
    /// Bytes reserved by writes in progress.
    reserved: u64,
    /// Memory tier: bodies of small objects, by key, tagged with their seq.
    mem: S3Fifo<String>,
    mem_bodies: HashMap<String, (u64, Bytes), crate::KeyHasher>,
    pending: HashMap<String, PendingRec>,
    pending_order: BTreeMap<u64, String>,
    tombstones: u64,
}

impl State {
    fn set_pending(&mut self, key: &str, rec: PendingRec) {
        self.clear_pending(key);
        self.pending_order.insert(rec.seq, key.to_owned());
        self.pending.insert(key.to_owned(), rec);
    }

    fn clear_pending(&mut self, key: &str) -> Option<PendingRec> {
        let old = self.pending.remove(key)?;
        self.pending_order.remove(&old.seq);
        Some(old)
    }

    /// The tombstone `key` holds, if it holds no object: a queued one, else the journal's
    /// (read only when the filter says the key may have one). A journal that cannot be
    /// read counts as a tombstone that beats everything: nothing deleted comes back.
    fn tomb(&self, journal: &Journal, key: &str) -> Option<Tomb> {
        if let Some(t) = self.fresh_tombs.get(key) {
            return Some(*t);
        }
        if !self.tomb_filter.contains(&key_fingerprint(key)) {
            return None;
        }
        match journal.read_tombstone(key) {
            Ok(Some(t)) => Some(Tomb::of(&t)),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(key, error = %e, "reading a tombstone from the journal; treating the key as deleted");
                Some(Tomb {
                    hlc: u64::MAX,
                    seq: u64::MAX,
                    deleted_at_ms: 0,
                    level: 0,
                })
            }
        }
    }

    /// What `key` holds, as last-writer-wins sees it, handed to `f` (an object's meta
    /// may have to be read from the journal, so it is not borrowed from the index).
    fn with_held<T>(
        &self,
        journal: &Journal,
        key: &str,
        f: impl FnOnce(crate::Held<'_>) -> T,
    ) -> T {
        match self.index.get(journal, key) {
            Some(m) => f(crate::Held::Version {
                hlc: m.hlc,
                etag: &m.etag,
            }),
            None => f(match self.tomb(journal, key) {
                Some(t) => crate::Held::Tombstone { hlc: t.hlc },
                None => crate::Held::Nothing,
            }),
        }
    }

    /// Last-writer-wins: is version (hlc, etag) newer than what the shard holds for `key`?
    /// A tombstone beats a version with a lower or equal hlc ([`crate::version_wins`]).
    fn is_newer(&self, journal: &Journal, key: &str, hlc: u64, etag: &str) -> bool {
        self.with_held(journal, key, |held| crate::version_wins(hlc, etag, held))
    }

    /// Whether a tombstone from elsewhere is stored: last-writer-wins (it beats a version
    /// with a lower or equal hlc), unless it expired and the key holds nothing
    /// ([`crate::tombstone_applies`]).
    fn tombstone_applies(
        &self,
        journal: &Journal,
        t: &Tombstone,
        ttl_ms: u64,
        now_ms: u64,
    ) -> bool {
        self.with_held(journal, &t.key, |held| {
            crate::tombstone_applies(t, held, ttl_ms, now_ms)
        })
    }

    /// Notes a tombstone queued for `key` (in `fresh_tombs` until committed).
    fn add_tomb(&mut self, key: &str, tomb: Tomb) {
        let fp = key_fingerprint(key);
        self.tomb_filter.insert(fp);
        if let Some(added) = &mut self.tomb_filter_added {
            added.push(fp);
        }
        self.oldest_tomb_ms = self.oldest_tomb_ms.min(tomb.deleted_at_ms);
        self.fresh_tombs.insert(key.to_owned(), tomb);
    }

    /// Whether `key`'s current entry is the object version `seq`.
    fn holds_version(&self, key: &str, seq: u64) -> bool {
        self.index.seq(key) == Some(seq)
    }

    fn mem_remove(&mut self, key: &str) {
        if self.mem_bodies.remove(key).is_some() {
            self.mem.remove(key);
        }
    }
}

struct Core {
    cfg: ShardConfig,
    device: AnyDevice,
    hlc: Hlc,
    metrics: Arc<ShardMetrics>,
    journal: Journal,
    next_seq: Cell<u64>,
    /// Seqs of writes begun but not yet queued to the journal: they will commit after
    /// records with higher seqs, so reads for peers must not pass them.
    writing: RefCell<BTreeSet<u64>>,
    /// Highest record seq queued to the journal.
    last_queued: Cell<u64>,
    state: RefCell<State>,
    pending_notify: tokio::sync::Notify,
    /// The sync log's entries (mirror of the `synclog` db).
    sync: RefCell<synclog::SyncState>,
    /// Wakes the syncer when entries are added.
    sync_notify: tokio::sync::Notify,
    /// Reused block buffers: a fresh zeroed 256 KiB allocation per write costs more than
    /// a small write itself and fragments the heap.
    block_bufs: RefCell<Vec<AlignedBuf>>,
}

/// Block buffers kept for reuse per shard (16 MiB at most).
const BLOCK_BUF_POOL: usize = 64;

fn corrupt(key: &str, m: Mismatch) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        what: m.what,
        expected: m.expected,
        actual: m.actual,
    }
}

/// `Corrupt` unless `expected == actual`.
fn check_eq(
    key: &str,
    what: &'static str,
    expected: String,
    actual: String,
) -> Result<(), StoreError> {
    if expected == actual {
        return Ok(());
    }
    Err(corrupt(
        key,
        Mismatch {
            what,
            expected,
            actual,
        },
    ))
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN.min(format::MAX_KEY_LEN) {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("key length {} outside 1..={MAX_KEY_LEN}", key.len()),
        )));
    }
    Ok(())
}

impl Core {
    fn take_block_buf(&self) -> AlignedBuf {
        self.block_bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| AlignedBuf::with_capacity(BLOCK_SIZE as usize))
    }

    fn return_block_buf(&self, mut buf: AlignedBuf) {
        let mut pool = self.block_bufs.borrow_mut();
        if pool.len() < BLOCK_BUF_POOL && buf.capacity() == BLOCK_SIZE as usize {
            buf.clear();
            pool.push(buf);
        }
    }

    fn object_path(&self, seq: u64) -> PathBuf {
        object_path(&self.cfg.dir, seq)
    }

    /// Where a version's body can be read off the request path (uploads, repairs).
    fn body_at(&self, meta: &ObjectMeta) -> BodyAt {
        if meta.inline {
            BodyAt::Journal
        } else {
            BodyAt::File {
                path: self.object_path(meta.seq),
                offset: BODY_OFFSET,
            }
        }
    }

    fn alloc_seq(&self) -> u64 {
        let s = self.next_seq.get();
        self.next_seq.set(s + 1);
        s
    }

    fn record(&self, kind: RecordKind) -> Op {
        Op::Record(Record {
            seq: self.alloc_seq(),
            hlc: self.hlc.now(),
            kind,
        })
    }

    fn submit(&self, ops: Vec<Op>) -> Result<Ack, StoreError> {
        let next = self.next_seq.get();
        let unqueued = self.writing.borrow().first().copied().unwrap_or(next);
        let through = unqueued.min(next).saturating_sub(1);
        for op in &ops {
            if let Op::Record(r) = op {
                self.last_queued.set(self.last_queued.get().max(r.seq));
            }
        }
        self.journal.submit(ops, next, self.hlc.last(), through)
    }

    /// A write's seq will never be used (abandoned, failed). If it held back reads for
    /// peers, an empty batch moves their horizon past it without waiting for the next write.
    fn abandon_seq(&self, seq: u64) {
        let was_first = {
            let mut w = self.writing.borrow_mut();
            let first = w.first() == Some(&seq);
            w.remove(&seq);
            first
        };
        if was_first {
            // Closed journal: nothing left to read anyway.
            let _ = self.submit(Vec::new());
        }
    }

    async fn remove_files(&self, files: Vec<PathBuf>) {
        for f in files {
            match self.device.remove(&f).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %f.display(), error = %e, "removing object file"),
            }
        }
    }

    fn refresh_metrics(&self, st: &State) {
        let m = &self.metrics;
        m.objects
            .store(st.index.disk().len() as u64, Ordering::Relaxed);
        m.tombstones.store(st.tombstones, Ordering::Relaxed);
        m.disk_bytes
            .store(st.index.disk().used(), Ordering::Relaxed);
        m.pinned_bytes
            .store(st.index.disk().pinned_bytes(), Ordering::Relaxed);
        m.memory_bytes.store(st.mem.used(), Ordering::Relaxed);
        m.memory_objects
            .store(st.mem_bodies.len() as u64, Ordering::Relaxed);
        m.pending_uploads
            .store(st.pending.len() as u64, Ordering::Relaxed);
    }

    /// Removes an object from index, tiers and pending; returns its seq and its file
    /// (none for an inline body: the journal drops it with the entry).
    fn unlink_object(&self, st: &mut State, key: &str) -> Option<(u64, Option<PathBuf>)> {
        let slot = st.index.remove(key)?;
        st.mem_remove(key);
        if st
            .pending
            .get(key)
            .is_some_and(|p| p.kind == PendingRecKind::Put)
        {
            st.clear_pending(key);
        }
        let path = (!slot.inline()).then(|| self.object_path(slot.seq()));
        Some((slot.seq(), path))
    }
}

fn object_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join("objects")
        .join(format!("{:02x}", seq & 0xff))
        .join(format!("{seq:016x}"))
}

impl Shard {
    pub fn id(&self) -> u16 {
        self.core.cfg.shard_id
    }

    pub fn metrics(&self) -> Arc<ShardMetrics> {
        self.core.metrics.clone()
    }

    pub fn hlc(&self) -> &Hlc {
        &self.core.hlc
    }

    /// Journal records with seq > `after`, at most `limit` exported changes. Internal
    /// records (evictions, forgets, corruption, expired tombstones) are skipped but still
    /// advance `next_after`. Stops short of writes still in progress (see [`ChangeBatch`]),
    /// and after reading 4096 records (to bound the time spent on the shard thread): a
    /// batch may hold fewer than `limit` changes, even none, with `next_after < last_seq`;
    /// ask again from `next_after`.
    pub fn changes_since(&self, after: u64, limit: usize) -> Result<ChangeBatch, StoreError> {
        let r = self.core.journal.read_changes(after, limit)?;
        Ok(ChangeBatch {
            changes: r.changes,
            next_after: r.next_after,
            last_seq: self.last_seq(),
            gap: r.gap,
        })
    }

    /// A page of the index in key order (objects and tombstones), after `after_key`: how a
    /// peer that missed trimmed journal records resyncs. Pages reflect every record up to
    /// [`IndexPage::through`](crate::IndexPage::through); resume the journal from there.
    pub fn index_page(
        &self,
        after_key: Option<&str>,
        limit: usize,
    ) -> Result<crate::IndexPage, StoreError> {
        self.core.journal.read_index_page(after_key, limit)
    }

    /// Highest journal seq committed or queued.
    pub fn last_seq(&self) -> u64 {
        self.core.last_queued.get()
    }

    /// Last-writer-wins test: true when version (hlc, etag) is newer than what the shard
    /// holds for `key` (nothing, an older version, or an older tombstone). Ordered by hlc,
    /// then etag; a tombstone with hlc >= the version's hlc wins.
    pub fn is_newer(&self, key: &str, hlc: u64, etag: &str) -> bool {
        self.core
            .state
            .borrow()
            .is_newer(&self.core.journal, key, hlc, etag)
    }

    /// Whether the journal holds an inline body for `key` (tests).
    #[cfg(test)]
    pub(crate) async fn inline_body_stored(&self, key: &str) -> bool {
        self.core.journal.read_body(key).await.unwrap().is_some()
    }

    /// Overwrites `key`'s inline body with one that claims another version (tests: a
    /// damaged or misplaced body must be caught on read).
    #[cfg(test)]
    pub(crate) async fn damage_inline_body(&self, key: &str) {
        let ack = self
            .core
            .submit(vec![Op::PutBody {
                key: key.to_owned(),
                seq: u64::MAX,
                body: Bytes::from_static(b"not the body"),
            }])
            .unwrap();
        Journal::wait(ack).await.unwrap();
    }

    /// Flushes and closes the journal.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.core.journal.close().await;
        Ok(())
    }
}

//! The shard: index, stores, journal and eviction wired together.
//!
//! State lives in one `RefCell<State>` borrowed only between `.await`s. A mutation
//! (write finish, delete, eviction, ...) checks and updates the in-memory index and
//! queues its journal batch in one synchronous step, then awaits the writer thread's
//! durable commit before acknowledging the caller and deleting replaced files. Queueing
//! in the same step as the index update keeps the index and LMDB in the same order when
//! several tasks of the shard change the same key concurrently.

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
    Ack, Journal, Op, PendingRec, PendingRecKind, Record, RecordKind, StoredEntry,
};
use crate::{
    ChangeBatch, Hlc, Lookup, ObjectMeta, PendingKind, PendingOp, Provenance, RecoveryReport,
    NoSpaceReason, ShardConfig, ShardMetrics, StoreError, Tombstone, WriteAttrs,
};

/// LMDB's default maximum key size.
const MAX_KEY_LEN: usize = 511;

/// One shard. `!Send`: lives on its own monoio thread; methods take `&self`
/// (interior mutability, never borrowed across an `.await`) so that many request
/// tasks on the same thread can share it through an `Rc<Shard>`.
pub struct Shard {
    core: Rc<Core>,
}

enum Entry {
    Object(Rc<ObjectMeta>),
    Tombstone(Tombstone),
}

impl Entry {
    fn seq(&self) -> u64 {
        match self {
            Entry::Object(m) => m.seq,
            Entry::Tombstone(t) => t.seq,
        }
    }

    fn hlc(&self) -> u64 {
        match self {
            Entry::Object(m) => m.hlc,
            Entry::Tombstone(t) => t.hlc,
        }
    }
}

struct State {
    index: HashMap<String, Entry>,
    /// Disk tier: weights are body sizes; pinned while not in the origin.
    disk: S3Fifo<String>,
    /// Bytes reserved by writes in progress.
    reserved: u64,
    /// Memory tier: bodies of small objects, by key, tagged with their seq.
    mem: S3Fifo<String>,
    mem_bodies: HashMap<String, (u64, Bytes)>,
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

    /// Last-writer-wins: is version (hlc, etag) newer than what the index holds for `key`?
    /// A tombstone beats a version with a lower or equal hlc.
    fn is_newer(&self, key: &str, hlc: u64, etag: &str) -> bool {
        match self.index.get(key) {
            None => true,
            Some(Entry::Object(m)) => (hlc, etag) > (m.hlc, m.etag.as_str()),
            Some(Entry::Tombstone(t)) => hlc > t.hlc,
        }
    }

    /// Last-writer-wins for a tombstone: it beats a version with a lower or equal hlc.
    fn tombstone_is_newer(&self, t: &Tombstone) -> bool {
        match self.index.get(&t.key) {
            None => true,
            Some(Entry::Object(m)) => t.hlc >= m.hlc,
            Some(Entry::Tombstone(old)) => t.hlc > old.hlc,
        }
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
    /// Reused block buffers: a fresh zeroed 256 KiB allocation per write costs more than
    /// a small write itself and fragments the heap.
    block_bufs: RefCell<Vec<AlignedBuf>>,
}

/// A tombstone put in the index whose journal batch is queued.
struct QueuedTombstone {
    ack: Ack,
    /// The replaced object's file, removed once the tombstone is durable.
    files: Vec<PathBuf>,
    /// An origin delete was queued.
    queued: bool,
    tomb: Tombstone,
}

/// How far a writer's disk reservation may run ahead of the bytes it has received, when
/// it declared its size: one eviction batch per this many bytes, and a writer that stops
/// sending holds at most this much beyond what it wrote.
pub(crate) const RESERVE_AHEAD: u64 = BLOCK_SIZE;

/// Block buffers kept for reuse per shard (16 MiB at most).
const BLOCK_BUF_POOL: usize = 64;

/// An object file opened and verified up to its checksum table.
struct OpenObject {
    file: AnyFile,
    header: Header,
    table: Vec<u32>,
}

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
        m.objects.store(st.disk.len() as u64, Ordering::Relaxed);
        m.tombstones.store(st.tombstones, Ordering::Relaxed);
        m.disk_bytes.store(st.disk.used(), Ordering::Relaxed);
        m.pinned_bytes
            .store(st.disk.pinned_bytes(), Ordering::Relaxed);
        m.memory_bytes.store(st.mem.used(), Ordering::Relaxed);
        m.memory_objects
            .store(st.mem_bodies.len() as u64, Ordering::Relaxed);
        m.pending_uploads
            .store(st.pending.len() as u64, Ordering::Relaxed);
    }

    /// Removes an object from index, tiers and pending; returns its file.
    fn unlink_object(&self, st: &mut State, key: &str) -> Option<(Rc<ObjectMeta>, PathBuf)> {
        match st.index.get(key) {
            Some(Entry::Object(_)) => {}
            _ => return None,
        }
        let Some(Entry::Object(meta)) = st.index.remove(key) else {
            unreachable!()
        };
        st.disk.remove(key);
        st.mem_remove(key);
        if st
            .pending
            .get(key)
            .is_some_and(|p| p.kind == PendingRecKind::Put)
        {
            st.clear_pending(key);
        }
        let path = self.object_path(meta.seq);
        Some((meta, path))
    }

    /// Reserves `n` bytes of disk for a write in progress, evicting unpinned objects.
    /// The evictions are journaled; await the returned ack, then remove the files.
    fn reserve(&self, st: &mut State, n: u64) -> Result<Option<(Ack, Vec<PathBuf>)>, StoreError> {
        let victims = st.disk.make_room(st.reserved + n).map_err(|e| {
            let free = st
                .disk
                .capacity()
                .saturating_sub(st.disk.used() + st.reserved);
            StoreError::InsufficientStorage {
                needed: n,
                available: e.evictable + free,
                reason: NoSpaceReason::ShardCapacity,
            }
        })?;
        st.reserved += n;
        if victims.is_empty() {
            return Ok(None);
        }
        let mut ops = Vec::new();
        let mut files = Vec::new();
        for key in victims {
            let Some(Entry::Object(meta)) = st.index.remove(&key) else {
                continue;
            };
            st.mem_remove(&key);
            self.metrics.evictions.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .evicted_bytes
                .fetch_add(meta.size, Ordering::Relaxed);
            ops.push(Op::RemoveEntry(key.clone()));
            ops.push(self.record(RecordKind::Evicted { key, seq: meta.seq }));
            files.push(self.object_path(meta.seq));
        }
        self.refresh_metrics(st);
        Ok(Some((self.submit(ops)?, files)))
    }

    /// Refuses a write that declares `n` bytes when they cannot fit even after evicting
    /// every unpinned object (pinned objects and other writes' reservations stay).
    /// Reserves and evicts nothing: writes reserve as their bytes arrive.
    fn check_fits(&self, n: u64) -> Result<(), StoreError> {
        let st = self.state.borrow();
        let room = st
            .disk
            .capacity()
            .saturating_sub(st.disk.pinned_bytes() + st.reserved);
        if n > room {
            return Err(StoreError::InsufficientStorage {
                needed: n,
                available: room,
                reason: NoSpaceReason::ShardCapacity,
            });
        }
        Ok(())
    }

    fn release(&self, n: u64) {
        let mut st = self.state.borrow_mut();
        st.reserved = st.reserved.saturating_sub(n);
    }

    fn mem_admit(&self, st: &mut State, key: &str, seq: u64, body: Bytes) {
        let len = body.len() as u64;
        if len > self.cfg.memory_object_max || len > self.cfg.memory_capacity {
            return;
        }
        st.mem_remove(key);
        let Ok(victims) = st.mem.make_room(len) else {
            return;
        };
        for v in victims {
            st.mem_bodies.remove(&v);
        }
        st.mem.insert(key.to_owned(), len, false);
        st.mem_bodies.insert(key.to_owned(), (seq, body));
    }

    fn mem_get(&self, key: &str, seq: u64, touch: bool) -> Option<Bytes> {
        let mut st = self.state.borrow_mut();
        let body = st
            .mem_bodies
            .get(key)
            .filter(|(s, _)| *s == seq)
            .map(|(_, b)| b.clone());
        if body.is_some() && touch {
            st.mem.access(key);
        }
        body
    }

    /// Counts and logs a verification failure, drops the object version from the index
    /// (journaled) and deletes its file. Returns the error to hand to the caller.
    async fn drop_corrupt(&self, meta: &ObjectMeta, err: StoreError) -> StoreError {
        let StoreError::Corrupt {
            what,
            expected,
            actual,
            ..
        } = &err
        else {
            return err;
        };
        self.metrics
            .checksum_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            shard = self.cfg.shard_id, key = %meta.key, seq = meta.seq, what = *what,
            expected = %expected, actual = %actual,
            "object failed verification; dropping it"
        );
        let ack = {
            let mut st = self.state.borrow_mut();
            let current =
                matches!(st.index.get(&meta.key), Some(Entry::Object(m)) if m.seq == meta.seq);
            if current {
                self.unlink_object(&mut st, &meta.key);
                let ops = vec![
                    Op::RemoveEntry(meta.key.clone()),
                    Op::RemovePending(meta.key.clone()),
                    self.record(RecordKind::Corrupt {
                        key: meta.key.clone(),
                        seq: meta.seq,
                    }),
                ];
                self.refresh_metrics(&st);
                self.submit(ops).ok()
            } else {
                None
            }
        };
        if let Some(ack) = ack {
            if let Err(e) = Journal::wait(ack).await {
                tracing::error!(error = %e, "journaling the removal of a corrupt object");
            }
        }
        self.remove_files(vec![self.object_path(meta.seq)]).await;
        err
    }

    /// Opens an object file and verifies its header against `meta` and its table.
    async fn open_object(&self, meta: &ObjectMeta) -> Result<OpenObject, StoreError> {
        let key = &meta.key;
        let file = match self.device.open(&self.object_path(meta.seq)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(corrupt(
                    key,
                    Mismatch::new("data file", "present", "missing"),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let (res, buf) = file
            .read_full_at(AlignedBuf::with_capacity(HEADER_SIZE), 0, HEADER_SIZE)
            .await;
        res?;
        let header = Header::decode(buf.as_slice()).map_err(|m| corrupt(key, m))?;
        let check = |what, expected, actual| check_eq(key, what, expected, actual);
        check("header key", key.clone(), header.key.clone())?;
        check("header seq", meta.seq.to_string(), header.seq.to_string())?;
        check(
            "body size",
            meta.size.to_string(),
            header.body_size.to_string(),
        )?;
        check(
            "body checksum",
            format!("{:08x}", meta.crc32c),
            format!("{:08x}", header.body_crc),
        )?;
        let tlen = format::table_len(header.n_blocks);
        let mut table = Vec::new();
        if tlen > 0 {
            let want = align_up(tlen);
            let (res, buf) = file
                .read_full_at(AlignedBuf::with_capacity(want), header.table_off, want)
                .await;
            let got = res?;
            if got < tlen {
                return Err(corrupt(
                    key,
                    Mismatch::new("checksum table length", tlen, got),
                ));
            }
            let crc = crc32c::crc32c(&buf.as_slice()[..tlen]);
            check(
                "checksum table",
                format!("{:08x}", header.table_crc),
                format!("{crc:08x}"),
            )?;
            table = format::decode_table(buf.as_slice(), header.n_blocks);
        }
        Ok(OpenObject {
            file,
            header,
            table,
        })
    }

    /// Reads block `i` into `buf` and verifies it; returns the buffer and the block's
    /// body length (`buf.as_slice()[..len]` is the verified data).
    async fn read_block(
        obj: &OpenObject,
        i: u64,
        buf: AlignedBuf,
    ) -> Result<(AlignedBuf, usize), StoreError> {
        let key = &obj.header.key;
        let start = i * BLOCK_SIZE;
        let len = (obj.header.body_size - start).min(BLOCK_SIZE) as usize;
        let want = align_up(len);
        let (res, buf) = obj.file.read_full_at(buf, BODY_OFFSET + start, want).await;
        let got = res?;
        if got < len {
            return Err(corrupt(
                key,
                Mismatch::new("block length", format!("{len} (block {i})"), got),
            ));
        }
        let crc = crc32c::crc32c(&buf.as_slice()[..len]);
        let expected = obj.table[i as usize];
        if crc != expected {
            return Err(corrupt(
                key,
                Mismatch::new(
                    "block checksum",
                    format!("{expected:08x} (block {i})"),
                    format!("{crc:08x}"),
                ),
            ));
        }
        Ok((buf, len))
    }

    async fn read_all_inner(&self, meta: &ObjectMeta) -> Result<Bytes, StoreError> {
        let obj = self.open_object(meta).await?;
        let mut out = BytesMut::with_capacity(meta.size as usize);
        let mut buf = AlignedBuf::with_capacity(BLOCK_SIZE as usize);
        for i in 0..obj.header.n_blocks {
            let (b, len) = Self::read_block(&obj, i, buf).await?;
            out.extend_from_slice(&b.as_slice()[..len]);
            buf = b;
        }
        Ok(out.freeze())
    }
}

fn object_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join("objects")
        .join(format!("{:02x}", seq & 0xff))
        .join(format!("{seq:016x}"))
}

impl Shard {
    /// Opens (or creates) the shard in `cfg.dir`: opens the journal, rebuilds the
    /// in-memory index, removes orphaned data files left by writes that never committed.
    pub async fn open(cfg: ShardConfig) -> Result<(Shard, RecoveryReport), StoreError> {
        let started = Instant::now();
        let objects_dir = cfg.dir.join("objects");
        for i in 0..256 {
            std::fs::create_dir_all(objects_dir.join(format!("{i:02x}")))?;
        }
        let metrics = Arc::new(ShardMetrics::default());
        metrics
            .disk_capacity
            .store(cfg.disk_capacity, Ordering::Relaxed);
        metrics
            .memory_capacity
            .store(cfg.memory_capacity, Ordering::Relaxed);
        let (journal, rec) = Journal::open(
            &cfg.dir.join("journal"),
            cfg.lmdb_map_size,
            cfg.journal_retain,
            metrics.clone(),
            cfg.shard_id,
        )?;

        let mut report = RecoveryReport::default();
        let mut st = State {
            index: HashMap::with_capacity(rec.entries.len()),
            disk: S3Fifo::new(cfg.disk_capacity),
            reserved: 0,
            mem: S3Fifo::new(cfg.memory_capacity),
            mem_bodies: HashMap::new(),
            pending: HashMap::new(),
            pending_order: BTreeMap::new(),
            tombstones: 0,
        };
        let mut max_seq = rec.last_record_seq;
        let mut max_hlc = rec.hlc;
        let mut live = HashSet::with_capacity(rec.entries.len());
        for e in rec.entries {
            match e {
                StoredEntry::Object(m) => {
                    max_seq = max_seq.max(m.seq);
                    max_hlc = max_hlc.max(m.hlc);
                    live.insert(m.seq);
                    st.disk.insert(m.key.clone(), m.size, !m.in_origin);
                    report.objects += 1;
                    st.index.insert(m.key.clone(), Entry::Object(Rc::new(m)));
                }
                StoredEntry::Tombstone(t) => {
                    max_seq = max_seq.max(t.seq);
                    max_hlc = max_hlc.max(t.hlc);
                    report.tombstones += 1;
                    st.tombstones += 1;
                    st.index.insert(t.key.clone(), Entry::Tombstone(t));
                }
            }
        }
        for (key, mut p) in rec.pending {
            max_seq = max_seq.max(p.seq);
            report.pending += 1;
            if p.hlc == 0 {
                // Written before pending records carried the hlc.
                p.hlc = match st.index.get(&key) {
                    Some(e) if e.seq() == p.seq => e.hlc(),
                    _ => 0,
                };
            }
            st.set_pending(&key, p);
        }

        // Files of writes that crashed before their commit.
        for i in 0..256 {
            for de in std::fs::read_dir(objects_dir.join(format!("{i:02x}")))? {
                let de = de?;
                let name = de.file_name();
                let seq = name.to_str().and_then(|n| u64::from_str_radix(n, 16).ok());
                if seq.is_some_and(|s| live.contains(&s)) {
                    continue;
                }
                match std::fs::remove_file(de.path()) {
                    Ok(()) => report.orphans_removed += 1,
                    Err(e) => {
                        tracing::warn!(path = %de.path().display(), error = %e, "removing orphan")
                    }
                }
            }
        }

        let core = Core {
            device: AnyDevice::new(cfg.device),
            hlc: Hlc::starting_after(max_hlc),
            metrics,
            journal,
            next_seq: Cell::new(rec.next_seq.max(max_seq + 1).max(1)),
            writing: RefCell::new(BTreeSet::new()),
            last_queued: Cell::new(rec.last_record_seq),
            state: RefCell::new(st),
            pending_notify: tokio::sync::Notify::new(),
            cfg,
            block_bufs: RefCell::new(Vec::new()),
        };
        core.refresh_metrics(&core.state.borrow());
        report.elapsed = started.elapsed();
        tracing::info!(
            shard = core.cfg.shard_id, objects = report.objects, tombstones = report.tombstones,
            pending = report.pending, orphans = report.orphans_removed,
            device = ?core.device.active_kind(), direct_io = core.device.direct_io(),
            elapsed_ms = report.elapsed.as_millis() as u64, "shard recovered"
        );
        Ok((
            Shard {
                core: Rc::new(core),
            },
            report,
        ))
    }

    pub fn id(&self) -> u16 {
        self.core.cfg.shard_id
    }

    pub fn metrics(&self) -> Arc<ShardMetrics> {
        self.core.metrics.clone()
    }

    pub fn hlc(&self) -> &Hlc {
        &self.core.hlc
    }

    fn lookup_inner(&self, key: &str, count: bool) -> Lookup {
        let core = &self.core;
        let mut st = core.state.borrow_mut();
        let m = &core.metrics;
        match st.index.get(key) {
            Some(Entry::Object(meta)) => {
                let meta = meta.clone();
                let body = st
                    .mem_bodies
                    .get(key)
                    .filter(|(s, _)| *s == meta.seq)
                    .map(|(_, b)| b.clone());
                if count {
                    m.hits.fetch_add(1, Ordering::Relaxed);
                    st.disk.access(key);
                    if body.is_some() {
                        m.memory_hits.fetch_add(1, Ordering::Relaxed);
                        st.mem.access(key);
                    }
                }
                Lookup::Hit { meta, body }
            }
            Some(Entry::Tombstone(t)) => {
                if count {
                    m.hits.fetch_add(1, Ordering::Relaxed);
                }
                Lookup::Deleted(t.clone())
            }
            None => {
                if count {
                    m.misses.fetch_add(1, Ordering::Relaxed);
                }
                Lookup::Miss
            }
        }
    }

    /// Looks a key up; counts a hit or a miss (a tombstone counts as a hit); touches eviction state.
    pub fn lookup(&self, key: &str) -> Lookup {
        self.lookup_inner(key, true)
    }

    /// Looks a key up without counting or touching eviction state.
    pub fn peek(&self, key: &str) -> Lookup {
        self.lookup_inner(key, false)
    }

    /// Reads and verifies a whole object (any size the caller is willing to hold) and,
    /// if small enough, admits it to the memory tier. On a checksum mismatch the object is
    /// dropped from the index (journaled), counted, and `Corrupt` returned.
    pub async fn read_all(&self, meta: &ObjectMeta) -> Result<Bytes, StoreError> {
        let core = &self.core;
        if let Some(b) = core.mem_get(&meta.key, meta.seq, true) {
            return Ok(b);
        }
        match core.read_all_inner(meta).await {
            Ok(body) => {
                let mut st = core.state.borrow_mut();
                let current =
                    matches!(st.index.get(&meta.key), Some(Entry::Object(m)) if m.seq == meta.seq);
                if current {
                    core.mem_admit(&mut st, &meta.key, meta.seq, body.clone());
                    core.refresh_metrics(&st);
                }
                Ok(body)
            }
            Err(e) => Err(core.drop_corrupt(meta, e).await),
        }
    }

    /// Opens a streaming reader over `range` of the object's body. Each chunk it yields
    /// has been checked against its block checksum. The range is clamped to the body.
    pub async fn open_reader(
        &self,
        meta: &ObjectMeta,
        range: Range<u64>,
    ) -> Result<ObjectReader, StoreError> {
        let core = &self.core;
        let end = range.end.min(meta.size);
        let start = range.start.min(end);
        let source = if let Some(b) = core.mem_get(&meta.key, meta.seq, true) {
            Source::Memory(b)
        } else {
            match core.open_object(meta).await {
                Ok(obj) => Source::File(obj, None),
                Err(e) => return Err(core.drop_corrupt(meta, e).await),
            }
        };
        Ok(ObjectReader {
            core: core.clone(),
            meta: meta.clone(),
            source,
            pos: start,
            end,
        })
    }

    /// Starts writing a new version of `key`. `expected_len`, when known, is checked up
    /// front (`InsufficientStorage` when it cannot fit even after evicting every unpinned
    /// object) but not reserved: disk space is reserved (evicting as needed) as bytes
    /// arrive, at most [`RESERVE_AHEAD`] bytes ahead of them, so a writer that declares a
    /// large size and sends nothing evicts nothing and holds nothing.
    pub async fn begin_write(
        self: &Rc<Self>,
        key: &str,
        expected_len: Option<u64>,
    ) -> Result<ObjectWriter, StoreError> {
        check_key(key)?;
        let core = &self.core;
        if let Some(n) = expected_len {
            core.check_fits(n)?;
        }
        let reserved = 0;
        let seq = core.alloc_seq();
        core.writing.borrow_mut().insert(seq);
        let base = core.state.borrow().index.get(key).map(Entry::seq);
        let path = core.object_path(seq);
        let file = match core.device.create(&path).await {
            Ok(f) => f,
            Err(e) => {
                core.release(reserved);
                core.abandon_seq(seq);
                return Err(StoreError::from_io(e, "creating an object file", 0));
            }
        };
        Ok(ObjectWriter {
            shard: self.clone(),
            key: key.to_owned(),
            seq,
            path,
            file: Some(file),
            buf: Some(core.take_block_buf()),
            written: 0,
            reserved,
            expected_len,
            table: Vec::new(),
            body_crc: 0,
            md5: Md5::new(),
            small: Some(BytesMut::new()),
            base,
            done: false,
        })
    }

    /// Writes a durable tombstone. With `level >= 1` an origin delete is queued as pending.
    pub async fn delete(&self, key: &str, level: u8) -> Result<Tombstone, StoreError> {
        check_key(key)?;
        let core = &self.core;
        let tomb = {
            let mut st = core.state.borrow_mut();
            let tomb = Tombstone {
                key: key.to_owned(),
                hlc: core.hlc.now(),
                seq: core.alloc_seq(),
                deleted_at_ms: wall_ms(),
                level,
            };
            let origin_delete = (level >= 1).then_some(0);
            self.queue_tombstone(&mut st, tomb, origin_delete)?
        };
        self.finish_tombstone(tomb).await
    }

    /// Applies a tombstone produced elsewhere if it is newer (last-writer-wins: it beats a
    /// version with a lower or equal hlc). Observes `t.hlc`. The stored tombstone keeps
    /// `t`'s hlc, deleted_at_ms and level but gets a local seq. If `origin_delete_after_ms`
    /// is `Some` and `t.level >= 1`, queues an origin delete the uploader may not start
    /// before that wall-clock time (ms since epoch). Returns true if applied.
    pub async fn apply_tombstone(
        &self,
        t: &Tombstone,
        origin_delete_after_ms: Option<u64>,
    ) -> Result<bool, StoreError> {
        check_key(&t.key)?;
        let core = &self.core;
        core.hlc.observe(t.hlc);
        let tomb = {
            let mut st = core.state.borrow_mut();
            if !st.tombstone_is_newer(t) {
                return Ok(false);
            }
            let tomb = Tombstone {
                seq: core.alloc_seq(),
                ..t.clone()
            };
            let origin_delete = origin_delete_after_ms.filter(|_| t.level >= 1);
            self.queue_tombstone(&mut st, tomb, origin_delete)?
        };
        self.finish_tombstone(tomb).await?;
        Ok(true)
    }

    /// Puts `tomb` in the index in place of whatever the key held and queues its journal
    /// batch; `origin_delete`: queue an origin delete not to start before this time (ms).
    fn queue_tombstone(
        &self,
        st: &mut State,
        tomb: Tombstone,
        origin_delete: Option<u64>,
    ) -> Result<QueuedTombstone, StoreError> {
        let core = &self.core;
        let key = tomb.key.as_str();
        let mut files = Vec::new();
        if let Some((_, path)) = core.unlink_object(st, key) {
            files.push(path);
        }
        if !matches!(
            st.index
                .insert(key.to_owned(), Entry::Tombstone(tomb.clone())),
            Some(Entry::Tombstone(_))
        ) {
            st.tombstones += 1;
        }
        let mut ops = vec![
            Op::PutEntry(key.to_owned(), StoredEntry::Tombstone(tomb.clone())),
            Op::Record(Record {
                seq: tomb.seq,
                hlc: tomb.hlc,
                kind: RecordKind::Delete(tomb.clone()),
            }),
        ];
        if let Some(not_before_ms) = origin_delete {
            let rec = PendingRec {
                seq: tomb.seq,
                kind: PendingRecKind::Delete,
                not_before_ms,
                hlc: tomb.hlc,
            };
            st.set_pending(key, rec.clone());
            ops.push(Op::PutPending(key.to_owned(), rec));
        } else if !st.pending.contains_key(key) {
            // unlink_object dropped a pending put, if any.
            ops.push(Op::RemovePending(key.to_owned()));
        }
        core.refresh_metrics(st);
        Ok(QueuedTombstone {
            ack: core.submit(ops)?,
            files,
            queued: origin_delete.is_some(),
            tomb,
        })
    }

    /// Waits for a tombstone's commit, then removes the replaced file.
    async fn finish_tombstone(&self, q: QueuedTombstone) -> Result<Tombstone, StoreError> {
        Journal::wait(q.ack).await?;
        self.core.remove_files(q.files).await;
        if q.queued {
            self.notify_pending();
        }
        Ok(q.tomb)
    }

    fn notify_pending(&self) {
        self.core.pending_notify.notify_waiters();
        self.core.pending_notify.notify_one();
    }

    /// Raises the consistency level of the stored version; queues an upload when it
    /// moves from 0 to >= 1 and the object is not in the origin yet.
    pub async fn upgrade(&self, key: &str, level: u8) -> Result<Rc<ObjectMeta>, StoreError> {
        let core = &self.core;
        let (ack, meta, queued) = {
            let mut st = core.state.borrow_mut();
            let Some(Entry::Object(old)) = st.index.get(key) else {
                return Err(StoreError::NotFound);
            };
            if level <= old.level {
                return Ok(old.clone());
            }
            let mut m = (**old).clone();
            m.level = level;
            let meta = Rc::new(m);
            st.index.insert(key.to_owned(), Entry::Object(meta.clone()));
            let mut ops = vec![
                Op::PutEntry(key.to_owned(), StoredEntry::Object((*meta).clone())),
                core.record(RecordKind::Upgrade {
                    key: key.to_owned(),
                    level,
                    hlc: meta.hlc,
                }),
            ];
            let queued = !meta.in_origin && !st.pending.contains_key(key);
            if queued {
                let rec = PendingRec {
                    seq: meta.seq,
                    kind: PendingRecKind::Put,
                    not_before_ms: 0,
                    hlc: meta.hlc,
                };
                st.set_pending(key, rec.clone());
                ops.push(Op::PutPending(key.to_owned(), rec));
            }
            core.refresh_metrics(&st);
            (core.submit(ops)?, meta, queued)
        };
        Journal::wait(ack).await?;
        if queued {
            self.notify_pending();
        }
        Ok(meta)
    }

    /// Raises the level of the version of `key` with this hlc, like [`Shard::upgrade`];
    /// no-op (false) when the key holds another version or already has that level.
    pub async fn upgrade_version(
        &self,
        key: &str,
        hlc: u64,
        level: u8,
    ) -> Result<bool, StoreError> {
        let matches = matches!(
            self.core.state.borrow().index.get(key),
            Some(Entry::Object(m)) if m.hlc == hlc && m.level < level
        );
        if !matches {
            return Ok(false);
        }
        // No await between the check and upgrade's own (synchronous) index update.
        self.upgrade(key, level).await?;
        Ok(true)
    }

    /// Pending origin operations that are due, oldest first (at most `limit`). Ops whose
    /// `not_before` lies in the future are left out until then.
    pub fn pending(&self, limit: usize) -> Vec<PendingOp> {
        let core = &self.core;
        let st = core.state.borrow();
        let now = wall_ms();
        let mut out = Vec::new();
        for (&seq, key) in &st.pending_order {
            if out.len() >= limit {
                break;
            }
            let Some(rec) = st.pending.get(key) else {
                continue;
            };
            if rec.not_before_ms > now {
                continue;
            }
            let kind = match rec.kind {
                PendingRecKind::Delete => PendingKind::Delete,
                PendingRecKind::Put => match st.index.get(key) {
                    Some(Entry::Object(m)) if m.seq == seq => PendingKind::Put {
                        path: core.object_path(seq),
                        offset: BODY_OFFSET,
                        len: m.size,
                        meta: (**m).clone(),
                    },
                    _ => continue,
                },
            };
            out.push(PendingOp {
                key: key.clone(),
                seq,
                kind,
            });
        }
        out
    }

    /// Earliest `not_before` (ms since epoch) of pending ops not due yet, for the
    /// uploader's sleep. Call it before [`Shard::pending`]: an op that comes due between
    /// the two calls is then returned by `pending` rather than missed by both.
    pub fn next_deferred_ms(&self) -> Option<u64> {
        let now = wall_ms();
        self.core
            .state
            .borrow()
            .pending
            .values()
            .map(|p| p.not_before_ms)
            .filter(|&t| t > now)
            .min()
    }

    /// The seq of the key's pending origin op (upload or delete), if one is queued.
    pub fn pending_seq(&self, key: &str) -> Option<u64> {
        self.core.state.borrow().pending.get(key).map(|p| p.seq)
    }

    /// Resolves when a pending op may be available (after a write or delete that queued one).
    pub async fn pending_changed(&self) {
        self.core.pending_notify.notified().await;
    }

    /// Marks a pending op done. If the key has since been rewritten (another seq), the newer
    /// op stays pending. A completed put marks the object `in_origin` and unpins it.
    pub async fn complete_pending(&self, key: &str, seq: u64) -> Result<(), StoreError> {
        let ack = {
            let mut st = self.core.state.borrow_mut();
            if st.pending.get(key).map(|p| p.seq) != Some(seq) {
                return Ok(());
            }
            let rec = st.clear_pending(key).expect("checked above");
            let put = rec.kind == PendingRecKind::Put;
            self.origin_has(&mut st, key, Some(rec), |m| put && m.seq == seq)?
        };
        Journal::wait(ack.expect("a pending op was cleared")).await
    }

    /// Marks the pending op of the entry of `key` whose hlc is `hlc` as done (the origin
    /// has it, e.g. a peer uploaded it): like [`Shard::complete_pending`] but matched by
    /// hlc. A version with that hlc also becomes `in_origin` (and unpinned) when it had no
    /// pending upload. Returns true if something changed.
    pub async fn mark_uploaded(&self, key: &str, hlc: u64) -> Result<bool, StoreError> {
        let ack = {
            let mut st = self.core.state.borrow_mut();
            let rec = if st.pending.get(key).is_some_and(|p| p.hlc == hlc) {
                st.clear_pending(key)
            } else {
                None
            };
            self.origin_has(&mut st, key, rec, |m| m.hlc == hlc)?
        };
        match ack {
            Some(ack) => Journal::wait(ack).await.map(|()| true),
            None => Ok(false),
        }
    }

    /// The origin has an entry of `key`: `cleared` is its pending op (already taken out of
    /// the in-memory state); the current object becomes `in_origin` if `object` matches it.
    /// Journals both and an Uploaded record; `None` when neither applied.
    fn origin_has(
        &self,
        st: &mut State,
        key: &str,
        cleared: Option<PendingRec>,
        object: impl Fn(&ObjectMeta) -> bool,
    ) -> Result<Option<Ack>, StoreError> {
        let core = &self.core;
        let mut ops = Vec::new();
        let mut done = None;
        if let Some(rec) = cleared {
            ops.push(Op::RemovePending(key.to_owned()));
            done = Some((rec.seq, rec.hlc));
        }
        if let Some(Entry::Object(old)) = st.index.get(key) {
            if !old.in_origin && object(old) {
                let mut m = (**old).clone();
                m.in_origin = true;
                done = Some((m.seq, m.hlc));
                ops.push(Op::PutEntry(key.to_owned(), StoredEntry::Object(m.clone())));
                st.index.insert(key.to_owned(), Entry::Object(Rc::new(m)));
                st.disk.set_pinned(&key.to_owned(), false);
            }
        }
        let Some((seq, hlc)) = done else {
            return Ok(None);
        };
        ops.push(core.record(RecordKind::Uploaded {
            key: key.to_owned(),
            seq,
            hlc,
        }));
        core.refresh_metrics(st);
        core.submit(ops).map(Some)
    }

    /// Drops the object (not a delete: no tombstone) — e.g. after the origin says it's gone.
    pub async fn forget(&self, key: &str) -> Result<(), StoreError> {
        let core = &self.core;
        let (ack, files) = {
            let mut st = core.state.borrow_mut();
            let mut files = Vec::new();
            match st.index.get(key) {
                None => return Ok(()),
                Some(Entry::Object(_)) => {
                    if let Some((_, path)) = core.unlink_object(&mut st, key) {
                        files.push(path);
                    }
                }
                Some(Entry::Tombstone(_)) => {
                    st.index.remove(key);
                    st.tombstones -= 1;
                }
            }
            st.clear_pending(key);
            let ops = vec![
                Op::RemoveEntry(key.to_owned()),
                Op::RemovePending(key.to_owned()),
                core.record(RecordKind::Forget {
                    key: key.to_owned(),
                }),
            ];
            core.refresh_metrics(&st);
            (core.submit(ops)?, files)
        };
        Journal::wait(ack).await?;
        core.remove_files(files).await;
        Ok(())
    }

    /// Removes expired tombstones (those without a pending origin delete). Returns how many.
    pub async fn sweep_tombstones(&self) -> Result<u64, StoreError> {
        self.sweep_tombstones_where(|_| true).await
    }

    /// Removes expired tombstones (TTL, no pending origin delete) for which `may_drop` is
    /// true, e.g. only those every peer has seen. Returns how many.
    pub async fn sweep_tombstones_where(
        &self,
        may_drop: impl Fn(&Tombstone) -> bool,
    ) -> Result<u64, StoreError> {
        let core = &self.core;
        let ttl_ms = core.cfg.tombstone_ttl.as_millis() as u64;
        let now = wall_ms();
        let ack = {
            let mut st = core.state.borrow_mut();
            let expired: Vec<(String, u64)> = st
                .index
                .iter()
                .filter_map(|(k, e)| match e {
                    Entry::Tombstone(t)
                        if t.deleted_at_ms.saturating_add(ttl_ms) <= now
                            && !st.pending.contains_key(k)
                            && may_drop(t) =>
                    {
                        Some((k.clone(), t.seq))
                    }
                    _ => None,
                })
                .collect();
            if expired.is_empty() {
                return Ok(0);
            }
            let mut ops = Vec::new();
            for (key, seq) in &expired {
                st.index.remove(key);
                st.tombstones -= 1;
                ops.push(Op::RemoveEntry(key.clone()));
                ops.push(core.record(RecordKind::TombstoneExpired {
                    key: key.clone(),
                    seq: *seq,
                }));
            }
            core.refresh_metrics(&st);
            (core.submit(ops)?, expired.len() as u64)
        };
        Journal::wait(ack.0).await?;
        Ok(ack.1)
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
        self.core.state.borrow().is_newer(key, hlc, etag)
    }

    /// Starts storing a replica of `meta` (a version produced on another node); finish it
    /// with [`ObjectWriter::finish_replica`]. `Ok(None)` when the local copy is as new or
    /// newer (see [`Shard::is_newer`]). Observes `meta.hlc`.
    pub async fn begin_replica(
        self: &Rc<Self>,
        meta: &ObjectMeta,
    ) -> Result<Option<ObjectWriter>, StoreError> {
        self.core.hlc.observe(meta.hlc);
        if !self.is_newer(&meta.key, meta.hlc, &meta.etag) {
            return Ok(None);
        }
        self.begin_write(&meta.key, Some(meta.size)).await.map(Some)
    }

    /// Flushes and closes the journal.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.core.journal.close().await;
        Ok(())
    }
}

enum Source {
    Memory(Bytes),
    File(OpenObject, Option<AlignedBuf>),
}

/// Streams verified chunks of one object's body. Keeps the file open, so an overwrite
/// or eviction of the key while streaming does not disturb it.
pub struct ObjectReader {
    core: Rc<Core>,
    meta: ObjectMeta,
    source: Source,
    pos: u64,
    end: u64,
}

impl ObjectReader {
    /// The next chunk of the requested range, or `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, StoreError>> {
        if self.pos >= self.end {
            return None;
        }
        let block = self.pos / BLOCK_SIZE;
        let block_start = block * BLOCK_SIZE;
        let from = (self.pos - block_start) as usize;
        let to = (self.end.min(block_start + BLOCK_SIZE) - block_start) as usize;
        let chunk = match &mut self.source {
            Source::Memory(b) => b.slice(block_start as usize + from..block_start as usize + to),
            Source::File(obj, spare) => {
                let buf = spare
                    .take()
                    .unwrap_or_else(|| AlignedBuf::with_capacity(BLOCK_SIZE as usize));
                match Core::read_block(obj, block, buf).await {
                    Ok((buf, _len)) => {
                        let chunk = Bytes::copy_from_slice(&buf.as_slice()[from..to]);
                        *spare = Some(buf);
                        chunk
                    }
                    Err(e) => {
                        self.pos = self.end;
                        return Some(Err(self.core.drop_corrupt(&self.meta, e).await));
                    }
                }
            }
        };
        self.pos = block_start + to as u64;
        Some(Ok(chunk))
    }
}

/// What must still hold when a finished write is committed.
enum Guard<'a> {
    /// Nothing: a client write always becomes the newest version.
    None,
    /// The key is unchanged since the write began (a read-through never resurrects a
    /// deleted key nor replaces a newer write).
    Base,
    /// The version is newer than what the key holds (last-writer-wins, for replicas).
    Newer { hlc: u64, etag: &'a str },
}

impl Guard<'_> {
    fn holds(&self, st: &State, key: &str, base: Option<u64>) -> bool {
        match self {
            Guard::None => true,
            Guard::Base => match st.index.get(key) {
                None => true,
                Some(Entry::Tombstone(_)) => false,
                Some(e) => Some(e.seq()) == base,
            },
            Guard::Newer { hlc, etag } => st.is_newer(key, *hlc, etag),
        }
    }
}

/// An in-progress write. Dropping it without `finish` abandons it (the file is removed).
pub struct ObjectWriter {
    shard: Rc<Shard>,
    key: String,
    seq: u64,
    path: PathBuf,
    file: Option<AnyFile>,
    buf: Option<AlignedBuf>,
    written: u64,
    /// Disk bytes reserved for this write (>= written).
    reserved: u64,
    /// The size the writer declared, if any: reservations run ahead of the bytes written
    /// up to it.
    expected_len: Option<u64>,
    table: Vec<u32>,
    body_crc: u32,
    md5: Md5,
    /// The body while it is small enough for the memory tier.
    small: Option<BytesMut>,
    /// Seq of the key's entry when the write began (for read-through supersession).
    base: Option<u64>,
    done: bool,
}

impl ObjectWriter {
    fn core(&self) -> &Core {
        &self.shard.core
    }

    /// Writes the full block in `buf` at its place in the file.
    async fn flush_block(&mut self) -> Result<(), StoreError> {
        let mut buf = self.buf.take().expect("writer buffer");
        let len = buf.len();
        self.table.push(crc32c::crc32c(buf.as_slice()));
        buf.pad_to_alignment();
        let pos = BODY_OFFSET + (self.table.len() as u64 - 1) * BLOCK_SIZE;
        let file = self.file.as_ref().expect("writer file");
        let (res, mut buf) = file.write_all_at(buf, pos).await;
        buf.clear();
        self.buf = Some(buf);
        res.map_err(|e| StoreError::from_io(e, "writing an object file", len as u64))?;
        debug_assert!(len as u64 == BLOCK_SIZE || self.written % BLOCK_SIZE == len as u64);
        Ok(())
    }

    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        let n = chunk.len() as u64;
        if self.written + n > self.reserved {
            // Reserve what arrived, plus up to RESERVE_AHEAD more of the declared size so
            // that a large body triggers one eviction batch per RESERVE_AHEAD, not per chunk.
            let exact = self.written + n - self.reserved;
            let ahead = self.expected_len.map_or(0, |declared| {
                declared.saturating_sub(self.reserved).min(RESERVE_AHEAD)
            });
            let (need, pending) = {
                let core = &self.shard.core;
                let mut st = core.state.borrow_mut();
                match core.reserve(&mut st, exact.max(ahead)) {
                    Ok(p) => (exact.max(ahead), p),
                    // The bytes at hand may still fit without the look-ahead.
                    Err(_) if ahead > exact => (exact, core.reserve(&mut st, exact)?),
                    Err(e) => return Err(e),
                }
            };
            self.reserved += need;
            if let Some((ack, files)) = pending {
                Journal::wait(ack).await?;
                self.core().remove_files(files).await;
            }
        }
        self.md5.update(&chunk);
        self.body_crc = crc32c::crc32c_append(self.body_crc, &chunk);
        self.written += n;
        let mem_max = self.core().cfg.memory_object_max;
        if let Some(small) = &mut self.small {
            if self.written <= mem_max {
                small.extend_from_slice(&chunk);
            } else {
                self.small = None;
            }
        }
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let buf = self.buf.as_mut().expect("writer buffer");
            let copied = buf.extend_from_slice(rest);
            rest = &rest[copied..];
            if buf.remaining() == 0 {
                self.flush_block().await?;
            }
        }
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Makes the object durable (data synced, journal committed) and visible.
    /// For fetched objects, returns `Superseded` if the key was written or deleted after
    /// `begin_write` (a read-through never resurrects a deleted key).
    pub async fn finish(mut self, attrs: WriteAttrs) -> Result<Rc<ObjectMeta>, StoreError> {
        let fetched = attrs.fetched.is_some();
        if fetched && self.superseded() {
            return Err(StoreError::Superseded);
        }
        self.write_out().await?;
        let md5 = std::mem::take(&mut self.md5);
        let (etag, last_modified_ms) = match &attrs.fetched {
            Some(f) => (f.etag.trim_matches('"').to_owned(), f.last_modified_ms),
            None => (hex::encode(md5.finalize()), wall_ms()),
        };
        let guard = if fetched { Guard::Base } else { Guard::None };
        let upload = (!fetched && attrs.level >= 1).then_some(0);
        self.commit(guard, upload, |core, size, crc32c, seq| ObjectMeta {
            key: String::new(),
            size,
            etag,
            crc32c,
            content_type: attrs.content_type,
            name: attrs.name,
            user_meta: attrs.user_meta,
            last_modified_ms,
            hlc: core.hlc.now(),
            seq,
            level: attrs.level,
            in_origin: fetched,
            provenance: if fetched {
                Provenance::Fetched
            } else {
                Provenance::Client
            },
            headers: attrs.headers,
        })
        .await
    }

    /// Finishes a replica begun with [`Shard::begin_replica`]: checks the body's size and
    /// CRC32C against `meta` (`Corrupt` with expected and actual values when they differ;
    /// nothing is stored), then stores it with `meta`'s attributes, hlc, level, origin
    /// state and provenance but a new local seq. `Superseded` if a newer version or
    /// tombstone of the key arrived meanwhile. A replica of a fetched object is in the
    /// origin. If `level >= 1` and not in the origin, queues an upload that may not start
    /// before `upload_after_ms` (ms since epoch; `None` = now).
    pub async fn finish_replica(
        mut self,
        meta: &ObjectMeta,
        upload_after_ms: Option<u64>,
    ) -> Result<Rc<ObjectMeta>, StoreError> {
        if meta.key != self.key {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("replica of {:?} finished as {:?}", meta.key, self.key),
            )));
        }
        let check = |what, expected, actual| check_eq(&meta.key, what, expected, actual);
        check(
            "replica body size",
            meta.size.to_string(),
            self.written.to_string(),
        )?;
        check(
            "replica body checksum",
            format!("{:08x}", meta.crc32c),
            format!("{:08x}", self.body_crc),
        )?;
        let guard = Guard::Newer {
            hlc: meta.hlc,
            etag: &meta.etag,
        };
        // Cheap early out before writing the file; re-checked at commit.
        if !guard.holds(&self.core().state.borrow(), &self.key, self.base) {
            return Err(StoreError::Superseded);
        }
        self.write_out().await?;
        let in_origin = meta.in_origin || meta.provenance == Provenance::Fetched;
        let upload = (meta.level >= 1 && !in_origin).then_some(upload_after_ms.unwrap_or(0));
        self.commit(guard, upload, |_, _, _, seq| ObjectMeta {
            seq,
            in_origin,
            ..meta.clone()
        })
        .await
    }

    /// Writes the tail block, checksum table and header, and syncs the file.
    async fn write_out(&mut self) -> Result<(), StoreError> {
        let size = self.written;
        let tail = self.buf.take().expect("writer buffer");
        let file = if self.table.is_empty() {
            // The whole body is in `tail`: header, body and checksum table go out in one
            // write (the common case for small objects: one I/O instead of three).
            if !tail.is_empty() {
                self.table.push(crc32c::crc32c(tail.as_slice()));
            }
            let header = Header::new(&self.key, self.seq, size, self.body_crc, &self.table);
            let table = format::encode_table(&self.table);
            let body_len = nearcache_file::align_up(tail.len());
            let mut all = AlignedBuf::with_capacity(
                format::HEADER_SIZE + body_len + nearcache_file::align_up(table.len()),
            );
            all.extend_from_slice(header.encode().as_slice());
            all.extend_from_slice(tail.as_slice());
            all.pad_to_alignment();
            all.extend_from_slice(&table);
            all.pad_to_alignment();
            self.core().return_block_buf(tail);
            let file = self.file.take().expect("writer file");
            let n = all.len() as u64;
            let (res, _) = file.write_all_at(all, 0).await;
            res.map_err(|e| StoreError::from_io(e, "writing an object file", n))?;
            file
        } else {
            // Tail block, checksum table, header.
            self.buf = Some(tail);
            if !self.buf.as_ref().expect("writer buffer").is_empty() {
                self.flush_block().await?;
            }
            if let Some(buf) = self.buf.take() {
                self.core().return_block_buf(buf);
            }
            let file = self.file.take().expect("writer file");
            let bytes = format::encode_table(&self.table);
            let mut tbuf = AlignedBuf::with_capacity(bytes.len());
            tbuf.extend_from_slice(&bytes);
            tbuf.pad_to_alignment();
            let n = tbuf.len() as u64;
            let (res, _) = file.write_all_at(tbuf, format::table_off(size)).await;
            res.map_err(|e| StoreError::from_io(e, "writing an object file", n))?;
            let header = Header::new(&self.key, self.seq, size, self.body_crc, &self.table);
            let (res, _) = file.write_all_at(header.encode(), 0).await;
            res.map_err(|e| StoreError::from_io(e, "writing an object file", HEADER_SIZE as u64))?;
            file
        };
        file.sync_data()
            .await
            .map_err(|e| StoreError::from_io(e, "syncing an object file", 0))?;
        Ok(())
    }

    /// Puts the written object in the index and tiers in place of whatever the key held
    /// (unless `guard` fails: `Superseded`), queues its journal batch and waits for it.
    /// `make` builds the meta from (core, size, crc32c, seq); its key is set here.
    /// `upload`: queue an origin upload not to start before this time (ms).
    async fn commit(
        mut self,
        guard: Guard<'_>,
        upload: Option<u64>,
        make: impl FnOnce(&Core, u64, u32, u64) -> ObjectMeta,
    ) -> Result<Rc<ObjectMeta>, StoreError> {
        let core = self.shard.core.clone();
        let (ack, meta, files) = {
            let mut st = core.state.borrow_mut();
            if !guard.holds(&st, &self.key, self.base) {
                return Err(StoreError::Superseded);
            }
            let size = self.written;
            let meta = Rc::new(ObjectMeta {
                key: self.key.clone(),
                ..make(&core, size, self.body_crc, self.seq)
            });
            let mut files = Vec::new();
            if let Some((_, path)) = core.unlink_object(&mut st, &self.key) {
                files.push(path);
            }
            if matches!(
                st.index
                    .insert(self.key.clone(), Entry::Object(meta.clone())),
                Some(Entry::Tombstone(_))
            ) {
                st.tombstones -= 1;
            }
            st.reserved = st.reserved.saturating_sub(self.reserved);
            self.reserved = 0;
            st.disk.insert(self.key.clone(), size, !meta.in_origin);
            let mut ops = vec![
                Op::PutEntry(self.key.clone(), StoredEntry::Object((*meta).clone())),
                Op::Record(Record {
                    seq: meta.seq,
                    hlc: meta.hlc,
                    kind: RecordKind::Put((*meta).clone()),
                }),
            ];
            if let Some(not_before_ms) = upload {
                let rec = PendingRec {
                    seq: self.seq,
                    kind: PendingRecKind::Put,
                    not_before_ms,
                    hlc: meta.hlc,
                };
                st.set_pending(&self.key, rec.clone());
                ops.push(Op::PutPending(self.key.clone(), rec));
            } else if !st.pending.contains_key(&self.key) {
                ops.push(Op::RemovePending(self.key.clone()));
            }
            if let Some(small) = self.small.take() {
                core.mem_admit(&mut st, &self.key, self.seq, small.freeze());
            }
            core.refresh_metrics(&st);
            self.done = true;
            core.writing.borrow_mut().remove(&self.seq);
            (core.submit(ops)?, meta, files)
        };
        Journal::wait(ack).await?;
        core.remove_files(files).await;
        if upload.is_some() {
            self.shard.notify_pending();
        }
        Ok(meta)
    }

    fn superseded(&self) -> bool {
        !Guard::Base.holds(&self.core().state.borrow(), &self.key, self.base)
    }

    pub async fn abort(self) {
        // Drop releases the reservation and removes the file.
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.core().return_block_buf(buf);
        }
        if self.done {
            return;
        }
        self.core().release(self.reserved);
        self.core().abandon_seq(self.seq);
        self.file.take();
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "removing abandoned write");
            }
        }
    }
}

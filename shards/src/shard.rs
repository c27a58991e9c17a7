//! The shard: index, stores, journal and eviction wired together.
//!
//! State lives in one `RefCell<State>` borrowed only between `.await`s. A mutation
//! (write finish, delete, eviction, ...) checks and updates the in-memory index and
//! queues its journal batch in one synchronous step, then awaits the writer thread's
//! durable commit before acknowledging the caller and deleting replaced files. Queueing
//! in the same step as the index update keeps the index and LMDB in the same order when
//! several tasks of the shard change the same key concurrently.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
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
    Hlc, Lookup, ObjectMeta, PendingKind, PendingOp, Provenance, RecoveryReport, ShardConfig,
    ShardMetrics, StoreError, Tombstone, WriteAttrs,
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
    state: RefCell<State>,
    pending_notify: tokio::sync::Notify,
    /// Reused block buffers: a fresh zeroed 256 KiB allocation per write costs more than
    /// a small write itself and fragments the heap.
    block_bufs: RefCell<Vec<AlignedBuf>>,
}

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
        self.journal
            .submit(ops, self.next_seq.get(), self.hlc.last())
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

    async fn reserve_and_wait(&self, n: u64) -> Result<(), StoreError> {
        let pending = {
            let mut st = self.state.borrow_mut();
            self.reserve(&mut st, n)?
        };
        if let Some((ack, files)) = pending {
            Journal::wait(ack).await?;
            self.remove_files(files).await;
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
        let check = |what, expected: String, actual: String| {
            if expected != actual {
                Err(corrupt(
                    key,
                    Mismatch {
                        what,
                        expected,
                        actual,
                    },
                ))
            } else {
                Ok(())
            }
        };
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
        for (key, p) in rec.pending {
            max_seq = max_seq.max(p.seq);
            report.pending += 1;
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

    /// Starts writing a new version of `key`. `expected_len`, when known, is reserved up
    /// front (evicting as needed, `InsufficientStorage` when only pinned objects remain).
    pub async fn begin_write(
        self: &Rc<Self>,
        key: &str,
        expected_len: Option<u64>,
    ) -> Result<ObjectWriter, StoreError> {
        check_key(key)?;
        let core = &self.core;
        if let Some(n) = expected_len {
            core.reserve_and_wait(n).await?;
        }
        let reserved = expected_len.unwrap_or(0);
        let seq = core.alloc_seq();
        let base = core.state.borrow().index.get(key).map(Entry::seq);
        let path = core.object_path(seq);
        let file = match core.device.create(&path).await {
            Ok(f) => f,
            Err(e) => {
                core.release(reserved);
                return Err(e.into());
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
        let (ack, files, tomb) = {
            let mut st = core.state.borrow_mut();
            let seq = core.alloc_seq();
            let hlc = core.hlc.now();
            let tomb = Tombstone {
                key: key.to_owned(),
                hlc,
                seq,
                deleted_at_ms: wall_ms(),
                level,
            };
            let mut files = Vec::new();
            if let Some((_, path)) = core.unlink_object(&mut st, key) {
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
                    seq,
                    hlc,
                    kind: RecordKind::Delete(tomb.clone()),
                }),
            ];
            if level >= 1 {
                let rec = PendingRec {
                    seq,
                    kind: PendingRecKind::Delete,
                };
                st.set_pending(key, rec.clone());
                ops.push(Op::PutPending(key.to_owned(), rec));
            } else if !st.pending.contains_key(key) {
                // unlink_object dropped a pending put, if any.
                ops.push(Op::RemovePending(key.to_owned()));
            }
            core.refresh_metrics(&st);
            (core.submit(ops)?, files, tomb)
        };
        Journal::wait(ack).await?;
        core.remove_files(files).await;
        if level >= 1 {
            self.notify_pending();
        }
        Ok(tomb)
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
                }),
            ];
            let queued = !meta.in_origin && !st.pending.contains_key(key);
            if queued {
                let rec = PendingRec {
                    seq: meta.seq,
                    kind: PendingRecKind::Put,
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

    /// Pending origin operations, oldest first (at most `limit`).
    pub fn pending(&self, limit: usize) -> Vec<PendingOp> {
        let core = &self.core;
        let st = core.state.borrow();
        let mut out = Vec::new();
        for (&seq, key) in &st.pending_order {
            if out.len() >= limit {
                break;
            }
            let Some(rec) = st.pending.get(key) else {
                continue;
            };
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
        let core = &self.core;
        let ack = {
            let mut st = core.state.borrow_mut();
            if st.pending.get(key).map(|p| p.seq) != Some(seq) {
                return Ok(());
            }
            let rec = st.clear_pending(key).expect("checked above");
            let mut ops = vec![
                Op::RemovePending(key.to_owned()),
                core.record(RecordKind::Uploaded {
                    key: key.to_owned(),
                    seq,
                }),
            ];
            if rec.kind == PendingRecKind::Put {
                if let Some(Entry::Object(old)) = st.index.get(key) {
                    if old.seq == seq {
                        let mut m = (**old).clone();
                        m.in_origin = true;
                        let meta = Rc::new(m);
                        ops.push(Op::PutEntry(
                            key.to_owned(),
                            StoredEntry::Object((*meta).clone()),
                        ));
                        st.index.insert(key.to_owned(), Entry::Object(meta));
                        st.disk.set_pinned(&key.to_owned(), false);
                    }
                }
            }
            core.refresh_metrics(&st);
            core.submit(ops)?
        };
        Journal::wait(ack).await
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
                            && !st.pending.contains_key(k) =>
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
        res?;
        debug_assert!(len as u64 == BLOCK_SIZE || self.written % BLOCK_SIZE == len as u64);
        Ok(())
    }

    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        let n = chunk.len() as u64;
        if self.written + n > self.reserved {
            let need = self.written + n - self.reserved;
            let pending = {
                let core = &self.shard.core;
                let mut st = core.state.borrow_mut();
                core.reserve(&mut st, need)?
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
            let (res, _) = file.write_all_at(all, 0).await;
            res?;
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
            let (res, _) = file.write_all_at(tbuf, format::table_off(size)).await;
            res?;
            let header = Header::new(&self.key, self.seq, size, self.body_crc, &self.table);
            let (res, _) = file.write_all_at(header.encode(), 0).await;
            res?;
            file
        };
        file.sync_data().await?;
        drop(file);

        let md5 = std::mem::take(&mut self.md5);
        let core = self.shard.core.clone();
        let (ack, meta, files, queued) = {
            let mut st = core.state.borrow_mut();
            if fetched && self.superseded_in(&st) {
                return Err(StoreError::Superseded);
            }
            let client = !fetched;
            let (etag, last_modified_ms) = match &attrs.fetched {
                Some(f) => (f.etag.trim_matches('"').to_owned(), f.last_modified_ms),
                None => (hex::encode(md5.finalize()), wall_ms()),
            };
            let meta = Rc::new(ObjectMeta {
                key: self.key.clone(),
                size,
                etag,
                crc32c: self.body_crc,
                content_type: attrs.content_type,
                name: attrs.name,
                user_meta: attrs.user_meta,
                last_modified_ms,
                hlc: core.hlc.now(),
                seq: self.seq,
                level: attrs.level,
                in_origin: fetched,
                provenance: if fetched {
                    Provenance::Fetched
                } else {
                    Provenance::Client
                },
                headers: attrs.headers,
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
            let queued = client && attrs.level >= 1;
            if queued {
                let rec = PendingRec {
                    seq: self.seq,
                    kind: PendingRecKind::Put,
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
            (core.submit(ops)?, meta, files, queued)
        };
        Journal::wait(ack).await?;
        core.remove_files(files).await;
        if queued {
            self.shard.notify_pending();
        }
        Ok(meta)
    }

    fn superseded(&self) -> bool {
        self.superseded_in(&self.core().state.borrow())
    }

    fn superseded_in(&self, st: &State) -> bool {
        match st.index.get(&self.key) {
            None => false,
            // A read-through never resurrects a deleted key.
            Some(Entry::Tombstone(_)) => true,
            Some(e) => Some(e.seq()) != self.base,
        }
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
        self.file.take();
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "removing abandoned write");
            }
        }
    }
}

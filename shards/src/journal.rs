//! The LMDB journal and index of one shard, and its group-commit writer thread.
//!
//! One heed env per shard at `<dir>/journal/`, five databases:
//!
//! | db        | key                 | value                                         |
//! |-----------|---------------------|-----------------------------------------------|
//! | `objects` | object key (UTF-8)  | [`StoredEntry`]: the object's meta or its tombstone |
//! | `journal` | seq, u64 big-endian | [`Record`]: what happened, with its HLC       |
//! | `pending` | object key          | [`PendingRec`]: origin op not yet acknowledged |
//! | `meta`    | `next_seq`, `hlc`, `trimmed_through` | u64 big-endian high-water marks |
//! | `synclog` | backend NUL key     | a backend's missed write or delete ([`crate::synclog`], own magic) |
//! | `bodies`  | object key          | a small object's body ([`crate::inline`], own magic, version, CRC) |
//!
//! A body in `bodies` belongs to the key's current entry in `objects` when that entry is
//! an inline object; the writer keeps it so in the same transaction: an entry that is
//! removed or replaced by anything but an inline object takes its body with it.
//!
//! Values are a version byte, JSON, and (since version 2) a checksum:
//!
//! ```text
//! +---------+---------------------------+----------------------------------------+
//! | version | JSON (serde_json)         | CRC32C of version byte and JSON, LE u32 |
//! | 1 byte  | n bytes                   | 4 bytes (version 2 only)               |
//! +---------+---------------------------+----------------------------------------+
//! ```
//!
//! [`CODEC_VERSION`] (2) is written; version 1 values (no checksum, from older
//! journals) are still read, and must hold exactly one JSON value with nothing after it.
//! Every refusal says what was expected and what was found.
//!
//! Thread model: the shard thread never touches a write transaction. It sends batches
//! of [`Op`]s over a channel to the writer thread, which drains everything queued, applies
//! it in one write transaction, trims the journal to `journal_retain` records, commits
//! (LMDB fsyncs on commit) and only then acks each batch through its oneshot. Batches are
//! applied in the order they were sent.
//!
//! Reads for peers ([`Journal::read_changes`]) use a read transaction on the shard thread
//! (the env is shared with the writer thread), and so do the shard's reads of object metas
//! it no longer keeps in memory ([`Journal::read_entry`]). Inline bodies are read on a reader thread
//! ([`Journal::read_body`]): a body not in the page cache would block the shard.
//!
//! Seqs are not committed in seq order: a write takes its seq when it begins and commits
//! when it finishes. So each batch carries
//! `through`, a seq up to which everything is queued (or abandoned) when it is sent; once
//! the batch commits, reads up to `through` can never miss a record that lands later.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use std::cell::RefCell;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use heed::byteorder::BigEndian;
use heed::types::{Bytes as RawBytes, Str, U64};
use heed::{CommitOrAbort, Database, Env};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::{Change, ObjectMeta, ShardMetrics, StoreError, Tombstone};

/// Version byte of journal values written now; must change with the value layout.
pub(crate) const CODEC_VERSION: u8 = 2;
/// Journal values of this version (no checksum) are still read.
pub(crate) const CODEC_VERSION_V1: u8 = 1;

/// Most journal records one [`Journal::read_changes`] call reads (fewer in tests, so they
/// can reach it quickly).
pub(crate) const MAX_SCAN: usize = if cfg!(test) { 64 } else { 4096 };

/// Value of the `objects` db.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum StoredEntry {
    Object(ObjectMeta),
    Tombstone(Tombstone),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PendingRecKind {
    Put,
    Delete,
}

/// Value of the `pending` db.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingRec {
    pub seq: u64,
    pub kind: PendingRecKind,
    /// Wall-clock ms before which the uploader may not start it (0 = now). Lets a replica
    /// leave the upload to the node that took the write unless that node fails to.
    #[serde(default)]
    pub not_before_ms: u64,
    /// HLC of the version or tombstone the op belongs to, for matching peers' reports
    /// (0 in journals written before it existed; filled from the index at open).
    #[serde(default)]
    pub hlc: u64,
}

/// Value of the `journal` db.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub seq: u64,
    pub hlc: u64,
    pub kind: RecordKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum RecordKind {
    Put(ObjectMeta),
    Delete(Tombstone),
    /// `hlc`: of the version upgraded (0 in records written before it existed).
    Upgrade {
        key: String,
        level: u8,
        #[serde(default)]
        hlc: u64,
    },
    /// `hlc`: of the version or tombstone whose origin op completed (0 when older).
    Uploaded {
        key: String,
        seq: u64,
        #[serde(default)]
        hlc: u64,
    },
    Evicted {
        key: String,
        seq: u64,
    },
    Forget {
        key: String,
    },
    Corrupt {
        key: String,
        seq: u64,
    },
    TombstoneExpired {
        key: String,
        seq: u64,
    },
}

impl RecordKind {
    /// The change peers see, or `None` for internal records (and for old records that
    /// lack the hlc a peer needs to match the version).
    pub(crate) fn export(self) -> Option<Change> {
        match self {
            RecordKind::Put(m) => Some(Change::Put(m)),
            RecordKind::Delete(t) => Some(Change::Delete(t)),
            RecordKind::Upgrade { key, level, hlc } if hlc != 0 => {
                Some(Change::Upgrade { key, hlc, level })
            }
            RecordKind::Uploaded { key, hlc, .. } if hlc != 0 => {
                Some(Change::Uploaded { key, hlc })
            }
            _ => None,
        }
    }
}

/// One change to apply in the writer thread.
#[derive(Debug)]
pub(crate) enum Op {
    PutEntry(String, StoredEntry),
    RemoveEntry(String),
    /// Removes `key`'s entry if it is still the tombstone with this seq (an expired
    /// tombstone, found by a scan that a newer write or delete of the key may have raced).
    RemoveTombstone {
        key: String,
        seq: u64,
    },
    PutPending(String, PendingRec),
    RemovePending(String),
    Record(Record),
    /// A sync log entry, already encoded ([`crate::synclog::encode_entry`]).
    PutSync(String, Vec<u8>),
    RemoveSync(String),
    /// A small object's body ([`crate::inline`]); its `PutEntry` marks the meta inline.
    PutBody {
        key: String,
        seq: u64,
        body: Bytes,
    },
}

/// A 64-bit hash of a key, for the shard's tombstone filter. Process-local (recovery
/// and every scan rebuild the filter), so any fixed hash will do.
pub(crate) fn key_fingerprint(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
}

/// What [`Journal::scan_tombstones`] found.
#[derive(Debug, Default)]
pub(crate) struct TombstoneScan {
    /// Of every tombstone's key ([`key_fingerprint`]).
    pub fingerprints: Vec<u64>,
    pub expired: Vec<Tombstone>,
    /// The earliest `deleted_at_ms` of the tombstones not expired; `u64::MAX` if none.
    pub oldest_kept_ms: u64,
}

/// Whether an encoded `objects` value is a tombstone, without decoding it: values are
/// the codec byte then JSON of [`StoredEntry`], an externally tagged enum.
fn is_tombstone(v: &[u8]) -> bool {
    v.get(1..).is_some_and(|j| j.starts_with(b"{\"Tombstone\""))
}

/// The tombstone an encoded `objects` value holds, if it is one (objects are not
/// decoded).
fn decode_tombstone(v: &[u8]) -> Result<Option<Tombstone>, StoreError> {
    if !is_tombstone(v) {
        return Ok(None);
    }
    match decode::<StoredEntry>(v)? {
        StoredEntry::Tombstone(t) => Ok(Some(t)),
        StoredEntry::Object(_) => Ok(None),
    }
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![CODEC_VERSION];
    serde_json::to_writer(&mut out, v).expect("journal values serialize");
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub(crate) fn decode<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, StoreError> {
    let bad = |what: &str, expected: &dyn std::fmt::Display, actual: &dyn std::fmt::Display| {
        StoreError::Journal(format!(
            "journal value {what}: expected {expected}, found {actual}"
        ))
    };
    let json = match b.first() {
        None => return Err(bad("length", &"at least 1 byte", &0)),
        Some(&CODEC_VERSION) => {
            if b.len() < 1 + 4 {
                return Err(bad("length", &"at least 5 bytes", &b.len()));
            }
            &strip_crc(b, "journal value")?[1..]
        }
        Some(&CODEC_VERSION_V1) => {
            // No checksum: at least insist on one JSON value and nothing after it (a
            // version 2 value whose version byte flipped to 1 ends with its checksum).
            let rest = &b[1..];
            if let Some(&last) = rest.last().filter(|c| c.is_ascii_whitespace()) {
                return Err(bad(
                    "end",
                    &"end of JSON",
                    &format_args!("byte {last:#04x}"),
                ));
            }
            rest
        }
        Some(v) => {
            return Err(bad(
                "version",
                &format_args!("{CODEC_VERSION} or {CODEC_VERSION_V1}"),
                v,
            ))
        }
    };
    serde_json::from_slice(json)
        .map_err(|e| StoreError::Journal(format!("decoding a journal value: {e}")))
}

/// `b` without its trailing CRC32C (LE u32 over everything before it), once that
/// checks out; `what` names the value in the error. `b` holds at least 4 bytes.
pub(crate) fn strip_crc<'a>(b: &'a [u8], what: &str) -> Result<&'a [u8], StoreError> {
    let (body, crc) = b.split_at(b.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(StoreError::Journal(format!(
            "{what} checksum: expected {stored:08x}, found {computed:08x}"
        )));
    }
    Ok(body)
}

fn jerr(e: heed::Error) -> StoreError {
    StoreError::Journal(e.to_string())
}

#[derive(Clone, Copy)]
struct Dbs {
    objects: Database<'static, Str, RawBytes>,
    journal: Database<'static, U64<BigEndian>, RawBytes>,
    pending: Database<'static, Str, RawBytes>,
    meta: Database<'static, Str, U64<BigEndian>>,
    synclog: Database<'static, Str, RawBytes>,
    bodies: Database<'static, Str, RawBytes>,
}

/// What the journal held at open.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Index entries in the `objects` db (read them with [`Journal::for_each_entry`]).
    pub entry_count: u64,
    pub pending: Vec<(String, PendingRec)>,
    /// Sync log values, still encoded.
    pub sync: Vec<Vec<u8>>,
    pub next_seq: u64,
    pub hlc: u64,
    pub last_record_seq: u64,
}

struct Batch {
    ops: Vec<Op>,
    next_seq: u64,
    hlc: u64,
    /// Every seq up to this one is in this batch or an earlier one, or was abandoned.
    through: u64,
    ack: oneshot::Sender<Result<(), CommitError>>,
}

/// Why a group commit failed, as sent to every batch in it.
#[derive(Debug, Clone)]
pub(crate) enum CommitError {
    /// The file system is full (ENOSPC, EDQUOT): the transaction was aborted.
    NoSpace(String),
    Other(String),
}

/// Below this many free bytes, an I/O error of a commit is put down to a full file
/// system: LMDB reports a short write (what a nearly full disk gives) as EIO, not ENOSPC.
const NEARLY_FULL: u64 = 4 << 20;

impl CommitError {
    /// Classifies a failed commit of the env in `dir`.
    fn of(e: &heed::Error, dir: &Path) -> CommitError {
        match e {
            heed::Error::Io(io) if crate::error::is_no_space(io) => {
                CommitError::NoSpace(io.to_string())
            }
            heed::Error::Io(io)
                if nearcache_file::fs_space(dir).is_ok_and(|s| s.is_full(NEARLY_FULL)) =>
            {
                CommitError::NoSpace(format!("{io}, with less than {NEARLY_FULL} bytes free"))
            }
            e => CommitError::Other(e.to_string()),
        }
    }
}

enum Msg {
    Batch(Batch),
    Close(oneshot::Sender<()>),
}

pub(crate) type Ack = oneshot::Receiver<Result<(), CommitError>>;

/// A request for an inline body, answered with the stored value (not yet verified).
struct BodyRead {
    key: String,
    reply: oneshot::Sender<Result<Option<Vec<u8>>, String>>,
}

/// LMDB's page size here (the OS page size; LMDB uses it unless built otherwise).
const PAGE_SIZE: u64 = 4096;

pub(crate) struct Journal {
    tx: RefCell<Option<Sender<Msg>>>,
    thread: RefCell<Option<JoinHandle<()>>>,
    reader_tx: RefCell<Option<Sender<BodyRead>>>,
    reader: RefCell<Option<JoinHandle<()>>>,
    /// Bytes of the map in use (high-water mark of pages), as of the last commit.
    map_used: Arc<AtomicU64>,
    map_size: u64,
    /// For reads on the shard thread; taken at close so the env closes with the writer
    /// even while readers or writers keep the shard's core alive.
    env: RefCell<Option<Env>>,
    dbs: Dbs,
    /// Highest `through` of a committed batch: reads for peers stop there.
    committed_through: Arc<AtomicU64>,
    /// Batches sent to the writer (the shard thread's count; the n-th batch is number n).
    batches_submitted: std::cell::Cell<u64>,
    /// Batches 1..=this are committed. Stops advancing after a failed commit: what later
    /// batches committed does not tell which earlier values LMDB lacks.
    batches_committed: Arc<AtomicU64>,
}

/// What [`Journal::read_changes`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangesRead {
    pub changes: Vec<(u64, Change)>,
    pub next_after: u64,
    pub gap: bool,
}

/// How a read for peers cuts the journal (pure, so a simulation runs the same rule):
/// `records` are the journal's records with seq in `after + 1..=horizon`, ascending, as
/// (seq, exported change or None for an internal record). At most `limit` changes and
/// `max_scan` records are taken; `next_after` covers skipped internal records, and runs
/// to `horizon` when the range was read to its end (seqs without a record were abandoned
/// or trimmed). `gap`: records after `after` were trimmed (`trimmed_through`), so the
/// reader missed changes and must resync from the index.
pub fn cut_changes<E>(
    after: u64,
    horizon: u64,
    trimmed_through: u64,
    limit: usize,
    max_scan: usize,
    records: impl Iterator<Item = Result<(u64, Option<Change>), E>>,
) -> Result<ChangesRead, E> {
    let mut out = ChangesRead {
        changes: Vec::new(),
        next_after: after,
        gap: after < trimmed_through,
    };
    if after >= horizon {
        return Ok(out);
    }
    let mut full = false;
    for (scanned, item) in records.enumerate() {
        // Bounds the time the shard thread spends here (a peer far behind may face
        // many internal records); the caller continues from next_after.
        if scanned == max_scan {
            full = true;
            break;
        }
        let (seq, change) = item?;
        if let Some(change) = change {
            if out.changes.len() >= limit {
                full = true;
                break;
            }
            out.changes.push((seq, change));
        }
        out.next_after = seq;
    }
    if !full {
        // Seqs up to the horizon with no record were abandoned or trimmed.
        out.next_after = horizon;
    }
    Ok(out)
}

/// How a page of the index is cut for a peer's resync (pure): `entries` are the index
/// entries after the page's start key, in key order (objects as `Put`, tombstones as
/// `Delete`); at most `limit` are taken, and `next_key` is set only when more follow.
pub fn cut_index_page<E>(
    through: u64,
    limit: usize,
    entries: impl Iterator<Item = Result<(String, Change), E>>,
) -> Result<crate::IndexPage, E> {
    let mut page = crate::IndexPage {
        entries: Vec::new(),
        next_key: None,
        through,
    };
    let mut more = false;
    for item in entries {
        let (k, change) = item?;
        if page.entries.len() >= limit.max(1) {
            more = true;
            break;
        }
        page.entries.push(change);
        page.next_key = Some(k);
    }
    if !more {
        page.next_key = None;
    }
    Ok(page)
}

/// How many of the oldest records a commit trims so that `retain` remain of `len`.
pub fn records_to_trim(len: u64, retain: u64) -> usize {
    len.saturating_sub(retain) as usize
}

impl Journal {
    #[expect(
        clippy::disallowed_methods,
        reason = "start-up, before the shard serves any request"
    )]
    pub fn open(
        dir: &Path,
        map_size: u64,
        retain: u64,
        metrics: Arc<ShardMetrics>,
        shard_id: u16,
    ) -> Result<(Journal, Recovered), StoreError> {
        std::fs::create_dir_all(dir)?;
        let map_size = nearcache_file::align_up_u64(map_size.max(1 << 20)) as usize;
        // One env per shard directory; the server's data-dir lock keeps other processes out.
        let env = nearcache_file::open_lmdb_env(dir, map_size, 8).map_err(jerr)?;
        let wtxn = env.write_txn().map_err(jerr)?;
        let dbs = env
            .create_databases_and_commit(wtxn, |o, wtxn| -> Result<_, heed::Error> {
                let objects = o.create_database::<Str, RawBytes>(wtxn, Some("objects"))?;
                let journal =
                    o.create_database::<U64<BigEndian>, RawBytes>(wtxn, Some("journal"))?;
                let pending = o.create_database::<Str, RawBytes>(wtxn, Some("pending"))?;
                let meta = o.create_database::<Str, U64<BigEndian>>(wtxn, Some("meta"))?;
                let synclog = o.create_database::<Str, RawBytes>(wtxn, Some("synclog"))?;
                let bodies = o.create_database::<Str, RawBytes>(wtxn, Some("bodies"))?;
                Ok(CommitOrAbort::<_, ()>::Commit((
                    objects, journal, pending, meta, synclog, bodies,
                )))
            })
            .map_err(jerr)?
            .commit()
            .expect("committed");
        let dbs = Dbs {
            objects: dbs.0,
            journal: dbs.1,
            pending: dbs.2,
            meta: dbs.3,
            synclog: dbs.4,
            bodies: dbs.5,
        };

        {
            // A fresh env records that nothing was trimmed yet; an env without the marker
            // is from before it and gets the cautious guess in `read_changes`.
            let mut wtxn = env.write_txn().map_err(jerr)?;
            let fresh = dbs.meta.get(&wtxn, "next_seq").map_err(jerr)?.is_none()
                && dbs.journal.is_empty(&wtxn).map_err(jerr)?;
            if fresh
                && dbs
                    .meta
                    .get(&wtxn, "trimmed_through")
                    .map_err(jerr)?
                    .is_none()
            {
                dbs.meta
                    .put(&mut wtxn, "trimmed_through", &0)
                    .map_err(jerr)?;
                wtxn.commit().map_err(jerr)?;
            }
        }

        let mut rec = Recovered::default();
        {
            let rtxn = env.read_txn().map_err(jerr)?;
            rec.entry_count = dbs.objects.len(&rtxn).map_err(jerr)?;
            for item in dbs.pending.iter(&rtxn).map_err(jerr)? {
                let (k, v) = item.map_err(jerr)?;
                rec.pending.push((k.to_owned(), decode(v)?));
            }
            for item in dbs.synclog.iter(&rtxn).map_err(jerr)? {
                let (_, v) = item.map_err(jerr)?;
                rec.sync.push(v.to_vec());
            }
            rec.next_seq = dbs.meta.get(&rtxn, "next_seq").map_err(jerr)?.unwrap_or(1);
            rec.hlc = dbs.meta.get(&rtxn, "hlc").map_err(jerr)?.unwrap_or(0);
            rec.last_record_seq = dbs
                .journal
                .last(&rtxn)
                .map_err(jerr)?
                .map(|(k, _)| k)
                .unwrap_or(0);
            metrics
                .journal_last_seq
                .store(rec.last_record_seq, Ordering::Relaxed);
        }

        // Nothing is being written yet: every seq handed out before is settled.
        let committed_through = Arc::new(AtomicU64::new(
            rec.next_seq.max(rec.last_record_seq + 1) - 1,
        ));
        let map_used = Arc::new(AtomicU64::new(pages_used(&env)));
        let batches_committed = Arc::new(AtomicU64::new(0));
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = {
            let marks = Marks {
                committed_through: committed_through.clone(),
                map_used: map_used.clone(),
                batches_committed: batches_committed.clone(),
            };
            let env = env.clone();
            std::thread::Builder::new()
                .name(format!("journal-{shard_id}"))
                .spawn(move || writer(env, dbs, rx, retain, metrics, marks))?
        };
        let (reader_tx, reader_rx) = crossbeam_channel::unbounded();
        let reader = {
            let env = env.clone();
            std::thread::Builder::new()
                .name(format!("journal-read-{shard_id}"))
                .spawn(move || body_reader(env, dbs, reader_rx))?
        };
        Ok((
            Journal {
                tx: RefCell::new(Some(tx)),
                thread: RefCell::new(Some(thread)),
                reader_tx: RefCell::new(Some(reader_tx)),
                reader: RefCell::new(Some(reader)),
                map_used,
                map_size: map_size as u64,
                env: RefCell::new(Some(env)),
                dbs,
                committed_through,
                batches_submitted: std::cell::Cell::new(0),
                batches_committed,
            },
            rec,
        ))
    }

    /// Queues a batch; it is durable when the returned receiver yields `Ok`. `through`:
    /// every seq up to it is in this batch or an earlier one, or will never be used.
    pub fn submit(
        &self,
        ops: Vec<Op>,
        next_seq: u64,
        hlc: u64,
        through: u64,
    ) -> Result<Ack, StoreError> {
        let (ack, rx) = oneshot::channel();
        let tx = self.tx.borrow();
        let tx = tx.as_ref().ok_or(StoreError::Closed)?;
        tx.send(Msg::Batch(Batch {
            ops,
            next_seq,
            hlc,
            through,
            ack,
        }))
        .map_err(|_| StoreError::Closed)?;
        self.batches_submitted.set(self.batches_submitted.get() + 1);
        Ok(rx)
    }

    /// Batches submitted so far: the next one [`Journal::submit`] sends is this + 1.
    pub fn batches_submitted(&self) -> u64 {
        self.batches_submitted.get()
    }

    /// Batches 1..=this are durable (see the field's note on failed commits).
    pub fn batches_committed(&self) -> u64 {
        self.batches_committed.load(Ordering::Acquire)
    }

    /// Hands every index entry to `f`, decoded one at a time: recovery builds the index
    /// without holding all entries at once (which would double its peak memory and leave
    /// the freed copies interleaved with the index on the heap).
    pub fn for_each_entry(&self, mut f: impl FnMut(StoredEntry)) -> Result<(), StoreError> {
        let env = self.env.borrow().clone().ok_or(StoreError::Closed)?;
        let rtxn = env.read_txn().map_err(jerr)?;
        for item in self.dbs.objects.iter(&rtxn).map_err(jerr)? {
            let (_, v) = item.map_err(jerr)?;
            f(decode(v)?);
        }
        Ok(())
    }

    /// `key`'s committed entry; read on the calling thread (a short read txn).
    pub fn read_entry(&self, key: &str) -> Result<Option<StoredEntry>, StoreError> {
        let env = self.env.borrow().clone().ok_or(StoreError::Closed)?;
        let rtxn = env.read_txn().map_err(jerr)?;
        match self.dbs.objects.get(&rtxn, key).map_err(jerr)? {
            Some(v) => decode(v).map(Some),
            None => Ok(None),
        }
    }

    /// `key`'s committed tombstone, if its entry is one; read on the calling thread (a
    /// short read txn).
    pub fn read_tombstone(&self, key: &str) -> Result<Option<Tombstone>, StoreError> {
        let env = self.env.borrow().clone().ok_or(StoreError::Closed)?;
        let rtxn = env.read_txn().map_err(jerr)?;
        match self.dbs.objects.get(&rtxn, key).map_err(jerr)? {
            Some(v) => decode_tombstone(v),
            None => Ok(None),
        }
    }

    /// Every committed tombstone, scanned in one read txn on a thread of its own (the
    /// shard keeps serving): the fingerprints of all of them, and those expired at
    /// `now_ms` under `ttl_ms` (in full, for the sweep), plus the oldest deletion time of
    /// the rest.
    pub async fn scan_tombstones(
        &self,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<TombstoneScan, StoreError> {
        let env = self.env.borrow().clone().ok_or(StoreError::Closed)?;
        let objects = self.dbs.objects;
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("nc-tomb-scan".into())
            .spawn(move || {
                let scan = || -> Result<TombstoneScan, StoreError> {
                    let rtxn = env.read_txn().map_err(jerr)?;
                    let mut out = TombstoneScan {
                        oldest_kept_ms: u64::MAX,
                        ..TombstoneScan::default()
                    };
                    for item in objects.iter(&rtxn).map_err(jerr)? {
                        let (_, v) = item.map_err(jerr)?;
                        let Some(t) = decode_tombstone(v)? else {
                            continue;
                        };
                        out.fingerprints.push(key_fingerprint(&t.key));
                        if crate::tombstone_expired(t.deleted_at_ms, ttl_ms, now_ms) {
                            out.expired.push(t);
                        } else {
                            out.oldest_kept_ms = out.oldest_kept_ms.min(t.deleted_at_ms);
                        }
                    }
                    Ok(out)
                };
                let _ = tx.send(scan());
            })
            .map_err(|e| StoreError::Journal(format!("starting the tombstone scan: {e}")))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The stored value of `key`'s inline body (checked by the caller with
    /// [`crate::inline::decode`]), read on the reader thread. `None`: no body stored.
    pub async fn read_body(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        {
            let tx = self.reader_tx.borrow();
            let tx = tx.as_ref().ok_or(StoreError::Closed)?;
            tx.send(BodyRead {
                key: key.to_owned(),
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        }
        match rx.await {
            Ok(r) => r.map_err(StoreError::Journal),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Whether `len` more bytes of inline bodies fit in the map while keeping half of it
    /// for the index and journal (past that, small bodies go to files).
    pub fn inline_room(&self, len: u64) -> bool {
        self.map_used.load(Ordering::Relaxed).saturating_add(len) < self.map_size / 2
    }

    /// Waits for a submitted batch to be committed.
    pub async fn wait(rx: Ack) -> Result<(), StoreError> {
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(CommitError::NoSpace(os_error))) => Err(StoreError::InsufficientStorage {
                needed: 0,
                available: 0,
                reason: crate::NoSpaceReason::FileSystemFull {
                    during: "committing the journal",
                    os_error,
                },
            }),
            Ok(Err(CommitError::Other(e))) => Err(StoreError::Journal(e)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Committed records with seq > `after`, at most `limit` exported changes; see
    /// [`crate::Shard::changes_since`]. Runs on the shard thread (a short read txn).
    pub fn read_changes(&self, after: u64, limit: usize) -> Result<ChangesRead, StoreError> {
        // Loaded before the txn opens, so the txn sees every batch this covers.
        let horizon = self.committed_through.load(Ordering::Acquire);
        let env = self.env.borrow().clone().ok_or(StoreError::Closed)?;
        let rtxn = env.read_txn().map_err(jerr)?;
        let trimmed = match self.dbs.meta.get(&rtxn, "trimmed_through").map_err(jerr)? {
            Some(t) => t,
            // Journals from before the marker: assume everything below the oldest record
            // was trimmed (a needless resync at worst, never a silent miss).
            None => match self.dbs.journal.first(&rtxn).map_err(jerr)? {
                Some((first, _)) => first - 1,
                None => horizon,
            },
        };
        let range = if after < horizon {
            Some(
                self.dbs
                    .journal
                    .range(&rtxn, &(after + 1..=horizon))
                    .map_err(jerr)?,
            )
        } else {
            None
        };
        let records = range.into_iter().flatten().map(|item| {
            let (seq, v) = item.map_err(jerr)?;
            let rec: Record = decode(v)?;
            Ok((seq, rec.kind.export()))
        });
        cut_changes(after, horizon, trimmed, limit, MAX_SCAN, records)
    }

    /// Up to `limit` index entries with keys after `after_key`, in key order; see
    /// [`crate::Shard::index_page`]. Runs on the shard thread (a short read txn).
    pub fn read_index_page(
        &self,
        after_key: Option<&str>,
        limit: usize,
    ) -> Result<crate::IndexPage, StoreError> {
        use std::ops::Bound;
        let through = self.committed_through.load(Ordering::Acquire);
        let env = self.env.borrow().clone().ok_or(StoreError::Closed)?;
        let rtxn = env.read_txn().map_err(jerr)?;
        let lower = match after_key {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let range: (Bound<&str>, Bound<&str>) = (lower, Bound::Unbounded);
        let entries = self
            .dbs
            .objects
            .range(&rtxn, &range)
            .map_err(jerr)?
            .map(|item| {
                let (k, v) = item.map_err(jerr)?;
                let change = match decode::<StoredEntry>(v)? {
                    StoredEntry::Object(m) => Change::Put(m),
                    StoredEntry::Tombstone(t) => Change::Delete(t),
                };
                Ok((k.to_owned(), change))
            });
        cut_index_page(through, limit, entries)
    }

    /// Commits everything queued, then stops the writer thread.
    pub async fn close(&self) {
        self.env.borrow_mut().take();
        self.stop_reader();
        let tx = self.tx.borrow_mut().take();
        if let Some(tx) = tx {
            let (done, rx) = oneshot::channel();
            if tx.send(Msg::Close(done)).is_ok() {
                let _ = rx.await;
            }
        }
        // The thread has answered and is exiting: joining blocks only briefly.
        let thread = self.thread.borrow_mut().take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Journal {
    /// Stops the body reader (it answers what is queued first) and joins it.
    fn stop_reader(&self) {
        self.reader_tx.borrow_mut().take();
        let reader = self.reader.borrow_mut().take();
        if let Some(t) = reader {
            let _ = t.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.stop_reader();
        // Dropping the sender makes the writer commit what is queued and exit; join so
        // the env is closed (and can be reopened) when the shard is gone.
        self.tx.get_mut().take();
        self.env.get_mut().take();
        if let Some(t) = self.thread.get_mut().take() {
            let _ = t.join();
        }
    }
}

/// Bytes of the map in use: pages up to the last one ever used (freed pages inside are
/// reused, so this is an upper bound).
fn pages_used(env: &Env) -> u64 {
    (env.info().last_page_number as u64 + 1) * PAGE_SIZE
}

/// Answers inline body reads, one short read transaction each.
fn body_reader(env: Env, dbs: Dbs, rx: Receiver<BodyRead>) {
    while let Ok(req) = rx.recv() {
        let res = env
            .read_txn()
            .and_then(|rtxn| Ok(dbs.bodies.get(&rtxn, &req.key)?.map(<[u8]>::to_vec)))
            .map_err(|e| e.to_string());
        let _ = req.reply.send(res);
    }
}

/// What the writer thread publishes after each commit.
struct Marks {
    committed_through: Arc<AtomicU64>,
    map_used: Arc<AtomicU64>,
    batches_committed: Arc<AtomicU64>,
}

fn writer(
    env: Env,
    dbs: Dbs,
    rx: Receiver<Msg>,
    retain: u64,
    metrics: Arc<ShardMetrics>,
    marks: Marks,
) {
    // Batches received, in the order the shard submitted them.
    let mut received = 0u64;
    let mut failed = false;
    while let Ok(first) = rx.recv() {
        let mut batches = Vec::new();
        let mut close = None;
        let mut push = |m: Msg| match m {
            Msg::Batch(b) => batches.push(b),
            Msg::Close(c) => close = Some(c),
        };
        push(first);
        while let Ok(m) = rx.try_recv() {
            push(m);
        }
        if !batches.is_empty() {
            let res = apply(&env, dbs, &batches, retain, &metrics).map_err(|e| {
                tracing::error!(error = %e, "journal commit failed; the batch was rolled back");
                CommitError::of(&e, env.path())
            });
            received += batches.len() as u64;
            failed |= res.is_err();
            if res.is_ok() {
                let through = batches.iter().map(|b| b.through).max().unwrap_or(0);
                marks
                    .committed_through
                    .fetch_max(through, Ordering::Release);
                marks.map_used.store(pages_used(&env), Ordering::Relaxed);
                if !failed {
                    marks.batches_committed.store(received, Ordering::Release);
                }
            }
            for b in batches {
                let _ = b.ack.send(res.clone());
            }
        }
        if let Some(c) = close {
            let _ = c.send(());
            return;
        }
    }
}

fn apply(
    env: &Env,
    dbs: Dbs,
    batches: &[Batch],
    retain: u64,
    metrics: &ShardMetrics,
) -> Result<(), heed::Error> {
    let mut wtxn = env.write_txn()?;
    let mut next_seq = 0;
    let mut hlc = 0;
    let mut records = 0u64;
    let mut last_seq = 0;
    for b in batches {
        next_seq = next_seq.max(b.next_seq);
        hlc = hlc.max(b.hlc);
        for op in &b.ops {
            match op {
                Op::PutEntry(k, e) => {
                    dbs.objects.put(&mut wtxn, k, &encode(e))?;
                    if !matches!(e, StoredEntry::Object(m) if m.inline) {
                        dbs.bodies.delete(&mut wtxn, k)?;
                    }
                }
                Op::RemoveEntry(k) => {
                    dbs.objects.delete(&mut wtxn, k)?;
                    dbs.bodies.delete(&mut wtxn, k)?;
                }
                Op::RemoveTombstone { key, seq } => {
                    // An entry that does not decode is left for recovery to report.
                    let same = match dbs.objects.get(&wtxn, key)? {
                        Some(v) => decode_tombstone(v)
                            .ok()
                            .flatten()
                            .is_some_and(|t| t.seq == *seq),
                        None => false,
                    };
                    if same {
                        dbs.objects.delete(&mut wtxn, key)?;
                    }
                }
                Op::PutBody { key, seq, body } => {
                    let head = crate::inline::header(*seq, body);
                    dbs.bodies.put_reserved(
                        &mut wtxn,
                        key,
                        crate::inline::encoded_len(body.len()),
                        |out| {
                            out.write_all(&head)?;
                            out.write_all(body)
                        },
                    )?;
                }
                Op::PutPending(k, p) => dbs.pending.put(&mut wtxn, k, &encode(p))?,
                Op::RemovePending(k) => {
                    dbs.pending.delete(&mut wtxn, k)?;
                }
                Op::PutSync(k, v) => dbs.synclog.put(&mut wtxn, k, v)?,
                Op::RemoveSync(k) => {
                    dbs.synclog.delete(&mut wtxn, k)?;
                }
                Op::Record(r) => {
                    dbs.journal.put(&mut wtxn, &r.seq, &encode(r))?;
                    records += 1;
                    last_seq = last_seq.max(r.seq);
                }
            }
        }
    }
    let old_next = dbs.meta.get(&wtxn, "next_seq")?.unwrap_or(0);
    dbs.meta
        .put(&mut wtxn, "next_seq", &old_next.max(next_seq))?;
    let old_hlc = dbs.meta.get(&wtxn, "hlc")?.unwrap_or(0);
    dbs.meta.put(&mut wtxn, "hlc", &old_hlc.max(hlc))?;

    let excess = records_to_trim(dbs.journal.len(&wtxn)?, retain);
    if excess > 0 {
        let cut = dbs
            .journal
            .iter(&wtxn)?
            .take(excess)
            .last()
            .transpose()?
            .map(|(k, _)| k);
        if let Some(cut) = cut {
            dbs.journal.delete_range(&mut wtxn, &(..=cut))?;
            // Lets readers for peers tell a trimmed range from an empty one.
            let old = dbs.meta.get(&wtxn, "trimmed_through")?.unwrap_or(0);
            dbs.meta.put(&mut wtxn, "trimmed_through", &old.max(cut))?;
        }
    }
    wtxn.commit()?;
    metrics.journal_commits.fetch_add(1, Ordering::Relaxed);
    metrics
        .journal_records
        .fetch_add(records, Ordering::Relaxed);
    metrics
        .journal_last_seq
        .fetch_max(last_seq, Ordering::Relaxed);
    Ok(())
}

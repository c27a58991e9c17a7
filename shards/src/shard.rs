//! The shard: index, stores, journal and eviction wired together.

use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use crate::{
    Hlc, Lookup, ObjectMeta, PendingOp, RecoveryReport, ShardConfig, ShardMetrics, StoreError,
    Tombstone, WriteAttrs,
};

/// One shard. `!Send`: lives on its own monoio thread; methods take `&self`
/// (interior mutability, never borrowed across an `.await`) so that many request
/// tasks on the same thread can share it through an `Rc<Shard>`.
pub struct Shard {
    _todo: (),
}

impl Shard {
    /// Opens (or creates) the shard in `cfg.dir`: opens the journal, rebuilds the
    /// in-memory index, removes orphaned data files left by writes that never committed.
    pub async fn open(cfg: ShardConfig) -> Result<(Shard, RecoveryReport), StoreError> {
        todo!()
    }

    pub fn id(&self) -> u16 {
        todo!()
    }

    pub fn metrics(&self) -> Arc<ShardMetrics> {
        todo!()
    }

    pub fn hlc(&self) -> &Hlc {
        todo!()
    }

    /// Looks a key up; counts a hit or a miss (a tombstone counts as a hit); touches eviction state.
    pub fn lookup(&self, key: &str) -> Lookup {
        todo!()
    }

    /// Looks a key up without counting or touching eviction state.
    pub fn peek(&self, key: &str) -> Lookup {
        todo!()
    }

    /// Reads and verifies a whole object (any size the caller is willing to hold) and,
    /// if small enough, admits it to the memory tier. On a checksum mismatch the object is
    /// dropped from the index (journaled), counted, and `Corrupt` returned.
    pub async fn read_all(&self, meta: &ObjectMeta) -> Result<Bytes, StoreError> {
        todo!()
    }

    /// Opens a streaming reader over `range` of the object's body. Each chunk it yields
    /// has been checked against its block checksum.
    pub async fn open_reader(
        &self,
        meta: &ObjectMeta,
        range: Range<u64>,
    ) -> Result<ObjectReader, StoreError> {
        todo!()
    }

    /// Starts writing a new version of `key`. `expected_len`, when known, is reserved up
    /// front (evicting as needed, `InsufficientStorage` when only pinned objects remain).
    pub async fn begin_write(
        self: &Rc<Self>,
        key: &str,
        expected_len: Option<u64>,
    ) -> Result<ObjectWriter, StoreError> {
        todo!()
    }

    /// Writes a durable tombstone. With `level >= 1` an origin delete is queued as pending.
    pub async fn delete(&self, key: &str, level: u8) -> Result<Tombstone, StoreError> {
        todo!()
    }

    /// Raises the consistency level of the stored version; queues an upload when it
    /// moves from 0 to >= 1 and the object is not in the origin yet.
    pub async fn upgrade(&self, key: &str, level: u8) -> Result<Rc<ObjectMeta>, StoreError> {
        todo!()
    }

    /// Pending origin operations, oldest first (at most `limit`).
    pub fn pending(&self, limit: usize) -> Vec<PendingOp> {
        todo!()
    }

    /// Resolves when a pending op may be available (after a write or delete that queued one).
    pub async fn pending_changed(&self) {
        todo!()
    }

    /// Marks a pending op done. If the key has since been rewritten (another seq), the newer
    /// op stays pending. A completed put marks the object `in_origin` and unpins it.
    pub async fn complete_pending(&self, key: &str, seq: u64) -> Result<(), StoreError> {
        todo!()
    }

    /// Drops the object (not a delete: no tombstone) — e.g. after the origin says it's gone.
    pub async fn forget(&self, key: &str) -> Result<(), StoreError> {
        todo!()
    }

    /// Removes expired tombstones. Returns how many.
    pub async fn sweep_tombstones(&self) -> Result<u64, StoreError> {
        todo!()
    }

    /// Flushes and closes the journal.
    pub async fn close(&self) -> Result<(), StoreError> {
        todo!()
    }
}

/// Streams verified chunks of one object's body.
pub struct ObjectReader {
    _todo: (),
}

impl ObjectReader {
    /// The next chunk of the requested range, or `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, StoreError>> {
        todo!()
    }
}

/// An in-progress write. Dropping it without `finish` abandons it (the file is removed).
pub struct ObjectWriter {
    _todo: (),
}

impl ObjectWriter {
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        todo!()
    }

    pub fn written(&self) -> u64 {
        todo!()
    }

    /// Makes the object durable (data synced, journal committed) and visible.
    /// For fetched objects, returns `Superseded` if the key was written or deleted after
    /// `begin_write` (a read-through never resurrects a deleted key).
    pub async fn finish(self, attrs: WriteAttrs) -> Result<Rc<ObjectMeta>, StoreError> {
        todo!()
    }

    pub async fn abort(self) {
        todo!()
    }
}

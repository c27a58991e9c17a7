//! The shard's sync log (see [`crate::synclog`]): in memory, a mirror of the `synclog`
//! db; every change is journaled in the same step as the in-memory update.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::synclog::{decode_entry, encode_entry, SyncBacklog, SyncEntry};

#[derive(Default)]
pub(super) struct SyncState {
    /// By db key.
    entries: BTreeMap<String, SyncEntry>,
    /// (object key, backend) of every entry: "does any backend still miss this key?".
    by_key: BTreeSet<(String, String)>,
    /// Entry id -> db key, oldest first.
    order: BTreeMap<u64, String>,
    last_id: u64,
}

impl SyncState {
    pub(super) fn recover(values: Vec<Vec<u8>>) -> Result<SyncState, StoreError> {
        let mut st = SyncState::default();
        for v in values {
            let e = decode_entry(&v)?;
            st.insert(e);
        }
        Ok(st)
    }

    fn next_id(&mut self) -> u64 {
        // Rising across restarts: ids are taken from the wall clock when it is ahead.
        self.last_id = (self.last_id + 1).max(wall_ms() << 12);
        self.last_id
    }

    /// Inserts (superseding the entry of the same backend and key); returns the old one.
    fn insert(&mut self, e: SyncEntry) -> Option<SyncEntry> {
        self.last_id = self.last_id.max(e.id);
        let k = e.db_key();
        let old = self.remove(&k);
        self.by_key.insert((e.key.clone(), e.backend.clone()));
        self.order.insert(e.id, k.clone());
        self.entries.insert(k, e);
        old
    }

    fn remove(&mut self, db_key: &str) -> Option<SyncEntry> {
        let old = self.entries.remove(db_key)?;
        self.by_key.remove(&(old.key.clone(), old.backend.clone()));
        self.order.remove(&old.id);
        Some(old)
    }
}

impl Shard {
    /// Journal ops for `entries` (ids assigned here), applied to the in-memory log now.
    pub(super) fn sync_ops(&self, entries: Vec<SyncEntry>) -> Vec<Op> {
        if entries.is_empty() {
            return Vec::new();
        }
        let mut sync = self.core.sync.borrow_mut();
        let ops = entries
            .into_iter()
            .map(|mut e| {
                e.id = sync.next_id();
                let op = Op::PutSync(e.db_key(), encode_entry(&e));
                sync.insert(e);
                op
            })
            .collect();
        drop(sync);
        self.core.sync_notify.notify_waiters();
        self.core.sync_notify.notify_one();
        ops
    }

    /// Adds entries durably. With `only_new_keys`, keys that any backend still has an
    /// entry for are skipped (a repair found by a read or a check never overrides what
    /// nearcache itself queued, e.g. a delete). Returns how many were added.
    pub async fn log_sync(
        &self,
        entries: Vec<SyncEntry>,
        only_new_keys: bool,
    ) -> Result<usize, StoreError> {
        let entries: Vec<SyncEntry> = if only_new_keys {
            entries
                .into_iter()
                .filter(|e| !self.sync_has_key(&e.key))
                .collect()
        } else {
            entries
        };
        let n = entries.len();
        if n == 0 {
            return Ok(0);
        }
        let ack = self.core.submit(self.sync_ops(entries))?;
        Journal::wait(ack).await?;
        Ok(n)
    }

    /// Removes the entry of (backend, key) if it is still the one with `id` (a repair
    /// finished); false if a newer entry superseded it.
    pub async fn complete_sync(
        &self,
        backend: &str,
        key: &str,
        id: u64,
    ) -> Result<bool, StoreError> {
        let db_key = crate::synclog::db_key(backend, key);
        let ack = {
            let mut sync = self.core.sync.borrow_mut();
            if sync.entries.get(&db_key).map(|e| e.id) != Some(id) {
                return Ok(false);
            }
            sync.remove(&db_key);
            drop(sync);
            self.core.submit(vec![Op::RemoveSync(db_key)])?
        };
        Journal::wait(ack).await?;
        Ok(true)
    }

    /// Up to `limit` entries, oldest first, that `take` accepts.
    pub fn sync_entries(
        &self,
        limit: usize,
        mut take: impl FnMut(&SyncEntry) -> bool,
    ) -> Vec<SyncEntry> {
        let sync = self.core.sync.borrow();
        sync.order
            .values()
            .filter_map(|k| sync.entries.get(k))
            .filter(|e| take(e))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Whether (backend, key) has an entry.
    pub fn sync_has(&self, backend: &str, key: &str) -> bool {
        self.core
            .sync
            .borrow()
            .by_key
            .contains(&(key.to_owned(), backend.to_owned()))
    }

    /// Whether any backend has an entry for `key`.
    pub fn sync_has_key(&self, key: &str) -> bool {
        let sync = self.core.sync.borrow();
        sync.by_key
            .range((key.to_owned(), String::new())..)
            .next()
            .is_some_and(|(k, _)| k == key)
    }

    /// Entries per backend: count, bytes to copy, oldest.
    pub fn sync_backlog(&self) -> BTreeMap<String, SyncBacklog> {
        let sync = self.core.sync.borrow();
        let mut out: BTreeMap<String, SyncBacklog> = BTreeMap::new();
        for e in sync.entries.values() {
            let b = out.entry(e.backend.clone()).or_default();
            b.entries += 1;
            if e.kind == crate::SyncKind::Put {
                b.bytes += e.size;
            }
            if b.oldest_ms == 0 || e.created_ms < b.oldest_ms {
                b.oldest_ms = e.created_ms;
            }
        }
        out
    }

    /// Where the body of the current version of `key` lies, for a repair that copies it.
    /// A file may go away (eviction, a newer write) while it is read; the copy then fails
    /// and is retried from another source.
    pub fn stored_body(&self, key: &str) -> Option<(crate::BodyAt, Rc<ObjectMeta>)> {
        let meta = self
            .core
            .state
            .borrow()
            .index
            .get(&self.core.journal, key)?;
        Some((self.core.body_at(&meta), meta))
    }

    /// Resolves when entries may have been added.
    pub async fn sync_changed(&self) {
        self.core.sync_notify.notified().await;
    }
}

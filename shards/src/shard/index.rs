//! The shard's index: every object it holds, by key, with the full metadata in memory
//! for the recently used ones only.
//!
//! Why: an [`ObjectMeta`] takes about 400 B of heap (its strings and maps), and a disk of
//! small objects holds millions of them. The journal's `objects` db holds every meta
//! anyway, so a cold entry keeps only what the shard decides with without reading it
//! (the version's seq, whether its body is inline); its meta is read back from LMDB (one
//! short read txn, on pages recovery already touched) when it is next needed.
//!
//! A meta that replaced an older one may be dropped from memory only once the journal
//! batch that wrote it committed: until then LMDB still answers with the older value.

use std::collections::VecDeque;

use crate::eviction::NoSpace;

use super::*;

/// Set in [`Slot`]'s word when the body is inline: seqs count up from 1 and never reach
/// 2^63, and the flag rides in the same word instead of padding the node by 8 bytes.
const INLINE_BIT: u64 = 1 << 63;

/// One object of the index.
pub(super) struct Slot {
    /// Journal seq of the version held (it also names its object file), and
    /// [`INLINE_BIT`] when its body is in the journal's `bodies` db.
    seq_inline: u64,
    /// The version's meta, while it is resident.
    meta: Option<Rc<ObjectMeta>>,
}

impl Slot {
    fn new(seq: u64, inline: bool, meta: Option<Rc<ObjectMeta>>) -> Slot {
        debug_assert!(seq & INLINE_BIT == 0);
        Slot {
            seq_inline: seq | if inline { INLINE_BIT } else { 0 },
            meta,
        }
    }

    pub fn seq(&self) -> u64 {
        self.seq_inline & !INLINE_BIT
    }

    /// The body is in the journal, not in an object file.
    pub fn inline(&self) -> bool {
        self.seq_inline & INLINE_BIT != 0
    }
}

/// A meta made resident, in the order they were.
struct Resident {
    key: Rc<str>,
    meta: Rc<ObjectMeta>,
    /// The journal batch (numbered by [`Journal::batches_submitted`]) that must commit
    /// before the meta may be dropped; 0 for one read from the journal.
    batch: u64,
}

pub(super) struct Index {
    /// Every object, with its disk tier eviction state: weights are body sizes; pinned
    /// while not in the origin. One node per object holds the key, once.
    disk: S3Fifo<Rc<str>, Slot>,
    /// Oldest first. An element whose slot has since moved on (removed, or given another
    /// meta) is skipped when it reaches the front: that meta has an element of its own.
    resident: VecDeque<Resident>,
    max_resident: usize,
    metrics: Arc<ShardMetrics>,
}

impl Index {
    /// An index for `disk_capacity` bytes of bodies, with room for `objects` before it
    /// grows.
    pub fn new(
        disk_capacity: u64,
        objects: usize,
        max_resident: usize,
        metrics: Arc<ShardMetrics>,
    ) -> Index {
        Index {
            disk: S3Fifo::with_capacity(disk_capacity, objects),
            resident: VecDeque::new(),
            max_resident: max_resident.max(1),
            metrics,
        }
    }

    /// The disk tier's eviction state (sizes and counts).
    pub fn disk(&self) -> &S3Fifo<Rc<str>, Slot> {
        &self.disk
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.disk.contains(key)
    }

    /// The seq of the version `key` holds.
    pub fn seq(&self, key: &str) -> Option<u64> {
        self.disk.get(key).map(Slot::seq)
    }

    pub fn set_pinned(&mut self, key: &str, pinned: bool) {
        self.disk.set_pinned(key, pinned);
    }

    /// Evicts unpinned objects until `incoming` more bytes fit; the victims are gone
    /// from the index (see [`S3Fifo::make_room`]).
    pub fn make_room(&mut self, incoming: u64) -> Result<Vec<(Rc<str>, Slot)>, NoSpace> {
        self.disk.make_room_entries(incoming)
    }

    /// `key`'s meta: the resident one, else read from the journal (and not kept). `None`
    /// when the key holds no object, or when its entry cannot be read (logged as an error:
    /// the version is then treated as absent, and a newer write or fetch replaces it).
    pub fn get(&self, journal: &Journal, key: &str) -> Option<Rc<ObjectMeta>> {
        let slot = self.disk.get(key)?;
        match &slot.meta {
            Some(m) => Some(m.clone()),
            None => self.load(journal, key, slot.seq()).map(Rc::new),
        }
    }

    /// Like [`Index::get`], and a meta read from the journal stays resident: for lookups,
    /// whose keys are likely to be asked for again. `hit`: also counts a hit for eviction.
    pub fn get_keep(&mut self, journal: &Journal, key: &str, hit: bool) -> Option<Rc<ObjectMeta>> {
        let (k, slot) = self.disk.entry_mut(key, hit)?;
        if let Some(m) = &slot.meta {
            return Some(m.clone());
        }
        let (k, seq) = (k.clone(), slot.seq());
        let meta = Rc::new(self.load(journal, key, seq)?);
        if let Some((_, slot)) = self.disk.entry_mut(key, false) {
            slot.meta = Some(meta.clone());
        }
        self.resident.push_back(Resident {
            key: k,
            meta: meta.clone(),
            batch: 0,
        });
        self.trim(journal);
        Some(meta)
    }

    /// Puts `meta` in place of whatever `key` held (`pinned`: not evictable). It stays
    /// resident at least until the next journal batch the shard submits (the one that
    /// must carry it) commits.
    pub fn insert(&mut self, journal: &Journal, key: Rc<str>, meta: Rc<ObjectMeta>, pinned: bool) {
        let slot = Slot::new(meta.seq, meta.inline, Some(meta.clone()));
        self.disk.insert_value(key.clone(), slot, meta.size, pinned);
        self.keep(journal, key, meta);
    }

    /// Replaces the meta of the version `key` holds (same seq and size: a level, origin
    /// or freshness change), resident as after [`Index::insert`].
    pub fn replace(&mut self, journal: &Journal, key: &str, meta: Rc<ObjectMeta>) {
        let Some((k, slot)) = self.disk.entry_mut(key, false) else {
            return;
        };
        slot.meta = Some(meta.clone());
        let k = k.clone();
        self.keep(journal, k, meta);
    }

    fn keep(&mut self, journal: &Journal, key: Rc<str>, meta: Rc<ObjectMeta>) {
        self.resident.push_back(Resident {
            key,
            meta,
            batch: journal.batches_submitted() + 1,
        });
        self.trim(journal);
    }

    /// An object recovery found; its meta is read when first needed.
    pub fn insert_cold(&mut self, key: Rc<str>, seq: u64, inline: bool, size: u64, pinned: bool) {
        self.disk
            .insert_value(key, Slot::new(seq, inline, None), size, pinned);
    }

    pub fn remove(&mut self, key: &str) -> Option<Slot> {
        self.disk.take(key)
    }

    pub fn shrink_to_fit(&mut self) {
        self.disk.shrink_to_fit();
    }

    pub fn keys(&self) -> impl Iterator<Item = &Rc<str>> {
        self.disk.iter().map(|(k, _)| k)
    }

    /// Drops the oldest resident metas beyond the bound whose batch committed. Stops at
    /// the first that has not: batches commit in order, so the ones behind it have not
    /// either (reads ones aside, which wait their turn).
    fn trim(&mut self, journal: &Journal) {
        if self.resident.len() <= self.max_resident {
            self.publish();
            return;
        }
        let committed = journal.batches_committed();
        while self.resident.len() > self.max_resident {
            let Some(front) = self.resident.front() else {
                break;
            };
            if front.batch > committed {
                break;
            }
            let Some(r) = self.resident.pop_front() else {
                break;
            };
            if let Some(slot) = self.disk.get_mut(&*r.key) {
                if slot.meta.as_ref().is_some_and(|m| Rc::ptr_eq(m, &r.meta)) {
                    slot.meta = None;
                }
            }
        }
        self.publish();
    }

    fn publish(&self) {
        self.metrics
            .resident_metas
            .store(self.resident.len() as u64, Ordering::Relaxed);
    }

    /// `key`'s object meta from the journal; it must be the version `seq` the index holds.
    fn load(&self, journal: &Journal, key: &str, seq: u64) -> Option<ObjectMeta> {
        self.metrics.meta_reads.fetch_add(1, Ordering::Relaxed);
        load(journal, key, seq)
    }
}

/// `key`'s object meta from the journal; it must be the version `seq` the index holds.
fn load(journal: &Journal, key: &str, seq: u64) -> Option<ObjectMeta> {
    match journal.read_entry(key) {
        Ok(Some(StoredEntry::Object(m))) if m.seq == seq => Some(m),
        Ok(found) => {
            let found = match found {
                Some(StoredEntry::Object(m)) => format!("object version {}", m.seq),
                Some(StoredEntry::Tombstone(t)) => format!("a tombstone (seq {})", t.seq),
                None => "no entry".to_owned(),
            };
            tracing::error!(
                key,
                expected = seq,
                found,
                "the journal's entry for an indexed object is not the version the index holds; treating the key as absent"
            );
            None
        }
        Err(e) => {
            tracing::error!(key, error = %e, "reading an object's meta from the journal; treating the key as absent");
            None
        }
    }
}

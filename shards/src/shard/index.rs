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

use super::*;

/// One object of the index.
pub(super) struct Slot {
    /// Journal seq of the version held; also names its object file.
    pub seq: u64,
    /// The body is in the journal's `bodies` db, not in an object file.
    pub inline: bool,
    /// The version's meta, while it is resident.
    meta: Option<Rc<ObjectMeta>>,
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
    slots: HashMap<Rc<str>, Slot, crate::KeyHasher>,
    /// Oldest first. An element whose slot has since moved on (removed, or given another
    /// meta) is skipped when it reaches the front: that meta has an element of its own.
    resident: VecDeque<Resident>,
    max_resident: usize,
    metrics: Arc<ShardMetrics>,
}

impl Index {
    pub fn with_capacity(objects: usize, max_resident: usize, metrics: Arc<ShardMetrics>) -> Index {
        Index {
            slots: HashMap::with_capacity_and_hasher(objects, Default::default()),
            resident: VecDeque::new(),
            max_resident: max_resident.max(1),
            metrics,
        }
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.slots.contains_key(key)
    }

    /// The seq of the version `key` holds.
    pub fn seq(&self, key: &str) -> Option<u64> {
        self.slots.get(key).map(|s| s.seq)
    }

    /// `key`'s meta: the resident one, else read from the journal (and not kept). `None`
    /// when the key holds no object, or when its entry cannot be read (logged as an error:
    /// the version is then treated as absent, and a newer write or fetch replaces it).
    pub fn get(&self, journal: &Journal, key: &str) -> Option<Rc<ObjectMeta>> {
        let slot = self.slots.get(key)?;
        match &slot.meta {
            Some(m) => Some(m.clone()),
            None => self.load(journal, key, slot.seq).map(Rc::new),
        }
    }

    /// Like [`Index::get`], and a meta read from the journal stays resident: for lookups,
    /// whose keys are likely to be asked for again.
    pub fn get_keep(&mut self, journal: &Journal, key: &str) -> Option<Rc<ObjectMeta>> {
        let slot = self.slots.get(key)?;
        if let Some(m) = &slot.meta {
            return Some(m.clone());
        }
        let seq = slot.seq;
        let meta = Rc::new(self.load(journal, key, seq)?);
        let slot = self.slots.get_mut(key)?;
        slot.meta = Some(meta.clone());
        let (k, _) = self.slots.get_key_value(key)?;
        self.resident.push_back(Resident {
            key: k.clone(),
            meta: meta.clone(),
            batch: 0,
        });
        self.trim(journal);
        Some(meta)
    }

    /// Puts `meta` in place of whatever `key` held; it stays resident at least until the
    /// next journal batch the shard submits (the one that must carry it) commits.
    pub fn insert(&mut self, journal: &Journal, key: Rc<str>, meta: Rc<ObjectMeta>) {
        self.slots.insert(
            key.clone(),
            Slot {
                seq: meta.seq,
                inline: meta.inline,
                meta: Some(meta.clone()),
            },
        );
        self.resident.push_back(Resident {
            key,
            meta,
            batch: journal.batches_submitted() + 1,
        });
        self.trim(journal);
    }

    /// Replaces the meta of the version `key` holds (same seq: a level, origin or
    /// freshness change), like [`Index::insert`].
    pub fn replace(&mut self, journal: &Journal, key: &str, meta: Rc<ObjectMeta>) {
        if let Some((k, _)) = self.slots.get_key_value(key) {
            let k = k.clone();
            self.insert(journal, k, meta);
        }
    }

    /// An object recovery found; its meta is read when first needed.
    pub fn insert_cold(&mut self, key: Rc<str>, seq: u64, inline: bool) {
        self.slots.insert(
            key,
            Slot {
                seq,
                inline,
                meta: None,
            },
        );
    }

    pub fn remove(&mut self, key: &str) -> Option<Slot> {
        self.slots.remove(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &Rc<str>> {
        self.slots.keys()
    }

    pub fn shrink_to_fit(&mut self) {
        self.slots.shrink_to_fit();
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
            if let Some(slot) = self.slots.get_mut(&*r.key) {
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

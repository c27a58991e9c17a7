//! S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP'23),
//! weighted by bytes, with pinned entries.
//!
//! ```text
//!   new key ──► small FIFO (10% of bytes) ──tail, freq > 1──► main FIFO (the rest)
//!      │            │ tail, freq <= 1                          │ tail, freq > 0:
//!      │            ▼                                          │   freq -= 1, back to head
//!      │        ghost FIFO (hashes only) ◄─┐                   │ tail, freq == 0: evict
//!      └── key hash in ghost? ─────────────┴──► straight into main
//! ```
//!
//! Why it beats LRU on cache workloads: most objects are requested once. The small
//! queue lets those one-hit wonders leave after a short probation instead of pushing
//! hot objects out of the whole cache, and the ghost remembers what was evicted too
//! early so its second miss lands in main.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

use super::list::{List, Queue, Slab};
use super::{bytes_to_free, impl_policy, NoSpace};

/// The access counter saturates here (the paper's two bits).
pub(super) const MAX_FREQ: u8 = 3;
/// A small-queue entry moves to main when it was hit more than once while there:
/// Algorithm 1's `if t.freq > 1`, also libCacheSim's default threshold (2).
const MOVE_TO_MAIN_FREQ: u8 = 2;
/// Share of the capacity, in bytes, that the small queue is sized to (paper: 10%).
const SMALL_PERCENT: u64 = 10;

/// S3-FIFO eviction state for one cache tier, with a value of type `V` kept beside
/// each key (the shard keeps its index this way: one table, one node per object). See
/// the module docs.
pub struct S3Fifo<K, V = ()> {
    capacity: u64,
    /// `capacity * SMALL_PERCENT / 100`: evict from small while it holds this much.
    small_target: u64,
    used: u64,
    pinned_bytes: u64,
    hasher: crate::KeyHasher,
    /// Slab indices, hashed by their node's key: 4 bytes an entry, the key held once
    /// (in its node).
    index: HashTable<u32>,
    slab: Slab<K, V>,
    small: List,
    main: List,
    ghost: Ghost,
}

impl<K: Hash + Eq> S3Fifo<K> {
    pub fn new(capacity_bytes: u64) -> Self {
        Self::with_capacity(capacity_bytes, 0)
    }
}

impl<K: Hash + Eq, V> S3Fifo<K, V> {
    /// Room for `entries` keys before any table or slab grows.
    pub fn with_capacity(capacity_bytes: u64, entries: usize) -> Self {
        Self {
            capacity: capacity_bytes,
            small_target: capacity_bytes / 100 * SMALL_PERCENT
                + capacity_bytes % 100 * SMALL_PERCENT / 100,
            used: 0,
            pinned_bytes: 0,
            index: HashTable::with_capacity(entries),
            hasher: crate::KeyHasher::default(),
            slab: Slab::with_capacity(entries),
            small: List::default(),
            main: List::default(),
            ghost: Ghost::default(),
        }
    }

    /// The slab index of `key`'s node.
    fn find<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<u32>
    where
        K: Borrow<Q>,
    {
        let slab = &self.slab;
        self.index
            .find(self.hasher.hash_one(key), |&i| {
                slab.get(i).key.borrow() == key
            })
            .copied()
    }

    /// Drops slab index `idx` (whose node holds `key`) from the table.
    fn unindex(&mut self, hash: u64, idx: u32) {
        if let Ok(e) = self.index.find_entry(hash, |&i| i == idx) {
            e.remove();
        }
    }

    /// Adds `key`, or replaces the weight and pin of an existing entry in place (its
    /// queue position and frequency stay: an overwrite is not a sign of popularity).
    /// Never evicts; call [`Self::make_room`] first to stay within capacity.
    pub fn insert(&mut self, key: K, weight: u64, pinned: bool)
    where
        V: Default,
    {
        self.insert_value(key, V::default(), weight, pinned);
    }

    /// [`Self::insert`] with the value to keep beside the key (an existing entry's
    /// value is replaced).
    pub fn insert_value(&mut self, key: K, value: V, weight: u64, pinned: bool) {
        if let Some(idx) = self.find(&key) {
            self.slab.get_mut(idx).value = value;
            let node = self.slab.get(idx);
            self.used = self.used - node.weight + weight;
            self.pinned_bytes = self.pinned_bytes - pinned_weight(node.weight, node.pinned)
                + pinned_weight(weight, pinned);
            let list = match node.queue {
                Queue::Small => &mut self.small,
                Queue::Main => &mut self.main,
            };
            self.slab.reweigh(list, idx, weight, pinned);
            return;
        }
        // A key evicted from small not long ago: it was evicted too early, so it
        // skips probation this time.
        let hash = self.hasher.hash_one(&key);
        let queue = if self.ghost.take(hash) {
            Queue::Main
        } else {
            Queue::Small
        };
        let idx = self.slab.alloc(key, value, weight, pinned, queue);
        match queue {
            Queue::Small => self.slab.push_head(&mut self.small, idx),
            Queue::Main => self.slab.push_head(&mut self.main, idx),
        }
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.index
            .insert_unique(hash, idx, |&i| hasher.hash_one(&slab.get(i).key));
        self.used += weight;
        self.pinned_bytes += pinned_weight(weight, pinned);
    }

    /// Records a hit. O(1) and no list surgery: just a saturating counter.
    pub fn access<Q: Hash + Eq + ?Sized>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
    {
        if let Some(idx) = self.find(key) {
            let node = self.slab.get_mut(idx);
            node.freq = (node.freq + 1).min(MAX_FREQ);
        }
    }

    /// `key` as stored and its value, after counting a hit when `hit` ([`Self::access`]):
    /// one probe for both.
    pub fn entry_mut<Q: Hash + Eq + ?Sized>(&mut self, key: &Q, hit: bool) -> Option<(&K, &mut V)>
    where
        K: Borrow<Q>,
    {
        let node = self.slab.get_mut(self.find(key)?);
        if hit {
            node.freq = (node.freq + 1).min(MAX_FREQ);
        }
        Some((&node.key, &mut node.value))
    }

    /// The value kept beside `key`.
    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.find(key).map(|i| &self.slab.get(i).value)
    }

    /// `key` as stored, and its value.
    pub fn get_key_value<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<(&K, &V)>
    where
        K: Borrow<Q>,
    {
        self.find(key).map(|i| {
            let n = self.slab.get(i);
            (&n.key, &n.value)
        })
    }

    pub fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.find(key).map(|i| &mut self.slab.get_mut(i).value)
    }

    /// Gives back room reserved for entries that never came.
    pub fn shrink_to_fit(&mut self) {
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.index
            .shrink_to_fit(|&i| hasher.hash_one(&slab.get(i).key));
        self.slab.shrink_to_fit();
    }

    /// Every key and its value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slab.iter().map(|n| (&n.key, &n.value))
    }

    /// Drops `key` (a delete, not an eviction: it does not go to the ghost).
    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.take(key).is_some()
    }

    /// [`Self::remove`], handing back the value.
    pub fn take<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let idx = self.find(key)?;
        self.unindex(self.hasher.hash_one(key), idx);
        let list = match self.slab.get(idx).queue {
            Queue::Small => &mut self.small,
            Queue::Main => &mut self.main,
        };
        self.slab.unlink(list, idx);
        let node = self.slab.dealloc(idx);
        self.used -= node.weight;
        self.pinned_bytes -= pinned_weight(node.weight, node.pinned);
        Some(node.value)
    }

    pub fn set_pinned<Q: Hash + Eq + ?Sized>(&mut self, key: &Q, pinned: bool)
    where
        K: Borrow<Q>,
    {
        if let Some(idx) = self.find(key) {
            let node = self.slab.get(idx);
            if node.pinned == pinned {
                return;
            }
            let weight = node.weight;
            if pinned {
                self.pinned_bytes += weight;
            } else {
                self.pinned_bytes -= weight;
            }
            let list = match node.queue {
                Queue::Small => &mut self.small,
                Queue::Main => &mut self.main,
            };
            self.slab.reweigh(list, idx, weight, pinned);
        }
    }

    pub fn contains<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(key).is_some()
    }

    /// Sum of the weights of all entries, pinned or not.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Sum of the weights of the pinned entries.
    pub fn pinned_bytes(&self) -> u64 {
        self.pinned_bytes
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Evicts unpinned entries until used + incoming <= capacity; returns the victims (already removed).
    /// If even evicting every unpinned entry isn't enough, evicts nothing and returns Err(NoSpace{needed, evictable}).
    pub fn make_room(&mut self, incoming: u64) -> Result<Vec<K>, NoSpace> {
        Ok(self
            .make_room_entries(incoming)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// [`Self::make_room`], handing back each victim's value with its key.
    pub fn make_room_entries(&mut self, incoming: u64) -> Result<Vec<(K, V)>, NoSpace> {
        let needed = bytes_to_free(self.capacity, self.used, self.pinned_bytes, incoming)?;
        let mut victims = Vec::new();
        let mut freed = 0;
        // Terminates: `bytes_to_free` proved enough unpinned bytes exist; a small step
        // always takes one entry off small, and a main step is only taken while main
        // has an unpinned entry, whose counter reaches 0 within MAX_FREQ + 1 laps.
        while freed < needed {
            // The paper evicts from small while small is over its share, else from
            // main. Pinned entries change that only where one queue has nothing
            // evictable left: then the other one must give.
            let from_small = self.small.unpinned > 0
                && (self.small.bytes >= self.small_target || self.main.unpinned == 0);
            let victim = if from_small {
                self.evict_small_step()
            } else {
                self.evict_main_step()
            };
            if let Some((key, value, weight)) = victim {
                freed += weight;
                victims.push((key, value));
            }
        }
        Ok(victims)
    }

    /// Looks at small's tail: hit more than once (or pinned) → main, else evicted and
    /// remembered in the ghost.
    fn evict_small_step(&mut self) -> Option<(K, V, u64)> {
        let idx = self
            .small
            .tail()
            .expect("small step on an empty small queue");
        self.slab.unlink(&mut self.small, idx);
        let node = self.slab.get_mut(idx);
        if node.pinned || node.freq >= MOVE_TO_MAIN_FREQ {
            // The counter starts over in main: main's laps measure reuse from now.
            node.freq = 0;
            node.queue = Queue::Main;
            self.slab.push_head(&mut self.main, idx);
            return None;
        }
        let hash = self.hasher.hash_one(&self.slab.get(idx).key);
        let victim = self.evict(idx);
        let ghost_cap = self.ghost_capacity();
        self.ghost.push(hash, ghost_cap);
        Some(victim)
    }

    /// Looks at main's tail: hit since the last lap (or pinned) → back to the head
    /// with one hit less, else evicted.
    fn evict_main_step(&mut self) -> Option<(K, V, u64)> {
        let idx = self.main.tail().expect("main step on an empty main queue");
        let node = self.slab.get_mut(idx);
        if node.pinned || node.freq > 0 {
            // Pinned entries age too, so they compete fairly once unpinned.
            node.freq = node.freq.saturating_sub(1);
            self.slab.move_to_head(&mut self.main, idx);
            return None;
        }
        self.slab.unlink(&mut self.main, idx);
        Some(self.evict(idx))
    }

    /// Frees an unlinked, unpinned node and returns its key, value and weight.
    fn evict(&mut self, idx: u32) -> (K, V, u64) {
        let hash = self.hasher.hash_one(&self.slab.get(idx).key);
        self.unindex(hash, idx);
        let node = self.slab.dealloc(idx);
        debug_assert!(!node.pinned);
        self.used -= node.weight;
        (node.key, node.value, node.weight)
    }

    /// The ghost holds about as many entries as main would when full: main's byte
    /// share divided by the mean entry weight. Counting main's current entries
    /// instead would leave the ghost empty while main is still filling up.
    fn ghost_capacity(&self) -> usize {
        let main_share = self.capacity - self.small_target;
        let len = self.index.len() as u64;
        let estimate = if self.used == 0 {
            0
        } else {
            u64::try_from(u128::from(main_share) * u128::from(len) / u128::from(self.used))
                .unwrap_or(u64::MAX)
        };
        usize::try_from(estimate)
            .unwrap_or(usize::MAX)
            .max(self.main.len)
            .max(1)
    }
}

impl_policy!(S3Fifo);

fn pinned_weight(weight: u64, pinned: bool) -> u64 {
    if pinned {
        weight
    } else {
        0
    }
}

/// Keys recently evicted from small, as 64-bit hashes (a false positive only sends
/// a key to main early). A FIFO of `(hash, seq)` plus a map from hash to the seq of
/// its latest push, so a hit can drop a hash in O(1): the queue's copy goes stale
/// and is skipped when it reaches the front.
#[derive(Default)]
struct Ghost {
    queue: VecDeque<(u64, u64)>,
    live: HashMap<u64, u64>,
    seq: u64,
}

impl Ghost {
    fn push(&mut self, hash: u64, capacity: usize) {
        self.seq += 1;
        self.live.insert(hash, self.seq);
        self.queue.push_back((hash, self.seq));
        // Bounding the queue too (at twice the capacity) keeps stale copies from
        // piling up when most ghosts are hit before they age out.
        while self.live.len() > capacity || self.queue.len() > 2 * capacity {
            let Some((old, seq)) = self.queue.pop_front() else {
                break;
            };
            if self.live.get(&old) == Some(&seq) {
                self.live.remove(&old);
            }
        }
    }

    /// Whether `hash` was in the ghost; it is removed either way.
    fn take(&mut self, hash: u64) -> bool {
        self.live.remove(&hash).is_some()
    }
}

#[cfg(test)]
impl<K: Hash + Eq, V> S3Fifo<K, V> {
    /// Whether `key` is in main (tests of ghost re-admission).
    pub(super) fn in_main(&self, key: &K) -> bool {
        self.find(key)
            .is_some_and(|idx| self.slab.get(idx).queue == Queue::Main)
    }

    /// Recomputes every aggregate from the nodes and checks it.
    pub(super) fn check_invariants(&self) {
        let (mut used, mut pinned) = (0, 0);
        for &idx in self.index.iter() {
            assert_eq!(self.find(&self.slab.get(idx).key), Some(idx));
            let n = self.slab.get(idx);
            used += n.weight;
            pinned += pinned_weight(n.weight, n.pinned);
            assert!(n.freq <= MAX_FREQ);
        }
        assert_eq!(used, self.used);
        assert_eq!(pinned, self.pinned_bytes);
        assert_eq!(self.small.len + self.main.len, self.index.len());
        assert_eq!(self.small.bytes + self.main.bytes, self.used);
    }
}

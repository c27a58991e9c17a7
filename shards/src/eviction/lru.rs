//! Plain LRU, weighted by bytes, with pinned entries: the baseline that the
//! benchmarks measure S3-FIFO against. Not used by the shard engine.

use std::collections::HashMap;
use std::hash::Hash;

use super::list::{List, Queue, Slab};
use super::{bytes_to_free, impl_policy, NoSpace};

/// Least-recently-used eviction. Same method set as [`super::S3Fifo`].
pub struct Lru<K> {
    capacity: u64,
    used: u64,
    pinned_bytes: u64,
    index: HashMap<K, u32>,
    slab: Slab<K, ()>,
    /// Head = most recently used; victims come from the tail.
    list: List,
}

impl<K: Hash + Eq + Clone> Lru<K> {
    pub fn new(capacity_bytes: u64) -> Self {
        Self {
            capacity: capacity_bytes,
            used: 0,
            pinned_bytes: 0,
            index: HashMap::new(),
            slab: Slab::with_capacity(0),
            list: List::default(),
        }
    }

    /// Adds `key` as most recently used, or replaces weight and pin of an existing
    /// entry (which then also counts as used). Never evicts.
    pub fn insert(&mut self, key: K, weight: u64, pinned: bool) {
        if let Some(&idx) = self.index.get(&key) {
            let node = self.slab.get(idx);
            self.used = self.used - node.weight + weight;
            self.pinned_bytes = self.pinned_bytes - if node.pinned { node.weight } else { 0 }
                + if pinned { weight } else { 0 };
            self.slab.reweigh(&mut self.list, idx, weight, pinned);
            self.slab.move_to_head(&mut self.list, idx);
            return;
        }
        let idx = self
            .slab
            .alloc(key.clone(), (), weight, pinned, Queue::Main);
        self.slab.push_head(&mut self.list, idx);
        self.index.insert(key, idx);
        self.used += weight;
        if pinned {
            self.pinned_bytes += weight;
        }
    }

    pub fn access(&mut self, key: &K) {
        if let Some(&idx) = self.index.get(key) {
            self.slab.move_to_head(&mut self.list, idx);
        }
    }

    pub fn remove(&mut self, key: &K) -> bool {
        let Some(idx) = self.index.remove(key) else {
            return false;
        };
        self.slab.unlink(&mut self.list, idx);
        let node = self.slab.dealloc(idx);
        self.used -= node.weight;
        if node.pinned {
            self.pinned_bytes -= node.weight;
        }
        true
    }

    pub fn set_pinned(&mut self, key: &K, pinned: bool) {
        if let Some(&idx) = self.index.get(key) {
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
            self.slab.reweigh(&mut self.list, idx, weight, pinned);
        }
    }

    pub fn contains(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    pub fn used(&self) -> u64 {
        self.used
    }

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

    /// Evicts unpinned entries from the cold end until used + incoming <= capacity;
    /// returns the victims (already removed). If even evicting every unpinned entry
    /// isn't enough, evicts nothing and returns Err(NoSpace{needed, evictable}).
    pub fn make_room(&mut self, incoming: u64) -> Result<Vec<K>, NoSpace> {
        let needed = bytes_to_free(self.capacity, self.used, self.pinned_bytes, incoming)?;
        let mut victims = Vec::new();
        let mut freed = 0;
        // Terminates: enough unpinned bytes exist, and each pinned tail entry is
        // moved to the head, so every lap of the list evicts.
        while freed < needed {
            let idx = self
                .list
                .tail()
                .expect("unpinned bytes exist, so the list is not empty");
            if self.slab.get(idx).pinned {
                self.slab.move_to_head(&mut self.list, idx);
                continue;
            }
            self.slab.unlink(&mut self.list, idx);
            let node = self.slab.dealloc(idx);
            self.index.remove(&node.key);
            self.used -= node.weight;
            freed += node.weight;
            victims.push(node.key);
        }
        Ok(victims)
    }
}

impl_policy!(Lru);

#[cfg(test)]
impl<K: Hash + Eq + Clone> Lru<K> {
    pub(super) fn check_invariants(&self) {
        let (mut used, mut pinned) = (0, 0);
        for &idx in self.index.values() {
            let n = self.slab.get(idx);
            used += n.weight;
            pinned += if n.pinned { n.weight } else { 0 };
        }
        assert_eq!(used, self.used);
        assert_eq!(pinned, self.pinned_bytes);
        assert_eq!(self.list.len, self.index.len());
        assert_eq!(self.list.bytes, self.used);
    }
}

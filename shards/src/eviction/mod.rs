//! Eviction policies: S3-FIFO (used by the shard engine) and LRU (the baseline the
//! benchmarks compare it with).
//!
//! Both policies only do bookkeeping: they track keys and their weights (bytes) and
//! pick victims. They never touch the objects themselves; the caller deletes whatever
//! [`S3Fifo::make_room`] returns. The intended call sequence on a miss or a write is
//!
//! ```text
//! let victims = policy.make_room(weight)?;   // evict first, so capacity holds ...
//! for v in victims { delete object v }
//! policy.insert(key, weight, pinned);       // ... and the new entry fits
//! ```
//!
//! `insert` itself never evicts: it may push `used` over `capacity`, which is what the
//! shard wants for pinned writes that must be accepted anyway (the next `make_room`
//! brings `used` back down as soon as enough unpinned entries exist).
//!
//! **Pinned** entries (objects not yet safe in the origin) are never evicted. They
//! stay in the queues and are stepped over by the eviction cursor, so pinning and
//! unpinning are O(1). `make_room` checks up front whether evicting every unpinned
//! entry would be enough; if not it evicts nothing and returns [`NoSpace`], which is
//! also what guarantees that its loop terminates.
//!
//! All operations are O(1) (amortized for `make_room`, per evicted entry): entries
//! live in a slab with intrusive doubly linked lists, indexed by a `HashMap<K, u32>`.

mod list;
mod lru;
mod s3fifo;
#[cfg(test)]
mod tests;

pub use lru::Lru;
pub use s3fifo::S3Fifo;

/// `make_room` could not free enough space without evicting pinned entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSpace {
    /// Bytes that would have to be evicted: `used + incoming - capacity`.
    pub needed: u64,
    /// Bytes that can be evicted at all: `used - pinned_bytes`.
    pub evictable: u64,
}

impl std::fmt::Display for NoSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no space: {} bytes must be evicted but only {} are unpinned",
            self.needed, self.evictable
        )
    }
}

impl std::error::Error for NoSpace {}

/// The operations the benchmarks drive, implemented by both policies so one harness
/// runs both. The shard engine uses [`S3Fifo`] directly.
pub trait Policy<K> {
    fn insert(&mut self, key: K, weight: u64, pinned: bool);
    fn access(&mut self, key: &K);
    fn remove(&mut self, key: &K) -> bool;
    fn contains(&self, key: &K) -> bool;
    fn make_room(&mut self, incoming: u64) -> Result<Vec<K>, NoSpace>;
    fn used(&self) -> u64;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Implements [`Policy`] by forwarding to the inherent methods of the same names.
macro_rules! impl_policy {
    ($ty:ident) => {
        impl<K: std::hash::Hash + Eq + Clone> $crate::eviction::Policy<K> for $ty<K> {
            fn insert(&mut self, key: K, weight: u64, pinned: bool) {
                $ty::insert(self, key, weight, pinned)
            }
            fn access(&mut self, key: &K) {
                $ty::access(self, key)
            }
            fn remove(&mut self, key: &K) -> bool {
                $ty::remove(self, key)
            }
            fn contains(&self, key: &K) -> bool {
                $ty::contains(self, key)
            }
            fn make_room(&mut self, incoming: u64) -> Result<Vec<K>, $crate::eviction::NoSpace> {
                $ty::make_room(self, incoming)
            }
            fn used(&self) -> u64 {
                $ty::used(self)
            }
            fn len(&self) -> usize {
                $ty::len(self)
            }
        }
    };
}
use impl_policy;

/// The up-front check shared by both policies: how many bytes must go, and can they?
/// `Ok(0)` means nothing needs evicting.
fn bytes_to_free(capacity: u64, used: u64, pinned: u64, incoming: u64) -> Result<u64, NoSpace> {
    let needed = used.saturating_add(incoming).saturating_sub(capacity);
    let evictable = used - pinned;
    if needed > evictable {
        return Err(NoSpace { needed, evictable });
    }
    Ok(needed)
}

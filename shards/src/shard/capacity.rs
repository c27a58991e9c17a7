//! Disk and memory capacity: reservations for writes in progress (evicting unpinned
//! objects, journaled), the up-front size check, and the memory tier's admission.

use super::*;

/// How far a writer's disk reservation may run ahead of the bytes it has received, when
/// it declared its size: one eviction batch per this many bytes, and a writer that stops
/// sending holds at most this much beyond what it wrote.
pub(crate) const RESERVE_AHEAD: u64 = BLOCK_SIZE;

impl Core {
    /// Reserves `n` bytes of disk for a write in progress, evicting unpinned objects.
    /// The evictions are journaled; await the returned ack, then remove the files.
    pub(super) fn reserve(
        &self,
        st: &mut State,
        n: u64,
    ) -> Result<Option<(Ack, Vec<PathBuf>)>, StoreError> {
        let used_before = st.index.disk().used();
        let reserved = st.reserved;
        let victims = st.index.make_room(reserved + n).map_err(|e| {
            let free = st
                .index
                .disk()
                .capacity()
                .saturating_sub(st.index.disk().used() + reserved);
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
        self.metrics
            .evicted_bytes
            .fetch_add(used_before - st.index.disk().used(), Ordering::Relaxed);
        let mut ops = Vec::new();
        let mut files = Vec::new();
        for (key, slot) in victims {
            st.mem_remove(&key);
            self.metrics.evictions.fetch_add(1, Ordering::Relaxed);
            ops.push(Op::RemoveEntry(key.to_string()));
            ops.push(self.record(RecordKind::Evicted {
                key: key.to_string(),
                seq: slot.seq(),
            }));
            if !slot.inline() {
                files.push(self.object_path(slot.seq()));
            }
        }
        self.refresh_metrics(st);
        Ok(Some((self.submit(ops)?, files)))
    }

    /// Refuses a write that declares `n` bytes when they cannot fit even after evicting
    /// every unpinned object (pinned objects and other writes' reservations stay).
    /// Reserves and evicts nothing: writes reserve as their bytes arrive.
    pub(super) fn check_fits(&self, n: u64) -> Result<(), StoreError> {
        let st = self.state.borrow();
        let disk = st.index.disk();
        let room = disk
            .capacity()
            .saturating_sub(disk.pinned_bytes() + st.reserved);
        if n > room {
            return Err(StoreError::InsufficientStorage {
                needed: n,
                available: room,
                reason: NoSpaceReason::ShardCapacity,
            });
        }
        Ok(())
    }

    pub(super) fn release(&self, n: u64) {
        let mut st = self.state.borrow_mut();
        st.reserved = st.reserved.saturating_sub(n);
    }

    pub(super) fn mem_admit(&self, st: &mut State, key: &str, seq: u64, body: Bytes) {
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

    pub(super) fn mem_get(&self, key: &str, seq: u64, touch: bool) -> Option<Bytes> {
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
}

//! Hybrid logical clock: 48 bits of Unix milliseconds, 16 bits of logical counter.
//!
//! ```text
//!  63                                 16 15            0
//! +-------------------------------------+---------------+
//! |     physical: Unix time in ms        |   logical     |
//! +-------------------------------------+---------------+
//! ```
//!
//! Timestamps from one clock strictly increase, even when the wall clock steps back
//! or more than 65536 events share a millisecond (the logical part then carries into
//! the physical part). The shard persists its high-water mark so the clock never goes
//! backwards across a restart.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

const LOGICAL_BITS: u32 = 16;

/// The physical (Unix milliseconds) part of a timestamp.
pub fn physical_ms(ts: u64) -> u64 {
    ts >> LOGICAL_BITS
}

/// Current wall-clock time in Unix milliseconds.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A single-threaded hybrid logical clock (one per shard).
#[derive(Debug, Default)]
pub struct Hlc {
    last: Cell<u64>,
}

impl Hlc {
    pub fn new() -> Hlc {
        Hlc { last: Cell::new(0) }
    }

    /// A clock that starts after `high_water` (e.g. the last timestamp persisted).
    pub fn starting_after(high_water: u64) -> Hlc {
        let h = Hlc::new();
        h.observe(high_water);
        h
    }

    /// A new timestamp, greater than every timestamp issued or observed before.
    pub fn now(&self) -> u64 {
        self.now_at(wall_ms())
    }

    /// [`Hlc::now`] with the wall clock read by the caller (Unix ms): lets a simulation
    /// give each node a skewed clock of its own.
    pub fn now_at(&self, wall_ms: u64) -> u64 {
        let physical = wall_ms << LOGICAL_BITS;
        let last = self.last.get();
        let ts = if physical > last { physical } else { last + 1 };
        self.last.set(ts);
        ts
    }

    /// Takes a remote timestamp into account: later `now()` calls exceed it.
    pub fn observe(&self, remote: u64) {
        if remote > self.last.get() {
            self.last.set(remote);
        }
    }

    /// The greatest timestamp issued or observed so far.
    pub fn last(&self) -> u64 {
        self.last.get()
    }

    /// The physical (Unix milliseconds) part of a timestamp.
    pub fn physical_ms(ts: u64) -> u64 {
        physical_ms(ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_physical() {
        let h = Hlc::new();
        let before = wall_ms();
        let mut prev = h.now();
        assert!(physical_ms(prev) >= before);
        for _ in 0..100_000 {
            let t = h.now();
            assert!(t > prev);
            prev = t;
        }
        // A timestamp far in the future is observed: the clock moves past it.
        let future = (wall_ms() + 60_000) << 16 | 5;
        h.observe(future);
        assert_eq!(h.now(), future + 1);
        // Observing an older timestamp changes nothing.
        h.observe(3);
        assert_eq!(h.now(), future + 2);
        assert_eq!(Hlc::physical_ms(future), wall_ms_of(future));
        let h2 = Hlc::starting_after(future + 2);
        assert!(h2.now() > future + 2);
    }

    fn wall_ms_of(ts: u64) -> u64 {
        ts >> 16
    }
}

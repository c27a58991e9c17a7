//! Counters of the membership thread, read by anyone through `Membership::metrics`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// A snapshot of the membership counters. Counters only grow; `members_alive` is a
/// gauge taken from the current view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MembershipMetrics {
    /// Datagrams received (wake-ups excluded), including those then dropped.
    pub packets_in: u64,
    /// Datagrams sent.
    pub packets_out: u64,
    /// Received datagrams carrying another cluster name's hash.
    pub dropped_foreign_cluster: u64,
    /// Datagrams dropped in either direction because the peer is blocked
    /// (`Membership::set_blocked`).
    pub dropped_blocked: u64,
    /// Received datagrams with a bad header or a body foca could not decode.
    pub decode_errors: u64,
    /// Sends the socket refused (unreachable network, full buffer).
    pub send_errors: u64,
    /// Times this node took a new identity after being declared down.
    pub rejoins: u64,
    /// Members Alive or Suspect in the current view, self included.
    pub members_alive: u64,
}

/// The live counters behind [`MembershipMetrics`]. Relaxed: each is an independent
/// statistic, nothing is ordered by them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub dropped_foreign_cluster: AtomicU64,
    pub dropped_blocked: AtomicU64,
    pub decode_errors: AtomicU64,
    pub send_errors: AtomicU64,
    pub rejoins: AtomicU64,
    pub members_alive: AtomicU64,
}

impl Counters {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> MembershipMetrics {
        MembershipMetrics {
            packets_in: self.packets_in.load(Relaxed),
            packets_out: self.packets_out.load(Relaxed),
            dropped_foreign_cluster: self.dropped_foreign_cluster.load(Relaxed),
            dropped_blocked: self.dropped_blocked.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
            rejoins: self.rejoins.load(Relaxed),
            members_alive: self.members_alive.load(Relaxed),
        }
    }
}

//! Counters of the membership thread, read by anyone.
//!
//! Two read APIs over the same atomics:
//! - the export table: [`COUNTERS`] names every counter Prometheus-style
//!   (`nearcache_membership_<what>_<unit>[_total]`) with its help text and kind, and
//!   [`MembershipCounters::values`] pairs each entry with its current value, so an
//!   exporter needs one loop and no knowledge of the fields. The names are stable:
//!   renaming one breaks dashboards, so add new ones instead;
//! - [`MembershipMetrics`], a plain snapshot struct (what `Membership::metrics` returns).

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
    /// Received datagrams with a bad header (checksum included) or a body foca could
    /// not decode.
    pub decode_errors: u64,
    /// Received datagrams refused by the cluster secret: no tag or a wrong one.
    pub dropped_unauthenticated: u64,
    /// Received datagrams with a good tag refused by the replay window.
    pub dropped_replayed: u64,
    /// Sends the socket refused (unreachable network, full buffer).
    pub send_errors: u64,
    /// Times this node took a new identity after being declared down.
    pub rejoins: u64,
    /// Members Alive or Suspect in the current view, self included.
    pub members_alive: u64,
}

/// What a metric is, for exporters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MetricKind {
    /// Only grows (name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl MetricKind {
    /// The Prometheus `# TYPE` word.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        }
    }
}

/// One entry of [`COUNTERS`].
#[derive(Debug, Clone, Copy)]
pub struct CounterInfo {
    /// Prometheus name, with the unit and (for counters) `_total`.
    pub name: &'static str,
    /// One line for `# HELP`.
    pub help: &'static str,
    pub kind: MetricKind,
    field: fn(&MembershipCounters) -> &AtomicU64,
}

impl CounterInfo {
    /// The current value in `c`.
    pub fn value(&self, c: &MembershipCounters) -> u64 {
        (self.field)(c).load(Relaxed)
    }
}

/// The live counters of one membership agent (`Membership::counters`). Only the
/// membership thread writes them; read them through [`MembershipCounters::values`],
/// [`MembershipCounters::get`] or [`MembershipCounters::snapshot`]. Relaxed: each is an
/// independent statistic, nothing is ordered by them.
#[derive(Debug, Default)]
pub struct MembershipCounters {
    pub(crate) packets_in: AtomicU64,
    pub(crate) packets_out: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) dropped_foreign_cluster: AtomicU64,
    pub(crate) dropped_blocked: AtomicU64,
    pub(crate) decode_errors: AtomicU64,
    pub(crate) dropped_unauthenticated: AtomicU64,
    pub(crate) dropped_replayed: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) receive_errors: AtomicU64,
    pub(crate) rejoins: AtomicU64,
    pub(crate) members_alive: AtomicU64,
}

/// Every membership counter, in export order.
pub const COUNTERS: &[CounterInfo] = &[
    CounterInfo {
        name: "nearcache_membership_datagrams_received_total",
        help: "Gossip datagrams received (wake-ups excluded), including those then dropped.",
        kind: MetricKind::Counter,
        field: |c| &c.packets_in,
    },
    CounterInfo {
        name: "nearcache_membership_datagrams_sent_total",
        help: "Gossip datagrams sent.",
        kind: MetricKind::Counter,
        field: |c| &c.packets_out,
    },
    CounterInfo {
        name: "nearcache_membership_received_bytes_total",
        help: "Bytes of gossip datagrams received, headers included.",
        kind: MetricKind::Counter,
        field: |c| &c.bytes_in,
    },
    CounterInfo {
        name: "nearcache_membership_sent_bytes_total",
        help: "Bytes of gossip datagrams sent, headers included.",
        kind: MetricKind::Counter,
        field: |c| &c.bytes_out,
    },
    CounterInfo {
        name: "nearcache_membership_foreign_cluster_datagrams_dropped_total",
        help: "Received datagrams dropped because they carry another cluster name's hash.",
        kind: MetricKind::Counter,
        field: |c| &c.dropped_foreign_cluster,
    },
    CounterInfo {
        name: "nearcache_membership_blocked_datagrams_dropped_total",
        help: "Datagrams dropped in either direction because the peer is blocked (fault injection).",
        kind: MetricKind::Counter,
        field: |c| &c.dropped_blocked,
    },
    CounterInfo {
        name: "nearcache_membership_undecodable_datagrams_total",
        help: "Received datagrams dropped for a bad header, a bad checksum or a body foca could not decode.",
        kind: MetricKind::Counter,
        field: |c| &c.decode_errors,
    },
    CounterInfo {
        name: "nearcache_membership_unauthenticated_datagrams_dropped_total",
        help: "Received datagrams refused by the cluster secret (no tag, or one made with another secret).",
        kind: MetricKind::Counter,
        field: |c| &c.dropped_unauthenticated,
    },
    CounterInfo {
        name: "nearcache_membership_replayed_datagrams_dropped_total",
        help: "Received datagrams with a good tag refused as replays (seen before, or timestamp outside the window).",
        kind: MetricKind::Counter,
        field: |c| &c.dropped_replayed,
    },
    CounterInfo {
        name: "nearcache_membership_send_errors_total",
        help: "Datagram sends the socket refused (unreachable network, full buffer).",
        kind: MetricKind::Counter,
        field: |c| &c.send_errors,
    },
    CounterInfo {
        name: "nearcache_membership_receive_errors_total",
        help: "Socket receive errors other than timeouts and interruptions.",
        kind: MetricKind::Counter,
        field: |c| &c.receive_errors,
    },
    CounterInfo {
        name: "nearcache_membership_rejoins_total",
        help: "Times this node took a new identity after being declared down.",
        kind: MetricKind::Counter,
        field: |c| &c.rejoins,
    },
    CounterInfo {
        name: "nearcache_membership_alive_members",
        help: "Members Alive or Suspect in the current view, this node included.",
        kind: MetricKind::Gauge,
        field: |c| &c.members_alive,
    },
];

impl MembershipCounters {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Every counter with its current value, in [`COUNTERS`] order.
    pub fn values(&self) -> impl Iterator<Item = (&'static CounterInfo, u64)> + '_ {
        COUNTERS.iter().map(move |info| (info, info.value(self)))
    }

    /// The current value of the counter named `name` (a [`COUNTERS`] name).
    pub fn get(&self, name: &str) -> Option<u64> {
        COUNTERS
            .iter()
            .find(|info| info.name == name)
            .map(|info| info.value(self))
    }

    pub fn snapshot(&self) -> MembershipMetrics {
        MembershipMetrics {
            packets_in: self.packets_in.load(Relaxed),
            packets_out: self.packets_out.load(Relaxed),
            dropped_foreign_cluster: self.dropped_foreign_cluster.load(Relaxed),
            dropped_blocked: self.dropped_blocked.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            dropped_unauthenticated: self.dropped_unauthenticated.load(Relaxed),
            dropped_replayed: self.dropped_replayed.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
            rejoins: self.rejoins.load(Relaxed),
            members_alive: self.members_alive.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;

    #[test]
    fn names_are_unique_and_prometheus_style() {
        let mut seen = HashSet::new();
        for c in COUNTERS {
            assert!(seen.insert(c.name), "duplicate metric name {}", c.name);
            assert!(c.name.starts_with("nearcache_membership_"), "{}", c.name);
            assert!(
                c.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                c.name
            );
            assert_eq!(
                c.name.ends_with("_total"),
                c.kind == MetricKind::Counter,
                "counters and only counters end in _total: {}",
                c.name
            );
            assert!(!c.help.is_empty() && !c.help.contains('\n'), "{}", c.name);
        }
    }

    #[test]
    fn table_covers_every_field_once() {
        // Listing the fields here makes adding one without a table entry fail to compile
        // (this pattern) or this test (the count).
        let c = MembershipCounters::default();
        let MembershipCounters {
            packets_in,
            packets_out,
            bytes_in,
            bytes_out,
            dropped_foreign_cluster,
            dropped_blocked,
            decode_errors,
            dropped_unauthenticated,
            dropped_replayed,
            send_errors,
            receive_errors,
            rejoins,
            members_alive,
        } = &c;
        let fields = [
            packets_in,
            packets_out,
            bytes_in,
            bytes_out,
            dropped_foreign_cluster,
            dropped_blocked,
            decode_errors,
            dropped_unauthenticated,
            dropped_replayed,
            send_errors,
            receive_errors,
            rejoins,
            members_alive,
        ];
        assert_eq!(COUNTERS.len(), fields.len());
        // Each entry reads its own atomic: bump one at a time, exactly one value moves.
        for (i, f) in fields.iter().enumerate() {
            f.store(i as u64 + 100, Relaxed);
            let moved: Vec<_> = c.values().filter(|&(_, v)| v == i as u64 + 100).collect();
            assert_eq!(moved.len(), 1, "field {i}");
            f.store(0, Relaxed);
        }
        assert_eq!(c.get("nearcache_membership_rejoins_total"), Some(0));
        assert_eq!(c.get("nope"), None);
    }
}

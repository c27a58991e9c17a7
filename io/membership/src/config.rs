//! Configuration: what the caller sets, and the foca configuration derived from it.

use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use crate::auth::ClusterSecret;
use crate::wire::MAX_HEADER_LEN;

/// Named defaults. Intervals other than the two configurable ones are multiples of
/// `probe_interval`, so a test cluster probing every 150 ms scales every timer with it.
pub mod defaults {
    use std::time::Duration;

    /// SWIM probe period.
    pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
    /// How long a member stays Suspect before it is declared Down: three probe periods,
    /// enough for the suspect to hear the rumour and refute it on a LAN.
    pub const SUSPECT_TIMEOUT: Duration = Duration::from_secs(3);
    /// A direct ping waits `probe_interval / PROBE_RTT_DIVISOR` for its ack before the
    /// indirect probes go out; foca wants the period at least twice the RTT.
    pub const PROBE_RTT_DIVISOR: u32 = 3;
    /// Members asked to ping a member that missed its direct ack.
    pub const NUM_INDIRECT_PROBES: usize = 3;
    /// How many messages carry each membership update (foca's `max_transmissions`).
    /// Generous for the small clusters nearcache runs; updates are a few dozen bytes.
    pub const MAX_TRANSMISSIONS: u8 = 6;
    /// Largest datagram sent or accepted, our header included: below a 1500-byte MTU
    /// with room for IP/UDP headers (RFC 8085).
    pub const MAX_DATAGRAM: usize = 1400;
    /// Foca forgets a Down identity after this long; until then a node shows as Down
    /// (or Left) in the view.
    pub const REMOVE_DOWN_AFTER: Duration = Duration::from_secs(60 * 60);
    /// Periodic gossip runs every `probe_interval / GOSSIP_DIVISOR` (to
    /// `GOSSIP_FANOUT` members, and only when there are updates to spread).
    pub const GOSSIP_DIVISOR: u32 = 5;
    /// Members that each periodic gossip goes to.
    pub const GOSSIP_FANOUT: usize = 3;
    /// Foca's periodic announce (to one random active member, to learn members we
    /// missed) every this many probe periods.
    pub const ANNOUNCE_EVERY_PROBES: u32 = 10;
    /// Foca's announce to two members it holds as Down (how a partition heals while
    /// we still have live peers) every this many probe periods.
    pub const ANNOUNCE_TO_DOWN_EVERY_PROBES: u32 = 5;
    /// While we know no live member (start-up, or every peer Down after a partition),
    /// announce to the seeds and to a few Down members every this many probe periods.
    pub const ISOLATED_ANNOUNCE_EVERY_PROBES: u32 = 3;
    /// Down members announced to per isolated round (rotating through them).
    pub const ISOLATED_ANNOUNCE_DOWN_MEMBERS: usize = 4;
    /// While connected, still announce to the seeds every this many probe periods, so
    /// that two groups which formed apart (seed down at start) find each other.
    pub const SEED_ANNOUNCE_EVERY_PROBES: u32 = 30;
    /// Longest the membership thread blocks in `recv` before looking at its timers and
    /// commands again (a safety net: commands also wake it with a datagram).
    pub const MAX_IDLE_WAIT: Duration = Duration::from_millis(250);
    /// How long `stop_without_leave` and `Drop` wait for the thread to exit.
    pub const STOP_WAIT: Duration = Duration::from_secs(5);
    /// With a cluster secret: how far a datagram's timestamp may be from the local
    /// clock (replays inside it are caught by their tag). Clocks of a cluster are
    /// expected to be synchronised (NTP) well within it.
    pub const REPLAY_WINDOW: Duration = Duration::from_secs(60);
}

/// Membership settings of one node.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// This node's ULID (any case; the view shows the canonical uppercase form). Stable
    /// across restarts: the caller keeps it in the data dir.
    pub node_id: String,
    /// Only nodes with the same cluster name talk: datagrams carrying another name's
    /// hash are dropped and counted, so two clusters on one network never merge.
    pub cluster_name: String,
    /// UDP address the gossip socket binds. Port 0 picks a free port
    /// (see [`crate::Membership::local_addr`]).
    pub bind: SocketAddr,
    /// Address peers use to reach this node (gossip UDP; the caller serves TCP on the
    /// same ip:port). Port 0 is replaced by the bound port; an unspecified IP (0.0.0.0)
    /// by the bound IP, which must then be concrete.
    pub advertise: SocketAddr,
    /// "host:port" of any members. Resolved each time they are tried; retried while
    /// this node knows no live member, and now and then afterwards.
    pub seeds: Vec<String>,
    /// SWIM probe period. Default [`defaults::PROBE_INTERVAL`].
    pub probe_interval: Duration,
    /// Suspect-to-Down delay. Default [`defaults::SUSPECT_TIMEOUT`].
    pub suspect_timeout: Duration,
    /// The cluster secret: every datagram is authenticated with it (and datagrams
    /// without a good tag are dropped and counted). None: plain frames.
    pub secret: Option<ClusterSecret>,
    /// With a secret, the replay window. Default [`defaults::REPLAY_WINDOW`].
    pub replay_window: Duration,
}

impl MembershipConfig {
    /// A config with default timings, advertising the bind address and no seeds.
    pub fn new(
        node_id: impl Into<String>,
        cluster_name: impl Into<String>,
        bind: SocketAddr,
    ) -> Self {
        Self {
            node_id: node_id.into(),
            cluster_name: cluster_name.into(),
            bind,
            advertise: bind,
            seeds: Vec::new(),
            probe_interval: defaults::PROBE_INTERVAL,
            suspect_timeout: defaults::SUSPECT_TIMEOUT,
            secret: None,
            replay_window: defaults::REPLAY_WINDOW,
        }
    }
}

/// The foca configuration for a probe period and suspect timeout.
///
/// Starts from foca's own LAN preset (memberlist's numbers) and scales every periodic
/// task to the probe period: foca's 30 s / 65 s announce defaults would make a test
/// cluster that probes every 150 ms heal in minutes.
pub(crate) fn foca_config(probe_interval: Duration, suspect_timeout: Duration) -> foca::Config {
    use defaults::*;
    let probe_rtt = (probe_interval / PROBE_RTT_DIVISOR).max(Duration::from_millis(1));
    let nz = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
    foca::Config {
        probe_period: probe_interval,
        probe_rtt,
        num_indirect_probes: nz(NUM_INDIRECT_PROBES),
        max_transmissions: NonZeroU8::new(MAX_TRANSMISSIONS).unwrap_or(NonZeroU8::MIN),
        suspect_to_down_after: suspect_timeout,
        remove_down_after: Some(REMOVE_DOWN_AFTER),
        // Foca's limit covers its own bytes only; our frame header comes on top.
        max_packet_size: nz(MAX_DATAGRAM - MAX_HEADER_LEN),
        // Tells a member it was declared Down, so it renews its identity and rejoins
        // instead of talking into the void.
        notify_down_members: true,
        periodic_announce: Some(foca::PeriodicParams {
            frequency: probe_interval * ANNOUNCE_EVERY_PROBES,
            num_members: nz(1),
        }),
        periodic_announce_to_down_members: Some(foca::PeriodicParams {
            frequency: probe_interval * ANNOUNCE_TO_DOWN_EVERY_PROBES,
            num_members: nz(2),
        }),
        periodic_gossip: Some(foca::PeriodicParams {
            frequency: (probe_interval / GOSSIP_DIVISOR).max(Duration::from_millis(1)),
            num_members: nz(GOSSIP_FANOUT),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foca_config_scales_with_probe_interval() {
        let c = foca_config(Duration::from_millis(150), Duration::from_millis(600));
        assert_eq!(c.probe_period, Duration::from_millis(150));
        assert_eq!(c.probe_rtt, Duration::from_millis(50));
        assert!(c.probe_rtt * 2 < c.probe_period);
        assert_eq!(c.suspect_to_down_after, Duration::from_millis(600));
        assert_eq!(
            c.periodic_gossip.unwrap().frequency,
            Duration::from_millis(30)
        );
        assert_eq!(
            c.periodic_announce_to_down_members.unwrap().frequency,
            Duration::from_millis(750)
        );
        assert_eq!(
            c.max_packet_size.get() + MAX_HEADER_LEN,
            defaults::MAX_DATAGRAM
        );
    }
}

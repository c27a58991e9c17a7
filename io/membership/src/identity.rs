//! The identity foca gossips about: node id, advertised address and a generation.

use std::fmt;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One incarnation of a node as foca knows it.
///
/// SWIM never revives an identity declared Down, so a node that comes back (a restart,
/// or an auto-rejoin after being declared Down in a partition) needs a new one. The
/// `bump` (shown as `generation` in the view) is what differs: it starts at the wall
/// clock in milliseconds and each renewal takes `max(now, bump + 1)`, so a later
/// process or renewal of the same node wins without anything persisted. That assumes
/// the clock does not run backwards across a restart by more than the downtime.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct NodeIdentity {
    /// The node's ULID as an integer: 16 bytes on the wire instead of 26 characters.
    pub id: u128,
    /// Advertised gossip address; foca's `Identity::Addr`, so one address holds one
    /// identity at a time and the newest wins.
    pub addr: SocketAddr,
    /// Generation, see above.
    pub bump: u64,
}

impl NodeIdentity {
    pub(crate) fn new(id: u128, addr: SocketAddr) -> Self {
        Self {
            id,
            addr,
            bump: next_bump(0),
        }
    }

    /// A stand-in for a seed whose identity we don't know yet. Foca accepts an Announce
    /// addressed to any identity with the receiver's address, so id and bump are 0.
    pub(crate) fn seed(addr: SocketAddr) -> Self {
        Self {
            id: 0,
            addr,
            bump: 0,
        }
    }

    pub(crate) fn id_string(&self) -> String {
        ulid::Ulid(self.id).to_string()
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn next_bump(prev: u64) -> u64 {
    now_millis().max(prev.saturating_add(1))
}

impl foca::Identity for NodeIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            bump: next_bump(self.bump),
            ..*self
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // Newest generation wins; the id only breaks ties between two different nodes
        // misconfigured with one address, so that every member picks the same winner.
        (self.bump, self.id) > (adversary.bump, adversary.id)
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{}", self.id_string(), self.addr, self.bump)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn renewal_wins_and_keeps_id_and_addr() {
        let a = NodeIdentity {
            id: 7,
            addr: addr(1),
            bump: u64::MAX - 1,
        };
        let b = a.renew().unwrap();
        assert_eq!((b.id, b.addr), (a.id, a.addr));
        assert!(b.bump > a.bump);
        assert!(b.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&b));
    }

    #[test]
    fn restart_beats_an_old_generation() {
        let old = NodeIdentity {
            id: 7,
            addr: addr(1),
            bump: 1_000,
        };
        let restarted = NodeIdentity::new(7, addr(1));
        assert!(restarted.win_addr_conflict(&old));
    }

    #[test]
    fn ties_are_decided_the_same_way_everywhere() {
        let a = NodeIdentity {
            id: 1,
            addr: addr(1),
            bump: 5,
        };
        let b = NodeIdentity {
            id: 2,
            addr: addr(1),
            bump: 5,
        };
        assert!(b.win_addr_conflict(&a) && !a.win_addr_conflict(&b));
    }

    #[test]
    fn debug_shows_the_ulid() {
        let u = ulid::Ulid::from_string("01ARZ3NDEKTSV4RRFFQ69G5FAV").unwrap();
        let id = NodeIdentity {
            id: u.0,
            addr: addr(9),
            bump: 3,
        };
        assert_eq!(
            format!("{id:?}"),
            "01ARZ3NDEKTSV4RRFFQ69G5FAV@127.0.0.1:9#3"
        );
    }
}

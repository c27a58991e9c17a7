//! The published view, and how it is folded from foca's member list.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use serde::Serialize;

use crate::identity::NodeIdentity;

/// How this node sees a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; treated as alive until the suspect timeout declares it Down or
    /// it refutes the suspicion.
    Suspect,
    /// Declared down (crash, partition) or never heard back from.
    Down,
    /// Said goodbye ([`crate::Membership::leave`]).
    Left,
}

impl MemberState {
    /// Alive or Suspect: SWIM treats a suspect as a member until proven down.
    pub fn is_alive(self) -> bool {
        matches!(self, Self::Alive | Self::Suspect)
    }
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// The node's ULID, canonical (uppercase) form.
    pub id: String,
    /// Its advertised address (gossip UDP, and the node's TCP port).
    pub addr: SocketAddr,
    pub state: MemberState,
    /// Foca's incarnation of the member's current identity: a counter the member bumps
    /// to refute suspicion (foca's `u16`, widened). Foca does not expose its own
    /// incarnation, so it is 0 for `is_self`.
    pub incarnation: u64,
    /// Generation of the node's identity: milliseconds since the Unix epoch when the
    /// process started or last rejoined after being declared down. Higher is newer.
    pub generation: u64,
    pub is_self: bool,
}

/// A snapshot of the membership, replaced (never mutated) on every change.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    /// Bumps by one on every change; 1 for the first view.
    pub epoch: u64,
    /// Every known node once, self included, sorted by id.
    pub members: Vec<Member>,
}

impl View {
    /// Members that are Alive or Suspect, self included (unless it has left).
    pub fn alive(&self) -> impl Iterator<Item = &Member> + '_ {
        self.members.iter().filter(|m| m.state.is_alive())
    }

    /// The member with this id (canonical ULID form).
    pub fn get(&self, id: &str) -> Option<&Member> {
        self.members
            .binary_search_by(|m| m.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.members[i])
    }

    /// This node's own entry.
    pub fn self_member(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.is_self)
    }
}

/// One line of the view before ids are turned into strings: cheap to build and compare
/// on every turn of the membership loop, so a [`View`] is only allocated on change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub identity: NodeIdentity,
    pub state: MemberState,
    pub incarnation: u16,
    pub is_self: bool,
}

impl Entry {
    pub(crate) fn to_member(self) -> Member {
        Member {
            id: self.identity.id_string(),
            addr: self.identity.addr,
            state: self.state,
            incarnation: u64::from(self.incarnation),
            generation: self.identity.bump,
            is_self: self.is_self,
        }
    }
}

/// Folds foca's members into one entry per node id, sorted by id.
///
/// Foca keys members by address, so a node that came back on another address has its
/// old identity listed too until foca forgets it; the newest generation stands for the
/// node (an active one on a tie). Our own id always shows our current identity.
/// `left` holds identities that announced a graceful leave: Down becomes Left for them.
pub(crate) fn collect<'a>(
    me: NodeIdentity,
    my_state: MemberState,
    members: impl Iterator<Item = &'a foca::Member<NodeIdentity>>,
    left: &HashMap<SocketAddr, NodeIdentity>,
) -> Vec<Entry> {
    // BTreeMap on the u128 gives id order: ULID strings sort like their integers.
    let mut by_id: BTreeMap<u128, Entry> = BTreeMap::new();
    by_id.insert(
        me.id,
        Entry {
            identity: me,
            state: my_state,
            incarnation: 0,
            is_self: true,
        },
    );
    for m in members {
        let identity = *m.id();
        if identity.id == me.id {
            continue;
        }
        let state = match m.state() {
            foca::State::Alive => MemberState::Alive,
            foca::State::Suspect => MemberState::Suspect,
            foca::State::Down if left.get(&identity.addr) == Some(&identity) => MemberState::Left,
            foca::State::Down => MemberState::Down,
        };
        let entry = Entry {
            identity,
            state,
            incarnation: m.incarnation(),
            is_self: false,
        };
        by_id
            .entry(identity.id)
            .and_modify(|have| {
                let newer = (entry.identity.bump, entry.state.is_alive())
                    > (have.identity.bump, have.state.is_alive());
                if newer {
                    *have = entry;
                }
            })
            .or_insert(entry);
    }
    by_id.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn ident(id: u128, port: u16, bump: u64) -> NodeIdentity {
        NodeIdentity {
            id,
            addr: addr(port),
            bump,
        }
    }

    #[test]
    fn one_entry_per_id_newest_generation_first() {
        let me = ident(5, 1, 10);
        let members = [
            foca::Member::new(ident(9, 2, 100), 0, foca::State::Down),
            foca::Member::new(ident(9, 3, 200), 4, foca::State::Alive),
            foca::Member::new(ident(3, 4, 50), 1, foca::State::Suspect),
            // An older identity of ourselves somebody still gossips about.
            foca::Member::new(ident(5, 5, 1), 0, foca::State::Down),
        ];
        let entries = collect(me, MemberState::Alive, members.iter(), &HashMap::new());
        let summary: Vec<_> = entries
            .iter()
            .map(|e| (e.identity.id, e.identity.addr.port(), e.state, e.is_self))
            .collect();
        assert_eq!(
            summary,
            vec![
                (3, 4, MemberState::Suspect, false),
                (5, 1, MemberState::Alive, true),
                (9, 3, MemberState::Alive, false),
            ]
        );
        assert_eq!(entries[2].incarnation, 4);
    }

    #[test]
    fn graceful_leavers_show_left_only_for_that_identity() {
        let me = ident(5, 1, 10);
        let gone = ident(9, 2, 100);
        let left = HashMap::from([(gone.addr, gone)]);
        let members = [foca::Member::new(gone, 0, foca::State::Down)];
        let e = collect(me, MemberState::Alive, members.iter(), &left);
        assert_eq!(e[1].state, MemberState::Left);

        // The same node came back under a new generation and then crashed: Down.
        let members = [foca::Member::new(ident(9, 2, 101), 0, foca::State::Down)];
        let e = collect(me, MemberState::Alive, members.iter(), &left);
        assert_eq!(e[1].state, MemberState::Down);
    }

    #[test]
    fn view_lookup_and_alive() {
        let ids = ["01ARZ3NDEKTSV4RRFFQ69G5FAV", "01BX5ZZKBKACTAV9WEVGEMMVRZ"];
        let u: Vec<u128> = ids
            .iter()
            .map(|s| ulid::Ulid::from_string(s).unwrap().0)
            .collect();
        let me = NodeIdentity {
            id: u[1],
            addr: addr(1),
            bump: 1,
        };
        let other = NodeIdentity {
            id: u[0],
            addr: addr(2),
            bump: 1,
        };
        let members = [foca::Member::new(other, 0, foca::State::Down)];
        let entries = collect(me, MemberState::Alive, members.iter(), &HashMap::new());
        let view = View {
            epoch: 1,
            members: entries.into_iter().map(Entry::to_member).collect(),
        };
        assert_eq!(view.members[0].id, ids[0], "sorted by id string");
        assert_eq!(view.get(ids[1]).unwrap().addr, addr(1));
        assert!(view.get("nope").is_none());
        let alive: Vec<_> = view.alive().map(|m| m.id.as_str()).collect();
        assert_eq!(alive, vec![ids[1]]);
        assert_eq!(view.self_member().unwrap().id, ids[1]);
        let json = serde_json::to_string(&view.members[0]).unwrap();
        assert!(json.contains(r#""state":"down""#), "{json}");
    }
}

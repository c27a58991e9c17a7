//! Rendezvous (highest random weight) hashing of keys over nodes.
//!
//! Every node scores each alive member for a key with xxh3(key, seed = xxh3(node id)) and
//! ranks them by score. The top R own the key. When a node joins or leaves, only the keys
//! for which it ranks in the top R move (about R/N of them), with no ring to rebalance.

use std::sync::Arc;

use nearcache_membership::{Member, View};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

pub fn score(key: &str, node_id: &str) -> u64 {
    xxh3_64_with_seed(key.as_bytes(), xxh3_64(node_id.as_bytes()))
}

/// Members ranked for `key`, best first (ties, which need a 64-bit collision, by id).
pub fn rank<'a>(key: &str, members: impl Iterator<Item = &'a Member>) -> Vec<Member> {
    let mut scored: Vec<(u64, &Member)> = members.map(|m| (score(key, &m.id), m)).collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
    scored.into_iter().map(|(_, m)| m.clone()).collect()
}

/// How many of a key's `ranked` alive nodes own it at `level`: the replication factor
/// (at least 1, at most all of them), or every alive node for level 2.
pub fn owner_count(replication_factor: usize, ranked: usize, level: u8) -> usize {
    if level >= 2 {
        ranked
    } else {
        replication_factor.max(1).min(ranked)
    }
}

/// Whether this node (`is_self`) owns a key at `level`: always at level 2, else when it
/// is among the first [`owner_count`] of the key's ranking (computed only when needed).
pub fn is_owner(replication_factor: usize, level: u8, ranking: impl FnOnce() -> Ranking) -> bool {
    if level >= 2 {
        return true;
    }
    let r = ranking();
    let n = owner_count(replication_factor, r.len(), level);
    let owner = r.iter().take(n).any(|m| m.is_self);
    owner
}

/// Replica acknowledgements a fresh write needs besides the local copy. The write quorum
/// counts owners' copies: the local copy counts only when this node owns the key
/// (`owner_here`), not when it took the write as next in line while better-ranked nodes
/// were unreachable. It is never lowered to the owners a node can see: a node that sees
/// fewer owners than the quorum cannot acknowledge (see [`quorum_reachable`]), so an
/// acknowledged write with W >= 2 is on W nodes even when one of them was cut off.
pub fn acks_needed(write_quorum: usize, owner_here: bool) -> usize {
    write_quorum.max(1) - usize::from(owner_here)
}

/// Whether a write of a key with `owners` alive owners (as [`owner_count`] gives them)
/// can reach the write quorum at all. When it cannot, the write is refused before
/// anything is stored.
pub fn quorum_reachable(write_quorum: usize, owners: usize) -> bool {
    owners >= write_quorum.max(1)
}

/// The alive members of one membership view ranked for a key, by index into the view:
/// nothing is cloned per request.
pub struct Ranking {
    view: Arc<View>,
    order: Vec<usize>,
}

impl Ranking {
    pub fn new(key: &str, view: Arc<View>) -> Ranking {
        let mut scored: Vec<(u64, usize)> = view
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.state.is_alive())
            .map(|(i, m)| (score(key, &m.id), i))
            .collect();
        scored.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| view.members[a.1].id.cmp(&view.members[b.1].id))
        });
        Ranking {
            order: scored.into_iter().map(|(_, i)| i).collect(),
            view,
        }
    }

    /// Best first.
    pub fn iter(&self) -> impl Iterator<Item = &Member> + '_ {
        self.order.iter().map(|&i| &self.view.members[i])
    }

    pub fn first(&self) -> Option<&Member> {
        self.iter().next()
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use nearcache_membership::MemberState;

    /// An alive member (not this node) for tests.
    pub(crate) fn member(id: &str) -> Member {
        Member {
            id: id.to_string(),
            addr: "127.0.0.1:1".parse().unwrap(),
            state: MemberState::Alive,
            incarnation: 0,
            generation: 0,
            is_self: false,
        }
    }

    #[test]
    fn ranking_by_index_agrees_with_rank() {
        let members: Vec<Member> = (0..5).map(|i| member(&format!("node-{i}"))).collect();
        let view = Arc::new(View {
            members: members.clone(),
            epoch: 1,
        });
        for k in 0..200 {
            let key = format!("k{k}");
            let by_clone: Vec<String> = rank(&key, members.iter())
                .into_iter()
                .map(|m| m.id)
                .collect();
            let by_index: Vec<String> = Ranking::new(&key, view.clone())
                .iter()
                .map(|m| m.id.clone())
                .collect();
            assert_eq!(by_clone, by_index);
        }
    }

    #[test]
    fn balanced_and_stable_when_a_node_leaves() {
        let ids: Vec<String> = (0..4).map(|i| format!("node-{i}")).collect();
        let all: Vec<Member> = ids.iter().map(|i| member(i)).collect();
        let three: Vec<Member> = all[..3].to_vec();
        let mut counts = [0usize; 4];
        let mut moved = 0;
        let n = 20_000;
        for k in 0..n {
            let key = format!("key-{k}");
            let first = rank(&key, all.iter())[0].id.clone();
            let idx = ids.iter().position(|i| *i == first).unwrap();
            counts[idx] += 1;
            let after = rank(&key, three.iter())[0].id.clone();
            if after != first {
                moved += 1;
                // Only keys of the removed node move.
                assert_eq!(first, "node-3");
            }
        }
        for c in counts {
            assert!((4_000..6_000).contains(&c), "unbalanced: {counts:?}");
        }
        assert_eq!(moved, counts[3]);
    }

    #[test]
    fn the_write_quorum_counts_owner_copies() {
        // An owner's own copy counts: W = 2 of R = 3 needs one more.
        assert_eq!(acks_needed(2, true), 1);
        assert_eq!(acks_needed(1, true), 0);
        assert_eq!(acks_needed(0, true), 0, "a quorum of 0 means 1");
        // A node that took the write as next in line is no owner: W owners must ack.
        assert_eq!(acks_needed(2, false), 2);
        assert_eq!(acks_needed(1, false), 1);
        // Fewer alive owners than the quorum: refused, never acknowledged with fewer
        // copies (a node cut off from the others must not ack W = 2 alone).
        assert!(quorum_reachable(2, 2));
        assert!(!quorum_reachable(2, 1));
        assert!(quorum_reachable(1, 1));
        assert!(!quorum_reachable(3, 2));
        assert_eq!(owner_count(3, 2, 1), 2);
        assert_eq!(owner_count(0, 5, 1), 1);
        assert_eq!(owner_count(2, 5, 2), 5, "level 2: every alive node");
    }

    #[test]
    fn ranking_is_a_permutation_and_deterministic() {
        let all: Vec<Member> = (0..5).map(|i| member(&format!("n{i}"))).collect();
        let a = rank("k", all.iter());
        let b = rank("k", all.iter().rev());
        assert_eq!(
            a.iter().map(|m| &m.id).collect::<Vec<_>>(),
            b.iter().map(|m| &m.id).collect::<Vec<_>>()
        );
        assert_eq!(a.len(), 5);
    }
}

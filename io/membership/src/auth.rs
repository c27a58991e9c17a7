//! The cluster secret: keys derived from it, message tags, and a replay window.
//!
//! One secret, shared by every node of a cluster, is the root of node-to-node
//! authentication. It is never used directly: each purpose (gossip datagrams, HTTP
//! requests between nodes) gets its own key, `HMAC-SHA256(secret, "nearcache " +
//! purpose)`, so a tag made for one purpose is worthless for another.
//!
//! Tags prove that a message came from a holder of the secret and was not altered; the
//! [`ReplayWindow`] makes each tagged message count once: a message older (or further in
//! the future) than the window is refused by its timestamp, and one inside it is refused
//! if its id was seen before. The window's memory is bounded by the rate of genuine
//! messages times its length (forgers cannot add entries: ids are recorded only after
//! the tag checked).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Shortest secret accepted, in bytes: 128 bits if it is random; a passphrase should
/// be much longer.
pub const MIN_SECRET_LEN: usize = 16;

/// The cluster's shared secret. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct ClusterSecret(Vec<u8>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl ClusterSecret {
    /// A secret of at least [`MIN_SECRET_LEN`] bytes (surrounding whitespace, such as
    /// a file's final newline, is not part of it).
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        let s = secret.trim_ascii();
        if s.len() < MIN_SECRET_LEN {
            return Err(format!(
                "the cluster secret is {} bytes; it must be at least {MIN_SECRET_LEN} \
                 (e.g. `openssl rand -hex 32`)",
                s.len()
            ));
        }
        Ok(ClusterSecret(s.to_vec()))
    }

    /// The key for one purpose (`"gossip"`, `"request"`...).
    pub fn key(&self, purpose: &str) -> Key {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"nearcache ");
        mac.update(purpose.as_bytes());
        Key(mac.finalize().into_bytes().into())
    }
}

/// A purpose key derived from the secret. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    /// HMAC-SHA256 over the concatenation of `parts`.
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.mac(parts).finalize().into_bytes().into()
    }

    /// Whether `tag` is the tag of `parts`, or its leftmost bytes (at least 16), in
    /// constant time.
    pub fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        tag.len() >= 16 && self.mac(parts).verify_truncated_left(tag).is_ok()
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
        }
        mac
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a tagged message was refused by the [`ReplayWindow`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Replay {
    #[error(
        "timestamp {age_ms} ms old, beyond the {window_ms} ms window (replayed, or clocks apart)"
    )]
    TooOld { age_ms: u64, window_ms: u64 },
    #[error(
        "timestamp {ahead_ms} ms in the future, beyond the {window_ms} ms window (clocks apart?)"
    )]
    InFuture { ahead_ms: u64, window_ms: u64 },
    #[error("message already seen (replayed)")]
    Seen,
    /// The window was full and forgot messages before their time: anything not newer
    /// than those is refused, so that none of them can be replayed.
    #[error("timestamp not newer than messages the full replay window had to forget (overload)")]
    Forgotten,
}

/// Remembers the ids of accepted messages for as long as their timestamps are inside
/// the window, so each is accepted once.
#[derive(Debug)]
pub struct ReplayWindow {
    window_ms: u64,
    max_entries: usize,
    seen: HashMap<[u8; 16], u64>,
    /// Ids in the order they were recorded, with the time they may be forgotten.
    order: VecDeque<(u64, [u8; 16])>,
    /// Timestamps up to this one are refused: ids inside the window were forgotten to
    /// keep within `max_entries`, and none of them may come back.
    floor_ms: u64,
}

impl ReplayWindow {
    /// Refuses timestamps more than `window` away from the local clock; remembers at most
    /// `max_entries` ids. Past that the oldest are forgotten early, and every timestamp
    /// not newer than theirs is refused from then on: under overload a delayed genuine
    /// message may be refused, a replay never accepted.
    pub fn new(window: Duration, max_entries: usize) -> Self {
        ReplayWindow {
            window_ms: window.as_millis().max(1) as u64,
            max_entries: max_entries.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
            floor_ms: 0,
        }
    }

    /// Accepts a message with timestamp `ts_ms` and unique `id` at local time `now_ms`,
    /// once. Call only after the message's tag checked.
    pub fn check(&mut self, now_ms: u64, ts_ms: u64, id: [u8; 16]) -> Result<(), Replay> {
        let window_ms = self.window_ms;
        if ts_ms + window_ms < now_ms {
            return Err(Replay::TooOld {
                age_ms: now_ms - ts_ms,
                window_ms,
            });
        }
        if ts_ms > now_ms + window_ms {
            return Err(Replay::InFuture {
                ahead_ms: ts_ms - now_ms,
                window_ms,
            });
        }
        while let Some(&(forget_at, old)) = self.order.front() {
            // Forgotten only once its timestamp is refused as too old.
            if forget_at >= now_ms && self.order.len() < self.max_entries {
                break;
            }
            if forget_at >= now_ms {
                // Still inside the window: its timestamp (and all before) becomes the floor.
                self.floor_ms = self.floor_ms.max(forget_at - window_ms);
            }
            self.order.pop_front();
            if self.seen.get(&old) == Some(&forget_at) {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(&id) {
            return Err(Replay::Seen);
        }
        if ts_ms <= self.floor_ms {
            return Err(Replay::Forgotten);
        }
        // Outside the window from then on, whatever the order messages came in.
        let forget_at = ts_ms.max(now_ms) + window_ms;
        self.seen.insert(id, forget_at);
        self.order.push_back((forget_at, id));
        Ok(())
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_secrets_are_refused_and_never_printed() {
        assert!(ClusterSecret::new(b"short").is_err());
        assert!(ClusterSecret::new(b"   0123456789abcde\n").is_err());
        let s = ClusterSecret::new(b"0123456789abcdef\n").unwrap();
        assert_eq!(format!("{s:?}"), "ClusterSecret(<redacted>)");
        assert_eq!(format!("{:?}", s.key("gossip")), "Key(<redacted>)");
    }

    #[test]
    fn keys_differ_by_purpose_and_secret() {
        let a = ClusterSecret::new(b"0123456789abcdef").unwrap();
        let b = ClusterSecret::new(b"0123456789abcdeF").unwrap();
        let t = a.key("gossip").tag(&[b"m"]);
        assert!(a.key("gossip").verify(&[b"m"], &t));
        assert!(a.key("gossip").verify(&[b"m"], &t[..16]));
        assert!(
            !a.key("gossip").verify(&[b"m"], &t[..15]),
            "too short a tag"
        );
        assert!(!a.key("request").verify(&[b"m"], &t));
        assert!(!b.key("gossip").verify(&[b"m"], &t));
        assert!(!a.key("gossip").verify(&[b"n"], &t));
        // Parts are concatenated: the caller frames them unambiguously.
        assert_eq!(
            a.key("x").tag(&[b"ab", b"c"]),
            a.key("x").tag(&[b"a", b"bc"])
        );
    }

    #[test]
    fn replay_window_accepts_once_and_refuses_outside() {
        let mut w = ReplayWindow::new(Duration::from_secs(10), 1000);
        let now = 1_000_000;
        assert_eq!(w.check(now, now, [1; 16]), Ok(()));
        assert_eq!(w.check(now + 5, now, [1; 16]), Err(Replay::Seen));
        assert_eq!(w.check(now, now - 9_000, [2; 16]), Ok(()));
        assert_eq!(
            w.check(now, now - 10_001, [3; 16]),
            Err(Replay::TooOld {
                age_ms: 10_001,
                window_ms: 10_000
            })
        );
        assert!(matches!(
            w.check(now, now + 10_001, [3; 16]),
            Err(Replay::InFuture { .. })
        ));
        // Once an id's timestamp has left the window it is forgotten, and refused by age.
        let later = now + 25_000;
        assert!(matches!(
            w.check(later, now, [1; 16]),
            Err(Replay::TooOld { .. })
        ));
        assert_eq!(w.check(later, later, [4; 16]), Ok(()));
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn replay_window_memory_is_bounded_and_forgetting_never_readmits() {
        let id = |i: u32| {
            let mut id = [0; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            id
        };
        let mut w = ReplayWindow::new(Duration::from_secs(60), 100);
        let now = 100_000;
        // 1000 messages, one per ms: the window keeps the last 100 or so.
        for i in 0..1000u32 {
            w.check(now + u64::from(i), now + u64::from(i), id(i))
                .unwrap();
        }
        assert!(w.len() <= 100, "{}", w.len());
        // A forgotten message replayed inside the time window is still refused...
        let later = now + 1000;
        assert_eq!(w.check(later, now + 5, id(5)), Err(Replay::Forgotten));
        // ...and so is a new one as old as the forgotten ones; newer ones pass.
        assert_eq!(w.check(later, now + 850, id(5000)), Err(Replay::Forgotten));
        assert_eq!(w.check(later, later, id(5001)), Ok(()));
        assert_eq!(w.check(later, now + 999, id(999)), Err(Replay::Seen));
    }
}

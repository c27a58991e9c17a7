//! Datagram framing: a fixed header in front of every foca packet.
//!
//! ```text
//!  0        2        3        4                         12                        20
//!  +--------+--------+--------+-------------------------+-------------------------+------//
//!  | magic  | version| kind   | cluster hash            | checksum                | body
//!  | "NM"   | 2      | 0 | 1  | xxh3-64(cluster_name),  | xxh3-64 of bytes 0..12  | 0: foca packet
//!  |        |        |        | LE u64                  | then the body, LE u64   | 1: leave (one foca
//!  |        |        |        |                         |                         |    Member, postcard)
//!  +--------+--------+--------+-------------------------+-------------------------+------//
//! ```
//!
//! The cluster hash keeps two clusters on one network apart: a datagram with another
//! hash is dropped before foca sees it, so no member of the other cluster is ever
//! learnt. The checksum catches datagrams damaged on the way (the UDP checksum is
//! optional over IPv4 and not end to end) before foca decodes them. Zero-length
//! datagrams carry no header: they only wake the membership thread.
//!
//! Version 1 (no checksum, 12-byte header) is refused: a cluster upgrades all at once.
//!
//! With a cluster secret every datagram is an authenticated frame instead (version 3):
//!
//! ```text
//!  0      2   3    4                 12                20              28                44
//!  +------+---+----+-----------------+-----------------+---------------+-----------------+----//
//!  | "NM" | 3 |kind| cluster hash    | timestamp       | nonce         | tag             | body
//!  |      |   |    | (as above)      | ms since epoch, | LE u64, new   | HMAC-SHA256 of  |
//!  |      |   |    |                 | LE u64          | per datagram  | bytes 0..28 and |
//!  |      |   |    |                 |                 |               | the body, first |
//!  |      |   |    |                 |                 |               | 16 bytes        |
//!  +------+---+----+-----------------+-----------------+---------------+-----------------+----//
//! ```
//!
//! The tag (keyed with the secret's gossip key, see [`crate::auth`]) replaces the
//! checksum: it catches damage and forgery alike. A node with a secret refuses version 2
//! frames, and a node without one refuses version 3: a cluster turns the secret on all at
//! once. The timestamp and the tag feed a [`ReplayWindow`]: a datagram is accepted once,
//! and only while its timestamp is within the window of the receiver's clock. The cluster
//! hash is checked before the tag so that two clusters on one network (each with its own
//! secret) still count each other as foreign, not as forgers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::{now_ms, ClusterSecret, Key, Replay, ReplayWindow};

/// First two bytes of every datagram.
pub(crate) const MAGIC: [u8; 2] = *b"NM";
/// Must change with the header layout, the identity encoding or the codec.
pub(crate) const WIRE_VERSION: u8 = 2;

/// Bytes before the body.
pub(crate) const HEADER_LEN: usize = 20;
/// Where the checksum sits in the header.
const CHECKSUM_AT: usize = 12;
/// Version of authenticated frames.
pub(crate) const AUTH_WIRE_VERSION: u8 = 3;
/// Bytes before the body of an authenticated frame.
pub(crate) const AUTH_HEADER_LEN: usize = 44;
const TS_AT: usize = 12;
const NONCE_AT: usize = 20;
const TAG_AT: usize = 28;
const TAG_LEN: usize = AUTH_HEADER_LEN - TAG_AT;
/// The longer header of the two: foca's packet limit leaves room for it.
pub(crate) const MAX_HEADER_LEN: usize = AUTH_HEADER_LEN;
/// The gossip key's purpose (see [`crate::auth::ClusterSecret::key`]).
const GOSSIP_PURPOSE: &str = "gossip v3";
/// Tags remembered by a node's replay window at most (about 100 datagrams a second for
/// the default two-minute span).
const REPLAY_MAX_ENTRIES: usize = 1 << 16;

/// What the body of a datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A packet for `foca::Foca::handle_data`.
    Foca = 0,
    /// The sender is leaving for good: its identity, as a foca `Member`.
    Leave = 1,
}

/// Why a datagram was refused. Each says what was expected and what came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("datagram of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort { len: usize },
    #[error("bad magic: expected {expected:02x?}, got {actual:02x?}")]
    BadMagic { expected: [u8; 2], actual: [u8; 2] },
    #[error("unsupported wire version: expected {expected}, got {actual}")]
    BadVersion { expected: u8, actual: u8 },
    #[error("foreign cluster: expected name hash {expected:016x}, got {actual:016x}")]
    ForeignCluster { expected: u64, actual: u64 },
    #[error("bad checksum: expected {expected:016x}, got {actual:016x}")]
    BadChecksum { expected: u64, actual: u64 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("unauthenticated datagram (wire version {actual}): this node requires the cluster secret (expected version {AUTH_WIRE_VERSION})")]
    Unauthenticated { actual: u8 },
    #[error("authenticated datagram, but this node has no cluster secret (expected wire version {WIRE_VERSION})")]
    UnexpectedAuth,
    #[error("bad authentication tag: expected a tag made with this cluster's secret (another secret, or altered on the way)")]
    BadTag,
    #[error("refused by the replay window: {0}")]
    Replay(#[from] Replay),
}

impl FrameError {
    /// Whether the datagram failed authentication (no tag, a wrong tag, a replay), as
    /// opposed to being damaged or foreign.
    pub(crate) fn is_auth(&self) -> bool {
        matches!(
            self,
            FrameError::Unauthenticated { .. }
                | FrameError::UnexpectedAuth
                | FrameError::BadTag
                | FrameError::Replay(_)
        )
    }
}

/// How a node frames and checks its datagrams: the cluster hash, and with a secret the
/// gossip key, the replay window and the next nonce.
#[derive(Debug)]
pub(crate) struct Framing {
    hash: u64,
    auth: Option<Auth>,
}

#[derive(Debug)]
struct Auth {
    key: Key,
    replay: ReplayWindow,
    next_nonce: u64,
}

impl Framing {
    /// Plain (version 2) frames without a secret; authenticated ones (version 3) with
    /// one, accepting timestamps within `window` of the local clock.
    pub(crate) fn new(
        cluster_name: &str,
        secret: Option<&ClusterSecret>,
        window: Duration,
    ) -> Self {
        Framing {
            hash: cluster_hash(cluster_name),
            auth: secret.map(|s| Auth {
                key: s.key(GOSSIP_PURPOSE),
                replay: ReplayWindow::new(window, REPLAY_MAX_ENTRIES),
                // Nonces only make tags unique (two equal packets in one millisecond);
                // starting from the clock keeps a restarted node's apart from before.
                next_nonce: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
            }),
        }
    }

    pub(crate) fn encode(&mut self, kind: Kind, body: &[u8], out: &mut Vec<u8>) {
        self.encode_at(now_ms(), kind, body, out)
    }

    pub(crate) fn encode_at(&mut self, now_ms: u64, kind: Kind, body: &[u8], out: &mut Vec<u8>) {
        let Some(auth) = &mut self.auth else {
            return encode(kind, self.hash, body, out);
        };
        out.clear();
        out.extend_from_slice(&MAGIC);
        out.push(AUTH_WIRE_VERSION);
        out.push(kind as u8);
        out.extend_from_slice(&self.hash.to_le_bytes());
        out.extend_from_slice(&now_ms.to_le_bytes());
        out.extend_from_slice(&auth.next_nonce.to_le_bytes());
        auth.next_nonce = auth.next_nonce.wrapping_add(1);
        let tag = auth.key.tag(&[out, body]);
        out.extend_from_slice(&tag[..TAG_LEN]);
        out.extend_from_slice(body);
    }

    pub(crate) fn parse<'a>(&mut self, datagram: &'a [u8]) -> Result<(Kind, &'a [u8]), FrameError> {
        self.parse_at(now_ms(), datagram)
    }

    /// Checks a datagram: plain frames as [`parse`]; authenticated ones for length,
    /// magic, version, cluster, tag, then the replay window, then kind.
    pub(crate) fn parse_at<'a>(
        &mut self,
        now_ms: u64,
        datagram: &'a [u8],
    ) -> Result<(Kind, &'a [u8]), FrameError> {
        let version = datagram.get(2).copied();
        let Some(auth) = &mut self.auth else {
            if datagram.len() >= HEADER_LEN
                && datagram[..2] == MAGIC
                && version == Some(AUTH_WIRE_VERSION)
            {
                return Err(FrameError::UnexpectedAuth);
            }
            return parse(datagram, self.hash);
        };
        if datagram.len() < HEADER_LEN {
            return Err(FrameError::TooShort {
                len: datagram.len(),
            });
        }
        let magic = [datagram[0], datagram[1]];
        if magic != MAGIC {
            return Err(FrameError::BadMagic {
                expected: MAGIC,
                actual: magic,
            });
        }
        match version {
            Some(AUTH_WIRE_VERSION) => {}
            Some(WIRE_VERSION) => {
                return Err(FrameError::Unauthenticated {
                    actual: WIRE_VERSION,
                })
            }
            Some(v) => {
                return Err(FrameError::BadVersion {
                    expected: AUTH_WIRE_VERSION,
                    actual: v,
                })
            }
            None => unreachable!("length checked"),
        }
        if datagram.len() < AUTH_HEADER_LEN {
            return Err(FrameError::TooShort {
                len: datagram.len(),
            });
        }
        let (head, body) = datagram.split_at(AUTH_HEADER_LEN);
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let hash = u64_at(4);
        if hash != self.hash {
            return Err(FrameError::ForeignCluster {
                expected: self.hash,
                actual: hash,
            });
        }
        let tag = &head[TAG_AT..];
        if !auth.key.verify(&[&head[..TAG_AT], body], tag) {
            return Err(FrameError::BadTag);
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(tag);
        auth.replay.check(now_ms, u64_at(TS_AT), id)?;
        let _nonce = u64_at(NONCE_AT); // covered by the tag; makes each tag unique
        match head[3] {
            0 => Ok((Kind::Foca, body)),
            1 => Ok((Kind::Leave, body)),
            other => Err(FrameError::UnknownKind(other)),
        }
    }
}

/// Hash of a cluster name as carried in the header. xxh3 is a fixed algorithm, so
/// nodes built from different versions agree on it.
pub(crate) fn cluster_hash(cluster_name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(cluster_name.as_bytes())
}

/// Checksum of a datagram: xxh3-64 of its first 12 header bytes, then the body.
fn checksum(head: &[u8], body: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&head[..CHECKSUM_AT]);
    h.update(body);
    h.digest()
}

/// Writes the datagram for `body` of `kind` in cluster `hash` to `out` (cleared first).
pub(crate) fn encode(kind: Kind, hash: u64, body: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&MAGIC);
    out.push(WIRE_VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&hash.to_le_bytes());
    let sum = checksum(out, body);
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(body);
}

/// Checks the header of `datagram` against our cluster and returns the kind and body.
/// Order: length, magic, version (the layout depends on it), checksum (so that damage
/// is reported as such, not as a foreign cluster), cluster, then kind (so that a newer
/// peer's unknown kinds from another cluster still count as foreign).
pub(crate) fn parse(datagram: &[u8], expected_hash: u64) -> Result<(Kind, &[u8]), FrameError> {
    if datagram.len() < HEADER_LEN {
        return Err(FrameError::TooShort {
            len: datagram.len(),
        });
    }
    let (head, body) = datagram.split_at(HEADER_LEN);
    let magic = [head[0], head[1]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic {
            expected: MAGIC,
            actual: magic,
        });
    }
    if head[2] != WIRE_VERSION {
        return Err(FrameError::BadVersion {
            expected: WIRE_VERSION,
            actual: head[2],
        });
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let stored = u64_at(CHECKSUM_AT);
    let computed = checksum(head, body);
    if stored != computed {
        return Err(FrameError::BadChecksum {
            expected: stored,
            actual: computed,
        });
    }
    let hash = u64_at(4);
    if hash != expected_hash {
        return Err(FrameError::ForeignCluster {
            expected: expected_hash,
            actual: hash,
        });
    }
    match head[3] {
        0 => Ok((Kind::Foca, body)),
        1 => Ok((Kind::Leave, body)),
        other => Err(FrameError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: Kind, hash: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(kind, hash, body, &mut out);
        out
    }

    /// Re-computes the checksum after a deliberate edit of the header.
    fn reseal(d: &mut [u8]) {
        let (head, body) = d.split_at_mut(HEADER_LEN);
        let sum = checksum(head, body);
        head[CHECKSUM_AT..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
    }

    #[test]
    fn roundtrip() {
        let hash = cluster_hash("prod");
        let d = frame(Kind::Leave, hash, b"body");
        assert_eq!(d.len(), HEADER_LEN + 4);
        assert_eq!(parse(&d, hash), Ok((Kind::Leave, &b"body"[..])));
        let d = frame(Kind::Foca, hash, b"");
        assert_eq!(parse(&d, hash), Ok((Kind::Foca, &b""[..])));
    }

    #[test]
    fn refusals_name_expected_and_actual() {
        let ours = cluster_hash("prod");
        let theirs = cluster_hash("staging");
        assert_ne!(ours, theirs);
        let d = frame(Kind::Foca, theirs, b"x");
        assert_eq!(
            parse(&d, ours),
            Err(FrameError::ForeignCluster {
                expected: ours,
                actual: theirs
            })
        );
        assert_eq!(parse(&d[..5], ours), Err(FrameError::TooShort { len: 5 }));

        let mut bad = frame(Kind::Foca, ours, b"x");
        bad[0] = b'X';
        assert!(matches!(
            parse(&bad, ours),
            Err(FrameError::BadMagic { .. })
        ));
        let mut bad = frame(Kind::Foca, ours, b"x");
        bad[2] = 9;
        assert_eq!(
            parse(&bad, ours),
            Err(FrameError::BadVersion {
                expected: WIRE_VERSION,
                actual: 9
            })
        );
        let mut bad = frame(Kind::Foca, ours, b"x");
        bad[3] = 7;
        reseal(&mut bad);
        assert_eq!(parse(&bad, ours), Err(FrameError::UnknownKind(7)));
        let mut bad = frame(Kind::Foca, ours, b"x");
        bad[HEADER_LEN] ^= 1;
        let e = parse(&bad, ours).unwrap_err();
        assert!(matches!(e, FrameError::BadChecksum { expected, actual } if expected != actual));
        assert!(e.to_string().starts_with("bad checksum: expected "), "{e}");
        assert!(FrameError::BadVersion {
            expected: 1,
            actual: 9
        }
        .to_string()
        .contains("expected 1, got 9"));
    }

    #[test]
    fn version_1_frames_are_refused() {
        let mut old = vec![b'N', b'M', 1, 0];
        old.extend_from_slice(&cluster_hash("prod").to_le_bytes());
        old.extend_from_slice(&[0; 16]);
        assert_eq!(
            parse(&old, cluster_hash("prod")),
            Err(FrameError::BadVersion {
                expected: 2,
                actual: 1
            })
        );
    }

    fn secret(s: &str) -> ClusterSecret {
        ClusterSecret::new(s.as_bytes()).unwrap()
    }

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn authenticated_frames_roundtrip_once() {
        let s = secret("0123456789abcdef-prod");
        let (mut tx, mut rx) = (
            Framing::new("prod", Some(&s), WINDOW),
            Framing::new("prod", Some(&s), WINDOW),
        );
        let now = 1_700_000_000_000;
        let mut d = Vec::new();
        tx.encode_at(now, Kind::Foca, b"body", &mut d);
        assert_eq!(d.len(), AUTH_HEADER_LEN + 4);
        assert_eq!(d[2], AUTH_WIRE_VERSION);
        assert_eq!(rx.parse_at(now + 5, &d), Ok((Kind::Foca, &b"body"[..])));
        // The same datagram again (a replay) is refused, even much later.
        assert_eq!(
            rx.parse_at(now + 6, &d),
            Err(FrameError::Replay(Replay::Seen))
        );
        assert!(matches!(
            rx.parse_at(now + 120_000, &d),
            Err(FrameError::Replay(Replay::TooOld { .. }))
        ));
        // The same body sent twice in one millisecond is two datagrams, both accepted.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        tx.encode_at(now, Kind::Foca, b"x", &mut a);
        tx.encode_at(now, Kind::Foca, b"x", &mut b);
        assert_ne!(a, b);
        assert!(rx.parse_at(now, &a).is_ok() && rx.parse_at(now, &b).is_ok());
    }

    #[test]
    fn authenticated_frames_refuse_other_secrets_and_plain_frames() {
        let now = 1_700_000_000_000;
        let ours = secret("0123456789abcdef-ours");
        let mut rx = Framing::new("prod", Some(&ours), WINDOW);
        let mut d = Vec::new();
        // Another secret, same cluster name: a forger, not a foreign cluster.
        Framing::new("prod", Some(&secret("0123456789abcdef-theirs")), WINDOW).encode_at(
            now,
            Kind::Foca,
            b"x",
            &mut d,
        );
        assert_eq!(rx.parse_at(now, &d), Err(FrameError::BadTag));
        assert!(rx.parse_at(now, &d).unwrap_err().is_auth());
        // Another cluster with its own secret is foreign, as without secrets.
        Framing::new("staging", Some(&secret("0123456789abcdef-theirs")), WINDOW).encode_at(
            now,
            Kind::Foca,
            b"x",
            &mut d,
        );
        assert!(matches!(
            rx.parse_at(now, &d),
            Err(FrameError::ForeignCluster { .. })
        ));
        // No secret: plain frames are refused by a node that has one, and the other way.
        Framing::new("prod", None, WINDOW).encode_at(now, Kind::Foca, b"x", &mut d);
        assert_eq!(
            rx.parse_at(now, &d),
            Err(FrameError::Unauthenticated {
                actual: WIRE_VERSION
            })
        );
        Framing::new("prod", Some(&ours), WINDOW).encode_at(now, Kind::Foca, b"x", &mut d);
        assert_eq!(
            Framing::new("prod", None, WINDOW).parse_at(now, &d),
            Err(FrameError::UnexpectedAuth)
        );
        // Every byte of header and body is covered: flip each in turn.
        let mut tx = Framing::new("prod", Some(&ours), WINDOW);
        tx.encode_at(now, Kind::Leave, b"leave body", &mut d);
        for i in 0..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 0x40;
            assert!(
                rx.parse_at(now, &bad).is_err(),
                "byte {i} flipped went unnoticed"
            );
        }
        // A stale timestamp cannot be refreshed without the key.
        let mut stale = Vec::new();
        tx.encode_at(now - 61_000, Kind::Foca, b"x", &mut stale);
        assert!(matches!(
            rx.parse_at(now, &stale),
            Err(FrameError::Replay(Replay::TooOld { .. }))
        ));
        stale[TS_AT..TS_AT + 8].copy_from_slice(&now.to_le_bytes());
        assert_eq!(rx.parse_at(now, &stale), Err(FrameError::BadTag));
        assert!(matches!(
            rx.parse_at(now, &d[..30]),
            Err(FrameError::TooShort { len: 30 })
        ));
    }

    #[test]
    fn cluster_hash_is_stable() {
        // Pinned: the hash is on the wire, so changing it splits mixed-version clusters.
        assert_eq!(cluster_hash(""), 0x2d06800538d394c2);
    }
}

/// Fuzz targets for the datagram format (bolero: random inputs, 1 s per target under
/// `cargo test`; see the crate docs for longer runs).
#[cfg(test)]
mod fuzz {
    use std::sync::atomic::{AtomicU64, Ordering};

    use bolero::check;
    use foca::{Codec, PostcardCodec};

    use super::*;
    use crate::identity::NodeIdentity;

    fn report(name: &str, n: &AtomicU64) {
        eprintln!("fuzz target {name}: {} cases", n.load(Ordering::Relaxed));
    }

    #[test]
    fn arbitrary_datagrams_never_panic() {
        let n = AtomicU64::new(0);
        check!()
            .with_type::<(Vec<u8>, u64, bool)>()
            .for_each(|(d, hash, ours)| {
                n.fetch_add(1, Ordering::Relaxed);
                let _ = parse(d, *hash);
                // Also with a sealed header, so that the kind and body paths are reached.
                let mut sealed = Vec::new();
                let kind = if *ours { Kind::Leave } else { Kind::Foca };
                encode(kind, *hash, d, &mut sealed);
                let (k, body) = parse(&sealed, *hash).expect("sealed frame");
                assert_eq!((k, body), (kind, &d[..]));
                // A leave body goes to foca's member decoder: it must refuse, not panic.
                let _: Result<foca::Member<NodeIdentity>, _> = PostcardCodec.decode_member(&d[..]);
            });
        report("wire_arbitrary_datagrams", &n);
    }

    #[test]
    fn roundtrip_and_single_byte_corruption() {
        let n = AtomicU64::new(0);
        check!()
            .with_type::<(bool, String, Vec<u8>, u16, u8)>()
            .for_each(|(leave, cluster, body, pos, xor)| {
                n.fetch_add(1, Ordering::Relaxed);
                let hash = cluster_hash(cluster);
                let kind = if *leave { Kind::Leave } else { Kind::Foca };
                let mut d = Vec::new();
                encode(kind, hash, body, &mut d);
                assert_eq!(parse(&d, hash), Ok((kind, &body[..])));
                let i = *pos as usize % d.len();
                d[i] ^= (*xor).max(1);
                let e = parse(&d, hash).expect_err("a corrupted byte went unnoticed");
                // Each refusal names what was expected and what came.
                let msg = e.to_string();
                assert!(
                    msg.contains("expected") || matches!(e, FrameError::UnknownKind(_)),
                    "{msg}"
                );
                assert!(
                    !e.is_auth(),
                    "a plain frame failed as unauthenticated: {msg}"
                );
            });
        report("wire_roundtrip_and_corruption", &n);
    }

    #[test]
    fn authenticated_arbitrary_and_corrupted_datagrams() {
        let n = AtomicU64::new(0);
        let secret = ClusterSecret::new(b"fuzzing-secret-0123456789").unwrap();
        check!()
            .with_type::<(Vec<u8>, Vec<u8>, u16, u8, u64)>()
            .for_each(|(raw, body, pos, xor, now)| {
                n.fetch_add(1, Ordering::Relaxed);
                let now = now % (1 << 50);
                let mut rx = Framing::new("c", Some(&secret), Duration::from_secs(60));
                let _ = rx.parse_at(now, raw);
                let mut d = Vec::new();
                Framing::new("c", Some(&secret), Duration::from_secs(60)).encode_at(
                    now,
                    Kind::Foca,
                    body,
                    &mut d,
                );
                let i = *pos as usize % d.len();
                let mut bad = d.clone();
                bad[i] ^= (*xor).max(1);
                assert!(
                    rx.parse_at(now, &bad).is_err(),
                    "corrupted byte {i} accepted"
                );
                assert_eq!(rx.parse_at(now, &d), Ok((Kind::Foca, &body[..])));
                assert!(rx.parse_at(now, &d).is_err(), "replay accepted");
            });
        report("wire_authenticated", &n);
    }
}

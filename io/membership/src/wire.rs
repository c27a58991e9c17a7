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

/// First two bytes of every datagram.
pub(crate) const MAGIC: [u8; 2] = *b"NM";
/// Must change with the header layout, the identity encoding or the codec.
pub(crate) const WIRE_VERSION: u8 = 2;
/// Bytes before the body.
pub(crate) const HEADER_LEN: usize = 20;
/// Where the checksum sits in the header.
const CHECKSUM_AT: usize = 12;

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
            });
        report("wire_roundtrip_and_corruption", &n);
    }
}

//! Datagram framing: a fixed header in front of every foca packet.
//!
//! ```text
//!  0        2        3        4                               12
//!  +--------+--------+--------+-------------------------------+-------------------//
//!  | magic  | version| kind   | cluster hash                  | body
//!  | "NM"   | 1      | 0 | 1  | xxh3-64(cluster_name), LE u64 | 0: foca packet
//!  |        |        |        |                               | 1: leave (one foca
//!  |        |        |        |                               |    Member, postcard)
//!  +--------+--------+--------+-------------------------------+-------------------//
//! ```
//!
//! The cluster hash keeps two clusters on one network apart: a datagram with another
//! hash is dropped before foca sees it, so no member of the other cluster is ever
//! learnt. Zero-length datagrams carry no header: they only wake the membership thread.

/// First two bytes of every datagram.
pub(crate) const MAGIC: [u8; 2] = *b"NM";
/// Must change with the header layout, the identity encoding or the codec.
pub(crate) const WIRE_VERSION: u8 = 1;
/// Bytes before the body.
pub(crate) const HEADER_LEN: usize = 12;

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
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
}

/// Hash of a cluster name as carried in the header. xxh3 is a fixed algorithm, so
/// nodes built from different versions agree on it.
pub(crate) fn cluster_hash(cluster_name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(cluster_name.as_bytes())
}

/// The header for `kind` in cluster `hash`.
pub(crate) fn header(kind: Kind, hash: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..2].copy_from_slice(&MAGIC);
    h[2] = WIRE_VERSION;
    h[3] = kind as u8;
    h[4..12].copy_from_slice(&hash.to_le_bytes());
    h
}

/// Checks the header of `datagram` against our cluster and returns the kind and body.
/// The cluster is checked before the kind so that a newer peer's unknown kinds from
/// another cluster still count as foreign.
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
    let mut hash = [0u8; 8];
    hash.copy_from_slice(&head[4..12]);
    let hash = u64::from_le_bytes(hash);
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

    #[test]
    fn roundtrip() {
        let hash = cluster_hash("prod");
        let mut d = header(Kind::Leave, hash).to_vec();
        d.extend_from_slice(b"body");
        assert_eq!(parse(&d, hash), Ok((Kind::Leave, &b"body"[..])));
        let d = header(Kind::Foca, hash);
        assert_eq!(parse(&d, hash), Ok((Kind::Foca, &b""[..])));
    }

    #[test]
    fn refusals_name_expected_and_actual() {
        let ours = cluster_hash("prod");
        let theirs = cluster_hash("staging");
        assert_ne!(ours, theirs);
        let d = header(Kind::Foca, theirs);
        assert_eq!(
            parse(&d, ours),
            Err(FrameError::ForeignCluster {
                expected: ours,
                actual: theirs
            })
        );
        assert_eq!(parse(&d[..5], ours), Err(FrameError::TooShort { len: 5 }));

        let mut bad = header(Kind::Foca, ours);
        bad[0] = b'X';
        assert!(matches!(
            parse(&bad, ours),
            Err(FrameError::BadMagic { .. })
        ));
        let mut bad = header(Kind::Foca, ours);
        bad[2] = 9;
        assert_eq!(
            parse(&bad, ours),
            Err(FrameError::BadVersion {
                expected: WIRE_VERSION,
                actual: 9
            })
        );
        let mut bad = header(Kind::Foca, ours);
        bad[3] = 7;
        assert_eq!(parse(&bad, ours), Err(FrameError::UnknownKind(7)));
        assert!(FrameError::BadVersion {
            expected: 1,
            actual: 9
        }
        .to_string()
        .contains("expected 1, got 9"));
    }

    #[test]
    fn cluster_hash_is_stable() {
        // Pinned: the hash is on the wire, so changing it splits mixed-version clusters.
        assert_eq!(cluster_hash(""), 0x2d06800538d394c2);
    }
}

//! Small object bodies kept in the journal's LMDB env instead of object files (the
//! `bodies` db, keyed by object key), so that many concurrent small writes share one
//! data sync: the group commit that makes their journal records durable.
//!
//! Value layout (little-endian):
//!
//! ```text
//!    0  magic       [u8; 4]  b"NCIB"
//!    4  version     u8       INLINE_VERSION
//!    5  seq         u64      the version's journal seq (as in its meta)
//!   13  body_crc    u32      CRC32C of the body
//!   17  header_crc  u32      CRC32C of bytes [0, 17)
//!   21  body        [u8; size]
//! ```
//!
//! A read checks every field against the object's meta (seq, size, CRC32C) and says
//! what it expected and what it found.

use crate::format::Mismatch;

pub(crate) const INLINE_MAGIC: [u8; 4] = *b"NCIB";
pub(crate) const INLINE_VERSION: u8 = 1;
pub(crate) const INLINE_HEADER: usize = 21;

/// Bytes of the stored value for a body of `len` bytes.
pub(crate) fn encoded_len(len: usize) -> usize {
    INLINE_HEADER + len
}

/// The header that goes before `body` of version `seq` in its stored value.
pub(crate) fn header(seq: u64, body: &[u8]) -> [u8; INLINE_HEADER] {
    let mut head = [0u8; INLINE_HEADER];
    head[0..4].copy_from_slice(&INLINE_MAGIC);
    head[4] = INLINE_VERSION;
    head[5..13].copy_from_slice(&seq.to_le_bytes());
    head[13..17].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let hcrc = crc32c::crc32c(&head[..17]);
    head[17..21].copy_from_slice(&hcrc.to_le_bytes());
    head
}

/// Checks a stored value against the version the index expects (`seq`, `size`,
/// `crc32c`) and returns its body.
pub(crate) fn decode(value: &[u8], seq: u64, size: u64, crc32c: u32) -> Result<&[u8], Mismatch> {
    let Some((head, body)) = value.split_at_checked(INLINE_HEADER) else {
        return Err(Mismatch::new(
            "inline body length",
            format!("at least {INLINE_HEADER} bytes"),
            value.len(),
        ));
    };
    let field = |r: std::ops::Range<usize>| head.get(r).unwrap_or_default();
    if field(0..4) != INLINE_MAGIC {
        return Err(Mismatch::new(
            "inline body magic",
            hex::encode(INLINE_MAGIC),
            hex::encode(field(0..4)),
        ));
    }
    if head[4] != INLINE_VERSION {
        return Err(Mismatch::new(
            "inline body version",
            INLINE_VERSION,
            head[4],
        ));
    }
    let u32_at = |at: usize| u32::from_le_bytes(field(at..at + 4).try_into().unwrap_or_default());
    let stored_hcrc = u32_at(17);
    let hcrc = crc32c::crc32c(field(0..17));
    if hcrc != stored_hcrc {
        return Err(Mismatch::new(
            "inline body header checksum",
            format!("{stored_hcrc:08x}"),
            format!("{hcrc:08x}"),
        ));
    }
    let stored_seq = u64::from_le_bytes(field(5..13).try_into().unwrap_or_default());
    if stored_seq != seq {
        return Err(Mismatch::new("inline body seq", seq, stored_seq));
    }
    if body.len() as u64 != size {
        return Err(Mismatch::new("body size", size, body.len()));
    }
    let stored_crc = u32_at(13);
    if stored_crc != crc32c {
        return Err(Mismatch::new(
            "body checksum",
            format!("{crc32c:08x}"),
            format!("{stored_crc:08x}"),
        ));
    }
    let actual = crc32c::crc32c(body);
    if actual != crc32c {
        return Err(Mismatch::new(
            "body checksum",
            format!("{crc32c:08x}"),
            format!("{actual:08x}"),
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(seq: u64, body: &[u8]) -> Vec<u8> {
        let mut v = header(seq, body).to_vec();
        v.extend_from_slice(body);
        assert_eq!(v.len(), encoded_len(body.len()));
        v
    }

    #[test]
    fn round_trips_and_checks_every_field() {
        let body = b"hello inline world";
        let crc = crc32c::crc32c(body);
        let v = encode(7, body);
        assert_eq!(decode(&v, 7, body.len() as u64, crc).unwrap(), body);
        assert_eq!(
            decode(&v, 8, body.len() as u64, crc).unwrap_err().what,
            "inline body seq"
        );
        assert_eq!(decode(&v, 7, 3, crc).unwrap_err().what, "body size");
        assert_eq!(
            decode(&v, 7, body.len() as u64, crc ^ 1).unwrap_err().what,
            "body checksum"
        );
        let mut bad = v.clone();
        bad[0] = b'X';
        assert_eq!(
            decode(&bad, 7, body.len() as u64, crc).unwrap_err().what,
            "inline body magic"
        );
        let mut bad = v.clone();
        bad[4] = 9;
        let e = decode(&bad, 7, body.len() as u64, crc).unwrap_err();
        assert_eq!(
            (e.what, e.expected.as_str(), e.actual.as_str()),
            ("inline body version", "1", "9")
        );
        let mut bad = v.clone();
        bad[6] ^= 1;
        assert_eq!(
            decode(&bad, 7, body.len() as u64, crc).unwrap_err().what,
            "inline body header checksum"
        );
        let mut bad = v.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            decode(&bad, 7, body.len() as u64, crc).unwrap_err().what,
            "body checksum"
        );
        assert_eq!(
            decode(&v[..5], 7, 0, 0).unwrap_err().what,
            "inline body length"
        );
        let empty = encode(1, b"");
        assert_eq!(decode(&empty, 1, 0, 0).unwrap(), b"");
    }

    #[test]
    fn fuzz_decode_never_panics() {
        bolero::check!()
            .with_type::<(Vec<u8>, u64, u64, u32)>()
            .for_each(|(v, seq, size, crc)| {
                let _ = decode(v, *seq, *size, *crc);
            });
    }
}

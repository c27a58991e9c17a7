//! Deterministic object ids and bodies.
//!
//! Object `i` of size `s` in a run seeded with `seed` always gets the same id and the same
//! bytes, so a later run (or another machine) can verify a body from the manifest's MD5
//! without anyone storing the bodies.
//!
//! ```text
//! id   = ULID(ID_TIMESTAMP_MS, low 80 bits of H(seed, s, i))
//! body = xorshift64* stream seeded by H(seed, id), 8 bytes per step, little endian,
//!        the last word truncated to the size
//! ```

use bytes::Bytes;
use md5::{Digest, Md5};
use ulid::Ulid;

/// Timestamp part of every generated ULID (2023-11-14T22:13:20Z): ids sort by nothing
/// meaningful, but they are valid ULIDs and stable across runs.
pub const ID_TIMESTAMP_MS: u64 = 1_700_000_000_000;

/// splitmix64: one step of the generator; also a good 64-bit mixer.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Mixes a list of words into 128 bits.
fn hash128(parts: &[u64]) -> u128 {
    let mut st = 0x6E65_6172_6361_6368; // "nearcach"
    for &p in parts {
        st ^= p;
        st = splitmix64(&mut st);
    }
    let hi = splitmix64(&mut st);
    let lo = splitmix64(&mut st);
    (u128::from(hi) << 64) | u128::from(lo)
}

/// The id of object `index` of `size` bytes in the run seeded with `seed`.
pub fn object_id(seed: u64, size: u64, index: u64) -> Ulid {
    let random = hash128(&[seed, size, index]) & ((1u128 << 80) - 1);
    Ulid::from_parts(ID_TIMESTAMP_MS, random)
}

/// The seed of the body stream of object `id`.
pub fn body_seed(seed: u64, id: &str) -> u64 {
    let mut st = seed ^ 0x626F_6479; // "body"
    for chunk in id.as_bytes().chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        st ^= u64::from_le_bytes(w);
        st = splitmix64(&mut st);
    }
    // xorshift must not start at zero.
    st | 1
}

/// xorshift64*: fast, good enough to make bodies incompressible and distinct.
#[derive(Clone, Debug)]
pub struct BodyStream {
    state: u64,
}

impl BodyStream {
    pub fn new(body_seed: u64) -> Self {
        BodyStream {
            state: body_seed | 1,
        }
    }

    #[inline]
    fn next_word(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Fills `buf` with the next `buf.len()` bytes. Only the last call of a stream may
    /// pass a length that is not a multiple of 8.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_word().to_le_bytes());
        }
        let rest = words.into_remainder();
        if !rest.is_empty() {
            let w = self.next_word().to_le_bytes();
            rest.copy_from_slice(&w[..rest.len()]);
        }
    }
}

/// The whole body of an object.
pub fn body(body_seed: u64, size: u64) -> Bytes {
    let mut v = vec![0u8; size as usize];
    BodyStream::new(body_seed).fill(&mut v);
    Bytes::from(v)
}

/// MD5 of an object's body, computed in 64 KiB steps without materialising it.
pub fn body_md5(body_seed: u64, size: u64) -> [u8; 16] {
    const STEP: usize = 64 << 10;
    let mut s = BodyStream::new(body_seed);
    let mut h = Md5::new();
    let mut buf = vec![0u8; STEP];
    let mut left = size as usize;
    while left > 0 {
        let n = left.min(STEP);
        s.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        left -= n;
    }
    h.finalize().into()
}

pub fn md5(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_valid_and_distinct() {
        let a = object_id(7, 4096, 0);
        assert_eq!(a, object_id(7, 4096, 0));
        assert_eq!(a.timestamp_ms(), ID_TIMESTAMP_MS);
        // Round-trips through the canonical text form the server validates.
        assert_eq!(Ulid::from_string(&a.to_string()).unwrap(), a);
        let mut seen = std::collections::HashSet::new();
        for seed in 0..3 {
            for size in [4096, 65536] {
                for i in 0..500 {
                    assert!(seen.insert(object_id(seed, size, i)), "collision");
                }
            }
        }
        // Pinned so a change of the scheme (which would orphan old manifests) is noticed.
        assert_eq!(object_id(1, 4096, 0).to_string(), PINNED_ID);
    }

    const PINNED_ID: &str = "01HF7YAT00FQGAEPCBMC9C88X4";

    #[test]
    fn bodies_are_deterministic_and_md5_streams_match() {
        let id = object_id(1, 100_003, 5).to_string();
        let s = body_seed(1, &id);
        let b = body(s, 100_003);
        assert_eq!(b, body(s, 100_003));
        assert_eq!(b.len(), 100_003);
        assert_eq!(md5(&b), body_md5(s, 100_003));
        // A prefix of a longer body is the shorter body (same stream).
        assert_eq!(&body(s, 200_000)[..100_003], &b[..]);
        // Different seeds or ids give different bodies.
        assert_ne!(b, body(body_seed(2, &id), 100_003));
        assert_ne!(md5(&body(s, 0)), md5(&body(s, 1)));
        assert_eq!(body(s, 0).len(), 0);
    }
}

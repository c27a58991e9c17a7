//! The sync log: origin writes and deletes that one backend of a set missed (it failed,
//! timed out, had its circuit open or was in maintenance) while the others took them,
//! plus repairs found by reads (drift) and consistency checks. Kept in the shard's LMDB
//! env (db `synclog`), committed in the same transaction that marks the write done, so
//! nothing acknowledged is forgotten across kill -9.
//!
//! One entry per (backend, object key): a later write or delete of the key supersedes
//! the older entry (the replay only ever needs the newest state), and a delete entry
//! replaces a copy entry, so a late copy can never undo a delete.
//!
//! LMDB key: `backend NUL key`, or `backend NUL #md5hex(key)` when that would exceed
//! LMDB's 511-byte key limit (the full key is in the value). Value layout:
//!
//! ```text
//! +-------------+---------+----------------------+--------------------------------+
//! | magic NCSL  | version | JSON of SyncEntry    | CRC32C of all before, LE u32   |
//! | 4 bytes     | 1 byte  | n bytes              | 4 bytes                        |
//! +-------------+---------+----------------------+--------------------------------+
//! ```
//!
//! [`SYNC_VERSION`] must change with the layout. Every read checks magic, version and
//! checksum and says what it expected and what it found.

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::StoreError;

pub const SYNC_MAGIC: [u8; 4] = *b"NCSL";
/// Version of sync log values written now; must change with the value layout.
pub const SYNC_VERSION: u8 = 1;

/// LMDB's key limit.
const MAX_LMDB_KEY: usize = 511;

/// What a backend must be brought to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncKind {
    /// Copy the object (from the local copy or a backend that has it).
    Put,
    /// Delete the object.
    Delete,
}

/// Why an entry exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncCause {
    /// A write or delete through nearcache that this backend missed.
    Missed,
    /// A read found the key missing here while another backend had it.
    Drift,
    /// A consistency check found a difference.
    Check,
}

/// One pending repair of one backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncEntry {
    pub backend: String,
    /// The object's cache key (native id or `bucket/key`).
    pub key: String,
    pub kind: SyncKind,
    pub cause: SyncCause,
    /// Seq of the version or tombstone in this shard (0 when not from a local write).
    pub seq: u64,
    /// Size of the version to copy (0 for a delete or when unknown).
    pub size: u64,
    /// ETag (unquoted) the copy must have; empty when unknown (drift, check).
    pub etag: String,
    /// Wall-clock ms when the entry was made.
    pub created_ms: u64,
    /// Unique per shard, rising: tells a superseding entry from the one a repair took.
    pub id: u64,
}

impl SyncEntry {
    /// The LMDB key of the entry.
    pub fn db_key(&self) -> String {
        db_key(&self.backend, &self.key)
    }
}

/// The LMDB key of (backend, key).
pub fn db_key(backend: &str, key: &str) -> String {
    let k = format!("{backend}\0{key}");
    if k.len() <= MAX_LMDB_KEY {
        k
    } else {
        format!("{backend}\0#{}", hex::encode(Md5::digest(key.as_bytes())))
    }
}

pub fn encode_entry(e: &SyncEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&SYNC_MAGIC);
    out.push(SYNC_VERSION);
    serde_json::to_writer(&mut out, e).expect("sync entries serialize");
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub fn decode_entry(b: &[u8]) -> Result<SyncEntry, StoreError> {
    let bad = |what: &str, expected: &dyn std::fmt::Display, actual: &dyn std::fmt::Display| {
        StoreError::Journal(format!(
            "sync log value {what}: expected {expected}, found {actual}"
        ))
    };
    if b.len() < 4 + 1 + 4 {
        return Err(bad("length", &"at least 9 bytes", &b.len()));
    }
    if b[..4] != SYNC_MAGIC {
        return Err(bad(
            "magic",
            &hex::encode(SYNC_MAGIC),
            &hex::encode(&b[..4]),
        ));
    }
    if b[4] != SYNC_VERSION {
        return Err(bad("version", &SYNC_VERSION, &b[4]));
    }
    let body = crate::journal::strip_crc(b, "sync log value")?;
    serde_json::from_slice(&body[5..])
        .map_err(|e| StoreError::Journal(format!("decoding a sync log value: {e}")))
}

/// Backlog of one backend, as the admin endpoint and `/metrics` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncBacklog {
    pub entries: u64,
    /// Bytes still to copy (known sizes of copy entries).
    pub bytes: u64,
    /// `created_ms` of the oldest entry (0: none).
    pub oldest_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> SyncEntry {
        SyncEntry {
            backend: "dc2".into(),
            key: "bucket/a/b".into(),
            kind: SyncKind::Put,
            cause: SyncCause::Missed,
            seq: 7,
            size: 1 << 20,
            etag: "abc".into(),
            created_ms: 1,
            id: 9,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let e = entry();
        let v = encode_entry(&e);
        assert_eq!(decode_entry(&v).unwrap(), e);
        let mut bad = v.clone();
        bad[0] = b'X';
        let err = decode_entry(&bad).unwrap_err().to_string();
        assert!(err.contains("magic"), "{err}");
        let mut bad = v.clone();
        bad[4] = 9;
        assert!(decode_entry(&bad)
            .unwrap_err()
            .to_string()
            .contains("version"));
        let mut bad = v.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        assert!(decode_entry(&bad)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        assert!(decode_entry(&v[..5]).is_err());
    }

    #[test]
    fn long_keys_get_a_hashed_db_key() {
        let short = db_key("dc1", "b/k");
        assert_eq!(short, "dc1\0b/k");
        let long = "k".repeat(600);
        let k = db_key("dc1", &long);
        assert!(k.len() <= MAX_LMDB_KEY);
        assert!(k.starts_with("dc1\0#"));
    }

    #[test]
    fn fuzz_decode_never_panics() {
        bolero::check!().for_each(|b: &[u8]| {
            let _ = decode_entry(b);
            // A valid value with any byte changed is refused or decodes to a value.
            let v = encode_entry(&entry());
            if let Some(&x) = b.first() {
                let mut w = v.clone();
                let i = x as usize % w.len();
                w[i] ^= b.get(1).copied().unwrap_or(1) | 1;
                assert!(decode_entry(&w).is_err(), "a flipped byte at {i} passed");
            }
        });
    }
}

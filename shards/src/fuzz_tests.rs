//! Fuzz targets for the persistent codecs: journal values (`journal::encode`/`decode`)
//! and object files (`format`: header, checksum table, blocks).
//!
//! They run as ordinary tests on stable Rust through bolero's random engine: each target
//! runs for 1 s by default. Longer runs: see the crate docs ("Fuzzing").
//! Each target counts its cases and prints the count (`-- --nocapture` shows it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bolero::check;

use crate::defaults::BLOCK_SIZE;
use crate::format::{self, Header, HEADER_SIZE};
use crate::journal::{decode, encode, PendingRec, PendingRecKind, Record, RecordKind, StoredEntry};
use crate::{ObjectMeta, Provenance, StoreError, Tombstone};

/// Counts a target's cases and reports them when the target ends.
struct Cases(&'static str, AtomicU64);

impl Cases {
    fn new(name: &'static str) -> Cases {
        Cases(name, AtomicU64::new(0))
    }
    fn inc(&self) {
        self.1.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Cases {
    fn drop(&mut self) {
        eprintln!(
            "fuzz target {}: {} cases",
            self.0,
            self.1.load(Ordering::Relaxed)
        );
    }
}

type MetaSeed = (
    String,
    u64,
    u64,
    u64,
    u8,
    bool,
    bool,
    Option<String>,
    Vec<(String, String)>,
);

fn meta(seed: &MetaSeed) -> ObjectMeta {
    let (key, size, hlc, seq, level, in_origin, fetched, ct, user) = seed.clone();
    ObjectMeta {
        key,
        size,
        etag: format!("{hlc:x}"),
        crc32c: seq as u32,
        content_type: ct.clone(),
        name: ct,
        user_meta: user.iter().cloned().collect(),
        last_modified_ms: size ^ hlc,
        hlc,
        seq,
        level,
        in_origin,
        provenance: if fetched {
            Provenance::Fetched
        } else {
            Provenance::Client
        },
        headers: user.into_iter().rev().collect::<BTreeMap<_, _>>(),
        validated_ms: 0,
        inline: false,
        derived: Default::default(),
    }
}

fn record(kind: u8, seed: &MetaSeed) -> Record {
    let m = meta(seed);
    let tomb = Tombstone {
        key: m.key.clone(),
        hlc: m.hlc,
        seq: m.seq,
        deleted_at_ms: m.size,
        level: m.level,
    };
    let (key, seq, hlc, level) = (m.key.clone(), m.seq, m.hlc, m.level);
    let kind = match kind % 8 {
        0 => RecordKind::Put(m),
        1 => RecordKind::Delete(tomb),
        2 => RecordKind::Upgrade { key, level, hlc },
        3 => RecordKind::Uploaded { key, seq, hlc },
        4 => RecordKind::Evicted { key, seq },
        5 => RecordKind::Forget { key },
        6 => RecordKind::Corrupt { key, seq },
        _ => RecordKind::TombstoneExpired { key, seq },
    };
    Record { seq, hlc, kind }
}

/// Every value type the journal stores, encoded.
fn encodings(kind: u8, seed: &MetaSeed) -> Vec<Vec<u8>> {
    let r = record(kind, seed);
    let m = meta(seed);
    let p = PendingRec {
        seq: m.seq,
        kind: if m.in_origin {
            PendingRecKind::Put
        } else {
            PendingRecKind::Delete
        },
        not_before_ms: m.size,
        hlc: m.hlc,
    };
    vec![
        encode(&r),
        encode(&StoredEntry::Object(m.clone())),
        encode(&StoredEntry::Tombstone(Tombstone {
            key: m.key,
            hlc: m.hlc,
            seq: m.seq,
            deleted_at_ms: 7,
            level: m.level,
        })),
        encode(&p),
    ]
}

/// Decodes `b` as each journal value type; none may panic.
fn decode_all(b: &[u8]) -> [bool; 3] {
    [
        decode::<Record>(b).is_ok(),
        decode::<StoredEntry>(b).is_ok(),
        decode::<PendingRec>(b).is_ok(),
    ]
}

#[test]
fn journal_arbitrary_bytes_never_panic() {
    let cases = Cases::new("journal_arbitrary_bytes");
    check!().with_type::<Vec<u8>>().for_each(|b| {
        cases.inc();
        decode_all(b);
        // Also behind each version byte, so the JSON and checksum paths see the bytes.
        for v in [1u8, 2] {
            let mut x = vec![v];
            x.extend_from_slice(b);
            decode_all(&x);
        }
    });
}

#[test]
fn journal_roundtrip_and_corruption() {
    let cases = Cases::new("journal_roundtrip_and_corruption");
    check!()
        .with_max_len(1024)
        .with_type::<(u8, MetaSeed, u32, u8)>()
        .for_each(|(kind, seed, pos, xor)| {
            cases.inc();
            for (t, enc) in encodings(*kind, seed).into_iter().enumerate() {
                // Round trip: decoding and re-encoding gives the same bytes.
                let again = match t {
                    0 => encode(&decode::<Record>(&enc).expect("record")),
                    1 | 2 => encode(&decode::<StoredEntry>(&enc).expect("entry")),
                    _ => encode(&decode::<PendingRec>(&enc).expect("pending")),
                };
                assert!(again == enc, "round trip changed the encoding of type {t}");
                // A single corrupted byte is refused, whatever type it is read as.
                let mut bad = enc.clone();
                let i = *pos as usize % bad.len();
                bad[i] ^= xor.max(&1);
                assert_eq!(
                    decode_all(&bad),
                    [false; 3],
                    "byte {i} ^ {xor:#x} undetected"
                );
            }
        });
}

#[test]
fn journal_refusals_say_expected_and_found() {
    let enc = encode(&record(0, &Default::default()));
    let mut bad = enc.clone();
    bad[3] ^= 0x20;
    let e = decode::<Record>(&bad).unwrap_err().to_string();
    assert!(
        e.contains("checksum: expected") && e.contains("found"),
        "{e}"
    );
    bad = enc.clone();
    bad[0] = 9;
    let e = decode::<Record>(&bad).unwrap_err().to_string();
    assert!(e.contains("version: expected 2 or 1, found 9"), "{e}");
    let e = decode::<Record>(&[2, 0]).unwrap_err().to_string();
    assert!(
        e.contains("length: expected at least 5 bytes, found 2"),
        "{e}"
    );
    // Version 1 values (no checksum) from older journals are still read.
    let mut v1 = vec![1u8];
    serde_json::to_writer(&mut v1, &record(3, &Default::default())).unwrap();
    assert!(decode::<Record>(&v1).is_ok());
    // ...but the version byte of a version 2 value flipped to 1 is not.
    let mut flipped = enc.clone();
    flipped[0] = 1;
    assert!(matches!(
        decode::<Record>(&flipped),
        Err(StoreError::Journal(_))
    ));
}

#[test]
fn header_arbitrary_bytes_never_panic() {
    let cases = Cases::new("header_arbitrary_bytes");
    let valid = Header::new("k/ey", 9, 3 * BLOCK_SIZE + 5, 1, &[1, 2, 3, 4]).encode();
    check!()
        .with_type::<(Vec<u8>, Vec<(u16, u8)>)>()
        .for_each(|(b, edits)| {
            cases.inc();
            let _ = Header::decode(b);
            // Edits of a valid header, with and without its checksum fixed up, reach the
            // field checks behind the magic, version and checksum.
            let mut h = valid.as_slice().to_vec();
            for &(at, v) in edits {
                h[at as usize % HEADER_SIZE] = v;
            }
            let _ = Header::decode(&h);
            let crc = crc32c::crc32c(&h[..HEADER_SIZE - 4]);
            h[HEADER_SIZE - 4..].copy_from_slice(&crc.to_le_bytes());
            if let Ok(d) = Header::decode(&h) {
                assert!(d.body_size <= format::MAX_BODY_SIZE);
                assert_eq!(d.n_blocks, format::n_blocks(d.body_size));
                assert!(
                    d.encode().as_slice() == &h[..],
                    "decoded header re-encodes differently: {d:?}"
                );
            }
        });
}

#[test]
fn object_image_arbitrary_bytes_never_panic() {
    let cases = Cases::new("object_image_arbitrary_bytes");
    check!()
        .with_type::<(Vec<u8>, u64, u32)>()
        .for_each(|(b, size, crc)| {
            cases.inc();
            let _ = format::decode_object(b);
            // A valid header (any size) over arbitrary bytes: table and blocks must be refused
            // or verified, never read out of bounds.
            let size = size % (4 * BLOCK_SIZE);
            let table: Vec<u32> = (0..format::n_blocks(size))
                .map(|i| *crc ^ i as u32)
                .collect();
            let mut image = Header::new("k", 1, size, *crc, &table)
                .encode()
                .as_slice()
                .to_vec();
            image.extend_from_slice(b);
            let _ = format::decode_object(&image);
        });
}

#[test]
fn object_image_roundtrip_and_corruption() {
    let cases = Cases::new("object_image_roundtrip_and_corruption");
    check!()
        .with_type::<(String, u64, Vec<u8>, u32, u32, u8)>()
        .for_each(|(key, seq, body, rep, pos, xor)| {
            cases.inc();
            if key.is_empty() || key.len() > format::MAX_KEY_LEN {
                return;
            }
            // Stretch small inputs across block boundaries now and then.
            let mut body = body.clone();
            if rep % 4 == 0 && !body.is_empty() {
                let target = BLOCK_SIZE as usize + (*rep as usize % 5000);
                body = body.iter().cycle().take(target).copied().collect();
            }
            let image = format::encode_object(key, *seq, &body);
            let (h, got) = format::decode_object(&image).expect("valid image");
            assert_eq!(
                (h.key.as_str(), h.seq, &got[..]),
                (key.as_str(), *seq, &body[..])
            );

            let mut bad = image.clone();
            let i = *pos as usize % bad.len();
            bad[i] ^= xor.max(&1);
            let meaningful = i < HEADER_SIZE
                || (i as u64 >= format::BODY_OFFSET
                    && (i as u64) < format::BODY_OFFSET + body.len() as u64)
                || (i as u64 >= h.table_off
                    && (i as u64) < h.table_off + format::table_len(h.n_blocks) as u64);
            match format::decode_object(&bad) {
                Err(m) => assert_ne!(m.expected, m.actual, "{m:?}"),
                // Only the zero padding after the body and the table is not checksummed,
                // and it carries nothing.
                Ok((h2, got2)) => {
                    assert!(!meaningful, "byte {i} ^ {xor:#x} undetected");
                    assert!(
                        (h2, got2) == (h, body),
                        "padding byte {i} changed the object"
                    );
                }
            }
        });
}

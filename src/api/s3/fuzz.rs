//! Fuzz targets for the S3 API's header and query parsers added for S3 conformance, in the
//! house style of `src/fuzz.rs` (bolero `check!()`, bounded iterations in `cargo test`,
//! `BOLERO_RANDOM_ITERATIONS` for a long run):
//!
//! ```text
//! cargo test -p nearcache --lib api::s3::fuzz
//! ```
//!
//! - `x-amz-copy-source` (`parse_copy_source`): never panics; an encoded `bucket/key`
//!   (any key, `?`, `%`, `+`, `//`, unicode and control characters included) round-trips;
//! - `x-amz-copy-source-range` (`parse_copy_range`): accepted ranges are `first <= last`
//!   and written as `bytes=first-last`;
//! - `partNumber`, multipart ETags and part ranges (`part`): only 1..=10000, the part
//!   count only from `<md5>-N`, and a part's range always inside the object;
//! - the stored `Content-Encoding` (`stored_encoding`): `aws-chunked` never stored;
//! - the PutObjectTagging document (`parse_tagging`): never panics, at most 10 unique tags.

use std::sync::atomic::{AtomicUsize, Ordering};

use bolero::check;

use super::multipart::parse_copy_range;
use super::object::{parse_copy_source, stored_encoding};
use super::part::{multipart_parts, parse_part_number, part_range};
use super::subresource::parse_tagging;

const ITERS: usize = 3000;

fn report(name: &str, n: &AtomicUsize) {
    eprintln!("fuzz {name}: {} cases", n.load(Ordering::Relaxed));
}

/// Percent-encodes everything but unreserved characters and '/', as SDKs write
/// `x-amz-copy-source`.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const KEY_CHARS: &[char] = &[
    'a', '/', ' ', '+', '%', '?', '#', '&', '=', 'ü', '\u{1}', '\r', '\n', '~', '.',
];

fn key_from(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| KEY_CHARS[*b as usize % KEY_CHARS.len()])
        .collect()
}

#[test]
fn fuzz_copy_source_raw() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(ITERS)
        .with_max_len(128)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let raw = String::from_utf8_lossy(input);
            if let Ok(src) = parse_copy_source(&raw) {
                assert!(!src.bucket.is_empty() && !src.key.is_empty(), "{raw:?}");
                assert!(!src.bucket.contains('/'), "{raw:?}");
            }
        });
    report("copy_source_raw", &n);
}

#[test]
fn fuzz_copy_source_round_trip() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(ITERS)
        .with_max_len(64)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let (flags, rest) = input.split_first().unwrap_or((&0, &[]));
            let key = key_from(rest);
            if key.is_empty() {
                return;
            }
            let slash = if flags & 1 == 1 { "/" } else { "" };
            let version = if flags & 2 == 2 {
                "?versionId=null"
            } else {
                ""
            };
            let raw = format!("{slash}bkt/{}{version}", encode(&key));
            let src = parse_copy_source(&raw).unwrap_or_else(|e| panic!("{raw:?}: {e:?}"));
            assert_eq!(src.bucket, "bkt");
            assert_eq!(src.key, key, "{raw:?}");
            assert_eq!(src.version.is_some(), flags & 2 == 2);
        });
    report("copy_source_round_trip", &n);
}

#[test]
fn fuzz_copy_range() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(ITERS)
        .with_max_len(48)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let raw = String::from_utf8_lossy(input);
            if let Ok((a, b)) = parse_copy_range(&raw) {
                assert!(a <= b, "{raw:?}");
                assert!(raw.contains(&a.to_string()) && raw.contains(&b.to_string()));
            }
            // Well-formed ranges are accepted as written.
            if input.len() >= 16 {
                let a = u64::from_le_bytes(input[..8].try_into().expect("8 bytes"));
                let b = u64::from_le_bytes(input[8..16].try_into().expect("8 bytes"));
                let r = parse_copy_range(&format!("bytes={a}-{b}"));
                match r {
                    Ok(got) => assert_eq!(got, (a, b)),
                    Err(_) => assert!(b < a),
                }
            }
        });
    report("copy_range", &n);
}

#[test]
fn fuzz_part_number_and_layout() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(ITERS)
        .with_max_len(64)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let raw = String::from_utf8_lossy(input);
            if let Ok(p) = parse_part_number(&raw) {
                assert!((1..=10_000).contains(&p), "{raw:?}");
            }
            if let Some(p) = multipart_parts(&raw) {
                assert!((1..=10_000).contains(&p), "{raw:?}");
                assert!(raw.ends_with(&format!("-{p}")) && raw.len() > 33);
            }
            // Part sizes from the input: any range returned lies inside the object.
            let sizes: Vec<u64> = input
                .chunks(4)
                .map(|c| c.iter().fold(0u64, |a, &b| (a << 8) | u64::from(b)))
                .collect();
            let size = sizes.iter().fold(0u64, |a, &b| a.saturating_add(b));
            let object = if input.first().is_some_and(|b| b & 1 == 1) {
                size / 2
            } else {
                size
            };
            if let Some(r) = part_range(&sizes, object) {
                assert!(r.start <= r.end && r.end <= object);
                assert_eq!(
                    r.end - r.start,
                    *sizes.last().expect("a range means a part")
                );
            }
        });
    report("part_number_and_layout", &n);
}

#[test]
fn fuzz_stored_encoding() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(ITERS)
        .with_max_len(48)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let words = [
                "gzip",
                "aws-chunked",
                "AWS-Chunked",
                " ",
                ",",
                "br",
                "identity",
            ];
            let v: String = input
                .iter()
                .map(|b| words[*b as usize % words.len()])
                .collect();
            if let Some(kept) = stored_encoding(&v) {
                assert!(
                    !kept
                        .split(',')
                        .any(|c| c.trim().eq_ignore_ascii_case("aws-chunked")),
                    "{v:?} -> {kept:?}"
                );
                if !v.to_ascii_lowercase().contains("aws-chunked") {
                    assert_eq!(kept, v);
                }
            }
        });
    report("stored_encoding", &n);
}

#[test]
fn fuzz_tagging_document() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(ITERS)
        .with_max_len(256)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            // Raw bytes, and a well-formed document of tags made from them.
            let _ = parse_tagging(input);
            let tags: Vec<String> = input
                .chunks(3)
                .map(|c| c.iter().map(|b| char::from(b'a' + b % 3)).collect())
                .collect();
            let body: String = tags
                .iter()
                .map(|k| format!("<Tag><Key>{k}</Key><Value>v</Value></Tag>"))
                .collect();
            let doc = format!("<Tagging><TagSet>{body}</TagSet></Tagging>");
            let unique: std::collections::BTreeSet<&String> = tags.iter().collect();
            match parse_tagging(doc.as_bytes()) {
                Ok(got) => {
                    assert!(got.len() <= 10 && unique.len() == tags.len());
                    assert_eq!(got.len(), tags.len());
                }
                Err(_) => assert!(tags.len() > 10 || unique.len() != tags.len()),
            }
        });
    report("tagging_document", &n);
}

#[test]
fn copy_source_examples() {
    let p = |s: &str| parse_copy_source(s).map(|c| (c.bucket, c.key, c.version));
    assert_eq!(
        p("/b/a%20b%2Bc%3Fd").unwrap(),
        ("b".into(), "a b+c?d".into(), None)
    );
    assert_eq!(p("b/a+b").unwrap(), ("b".into(), "a+b".into(), None));
    assert_eq!(
        p("b/x?versionId=null").unwrap(),
        ("b".into(), "x".into(), Some("null".into()))
    );
    // An unencoded '?' that is not a versionId belongs to the key.
    assert_eq!(
        p("b/what?now").unwrap(),
        ("b".into(), "what?now".into(), None)
    );
    assert_eq!(p("b/a//c/").unwrap(), ("b".into(), "a//c/".into(), None));
    assert!(p("b").is_err() && p("/b/").is_err() && p("b/%FF").is_err());
}

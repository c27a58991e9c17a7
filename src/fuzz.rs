//! Fuzz targets for the server's request parsers, run by `cargo test` on stable Rust through
//! bolero's `check!()` harness (the house style of `src/s3proto/src/fuzz.rs`).
//!
//! Each target is an ordinary `#[test]` drawing a bounded number of random inputs
//! (`with_iterations`), so all of them together take a few seconds in a debug build:
//!
//! ```text
//! cargo test -p nearcache --lib fuzz
//! ```
//!
//! For a long run raise the bound with bolero's variables, `BOLERO_RANDOM_ITERATIONS` (cases
//! per target) or `BOLERO_RANDOM_TEST_TIME_MS` (time per target), preferably in release mode;
//! each target prints how many cases it ran (`--nocapture`), and a failure prints the
//! `BOLERO_RANDOM_SEED=...` that replays it:
//!
//! ```text
//! BOLERO_RANDOM_ITERATIONS=1000000 cargo test -p nearcache --lib --release fuzz_ -- --nocapture --test-threads=2
//! ```
//!
//! What is fuzzed, and what is checked beyond "never panics":
//!
//! - `Range` (`http_util::parse_byte_range` + `resolve_range`): every satisfiable range lies
//!   inside the object (`start < end <= size`), also at u64 edge values, and well-formed
//!   headers resolve as RFC 9110 says (an independent model);
//! - conditional headers (`Conditions::from_headers` + `evaluate`): only 304/412/None, 304
//!   only for GET/HEAD, and well-formed ETag lists and dates answer as RFC 9110 §13.2.2;
//! - the native API's headers (`api::native`): ids, consistency levels, booleans and user
//!   metadata; accepted values round-trip and only the documented charset is accepted;
//! - ListObjects (`api::s3::list`): query strings through `parse_query` and `ListQuery::parse`,
//!   the merge of an origin page with pending writes and deletes (sorted, bounded, no
//!   deleted key, every pending write within the page, `next` iff truncated), and whole
//!   listings paged through against a model of S3's origin (every key once, in order);
//! - S3 addressing (`api::s3::address`): Host and path to bucket and key;
//! - `Cache-Control`/`Expires` (`object::fresh`): directive names are tokens, standings are
//!   consistent in time, well-formed max-age/s-maxage read back exactly.
//!
//! Inputs that once failed are kept at the end as plain regression tests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bolero::check;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use nearcache_s3::{ListEntry, ListPage};

use crate::api::native::{bool_header, level_header, parse_id, user_meta_header};
use crate::api::s3::auth::BodyCheck;
use crate::api::s3::list::{merge, origin_max_keys, Item, ListQuery, Merged};
use crate::api::s3::{address, parse_query, S3Req, S3State};
use crate::config::S3ApiConfig;
use crate::http_util::{
    answer_head, http_date, parse_byte_range, resolve_range, Answer, ByteRangeSpec, Conditions,
};

/// Default cases per raw-byte target in `cargo test`.
const RAW_ITERS: usize = 3000;
/// Default cases per structure-aware target.
const STRUCT_ITERS: usize = 2000;

fn report(name: &str, n: &AtomicUsize) {
    eprintln!("fuzz {name}: {} cases", n.load(Ordering::Relaxed));
}

/// Reads structure out of fuzz bytes (zeros once exhausted), like libFuzzer's data provider.
struct Src<'a>(&'a [u8]);

impl<'a> Src<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            usize::from(self.u16()) % n
        }
    }
    fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }
    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())].clone()
    }
    fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = self.below(max + 1).min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
    /// A string of up to `max` chars drawn from `alphabet`.
    fn string(&mut self, max: usize, alphabet: &[char]) -> String {
        let n = self.below(max + 1);
        (0..n).map(|_| self.pick(alphabet)).collect()
    }
    /// A number near the interesting edges (0, 1, `size`, u64::MAX) or anywhere.
    fn edge_u64(&mut self, size: u64) -> u64 {
        match self.byte() % 10 {
            0 => 0,
            1 => 1,
            2 => size.saturating_sub(1),
            3 => size,
            4 => size.saturating_add(1),
            5 => u64::MAX,
            6 => u64::MAX - 1,
            7 => u64::from(self.byte()),
            _ => self.u64(),
        }
    }
}

// =============================================================================================
// Range

/// What RFC 9110 §14 says a `bytes=` range with these positions means for `size` bytes
/// (`None` positions: absent; the spec was otherwise well-formed).
fn range_model(first: Option<u64>, last: Option<u64>, size: u64) -> Result<Option<Range<u64>>, ()> {
    match (first, last) {
        (None, None) => Ok(None),
        (None, Some(n)) if n == 0 || size == 0 => Err(()),
        (None, Some(n)) => Ok(Some(size - n.min(size)..size)),
        (Some(f), Some(l)) if l < f => Ok(None),
        (Some(f), _) if f >= size => Err(()),
        (Some(f), None) => Ok(Some(f..size)),
        (Some(f), Some(l)) => Ok(Some(f..l.min(size - 1) + 1)),
    }
}

/// Resolves `h` against `size`, checks the invariants and returns the answer.
fn check_range(h: Option<&str>, size: u64) -> Result<Option<Range<u64>>, ()> {
    let spec = parse_byte_range(h);
    let r = resolve_range(spec, size);
    match &r {
        Ok(Some(r)) => {
            assert!(r.start < r.end && r.end <= size, "{h:?} on {size}: {r:?}");
            // The response head is built from it.
            let _ = answer_head(http::Response::builder(), size, &Answer::Partial(r.clone()));
        }
        Ok(None) => assert_eq!(spec, ByteRangeSpec::Whole, "{h:?}"),
        Err(u) => {
            assert_eq!(u.size, size);
            assert_ne!(spec, ByteRangeSpec::Whole, "{h:?}");
        }
    }
    r.map_err(|_| ())
}

/// `Cache-Control` and `Expires` (`object::fresh`): any header text parses without
/// panicking into directives whose names are tokens; a copy's standing is consistent (a
/// copy not in the origin is always fresh; a fresh copy stays fresh earlier); and
/// well-formed `max-age`/`s-maxage` values read back exactly.
#[test]
fn fuzz_cache_control() {
    use crate::object::fresh::{cache_control, origin_directives, standing, Rule, Standing};
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(RAW_ITERS)
        .with_max_len(256)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let max_age = src.u64() % 100_000;
            let s_maxage = src.bool().then(|| src.u64() % 100_000);
            let now = src.u64() % (1 << 42);
            let rule = Rule {
                ttl_secs: u64::from(src.byte()),
                honour_origin: src.bool(),
                stale_while_revalidate_secs: u64::from(src.byte()),
                stale_if_error_secs: u64::from(src.byte()),
            };
            let in_origin = src.bool();
            let raw = String::from_utf8_lossy(src.rest()).into_owned();
            for (name, _) in cache_control(&raw) {
                assert!(
                    !name.is_empty() && !name.contains([',', '=', '"', ' ']),
                    "{name:?}"
                );
            }
            let mut cc = format!("{raw}, max-age={max_age}");
            if let Some(s) = s_maxage {
                cc.push_str(&format!(", s-maxage={s}"));
            }
            let mut headers = BTreeMap::new();
            headers.insert("cache-control".to_string(), cc);
            if raw.len() % 3 == 0 {
                headers.insert("expires".to_string(), raw.clone());
            }
            let d = origin_directives(&headers);
            // The well-formed directives come last and are not inside quotes unless the
            // fuzzed text left a quote open.
            if raw.matches('"').count() % 2 == 0 && !raw.contains('\\') {
                if let Some(s) = s_maxage {
                    assert_eq!(d.max_age, Some(s), "{headers:?}");
                } else if !raw.to_ascii_lowercase().contains("s-maxage") {
                    assert_eq!(d.max_age, Some(max_age), "{headers:?}");
                }
            }
            let meta = crate::object::fresh::tests::test_meta(now / 2, in_origin, headers);
            let st = standing(rule, &meta, &d, now);
            if !in_origin {
                assert_eq!(st, Standing::Fresh);
            }
            if st == Standing::Fresh {
                assert_eq!(standing(rule, &meta, &d, now / 2), Standing::Fresh);
            }
        });
    report("cache_control", &n);
}

#[test]
fn fuzz_range_raw() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(RAW_ITERS)
        .with_max_len(256)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let size = src.edge_u64(100);
            let prefixed = src.bool();
            let raw = String::from_utf8_lossy(src.rest());
            let h = if prefixed {
                format!("bytes={raw}")
            } else {
                raw.into_owned()
            };
            let _ = check_range(Some(&h), size);
        });
    report("range_raw", &n);
}

#[test]
fn fuzz_range_model() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(STRUCT_ITERS)
        .with_max_len(64)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let size = src.edge_u64(100);
            let pos = |src: &mut Src<'_>| -> (String, Option<Option<u64>>) {
                // (text, Some(value) if it is a well-formed position or absent)
                match src.byte() % 8 {
                    0 => (String::new(), Some(None)),
                    1 => ("18446744073709551616".into(), None),
                    2 => ("+1".into(), None),
                    3 => {
                        let v = src.edge_u64(size);
                        (format!("00{v}"), Some(Some(v)))
                    }
                    _ => {
                        let v = src.edge_u64(size);
                        (v.to_string(), Some(Some(v)))
                    }
                }
            };
            let (a, first) = pos(&mut src);
            let (b, last) = pos(&mut src);
            let pad = src.pick(&["", " ", "  "]);
            let h = format!("{pad}bytes={a}-{b}{pad}");
            let got = check_range(Some(&h), size);
            if let (Some(first), Some(last)) = (first, last) {
                assert_eq!(got, range_model(first, last, size), "{h:?} on {size}");
            } else {
                assert_eq!(got, Ok(None), "malformed {h:?} is ignored");
            }
            // A second range makes it a multi-range: ignored, the whole object served.
            assert_eq!(check_range(Some(&format!("{h}, 0-1")), size), Ok(None));
        });
    report("range_model", &n);
}

// =============================================================================================
// Conditional requests

const COND_HEADERS: [&str; 4] = [
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
];

#[test]
fn fuzz_conditions_raw() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(RAW_ITERS)
        .with_max_len(256)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let mut h = HeaderMap::new();
            for _ in 0..src.below(6) {
                let name = src.pick(&COND_HEADERS);
                if let Ok(v) = HeaderValue::from_bytes(src.bytes(48)) {
                    h.append(name, v);
                }
            }
            let etag = String::from_utf8_lossy(src.bytes(16)).into_owned();
            let lm = src.edge_u64(1_700_000_000_000);
            let get = src.bool();
            let c = Conditions::from_headers(&h);
            let r = c.evaluate(&etag, lm, get);
            assert!(
                matches!(
                    r,
                    None | Some(StatusCode::NOT_MODIFIED | StatusCode::PRECONDITION_FAILED)
                ),
                "{r:?}"
            );
            assert!(get || r != Some(StatusCode::NOT_MODIFIED), "304 to a write");
        });
    report("conditions_raw", &n);
}

/// Latest time an HTTP date can carry (9999-12-31T23:59:59Z), in seconds.
const MAX_HTTP_DATE_SECS: u64 = 253_402_300_799;

#[test]
fn fuzz_conditions_model() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(STRUCT_ITERS)
        .with_max_len(128)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            const HEX: &[char] = &['0', '7', 'a', 'f', '-', '9'];
            let etag = src.string(6, HEX);
            let lm_ms = match src.byte() % 4 {
                0 => src.edge_u64(0),
                1 => MAX_HTTP_DATE_SECS * 1000 + u64::from(src.byte()) * 4,
                _ => u64::from(src.u16()) * 1_000_003,
            };
            let lm = lm_ms / 1000;
            let get = src.bool();

            // An ETag list: `*`, or tags that are this one (maybe weak) or another.
            let tag_list = |src: &mut Src<'_>| -> Option<(String, bool)> {
                match src.byte() % 4 {
                    0 => None,
                    1 => Some(("*".into(), true)),
                    _ => {
                        let mut hit = false;
                        let mut tags = Vec::new();
                        for _ in 0..=src.below(3) {
                            let same = src.bool();
                            let t = if same {
                                etag.clone()
                            } else {
                                let o = src.string(6, HEX);
                                if o == etag {
                                    format!("{o}x")
                                } else {
                                    o
                                }
                            };
                            hit |= same;
                            let weak = if src.bool() { "W/" } else { "" };
                            tags.push(format!("{weak}\"{t}\""));
                        }
                        let sep = src.pick(&[",", ", ", " , "]);
                        Some((tags.join(sep), hit))
                    }
                }
            };
            let if_match = tag_list(&mut src);
            let if_none_match = tag_list(&mut src);
            // A date around the object's, as an HTTP date, garbage, or absent.
            let date = |src: &mut Src<'_>| -> Option<(String, Option<u64>)> {
                match src.byte() % 4 {
                    0 => None,
                    1 => Some(("yesterday".into(), None)),
                    _ => {
                        let d = match src.byte() % 5 {
                            0 => lm.saturating_sub(1),
                            1 => lm + 1,
                            2 => lm.saturating_sub(u64::from(src.u16())),
                            _ => lm,
                        }
                        .min(MAX_HTTP_DATE_SECS);
                        Some((http_date(d * 1000), Some(d)))
                    }
                }
            };
            let ims = date(&mut src);
            let ius = date(&mut src);

            let mut h = HeaderMap::new();
            let mut set = |name: &'static str, v: &Option<String>| {
                if let Some(v) = v {
                    h.insert(name, HeaderValue::from_str(v).expect("ascii"));
                }
            };
            set("if-match", &if_match.as_ref().map(|t| t.0.clone()));
            set(
                "if-none-match",
                &if_none_match.as_ref().map(|t| t.0.clone()),
            );
            set("if-modified-since", &ims.as_ref().map(|t| t.0.clone()));
            set("if-unmodified-since", &ius.as_ref().map(|t| t.0.clone()));

            // RFC 9110 §13.2.2 (ETags compared weakly: nearcache makes no weak ones).
            let want = (|| {
                if let Some((_, hit)) = &if_match {
                    if !hit {
                        return Some(StatusCode::PRECONDITION_FAILED);
                    }
                } else if let Some((_, Some(d))) = ius {
                    if lm > d {
                        return Some(StatusCode::PRECONDITION_FAILED);
                    }
                }
                if let Some((_, hit)) = &if_none_match {
                    if *hit {
                        return Some(if get {
                            StatusCode::NOT_MODIFIED
                        } else {
                            StatusCode::PRECONDITION_FAILED
                        });
                    }
                } else if let Some((_, Some(d))) = ims {
                    if get && lm <= d {
                        return Some(StatusCode::NOT_MODIFIED);
                    }
                }
                None
            })();
            let got = Conditions::from_headers(&h).evaluate(&etag, lm_ms, get);
            assert_eq!(got, want, "{h:?} etag {etag:?} modified {lm_ms} get {get}");
            // The object's own Last-Modified, sent back, means "not modified".
            let lm_header = http_date(lm_ms);
            let back = httpdate::parse_http_date(&lm_header).expect("own date parses");
            assert_eq!(
                back.duration_since(UNIX_EPOCH).unwrap(),
                Duration::from_secs(lm.min(MAX_HTTP_DATE_SECS))
            );
        });
    report("conditions_model", &n);
}

// =============================================================================================
// Native API headers

fn header_map(name: &'static str, value: &[u8]) -> Option<HeaderMap> {
    let v = HeaderValue::from_bytes(value).ok()?;
    let mut h = HeaderMap::new();
    h.insert(name, v);
    Some(h)
}

const CROCKFORD: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

#[test]
fn fuzz_native_id() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(RAW_ITERS)
        .with_max_len(96)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let raw: String = match src.byte() % 3 {
                // Raw bytes.
                0 => String::from_utf8_lossy(src.rest()).into_owned(),
                // 26 chars, mostly from the alphabet, any case.
                // (Exhausted input reads as zeros: upper-case digits, so still a candidate.)
                1 => (0..26)
                    .map(|_| match src.byte() % 16 {
                        15 => src.pick(&['I', 'L', 'O', 'U', 'i', '-', ' ', 'é']),
                        14 => char::from(src.pick(CROCKFORD.as_bytes()).to_ascii_lowercase()),
                        _ => char::from(src.pick(CROCKFORD.as_bytes())),
                    })
                    .collect(),
                // A real ULID, maybe lower case.
                _ => {
                    let v = u128::from(src.u64()) << 64 | u128::from(src.u64());
                    let s = ulid::Ulid(v).to_string();
                    if src.bool() {
                        s.to_ascii_lowercase()
                    } else {
                        s
                    }
                }
            };
            if let Ok(id) = parse_id(&raw, "id") {
                // Accepted: the canonical form of the same string, and a fixed point.
                assert_eq!(
                    id,
                    raw.to_ascii_uppercase(),
                    "{raw:?} accepted as another id"
                );
                assert_eq!(parse_id(&id, "id").ok().as_deref(), Some(id.as_str()));
            } else {
                let upper = raw.to_ascii_uppercase();
                let valid = upper.len() == 26
                    && upper.bytes().all(|b| CROCKFORD.as_bytes().contains(&b))
                    && upper.as_bytes()[0] <= b'7';
                assert!(!valid, "valid id {raw:?} refused");
            }
        });
    report("native_id", &n);
}

#[test]
fn fuzz_native_level_and_bool() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(RAW_ITERS)
        .with_max_len(32)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let default = src.byte() % 3;
            let value: Vec<u8> = if src.bool() {
                let pad = src.pick(&["", " ", "\t"]).as_bytes();
                let word = src.pick(&[
                    "0", "1", "2", "3", "true", "TRUE", "Yes", "no", "False", "", "01", "1 1",
                ]);
                [pad, word.as_bytes(), pad].concat()
            } else {
                src.rest().to_vec()
            };
            let Some(h) = header_map("x-meta-consistencylevel", &value) else {
                return;
            };
            let text = h
                .get("x-meta-consistencylevel")
                .unwrap()
                .to_str()
                .map(|s| s.trim().to_owned())
                .ok();
            match level_header(&h, default) {
                Ok(l) => {
                    assert!(l <= 2);
                    assert_eq!(text.as_deref(), Some(l.to_string().as_str()));
                }
                Err(_) => assert!(!matches!(text.as_deref(), Some("0" | "1" | "2"))),
            }
            assert_eq!(level_header(&HeaderMap::new(), default).ok(), Some(default));

            let h = header_map("x-meta-sync", &value).expect("same value");
            let lower = text.map(|t| t.to_ascii_lowercase());
            match bool_header(&h, &HeaderName::from_static("x-meta-sync")) {
                Ok(Some(b)) => {
                    let want: &[&str] = if b {
                        &["1", "true", "yes"]
                    } else {
                        &["0", "false", "no"]
                    };
                    assert!(
                        want.contains(&lower.as_deref().unwrap()),
                        "{value:?} -> {b}"
                    );
                }
                Ok(None) => panic!("a present header read as absent"),
                Err(_) => assert!(!matches!(
                    lower.as_deref(),
                    Some("1" | "true" | "yes" | "0" | "false" | "no")
                )),
            }
            assert_eq!(
                bool_header(&HeaderMap::new(), &HeaderName::from_static("x-meta-sync")).ok(),
                Some(None)
            );
        });
    report("native_level_and_bool", &n);
}

/// The documented charset: keys non-empty ASCII letters, digits, `-`, `_`; values printable
/// ASCII.
fn user_meta_valid(map: &BTreeMap<String, String>) -> bool {
    map.iter().all(|(k, v)| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && v.bytes().all(|b| (0x20..0x7f).contains(&b))
    })
}

fn user_meta_header_of(json: &str) -> Option<HeaderMap> {
    header_map("x-meta-usermeta", json.as_bytes())
}

/// A parsed user metadata map, serialized as the GET head renders it and parsed again, is
/// the same map.
fn assert_user_meta_round_trips(map: &BTreeMap<String, String>) {
    assert!(
        user_meta_valid(map),
        "accepted outside the charset: {map:?}"
    );
    assert!(map.keys().all(|k| *k == k.to_ascii_lowercase()), "{map:?}");
    let json = serde_json::to_string(map).unwrap();
    let h = user_meta_header_of(&json).expect("rendered user metadata is a header value");
    let again = user_meta_header(&h).expect("rendered user metadata parses");
    assert_eq!(&again, map);
}

/// JSON with every non-ASCII char escaped as `\uXXXX`, as a client may send it.
fn json_ascii(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for u in c.encode_utf16(&mut buf) {
                let _ = write!(out, "\\u{u:04x}");
            }
        }
    }
    out
}

#[test]
fn fuzz_native_user_meta_raw() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(RAW_ITERS)
        .with_max_len(256)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let Some(h) = header_map("x-meta-usermeta", input) else {
                return;
            };
            if let Ok(map) = user_meta_header(&h) {
                assert_user_meta_round_trips(&map);
            }
        });
    report("native_user_meta_raw", &n);
}

#[test]
fn fuzz_native_user_meta_model() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(STRUCT_ITERS)
        .with_max_len(256)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            const KEY: &[char] = &['a', 'B', 'z', '0', '-', '_', 'A', 'b'];
            const BAD_KEY: &[char] = &[' ', '.', ':', 'é', '\u{0}', '"', '/'];
            const VAL: &[char] = &['a', ' ', '~', '"', '\\', '=', ';', 'Z', '0'];
            const BAD_VAL: &[char] = &['\t', '\n', '\u{7f}', 'é', '\u{0}', '日', '😀'];
            let mut input_map = BTreeMap::new();
            for _ in 0..src.below(4) {
                let mut k = src.string(5, KEY);
                if src.byte() < 24 {
                    k.insert(src.below(k.len() + 1), src.pick(BAD_KEY));
                }
                let mut v = src.string(8, VAL);
                if src.byte() < 24 {
                    v.insert(src.below(v.len() + 1), src.pick(BAD_VAL));
                }
                input_map.insert(k, v);
            }
            let mut json = serde_json::to_string(&input_map).unwrap();
            if src.bool() {
                json = json_ascii(&json);
            }
            let non_string = src.byte() < 16 && !input_map.is_empty();
            if non_string {
                // The last value becomes a number.
                let at = json.rfind(":\"").unwrap();
                json = format!("{}:1}}", &json[..at]);
            }
            let Some(h) = user_meta_header_of(&json) else {
                // DEL (0x7f), which JSON leaves unescaped, is no header value.
                return;
            };
            let lowered: BTreeMap<String, String> = input_map
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect();
            // Keys are case-insensitive (they become x-amz-meta-* headers): two that differ
            // only in case are one key given twice.
            let distinct = lowered.len() == input_map.len();
            let want_ok = user_meta_valid(&input_map) && distinct && !non_string;
            match user_meta_header(&h) {
                Ok(map) => {
                    assert!(want_ok, "accepted {json:?} as {map:?}");
                    assert_eq!(map, lowered, "{json:?}");
                    assert_user_meta_round_trips(&map);
                }
                Err(_) => assert!(!want_ok, "refused {json:?}"),
            }
        });
    report("native_user_meta_model", &n);
}

// =============================================================================================
// ListObjects

fn s3_state() -> Arc<S3State> {
    Arc::new(S3State::from_config(&S3ApiConfig::default()))
}

/// A bucket request with this query string, as the S3 handler builds it.
fn s3_req(state: &Arc<S3State>, query: &str) -> S3Req {
    S3Req {
        uri: http::Uri::from_static("/bkt"),
        forwarded: false,
        method: Method::GET,
        bucket: Some("bkt".into()),
        key: None,
        query: parse_query(query),
        headers: HeaderMap::new(),
        body_check: BodyCheck::None,
        trailer: None,
        state: state.clone(),
        anonymous: false,
    }
}

const LIST_PARAMS: [&str; 10] = [
    "max-keys",
    "encoding-type",
    "continuation-token",
    "start-after",
    "marker",
    "prefix",
    "delimiter",
    "fetch-owner",
    "list-type",
    "max-keys ",
];

#[test]
fn fuzz_list_query_raw() {
    let state = s3_state();
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(RAW_ITERS)
        .with_max_len(256)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let v2 = src.bool();
            let query = if src.bool() {
                String::from_utf8_lossy(src.rest()).into_owned()
            } else {
                let mut q = String::new();
                for _ in 0..src.below(5) {
                    let name = src.pick(&LIST_PARAMS);
                    let value = match src.byte() % 4 {
                        0 => src.edge_u64(1000).to_string(),
                        1 => {
                            use base64::Engine as _;
                            let raw = String::from_utf8_lossy(src.bytes(12)).into_owned();
                            base64::engine::general_purpose::STANDARD.encode(format!("nc1:{raw}"))
                        }
                        _ => String::from_utf8_lossy(src.bytes(16)).into_owned(),
                    };
                    let _ = write!(q, "&{name}={value}");
                }
                q
            };
            let req = s3_req(&state, &query);
            if let Ok(q) = ListQuery::parse(&req, v2) {
                assert!(q.max_keys <= 1000);
                assert_eq!(q.v2, v2);
                // An empty pending map and no origin page is an empty, final page.
                let m = merge(&q, None, &BTreeMap::new());
                assert!(m.taken.is_empty() && !m.truncated && m.next.is_none());
            }
        });
    report("list_query_raw", &n);
}

fn entry(key: &str) -> ListEntry {
    ListEntry {
        key: key.into(),
        size: 1,
        etag: "e".into(),
        last_modified_ms: 0,
        storage_class: None,
    }
}

const KEY_CHARS: &[char] = &['a', 'b', '/', 'c'];

/// Whether a key is grouped into a common prefix (the delimiter follows the prefix).
fn grouped(q: &ListQuery, key: &str) -> bool {
    let rest = key.get(q.prefix.len()..).unwrap_or_default();
    q.delimiter.as_deref().is_some_and(|d| rest.contains(d))
}

/// The key a pending write shows as: itself, or its common prefix under `delimiter`.
fn shown_as(q: &ListQuery, key: &str) -> String {
    let rest = key.get(q.prefix.len()..).unwrap_or_default();
    match q
        .delimiter
        .as_deref()
        .and_then(|d| rest.find(d).map(|i| (i, d)))
    {
        Some((i, d)) => key[..q.prefix.len() + i + d.len()].to_owned(),
        None => key.to_owned(),
    }
}

fn after_start(q: &ListQuery, k: &str) -> bool {
    q.start.as_deref().is_none_or(|s| k > s)
}

/// Checks one merged page against its inputs.
fn check_merged(
    q: &ListQuery,
    page: Option<&ListPage>,
    pending: &BTreeMap<String, Option<ListEntry>>,
    m: &Merged,
) {
    let keys: Vec<&str> = m.taken.iter().map(|(k, _)| k.as_str()).collect();
    let ctx = || format!("{q:?}\npage {page:?}\npending {pending:?}\n-> {m:?}");
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "not sorted: {}",
        ctx()
    );
    assert!(keys.len() <= q.max_keys, "more than max-keys: {}", ctx());
    assert!(
        keys.iter().all(|k| after_start(q, k)),
        "at or before the start: {}",
        ctx()
    );
    for (k, item) in &m.taken {
        if matches!(item, Item::Object(_)) {
            assert!(
                !matches!(pending.get(k), Some(None)),
                "deleted key {k:?} listed: {}",
                ctx()
            );
        }
    }
    assert_eq!(
        m.next.is_some(),
        m.truncated,
        "next iff truncated: {}",
        ctx()
    );
    if let (Some(next), Some(last)) = (&m.next, keys.last()) {
        assert_eq!(next, last, "next is the last key shown: {}", ctx());
    }
    // Every pending write up to the origin's last key (all of them if the origin has no
    // more) is on this page, unless the page is full before it.
    let origin_last = page.filter(|p| p.is_truncated).and_then(|p| {
        p.entries
            .iter()
            .map(|e| &e.key)
            .chain(&p.common_prefixes)
            .max()
    });
    // Nothing past the origin's last key when it has more: those keys belong to a later
    // page, and the next page starts after the last key shown.
    if let Some(b) = origin_last {
        assert!(
            keys.iter().all(|k| *k <= b.as_str()),
            "past the origin's page: {}",
            ctx()
        );
    }
    if q.max_keys > 0 {
        for (k, e) in pending {
            if e.is_none() || origin_last.is_some_and(|b| k > b) {
                continue;
            }
            let shown = shown_as(q, k);
            if !after_start(q, &shown) {
                continue;
            }
            // Only a full page may leave one out (for the next page).
            let beyond =
                keys.len() == q.max_keys && keys.last().is_some_and(|l| shown.as_str() > *l);
            assert!(
                beyond || keys.contains(&shown.as_str()),
                "pending write {k:?} (as {shown:?}) missing: {}",
                ctx()
            );
        }
    }
}

#[test]
fn fuzz_list_merge() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(STRUCT_ITERS)
        .with_max_len(256)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let prefix = src.string(1, KEY_CHARS);
            let delimiter = match src.byte() % 4 {
                0 => Some("/".to_owned()),
                1 => Some(src.string(2, KEY_CHARS)).filter(|d| !d.is_empty()),
                _ => None,
            };
            let max_keys = match src.byte() % 8 {
                0 => 1000,
                _ => src.below(6),
            };
            let start = src
                .bool()
                .then(|| src.string(3, KEY_CHARS))
                .filter(|s| !s.is_empty());
            let q = ListQuery {
                v2: true,
                prefix: prefix.clone(),
                delimiter,
                max_keys,
                url: false,
                token: None,
                start_after: start.clone(),
                marker: None,
                start,
                fetch_owner: false,
            };
            // Any page (sorted keys after the start, as an origin lists them), or none when
            // max-keys is 0 (the handler does not ask the origin then).
            let page = (max_keys > 0).then(|| {
                let mut keys: Vec<String> = (0..src.below(6))
                    .map(|_| format!("{prefix}{}", src.string(3, KEY_CHARS)))
                    .filter(|k| after_start(&q, k))
                    .collect();
                keys.sort();
                keys.dedup();
                let mut prefixes: Vec<String> = Vec::new();
                let mut entries = Vec::new();
                for k in keys {
                    if let Some(d) = &q.delimiter {
                        if src.bool() {
                            let p = format!("{k}{d}");
                            if !prefixes.contains(&p) {
                                prefixes.push(p);
                            }
                            continue;
                        }
                    }
                    entries.push(entry(&k));
                }
                ListPage {
                    entries,
                    common_prefixes: prefixes,
                    is_truncated: src.bool(),
                }
            });
            let mut pending = BTreeMap::new();
            for _ in 0..src.below(6) {
                let k = format!("{prefix}{}", src.string(4, KEY_CHARS));
                let e = src.bool().then(|| entry(&k));
                pending.insert(k, e);
            }
            // Deletes of keys on the origin's page.
            if let Some(p) = &page {
                for e in &p.entries {
                    if src.byte() < 64 {
                        pending.insert(e.key.clone(), None);
                    }
                }
            }
            let m = merge(&q, page.clone(), &pending);
            check_merged(&q, page.as_ref(), &pending, &m);
        });
    report("list_merge", &n);
}

/// An origin listing as S3 answers it: keys under `prefix` after `start`, grouped under
/// `delimiter`, at most `max` entries. `prefix_at_start`: whether a common prefix that
/// sorts at or before `start` is returned again when keys after `start` fall under it (the
/// merge must cope either way).
fn origin_list(
    keys: &std::collections::BTreeSet<String>,
    q: &ListQuery,
    max: usize,
    prefix_at_start: bool,
) -> ListPage {
    let mut page = ListPage::default();
    let mut last: Option<String> = None;
    let mut count = 0;
    for k in keys
        .iter()
        .filter(|k| k.starts_with(&q.prefix) && after_start(q, k))
    {
        let shown = shown_as(q, k);
        if last.as_ref() == Some(&shown) || (!prefix_at_start && !after_start(q, &shown)) {
            continue;
        }
        if count == max {
            page.is_truncated = true;
            break;
        }
        count += 1;
        if grouped(q, k) {
            page.common_prefixes.push(shown.clone());
        } else {
            page.entries.push(entry(k));
        }
        last = Some(shown);
    }
    page
}

#[test]
fn fuzz_list_paging() {
    // Pages through a whole listing as a client does (each page asks the origin with the
    // previous page's token as start-after, for `origin_max_keys` as `list_objects` does):
    // every key shows exactly once, in order, and none is lost.
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(STRUCT_ITERS / 2)
        .with_max_len(256)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let prefix = src.string(1, KEY_CHARS);
            let delimiter = match src.byte() % 3 {
                0 => Some("/".to_owned()),
                _ => None,
            };
            let max_keys = 1 + src.below(4);
            let prefix_at_start = src.bool();
            let origin: std::collections::BTreeSet<String> = (0..src.below(12))
                .map(|_| format!("{prefix}{}", src.string(4, KEY_CHARS)))
                .collect();
            let mut pending = BTreeMap::new();
            for _ in 0..src.below(8) {
                let k = if src.bool() && !origin.is_empty() {
                    origin.iter().nth(src.below(origin.len())).unwrap().clone()
                } else {
                    format!("{prefix}{}", src.string(4, KEY_CHARS))
                };
                let e = src.bool().then(|| entry(&k));
                pending.insert(k, e);
            }
            let q0 = ListQuery {
                v2: true,
                prefix: prefix.clone(),
                delimiter,
                max_keys,
                url: false,
                token: None,
                start_after: None,
                marker: None,
                start: None,
                fetch_owner: false,
            };
            // What the whole listing must show.
            let mut all: std::collections::BTreeSet<String> = origin.clone();
            for (k, e) in &pending {
                if e.is_some() {
                    all.insert(k.clone());
                } else {
                    all.remove(k);
                }
            }
            // A common prefix the origin lists stays even if every key under it is pending
            // deletion: the origin's page does not say which keys it stands for.
            let origin_prefixes = origin
                .iter()
                .filter(|k| grouped(&q0, k))
                .map(|k| shown_as(&q0, k));
            let want: std::collections::BTreeSet<String> = all
                .iter()
                .map(|k| shown_as(&q0, k))
                .chain(origin_prefixes)
                .collect();

            let mut got: Vec<String> = Vec::new();
            let mut start: Option<String> = None;
            for page_no in 0.. {
                assert!(page_no < 64, "no end to the listing");
                let q = ListQuery {
                    v2: true,
                    prefix: prefix.clone(),
                    delimiter: q0.delimiter.clone(),
                    max_keys,
                    url: false,
                    token: None,
                    start_after: start.clone(),
                    marker: None,
                    start: start.clone(),
                    fetch_owner: false,
                };
                let max = origin_max_keys(&q, &pending) as usize;
                let page = origin_list(&origin, &q, max, prefix_at_start);
                let m = merge(&q, Some(page.clone()), &pending);
                check_merged(&q, Some(&page), &pending, &m);
                got.extend(m.taken.iter().map(|(k, _)| k.clone()));
                if !m.truncated {
                    break;
                }
                start = m.next.clone();
            }
            let got_set: std::collections::BTreeSet<String> = got.iter().cloned().collect();
            assert_eq!(got_set.len(), got.len(), "a key listed twice: {got:?}");
            assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
            assert_eq!(
                got_set, want,
                "origin {origin:?}, pending {pending:?}, max-keys {max_keys}, \
                 prefix-at-start {prefix_at_start}, {q0:?}"
            );
        });
    report("list_paging", &n);
}

// =============================================================================================
// S3 addressing

fn parts(host: Option<&[u8]>, path_and_query: &str) -> Option<http::request::Parts> {
    let mut b = http::Request::builder()
        .method(Method::GET)
        .uri(path_and_query);
    if let Some(h) = host {
        b = b.header(http::header::HOST, HeaderValue::from_bytes(h).ok()?);
    }
    Some(b.body(()).ok()?.into_parts().0)
}

/// Checks what `address` says about a request; returns it as comparable strings.
fn check_address(
    p: &http::request::Parts,
    domain: Option<&str>,
) -> Result<(Option<String>, Option<String>), String> {
    match address(p, domain) {
        Ok((bucket, key)) => {
            if let Some(b) = &bucket {
                assert!((3..=63).contains(&b.len()), "bucket {b:?}");
                assert!(
                    b.bytes().all(|c| c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || b"-._".contains(&c)),
                    "bucket {b:?}"
                );
            }
            if let Some(k) = &key {
                assert!(!k.is_empty() && k.len() <= 1024, "key {k:?}");
                assert!(bucket.is_some(), "a key without a bucket");
            }
            Ok((bucket, key))
        }
        Err(e) => Err(e.code),
    }
}

#[test]
fn fuzz_s3_address_raw() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(RAW_ITERS)
        .with_max_len(256)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let domain = src.pick(&[None, Some("s3.example.com"), Some("localhost")]);
            let host = src.bytes(40);
            let host = src.bool().then_some(host);
            let encode = src.bool();
            let path = String::from_utf8_lossy(src.rest()).into_owned();
            let path = if encode {
                // Whatever a URI path can't carry percent-encoded; '%' itself left as sent.
                const SET: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
                    .add(b' ')
                    .add(b'"')
                    .add(b'#')
                    .add(b'<')
                    .add(b'>')
                    .add(b'?')
                    .add(b'`')
                    .add(b'{')
                    .add(b'}')
                    .add(b'|')
                    .add(b'\\')
                    .add(b'^');
                format!("/{}", percent_encoding::utf8_percent_encode(&path, SET))
            } else {
                format!("/{path}")
            };
            let Some(p) = parts(host, &path) else {
                return;
            };
            let _ = check_address(&p, domain);
        });
    report("s3_address_raw", &n);
}

/// Every byte but unreserved ones and `/` percent-encoded, as the SDKs send keys.
fn encode_key(key: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b'/');
    percent_encoding::utf8_percent_encode(key, SET).to_string()
}

#[test]
fn fuzz_s3_address_model() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(STRUCT_ITERS)
        .with_max_len(128)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            const B: &[char] = &['a', 'z', '0', '-', '.', '_', 'B', '/', ' ', '%'];
            const K: &[char] = &['a', '/', ' ', '%', '+', '?', '#', 'é', '日', '~', '.'];
            let domain = "s3.example.com";
            let bucket: String = if src.byte() < 200 {
                let c = src.string(6, &['a', 'z', '0', '-', '.']);
                format!("bkt{c}")
            } else {
                src.string(8, B)
            };
            let vhost = src.bool();
            // The Host is case-insensitive: a virtual-host bucket is read in lower case.
            let bucket = if vhost {
                bucket.to_ascii_lowercase()
            } else {
                bucket
            };
            let valid = (3..=63).contains(&bucket.len())
                && bucket
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-._".contains(&c));
            let key = if src.byte() < 8 {
                "k".repeat(1020 + src.below(8))
            } else {
                src.string(6, K)
            };
            let port = src.pick(&["", ":9000", ":80"]);
            // A fully qualified name may end in a dot.
            let fqdn = src.pick(&["", "", "", "."]);
            let (host, path) = if vhost {
                (
                    format!("{bucket}.{}{fqdn}{port}", domain.to_ascii_uppercase()),
                    format!("/{}", encode_key(&key)),
                )
            } else {
                (
                    src.pick(&["s3.example.com", "127.0.0.1", "[::1]", "localhost"])
                        .to_owned()
                        + fqdn
                        + port,
                    format!("/{}/{}", encode_key(&bucket), encode_key(&key)),
                )
            };
            let path = if src.byte() < 16 {
                format!("{path}?x-id=GetObject")
            } else {
                path
            };
            let Some(p) = parts(Some(host.as_bytes()), &path) else {
                // Only a host that `http` refuses (never here: all are valid).
                panic!("{host:?} {path:?} not a request");
            };
            let got = check_address(&p, Some(domain));
            let key_want = (!key.is_empty()).then(|| key.clone());
            let want = if bucket.contains('/') {
                // A '/' in the bucket: another address (Host or path); not modelled.
                return;
            } else if !valid {
                Err("InvalidBucketName".to_owned())
            } else if key.len() > 1024 {
                Err("KeyTooLongError".to_owned())
            } else {
                Ok((Some(bucket.clone()), key_want))
            };
            if vhost && bucket.is_empty() {
                return;
            }
            // Path style with an empty bucket is the service (ListBuckets).
            if !vhost && bucket.is_empty() {
                return;
            }
            assert_eq!(got, want, "{host:?} {path:?}");
        });
    report("s3_address_model", &n);
}

// =============================================================================================
// Regressions: inputs that once failed

/// `http_date` of a time past year 9999 panicked inside `httpdate` (found by
/// `fuzz_conditions_model`); the Last-Modified of such an object took the shard down.
#[test]
fn regression_http_date_after_year_9999_is_clamped_not_a_panic() {
    assert_eq!(http_date(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    assert_eq!(
        http_date(MAX_HTTP_DATE_SECS * 1000 + 1000),
        "Fri, 31 Dec 9999 23:59:59 GMT"
    );
    assert_eq!(http_date(1_000), "Thu, 01 Jan 1970 00:00:01 GMT");
}

/// X-Meta-UserMeta keys that differ only in case were both accepted and one value silently
/// dropped (found by `fuzz_native_user_meta_model`).
#[test]
fn regression_user_meta_keys_differing_in_case_are_refused() {
    let h = user_meta_header_of(r#"{"A":" ~ 0\"=\\","a":";\\"}"#).unwrap();
    assert!(user_meta_header(&h).is_err());
    let h = user_meta_header_of(r#"{"Content-Type":"x","Other":"y"}"#).unwrap();
    let map = user_meta_header(&h).unwrap();
    assert_eq!(
        map,
        BTreeMap::from([
            ("content-type".to_owned(), "x".to_owned()),
            ("other".to_owned(), "y".to_owned())
        ])
    );
}

/// A 26-digit id whose first digit is above 7 (more than 128 bits) was read modulo 2^128:
/// "8..." named the object "0..." (found reading `ulid`'s decoder; `fuzz_native_id`'s
/// round-trip check catches it since its generator makes enough well-formed ids).
#[test]
fn regression_ids_above_128_bits_are_refused_not_aliased() {
    assert!(parse_id("80000000000000000000000000", "id").is_err());
    assert!(parse_id("ZZZZZZZZZZZZZZZZZZZZZZZZZZ", "id").is_err());
    assert!(parse_id("z0000000000000000000000000", "id").is_err());
    assert_eq!(
        parse_id("7zzzzzzzzzzzzzzzzzzzzzzzzz", "id").ok().as_deref(),
        Some("7ZZZZZZZZZZZZZZZZZZZZZZZZZ")
    );
}

fn query(max_keys: usize, start: Option<&str>) -> ListQuery {
    ListQuery {
        v2: true,
        prefix: String::new(),
        delimiter: None,
        max_keys,
        url: false,
        token: None,
        start_after: None,
        marker: None,
        start: start.map(Into::into),
        fetch_owner: false,
    }
}

/// A truncated origin page with nothing left to show answered IsTruncated without a token
/// (found by `fuzz_list_merge`: "next iff truncated").
#[test]
fn regression_list_truncated_page_with_nothing_shown_still_has_a_next_token() {
    let page = |keys: &[&str]| ListPage {
        entries: keys.iter().map(|k| entry(k)).collect(),
        common_prefixes: vec![],
        is_truncated: true,
    };
    // Every key of the page deleted: the next page starts after the origin's last key.
    let pending = BTreeMap::from([("a".to_owned(), None), ("b".to_owned(), None)]);
    let q = query(2, None);
    let m = merge(&q, Some(page(&["a", "b"])), &pending);
    check_merged(&q, Some(&page(&["a", "b"])), &pending, &m);
    assert!(m.taken.is_empty() && m.truncated);
    assert_eq!(m.next.as_deref(), Some("b"));
    // An empty truncated page (nothing to continue after) ends the listing.
    let m = merge(&q, Some(page(&[])), &BTreeMap::new());
    assert!(m.taken.is_empty() && !m.truncated && m.next.is_none());
}

/// The origin's last key, when pending-deleted, no longer bounded the pending writes shown:
/// with the whole page deleted a pending write far past it was shown, and the next page
/// started after it, so every origin key in between was never listed.
#[test]
fn regression_list_pending_writes_stop_at_the_origin_last_key_even_if_deleted() {
    let page = ListPage {
        entries: vec![entry("a"), entry("b")],
        common_prefixes: vec![],
        is_truncated: true,
    };
    let pending = BTreeMap::from([
        ("a".to_owned(), None),
        ("b".to_owned(), None),
        ("ab".to_owned(), Some(entry("ab"))),
        ("z".to_owned(), Some(entry("z"))),
    ]);
    let q = query(1000, None);
    let m = merge(&q, Some(page.clone()), &pending);
    check_merged(&q, Some(&page), &pending, &m);
    let keys: Vec<&str> = m.taken.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["ab"]);
    assert!(m.truncated);
    assert_eq!(m.next.as_deref(), Some("ab"));
}

/// A virtual-host request whose Host ends in a dot (a fully qualified name) fell back to
/// path style: `GET /other-bucket/x` to `bkt.s3.example.com.` addressed `other-bucket`
/// (found by `fuzz_s3_address_model`).
#[test]
fn regression_s3_host_with_a_trailing_dot_is_the_same_virtual_host() {
    let addr = |host: &str, path: &str| {
        let p = parts(Some(host.as_bytes()), path).unwrap();
        address(&p, Some("s3.example.com")).map_err(|e| e.code)
    };
    let want = Ok((Some("bkt".to_owned()), Some("other-bucket/x".to_owned())));
    assert_eq!(addr("bkt.s3.example.com.", "/other-bucket/x"), want);
    assert_eq!(addr("bkt.s3.example.com.:9000", "/other-bucket/x"), want);
    assert_eq!(addr("bkt.s3.example.com", "/other-bucket/x"), want);
    // The domain itself, with or without the dot: path style.
    let path_style = Ok((Some("other-bucket".to_owned()), Some("x".to_owned())));
    assert_eq!(addr("s3.example.com.", "/other-bucket/x"), path_style);
    assert_eq!(addr("s3.example.com", "/other-bucket/x"), path_style);
}

/// With a delimiter and max-keys 1, a page that ended on a common prefix ("a/") led to a
/// request the origin answers with that prefix again (keys after the start fall under it),
/// which the merge drops: the page was empty and the listing stopped there, losing every
/// later key (found by `fuzz_list_paging`). The origin is now asked for one more.
#[test]
fn regression_list_after_a_common_prefix_moves_on_with_max_keys_1() {
    let origin: std::collections::BTreeSet<String> =
        ["a/1", "a/2", "b"].iter().map(|s| s.to_string()).collect();
    let mut q = query(1, Some("a/"));
    q.delimiter = Some("/".into());
    let pending = BTreeMap::new();
    assert_eq!(origin_max_keys(&q, &pending), 2);
    let page = origin_list(&origin, &q, 2, true);
    assert_eq!(page.common_prefixes, ["a/"]);
    let m = merge(&q, Some(page.clone()), &pending);
    check_merged(&q, Some(&page), &pending, &m);
    let keys: Vec<&str> = m.taken.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["b"]);
    // Without a delimiter a start is never listed again: no extra key asked for.
    q.delimiter = None;
    assert_eq!(origin_max_keys(&q, &pending), 1);
}

//! Fuzz targets, run by `cargo test` on stable Rust through bolero's `check!()` harness.
//!
//! Each target is an ordinary `#[test]` that draws a bounded number of random inputs
//! (`with_iterations`); `BOLERO_RANDOM_ITERATIONS=N` (or `BOLERO_RANDOM_TEST_TIME_MS=MS`)
//! overrides the bound for a long run, see the crate doc. Each prints how many cases it ran
//! (`-- --nocapture` shows it).
//!
//! - raw-byte targets feed arbitrary bytes to a parser or verifier: no panic, and nothing a
//!   random input can produce is ever accepted as signed;
//! - structure-aware targets build a VALID signed request (with `aws-sigv4`, independent of
//!   this crate) or a valid aws-chunked body (signed with the crate's chunk signer), check it
//!   verifies and decodes to the original payload, then change one signed byte and check it
//!   is refused, never accepted (and never panics).
//!
//! Inputs that once failed are kept at the end as plain regression tests.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
    SignatureLocation, SigningSettings, UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bolero::check;
use bytes::Bytes;

use crate::auth::{
    parse_amz_date, parse_auth_header, parse_credential, parse_query, parse_signed_headers,
    signing_key, verify_head, AuthError, BodyCheck, BodyDecoder, ChecksumAlgorithm, ChunkSigner,
    Credential, KeyStore, STREAMING_PAYLOAD, STREAMING_PAYLOAD_TRAILER, STREAMING_UNSIGNED_TRAILER,
    UNSIGNED_PAYLOAD,
};
use crate::xml::{self, Elem, XmlError};

/// Default cases per raw-byte target in `cargo test`.
const RAW_ITERS: usize = 3000;
/// Default cases per structure-aware target (each signs and verifies several times).
const STRUCT_ITERS: usize = 400;

const AK: &str = "AKIDFUZZEXAMPLE";
const SK: &str = "fuzz/secret+key/EXAMPLE";
/// 2024-05-01T12:00:00Z: the signing time of the structure-aware targets.
const T0: &str = "20240501T120000Z";

fn keys() -> KeyStore {
    KeyStore::new(vec![
        Credential {
            access_key: AK.into(),
            secret_key: SK.into(),
            buckets: vec![],
            read_only: false,
        },
        Credential {
            access_key: "RO".into(),
            secret_key: "ro".into(),
            buckets: vec![],
            read_only: true,
        },
    ])
}

fn t0() -> SystemTime {
    parse_amz_date(T0).expect("valid date")
}

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
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
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
}

/// Cut points (sorted, within `len`) for splitting a body into feeds.
fn cuts(src: &mut Src<'_>, len: usize) -> Vec<usize> {
    let n = src.below(6);
    let mut c: Vec<usize> = (0..n).map(|_| src.below(len + 1)).collect();
    if src.byte() < 16 {
        // Sometimes one byte at a time.
        c = (0..=len).collect();
    }
    c.sort_unstable();
    c
}

/// Decoded bytes and the verified trailing checksum.
type Decoded = (Vec<u8>, Option<(ChecksumAlgorithm, String)>);

/// Feeds `body` split at `cuts`, checking `decoded_len` as it goes; returns the decoded bytes
/// and the verified trailing checksum.
fn decode(
    check: BodyCheck,
    limit: Option<u64>,
    body: &[u8],
    cuts: &[usize],
) -> Result<Decoded, AuthError> {
    decode_declared(check, None, limit, body, cuts)
}

/// [`decode`] with the trailer `x-amz-trailer` declared.
fn decode_declared(
    check: BodyCheck,
    declared: Option<ChecksumAlgorithm>,
    limit: Option<u64>,
    body: &[u8],
    cuts: &[usize],
) -> Result<Decoded, AuthError> {
    let body = Bytes::copy_from_slice(body);
    let mut d = BodyDecoder::with_trailer(check, limit, declared);
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&body.len())) {
        let c = c.clamp(at, body.len());
        for b in d.feed(body.slice(at..c))? {
            out.extend_from_slice(&b);
        }
        assert_eq!(
            d.decoded_len(),
            out.len() as u64,
            "decoded_len is what feed returned"
        );
        at = c;
    }
    let sum = d.finish_checksum()?;
    if let Some(l) = limit {
        assert_eq!(out.len() as u64, l, "accepted body has the declared length");
    }
    Ok((out, sum))
}

// =============================================================================================
// (a) Authorization header

const ALNUM: &[char] = &[
    'a', 'b', 'z', 'A', 'Z', '0', '9', '-', '_', '.', '~', '/', ' ', ',', ';', '=', ':', '%', '+',
    '*', '!', '\'', '(', 'é', '日', '😀', '\u{FFFD}', '\t',
];

/// A header value from fuzz bytes, or `None` if `http` would not take it.
fn header_value(b: &[u8]) -> Option<http::HeaderValue> {
    http::HeaderValue::from_bytes(b).ok()
}

#[test]
fn fuzz_auth_header_raw() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(RAW_ITERS)
        .with_max_len(1024)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let mode = src.byte() % 4;
            let value: Vec<u8> = match mode {
                // Raw bytes.
                0 => src.rest().to_vec(),
                // The algorithm, then raw bytes.
                1 => [b"AWS4-HMAC-SHA256 ".as_slice(), src.rest()].concat(),
                // The three components with fuzzed values around a real key and date.
                _ => {
                    let ak = if src.bool() { AK.to_owned() } else { src.string(12, ALNUM) };
                    let date = if src.bool() { "20240501".to_owned() } else { src.string(9, ALNUM) };
                    let region = src.string(12, ALNUM);
                    let svc = if src.bool() { "s3".to_owned() } else { src.string(4, ALNUM) };
                    let term = if src.bool() { "aws4_request".to_owned() } else { src.string(14, ALNUM) };
                    let signed = if src.bool() {
                        "host;x-amz-content-sha256;x-amz-date".to_owned()
                    } else {
                        src.string(40, ALNUM)
                    };
                    let sig: String = if src.bool() {
                        hex::encode(src.bytes(32))
                    } else {
                        src.string(70, ALNUM)
                    };
                    let sep = src.pick(&[", ", ",", " , ", ",,", ""]);
                    format!(
                        "AWS4-HMAC-SHA256 Credential={ak}/{date}/{region}/{svc}/{term}{sep}SignedHeaders={signed}{sep}Signature={sig}"
                    )
                    .into_bytes()
                }
            };
            // The parsers alone.
            if let Ok(s) = std::str::from_utf8(&value) {
                if let Ok(h) = parse_auth_header(s) {
                    let _ = parse_credential(h.credential);
                    let _ = parse_signed_headers(h.signed_headers);
                }
            }
            // Full verification: a random signature is never accepted.
            let Some(value) = header_value(&value) else {
                return;
            };
            let mut b = http::Request::builder()
                .method("PUT")
                .uri("http://bucket.example.com/some/key?x=1")
                .header("host", "bucket.example.com")
                .header("x-amz-date", T0)
                .header("x-amz-content-sha256", UNSIGNED_PAYLOAD);
            b = b.header(http::header::AUTHORIZATION, value);
            let parts = b.body(()).expect("request").into_parts().0;
            let r = verify_head(&parts, &keys(), t0());
            assert!(r.is_err(), "a fuzzed Authorization header was accepted: {r:?}");
        });
    report("auth_header_raw", &n);
}

fn settings(presign: Option<Duration>) -> SigningSettings {
    let mut s = SigningSettings::default();
    s.percent_encoding_mode = PercentEncodingMode::Single;
    s.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    match presign {
        None => s.payload_checksum_kind = PayloadChecksumKind::XAmzSha256,
        Some(d) => {
            s.signature_location = SignatureLocation::QueryParams;
            s.expires_in = Some(d);
        }
    }
    s
}

/// Signs with aws-sigv4 and returns the request head as the server would see it.
fn sdk_sign(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: SignableBody<'_>,
    region: &str,
    time: SystemTime,
    presign: Option<Duration>,
) -> http::request::Parts {
    let identity: Identity = Credentials::new(AK, SK, None, None, "fuzz").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("s3")
        .time(time)
        .settings(settings(presign))
        .build()
        .expect("params")
        .into();
    let hs = headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let signable = SignableRequest::new(method, url, hs, body).expect("signable");
    let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let mut req = b.body(()).expect("request");
    instructions.apply_to_request_http1x(&mut req);
    req.into_parts().0
}

const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

fn encode_key(key: &str) -> String {
    key.split('/').map(enc).collect::<Vec<_>>().join("/")
}

const KEY_CHARS: &[char] = &[
    'a', 'k', 'Z', '0', '/', ' ', '+', '=', '&', '?', '#', '%', '!', '*', '\'', '(', ')', '$', ',',
    ';', ':', '@', '~', '.', '-', '_', 'ü', '日', '😀',
];
const VALUE_CHARS: &[char] = &[
    'a', 'Q', '7', ' ', '-', '=', ',', ';', ':', '"', '/', '(', '<', 'é', '日', '\u{FFFD}',
];
const METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "HEAD"];

/// A request the structure-aware targets sign: everything that is covered by the signature.
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    key: String,
    query: Vec<(String, String)>,
    /// Signed `x-amz-meta-*` headers (lowercase names, distinct).
    meta: Vec<(String, String)>,
    region: String,
    /// Header auth: the x-amz-content-sha256 value; presigned: `None`.
    payload: String,
}

impl Req {
    fn gen(src: &mut Src<'_>) -> Req {
        let method = src.pick(METHODS);
        let key = src.string(24, KEY_CHARS);
        let nq = src.below(4);
        let query = (0..nq)
            .map(|_| {
                let k = src.string(6, KEY_CHARS);
                let k = if k.is_empty() { "q".to_owned() } else { k };
                (k, src.string(8, KEY_CHARS))
            })
            .filter(|(k, _)| !k.starts_with("X-Amz-"))
            .collect();
        let nm = src.below(4);
        let mut meta: Vec<(String, String)> = Vec::new();
        for i in 0..nm {
            let mut v = src.string(16, VALUE_CHARS);
            // aws-sigv4 and the verifier both trim and collapse spaces; a value must keep a
            // non-space character for a mutation of it to matter.
            v.push('x');
            meta.push((format!("x-amz-meta-m{i}"), v));
        }
        let region = src
            .pick(&["us-east-1", "eu-central-1", "nearcache", "a"])
            .to_owned();
        let payload = match src.below(6) {
            0 => UNSIGNED_PAYLOAD.to_owned(),
            1 => STREAMING_PAYLOAD.to_owned(),
            2 => STREAMING_PAYLOAD_TRAILER.to_owned(),
            3 => STREAMING_UNSIGNED_TRAILER.to_owned(),
            _ => hex::encode(crate::auth::sha256(src.bytes(8))),
        };
        Req {
            method,
            key,
            query,
            meta,
            region,
            payload,
        }
    }

    fn url(&self) -> String {
        let mut url = format!("http://bucket.example.com/{}", encode_key(&self.key));
        for (i, (k, v)) in self.query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            let _ = write!(url, "{}={}", enc(k), enc(v));
        }
        url
    }

    fn sign(&self, time: SystemTime, presign: Option<Duration>) -> http::request::Parts {
        let mut headers = vec![("host".to_owned(), "bucket.example.com".to_owned())];
        headers.extend(self.meta.iter().cloned());
        let body = match (&presign, self.payload.as_str()) {
            (Some(_), _) | (None, UNSIGNED_PAYLOAD) => SignableBody::UnsignedPayload,
            (None, p) => SignableBody::Precomputed(p.to_owned()),
        };
        sdk_sign(
            self.method,
            &self.url(),
            &headers,
            body,
            &self.region,
            time,
            presign,
        )
    }
}

/// Replaces a hex digit of a 64-hex signature at `i` by a different nibble value.
fn flip_hex(sig: &str, i: usize, delta: u8) -> String {
    let mut b = sig.as_bytes().to_vec();
    let i = i % b.len();
    let v = (b[i] as char).to_digit(16).expect("hex") as u8;
    let nv = (v + 1 + delta % 15) % 16;
    b[i] = char::from_digit(u32::from(nv), 16).expect("digit") as u8;
    String::from_utf8(b).expect("ascii")
}

/// Replaces one non-space char of `s` by a different non-space char.
fn change_char(s: &str, i: usize, with: char) -> String {
    let chars: Vec<char> = s.chars().collect();
    let idx: Vec<usize> = (0..chars.len()).filter(|&j| chars[j] != ' ').collect();
    let mut chars = chars;
    if idx.is_empty() {
        chars.push('x');
        return chars.into_iter().collect();
    }
    let j = idx[i % idx.len()];
    chars[j] = if chars[j] == with {
        if with == 'x' {
            'y'
        } else {
            'x'
        }
    } else {
        with
    };
    chars.into_iter().collect()
}

fn set_uri(parts: &mut http::request::Parts, path: &str, query: Option<&str>) {
    let s = match query {
        Some(q) => format!("http://bucket.example.com{path}?{q}"),
        None => format!("http://bucket.example.com{path}"),
    };
    parts.uri = s.parse().expect("uri");
}

/// Rewrites query parameter `name` (as it appears, encoded) to `value` (already encoded).
fn with_param(parts: &http::request::Parts, name: &str, value: &str) -> http::request::Parts {
    let q = parts.uri.query().unwrap_or("");
    let q: Vec<String> = q
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k == name => format!("{k}={value}"),
            _ => p.to_owned(),
        })
        .collect();
    let mut out = parts.clone();
    let path = parts.uri.path().to_owned();
    set_uri(&mut out, &path, Some(&q.join("&")));
    out
}

fn param(parts: &http::request::Parts, name: &str) -> String {
    parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
        .expect("param")
        .to_owned()
}

/// Mutations of what a signature covers, shared by header and presigned auth. Each returns
/// the mutated head (or `None` when it does not apply) and a label for failures.
fn mutate_common(
    src: &mut Src<'_>,
    req: &Req,
    parts: &http::request::Parts,
    presign: Option<Duration>,
    time: SystemTime,
) -> Option<(http::request::Parts, String)> {
    let kind = src.below(7);
    match kind {
        // Another method.
        0 => {
            let others: Vec<&str> = METHODS
                .iter()
                .copied()
                .filter(|m| *m != req.method)
                .collect();
            let m = src.pick(&others);
            let mut p = parts.clone();
            p.method = m.parse().expect("method");
            Some((p, format!("method -> {m}")))
        }
        // One char of the key changed.
        1 => {
            let key = change_char(&req.key, src.below(64), src.pick(KEY_CHARS));
            if key == req.key {
                return None;
            }
            let mut p = parts.clone();
            let q = parts.uri.query().map(str::to_owned);
            set_uri(&mut p, &format!("/{}", encode_key(&key)), q.as_deref());
            Some((p, format!("key -> {key:?}")))
        }
        // A query parameter's value changed, or one added.
        2 => {
            let mut r = req.clone();
            if r.query.is_empty() || src.bool() {
                r.query.push(("added".into(), src.string(4, KEY_CHARS)));
            } else {
                let i = src.below(r.query.len());
                r.query[i].1 = change_char(&r.query[i].1, src.below(64), src.pick(KEY_CHARS));
            }
            // Keep the auth parameters of a presigned URL.
            let mut p = parts.clone();
            let auth_q: Vec<&str> = parts
                .uri
                .query()
                .unwrap_or("")
                .split('&')
                .filter(|kv| kv.starts_with("X-Amz-"))
                .collect();
            let url = r.url();
            let path_q = url
                .strip_prefix("http://bucket.example.com")
                .expect("prefix");
            let (path, q) = path_q.split_once('?').unwrap_or((path_q, ""));
            let mut all: Vec<&str> = q.split('&').filter(|s| !s.is_empty()).collect();
            all.extend(auth_q);
            set_uri(&mut p, path, Some(&all.join("&")));
            Some((p, format!("query -> {:?}", r.query)))
        }
        // A signed header's value changed.
        3 if !req.meta.is_empty() => {
            let i = src.below(req.meta.len());
            let (name, v) = &req.meta[i];
            let nv = change_char(v, src.below(64), src.pick(VALUE_CHARS));
            let mut p = parts.clone();
            p.headers.insert(
                name.as_str().parse::<http::HeaderName>().expect("name"),
                nv.parse().expect("value"),
            );
            Some((p, format!("{name}: {v:?} -> {nv:?}")))
        }
        // A signed header removed.
        4 if !req.meta.is_empty() => {
            let i = src.below(req.meta.len());
            let mut p = parts.clone();
            p.headers.remove(req.meta[i].0.as_str());
            Some((p, format!("removed {}", req.meta[i].0)))
        }
        // An unsigned x-amz-* header added.
        5 => {
            let mut p = parts.clone();
            p.headers
                .insert("x-amz-meta-unsigned", "1".parse().expect("value"));
            Some((p, "added an unsigned x-amz-meta header".into()))
        }
        // Host changed.
        6 => {
            let mut p = parts.clone();
            p.headers
                .insert("host", "other.example.com".parse().expect("value"));
            Some((p, "host changed".into()))
        }
        _ => {
            let _ = (presign, time);
            None
        }
    }
}

#[test]
fn fuzz_header_signed_mutations() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(STRUCT_ITERS)
        .with_max_len(512)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let req = Req::gen(&mut src);
            let skew = Duration::from_secs(u64::from(src.u16()) % 800);
            let (time, now) = if src.bool() {
                (t0(), t0() + skew)
            } else {
                (t0() + skew, t0())
            };
            let parts = req.sign(time, None);
            let v = verify_head(&parts, &keys(), now).unwrap_or_else(|e| {
                panic!("valid signed request refused: {e}\n{req:?}\n{parts:?}")
            });
            assert_eq!(v.access_key, AK);
            assert!(!v.presigned);
            assert_eq!(v.region, req.region);
            match (&v.body, req.payload.as_str()) {
                (BodyCheck::None, UNSIGNED_PAYLOAD)
                | (BodyCheck::SignedChunks(_), STREAMING_PAYLOAD | STREAMING_PAYLOAD_TRAILER)
                | (BodyCheck::UnsignedChunks, STREAMING_UNSIGNED_TRAILER) => {}
                (BodyCheck::Sha256(h), p) if h == p => {}
                (b, p) => panic!("payload {p} verified as {b:?}"),
            }

            // One signed thing changed: refused.
            let auth = parts.headers["authorization"]
                .to_str()
                .expect("ascii")
                .to_owned();
            let (bad, what) = match src.below(5) {
                0 => {
                    let (head, sig) = auth.rsplit_once("Signature=").expect("sig");
                    let mut p = parts.clone();
                    let nsig = flip_hex(sig, src.below(64), src.byte());
                    p.headers.insert(
                        "authorization",
                        format!("{head}Signature={nsig}").parse().expect("value"),
                    );
                    (p, "signature".to_owned())
                }
                1 => {
                    // x-amz-date moved by a second (same day, still within the skew).
                    let d = parse_amz_date(parts.headers["x-amz-date"].to_str().expect("ascii"))
                        .expect("date");
                    let nd = crate::auth::format_amz_date(d + Duration::from_secs(1));
                    let mut p = parts.clone();
                    p.headers.insert("x-amz-date", nd.parse().expect("value"));
                    (p, "x-amz-date".to_owned())
                }
                2 => {
                    let others: Vec<String> = [
                        UNSIGNED_PAYLOAD,
                        STREAMING_PAYLOAD,
                        STREAMING_PAYLOAD_TRAILER,
                        STREAMING_UNSIGNED_TRAILER,
                    ]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .chain([hex::encode(crate::auth::sha256(b"other"))])
                    .filter(|p| *p != req.payload)
                    .collect();
                    let np = others[src.below(others.len())].clone();
                    let mut p = parts.clone();
                    p.headers
                        .insert("x-amz-content-sha256", np.parse().expect("value"));
                    (p, format!("payload -> {np}"))
                }
                3 => {
                    let other = if req.region == "us-east-1" {
                        "us-west-2"
                    } else {
                        "us-east-1"
                    };
                    let na =
                        auth.replacen(&format!("/{}/s3/", req.region), &format!("/{other}/s3/"), 1);
                    let mut p = parts.clone();
                    p.headers
                        .insert("authorization", na.parse().expect("value"));
                    (p, "credential region".to_owned())
                }
                _ => match mutate_common(&mut src, &req, &parts, None, time) {
                    Some(m) => m,
                    None => return,
                },
            };
            let r = verify_head(&bad, &keys(), now);
            assert!(
                r.is_err(),
                "mutated ({what}) request accepted\n{req:?}\n{bad:?}"
            );
        });
    report("header_signed_mutations", &n);
}

/// Signs a header-auth request over raw bytes, exactly as SigV4 says (canonical header
/// values are the bytes sent, trimmed, runs of spaces collapsed): unlike aws-sigv4, this
/// signer takes header values that are not UTF-8 (`obs-text`, which HTTP allows).
fn byte_sign(
    method: &str,
    path: &str,
    headers: &[(String, Vec<u8>)],
    amz_date: &str,
) -> http::request::Parts {
    let mut all: Vec<(String, Vec<u8>)> = vec![
        ("host".into(), b"bucket.example.com".to_vec()),
        (
            "x-amz-content-sha256".into(),
            UNSIGNED_PAYLOAD.as_bytes().to_vec(),
        ),
        ("x-amz-date".into(), amz_date.as_bytes().to_vec()),
    ];
    all.extend(headers.iter().cloned());
    all.sort();
    let signed: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let mut creq = format!("{method}\n{path}\n\n").into_bytes();
    for (k, v) in &all {
        creq.extend_from_slice(k.as_bytes());
        creq.push(b':');
        let mut prev_space = false;
        let v: &[u8] = v.trim_ascii();
        for &b in v {
            if b == b' ' && prev_space {
                continue;
            }
            prev_space = b == b' ';
            creq.push(b);
        }
        creq.push(b'\n');
    }
    creq.extend_from_slice(format!("\n{signed}\n{UNSIGNED_PAYLOAD}").as_bytes());
    let date8 = &amz_date[..8];
    let scope = format!("{date8}/us-east-1/s3/aws4_request");
    let sts = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(crate::auth::sha256(&creq))
    );
    let sig = crate::auth::hmac(&signing_key(SK, date8, "us-east-1"), sts.as_bytes());
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("http://bucket.example.com{path}"));
    for (k, v) in &all {
        b = b.header(k.as_str(), http::HeaderValue::from_bytes(v).expect("value"));
    }
    b = b.header(
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={AK}/{scope}, SignedHeaders={signed}, Signature={}",
            hex::encode(sig)
        ),
    );
    b.body(()).expect("request").into_parts().0
}

/// Header values as HTTP allows them: visible ASCII, spaces, tabs inside, and obs-text
/// (0x80-0xFF), which need not be UTF-8.
fn obs_value(src: &mut Src<'_>) -> Vec<u8> {
    let n = 1 + src.below(12);
    let mut v: Vec<u8> = (0..n)
        .map(|_| match src.byte() % 4 {
            0 => 0x80 | src.byte(),
            1 => b' ',
            _ => b'!' + src.byte() % 94,
        })
        .collect();
    v.push(b'v');
    v
}

#[test]
fn fuzz_header_signed_bytes_mutations() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(STRUCT_ITERS)
        .with_max_len(256)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let nm = 1 + src.below(3);
            let meta: Vec<(String, Vec<u8>)> = (0..nm)
                .map(|i| (format!("x-amz-meta-b{i}"), obs_value(&mut src)))
                .collect();
            let method = src.pick(METHODS);
            let path = format!("/{}", encode_key(&src.string(12, KEY_CHARS)));
            let parts = byte_sign(method, &path, &meta, T0);
            let v = verify_head(&parts, &keys(), t0())
                .unwrap_or_else(|e| panic!("validly signed request refused: {e}\n{meta:?}"));
            assert_eq!(v.access_key, AK);
            // One byte of a signed header value changed to another (non-space, still a valid
            // header value): refused.
            let i = src.below(meta.len());
            let (name, value) = &meta[i];
            let positions: Vec<usize> = (0..value.len()).filter(|&j| value[j] != b' ').collect();
            let j = positions[src.below(positions.len())];
            let mut nv = value.clone();
            let mut c = match src.byte() % 2 {
                0 => 0x80 | src.byte(),
                _ => b'!' + src.byte() % 94,
            };
            if c == nv[j] {
                c = if c == b'x' { b'y' } else { b'x' };
            }
            nv[j] = c;
            let mut bad = parts.clone();
            bad.headers.insert(
                name.as_str().parse::<http::HeaderName>().expect("name"),
                http::HeaderValue::from_bytes(&nv).expect("value"),
            );
            let r = verify_head(&bad, &keys(), t0());
            assert!(r.is_err(), "{name}: {value:?} -> {nv:?} accepted");
        });
    report("header_signed_bytes_mutations", &n);
}

// =============================================================================================
// (b) Presigned URLs

#[test]
fn fuzz_presigned_raw() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(RAW_ITERS)
        .with_max_len(1024)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            // The query parser alone, on any string.
            let raw = String::from_utf8_lossy(src.bytes(256)).into_owned();
            let _ = parse_query(&raw);

            // A query with the auth parameters, each fuzzed or valid.
            let mut params: Vec<(String, String)> = Vec::new();
            let mut field = |src: &mut Src<'_>, name: &str, valid: String| match src.byte() % 4 {
                0 => {}
                1 => params.push((
                    name.to_owned(),
                    String::from_utf8_lossy(src.bytes(40)).into_owned(),
                )),
                _ => params.push((name.to_owned(), valid)),
            };
            field(&mut src, "X-Amz-Algorithm", "AWS4-HMAC-SHA256".into());
            field(
                &mut src,
                "X-Amz-Credential",
                format!("{AK}/20240501/us-east-1/s3/aws4_request"),
            );
            field(&mut src, "X-Amz-Date", T0.into());
            let exp = (u64::from(src.u16()) * 16).to_string();
            field(&mut src, "X-Amz-Expires", exp);
            field(&mut src, "X-Amz-SignedHeaders", "host".into());
            let sig = hex::encode(src.bytes(32));
            field(&mut src, "X-Amz-Signature", sig);
            field(&mut src, "X-Amz-Content-Sha256", UNSIGNED_PAYLOAD.into());
            if src.bool() {
                params.push((
                    String::from_utf8_lossy(src.bytes(8)).into_owned(),
                    String::from_utf8_lossy(src.bytes(8)).into_owned(),
                ));
            }
            let mut q = String::new();
            for (i, (k, v)) in params.iter().enumerate() {
                if i > 0 {
                    q.push('&');
                }
                let _ = write!(q, "{}={}", enc(k), enc(v));
            }
            if src.bool() {
                // Raw query bytes appended, as far as the URI grammar lets them through.
                let tail: String = String::from_utf8_lossy(src.rest())
                    .chars()
                    .filter(|c| c.is_ascii_graphic() && *c != '#')
                    .collect();
                q.push_str(&tail);
            }
            let Ok(uri) = format!("http://bucket.example.com/k?{q}").parse::<http::Uri>() else {
                return;
            };
            let mut b = http::Request::builder()
                .method("GET")
                .uri(uri)
                .header("host", "bucket.example.com");
            if src.byte() < 32 {
                b = b.header("authorization", "AWS4-HMAC-SHA256 x");
            }
            let parts = b.body(()).expect("request").into_parts().0;
            let r = verify_head(&parts, &keys(), t0() + Duration::from_secs(5));
            assert!(r.is_err(), "a fuzzed presigned query was accepted: {r:?}");
        });
    report("presigned_raw", &n);
}

#[test]
fn fuzz_presigned_mutations() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(STRUCT_ITERS)
        .with_max_len(512)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let mut req = Req::gen(&mut src);
            req.payload = UNSIGNED_PAYLOAD.into();
            let expires = 1 + u64::from(src.u16()) * 9; // up to ~6.8 days
            let presign = Some(Duration::from_secs(expires));
            let age = Duration::from_secs(u64::from(src.u16()) % (expires + 1));
            let time = t0();
            let now = time + age;
            let parts = req.sign(time, presign);
            let v = verify_head(&parts, &keys(), now)
                .unwrap_or_else(|e| panic!("valid presigned URL refused: {e}\n{req:?}\n{parts:?}"));
            assert!(v.presigned);
            assert_eq!(v.access_key, AK);
            assert!(matches!(v.body, BodyCheck::None));
            // Expired a second after its lifetime.
            let late = verify_head(&parts, &keys(), time + Duration::from_secs(expires + 1));
            assert!(late.is_err(), "expired URL accepted");

            let (bad, what) = match src.below(5) {
                0 => {
                    let sig = param(&parts, "X-Amz-Signature");
                    let nsig = flip_hex(&sig, src.below(64), src.byte());
                    (
                        with_param(&parts, "X-Amz-Signature", &nsig),
                        "signature".to_owned(),
                    )
                }
                1 => {
                    let ne = if expires >= 604_800 {
                        expires - 1
                    } else {
                        expires + 1
                    };
                    (
                        with_param(&parts, "X-Amz-Expires", &ne.to_string()),
                        format!("expires -> {ne}"),
                    )
                }
                2 => {
                    let nd = crate::auth::format_amz_date(time - Duration::from_secs(1));
                    (with_param(&parts, "X-Amz-Date", &nd), "date".to_owned())
                }
                3 => {
                    let other = if req.region == "us-east-1" {
                        "us-west-2"
                    } else {
                        "us-east-1"
                    };
                    let cred = param(&parts, "X-Amz-Credential").replacen(
                        &format!("%2F{}%2F", req.region),
                        &format!("%2F{other}%2F"),
                        1,
                    );
                    (
                        with_param(&parts, "X-Amz-Credential", &cred),
                        "credential region".to_owned(),
                    )
                }
                _ => match mutate_common(&mut src, &req, &parts, presign, time) {
                    Some(m) => m,
                    None => return,
                },
            };
            let r = verify_head(&bad, &keys(), now);
            assert!(
                r.is_err(),
                "mutated ({what}) presigned URL accepted\n{req:?}\n{bad:?}"
            );
        });
    report("presigned_mutations", &n);
}

// =============================================================================================
// (c) aws-chunked bodies

const DATE8: &str = "20240501";

fn chunk_signer(seed: [u8; 32], trailer: bool, alg: Option<ChecksumAlgorithm>) -> ChunkSigner {
    ChunkSigner {
        key: signing_key(SK, DATE8, "us-east-1"),
        amz_date: T0.into(),
        scope: format!("{DATE8}/us-east-1/s3/aws4_request"),
        seed,
        trailer,
        trailer_alg: alg,
    }
}

/// The body modes the decoder knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Signed,
    SignedTrailer,
    Unsigned,
}

fn body_check(mode: Mode, seed: [u8; 32], declared: Option<ChecksumAlgorithm>) -> BodyCheck {
    match mode {
        Mode::Signed => BodyCheck::SignedChunks(chunk_signer(seed, false, None)),
        Mode::SignedTrailer => BodyCheck::SignedChunks(chunk_signer(seed, true, declared)),
        Mode::Unsigned => BodyCheck::UnsignedChunks,
    }
}

#[test]
fn fuzz_chunked_raw() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(RAW_ITERS)
        .with_max_len(2048)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let mode = src.pick(&[Mode::Signed, Mode::SignedTrailer, Mode::Unsigned]);
            let declared = match src.below(7) {
                i @ 0..=4 => Some(ChecksumAlgorithm::ALL[i]),
                _ => None,
            };
            let limit = if src.bool() {
                Some(u64::from(src.u16()))
            } else {
                None
            };
            let nc = src.below(6);
            let mut cut_at: Vec<usize> = (0..nc).map(|_| usize::from(src.u16())).collect();
            cut_at.sort_unstable();
            // Mostly well-formed-looking framing around fuzzed pieces, sometimes pure bytes.
            let body: Vec<u8> = if src.byte() < 96 {
                src.rest().to_vec()
            } else {
                let mut b = Vec::new();
                while !src.0.is_empty() {
                    match src.byte() % 6 {
                        0 => {
                            let d = src.bytes(40);
                            b.extend_from_slice(format!("{:x}", d.len()).as_bytes());
                            if mode != Mode::Unsigned {
                                b.extend_from_slice(b";chunk-signature=");
                                b.extend_from_slice(hex::encode(src.bytes(32)).as_bytes());
                            }
                            b.extend_from_slice(b"\r\n");
                            b.extend_from_slice(d);
                            b.extend_from_slice(b"\r\n");
                        }
                        1 => b.extend_from_slice(b"0\r\n"),
                        2 => b.extend_from_slice(b"\r\n"),
                        3 => {
                            let alg = src.pick(&ChecksumAlgorithm::ALL);
                            b.extend_from_slice(alg.header_name().as_bytes());
                            b.push(b':');
                            b.extend_from_slice(alg.checksum_b64(src.bytes(8)).as_bytes());
                            b.extend_from_slice(b"\r\n");
                        }
                        4 => b.extend_from_slice(b"x-amz-trailer-signature:"),
                        _ => b.extend_from_slice(src.bytes(16)),
                    }
                }
                b
            };
            let seed = [7u8; 32];
            let r = decode_declared(
                body_check(mode, seed, declared),
                declared,
                limit,
                &body,
                &cut_at,
            );
            if let Ok((out, sum)) = r {
                assert!(
                    mode == Mode::Unsigned,
                    "random bytes accepted as a signed body ({} bytes out)",
                    out.len()
                );
                if let Some(d) = declared {
                    assert_eq!(
                        sum.map(|(a, _)| a),
                        Some(d),
                        "unsigned body accepted without its declared trailer"
                    );
                }
            }
            // A signed decoder never releases bytes whose chunk signature it has not checked:
            // random bytes can't carry a valid one.
            if mode != Mode::Unsigned {
                let mut d = BodyDecoder::new(body_check(mode, seed, declared), limit);
                let mut released = 0;
                for piece in body.chunks(97) {
                    match d.feed(Bytes::copy_from_slice(piece)) {
                        Ok(v) => released += v.iter().map(Bytes::len).sum::<usize>(),
                        Err(_) => break,
                    }
                }
                assert_eq!(released, 0, "unverified bytes released");
            }
        });
    report("chunked_raw", &n);
}

/// A valid aws-chunked body for `payload` cut into chunks of `sizes`, and the byte ranges a
/// mutation may target: (data bytes, chunk signature hex, chunk size hex, trailer value,
/// trailer signature hex).
struct Encoded {
    body: Vec<u8>,
    data: Vec<usize>,
    sig_hex: Vec<usize>,
    size_hex: Vec<(usize, usize)>,
    trailer_value: Vec<usize>,
    trailer_sig_hex: Vec<usize>,
}

#[allow(clippy::too_many_arguments)]
fn encode_chunked(
    mode: Mode,
    seed: [u8; 32],
    payload: &[u8],
    sizes: &[usize],
    trailer: Option<ChecksumAlgorithm>,
    declared: Option<ChecksumAlgorithm>,
    blank_after_final: bool,
    upper_hex: bool,
) -> Encoded {
    let signer = chunk_signer(seed, mode == Mode::SignedTrailer, declared);
    let mut prev = seed;
    let mut e = Encoded {
        body: Vec::new(),
        data: Vec::new(),
        sig_hex: Vec::new(),
        size_hex: Vec::new(),
        trailer_value: Vec::new(),
        trailer_sig_hex: Vec::new(),
    };
    let mut rest = payload;
    let mut i = 0;
    let mut chunks: Vec<&[u8]> = Vec::new();
    while !rest.is_empty() {
        let n = sizes
            .get(i)
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        let (a, b) = rest.split_at(n);
        chunks.push(a);
        rest = b;
        i += 1;
    }
    chunks.push(b"");
    for c in chunks {
        let size = if upper_hex {
            format!("{:X}", c.len())
        } else {
            format!("{:x}", c.len())
        };
        e.size_hex.push((e.body.len(), size.len()));
        e.body.extend_from_slice(size.as_bytes());
        if mode != Mode::Unsigned {
            let sig = signer.chunk_signature(&prev, &crate::auth::sha256(c));
            prev = sig;
            e.body.extend_from_slice(b";chunk-signature=");
            let at = e.body.len();
            e.sig_hex.extend(at..at + 64);
            e.body.extend_from_slice(hex::encode(sig).as_bytes());
        }
        e.body.extend_from_slice(b"\r\n");
        if !c.is_empty() {
            let at = e.body.len();
            e.data.extend(at..at + c.len());
            e.body.extend_from_slice(c);
            e.body.extend_from_slice(b"\r\n");
        }
    }
    match mode {
        Mode::Signed => e.body.extend_from_slice(b"\r\n"),
        Mode::SignedTrailer | Mode::Unsigned => {
            if blank_after_final {
                e.body.extend_from_slice(b"\r\n");
            }
            let mut canonical = String::new();
            if let Some(alg) = trailer {
                let v = alg.checksum_b64(payload);
                e.body.extend_from_slice(alg.header_name().as_bytes());
                e.body.push(b':');
                let at = e.body.len();
                e.trailer_value.extend(at..at + v.len());
                e.body.extend_from_slice(v.as_bytes());
                e.body.extend_from_slice(b"\r\n");
                canonical = format!("{}:{v}\n", alg.header_name());
            }
            if mode == Mode::SignedTrailer {
                let tsig = signer.trailer_signature(&prev, canonical.as_bytes());
                e.body.extend_from_slice(b"x-amz-trailer-signature:");
                let at = e.body.len();
                e.trailer_sig_hex.extend(at..at + 64);
                e.body.extend_from_slice(hex::encode(tsig).as_bytes());
                e.body.extend_from_slice(b"\r\n");
            }
            e.body.extend_from_slice(b"\r\n");
        }
    }
    e
}

#[test]
fn fuzz_chunked_valid_and_mutated() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(STRUCT_ITERS * 3)
        .with_max_len(1024)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let mode = src.pick(&[Mode::Signed, Mode::SignedTrailer, Mode::Unsigned]);
            let mut seed = [0u8; 32];
            for b in &mut seed {
                *b = src.byte();
            }
            let trailer = match (mode, src.below(7)) {
                (Mode::Signed, _) => None,
                (_, i @ 0..=4) => Some(ChecksumAlgorithm::ALL[i]),
                _ => None,
            };
            // x-amz-trailer is declared or not; the decoder must cope either way. (Signed: in
            // the chunk signer, as `verify_head` puts it; both: to `with_trailer`.)
            let declared = if mode != Mode::Signed && src.bool() {
                trailer
            } else {
                None
            };
            let blank = mode == Mode::Unsigned && src.bool();
            let upper = src.bool();
            let with_limit = src.bool();
            let sizes: Vec<usize> = (0..src.below(5)).map(|_| 1 + src.below(64)).collect();
            let payload = src.bytes(300).to_vec();
            let limit = with_limit.then_some(payload.len() as u64);
            let enc = encode_chunked(
                mode, seed, &payload, &sizes, trailer, declared, blank, upper,
            );
            let check = body_check(mode, seed, declared);
            let split = cuts(&mut src, enc.body.len());

            // Untouched: verifies, and decodes to the payload.
            let (out, sum) = decode_declared(check.clone(), declared, limit, &enc.body, &split)
                .unwrap_or_else(|e| panic!("valid {mode:?} body refused: {e}"));
            assert_eq!(out, payload, "decoded body differs from the payload");
            let want_sum = trailer.map(|a| (a, a.checksum_b64(&payload)));
            assert_eq!(sum, want_sum, "verified trailer checksum");

            // One signed byte changed: refused. (Unsigned bodies: only where the trailing
            // checksum vouches for it.)
            let protected = mode != Mode::Unsigned || trailer.is_some();
            let mut bad = enc.body.clone();
            let what = match src.below(6) {
                0 if !enc.data.is_empty() && protected => {
                    let i = enc.data[src.below(enc.data.len())];
                    bad[i] ^= 1 | src.byte();
                    "data byte"
                }
                1 if !enc.sig_hex.is_empty() => {
                    let i = enc.sig_hex[src.below(enc.sig_hex.len())];
                    let s = std::str::from_utf8(&bad[i..i + 1]).expect("hex").to_owned();
                    bad[i] = flip_hex(&s, 0, src.byte()).as_bytes()[0];
                    "chunk signature"
                }
                2 if protected => {
                    // A chunk size changed to another value.
                    let (at, len) = enc.size_hex[src.below(enc.size_hex.len())];
                    let old = u64::from_str_radix(
                        std::str::from_utf8(&bad[at..at + len]).expect("hex"),
                        16,
                    )
                    .expect("size");
                    let new = if old == 0 {
                        1
                    } else {
                        old - 1 - (u64::from(src.byte()) % old)
                    };
                    let mut b = bad[..at].to_vec();
                    b.extend_from_slice(format!("{new:x}").as_bytes());
                    b.extend_from_slice(&bad[at + len..]);
                    bad = b;
                    "chunk size"
                }
                3 if !enc.trailer_value.is_empty() => {
                    let i = enc.trailer_value[src.below(enc.trailer_value.len())];
                    let c = src.pick(b"ABz0+/=");
                    bad[i] = if bad[i] == c { b'Q' } else { c };
                    "trailer value"
                }
                4 if !enc.trailer_sig_hex.is_empty() => {
                    let i = enc.trailer_sig_hex[src.below(enc.trailer_sig_hex.len())];
                    let s = std::str::from_utf8(&bad[i..i + 1]).expect("hex").to_owned();
                    bad[i] = flip_hex(&s, 0, src.byte()).as_bytes()[0];
                    "trailer signature"
                }
                _ => {
                    // Any byte flipped, or the body truncated: refused, or (when the change
                    // is meaningless, e.g. hex case) decoded to exactly the same.
                    if src.bool() && !bad.is_empty() {
                        let i = src.below(bad.len());
                        bad[i] ^= 1 | src.byte();
                    } else {
                        bad.truncate(src.below(bad.len()));
                    }
                    let split = cuts(&mut src, bad.len());
                    if let Ok((o, s)) =
                        decode_declared(check.clone(), declared, limit, &bad, &split)
                    {
                        if protected {
                            assert_eq!(
                                o, payload,
                                "a changed {mode:?} body decoded to other bytes"
                            );
                            // A declared trailer is never skipped (a body cut off where it
                            // starts used to be accepted without it).
                            if s.is_some() || mode != Mode::Unsigned || declared.is_some() {
                                assert_eq!(s, want_sum, "a changed body verified another checksum");
                            }
                        }
                    }
                    return;
                }
            };
            let split = cuts(&mut src, bad.len());
            let r = decode_declared(check, declared, limit, &bad, &split);
            assert!(
                r.is_err(),
                "{mode:?} body with a changed {what} accepted: {r:?}"
            );
        });
    report("chunked_valid_and_mutated", &n);
}

#[test]
fn fuzz_plain_body_and_checksum_headers_raw() {
    // Not aws-chunked: Content-MD5 / x-amz-checksum-* headers and the x-amz-content-sha256
    // body check, on fuzzed header values and bodies split anywhere.
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(RAW_ITERS)
        .with_max_len(512)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let mut headers = http::HeaderMap::new();
            for _ in 0..src.below(4) {
                let name = src.pick(&[
                    "content-md5",
                    "x-amz-checksum-crc32",
                    "x-amz-checksum-crc32c",
                    "x-amz-checksum-crc64nvme",
                    "x-amz-checksum-sha1",
                    "x-amz-checksum-sha256",
                    "x-amz-checksum-algorithm",
                    "x-amz-checksum-bogus",
                ]);
                let raw = src.bytes(48);
                let value = if src.bool() { base64_of(raw) } else { raw.to_vec() };
                if let Some(v) = header_value(&value) {
                    headers.append(name, v);
                }
            }
            let body = src.bytes(200);
            let cut = src.below(body.len() + 1);
            if let Ok(mut c) = crate::auth::ChecksumCheck::from_headers(&headers) {
                let _ = c.checksum();
                c.update(&body[..cut]);
                c.update(&body[cut..]);
                let _ = c.finish();
            }
            let check = if src.bool() {
                BodyCheck::Sha256(hex::encode(crate::auth::sha256(src.bytes(8))))
            } else {
                BodyCheck::None
            };
            let limit = src.bool().then(|| u64::from(src.byte()));
            let sha = matches!(&check, BodyCheck::Sha256(h) if *h == hex::encode(crate::auth::sha256(body)));
            let r = decode(check.clone(), limit, body, &[cut]);
            let length_ok = limit.is_none_or(|l| l == body.len() as u64);
            let sha_ok = sha || matches!(check, BodyCheck::None);
            assert_eq!(r.is_ok(), length_ok && sha_ok, "{r:?}");
            if let Ok((out, _)) = r {
                assert_eq!(out, body);
            }
        });
    report("plain_body_and_checksum_headers_raw", &n);
}

#[test]
fn fuzz_content_md5() {
    // Content-MD5 values: the base64 of exactly 16 bytes (blanks around it allowed) is
    // accepted and decodes to those bytes; anything else is InvalidDigest, never a panic.
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(RAW_ITERS)
        .with_max_len(64)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let valid = src.bool();
            let raw = src.bytes(24).to_vec();
            let value = if valid {
                let mut v = base64_of(&raw);
                if src.bool() {
                    v.insert(0, b' ');
                    v.push(b'\t');
                }
                v
            } else {
                src.rest().to_vec()
            };
            match crate::auth::parse_content_md5(&value) {
                Ok(md5) => {
                    use base64::Engine as _;
                    let text = std::str::from_utf8(&value).expect("accepted means UTF-8");
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(text.trim())
                        .expect("accepted means base64");
                    assert_eq!(decoded, md5, "{value:?}");
                }
                Err(e) => {
                    assert_eq!(e.code(), "InvalidDigest");
                    assert!(!(valid && raw.len() == 16), "refused {value:?}");
                }
            }
        });
    report("content_md5", &n);
}

fn base64_of(b: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .encode(b)
        .into_bytes()
}

// =============================================================================================
// (d) XML reader

fn escape(s: &str) -> String {
    let mut o = String::new();
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            c if (c as u32) < 0x20 || c == '\'' => {
                let _ = write!(o, "&#x{:X};", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

fn depth(e: &Elem) -> usize {
    1 + e.children.iter().map(depth).max().unwrap_or(0)
}

#[test]
fn fuzz_xml_raw() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(RAW_ITERS)
        .with_max_len(2048)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            // Raw text, or a soup of XML tokens (which random bytes seldom make).
            let doc = if src.byte() < 64 {
                String::from_utf8_lossy(src.rest()).into_owned()
            } else {
                const TOKENS: &[&str] = &[
                    "<a>",
                    "</a>",
                    "<s3:b x=\"1\">",
                    "</s3:b>",
                    "</b>",
                    "<c/>",
                    "< d >",
                    "</ d>",
                    "<",
                    ">",
                    "/",
                    "&amp;",
                    "&lt;",
                    "&#x41;",
                    "&#65;",
                    "&#xD800;",
                    "&#x",
                    "&#",
                    "&",
                    ";",
                    "&bogus;",
                    "<!--",
                    "-->",
                    "<![CDATA[",
                    "]]>",
                    "<?xml",
                    "?>",
                    " ",
                    "\n",
                    "text",
                    "é",
                    ":",
                    "<:>",
                    "</:>",
                    "<a:>",
                    "\u{FEFF}",
                ];
                let mut d = String::new();
                while !src.0.is_empty() {
                    d.push_str(src.pick(TOKENS));
                }
                d
            };
            if let Ok(root) = xml::parse(&doc) {
                assert!(depth(&root) <= xml::MAX_DEPTH, "deeper than MAX_DEPTH");
                assert!(!root.name.is_empty());
            }
        });
    report("xml_raw", &n);
}

const NAME_CHARS: &[char] = &['A', 'b', 'K', 'e', 'y', '1', '-', '_', '.'];
const TEXT_CHARS: &[char] = &[
    'a', ' ', '\n', '&', '<', '>', '"', '\'', ';', '#', 'x', 'é', '😀', '\u{1}', ']', '\t',
];

fn gen_elem(src: &mut Src<'_>, depth: usize) -> Elem {
    let mut name = src.string(8, NAME_CHARS);
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        name.insert(0, 'E');
    }
    let nchildren = if depth >= 4 { 0 } else { src.below(4) };
    if nchildren == 0 {
        Elem {
            name,
            text: src.string(12, TEXT_CHARS),
            children: Vec::new(),
        }
    } else {
        let children = (0..nchildren).map(|_| gen_elem(src, depth + 1)).collect();
        Elem {
            name,
            text: String::new(),
            children,
        }
    }
}

fn write_elem(src: &mut Src<'_>, e: &Elem, out: &mut String) {
    let prefix = if src.byte() < 32 { "s3:" } else { "" };
    out.push('<');
    out.push_str(prefix);
    out.push_str(&e.name);
    if src.byte() < 32 {
        out.push_str(" xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"");
    }
    if e.children.is_empty() && e.text.is_empty() && src.bool() {
        out.push_str("/>");
        return;
    }
    out.push('>');
    if e.children.is_empty() {
        // Text as escaped characters, or (without "]]>") as CDATA.
        if src.byte() < 48 && !e.text.contains("]]>") {
            let _ = write!(out, "<![CDATA[{}]]>", e.text);
        } else {
            out.push_str(&escape(&e.text));
        }
    }
    for c in &e.children {
        if src.byte() < 16 {
            out.push_str("<!-- a comment -->");
        }
        write_elem(src, c, out);
    }
    let _ = write!(out, "</{prefix}{}>", e.name);
}

#[test]
fn fuzz_xml_round_trip() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(RAW_ITERS)
        .with_max_len(1024)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let mut src = Src(input);
            let root = gen_elem(&mut src, 0);
            let mut doc = String::new();
            if src.bool() {
                doc.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
            }
            write_elem(&mut src, &root, &mut doc);
            let got =
                xml::parse(&doc).unwrap_or_else(|e| panic!("valid document refused: {e}\n{doc}"));
            assert_eq!(got, root, "{doc}");
            // Mutated: never panics; cut short, it is refused.
            let mut bytes = doc.clone().into_bytes();
            let i = src.below(bytes.len());
            bytes[i] = src.pick(b"<>/&;!?-[ ");
            let _ = xml::parse(&String::from_utf8_lossy(&bytes));
            let cut = doc
                .char_indices()
                .map(|(i, _)| i)
                .filter(|&i| i > 0)
                .nth(src.below(doc.len()));
            if let Some(cut) = cut {
                if !doc[cut..].trim().is_empty() {
                    assert!(
                        xml::parse(&doc[..cut]).is_err(),
                        "truncated document accepted: {:?}",
                        &doc[..cut]
                    );
                }
            }
        });
    report("xml_round_trip", &n);
}

// =============================================================================================
// Regression inputs

#[test]
fn regression_xml_deep_nesting_is_refused_not_a_stack_overflow() {
    // Found by reading the reader while moving it (random inputs are too short to reach
    // it): before MAX_DEPTH, 100 000 nested elements (a 700 KB body, under the server's
    // 4 MiB limit) parsed into a tree whose recursive drop overflowed an 8 MiB stack, which
    // aborts the process.
    let doc = format!("{}{}", "<a>".repeat(200_000), "</a>".repeat(200_000));
    assert_eq!(xml::parse(&doc), Err(XmlError::TooDeep));
    let ok = format!(
        "{}{}",
        "<a>".repeat(xml::MAX_DEPTH),
        "</a>".repeat(xml::MAX_DEPTH)
    );
    assert!(xml::parse(&ok).is_ok());
}

#[test]
fn regression_obs_text_header_values_are_signed_as_bytes() {
    // Found by fuzz_header_signed_bytes_mutations: the canonical headers were built from
    // `String::from_utf8_lossy`, so a validly signed request whose signed header carries
    // obs-text that is not UTF-8 was refused, and values differing only in such bytes (each
    // becoming U+FFFD) had the same canonical form.
    let value = vec![131, 63, 225, 69, 186, 224, 141, 52, 32, 47, 32, 136, 118];
    let meta = vec![
        ("x-amz-meta-b0".to_owned(), b"  v".to_vec()),
        ("x-amz-meta-b1".to_owned(), value),
    ];
    let parts = byte_sign("PUT", "/k", &meta, T0);
    verify_head(&parts, &keys(), t0()).expect("validly signed request");

    let parts = byte_sign(
        "PUT",
        "/k",
        &[("x-amz-meta-a".into(), vec![b'a', 0xC3])],
        T0,
    );
    verify_head(&parts, &keys(), t0()).expect("validly signed request");
    let mut bad = parts.clone();
    bad.headers.insert(
        "x-amz-meta-a",
        http::HeaderValue::from_bytes(&[b'a', 0xC4]).expect("value"),
    );
    assert_eq!(
        verify_head(&bad, &keys(), t0())
            .map(|_| ())
            .unwrap_err()
            .code(),
        "SignatureDoesNotMatch"
    );
}

/// An unsigned-trailer body (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`, `x-amz-trailer` declared)
/// cut off exactly where its trailer starts was accepted without any checksum check.
#[test]
fn regression_unsigned_body_cut_before_its_declared_trailer_is_refused() {
    let payload = b"0123456789";
    for alg in ChecksumAlgorithm::ALL {
        let enc = encode_chunked(
            Mode::Unsigned,
            [0; 32],
            payload,
            &[4],
            Some(alg),
            Some(alg),
            false,
            false,
        );
        let at = enc.trailer_value[0] - alg.header_name().len() - 1;
        let check = BodyCheck::UnsignedChunks;
        let cut = &enc.body[..at];
        let e = decode_declared(check.clone(), Some(alg), Some(10), cut, &[]).unwrap_err();
        assert_eq!(e.code(), "IncompleteBody", "{alg:?}");
        let (out, sum) = decode_declared(check, Some(alg), Some(10), &enc.body, &[]).unwrap();
        assert_eq!(
            (out.as_slice(), sum),
            (&payload[..], Some((alg, alg.checksum_b64(payload))))
        );
    }
}

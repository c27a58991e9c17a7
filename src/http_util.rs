//! HTTP details shared by the handlers: ranges, conditional requests, response heads
//! of object reads, small bodies. Imports nothing of the server.

// Client input must not be able to panic this code (see README, "Errors and logs").
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unwrap_used,
        clippy::expect_used
    )
)]

use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap, HeaderValue, StatusCode};

/// Parses a single `bytes=` range against an object of `size` bytes.
/// `Ok(None)`: serve the whole object (no header, a multi-range or a malformed header,
/// which RFC 9110 lets a server ignore). `Err`: 416.
///
/// Every returned range satisfies `start < end <= size`. The numbers are client input
/// (any u64, 2^64-1 included), so nothing here adds to them before clamping: a last-byte
/// position past the object means the object's last byte (RFC 9110 §14.1.2).
pub fn resolve_range(spec: ByteRangeSpec, size: u64) -> Result<Option<Range<u64>>, Unsatisfiable> {
    match spec {
        ByteRangeSpec::Whole => Ok(None),
        ByteRangeSpec::Suffix(n) => {
            if n == 0 || size == 0 {
                return Err(Unsatisfiable { size });
            }
            Ok(Some(size.saturating_sub(n)..size))
        }
        ByteRangeSpec::From { first, last } => {
            if first >= size {
                return Err(Unsatisfiable { size });
            }
            // first < size, so size - 1 cannot underflow and last.min(size - 1) + 1 <= size.
            let end = match last {
                Some(last) => last.min(size.saturating_sub(1)).saturating_add(1),
                None => size,
            };
            Ok(Some(first..end))
        }
    }
}

/// A `Range` header as the client wrote it, before it meets an object size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRangeSpec {
    /// No header, another unit, a multi-range or a malformed one: serve the whole object.
    Whole,
    /// `bytes=-N`: the last N bytes.
    Suffix(u64),
    /// `bytes=F-` or `bytes=F-L` with `L >= F` (positions inclusive, as written).
    From { first: u64, last: Option<u64> },
}

/// Parses a `Range` header without an object size; never panics on any input.
pub fn parse_byte_range(header: Option<&str>) -> ByteRangeSpec {
    let Some(h) = header else {
        return ByteRangeSpec::Whole;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return ByteRangeSpec::Whole;
    };
    if spec.contains(',') {
        return ByteRangeSpec::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return ByteRangeSpec::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    // RFC 9110 positions are 1*DIGIT: u64::from_str would also take a leading '+'.
    let digits = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse::<u64>().ok()
    };
    if a.is_empty() {
        return match digits(b) {
            Some(n) => ByteRangeSpec::Suffix(n),
            None => ByteRangeSpec::Whole,
        };
    }
    let Some(first) = digits(a) else {
        return ByteRangeSpec::Whole;
    };
    if b.is_empty() {
        return ByteRangeSpec::From { first, last: None };
    }
    match digits(b) {
        Some(last) if last >= first => ByteRangeSpec::From {
            first,
            last: Some(last),
        },
        _ => ByteRangeSpec::Whole,
    }
}

/// A range that starts at or past the end of an object of `size` bytes (416).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable {
    pub size: u64,
}

/// How much of an object a read answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 304: the client's copy is current.
    NotModified,
    /// 200 with the whole object.
    Whole,
    /// 206 with these bytes (`start < end <= size`).
    Partial(Range<u64>),
}

/// Sets the status, Content-Length and Content-Range of a read's answer for an object
/// of `size` bytes.
pub fn answer_head(
    mut b: http::response::Builder,
    size: u64,
    answer: &Answer,
) -> http::response::Builder {
    let (status, len) = match answer {
        Answer::NotModified => return b.status(StatusCode::NOT_MODIFIED),
        Answer::Whole => (StatusCode::OK, size),
        Answer::Partial(r) => (StatusCode::PARTIAL_CONTENT, r.end.saturating_sub(r.start)),
    };
    if let Some(h) = b.headers_mut() {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if let Answer::Partial(r) = answer {
            let range = format!("bytes {}-{}/{size}", r.start, r.end.saturating_sub(1));
            if let Ok(v) = HeaderValue::from_str(&range) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
    }
    b.status(status)
}

/// Conditional request headers, copied out of the request so they can cross threads.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<SystemTime>,
    pub if_unmodified_since: Option<SystemTime>,
}

impl Conditions {
    pub fn from_headers(h: &HeaderMap) -> Conditions {
        let s = |name: http::header::HeaderName| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let t = |name| s(name).and_then(|v| httpdate::parse_http_date(&v).ok());
        Conditions {
            if_match: s(http::header::IF_MATCH),
            if_none_match: s(http::header::IF_NONE_MATCH),
            if_modified_since: t(http::header::IF_MODIFIED_SINCE),
            if_unmodified_since: t(http::header::IF_UNMODIFIED_SINCE),
        }
    }

    /// RFC 9110 section 13.2.2 order. `Some(304 | 412)` when the request stops here.
    pub fn evaluate(
        &self,
        etag: &str,
        last_modified_ms: u64,
        is_get_or_head: bool,
    ) -> Option<StatusCode> {
        let modified_secs = last_modified_ms / 1000;
        let secs = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs()
        };
        if let Some(im) = &self.if_match {
            if !etag_list_matches(im, etag) {
                return Some(StatusCode::PRECONDITION_FAILED);
            }
        } else if let Some(t) = self.if_unmodified_since {
            if modified_secs > secs(t) {
                return Some(StatusCode::PRECONDITION_FAILED);
            }
        }
        if let Some(inm) = &self.if_none_match {
            if etag_list_matches(inm, etag) {
                return Some(if is_get_or_head {
                    StatusCode::NOT_MODIFIED
                } else {
                    StatusCode::PRECONDITION_FAILED
                });
            }
        } else if let Some(t) = self.if_modified_since {
            if is_get_or_head && modified_secs <= secs(t) {
                return Some(StatusCode::NOT_MODIFIED);
            }
        }
        None
    }
}

/// `*` or a comma-separated list of (possibly weak) entity tags.
fn etag_list_matches(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/").trim_matches('"') == etag)
}

/// An ETag as a header value: quoted.
pub fn quoted(etag: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(&format!("\"{etag}\""))
        .unwrap_or(http::HeaderValue::from_static("\"\""))
}

/// Latest time an HTTP date can carry, 9999-12-31T23:59:59.999Z, in ms since the epoch.
const MAX_HTTP_DATE_MS: u64 = 253_402_300_799_999;

/// `ms` as an HTTP date. `httpdate` panics on times past year 9999, which a stored u64 can
/// hold (nothing checks the origin's or a peer's timestamps): those are written as the last
/// second of 9999.
pub fn http_date(ms: u64) -> String {
    let at = UNIX_EPOCH.checked_add(Duration::from_millis(ms.min(MAX_HTTP_DATE_MS)));
    httpdate::fmt_http_date(at.unwrap_or(UNIX_EPOCH))
}

/// Why [`drain_into`] stopped.
pub enum DrainError {
    /// The body ran past the limit.
    TooLong,
    /// The client's (or peer's) stream broke after this many bytes were written.
    Stream(u64, hyper::Error),
    Store(nearcache_shards::StoreError),
}

/// Writes a request body into an object writer, at most `limit` bytes. On an error the
/// caller drops the writer, which removes the partial file: nothing half-written is kept.
pub async fn drain_into(
    writer: &mut nearcache_shards::ObjectWriter,
    body: &mut hyper::body::Incoming,
    limit: u64,
) -> Result<(), DrainError> {
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| DrainError::Stream(writer.written(), e))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if writer.written().saturating_add(data.len() as u64) > limit {
            return Err(DrainError::TooLong);
        }
        writer.write(data).await.map_err(DrainError::Store)?;
    }
    Ok(())
}

/// The percent-decoded value of a query parameter.
pub fn query_param(req: &http::Request<hyper::body::Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// Why [`read_small_body`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SmallBodyError {
    #[error("this request's body is limited to {0} bytes")]
    TooLarge(usize),
    #[error("reading the request body: {0}")]
    Incomplete(String),
}

/// Reads a small request body whole, at most `limit` bytes.
pub async fn read_small_body(
    body: hyper::body::Incoming,
    limit: usize,
) -> Result<bytes::Bytes, SmallBodyError> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(SmallBodyError::TooLarge(limit))
        }
        Err(e) => Err(SmallBodyError::Incomplete(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_range(h: Option<&str>, size: u64) -> Result<Option<Range<u64>>, Unsatisfiable> {
        super::resolve_range(parse_byte_range(h), size)
    }

    #[test]
    fn ranges() {
        assert_eq!(resolve_range(Some("bytes=0-9"), 100).unwrap(), Some(0..10));
        assert_eq!(
            resolve_range(Some("bytes=90-"), 100).unwrap(),
            Some(90..100)
        );
        assert_eq!(
            resolve_range(Some("bytes=-10"), 100).unwrap(),
            Some(90..100)
        );
        assert_eq!(
            resolve_range(Some("bytes=-1000"), 100).unwrap(),
            Some(0..100)
        );
        assert_eq!(
            resolve_range(Some("bytes=50-1000"), 100).unwrap(),
            Some(50..100)
        );
        assert_eq!(resolve_range(Some("bytes=0-1,5-6"), 100).unwrap(), None);
        assert_eq!(resolve_range(Some("items=0-1"), 100).unwrap(), None);
        assert_eq!(resolve_range(Some("bytes=9-2"), 100).unwrap(), None);
        assert_eq!(resolve_range(None, 100).unwrap(), None);
        let unsat = |size| Err(Unsatisfiable { size });
        assert_eq!(resolve_range(Some("bytes=100-"), 100), unsat(100));
        assert_eq!(resolve_range(Some("bytes=-0"), 100), unsat(100));
        assert_eq!(resolve_range(Some("bytes=0-"), 0), unsat(0));
        assert_eq!(resolve_range(Some("bytes=-5"), 0), unsat(0));
    }

    /// Regression: an end of 2^64-1 overflowed `end + 1`, which panicked a shard (and,
    /// with panic = abort, the node) or answered 206 with an empty body.
    #[test]
    fn range_end_at_u64_max_is_clamped_to_the_object() {
        let max = u64::MAX;
        assert_eq!(
            resolve_range(Some(&format!("bytes=1-{max}")), 100).unwrap(),
            Some(1..100)
        );
        assert_eq!(
            resolve_range(Some(&format!("bytes=0-{max}")), 100).unwrap(),
            Some(0..100)
        );
        assert_eq!(
            resolve_range(Some(&format!("bytes={max}-{max}")), 100)
                .unwrap_err()
                .size,
            100
        );
        assert_eq!(
            resolve_range(Some(&format!("bytes=-{max}")), 100).unwrap(),
            Some(0..100)
        );
        // One past u64::MAX does not parse: the header is ignored, the whole object served.
        assert_eq!(
            resolve_range(Some("bytes=0-18446744073709551616"), 100).unwrap(),
            None
        );
        assert_eq!(resolve_range(Some("bytes=+1-5"), 100).unwrap(), None);
    }

    #[test]
    fn any_range_header_resolves_inside_the_object() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let edge = [0, 1, 2, 99, 100, 101, u64::MAX - 1, u64::MAX];
        for _ in 0..20_000 {
            let pick = |r: u64| {
                if r % 3 == 0 {
                    edge[(r as usize / 3) % edge.len()]
                } else {
                    r % 256
                }
            };
            let (a, b, size) = (pick(next()), pick(next()), pick(next()));
            for h in [
                format!("bytes={a}-{b}"),
                format!("bytes={a}-"),
                format!("bytes=-{b}"),
            ] {
                if let Ok(Some(r)) = resolve_range(Some(&h), size) {
                    assert!(r.start < r.end && r.end <= size, "{h} on {size}: {r:?}");
                }
            }
        }
    }

    #[test]
    fn conditions() {
        let c = Conditions {
            if_none_match: Some("\"abc\"".into()),
            ..Default::default()
        };
        assert_eq!(c.evaluate("abc", 0, true), Some(StatusCode::NOT_MODIFIED));
        assert_eq!(c.evaluate("abd", 0, true), None);
        let c = Conditions {
            if_match: Some("\"x\", \"abc\"".into()),
            ..Default::default()
        };
        assert_eq!(c.evaluate("abc", 0, true), None);
        assert_eq!(
            c.evaluate("zzz", 0, true),
            Some(StatusCode::PRECONDITION_FAILED)
        );
        let t = UNIX_EPOCH + Duration::from_secs(1000);
        let c = Conditions {
            if_modified_since: Some(t),
            ..Default::default()
        };
        assert_eq!(
            c.evaluate("e", 1_000_999, true),
            Some(StatusCode::NOT_MODIFIED)
        );
        assert_eq!(c.evaluate("e", 1_001_000, true), None);
    }
}

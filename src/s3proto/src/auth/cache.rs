//! Presigned reads verified before. A presigned URL is made to be fetched again and again
//! (a shared download link, a page of images) until it expires; each fetch of the same
//! URL carries the same signature over the same bytes, so its verification gives the same
//! answer every time except for the clock. The cache keeps that answer per signature with
//! the exact request it was given for, and answers it again only for a byte-identical
//! request (method, path and query, authority, every signed header and every `x-amz-*`
//! header) under the same [`KeyStore`], while the clock is inside the URL's validity
//! window. Anything else, and every request with an Authorization header, is verified in
//! full.
//!
//! Only reads (GET, HEAD) without a signed payload hash are kept: their answer carries
//! nothing about a body.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, Method};

use super::{
    parse_amz_date, parse_query, parse_signed_headers, verify_head, AuthError, BodyCheck, KeyStore,
    Verified, AUTHORIZATION, MAX_SKEW,
};

/// Verifications remembered per cache (one per shard thread): a few thousand links in
/// use at once, about half a KiB each.
pub const PRESIGNED_CACHE_ENTRIES: usize = 4096;

/// See the module docs. Not shared between threads: each shard keeps its own.
pub struct PresignedCache {
    /// By the `X-Amz-Signature` value as sent. Only verified signatures get in, so the
    /// keys are not the sender's choice: foldhash, not SipHash.
    entries: HashMap<Box<str>, Entry, foldhash::fast::RandomState>,
    /// Insertion order, for dropping the oldest when full.
    order: VecDeque<Box<str>>,
    capacity: usize,
    /// The header bytes of the request being looked up (kept to reuse its allocation).
    scratch: Vec<u8>,
    hits: u64,
}

struct Entry {
    store: u64,
    method: Method,
    authority: Option<Box<str>>,
    path_and_query: Box<str>,
    /// The signed header names, as `X-Amz-SignedHeaders` lists them.
    signed: Box<[HeaderName]>,
    /// [`header_bytes`] of the verified request.
    headers: Box<[u8]>,
    verified: Verified,
    /// The clock must be within these (inclusive), as [`verify_head`] checks them.
    valid_from: SystemTime,
    valid_until: SystemTime,
}

impl Default for PresignedCache {
    fn default() -> Self {
        PresignedCache::with_capacity(PRESIGNED_CACHE_ENTRIES)
    }
}

impl PresignedCache {
    pub fn with_capacity(capacity: usize) -> Self {
        PresignedCache {
            entries: HashMap::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            scratch: Vec::new(),
            hits: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Requests answered from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// [`verify_head`], answered from the cache for a presigned read verified before.
    pub fn verify_head(
        &mut self,
        parts: &http::request::Parts,
        keys: &KeyStore,
        now: SystemTime,
    ) -> Result<Verified, AuthError> {
        let cacheable = matches!(parts.method, Method::GET | Method::HEAD)
            && !parts.headers.contains_key(AUTHORIZATION);
        let Some(signature) = cacheable
            .then(|| presigned_signature(parts.uri.query().unwrap_or("")))
            .flatten()
        else {
            return verify_head(parts, keys, now);
        };
        if let Some(e) = self.entries.get(signature) {
            if e.store == keys.id
                && e.method == parts.method
                && e.authority.as_deref() == parts.uri.authority().map(|a| a.as_str())
                && Some(&*e.path_and_query) == parts.uri.path_and_query().map(|p| p.as_str())
                && (e.valid_from..=e.valid_until).contains(&now)
            {
                header_bytes(&parts.headers, &e.signed, &mut self.scratch);
                if *self.scratch == *e.headers {
                    self.hits = self.hits.saturating_add(1);
                    return Ok(e.verified.clone());
                }
            }
        }
        let verified = verify_head(parts, keys, now)?;
        if verified.presigned && matches!(verified.body, BodyCheck::None) {
            self.remember(signature, parts, keys, &verified);
        }
        Ok(verified)
    }

    fn remember(
        &mut self,
        signature: &str,
        parts: &http::request::Parts,
        keys: &KeyStore,
        verified: &Verified,
    ) {
        // Verified already: these parse. Anything unexpected just skips the cache.
        let query = parse_query(parts.uri.query().unwrap_or(""));
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k.as_ref() == name.as_bytes())
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
        };
        let (Some(date), Some(expires), Some(signed)) = (
            param("X-Amz-Date").and_then(parse_amz_date),
            param("X-Amz-Expires").and_then(|e| e.parse::<u64>().ok()),
            param("X-Amz-SignedHeaders").and_then(|s| parse_signed_headers(s).ok()),
        ) else {
            return;
        };
        let Ok(signed) = signed
            .iter()
            .map(|h| HeaderName::from_bytes(h.as_bytes()))
            .collect::<Result<Box<[HeaderName]>, _>>()
        else {
            return;
        };
        let (Some(valid_from), Some(valid_until), Some(pq)) = (
            // A clock this far behind the URL's date is refused as skewed.
            Some(date.checked_sub(MAX_SKEW).unwrap_or(SystemTime::UNIX_EPOCH)),
            date.checked_add(Duration::from_secs(expires)),
            parts.uri.path_and_query(),
        ) else {
            return;
        };
        let mut headers = Vec::new();
        header_bytes(&parts.headers, &signed, &mut headers);
        let entry = Entry {
            store: keys.id,
            method: parts.method.clone(),
            authority: parts.uri.authority().map(|a| a.as_str().into()),
            path_and_query: pq.as_str().into(),
            signed,
            headers: headers.into(),
            verified: verified.clone(),
            valid_from,
            valid_until,
        };
        let key: Box<str> = signature.into();
        if self.entries.insert(key.clone(), entry).is_none() {
            self.order.push_back(key);
        }
        while self.entries.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
    }
}

/// The `X-Amz-Signature` value of a query, as sent, when it has one.
fn presigned_signature(query: &str) -> Option<&str> {
    crate::query::last_raw_value(query, "X-Amz-Signature").filter(|v| !v.is_empty())
}

/// Every value of the signed headers, then every `x-amz-*` header (whose presence
/// [`verify_head`] also checks), in request order.
fn header_bytes(headers: &HeaderMap, signed: &[HeaderName], out: &mut Vec<u8>) {
    out.clear();
    let mut put = |name: &HeaderName, value: &http::HeaderValue| {
        out.extend_from_slice(name.as_str().as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    };
    for name in signed {
        for value in headers.get_all(name) {
            put(name, value);
        }
    }
    for (name, value) in headers {
        if name.as_str().starts_with("x-amz-") {
            put(name, value);
        }
    }
}

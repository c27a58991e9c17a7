//! AWS Signature Version 4 verification for the S3 API (sans-IO: the caller hands in the
//! request head, the body bytes as they arrive, and the current time).
//!
//! Contract (used by the S3 operation handlers):
//!
//! ```ignore
//! pub struct Credential { pub access_key: String, pub secret_key: String, pub buckets: Vec<String>, pub read_only: bool }
//! pub struct KeyStore { .. }               // built from config; lookups by access key
//! impl KeyStore { pub fn new(creds: Vec<Credential>) -> Self; pub fn get(&self, ak: &str) -> Option<&Credential>; }
//!
//! /// Verifies the request head (Authorization header or presigned query). On success says
//! /// who signed and how the body must be checked.
//! pub fn verify_head(parts: &http::request::Parts, keys: &KeyStore, now: SystemTime) -> Result<Verified, AuthError>;
//! pub struct Verified { pub access_key: String, pub body: BodyCheck, .. }
//! pub enum BodyCheck {
//!     None,                         // UNSIGNED-PAYLOAD (and presigned URLs)
//!     Sha256(String),               // x-amz-content-sha256 hex: body must hash to it
//!     SignedChunks(ChunkSigner),    // STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]
//!     UnsignedChunks,               // STREAMING-UNSIGNED-PAYLOAD-TRAILER
//! }
//! /// Turns the raw request body into the object's bytes, verifying as it goes.
//! pub struct BodyDecoder { .. }
//! impl BodyDecoder {
//!     pub fn new(check: BodyCheck, decoded_len: Option<u64>) -> Self;
//!     /// Feed raw bytes; returns decoded bytes available so far (possibly empty).
//!     pub fn feed(&mut self, raw: Bytes) -> Result<Vec<Bytes>, AuthError>;
//!     /// End of the raw body: checks final chunk / trailer checksum / sha256.
//!     pub fn finish(self) -> Result<(), AuthError>;
//! }
//! pub enum AuthError { SignatureDoesNotMatch(String), AccessDenied(String), RequestTimeTooSkewed(String),
//!     InvalidAccessKeyId(String), AuthorizationHeaderMalformed(String), XAmzContentSHA256Mismatch(String),
//!     IncompleteBody(String), BadDigest(String), InvalidRequest(String), MissingSecurityHeader(String) }
//! impl AuthError { pub fn code(&self) -> &'static str; pub fn status(&self) -> http::StatusCode; pub fn message(&self) -> String; }
//! ```
//!
//! Additions beyond the contract above (nothing in it was renamed):
//!
//! ```ignore
//! pub struct Verified { pub access_key: String, pub body: BodyCheck, pub presigned: bool,
//!     pub region: String, pub trailer: Option<ChecksumAlgorithm> }   // x-amz-trailer, if declared
//! impl BodyCheck { pub fn is_chunked(&self) -> bool }      // body is aws-chunked: decode it
//! impl BodyDecoder {
//!     /// `new`, requiring (and checking) the trailer `x-amz-trailer` declared.
//!     pub fn with_trailer(check: BodyCheck, decoded_len: Option<u64>, trailer: Option<ChecksumAlgorithm>) -> Self;
//!     /// Like `finish`, and returns the verified trailing checksum (algorithm, base64), if any.
//!     pub fn finish_checksum(self) -> Result<Option<(ChecksumAlgorithm, String)>, AuthError>;
//!     pub fn decoded_len(&self) -> u64;                    // decoded bytes returned so far
//! }
//! pub enum ChecksumAlgorithm { Crc32, Crc32c, Crc64Nvme, Sha1, Sha256 }
//! /// Content-MD5 and x-amz-checksum-<alg> request headers, checked over the decoded body.
//! pub struct ChecksumCheck { .. }
//! impl ChecksumCheck {
//!     pub fn from_headers(headers: &http::HeaderMap) -> Result<Self, AuthError>; // malformed → InvalidRequest
//!                                                      // (a malformed Content-MD5 → InvalidDigest)
//!     pub fn is_empty(&self) -> bool;                      // nothing to check
//!     pub fn update(&mut self, data: &[u8]);
//!     pub fn finish(self) -> Result<(), AuthError>;        // mismatch → BadDigest
//!     pub fn checksum(&self) -> Option<(ChecksumAlgorithm, &str)>; // the declared x-amz-checksum
//! }
//! ```
//!
//! Policy, where S3 leaves a choice:
//!
//! - No `Authorization` header and no `X-Amz-Algorithm` query parameter is anonymous access,
//!   refused as S3 refuses it for a private bucket: `AccessDenied` (403).
//! - nearcache is regionless: any region in the credential scope is accepted (and signed
//!   with), reported in [`Verified::region`]. The service must be `s3`, the scope date must be
//!   the request date (`x-amz-date`, else `Date`), and that date within 15 minutes of `now`.
//! - The canonical URI is computed from the path as sent: split on `/`, each segment
//!   percent-decoded and re-encoded with everything but `A-Za-z0-9-._~` encoded (so `%2F` stays
//!   `%2F` and `/` stays `/`). Clients that sign the raw path verbatim (leaving e.g. `!` or `*`
//!   unencoded) are accepted too: if the raw path differs from that form, it is tried second.
//! - Query strings decode `+` as space (as the SDK signers do) and `%XX`, then re-encode.
//! - Every `x-amz-*` request header must be signed (`AccessDenied`, as S3), except
//!   `x-amz-content-sha256`, whose value is signed as the payload hash anyway.
//! - Errors about presigned query parameters use `AuthorizationHeaderMalformed` (S3 says
//!   `AuthorizationQueryParametersError`, which the contract's enum has no variant for).
//! - A missing `x-amz-content-sha256` on header auth is `MissingSecurityHeader`.
//! - For `STREAMING-UNSIGNED-PAYLOAD-TRAILER`, the variant carries no data: the server passes
//!   [`Verified::trailer`] (`x-amz-trailer`) to [`BodyDecoder::with_trailer`], which then
//!   requires that trailer and checks it (a body cut off before it is `IncompleteBody`, a
//!   trailer section without it `InvalidRequest`, a wrong value `BadDigest`). Without a
//!   declared trailer (`BodyDecoder::new`, or no `x-amz-trailer`) the decoder computes all
//!   five checksums and checks the one named, if any; CRCs are cheap, SHA-1/256 cost CPU.

#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unwrap_used,
        clippy::expect_used
    )
)]

mod body;
mod cache;
#[cfg(test)]
mod tests;

pub use cache::{PresignedCache, PRESIGNED_CACHE_ENTRIES};

pub use body::{parse_content_md5, BodyDecoder, ChecksumAlgorithm, ChecksumCheck};

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};
use http::header::{HeaderMap, AUTHORIZATION};
use http::StatusCode;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The only algorithm accepted (SigV4a's `AWS4-ECDSA-P256-SHA256` is not supported).
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Largest allowed clock difference between the request date and `now`.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// Longest presigned URL lifetime S3 accepts (`X-Amz-Expires`), one week.
pub const MAX_PRESIGN_EXPIRES: u64 = 604_800;
/// `x-amz-content-sha256` of an empty body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// `x-amz-content-sha256` values other than a hex SHA-256.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
pub const STREAMING_PAYLOAD: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
pub const STREAMING_PAYLOAD_TRAILER: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER";
pub const STREAMING_UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";

/// Header names read on every signed request: constants, so a lookup only hashes them.
const X_AMZ_DATE: http::HeaderName = http::HeaderName::from_static("x-amz-date");
const X_AMZ_CONTENT_SHA256: http::HeaderName =
    http::HeaderName::from_static("x-amz-content-sha256");
const X_AMZ_TRAILER: http::HeaderName = http::HeaderName::from_static("x-amz-trailer");

/// Bytes left unencoded in canonical URI segments and query keys/values: `A-Za-z0-9-._~`.
const CANONICAL: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

// ---------------------------------------------------------------------------------------------
// Errors

/// A verification failure, carrying S3's error code, HTTP status and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// 403: the signature (header, query, chunk or trailer) is wrong.
    #[error("SignatureDoesNotMatch: {0}")]
    SignatureDoesNotMatch(String),
    /// 403: anonymous request, expired presigned URL, unsigned `x-amz-*` header, missing date.
    #[error("AccessDenied: {0}")]
    AccessDenied(String),
    /// 403: request date more than 15 minutes from now.
    #[error("RequestTimeTooSkewed: {0}")]
    RequestTimeTooSkewed(String),
    /// 403: unknown access key.
    #[error("InvalidAccessKeyId: {0}")]
    InvalidAccessKeyId(String),
    /// 400: unparsable Authorization header or presigned query parameters.
    #[error("AuthorizationHeaderMalformed: {0}")]
    AuthorizationHeaderMalformed(String),
    /// 400: body does not hash to `x-amz-content-sha256`.
    #[error("XAmzContentSHA256Mismatch: {0}")]
    XAmzContentSHA256Mismatch(String),
    /// 400: body shorter or longer than declared, or truncated aws-chunked body.
    #[error("IncompleteBody: {0}")]
    IncompleteBody(String),
    /// 400: Content-MD5 or x-amz-checksum mismatch.
    #[error("BadDigest: {0}")]
    BadDigest(String),
    /// 400: a Content-MD5 header that is empty or not the base64 of 16 bytes.
    #[error("InvalidDigest: {0}")]
    InvalidDigest(String),
    /// 400: malformed or unsupported request (aws-chunked framing, checksum headers, …).
    #[error("InvalidRequest: {0}")]
    InvalidRequest(String),
    /// 400: a required header is missing (`x-amz-content-sha256`).
    #[error("MissingSecurityHeader: {0}")]
    MissingSecurityHeader(String),
}

impl AuthError {
    /// S3's error code, for the `<Code>` element.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::SignatureDoesNotMatch(_) => "SignatureDoesNotMatch",
            AuthError::AccessDenied(_) => "AccessDenied",
            AuthError::RequestTimeTooSkewed(_) => "RequestTimeTooSkewed",
            AuthError::InvalidAccessKeyId(_) => "InvalidAccessKeyId",
            AuthError::AuthorizationHeaderMalformed(_) => "AuthorizationHeaderMalformed",
            AuthError::XAmzContentSHA256Mismatch(_) => "XAmzContentSHA256Mismatch",
            AuthError::IncompleteBody(_) => "IncompleteBody",
            AuthError::BadDigest(_) => "BadDigest",
            AuthError::InvalidDigest(_) => "InvalidDigest",
            AuthError::InvalidRequest(_) => "InvalidRequest",
            AuthError::MissingSecurityHeader(_) => "MissingSecurityHeader",
        }
    }

    /// The HTTP status S3 answers this error with.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::SignatureDoesNotMatch(_)
            | AuthError::AccessDenied(_)
            | AuthError::RequestTimeTooSkewed(_)
            | AuthError::InvalidAccessKeyId(_) => StatusCode::FORBIDDEN,
            AuthError::AuthorizationHeaderMalformed(_)
            | AuthError::XAmzContentSHA256Mismatch(_)
            | AuthError::IncompleteBody(_)
            | AuthError::BadDigest(_)
            | AuthError::InvalidDigest(_)
            | AuthError::InvalidRequest(_)
            | AuthError::MissingSecurityHeader(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Human-readable message, for the `<Message>` element.
    pub fn message(&self) -> String {
        self.msg().to_owned()
    }

    fn msg(&self) -> &str {
        match self {
            AuthError::SignatureDoesNotMatch(m)
            | AuthError::AccessDenied(m)
            | AuthError::RequestTimeTooSkewed(m)
            | AuthError::InvalidAccessKeyId(m)
            | AuthError::AuthorizationHeaderMalformed(m)
            | AuthError::XAmzContentSHA256Mismatch(m)
            | AuthError::IncompleteBody(m)
            | AuthError::BadDigest(m)
            | AuthError::InvalidDigest(m)
            | AuthError::InvalidRequest(m)
            | AuthError::MissingSecurityHeader(m) => m,
        }
    }
}

fn sig_mismatch() -> AuthError {
    AuthError::SignatureDoesNotMatch(
        "The request signature we calculated does not match the signature you provided. \
         Check your key and signing method."
            .into(),
    )
}

fn malformed(msg: impl Into<String>) -> AuthError {
    AuthError::AuthorizationHeaderMalformed(msg.into())
}

// ---------------------------------------------------------------------------------------------
// Keys

/// One access key from the config.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub access_key: String,
    pub secret_key: String,
    /// Buckets this key may use (the handlers decide what an empty list means).
    pub buckets: Vec<String>,
    /// Only reads are allowed.
    pub read_only: bool,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("buckets", &self.buckets)
            .field("read_only", &self.read_only)
            .finish()
    }
}

/// The configured credentials, looked up by access key. A later duplicate key replaces an
/// earlier one.
#[derive(Debug, Clone)]
pub struct KeyStore {
    by_key: HashMap<String, Credential>,
    signing: SigningKeys,
    /// Names this set of credentials (its clones share it) for [`PresignedCache`]: a
    /// verification remembered under one store is never answered under another.
    id: u64,
}

impl Default for KeyStore {
    fn default() -> Self {
        KeyStore::new(Vec::new())
    }
}

impl KeyStore {
    pub fn new(creds: Vec<Credential>) -> Self {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let by_key = creds
            .into_iter()
            .map(|c| (c.access_key.clone(), c))
            .collect();
        KeyStore {
            by_key,
            signing: SigningKeys::default(),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    pub fn get(&self, ak: &str) -> Option<&Credential> {
        self.by_key.get(ak)
    }
}

/// Most signing keys remembered; past it the set starts over (a key is one per access key,
/// day and region in use, so this is only reached by many regions or keys at once).
const SIGNING_KEYS_MAX: usize = 1024;

/// Signing keys (four HMACs each) of requests that verified, by (access key, date,
/// region): a hot client's requests skip the derivation. Read without locks from every
/// shard; only keys that signed a valid request are remembered, so forged requests cannot
/// fill it. Clones share it (their secrets are the same).
#[derive(Clone, Default)]
struct SigningKeys(std::sync::Arc<arc_swap::ArcSwap<HashMap<String, Vec<Remembered>>>>);

/// A signing key: its date and region, and the key (by access key in [`SigningKeys`]).
type Remembered = (String, String, [u8; 32]);

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n: usize = self.0.load().values().map(Vec::len).sum();
        write!(f, "SigningKeys({n} remembered)")
    }
}

impl SigningKeys {
    /// The signing key of `cred` for the scope, and whether it was remembered.
    fn get(&self, cred: &Credential, scope: &Scope<'_>) -> ([u8; 32], bool) {
        let known = self.0.load().get(&cred.access_key).and_then(|v| {
            v.iter()
                .find(|(d, r, _)| d == scope.date && r == scope.region)
                .map(|(_, _, k)| *k)
        });
        match known {
            Some(k) => (k, true),
            None => (
                signing_key(&cred.secret_key, scope.date, scope.region),
                false,
            ),
        }
    }

    /// Remembers a key that just verified a request.
    fn remember(&self, cred: &Credential, scope: &Scope<'_>, key: [u8; 32]) {
        self.0.rcu(|m| {
            let n: usize = m.values().map(Vec::len).sum();
            let mut m = if n >= SIGNING_KEYS_MAX {
                HashMap::new()
            } else {
                HashMap::clone(m)
            };
            let v = m.entry(cred.access_key.clone()).or_default();
            // Yesterday's keys of this access key are not needed once today's verified.
            v.retain(|(d, r, _)| !(r == scope.region && d.as_str() < scope.date));
            if !v
                .iter()
                .any(|(d, r, _)| d == scope.date && r == scope.region)
            {
                v.push((scope.date.to_owned(), scope.region.to_owned(), key));
            }
            m
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Verification result

/// A request head whose signature checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Who signed it: look the [`Credential`] up in the [`KeyStore`] for its permissions.
    pub access_key: String,
    /// How the body must be checked: hand it to [`BodyDecoder::new`].
    pub body: BodyCheck,
    /// Signed with query parameters (a presigned URL) rather than the Authorization header.
    pub presigned: bool,
    /// The region of the credential scope (any is accepted; nearcache is regionless).
    pub region: String,
    /// The trailing checksum declared by `x-amz-trailer`, if any.
    pub trailer: Option<ChecksumAlgorithm>,
}

/// How the request body must be verified (and decoded).
#[derive(Debug, Clone)]
pub enum BodyCheck {
    /// `UNSIGNED-PAYLOAD`, and presigned URLs without `X-Amz-Content-Sha256`.
    None,
    /// `x-amz-content-sha256` (lowercase hex): the body must hash to it.
    Sha256(String),
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`: aws-chunked with chained signatures.
    SignedChunks(ChunkSigner),
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`: aws-chunked, integrity from the trailing checksum.
    UnsignedChunks,
}

impl BodyCheck {
    /// The body is aws-chunked and must go through [`BodyDecoder`] to get the object's bytes.
    pub fn is_chunked(&self) -> bool {
        matches!(self, BodyCheck::SignedChunks(_) | BodyCheck::UnsignedChunks)
    }
}

/// What verifying chunk signatures needs: the signing key, the request's date and scope, and
/// the seed (header) signature the chain starts from.
#[derive(Clone)]
pub struct ChunkSigner {
    pub(crate) key: [u8; 32],
    pub(crate) amz_date: String,
    pub(crate) scope: String,
    pub(crate) seed: [u8; 32],
    /// `-TRAILER` variant: trailing headers with their own signature follow the last chunk.
    pub(crate) trailer: bool,
    /// The checksum algorithm declared by `x-amz-trailer`.
    pub(crate) trailer_alg: Option<ChecksumAlgorithm>,
}

impl fmt::Debug for ChunkSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkSigner")
            .field("amz_date", &self.amz_date)
            .field("scope", &self.scope)
            .field("seed", &hex::encode(self.seed))
            .field("trailer", &self.trailer)
            .field("trailer_alg", &self.trailer_alg)
            .finish_non_exhaustive()
    }
}

impl ChunkSigner {
    /// Signature of one chunk (`data` may be empty: the final chunk), chained on `prev`.
    pub(crate) fn chunk_signature(&self, prev: &[u8; 32], data_sha256: &[u8; 32]) -> [u8; 32] {
        let sts = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{}\n{}\n{}",
            self.amz_date,
            self.scope,
            hex::encode(prev),
            EMPTY_SHA256,
            hex::encode(data_sha256)
        );
        hmac(&self.key, sts.as_bytes())
    }

    /// Signature of the trailing headers (`canonical` = `name:value\n` per trailer).
    pub(crate) fn trailer_signature(&self, prev: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
        let sts = format!(
            "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{}\n{}",
            self.amz_date,
            self.scope,
            hex::encode(prev),
            hex::encode(sha256(canonical))
        );
        hmac(&self.key, sts.as_bytes())
    }
}

// ---------------------------------------------------------------------------------------------
// Head verification

/// Verifies the request head (Authorization header or presigned query). On success says who
/// signed and how the body must be checked.
pub fn verify_head(
    parts: &http::request::Parts,
    keys: &KeyStore,
    now: SystemTime,
) -> Result<Verified, AuthError> {
    let query = parse_query(parts.uri.query().unwrap_or(""));
    let presigned = query.iter().any(|(k, _)| k.as_ref() == b"X-Amz-Algorithm");
    let auth = parts.headers.get(AUTHORIZATION);
    match (auth, presigned) {
        (Some(_), true) => Err(AuthError::InvalidRequest(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter \
             or the Authorization header should be specified"
                .into(),
        )),
        (Some(value), false) => {
            let value = value
                .to_str()
                .map_err(|_| malformed("The authorization header is not ASCII"))?;
            verify_header_auth(parts, &query, value, keys, now)
        }
        (None, true) => verify_presigned(parts, &query, keys, now),
        (None, false) => Err(AuthError::AccessDenied(
            "Anonymous access is not allowed: sign the request with AWS Signature Version 4".into(),
        )),
    }
}

/// The parsed `Credential=` value: `AK/DATE/REGION/s3/aws4_request`.
pub(crate) struct Scope<'a> {
    access_key: &'a str,
    date: &'a str,
    region: &'a str,
}

impl Scope<'_> {
    fn string(&self) -> String {
        format!("{}/{}/s3/aws4_request", self.date, self.region)
    }
}

pub(crate) fn parse_credential(cred: &str) -> Result<Scope<'_>, AuthError> {
    // As `rsplitn(5, '/')`: the access key is what is left before the last four.
    let mut ak = cred;
    let mut tail = [""; 4];
    for piece in &mut tail {
        let Some(i) = memchr::memrchr(b'/', ak.as_bytes()) else {
            return Err(malformed(format!(
                "The credential '{cred}' is mal-formed; expecting \
                 \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\"."
            )));
        };
        (ak, *piece) = crate::query::cut(ak, Some(i));
    }
    let [term, service, region, date] = tail;
    if ak.is_empty() || region.is_empty() {
        return Err(malformed(format!("The credential '{cred}' is mal-formed")));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(format!(
            "Invalid credential date \"{date}\". This date is not in yyyyMMdd format."
        )));
    }
    if service != "s3" {
        return Err(malformed(format!(
            "The authorization header is malformed; incorrect service \"{service}\". \
             This endpoint belongs to \"s3\"."
        )));
    }
    if term != "aws4_request" {
        return Err(malformed(format!(
            "The authorization header is malformed; incorrect terminal \"{term}\". \
             This endpoint uses \"aws4_request\"."
        )));
    }
    Ok(Scope {
        access_key: ak,
        date,
        region,
    })
}

pub(crate) struct AuthHeader<'a> {
    pub(crate) credential: &'a str,
    pub(crate) signed_headers: &'a str,
    pub(crate) signature: &'a str,
}

pub(crate) fn parse_auth_header(value: &str) -> Result<AuthHeader<'_>, AuthError> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| {
            let alg = value.split(' ').next().unwrap_or("");
            malformed(format!(
                "The authorization header is malformed; the authorization mechanism \
                 \"{alg}\" is not supported, use {ALGORITHM}"
            ))
        })?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    // The value is visible ASCII (HeaderValue::to_str), so ASCII trimming is all there is.
    for part in crate::query::split_byte(rest, b',') {
        let part = part.trim_ascii();
        if part.is_empty() {
            continue;
        }
        let (k, v) = part.split_once('=').ok_or_else(|| {
            malformed(format!(
                "The authorization header is malformed; the component \"{part}\" is not key=value"
            ))
        })?;
        let slot = match k.trim_ascii() {
            "Credential" => &mut cred,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut sig,
            _ => continue,
        };
        if slot.replace(v.trim_ascii()).is_some() {
            return Err(malformed(format!(
                "The authorization header is malformed; \"{k}\" appears twice"
            )));
        }
    }
    match (cred, signed, sig) {
        (Some(credential), Some(signed_headers), Some(signature)) => Ok(AuthHeader {
            credential,
            signed_headers,
            signature,
        }),
        _ => Err(malformed(
            "The authorization header is malformed; it must carry Credential, SignedHeaders \
             and Signature",
        )),
    }
}

fn verify_header_auth(
    parts: &http::request::Parts,
    query: &[QueryPair<'_>],
    value: &str,
    keys: &KeyStore,
    now: SystemTime,
) -> Result<Verified, AuthError> {
    let auth = parse_auth_header(value)?;
    let scope = parse_credential(auth.credential)?;
    let signature = parse_signature(auth.signature)?;
    let signed = parse_signed_headers(auth.signed_headers)?;
    let cred = lookup(keys, scope.access_key)?;

    // The request date: x-amz-date, else Date.
    let (amz_date, when) = match parts.headers.get(X_AMZ_DATE) {
        Some(v) => {
            let s = v.to_str().unwrap_or("");
            let t = parse_amz_date(s).ok_or_else(|| {
                AuthError::AccessDenied(format!("Invalid x-amz-date header \"{s}\""))
            })?;
            (Cow::Borrowed(s), t)
        }
        None => {
            let d = parts
                .headers
                .get(http::header::DATE)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| httpdate::parse_http_date(s).ok())
                .ok_or_else(|| {
                    AuthError::AccessDenied(
                        "AWS authentication requires a valid Date or x-amz-date header".into(),
                    )
                })?;
            (Cow::Owned(format_amz_date(d)), d)
        }
    };
    check_scope_date(&scope, &amz_date)?;
    check_skew(when, now)?;
    check_unsigned_amz_headers(&parts.headers, &signed)?;

    let payload = parts
        .headers
        .get(X_AMZ_CONTENT_SHA256)
        .ok_or_else(|| {
            AuthError::MissingSecurityHeader(
                "Missing required header for this request: x-amz-content-sha256".into(),
            )
        })?
        .to_str()
        .map_err(|_| bad_content_sha256())?;
    let (key, remembered) = keys.signing.get(cred, &scope);
    let scope_str = scope.string();
    check_signature(
        parts,
        query,
        &signed,
        auth.signed_headers,
        payload,
        &amz_date,
        &scope_str,
        &key,
        &signature,
        None,
    )?;
    if !remembered {
        keys.signing.remember(cred, &scope, key);
    }
    let trailer = declared_trailer(&parts.headers)?;
    let body = match payload {
        UNSIGNED_PAYLOAD => BodyCheck::None,
        STREAMING_PAYLOAD | STREAMING_PAYLOAD_TRAILER => BodyCheck::SignedChunks(ChunkSigner {
            key,
            amz_date: amz_date.into_owned(),
            scope: scope_str,
            seed: signature,
            trailer: payload == STREAMING_PAYLOAD_TRAILER,
            trailer_alg: trailer,
        }),
        STREAMING_UNSIGNED_TRAILER => BodyCheck::UnsignedChunks,
        p if is_sha256_hex(p) => BodyCheck::Sha256(p.to_ascii_lowercase()),
        p if p.starts_with("STREAMING-") => {
            return Err(AuthError::InvalidRequest(format!(
                "x-amz-content-sha256 \"{p}\" is not supported"
            )))
        }
        _ => return Err(bad_content_sha256()),
    };
    Ok(Verified {
        access_key: cred.access_key.clone(),
        body,
        presigned: false,
        region: scope.region.to_owned(),
        trailer,
    })
}

fn verify_presigned(
    parts: &http::request::Parts,
    query: &[QueryPair<'_>],
    keys: &KeyStore,
    now: SystemTime,
) -> Result<Verified, AuthError> {
    let param = |name: &str| -> Option<&str> {
        query
            .iter()
            .find(|(k, _)| k.as_ref() == name.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    let missing = || {
        malformed(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, \
             X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and \
             X-Amz-Expires parameters.",
        )
    };
    let algorithm = param("X-Amz-Algorithm").ok_or_else(missing)?;
    let credential = param("X-Amz-Credential").ok_or_else(missing)?;
    let amz_date = param("X-Amz-Date").ok_or_else(missing)?;
    let expires = param("X-Amz-Expires").ok_or_else(missing)?;
    let signed_headers = param("X-Amz-SignedHeaders").ok_or_else(missing)?;
    let signature = param("X-Amz-Signature").ok_or_else(missing)?;
    if algorithm != ALGORITHM {
        return Err(malformed(format!(
            "X-Amz-Algorithm only supports \"{ALGORITHM}\""
        )));
    }
    let scope = parse_credential(credential)?;
    let signature = parse_signature(signature)?;
    let signed = parse_signed_headers(signed_headers)?;
    let when = parse_amz_date(amz_date).ok_or_else(|| {
        malformed(format!(
            "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\", got \"{amz_date}\""
        ))
    })?;
    let expires: u64 = match expires.parse() {
        Ok(n) if (1..=MAX_PRESIGN_EXPIRES).contains(&n) => n,
        Ok(n) if n > MAX_PRESIGN_EXPIRES => {
            return Err(malformed(
                "X-Amz-Expires must be less than a week (in seconds) that is 604800",
            ))
        }
        _ => {
            return Err(malformed(
                "X-Amz-Expires should be a number between 1 and 604800",
            ))
        }
    };
    let cred = lookup(keys, scope.access_key)?;
    check_scope_date(&scope, amz_date)?;
    // `when` is at most year 9999 and `expires` a week: the sums cannot overflow, but a
    // failed addition is refused rather than trusted.
    if now.checked_add(MAX_SKEW).is_none_or(|latest| when > latest) {
        return Err(too_skewed());
    }
    if when
        .checked_add(Duration::from_secs(expires))
        .is_none_or(|end| now > end)
    {
        return Err(AuthError::AccessDenied("Request has expired".into()));
    }
    check_unsigned_amz_headers(&parts.headers, &signed)?;

    let payload = param("X-Amz-Content-Sha256").unwrap_or(UNSIGNED_PAYLOAD);
    let (key, remembered) = keys.signing.get(cred, &scope);
    check_signature(
        parts,
        query,
        &signed,
        signed_headers,
        payload,
        amz_date,
        &scope.string(),
        &key,
        &signature,
        Some("X-Amz-Signature"),
    )?;
    if !remembered {
        keys.signing.remember(cred, &scope, key);
    }
    let body = if is_sha256_hex(payload) {
        BodyCheck::Sha256(payload.to_ascii_lowercase())
    } else {
        BodyCheck::None
    };
    Ok(Verified {
        access_key: cred.access_key.clone(),
        body,
        presigned: true,
        region: scope.region.to_owned(),
        trailer: None,
    })
}

fn lookup<'a>(keys: &'a KeyStore, ak: &str) -> Result<&'a Credential, AuthError> {
    keys.get(ak).ok_or_else(|| {
        AuthError::InvalidAccessKeyId(
            "The AWS Access Key Id you provided does not exist in our records.".into(),
        )
    })
}

fn too_skewed() -> AuthError {
    AuthError::RequestTimeTooSkewed(
        "The difference between the request time and the current time is too large.".into(),
    )
}

fn bad_content_sha256() -> AuthError {
    AuthError::InvalidRequest(
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, \
         STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, STREAMING-UNSIGNED-PAYLOAD-TRAILER or a \
         valid sha256 value."
            .into(),
    )
}

fn check_scope_date(scope: &Scope<'_>, amz_date: &str) -> Result<(), AuthError> {
    if amz_date.get(..8) != Some(scope.date) {
        return Err(malformed(format!(
            "Invalid credential date \"{}\". This date is not the same as X-Amz-Date: \"{}\".",
            scope.date,
            amz_date.get(..8).unwrap_or(amz_date)
        )));
    }
    Ok(())
}

fn check_skew(when: SystemTime, now: SystemTime) -> Result<(), AuthError> {
    let diff = match now.duration_since(when) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if diff > MAX_SKEW {
        return Err(too_skewed());
    }
    Ok(())
}

fn parse_signature(s: &str) -> Result<[u8; 32], AuthError> {
    let mut out = [0u8; 32];
    if s.len() != 64 || const_hex::decode_to_slice(s, &mut out).is_err() {
        // A malformed signature cannot match any computed one.
        return Err(sig_mismatch());
    }
    Ok(out)
}

pub(crate) fn parse_signed_headers(s: &str) -> Result<Vec<&str>, AuthError> {
    let list: Vec<&str> = crate::query::split_byte(s, b';').collect();
    if list.iter().any(|h| {
        h.is_empty()
            || h.bytes()
                .any(|b| b.is_ascii_uppercase() || b.is_ascii_whitespace())
    }) {
        return Err(malformed(format!(
            "SignedHeaders \"{s}\" must be a ;-separated list of lowercase header names"
        )));
    }
    if !list.contains(&"host") {
        return Err(malformed("SignedHeaders must include \"host\""));
    }
    Ok(list)
}

/// S3 refuses `x-amz-*` headers that the signature does not cover.
fn check_unsigned_amz_headers(headers: &HeaderMap, signed: &[&str]) -> Result<(), AuthError> {
    let unsigned: Vec<&str> = headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| k.starts_with("x-amz-") && *k != "x-amz-content-sha256")
        .filter(|k| !signed.contains(k))
        .collect();
    if !unsigned.is_empty() {
        return Err(AuthError::AccessDenied(format!(
            "There were headers present in the request which were not signed: {}",
            unsigned.join(", ")
        )));
    }
    Ok(())
}

fn declared_trailer(headers: &HeaderMap) -> Result<Option<ChecksumAlgorithm>, AuthError> {
    let Some(v) = headers.get(X_AMZ_TRAILER) else {
        return Ok(None);
    };
    let name = v.to_str().unwrap_or("").trim().to_ascii_lowercase();
    match ChecksumAlgorithm::from_header_name(&name) {
        Some(alg) => Ok(Some(alg)),
        None => Err(AuthError::InvalidRequest(format!(
            "x-amz-trailer \"{name}\" is not a supported checksum header"
        ))),
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Builds the canonical request(s) and compares the signature in constant time. Two canonical
/// URIs are tried when the raw path differs from its canonical form (see the module doc).
#[expect(clippy::too_many_arguments, reason = "one call per auth kind")]
fn check_signature(
    parts: &http::request::Parts,
    query: &[QueryPair<'_>],
    signed: &[&str],
    signed_headers: &str,
    payload: &str,
    amz_date: &str,
    scope: &str,
    key: &[u8; 32],
    signature: &[u8; 32],
    exclude_param: Option<&str>,
) -> Result<(), AuthError> {
    let raw_path = parts.uri.path();
    let raw_path = if raw_path.is_empty() { "/" } else { raw_path };
    let canonical_uri = canonical_uri(raw_path);
    // Bytes, not a String: header values may carry obs-text (0x80-0xFF) that is not UTF-8,
    // and the signature covers those bytes as they were sent.
    let mut rest = Vec::with_capacity(512);
    rest.push(b'\n');
    if !push_raw_canonical_query(&mut rest, parts.uri.query().unwrap_or(""), exclude_param) {
        rest.extend_from_slice(canonical_query(query, exclude_param).as_bytes());
    }
    rest.push(b'\n');
    push_canonical_headers(&mut rest, parts, signed);
    rest.push(b'\n');
    rest.extend_from_slice(signed_headers.as_bytes());
    rest.push(b'\n');
    rest.extend_from_slice(payload.as_bytes());
    let method = parts.method.as_str();
    let other = (canonical_uri != raw_path).then_some(raw_path);
    let mut ok = subtle::Choice::from(0);
    for uri in std::iter::once(&*canonical_uri).chain(other) {
        // The canonical request is hashed in pieces, never assembled.
        let mut h = Sha256::new();
        h.update(method.as_bytes());
        h.update(b"\n");
        h.update(uri.as_bytes());
        h.update(&rest);
        let creq_hash: [u8; 32] = h.finalize().into();
        // The string to sign, fed to the HMAC in pieces.
        let mut hex = [0u8; 64];
        const_hex::encode_to_slice(creq_hash, &mut hex).map_err(|_| sig_mismatch())?;
        let computed = hmac_parts(
            key,
            &[
                ALGORITHM.as_bytes(),
                b"\n",
                amz_date.as_bytes(),
                b"\n",
                scope.as_bytes(),
                b"\n",
                &hex,
            ],
        );
        ok |= computed.ct_eq(signature);
    }
    if bool::from(ok) {
        Ok(())
    } else {
        Err(sig_mismatch())
    }
}

/// Bytes SigV4 leaves unescaped: `A-Za-z0-9-._~`.
const fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The canonical URI: each `/`-separated segment percent-decoded, then re-encoded with only
/// `A-Za-z0-9-._~` left as is.
pub(crate) fn canonical_uri(raw_path: &str) -> Cow<'_, str> {
    if raw_path.bytes().all(|b| b == b'/' || unreserved(b)) {
        // Nothing to decode or encode anywhere (the common case): the path as sent.
        return Cow::Borrowed(raw_path);
    }
    let mut out = String::with_capacity(raw_path.len().saturating_add(16));
    for (i, seg) in crate::query::split_byte(raw_path, b'/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if seg.bytes().all(unreserved) {
            // Nothing to decode or encode.
            out.push_str(seg);
            continue;
        }
        let decoded: Cow<'_, [u8]> = percent_encoding::percent_decode(seg.as_bytes()).into();
        out.extend(percent_encoding::percent_encode(&decoded, CANONICAL));
    }
    Cow::Owned(out)
}

/// A decoded query parameter: (name, value) bytes, borrowed from the query when nothing
/// in them was escaped.
pub(crate) type QueryPair<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// Query parameters as (decoded key, decoded value) bytes, in request order; `+` is a space.
pub(crate) fn parse_query(q: &str) -> Vec<QueryPair<'_>> {
    fn decode(s: &str) -> Cow<'_, [u8]> {
        if !crate::query::has_escapes(s) {
            Cow::Borrowed(s.as_bytes())
        } else if s.contains('+') {
            let plus: Vec<u8> = s
                .bytes()
                .map(|b| if b == b'+' { b' ' } else { b })
                .collect();
            Cow::Owned(percent_encoding::percent_decode(&plus).collect())
        } else {
            percent_encoding::percent_decode(s.as_bytes()).into()
        }
    }
    crate::query::raw_pairs(q)
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// The canonical query string: names and values percent-encoded, sorted by name then
/// value, joined with `&`.
fn canonical_query(query: &[QueryPair<'_>], exclude: Option<&str>) -> String {
    let mut pairs: Vec<(Cow<'_, str>, Cow<'_, str>)> = query
        .iter()
        .filter(|(k, _)| exclude.is_none_or(|x| k.as_ref() != x.as_bytes()))
        .map(|(k, v)| {
            (
                percent_encoding::percent_encode(k, CANONICAL).into(),
                percent_encoding::percent_encode(v, CANONICAL).into(),
            )
        })
        .collect();
    pairs.sort_unstable();
    let len = pairs
        .iter()
        .map(|(k, v)| k.len().saturating_add(v.len()).saturating_add(2))
        .fold(0usize, usize::saturating_add);
    let mut out = String::with_capacity(len);
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Appends the canonical query string straight from the raw query when the raw query is
/// canonical already: every name and value escaped exactly as SigV4 escapes them, every
/// pair with an `=`, pairs in sorted order (leaving out `exclude`). SDKs send presigned
/// URLs so; then nothing is decoded, re-encoded or sorted. Returns false (and appends
/// nothing) otherwise: the caller builds it from the decoded pairs.
fn push_raw_canonical_query(out: &mut Vec<u8>, raw: &str, exclude: Option<&str>) -> bool {
    fn upper_hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b.wrapping_sub(b'0')),
            b'A'..=b'F' => Some(b.wrapping_sub(b'A').wrapping_add(10)),
            _ => None,
        }
    }
    /// [`unreserved`] as a table, for the scan over runs of plain bytes.
    #[expect(
        clippy::indexing_slicing,
        reason = "a u8 indexes a 256-entry table; evaluated at compile time"
    )]
    const PLAIN: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0u8;
        loop {
            t[b as usize] = unreserved(b);
            if b == u8::MAX {
                break t;
            }
            b += 1;
        }
    };
    /// The end of the pair starting at `i` and where its `=` is, if the pair is escaped as
    /// SigV4 escapes (unreserved bytes as is, every other byte as `%XX`) and has one `=`.
    fn canonical_pair(b: &[u8], mut i: usize) -> Option<(usize, usize)> {
        let plain = |c: u8| PLAIN.get(usize::from(c)).copied().unwrap_or(false);
        let mut eq = None;
        while let Some(&c) = b.get(i) {
            if plain(c) {
                // Most bytes: skip the whole run of them.
                let run = b
                    .get(i..)
                    .unwrap_or_default()
                    .iter()
                    .position(|&c| !plain(c))
                    .unwrap_or(b.len().saturating_sub(i));
                i = i.saturating_add(run);
            } else if c == b'&' {
                break;
            } else if c == b'=' && eq.is_none() {
                eq = Some(i);
                i = i.saturating_add(1);
            } else if c == b'%' {
                match (
                    b.get(i.saturating_add(1)).copied().and_then(upper_hex),
                    b.get(i.saturating_add(2)).copied().and_then(upper_hex),
                ) {
                    (Some(h), Some(l)) if !unreserved(h.wrapping_mul(16).wrapping_add(l)) => {
                        i = i.saturating_add(3)
                    }
                    _ => return None,
                }
            } else {
                return None;
            }
        }
        Some((i, eq?))
    }
    if raw.is_empty() {
        return true;
    }
    let bytes = raw.as_bytes();
    let start = out.len();
    let mut prev: Option<(&str, &str)> = None;
    let mut at = 0;
    loop {
        let Some((end, eq)) = canonical_pair(bytes, at) else {
            out.truncate(start);
            return false;
        };
        // Splits at ASCII bytes ('=' and '&'), so on char boundaries.
        let (Some(k), Some(v)) = (raw.get(at..eq), raw.get(eq.saturating_add(1)..end)) else {
            out.truncate(start);
            return false;
        };
        // A canonical name is compared raw: it is its decoded form's escaping.
        if exclude != Some(k) {
            if prev.is_some_and(|p| p > (k, v)) {
                out.truncate(start);
                return false;
            }
            if prev.is_some() {
                out.push(b'&');
            }
            out.extend_from_slice(bytes.get(at..end).unwrap_or_default());
            prev = Some((k, v));
        }
        if end >= bytes.len() {
            return true;
        }
        at = end.saturating_add(1);
    }
}

/// `name:value\n` for each signed header, in SignedHeaders order. Values are the bytes sent
/// (not necessarily UTF-8), trimmed of spaces, runs of spaces collapsed, repeated headers
/// joined with `,`. `host` falls back to the URI's authority (HTTP/2 has no Host header).
fn push_canonical_headers(out: &mut Vec<u8>, parts: &http::request::Parts, signed: &[&str]) {
    for name in signed {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        let mut first = true;
        // The names every SDK signs are looked up as constants: a name given as a string
        // is parsed and validated on each lookup.
        let values = match *name {
            "host" => parts.headers.get_all(http::header::HOST),
            "x-amz-date" => parts.headers.get_all(X_AMZ_DATE),
            "x-amz-content-sha256" => parts.headers.get_all(X_AMZ_CONTENT_SHA256),
            other => parts.headers.get_all(other),
        };
        for v in values {
            if !first {
                out.push(b',');
            }
            first = false;
            push_trimmed(out, v.as_bytes());
        }
        if first && *name == "host" {
            if let Some(a) = parts.uri.authority() {
                out.extend_from_slice(a.as_str().as_bytes());
            }
        }
        out.push(b'\n');
    }
}

fn push_trimmed(out: &mut Vec<u8>, v: &[u8]) {
    // Most values have nothing to trim or collapse: copied whole.
    if v.first() != Some(&b' ') && v.last() != Some(&b' ') && !v.windows(2).any(|w| w == b"  ") {
        out.extend_from_slice(v);
        return;
    }
    let start = v.iter().position(|&b| b != b' ').unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |i| i.saturating_add(1));
    let mut prev_space = false;
    for &b in v.get(start..end).unwrap_or_default() {
        if b == b' ' {
            if prev_space {
                continue;
            }
            prev_space = true;
        } else {
            prev_space = false;
        }
        out.push(b);
    }
}

// ---------------------------------------------------------------------------------------------
// Crypto helpers

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub(crate) fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    hmac_parts(key, &[data])
}

/// HMAC-SHA256 of the concatenation of `parts`.
#[expect(
    clippy::expect_used,
    reason = "HMAC takes keys of any length: new_from_slice cannot fail"
)]
fn hmac_parts(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// HMAC chain "AWS4"+secret → date → region → "s3" → "aws4_request".
pub(crate) fn signing_key(secret: &str, date: &str, region: &str) -> [u8; 32] {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, b"s3");
    hmac(&k, b"aws4_request")
}

// ---------------------------------------------------------------------------------------------
// Dates: ISO 8601 basic (`20130524T000000Z`) <-> SystemTime, without a calendar crate.

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). Callers pass
/// a 4-digit year, a month in 1..=12 and a day in 1..=31: nothing can overflow.
#[expect(
    clippy::arithmetic_side_effects,
    reason = "bounded inputs: |y| <= 9999, m <= 12, d <= 31"
)]
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of day `z` since 1970-01-01. `z` comes from a `u64` second count divided by
/// 86 400, so |z| < 2^48 and every intermediate value fits an `i64` by far.
#[expect(
    clippy::arithmetic_side_effects,
    reason = "bounded input: |z| < 2^48 (see the doc)"
)]
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Parses `YYYYMMDDTHHMMSSZ`.
pub(crate) fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b.get(8) != Some(&b'T') || b.get(15) != Some(&b'Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(y), mo, d);
    let day_secs = h
        .checked_mul(3600)?
        .checked_add(mi.checked_mul(60)?)?
        .checked_add(se)?;
    let secs = days.checked_mul(86_400)?.checked_add(i64::from(day_secs))?;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Formats as `YYYYMMDDTHHMMSSZ` (times before 1970 clamp to the epoch).
pub(crate) fn format_amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    format!("{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

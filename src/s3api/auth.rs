//! AWS Signature Version 4 verification for the S3 API.
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

//! Request body verification: `x-amz-content-sha256`, aws-chunked (signed and unsigned, with
//! trailers), `Content-MD5` and `x-amz-checksum-*`.
//!
//! aws-chunked framing (`STREAMING-*` payloads), as the decoder reads it:
//!
//! ```text
//! signed:    <hex-size>;chunk-signature=<64 hex>\r\n<data>\r\n ... 0;chunk-signature=<64 hex>\r\n
//!            then, without -TRAILER:  \r\n
//!            with -TRAILER:           x-amz-checksum-<alg>:<base64>\r\n
//!                                     x-amz-trailer-signature:<64 hex>\r\n\r\n
//! unsigned:  <hex-size>\r\n<data>\r\n ... 0\r\n[x-amz-checksum-<alg>:<base64>\r\n]\r\n
//! ```
//!
//! The decoder is a state machine over arbitrary splits of the input: only the current line
//! (capped at [`MAX_LINE`]) is copied. Signed chunks are held back (as slices of the input,
//! at most [`MAX_SIGNED_CHUNK`] bytes) until their signature checks out; unsigned data is
//! released at once and vouched for by the trailing checksum at `finish`. The handler must
//! not commit an object before `finish` returns `Ok`. A blank line directly after the final
//! chunk of a trailer variant is tolerated (some encoders send one), and so is a body that ends
//! without the closing blank line once everything it carried has been verified.

#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unwrap_used,
        clippy::expect_used
    )
)]

use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use http::HeaderMap;
use md5::Digest as _;
use sha2::Digest as _;
use subtle::ConstantTimeEq;

use super::{AuthError, BodyCheck, ChunkSigner};

/// Longest chunk header or trailer line accepted.
pub const MAX_LINE: usize = 4096;
/// Largest signed chunk, which is buffered until its signature is checked (SDKs use 64 KiB).
pub const MAX_SIGNED_CHUNK: u64 = 16 << 20;
/// Most trailing headers accepted.
const MAX_TRAILERS: usize = 16;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

// ---------------------------------------------------------------------------------------------
// Checksums

/// The checksum algorithms of S3's `x-amz-checksum-<alg>` headers and trailers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumAlgorithm {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl ChecksumAlgorithm {
    pub const ALL: [ChecksumAlgorithm; 5] = [
        ChecksumAlgorithm::Crc32,
        ChecksumAlgorithm::Crc32c,
        ChecksumAlgorithm::Crc64Nvme,
        ChecksumAlgorithm::Sha1,
        ChecksumAlgorithm::Sha256,
    ];

    /// S3's name, as in `x-amz-checksum-algorithm` and error messages: `CRC32`, `SHA256`, …
    pub fn name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Crc32 => "CRC32",
            ChecksumAlgorithm::Crc32c => "CRC32C",
            ChecksumAlgorithm::Crc64Nvme => "CRC64NVME",
            ChecksumAlgorithm::Sha1 => "SHA1",
            ChecksumAlgorithm::Sha256 => "SHA256",
        }
    }

    /// The header (and trailer) name: `x-amz-checksum-crc32`, …
    pub fn header_name(self) -> &'static str {
        match self {
            ChecksumAlgorithm::Crc32 => "x-amz-checksum-crc32",
            ChecksumAlgorithm::Crc32c => "x-amz-checksum-crc32c",
            ChecksumAlgorithm::Crc64Nvme => "x-amz-checksum-crc64nvme",
            ChecksumAlgorithm::Sha1 => "x-amz-checksum-sha1",
            ChecksumAlgorithm::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// Parses a lowercase header name.
    pub fn from_header_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.header_name() == name)
    }

    /// Length of the raw digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            ChecksumAlgorithm::Crc32 | ChecksumAlgorithm::Crc32c => 4,
            ChecksumAlgorithm::Crc64Nvme => 8,
            ChecksumAlgorithm::Sha1 => 20,
            ChecksumAlgorithm::Sha256 => 32,
        }
    }

    /// Base64 of the checksum of `data`, as S3 writes it.
    pub fn checksum_b64(self, data: &[u8]) -> String {
        let mut h = Hasher::new(self);
        h.update(data);
        B64.encode(h.finalize())
    }
}

/// A running checksum; CRCs finish as big-endian bytes, as S3 encodes them.
enum Hasher {
    Crc32(crc32fast::Hasher),
    Crc32c(u32),
    Crc64Nvme(crc_fast::Digest),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    fn new(alg: ChecksumAlgorithm) -> Self {
        match alg {
            ChecksumAlgorithm::Crc32 => Hasher::Crc32(crc32fast::Hasher::new()),
            ChecksumAlgorithm::Crc32c => Hasher::Crc32c(0),
            ChecksumAlgorithm::Crc64Nvme => {
                Hasher::Crc64Nvme(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme))
            }
            ChecksumAlgorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            ChecksumAlgorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Crc32(h) => h.update(data),
            Hasher::Crc32c(c) => *c = crc32c::crc32c_append(*c, data),
            Hasher::Crc64Nvme(h) => h.update(data),
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
        }
    }

    fn finalize(self) -> Vec<u8> {
        match self {
            Hasher::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
            Hasher::Crc32c(c) => c.to_be_bytes().to_vec(),
            Hasher::Crc64Nvme(h) => h.finalize().to_be_bytes().to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
        }
    }
}

/// Decodes a base64 checksum value and checks its length for `alg`.
fn decode_checksum(alg: ChecksumAlgorithm, value: &str) -> Result<Vec<u8>, AuthError> {
    match B64.decode(value.trim()) {
        Ok(v) if v.len() == alg.digest_len() => Ok(v),
        _ => Err(AuthError::InvalidRequest(format!(
            "Value for {} header is invalid.",
            alg.header_name()
        ))),
    }
}

fn checksum_mismatch(alg: ChecksumAlgorithm) -> AuthError {
    AuthError::BadDigest(format!(
        "The {} you specified did not match the calculated checksum.",
        alg.name()
    ))
}

/// The 16 bytes a `Content-MD5` header value declares (base64, surrounding blanks ignored).
/// Empty, not base64, or not 16 bytes: `InvalidDigest`, as S3 answers.
pub fn parse_content_md5(value: &[u8]) -> Result<[u8; 16], AuthError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| B64.decode(s.trim()).ok())
        .and_then(|r| <[u8; 16]>::try_from(r).ok())
        .ok_or_else(|| {
            AuthError::InvalidDigest("The Content-MD5 you specified was invalid.".into())
        })
}

/// Checks the `Content-MD5` and `x-amz-checksum-<alg>` request headers over a body that is
/// not aws-chunked (or over the decoded bytes of one): `update` with every body byte, then
/// `finish`.
pub struct ChecksumCheck {
    md5: Option<([u8; 16], md5::Md5)>,
    checksum: Option<(ChecksumAlgorithm, String, Vec<u8>, Hasher)>,
}

impl fmt::Debug for ChecksumCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChecksumCheck")
            .field("md5", &self.md5.as_ref().map(|(m, _)| B64.encode(m)))
            .field("checksum", &self.checksum())
            .finish()
    }
}

impl ChecksumCheck {
    /// Reads `Content-MD5` and at most one `x-amz-checksum-<alg>` header. A malformed
    /// Content-MD5 is `InvalidDigest`; malformed checksums, unknown algorithms and several
    /// checksum headers are `InvalidRequest`.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, AuthError> {
        let md5 = match headers.get("content-md5") {
            None => None,
            Some(v) => Some((parse_content_md5(v.as_bytes())?, md5::Md5::new())),
        };
        let mut checksum = None;
        for (name, value) in headers {
            let name = name.as_str();
            let Some(suffix) = name.strip_prefix("x-amz-checksum-") else {
                continue;
            };
            if matches!(suffix, "algorithm" | "type" | "mode") {
                continue;
            }
            let alg = ChecksumAlgorithm::from_header_name(name).ok_or_else(|| {
                AuthError::InvalidRequest(format!("Checksum header {name} is not supported."))
            })?;
            if checksum.is_some() {
                return Err(AuthError::InvalidRequest(
                    "Expecting a single x-amz-checksum- header. Multiple checksum Types are \
                     not allowed."
                        .into(),
                ));
            }
            let text = value.to_str().unwrap_or("").trim().to_owned();
            let want = decode_checksum(alg, &text)?;
            checksum = Some((alg, text, want, Hasher::new(alg)));
        }
        Ok(ChecksumCheck { md5, checksum })
    }

    /// Nothing to check: no Content-MD5 and no x-amz-checksum header.
    pub fn is_empty(&self) -> bool {
        self.md5.is_none() && self.checksum.is_none()
    }

    /// The declared `x-amz-checksum-<alg>` (algorithm and base64 value), to store and echo.
    pub fn checksum(&self) -> Option<(ChecksumAlgorithm, &str)> {
        self.checksum.as_ref().map(|(a, t, _, _)| (*a, t.as_str()))
    }

    pub fn update(&mut self, data: &[u8]) {
        if let Some((_, h)) = &mut self.md5 {
            h.update(data);
        }
        if let Some((_, _, _, h)) = &mut self.checksum {
            h.update(data);
        }
    }

    /// `BadDigest` if the body does not match a declared digest.
    pub fn finish(self) -> Result<(), AuthError> {
        if let Some((want, h)) = self.md5 {
            let got: [u8; 16] = h.finalize().into();
            if !bool::from(got.ct_eq(&want)) {
                return Err(AuthError::BadDigest(
                    "The Content-MD5 you specified did not match what we received.".into(),
                ));
            }
        }
        if let Some((alg, _, want, h)) = self.checksum {
            if h.finalize() != want {
                return Err(checksum_mismatch(alg));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Body decoder

/// Turns the raw request body into the object's bytes, verifying as it goes.
pub struct BodyDecoder {
    inner: Inner,
}

enum Inner {
    /// Not chunked: bytes pass through, optionally hashed against `x-amz-content-sha256`.
    Plain {
        sha256: Option<(sha2::Sha256, String)>,
        total: u64,
        limit: Option<u64>,
    },
    Chunked(Box<Chunked>),
}

impl fmt::Debug for BodyDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Plain { sha256, total, .. } => f
                .debug_struct("BodyDecoder::Plain")
                .field("sha256", &sha256.as_ref().map(|(_, h)| h))
                .field("total", total)
                .finish(),
            Inner::Chunked(c) => f
                .debug_struct("BodyDecoder::Chunked")
                .field("signed", &c.signer.is_some())
                .field("state", &c.state)
                .field("total", &c.total)
                .finish(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading `<hex-size>[;ext]\r\n`.
    Header,
    /// Reading chunk data.
    Data {
        remaining: u64,
    },
    /// Reading the `\r\n` after chunk data.
    DataEnd,
    /// Signed, no trailer: reading the `\r\n` after the final chunk header.
    FinalEnd,
    /// Reading trailing header lines up to a blank line.
    Trailers,
    Done,
}

struct Chunked {
    /// `None`: unsigned chunks.
    signer: Option<ChunkSigner>,
    /// A trailer section follows the final chunk.
    trailer: bool,
    declared: Option<ChecksumAlgorithm>,
    state: State,
    line: Vec<u8>,
    total: u64,
    limit: Option<u64>,
    /// Signature of the previous chunk (the seed to start with).
    prev: [u8; 32],
    /// Signature announced for the chunk being read.
    pending: [u8; 32],
    chunk_hash: sha2::Sha256,
    held: Vec<Bytes>,
    /// Checksums for the trailer, over the decoded bytes.
    sums: Vec<(ChecksumAlgorithm, Hasher)>,
    trailers: Vec<(String, String)>,
    trailer_sig: Option<[u8; 32]>,
    blank_seen: bool,
    verified: Option<(ChecksumAlgorithm, String)>,
}

fn incomplete() -> AuthError {
    AuthError::IncompleteBody("The request body terminated unexpectedly".into())
}

fn framing(msg: &str) -> AuthError {
    AuthError::InvalidRequest(format!("Malformed aws-chunked body: {msg}"))
}

fn length_mismatch(limit: u64, got: &str) -> AuthError {
    AuthError::IncompleteBody(format!(
        "The decoded body ({got} bytes) does not match the declared length of {limit} bytes"
    ))
}

impl BodyDecoder {
    /// `decoded_len`: `x-amz-decoded-content-length` for aws-chunked bodies, else
    /// `Content-Length` if known; the decoded total must equal it (`IncompleteBody`).
    ///
    /// An unsigned aws-chunked body decoded this way is not told which trailer `x-amz-trailer`
    /// declared, so it accepts a body without one: a server uses [`with_trailer`] with
    /// [`Verified::trailer`](super::Verified::trailer) instead.
    ///
    /// [`with_trailer`]: Self::with_trailer
    pub fn new(check: BodyCheck, decoded_len: Option<u64>) -> Self {
        Self::with_trailer(check, decoded_len, None)
    }

    /// Like [`new`](Self::new), for a request whose `x-amz-trailer` declared `declared_trailer`
    /// ([`Verified::trailer`](super::Verified::trailer)): an aws-chunked body (signed or
    /// unsigned) must then carry that trailing checksum and it must match. A body that ends
    /// before it is `IncompleteBody`, a trailer section without it (or with another one)
    /// `InvalidRequest`, a wrong value `BadDigest`. Bodies that are not aws-chunked ignore it.
    pub fn with_trailer(
        check: BodyCheck,
        decoded_len: Option<u64>,
        declared_trailer: Option<ChecksumAlgorithm>,
    ) -> Self {
        let (signer, trailer) = match check {
            BodyCheck::None => {
                return BodyDecoder {
                    inner: Inner::Plain {
                        sha256: None,
                        total: 0,
                        limit: decoded_len,
                    },
                }
            }
            BodyCheck::Sha256(hex) => {
                return BodyDecoder {
                    inner: Inner::Plain {
                        sha256: Some((sha2::Sha256::new(), hex.to_ascii_lowercase())),
                        total: 0,
                        limit: decoded_len,
                    },
                }
            }
            BodyCheck::SignedChunks(s) => {
                let t = s.trailer;
                (Some(s), t)
            }
            BodyCheck::UnsignedChunks => (None, true),
        };
        let declared = declared_trailer.or_else(|| signer.as_ref().and_then(|s| s.trailer_alg));
        let sums = if !trailer {
            Vec::new()
        } else if let Some(alg) = declared {
            vec![(alg, Hasher::new(alg))]
        } else {
            ChecksumAlgorithm::ALL
                .into_iter()
                .map(|a| (a, Hasher::new(a)))
                .collect()
        };
        let seed = signer.as_ref().map_or([0; 32], |s| s.seed);
        BodyDecoder {
            inner: Inner::Chunked(Box::new(Chunked {
                signer,
                trailer,
                declared,
                state: State::Header,
                line: Vec::new(),
                total: 0,
                limit: decoded_len,
                prev: seed,
                pending: [0; 32],
                chunk_hash: sha2::Sha256::new(),
                held: Vec::new(),
                sums,
                trailers: Vec::new(),
                trailer_sig: None,
                blank_seen: false,
                verified: None,
            })),
        }
    }

    /// Decoded bytes returned by `feed` so far.
    pub fn decoded_len(&self) -> u64 {
        match &self.inner {
            Inner::Plain { total, .. } => *total,
            Inner::Chunked(c) => c
                .total
                .saturating_sub(c.held.iter().map(|b| b.len() as u64).sum::<u64>()),
        }
    }

    /// Feed raw bytes; returns decoded bytes available so far (possibly empty).
    pub fn feed(&mut self, raw: Bytes) -> Result<Vec<Bytes>, AuthError> {
        match &mut self.inner {
            Inner::Plain {
                sha256,
                total,
                limit,
            } => {
                *total = total.saturating_add(raw.len() as u64);
                if let Some(l) = limit {
                    if *total > *l {
                        return Err(length_mismatch(*l, &format!("more than {l}")));
                    }
                }
                if let Some((h, _)) = sha256 {
                    h.update(&raw);
                }
                Ok(if raw.is_empty() {
                    Vec::new()
                } else {
                    vec![raw]
                })
            }
            Inner::Chunked(c) => {
                let mut out = Vec::new();
                c.feed(raw, &mut out)?;
                Ok(out)
            }
        }
    }

    /// End of the raw body: checks final chunk / trailer checksum / sha256.
    pub fn finish(self) -> Result<(), AuthError> {
        self.finish_checksum().map(|_| ())
    }

    /// Like [`finish`](Self::finish), and returns the verified trailing checksum (algorithm and
    /// base64 value), if the body carried one.
    pub fn finish_checksum(self) -> Result<Option<(ChecksumAlgorithm, String)>, AuthError> {
        match self.inner {
            Inner::Plain {
                sha256,
                total,
                limit,
            } => {
                if let Some((h, want)) = sha256 {
                    let got = hex::encode(h.finalize());
                    if !bool::from(got.as_bytes().ct_eq(want.as_bytes())) {
                        return Err(AuthError::XAmzContentSHA256Mismatch(
                            "The provided 'x-amz-content-sha256' header does not match what \
                             was computed."
                                .into(),
                        ));
                    }
                }
                match limit {
                    Some(l) if l != total => Err(length_mismatch(l, &total.to_string())),
                    _ => Ok(None),
                }
            }
            Inner::Chunked(mut c) => {
                match c.state {
                    State::Done => {}
                    State::FinalEnd if c.line.is_empty() => {}
                    State::Trailers if c.line.is_empty() => {
                        // Unsigned: the body ended before the declared checksum arrived, it
                        // was cut short. (Signed: the missing trailer signature says so.)
                        let arrived = |d: ChecksumAlgorithm| {
                            c.trailers.iter().any(|(n, _)| n == d.header_name())
                        };
                        if c.signer.is_none() && c.declared.is_some_and(|d| !arrived(d)) {
                            return Err(incomplete());
                        }
                        c.end_trailers()?
                    }
                    _ => return Err(incomplete()),
                }
                match c.limit {
                    Some(l) if l != c.total => Err(length_mismatch(l, &c.total.to_string())),
                    _ => Ok(c.verified.take()),
                }
            }
        }
    }
}

impl Chunked {
    fn feed(&mut self, mut raw: Bytes, out: &mut Vec<Bytes>) -> Result<(), AuthError> {
        while !raw.is_empty() {
            match self.state {
                State::Data { remaining } => {
                    let n = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(raw.len());
                    let slice = raw.split_to(n);
                    self.on_data(slice, remaining.saturating_sub(n as u64), out)?;
                }
                State::Done => return Err(framing("bytes after the end of the body")),
                State::Header | State::DataEnd | State::FinalEnd | State::Trailers => {
                    let newline = raw.iter().position(|&b| b == b'\n');
                    let piece_len = newline.unwrap_or(raw.len());
                    if self.line.len().saturating_add(piece_len) > MAX_LINE {
                        return Err(framing("line too long"));
                    }
                    let piece = raw.split_to(piece_len);
                    self.line.extend_from_slice(&piece);
                    if newline.is_some() {
                        // Drop the '\n' itself (`raw` starts with it).
                        let _ = raw.split_to(1);
                        let mut line = std::mem::take(&mut self.line);
                        if line.pop() != Some(b'\r') {
                            return Err(framing("line not terminated by CRLF"));
                        }
                        self.on_line(&line)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn on_data(
        &mut self,
        data: Bytes,
        remaining: u64,
        out: &mut Vec<Bytes>,
    ) -> Result<(), AuthError> {
        self.total = self.total.saturating_add(data.len() as u64);
        self.state = if remaining == 0 {
            State::DataEnd
        } else {
            State::Data { remaining }
        };
        if self.signer.is_none() {
            self.release(data, out);
            return Ok(());
        }
        self.chunk_hash.update(&data);
        if !data.is_empty() {
            self.held.push(data);
        }
        if remaining == 0 {
            let digest: [u8; 32] = self.chunk_hash.finalize_reset().into();
            self.check_chunk(&digest)?;
            for b in std::mem::take(&mut self.held) {
                self.release(b, out);
            }
        }
        Ok(())
    }

    fn release(&mut self, data: Bytes, out: &mut Vec<Bytes>) {
        for (_, h) in &mut self.sums {
            h.update(&data);
        }
        if !data.is_empty() {
            out.push(data);
        }
    }

    /// Verifies the pending chunk signature over a chunk whose data hashes to `digest`.
    fn check_chunk(&mut self, digest: &[u8; 32]) -> Result<(), AuthError> {
        let Some(signer) = &self.signer else {
            return Ok(());
        };
        let computed = signer.chunk_signature(&self.prev, digest);
        if !bool::from(computed.ct_eq(&self.pending)) {
            return Err(AuthError::SignatureDoesNotMatch(
                "The chunk signature we calculated does not match the signature you provided."
                    .into(),
            ));
        }
        self.prev = self.pending;
        Ok(())
    }

    fn on_line(&mut self, line: &[u8]) -> Result<(), AuthError> {
        match self.state {
            State::Header => self.on_header(line),
            State::DataEnd => {
                if !line.is_empty() {
                    return Err(framing("chunk data longer than its declared size"));
                }
                self.state = State::Header;
                Ok(())
            }
            State::FinalEnd => {
                if !line.is_empty() {
                    return Err(framing("data after the final chunk"));
                }
                self.state = State::Done;
                Ok(())
            }
            State::Trailers => self.on_trailer_line(line),
            State::Data { .. } | State::Done => unreachable!("not a line state"),
        }
    }

    fn on_header(&mut self, line: &[u8]) -> Result<(), AuthError> {
        let line = std::str::from_utf8(line).map_err(|_| framing("chunk header is not ASCII"))?;
        let mut parts = line.split(';');
        let size_hex = parts.next().unwrap_or("").trim_end_matches(' ');
        if size_hex.is_empty()
            || size_hex.len() > 16
            || !size_hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(framing("invalid chunk size"));
        }
        let size = u64::from_str_radix(size_hex, 16).map_err(|_| framing("invalid chunk size"))?;
        if self.signer.is_some() {
            let sig = parts
                .find_map(|p| p.trim().strip_prefix("chunk-signature="))
                .ok_or_else(|| {
                    AuthError::SignatureDoesNotMatch("A chunk carries no chunk-signature.".into())
                })?;
            if sig.len() != 64 || const_hex::decode_to_slice(sig, &mut self.pending).is_err() {
                return Err(AuthError::SignatureDoesNotMatch(
                    "A chunk-signature is not 64 hex digits.".into(),
                ));
            }
            if size > MAX_SIGNED_CHUNK {
                return Err(framing("signed chunk larger than 16 MiB"));
            }
        }
        if let Some(l) = self.limit {
            if self.total.saturating_add(size) > l {
                return Err(length_mismatch(l, &format!("more than {l}")));
            }
        }
        if size > 0 {
            self.state = State::Data { remaining: size };
            return Ok(());
        }
        // The final, empty chunk: its signature covers the hash of no data.
        let empty: [u8; 32] = sha2::Sha256::digest([]).into();
        self.check_chunk(&empty)?;
        self.state = if self.trailer {
            State::Trailers
        } else {
            State::FinalEnd
        };
        Ok(())
    }

    fn on_trailer_line(&mut self, line: &[u8]) -> Result<(), AuthError> {
        if line.is_empty() {
            if self.trailers.is_empty() && self.trailer_sig.is_none() && !self.blank_seen {
                // Either the end of an empty trailer section or a separator before it.
                self.blank_seen = true;
                return Ok(());
            }
            self.end_trailers()?;
            self.state = State::Done;
            return Ok(());
        }
        if self.trailer_sig.is_some() {
            return Err(framing("trailer after x-amz-trailer-signature"));
        }
        let line = std::str::from_utf8(line).map_err(|_| framing("trailer is not UTF-8"))?;
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| framing("trailer is not name:value"))?;
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        if name == "x-amz-trailer-signature" {
            let mut sig = [0u8; 32];
            if value.len() != 64 || const_hex::decode_to_slice(value, &mut sig).is_err() {
                return Err(AuthError::SignatureDoesNotMatch(
                    "The x-amz-trailer-signature is not 64 hex digits.".into(),
                ));
            }
            self.trailer_sig = Some(sig);
            return Ok(());
        }
        if self.trailers.len() >= MAX_TRAILERS {
            return Err(framing("too many trailers"));
        }
        self.trailers.push((name, value.to_owned()));
        Ok(())
    }

    /// The trailer section is complete: check its signature (signed) and checksum.
    fn end_trailers(&mut self) -> Result<(), AuthError> {
        if let Some(signer) = &self.signer {
            let sig = self.trailer_sig.ok_or_else(|| {
                AuthError::SignatureDoesNotMatch(
                    "The trailing headers carry no x-amz-trailer-signature.".into(),
                )
            })?;
            let mut canonical = String::new();
            for (n, v) in &self.trailers {
                canonical.push_str(n);
                canonical.push(':');
                canonical.push_str(v);
                canonical.push('\n');
            }
            let computed = signer.trailer_signature(&self.prev, canonical.as_bytes());
            if !bool::from(computed.ct_eq(&sig)) {
                return Err(AuthError::SignatureDoesNotMatch(
                    "The trailer signature we calculated does not match the signature you \
                     provided."
                        .into(),
                ));
            }
        }
        let mut found = None;
        for (name, value) in &self.trailers {
            if !name.starts_with("x-amz-checksum-") {
                continue;
            }
            let alg = ChecksumAlgorithm::from_header_name(name).ok_or_else(|| {
                AuthError::InvalidRequest(format!("Checksum trailer {name} is not supported."))
            })?;
            if found.is_some() {
                return Err(AuthError::InvalidRequest(
                    "Expecting a single x-amz-checksum- trailer.".into(),
                ));
            }
            if self.declared.is_some_and(|d| d != alg) {
                return Err(AuthError::InvalidRequest(format!(
                    "The trailer {name} is not the one declared by x-amz-trailer."
                )));
            }
            found = Some((alg, value.clone()));
        }
        if let (Some(d), None) = (self.declared, &found) {
            return Err(AuthError::InvalidRequest(format!(
                "x-amz-trailer declared {} but the body carries no such trailer.",
                d.header_name()
            )));
        }
        if let Some((alg, value)) = found {
            let want = decode_checksum(alg, &value)?;
            let idx = self
                .sums
                .iter()
                .position(|(a, _)| *a == alg)
                .ok_or_else(|| checksum_mismatch(alg))?;
            let (_, h) = self.sums.swap_remove(idx);
            if h.finalize() != want {
                return Err(checksum_mismatch(alg));
            }
            self.verified = Some((alg, value));
        }
        Ok(())
    }
}

//! Sans-IO S3 request authentication and request-document parsing for nearcache.
//!
//! # Goals
//!
//! - **Sans-IO.** Everything here is a pure function or a state machine fed with bytes the
//!   caller already has: no sockets, no async runtime, no files, no clocks (the caller passes
//!   `now`), no threads. The server crate owns all I/O and only calls in.
//! - **AWS Signature Version 4 verification** ([`auth`]) of S3 requests:
//!   - header-signed requests (`Authorization: AWS4-HMAC-SHA256 ...`),
//!   - presigned URLs (`X-Amz-Algorithm` & co. in the query),
//!   - aws-chunked streaming bodies, signed (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`,
//!     chained chunk signatures, trailer signature) and unsigned
//!     (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`), with or without a trailing checksum;
//!   - `x-amz-content-sha256`, `Content-MD5` and `x-amz-checksum-*` body checks.
//! - **The small XML reader** ([`xml`]) for the request documents S3 clients send
//!   (CompleteMultipartUpload, DeleteObjects): flat element trees of text, with its own
//!   [`xml::XmlError`].
//! - **No panics on client input.** The parsing modules deny unchecked indexing/slicing,
//!   unchecked arithmetic, `unwrap` and `expect` (`clippy::indexing_slicing`,
//!   `clippy::arithmetic_side_effects`, `clippy::unwrap_used`, `clippy::expect_used`), and
//!   fuzz targets (below) check it, together with the verifiers' answers.
//!
//! # Non-goals
//!
//! - Signing requests (the tests use the `aws-sigv4` crate, or a few lines of their own, to
//!   make valid signatures), SigV4a (`AWS4-ECDSA-P256-SHA256`), SigV2, POST-policy uploads.
//! - Deciding permissions (which key may touch which bucket: the server's handlers do that
//!   with [`auth::Credential`]), rendering S3's XML answers or errors (the server does).
//! - A general XML parser: no DTDs, namespaces beyond stripping prefixes, or attributes.
//!
//! # Fuzzing
//!
//! The fuzz targets live in `src/fuzz.rs` (test-only) and use
//! [`bolero`](https://docs.rs/bolero)'s `check!()` harness, which runs on stable Rust as an
//! ordinary `#[test]`: under `cargo test` each target draws a bounded number of random inputs
//! (3000 per target, 400-1200 for the ones that sign every input)
//! and runs its kept regression inputs, so all of them together take a few seconds:
//!
//! ```text
//! cargo test -p nearcache-s3proto fuzz
//! ```
//!
//! For a long run, raise the bound with bolero's own variables, `BOLERO_RANDOM_ITERATIONS`
//! (cases per target) or `BOLERO_RANDOM_TEST_TIME_MS` (time per target), preferably in
//! release mode; each target prints how many cases it ran:
//!
//! ```text
//! BOLERO_RANDOM_ITERATIONS=1000000 cargo test -p nearcache-s3proto --release fuzz_ -- --nocapture --test-threads=2
//! ```
//!
//! A failure prints the `BOLERO_RANDOM_SEED=...` that replays it. Where a nightly toolchain
//! and `cargo-bolero` are available, `cargo bolero test -p nearcache-s3proto <target>` runs
//! the same targets coverage-guided; nothing here needs it.

#![forbid(unsafe_code)]

pub mod auth;
pub mod query;
pub mod xml;

#[cfg(test)]
mod fuzz;

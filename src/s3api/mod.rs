//! The S3-compatible API: awscli and the SDKs work through nearcache unchanged.
//!
//! - `auth`: AWS Signature V4 verification (header, presigned, aws-chunked streaming).
//! - the operation handlers (to come) serve object reads from the same shard store and
//!   coalescing as the native API.

pub mod auth;

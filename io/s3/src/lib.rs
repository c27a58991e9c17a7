//! # nearcache-s3: the origin bridge
//!
//! Goals: run the origin client (aws-sdk-s3, or the embedded local-directory origin)
//! on its own thread(s) with a small tokio runtime, and let thread-per-core shards reach
//! it over channels. Bodies stream both ways in bounded chunks; nothing is buffered whole.
//! Errors say whether a retry can help.
//! Non-goals: caching, shards, HTTP serving. This crate knows nothing of the shard engine.

mod error;
mod types;

pub use error::OriginError;
pub use types::*;

use std::path::PathBuf;
use std::sync::Arc;

/// Handle to the bridge. Cheap to clone, `Send + Sync`; usable from any runtime
/// (monoio shards with the `sync` feature, tokio, or plain threads via `block_on`).
#[derive(Clone)]
pub struct Bridge {
    _todo: (),
}

impl Bridge {
    /// Starts the bridge thread(s) and connects the origin described by `cfg`.
    pub fn start(cfg: OriginConfig) -> Result<Bridge, OriginError> {
        todo!()
    }

    /// Human-readable description for the start-up log ("s3 http://127.0.0.1:5000 bucket b" /
    /// "local origin at DIR").
    pub fn describe(&self) -> String {
        todo!()
    }

    pub fn stats(&self) -> Arc<OriginStats> {
        todo!()
    }

    /// GET an object (optionally a byte range, end exclusive). The body streams in chunks.
    pub async fn get(&self, key: &str, range: Option<(u64, u64)>) -> Result<GetObject, OriginError> {
        todo!()
    }

    pub async fn head(&self, key: &str) -> Result<RemoteMeta, OriginError> {
        todo!()
    }

    /// Uploads `len` bytes at `offset` of the file at `path`. Retries (the file is re-readable).
    pub async fn put_file(
        &self,
        key: &str,
        path: PathBuf,
        offset: u64,
        len: u64,
        meta: PutMeta,
    ) -> Result<PutResult, OriginError> {
        todo!()
    }

    /// Deletes an object; deleting a missing object succeeds (as in S3).
    pub async fn delete(&self, key: &str) -> Result<(), OriginError> {
        todo!()
    }

    /// Creates the bucket if it does not exist (used by tests and the local quick start).
    pub async fn ensure_bucket(&self) -> Result<(), OriginError> {
        todo!()
    }

    /// Stops accepting requests and joins the bridge thread(s) after in-flight requests end.
    pub fn shutdown(&self) {
        todo!()
    }
}

//! Level-1/2 uploads of large objects as S3 multipart uploads: the parts are read from
//! the stored body's file and sent `chunks.multipart_concurrency` at a time; a failed
//! upload is aborted and the uploader retries the whole of it later.
//!
//! The body's MD5 is not sent (S3 checks it per PUT, not per multipart object), and the
//! origin's ETag of such an object has the multipart form (`<md5 of part md5s>-<parts>`)
//! while the stored copy keeps the body's MD5: under a TTL its first revalidation sees
//! another ETag and reads the object through once.

use std::path::PathBuf;

use futures::{StreamExt, TryStreamExt};
use nearcache_s3::{Bridge, ObjectLoc, OriginError, PutMeta, PutResult};

use crate::config::{ChunksConfig, Config};

/// S3's largest part count.
const MAX_PARTS: u64 = 10_000;

/// Whether an upload of `len` bytes goes as a multipart upload (else a single PUT).
pub fn wanted(cfg: &Config, len: u64) -> bool {
    len > cfg.chunks.multipart_threshold.0
}

/// Bytes per part for an object of `len` bytes.
fn part_size(cfg: &ChunksConfig, len: u64) -> u64 {
    cfg.multipart_part_size
        .0
        .max(len.div_ceil(MAX_PARTS))
        .max(1)
}

/// Uploads `len` bytes at `offset` of `path` to `loc` in parts; returns the ETag.
pub async fn put(
    bridge: &Bridge,
    loc: &ObjectLoc,
    path: PathBuf,
    offset: u64,
    len: u64,
    meta: PutMeta,
    cfg: &ChunksConfig,
) -> Result<PutResult, OriginError> {
    let meta = PutMeta {
        md5_hex: None,
        ..meta
    };
    let id = bridge.create_multipart(loc, meta).await?;
    let size = part_size(cfg, len);
    let parts = futures::stream::iter(0..len.div_ceil(size))
        .map(|i| {
            let (a, path, id) = (i * size, path.clone(), &id);
            let number = (i + 1) as u32;
            async move {
                bridge
                    .upload_part(loc, id, number, path, offset + a, size.min(len - a), None)
                    .await
                    .map(|etag| (number, etag))
            }
        })
        .buffered(cfg.multipart_concurrency.max(1))
        .try_collect::<Vec<_>>()
        .await;
    let done = match parts {
        Ok(parts) => bridge.complete_multipart(loc, &id, parts).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(etag) => Ok(PutResult { etag }),
        Err(e) => {
            if let Err(abort) = bridge.abort_multipart(loc, &id).await {
                tracing::warn!(bucket = %loc.bucket, key = %loc.key, error = %abort,
                    "aborting a failed multipart upload failed (S3 lifecycle rules clean it up)");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Size;

    #[test]
    fn parts_respect_the_size_and_s3s_part_count() {
        let cfg = ChunksConfig {
            multipart_part_size: Size(16 << 20),
            ..Default::default()
        };
        assert_eq!(part_size(&cfg, 100 << 20), 16 << 20);
        // 1 TiB in at most 10000 parts.
        let big = 1u64 << 40;
        assert!(big.div_ceil(part_size(&cfg, big)) <= MAX_PARTS);
    }

    #[test]
    fn only_objects_over_the_threshold_go_in_parts() {
        let mut cfg = Config::default();
        cfg.chunks.multipart_threshold = Size(10);
        assert!(!wanted(&cfg, 10));
        assert!(wanted(&cfg, 11));
    }
}

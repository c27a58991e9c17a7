//! The origin behind the bridge: one backend (S3 or a local directory) wrapped by the
//! request layer that injects failures, retries, and keeps [`OriginStats`].

mod local;
mod s3;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::{
    BodyStream, GetObject, OriginConfig, OriginError, OriginKind, OriginStats, PutMeta, PutResult,
    RemoteMeta, LATENCY_BOUNDS_SECONDS,
};

/// Longest wait between two attempts of the bridge's own retry loop.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// One request from a caller, with the channel for its reply.
pub(crate) enum Job {
    Get {
        key: String,
        range: Option<(u64, u64)>,
        reply: oneshot::Sender<Result<GetObject, OriginError>>,
    },
    Head {
        key: String,
        reply: oneshot::Sender<Result<RemoteMeta, OriginError>>,
    },
    Put {
        key: String,
        path: PathBuf,
        offset: u64,
        len: u64,
        meta: PutMeta,
        reply: oneshot::Sender<Result<PutResult, OriginError>>,
    },
    Delete {
        key: String,
        reply: oneshot::Sender<Result<(), OriginError>>,
    },
    EnsureBucket {
        reply: oneshot::Sender<Result<(), OriginError>>,
    },
}

/// A GET whose response head has arrived; the body is still to be read.
pub(crate) struct OpenedGet {
    pub meta: RemoteMeta,
    pub range: (u64, u64),
    pub body: BodySource,
}

/// Where the bytes of an opened GET come from.
pub(crate) enum BodySource {
    S3(aws_sdk_s3::primitives::ByteStream),
    Local(local::LocalBody),
}

impl BodySource {
    async fn next(&mut self) -> Option<Result<Bytes, OriginError>> {
        match self {
            BodySource::S3(stream) => match stream.next().await {
                None => None,
                Some(Ok(b)) => Some(Ok(b)),
                Some(Err(e)) => Some(Err(OriginError::Unavailable(format!(
                    "read s3 body: {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )))),
            },
            BodySource::Local(body) => body.next().await,
        }
    }
}

pub(crate) enum Backend {
    S3(s3::S3Origin),
    Local(local::LocalOrigin),
}

impl Backend {
    async fn get(&self, key: &str, range: Option<(u64, u64)>) -> Result<OpenedGet, OriginError> {
        match self {
            Backend::S3(o) => o.get(key, range).await,
            Backend::Local(o) => o.get(key, range).await,
        }
    }

    async fn head(&self, key: &str) -> Result<RemoteMeta, OriginError> {
        match self {
            Backend::S3(o) => o.head(key).await,
            Backend::Local(o) => o.head(key).await,
        }
    }

    async fn put_file(
        &self,
        key: &str,
        path: &std::path::Path,
        offset: u64,
        len: u64,
        meta: &PutMeta,
    ) -> Result<PutResult, OriginError> {
        match self {
            Backend::S3(o) => o.put_file(key, path, offset, len, meta).await,
            Backend::Local(o) => o.put_file(key, path, offset, len, meta).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<(), OriginError> {
        match self {
            Backend::S3(o) => o.delete(key).await,
            Backend::Local(o) => o.delete(key).await,
        }
    }

    async fn ensure_bucket(&self) -> Result<(), OriginError> {
        match self {
            Backend::S3(o) => o.ensure_bucket().await,
            Backend::Local(o) => o.ensure_bucket().await,
        }
    }

    /// Whether `Unavailable` errors from this backend were already retried (by the SDK).
    fn retries_internally(&self) -> bool {
        matches!(self, Backend::S3(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    Head,
    Put,
    Delete,
    EnsureBucket,
}

/// The request layer of one bridge thread.
pub(crate) struct Service {
    backend: Backend,
    stats: Arc<OriginStats>,
    prefix: String,
    max_attempts: u32,
    initial_backoff: Duration,
    inject_failure_rate: f64,
    body_channel_chunks: usize,
    /// Longest wait for the next chunk of a streaming body.
    idle_timeout: Duration,
    /// Turns true when the bridge gives up waiting for in-flight bodies at shutdown.
    cancel: watch::Receiver<bool>,
}

impl Service {
    pub async fn connect(
        cfg: &OriginConfig,
        stats: Arc<OriginStats>,
        cancel: watch::Receiver<bool>,
    ) -> Result<Service, OriginError> {
        let backend = match &cfg.kind {
            OriginKind::S3 { .. } => Backend::S3(s3::S3Origin::connect(cfg, stats.clone()).await?),
            OriginKind::Local { dir } => {
                Backend::Local(local::LocalOrigin::open(dir.clone()).await?)
            }
        };
        Ok(Service {
            backend,
            stats,
            prefix: cfg.prefix.clone(),
            max_attempts: cfg.max_attempts.max(1),
            initial_backoff: cfg.initial_backoff,
            inject_failure_rate: cfg.inject_failure_rate,
            body_channel_chunks: cfg.body_channel_chunks.max(1),
            idle_timeout: if cfg.operation_timeout.is_zero() {
                Duration::from_secs(60)
            } else {
                cfg.operation_timeout
            },
            cancel,
        })
    }

    pub async fn handle(&self, job: Job) {
        match job {
            Job::Get { key, range, reply } => {
                let key = self.full_key(&key);
                let res = self
                    .run(Op::Get, &key, || self.backend.get(&key, range))
                    .await;
                match res {
                    Ok(OpenedGet { meta, range, body }) => {
                        let (tx, rx) = mpsc::channel(self.body_channel_chunks);
                        let obj = GetObject {
                            meta,
                            range,
                            body: BodyStream { rx },
                        };
                        if reply.send(Ok(obj)).is_ok() {
                            self.pump(&key, body, tx).await;
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Job::Head { key, reply } => {
                let key = self.full_key(&key);
                let res = self.run(Op::Head, &key, || self.backend.head(&key)).await;
                let _ = reply.send(res);
            }
            Job::Put {
                key,
                path,
                offset,
                len,
                meta,
                reply,
            } => {
                let key = self.full_key(&key);
                let res = self
                    .run(Op::Put, &key, || {
                        self.backend.put_file(&key, &path, offset, len, &meta)
                    })
                    .await;
                if res.is_ok() {
                    self.stats.bytes_out.fetch_add(len, Ordering::Relaxed);
                }
                let _ = reply.send(res);
            }
            Job::Delete { key, reply } => {
                let key = self.full_key(&key);
                let res = self
                    .run(Op::Delete, &key, || self.backend.delete(&key))
                    .await;
                let _ = reply.send(res);
            }
            Job::EnsureBucket { reply } => {
                let res = self
                    .run(Op::EnsureBucket, "", || self.backend.ensure_bucket())
                    .await;
                let _ = reply.send(res);
            }
        }
    }

    fn full_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }

    /// Runs one request: failure injection, retries of `Unavailable` the backend did not
    /// already retry, stats.
    async fn run<T, F, Fut>(&self, op: Op, key: &str, mut attempt_fn: F) -> Result<T, OriginError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OriginError>>,
    {
        let counter = match op {
            Op::Get => Some(&self.stats.requests_get),
            Op::Head => Some(&self.stats.requests_head),
            Op::Put => Some(&self.stats.requests_put),
            Op::Delete => Some(&self.stats.requests_delete),
            Op::EnsureBucket => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let start = Instant::now();
        let mut attempt = 1u32;
        let result = loop {
            // Injection targets object operations; set-up calls are left alone.
            let (res, injected) = if op != Op::EnsureBucket && self.inject() {
                self.stats.injected_failures.fetch_add(1, Ordering::Relaxed);
                (
                    Err(OriginError::Unavailable("injected failure".into())),
                    true,
                )
            } else {
                (attempt_fn().await, false)
            };
            match res {
                Err(OriginError::Unavailable(msg))
                    if attempt < self.max_attempts
                        && (injected || !self.backend.retries_internally()) =>
                {
                    let delay = self.backoff(attempt);
                    warn!(?op, key, attempt, ?delay, error = %msg, "origin request failed, retrying");
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => break other,
            }
        };
        let elapsed = start.elapsed();
        self.stats.record_latency(elapsed);
        match &result {
            Ok(_) => debug!(?op, key, ?elapsed, "origin request done"),
            Err(OriginError::NotFound) => {
                self.stats.not_found.fetch_add(1, Ordering::Relaxed);
                debug!(?op, key, ?elapsed, "origin: not found");
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!(?op, key, ?elapsed, attempts = attempt, error = %e, "origin request failed");
            }
        }
        result
    }

    fn inject(&self) -> bool {
        self.inject_failure_rate > 0.0 && rand::thread_rng().gen::<f64>() < self.inject_failure_rate
    }

    /// Exponential backoff with jitter: attempt n waits in [b/2, b) with
    /// b = initial_backoff * 2^(n-1), capped at [`MAX_BACKOFF`].
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(MAX_BACKOFF);
        base.mul_f64(0.5 + 0.5 * rand::thread_rng().gen::<f64>())
    }

    /// Moves body chunks into the caller's channel until the body ends, breaks, stalls for
    /// `idle_timeout`, the caller drops its receiver, or shutdown cancels it.
    async fn pump(
        &self,
        key: &str,
        mut body: BodySource,
        tx: mpsc::Sender<Result<Bytes, OriginError>>,
    ) {
        let mut cancel = self.cancel.clone();
        let cancelled = async move {
            // A dropped sender means the thread is ending anyway: never fire for that.
            if cancel.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(cancelled);
        let mut sent = 0u64;
        loop {
            let next = tokio::select! {
                _ = tx.closed() => {
                    debug!(key, sent, "body receiver dropped, stopping download");
                    return;
                }
                _ = &mut cancelled => break,
                next = tokio::time::timeout(self.idle_timeout, body.next()) => next,
            };
            let item = next.unwrap_or_else(|_| {
                Some(Err(OriginError::Unavailable(format!(
                    "no body data for {:?}",
                    self.idle_timeout
                ))))
            });
            match item {
                None => {
                    debug!(key, sent, "body streamed");
                    return;
                }
                Some(Ok(chunk)) => {
                    let n = chunk.len() as u64;
                    if chunk.is_empty() {
                        continue;
                    }
                    tokio::select! {
                        res = tx.send(Ok(chunk)) => if res.is_err() {
                            debug!(key, sent, "body receiver dropped, stopping download");
                            return;
                        },
                        _ = &mut cancelled => break,
                    }
                    sent += n;
                    self.stats.bytes_in.fetch_add(n, Ordering::Relaxed);
                }
                Some(Err(e)) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(key, sent, error = %e, "origin body broke mid-stream");
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        // Cancelled by shutdown. If the channel is full the receiver sees the buffered chunks
        // and then the end: it must compare what it got with the range length.
        warn!(key, sent, "origin bridge shutting down, abandoning body");
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        let _ = tx.try_send(Err(OriginError::Closed));
    }
}

impl OriginStats {
    /// Counts one request's latency in its (non-cumulative) bucket, the sum and the count.
    pub(crate) fn record_latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let idx = LATENCY_BOUNDS_SECONDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BOUNDS_SECONDS.len());
        self.latency_buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(
            d.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
        self.latency_count.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;

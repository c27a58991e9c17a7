//! The origin behind the bridge: one backend (S3 or a local directory) wrapped by the
//! request layer that injects failures, retries, and keeps [`OriginStats`].

mod local;
mod s3;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use crate::{
    BodyStream, BucketInfo, CopyResult, CopySource, GetObject, ListPage, ListParams, ObjectLoc,
    OriginConfig, OriginDeadlines, OriginError, OriginKind, OriginStats, PartsPage, PutMeta,
    PutResult, RemoteMeta, UploadsPage, UploadsParams, LATENCY_BOUNDS_SECONDS,
};

/// Longest wait between two attempts of the bridge's own retry loop.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest wait between two attempts of the SDK's standard retry strategy (its default
/// `max_backoff`), used to bound a background operation's retries.
const SDK_MAX_BACKOFF: Duration = Duration::from_secs(20);

/// The time bounds of one operation, worked out from its [`Class`] and [`OriginDeadlines`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    /// The whole operation ends by then (all attempts and backoffs included).
    deadline: tokio::time::Instant,
    /// Length of the whole budget, for the error message.
    total: Duration,
    /// A per-attempt bound to give the SDK instead of the client's `operation_timeout`
    /// (operations that send a body; background operations).
    pub attempt: Option<Duration>,
    /// Which bound this is, for the error message.
    bound: &'static str,
}

/// Who waits for an operation, which decides its time bounds (see [`OriginDeadlines`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A client request waits: the whole operation is bounded by `request_deadline`.
    Foreground,
    /// The uploader: each attempt is bounded by `background_attempt_timeout`.
    Background,
}

/// A job as queued for a bridge thread.
pub(crate) struct Envelope {
    pub job: Job,
    pub class: Class,
    /// When the caller handed it over: queueing time counts against the deadline.
    pub enqueued: Instant,
}

/// One request from a caller, with the channel for its reply.
pub(crate) enum Job {
    /// `bucket: None`: the configured bucket, with the configured prefix before `key`.
    Get {
        bucket: Option<String>,
        key: String,
        range: Option<(u64, u64)>,
        part: Option<u32>,
        /// Conditional GET: answered `NotModified` while the object's ETag is this one.
        if_none_match: Option<String>,
        reply: oneshot::Sender<Result<GetObject, OriginError>>,
    },
    Head {
        bucket: Option<String>,
        key: String,
        part: Option<u32>,
        reply: oneshot::Sender<Result<RemoteMeta, OriginError>>,
    },
    Put {
        bucket: Option<String>,
        key: String,
        src: crate::PutSource,
        meta: PutMeta,
        reply: oneshot::Sender<Result<PutResult, OriginError>>,
    },
    Delete {
        bucket: Option<String>,
        key: String,
        reply: oneshot::Sender<Result<(), OriginError>>,
    },
    EnsureBucket {
        reply: oneshot::Sender<Result<(), OriginError>>,
    },
    /// Bucket-aware operations of the S3 API without a streamed body.
    Call {
        call: Call,
        reply: oneshot::Sender<Result<Reply, OriginError>>,
    },
}

/// A bucket-aware origin operation (S3 API passthrough).
#[derive(Debug, Clone)]
pub(crate) enum Call {
    ListBuckets,
    CreateBucket(String),
    HeadBucket(String),
    DeleteBucket(String),
    List(String, ListParams),
    Copy {
        dst: ObjectLoc,
        src: CopySource,
        /// Some: replace the metadata (directive REPLACE); None: copy it.
        meta: Option<PutMeta>,
    },
    CreateMultipart {
        loc: ObjectLoc,
        meta: PutMeta,
    },
    UploadPart {
        loc: ObjectLoc,
        upload_id: String,
        part: u32,
        path: PathBuf,
        offset: u64,
        len: u64,
        md5_hex: Option<String>,
    },
    UploadPartCopy {
        loc: ObjectLoc,
        upload_id: String,
        part: u32,
        src: CopySource,
        /// Inclusive byte range.
        range: Option<(u64, u64)>,
    },
    Complete {
        loc: ObjectLoc,
        upload_id: String,
        parts: Vec<(u32, String)>,
    },
    Abort {
        loc: ObjectLoc,
        upload_id: String,
    },
    ListParts {
        loc: ObjectLoc,
        upload_id: String,
        max_parts: u32,
        marker: Option<u32>,
    },
    ListUploads(String, UploadsParams),
    /// GetObjectTagging.
    GetTagging(ObjectLoc),
    /// PutObjectTagging: the whole tag set, replacing the object's.
    PutTagging(ObjectLoc, Vec<(String, String)>),
    /// DeleteObjectTagging.
    DeleteTagging(ObjectLoc),
}

#[derive(Debug)]
pub(crate) enum Reply {
    Unit,
    Buckets(Vec<BucketInfo>),
    List(ListPage),
    Copy(CopyResult),
    Text(String),
    Parts(PartsPage),
    Uploads(UploadsPage),
    Tags(Vec<(String, String)>),
}

/// The answer a backend gives for an operation it does not support.
pub(crate) fn not_implemented(what: &str) -> OriginError {
    OriginError::Service {
        status: 501,
        code: "NotImplemented".into(),
        message: format!("{what} is not supported by this origin"),
    }
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

    /// The next item if it is already here (`None`: not yet, or this source cannot say
    /// without waiting). An S3 body's pending poll is dropped safely; a local file read
    /// is not (its partial read would be lost), so a local body is never asked.
    fn ready(&mut self) -> Option<Option<Result<Bytes, OriginError>>> {
        match self {
            BodySource::S3(_) => futures::FutureExt::now_or_never(self.next()),
            BodySource::Local(_) => None,
        }
    }
}

pub(crate) enum Backend {
    S3(s3::S3Origin),
    Local(local::LocalOrigin),
}

impl Backend {
    async fn get(
        &self,
        bucket: Option<&str>,
        key: &str,
        range: Option<(u64, u64)>,
        part: Option<u32>,
        if_none_match: Option<&str>,
    ) -> Result<OpenedGet, OriginError> {
        match self {
            Backend::S3(o) => o.get(bucket, key, range, part, if_none_match).await,
            Backend::Local(o) => o.bucket(bucket)?.get(key, range, part, if_none_match).await,
        }
    }

    async fn head(
        &self,
        bucket: Option<&str>,
        key: &str,
        part: Option<u32>,
    ) -> Result<RemoteMeta, OriginError> {
        match self {
            Backend::S3(o) => o.head(bucket, key, part).await,
            Backend::Local(o) => o.bucket(bucket)?.head(key, part).await,
        }
    }

    async fn call(&self, call: &Call, limit: &Limit) -> Result<Reply, OriginError> {
        match self {
            Backend::S3(o) => o.call(call, limit.attempt).await,
            Backend::Local(o) => o.call(call).await,
        }
    }

    async fn put_file(
        &self,
        bucket: Option<&str>,
        key: &str,
        src: &crate::PutSource,
        meta: &PutMeta,
        attempt: Option<Duration>,
    ) -> Result<PutResult, OriginError> {
        match self {
            Backend::S3(o) => o.put_file(bucket, key, src, meta, attempt).await,
            Backend::Local(o) => o.bucket(bucket)?.put(key, src.clone(), meta).await,
        }
    }

    async fn delete(
        &self,
        bucket: Option<&str>,
        key: &str,
        attempt: Option<Duration>,
    ) -> Result<(), OriginError> {
        match self {
            Backend::S3(o) => o.delete(bucket, key, attempt).await,
            Backend::Local(o) => o.bucket(bucket)?.delete(key).await,
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
    Call,
}

impl Op {
    /// The S3 name of the operation, for messages.
    fn name(self) -> &'static str {
        match self {
            Op::Get => "GetObject",
            Op::Head => "HeadObject",
            Op::Put => "PutObject",
            Op::Delete => "DeleteObject",
            Op::EnsureBucket => "HeadBucket/CreateBucket",
            Op::Call => "call",
        }
    }
}

impl Call {
    /// The S3 name of the operation, for messages.
    fn name(&self) -> &'static str {
        match self {
            Call::ListBuckets => "ListBuckets",
            Call::CreateBucket(_) => "CreateBucket",
            Call::HeadBucket(_) => "HeadBucket",
            Call::DeleteBucket(_) => "DeleteBucket",
            Call::List(..) => "ListObjectsV2",
            Call::Copy { .. } => "CopyObject",
            Call::CreateMultipart { .. } => "CreateMultipartUpload",
            Call::UploadPart { .. } => "UploadPart",
            Call::UploadPartCopy { .. } => "UploadPartCopy",
            Call::Complete { .. } => "CompleteMultipartUpload",
            Call::Abort { .. } => "AbortMultipartUpload",
            Call::ListParts { .. } => "ListParts",
            Call::ListUploads(..) => "ListMultipartUploads",
            Call::GetTagging(_) => "GetObjectTagging",
            Call::PutTagging(..) => "PutObjectTagging",
            Call::DeleteTagging(_) => "DeleteObjectTagging",
        }
    }

    /// Bytes the operation sends to the origin.
    fn body_len(&self) -> u64 {
        match self {
            Call::UploadPart { len, .. } => *len,
            _ => 0,
        }
    }
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
    deadlines: OriginDeadlines,
    /// Turns true when the bridge gives up waiting for in-flight bodies at shutdown.
    cancel: watch::Receiver<bool>,
}

impl Service {
    pub async fn connect(
        cfg: &OriginConfig,
        deadlines: OriginDeadlines,
        stats: Arc<OriginStats>,
        cancel: watch::Receiver<bool>,
    ) -> Result<Service, OriginError> {
        let deadlines = deadlines.normalized();
        let backend = match &cfg.kind {
            OriginKind::S3 { .. } => {
                Backend::S3(s3::S3Origin::connect(cfg, &deadlines, stats.clone()).await?)
            }
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
            deadlines,
            cancel,
        })
    }

    /// Each operation's future is boxed: the SDK's are tens of KiB, and this future is
    /// moved into a task per request (callgrind showed ~80 KB of memcpy per miss).
    pub async fn handle(&self, envelope: Envelope) {
        let Envelope {
            job,
            class,
            enqueued,
        } = envelope;
        match job {
            Job::Get {
                bucket,
                key,
                range,
                part,
                if_none_match,
                reply,
            } => {
                let limit = self.limit(class, enqueued, 0);
                let cond = if_none_match.as_deref();
                Box::pin(self.handle_get(bucket, key, range, part, cond, &limit, reply)).await
            }
            Job::Head {
                bucket,
                key,
                part,
                reply,
            } => {
                let limit = self.limit(class, enqueued, 0);
                let _ = reply.send(Box::pin(self.handle_head(bucket, key, part, &limit)).await);
            }
            Job::Put {
                bucket,
                key,
                src,
                meta,
                reply,
            } => {
                let limit = self.limit(class, enqueued, src.len());
                let _ =
                    reply.send(Box::pin(self.handle_put(bucket, key, &src, meta, &limit)).await);
            }
            Job::Delete { bucket, key, reply } => {
                let limit = self.limit(class, enqueued, 0);
                let _ = reply.send(Box::pin(self.handle_delete(bucket, key, &limit)).await);
            }
            Job::Call { call, reply } => {
                let limit = self.limit(class, enqueued, call.body_len());
                let _ = reply.send(Box::pin(self.handle_call(call, &limit)).await);
            }
            Job::EnsureBucket { reply } => {
                let limit = self.limit(class, enqueued, 0);
                let res = Box::pin(self.run(Op::EnsureBucket, "", &limit, || {
                    self.backend.ensure_bucket()
                }))
                .await;
                let _ = reply.send(res);
            }
        }
    }

    /// The time bounds of an operation of `class` queued at `enqueued` that sends
    /// `body_len` bytes.
    fn limit(&self, class: Class, enqueued: Instant, body_len: u64) -> Limit {
        let d = &self.deadlines;
        let allowance = d.transfer_allowance(body_len);
        let (total, attempt, bound) = match class {
            Class::Foreground => {
                let total = d.request_deadline.saturating_add(allowance);
                // An attempt that sends a body may take as long as the whole budget
                // (the client's operation_timeout would cut a large upload short).
                (total, (body_len > 0).then_some(total), "request deadline")
            }
            Class::Background => {
                let attempt = d.background_attempt_timeout.saturating_add(allowance);
                let total = attempt
                    .saturating_add(SDK_MAX_BACKOFF)
                    .saturating_mul(self.max_attempts);
                (total, Some(attempt), "background operation bound")
            }
        };
        Limit {
            deadline: tokio::time::Instant::from_std(enqueued + total),
            total,
            attempt,
            bound,
        }
    }

    /// GET: opens the object within the deadline, replies with the head, then streams the
    /// body into the reply's channel.
    async fn handle_get(
        &self,
        bucket: Option<String>,
        key: String,
        range: Option<(u64, u64)>,
        part: Option<u32>,
        if_none_match: Option<&str>,
        limit: &Limit,
        reply: oneshot::Sender<Result<GetObject, OriginError>>,
    ) {
        let key = self.origin_key(&bucket, &key);
        let b = bucket.as_deref();
        let res = self
            .run(Op::Get, &key, limit, || {
                self.backend.get(b, &key, range, part, if_none_match)
            })
            .await;
        match res {
            Ok(OpenedGet {
                meta,
                range,
                mut body,
            }) => {
                let (tx, rx) = mpsc::channel(self.body_channel_chunks);
                // The bytes that came with the response head go with it: the shard takes
                // the head and the first chunk in one wake-up, and a small object's client
                // gets head and body in one write instead of two.
                let (sent, ended) = self.prefill(&key, &mut body, &tx);
                let obj = GetObject {
                    meta,
                    range,
                    body: BodyStream { rx },
                };
                if reply.send(Ok(obj)).is_ok() && !ended {
                    self.pump(&key, body, tx, sent).await;
                }
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    async fn handle_head(
        &self,
        bucket: Option<String>,
        key: String,
        part: Option<u32>,
        limit: &Limit,
    ) -> Result<RemoteMeta, OriginError> {
        let key = self.origin_key(&bucket, &key);
        let b = bucket.as_deref();
        self.run(Op::Head, &key, limit, || self.backend.head(b, &key, part))
            .await
    }

    async fn handle_put(
        &self,
        bucket: Option<String>,
        key: String,
        src: &crate::PutSource,
        meta: PutMeta,
        limit: &Limit,
    ) -> Result<PutResult, OriginError> {
        let key = self.origin_key(&bucket, &key);
        let b = bucket.as_deref();
        let res = self
            .run(Op::Put, &key, limit, || {
                self.backend.put_file(b, &key, src, &meta, limit.attempt)
            })
            .await;
        if res.is_ok() {
            self.stats.bytes_out.fetch_add(src.len(), Ordering::Relaxed);
        }
        res
    }

    async fn handle_delete(
        &self,
        bucket: Option<String>,
        key: String,
        limit: &Limit,
    ) -> Result<(), OriginError> {
        let key = self.origin_key(&bucket, &key);
        let b = bucket.as_deref();
        self.run(Op::Delete, &key, limit, || {
            self.backend.delete(b, &key, limit.attempt)
        })
        .await
    }

    async fn handle_call(&self, call: Call, limit: &Limit) -> Result<Reply, OriginError> {
        let what = call.name();
        self.run(Op::Call, what, limit, || self.backend.call(&call, limit))
            .await
    }

    /// The configured prefix applies to the configured bucket only.
    fn origin_key(&self, bucket: &Option<String>, key: &str) -> String {
        match bucket {
            Some(_) => key.to_owned(),
            None => self.full_key(key),
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
    async fn run<T, F, Fut>(
        &self,
        op: Op,
        key: &str,
        limit: &Limit,
        attempt_fn: F,
    ) -> Result<T, OriginError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OriginError>>,
    {
        let counter = match op {
            Op::Get => Some(&self.stats.requests_get),
            Op::Head => Some(&self.stats.requests_head),
            Op::Put => Some(&self.stats.requests_put),
            Op::Delete => Some(&self.stats.requests_delete),
            Op::EnsureBucket | Op::Call => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let start = Instant::now();
        let attempts = AtomicU32::new(1);
        let result = match tokio::time::timeout_at(
            limit.deadline,
            self.attempts(op, key, &attempts, attempt_fn),
        )
        .await
        {
            Ok(res) => res,
            Err(_) => Err(OriginError::timed_out(
                &format!("origin {} {key:?}", op.name()),
                limit.total,
                limit.bound,
            )),
        };
        let attempt = attempts.load(Ordering::Relaxed);
        let elapsed = start.elapsed();
        self.stats.record_latency(elapsed);
        match &result {
            Ok(_) => debug!(?op, key, ?elapsed, "origin request done"),
            // A conditional GET's answer: the copy is current. Not a failure.
            Err(OriginError::NotModified) => debug!(?op, key, ?elapsed, "origin: not modified"),
            Err(OriginError::NotFound) => {
                self.stats.not_found.fetch_add(1, Ordering::Relaxed);
                debug!(?op, key, ?elapsed, "origin: not found");
            }
            Err(e @ OriginError::Service { .. }) => {
                debug!(?op, key, ?elapsed, error = %e, "origin answered with an error");
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!(?op, key, ?elapsed, attempts = attempt, error = %e, "origin request failed");
            }
        }
        result
    }

    /// The attempts of one request: failure injection, and retries (with backoff) of
    /// `Unavailable` errors the backend did not already retry. Counts into `attempts`.
    async fn attempts<T, F, Fut>(
        &self,
        op: Op,
        key: &str,
        attempts: &AtomicU32,
        mut attempt_fn: F,
    ) -> Result<T, OriginError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OriginError>>,
    {
        loop {
            let attempt = attempts.load(Ordering::Relaxed);
            // Injection targets object operations; set-up calls are left alone.
            let (res, injected) = if !matches!(op, Op::EnsureBucket | Op::Call) && self.inject() {
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
                    attempts.store(attempt + 1, Ordering::Relaxed);
                }
                other => return other,
            }
        }
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
    /// `body_idle_timeout`, the caller drops its receiver, or shutdown cancels it.
    /// Moves the chunks already here into the fresh channel, as far as it has room.
    /// Returns the bytes moved and whether the body ended (or broke) meanwhile.
    fn prefill(
        &self,
        key: &str,
        body: &mut BodySource,
        tx: &mpsc::Sender<Result<Bytes, OriginError>>,
    ) -> (u64, bool) {
        let mut sent = 0u64;
        while tx.capacity() > 0 {
            match body.ready() {
                None => break,
                Some(None) => return (sent, true),
                Some(Some(Ok(chunk))) => {
                    let n = chunk.len() as u64;
                    if n == 0 {
                        continue;
                    }
                    if tx.try_send(Ok(chunk)).is_err() {
                        // Cannot happen with room checked; the receiver sees a short body.
                        return (sent, true);
                    }
                    sent += n;
                    self.stats.bytes_in.fetch_add(n, Ordering::Relaxed);
                }
                Some(Some(Err(e))) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(key, sent, error = %e, "origin body broke mid-stream");
                    let _ = tx.try_send(Err(e));
                    return (sent, true);
                }
            }
        }
        (sent, false)
    }

    async fn pump(
        &self,
        key: &str,
        mut body: BodySource,
        tx: mpsc::Sender<Result<Bytes, OriginError>>,
        mut sent: u64,
    ) {
        let mut cancel = self.cancel.clone();
        let cancelled = async move {
            // A dropped sender means the thread is ending anyway: never fire for that.
            if cancel.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(cancelled);
        loop {
            let next = tokio::select! {
                _ = tx.closed() => {
                    debug!(key, sent, "body receiver dropped, stopping download");
                    return;
                }
                _ = &mut cancelled => break,
                next = tokio::time::timeout(self.deadlines.body_idle_timeout, body.next()) => next,
            };
            let item = next.unwrap_or_else(|_| {
                Some(Err(OriginError::timed_out(
                    &format!("origin GetObject {key:?} body (no data after {sent} bytes)"),
                    self.deadlines.body_idle_timeout,
                    "body idle timeout",
                )))
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

//! # nearcache-s3: the origin bridge
//!
//! Goals: run the origin client (aws-sdk-s3, or the embedded local-directory origin)
//! on its own thread(s) with a small tokio runtime, and let thread-per-core shards reach
//! it over channels. Bodies stream both ways in bounded chunks; nothing is buffered whole.
//! Errors say whether a retry can help.
//! Non-goals: caching, shards, HTTP serving. This crate knows nothing of the shard engine.
// Production builds forbid unsafe; only the test-support module (feature `testutil`: process
// control of the test S3 server) needs it.
#![cfg_attr(not(feature = "testutil"), forbid(unsafe_code))]

//!
//! ## Threads
//!
//! ```text
//!  shard threads (monoio / tokio / block_on)
//!     │  Bridge::get/head/put_file/...   (tokio::sync::mpsc, round-robin over threads)
//!     ▼
//!  ┌──────────────────────┐  ┌──────────────────────┐
//!  │ nearcache-s3-0       │  │ nearcache-s3-1 ...   │   `OriginConfig::threads` std threads,
//!  │ tokio current-thread │  │ tokio current-thread │   each with its own runtime and its
//!  │ one task per request │  │                      │   own origin client (S3 or local dir)
//!  └──────────┬───────────┘  └──────────────────────┘
//!             │ reply: oneshot; GET bodies: bounded mpsc of chunks (`body_channel_chunks`)
//!             ▼
//!         the calling shard
//! ```
//!
//! The public async methods only use `tokio::sync` channels, which work from any executor;
//! nothing here spawns onto or sleeps on the caller's runtime.
//!
//! ## Retries
//!
//! For S3, aws-sdk-s3's standard retry strategy retries 5xx, throttling and connection
//! errors (`max_attempts`, `initial_backoff`); its retries are counted in
//! [`OriginStats::retries`] by an interceptor. The bridge itself retries `Unavailable`
//! errors the SDK did not already retry (the local origin, injected failures) with
//! exponential backoff and jitter. A GET body that breaks mid-stream is not retried: the
//! stream yields an `Err` and the caller decides.
//!
//! ## Timeouts
//!
//! No operation waits forever on an origin that accepts connections and never answers
//! (see [`OriginDeadlines`]):
//!
//! - client-facing operations (every method of a [`Bridge`] from [`Bridge::start`]) end
//!   within `request_deadline` from the call, counting time queued, connects, every SDK
//!   attempt and every backoff (plus `len / min_transfer_rate` when they send a body);
//! - background operations (a [`Bridge::background`] handle: the uploader) bound each
//!   attempt by `background_attempt_timeout` (plus the transfer allowance) and the whole
//!   operation by `max_attempts` of those plus backoffs;
//! - a GET body fails when no chunk arrives for `body_idle_timeout`.
//!
//! Each ends in a retryable `Unavailable` error that says what timed out after how long
//! ([`OriginError::is_timeout`]). Below that, `connect_timeout` bounds TCP/TLS connects and
//! `operation_timeout` (capped by `request_deadline`) is the SDK's per-attempt timeout; for
//! a GET the SDK's attempt ends when the response head arrives (the body is returned
//! unread), so it bounds time to first byte and never cuts a long download.

mod error;
mod origin;
#[cfg(feature = "testutil")]
pub mod testutil;
mod types;

pub use error::OriginError;
pub use types::*;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::origin::{Call, Class, Envelope, Job, Reply, Service};

/// Requests queued per bridge thread before callers wait.
const REQUEST_QUEUE: usize = 1024;
/// How long `shutdown` waits for in-flight requests (and GET bodies whose receivers are
/// still held) before cancelling them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 10 });

/// Handle to the bridge. Cheap to clone, `Send + Sync`; usable from any runtime
/// (monoio shards with the `sync` feature, tokio, or plain threads via `block_on`).
#[derive(Clone)]
pub struct Bridge {
    inner: Arc<Inner>,
    /// Which time bounds this handle's operations get.
    class: Class,
}

struct Inner {
    /// One request queue per bridge thread; emptied by `shutdown`.
    senders: Mutex<Vec<mpsc::Sender<Envelope>>>,
    next: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
    stats: Arc<OriginStats>,
    description: String,
}

impl Bridge {
    /// Starts the bridge thread(s) and connects the origin described by `cfg`, with the
    /// default [`OriginDeadlines`].
    pub fn start(cfg: OriginConfig) -> Result<Bridge, OriginError> {
        Bridge::start_with(cfg, OriginDeadlines::default())
    }

    /// Starts the bridge thread(s) and connects the origin described by `cfg`; no
    /// operation outlasts the bounds of `deadlines` (zero values mean the defaults).
    pub fn start_with(
        cfg: OriginConfig,
        deadlines: OriginDeadlines,
    ) -> Result<Bridge, OriginError> {
        let threads = cfg.threads.max(1);
        let stats = Arc::new(OriginStats::default());
        let description = describe_config(&cfg);
        let cfg = Arc::new(cfg);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), OriginError>>();
        let mut senders = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let (tx, rx) = mpsc::channel::<Envelope>(REQUEST_QUEUE);
            senders.push(tx);
            let cfg = cfg.clone();
            let stats = stats.clone();
            let ready_tx = ready_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("nearcache-s3-{i}"))
                .spawn(move || bridge_thread(i, cfg, deadlines, stats, rx, ready_tx))
                .map_err(|e| OriginError::Rejected(format!("spawn bridge thread: {e}")))?;
            handles.push(handle);
        }
        drop(ready_tx);
        let mut failure = None;
        for _ in 0..threads {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(e),
                Err(_) => {
                    failure = Some(OriginError::Rejected(
                        "bridge thread died while starting".into(),
                    ))
                }
            }
        }
        let bridge = Bridge {
            inner: Arc::new(Inner {
                senders: Mutex::new(senders),
                next: AtomicUsize::new(0),
                threads: Mutex::new(handles),
                stats,
                description,
            }),
            class: Class::Foreground,
        };
        if let Some(e) = failure {
            bridge.shutdown();
            return Err(e);
        }
        info!(origin = %bridge.inner.description, threads, "origin bridge started");
        Ok(bridge)
    }

    /// Human-readable description for the start-up log ("s3 http://127.0.0.1:5000 bucket b" /
    /// "local origin at DIR").
    pub fn describe(&self) -> String {
        self.inner.description.clone()
    }

    pub fn stats(&self) -> Arc<OriginStats> {
        self.inner.stats.clone()
    }

    /// A handle on the same bridge for background work that no client waits on (the
    /// uploader's puts and deletes): its operations get the longer per-attempt bound
    /// `background_attempt_timeout` instead of the total `request_deadline`.
    pub fn background(&self) -> Bridge {
        Bridge {
            inner: self.inner.clone(),
            class: Class::Background,
        }
    }

    /// GET an object (optionally a byte range, end exclusive). The body streams in chunks.
    pub async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<GetObject, OriginError> {
        if let Some((a, b)) = range {
            if b <= a {
                return Err(OriginError::InvalidRange);
            }
        }
        let (reply, rx) = oneshot::channel();
        self.call(
            Job::Get {
                bucket: None,
                key: key.to_owned(),
                range,
                part: None,
                if_none_match: None,
                reply,
            },
            rx,
        )
        .await
    }

    /// Conditional GET of a whole object (native keys without a bucket, or `loc`):
    /// `Err(NotModified)` while its ETag is still `etag` (unquoted), else the object.
    pub async fn get_if_changed(
        &self,
        bucket: Option<&str>,
        key: &str,
        etag: &str,
    ) -> Result<GetObject, OriginError> {
        let (reply, rx) = oneshot::channel();
        let job = Job::Get {
            bucket: bucket.map(str::to_owned),
            key: key.to_owned(),
            range: None,
            part: None,
            if_none_match: Some(etag.to_owned()),
            reply,
        };
        self.call(job, rx).await
    }

    pub async fn head(&self, key: &str) -> Result<RemoteMeta, OriginError> {
        let (reply, rx) = oneshot::channel();
        self.call(
            Job::Head {
                bucket: None,
                key: key.to_owned(),
                part: None,
                reply,
            },
            rx,
        )
        .await
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
        self.put(key, PutSource::File { path, offset, len }, meta)
            .await
    }

    /// Uploads `src` (a file slice or bytes in memory). Retries (the source is re-readable).
    pub async fn put(
        &self,
        key: &str,
        src: PutSource,
        meta: PutMeta,
    ) -> Result<PutResult, OriginError> {
        let (reply, rx) = oneshot::channel();
        let job = Job::Put {
            bucket: None,
            key: key.to_owned(),
            src,
            meta,
            reply,
        };
        self.call(job, rx).await
    }

    /// Deletes an object; deleting a missing object succeeds (as in S3).
    pub async fn delete(&self, key: &str) -> Result<(), OriginError> {
        let (reply, rx) = oneshot::channel();
        self.call(
            Job::Delete {
                bucket: None,
                key: key.to_owned(),
                reply,
            },
            rx,
        )
        .await
    }

    // ---- bucket-aware operations (the S3 API): explicit bucket, key as given (no prefix).
    // Origin error answers other than 404-on-object come back as `OriginError::Service`.

    /// GET `loc` (optionally a byte range, end exclusive, or one part of a multipart object).
    pub async fn get_in(
        &self,
        loc: &ObjectLoc,
        range: Option<(u64, u64)>,
        part: Option<u32>,
    ) -> Result<GetObject, OriginError> {
        if let Some((a, b)) = range {
            if b <= a {
                return Err(OriginError::InvalidRange);
            }
        }
        let (reply, rx) = oneshot::channel();
        let job = Job::Get {
            bucket: Some(loc.bucket.clone()),
            key: loc.key.clone(),
            range,
            part,
            if_none_match: None,
            reply,
        };
        self.call(job, rx).await
    }

    pub async fn head_in(
        &self,
        loc: &ObjectLoc,
        part: Option<u32>,
    ) -> Result<RemoteMeta, OriginError> {
        let (reply, rx) = oneshot::channel();
        let job = Job::Head {
            bucket: Some(loc.bucket.clone()),
            key: loc.key.clone(),
            part,
            reply,
        };
        self.call(job, rx).await
    }

    /// Uploads `len` bytes at `offset` of the file at `path` to `loc`.
    pub async fn put_file_in(
        &self,
        loc: &ObjectLoc,
        path: PathBuf,
        offset: u64,
        len: u64,
        meta: PutMeta,
    ) -> Result<PutResult, OriginError> {
        self.put_in(loc, PutSource::File { path, offset, len }, meta)
            .await
    }

    /// Uploads `src` (a file slice or bytes in memory) to `loc`.
    pub async fn put_in(
        &self,
        loc: &ObjectLoc,
        src: PutSource,
        meta: PutMeta,
    ) -> Result<PutResult, OriginError> {
        let (reply, rx) = oneshot::channel();
        let job = Job::Put {
            bucket: Some(loc.bucket.clone()),
            key: loc.key.clone(),
            src,
            meta,
            reply,
        };
        self.call(job, rx).await
    }

    pub async fn delete_in(&self, loc: &ObjectLoc) -> Result<(), OriginError> {
        let (reply, rx) = oneshot::channel();
        let job = Job::Delete {
            bucket: Some(loc.bucket.clone()),
            key: loc.key.clone(),
            reply,
        };
        self.call(job, rx).await
    }

    async fn op(&self, call: Call) -> Result<Reply, OriginError> {
        let (reply, rx) = oneshot::channel();
        self.call(Job::Call { call, reply }, rx).await
    }

    pub async fn list_buckets(&self) -> Result<Vec<BucketInfo>, OriginError> {
        match self.op(Call::ListBuckets).await? {
            Reply::Buckets(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    pub async fn create_bucket(&self, bucket: &str) -> Result<(), OriginError> {
        self.op(Call::CreateBucket(bucket.to_owned()))
            .await
            .map(drop)
    }

    /// `Service { status: 404, code: "NoSuchBucket" }` when it does not exist.
    pub async fn head_bucket(&self, bucket: &str) -> Result<(), OriginError> {
        self.op(Call::HeadBucket(bucket.to_owned())).await.map(drop)
    }

    pub async fn delete_bucket(&self, bucket: &str) -> Result<(), OriginError> {
        self.op(Call::DeleteBucket(bucket.to_owned()))
            .await
            .map(drop)
    }

    /// One ListObjectsV2 page.
    pub async fn list_objects(
        &self,
        bucket: &str,
        params: ListParams,
    ) -> Result<ListPage, OriginError> {
        match self.op(Call::List(bucket.to_owned(), params)).await? {
            Reply::List(p) => Ok(p),
            r => Err(unexpected(r)),
        }
    }

    /// Server-side copy. `meta`: Some = replace the metadata, None = copy it.
    pub async fn copy_object(
        &self,
        dst: &ObjectLoc,
        src: CopySource,
        meta: Option<PutMeta>,
    ) -> Result<CopyResult, OriginError> {
        let call = Call::Copy {
            dst: dst.clone(),
            src,
            meta,
        };
        match self.op(call).await? {
            Reply::Copy(c) => Ok(c),
            r => Err(unexpected(r)),
        }
    }

    /// Returns the upload id.
    pub async fn create_multipart(
        &self,
        loc: &ObjectLoc,
        meta: PutMeta,
    ) -> Result<String, OriginError> {
        let call = Call::CreateMultipart {
            loc: loc.clone(),
            meta,
        };
        match self.op(call).await? {
            Reply::Text(id) => Ok(id),
            r => Err(unexpected(r)),
        }
    }

    /// Uploads one part from `len` bytes at `offset` of a file; returns its ETag (unquoted).
    #[expect(clippy::too_many_arguments, reason = "mirrors S3's UploadPart")]
    pub async fn upload_part(
        &self,
        loc: &ObjectLoc,
        upload_id: &str,
        part: u32,
        path: PathBuf,
        offset: u64,
        len: u64,
        md5_hex: Option<String>,
    ) -> Result<String, OriginError> {
        let call = Call::UploadPart {
            loc: loc.clone(),
            upload_id: upload_id.to_owned(),
            part,
            path,
            offset,
            len,
            md5_hex,
        };
        match self.op(call).await? {
            Reply::Text(etag) => Ok(etag),
            r => Err(unexpected(r)),
        }
    }

    /// Copies (an inclusive byte range of) `src` into one part.
    pub async fn upload_part_copy(
        &self,
        loc: &ObjectLoc,
        upload_id: &str,
        part: u32,
        src: CopySource,
        range: Option<(u64, u64)>,
    ) -> Result<CopyResult, OriginError> {
        let call = Call::UploadPartCopy {
            loc: loc.clone(),
            upload_id: upload_id.to_owned(),
            part,
            src,
            range,
        };
        match self.op(call).await? {
            Reply::Copy(c) => Ok(c),
            r => Err(unexpected(r)),
        }
    }

    /// Completes an upload from (part number, ETag) pairs; returns the object's ETag.
    pub async fn complete_multipart(
        &self,
        loc: &ObjectLoc,
        upload_id: &str,
        parts: Vec<(u32, String)>,
    ) -> Result<String, OriginError> {
        let call = Call::Complete {
            loc: loc.clone(),
            upload_id: upload_id.to_owned(),
            parts,
        };
        match self.op(call).await? {
            Reply::Text(etag) => Ok(etag),
            r => Err(unexpected(r)),
        }
    }

    pub async fn abort_multipart(
        &self,
        loc: &ObjectLoc,
        upload_id: &str,
    ) -> Result<(), OriginError> {
        let call = Call::Abort {
            loc: loc.clone(),
            upload_id: upload_id.to_owned(),
        };
        self.op(call).await.map(drop)
    }

    pub async fn list_parts(
        &self,
        loc: &ObjectLoc,
        upload_id: &str,
        max_parts: u32,
        marker: Option<u32>,
    ) -> Result<PartsPage, OriginError> {
        let call = Call::ListParts {
            loc: loc.clone(),
            upload_id: upload_id.to_owned(),
            max_parts,
            marker,
        };
        match self.op(call).await? {
            Reply::Parts(p) => Ok(p),
            r => Err(unexpected(r)),
        }
    }

    pub async fn list_uploads(
        &self,
        bucket: &str,
        params: UploadsParams,
    ) -> Result<UploadsPage, OriginError> {
        match self
            .op(Call::ListUploads(bucket.to_owned(), params))
            .await?
        {
            Reply::Uploads(p) => Ok(p),
            r => Err(unexpected(r)),
        }
    }

    /// The object's tag set (key, value), in the origin's order.
    pub async fn get_tagging(&self, loc: &ObjectLoc) -> Result<Vec<(String, String)>, OriginError> {
        match self.op(Call::GetTagging(loc.clone())).await? {
            Reply::Tags(t) => Ok(t),
            r => Err(unexpected(r)),
        }
    }

    /// Replaces the object's tag set.
    pub async fn put_tagging(
        &self,
        loc: &ObjectLoc,
        tags: Vec<(String, String)>,
    ) -> Result<(), OriginError> {
        self.op(Call::PutTagging(loc.clone(), tags)).await.map(drop)
    }

    pub async fn delete_tagging(&self, loc: &ObjectLoc) -> Result<(), OriginError> {
        self.op(Call::DeleteTagging(loc.clone())).await.map(drop)
    }

    /// Creates the bucket if it does not exist (used by tests and the local quick start).
    pub async fn ensure_bucket(&self) -> Result<(), OriginError> {
        let (reply, rx) = oneshot::channel();
        self.call(Job::EnsureBucket { reply }, rx).await
    }

    /// Stops accepting requests and joins the bridge thread(s) after in-flight requests end.
    ///
    /// Idempotent. Blocks the calling thread: call it from a plain thread (e.g. main once
    /// the shards have stopped), never from a bridge thread. In-flight GET bodies keep
    /// streaming until they end or their receiver is dropped, for at most 10 s
    /// (`SHUTDOWN_GRACE`); then they end with `Err(Closed)` (or, if the channel is full,
    /// just end: check the byte count against `GetObject::range`) and other requests still
    /// running reply `Closed`.
    pub fn shutdown(&self) {
        let had_senders = {
            let mut senders = self.inner.senders.lock().unwrap_or_else(|p| p.into_inner());
            let had = !senders.is_empty();
            senders.clear();
            had
        };
        let handles: Vec<JoinHandle<()>> = {
            let mut threads = self.inner.threads.lock().unwrap_or_else(|p| p.into_inner());
            threads.drain(..).collect()
        };
        for h in handles {
            if h.join().is_err() {
                error!("origin bridge thread panicked");
            }
        }
        if had_senders {
            info!(origin = %self.inner.description, "origin bridge stopped");
        }
    }

    async fn call<T>(
        &self,
        job: Job,
        rx: oneshot::Receiver<Result<T, OriginError>>,
    ) -> Result<T, OriginError> {
        let tx = {
            let senders = self.inner.senders.lock().unwrap_or_else(|p| p.into_inner());
            if senders.is_empty() {
                return Err(OriginError::Closed);
            }
            let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % senders.len();
            senders[i].clone()
        };
        let envelope = Envelope {
            job,
            class: self.class,
            enqueued: std::time::Instant::now(),
        };
        tx.send(envelope).await.map_err(|_| OriginError::Closed)?;
        drop(tx);
        rx.await.unwrap_or(Err(OriginError::Closed))
    }
}

fn unexpected(r: Reply) -> OriginError {
    OriginError::Rejected(format!("origin bridge: unexpected reply {r:?}"))
}

fn describe_config(cfg: &OriginConfig) -> String {
    let prefix = if cfg.prefix.is_empty() {
        String::new()
    } else {
        format!(" prefix {:?}", cfg.prefix)
    };
    match &cfg.kind {
        OriginKind::S3 {
            endpoint,
            region,
            bucket,
            ..
        } => format!(
            "s3 {} bucket {bucket}{prefix}",
            endpoint.clone().unwrap_or_else(|| format!("aws:{region}"))
        ),
        OriginKind::Local { dir } => format!("local origin at {}{prefix}", dir.display()),
    }
}

/// Body of one bridge thread: builds the runtime and the origin client, then serves jobs,
/// one task each, until the queue closes and all tasks have ended.
fn bridge_thread(
    index: usize,
    cfg: Arc<OriginConfig>,
    deadlines: OriginDeadlines,
    stats: Arc<OriginStats>,
    mut rx: mpsc::Receiver<Envelope>,
    ready: std::sync::mpsc::Sender<Result<(), OriginError>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(OriginError::Rejected(format!(
                "build tokio runtime: {e}"
            ))));
            return;
        }
    };
    rt.block_on(async move {
        let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
        let service = match Service::connect(&cfg, deadlines, stats, cancel_rx).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        drop(ready);
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                job = rx.recv() => match job {
                    Some(job) => {
                        let service = service.clone();
                        tasks.spawn(async move { service.handle(job).await });
                    }
                    None => break,
                },
                Some(res) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = res {
                        error!(thread = index, error = %e, "origin request task failed");
                    }
                }
            }
        }
        debug!(
            thread = index,
            in_flight = tasks.len(),
            "origin bridge draining"
        );
        if tokio::time::timeout(SHUTDOWN_GRACE, drain(index, &mut tasks))
            .await
            .is_err()
        {
            warn!(
                thread = index,
                in_flight = tasks.len(),
                "origin requests still running after {SHUTDOWN_GRACE:?}; cancelling them"
            );
            let _ = cancel_tx.send(true);
            if tokio::time::timeout(Duration::from_secs(1), drain(index, &mut tasks))
                .await
                .is_err()
            {
                tasks.abort_all();
            }
            drain(index, &mut tasks).await;
        }
    });
}

/// Waits for all request tasks of a bridge thread.
async fn drain(index: usize, tasks: &mut tokio::task::JoinSet<()>) {
    while let Some(res) = tasks.join_next().await {
        if let Err(e) = res {
            if !e.is_cancelled() {
                error!(thread = index, error = %e, "origin request task failed");
            }
        }
    }
}

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;

use crate::OriginError;

#[derive(Debug, Clone)]
pub enum OriginKind {
    S3 {
        endpoint: Option<String>,
        region: String,
        bucket: String,
        /// None: use the default AWS credential chain.
        access_key: Option<String>,
        secret_key: Option<String>,
        path_style: bool,
    },
    /// Objects as files in a directory (the quick start without any S3).
    Local { dir: PathBuf },
}

#[derive(Debug, Clone)]
pub struct OriginConfig {
    pub kind: OriginKind,
    /// Prepended to every key.
    pub prefix: String,
    /// Attempts per request for retryable errors (5xx, timeouts, connection errors).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub connect_timeout: Duration,
    /// Per-attempt timeout for metadata calls and for time to first byte. Capped by
    /// [`OriginDeadlines::request_deadline`] for client-facing operations.
    pub operation_timeout: Duration,
    /// Bridge threads (each one tokio current-thread runtime).
    pub threads: usize,
    /// Chunks buffered per streaming body between the bridge and a shard.
    pub body_channel_chunks: usize,
    /// Failure injection for tests: this fraction (0.0..=1.0) of requests fails with a
    /// retryable error before reaching the origin.
    pub inject_failure_rate: f64,
    /// CA certificates (PEM) the S3 client trusts instead of the system's roots: an
    /// S3-compatible store behind a private CA. None: the system's roots.
    pub ca_bundle: Option<std::path::PathBuf>,
}

/// Default [`OriginDeadlines::request_deadline`]: 10 s.
pub const DEFAULT_REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Default [`OriginDeadlines::body_idle_timeout`]: 10 s.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`OriginDeadlines::min_transfer_rate`]: 1 MiB/s.
pub const DEFAULT_MIN_TRANSFER_RATE: u64 = 1 << 20;
/// Default [`OriginDeadlines::background_attempt_timeout`]: 60 s.
pub const DEFAULT_BACKGROUND_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Upper bounds on how long an origin operation may take, so that no request (and no
/// background upload) waits forever on an origin that accepts connections but never
/// answers (a stopped process, a black-holed network).
///
/// Every limit ends the operation with [`OriginError::Unavailable`] (retryable) whose
/// message says what timed out and after how long.
///
/// A zero `Duration` (or rate) means "use the default": there is deliberately no way to
/// turn a bound off.
///
/// These are the knobs of [`OriginConfig`]'s timeouts that the server configuration does
/// not carry yet; [`Bridge::start`](crate::Bridge::start) uses [`OriginDeadlines::default`],
/// [`Bridge::start_with`](crate::Bridge::start_with) takes them explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginDeadlines {
    /// Total time a client-facing operation may take, from the moment the caller hands it
    /// to the bridge until the reply: time queued for a bridge thread, connects, every
    /// SDK attempt and every backoff between attempts. For a GET it ends when the response
    /// head has arrived (the body is bounded by `body_idle_timeout`). Operations that send
    /// a body (PUT, UploadPart) get `len / min_transfer_rate` on top.
    pub request_deadline: Duration,
    /// Longest gap between two chunks of a GET body; a longer stall ends the body stream
    /// with an `Err`.
    pub body_idle_timeout: Duration,
    /// Bytes per second an upload is assumed to reach at least: operations that send
    /// `len` bytes get `len / min_transfer_rate` added to their deadline (or attempt bound).
    pub min_transfer_rate: u64,
    /// Per-attempt bound of background operations (the uploader's put and delete, reached
    /// through [`Bridge::background`](crate::Bridge::background)), plus
    /// `len / min_transfer_rate` for a put. The whole background operation is bounded by
    /// `max_attempts` such attempts and the backoffs between them.
    pub background_attempt_timeout: Duration,
}

impl Default for OriginDeadlines {
    fn default() -> Self {
        OriginDeadlines {
            request_deadline: DEFAULT_REQUEST_DEADLINE,
            body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
            min_transfer_rate: DEFAULT_MIN_TRANSFER_RATE,
            background_attempt_timeout: DEFAULT_BACKGROUND_ATTEMPT_TIMEOUT,
        }
    }
}

impl OriginDeadlines {
    /// Replaces zero (unset) values by the defaults.
    pub fn normalized(self) -> OriginDeadlines {
        let d = OriginDeadlines::default();
        let or = |v: Duration, dflt: Duration| if v.is_zero() { dflt } else { v };
        OriginDeadlines {
            request_deadline: or(self.request_deadline, d.request_deadline),
            body_idle_timeout: or(self.body_idle_timeout, d.body_idle_timeout),
            min_transfer_rate: if self.min_transfer_rate == 0 {
                d.min_transfer_rate
            } else {
                self.min_transfer_rate
            },
            background_attempt_timeout: or(
                self.background_attempt_timeout,
                d.background_attempt_timeout,
            ),
        }
    }

    /// Extra time for sending `len` bytes at `min_transfer_rate`.
    pub fn transfer_allowance(&self, len: u64) -> Duration {
        let rate = self.min_transfer_rate.max(1);
        Duration::from_secs(len / rate)
            + Duration::from_nanos(((len % rate) as u128 * 1_000_000_000 / rate as u128) as u64)
    }
}

/// Metadata the origin returns for an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMeta {
    /// Full object size (not the range length).
    pub size: u64,
    /// ETag without quotes.
    pub etag: String,
    pub content_type: Option<String>,
    pub last_modified_ms: u64,
    /// x-amz-meta-* (keys lowercased, without the prefix).
    pub user_meta: BTreeMap<String, String>,
    /// Other stored headers the origin returned (lowercase names): content-encoding,
    /// content-disposition, cache-control, content-language, expires.
    pub headers: BTreeMap<String, String>,
    /// Parts of a multipart object (`x-amz-mp-parts-count`), when the origin says.
    pub parts_count: Option<u32>,
}

pub struct GetObject {
    pub meta: RemoteMeta,
    /// Byte range actually returned, end exclusive.
    pub range: (u64, u64),
    pub body: BodyStream,
}

/// A streaming body from the origin. Ends with `None`; an `Err` means the stream broke
/// and the data so far must not be taken as whole.
pub struct BodyStream {
    pub(crate) rx: tokio::sync::mpsc::Receiver<Result<Bytes, OriginError>>,
}

impl BodyStream {
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, OriginError>> {
        self.rx.recv().await
    }
}

/// What an upload sends: a slice of a local file (re-read from the start on a retry), or
/// a body already in memory (a small object kept in a shard's journal).
#[derive(Debug, Clone)]
pub enum PutSource {
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    Bytes(Bytes),
}

impl PutSource {
    pub fn len(&self) -> u64 {
        match self {
            PutSource::File { len, .. } => *len,
            PutSource::Bytes(b) => b.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone, Default)]
pub struct PutMeta {
    pub content_type: Option<String>,
    pub user_meta: BTreeMap<String, String>,
    /// Hex MD5 of the body, sent as Content-MD5 so the origin verifies it.
    pub md5_hex: Option<String>,
    /// Other headers to store with the object (see [`STORED_HEADERS`]).
    pub headers: BTreeMap<String, String>,
}

/// Object headers (besides Content-Type and x-amz-meta-*) that S3 stores with an object
/// and returns on GET/HEAD; lowercase.
pub const STORED_HEADERS: [&str; 5] = [
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
];

/// Where a bucket-aware request goes: `bucket` as given, `key` as given (no prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLoc {
    pub bucket: String,
    pub key: String,
}

#[derive(Debug, Clone)]
pub struct BucketInfo {
    pub name: String,
    pub created_ms: u64,
}

/// A ListObjectsV2 page request (the caller translates v1 markers and its own tokens
/// into `start_after`).
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    pub prefix: String,
    pub delimiter: Option<String>,
    pub start_after: Option<String>,
    pub max_keys: u32,
}

#[derive(Debug, Clone)]
pub struct ListEntry {
    pub key: String,
    pub size: u64,
    /// Without quotes.
    pub etag: String,
    pub last_modified_ms: u64,
    pub storage_class: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub entries: Vec<ListEntry>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
}

/// CopyObject / UploadPartCopy source.
#[derive(Debug, Clone)]
pub struct CopySource {
    pub bucket: String,
    pub key: String,
    /// x-amz-copy-source-if-* as (header name, value).
    pub conditions: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct CopyResult {
    /// Without quotes.
    pub etag: String,
    pub last_modified_ms: u64,
}

#[derive(Debug, Clone)]
pub struct PartInfo {
    pub part_number: u32,
    pub etag: String,
    pub size: u64,
    pub last_modified_ms: u64,
}

#[derive(Debug, Clone, Default)]
pub struct PartsPage {
    pub parts: Vec<PartInfo>,
    pub is_truncated: bool,
    pub next_marker: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct UploadInfo {
    pub key: String,
    pub upload_id: String,
    pub initiated_ms: u64,
}

#[derive(Debug, Clone, Default)]
pub struct UploadsParams {
    pub prefix: String,
    pub delimiter: Option<String>,
    pub key_marker: Option<String>,
    pub upload_id_marker: Option<String>,
    pub max_uploads: u32,
}

#[derive(Debug, Clone, Default)]
pub struct UploadsPage {
    pub uploads: Vec<UploadInfo>,
    pub common_prefixes: Vec<String>,
    pub is_truncated: bool,
    pub next_key_marker: Option<String>,
    pub next_upload_id_marker: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PutResult {
    pub etag: String,
}

/// Counters and latency buckets, updated by the bridge, read by the metrics endpoint.
///
/// A request counts once in `requests_*` however many attempts it took. A request that
/// ends in `NotFound` counts in `not_found`, any other final failure (and a GET body that
/// breaks mid-stream) in `errors`.
#[derive(Debug, Default)]
pub struct OriginStats {
    pub requests_get: AtomicU64,
    pub requests_head: AtomicU64,
    pub requests_put: AtomicU64,
    pub requests_delete: AtomicU64,
    pub errors: AtomicU64,
    /// Attempts after the first one: the bridge's own retries plus the SDK's.
    pub retries: AtomicU64,
    pub not_found: AtomicU64,
    /// Failures made up by `inject_failure_rate` (each also causes a retry or an error).
    pub injected_failures: AtomicU64,
    /// Body bytes received from the origin (GET).
    pub bytes_in: AtomicU64,
    /// Body bytes sent to the origin (successful PUTs).
    pub bytes_out: AtomicU64,
    /// Latency histogram of whole requests (time to response head, retries included).
    /// NOT cumulative: `latency_buckets[i]` counts requests with latency in
    /// (`LATENCY_BOUNDS_SECONDS[i-1]`, `LATENCY_BOUNDS_SECONDS[i]`]; the last bucket counts
    /// those above the last bound (+Inf). Sum the buckets up to `i` for Prometheus' `le`.
    pub latency_buckets: [AtomicU64; LATENCY_BUCKETS],
    pub latency_sum_micros: AtomicU64,
    pub latency_count: AtomicU64,
}

pub const LATENCY_BOUNDS_SECONDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_SECONDS.len() + 1;

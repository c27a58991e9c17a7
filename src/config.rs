//! Configuration: one TOML section per module, named defaults, overridable by
//! `NEARCACHE_*` environment variables and command-line flags (flag > env > file > default).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod check;

/// A byte size written like `512MiB`, `20GiB` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        bytesize::ByteSize::from_str(s.trim())
            .map(|b| Size(b.as_u64()))
            .map_err(|e| format!("invalid size {s:?} (expected e.g. 512MiB or 20GiB): {e}"))
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A secret given in the config, the environment or a flag. Its `Debug` never shows it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

pub mod defaults {
    use nearcache_shards::defaults as store;
    pub const CHUNK_THRESHOLD: u64 = 64 << 20;
    pub const CHUNK_SIZE: u64 = 8 << 20;
    pub const CHUNK_FETCH_CONCURRENCY: usize = 4;
    pub const MULTIPART_THRESHOLD: u64 = 64 << 20;
    pub const MULTIPART_PART_SIZE: u64 = 16 << 20;
    pub const MULTIPART_CONCURRENCY: usize = 4;
    pub const HEDGE_PERCENTILE: f64 = 0.95;
    pub const HEDGE_MAX_FRACTION: f64 = 0.05;
    pub const HEDGE_MIN_DELAY_MS: u64 = 50;
    pub const LISTEN: &str = "127.0.0.1:8080";
    pub const DATA_DIR: &str = "./nearcache-data";
    pub const SHUTDOWN_GRACE_SECS: u64 = 10;
    pub const MAX_HEADER_BYTES: u64 = 64 << 10;
    pub const HEADER_READ_TIMEOUT_SECS: u64 = 30;
    pub const BIND_WAIT_SECS: u64 = 10;
    pub const BODY_IDLE_TIMEOUT_SECS: u64 = 30;
    pub const BODY_MIN_RATE: u64 = 4 << 10;
    pub const ORIGIN_WAIT_SECS: u64 = 20;
    pub const MEMORY_CAPACITY: u64 = store::MEMORY_CAPACITY;
    pub const MEMORY_OBJECT_MAX: u64 = store::MEMORY_OBJECT_MAX;
    pub const DISK_CAPACITY: u64 = store::DISK_CAPACITY;
    pub const TOMBSTONE_TTL_SECS: u64 = store::TOMBSTONE_TTL_SECS;
    pub const JOURNAL_RETAIN: u64 = store::JOURNAL_RETAIN;
    pub const LMDB_MAP_SIZE: u64 = store::LMDB_MAP_SIZE;
    pub const INLINE_OBJECT_MAX: u64 = store::INLINE_OBJECT_MAX;
    pub const META_CACHE_OBJECTS: usize = 262_144;
    pub const REGION: &str = "us-east-1";
    pub const MAX_ATTEMPTS: u32 = 4;
    pub const INITIAL_BACKOFF_MS: u64 = 100;
    pub const CONNECT_TIMEOUT_MS: u64 = 3_000;
    pub const OPERATION_TIMEOUT_MS: u64 = 30_000;
    pub const REQUEST_DEADLINE_MS: u64 = 10_000;
    pub const BODY_IDLE_TIMEOUT_MS: u64 = 10_000;
    pub const MIN_TRANSFER_RATE: u64 = 1 << 20;
    pub const BACKGROUND_ATTEMPT_TIMEOUT_MS: u64 = 60_000;
    pub const ORIGIN_THREADS: usize = 1;
    pub const BODY_CHANNEL_CHUNKS: usize = 8;
    pub const UPLOAD_CONCURRENCY: usize = 4;
    pub const UPLOAD_MAX_BACKOFF_SECS: u64 = 60;
    pub const FETCH_DEFAULT: bool = true;
    pub const DEFAULT_LEVEL: u8 = 1;
    pub const MAX_OBJECT_SIZE: u64 = 5 << 30;
    pub const LOG_LEVEL: &str = "info";
    pub const LOG_FORMAT: &str = "text";
    pub const S3_LISTEN: &str = "127.0.0.1:9000";
    pub const CLUSTER_NAME: &str = "nearcache";
    pub const REPLICATION_FACTOR: usize = 1;
    pub const WRITE_QUORUM: usize = 1;
    pub const GOSSIP_INTERVAL_MS: u64 = 1_000;
    pub const SYNC_INTERVAL_MS: u64 = 500;
    pub const SYNC_BATCH: usize = 2048;
    pub const SYNC_CONCURRENCY: usize = 64;
    /// The journal's inline-body limit: such bodies are one LMDB read away on the peer.
    pub const SYNC_INLINE_MAX: u64 = 16 << 10;
    pub const SYNC_RATE_LIMIT: u64 = 64 << 20;
    pub const REPLICA_UPLOAD_DELAY_SECS: u64 = 60;
    pub const PEER_TIMEOUT_MS: u64 = 5_000;
    pub const NEAR_CACHE_BYTES: u64 = 64 << 20;
    pub const NEAR_OBJECT_MAX: u64 = 1 << 20;
    pub const NEAR_LEASE_MS: u64 = 5_000;
    pub const NEAR_WATCH_MS: u64 = 2;
    pub const DRAIN_ON_SHUTDOWN: bool = true;
    pub const DRAIN_TIMEOUT_SECS: u64 = 60;
    pub const STALE_IF_ERROR_SECS: u64 = 0;
    pub const NEGATIVE_TTL_SECS: u64 = 5;
    pub const NEGATIVE_MAX_ENTRIES: usize = 100_000;
    pub const REPLAY_WINDOW_SECS: u64 = 60;
    pub const TLS_RELOAD_INTERVAL_SECS: u64 = 10;
    pub const JWT_LEEWAY_SECS: u64 = 60;
    /// The most clock skew `auth.leeway_secs` may allow.
    pub const JWT_MAX_LEEWAY_SECS: u64 = 600;
    pub const WRITE_POLICY: &str = "all";
    pub const READ_ORDER: &str = "preference";
    pub const BREAKER_FAILURES: u32 = 3;
    pub const BREAKER_COOLDOWN_MS: u64 = 5_000;
    pub const BREAKER_STALL_LIMIT: u32 = 64;
    pub const STRAGGLER_MS: u64 = 1_000;
    pub const BACKEND_SYNC_CONCURRENCY: usize = 4;
    pub const SYNC_MAX_BACKOFF_SECS: u64 = 30;
    pub const READ_ONLY: bool = false;
    pub const JOB_CONCURRENCY: usize = 8;
    pub const JOB_BATCH: usize = 16;
    pub const JOB_RATE_OBJECTS: u64 = 0;
    pub const JOB_RATE_BYTES: u64 = 0;
    pub const JOBS_KEPT: usize = 100;
    pub const JOB_NODE_TIMEOUT_SECS: u64 = 600;
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Public HTTP address (HTTP/1.1 and h2c). Every shard binds it with SO_REUSEPORT.
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Shards (one monoio thread each); 0 = one per core.
    pub shards: usize,
    /// Pin shard i to core i % cores.
    pub pin_cores: bool,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Largest request head accepted (HTTP/1.1); larger gets 431.
    pub max_header_bytes: Size,
    pub header_read_timeout_secs: u64,
    /// How long start-up waits for a listening address still held by a process that
    /// just died (io_uring releases a killed process's sockets asynchronously).
    pub bind_wait_secs: u64,
    /// A request body that sends no bytes for this long is cut (408 / RequestTimeout)
    /// and nothing is stored.
    pub body_idle_timeout_secs: u64,
    /// Once `body_idle_timeout_secs` has passed, a request body must average at least
    /// this many bytes per second.
    pub body_min_rate: Size,
    /// The shards' network driver: `auto` (io_uring when the kernel allows it, else
    /// epoll; plaintext connections then receive and send on the ring), `poll` (io_uring,
    /// but connections readiness-based, as TLS connections always are) or `epoll` (for
    /// sandboxes whose io_uring is half-working, and for valgrind, which cannot follow
    /// io_uring's shared rings).
    pub io: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: defaults::LISTEN
                .parse()
                .expect("default listen address parses"),
            data_dir: defaults::DATA_DIR.into(),
            shards: 0,
            pin_cores: true,
            shutdown_grace_secs: defaults::SHUTDOWN_GRACE_SECS,
            max_header_bytes: Size(defaults::MAX_HEADER_BYTES),
            header_read_timeout_secs: defaults::HEADER_READ_TIMEOUT_SECS,
            bind_wait_secs: defaults::BIND_WAIT_SECS,
            body_idle_timeout_secs: defaults::BODY_IDLE_TIMEOUT_SECS,
            body_min_rate: Size(defaults::BODY_MIN_RATE),
            io: "auto".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Memory tier size for the whole node (split evenly over shards).
    pub memory_capacity: Size,
    /// Objects up to this size are kept in the memory tier.
    pub memory_object_max: Size,
    /// Disk capacity for object bodies for the whole node (split evenly over shards).
    pub disk_capacity: Size,
    pub tombstone_ttl_secs: u64,
    /// `auto` (io_uring when available), `uring`, or `syscall`.
    pub device: String,
    /// Journal records kept per shard for incremental sync.
    pub journal_retain: u64,
    /// Virtual size of each shard's LMDB map.
    pub lmdb_map_size: Size,
    /// Bodies up to this size are kept in the shard's LMDB journal instead of a file of
    /// their own, so that concurrent small writes share one sync (0: every body in a file).
    pub inline_object_max: Size,
    /// Objects whose metadata stays in memory, for the whole node (split evenly over
    /// shards); the others' is read back from the journal when next needed.
    pub meta_cache_objects: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            memory_capacity: Size(defaults::MEMORY_CAPACITY),
            memory_object_max: Size(defaults::MEMORY_OBJECT_MAX),
            disk_capacity: Size(defaults::DISK_CAPACITY),
            tombstone_ttl_secs: defaults::TOMBSTONE_TTL_SECS,
            device: "auto".into(),
            journal_retain: defaults::JOURNAL_RETAIN,
            lmdb_map_size: Size(defaults::LMDB_MAP_SIZE),
            inline_object_max: Size(defaults::INLINE_OBJECT_MAX),
            meta_cache_objects: defaults::META_CACHE_OBJECTS,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginSection {
    /// S3 endpoint URL; empty = AWS's default for the region.
    pub endpoint: Option<String>,
    pub region: String,
    /// Bucket; when no bucket is configured nearcache uses the embedded local origin.
    pub bucket: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub path_style: bool,
    /// Prepended to every object key in S3.
    pub prefix: String,
    /// Embedded local origin directory (default `<data-dir>/origin`).
    pub local_dir: Option<PathBuf>,
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub connect_timeout_ms: u64,
    pub operation_timeout_ms: u64,
    pub threads: usize,
    pub body_channel_chunks: usize,
    /// Uploads in flight per shard.
    pub upload_concurrency: usize,
    /// Cap of the uploader's backoff between retries of one pending upload.
    pub upload_max_backoff_secs: u64,
    /// Create the bucket at start if missing.
    pub create_bucket: bool,
    /// Testing only: fraction of origin requests that fail with a retryable error.
    pub inject_failure_rate: f64,
    /// Total time a request may wait on one origin operation (queueing, connect, every
    /// attempt and backoff); then it is answered 504 / ServiceUnavailable.
    pub request_deadline_ms: u64,
    /// Longest gap between two chunks of an origin GET body before it is cut.
    pub body_idle_timeout_ms: u64,
    /// Operations that send a body get `size / min_transfer_rate` more time.
    pub min_transfer_rate: Size,
    /// Per-attempt bound of the uploader's background puts and deletes.
    pub background_attempt_timeout_ms: u64,
    /// CA certificates (PEM) trusted for an `https://` endpoint instead of the system's
    /// roots (an S3-compatible store behind a private CA).
    pub ca_bundle: Option<PathBuf>,
    /// Several backends (`[[origin.backend]]`): the default set, in read-preference
    /// order. Empty with backends configured: all of them, in config order. Without any
    /// `[[origin.backend]]`, the single origin above is used (today's behaviour).
    pub backends: Vec<String>,
    /// How many backends of a set take a write before it is done: "all" (every backend
    /// not in maintenance), "any" (one; the rest are repaired from the sync log), or a
    /// number (a quorum).
    pub write_policy: WritePolicyValue,
    /// Which backend a miss reads first: "preference" (the set's order) or "latency"
    /// (the lowest recent latency).
    pub read_order: String,
    /// Consecutive failures that open a backend's circuit (reads and writes skip it).
    pub breaker_failures: u32,
    /// How long an open circuit keeps a backend out before one probe is let through.
    pub breaker_cooldown_ms: u64,
    /// Requests in flight on one backend at once that count as stalled and open its circuit.
    pub breaker_stall_limit: u32,
    /// Once the write policy is met, how long a write waits for the other backends
    /// before it is answered and they are left to the sync log.
    pub straggler_ms: u64,
    /// Sync log repairs in flight per shard.
    pub sync_concurrency: usize,
    /// Cap of the backoff between repairs of one sync log entry.
    pub sync_max_backoff_secs: u64,
    /// The backends (`[[origin.backend]]`); see `backends`.
    pub backend: Vec<BackendConfig>,
}

/// A write policy as written in the config: "all", "any" or a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePolicyValue(pub nearcache_backends::WritePolicy);

impl Serialize for WritePolicyValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            nearcache_backends::WritePolicy::Quorum(n) => s.serialize_u64(n as u64),
            p => s.serialize_str(&p.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for WritePolicyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::N(n) => n.to_string(),
            Raw::S(s) => s,
        };
        nearcache_backends::WritePolicy::parse(&text)
            .map(WritePolicyValue)
            .map_err(serde::de::Error::custom)
    }
}

/// One origin backend (`[[origin.backend]]`). Unset fields take the `[origin]` value.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    pub name: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub path_style: Option<bool>,
    /// The native API's bucket on this backend (default: `origin.bucket`).
    pub bucket: Option<String>,
    /// S3-API bucket name -> this backend's bucket name.
    pub bucket_map: std::collections::BTreeMap<String, String>,
    /// Bridge threads (connections are pooled per thread).
    pub threads: Option<usize>,
    pub connect_timeout_ms: Option<u64>,
    pub request_deadline_ms: Option<u64>,
    pub background_attempt_timeout_ms: Option<u64>,
    /// CA certificates (PEM) for this backend's `https://` endpoint (default: `origin.ca_bundle`).
    pub ca_bundle: Option<PathBuf>,
    /// Start in maintenance: no traffic; what it misses is queued for it.
    pub maintenance: bool,
}

impl Default for OriginSection {
    fn default() -> Self {
        OriginSection {
            endpoint: None,
            region: defaults::REGION.into(),
            bucket: None,
            access_key: None,
            secret_key: None,
            path_style: false,
            prefix: String::new(),
            local_dir: None,
            max_attempts: defaults::MAX_ATTEMPTS,
            initial_backoff_ms: defaults::INITIAL_BACKOFF_MS,
            connect_timeout_ms: defaults::CONNECT_TIMEOUT_MS,
            operation_timeout_ms: defaults::OPERATION_TIMEOUT_MS,
            threads: defaults::ORIGIN_THREADS,
            body_channel_chunks: defaults::BODY_CHANNEL_CHUNKS,
            upload_concurrency: defaults::UPLOAD_CONCURRENCY,
            upload_max_backoff_secs: defaults::UPLOAD_MAX_BACKOFF_SECS,
            create_bucket: false,
            inject_failure_rate: 0.0,
            request_deadline_ms: defaults::REQUEST_DEADLINE_MS,
            body_idle_timeout_ms: defaults::BODY_IDLE_TIMEOUT_MS,
            min_transfer_rate: Size(defaults::MIN_TRANSFER_RATE),
            background_attempt_timeout_ms: defaults::BACKGROUND_ATTEMPT_TIMEOUT_MS,
            ca_bundle: None,
            backends: Vec::new(),
            write_policy: WritePolicyValue(
                nearcache_backends::WritePolicy::parse(defaults::WRITE_POLICY)
                    .expect("default policy parses"),
            ),
            read_order: defaults::READ_ORDER.into(),
            breaker_failures: defaults::BREAKER_FAILURES,
            breaker_cooldown_ms: defaults::BREAKER_COOLDOWN_MS,
            breaker_stall_limit: defaults::BREAKER_STALL_LIMIT,
            straggler_ms: defaults::STRAGGLER_MS,
            sync_concurrency: defaults::BACKEND_SYNC_CONCURRENCY,
            sync_max_backoff_secs: defaults::SYNC_MAX_BACKOFF_SECS,
            backend: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Read through from the origin on a miss unless the request says `X-Meta-Fetch: 0`.
    pub fetch_default: bool,
    /// Consistency level of writes and deletes that don't send `X-Meta-ConsistencyLevel`.
    pub default_level: u8,
    /// Largest object accepted by PUT (S3's single-PUT limit is 5 GiB).
    pub max_object_size: Size,
    /// How long a request waits for the origin to take its write (`X-Meta-Sync`, S3-API
    /// writes to buckets that are not write-behind) before it is answered with an error
    /// (the write stays stored and queued).
    pub origin_wait_secs: u64,
    /// Node-wide read-only switch: every write and delete, through any API, is refused
    /// (403) with a message saying so; reads, listings, invalidation and prewarm work.
    pub read_only: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            fetch_default: defaults::FETCH_DEFAULT,
            default_level: defaults::DEFAULT_LEVEL,
            max_object_size: Size(defaults::MAX_OBJECT_SIZE),
            origin_wait_secs: defaults::ORIGIN_WAIT_SECS,
            read_only: defaults::READ_ONLY,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub level: String,
    /// `text` (colours only when stderr is a terminal) or `json` (one object per line).
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: defaults::LOG_LEVEL.into(),
            format: defaults::LOG_FORMAT.into(),
        }
    }
}

/// The S3-compatible API (`[s3api]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3ApiConfig {
    /// Address of the S3-compatible API. Every shard binds it with SO_REUSEPORT.
    pub listen: SocketAddr,
    /// Virtual-host style addressing: requests to `BUCKET.DOMAIN` address BUCKET.
    /// Path style (`/BUCKET/KEY`) always works.
    pub domain: Option<String>,
    /// Access keys. Without any, every request is refused with AccessDenied.
    pub keys: Vec<S3KeyConfig>,
    /// Per-bucket settings; buckets not listed get the defaults.
    pub buckets: Vec<S3BucketConfig>,
}

impl Default for S3ApiConfig {
    fn default() -> Self {
        S3ApiConfig {
            listen: defaults::S3_LISTEN
                .parse()
                .expect("default S3 listen address parses"),
            domain: None,
            keys: Vec::new(),
            buckets: Vec::new(),
        }
    }
}

/// One access key of the S3 API (`[[s3api.keys]]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3KeyConfig {
    pub access_key: String,
    pub secret_key: String,
    /// Buckets this key may use; `["*"]` (the default) means all.
    #[serde(default = "all_buckets")]
    pub buckets: Vec<String>,
    /// Only reads (GET, HEAD, listings) are allowed.
    #[serde(default)]
    pub read_only: bool,
}

fn all_buckets() -> Vec<String> {
    vec!["*".into()]
}

/// Settings of one bucket of the S3 API (`[[s3api.buckets]]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3BucketConfig {
    pub name: String,
    /// Answer writes once they are durable on local disk and queued for upload (the native
    /// API's level 1) instead of after they reached the origin.
    #[serde(default)]
    pub write_behind: bool,
    /// Anyone may read the bucket's objects and list it without signing (S3's
    /// `public-read`): GetObject, HeadObject, ListObjects, HeadBucket. Writes still need a key.
    #[serde(default)]
    pub public_read: bool,
    /// The backends this bucket's objects live in (default: `origin.backends`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
    /// This bucket's write policy (default: `origin.write_policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_policy: Option<WritePolicyValue>,
    /// Keep what is written through the S3 API in the cache (true), or only pass it
    /// through to the origin and drop any cached copy (false).
    #[serde(default = "yes")]
    pub cache_on_write: bool,
    /// Refuse every write and delete of this bucket (S3 API: 403 AccessDenied; other
    /// APIs: JSON 403).
    #[serde(default)]
    pub read_only: bool,
}

fn yes() -> bool {
    true
}

/// Like a `[[s3api.buckets]]` entry with only its name set.
impl Default for S3BucketConfig {
    fn default() -> Self {
        S3BucketConfig {
            name: String::new(),
            write_behind: false,
            public_read: false,
            backends: Vec::new(),
            write_policy: None,
            cache_on_write: true,
            read_only: false,
        }
    }
}

/// Background jobs: prewarm and delete by prefix (`[jobs]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Objects one job fetches or deletes at once, over the whole cluster.
    pub concurrency: usize,
    /// Objects sent to an owner node in one request.
    pub batch: usize,
    /// Most objects per second one job handles (0 = no limit).
    pub rate_objects_per_sec: u64,
    /// Most bytes per second one prewarm job fetches, by the listed sizes (0 = no limit).
    pub rate_bytes_per_sec: Size,
    /// Finished jobs kept for `GET /api/v1/jobs` (in memory: jobs do not survive a restart).
    pub kept: usize,
    /// How long a node-to-node cache operation (a job's batch, an invalidation on a peer)
    /// may take before it counts as failed.
    pub node_timeout_secs: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            concurrency: defaults::JOB_CONCURRENCY,
            batch: defaults::JOB_BATCH,
            rate_objects_per_sec: defaults::JOB_RATE_OBJECTS,
            rate_bytes_per_sec: Size(defaults::JOB_RATE_BYTES),
            kept: defaults::JOBS_KEPT,
            node_timeout_secs: defaults::JOB_NODE_TIMEOUT_SECS,
        }
    }
}

/// The cluster layer (`[cluster]`). Without `listen` the node runs alone.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Private address: SWIM gossip over UDP and node-to-node HTTP/2 over TCP, same ip:port.
    pub listen: Option<SocketAddr>,
    /// The address peers use to reach this node (default: `listen`; required when
    /// `listen` is a wildcard address).
    pub advertise: Option<SocketAddr>,
    /// Seeds: `host:port` of any members. Retried until one answers.
    pub join: Vec<String>,
    /// Nodes with different cluster names never merge, even on one network.
    pub name: String,
    /// Copies of each object (owners per key); consistency level 2 means every node.
    pub replication_factor: usize,
    /// Copies that must be durable before a write is acknowledged, counting owners'
    /// copies only (this node's counts when it owns the key; a node taking a write as
    /// next in line needs that many owner copies besides its own). Never lowered to the
    /// owners a node sees: with fewer alive owners the write is refused. At most
    /// `replication_factor`.
    pub write_quorum: usize,
    /// SWIM probe period.
    pub gossip_interval_ms: u64,
    /// How often each shard asks peers for journal changes.
    pub sync_interval_ms: u64,
    /// Journal changes per sync request.
    pub sync_batch: usize,
    /// Bodies fetched in parallel while applying one batch.
    pub sync_concurrency: usize,
    /// Bodies of objects up to this size travel inside the answer to a sync request
    /// instead of one replica GET each (0: every body is fetched apart).
    pub sync_inline_max: Size,
    /// Bytes per second a node pulls from peers for anti-entropy and ownership moves.
    pub sync_rate_limit: Size,
    /// A replica of a level-1 write uploads to S3 itself only if the writer has not
    /// reported the upload within this time (the writer uploads; replicas stand by).
    pub replica_upload_delay_secs: u64,
    /// Timeout of one node-to-node request head (bodies stream without a deadline).
    pub peer_timeout_ms: u64,
    /// Testing: enables `POST /api/v1/cluster/block` (a per-peer drop switch).
    pub fault_injection: bool,
    /// Shared by every node of the cluster (at least 16 bytes): signs every
    /// node-to-node request and gossip datagram; nodes without it are refused.
    pub secret: Option<Secret>,
    /// With a secret: how far a signed request's or datagram's timestamp may be from
    /// this node's clock. Replays inside the window are refused by their nonce.
    pub replay_window_secs: u64,
    /// On SIGTERM, hand the keys only this node holds (level 0, uploads pending,
    /// tombstones) to their next owners before leaving, as `POST /api/v1/drain` does.
    pub drain_on_shutdown: bool,
    /// The longest a drain (hand-over and leave) may take; keep it under the service
    /// manager's stop timeout minus `server.shutdown_grace_secs`.
    pub drain_timeout_secs: u64,
    /// Memory for near copies: hot objects other nodes own, kept on this node (which
    /// serves them) under a lease from their owner. 0 = none (every such read is proxied).
    pub near_cache_bytes: Size,
    /// Largest object kept as a near copy.
    pub near_object_max: Size,
    /// How long a near copy may be served without word from its owner (the bound on
    /// staleness when the owner's change notice is lost).
    pub near_lease_ms: u64,
    /// How often an owner with leases checks its journal for changes to leased keys.
    pub near_watch_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen: None,
            advertise: None,
            join: Vec::new(),
            name: defaults::CLUSTER_NAME.into(),
            replication_factor: defaults::REPLICATION_FACTOR,
            write_quorum: defaults::WRITE_QUORUM,
            gossip_interval_ms: defaults::GOSSIP_INTERVAL_MS,
            sync_interval_ms: defaults::SYNC_INTERVAL_MS,
            sync_batch: defaults::SYNC_BATCH,
            sync_concurrency: defaults::SYNC_CONCURRENCY,
            sync_inline_max: Size(defaults::SYNC_INLINE_MAX),
            sync_rate_limit: Size(defaults::SYNC_RATE_LIMIT),
            replica_upload_delay_secs: defaults::REPLICA_UPLOAD_DELAY_SECS,
            peer_timeout_ms: defaults::PEER_TIMEOUT_MS,
            fault_injection: false,
            secret: None,
            replay_window_secs: defaults::REPLAY_WINDOW_SECS,
            drain_on_shutdown: defaults::DRAIN_ON_SHUTDOWN,
            drain_timeout_secs: defaults::DRAIN_TIMEOUT_SECS,
            near_cache_bytes: Size(defaults::NEAR_CACHE_BYTES),
            near_object_max: Size(defaults::NEAR_OBJECT_MAX),
            near_lease_ms: defaults::NEAR_LEASE_MS,
            near_watch_ms: defaults::NEAR_WATCH_MS,
        }
    }
}

/// TLS (`[tls]`): certificates of the public and S3 listeners, and mutual TLS between
/// nodes. Without `cert` and `key` every listener speaks plain HTTP.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM, leaf first) of the public and S3 listeners.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// With `cert` and `key`: serve the public listener (native API, /metrics,
    /// /healthz) over TLS. false keeps it plain HTTP (e.g. on loopback).
    pub public: bool,
    /// With `cert` and `key`: serve the S3-compatible API over TLS.
    pub s3: bool,
    /// How often the certificate files are checked for a change (SIGHUP: at once).
    pub reload_interval_secs: u64,
    /// CA (PEM) of the cluster: turns on mutual TLS on the private address. Every node
    /// presents `cluster_cert` (default: `cert`) and accepts only peers whose
    /// certificate this CA signed. The CA should sign nothing but node certificates.
    pub cluster_ca: Option<PathBuf>,
    /// This node's certificate for the private address (default: `cert`).
    pub cluster_cert: Option<PathBuf>,
    /// Its key (default: `key`).
    pub cluster_key: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            public: true,
            s3: true,
            reload_interval_secs: defaults::TLS_RELOAD_INTERVAL_SECS,
            cluster_ca: None,
            cluster_cert: None,
            cluster_key: None,
        }
    }
}

impl TlsConfig {
    /// The public listeners' certificate and key, when both are set.
    pub fn pair(&self) -> Option<(&PathBuf, &PathBuf)> {
        self.cert.as_ref().zip(self.key.as_ref())
    }

    /// The private address's certificate and key, when mutual TLS is on.
    pub fn cluster_pair(&self) -> Option<(&PathBuf, &PathBuf)> {
        self.cluster_ca.as_ref()?;
        let cert = self.cluster_cert.as_ref().or(self.cert.as_ref())?;
        let key = self.cluster_key.as_ref().or(self.key.as_ref())?;
        Some((cert, key))
    }
}

/// Bearer tokens (`[auth]`) on the native API, the admin routes and the
/// cachenator-compatible endpoints. Without `jwt_key` no token is asked for.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Public key that signs the tokens: RS256 or ES256 in PEM, or a JWKS file.
    pub jwt_key: Option<PathBuf>,
    /// Required `iss` claim (unchecked when unset).
    pub issuer: Option<String>,
    /// Required in the `aud` claim (unchecked when unset).
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (at most 600).
    pub leeway_secs: u64,
    /// `/metrics` needs a token too (`/healthz` never does).
    pub metrics_token: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_key: None,
            issuer: None,
            audience: None,
            leeway_secs: defaults::JWT_LEEWAY_SECS,
            metrics_token: false,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub origin: OriginSection,
    pub api: ApiConfig,
    pub s3api: S3ApiConfig,
    pub cluster: ClusterConfig,
    pub freshness: FreshnessConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub jobs: JobsConfig,
    pub chunks: ChunksConfig,
    pub hedge: HedgeConfig,
    pub log: LogConfig,
}

/// Large objects (`[chunks]`): objects over `threshold` are cached in `chunk_size`
/// pieces fetched with ranged origin GETs, so a range request moves only the chunks it
/// covers and a full GET fetches `fetch_concurrency` chunks at a time.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChunksConfig {
    /// Off: every miss is one whole-object GET, as before.
    pub enabled: bool,
    /// Objects larger than this are cached in chunks; smaller ones whole.
    pub threshold: Size,
    /// Bytes per chunk (the ranged GET's length); a miss asks for the first chunk first
    /// and learns the object's size from the answer.
    pub chunk_size: Size,
    /// Chunks a full GET fetches from the origin at a time (per request).
    pub fetch_concurrency: usize,
    /// Level-1/2 writes larger than this reach S3 as multipart uploads (S3 origins).
    pub multipart_threshold: Size,
    /// Bytes per part of those uploads (at least 5MiB, S3's minimum; raised when an
    /// object would need more than 10000 parts).
    pub multipart_part_size: Size,
    /// Parts of one upload sent at a time.
    pub multipart_concurrency: usize,
}

impl Default for ChunksConfig {
    fn default() -> Self {
        ChunksConfig {
            enabled: true,
            threshold: Size(defaults::CHUNK_THRESHOLD),
            chunk_size: Size(defaults::CHUNK_SIZE),
            fetch_concurrency: defaults::CHUNK_FETCH_CONCURRENCY,
            multipart_threshold: Size(defaults::MULTIPART_THRESHOLD),
            multipart_part_size: Size(defaults::MULTIPART_PART_SIZE),
            multipart_concurrency: defaults::MULTIPART_CONCURRENCY,
        }
    }
}

/// Hedged origin GETs (`[hedge]`): when an origin GET's head has not come after the
/// shard's `percentile` latency, a second identical GET is sent and the first answer
/// wins; at most `max_fraction` of GETs are hedged.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HedgeConfig {
    pub enabled: bool,
    /// The latency percentile (0..1) of recent time-to-first-byte after which a GET is hedged.
    pub percentile: f64,
    /// At most this fraction (0..1) of origin GETs get a second request.
    pub max_fraction: f64,
    /// Never hedge before this many milliseconds (also the delay until enough
    /// latencies are recorded).
    pub min_delay_ms: u64,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        HedgeConfig {
            enabled: true,
            percentile: defaults::HEDGE_PERCENTILE,
            max_fraction: defaults::HEDGE_MAX_FRACTION,
            min_delay_ms: defaults::HEDGE_MIN_DELAY_MS,
        }
    }
}

/// Freshness of cached copies (`[freshness]`): when a copy read through from (or written
/// to) the origin must be revalidated, how long stale copies may still be served, and
/// how long an origin 404 is remembered. The top-level fields are the rule for keys that
/// no `[[freshness.rule]]` matches.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FreshnessConfig {
    /// Seconds a copy stays fresh after it was fetched, written or revalidated; 0 = never
    /// stale (unless the origin's headers say otherwise and `honour_origin` is on).
    pub ttl_secs: u64,
    /// Let the origin's `Cache-Control` (s-maxage, max-age, no-cache, no-store, private,
    /// must-revalidate, stale-while-revalidate, stale-if-error) and `Expires` decide
    /// instead of `ttl_secs`, when the object carries them.
    pub honour_origin: bool,
    /// Seconds past its TTL a stale copy is still answered while one background request
    /// revalidates it (0 = revalidate before answering).
    pub stale_while_revalidate_secs: u64,
    /// Seconds past its TTL a stale copy is answered when revalidation fails (origin
    /// errors or timeouts; never when the origin says the object is gone).
    pub stale_if_error_secs: u64,
    /// Seconds an origin 404 is remembered (one origin request per key per this time);
    /// 0 = off. A write through nearcache forgets it at once.
    pub negative_ttl_secs: u64,
    /// Remembered 404s per shard; past this the oldest half is forgotten.
    pub negative_max_entries: usize,
    /// Rules by bucket and key prefix; the longest matching prefix wins.
    pub rule: Vec<FreshnessRule>,
}

impl Default for FreshnessConfig {
    fn default() -> Self {
        FreshnessConfig {
            ttl_secs: 0,
            honour_origin: true,
            stale_while_revalidate_secs: 0,
            stale_if_error_secs: defaults::STALE_IF_ERROR_SECS,
            negative_ttl_secs: defaults::NEGATIVE_TTL_SECS,
            negative_max_entries: defaults::NEGATIVE_MAX_ENTRIES,
            rule: Vec::new(),
        }
    }
}

/// One freshness rule (`[[freshness.rule]]`). Fields left out take the `[freshness]`
/// value.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FreshnessRule {
    /// Origin bucket the rule applies to (`*` = every bucket). Native-API objects live in
    /// the `[origin]` bucket.
    pub bucket: String,
    /// Key prefix within the bucket (native API: of the object id); empty = all keys.
    #[serde(default)]
    pub prefix: String,
    pub ttl_secs: Option<u64>,
    pub honour_origin: Option<bool>,
    pub stale_while_revalidate_secs: Option<u64>,
    pub stale_if_error_secs: Option<u64>,
}

/// Command-line flags; each also reads an environment variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML config file (see deploy/nearcache.toml).
    #[arg(long, env = "NEARCACHE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Public HTTP address [default: 127.0.0.1:8080]
    #[arg(long, env = "NEARCACHE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory [default: ./nearcache-data]
    #[arg(long, env = "NEARCACHE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Number of shards (threads); 0 = one per core [default: 0]
    #[arg(long, env = "NEARCACHE_SHARDS")]
    pub shards: Option<usize>,
    /// Memory tier capacity for the node, e.g. 512MiB [default: 256MiB]
    #[arg(long, env = "NEARCACHE_MEMORY_CAPACITY")]
    pub memory_capacity: Option<Size>,
    /// Disk capacity for object bodies, e.g. 20GiB [default: 10GiB]
    #[arg(long, env = "NEARCACHE_DISK_CAPACITY")]
    pub disk_capacity: Option<Size>,
    /// Objects up to this size are also kept in memory [default: 1MiB]
    #[arg(long, env = "NEARCACHE_MEMORY_OBJECT_MAX")]
    pub memory_object_max: Option<Size>,
    /// Bodies up to this size are kept in the journal, not a file of their own [default: 16KiB]
    #[arg(long, env = "NEARCACHE_INLINE_OBJECT_MAX")]
    pub inline_object_max: Option<Size>,
    /// Objects whose metadata stays in memory, for the node [default: 262144]
    #[arg(long, env = "NEARCACHE_META_CACHE_OBJECTS")]
    pub meta_cache_objects: Option<usize>,
    /// Disk I/O engine: auto, uring or syscall [default: auto]
    #[arg(long, env = "NEARCACHE_DEVICE")]
    pub device: Option<String>,
    /// S3 endpoint URL (also AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)
    #[arg(long, env = "NEARCACHE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region (also AWS_REGION) [default: us-east-1]
    #[arg(long, env = "NEARCACHE_S3_REGION")]
    pub s3_region: Option<String>,
    /// S3 bucket; without one, the embedded local origin is used
    #[arg(long, env = "NEARCACHE_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// S3 access key (also AWS_ACCESS_KEY_ID)
    #[arg(long, env = "NEARCACHE_S3_ACCESS_KEY")]
    pub s3_access_key: Option<String>,
    /// S3 secret key (also AWS_SECRET_ACCESS_KEY)
    #[arg(long, env = "NEARCACHE_S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<String>,
    /// Use path-style S3 URLs (needed by most S3-compatible stores)
    #[arg(long, env = "NEARCACHE_S3_PATH_STYLE", num_args = 0..=1, default_missing_value = "true")]
    pub s3_path_style: Option<bool>,
    /// Prefix for every S3 key
    #[arg(long, env = "NEARCACHE_S3_PREFIX")]
    pub s3_prefix: Option<String>,
    /// CA bundle (PEM) trusted for an https S3 endpoint instead of the system's roots
    #[arg(long, env = "NEARCACHE_S3_CA_BUNDLE")]
    pub s3_ca_bundle: Option<PathBuf>,
    /// Create the S3 bucket at start if it does not exist
    #[arg(long, env = "NEARCACHE_S3_CREATE_BUCKET", num_args = 0..=1, default_missing_value = "true")]
    pub s3_create_bucket: Option<bool>,
    /// Read through from S3 on a miss by default (X-Meta-Fetch overrides) [default: true]
    #[arg(long, env = "NEARCACHE_FETCH_DEFAULT")]
    pub fetch_default: Option<bool>,
    /// Consistency level for writes without X-Meta-ConsistencyLevel [default: 1]
    #[arg(long, env = "NEARCACHE_DEFAULT_LEVEL")]
    pub default_level: Option<u8>,
    /// S3-compatible API address [default: 127.0.0.1:9000]
    #[arg(long, env = "NEARCACHE_S3_LISTEN")]
    pub s3_listen: Option<SocketAddr>,
    /// Domain for virtual-host style S3 addressing (BUCKET.DOMAIN); path style always works
    #[arg(long, env = "NEARCACHE_S3_DOMAIN")]
    pub s3_domain: Option<String>,
    /// Private cluster address: gossip (UDP) and node-to-node HTTP/2 (TCP); enables clustering
    #[arg(long, env = "NEARCACHE_CLUSTER_LISTEN")]
    pub cluster_listen: Option<SocketAddr>,
    /// Address peers reach this node at [default: --cluster-listen]
    #[arg(long, env = "NEARCACHE_CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<SocketAddr>,
    /// Seed HOST:PORT to join through (repeatable; env: comma-separated)
    #[arg(long = "join", env = "NEARCACHE_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// Cluster name; nodes of other clusters are ignored [default: nearcache]
    #[arg(long, env = "NEARCACHE_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// Cluster secret (16+ bytes) authenticating node-to-node requests and gossip
    /// (prefer the environment or the config file: flags show in `ps`)
    #[arg(long, env = "NEARCACHE_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<Secret>,
    /// Copies of each object in the cluster [default: 1]
    #[arg(long, env = "NEARCACHE_REPLICATION_FACTOR")]
    pub replication_factor: Option<usize>,
    /// Copies durable before a write is acknowledged [default: 1]
    #[arg(long, env = "NEARCACHE_WRITE_QUORUM")]
    pub write_quorum: Option<usize>,
    /// TLS certificate chain (PEM) for the public and S3 listeners; needs --tls-key
    #[arg(long, env = "NEARCACHE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the public and S3 listeners
    #[arg(long, env = "NEARCACHE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Public key (RS256/ES256 PEM, or JWKS) of the JWTs the native API then requires
    #[arg(long, env = "NEARCACHE_JWT_KEY")]
    pub jwt_key: Option<PathBuf>,
    /// Required JWT issuer (iss)
    #[arg(long, env = "NEARCACHE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required JWT audience (aud)
    #[arg(long, env = "NEARCACHE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Log level or tracing filter (also RUST_LOG) [default: info]
    #[arg(long, env = "NEARCACHE_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log format: text or json (one object per line) [default: text]
    #[arg(long, env = "NEARCACHE_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Refuse every write and delete on this node (reads, invalidation, prewarm work)
    #[arg(long, env = "NEARCACHE_READ_ONLY", num_args = 0..=1, default_missing_value = "true")]
    pub read_only: Option<bool>,
}

impl Config {
    /// Builds the effective config: defaults, then the TOML file, then env and flags.
    #[expect(clippy::disallowed_methods, reason = "start-up, on the main thread")]
    pub fn load(args: &ServeArgs) -> anyhow::Result<Config> {
        let mut cfg = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                check::parse(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => Config::default(),
        };
        cfg.apply_aws_env();
        cfg.apply_args(args);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Standard AWS_* variables sit below NEARCACHE_* variables and flags.
    fn apply_aws_env(&mut self) {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let o = &mut self.origin;
        if o.endpoint.is_none() {
            o.endpoint = env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL"));
        }
        if o.access_key.is_none() {
            o.access_key = env("AWS_ACCESS_KEY_ID");
        }
        if o.secret_key.is_none() {
            o.secret_key = env("AWS_SECRET_ACCESS_KEY");
        }
        if let Some(region) = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")) {
            if o.region == defaults::REGION {
                o.region = region;
            }
        }
    }

    pub fn apply_args(&mut self, a: &ServeArgs) {
        macro_rules! set {
            ($dst:expr, $src:expr) => {
                if let Some(v) = $src.clone() {
                    $dst = v;
                }
            };
        }
        set!(self.server.listen, a.listen);
        set!(self.server.data_dir, a.data_dir);
        set!(self.server.shards, a.shards);
        set!(self.store.memory_capacity, a.memory_capacity);
        set!(self.store.disk_capacity, a.disk_capacity);
        set!(self.store.memory_object_max, a.memory_object_max);
        set!(self.store.inline_object_max, a.inline_object_max);
        set!(self.store.meta_cache_objects, a.meta_cache_objects);
        set!(self.store.device, a.device);
        if a.s3_endpoint.is_some() {
            self.origin.endpoint = a.s3_endpoint.clone();
        }
        set!(self.origin.region, a.s3_region);
        if a.s3_bucket.is_some() {
            self.origin.bucket = a.s3_bucket.clone();
        }
        if a.s3_access_key.is_some() {
            self.origin.access_key = a.s3_access_key.clone();
        }
        if a.s3_secret_key.is_some() {
            self.origin.secret_key = a.s3_secret_key.clone();
        }
        set!(self.origin.path_style, a.s3_path_style);
        set!(self.origin.prefix, a.s3_prefix);
        set!(self.origin.create_bucket, a.s3_create_bucket);
        if a.s3_ca_bundle.is_some() {
            self.origin.ca_bundle = a.s3_ca_bundle.clone();
        }
        set!(self.api.fetch_default, a.fetch_default);
        set!(self.api.default_level, a.default_level);
        set!(self.s3api.listen, a.s3_listen);
        if a.s3_domain.is_some() {
            self.s3api.domain = a.s3_domain.clone();
        }
        if a.cluster_listen.is_some() {
            self.cluster.listen = a.cluster_listen;
        }
        if a.cluster_advertise.is_some() {
            self.cluster.advertise = a.cluster_advertise;
        }
        if !a.join.is_empty() {
            self.cluster.join = a.join.clone();
        }
        set!(self.cluster.name, a.cluster_name);
        if a.cluster_secret.is_some() {
            self.cluster.secret = a.cluster_secret.clone();
        }
        set!(self.cluster.replication_factor, a.replication_factor);
        set!(self.cluster.write_quorum, a.write_quorum);
        set!(self.log.level, a.log_level);
        if a.tls_cert.is_some() {
            self.tls.cert = a.tls_cert.clone();
        }
        if a.tls_key.is_some() {
            self.tls.key = a.tls_key.clone();
        }
        if a.jwt_key.is_some() {
            self.auth.jwt_key = a.jwt_key.clone();
        }
        if a.jwt_issuer.is_some() {
            self.auth.issuer = a.jwt_issuer.clone();
        }
        if a.jwt_audience.is_some() {
            self.auth.audience = a.jwt_audience.clone();
        }
        set!(self.log.format, a.log_format);
        set!(self.api.read_only, a.read_only);
    }

    /// The settings of an S3-API bucket, if it has any.
    pub fn bucket(&self, name: &str) -> Option<&S3BucketConfig> {
        self.s3api.buckets.iter().find(|b| b.name == name)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.api.default_level > 2 {
            bail!(
                "api.default_level must be 0, 1 or 2, not {}",
                self.api.default_level
            );
        }
        if self.server.epoll_only().is_none() {
            bail!(
                "server.io must be auto, poll or epoll, not {:?}",
                self.server.io
            );
        }
        if self.server.epoll_only() == Some(true)
            && self.store.device_kind() == Some(nearcache_shards::DeviceKind::Uring)
        {
            bail!("store.device = \"uring\" needs server.io = \"auto\" (io_uring file I/O runs on the io_uring driver)");
        }
        if self.store.device_kind().is_none() {
            bail!(
                "store.device must be auto, uring or syscall, not {:?}",
                self.store.device
            );
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!("log.format must be text or json, not {:?}", self.log.format);
        }
        if self.store.disk_capacity.0 == 0 {
            bail!("store.disk_capacity must be above zero");
        }
        if !(0.0..=1.0).contains(&self.origin.inject_failure_rate) {
            bail!("origin.inject_failure_rate must be within 0.0..=1.0");
        }
        let k = &self.chunks;
        if k.chunk_size.0 < 64 << 10 || k.fetch_concurrency == 0 {
            bail!(
                "chunks.chunk_size must be at least 64KiB and chunks.fetch_concurrency at least 1"
            );
        }
        if k.multipart_part_size.0 < 5 << 20 || k.multipart_concurrency == 0 {
            bail!("chunks.multipart_part_size must be at least 5MiB (S3's minimum) and chunks.multipart_concurrency at least 1");
        }
        let h = &self.hedge;
        if !(0.0..=1.0).contains(&h.percentile) || !(0.0..=1.0).contains(&h.max_fraction) {
            bail!("hedge.percentile and hedge.max_fraction must be within 0.0..=1.0");
        }
        if self.origin.access_key.is_some() != self.origin.secret_key.is_some() {
            bail!("S3 access key and secret key must be given together");
        }
        let c = &self.cluster;
        if c.replication_factor == 0 || c.write_quorum == 0 {
            bail!("cluster.replication_factor and cluster.write_quorum must be at least 1");
        }
        if c.write_quorum > c.replication_factor {
            bail!(
                "cluster.write_quorum ({}) must not exceed cluster.replication_factor ({}): a level-1 write has only that many owners",
                c.write_quorum,
                c.replication_factor
            );
        }
        if c.name.is_empty() {
            bail!("cluster.name must not be empty");
        }
        if let Some(l) = c.listen {
            if l.ip().is_unspecified() && c.advertise.is_none() {
                bail!("cluster.listen {l} is a wildcard address: set cluster.advertise (--cluster-advertise) to the address peers should use");
            }
        }
        if let Some(secret) = &c.secret {
            nearcache_membership::auth::ClusterSecret::new(secret.0.as_bytes())
                .map_err(|e| anyhow::anyhow!("cluster.secret: {e}"))?;
            if c.replay_window_secs == 0 {
                bail!("cluster.replay_window_secs must be at least 1");
            }
        }
        if !c.join.is_empty() && c.listen.is_none() {
            bail!("--join needs --cluster-listen (the private address gossip and peers use)");
        }
        let t = &self.tls;
        if t.cert.is_some() != t.key.is_some() {
            bail!("tls.cert and tls.key (--tls-cert, --tls-key) must be given together");
        }
        if t.cluster_ca.is_some() && t.cluster_pair().is_none() {
            bail!("tls.cluster_ca needs this node's certificate and key: tls.cluster_cert and tls.cluster_key (or tls.cert and tls.key)");
        }
        if t.cluster_ca.is_some() && c.listen.is_none() {
            bail!("tls.cluster_ca is set but the node is not in a cluster (--cluster-listen)");
        }
        if self.auth.leeway_secs > defaults::JWT_MAX_LEEWAY_SECS {
            bail!(
                "auth.leeway_secs is {}; at most {} (it is the clock skew tolerated on expiry)",
                self.auth.leeway_secs,
                defaults::JWT_MAX_LEEWAY_SECS
            );
        }
        if t.reload_interval_secs == 0 {
            bail!("tls.reload_interval_secs must be at least 1");
        }
        if !matches!(self.origin.read_order.as_str(), "preference" | "latency") {
            bail!(
                "origin.read_order must be \"preference\" or \"latency\", not {:?}",
                self.origin.read_order
            );
        }
        for b in &self.origin.backend {
            if b.name.is_empty() || b.name.len() > 64 || b.name.contains('\0') {
                bail!("origin.backend: every backend needs a name of 1 to 64 characters");
            }
            if b.bucket.is_none() && self.origin.bucket.is_none() {
                bail!(
                    "origin.backend {:?}: no bucket (set its bucket or origin.bucket / --s3-bucket)",
                    b.name
                );
            }
        }
        if self.origin.backend.is_empty()
            && (!self.origin.backends.is_empty()
                || self.s3api.buckets.iter().any(|b| !b.backends.is_empty()))
        {
            bail!("origin.backends names backends, but there is no [[origin.backend]]");
        }
        for k in &self.s3api.keys {
            if k.access_key.is_empty() || k.secret_key.is_empty() {
                bail!("s3api.keys: access_key and secret_key must not be empty");
            }
        }
        Ok(())
    }

    /// Shards to run: the configured number, or one per core.
    pub fn shard_count(&self) -> usize {
        match self.server.shards {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }

    /// The origin bridge's time bounds.
    pub fn origin_deadlines(&self) -> nearcache_s3::OriginDeadlines {
        let o = &self.origin;
        nearcache_s3::OriginDeadlines {
            request_deadline: Duration::from_millis(o.request_deadline_ms),
            body_idle_timeout: Duration::from_millis(o.body_idle_timeout_ms),
            min_transfer_rate: o.min_transfer_rate.0,
            background_attempt_timeout: Duration::from_millis(o.background_attempt_timeout_ms),
        }
    }

    pub fn origin_config(&self) -> nearcache_s3::OriginConfig {
        use nearcache_s3::{OriginConfig, OriginKind};
        let o = &self.origin;
        let kind = match &o.bucket {
            Some(bucket) => OriginKind::S3 {
                endpoint: o.endpoint.clone(),
                region: o.region.clone(),
                bucket: bucket.clone(),
                access_key: o.access_key.clone(),
                secret_key: o.secret_key.clone(),
                path_style: o.path_style,
            },
            None => OriginKind::Local {
                dir: o
                    .local_dir
                    .clone()
                    .unwrap_or_else(|| self.server.data_dir.join("origin")),
            },
        };
        OriginConfig {
            kind,
            prefix: o.prefix.clone(),
            max_attempts: o.max_attempts.max(1),
            initial_backoff: Duration::from_millis(o.initial_backoff_ms),
            connect_timeout: Duration::from_millis(o.connect_timeout_ms),
            operation_timeout: Duration::from_millis(o.operation_timeout_ms),
            threads: o.threads.max(1),
            body_channel_chunks: o.body_channel_chunks.max(1),
            inject_failure_rate: o.inject_failure_rate,
            ca_bundle: o.ca_bundle.clone(),
        }
    }
}

impl Config {
    /// The backend set, when `[[origin.backend]]` names any (None: the single origin).
    pub fn backends_config(&self) -> Option<nearcache_backends::BackendsConfig> {
        use nearcache_backends::{BackendSpec, BackendsConfig, BreakerConfig, ReadOrder, SetSpec};
        use nearcache_s3::OriginKind;
        let o = &self.origin;
        if o.backend.is_empty() {
            return None;
        }
        let backends = o
            .backend
            .iter()
            .map(|b| {
                let mut origin = self.origin_config();
                origin.kind = OriginKind::S3 {
                    endpoint: b.endpoint.clone().or_else(|| o.endpoint.clone()),
                    region: b.region.clone().unwrap_or_else(|| o.region.clone()),
                    bucket: b
                        .bucket
                        .clone()
                        .or_else(|| o.bucket.clone())
                        .unwrap_or_default(),
                    access_key: b.access_key.clone().or_else(|| o.access_key.clone()),
                    secret_key: b.secret_key.clone().or_else(|| o.secret_key.clone()),
                    path_style: b.path_style.unwrap_or(o.path_style),
                };
                if b.ca_bundle.is_some() {
                    origin.ca_bundle = b.ca_bundle.clone();
                }
                if let Some(t) = b.threads {
                    origin.threads = t.max(1);
                }
                if let Some(ms) = b.connect_timeout_ms {
                    origin.connect_timeout = Duration::from_millis(ms);
                }
                let mut deadlines = self.origin_deadlines();
                if let Some(ms) = b.request_deadline_ms {
                    deadlines.request_deadline = Duration::from_millis(ms);
                }
                if let Some(ms) = b.background_attempt_timeout_ms {
                    deadlines.background_attempt_timeout = Duration::from_millis(ms);
                }
                BackendSpec {
                    name: b.name.clone(),
                    origin,
                    deadlines,
                    buckets: b.bucket_map.clone(),
                }
            })
            .collect();
        let all: Vec<String> = o.backend.iter().map(|b| b.name.clone()).collect();
        let default_members = if o.backends.is_empty() {
            all
        } else {
            o.backends.clone()
        };
        let bucket_sets = self
            .s3api
            .buckets
            .iter()
            .filter(|b| !b.backends.is_empty() || b.write_policy.is_some())
            .map(|b| {
                let members = if b.backends.is_empty() {
                    default_members.clone()
                } else {
                    b.backends.clone()
                };
                let policy = b.write_policy.as_ref().unwrap_or(&o.write_policy).0;
                (b.name.clone(), SetSpec { members, policy })
            })
            .collect();
        Some(BackendsConfig {
            backends,
            default_set: SetSpec {
                members: default_members,
                policy: o.write_policy.0,
            },
            bucket_sets,
            breaker: BreakerConfig {
                enabled: true,
                failure_threshold: o.breaker_failures.max(1),
                cooldown: Duration::from_millis(o.breaker_cooldown_ms),
                stall_limit: o.breaker_stall_limit.max(1),
            },
            read_order: if o.read_order == "latency" {
                ReadOrder::Latency
            } else {
                ReadOrder::Preference
            },
        })
    }
}

impl ServerConfig {
    /// `Some(true)` when `server.io` asks for the epoll driver; `None` when it is invalid.
    /// Whether plaintext connections use io_uring's own socket operations (when the
    /// io_uring driver runs): `server.io = "auto"`.
    pub fn ring_connections(&self) -> bool {
        self.io == "auto"
    }

    pub fn epoll_only(&self) -> Option<bool> {
        match self.io.as_str() {
            "auto" | "poll" => Some(false),
            "epoll" => Some(true),
            _ => None,
        }
    }
}

impl StoreConfig {
    pub fn device_kind(&self) -> Option<nearcache_shards::DeviceKind> {
        use nearcache_shards::DeviceKind;
        match self.device.as_str() {
            "auto" => Some(DeviceKind::Auto),
            "uring" | "io_uring" => Some(DeviceKind::Uring),
            "syscall" | "psync" => Some(DeviceKind::Syscall),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_human_units() {
        assert_eq!("512MiB".parse::<Size>().unwrap(), Size(512 << 20));
        assert_eq!("20GiB".parse::<Size>().unwrap(), Size(20 << 30));
        assert_eq!("4096".parse::<Size>().unwrap(), Size(4096));
        assert!("lots".parse::<Size>().is_err());
    }

    #[test]
    fn toml_sections_and_flags_merge() {
        let mut cfg: Config = toml::from_str(
            "[server]\nlisten = \"127.0.0.1:9999\"\n[store]\ndisk_capacity = \"1GiB\"\n",
        )
        .unwrap();
        assert_eq!(cfg.server.listen.port(), 9999);
        assert_eq!(cfg.store.disk_capacity, Size(1 << 30));
        let args = ServeArgs {
            disk_capacity: Some(Size(2 << 30)),
            ..Default::default()
        };
        cfg.apply_args(&args);
        assert_eq!(cfg.store.disk_capacity, Size(2 << 30));
        assert_eq!(cfg.server.listen.port(), 9999);
    }

    /// The shape the issue asks for: named backends, a default set and a policy, and a
    /// per-bucket override.
    #[test]
    fn backend_sets_parse() {
        let cfg: Config = toml::from_str(
            r#"
[origin]
bucket = "native"
backends = ["dc1", "dc2"]
write_policy = "any"

[[origin.backend]]
name = "dc1"
endpoint = "http://s3.dc1.internal:9000"
region = "us-east-1"
access_key = "a"
secret_key = "b"
path_style = true

[[origin.backend]]
name = "dc2"
endpoint = "http://s3.dc2.internal:9000"
bucket_map = { photos = "photos-dc2" }
maintenance = true

[[s3api.buckets]]
name = "photos"
backends = ["dc2", "dc1"]
write_policy = 2
"#,
        )
        .unwrap();
        cfg.validate().unwrap();
        let set = cfg.backends_config().expect("a backend set");
        assert_eq!(set.backends.len(), 2);
        assert_eq!(set.default_set.members, ["dc1", "dc2"]);
        assert_eq!(set.default_set.policy, nearcache_backends::WritePolicy::Any);
        assert_eq!(set.bucket_sets[0].0, "photos");
        assert_eq!(
            set.bucket_sets[0].1.policy,
            nearcache_backends::WritePolicy::Quorum(2)
        );
        assert_eq!(set.backends[1].buckets["photos"], "photos-dc2");
        assert!(toml::from_str::<Config>("[origin]\nwrite_policy = \"most\"\n").is_err());
        assert!(toml::from_str::<Config>("[origin]\nwrite_policy = 0\n").is_err());
        // One origin and no set: today's behaviour.
        assert!(Config::default().backends_config().is_none());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<Config>("[server]\nlisten_addr = \"x\"\n").is_err());
    }

    #[test]
    fn sample_config_parses() {
        let text = include_str!("../deploy/nearcache.toml");
        let cfg: Config = toml::from_str(text).expect("deploy/nearcache.toml parses");
        cfg.validate().unwrap();
    }

    /// The sample claims to show the defaults: every value it sets is the default, and
    /// every key with a default appears in it (keys without one are "example:" lines).
    #[test]
    fn sample_config_shows_every_default() {
        let text = include_str!("../deploy/nearcache.toml");
        let sample: toml::Table = toml::from_str(text).expect("sample parses");
        let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
        for (section, table) in &defaults {
            let toml::Value::Table(table) = table else {
                continue;
            };
            let Some(toml::Value::Table(shown)) = sample.get(section) else {
                panic!("deploy/nearcache.toml has no [{section}] section");
            };
            for (key, default) in table {
                if matches!(default, toml::Value::Array(a) if a.is_empty()) {
                    continue;
                }
                let value = shown.get(key).unwrap_or_else(|| {
                    panic!("deploy/nearcache.toml does not show {section}.{key}")
                });
                // Sizes are shown with units; compare what they parse to.
                let parsed: Config = toml::from_str(&format!("[{section}]\n{key} = {value}"))
                    .unwrap_or_else(|e| panic!("{section}.{key}: {e}"));
                let parsed = toml::Table::try_from(parsed).expect("serializes");
                assert_eq!(
                    parsed[section.as_str()][key.as_str()],
                    *default,
                    "deploy/nearcache.toml shows {section}.{key} = {value}, the default is {default}"
                );
            }
        }
    }
}

//! Configuration: one TOML section per module, named defaults, overridable by
//! `NEARCACHE_*` environment variables and command-line flags (flag > env > file > default).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
    pub const S3_LISTEN: &str = "127.0.0.1:9000";
    pub const CLUSTER_NAME: &str = "nearcache";
    pub const REPLICATION_FACTOR: usize = 1;
    pub const WRITE_QUORUM: usize = 1;
    pub const GOSSIP_INTERVAL_MS: u64 = 1_000;
    pub const SYNC_INTERVAL_MS: u64 = 500;
    pub const SYNC_BATCH: usize = 512;
    pub const SYNC_CONCURRENCY: usize = 16;
    pub const SYNC_RATE_LIMIT: u64 = 64 << 20;
    pub const REPLICA_UPLOAD_DELAY_SECS: u64 = 60;
    pub const PEER_TIMEOUT_MS: u64 = 5_000;
    pub const STALE_IF_ERROR_SECS: u64 = 0;
    pub const NEGATIVE_TTL_SECS: u64 = 5;
    pub const NEGATIVE_MAX_ENTRIES: usize = 100_000;
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
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            fetch_default: defaults::FETCH_DEFAULT,
            default_level: defaults::DEFAULT_LEVEL,
            max_object_size: Size(defaults::MAX_OBJECT_SIZE),
            origin_wait_secs: defaults::ORIGIN_WAIT_SECS,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: defaults::LOG_LEVEL.into(),
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
    /// next in line needs that many owner copies besides its own); capped at the number
    /// of owners reachable for the key.
    pub write_quorum: usize,
    /// SWIM probe period.
    pub gossip_interval_ms: u64,
    /// How often each shard asks peers for journal changes.
    pub sync_interval_ms: u64,
    /// Journal changes per sync request.
    pub sync_batch: usize,
    /// Bodies fetched in parallel while applying one batch.
    pub sync_concurrency: usize,
    /// Bytes per second a node pulls from peers for anti-entropy and ownership moves.
    pub sync_rate_limit: Size,
    /// A replica of a level-1 write uploads to S3 itself only if the writer has not
    /// reported the upload within this time (the writer uploads; replicas stand by).
    pub replica_upload_delay_secs: u64,
    /// Timeout of one node-to-node request head (bodies stream without a deadline).
    pub peer_timeout_ms: u64,
    /// Testing: enables `POST /api/v1/cluster/block` (a per-peer drop switch).
    pub fault_injection: bool,
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
            sync_rate_limit: Size(defaults::SYNC_RATE_LIMIT),
            replica_upload_delay_secs: defaults::REPLICA_UPLOAD_DELAY_SECS,
            peer_timeout_ms: defaults::PEER_TIMEOUT_MS,
            fault_injection: false,
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
    /// Copies of each object in the cluster [default: 1]
    #[arg(long, env = "NEARCACHE_REPLICATION_FACTOR")]
    pub replication_factor: Option<usize>,
    /// Copies durable before a write is acknowledged [default: 1]
    #[arg(long, env = "NEARCACHE_WRITE_QUORUM")]
    pub write_quorum: Option<usize>,
    /// Log level or tracing filter (also RUST_LOG) [default: info]
    #[arg(long, env = "NEARCACHE_LOG_LEVEL")]
    pub log_level: Option<String>,
}

impl Config {
    /// Builds the effective config: defaults, then the TOML file, then env and flags.
    #[expect(clippy::disallowed_methods, reason = "start-up, on the main thread")]
    pub fn load(args: &ServeArgs) -> anyhow::Result<Config> {
        let mut cfg = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<Config>(&text)
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
        set!(self.cluster.replication_factor, a.replication_factor);
        set!(self.cluster.write_quorum, a.write_quorum);
        set!(self.log.level, a.log_level);
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.api.default_level > 2 {
            bail!(
                "api.default_level must be 0, 1 or 2, not {}",
                self.api.default_level
            );
        }
        if self.store.device_kind().is_none() {
            bail!(
                "store.device must be auto, uring or syscall, not {:?}",
                self.store.device
            );
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
        if c.name.is_empty() {
            bail!("cluster.name must not be empty");
        }
        if let Some(l) = c.listen {
            if l.ip().is_unspecified() && c.advertise.is_none() {
                bail!("cluster.listen {l} is a wildcard address: set cluster.advertise (--cluster-advertise) to the address peers should use");
            }
        }
        if !c.join.is_empty() && c.listen.is_none() {
            bail!("--join needs --cluster-listen (the private address gossip and peers use)");
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

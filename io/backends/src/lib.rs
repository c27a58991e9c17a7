//! # nearcache-backends: several S3 backends behind one cache
//!
//! Goals: hold the origin backends a node writes to and reads from (one
//! [`nearcache_s3::Bridge`] each), know which backends make up the set of a bucket and
//! its write policy, keep each backend's health (circuit breaker, maintenance, error
//! rate, latency), and read with failover: the preferred backend first, the next on an
//! error or timeout, telling the caller which backends lacked the key (drift).
//! Non-goals: the sync log and its replay (the object service keeps those in the
//! shard's journal), shards, HTTP. Like the bridge, everything here is runtime-agnostic.
//!
//! One backend and no set is today's single-origin node: [`Backends::single`], whose
//! breaker is off (with nowhere else to go, callers keep retrying it as before).
//!
//! ```text
//!   object service ──get/head (failover)──> Backends ──> backend "dc1": Bridge ──> S3 dc1
//!        │            put/delete (one backend)     └──> backend "dc2": Bridge ──> S3 dc2
//!        └── fans writes out over the set's members, applies the write policy,
//!            logs what a backend missed in the shard's sync log
//! ```

#![forbid(unsafe_code)]

mod health;

pub use health::{is_backend_failure, Admit, BackendState, BreakerConfig, Health};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nearcache_s3::{
    Bridge, GetObject, ListPage, ListParams, ObjectLoc, OriginConfig, OriginDeadlines, OriginError,
    OriginKind, PutMeta, PutResult, RemoteMeta,
};

/// How many backends of a set must take a write before it counts as done (the rest get
/// it from the sync log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePolicy {
    /// Every backend of the set that is not in maintenance.
    All,
    /// One backend.
    Any,
    /// This many backends (at most the set's active members).
    Quorum(usize),
}

impl WritePolicy {
    /// Parses `all`, `any` or a number.
    pub fn parse(s: &str) -> Result<WritePolicy, String> {
        match s.trim() {
            "all" => Ok(WritePolicy::All),
            "any" => Ok(WritePolicy::Any),
            n => match n.parse::<usize>() {
                Ok(0) | Err(_) => Err(format!(
                    "write policy {s:?}: expected \"all\", \"any\" or a number of backends >= 1"
                )),
                Ok(n) => Ok(WritePolicy::Quorum(n)),
            },
        }
    }

    /// Backends that must take a write when `active` members are not in maintenance.
    pub fn needed(self, active: usize) -> usize {
        match self {
            WritePolicy::All => active,
            WritePolicy::Any => active.min(1),
            WritePolicy::Quorum(n) => n.min(active),
        }
    }
}

impl std::fmt::Display for WritePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WritePolicy::All => f.write_str("all"),
            WritePolicy::Any => f.write_str("any"),
            WritePolicy::Quorum(n) => write!(f, "{n}"),
        }
    }
}

/// Which backend a read asks first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOrder {
    /// The set's order.
    Preference,
    /// The lowest recent latency first.
    Latency,
}

/// One backend to start.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    pub name: String,
    /// Its connection; the bucket of [`OriginKind::S3`] is the native API's bucket there.
    pub origin: OriginConfig,
    pub deadlines: OriginDeadlines,
    /// S3-API bucket name -> this backend's bucket name (unlisted buckets keep their name).
    pub buckets: BTreeMap<String, String>,
}

/// A set of backends by name, with its write policy.
#[derive(Debug, Clone)]
pub struct SetSpec {
    pub members: Vec<String>,
    pub policy: WritePolicy,
}

#[derive(Debug, Clone)]
pub struct BackendsConfig {
    pub backends: Vec<BackendSpec>,
    /// The set of the native API and of buckets without their own.
    pub default_set: SetSpec,
    /// Per-bucket sets of the S3 API.
    pub bucket_sets: Vec<(String, SetSpec)>,
    pub breaker: BreakerConfig,
    pub read_order: ReadOrder,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("backend set of {set} names unknown backend {name:?}")]
    Unknown { set: String, name: String },
    #[error("two backends are named {0:?}")]
    Duplicate(String),
    #[error("backend set of {0} is empty")]
    Empty(String),
    #[error("starting origin backend {name:?}: {error}")]
    Start { name: String, error: OriginError },
}

/// One origin backend.
pub struct Backend {
    pub name: String,
    /// Client-facing bounds.
    pub bridge: Bridge,
    /// Background bounds (uploads, repairs).
    pub background: Bridge,
    buckets: BTreeMap<String, String>,
    /// Where the native API's ids live on this backend (None: a local origin).
    native_bucket: Option<String>,
    pub health: Health,
}

impl Backend {
    /// The location `loc` has on this backend (its bucket mapping applied).
    pub fn map_loc(&self, loc: &ObjectLoc) -> ObjectLoc {
        match self.buckets.get(&loc.bucket) {
            Some(b) => ObjectLoc {
                bucket: b.clone(),
                key: loc.key.clone(),
            },
            None => loc.clone(),
        }
    }

    /// Where `target` lives on this backend as a bucket and key (native ids under
    /// `prefix` in its native bucket); None on a local origin.
    pub fn loc_of(&self, target: &Target, prefix: &str) -> Option<ObjectLoc> {
        match target {
            Target::Native(id) => self.native_bucket.as_ref().map(|b| ObjectLoc {
                bucket: b.clone(),
                key: format!("{prefix}{id}"),
            }),
            Target::Loc(loc) => Some(self.map_loc(loc)),
        }
    }

    /// This backend's name for an S3-API bucket.
    pub fn map_bucket<'a>(&'a self, bucket: &'a str) -> &'a str {
        self.buckets.get(bucket).map_or(bucket, String::as_str)
    }
}

/// The members of one set (indexes into [`Backends::list`]) and its policy.
#[derive(Debug, Clone)]
pub struct BackendSet {
    pub members: Vec<usize>,
    pub policy: WritePolicy,
}

/// Where an object lives, before a backend's bucket mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A native API id in the configured bucket (with the configured prefix).
    Native(String),
    Loc(ObjectLoc),
}

/// A read's answer and what the backends asked before said.
#[derive(Debug)]
pub struct Found<T> {
    pub value: T,
    /// The backend that answered.
    pub from: usize,
    /// Backends asked first that answered 404: drift, if the key was found.
    pub missing_on: Vec<usize>,
}

/// A backend's state as the admin endpoint shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendStatus {
    pub name: String,
    pub state: BackendState,
    pub description: String,
    pub requests: u64,
    pub failures: u64,
    pub error_rate: f64,
    pub latency_ms: Option<f64>,
    pub in_flight: u32,
    pub circuit_opens: u64,
    pub drift: u64,
}

pub struct Backends {
    list: Vec<Arc<Backend>>,
    default_set: BackendSet,
    bucket_sets: HashMap<String, BackendSet>,
    pub breaker: BreakerConfig,
    read_order: ReadOrder,
}

impl Backends {
    /// Starts one bridge per backend.
    pub fn start(cfg: BackendsConfig) -> Result<Backends, ConfigError> {
        let mut names = HashMap::new();
        for (i, b) in cfg.backends.iter().enumerate() {
            if names.insert(b.name.clone(), i).is_some() {
                return Err(ConfigError::Duplicate(b.name.clone()));
            }
        }
        let resolve = |set: &str, spec: &SetSpec| -> Result<BackendSet, ConfigError> {
            if spec.members.is_empty() {
                return Err(ConfigError::Empty(set.to_owned()));
            }
            let members = spec
                .members
                .iter()
                .map(|n| {
                    names.get(n).copied().ok_or_else(|| ConfigError::Unknown {
                        set: set.to_owned(),
                        name: n.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(BackendSet {
                members,
                policy: spec.policy,
            })
        };
        let default_set = resolve("the default set", &cfg.default_set)?;
        let mut bucket_sets = HashMap::new();
        for (bucket, spec) in &cfg.bucket_sets {
            bucket_sets.insert(bucket.clone(), resolve(&format!("bucket {bucket}"), spec)?);
        }
        let mut list: Vec<Arc<Backend>> = Vec::new();
        for spec in cfg.backends {
            let bridge = match Bridge::start_with(spec.origin.clone(), spec.deadlines) {
                Ok(b) => b,
                Err(error) => {
                    for b in &list {
                        b.bridge.shutdown();
                    }
                    return Err(ConfigError::Start {
                        name: spec.name,
                        error,
                    });
                }
            };
            list.push(Arc::new(Backend {
                name: spec.name,
                background: bridge.background(),
                bridge,
                buckets: spec.buckets,
                native_bucket: config_bucket(&spec.origin).map(str::to_owned),
                health: Health::default(),
            }));
        }
        let breaker = BreakerConfig {
            enabled: cfg.breaker.enabled && list.len() > 1,
            ..cfg.breaker
        };
        Ok(Backends {
            list,
            default_set,
            bucket_sets,
            breaker,
            read_order: cfg.read_order,
        })
    }

    /// Today's single origin: one backend named `name`, policy `all`, breaker off.
    pub fn single(name: &str, bridge: Bridge, native_bucket: Option<String>) -> Backends {
        Backends {
            list: vec![Arc::new(Backend {
                name: name.to_owned(),
                background: bridge.background(),
                bridge,
                buckets: BTreeMap::new(),
                native_bucket,
                health: Health::default(),
            })],
            default_set: BackendSet {
                members: vec![0],
                policy: WritePolicy::All,
            },
            bucket_sets: HashMap::new(),
            breaker: BreakerConfig {
                enabled: false,
                ..BreakerConfig::default()
            },
            read_order: ReadOrder::Preference,
        }
    }

    pub fn list(&self) -> &[Arc<Backend>] {
        &self.list
    }

    pub fn get_backend(&self, i: usize) -> &Backend {
        &self.list[i]
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|b| b.name == name)
    }

    /// More than one backend: writes fan out and misses are logged.
    pub fn is_multi(&self) -> bool {
        self.list.len() > 1
    }

    /// The set that holds objects of `bucket` (None: the native API).
    pub fn set_for(&self, bucket: Option<&str>) -> &BackendSet {
        bucket
            .and_then(|b| self.bucket_sets.get(b))
            .unwrap_or(&self.default_set)
    }

    /// The first backend of the default set: the one bucket-level and multipart
    /// operations of the S3 API use.
    pub fn primary(&self) -> &Backend {
        &self.list[self.default_set.members[0]]
    }

    /// Every backend that belongs to some set.
    pub fn all_members(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.default_set.members.clone();
        for s in self.bucket_sets.values() {
            v.extend(&s.members);
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The order a read tries the members of `set`: those admitted now (by preference or
    /// latency), then those whose circuit is open (a last resort, so a read never fails
    /// only because every breaker is open); members in maintenance never. Without a
    /// probe: for repairs, which pick their source themselves.
    pub fn read_order(&self, set: &BackendSet) -> Vec<usize> {
        self.plan_read(set, false).0
    }

    /// [`Backends::read_order`]; with `probe`, a backend whose cool-down is over is asked
    /// first, as its circuit's probe (returned: release it if it was not asked).
    fn plan_read(&self, set: &BackendSet, probe: bool) -> (Vec<usize>, Option<usize>) {
        let mut up: Vec<usize> = Vec::new();
        let mut down: Vec<usize> = Vec::new();
        let mut probing = None;
        for &i in &set.members {
            let h = &self.list[i].health;
            if h.in_maintenance() {
                continue;
            }
            if !self.breaker.enabled || !h.is_open() && !h.is_tripped() {
                up.push(i);
            } else if probe && probing.is_none() && h.admit(&self.breaker) == Admit::Probe {
                probing = Some(i);
            } else {
                down.push(i);
            }
        }
        if self.read_order == ReadOrder::Latency {
            // Backends without a sample yet sort first, so they get one.
            up.sort_by_key(|&i| self.list[i].health.latency().unwrap_or(Duration::ZERO));
        }
        let mut order: Vec<usize> = probing.into_iter().collect();
        order.extend(up);
        order.extend(down);
        (order, probing)
    }

    /// Runs `op` on backend `i`, feeding its outcome into the backend's health.
    pub async fn on<T, F, Fut>(&self, i: usize, op: F) -> Result<T, OriginError>
    where
        F: FnOnce(Arc<Backend>) -> Fut,
        Fut: std::future::Future<Output = Result<T, OriginError>>,
    {
        let b = self.list[i].clone();
        let start = Instant::now();
        let res = {
            let _guard = b.health.begin();
            op(b.clone()).await
        };
        let failed = res.as_ref().err().is_some_and(is_backend_failure);
        b.health.record(&self.breaker, failed, start.elapsed());
        res
    }

    /// Whether a write or repair may go to backend `i` now (not in maintenance, circuit
    /// closed or this is its probe).
    pub fn admit(&self, i: usize) -> Admit {
        self.list[i].health.admit(&self.breaker)
    }

    /// GET with failover over `set` (see [`Backends::read_order`]). `NotFound` only if
    /// every backend asked answered 404; otherwise the last failure.
    pub async fn get(
        &self,
        set: &BackendSet,
        target: &Target,
        range: Option<(u64, u64)>,
    ) -> Result<Found<GetObject>, OriginError> {
        self.read(set, |b| {
            let target = target.clone();
            async move {
                match &target {
                    Target::Native(id) => b.bridge.get(id, range).await,
                    Target::Loc(loc) => b.bridge.get_in(&b.map_loc(loc), range, None).await,
                }
            }
        })
        .await
    }

    /// A conditional GET (If-None-Match `etag`) with failover, like [`Backends::get`]:
    /// `NotModified` when the first backend that answers still has that version.
    pub async fn get_if_changed(
        &self,
        set: &BackendSet,
        target: &Target,
        etag: &str,
    ) -> Result<Found<GetObject>, OriginError> {
        self.read(set, |b| {
            let target = target.clone();
            async move {
                match &target {
                    Target::Native(id) => b.bridge.get_if_changed(None, id, etag).await,
                    Target::Loc(loc) => {
                        let loc = b.map_loc(loc);
                        b.bridge
                            .get_if_changed(Some(&loc.bucket), &loc.key, etag)
                            .await
                    }
                }
            }
        })
        .await
    }

    /// HEAD with failover, like [`Backends::get`].
    pub async fn head(
        &self,
        set: &BackendSet,
        target: &Target,
    ) -> Result<Found<RemoteMeta>, OriginError> {
        self.read(set, |b| {
            let target = target.clone();
            async move { head_on(&b, &target, false).await }
        })
        .await
    }

    async fn read<T, F, Fut>(&self, set: &BackendSet, op: F) -> Result<Found<T>, OriginError>
    where
        F: Fn(Arc<Backend>) -> Fut,
        Fut: std::future::Future<Output = Result<T, OriginError>>,
    {
        // A probe comes first in the order, so it is always asked (and `on` records it).
        let (order, _probe) = self.plan_read(set, true);
        let mut missing_on = Vec::new();
        let mut last_err: Option<OriginError> = None;
        for (n, &i) in order.iter().enumerate() {
            match self.on(i, &op).await {
                Ok(value) => {
                    if n > 0 {
                        tracing::debug!(backend = %self.list[i].name, tried = n, "read failed over");
                    }
                    return Ok(Found {
                        value,
                        from: i,
                        missing_on,
                    });
                }
                Err(OriginError::NotFound) => missing_on.push(i),
                Err(e) if is_backend_failure(&e) => {
                    tracing::warn!(backend = %self.list[i].name, error = %e, "origin backend failed a read; trying the next");
                    last_err = Some(e);
                }
                // An answer about the request (a bad range, 4xx): the same everywhere.
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or(OriginError::NotFound))
    }

    /// PUT of a file slice or bytes to backend `i` (background bounds).
    pub async fn put(
        &self,
        i: usize,
        target: &Target,
        src: nearcache_s3::PutSource,
        meta: PutMeta,
    ) -> Result<PutResult, OriginError> {
        self.on(i, |b| async move {
            match target {
                Target::Native(id) => b.background.put(id, src, meta).await,
                Target::Loc(loc) => b.background.put_in(&b.map_loc(loc), src, meta).await,
            }
        })
        .await
    }

    /// DELETE on backend `i` (background bounds); a missing object counts as deleted.
    pub async fn delete(&self, i: usize, target: &Target) -> Result<(), OriginError> {
        self.on(i, |b| async move {
            match target {
                Target::Native(id) => b.background.delete(id).await,
                Target::Loc(loc) => b.background.delete_in(&b.map_loc(loc)).await,
            }
        })
        .await
    }

    /// HEAD on backend `i` (background bounds), to verify a repair.
    pub async fn head_on(&self, i: usize, target: &Target) -> Result<RemoteMeta, OriginError> {
        self.on(i, |b| async move { head_on(&b, target, true).await })
            .await
    }

    /// GET from backend `i` (background bounds), the source of a repair.
    pub async fn get_on(&self, i: usize, target: &Target) -> Result<GetObject, OriginError> {
        self.on(i, |b| async move {
            match target {
                Target::Native(id) => b.background.get(id, None).await,
                Target::Loc(loc) => b.background.get_in(&b.map_loc(loc), None, None).await,
            }
        })
        .await
    }

    /// One ListObjectsV2 page of `bucket` (the S3 API's name; for the native API's bucket
    /// pass None) on backend `i`.
    pub async fn list_on(
        &self,
        i: usize,
        bucket: Option<&str>,
        params: ListParams,
    ) -> Result<ListPage, OriginError> {
        self.on(i, |b| async move {
            let name = match bucket {
                Some(x) => b.map_bucket(x).to_owned(),
                None => native_bucket(&b).ok_or_else(|| {
                    OriginError::Rejected("this backend has no S3 bucket to list".into())
                })?,
            };
            b.bridge.list_objects(&name, params).await
        })
        .await
    }

    /// Puts backend `name` in or out of maintenance; false if no such backend.
    pub fn set_maintenance(&self, name: &str, on: bool) -> bool {
        match self.index_of(name) {
            Some(i) => {
                let b = &self.list[i];
                if b.health.in_maintenance() != on {
                    tracing::info!(backend = %b.name, maintenance = on, "origin backend maintenance");
                }
                b.health.set_maintenance(on);
                true
            }
            None => false,
        }
    }

    pub fn status(&self) -> Vec<BackendStatus> {
        self.list
            .iter()
            .map(|b| {
                let h = &b.health;
                BackendStatus {
                    name: b.name.clone(),
                    state: h.state(),
                    description: b.bridge.describe(),
                    requests: h.requests.load(std::sync::atomic::Ordering::Relaxed),
                    failures: h.failures.load(std::sync::atomic::Ordering::Relaxed),
                    error_rate: h.error_rate(),
                    latency_ms: h.latency().map(|d| d.as_secs_f64() * 1e3),
                    in_flight: h.in_flight(),
                    circuit_opens: h.circuit_opens.load(std::sync::atomic::Ordering::Relaxed),
                    drift: h.drift.load(std::sync::atomic::Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Stops every backend's bridge (blocks; see [`Bridge::shutdown`]).
    pub fn shutdown(&self) {
        for b in &self.list {
            b.bridge.shutdown();
        }
    }
}

/// The bucket the native API's ids live in on this backend (None: a local origin).
fn native_bucket(b: &Backend) -> Option<String> {
    b.native_bucket.clone()
}

async fn head_on(
    b: &Backend,
    target: &Target,
    background: bool,
) -> Result<RemoteMeta, OriginError> {
    let bridge = if background { &b.background } else { &b.bridge };
    match target {
        Target::Native(id) => bridge.head(id).await,
        Target::Loc(loc) => bridge.head_in(&b.map_loc(loc), None).await,
    }
}

/// The bucket of an origin config, for listing the native API's objects.
pub fn config_bucket(cfg: &OriginConfig) -> Option<&str> {
    match &cfg.kind {
        OriginKind::S3 { bucket, .. } => Some(bucket),
        OriginKind::Local { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_count() {
        assert_eq!(WritePolicy::parse("all"), Ok(WritePolicy::All));
        assert_eq!(WritePolicy::parse("any"), Ok(WritePolicy::Any));
        assert_eq!(WritePolicy::parse("2"), Ok(WritePolicy::Quorum(2)));
        assert!(WritePolicy::parse("0").is_err());
        assert!(WritePolicy::parse("most").is_err());
        assert_eq!(WritePolicy::All.needed(3), 3);
        assert_eq!(WritePolicy::Any.needed(3), 1);
        assert_eq!(WritePolicy::Any.needed(0), 0);
        assert_eq!(WritePolicy::Quorum(2).needed(3), 2);
        assert_eq!(WritePolicy::Quorum(5).needed(3), 3);
    }

    /// The policy parser takes any text: it never panics, and what it accepts prints
    /// back to a text it parses to the same policy.
    #[test]
    fn fuzz_write_policy_parse() {
        bolero::check!().for_each(|b: &[u8]| {
            let text = String::from_utf8_lossy(b);
            if let Ok(p) = WritePolicy::parse(&text) {
                assert_eq!(WritePolicy::parse(&p.to_string()), Ok(p));
                assert!(p.needed(2) <= 2);
            }
        });
    }
}

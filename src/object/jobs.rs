//! Background jobs over a bucket prefix: prewarm (fetch every listed object into its
//! owner node's cache) and delete (tombstone every listed object and delete it in the
//! origin). A job runs on the node that took it: it lists the origin page by page and
//! sends each object to the first node of its ranking (its owner), in batches, at most
//! `jobs.concurrency` objects at a time and at most `jobs.rate_*` per second, so the
//! fetches are spread by placement instead of all flowing through one node.
//!
//! Jobs live in memory ([`Ops`], node-wide): a restart forgets them. Running them again
//! is safe: a prewarm skips copies that are already fresh (same ETag as the listing),
//! a delete finds only what is left.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::Method;
use http_body_util::BodyExt;
use nearcache_s3::ListParams;
use nearcache_shards::Lookup;
use serde::{Deserialize, Serialize};

use super::read::{GetRequest, ObjectView, Render};
use super::write::DeleteRequest;
use super::{CacheKey, ObjectCtx, ObjectError};
use crate::cluster::fanout;
use crate::http_util::{Answer, ByteRangeSpec, Conditions};
use crate::mesh::on_owner;
use crate::metrics::{Exposition, Family, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Prewarm,
    Delete,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Prewarm => "prewarm",
            JobKind::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        match s {
            "prewarm" => Some(JobKind::Prewarm),
            "delete" => Some(JobKind::Delete),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Done,
    Cancelled,
    Failed,
}

/// How a job ended.
#[derive(Debug, Clone)]
struct End {
    state: JobState,
    at_ms: u64,
    error: Option<String>,
}

/// One job and its progress (counters written by the job's task, read by any shard).
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    pub bucket: String,
    pub prefix: String,
    started: Instant,
    started_ms: u64,
    listed: AtomicU64,
    fetched: AtomicU64,
    deleted: AtomicU64,
    bytes: AtomicU64,
    skipped: AtomicU64,
    errors: AtomicU64,
    /// The origin listing is complete (the ETA is known from then on).
    listing_done: AtomicBool,
    cancel: AtomicBool,
    end: Mutex<Option<End>>,
    /// The first few errors, for the job's `error` field.
    first_error: Mutex<Option<String>>,
}

impl Job {
    fn new(kind: JobKind, bucket: &str, prefix: &str) -> Job {
        Job {
            id: ulid::Ulid::generate().to_string(),
            kind,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            started: Instant::now(),
            started_ms: nearcache_shards::hlc::wall_ms(),
            listed: AtomicU64::new(0),
            fetched: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            listing_done: AtomicBool::new(false),
            cancel: AtomicBool::new(false),
            end: Mutex::new(None),
            first_error: Mutex::new(None),
        }
    }

    pub fn state(&self) -> JobState {
        lock(&self.end)
            .as_ref()
            .map_or(JobState::Running, |e| e.state)
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Relaxed)
    }

    /// Cancels a running job: it stops taking new objects at once (batches already sent
    /// to a node finish).
    pub fn cancel(&self) {
        self.cancel.store(true, Relaxed);
        self.finish(JobState::Cancelled, None);
    }

    /// Records the end, unless the job already ended (a cancel stays a cancel).
    fn finish(&self, state: JobState, error: Option<String>) {
        let mut end = lock(&self.end);
        if end.is_none() {
            *end = Some(End {
                state,
                at_ms: nearcache_shards::hlc::wall_ms(),
                error,
            });
        }
    }

    fn note_error(&self, e: &str) {
        let mut f = lock(&self.first_error);
        if f.is_none() {
            *f = Some(e.to_owned());
        }
    }

    /// The job object of the API.
    pub fn to_json(&self, node: &str) -> serde_json::Value {
        let end = lock(&self.end).clone();
        let (listed, fetched, deleted, bytes, skipped, errors) = (
            self.listed.load(Relaxed),
            self.fetched.load(Relaxed),
            self.deleted.load(Relaxed),
            self.bytes.load(Relaxed),
            self.skipped.load(Relaxed),
            self.errors.load(Relaxed),
        );
        let elapsed = match &end {
            Some(e) => Duration::from_millis(e.at_ms.saturating_sub(self.started_ms)),
            None => self.started.elapsed(),
        }
        .as_secs_f64()
        .max(0.001);
        let handled = fetched + deleted + skipped + errors;
        let rate = (fetched + deleted + skipped) as f64 / elapsed;
        let eta = match &end {
            Some(_) => Some(0.0),
            None if self.listing_done.load(Relaxed) && rate > 0.0 => {
                Some(listed.saturating_sub(handled) as f64 / rate)
            }
            None => None,
        };
        let error = end
            .as_ref()
            .and_then(|e| e.error.clone())
            .or_else(|| lock(&self.first_error).clone());
        serde_json::json!({
            "id": self.id,
            "kind": self.kind.as_str(),
            "bucket": self.bucket,
            "prefix": self.prefix,
            "state": end.as_ref().map_or(JobState::Running, |e| e.state),
            "listed": listed,
            "fetched": fetched,
            "deleted": deleted,
            "bytes": bytes,
            "skipped": skipped,
            "errors": errors,
            "rate_objects_per_sec": round2(rate),
            "rate_bytes_per_sec": round2(bytes as f64 / elapsed),
            "eta_secs": eta.map(round2),
            "started_unix_ms": self.started_ms,
            "finished_unix_ms": end.as_ref().map(|e| e.at_ms),
            "error": error,
            "node": node,
        })
    }

    fn add(&self, r: &BatchResult) {
        self.fetched.fetch_add(r.fetched, Relaxed);
        self.deleted.fetch_add(r.deleted, Relaxed);
        self.bytes.fetch_add(r.bytes, Relaxed);
        self.skipped.fetch_add(r.skipped, Relaxed);
        self.errors.fetch_add(r.errors, Relaxed);
        if let Some(e) = &r.error {
            self.note_error(e);
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Locks a mutex held only for a few field copies; a poisoned one (a panic aborts the
/// process anyway) is used as is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Node-wide state of the cache operations: the jobs and their counters.
pub struct Ops {
    pub node_id: String,
    pub metrics: OpsMetrics,
    /// Oldest first; finished ones beyond `kept` are forgotten.
    jobs: Mutex<VecDeque<Arc<Job>>>,
    kept: usize,
}

impl Ops {
    pub fn new(node_id: &str, shards: usize, kept: usize) -> Ops {
        Ops {
            node_id: node_id.to_owned(),
            metrics: OpsMetrics::new(shards),
            jobs: Mutex::new(VecDeque::new()),
            kept,
        }
    }

    fn register(&self, job: Arc<Job>) {
        let mut jobs = lock(&self.jobs);
        jobs.push_back(job);
        let finished = jobs
            .iter()
            .filter(|j| j.state() != JobState::Running)
            .count();
        let mut excess = finished.saturating_sub(self.kept);
        jobs.retain(|j| {
            if excess > 0 && j.state() != JobState::Running {
                excess -= 1;
                false
            } else {
                true
            }
        });
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        lock(&self.jobs).iter().find(|j| j.id == id).cloned()
    }

    /// Every job this node knows, newest first.
    pub fn list(&self) -> Vec<Arc<Job>> {
        lock(&self.jobs).iter().rev().cloned().collect()
    }

    pub fn render_metrics(&self, out: &mut Exposition) {
        self.metrics.render(&self.list(), out);
    }
}

const OUTCOMES: [&str; 5] = ["listed", "fetched", "deleted", "skipped", "error"];

const INVALIDATED: Family = Family::new(
    "nearcache_invalidated_copies_total",
    Kind::Counter,
    "Cached copies dropped by invalidation (copies not yet safe in the origin are kept).",
);
const JOB_OBJECTS: Family = Family::new(
    "nearcache_job_objects_total",
    Kind::Counter,
    "Objects handled by prewarm and delete jobs started on this node, by kind and outcome.",
);
const JOB_BYTES: Family = Family::new(
    "nearcache_job_bytes_total",
    Kind::Counter,
    "Bytes fetched by prewarm jobs started on this node.",
);
const JOBS: Family = Family::new(
    "nearcache_jobs",
    Kind::Gauge,
    "Jobs this node keeps, by kind and state.",
);

/// Counters of invalidation (by shard) and jobs (by kind and outcome); never by key.
pub struct OpsMetrics {
    invalidated: Box<[AtomicU64]>,
    /// [kind][outcome], in the order of [`OUTCOMES`].
    objects: [[AtomicU64; 5]; 2],
    bytes: [AtomicU64; 2],
}

impl OpsMetrics {
    fn new(shards: usize) -> OpsMetrics {
        OpsMetrics {
            invalidated: (0..shards.max(1)).map(|_| AtomicU64::new(0)).collect(),
            objects: Default::default(),
            bytes: Default::default(),
        }
    }

    pub fn invalidated(&self, shard: usize, n: u64) {
        if let Some(c) = self.invalidated.get(shard) {
            c.fetch_add(n, Relaxed);
        }
    }

    fn count(&self, kind: JobKind, r: &BatchResult) {
        let o = &self.objects[kind as usize];
        o[1].fetch_add(r.fetched, Relaxed);
        o[2].fetch_add(r.deleted, Relaxed);
        o[3].fetch_add(r.skipped, Relaxed);
        o[4].fetch_add(r.errors, Relaxed);
        self.bytes[kind as usize].fetch_add(r.bytes, Relaxed);
    }

    fn render(&self, jobs: &[Arc<Job>], out: &mut Exposition) {
        out.per_shard(
            &INVALIDATED,
            self.invalidated.iter().map(|c| c.load(Relaxed)),
        );
        out.family(&JOB_OBJECTS);
        for kind in [JobKind::Prewarm, JobKind::Delete] {
            for (i, outcome) in OUTCOMES.iter().enumerate() {
                out.sample(
                    JOB_OBJECTS.name,
                    &format!("kind=\"{}\",outcome=\"{outcome}\"", kind.as_str()),
                    self.objects[kind as usize][i].load(Relaxed),
                );
            }
        }
        out.family(&JOB_BYTES);
        for kind in [JobKind::Prewarm, JobKind::Delete] {
            out.sample(
                JOB_BYTES.name,
                &format!("kind=\"{}\"", kind.as_str()),
                self.bytes[kind as usize].load(Relaxed),
            );
        }
        out.family(&JOBS);
        for kind in [JobKind::Prewarm, JobKind::Delete] {
            for state in [
                JobState::Running,
                JobState::Done,
                JobState::Cancelled,
                JobState::Failed,
            ] {
                let n = jobs
                    .iter()
                    .filter(|j| j.kind == kind && j.state() == state)
                    .count();
                let state = serde_json::to_value(state).unwrap_or_default();
                out.sample(
                    JOBS.name,
                    &format!(
                        "kind=\"{}\",state=\"{}\"",
                        kind.as_str(),
                        state.as_str().unwrap_or("")
                    ),
                    n,
                );
            }
        }
    }
}

/// One listed object sent to its owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchEntry {
    pub key: String,
    pub etag: String,
    pub size: u64,
}

/// What a node did with a batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BatchResult {
    pub fetched: u64,
    pub deleted: u64,
    pub skipped: u64,
    pub bytes: u64,
    pub errors: u64,
    /// The first error, if any.
    pub error: Option<String>,
}

impl BatchResult {
    fn failed(&mut self, e: String) {
        self.errors += 1;
        if self.error.is_none() {
            self.error = Some(e);
        }
    }
}

/// How long a node-to-node cache operation (a job's batch, an invalidation) may take.
pub fn node_timeout_ms(cfg: &crate::config::Config) -> u64 {
    cfg.jobs.node_timeout_secs.max(1).saturating_mul(1000)
}

/// Starts a job on this node; it runs in the background on this shard.
pub fn start<C: ObjectCtx>(ctx: &Rc<C>, kind: JobKind, bucket: &str, prefix: &str) -> Arc<Job> {
    let job = Arc::new(Job::new(kind, bucket, prefix));
    ctx.ops().register(job.clone());
    let (ctx, j) = (ctx.clone(), job.clone());
    monoio::spawn(async move {
        match run(&ctx, &j).await {
            Ok(()) => j.finish(JobState::Done, None),
            Err(e) => {
                tracing::warn!(job = %j.id, kind = j.kind.as_str(), error = %e, "job failed");
                j.finish(JobState::Failed, Some(e.to_string()));
            }
        }
    });
    job
}

/// Waits until `job` is no longer running (polled: jobs are long and few).
pub async fn wait(job: &Job) {
    while job.state() == JobState::Running {
        monoio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Spaces out batches so that a job stays under its objects/s and bytes/s limits.
struct Pace {
    objects_per_sec: u64,
    bytes_per_sec: u64,
    next: Instant,
}

impl Pace {
    /// When a batch of `n` objects and `bytes` bytes may start; books its share.
    fn reserve(&mut self, n: u64, bytes: u64) -> Instant {
        let now = Instant::now();
        let at = self.next.max(now);
        let mut secs = 0f64;
        if self.objects_per_sec > 0 {
            secs = secs.max(n as f64 / self.objects_per_sec as f64);
        }
        if self.bytes_per_sec > 0 {
            secs = secs.max(bytes as f64 / self.bytes_per_sec as f64);
        }
        self.next = at + Duration::from_secs_f64(secs);
        at
    }
}

async fn run<C: ObjectCtx>(ctx: &Rc<C>, job: &Arc<Job>) -> Result<(), ObjectError> {
    let cfg = ctx.objects().cfg.jobs.clone();
    let pace = std::cell::RefCell::new(Pace {
        objects_per_sec: cfg.rate_objects_per_sec,
        bytes_per_sec: cfg.rate_bytes_per_sec.0,
        next: Instant::now(),
    });
    let mut start_after: Option<String> = None;
    loop {
        if job.is_cancelled() {
            return Ok(());
        }
        let page = ctx
            .objects()
            .origin
            .list_objects(
                &job.bucket,
                ListParams {
                    prefix: job.prefix.clone(),
                    delimiter: None,
                    start_after: start_after.clone(),
                    max_keys: 1000,
                },
            )
            .await?;
        job.listed.fetch_add(page.entries.len() as u64, Relaxed);
        ctx.ops().metrics.objects[job.kind as usize][0]
            .fetch_add(page.entries.len() as u64, Relaxed);
        if !page.is_truncated || page.entries.is_empty() {
            job.listing_done.store(true, Relaxed);
        }
        start_after = page.entries.last().map(|e| e.key.clone());
        let entries: Vec<BatchEntry> = page
            .entries
            .into_iter()
            .map(|e| BatchEntry {
                key: e.key,
                etag: e.etag,
                size: e.size,
            })
            .collect();
        process(ctx, job, &cfg, &pace, entries).await;
        if job.listing_done.load(Relaxed) {
            break;
        }
    }
    if job.kind == JobKind::Delete && !job.is_cancelled() {
        // Writes of the prefix still waiting for their upload on this node are not in
        // the origin's listing yet: they go too.
        let pending: Vec<BatchEntry> = super::read::pending_under(ctx, &job.bucket, &job.prefix)
            .await?
            .into_iter()
            .filter_map(|(key, entry)| {
                entry.map(|e| BatchEntry {
                    key,
                    etag: e.etag,
                    size: e.size,
                })
            })
            .collect();
        job.listed.fetch_add(pending.len() as u64, Relaxed);
        process(ctx, job, &cfg, &pace, pending).await;
    }
    Ok(())
}

/// Sends one page's objects to their owners in batches, with bounded concurrency.
async fn process<C: ObjectCtx>(
    ctx: &Rc<C>,
    job: &Arc<Job>,
    cfg: &crate::config::JobsConfig,
    pace: &std::cell::RefCell<Pace>,
    entries: Vec<BatchEntry>,
) {
    // Grouped by owner (None: this node), in batches; small enough that a short page
    // still makes `concurrency` batches.
    let per_batch = cfg.batch.min(entries.len() / cfg.concurrency.max(1)).max(1);
    let mut groups: Vec<(Option<nearcache_membership::Member>, Vec<BatchEntry>)> = Vec::new();
    for e in entries {
        let owner = ctx.cluster().and_then(|cs| {
            fanout::first_owner(cs, CacheKey::s3(&job.bucket, &e.key).as_str())
                .filter(|m| !m.is_self)
        });
        let owner_id = owner.as_ref().map(|m| m.id.clone());
        match groups
            .iter_mut()
            .find(|(o, b)| o.as_ref().map(|m| &m.id) == owner_id.as_ref() && b.len() < per_batch)
        {
            Some((_, b)) => b.push(e),
            None => groups.push((owner, vec![e])),
        }
    }
    // Each batch runs its objects one by one: `concurrency` batches in flight means
    // `concurrency` objects at once.
    futures::stream::iter(groups)
        .map(|(owner, batch)| {
            let bytes = batch.iter().map(|e| e.size).sum::<u64>();
            let at = pace.borrow_mut().reserve(batch.len() as u64, bytes);
            async move {
                monoio::time::sleep(at.saturating_duration_since(Instant::now())).await;
                if job.is_cancelled() {
                    return;
                }
                let n = batch.len() as u64;
                let r = match (owner, ctx.cluster()) {
                    (Some(m), Some(cs)) => {
                        let path = format!(
                            "/_nc/v1/ops/batch?kind={}&bucket={}",
                            job.kind.as_str(),
                            percent_encoding::utf8_percent_encode(
                                &job.bucket,
                                percent_encoding::NON_ALPHANUMERIC
                            )
                        );
                        let body = serde_json::to_vec(&batch).unwrap_or_default();
                        let ms = node_timeout_ms(&ctx.objects().cfg);
                        match fanout::call(cs, &m, Method::POST, &path, body.into(), ms).await {
                            Ok(v) => serde_json::from_value(v).unwrap_or_else(|e| BatchResult {
                                errors: n,
                                error: Some(format!("node {}: bad answer: {e}", m.id)),
                                ..Default::default()
                            }),
                            Err(e) => BatchResult {
                                errors: n,
                                error: Some(format!("node {}: {e}", m.id)),
                                ..Default::default()
                            },
                        }
                    }
                    _ => run_batch(ctx, job.kind, &job.bucket, batch).await,
                };
                job.add(&r);
                ctx.ops().metrics.count(job.kind, &r);
            }
        })
        .buffer_unordered(cfg.concurrency.max(1))
        .collect::<()>()
        .await;
}

/// Handles a batch of one job on this node, one object after the other (the node that
/// runs the job sent it here because this node is the objects' first owner).
pub async fn run_batch<C: ObjectCtx>(
    ctx: &Rc<C>,
    kind: JobKind,
    bucket: &str,
    entries: Vec<BatchEntry>,
) -> BatchResult {
    let mut r = BatchResult::default();
    for e in entries {
        let key = CacheKey::s3(bucket, &e.key);
        match kind {
            JobKind::Prewarm => match prewarm_one(ctx, key, &e).await {
                Ok(Some(bytes)) => {
                    r.fetched += 1;
                    r.bytes += bytes;
                }
                Ok(None) => r.skipped += 1,
                Err(err) => r.failed(format!("{}: {err}", e.key)),
            },
            JobKind::Delete => {
                let req = DeleteRequest {
                    key,
                    level: 1,
                    wait_origin: true,
                };
                match super::write::delete(ctx, req).await {
                    Ok(()) => r.deleted += 1,
                    Err(err) => r.failed(format!("{}: {err}", e.key)),
                }
            }
        }
    }
    r
}

/// What the owner shard holds of a listed object.
enum Held {
    /// The same version as listed, a newer local write, or a tombstone: nothing to do.
    Keep,
    /// An older version, safe in the origin: replaced.
    Stale,
    Missing,
}

/// Fetches one listed object into this node's cache unless a fresh copy is there.
/// `Some(bytes)`: fetched; `None`: skipped.
async fn prewarm_one<C: ObjectCtx>(
    ctx: &Rc<C>,
    key: CacheKey,
    e: &BatchEntry,
) -> Result<Option<u64>, ObjectError> {
    if !key.fits_store() {
        return Ok(None);
    }
    let (k, etag) = (key.as_str().to_owned(), e.etag.clone());
    let held = on_owner(ctx, key.as_str(), move |ctx| async move {
        match ctx.store().peek(&k) {
            Lookup::Hit { meta, .. } if meta.etag == etag => Held::Keep,
            Lookup::Hit { meta, .. }
                if !meta.in_origin || ctx.store().pending_seq(&k).is_some() =>
            {
                Held::Keep
            }
            Lookup::Hit { .. } => Held::Stale,
            Lookup::Deleted(_) => Held::Keep,
            Lookup::Miss => Held::Missing,
        }
    })
    .await?;
    match held {
        Held::Keep => return Ok(None),
        Held::Stale => super::write::forget(ctx, key.clone()).await?,
        Held::Missing => {}
    }
    let k = key.as_str().to_owned();
    let req = GetRequest {
        key,
        head: false,
        range: ByteRangeSpec::Whole,
        cond: Conditions::default(),
        fetch: true,
    };
    let resp = super::read::get(ctx, req, Discard).await?;
    // Drained here so that this object's fetch has ended before the next one starts
    // (the bound on concurrency); the body is not kept.
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ObjectError::OriginOther(e.0))?;
        if let Some(d) = frame.data_ref() {
            n += d.len() as u64;
        }
    }
    // The body ends before the copy is committed: counted once it is stored.
    on_owner(ctx, &k.clone(), move |ctx| async move {
        while ctx.objects().fetches.borrow().contains_key(&k) {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await?;
    Ok(Some(n))
}

/// A read whose answer nobody sees: a prewarm.
struct Discard;

impl Render for Discard {
    fn head(&self, _: &ObjectView<'_>, _: &Answer) -> http::response::Builder {
        http::Response::builder()
    }
}

// ---------------------------------------------------------------------------------------
// Jobs across the cluster: a job lives on the node that took it; any node finds it.

/// The job `id` on this node or, failing that, on any peer (its JSON).
pub async fn find<C: ObjectCtx>(ctx: &Rc<C>, id: &str, cancel: bool) -> Option<serde_json::Value> {
    if let Some(j) = ctx.ops().get(id) {
        if cancel {
            j.cancel();
        }
        return Some(j.to_json(&ctx.ops().node_id));
    }
    let cs = ctx.cluster()?;
    let method = if cancel { Method::DELETE } else { Method::GET };
    let path = format!("/_nc/v1/ops/jobs/{id}");
    let ms = cs.cl.cfg.peer_timeout_ms;
    fanout::to_peers(cs, method, &path, bytes::Bytes::new(), ms)
        .await
        .into_iter()
        .find_map(|a| a.result.ok())
}

/// Every job of the cluster, newest first (nodes that do not answer are left out).
pub async fn list_all<C: ObjectCtx>(ctx: &Rc<C>) -> Vec<serde_json::Value> {
    let ops = ctx.ops();
    let mut all: Vec<serde_json::Value> =
        ops.list().iter().map(|j| j.to_json(&ops.node_id)).collect();
    if let Some(cs) = ctx.cluster() {
        let ms = cs.cl.cfg.peer_timeout_ms;
        for a in
            fanout::to_peers(cs, Method::GET, "/_nc/v1/ops/jobs", bytes::Bytes::new(), ms).await
        {
            if let Ok(serde_json::Value::Object(mut o)) = a.result {
                if let Some(serde_json::Value::Array(jobs)) = o.remove("jobs") {
                    all.extend(jobs);
                }
            }
        }
    }
    all.sort_by_key(|j| std::cmp::Reverse(j["started_unix_ms"].as_u64().unwrap_or(0)));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_spaces_batches_by_the_tighter_limit() {
        let t0 = Instant::now();
        let mut p = Pace {
            objects_per_sec: 100,
            bytes_per_sec: 1000,
            next: t0,
        };
        let a = p.reserve(10, 100);
        let b = p.reserve(10, 1000);
        let c = p.reserve(1, 0);
        assert!(a >= t0 && a < t0 + Duration::from_millis(50));
        // 10 objects at 100/s and 100 bytes at 1000/s: 0.1 s either way.
        assert!((b - a).as_secs_f64() > 0.09 && (b - a).as_secs_f64() < 0.11);
        // 1000 bytes at 1000/s: 1 s (the byte limit is tighter than 10 objects' 0.1 s).
        assert!((c - b).as_secs_f64() > 0.99 && (c - b).as_secs_f64() < 1.01);
        let mut free = Pace {
            objects_per_sec: 0,
            bytes_per_sec: 0,
            next: t0,
        };
        let x = free.reserve(1000, 1 << 30);
        assert!(free.reserve(1, 1) <= x + Duration::from_millis(50));
    }

    #[test]
    fn a_job_reports_its_progress_and_its_end() {
        let j = Job::new(JobKind::Prewarm, "b", "p/");
        j.listed.store(10, Relaxed);
        j.add(&BatchResult {
            fetched: 3,
            bytes: 300,
            skipped: 1,
            ..Default::default()
        });
        let v = j.to_json("N");
        assert_eq!(v["state"], "running");
        assert_eq!(v["kind"], "prewarm");
        assert_eq!(v["fetched"], 3);
        assert_eq!(v["eta_secs"], serde_json::Value::Null, "listing not done");
        j.listing_done.store(true, Relaxed);
        assert!(
            j.to_json("N")["eta_secs"].as_f64().is_some(),
            "known once listed"
        );
        j.cancel();
        j.finish(JobState::Done, None);
        let v = j.to_json("N");
        assert_eq!(v["state"], "cancelled", "a cancel stays a cancel");
        assert!(v["finished_unix_ms"].as_u64().is_some());
    }

    #[test]
    fn finished_jobs_beyond_the_limit_are_forgotten_running_ones_never() {
        let ops = Ops::new("N", 1, 2);
        let running = Arc::new(Job::new(JobKind::Prewarm, "b", ""));
        ops.register(running.clone());
        for _ in 0..5 {
            let j = Arc::new(Job::new(JobKind::Delete, "b", ""));
            j.finish(JobState::Done, None);
            ops.register(j);
        }
        let kept = ops.list();
        assert_eq!(kept.len(), 3);
        assert!(kept.iter().any(|j| j.id == running.id));
    }
}

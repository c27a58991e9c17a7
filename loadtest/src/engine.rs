//! The load engine: worker threads, connections, request slots, timing and answer checks.
//!
//! ```text
//!  main thread                worker thread t (tokio current_thread + LocalSet)
//!  ───────────                ──────────────────────────────────────────────────
//!  build Plan ──Arc<Shared>─▶ connect its share of connections (c % threads == t)
//!  wait "ready" ◀─────────────  one slot per h1 connection, `streams` per h2 one
//!  send start instant ───────▶ slots loop: pick op ─▶ send ─▶ check ─▶ record
//!  print progress each second ◀── Progress (one cache line per thread, Relaxed)
//!  join, merge Stats ◀──────── Stats (own histogram), seeded MD5s
//! ```
//!
//! Nothing on the hot path is shared between threads except each thread's own progress
//! line (written by it alone) and read-only plan data.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use md5::{Digest, Md5};
use tokio::net::TcpStream;
use tokio::sync::watch;
use ulid::Ulid;

use crate::content;
use crate::stats::{ErrorKind, Stats};
use crate::target::{check_template, render, Api, PathVars, Target};
use crate::zipf::{Rng, Zipf};

/// One object the run may touch.
#[derive(Debug, Clone)]
pub struct Obj {
    pub id: String,
    pub key: String,
    pub size: u64,
    /// Expected body MD5; `None` while seeding (computed from the body sent).
    pub md5: Option<[u8; 16]>,
    pub body_seed: u64,
    /// GET path (before the target's base path).
    pub get_path: String,
    /// PUT/POST path.
    pub put_path: String,
    /// The right answer is 404 (miss-storm over fresh ids).
    pub expect_missing: bool,
}

/// Builds [`Obj`]s: key naming and paths for one API.
#[derive(Debug, Clone)]
pub struct ObjFactory {
    pub api: Api,
    pub get_template: String,
    pub put_template: String,
    pub bucket: String,
    pub prefix: String,
    /// Seed of the bodies (the manifest's seed).
    pub seed: u64,
}

impl ObjFactory {
    pub fn new(
        api: Api,
        path_template: Option<&str>,
        bucket: &str,
        prefix: &str,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let get_template = path_template
            .unwrap_or(api.default_get_template())
            .to_string();
        let put_template = match (api, path_template) {
            (Api::Native, _) | (_, None) => api.default_put_template().to_string(),
            (_, Some(t)) => t.to_string(),
        };
        check_template(&get_template)?;
        check_template(&put_template)?;
        if api == Api::S3 && bucket.is_empty() {
            anyhow::bail!("--api s3 needs --bucket");
        }
        Ok(ObjFactory {
            api,
            get_template,
            put_template,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            seed,
        })
    }

    pub fn make(&self, id: &str, key: Option<&str>, size: u64, md5: Option<[u8; 16]>) -> Obj {
        let key = key
            .map(str::to_string)
            .unwrap_or_else(|| format!("{}{id}", self.prefix));
        let vars = PathVars {
            key: &key,
            id,
            size,
            bucket: &self.bucket,
        };
        Obj {
            get_path: render(&self.get_template, &vars),
            put_path: render(&self.put_template, &vars),
            body_seed: content::body_seed(self.seed, id),
            id: id.to_string(),
            key,
            size,
            md5,
            expect_missing: false,
        }
    }

    /// Object `index` of `size` bytes of this factory's seed.
    pub fn generated(&self, size: u64, index: u64) -> Obj {
        let id = content::object_id(self.seed, size, index).to_string();
        self.make(&id, None, size, None)
    }
}

#[derive(Debug, Clone)]
pub enum Dist {
    Uniform,
    Zipf(Arc<Zipf>),
}

impl Dist {
    fn pick(&self, rng: &mut Rng, n: usize) -> usize {
        match self {
            Dist::Uniform => rng.below(n),
            Dist::Zipf(z) => z.sample(rng.f64()),
        }
    }
}

/// What the slots do.
#[derive(Debug, Clone)]
pub enum Mode {
    /// PUT every object once (threads take every `threads`-th object).
    Seed,
    /// GET objects chosen by `dist`.
    Read { dist: Dist },
    /// GET with probability `read_ratio`, else PUT the same deterministic content.
    Mixed { read_ratio: f64, dist: Dist },
    /// PUT fresh objects (ids from `seed`), sizes in turn.
    Put { sizes: Vec<u64>, seed: u64 },
    /// Every slot sends exactly one GET, for object `slot % keys`; slots ≥ `requests` idle.
    Storm { keys: usize, requests: usize },
}

#[derive(Debug, Clone, Copy)]
pub enum Limit {
    Duration(Duration),
    /// Total requests after warmup, split over threads.
    Requests(u64),
    /// Until the mode runs out of work (seed, storm).
    Exhaust,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub targets: Vec<Target>,
    pub threads: usize,
    pub connections: usize,
    pub http2: bool,
    pub streams: usize,
    pub limit: Limit,
    pub warmup: Duration,
    /// Open loop: total requests per second over all slots.
    pub rate: Option<f64>,
    pub timeout: Duration,
    pub verify_sample: f64,
    /// Compare the ETag header with the MD5 (nearcache's native API sends hex MD5).
    pub check_etag: bool,
    /// X-Meta-ConsistencyLevel of native writes.
    pub level: Option<u8>,
    pub quiet: bool,
    pub api: Api,
    pub objects: Arc<Vec<Obj>>,
    pub factory: ObjFactory,
    pub mode: Mode,
    /// Seed of the choice generators.
    pub rng_seed: u64,
}

impl Plan {
    pub fn slots_per_conn(&self) -> usize {
        if self.http2 {
            self.streams.max(1)
        } else {
            1
        }
    }
}

pub struct Outcome {
    pub stats: Stats,
    /// The measured window: the duration, or warmup end to the last answer.
    pub measured: Duration,
    /// (object index, body MD5) of every object seeded.
    pub seeded: Vec<(usize, [u8; 16])>,
}

/// Per-thread progress, read once a second by the main thread. One cache line each.
#[repr(align(128))]
#[derive(Default)]
struct Progress {
    done: AtomicU64,
    errors: AtomicU64,
}

struct ThreadOut {
    stats: Stats,
    last_done: Option<Instant>,
    seeded: Vec<(usize, [u8; 16])>,
}

/// Runs a plan to the end and merges the threads' results.
pub fn run(plan: Plan) -> anyhow::Result<Outcome> {
    anyhow::ensure!(plan.threads > 0, "--threads must be at least 1");
    anyhow::ensure!(plan.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(!plan.targets.is_empty(), "no --target given");
    if let Some(r) = plan.rate {
        anyhow::ensure!(r > 0.0, "--rate must be positive");
    }
    let threads = plan.threads.min(plan.connections);
    let plan = Arc::new(Plan { threads, ..plan });
    let progress: Arc<Vec<Progress>> =
        Arc::new((0..threads).map(|_| Progress::default()).collect());
    let (start_tx, start_rx) = watch::channel::<Option<Instant>>(None);
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut handles = Vec::new();
    for t in 0..threads {
        let (plan, progress, start_rx, ready_tx) = (
            plan.clone(),
            progress.clone(),
            start_rx.clone(),
            ready_tx.clone(),
        );
        let h = std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || worker(t, &plan, progress, start_rx, ready_tx))
            .context("spawning a worker thread")?;
        handles.push(h);
    }
    drop(ready_tx);
    // Connect everything first so connection setup is not part of the measurement.
    for _ in 0..threads {
        if ready_rx.recv().is_err() {
            break; // a worker died; join reports it
        }
    }
    let start = Instant::now();
    let _ = start_tx.send(Some(start));
    let warmup_end = start + plan.warmup;
    let mut last_print = (start, 0u64);
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        if !plan.quiet && now - last_print.0 >= Duration::from_secs(1) {
            let done: u64 = progress.iter().map(|p| p.done.load(Relaxed)).sum();
            let errors: u64 = progress.iter().map(|p| p.errors.load(Relaxed)).sum();
            let rps = (done - last_print.1) as f64 / (now - last_print.0).as_secs_f64();
            let phase = if now < warmup_end { " (warmup)" } else { "" };
            eprintln!(
                "[{:>5.1}s] {rps:>10.0} req/s  {done:>10} done  {errors} errors{phase}",
                (now - start).as_secs_f64()
            );
            last_print = (now, done);
        }
    }
    let mut stats = Stats::default();
    let mut seeded = Vec::new();
    let mut last_done: Option<Instant> = None;
    for h in handles {
        let out = h
            .join()
            .map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
        stats.merge(&out.stats);
        seeded.extend(out.seeded);
        last_done = last_done.max(out.last_done);
    }
    let measured = match plan.limit {
        Limit::Duration(d) => d,
        _ => last_done.map_or(Duration::ZERO, |l| l.saturating_duration_since(warmup_end)),
    };
    Ok(Outcome {
        stats,
        measured,
        seeded,
    })
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
    async fn send(&mut self, req: Request<Full<Bytes>>) -> hyper::Result<http::Response<Incoming>> {
        match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

/// One connection to one target. HTTP/1.1: owned by one slot, taken for each request.
/// HTTP/2: shared by `streams` slots, cloned for each request.
struct Conn {
    target: usize,
    sender: RefCell<Option<Sender>>,
    connecting: Cell<bool>,
}

impl Conn {
    async fn acquire(&self, ctx: &ThreadCtx) -> Result<Sender, ErrorKind> {
        loop {
            {
                let mut slot = self.sender.borrow_mut();
                match slot.as_ref() {
                    Some(s) if s.is_closed() => *slot = None,
                    Some(Sender::H2(s)) => return Ok(Sender::H2(s.clone())),
                    Some(Sender::H1(_)) => return Ok(slot.take().expect("checked")),
                    None => {}
                }
            }
            if self.connecting.get() {
                // Another stream of this h2 connection is reconnecting.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            self.connecting.set(true);
            let r = tokio::time::timeout(ctx.plan.timeout, connect(&ctx.plan, self.target)).await;
            self.connecting.set(false);
            match r {
                Ok(Ok(s)) => *self.sender.borrow_mut() = Some(s),
                Ok(Err(_)) => return Err(ErrorKind::Connect),
                Err(_) => return Err(ErrorKind::Connect),
            }
        }
    }

    /// Gives an h1 sender back after a clean exchange; a broken one is dropped (closing
    /// the connection) and the next request reconnects.
    fn release(&self, s: Sender, healthy: bool) {
        match s {
            Sender::H1(_) if healthy => *self.sender.borrow_mut() = Some(s),
            Sender::H1(_) => {}
            Sender::H2(_) => {
                if s.is_closed() {
                    *self.sender.borrow_mut() = None;
                }
            }
        }
    }
}

async fn connect(plan: &Plan, target: usize) -> anyhow::Result<Sender> {
    let t = &plan.targets[target];
    let stream = TcpStream::connect(&t.addrs[..]).await?;
    stream.set_nodelay(true)?;
    let io = TokioIo::new(stream);
    if plan.http2 {
        let (s, conn) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .max_frame_size(64 << 10)
            .handshake(io)
            .await?;
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        Ok(Sender::H2(s))
    } else {
        let (s, conn) = http1::handshake(io).await?;
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        Ok(Sender::H1(s))
    }
}

/// What one slot wants to do next.
struct Op {
    put: bool,
    obj: ObjRef,
}

enum ObjRef {
    Shared(usize),
    Owned(Box<Obj>),
}

/// Thread-local operation source.
struct Source {
    rng: Rng,
    /// Seed: next position in this thread's share (index = t + k * threads).
    next_seed: usize,
    put_counter: u64,
    quota: Option<u64>,
    issued: u64,
}

struct ThreadCtx {
    t: usize,
    plan: Arc<Plan>,
    start: Instant,
    warmup_end: Instant,
    deadline: Instant,
    /// Open loop: interval between one slot's requests, and the total slot count.
    interval: Option<Duration>,
    total_slots: usize,
    source: RefCell<Source>,
    stats: RefCell<Stats>,
    seeded: RefCell<Vec<(usize, [u8; 16])>>,
    last_done: Cell<Option<Instant>>,
    progress: Arc<Vec<Progress>>,
}

impl ThreadCtx {
    fn progress(&self) -> &Progress {
        &self.progress[self.t]
    }

    fn obj<'a>(&'a self, r: &'a ObjRef) -> &'a Obj {
        match r {
            ObjRef::Shared(i) => &self.plan.objects[*i],
            ObjRef::Owned(o) => o,
        }
    }

    fn next_op(&self, slot: usize, counted: bool) -> Option<Op> {
        let plan = &self.plan;
        let mut src = self.source.borrow_mut();
        if let Some(q) = src.quota {
            if src.issued >= q {
                return None;
            }
        }
        let n = plan.objects.len();
        let op = match &plan.mode {
            Mode::Seed => {
                let idx = self.t + src.next_seed * plan.threads;
                if idx >= n {
                    return None;
                }
                src.next_seed += 1;
                Op {
                    put: true,
                    obj: ObjRef::Shared(idx),
                }
            }
            Mode::Read { dist } => Op {
                put: false,
                obj: ObjRef::Shared(dist.pick(&mut src.rng, n)),
            },
            Mode::Mixed { read_ratio, dist } => {
                let put = src.rng.f64() >= *read_ratio;
                Op {
                    put,
                    obj: ObjRef::Shared(dist.pick(&mut src.rng, n)),
                }
            }
            Mode::Put { sizes, seed } => {
                let c = src.put_counter;
                src.put_counter += 1;
                let size = sizes[(c % sizes.len() as u64) as usize];
                let index = ((self.t as u64) << 40) | c;
                let id = content::object_id(*seed, size, index).to_string();
                Op {
                    put: true,
                    obj: ObjRef::Owned(Box::new(plan.factory.make(&id, None, size, None))),
                }
            }
            Mode::Storm { keys, requests } => {
                if slot >= *requests {
                    return None;
                }
                Op {
                    put: false,
                    obj: ObjRef::Shared(slot % keys),
                }
            }
        };
        if counted {
            src.issued += 1;
        }
        Some(op)
    }
}

fn worker(
    t: usize,
    plan: &Arc<Plan>,
    progress: Arc<Vec<Progress>>,
    mut start_rx: watch::Receiver<Option<Instant>>,
    ready_tx: mpsc::Sender<()>,
) -> anyhow::Result<ThreadOut> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a worker runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let spc = plan.slots_per_conn();
        let total_slots = plan.connections * spc;
        // This thread's connections: c % threads == t; connection c talks to target
        // c % targets (round-robin by connection).
        let conns: Vec<(usize, Rc<Conn>)> = (t..plan.connections)
            .step_by(plan.threads)
            .map(|c| {
                let conn = Conn {
                    target: c % plan.targets.len(),
                    sender: RefCell::new(None),
                    connecting: Cell::new(false),
                };
                (c, Rc::new(conn))
            })
            .collect();
        let mut setup_errors = Stats::default();
        for (_, conn) in &conns {
            let r = tokio::time::timeout(plan.timeout, connect(plan, conn.target)).await;
            match r {
                Ok(Ok(s)) => *conn.sender.borrow_mut() = Some(s),
                _ => setup_errors.record_err(ErrorKind::Connect),
            }
        }
        let _ = ready_tx.send(());
        let start = match start_rx.wait_for(|s| s.is_some()).await {
            Ok(s) => s.expect("checked"),
            Err(_) => anyhow::bail!("the main thread went away"),
        };
        let warmup_end = start + plan.warmup;
        let deadline = match plan.limit {
            Limit::Duration(d) => warmup_end + d,
            _ => start + Duration::from_secs(365 * 24 * 3600),
        };
        let quota = match plan.limit {
            Limit::Requests(n) => {
                let th = plan.threads as u64;
                Some(n / th + u64::from((t as u64) < n % th))
            }
            _ => None,
        };
        let interval = plan
            .rate
            .map(|r| Duration::from_secs_f64(total_slots as f64 / r));
        let ctx = Rc::new(ThreadCtx {
            t,
            plan: plan.clone(),
            start,
            warmup_end,
            deadline,
            interval,
            total_slots,
            source: RefCell::new(Source {
                rng: Rng::new(plan.rng_seed ^ ((t as u64 + 1) << 32)),
                next_seed: 0,
                put_counter: 0,
                quota,
                issued: 0,
            }),
            stats: RefCell::new(setup_errors),
            seeded: RefCell::new(Vec::new()),
            last_done: Cell::new(None),
            progress,
        });
        let mut handles = Vec::new();
        for (c, conn) in conns {
            for k in 0..spc {
                let slot = c * spc + k;
                handles.push(tokio::task::spawn_local(slot_loop(
                    slot,
                    conn.clone(),
                    ctx.clone(),
                )));
            }
        }
        let all = async {
            for h in handles {
                let _ = h.await;
            }
        };
        tokio::select! {
            _ = all => {}
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
        let out = ThreadOut {
            stats: ctx.stats.borrow().clone(),
            last_done: ctx.last_done.get(),
            seeded: std::mem::take(&mut *ctx.seeded.borrow_mut()),
        };
        Ok(out)
    })
}

async fn slot_loop(slot: usize, conn: Rc<Conn>, ctx: Rc<ThreadCtx>) {
    let plan = ctx.plan.clone();
    let mut i: u64 = 0;
    // Open loop: this slot's phase within the interval, so slots don't fire together.
    let phase = ctx
        .interval
        .map(|iv| iv.mul_f64(slot as f64 / ctx.total_slots as f64));
    loop {
        // The reference instant latency is measured from. Open loop: the intended send
        // time when this slot is behind schedule (coordinated-omission correction, as
        // wrk2); when it is on time it sleeps and measures from the actual send, so the
        // 1 ms timer granularity is not charged to the server.
        let reference = match (ctx.interval, phase) {
            (Some(iv), Some(ph)) => {
                let intended = ctx.start + ph + iv.mul_f64(i as f64);
                i += 1;
                if intended >= ctx.deadline {
                    break;
                }
                if Instant::now() < intended {
                    tokio::time::sleep_until(intended.into()).await;
                    Instant::now()
                } else {
                    intended
                }
            }
            _ => Instant::now(),
        };
        if reference >= ctx.deadline {
            break;
        }
        let measuring = reference >= ctx.warmup_end;
        let Some(op) = ctx.next_op(slot, measuring) else {
            break;
        };
        let sender = match conn.acquire(&ctx).await {
            Ok(s) => s,
            Err(kind) => {
                if measuring {
                    ctx.stats.borrow_mut().record_err(kind);
                }
                ctx.progress().errors.fetch_add(1, Relaxed);
                // Don't spin on a dead target. One-shot ops (seed, storm) are lost: the
                // error is their record.
                if matches!(plan.mode, Mode::Storm { .. }) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let target = &plan.targets[conn.target];
        let (req, expect, seeded_md5) = build_request(&ctx, &op, target);
        let mut sender = sender;
        let result = tokio::time::timeout(plan.timeout, exchange(&mut sender, req, &expect)).await;
        let done = Instant::now();
        let result = match result {
            Ok(r) => r,
            Err(_) => Err((ErrorKind::Timeout, false)),
        };
        let healthy = match &result {
            Ok(_) => true,
            Err((_, conn_ok)) => *conn_ok,
        };
        conn.release(sender, healthy);
        if let (Some(md5), ObjRef::Shared(idx)) = (seeded_md5, &op.obj) {
            if matches!(plan.mode, Mode::Seed) {
                ctx.seeded.borrow_mut().push((*idx, md5));
            }
        }
        let in_window = measuring && done <= ctx.deadline;
        let one_shot = matches!(plan.mode, Mode::Storm { .. });
        match result {
            Ok((bytes, verified)) => {
                ctx.progress().done.fetch_add(1, Relaxed);
                if in_window {
                    let mut st = ctx.stats.borrow_mut();
                    st.record_ok(done - reference, bytes);
                    st.verified += u64::from(verified);
                    ctx.last_done.set(Some(done));
                }
            }
            Err((kind, _)) => {
                ctx.progress().errors.fetch_add(1, Relaxed);
                if in_window {
                    ctx.stats.borrow_mut().record_err(kind);
                    ctx.last_done.set(Some(done));
                }
            }
        }
        if one_shot {
            break;
        }
    }
}

/// What a correct answer looks like.
struct Expect {
    put: bool,
    size: u64,
    md5: Option<[u8; 16]>,
    verify: bool,
    check_etag: bool,
    missing: bool,
}

const X_META_ID: &str = "x-meta-id";
const X_META_LEVEL: &str = "x-meta-consistencylevel";

fn build_request(
    ctx: &ThreadCtx,
    op: &Op,
    target: &Target,
) -> (Request<Full<Bytes>>, Expect, Option<[u8; 16]>) {
    let plan = &ctx.plan;
    let obj = ctx.obj(&op.obj);
    let path = if op.put { &obj.put_path } else { &obj.get_path };
    let uri: Uri = if plan.http2 {
        format!("http://{}{}{}", target.authority, target.base_path, path)
    } else {
        format!("{}{}", target.base_path, path)
    }
    .parse()
    .expect("paths are checked when objects are built");
    let mut b = Request::builder()
        .uri(uri)
        .header(header::HOST, target.host_header.clone());
    let mut seeded_md5 = None;
    let body = if op.put {
        let body = content::body(obj.body_seed, obj.size);
        if obj.md5.is_none() {
            seeded_md5 = Some(content::md5(&body));
        }
        b = b
            .header(header::CONTENT_LENGTH, obj.size)
            .header(header::CONTENT_TYPE, "application/octet-stream");
        if plan.api == Api::Native {
            b = b.method(Method::POST).header(
                X_META_ID,
                HeaderValue::from_str(&obj.id).expect("ULID is ASCII"),
            );
            if let Some(l) = plan.level {
                b = b.header(X_META_LEVEL, l.to_string());
            }
        } else {
            b = b.method(Method::PUT);
        }
        body
    } else {
        b = b.method(Method::GET);
        Bytes::new()
    };
    let verify =
        !op.put && (obj.expect_missing || ctx.source.borrow_mut().rng.f64() < plan.verify_sample);
    let expect = Expect {
        put: op.put,
        size: obj.size,
        md5: obj.md5,
        verify,
        check_etag: plan.check_etag,
        missing: obj.expect_missing,
    };
    let req = b.body(Full::new(body)).expect("valid request");
    (req, expect, seeded_md5)
}

/// Reads a body to the end, feeding `md5` if given. Returns its length.
async fn read_body(mut body: Incoming, mut md5: Option<&mut Md5>) -> Result<u64, hyper::Error> {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.len() as u64;
            if let Some(h) = md5.as_deref_mut() {
                h.update(&data);
            }
        }
    }
    Ok(n)
}

/// Sends one request and checks the answer. `Ok((body bytes, md5 checked))`, or the error
/// kind and whether the connection is still usable.
async fn exchange(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
    exp: &Expect,
) -> Result<(u64, bool), (ErrorKind, bool)> {
    let resp = sender.send(req).await.map_err(|_| (ErrorKind::Io, false))?;
    let status = resp.status().as_u16();
    if exp.put {
        let ok = (200..300).contains(&status);
        let drained = read_body(resp.into_body(), None).await.is_ok();
        return if ok {
            Ok((exp.size, false))
        } else {
            Err((ErrorKind::Status(status), drained))
        };
    }
    if exp.missing {
        let drained = read_body(resp.into_body(), None).await;
        return match (status, drained) {
            (404, Ok(n)) => Ok((n, true)),
            (404, Err(_)) => Err((ErrorKind::ShortBody, false)),
            (s, d) => Err((ErrorKind::Status(s), d.is_ok())),
        };
    }
    if status != 200 && status != 206 {
        let drained = read_body(resp.into_body(), None).await.is_ok();
        return Err((ErrorKind::Status(status), drained));
    }
    let content_length = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let etag_ok = match (exp.check_etag, exp.md5, resp.headers().get(header::ETAG)) {
        (true, Some(md5), Some(etag)) => {
            let e = etag.as_bytes();
            let inner = e.strip_prefix(b"\"").and_then(|e| e.strip_suffix(b"\""));
            inner.is_some_and(|h| h.eq_ignore_ascii_case(hex::encode(md5).as_bytes()))
        }
        _ => true,
    };
    let mut hasher = (exp.verify && exp.md5.is_some()).then(Md5::new);
    let n = read_body(resp.into_body(), hasher.as_mut())
        .await
        .map_err(|_| (ErrorKind::ShortBody, false))?;
    if n < exp.size {
        return Err((ErrorKind::ShortBody, true));
    }
    if n > exp.size || content_length.is_some_and(|c| c != exp.size) {
        return Err((ErrorKind::SizeMismatch, true));
    }
    if let (Some(h), Some(want)) = (hasher, exp.md5) {
        let got: [u8; 16] = h.finalize().into();
        if got != want {
            return Err((ErrorKind::ChecksumMismatch, true));
        }
        if !etag_ok {
            return Err((ErrorKind::EtagMismatch, true));
        }
        return Ok((n, true));
    }
    if !etag_ok {
        return Err((ErrorKind::EtagMismatch, true));
    }
    Ok((n, false))
}

/// A fresh id for cold-key runs: never seeded, so the first GET misses.
pub fn fresh_id(nonce: u64, i: u64) -> Ulid {
    content::object_id(nonce ^ 0x636F_6C64, 0, i) // "cold"
}

//! Process assembly: data-dir guard, the origin bridge, one pinned monoio thread per
//! shard, the HTTP listeners, and graceful shutdown.

use std::convert::Infallible;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use fs2::FileExt;
use monoio::io::IntoPollIo;
use monoio::net::{ListenerOpts, TcpListener};
use monoio_compat::hyper::{MonoioExecutor, MonoioIo, MonoioTimer};
use nearcache_backends::Backends;
use nearcache_s3::Bridge;
use nearcache_shards::{DeviceKind, RecoveryReport, Shard, ShardConfig};
use tokio::sync::{mpsc, watch};

use crate::api::s3::S3State;
use crate::cluster::{Cluster, ClusterShard, H_API, H_FORWARDED};
use crate::config::Config;
use crate::ctx::{Node, ShardCtx, ShardMetricsSet};
use crate::mesh::{Job, Mesh};
use crate::metrics::HttpMetrics;
use crate::object::ObjectShard;

/// A running node. Dropping it without [`ServerHandle::shutdown`] leaves threads running.
pub struct ServerHandle {
    pub addr: SocketAddr,
    /// The S3-compatible API's address.
    pub s3_addr: SocketAddr,
    pub node: Arc<Node>,
    /// The S3-compatible API's keys, settings and known buckets.
    pub s3: Arc<S3State>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
    shutdown_tx: watch::Sender<bool>,
    /// Re-reads the TLS certificates (stops when dropped).
    _tls_reload: Option<crate::tls::Reloader>,
    _lock: File,
}

const NODE_FILE: &str = "nearcache.json";
const NODE_FILE_FORMAT: u64 = 1;

/// Takes the data dir's lock file, or explains who holds it.
#[expect(
    clippy::disallowed_methods,
    reason = "start-up, on the main thread, before any shard serves"
)]
fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    let path = dir.join("LOCK");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening lock file {}", path.display()))?;
    if f.try_lock_exclusive().is_err() {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        bail!(
            "data dir {} is in use by another nearcache process (pid {}); stop it or choose another --data-dir",
            dir.display(),
            pid.trim()
        );
    }
    f.set_len(0)?;
    f.rewind()?;
    write!(f, "{}", std::process::id())?;
    Ok(f)
}

/// Keys are placed by hash over the shard count, so a data dir only works with the
/// count it was created with.
#[expect(
    clippy::disallowed_methods,
    reason = "start-up, on the main thread, before any shard serves"
)]
fn check_node_file(dir: &Path, shards: usize) -> anyhow::Result<String> {
    let path = dir.join(NODE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            let format = v["format"].as_u64().unwrap_or(0);
            if format != NODE_FILE_FORMAT {
                bail!(
                    "{}: format {format}, expected {NODE_FILE_FORMAT}",
                    path.display()
                );
            }
            let had = v["shards"].as_u64().unwrap_or(0) as usize;
            if had != shards {
                bail!(
                    "data dir {} was created with {had} shards but this start asks for {shards}; \
                     start with --shards {had} or use an empty data dir",
                    dir.display()
                );
            }
            Ok(v["node_id"].as_str().unwrap_or_default().to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let node_id = ulid::Ulid::generate().to_string();
            let v = serde_json::json!({ "format": NODE_FILE_FORMAT, "shards": shards, "node_id": node_id });
            let tmp = dir.join(format!("{NODE_FILE}.tmp"));
            let mut f = File::create(&tmp)?;
            f.write_all(v.to_string().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(node_id)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Port 0 means "any": pick one here so that every shard binds the same port. A fixed
/// port is probed with a plain bind first: the shards bind with SO_REUSEPORT, which would
/// otherwise silently share the port with another nearcache already listening there.
///
/// Right after kill -9 (or an abort) of a process that used io_uring, the kernel releases
/// its listening sockets asynchronously: a port still in use is retried for up to
/// `wait` before giving up.
fn resolve_listen(addr: SocketAddr, wait: Duration) -> anyhow::Result<SocketAddr> {
    let deadline = Instant::now() + wait;
    let mut logged = false;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(probe) => return Ok(probe.local_addr()?),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                if !logged {
                    tracing::warn!(%addr, wait_secs = wait.as_secs(), "address in use; waiting for it to be released (a previous process may still be exiting)");
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                bail!("{addr} is already in use (another nearcache or another server?): {e}")
            }
            Err(e) => bail!("binding {addr}: {e}"),
        }
    }
}

/// What a shard thread reports once its store is open.
struct Ready {
    id: usize,
    metrics: ShardMetricsSet,
    report: RecoveryReport,
}

/// Everything a shard thread starts from.
struct ShardStart {
    id: usize,
    cfg: Arc<Config>,
    addrs: ListenAddrs,
    inbox: mpsc::UnboundedReceiver<Job<ShardCtx>>,
    inboxes: Arc<[mpsc::UnboundedSender<Job<ShardCtx>>]>,
    backends: Arc<Backends>,
    checks: Arc<crate::object::check::CheckJobs>,
    s3: Arc<S3State>,
    ready_tx: std_mpsc::Sender<Result<Ready, String>>,
    node_rx: std_mpsc::Receiver<Arc<Node>>,
    listening_tx: std_mpsc::Sender<Result<(), String>>,
    tls: Tls,
}

/// The TLS server config of each listener (None: plain HTTP).
#[derive(Clone, Default)]
struct Tls {
    public: Option<Arc<rustls::ServerConfig>>,
    s3: Option<Arc<rustls::ServerConfig>>,
    cluster: Option<Arc<rustls::ServerConfig>>,
}

/// Loads the certificates, builds each listener's TLS config and starts the reload
/// thread.
fn setup_tls(
    cfg: &Config,
) -> anyhow::Result<(
    Tls,
    Option<crate::tls::ClusterTls>,
    Option<crate::tls::Reloader>,
)> {
    use crate::tls::{server_config, CertStore, ClusterTls, Reloader};
    let t = &cfg.tls;
    let mut stores = Vec::new();
    let mut tls = Tls::default();
    if let Some((cert, key)) = t.pair() {
        let store = CertStore::open(cert, key).context("loading the TLS certificate")?;
        let sc = server_config(store.clone())?;
        tls.public = t.public.then(|| sc.clone());
        tls.s3 = t.s3.then_some(sc);
        stores.push(store);
    }
    let mut cluster = None;
    if let (Some((cert, key)), Some(ca)) = (t.cluster_pair(), &t.cluster_ca) {
        let store = match stores
            .iter()
            .find(|s| s.cert_path == *cert && s.key_path == *key)
        {
            Some(s) => s.clone(),
            None => {
                let s =
                    CertStore::open(cert, key).context("loading the cluster TLS certificate")?;
                stores.push(s.clone());
                s
            }
        };
        let c = ClusterTls::new(store, ca)?;
        tls.cluster = Some(c.server.clone());
        cluster = Some(c);
    }
    let reload = if stores.is_empty() {
        None
    } else {
        Some(Reloader::start(
            stores,
            Duration::from_secs(t.reload_interval_secs.max(1)),
        )?)
    };
    Ok((tls, cluster, reload))
}

#[derive(Clone, Copy)]
struct ListenAddrs {
    public: SocketAddr,
    s3: SocketAddr,
    cluster: Option<SocketAddr>,
}

#[expect(
    clippy::disallowed_methods,
    reason = "start-up, on the main thread, before any shard serves"
)]
pub fn start(cfg: Config) -> anyhow::Result<ServerHandle> {
    let lock = lock_data_dir(&cfg.server.data_dir)?;
    let n = cfg.shard_count();
    let node_id = check_node_file(&cfg.server.data_dir, n)?;
    let wait = Duration::from_secs(cfg.server.bind_wait_secs);
    let addr = resolve_listen(cfg.server.listen, wait)?;
    let s3_addr = resolve_listen(cfg.s3api.listen, wait)?;
    let s3 = Arc::new(S3State::from_config(&cfg.s3api));
    let (tls, cluster_tls, tls_reload) = setup_tls(&cfg)?;
    let jwt = match &cfg.auth.jwt_key {
        Some(path) => {
            let settings = crate::jwt::JwtSettings {
                issuer: cfg.auth.issuer.clone(),
                audience: cfg.auth.audience.clone(),
                leeway_secs: cfg.auth.leeway_secs,
            };
            let v = crate::jwt::Verifier::load(path, &settings)
                .map_err(|e| anyhow!("loading the JWT key: {e}"))?;
            tracing::info!(key = %path.display(), issuer = ?settings.issuer, audience = ?settings.audience, "bearer tokens required");
            Some(Arc::new(v))
        }
        None => None,
    };
    let cluster_addr = match cfg.cluster.listen {
        Some(a) => Some(resolve_listen(a, wait)?),
        None => None,
    };
    for i in 0..n {
        // Made here, before any shard serves: the shards never block on the file system.
        let dir = crate::object::write::staging_dir(&cfg, i);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let uring_active = monoio::utils::detect_uring()
        && cfg.server.epoll_only() == Some(false)
        && cfg.store.device_kind() != Some(DeviceKind::Syscall);
    if !monoio::utils::detect_uring() {
        tracing::error!(
            "io_uring is not available (kernel or seccomp): running on the epoll fallback, \
             file I/O blocks the shard threads"
        );
    }

    if let Some(ca) = &cfg.origin.ca_bundle {
        // Checked here for a clear error; the origin client loads it again.
        crate::tls::load_roots(ca).context("origin.ca_bundle")?;
    }
    for b in &cfg.origin.backend {
        if let Some(ca) = &b.ca_bundle {
            crate::tls::load_roots(ca)
                .with_context(|| format!("origin.backend {:?}: ca_bundle", b.name))?;
        }
    }
    let origin_cfg = cfg.origin_config();
    let local_origin = cfg.origin.backend.is_empty()
        && matches!(origin_cfg.kind, nearcache_s3::OriginKind::Local { .. });
    let backends = match cfg.backends_config() {
        Some(set) => {
            let b = Backends::start(set).map_err(|e| anyhow!("{e}"))?;
            for spec in &cfg.origin.backend {
                if spec.maintenance {
                    b.set_maintenance(&spec.name, true);
                }
            }
            for s in b.status() {
                tracing::info!(backend = %s.name, origin = %s.description, "origin backend");
            }
            b
        }
        None => {
            let native_bucket = cfg.origin.bucket.clone();
            let bridge = Bridge::start_with(origin_cfg, cfg.origin_deadlines())
                .map_err(|e| anyhow!("starting the origin bridge: {e}"))?;
            if local_origin {
                tracing::warn!(origin = %bridge.describe(), "no S3 bucket configured: using the embedded local origin");
            } else {
                tracing::info!(origin = %bridge.describe(), "origin");
            }
            Backends::single("origin", bridge, native_bucket)
        }
    };
    let backends = Arc::new(backends);
    let checks = Arc::new(crate::object::check::CheckJobs::default());
    let bridge = backends.primary().bridge.clone();
    if local_origin || cfg.origin.create_bucket {
        for b in backends.list() {
            // Start-up is worth a few more tries than one request. With several backends
            // the node starts with one of them down: what it misses is queued for it.
            let mut attempt = 1;
            loop {
                match futures::executor::block_on(b.bridge.ensure_bucket()) {
                    Ok(()) => break,
                    Err(e) if backends.is_multi() => {
                        tracing::warn!(backend = %b.name, error = %e, "creating the origin bucket failed; starting without it");
                        break;
                    }
                    Err(e) if e.is_retryable() && attempt < 5 => {
                        tracing::warn!(attempt, backend = %b.name, error = %e, "creating the origin bucket failed; retrying");
                        std::thread::sleep(Duration::from_millis(200 << attempt));
                        attempt += 1;
                    }
                    Err(e) => bail!("creating the origin bucket of {}: {e}", b.name),
                }
            }
        }
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = std_mpsc::channel();
    let (listening_tx, listening_rx) = std_mpsc::channel::<Result<(), String>>();
    let (inboxes, inbox_rxs) = crate::mesh::channels::<ShardCtx>(n);
    let cfg = Arc::new(cfg);
    let addrs = ListenAddrs {
        public: addr,
        s3: s3_addr,
        cluster: cluster_addr,
    };
    let mut node_txs = Vec::new();
    let mut threads = Vec::new();
    let started = Instant::now();
    for (i, inbox) in inbox_rxs.into_iter().enumerate() {
        let (node_tx, node_rx) = std_mpsc::channel::<Arc<Node>>();
        node_txs.push(node_tx);
        let start = ShardStart {
            id: i,
            cfg: cfg.clone(),
            addrs,
            inbox,
            inboxes: inboxes.clone(),
            backends: backends.clone(),
            checks: checks.clone(),
            s3: s3.clone(),
            ready_tx: ready_tx.clone(),
            node_rx,
            listening_tx: listening_tx.clone(),
            tls: tls.clone(),
        };
        let t = std::thread::Builder::new()
            .name(format!("shard-{i}"))
            .spawn(move || shard_thread(start))
            .context("spawning a shard thread")?;
        threads.push(t);
    }
    drop((ready_tx, listening_tx, inboxes));

    let mut shard_metrics: Vec<Option<ShardMetricsSet>> = (0..n).map(|_| None).collect();
    let (mut objects, mut pending) = (0, 0);
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(r)) => {
                objects += r.report.objects;
                pending += r.report.pending;
                shard_metrics[r.id] = Some(r.metrics);
            }
            Ok(Err(e)) => bail!("opening a shard: {e}"),
            Err(_) => bail!("a shard thread died while opening its store"),
        }
    }
    tracing::info!(
        shards = n,
        objects,
        pending_uploads = pending,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovery complete"
    );
    let shards = shard_metrics
        .into_iter()
        .map(|m| m.expect("every shard reported"))
        .collect();
    let mut ccfg = cfg.cluster.clone();
    ccfg.listen = cluster_addr;
    if ccfg.advertise.is_none_or(|a| a.port() == 0) {
        ccfg.advertise = cluster_addr;
    }
    let cluster = Cluster::start(&ccfg, &node_id, cfg.server.data_dir.clone(), cluster_tls)?;
    if let Some(cl) = &cluster {
        // Peers learn where clients reach this node from its requests (for `top`, `/ui`).
        let ip = if addr.ip().is_unspecified() {
            cl.addr.ip()
        } else {
            addr.ip()
        };
        let url = format!("http://{}", SocketAddr::new(ip, addr.port()));
        if let Ok(v) = http::HeaderValue::from_str(&url) {
            let _ = cl.public_url.set(v);
        }
    }
    let node_header =
        http::HeaderValue::from_str(&node_id).context("node id is not a valid header")?;
    let ops = Arc::new(crate::object::jobs::Ops::new(&node_id, n, cfg.jobs.kept));
    let node = Arc::new(Node {
        jwt,
        ops,
        cluster,
        node_header,
        cfg,
        shards,
        bridge,
        backends,
        started,
        uring_active,
        shutting_down: Default::default(),
        shutdown_rx,
        node_id,
        drained: Default::default(),
        history: Default::default(),
    });
    for tx in node_txs {
        let _ = tx.send(node.clone());
    }
    for _ in 0..n {
        match listening_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = shutdown_tx.send(true);
                bail!("{e}");
            }
            Err(_) => bail!("a shard thread died before listening"),
        }
    }
    tracing::info!(%addr, shards = n, io = if uring_active { "io_uring" } else { "epoll" }, tls = tls.public.is_some(), "nearcache listening");
    warn_plaintext(&node.cfg, &tls);
    if let Some(cl) = &node.cluster {
        tracing::info!(node_id = %cl.self_id, addr = %cl.addr, cluster = %cl.cfg.name, seeds = ?cl.cfg.join, "cluster member");
    }
    if s3.has_keys() {
        tracing::info!(addr = %s3_addr, domain = ?node.cfg.s3api.domain, "S3-compatible API listening");
    } else {
        tracing::warn!(
            addr = %s3_addr,
            "S3-compatible API listening without access keys ([[s3api.keys]]): \
             every request is refused with AccessDenied"
        );
    }
    Ok(ServerHandle {
        addr,
        s3_addr,
        node,
        s3,
        threads,
        shutdown_tx,
        _tls_reload: tls_reload,
        _lock: lock,
    })
}

/// Secrets that cross a plain-HTTP listener reachable from other hosts are worth a
/// warning: tokens and signatures can be read (and requests replayed inside a window).
fn warn_plaintext(cfg: &Config, tls: &Tls) {
    if tls.public.is_none() && !cfg.server.listen.ip().is_loopback() {
        tracing::warn!(addr = %cfg.server.listen, "the public listener speaks plain HTTP on a non-loopback address: set tls.cert and tls.key (--tls-cert, --tls-key)");
    }
    if let (Some(_), None) = (cfg.cluster.listen, &tls.cluster) {
        if cfg.cluster.secret.is_none() {
            tracing::warn!("cluster without a secret: anyone who reaches the private address can join, read, write and delete (set cluster.secret)");
        }
    }
}

impl ServerHandle {
    /// Stops accepting, lets in-flight requests finish (bounded by the grace period),
    /// flushes every journal and stops the origin bridge.
    pub fn shutdown(self) -> anyhow::Result<()> {
        self.node.shutting_down.store(true, Relaxed);
        // Leave first: peers stop routing here while in-flight requests finish. A drain
        // hands over what only this node holds before it leaves.
        if let Some(cl) = &self.node.cluster {
            if cl.cfg.drain_on_shutdown {
                let timeout = Duration::from_secs(cl.cfg.drain_timeout_secs);
                crate::cluster::drain::run_blocking(cl, self.node.shards.len(), timeout);
            }
            cl.leave();
        }
        let _ = self.shutdown_tx.send(true);
        let mut first_err = None;
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(anyhow!("a shard thread panicked"));
                }
            }
        }
        self.node.backends.shutdown();
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn shard_thread(start: ShardStart) -> anyhow::Result<()> {
    let (i, cfg) = (start.id, start.cfg.clone());
    if cfg.server.pin_cores {
        if let Some(cores) = core_affinity::get_core_ids().filter(|c| !c.is_empty()) {
            core_affinity::set_for_current(cores[i % cores.len()]);
        }
    }
    if cfg.server.epoll_only() == Some(true) {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .context("building the monoio runtime (epoll)")?;
        return rt.block_on(run_shard(start));
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .with_entries(1024)
        .build()
        .context("building the monoio runtime")?;
    rt.block_on(run_shard(start))
}

/// Opens the shard's store, reports ready, waits for the node, then serves until
/// shutdown and drains.
async fn run_shard(start: ShardStart) -> anyhow::Result<()> {
    let ShardStart {
        id: i,
        cfg,
        addrs,
        inbox,
        inboxes,
        backends,
        checks,
        s3,
        ready_tx,
        node_rx,
        listening_tx,
        tls,
    } = start;
    let n = inboxes.len();
    let (shard, report) = match Shard::open(shard_config(&cfg, i, n)).await {
        Ok(x) => x,
        Err(e) => {
            let _ = ready_tx.send(Err(format!("shard {i}: {e}")));
            return Err(anyhow!("opening shard {i}: {e}"));
        }
    };
    tracing::info!(
        shard = i,
        objects = report.objects,
        tombstones = report.tombstones,
        pending_uploads = report.pending,
        orphans_removed = report.orphans_removed,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "shard recovered"
    );
    let mesh = Mesh::new(i, inboxes);
    let objects = ObjectShard::new(cfg.clone(), backends, checks);
    let http = Arc::new(HttpMetrics::default());
    let metrics = ShardMetricsSet {
        store: shard.metrics(),
        http: http.clone(),
        objects: objects.metrics.clone(),
        mesh: mesh.metrics.clone(),
    };
    let _ = ready_tx.send(Ok(Ready {
        id: i,
        metrics,
        report,
    }));
    // Start-up only: nothing else runs on this thread yet.
    let Ok(node) = node_rx.recv() else {
        return Ok(());
    };
    let ctx = Rc::new(ShardCtx {
        id: i,
        cluster: node.cluster.clone().map(ClusterShard::new),
        node: node.clone(),
        shard: Rc::new(shard),
        mesh,
        objects,
        http,
        active_requests: Default::default(),
    });
    let opts = ListenerOpts::new().reuse_port(true).backlog(4096);
    let bind = |a: SocketAddr| {
        TcpListener::bind_with_config(a, &opts).map_err(|e| format!("shard {i}: binding {a}: {e}"))
    };
    let listeners = (|| {
        let public = bind(addrs.public)?;
        let s3l = bind(addrs.s3)?;
        let cluster = addrs.cluster.map(bind).transpose()?;
        Ok::<_, String>((public, s3l, cluster))
    })();
    let (listener, s3_listener, cluster_listener) = match listeners {
        Ok(l) => l,
        Err(e) => {
            let _ = listening_tx.send(Err(e.clone()));
            return Err(anyhow!("{e}"));
        }
    };
    let mut cluster_done = None;
    if let Some(l) = cluster_listener {
        let (c_ctx, c_s3, (tx, rx)) = (
            ctx.clone(),
            s3.clone(),
            tokio::sync::oneshot::channel::<()>(),
        );
        monoio::spawn(async move {
            accept_loop(&c_ctx, l, Api::Internal(c_s3), tls.cluster).await;
            let _ = tx.send(());
        });
        cluster_done = Some(rx);
    }
    let _ = listening_tx.send(Ok(()));

    monoio::spawn(crate::mesh::serve_inbox(ctx.clone(), inbox));
    let shutdown = || node.shutdown_rx.clone();
    monoio::spawn(crate::object::uploader::run(ctx.clone(), shutdown()));
    monoio::spawn(crate::object::syncer::run(ctx.clone(), shutdown()));
    monoio::spawn(crate::object::sweep_tombstones(ctx.clone(), shutdown()));
    if i == 0 {
        monoio::spawn(crate::api::ui::run_sampler(node.clone(), shutdown()));
    }
    if let Some(cs) = ctx.cluster.clone() {
        monoio::spawn(crate::cluster::sync::run(
            ctx.clone(),
            cs.clone(),
            shutdown(),
        ));
        monoio::spawn(crate::cluster::drain::run_shard(
            ctx.clone(),
            cs,
            shutdown(),
        ));
    }

    let (s3_ctx, (s3_done_tx, s3_done)) = (ctx.clone(), tokio::sync::oneshot::channel::<()>());
    monoio::spawn(async move {
        accept_loop(&s3_ctx, s3_listener, Api::S3(s3), tls.s3).await;
        let _ = s3_done_tx.send(());
    });
    accept_loop(&ctx, listener, Api::Public, tls.public).await;
    let _ = s3_done.await;
    if let Some(rx) = cluster_done {
        let _ = rx.await;
    }
    drain(&ctx, n).await;
    ctx.shard
        .close()
        .await
        .map_err(|e| anyhow!("closing shard {i}: {e}"))?;
    tracing::info!(shard = i, "shard stopped");
    Ok(())
}

fn shard_config(cfg: &Config, i: usize, n: usize) -> ShardConfig {
    let s = &cfg.store;
    ShardConfig {
        shard_id: i as u16,
        dir: cfg.server.data_dir.join(format!("shard-{i}")),
        memory_capacity: s.memory_capacity.0 / n as u64,
        memory_object_max: s.memory_object_max.0,
        disk_capacity: s.disk_capacity.0 / n as u64,
        tombstone_ttl: Duration::from_secs(s.tombstone_ttl_secs),
        device: match s.device_kind().unwrap_or_default() {
            // io_uring file I/O needs the io_uring driver.
            DeviceKind::Auto if cfg.server.epoll_only() == Some(true) => DeviceKind::Syscall,
            kind => kind,
        },
        lmdb_map_size: s.lmdb_map_size.0,
        journal_retain: s.journal_retain,
        inline_object_max: s.inline_object_max.0,
        meta_cache_objects: (s.meta_cache_objects / n).max(1),
    }
}

/// Graceful: no new connections; in-flight requests get the grace period, and this
/// shard keeps serving others' forwarded work until every shard is drained.
async fn drain(ctx: &ShardCtx, n: usize) {
    let cfg = &ctx.node.cfg;
    let deadline = Instant::now() + Duration::from_secs(cfg.server.shutdown_grace_secs);
    while ctx.active_requests.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    ctx.node.drained.fetch_add(1, Relaxed);
    while ctx.node.drained.load(Relaxed) < n && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    if ctx.active_requests.get() > 0 {
        tracing::warn!(
            shard = ctx.id,
            requests = ctx.active_requests.get(),
            "grace period over; dropping requests"
        );
    }
    ctx.objects.release_waiters();
}

/// Which API a listener serves.
#[derive(Clone)]
enum Api {
    /// objstore's native API, /healthz, /metrics.
    Public,
    /// The S3-compatible API.
    S3(Arc<S3State>),
    /// Node-to-node requests on the private cluster address (and public requests other
    /// nodes proxy here, handed to their API edge).
    Internal(Arc<S3State>),
}

/// Serves one request on a listener of kind `api`.
async fn dispatch(
    ctx: Rc<ShardCtx>,
    api: Api,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<crate::body::Body> {
    match api {
        Api::Public => crate::api::public(ctx, req).await,
        Api::S3(s3) => crate::api::s3::handle(ctx, s3, req).await,
        Api::Internal(s3) => {
            let cl = match crate::api::peer::admit(&ctx, &req) {
                Ok(cl) => cl,
                Err(e) => return e.into_response(),
            };
            let h = req.headers();
            if h.contains_key(H_FORWARDED) {
                if h.get(H_API).is_some_and(|v| v == "s3") {
                    return crate::api::s3::handle_forwarded(ctx, s3, req).await;
                }
                if h.get(H_API).is_some_and(|v| v == "cachenator") {
                    return crate::api::cachenator::handle_forwarded(ctx, req).await;
                }
                if req.uri().path().starts_with("/api/v1/") {
                    return crate::api::native::handle_forwarded(ctx, req).await;
                }
            }
            crate::api::peer::handle(ctx, cl, req).await
        }
    }
}

async fn accept_loop(
    ctx: &Rc<ShardCtx>,
    listener: TcpListener,
    api: Api,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let cfg = &ctx.node.cfg.server;
    let mut builder = hyper_util::server::conn::auto::Builder::new(MonoioExecutor);
    builder
        .http1()
        .timer(MonoioTimer)
        .header_read_timeout(Duration::from_secs(cfg.header_read_timeout_secs.max(1)))
        .max_buf_size((cfg.max_header_bytes.0 as usize).max(8192));
    builder.http2().timer(MonoioTimer);
    let builder = Rc::new(builder);
    let mut shutdown = ctx.node.shutdown_rx.clone();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let accepted = monoio::select! {
            r = listener.accept() => Some(r),
            _ = shutdown.changed() => None,
        };
        let Some(accepted) = accepted else { return };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(shard = ctx.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (ctx, builder, api, tls) = (ctx.clone(), builder.clone(), api.clone(), tls.clone());
        monoio::spawn(async move {
            // hyper's header timeout starts once it knows HTTP/1 from HTTP/2, which it
            // learns from the first bytes: a client that connects and sends nothing
            // would hold the connection forever. Bound the wait for the first byte.
            let first = Duration::from_secs(ctx.node.cfg.server.header_read_timeout_secs.max(1));
            match monoio::time::timeout(first, stream.readable(false)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    ctx.http.idle_closed.fetch_add(1, Relaxed);
                    return;
                }
            }
            // Plaintext on io_uring: receives and sends on the ring (see uring_conn).
            if tls.is_none() && ctx.node.uring_active && ctx.node.cfg.server.ring_connections() {
                ctx.http.connections.fetch_add(1, Relaxed);
                serve(
                    &ctx,
                    &builder,
                    api,
                    crate::uring_conn::UringConn::new(stream),
                )
                .await;
                ctx.http.connections.fetch_sub(1, Relaxed);
                return;
            }
            let io = match stream.into_poll_io() {
                Ok(io) => io,
                Err(e) => {
                    tracing::warn!(shard = ctx.id, error = %e, "could not switch the connection to poll I/O");
                    return;
                }
            };
            ctx.http.connections.fetch_add(1, Relaxed);
            match tls {
                None => serve(&ctx, &builder, api, MonoioIo::new(io)).await,
                // The handshake gets the same bound as the first byte.
                Some(acceptor) => match monoio::time::timeout(first, acceptor.accept(io)).await {
                    Ok(Ok(tls)) => serve(&ctx, &builder, api, MonoioIo::new(tls)).await,
                    Ok(Err(e)) => {
                        tracing::debug!(shard = ctx.id, error = %e, "TLS handshake failed")
                    }
                    Err(_) => {
                        ctx.http.idle_closed.fetch_add(1, Relaxed);
                    }
                },
            }
            ctx.http.connections.fetch_sub(1, Relaxed);
        });
    }
}

/// Serves HTTP/1.1 and HTTP/2 on one connection (plain or TLS) until it ends.
async fn serve<I>(
    ctx: &Rc<ShardCtx>,
    builder: &hyper_util::server::conn::auto::Builder<MonoioExecutor>,
    api: Api,
    io: I,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let svc_ctx = ctx.clone();
    let svc = hyper::service::service_fn(move |req| {
        let (ctx, api) = (svc_ctx.clone(), api.clone());
        async move { Ok::<_, Infallible>(dispatch(ctx, api, req).await) }
    });
    if let Err(e) = builder.serve_connection(io, svc).await {
        tracing::debug!(shard = ctx.id, error = %e, "connection ended with an error");
    }
}

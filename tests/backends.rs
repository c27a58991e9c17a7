//! Several S3 backends behind one node: two moto servers of the test's own as backends
//! "dc1" and "dc2".
//!
//! - `two_backends_in_process`: writes of both APIs reach both backends; reads fail over
//!   when the preferred backend is stopped (SIGSTOP) and the circuit opens; a key one
//!   backend lacks is found as drift and copied; maintenance queues what the backend
//!   misses and drains when it ends; a delete while a backend is stopped never comes
//!   back; the consistency check finds and fixes differences made behind the node's back.
//! - `sigstop_write_storm_kill9_drain` (the real binary): a write storm with deletes;
//!   one backend SIGSTOPped in the middle; writes keep being acknowledged (policy "any"),
//!   the sync log grows, survives kill -9 of the node entry for entry, and after SIGCONT
//!   drains; then both listings match key for key and ETag for ETag, and every object
//!   byte for byte.
//! - `policy_all_waits_for_every_backend`: under policy "all" a write one backend did not
//!   take is not acknowledged, stays queued (no sync log entry) and reaches it later.
//! - `multipart_and_copy_reach_every_backend`: multipart uploads (parts in parallel) and
//!   CopyObject reach both backends before the answer, nothing logged; a backend that
//!   lost its share, or is in maintenance at completion, is repaired from the sync log;
//!   abort reaches both; a forged upload id is NoSuchUpload.
//! - `maintenance_by_config_reload` (the real binary): SIGHUP applies a backend's
//!   `maintenance` switch from the config file.
//! - `numbers` (ignored; run with `-- --ignored --nocapture`): PUT throughput of 1 MiB
//!   objects and of 32 MiB multipart uploads to two backends vs one in the same run, the
//!   drain rate, read failover latency.

mod common;
#[path = "chaos/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use common::{client, md5_hex, random_bytes, TestNode};
use nearcache::config::{BackendConfig, Config, WritePolicyValue};
use nearcache_backends::WritePolicy;
use nearcache_s3::testutil::{fresh_bucket, Moto, S3Target};

/// A direct client of one backend (behind the node's back).
struct Direct {
    rt: tokio::runtime::Runtime,
    c: aws_sdk_s3::Client,
    bucket: String,
}

impl Direct {
    fn new(t: &S3Target, bucket: &str) -> Direct {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(&t.endpoint)
            .region(aws_sdk_s3::config::Region::new(t.region.clone()))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                &t.access_key,
                &t.secret_key,
                None,
                None,
                "test",
            ))
            .force_path_style(true)
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .operation_timeout(Duration::from_secs(20))
                    .build(),
            )
            .build();
        Direct {
            rt,
            c: aws_sdk_s3::Client::from_conf(conf),
            bucket: bucket.into(),
        }
    }

    fn in_bucket(&self, bucket: &str) -> Direct {
        Direct {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            c: self.c.clone(),
            bucket: bucket.into(),
        }
    }

    fn create_bucket(&self) {
        let _ = self
            .rt
            .block_on(self.c.create_bucket().bucket(&self.bucket).send());
    }

    fn put(&self, key: &str, body: Vec<u8>) {
        self.rt
            .block_on(
                self.c
                    .put_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .body(ByteStream::from(body))
                    .send(),
            )
            .unwrap_or_else(|e| panic!("direct put {key}: {e:?}"));
    }

    fn delete(&self, key: &str) {
        self.rt
            .block_on(self.c.delete_object().bucket(&self.bucket).key(key).send())
            .unwrap_or_else(|e| panic!("direct delete {key}: {e:?}"));
    }

    /// MD5 of the body, None when 404.
    fn md5(&self, key: &str) -> Option<String> {
        self.rt.block_on(async {
            match self
                .c
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(o) => Some(md5_hex(&o.body.collect().await.unwrap().into_bytes())),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => None,
                Err(e) => panic!("direct get {key}: {e:?}"),
            }
        })
    }

    /// Every key with its ETag and size.
    fn list(&self) -> BTreeMap<String, (String, i64)> {
        self.rt.block_on(async {
            let mut out = BTreeMap::new();
            let mut token = None;
            loop {
                let page = self
                    .c
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .set_continuation_token(token)
                    .send()
                    .await
                    .unwrap();
                for o in page.contents() {
                    out.insert(
                        o.key().unwrap().to_owned(),
                        (
                            o.e_tag().unwrap_or_default().to_owned(),
                            o.size().unwrap_or(0),
                        ),
                    );
                }
                token = page.next_continuation_token().map(str::to_owned);
                if token.is_none() {
                    return out;
                }
            }
        })
    }

    /// Polls until `pred(md5(key))` holds; false after `within`.
    fn wait(&self, key: &str, within: Duration, pred: impl Fn(&Option<String>) -> bool) -> bool {
        let t = Instant::now();
        loop {
            if pred(&self.md5(key)) {
                return true;
            }
            if t.elapsed() > within {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn backend(name: &str, t: &S3Target) -> BackendConfig {
    BackendConfig {
        name: name.into(),
        endpoint: Some(t.endpoint.clone()),
        region: Some(t.region.clone()),
        access_key: Some(t.access_key.clone()),
        secret_key: Some(t.secret_key.clone()),
        path_style: Some(true),
        ..Default::default()
    }
}

fn two_backends(cfg: &mut Config, a: &S3Target, b: &S3Target, policy: WritePolicy) {
    cfg.origin.backend = vec![backend("dc1", a), backend("dc2", b)];
    cfg.origin.backends = vec!["dc1".into(), "dc2".into()];
    cfg.origin.write_policy = WritePolicyValue(policy);
    cfg.origin.straggler_ms = 300;
    cfg.origin.breaker_failures = 2;
    cfg.origin.breaker_cooldown_ms = 3000;
    cfg.origin.request_deadline_ms = 1500;
    cfg.origin.background_attempt_timeout_ms = 2000;
    cfg.origin.max_attempts = 2;
    cfg.origin.sync_max_backoff_secs = 1;
    cfg.api.origin_wait_secs = 20;
}

fn backends_json(base: &str) -> serde_json::Value {
    client()
        .get(format!("{base}/api/v1/backends"))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// (state, sync backlog entries) of backend `name`.
fn backend_state(base: &str, name: &str) -> (String, u64) {
    let v = backends_json(base);
    let b = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name} in {v}"))
        .clone();
    (
        b["state"].as_str().unwrap().to_owned(),
        b["sync_backlog"]["entries"].as_u64().unwrap(),
    )
}

fn wait_backlog_zero(base: &str, name: &str, within: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < within {
        if backend_state(base, name).1 == 0 {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn native_put(base: &str, id: &str, body: Vec<u8>) -> reqwest::blocking::Response {
    client()
        .post(format!("{base}/api/v1/put"))
        .header("X-Meta-ID", id)
        .header("X-Meta-Sync", "1")
        .body(body)
        .send()
        .unwrap()
}

fn native_delete(base: &str, id: &str) -> reqwest::blocking::Response {
    client()
        .post(format!("{base}/api/v1/delete/{id}"))
        .header("X-Meta-Sync", "1")
        .send()
        .unwrap()
}

fn ulid() -> String {
    ulid::Ulid::generate().to_string()
}

#[test]
fn two_backends_in_process() {
    let a = Moto::start().unwrap();
    let b = Moto::start().unwrap();
    let node = TestNode::start_with("backends", |cfg| {
        two_backends(cfg, &a.target, &b.target, WritePolicy::Any)
    });
    let base = node.base.clone();
    let da = Direct::new(&a.target, &node.bucket);
    let db = Direct::new(&b.target, &node.bucket);
    let within = Duration::from_secs(30);

    // Writes reach both backends: native API...
    let mut written = Vec::new();
    for i in 0..5 {
        let id = ulid();
        let body = random_bytes(1000 + i * 3000, i as u64);
        assert_eq!(native_put(&base, &id, body.clone()).status(), 200);
        written.push((id, md5_hex(&body)));
    }
    for (id, md5) in &written {
        for d in [&da, &db] {
            assert!(
                d.wait(id, within, |m| m.as_deref() == Some(md5)),
                "{id} missing"
            );
        }
    }
    // ... and the S3 API (CreateBucket reaches every backend too).
    let sdk = common::sdk::Sdk::node(&node);
    let s3b = fresh_bucket("bk-s3");
    sdk.run(sdk.c.create_bucket().bucket(&s3b).send()).unwrap();
    let body = random_bytes(70_000, 7);
    sdk.put(&s3b, "dir/obj", body.clone());
    for d in [&da, &db] {
        let d = d.in_bucket(&s3b);
        assert!(d.wait("dir/obj", within, |m| m.as_deref() == Some(&md5_hex(&body))));
    }

    // Reads fail over: dc1 (preferred) stopped; objects only the backends have.
    let (x, y, z) = (ulid(), ulid(), ulid());
    for k in [&x, &y, &z] {
        da.put(k, k.as_bytes().to_vec());
        db.put(k, k.as_bytes().to_vec());
    }
    a.pause().unwrap();
    let mut lat = Vec::new();
    for k in [&x, &y, &z] {
        let t = Instant::now();
        let r = client()
            .get(format!("{base}/api/v1/get/{k}"))
            .send()
            .unwrap();
        lat.push(t.elapsed());
        assert_eq!(r.status(), 200, "read of {k} during the dc1 stop");
        assert_eq!(r.bytes().unwrap().as_ref(), k.as_bytes());
    }
    println!("read failover latencies with dc1 stopped: {lat:?}");
    assert_eq!(backend_state(&base, "dc1").0, "circuit_open");
    // Once the circuit is open, reads skip dc1 without waiting on it.
    assert!(lat[2] < Duration::from_millis(1000), "{lat:?}");
    a.resume().unwrap();
    // After the cool-down a read probes dc1 and closes its circuit.
    let t = Instant::now();
    while backend_state(&base, "dc1").0 == "circuit_open" {
        assert!(t.elapsed() < within, "dc1's circuit never closed");
        let k = ulid();
        da.put(&k, k.as_bytes().to_vec());
        db.put(&k, k.as_bytes().to_vec());
        assert_eq!(
            client()
                .get(format!("{base}/api/v1/get/{k}"))
                .send()
                .unwrap()
                .status(),
            200
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Drift: a key only dc2 has is found there, counted, and copied to dc1.
    let drift = ulid();
    db.put(&drift, b"drift".to_vec());
    let r = client()
        .get(format!("{base}/api/v1/get/{drift}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(da.wait(&drift, within, |m| m.as_deref() == Some(&md5_hex(b"drift"))));

    // Maintenance: dc2 gets nothing, everything it misses is queued, then drains.
    let r = client()
        .post(format!(
            "{base}/api/v1/backends/maintenance?backend=dc2&enabled=true"
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut maint = Vec::new();
    for i in 0..3 {
        let id = ulid();
        let body = random_bytes(5000, 100 + i);
        assert_eq!(native_put(&base, &id, body.clone()).status(), 200);
        maint.push((id, md5_hex(&body)));
    }
    let (state, backlog) = backend_state(&base, "dc2");
    assert_eq!(state, "maintenance");
    // The syncer publishes the backlog on its next pass.
    let t = Instant::now();
    while backend_state(&base, "dc2").1 < 3 && t.elapsed() < within {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "dc2 backlog in maintenance: {backlog} then {}",
        backend_state(&base, "dc2").1
    );
    assert!(backend_state(&base, "dc2").1 >= 3);
    for (id, _) in &maint {
        assert_eq!(db.md5(id), None, "dc2 got {id} in maintenance");
    }
    client()
        .post(format!(
            "{base}/api/v1/backends/maintenance?backend=dc2&enabled=false"
        ))
        .send()
        .unwrap();
    assert!(wait_backlog_zero(&base, "dc2", within).is_some());
    for (id, md5) in &maint {
        assert_eq!(db.md5(id).as_deref(), Some(md5.as_str()));
    }

    // A delete while dc2 is stopped never comes back: one of a key both have, and one
    // of a key written and deleted while dc2 was away.
    let (k1, k2) = (ulid(), ulid());
    assert_eq!(native_put(&base, &k1, b"one".to_vec()).status(), 200);
    assert!(db.wait(&k1, within, |m| m.is_some()));
    b.pause().unwrap();
    assert_eq!(native_delete(&base, &k1).status(), 200);
    assert_eq!(native_put(&base, &k2, b"two".to_vec()).status(), 200);
    assert_eq!(native_delete(&base, &k2).status(), 200);
    b.resume().unwrap();
    assert!(wait_backlog_zero(&base, "dc2", within).is_some());
    for d in [&da, &db] {
        assert_eq!(d.md5(&k1), None, "deleted key came back");
        assert_eq!(d.md5(&k2), None, "deleted key came back");
    }
    assert_eq!(
        client()
            .get(format!("{base}/api/v1/get/{k1}"))
            .send()
            .unwrap()
            .status(),
        404
    );

    // The consistency check finds and fixes differences made behind the node's back.
    let (c1, c2) = (ulid(), written[0].0.clone());
    da.put(&c1, b"only in dc1".to_vec());
    db.delete(&c2);
    let r = client()
        .post(format!("{base}/api/v1/backends/check"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<serde_json::Value>().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let t = Instant::now();
    let status = loop {
        let s: serde_json::Value = client()
            .get(format!("{base}/api/v1/backends/check/{id}"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if s["state"] != "running" || t.elapsed() > within {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("consistency check: {status}");
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(status["only_in"][0], 2, "{status}");
    assert!(db.wait(&c1, within, |m| m.is_some()));
    assert!(db.wait(&c2, within, |m| m.as_deref() == Some(written[0].1.as_str())));
    assert!(wait_backlog_zero(&base, "dc2", within).is_some());
    assert_eq!(da.list(), db.list(), "listings differ after repair");
    assert!(node.metric("nearcache_backend_drift_total") >= 1.0);
    assert!(node.metric("nearcache_sync_repairs_total") >= 5.0);
}

/// A `nearcache` child process with two backends (config file), killable with -9.
struct Proc {
    child: Option<Child>,
    base: String,
    cfg: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
}

impl Proc {
    fn start(dir: &Path, a: &S3Target, b: &S3Target, bucket: &str) -> Proc {
        let port = harness::free_port();
        let cfg = dir.join("nearcache.toml");
        let backend = |n: &str, t: &S3Target| {
            format!(
                "[[origin.backend]]\nname = \"{n}\"\nendpoint = \"{}\"\naccess_key = \"{}\"\nsecret_key = \"{}\"\npath_style = true\n",
                t.endpoint, t.access_key, t.secret_key
            )
        };
        let text = format!(
            "[server]\npin_cores = false\nshutdown_grace_secs = 3\n\n[api]\norigin_wait_secs = 30\n\n\
             [origin]\nbucket = \"{bucket}\"\nregion = \"us-east-1\"\ncreate_bucket = true\n\
             backends = [\"dc1\", \"dc2\"]\nwrite_policy = \"any\"\nstraggler_ms = 300\n\
             breaker_failures = 2\nbreaker_cooldown_ms = 1000\nrequest_deadline_ms = 2000\n\
             background_attempt_timeout_ms = 2000\nmax_attempts = 2\ninitial_backoff_ms = 50\n\
             upload_max_backoff_secs = 1\nsync_max_backoff_secs = 1\nsync_concurrency = 8\n\n{}\n{}",
            backend("dc1", a),
            backend("dc2", b)
        );
        std::fs::write(&cfg, text).unwrap();
        let mut p = Proc {
            child: None,
            base: format!("http://127.0.0.1:{port}"),
            cfg,
            data: dir.join("data"),
            log: dir.join("nearcache.log"),
            port,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(harness::binary())
            .arg("serve")
            .arg("--config")
            .arg(&self.cfg)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args([
                "--s3-listen",
                &format!("127.0.0.1:{}", harness::free_port()),
            ])
            .args(["--shards", "2"])
            .args([
                "--log-level",
                &std::env::var("NEARCACHE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            ])
            .arg("--data-dir")
            .arg(&self.data)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let t = Instant::now();
        loop {
            if let Ok(r) = client().get(format!("{}/healthz", self.base)).send() {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "nearcache did not start: {}",
                harness::log_tail(&self.log, 0)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What the storm wrote and deleted, as acknowledged.
#[derive(Default)]
struct Acked {
    live: BTreeMap<String, String>,
    deleted: Vec<String>,
}

/// Writes (and every 5th op deletes) until `stop`; returns the ops acknowledged.
fn storm(
    base: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    ops: Arc<AtomicU64>,
    slowest_ms: Arc<AtomicU64>,
) {
    let c = harness::http(Duration::from_secs(40));
    let mut n = 0u64;
    let mut t = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        slowest_ms.fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
        t = Instant::now();
        n += 1;
        let delete = n.is_multiple_of(5);
        if delete {
            let victim = acked.lock().unwrap().live.keys().next().cloned();
            if let Some(id) = victim {
                let r = c
                    .post(format!("{base}/api/v1/delete/{id}"))
                    .header("X-Meta-Sync", "1")
                    .send();
                if r.is_ok_and(|r| r.status() == 200) {
                    let mut a = acked.lock().unwrap();
                    a.live.remove(&id);
                    a.deleted.push(id);
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
        }
        let id = ulid();
        let body = random_bytes(
            1024 + (n as usize * 7919 + seed as usize) % (64 << 10),
            seed * 100_000 + n,
        );
        let r = c
            .post(format!("{base}/api/v1/put"))
            .header("X-Meta-ID", &id)
            .header("X-Meta-Sync", "1")
            .body(body.clone())
            .send();
        if r.is_ok_and(|r| r.status() == 200) {
            acked.lock().unwrap().live.insert(id, md5_hex(&body));
            ops.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn sum_backlog(base: &str) -> u64 {
    backends_json(base)["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["sync_backlog"]["entries"].as_u64().unwrap())
        .sum()
}

fn pending_uploads(base: &str) -> f64 {
    let text = client()
        .get(format!("{base}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    common::metric_sum(&text, "nearcache_pending_uploads")
}

/// Waits until a value read repeatedly stays the same for a while (the syncer publishes
/// its backlog on each pass).
fn settled(mut read: impl FnMut() -> u64) -> u64 {
    let mut last = read();
    let mut same = Instant::now();
    let t = Instant::now();
    while same.elapsed() < Duration::from_millis(1500) && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
        let v = read();
        if v != last {
            last = v;
            same = Instant::now();
        }
    }
    last
}

#[test]
fn sigstop_write_storm_kill9_drain() {
    let a = Moto::start().unwrap();
    let b = Moto::start().unwrap();
    let bucket = fresh_bucket("bk-storm");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    if std::env::var_os("NEARCACHE_KEEP_TEST_DIR").is_some() {
        println!("test dir kept: {}", tmp.keep().display());
    }
    let mut node = Proc::start(&dir, &a.target, &b.target, &bucket);
    let base = node.base.clone();
    let (da, db) = (
        Direct::new(&a.target, &bucket),
        Direct::new(&b.target, &bucket),
    );
    da.create_bucket();
    db.create_bucket();

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let ops = Arc::new(AtomicU64::new(0));
    let slowest = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let (base, stop, acked, ops, slowest) = (
                base.clone(),
                stop.clone(),
                acked.clone(),
                ops.clone(),
                slowest.clone(),
            );
            std::thread::spawn(move || storm(base, i, stop, acked, ops, slowest))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let before_stop = ops.load(Ordering::Relaxed);
    println!(
        "slowest op before SIGSTOP: {} ms",
        slowest.swap(0, Ordering::Relaxed)
    );
    b.pause().unwrap();
    let stopped_at = Instant::now();
    if std::env::var_os("NEARCACHE_TEST_MONITOR").is_some() {
        for _ in 0..12 {
            let text = client()
                .get(format!("{base}/metrics"))
                .send()
                .unwrap()
                .text()
                .unwrap();
            println!(
                "t={:.1}s ops={} pending={} inflight={} dc2={:?}",
                stopped_at.elapsed().as_secs_f64(),
                ops.load(Ordering::Relaxed),
                common::metric_sum(&text, "nearcache_pending_uploads"),
                common::metric_sum(&text, "nearcache_inflight_requests"),
                backend_state(&base, "dc2")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    std::thread::sleep(Duration::from_secs(6));
    let during_stop = ops.load(Ordering::Relaxed) - before_stop;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    println!(
        "storm: {before_stop} ops acknowledged before SIGSTOP, {during_stop} in the {:.1} s dc2 was stopped; slowest op then {} ms",
        stopped_at.elapsed().as_secs_f64(),
        slowest.load(Ordering::Relaxed)
    );
    assert!(
        during_stop > 20,
        "writes stopped being acknowledged: {during_stop}"
    );

    // Everything acknowledged is done in dc1; what dc2 missed is in the sync log.
    let t = Instant::now();
    while pending_uploads(&base) > 0.0 && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let backlog = settled(|| sum_backlog(&base));
    println!("sync log before kill -9: {backlog} entries");
    assert!(backlog > 20, "the sync log did not grow: {backlog}");
    assert_eq!(backend_state(&base, "dc2").0, "circuit_open");

    node.kill9();
    node.spawn();
    let after = settled(|| sum_backlog(&node.base));
    assert_eq!(after, backlog, "sync log entries lost by kill -9");

    let backlog_bytes: u64 = backends_json(&node.base)["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["sync_backlog"]["bytes"].as_u64().unwrap())
        .sum();
    b.resume().unwrap();
    let drained = wait_backlog_zero(&node.base, "dc2", Duration::from_secs(120))
        .expect("the sync log did not drain");
    println!(
        "drain: {after} entries, {backlog_bytes} bytes in {:.2} s = {:.0} entries/s, {:.2} MB/s (includes the circuit's cool-down)",
        drained.as_secs_f64(),
        after as f64 / drained.as_secs_f64(),
        backlog_bytes as f64 / 1e6 / drained.as_secs_f64()
    );

    let (la, lb) = (da.list(), db.list());
    assert_eq!(la.len(), lb.len(), "listings differ in length");
    assert_eq!(la, lb, "listings differ");
    let acked = acked.lock().unwrap();
    for (id, md5) in &acked.live {
        assert_eq!(da.md5(id).as_deref(), Some(md5.as_str()), "dc1 {id}");
        assert_eq!(db.md5(id).as_deref(), Some(md5.as_str()), "dc2 {id}");
    }
    for id in &acked.deleted {
        assert!(!la.contains_key(id), "deleted {id} in dc1");
        assert!(!lb.contains_key(id), "deleted {id} in dc2");
    }
    println!(
        "checked: {} live objects byte for byte on both, {} deletes absent from both, {} keys listed",
        acked.live.len(),
        acked.deleted.len(),
        la.len()
    );
}

/// PUT throughput of 1 MiB objects to one backend vs two (same run), for `secs` with
/// `conns` concurrent writers waiting for the origin (X-Meta-Sync).
fn put_rate(base: &str, secs: u64, conns: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let n = Arc::new(AtomicU64::new(0));
    let body = Arc::new(random_bytes(1 << 20, 1));
    let t = Instant::now();
    let ws: Vec<_> = (0..conns)
        .map(|_| {
            let (stop, n, body, base) = (stop.clone(), n.clone(), body.clone(), base.to_owned());
            std::thread::spawn(move || {
                let c = harness::http(Duration::from_secs(60));
                while !stop.load(Ordering::Relaxed) {
                    let r = c
                        .post(format!("{base}/api/v1/put"))
                        .header("X-Meta-ID", ulid())
                        .header("X-Meta-Sync", "1")
                        .body(body.to_vec())
                        .send();
                    if r.is_ok_and(|r| r.status() == 200) {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for w in ws {
        w.join().unwrap();
    }
    n.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn numbers() {
    let a = Moto::start().unwrap();
    let b = Moto::start().unwrap();
    let (secs, conns) = (10, 4);
    let one = TestNode::start_with("bk-num1", |cfg| {
        cfg.origin.endpoint = Some(a.target.endpoint.clone());
    });
    let mut rows = Vec::new();
    for policy in [WritePolicy::All, WritePolicy::Any] {
        let r1 = put_rate(&one.base, secs, conns);
        let two = TestNode::start_with("bk-num2", |cfg| {
            two_backends(cfg, &a.target, &b.target, policy)
        });
        let r2 = put_rate(&two.base, secs, conns);
        rows.push((policy, r1, r2));
    }
    // Multipart through the S3 API: 32 MiB in 4 parts, parts sent to both backends in
    // parallel (two) vs to one.
    let mp1 = multipart_rate(&one, 5);
    let two = TestNode::start_with("bk-num-mp", |cfg| {
        two_backends(cfg, &a.target, &b.target, WritePolicy::Any)
    });
    let mp2 = multipart_rate(&two, 5);
    drop(two);
    // Drain rate: objects written while dc2 is in maintenance, then replayed.
    let two = TestNode::start_with("bk-num3", |cfg| {
        two_backends(cfg, &a.target, &b.target, WritePolicy::Any);
        cfg.origin.sync_concurrency = 8;
    });
    client()
        .post(format!(
            "{}/api/v1/backends/maintenance?backend=dc2&enabled=true",
            two.base
        ))
        .send()
        .unwrap();
    let (n, size) = (200usize, 256usize << 10);
    for i in 0..n {
        assert_eq!(
            native_put(&two.base, &ulid(), random_bytes(size, i as u64)).status(),
            200
        );
    }
    let t = Instant::now();
    while backend_state(&two.base, "dc2").1 < n as u64 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    client()
        .post(format!(
            "{}/api/v1/backends/maintenance?backend=dc2&enabled=false",
            two.base
        ))
        .send()
        .unwrap();
    let drained = wait_backlog_zero(&two.base, "dc2", Duration::from_secs(300)).expect("drained");
    println!(
        "drain: {n} x {} KiB in {:.2} s = {:.0} entries/s, {:.1} MB/s",
        size >> 10,
        drained.as_secs_f64(),
        n as f64 / drained.as_secs_f64(),
        (n * size) as f64 / 1e6 / drained.as_secs_f64()
    );
    println!(
        "multipart 32 MiB (4 x 8 MiB parts) through the S3 API: one backend {mp1:.1} MB/s, two backends {mp2:.1} MB/s = {:.2}x",
        mp2 / mp1
    );
    for (p, r1, r2) in &rows {
        println!(
            "PUT 1 MiB, {conns} writers, X-Meta-Sync: one backend {r1:.1} req/s, two backends (policy {p}) {r2:.1} req/s = {:.2}x",
            r2 / r1
        );
    }
}

/// MB/s of `n` sequential 32 MiB multipart uploads (4 parts of 8 MiB, sent one after
/// another) through `node`'s S3 API, create to complete.
fn multipart_rate(node: &TestNode, n: usize) -> f64 {
    let sdk = common::sdk::Sdk::node(node);
    let bucket = fresh_bucket("bk-num-mp");
    sdk.run(sdk.c.create_bucket().bucket(&bucket).send())
        .unwrap();
    let part = random_bytes(8 << 20, 7);
    let t = Instant::now();
    for i in 0..n {
        let key = format!("mp{i}");
        let up = sdk
            .run(
                sdk.c
                    .create_multipart_upload()
                    .bucket(&bucket)
                    .key(&key)
                    .send(),
            )
            .unwrap();
        let id = up.upload_id().unwrap().to_owned();
        let mut parts = Vec::new();
        for p in 1..=4 {
            let r = sdk
                .run(
                    sdk.c
                        .upload_part()
                        .bucket(&bucket)
                        .key(&key)
                        .upload_id(&id)
                        .part_number(p)
                        .body(ByteStream::from(part.clone()))
                        .send(),
                )
                .unwrap();
            parts.push(
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(p)
                    .e_tag(r.e_tag().unwrap())
                    .build(),
            );
        }
        sdk.run(
            sdk.c
                .complete_multipart_upload()
                .bucket(&bucket)
                .key(&key)
                .upload_id(&id)
                .multipart_upload(
                    aws_sdk_s3::types::CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send(),
        )
        .unwrap();
    }
    (n * (32 << 20)) as f64 / 1e6 / t.elapsed().as_secs_f64()
}

/// Policy "all": a write is done only when every backend has it. With one backend
/// stopped, a write that waits for the origin is not acknowledged (it stays queued, and
/// nothing goes to the sync log); once the backend is back, the retried write reaches it.
#[test]
fn policy_all_waits_for_every_backend() {
    let a = Moto::start().unwrap();
    let b = Moto::start().unwrap();
    let node = TestNode::start_with("bk-all", |cfg| {
        two_backends(cfg, &a.target, &b.target, WritePolicy::All);
        cfg.api.origin_wait_secs = 3;
    });
    let base = node.base.clone();
    let (da, db) = (
        Direct::new(&a.target, &node.bucket),
        Direct::new(&b.target, &node.bucket),
    );
    let id = ulid();
    assert_eq!(native_put(&base, &id, b"both".to_vec()).status(), 200);
    assert_eq!(db.md5(&id), Some(md5_hex(b"both")));
    assert_eq!(da.md5(&id), Some(md5_hex(b"both")));

    b.pause().unwrap();
    let id = ulid();
    let r = native_put(&base, &id, b"held".to_vec());
    assert!(
        r.status() == 502 || r.status() == 504,
        "a write dc2 did not take was acknowledged under policy all: {}",
        r.status()
    );
    assert_eq!(backend_state(&base, "dc2").1, 0, "policy all logged a miss");
    // Stored and queued: readable from the cache meanwhile.
    let got = client()
        .get(format!("{base}/api/v1/get/{id}"))
        .send()
        .unwrap();
    assert_eq!(got.bytes().unwrap().as_ref(), b"held");
    b.resume().unwrap();
    let within = Duration::from_secs(60);
    assert!(db.wait(&id, within, |m| m.as_deref()
        == Some(md5_hex(b"held").as_str())));
    assert!(da.wait(&id, within, |m| m.as_deref()
        == Some(md5_hex(b"held").as_str())));
    let t = Instant::now();
    while pending_uploads(&base) > 0.0 {
        assert!(t.elapsed() < within, "the write stayed pending");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Multipart uploads and CopyObject on every backend at once: with both backends up, the
/// parts go to both in parallel and both hold the object (same ETag) the moment the
/// client is answered, with nothing in the sync log. A backend that loses its share
/// behind the node's back, or is in maintenance when the upload completes, gets the
/// object through the sync log. AbortMultipartUpload reaches both; a forged upload id is
/// NoSuchUpload. (ListParts is not checked: aws-sdk-rust cannot read moto's answer.)
#[test]
fn multipart_and_copy_reach_every_backend() {
    let a = Moto::start().unwrap();
    let b = Moto::start().unwrap();
    let node = TestNode::start_with("bk-mpu", |cfg| {
        two_backends(cfg, &a.target, &b.target, WritePolicy::Any)
    });
    let sdk = common::sdk::Sdk::node(&node);
    let bucket = fresh_bucket("bk-mpu");
    sdk.run(sdk.c.create_bucket().bucket(&bucket).send())
        .unwrap();
    let (da, db) = (
        Direct::new(&a.target, &bucket),
        Direct::new(&b.target, &bucket),
    );
    let (p1, p2) = (random_bytes(5 << 20, 1), random_bytes(1000, 2));
    let whole = md5_hex(&[p1.clone(), p2.clone()].concat());
    let logged = || node.metric("nearcache_sync_log_entries_total");
    let upload = |key: &str| -> (String, Vec<aws_sdk_s3::types::CompletedPart>) {
        let up = sdk
            .run(
                sdk.c
                    .create_multipart_upload()
                    .bucket(&bucket)
                    .key(key)
                    .send(),
            )
            .unwrap();
        let id = up.upload_id().unwrap().to_owned();
        let mut parts = Vec::new();
        for (n, body) in [(1, &p1), (2, &p2)] {
            let r = sdk
                .run(
                    sdk.c
                        .upload_part()
                        .bucket(&bucket)
                        .key(key)
                        .upload_id(&id)
                        .part_number(n)
                        .body(ByteStream::from(body.clone()))
                        .send(),
                )
                .unwrap();
            parts.push(
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(n)
                    .e_tag(r.e_tag().unwrap())
                    .build(),
            );
        }
        (id, parts)
    };
    let complete = |key: &str, id: &str, parts: Vec<aws_sdk_s3::types::CompletedPart>| {
        sdk.run(
            sdk.c
                .complete_multipart_upload()
                .bucket(&bucket)
                .key(key)
                .upload_id(id)
                .multipart_upload(
                    aws_sdk_s3::types::CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send(),
        )
        .unwrap()
    };
    let uploads_on = |d: &Direct| {
        d.rt.block_on(d.c.list_multipart_uploads().bucket(&d.bucket).send())
            .unwrap()
            .uploads()
            .iter()
            .map(|u| {
                (
                    u.key().unwrap().to_owned(),
                    u.upload_id().unwrap().to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };

    // Both up: on both when answered, nothing logged.
    let before = logged();
    let (id, parts) = upload("big");
    assert!(
        id.starts_with("nc1."),
        "the upload id names both backends: {id}"
    );
    assert_eq!(uploads_on(&da).len(), 1);
    assert_eq!(uploads_on(&db).len(), 1);
    let done = complete("big", &id, parts);
    assert_eq!(
        da.md5("big"),
        Some(whole.clone()),
        "dc1 lacks big when answered"
    );
    assert_eq!(
        db.md5("big"),
        Some(whole.clone()),
        "dc2 lacks big when answered"
    );
    assert_eq!(
        da.list()["big"],
        db.list()["big"],
        "the backends' ETags differ"
    );
    assert_eq!(
        done.e_tag().unwrap().trim_matches('"'),
        da.list()["big"].0.trim_matches('"')
    );
    sdk.run(
        sdk.c
            .copy_object()
            .bucket(&bucket)
            .key("copy")
            .copy_source(format!("{bucket}/big"))
            .send(),
    )
    .unwrap();
    assert_eq!(
        da.md5("copy"),
        Some(whole.clone()),
        "dc1 lacks the copy when answered"
    );
    assert_eq!(
        db.md5("copy"),
        Some(whole.clone()),
        "dc2 lacks the copy when answered"
    );
    assert_eq!(
        logged(),
        before,
        "a write both backends took was logged for repair"
    );
    assert!(uploads_on(&da).is_empty() && uploads_on(&db).is_empty());

    // dc2 loses its share behind the node's back: its completion fails, and the sync log
    // brings it the object.
    let (id, parts) = upload("lost");
    for (key, up) in uploads_on(&db) {
        db.rt
            .block_on(
                db.c.abort_multipart_upload()
                    .bucket(&bucket)
                    .key(key)
                    .upload_id(up)
                    .send(),
            )
            .unwrap();
    }
    complete("lost", &id, parts);
    assert_eq!(da.md5("lost"), Some(whole.clone()));
    assert!(logged() > before, "dc2's miss was not logged");
    let within = Duration::from_secs(60);
    assert!(db.wait("lost", within, |m| m.as_deref() == Some(whole.as_str())));

    // dc2 in maintenance when the upload completes: skipped (its share aborted), queued,
    // and repaired when it is back.
    let maintenance = |on: bool| {
        let r = client()
            .post(format!(
                "{}/api/v1/backends/maintenance?backend=dc2&enabled={on}",
                node.base
            ))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    };
    let (id, parts) = upload("later");
    maintenance(true);
    complete("later", &id, parts);
    assert_eq!(da.md5("later"), Some(whole.clone()));
    assert_eq!(db.md5("later"), None, "dc2 got a write in maintenance");
    assert!(backend_state(&node.base, "dc2").1 >= 1);
    maintenance(false);
    assert!(db.wait("later", within, |m| m.as_deref() == Some(whole.as_str())));
    assert!(wait_backlog_zero(&node.base, "dc2", within).is_some());
    assert!(
        uploads_on(&db).is_empty(),
        "dc2 kept the skipped upload's parts"
    );

    // Abort reaches both; a forged id is NoSuchUpload.
    let (id, _) = upload("dropped");
    sdk.run(
        sdk.c
            .abort_multipart_upload()
            .bucket(&bucket)
            .key("dropped")
            .upload_id(&id)
            .send(),
    )
    .unwrap();
    assert!(uploads_on(&da).is_empty() && uploads_on(&db).is_empty());
    let forged = sdk.run(
        sdk.c
            .list_parts()
            .bucket(&bucket)
            .key("dropped")
            .upload_id("nc1.W1siZGM5IiwieCJdXQ")
            .send(),
    );
    let e = forged.unwrap_err();
    assert_eq!(
        e.as_service_error().and_then(|s| s.meta().code()),
        Some("NoSuchUpload"),
        "{e:?}"
    );
}

/// Maintenance by config reload: `maintenance = true` in a backend's section and SIGHUP
/// take it out of traffic (what it misses is queued); removing it and SIGHUP again bring
/// it back, and the queue drains.
#[test]
fn maintenance_by_config_reload() {
    let a = Moto::start().unwrap();
    let b = Moto::start().unwrap();
    let bucket = fresh_bucket("bk-hup");
    let tmp = tempfile::tempdir().unwrap();
    let node = Proc::start(tmp.path(), &a.target, &b.target, &bucket);
    let db = Direct::new(&b.target, &bucket);
    let original = std::fs::read_to_string(&node.cfg).unwrap();
    let hup = |text: &str| {
        std::fs::write(&node.cfg, text).unwrap();
        let pid = node.child.as_ref().unwrap().id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of our own unreaped child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    };
    hup(&original.replace("name = \"dc2\"\n", "name = \"dc2\"\nmaintenance = true\n"));
    let within = Duration::from_secs(20);
    let t = Instant::now();
    while backend_state(&node.base, "dc2").0 != "maintenance" {
        assert!(
            t.elapsed() < within,
            "SIGHUP did not put dc2 in maintenance"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let id = ulid();
    assert_eq!(
        native_put(&node.base, &id, b"queued".to_vec()).status(),
        200
    );
    assert_eq!(db.md5(&id), None, "dc2 got a write in maintenance");
    hup(&original);
    assert!(db.wait(&id, within, |m| m.as_deref()
        == Some(md5_hex(b"queued").as_str())));
    assert!(wait_backlog_zero(&node.base, "dc2", within).is_some());
}

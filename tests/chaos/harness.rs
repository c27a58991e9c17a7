//! Helpers of the chaos suite (tests/chaos.rs): the real `nearcache` binary as a child
//! process, a moto of the scenario's own, an independent S3 client, a tmpfs guard, and
//! the ledger of checks each scenario prints.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use nearcache_s3::testutil::S3Target;

/// Rounds of the repeated scenarios: `NEARCACHE_CHAOS_ROUNDS`, else `default`.
pub fn rounds(default: usize) -> usize {
    std::env::var("NEARCACHE_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// The binary under test: `NEARCACHE_CHAOS_BIN` if set (e.g. a build of another
/// commit, to compare), else this package's `nearcache`.
pub fn binary() -> PathBuf {
    std::env::var_os("NEARCACHE_CHAOS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nearcache")))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// A blocking HTTP client whose every request ends within `timeout` (never a hang).
pub fn http(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(4)
        .build()
        .unwrap()
}

/// The outcome of each named check of a scenario, printed at the end; the scenario
/// fails if any check failed (after all of them ran, so every number is printed).
pub struct Ledger {
    scenario: &'static str,
    lines: Vec<(bool, String)>,
}

impl Ledger {
    pub fn new(scenario: &'static str) -> Ledger {
        Ledger {
            scenario,
            lines: Vec::new(),
        }
    }

    pub fn check(&mut self, name: &str, ok: bool, detail: impl std::fmt::Display) -> bool {
        let line = format!("{name}: {detail}");
        println!(
            "[chaos {}] {} {line}",
            self.scenario,
            if ok { "PASS" } else { "FAIL" }
        );
        self.lines.push((ok, line));
        ok
    }

    pub fn note(&mut self, detail: impl std::fmt::Display) {
        println!("[chaos {}] note {detail}", self.scenario);
    }

    pub fn finish(self) {
        println!("[chaos {}] summary:", self.scenario);
        for (ok, l) in &self.lines {
            println!("  {} {l}", if *ok { "PASS" } else { "FAIL" });
        }
        let failed: Vec<&String> = self
            .lines
            .iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, l)| l)
            .collect();
        assert!(
            failed.is_empty(),
            "chaos scenario {}: {} check(s) failed:\n  {}",
            self.scenario,
            failed.len(),
            failed
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
}

/// Where a node's origin is.
#[derive(Clone)]
pub enum Origin {
    S3 {
        target: S3Target,
        bucket: String,
    },
    /// The embedded local origin (in the data dir).
    Local,
}

/// How to start a node (kept to restart it the same way).
#[derive(Clone)]
pub struct NodeSpec {
    pub data_dir: PathBuf,
    pub port: u16,
    /// The S3-compatible API's port (keys [`S3API_ACCESS_KEY`] / [`S3API_SECRET_KEY`]).
    pub s3_port: u16,
    pub origin: Origin,
    pub extra_args: Vec<String>,
    /// Extra TOML for the config file (`[server]` etc. sections).
    pub toml: String,
    pub log: PathBuf,
}

impl NodeSpec {
    pub fn new(data_dir: &Path, origin: Origin, log: PathBuf) -> NodeSpec {
        NodeSpec {
            data_dir: data_dir.to_owned(),
            port: free_port(),
            s3_port: free_port(),
            origin,
            extra_args: Vec::new(),
            toml: String::new(),
            log,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The node's S3-compatible API as an S3 target.
    pub fn s3api(&self) -> S3Target {
        S3Target {
            endpoint: format!("http://127.0.0.1:{}", self.s3_port),
            region: "us-east-1".into(),
            access_key: S3API_ACCESS_KEY.into(),
            secret_key: S3API_SECRET_KEY.into(),
        }
    }
}

/// The key pair every chaos node's S3-compatible API accepts.
pub const S3API_ACCESS_KEY: &str = "NCCHAOSKEY";
pub const S3API_SECRET_KEY: &str = "nc-chaos-secret";

/// A running `nearcache serve` child process.
pub struct Node {
    pub spec: NodeSpec,
    child: Option<Child>,
    /// Where this process's lines start in the (shared, appended) log.
    log_offset: u64,
}

impl Node {
    /// Spawns the node; does not wait for it.
    pub fn spawn(spec: &NodeSpec) -> Node {
        let cfg_path = spec.log.with_extension("toml");
        // Fast retries of pending uploads so drains are quick to observe.
        let toml = format!(
            "[server]\npin_cores = false\nshutdown_grace_secs = 3\n{}\n[origin]\nmax_attempts = 3\ninitial_backoff_ms = 50\nupload_max_backoff_secs = 2\n\n[[s3api.keys]]\naccess_key = \"{S3API_ACCESS_KEY}\"\nsecret_key = \"{S3API_SECRET_KEY}\"\n",
            spec.toml
        );
        std::fs::write(&cfg_path, toml).unwrap();
        let log_offset = std::fs::metadata(&spec.log).map(|m| m.len()).unwrap_or(0);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--config")
            .arg(&cfg_path)
            .args(["--listen", &format!("127.0.0.1:{}", spec.port)])
            .args(["--shards", "2", "--log-level", "warn"])
            .args(["--s3-listen", &format!("127.0.0.1:{}", spec.s3_port)])
            .arg("--data-dir")
            .arg(&spec.data_dir);
        if let Origin::S3 { target, bucket } = &spec.origin {
            cmd.args([
                "--s3-endpoint",
                &target.endpoint,
                "--s3-region",
                &target.region,
                "--s3-bucket",
                bucket,
                "--s3-access-key",
                &target.access_key,
                "--s3-secret-key",
                &target.secret_key,
                "--s3-path-style",
            ]);
        }
        cmd.args(&spec.extra_args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd.spawn().expect("spawn nearcache");
        Node {
            spec: spec.clone(),
            child: Some(child),
            log_offset,
        }
    }

    /// Spawns the node and waits until /healthz answers 200 (`Err` with the reason and
    /// the log's tail when it exits or does not within `within`).
    pub fn start(spec: &NodeSpec, within: Duration) -> Result<Node, String> {
        let mut n = Node::spawn(spec);
        n.wait_healthy(within).map(|_| n)
    }

    pub fn base(&self) -> String {
        self.spec.base()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits until /healthz answers 200; returns how long it took.
    pub fn wait_healthy(&mut self, within: Duration) -> Result<Duration, String> {
        let t = Instant::now();
        let c = http(Duration::from_secs(2));
        loop {
            if let Ok(r) = c.get(format!("{}/healthz", self.base())).send() {
                if r.status() == 200 {
                    return Ok(t.elapsed());
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "nearcache exited while starting ({status}): {}",
                        log_tail(&self.spec.log, self.log_offset)
                    ));
                }
            }
            if t.elapsed() > within {
                return Err(format!(
                    "not healthy within {within:?}: {}",
                    log_tail(&self.spec.log, self.log_offset)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (SIGKILL after `grace`); returns whether it exited 0.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        // SAFETY: kill(2) on our own unreaped child's pid.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let t = Instant::now();
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s.success();
            }
            if t.elapsed() > grace {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The last lines a process wrote to its log (from `offset`), without ANSI colours.
pub fn log_tail(path: &Path, offset: u64) -> String {
    use std::io::{Seek, SeekFrom};
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(offset));
        let _ = f.read_to_string(&mut s);
    }
    let mut clean = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            clean.push(ch);
        }
    }
    let lines: Vec<&str> = clean
        .lines()
        .filter(|l| !l.contains("without access keys"))
        .collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// An independent S3 client (aws-sdk-s3 on its own runtime) to see what reached S3.
pub struct S3Check {
    rt: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
    pub bucket: String,
}

/// What S3 holds under a key.
#[derive(Debug, PartialEq, Eq)]
pub enum InS3 {
    Md5(String),
    Missing,
    /// The request failed (S3 unreachable...).
    Error(String),
}

impl S3Check {
    pub fn new(target: &S3Target, bucket: &str) -> S3Check {
        S3Check::with_attempts(target, bucket, 3, Duration::from_secs(10))
    }

    /// A client making `attempts` attempts per request, each request bounded by `timeout`.
    pub fn with_attempts(
        target: &S3Target,
        bucket: &str,
        attempts: u32,
        timeout: Duration,
    ) -> S3Check {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let creds = aws_sdk_s3::config::Credentials::new(
            &target.access_key,
            &target.secret_key,
            None,
            None,
            "chaos",
        );
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .operation_timeout(timeout)
            .build();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(&target.endpoint)
            .region(aws_sdk_s3::config::Region::new(target.region.clone()))
            .credentials_provider(creds)
            .force_path_style(true)
            .timeout_config(timeouts)
            .retry_config(
                aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(attempts),
            )
            .build();
        S3Check {
            rt,
            client: aws_sdk_s3::Client::from_conf(conf),
            bucket: bucket.to_owned(),
        }
    }

    pub fn create_bucket(&self) -> Result<(), String> {
        self.rt
            .block_on(self.client.create_bucket().bucket(&self.bucket).send())
            .map(drop)
            .map_err(|e| format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e)))
    }

    pub fn put(&self, key: &str, body: Vec<u8>) -> Result<(), String> {
        self.rt
            .block_on(
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .body(body.into())
                    .send(),
            )
            .map(drop)
            .map_err(|e| format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e)))
    }

    pub fn get(&self, key: &str) -> InS3 {
        self.rt.block_on(async {
            match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(o) => match o.body.collect().await {
                    Ok(b) => InS3::Md5(md5_hex(&b.into_bytes())),
                    Err(e) => InS3::Error(e.to_string()),
                },
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => InS3::Missing,
                Err(e) => InS3::Error(format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e))),
            }
        })
    }

    /// Polls every key until `want(key)` holds for all or `within` passes; returns the
    /// keys that never matched and how long it took.
    pub fn wait_all(
        &self,
        keys: &[(String, Option<String>)],
        within: Duration,
    ) -> (Vec<String>, Duration) {
        let t = Instant::now();
        let mut left: Vec<&(String, Option<String>)> = keys.iter().collect();
        loop {
            left.retain(|(k, want)| {
                let got = self.get(k);
                match want {
                    Some(md5) => got != InS3::Md5(md5.clone()),
                    None => got != InS3::Missing,
                }
            });
            if left.is_empty() || t.elapsed() > within {
                return (left.iter().map(|(k, _)| k.clone()).collect(), t.elapsed());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A tmpfs mounted for the scenario; unmounted (lazily, so it always goes) on drop.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs {
            path: path.to_owned(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

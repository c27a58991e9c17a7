//! Test helpers (feature `testutil`): an S3 server to run tests against, and configs.
//!
//! [`s3_target`] uses the server named by the environment when
//! `NEARCACHE_TEST_S3_ENDPOINT` is set (with `NEARCACHE_TEST_S3_REGION`,
//! `NEARCACHE_TEST_S3_ACCESS_KEY`, `NEARCACHE_TEST_S3_SECRET_KEY`; e.g. a Garage node).
//! Otherwise it starts moto (`python3 -m moto.server`) once per test process on a free
//! port of 127.0.0.1, installing `moto[server]` with pip first if needed (serialized
//! across processes by a file lock). The moto process gets SIGKILL when the test process
//! exits (`PR_SET_PDEATHSIG`), and its log goes to `$TMPDIR/nearcache-moto-<port>.log`.
//!
//! Each test should use its own bucket: [`fresh_bucket`].
//!
//! For outage tests, [`Moto`] is a moto process of the test's own that can be stopped
//! (SIGSTOP: it keeps accepting connections in the kernel's backlog and never answers),
//! resumed, killed and restarted on the same port.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{OriginConfig, OriginKind};

/// An S3-compatible server for tests.
#[derive(Debug, Clone)]
pub struct S3Target {
    pub endpoint: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
}

static TARGET: OnceLock<S3Target> = OnceLock::new();

/// The test S3 server, started on first use (see the module docs). Panics when it can't
/// be had: a test that needs S3 can't run without one.
pub fn s3_target() -> &'static S3Target {
    TARGET.get_or_init(|| {
        if let Ok(endpoint) = std::env::var("NEARCACHE_TEST_S3_ENDPOINT") {
            let var = |name: &str, default: &str| {
                std::env::var(name).unwrap_or_else(|_| default.to_owned())
            };
            return S3Target {
                endpoint,
                region: var("NEARCACHE_TEST_S3_REGION", "us-east-1"),
                access_key: var("NEARCACHE_TEST_S3_ACCESS_KEY", "test"),
                secret_key: var("NEARCACHE_TEST_S3_SECRET_KEY", "test"),
            };
        }
        start_moto().unwrap_or_else(|e| panic!("start moto for the S3 tests: {e}"))
    })
}

/// A bucket name no other test (in this or another process) uses.
pub fn fresh_bucket(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tag: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(24)
        .collect();
    format!("nct-{tag}-{}-{n}-{nanos:x}", std::process::id())
}

/// An origin config for bucket `bucket` on [`s3_target`], with short test timeouts.
pub fn s3_config(bucket: &str) -> OriginConfig {
    let t = s3_target();
    OriginConfig {
        kind: OriginKind::S3 {
            endpoint: Some(t.endpoint.clone()),
            region: t.region.clone(),
            bucket: bucket.to_owned(),
            access_key: Some(t.access_key.clone()),
            secret_key: Some(t.secret_key.clone()),
            path_style: true,
        },
        ..test_defaults(OriginKind::Local {
            dir: PathBuf::new(),
        })
    }
}

/// An origin config for a local-directory origin at `dir`, with short test timeouts.
pub fn local_config(dir: PathBuf) -> OriginConfig {
    test_defaults(OriginKind::Local { dir })
}

fn test_defaults(kind: OriginKind) -> OriginConfig {
    OriginConfig {
        kind,
        prefix: String::new(),
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        connect_timeout: Duration::from_secs(2),
        operation_timeout: Duration::from_secs(10),
        threads: 1,
        body_channel_chunks: 4,
        inject_failure_rate: 0.0,
        ca_bundle: None,
    }
}

fn importable(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the pip `package` unless `module` imports. One install at a time across
/// processes (a file lock): test binaries run in parallel and share site-packages.
pub fn ensure_python_package(module: &str, package: &str) -> io::Result<()> {
    if importable(module) {
        return Ok(());
    }
    let lock = File::create(std::env::temp_dir().join("nearcache-pip-install.lock"))?;
    // SAFETY: flock on a file descriptor that `lock` owns and keeps open for this call;
    // the lock is released when `lock` is closed at the end of this function.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if importable(module) {
        return Ok(());
    }
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", package])
        .stdout(Stdio::null())
        .status()?;
    if !status.success() || !importable(module) {
        return Err(io::Error::other(format!(
            "pip install '{package}' failed ({status})"
        )));
    }
    Ok(())
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn start_moto() -> io::Result<S3Target> {
    ensure_python_package("moto.server", "moto[server]")?;
    let port = free_port()?;
    let log_path = std::env::temp_dir().join(format!("nearcache-moto-{port}.log"));
    let log = File::create(&log_path)?;
    let (tx, rx) = std::sync::mpsc::channel::<io::Result<()>>();
    // PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so fork from a
    // thread that lives as long as the process (it waits on the child).
    std::thread::Builder::new()
        .name("moto-server".into())
        .spawn(move || {
            let parent = std::process::id() as libc::pid_t;
            let mut cmd = Command::new("python3");
            cmd.args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
            // SAFETY: the closure runs in the forked child before exec and only calls
            // async-signal-safe functions (setpgid, prctl, getppid) without allocating.
            unsafe {
                cmd.pre_exec(move || {
                    // Own process group: a terminal's Ctrl-C to the test runner doesn't reach moto
                    // first; the death signal below still ends it with us.
                    libc::setpgid(0, 0);
                    if libc::prctl(
                        libc::PR_SET_PDEATHSIG,
                        libc::SIGKILL as libc::c_ulong,
                        0,
                        0,
                        0,
                    ) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                    // The parent may have died before prctl took effect.
                    if libc::getppid() != parent {
                        return Err(io::Error::from_raw_os_error(libc::ESRCH));
                    }
                    Ok(())
                });
            }
            match cmd.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(()));
                    let _ = child.wait();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
    rx.recv()
        .map_err(|_| io::Error::other("moto launcher thread died"))??;
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(500),
    )
    .is_err()
    {
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "moto did not listen on port {port} within 60 s; see {}",
                log_path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!(port, log = %log_path.display(), "moto S3 server started for tests");
    Ok(S3Target {
        endpoint: format!("http://127.0.0.1:{port}"),
        region: "us-east-1".into(),
        access_key: "test".into(),
        secret_key: "test".into(),
    })
}

/// A moto server owned by one test, on its own port, that the test can stop, resume,
/// kill and restart (outage tests). Killed when dropped, and (PR_SET_PDEATHSIG) when the
/// thread that started it exits.
pub struct Moto {
    child: Option<Child>,
    pub port: u16,
    pub target: S3Target,
    pub log_path: PathBuf,
}

impl Moto {
    /// Starts moto on a free port and waits until it answers HTTP.
    pub fn start() -> io::Result<Moto> {
        ensure_python_package("moto.server", "moto[server]")?;
        let port = free_port()?;
        let mut m = Moto {
            child: None,
            port,
            target: S3Target {
                endpoint: format!("http://127.0.0.1:{port}"),
                region: "us-east-1".into(),
                access_key: "test".into(),
                secret_key: "test".into(),
            },
            log_path: std::env::temp_dir().join(format!("nearcache-moto-{port}.log")),
        };
        m.spawn()?;
        Ok(m)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe functions (setpgid, prctl) without allocating.
        unsafe {
            cmd.pre_exec(|| {
                libc::setpgid(0, 0);
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(cmd.spawn()?);
        self.wait_ready(Duration::from_secs(60))
    }

    /// Waits until moto answers an HTTP request (not just accepts connections).
    fn wait_ready(&mut self, within: Duration) -> io::Result<()> {
        use std::io::{Read, Write};
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(io::Error::other(format!(
                        "moto exited ({status}); see {}",
                        self.log_path.display()
                    )));
                }
            }
            let answered = (|| -> io::Result<bool> {
                let mut s = TcpStream::connect_timeout(
                    &(Ipv4Addr::LOCALHOST, self.port).into(),
                    Duration::from_millis(500),
                )?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut buf = [0u8; 12];
                s.read_exact(&mut buf)?;
                Ok(buf.starts_with(b"HTTP/1."))
            })()
            .unwrap_or(false);
            if answered {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "moto did not answer on port {} within {within:?}; see {}",
                    self.port,
                    self.log_path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid(&self) -> Option<libc::pid_t> {
        self.child.as_ref().map(|c| c.id() as libc::pid_t)
    }

    fn signal(&self, sig: libc::c_int) -> io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("moto is not running"))?;
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGSTOP: moto's listening socket stays open (connections are accepted by the
    /// kernel) but nothing answers.
    pub fn pause(&self) -> io::Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// SIGCONT after [`Moto::pause`].
    pub fn resume(&self) -> io::Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// SIGKILL and reap (moto's objects are lost: it keeps them in memory).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills moto (if running) and starts a fresh one on the same port.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Whether the process is running (possibly stopped).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        // A stopped process still dies of SIGKILL.
        self.kill();
    }
}

/// An origin config for bucket `bucket` on `target` (e.g. a [`Moto`]'s), with short
/// test timeouts.
pub fn s3_config_for(target: &S3Target, bucket: &str) -> OriginConfig {
    OriginConfig {
        kind: OriginKind::S3 {
            endpoint: Some(target.endpoint.clone()),
            region: target.region.clone(),
            bucket: bucket.to_owned(),
            access_key: Some(target.access_key.clone()),
            secret_key: Some(target.secret_key.clone()),
            path_style: true,
        },
        ..test_defaults(OriginKind::Local {
            dir: PathBuf::new(),
        })
    }
}

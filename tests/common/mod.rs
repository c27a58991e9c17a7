//! Test harness: a nearcache node started in-process on a free port, with a real S3
//! server behind it (moto, or the server named by NEARCACHE_TEST_S3_* such as Garage),
//! and an independent aws-sdk-s3 client to check what reached S3.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use nearcache::config::{Config, Size};
use nearcache::ServerHandle;
use nearcache_s3::testutil::{fresh_bucket, s3_target};

pub mod ops;
pub mod pki;
pub mod procs;
pub mod sdk;

pub fn init_logging() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A config for a node on a free port with its own data dir and bucket.
pub fn test_config(data_dir: &Path, bucket: &str) -> Config {
    let t = s3_target();
    let mut cfg = Config::default();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.data_dir = data_dir.to_path_buf();
    cfg.server.shards = 2;
    cfg.server.pin_cores = false;
    cfg.server.shutdown_grace_secs = 5;
    cfg.store.disk_capacity = Size(1 << 30);
    cfg.store.memory_capacity = Size(64 << 20);
    cfg.store.lmdb_map_size = Size(1 << 30);
    cfg.origin.endpoint = Some(t.endpoint.clone());
    cfg.origin.region = t.region.clone();
    cfg.origin.bucket = Some(bucket.to_string());
    cfg.origin.access_key = Some(t.access_key.clone());
    cfg.origin.secret_key = Some(t.secret_key.clone());
    cfg.origin.path_style = true;
    cfg.origin.create_bucket = true;
    cfg.origin.max_attempts = 3;
    cfg.origin.initial_backoff_ms = 20;
    cfg.origin.upload_max_backoff_secs = 1;
    cfg.s3api.listen = "127.0.0.1:0".parse().unwrap();
    cfg.s3api.keys = vec![nearcache::config::S3KeyConfig {
        access_key: S3_ACCESS_KEY.into(),
        secret_key: S3_SECRET_KEY.into(),
        buckets: vec!["*".into()],
        read_only: false,
    }];
    cfg
}

/// The access key the test config gives nearcache's S3 API.
pub const S3_ACCESS_KEY: &str = "NCTESTKEY";
pub const S3_SECRET_KEY: &str = "nc-test-secret";

pub struct TestNode {
    pub handle: Option<ServerHandle>,
    pub base: String,
    /// The S3-compatible API's endpoint.
    pub s3_base: String,
    pub bucket: String,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl TestNode {
    pub fn start(tag: &str) -> TestNode {
        Self::start_with(tag, |_| {})
    }

    pub fn start_with(tag: &str, tweak: impl FnOnce(&mut Config)) -> TestNode {
        init_logging();
        let tmp = tempfile::tempdir().unwrap();
        let bucket = fresh_bucket(tag);
        let mut cfg = test_config(tmp.path(), &bucket);
        tweak(&mut cfg);
        let dir = tmp.path().to_path_buf();
        let handle = nearcache::start(cfg).expect("start node");
        let base = format!("http://{}", handle.addr);
        let s3_base = format!("http://{}", handle.s3_addr);
        TestNode {
            handle: Some(handle),
            base,
            s3_base,
            bucket,
            dir,
            _tmp: Some(tmp),
        }
    }

    /// Stops the node and starts a new one on the same data dir and bucket.
    pub fn restart(&mut self, tweak: impl FnOnce(&mut Config)) {
        self.handle
            .take()
            .unwrap()
            .shutdown()
            .expect("clean shutdown");
        let mut cfg = test_config(&self.dir, &self.bucket);
        tweak(&mut cfg);
        let handle = nearcache::start(cfg).expect("restart node");
        self.base = format!("http://{}", handle.addr);
        self.s3_base = format!("http://{}", handle.s3_addr);
        self.handle = Some(handle);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sum of a metric over all label sets.
    pub fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.metrics_text(), name)
    }

    /// The node's `/metrics` text.
    pub fn metrics_text(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    pub fn s3(&self) -> S3 {
        S3::new(&self.bucket)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.shutdown();
        }
    }
}

/// A native PUT of `body` under `id`, with extra headers.
pub fn put(
    node: &TestNode,
    id: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> reqwest::blocking::Response {
    let mut req = client()
        .post(node.url("/api/v1/put"))
        .header("X-Meta-ID", id)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().unwrap()
}

/// A fresh id from the node.
pub fn new_id(node: &TestNode) -> String {
    client()
        .get(node.url("/api/v1/id"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// A free TCP and UDP port below the kernel's ephemeral range (32768+), so that outgoing
/// connections of other tests cannot take it before a node (re)starts on it.
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    loop {
        let port = rng.gen_range(20_000..32_000);
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
}

pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn client() -> &'static reqwest::blocking::Client {
    static C: OnceLock<reqwest::blocking::Client> = OnceLock::new();
    C.get_or_init(|| {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    })
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

/// An independent S3 client (aws-sdk-s3) on its own runtime, to check what reached S3.
pub struct S3 {
    rt: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3 {
    pub fn new(bucket: &str) -> S3 {
        let t = s3_target();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let creds =
            aws_sdk_s3::config::Credentials::new(&t.access_key, &t.secret_key, None, None, "test");
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(&t.endpoint)
            .region(aws_sdk_s3::config::Region::new(t.region.clone()))
            .credentials_provider(creds)
            .force_path_style(true)
            .build();
        S3 {
            rt,
            client: aws_sdk_s3::Client::from_conf(conf),
            bucket: bucket.to_string(),
        }
    }

    pub fn put(&self, key: &str, body: Vec<u8>, content_type: &str) {
        self.rt
            .block_on(
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .content_type(content_type)
                    .body(body.into())
                    .send(),
            )
            .expect("S3 put");
    }

    /// The object's body and user metadata, or None when S3 says 404.
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, std::collections::HashMap<String, String>)> {
        self.rt.block_on(async {
            match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(o) => {
                    let meta = o.metadata().cloned().unwrap_or_default();
                    let body = o
                        .body
                        .collect()
                        .await
                        .expect("S3 body")
                        .into_bytes()
                        .to_vec();
                    Some((body, meta))
                }
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => None,
                Err(e) => panic!("S3 get {key}: {e:?}"),
            }
        })
    }

    /// Polls until `pred(get(key))` holds or the timeout passes.
    pub fn wait_for(
        &self,
        key: &str,
        timeout: Duration,
        pred: impl Fn(&Option<(Vec<u8>, std::collections::HashMap<String, String>)>) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.get(key)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

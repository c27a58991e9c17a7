//! Clusters of real `nearcache` processes on loopback with the embedded local origin
//! (no S3 needed): for tests of the status page and of draining.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{client, free_port};

pub struct NodeProc {
    child: Option<Child>,
    pub port: u16,
    pub cluster_port: u16,
    pub dir: PathBuf,
}

impl NodeProc {
    /// Starts node `i` under `root`, joining through `seed` (a cluster port), with
    /// `extra` flags and `config` as its TOML file.
    pub fn start(
        root: &Path,
        i: usize,
        seed: Option<u16>,
        extra: &[&str],
        config: &str,
    ) -> NodeProc {
        let dir = root.join(format!("node{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("node.toml");
        std::fs::write(
            &config_path,
            format!("[server]\npin_cores = false\n[cluster]\ngossip_interval_ms = 200\nsync_interval_ms = 200\n{config}"),
        )
        .unwrap();
        let (port, cluster_port) = (free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nearcache"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--s3-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--cluster-listen", &format!("127.0.0.1:{cluster_port}")])
            .args(["--shards", "1"])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("log")).unwrap()));
        if let Some(s) = seed {
            cmd.args(["--join", &format!("127.0.0.1:{s}")]);
        }
        NodeProc {
            child: Some(cmd.spawn().expect("start nearcache")),
            port,
            cluster_port,
            dir,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// The node's id, once it answers.
    pub fn id(&self) -> String {
        let url = self.url("/api/v1/cluster");
        wait_for("the node's cluster view", Duration::from_secs(30), || {
            Some(get_json(&url)?["node_id"].as_str()?.to_string())
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns its status code and how
    /// long it took.
    pub fn sigterm(&mut self, within: Duration) -> (Option<i32>, Duration) {
        let mut c = self.child.take().expect("running");
        let start = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return (st.code(), start.elapsed());
            }
            if start.elapsed() > within {
                let _ = c.kill();
                let _ = c.wait();
                panic!("the node did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `n` nodes that join through the first, and waits until every one sees `n`
/// alive members.
pub fn cluster(root: &Path, n: usize, extra: &[&str], config: &str) -> Vec<NodeProc> {
    let first = NodeProc::start(root, 0, None, extra, config);
    let seed = first.cluster_port;
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(NodeProc::start(root, i, Some(seed), extra, config));
    }
    for node in &nodes {
        let url = node.url("/api/v1/cluster");
        wait_for("every member alive", Duration::from_secs(60), || {
            let v = get_json(&url)?;
            let alive = v["members"]
                .as_array()?
                .iter()
                .filter(|m| m["state"] == "alive")
                .count();
            (alive == n).then_some(())
        });
    }
    nodes
}

pub fn get_json(url: &str) -> Option<serde_json::Value> {
    let r = client().get(url).send().ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().ok()
}

/// Polls `f` until it returns Some; panics once `timeout` has passed.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

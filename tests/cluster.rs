//! A 3-node cluster of real `nearcache` processes on loopback, against a real S3 server:
//! reads from any node, cluster-wide miss coalescing, kill -9 of a node while reading
//! and writing, restart and catch-up, a delete while a node is down that never comes
//! back, and a partition (the per-peer drop switch) that converges after it heals.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nearcache_s3::testutil::{fresh_bucket, s3_target};

/// One node process with fixed ports (so that a restart comes back at the same place).
struct Proc {
    dir: PathBuf,
    port: u16,
    s3_port: u16,
    cluster_port: u16,
    seed: Option<u16>,
    bucket: String,
    replication: usize,
    quorum: usize,
    child: Option<Child>,
    id: String,
}

impl Proc {
    fn new(root: &Path, name: &str, bucket: &str, seed: Option<u16>, r: usize, w: usize) -> Proc {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Proc {
            dir,
            port: free_port(),
            s3_port: free_port(),
            cluster_port: free_port(),
            seed,
            bucket: bucket.to_string(),
            replication: r,
            quorum: w,
            child: None,
            id: String::new(),
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    fn start(&mut self) {
        let t = s3_target();
        let config = self.dir.join("node.toml");
        std::fs::write(
            &config,
            // A short journal: nodes that were away resync from peers' indexes too. Every
            // node-to-node request and datagram is signed with the cluster secret.
            "[store]\njournal_retain = 30\n\n[cluster]\ngossip_interval_ms = 200\nsync_interval_ms = 150\nfault_injection = true\n\
             replica_upload_delay_secs = 5\npeer_timeout_ms = 3000\n\
             secret = \"cluster-test-secret-0123456789abcdef\"\n\n\
             [[s3api.keys]]\naccess_key = \"NCTESTKEY\"\nsecret_key = \"nctestsecret\"\n",
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nearcache"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--shards", "2"])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--s3-endpoint", &t.endpoint, "--s3-region", &t.region])
            .args(["--s3-bucket", &self.bucket])
            .args([
                "--s3-access-key",
                &t.access_key,
                "--s3-secret-key",
                &t.secret_key,
            ])
            .args([
                "--s3-path-style",
                "--s3-create-bucket",
                "--log-level",
                "warn",
            ])
            .args(["--s3-listen", &format!("127.0.0.1:{}", self.s3_port)])
            .args([
                "--cluster-listen",
                &format!("127.0.0.1:{}", self.cluster_port),
            ])
            .args(["--replication-factor", &self.replication.to_string()])
            .args(["--write-quorum", &self.quorum.to_string()]);
        if let Some(seed) = self.seed {
            cmd.args(["--join", &format!("127.0.0.1:{seed}")]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nearcache");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client().get(self.url("/api/v1/cluster")).send() {
                if r.status() == 200 {
                    let v: serde_json::Value = r.json().unwrap();
                    self.id = v["node_id"].as_str().unwrap().to_string();
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                panic!("nearcache exited early ({status})");
            }
            assert!(Instant::now() < deadline, "node did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An S3 SDK client for this node's S3-compatible API.
    fn sdk(&self, rt: &tokio::runtime::Runtime) -> aws_sdk_s3::Client {
        let _guard = rt.enter();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(format!("http://127.0.0.1:{}", self.s3_port))
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "NCTESTKEY",
                "nctestsecret",
                None,
                None,
                "test",
            ))
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn alive_members(&self) -> Vec<String> {
        let Ok(r) = client().get(self.url("/api/v1/cluster")).send() else {
            return vec![];
        };
        let v: serde_json::Value = r.json().unwrap_or_default();
        v["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    // SWIM counts a suspect as a member until it is declared down.
                    .filter(|m| matches!(m["state"].as_str(), Some("alive" | "suspect")))
                    .map(|m| m["id"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn owners(&self, id: &str) -> Vec<String> {
        let v: serde_json::Value = client()
            .get(self.url(&format!("/api/v1/cluster?key={id}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["key"]["owners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect()
    }

    fn block(&self, peer: &str, blocked: bool) {
        let r = client()
            .post(self.url(&format!(
                "/api/v1/cluster/block?peer={peer}&blocked={blocked}"
            )))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    }

    fn metric(&self, name: &str) -> f64 {
        let text = client()
            .get(self.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        metric_sum(&text, name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_members(nodes: &[&Proc], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes.iter().all(|p| p.alive_members().len() == n) {
        if Instant::now() > deadline {
            let views: Vec<String> = nodes
                .iter()
                .map(|p| {
                    client()
                        .get(p.url("/api/v1/cluster"))
                        .send()
                        .and_then(|r| r.text())
                        .unwrap_or_else(|e| e.to_string())
                })
                .collect();
            panic!("timed out waiting for {n} alive members everywhere; views: {views:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn new_id(p: &Proc) -> String {
    client()
        .get(p.url("/api/v1/id"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// PUT through `p`; retried while the cluster reconfigures (503 = quorum not reached yet,
/// 502 = an owner failed mid-request). Returns the node that answered.
fn put(p: &Proc, id: &str, body: &[u8], level: u8) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client()
            .post(p.url("/api/v1/put"))
            .header("X-Meta-ID", id)
            .header("X-Meta-ConsistencyLevel", level.to_string())
            .body(body.to_vec())
            .send();
        match r {
            Ok(r) if r.status() == 200 => {
                return r.headers()["x-nearcache-node"]
                    .to_str()
                    .unwrap()
                    .to_string();
            }
            Ok(r) if r.status().is_server_error() && Instant::now() < deadline => {
                let _ = r.text();
            }
            Err(_) if Instant::now() < deadline => {}
            Ok(r) => panic!(
                "PUT {id} via {}: {} {}",
                p.id,
                r.status(),
                r.text().unwrap()
            ),
            Err(e) => panic!("PUT {id} via {}: {e}", p.id),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET through `p` without read-through: Some((body, serving node, symlink)).
fn get_cached(p: &Proc, id: &str) -> Option<(Vec<u8>, String, bool)> {
    let r = client()
        .get(p.url(&format!("/api/v1/get/{id}")))
        .header("X-Meta-Fetch", "0")
        .send()
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let node = r.headers()["x-nearcache-node"]
        .to_str()
        .unwrap()
        .to_string();
    let symlink = r.headers().get("x-meta-symlink").is_some();
    Some((r.bytes().ok()?.to_vec(), node, symlink))
}

fn status_of(p: &Proc, id: &str) -> u16 {
    client()
        .get(p.url(&format!("/api/v1/get/{id}")))
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn three(tag: &str, r: usize, w: usize) -> (tempfile::TempDir, Vec<Proc>, String) {
    init_logging();
    let tmp = tempfile::tempdir().unwrap();
    let bucket = fresh_bucket(tag);
    let mut a = Proc::new(tmp.path(), "a", &bucket, None, r, w);
    a.start();
    let seed = Some(a.cluster_port);
    let mut b = Proc::new(tmp.path(), "b", &bucket, seed, r, w);
    let mut c = Proc::new(tmp.path(), "c", &bucket, seed, r, w);
    b.start();
    c.start();
    wait_members(&[&a, &b, &c], 3);
    (tmp, vec![a, b, c], bucket)
}

#[test]
fn any_node_serves_any_key_survives_kill9_and_catches_up() {
    let (_tmp, mut nodes, bucket) = three("cluster", 2, 2);
    let ids: Vec<String> = nodes.iter().map(|p| p.id.clone()).collect();

    // Put through A, read through every node: same bytes, the serving node named, and
    // the body marked as a peer's when it came from one.
    let mut objects: HashMap<String, Vec<u8>> = HashMap::new();
    for i in 0..30u64 {
        let id = new_id(&nodes[0]);
        let body = random_bytes(1000 + (i as usize * 997) % 300_000, i);
        put(&nodes[0], &id, &body, 1);
        objects.insert(id, body);
    }
    let mut symlinks = 0;
    for (id, body) in &objects {
        let owners = nodes[0].owners(id);
        assert_eq!(owners.len(), 2);
        for p in &nodes {
            let (got, served_by, symlink) =
                get_cached(p, id).expect("object readable from every node");
            assert_eq!(&got, body, "{id} via {}", p.id);
            assert!(
                owners.contains(&served_by),
                "{id} served by non-owner {served_by}"
            );
            assert_eq!(
                symlink,
                served_by != p.id,
                "X-Meta-Symlink for {id} via {}",
                p.id
            );
            symlinks += symlink as usize;
        }
    }
    assert!(symlinks > 0, "some reads must have crossed nodes");
    // HEAD and a range through every node, proxied or not.
    for (id, body) in objects.iter().take(5) {
        for p in &nodes {
            let r = client()
                .head(p.url(&format!("/api/v1/get/{id}")))
                .send()
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(
                r.headers()["content-length"],
                body.len().to_string().as_str()
            );
            let r = client()
                .get(p.url(&format!("/api/v1/get/{id}")))
                .header("Range", "bytes=10-19")
                .send()
                .unwrap();
            assert_eq!(r.status(), 206);
            assert_eq!(r.bytes().unwrap().to_vec(), body[10..20].to_vec());
            // META: an owner answers from its copy (a non-owner proxies), never the origin.
            let r = client()
                .get(p.url(&format!("/api/v1/meta/{id}")))
                .header("X-Meta-Fetch", "0")
                .send()
                .unwrap();
            assert_eq!(r.status(), 200, "META {id} via {}", p.id);
            let served_by = r.headers()["x-nearcache-node"].to_str().unwrap().to_owned();
            let owners = nodes[0].owners(id);
            assert!(
                owners.contains(&served_by),
                "META {id} served by non-owner {served_by}"
            );
            if owners.contains(&p.id) {
                assert_eq!(served_by, p.id, "an owner proxied META of {id}");
            }
            let v: serde_json::Value = r.json().unwrap();
            assert_eq!(
                (v["size"].as_u64(), &v["cached"]),
                (Some(body.len() as u64), &true.into())
            );
        }
    }

    // The S3-compatible API through any node: writes and deletes go to the owners,
    // reads see the latest acknowledged version from every node.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sdks: Vec<aws_sdk_s3::Client> = nodes.iter().map(|p| p.sdk(&rt)).collect();
    let s3_get = |c: &aws_sdk_s3::Client| -> Option<Vec<u8>> {
        rt.block_on(async {
            let o = c
                .get_object()
                .bucket(&bucket)
                .key("dir/s3 object")
                .send()
                .await
                .ok()?;
            Some(o.body.collect().await.unwrap().into_bytes().to_vec())
        })
    };
    for (writer, body) in [
        (0usize, b"first via A".to_vec()),
        (1, b"second via B".to_vec()),
    ] {
        rt.block_on(
            sdks[writer]
                .put_object()
                .bucket(&bucket)
                .key("dir/s3 object")
                .body(body.clone().into())
                .send(),
        )
        .unwrap();
        for c in &sdks {
            assert_eq!(
                s3_get(c).as_deref(),
                Some(&body[..]),
                "S3 API read after a write via node {writer}"
            );
        }
    }
    rt.block_on(
        sdks[2]
            .delete_object()
            .bucket(&bucket)
            .key("dir/s3 object")
            .send(),
    )
    .unwrap();
    for c in &sdks {
        assert_eq!(s3_get(c), None, "deleted through node C");
    }

    // Level 2: a copy on every node, each serving its own.
    let everywhere = new_id(&nodes[1]);
    put(&nodes[1], &everywhere, b"on every node", 2);
    wait_until("a level-2 copy on every node", 20, || {
        nodes.iter().all(|p| {
            matches!(get_cached(p, &everywhere), Some((b, n, false)) if b == b"on every node" && n == p.id)
        })
    });

    // Concurrent misses for one key on every node: exactly one S3 GET in the cluster.
    let s3 = S3::new(&bucket);
    let cold = new_id(&nodes[0]);
    let cold_body = random_bytes(200_000, 99);
    s3.put(&cold, cold_body.clone(), "application/octet-stream");
    let before: f64 = nodes
        .iter()
        .map(|p| p.metric("nearcache_origin_fetches_total"))
        .sum();
    std::thread::scope(|s| {
        for k in 0..12 {
            let (p, cold, want) = (&nodes[k % 3], &cold, &cold_body);
            s.spawn(move || {
                let r = client()
                    .get(p.url(&format!("/api/v1/get/{cold}")))
                    .send()
                    .unwrap();
                assert_eq!(r.status(), 200);
                assert_eq!(&r.bytes().unwrap().to_vec(), want);
            });
        }
    });
    let after: f64 = nodes
        .iter()
        .map(|p| p.metric("nearcache_origin_fetches_total"))
        .sum();
    assert_eq!(
        after - before,
        1.0,
        "one S3 GET for 12 concurrent cluster-wide misses"
    );

    // An object C owns, deleted while C is down, must never come back.
    let doomed = loop {
        let id = new_id(&nodes[0]);
        if nodes[0].owners(&id).contains(&ids[2]) {
            break id;
        }
    };
    put(&nodes[0], &doomed, b"delete me while C is down", 1);
    assert!(get_cached(&nodes[2], &doomed).is_some());

    // kill -9 C; keep reading and writing through A and B.
    nodes[2].kill9();
    for (id, body) in &objects {
        for p in &nodes[..2] {
            let (got, _, _) = get_cached(p, id).unwrap_or_else(|| panic!("{id} lost with C down"));
            assert_eq!(&got, body);
        }
    }
    // With C down but not yet declared down, a quorum of 2 may not hold: 503, retried.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client()
            .post(nodes[0].url(&format!("/api/v1/delete/{doomed}")))
            .send()
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            r.status() == 503 && Instant::now() < deadline,
            "{}",
            r.text().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_members(&[&nodes[0], &nodes[1]], 2);
    let mut written_while_down = HashMap::new();
    for i in 0..40u64 {
        let id = new_id(&nodes[1]);
        let body = random_bytes(500 + (i as usize * 1311) % 40_000, 1000 + i);
        put(&nodes[(i % 2) as usize], &id, &body, 1);
        written_while_down.insert(id, body);
    }
    for (id, body) in &written_while_down {
        let (got, _, _) = get_cached(&nodes[0], id).expect("written while C was down");
        assert_eq!(&got, body);
    }

    // Restart C: it rejoins and catches up on its own with what it owns.
    nodes[2].start();
    wait_members(&[&nodes[0], &nodes[1], &nodes[2]], 3);
    let c_owned: Vec<&String> = written_while_down
        .keys()
        .filter(|id| nodes[2].owners(id).contains(&ids[2]))
        .collect();
    assert!(!c_owned.is_empty());
    wait_until(
        "C to catch up with writes made while it was down",
        60,
        || {
            c_owned.iter().all(|id| {
            matches!(get_cached(&nodes[2], id), Some((b, node, _)) if node == ids[2] && b == written_while_down[*id])
        })
        },
    );
    // C was away for more than the peers' journals keep (store.journal_retain = 30): it
    // resynced from their indexes for the part it missed.
    assert!(nodes[2].metric("nearcache_cluster_sync_gaps_total") >= 1.0);
    // Bodies up to cluster.sync_inline_max (16 KiB) came batched, larger ones one by one:
    // both ways were taken (sizes 500 to 40,500 bytes).
    assert!(nodes[2].metric("nearcache_cluster_sync_batched_objects_total") >= 1.0);
    assert!(
        nodes[2].metric("nearcache_cluster_sync_received_bytes_total")
            > nodes[2].metric("nearcache_cluster_sync_batched_objects_total") * 16384.0,
        "some bodies larger than sync_inline_max were pulled too"
    );
    // The delete made while C was down wins over C's older copy, everywhere, for good:
    // checked once every node has pulled all its peers' changes (sync lag 0 everywhere).
    wait_until("anti-entropy caught up everywhere", 60, || {
        nodes
            .iter()
            .all(|p| p.metric("nearcache_cluster_sync_lag_changes") == 0.0)
    });
    for p in &nodes {
        assert_eq!(
            status_of(p, &doomed),
            404,
            "deleted object came back via {}",
            p.id
        );
    }
    // Everything from before is still readable through C.
    for (id, body) in objects.iter().take(10) {
        let (got, _, _) = get_cached(&nodes[2], id).expect("readable via C after restart");
        assert_eq!(&got, body);
    }
}

#[test]
fn partition_heals_and_converges_last_writer_wins() {
    // R = 3: every node owns every key, so convergence means every node has everything.
    let (tmp, mut nodes, bucket) = three("partition", 3, 1);
    let ids: Vec<String> = nodes.iter().map(|p| p.id.clone()).collect();
    let contested = new_id(&nodes[0]);
    put(&nodes[0], &contested, b"before the cut", 0);
    wait_until("the first version everywhere", 20, || {
        nodes.iter().all(|p| matches!(get_cached(p, &contested), Some((b, n, _)) if b == b"before the cut" && n == p.id))
    });

    // Cut C off from A and B (C drops both directions of both gossip and HTTP).
    nodes[2].block(&ids[0], true);
    nodes[2].block(&ids[1], true);
    wait_until("C to see A and B gone", 30, || {
        nodes[2].alive_members().len() == 1
    });
    wait_until("A and B to see C gone", 30, || {
        nodes[0].alive_members().len() == 2 && nodes[1].alive_members().len() == 2
    });

    let on_majority = new_id(&nodes[0]);
    put(&nodes[0], &on_majority, b"written on the majority side", 0);
    let on_c = new_id(&nodes[2]);
    put(&nodes[2], &on_c, b"written on the cut-off node", 0);
    put(&nodes[0], &contested, b"older write on A", 0);
    std::thread::sleep(Duration::from_millis(20));
    put(&nodes[2], &contested, b"newer write on C", 0);
    assert!(get_cached(&nodes[0], &on_c).is_none(), "the cut must hold");

    // Heal: everything converges, and the later write wins everywhere.
    nodes[2].block(&ids[0], false);
    nodes[2].block(&ids[1], false);
    wait_members(&[&nodes[0], &nodes[1], &nodes[2]], 3);
    wait_until("convergence after the cut healed", 60, || {
        nodes.iter().all(|p| {
            let local = |id: &str, want: &[u8]| {
                matches!(get_cached(p, id), Some((b, n, _)) if b == want && n == p.id)
            };
            local(&on_majority, b"written on the majority side")
                && local(&on_c, b"written on the cut-off node")
                && local(&contested, b"newer write on C")
        })
    });

    // A new, empty node joins through any member and pulls the keys it now owns (with R = 3
    // of 4 nodes, most of them) from the others, in the background.
    let more: Vec<(String, Vec<u8>)> = (0..10u64)
        .map(|i| {
            let id = new_id(&nodes[0]);
            let body = random_bytes(3000, 500 + i);
            put(&nodes[(i % 3) as usize], &id, &body, 0);
            (id, body)
        })
        .collect();
    let mut d = Proc::new(tmp.path(), "d", &bucket, Some(nodes[1].cluster_port), 3, 1);
    d.start();
    nodes.push(d);
    wait_members(&nodes.iter().collect::<Vec<_>>(), 4);
    let d = &nodes[3];
    let mut keys: Vec<(&str, &[u8])> = vec![
        (&on_majority, b"written on the majority side"),
        (&on_c, b"written on the cut-off node"),
        (&contested, b"newer write on C"),
    ];
    keys.extend(more.iter().map(|(id, b)| (id.as_str(), b.as_slice())));
    let owned: Vec<(&str, &[u8])> = keys
        .iter()
        .copied()
        .filter(|(id, _)| d.owners(id).contains(&d.id))
        .collect();
    assert!(!owned.is_empty(), "R = 3 of 4: the new node owns most keys");
    wait_until("the new node to pull what it owns", 60, || {
        owned.iter().all(
            |(id, want)| matches!(get_cached(d, id), Some((b, n, _)) if b == *want && n == d.id),
        )
    });
    // Every key, owned here or not, reads the same through the new node.
    for (id, want) in keys {
        let r = client()
            .get(d.url(&format!("/api/v1/get/{id}")))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().unwrap().to_vec(), want.to_vec());
    }
}

/// GetObject with partNumber through every node of a cluster: a node that does not own the
/// key has the owner answer (the part's bytes, range and part count), as one node does.
#[test]
fn s3_part_reads_through_any_node() {
    let (_tmp, nodes, bucket) = three("s3-parts-cluster", 1, 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sdks: Vec<aws_sdk_s3::Client> = nodes.iter().map(|p| p.sdk(&rt)).collect();
    let p1 = random_bytes(5 << 20, 31);
    let p2 = random_bytes(4321, 32);
    rt.block_on(async {
        let c = &sdks[0];
        let id = common::sdk::create_upload(c, &bucket, "mp").await;
        let mut parts = Vec::new();
        for (n, p) in [(1, &p1), (2, &p2)] {
            let e = c
                .upload_part()
                .bucket(&bucket)
                .key("mp")
                .upload_id(&id)
                .part_number(n)
                .body(p.clone().into())
                .send()
                .await
                .unwrap()
                .e_tag()
                .unwrap()
                .to_owned();
            parts.push(
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(n)
                    .e_tag(e)
                    .build(),
            );
        }
        c.complete_multipart_upload()
            .bucket(&bucket)
            .key("mp")
            .upload_id(&id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .unwrap();
    });
    let total = p1.len() + p2.len();
    for c in &sdks {
        let (body, range, count) = rt.block_on(async {
            let o = c
                .get_object()
                .bucket(&bucket)
                .key("mp")
                .part_number(2)
                .send()
                .await
                .unwrap();
            let range = o.content_range().map(str::to_owned);
            let count = o.parts_count();
            (
                o.body.collect().await.unwrap().into_bytes().to_vec(),
                range,
                count,
            )
        });
        assert!(body == p2, "part 2's bytes");
        assert_eq!(
            range.as_deref(),
            Some(format!("bytes {}-{}/{total}", p1.len(), total - 1).as_str())
        );
        assert_eq!(count, Some(2));
    }
}

/// Cache operations through a 3-node cluster (R = 2): invalidation by prefix and by key
/// asked of one node and seen on all (level-0 copies listed, not dropped); a prewarm of
/// 10,000 objects spread over the nodes by placement, followed and cancelled through other
/// nodes, then run to the end skipping what the first run fetched; delete by prefix; and
/// the cachenator endpoints through every node.
#[test]
fn cache_operations_through_any_node() {
    use common::ops::{call, multipart, origin_keys, seed_objects, wait_job};
    use reqwest::Method;
    let (_tmp, nodes, bucket) = three("clops", 2, 2);
    let b = &bucket;
    let cget = |p: &Proc, key: &str| {
        let r = client()
            .get(p.url(&format!("/get?bucket={b}&key={key}")))
            .send()
            .unwrap();
        (r.status().as_u16(), r.bytes().unwrap().to_vec())
    };
    let lag_zero = || {
        wait_until("anti-entropy to catch up", 30, || {
            nodes
                .iter()
                .all(|p| p.metric("nearcache_cluster_sync_lag_changes") == 0.0)
        })
    };

    // Invalidation: 30 objects read (and cached) through every node, changed in S3.
    let keys = seed_objects(b, "inv/", 30, 64);
    for (i, k) in keys.iter().enumerate() {
        let (s, body) = cget(&nodes[i % 3], k);
        assert_eq!((s, body.len()), (200, 64));
    }
    for k in &keys {
        common::sdk::Sdk::origin().put(b, k, format!("v2 {k}").into_bytes());
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(cget(&nodes[(i + 1) % 3], k).1.len(), 64, "{k} is cached");
    }
    lag_zero();
    let (s, v) = call(
        Method::POST,
        &nodes[2].url(&format!("/api/v1/invalidate?bucket={b}&prefix=inv/")),
    );
    assert_eq!((s, &v["nodes"]), (200, &3.into()), "{v}");
    assert_eq!(v["failed_nodes"], serde_json::json!([]));
    assert!(
        v["dropped"].as_u64().unwrap() >= 30,
        "every copy, replicas too: {v}"
    );
    for p in &nodes {
        for k in &keys {
            assert_eq!(
                cget(p, k).1,
                format!("v2 {k}").into_bytes(),
                "{k} via {}",
                p.id
            );
        }
    }
    // By key, through another node.
    common::sdk::Sdk::origin().put(b, &keys[3], b"v3".to_vec());
    lag_zero();
    let (_, v) = call(
        Method::POST,
        &nodes[1].url(&format!("/api/v1/invalidate?bucket={b}&key={}", keys[3])),
    );
    assert!(v["dropped"].as_u64().unwrap() >= 1, "{v}");
    for p in &nodes {
        assert_eq!(cget(p, &keys[3]).1, b"v3", "via {}", p.id);
    }
    // A level-0 object is never dropped: listed as pending by every invalidation.
    let id = new_id(&nodes[0]);
    put(&nodes[0], &id, b"only in the cluster", 0);
    for url in [
        format!("/api/v1/invalidate?key={id}"),
        "/api/v1/invalidate?prefix=0".into(),
    ] {
        let (_, v) = call(Method::POST, &nodes[2].url(&url));
        assert_eq!(v["pending"], serde_json::json!([id]), "{url}: {v}");
        assert_eq!(v["dropped"], 0, "{v}");
    }
    for p in &nodes {
        assert_eq!(status_of(p, &id), 200);
    }

    // Delete by prefix, asked of one node.
    let del = seed_objects(b, "del/", 30, 10);
    for (i, k) in del.iter().enumerate().take(9) {
        assert_eq!(cget(&nodes[i % 3], k).0, 200);
    }
    let (s, job) = call(
        Method::POST,
        &nodes[1].url(&format!("/api/v1/jobs/delete?bucket={b}&prefix=del/")),
    );
    assert_eq!(s, 202, "{job}");
    let done = wait_job(
        &nodes[0].base(),
        job["id"].as_str().unwrap(),
        Duration::from_secs(60),
    );
    assert_eq!(
        (&done["state"], &done["deleted"]),
        (&"done".into(), &30.into()),
        "{done}"
    );
    assert!(origin_keys(b, "del/").is_empty());
    for p in &nodes {
        for k in del.iter().take(9) {
            assert_eq!(cget(p, k).0, 404, "{k} via {}", p.id);
        }
    }

    // Prewarm 10,000 objects: progress and cancel through other nodes than the one running it.
    let t = Instant::now();
    seed_objects(b, "pw/", 10_000, 100);
    eprintln!("seeded 10,000 objects in S3 in {:?}", t.elapsed());
    let fetches: Vec<f64> = nodes
        .iter()
        .map(|p| p.metric("nearcache_origin_fetches_total"))
        .collect();
    let (s, job) = call(
        Method::POST,
        &nodes[0].url(&format!("/api/v1/jobs/prewarm?bucket={b}&prefix=pw/")),
    );
    assert_eq!(s, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let t = Instant::now();
    let mut seen = 0;
    wait_until("the prewarm to get going", 120, || {
        let (s, v) = call(Method::GET, &nodes[1].url(&format!("/api/v1/jobs/{id}")));
        assert_eq!(s, 200, "{v}");
        let f = v["fetched"].as_u64().unwrap();
        assert!(f >= seen, "progress never goes back");
        assert!(v["listed"].as_u64().unwrap() >= f);
        seen = f;
        f >= 1000
    });
    let (s, v) = call(Method::DELETE, &nodes[2].url(&format!("/api/v1/jobs/{id}")));
    assert_eq!((s, &v["state"]), (200, &"cancelled".into()), "{v}");
    assert_eq!(v["node"], nodes[0].id.as_str());
    std::thread::sleep(Duration::from_millis(1500));
    let (_, first) = call(Method::GET, &nodes[0].url(&format!("/api/v1/jobs/{id}")));
    let first_fetched = first["fetched"].as_u64().unwrap();
    assert!(first_fetched < 10_000, "{first}");
    eprintln!("cancelled after {:?}: {first}", t.elapsed());
    let (_, all) = call(Method::GET, &nodes[2].url("/api/v1/jobs"));
    assert!(all["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == id.as_str()));

    let (_, job) = call(
        Method::POST,
        &nodes[1].url(&format!("/api/v1/jobs/prewarm?bucket={b}&prefix=pw/")),
    );
    let done = wait_job(
        &nodes[1].base(),
        job["id"].as_str().unwrap(),
        Duration::from_secs(300),
    );
    eprintln!("second prewarm: {done}");
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["listed"], 10_000);
    assert_eq!(done["errors"], 0, "{done}");
    let (f, sk) = (
        done["fetched"].as_u64().unwrap(),
        done["skipped"].as_u64().unwrap(),
    );
    assert_eq!(f + sk, 10_000);
    assert!(
        sk >= first_fetched,
        "copies the first run fetched are fresh: {done}"
    );
    // Spread by placement: every node fetched its share from S3.
    for (p, before) in nodes.iter().zip(&fetches) {
        let n = p.metric("nearcache_origin_fetches_total") - before;
        assert!(n > 1500.0, "{} fetched only {n}", p.id);
    }

    // cachenator endpoints through every node.
    let (ct, body) = multipart(&[
        ("one", b"1".as_slice()),
        ("two", b"22".as_slice()),
        ("three", b"333".as_slice()),
    ]);
    let r = client()
        .post(nodes[2].url(&format!("/upload?bucket={b}&path=up")))
        .header("content-type", ct)
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    // Each file went to its owners: reads through any node find it cached, not in S3.
    let fetched = || -> f64 {
        nodes
            .iter()
            .map(|p| p.metric("nearcache_origin_fetches_total"))
            .sum()
    };
    let before = fetched();
    for p in &nodes {
        for (k, want) in [
            ("up/one", &b"1"[..]),
            ("up/two", b"22"),
            ("up/three", b"333"),
        ] {
            assert_eq!(cget(p, k), (200, want.to_vec()), "{k} via {}", p.id);
        }
    }
    assert_eq!(fetched(), before, "no read went to S3");
    for p in &nodes {
        let (s, v) = call(Method::GET, &p.url(&format!("/list?bucket={b}&prefix=up/")));
        assert_eq!(
            (s, &v["keys"]),
            (200, &serde_json::json!(["up/one", "up/three", "up/two"]))
        );
    }
    let (s, v) = call(
        Method::DELETE,
        &nodes[0].url(&format!("/delete?bucket={b}&key=up/two")),
    );
    assert_eq!(s, 200, "{v}");
    for p in &nodes {
        assert_eq!(cget(p, "up/two").0, 404, "via {}", p.id);
    }
    let (s, v) = call(
        Method::POST,
        &nodes[1].url(&format!("/invalidate?bucket={b}&key=up/one")),
    );
    assert_eq!((s, &v["nodes"]), (200, &3.into()), "{v}");
    assert_eq!(cget(&nodes[0], "up/one"), (200, b"1".to_vec()));
}

/// Near copies (issue 14): a hot object another node owns is kept in memory on the node
/// that serves it, and every write or delete of it is answered only after that copy is
/// gone, so reads through any node still see the newest version at once.
#[test]
fn near_copies_serve_hot_reads_and_never_outlive_a_write() {
    let (_tmp, nodes, _bucket) = three("near", 2, 2);
    let id = new_id(&nodes[0]);
    let owners = nodes[0].owners(&id);
    let by_id = |want: &str| nodes.iter().find(|p| p.id == want).unwrap();
    let (first, second) = (by_id(&owners[0]), by_id(&owners[1]));
    let x = nodes.iter().find(|p| !owners.contains(&p.id)).unwrap();
    let read = |p: &Proc| {
        let r = client()
            .get(p.url(&format!("/api/v1/get/{id}")))
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.bytes().unwrap().to_vec())
    };
    // Reads through X until a near copy answers (the second proxied read fetches one).
    let warm = |want: &[u8]| {
        let hits = x.metric("nearcache_near_hits_total");
        wait_until("a near copy on the non-owner", 20, || {
            assert_eq!(read(x), (200, want.to_vec()));
            x.metric("nearcache_near_hits_total") > hits
        });
    };

    put(first, &id, b"version 1", 1);
    warm(b"version 1");
    assert!(x.metric("nearcache_near_fills_total") >= 1.0);
    assert!(first.metric("nearcache_near_leases_granted_total") >= 1.0);
    // Hot reads stay on X: nothing more is proxied.
    let proxied = x.metric("nearcache_cluster_proxied_requests_total");
    for _ in 0..20 {
        assert_eq!(read(x), (200, b"version 1".to_vec()));
    }
    assert_eq!(
        x.metric("nearcache_cluster_proxied_requests_total"),
        proxied
    );
    assert!(x.metric("nearcache_near_bytes") >= 9.0);

    // A write through the other owner: once it is answered, X serves the new version.
    put(second, &id, b"version 2", 1);
    assert_eq!(read(x), (200, b"version 2".to_vec()));
    assert!(x.metric("nearcache_near_notices_applied_total") >= 1.0);

    // A delete through the first owner: X answers 404 at once.
    warm(b"version 2");
    let r = client()
        .post(first.url(&format!("/api/v1/delete/{id}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    assert_eq!(read(x).0, 404);

    // A write through X itself drops X's own copy before it is forwarded.
    put(first, &id, b"version 3", 1);
    warm(b"version 3");
    put(x, &id, b"version 4", 1);
    assert_eq!(read(x), (200, b"version 4".to_vec()));

    // An invalidation drops near copies too.
    warm(b"version 4");
    let r = client()
        .post(first.url(&format!("/api/v1/invalidate?key={id}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    assert_eq!(x.metric("nearcache_near_bytes"), 0.0);
}

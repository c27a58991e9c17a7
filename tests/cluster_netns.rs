//! Cluster chaos across network namespaces: three real node processes, each in its own
//! network namespace, with one node's wall clock two minutes ahead (libfaketime), a
//! partition made by taking a node's cluster link down (not the in-process drop switch),
//! a kill -9 and restart, writes and deletes throughout. Checks: every acknowledged write
//! (W = 2) is served by every node after the heal, no acknowledged delete comes back, every
//! node converges to the same version of every key, and the hybrid logical clock orders
//! causally related writes despite the skew (a write made after seeing the skewed node's
//! version wins).
//!
//! Each node has two links: a "client" veth to the host (the test talks to its public
//! API over it; it stays up) and a "cluster" veth on a bridge shared by the nodes (gossip
//! and node-to-node HTTP/2; the partition takes it down). Needs root, `ip` (iproute2) and
//! libfaketime (installed with apt-get when missing). The nodes run with a cluster secret
//! and mutual TLS between them, as in production.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, random_bytes};

const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const SKEW: &str = "+120s";
const CLUSTER_SECRET: &str = "netns-chaos-cluster-secret";

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ensure_tools() {
    let need_ip = Command::new("ip").arg("-V").output().is_err();
    let need_faketime = !Path::new(FAKETIME_LIB).exists();
    let mut pkgs = Vec::new();
    if need_ip {
        pkgs.push("iproute2");
    }
    if need_faketime {
        pkgs.push("faketime");
    }
    if pkgs.is_empty() {
        return;
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(&pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        // The package lists may be missing on a fresh machine.
        sh(&["apt-get", "update", "-q"]);
        let mut args = vec!["apt-get", "install", "-y", "-q"];
        args.extend(pkgs.iter().copied());
        sh(&args);
    }
}

/// The namespaces, links and bridge of one test; removed on drop.
struct Net {
    tag: String,
    n: usize,
}

impl Net {
    /// Node i: namespace `<tag>-<i>`; client link 10.<a>.<i>.1 (host) - .2 (node);
    /// cluster address 10.<a>.100.<10+i> on bridge `<tag>b`.
    fn new(n: usize) -> Net {
        let tag = format!("nc{}", std::process::id() % 100_000);
        let net = Net { tag, n };
        let a = net.octet();
        let br = net.bridge();
        sh(&["ip", "link", "add", &br, "type", "bridge"]);
        sh(&["ip", "link", "set", &br, "up"]);
        for i in 0..n {
            let ns = net.ns(i);
            sh(&["ip", "netns", "add", &ns]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            // Client link: host <-> node.
            let (ch, cn) = (format!("{}c{i}", net.tag), format!("{}C{i}", net.tag));
            sh(&[
                "ip", "link", "add", &ch, "type", "veth", "peer", "name", &cn,
            ]);
            sh(&["ip", "link", "set", &cn, "netns", &ns]);
            sh(&["ip", "addr", "add", &format!("10.{a}.{i}.1/24"), "dev", &ch]);
            sh(&["ip", "link", "set", &ch, "up"]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.{a}.{i}.2/24"),
                "dev",
                &cn,
            ]);
            sh(&["ip", "-n", &ns, "link", "set", &cn, "up"]);
            // Cluster link: node <-> bridge.
            let (kh, kn) = (format!("{}k{i}", net.tag), net.cluster_if(i));
            sh(&[
                "ip", "link", "add", &kh, "type", "veth", "peer", "name", &kn,
            ]);
            sh(&["ip", "link", "set", &kh, "master", &br]);
            sh(&["ip", "link", "set", &kh, "up"]);
            sh(&["ip", "link", "set", &kn, "netns", &ns]);
            let addr = format!("{}/24", net.cluster_ip(i));
            sh(&["ip", "-n", &ns, "addr", "add", &addr, "dev", &kn]);
            sh(&["ip", "-n", &ns, "link", "set", &kn, "up"]);
        }
        net
    }

    fn octet(&self) -> u32 {
        // Distinct per test process, away from common private ranges' low numbers.
        200 + std::process::id() % 50
    }
    fn bridge(&self) -> String {
        format!("{}b", self.tag)
    }
    fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }
    fn cluster_if(&self, i: usize) -> String {
        format!("{}K{i}", self.tag)
    }
    fn public_ip(&self, i: usize) -> String {
        format!("10.{}.{i}.2", self.octet())
    }
    fn cluster_ip(&self, i: usize) -> String {
        format!("10.{}.100.{}", self.octet(), 10 + i)
    }

    /// Takes node i's cluster link down (true) or up again.
    fn cut(&self, i: usize, down: bool) {
        let state = if down { "down" } else { "up" };
        sh(&[
            "ip",
            "-n",
            &self.ns(i),
            "link",
            "set",
            &self.cluster_if(i),
            state,
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.n {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}c{i}", self.tag)])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}k{i}", self.tag)])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .stderr(Stdio::null())
            .status();
    }
}

struct Node {
    i: usize,
    dir: PathBuf,
    public: String,
    cluster: String,
    join: Option<String>,
    skewed: bool,
    ns: String,
    child: Option<Child>,
}

impl Node {
    fn url(&self, path: &str) -> String {
        format!("http://{}:8080{path}", self.public)
    }

    fn start(&mut self) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(env!("CARGO_BIN_EXE_nearcache"));
        cmd.arg("serve")
            .args(["--listen", &format!("{}:8080", self.public)])
            .args(["--s3-listen", &format!("{}:9000", self.public)])
            .args(["--cluster-listen", &format!("{}:7000", self.cluster)])
            .args(["--shards", "2"])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--replication-factor", "3", "--write-quorum", "2"])
            .args(["--log-level", "warn"]);
        if let Some(j) = &self.join {
            cmd.args(["--join", j]);
        }
        let cfg = self.dir.join("node.toml");
        // Everything between nodes is authenticated as in production: the cluster secret
        // signs gossip and node-to-node requests, which also run over mutual TLS with
        // certificates from the cluster's own CA (written by the test). Signed messages
        // carry the sender's wall clock: the replay window must cover node 2's skew, or
        // it could never join (which it logs).
        let tls_dir = self.dir.parent().expect("node dirs are in the test dir");
        std::fs::write(
            &cfg,
            format!(
                "[store]\njournal_retain = 50\n\n[cluster]\ngossip_interval_ms = 200\n\
                 sync_interval_ms = 150\npeer_timeout_ms = 2000\nsecret = \"{CLUSTER_SECRET}\"\n\
                 replay_window_secs = 300\n\n\
                 [tls]\ncluster_ca = \"{}\"\ncluster_cert = \"{}\"\ncluster_key = \"{}\"\n",
                tls_dir.join("cluster-ca.crt").display(),
                self.dir.join("node.crt").display(),
                self.dir.join("node.key").display(),
            ),
        )
        .unwrap();
        cmd.arg("--config").arg(&cfg);
        if self.skewed {
            cmd.env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME", SKEW)
                // Timers and timeouts keep real time; only the wall clock is off.
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nearcache in its namespace");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(40);
        while !client()
            .get(self.url("/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .is_ok_and(|r| r.status() == 200)
        {
            if let Ok(Some(s)) = self.child.as_mut().unwrap().try_wait() {
                panic!("node {} exited early ({s})", self.i);
            }
            assert!(Instant::now() < deadline, "node {} did not come up", self.i);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `ip netns exec` execs the node: the child is the node itself.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn alive_members(&self) -> usize {
        self.members_in(&["alive"])
    }

    /// Members in one of `states` in this node's view ("suspect" still counts as a
    /// member for placement until it is declared down).
    fn members_in(&self, states: &[&str]) -> usize {
        client()
            .get(self.url("/api/v1/cluster"))
            .timeout(Duration::from_secs(3))
            .send()
            .ok()
            .and_then(|r| r.json::<serde_json::Value>().ok())
            .and_then(|v| {
                v["members"].as_array().map(|m| {
                    m.iter()
                        .filter(|x| x["state"].as_str().is_some_and(|s| states.contains(&s)))
                        .count()
                })
            })
            .unwrap_or(0)
    }

    /// The local copy of `id` (no read-through, no proxying): Some(body) or None.
    fn local(&self, id: &str) -> Option<Vec<u8>> {
        let r = client()
            .get(self.url(&format!("/api/v1/get/{id}")))
            .header("X-Meta-Fetch", "0")
            .header("X-Meta-Local", "1")
            .timeout(Duration::from_secs(5))
            .send()
            .ok()?;
        (r.status() == 200).then(|| r.bytes().unwrap().to_vec())
    }

    /// The stored version of `id` here: (etag, hlc), None if absent or deleted.
    fn version(&self, id: &str) -> Option<(String, u64)> {
        let v: serde_json::Value = client()
            .get(self.url(&format!("/api/v1/meta/{id}")))
            .header("X-Meta-Fetch", "0")
            .timeout(Duration::from_secs(5))
            .send()
            .ok()?
            .json()
            .ok()?;
        if v["cached"] != true {
            return None;
        }
        Some((v["etag"].as_str()?.to_owned(), v["hlc"].as_u64()?))
    }

    fn put(&self, id: &str, body: &[u8]) -> bool {
        self.put_answer(id, body).0 == 200
    }

    /// A PUT's status and body (0 and the error when it got no answer).
    fn put_answer(&self, id: &str, body: &[u8]) -> (u16, String) {
        match client()
            .post(self.url("/api/v1/put"))
            .header("X-Meta-ID", id)
            .header("X-Meta-ConsistencyLevel", "0")
            .body(body.to_vec())
            .timeout(Duration::from_secs(10))
            .send()
        {
            Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }

    fn delete(&self, id: &str) -> bool {
        client()
            .delete(self.url(&format!("/api/v1/delete/{id}")))
            .header("X-Meta-ConsistencyLevel", "0")
            .timeout(Duration::from_secs(10))
            .send()
            .is_ok_and(|r| r.status() == 200)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn md5_hex(b: &[u8]) -> String {
    common::md5_hex(b)
}

#[test]
fn netns_partition_kill9_and_clock_skew_converge_without_loss() {
    ensure_tools();
    let net = Net::new(3);
    let tmp = tempfile::tempdir().unwrap();
    let seed = format!("{}:7000", net.cluster_ip(0));
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node {
            i,
            dir: tmp.path().join(format!("n{i}")),
            public: net.public_ip(i),
            cluster: net.cluster_ip(i),
            join: (i > 0).then(|| seed.clone()),
            // Node 2's wall clock runs two minutes ahead.
            skewed: i == 2,
            ns: net.ns(i),
            child: None,
        })
        .collect();
    let ca = common::pki::Ca::new("netns cluster CA");
    std::fs::write(tmp.path().join("cluster-ca.crt"), ca.pem()).unwrap();
    for n in &mut nodes {
        std::fs::create_dir_all(&n.dir).unwrap();
        let leaf = ca.leaf(&format!("node {}", n.i));
        std::fs::write(n.dir.join("node.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(n.dir.join("node.key"), &leaf.key_pem).unwrap();
        n.start();
    }
    wait_until("three alive members everywhere", 60, || {
        nodes.iter().all(|n| n.alive_members() == 3)
    });
    let skew_seen = {
        let r = client().get(nodes[2].url("/healthz")).send().unwrap();
        let date = r.headers()["date"].to_str().unwrap().to_owned();
        let t = httpdate::parse_http_date(&date).unwrap();
        t.duration_since(std::time::SystemTime::now())
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    assert!(
        skew_seen >= 100,
        "node 2's clock should be ~120 s ahead: {skew_seen} s"
    );

    // What must hold at the end: key -> Some(md5 of the last acknowledged body) or None
    // (acknowledged delete).
    let mut expect: BTreeMap<String, Option<String>> = BTreeMap::new();
    // A refused write may still have landed (answered with an error after its local copy
    // was durable, like a timeout): either outcome is allowed, but every node must agree.
    let mut ambiguous: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut acked = 0u64;
    let mut refused = 0u64;

    // 1. Causality across skew: the skewed node writes, a normal node sees that version
    //    and overwrites it: the overwrite must win everywhere although its wall clock is
    //    two minutes behind the first writer's.
    let causal = ulid::Ulid::generate().to_string();
    assert!(nodes[2].put(&causal, b"first, from the fast clock"));
    wait_until("the skewed node's write on node 0", 30, || {
        nodes[0].local(&causal).as_deref() == Some(b"first, from the fast clock".as_slice())
    });
    assert!(nodes[0].put(&causal, b"second, after seeing the first"));
    expect.insert(
        causal.clone(),
        Some(md5_hex(b"second, after seeing the first")),
    );
    acked += 2;

    // 2. Writes and deletes from every node.
    let mut keys = Vec::new();
    for i in 0..60u64 {
        let id = ulid::Ulid::generate().to_string();
        let body = random_bytes(2000 + (i as usize) * 37, i);
        let n = &nodes[(i % 3) as usize];
        assert!(n.put(&id, &body), "write {i} before the cut");
        acked += 1;
        expect.insert(id.clone(), Some(md5_hex(&body)));
        keys.push(id);
    }
    for (i, id) in keys.iter().enumerate().take(10) {
        assert!(nodes[i % 3].delete(id));
        expect.insert(id.clone(), None);
        acked += 1;
    }

    // 3. Partition: node 2's cluster link goes down. The majority side keeps taking
    //    writes (two owners alive for W = 2); every acknowledged write must survive the
    //    heal. The cut-off node sees one owner alive: it must refuse W = 2 writes before
    //    storing anything, never acknowledge them with one copy.
    net.cut(2, true);
    wait_until("the majority to see node 2 gone", 60, || {
        nodes[0].alive_members() == 2 && nodes[1].alive_members() == 2
    });
    wait_until("node 2 to see itself alone", 60, || {
        nodes[2].members_in(&["alive", "suspect"]) == 1
    });
    for i in 0..40u64 {
        let id = if i < 10 {
            keys[10 + i as usize].clone()
        } else {
            ulid::Ulid::generate().to_string()
        };
        let body = random_bytes(1500 + i as usize, 1000 + i);
        if nodes[(i % 2) as usize].put(&id, &body) {
            acked += 1;
            expect.insert(id.clone(), Some(md5_hex(&body)));
        } else {
            refused += 1;
            ambiguous.insert(id.clone(), Some(md5_hex(&body)));
        }
        // Deletes on the majority side of keys node 2 still holds.
        if (20..25).contains(&i) {
            let victim = &keys[20 + (i as usize - 20)];
            if nodes[0].delete(victim) {
                acked += 1;
                expect.insert(victim.clone(), None);
            }
        }
    }
    // Writes on the cut-off node: new keys, and keys written before the cut. All are
    // refused up front (503, nothing stored): had they been stored, node 2's clock being
    // ahead would make them win over the majority's versions after the heal.
    let mut quorum_refused = 0u64;
    for i in 0..10u64 {
        let fresh = i >= 3;
        let id = if fresh {
            ulid::Ulid::generate().to_string()
        } else {
            keys[30 + i as usize].clone()
        };
        let body = random_bytes(700, 2000 + i);
        let (status, answer) = nodes[2].put_answer(&id, &body);
        assert_eq!(
            status, 503,
            "a node cut off from the cluster acknowledged (or failed otherwise) a W = 2 write: {answer}"
        );
        assert!(
            answer.contains("quorum") && answer.contains("nothing was stored"),
            "{answer}"
        );
        quorum_refused += 1;
        if fresh {
            // Never stored anywhere.
            expect.insert(id, None);
        }
    }
    // 4. Kill -9 node 1 while the partition lasts; node 0 is alone and must not
    //    acknowledge a W = 2 write (before membership notices, the push to node 1 fails
    //    after the local copy is stored: that copy may spread later). Restart node 1.
    nodes[1].kill9();
    let lone = ulid::Ulid::generate().to_string();
    assert!(
        !nodes[0].put(&lone, b"with one of three nodes up"),
        "one node of three acknowledged a W = 2 write"
    );
    refused += 1;
    ambiguous.insert(lone, Some(md5_hex(b"with one of three nodes up")));
    nodes[1].start();

    // 5. Heal. Every node converges: every acknowledged write served byte for byte, every
    //    acknowledged delete stays deleted, and all nodes hold the same versions.
    net.cut(2, false);
    wait_until("three alive members after the heal", 90, || {
        nodes.iter().all(|n| n.alive_members() == 3)
    });
    let mut last_bad = String::new();
    let converged = {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ambiguous = &ambiguous;
            let bad: Vec<String> = expect
                .iter()
                .flat_map(|(id, want)| {
                    nodes.iter().filter_map(move |n| {
                        let got = n.local(id).map(|b| md5_hex(&b));
                        let allowed = got == *want || ambiguous.get(id) == Some(&got);
                        (!allowed).then(|| format!("node {}: {id}: {got:?} != {want:?}", n.i))
                    })
                })
                .collect();
            if bad.is_empty() {
                break true;
            }
            last_bad = format!("{} wrong, e.g. {}", bad.len(), bad[0]);
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    eprintln!(
        "[netns chaos] {acked} acknowledged writes and deletes, {refused} refused ({} of them landed anyway), {quorum_refused} refused up front by the cut-off node, {} keys checked on 3 nodes, skew {skew_seen} s",
        ambiguous
            .iter()
            .filter(|(id, want)| nodes[0].local(id).map(|b| md5_hex(&b)) == **want)
            .count(),
        expect.len()
    );
    assert!(converged, "no convergence: {last_bad}");
    // The same version (etag and hlc) on every node, refused writes included.
    for id in expect.keys().chain(ambiguous.keys()) {
        let v: Vec<_> = nodes.iter().map(|n| n.version(id)).collect();
        assert!(v.windows(2).all(|w| w[0] == w[1]), "{id}: {v:?}");
    }
    // The causal overwrite won although the skewed node's clock is ahead.
    let (_, hlc_final) = nodes[2].version(&causal).unwrap();
    assert!(hlc_final > 0);
    assert_eq!(
        nodes[2].local(&causal).as_deref(),
        Some(b"second, after seeing the first".as_slice())
    );
    drop(nodes);
    drop(net);
}

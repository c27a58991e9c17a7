//! Process-level tests of the real binary: kill -9 during a write storm and restart
//! (every acknowledged write is served again, byte for byte, and pending uploads reach
//! S3), the data-dir lock, and SIGTERM's graceful exit.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nearcache_s3::testutil::{fresh_bucket, s3_target};

fn spawn_node(dir: &Path, bucket: &str, port: u16) -> Child {
    let t = s3_target();
    Command::new(env!("CARGO_BIN_EXE_nearcache"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--shards",
            "2",
        ])
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--s3-endpoint",
            &t.endpoint,
            "--s3-region",
            &t.region,
            "--s3-bucket",
            bucket,
        ])
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
            // Any free port for the S3 API: the default would collide between nodes.
            "--s3-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nearcache")
}

fn wait_healthy(base: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client().get(format!("{base}/healthz")).send() {
            if r.status() == 200 {
                return;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("nearcache exited early ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "node did not become healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Acked {
    md5: String,
    size: usize,
    level: u8,
}

#[test]
fn kill9_during_write_storm_loses_no_acknowledged_write() {
    init_logging();
    let tmp = tempfile::tempdir().unwrap();
    let bucket = fresh_bucket("crash");
    let acked: Arc<Mutex<HashMap<String, Acked>>> = Default::default();
    for round in 0..3u64 {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = spawn_node(tmp.path(), &bucket, port);
        wait_healthy(&base, &mut child);

        // Everything acknowledged in earlier rounds is still here, without S3.
        verify_all(&base, &acked.lock().unwrap());

        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..6)
            .map(|w| {
                let (stop, acked, base) = (stop.clone(), acked.clone(), base.clone());
                std::thread::spawn(move || {
                    let c = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .unwrap();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let seed = round * 1_000_000 + w * 100_000 + i;
                        let size = match i % 4 {
                            0 => 1,
                            1 => 4096,
                            2 => 70_000,
                            _ => 300_001,
                        };
                        let level = (i % 2) as u8;
                        let body = random_bytes(size, seed);
                        let id = ulid::Ulid::generate().to_string();
                        let r = c
                            .post(format!("{base}/api/v1/put"))
                            .header("X-Meta-ID", &id)
                            .header("X-Meta-ConsistencyLevel", level.to_string())
                            .body(body.clone())
                            .send();
                        match r {
                            Ok(r) if r.status() == 200 => {
                                acked.lock().unwrap().insert(
                                    id,
                                    Acked {
                                        md5: md5_hex(&body),
                                        size,
                                        level,
                                    },
                                );
                            }
                            // The node died under us: this write was never acknowledged.
                            _ => return,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        assert!(
            acked.lock().unwrap().len() > 10 * (round as usize + 1),
            "the storm wrote too little"
        );
    }

    // Final restart: all acknowledged objects byte for byte, and every level-1 object
    // reaches S3 (pending uploads survived the kills).
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_node(tmp.path(), &bucket, port);
    wait_healthy(&base, &mut child);
    let acked = acked.lock().unwrap();
    verify_all(&base, &acked);
    let s3 = S3::new(&bucket);
    let level1: Vec<_> = acked.iter().filter(|(_, a)| a.level >= 1).collect();
    assert!(!level1.is_empty());
    for (id, a) in level1 {
        assert!(
            s3.wait_for(id, Duration::from_secs(60), |o| o
                .as_ref()
                .is_some_and(|(b, _)| md5_hex(b) == a.md5)),
            "pending upload of {id} never reached S3"
        );
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}

fn verify_all(base: &str, acked: &HashMap<String, Acked>) {
    for (id, a) in acked {
        let r = client()
            .get(format!("{base}/api/v1/get/{id}"))
            .header("X-Meta-Fetch", "0")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged object {id} lost");
        assert!(r.headers().get("x-meta-fetched").is_none());
        let body = r.bytes().unwrap();
        assert_eq!(body.len(), a.size, "{id}");
        assert_eq!(md5_hex(&body), a.md5, "{id} differs");
    }
}

#[test]
fn second_process_on_the_same_data_dir_is_refused() {
    init_logging();
    let tmp = tempfile::tempdir().unwrap();
    let bucket = fresh_bucket("lock");
    let port = free_port();
    let mut first = spawn_node(tmp.path(), &bucket, port);
    wait_healthy(&format!("http://127.0.0.1:{port}"), &mut first);
    // Same port too: SO_REUSEPORT alone would let the two share it.
    let second = spawn_node(tmp.path(), &bucket, port);
    let out = second.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another nearcache process"), "{err}");
    assert!(
        err.contains(&first.id().to_string()),
        "names the holder's pid: {err}"
    );
    first.kill().unwrap();
    first.wait().unwrap();
}

#[test]
fn sigterm_finishes_in_flight_work_and_exits_zero() {
    init_logging();
    let tmp = tempfile::tempdir().unwrap();
    let bucket = fresh_bucket("sigterm");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_node(tmp.path(), &bucket, port);
    wait_healthy(&base, &mut child);
    let id = ulid::Ulid::generate().to_string();
    let body = random_bytes(50_000, 77);
    let r = client()
        .post(format!("{base}/api/v1/put"))
        .header("X-Meta-ID", &id)
        .header("X-Meta-ConsistencyLevel", "0")
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // A slow upload in flight when SIGTERM arrives still completes.
    let slow_id = ulid::Ulid::generate().to_string();
    let slow = {
        let (base, slow_id) = (base.clone(), slow_id.clone());
        std::thread::spawn(move || {
            let chunks = (0..10).map(|i| {
                std::thread::sleep(Duration::from_millis(100));
                Ok::<_, std::io::Error>(random_bytes(1000, i))
            });
            let body = reqwest::blocking::Body::new(IterReader::new(chunks));
            client()
                .post(format!("{base}/api/v1/put"))
                .header("X-Meta-ID", &slow_id)
                .header("X-Meta-ConsistencyLevel", "0")
                .body(body)
                .send()
                .map(|r| r.status().as_u16())
        })
    };
    // SIGTERM once the slow PUT is in flight (the /metrics request counts itself too).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = client()
            .get(format!("{base}/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        if metric_sum(&text, "nearcache_inflight_requests") >= 2.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow PUT never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        slow.join().unwrap().unwrap(),
        200,
        "in-flight request finished"
    );

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_node(tmp.path(), &bucket, port);
    wait_healthy(&base, &mut child);
    for (id, size) in [(&id, 50_000), (&slow_id, 10_000)] {
        let r = client()
            .get(format!("{base}/api/v1/get/{id}"))
            .header("X-Meta-Fetch", "0")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().unwrap().len(), size);
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Adapts an iterator of chunks into `Read` (a slow, chunked request body).
struct IterReader<I> {
    it: I,
    cur: Vec<u8>,
    off: usize,
}

impl<I> IterReader<I> {
    fn new(it: I) -> Self {
        IterReader {
            it,
            cur: Vec::new(),
            off: 0,
        }
    }
}

impl<I: Iterator<Item = std::io::Result<Vec<u8>>>> std::io::Read for IterReader<I> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.off == self.cur.len() {
            match self.it.next() {
                Some(c) => {
                    self.cur = c?;
                    self.off = 0;
                }
                None => return Ok(0),
            }
        }
        let n = (self.cur.len() - self.off).min(buf.len());
        buf[..n].copy_from_slice(&self.cur[self.off..self.off + n]);
        self.off += n;
        Ok(n)
    }
}

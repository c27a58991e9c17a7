//! Time bounds of the bridge against origins that accept connections and never answer:
//! a TCP listener that accepts and stays silent, a server that stalls mid-body, and a
//! SIGSTOPped moto. Every operation a client waits on must end within
//! `request_deadline` (asserted generously: < 2x), with a retryable error that says what
//! timed out; GET bodies must fail on `body_idle_timeout`; background operations get
//! their longer per-attempt bound, and still end.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::executor::block_on;
use futures::future::{join_all, BoxFuture, FutureExt};
use nearcache_s3::testutil::{fresh_bucket, s3_config_for, Moto, S3Target};
use nearcache_s3::{
    Bridge, ListParams, ObjectLoc, OriginConfig, OriginDeadlines, OriginError, PutMeta,
};

/// Accepts connections and never writes a byte (reads and discards what comes).
struct SilentServer {
    port: u16,
    _held: Arc<Mutex<Vec<TcpStream>>>,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = Arc::new(Mutex::new(Vec::new()));
        let h = held.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut keep = conn.try_clone().unwrap();
                h.lock().unwrap().push(conn.try_clone().unwrap());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while matches!(keep.read(&mut buf), Ok(n) if n > 0) {}
                });
                let _ = conn.flush();
            }
        });
        SilentServer { port, _held: held }
    }

    fn target(&self) -> S3Target {
        S3Target {
            endpoint: format!("http://127.0.0.1:{}", self.port),
            region: "us-east-1".into(),
            access_key: "test".into(),
            secret_key: "test".into(),
        }
    }
}

/// Answers every request with a 200 head announcing `total` bytes, sends `sent` of them,
/// then stalls (holding the connection open).
fn stalling_server(total: usize, sent: usize) -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match conn.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nETag: \"0123456789abcdef0123456789abcdef\"\r\n\
                 Content-Type: application/octet-stream\r\nLast-Modified: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\n"
            );
            let _ = conn.write_all(resp.as_bytes());
            let _ = conn.write_all(&vec![7u8; sent]);
            let _ = conn.flush();
            held.push(conn);
        }
    });
    port
}

fn config(target: &S3Target, tag: &str) -> OriginConfig {
    let mut cfg = s3_config_for(target, &fresh_bucket(tag));
    // Long per-attempt bounds and several attempts, as in production: only the deadline
    // may end the operations early.
    cfg.max_attempts = 4;
    cfg.initial_backoff = Duration::from_millis(100);
    cfg.connect_timeout = Duration::from_secs(3);
    cfg.operation_timeout = Duration::from_secs(30);
    cfg
}

fn deadlines(request: Duration) -> OriginDeadlines {
    OriginDeadlines {
        request_deadline: request,
        body_idle_timeout: Duration::from_secs(1),
        ..OriginDeadlines::default()
    }
}

fn source_file(dir: &std::path::Path, len: usize) -> PathBuf {
    let p = dir.join("src.bin");
    std::fs::write(&p, vec![42u8; len]).unwrap();
    p
}

type Probe<'a> = (&'static str, BoxFuture<'a, Result<(), OriginError>>);

/// Every client-facing operation once, each as (name, future).
fn all_operations<'a>(b: &'a Bridge, bucket: &str, src: &'a Path) -> Vec<Probe<'a>> {
    let loc = ObjectLoc {
        bucket: bucket.to_owned(),
        key: "k-in".into(),
    };
    let loc2 = loc.clone();
    let loc3 = loc.clone();
    let loc4 = loc.clone();
    let bucket = bucket.to_owned();
    vec![
        ("get", b.get("missing", None).map(|r| r.map(drop)).boxed()),
        ("head", b.head("missing").map(|r| r.map(drop)).boxed()),
        (
            "put_file",
            b.put_file("k", src.to_path_buf(), 0, 1000, PutMeta::default())
                .map(|r| r.map(drop))
                .boxed(),
        ),
        ("delete", b.delete("k").boxed()),
        (
            "get_in",
            async move { b.get_in(&loc, None, None).await.map(drop) }.boxed(),
        ),
        (
            "head_in",
            async move { b.head_in(&loc2, None).await.map(drop) }.boxed(),
        ),
        (
            "put_file_in",
            async move {
                b.put_file_in(&loc3, src.to_path_buf(), 0, 1000, PutMeta::default())
                    .await
                    .map(drop)
            }
            .boxed(),
        ),
        ("delete_in", async move { b.delete_in(&loc4).await }.boxed()),
        (
            "list_objects",
            async move {
                b.list_objects(
                    &bucket,
                    ListParams {
                        max_keys: 10,
                        ..Default::default()
                    },
                )
                .await
                .map(drop)
            }
            .boxed(),
        ),
        (
            "list_buckets",
            b.list_buckets().map(|r| r.map(drop)).boxed(),
        ),
    ]
}

/// Runs all operations at once; each must fail with a retryable timeout within 2x the
/// deadline. Returns the slowest.
fn assert_all_bounded(b: &Bridge, bucket: &str, src: &Path, deadline: Duration) -> Duration {
    let probes = all_operations(b, bucket, src);
    let results = block_on(join_all(probes.into_iter().map(|(name, fut)| async move {
        let t = Instant::now();
        let res = fut.await;
        (name, res, t.elapsed())
    })));
    let mut slowest = Duration::ZERO;
    for (name, res, elapsed) in results {
        println!("{name}: {elapsed:?} -> {res:?}");
        let err = res.expect_err(name);
        assert!(err.is_retryable(), "{name}: {err}");
        assert!(err.is_timeout(), "{name}: not a timeout: {err}");
        let text = err.to_string();
        assert!(
            text.contains("timed out after") && text.contains("request deadline"),
            "{name}: {text}"
        );
        assert!(
            elapsed < deadline * 2,
            "{name} took {elapsed:?} (deadline {deadline:?})"
        );
        slowest = slowest.max(elapsed);
    }
    slowest
}

#[test]
fn silent_origin_every_client_operation_ends_within_the_deadline() {
    let silent = SilentServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = source_file(tmp.path(), 1000);
    let cfg = config(&silent.target(), "silent");
    let deadline = Duration::from_millis(1500);
    let b = Bridge::start_with(cfg, deadlines(deadline)).unwrap();
    let slowest = assert_all_bounded(&b, "silent-bucket", &src, deadline);
    // The deadline, not some earlier failure, ended them.
    assert!(slowest >= deadline.mul_f64(0.9), "slowest {slowest:?}");
    b.shutdown();
}

#[test]
fn stalled_body_fails_on_the_idle_gap() {
    let port = stalling_server(1_000_000, 1000);
    let target = S3Target {
        endpoint: format!("http://127.0.0.1:{port}"),
        region: "us-east-1".into(),
        access_key: "test".into(),
        secret_key: "test".into(),
    };
    let b =
        Bridge::start_with(config(&target, "stall"), deadlines(Duration::from_secs(2))).unwrap();
    block_on(async {
        let mut obj = b.get("obj", None).await.unwrap();
        assert_eq!(obj.meta.size, 1_000_000);
        let mut got = 0usize;
        let mut last = Instant::now();
        let err = loop {
            match obj.body.next_chunk().await {
                Some(Ok(c)) => {
                    got += c.len();
                    last = Instant::now();
                }
                Some(Err(e)) => break e,
                None => panic!("body ended after {got} bytes without an error"),
            }
        };
        let gap = last.elapsed();
        println!("body: {got} bytes, then after {gap:?}: {err}");
        assert_eq!(got, 1000);
        assert!(err.is_retryable() && err.is_timeout(), "{err}");
        assert!(err.to_string().contains("body idle timeout"), "{err}");
        assert!(gap >= Duration::from_millis(900), "{gap:?}");
        assert!(gap < Duration::from_secs(2), "{gap:?}");
    });
    b.shutdown();
}

#[test]
fn background_operations_get_the_longer_attempt_bound_and_still_end() {
    let silent = SilentServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = source_file(tmp.path(), 1000);
    let mut cfg = config(&silent.target(), "background");
    cfg.max_attempts = 2;
    let attempt = Duration::from_secs(1);
    let d = OriginDeadlines {
        request_deadline: Duration::from_millis(300),
        background_attempt_timeout: attempt,
        ..OriginDeadlines::default()
    };
    let b = Bridge::start_with(cfg, d).unwrap();
    let bg = b.background();
    block_on(async {
        for (name, fut) in [
            (
                "put_file",
                bg.put_file("k", src.clone(), 0, 1000, PutMeta::default())
                    .map(|r| r.map(drop))
                    .boxed(),
            ),
            ("delete", bg.delete("k").boxed()),
        ] {
            let t = Instant::now();
            let err = fut.await.expect_err(name);
            let elapsed = t.elapsed();
            println!("background {name}: {elapsed:?}: {err}");
            assert!(err.is_retryable(), "{name}: {err}");
            // Longer than the foreground deadline: both attempts ran to their bound...
            assert!(
                elapsed >= attempt * 2 - Duration::from_millis(100),
                "{name}: {elapsed:?}"
            );
            // ...and no longer than 2x what 2 attempts (plus backoff) may take.
            assert!(elapsed < attempt * 2 * 2, "{name}: {elapsed:?}");
        }
        // The same bridge's foreground handle keeps its short deadline.
        let t = Instant::now();
        let err = b.head("k").await.unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert!(
            t.elapsed() < Duration::from_millis(600),
            "{:?}",
            t.elapsed()
        );
    });
    b.shutdown();
}

#[test]
fn paused_moto_client_operations_end_within_the_deadline_and_recover() {
    let moto = Moto::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let big = 32 << 20;
    let src = source_file(tmp.path(), big);
    let mut cfg = config(&moto.target, "paused");
    cfg.body_channel_chunks = 2;
    let bucket = match &cfg.kind {
        nearcache_s3::OriginKind::S3 { bucket, .. } => bucket.clone(),
        _ => unreachable!(),
    };
    let deadline = Duration::from_secs(2);
    let b = Bridge::start_with(cfg, deadlines(deadline)).unwrap();
    block_on(async {
        b.ensure_bucket().await.unwrap();
        b.put_file("big", src.clone(), 0, big as u64, PutMeta::default())
            .await
            .unwrap();
        // A GET body in flight when the origin stops: fails on the idle gap.
        let mut obj = b.get("big", None).await.unwrap();
        let first = obj.body.next_chunk().await.unwrap().unwrap();
        moto.pause().unwrap();
        let mut got = first.len();
        let mut last = Instant::now();
        let body_err = loop {
            match obj.body.next_chunk().await {
                Some(Ok(c)) => {
                    got += c.len();
                    last = Instant::now();
                }
                Some(Err(e)) => break Some(e),
                None => break None,
            }
        };
        let gap = last.elapsed();
        println!("body during pause: {got} of {big} bytes, then after {gap:?}: {body_err:?}");
        let body_err = body_err.expect("the body must not end cleanly while moto is stopped");
        assert!(got < big);
        assert!(body_err.is_timeout(), "{body_err}");
        assert!(gap < Duration::from_secs(2), "{gap:?}");
    });
    let slowest = assert_all_bounded(&b, &bucket, &src, deadline);
    println!("while paused: slowest operation {slowest:?} (deadline {deadline:?})");
    moto.resume().unwrap();
    block_on(async {
        let t = Instant::now();
        let meta = b.head("big").await.unwrap();
        assert_eq!(meta.size, big as u64);
        println!("after resume: HEAD answered in {:?}", t.elapsed());
    });
    b.shutdown();
}

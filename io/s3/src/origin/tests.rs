//! Unit tests of the bridge over the local-directory origin, driven from a plain thread
//! with `futures::executor::block_on` (no runtime on the caller's side).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::executor::block_on;
use md5::{Digest, Md5};

use super::local::encode_key;
use crate::{Bridge, OriginConfig, OriginError, OriginKind, PutMeta};

fn config(dir: &Path) -> OriginConfig {
    OriginConfig {
        kind: OriginKind::Local {
            dir: dir.to_owned(),
        },
        prefix: String::new(),
        max_attempts: 3,
        initial_backoff: Duration::from_millis(1),
        connect_timeout: Duration::from_secs(1),
        operation_timeout: Duration::from_secs(5),
        threads: 2,
        body_channel_chunks: 2,
        inject_failure_rate: 0.0,
        ca_bundle: None,
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
}

fn source_file(dir: &Path, data: &[u8]) -> PathBuf {
    let p = dir.join("source.bin");
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(data).unwrap();
    p
}

async fn read_all(
    bridge: &Bridge,
    key: &str,
    range: Option<(u64, u64)>,
) -> Result<(Vec<u8>, usize), OriginError> {
    let mut obj = bridge.get(key, range).await?;
    let mut out = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = obj.body.next_chunk().await {
        out.extend_from_slice(&chunk?);
        chunks += 1;
    }
    assert_eq!(out.len() as u64, obj.range.1 - obj.range.0);
    Ok((out, chunks))
}

#[test]
fn key_encoding_stays_inside_dir() {
    for key in ["../x", "a/b", "..", ".", "/abs/path", "a\0b", "%41", "ü"] {
        let enc = encode_key(key);
        assert!(
            !enc.contains('/') && !enc.contains('\0'),
            "{key:?} -> {enc:?}"
        );
        assert_ne!(enc, "..");
    }
    assert_ne!(encode_key("a/b"), encode_key("a%2Fb"));
    let long = "k/".repeat(200);
    let enc = encode_key(&long);
    assert!(enc.starts_with('~') && enc.len() < 64);
}

#[test]
fn put_get_head_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let origin_dir = tmp.path().join("origin");
    let data = pattern(1_000_000);
    let src = source_file(tmp.path(), &data);
    let bridge = Bridge::start(config(&origin_dir)).unwrap();
    assert!(bridge.describe().contains("local origin at"));
    block_on(async {
        bridge.ensure_bucket().await.unwrap();
        // Upload bytes [1000, 1000 + 600_000) of the file.
        let body = &data[1000..601_000];
        let md5_hex = hex::encode(Md5::digest(body));
        let mut user_meta = BTreeMap::new();
        user_meta.insert("origin-name".to_owned(), "test".to_owned());
        let meta = PutMeta {
            content_type: Some("application/x-test".into()),
            user_meta: user_meta.clone(),
            md5_hex: Some(md5_hex.clone()),
            ..Default::default()
        };
        let put = bridge
            .put_file("dir/obj", src.clone(), 1000, 600_000, meta)
            .await
            .unwrap();
        assert_eq!(put.etag, md5_hex);

        let head = bridge.head("dir/obj").await.unwrap();
        assert_eq!(head.size, 600_000);
        assert_eq!(head.etag, md5_hex);
        assert_eq!(head.content_type.as_deref(), Some("application/x-test"));
        assert_eq!(head.user_meta, user_meta);
        assert!(head.last_modified_ms > 0);

        let (all, chunks) = read_all(&bridge, "dir/obj", None).await.unwrap();
        assert_eq!(all, body);
        assert!(chunks >= 4, "streamed in chunks, got {chunks}");

        let (part, _) = read_all(&bridge, "dir/obj", Some((10, 300_010)))
            .await
            .unwrap();
        assert_eq!(part, &body[10..300_010]);
        // A range past the end is clipped, as in S3.
        let obj = bridge
            .get("dir/obj", Some((599_990, 700_000)))
            .await
            .unwrap();
        assert_eq!(obj.range, (599_990, 600_000));
        assert_eq!(obj.meta.size, 600_000);
        drop(obj);
        let (tail, _) = read_all(&bridge, "dir/obj", Some((599_990, 700_000)))
            .await
            .unwrap();
        assert_eq!(tail, &body[599_990..]);

        assert!(matches!(
            bridge.get("dir/obj", Some((600_000, 600_001))).await,
            Err(OriginError::InvalidRange)
        ));
        assert!(matches!(
            bridge.get("dir/obj", Some((5, 5))).await,
            Err(OriginError::InvalidRange)
        ));

        // Dropping a body early stops the download without trouble.
        let mut obj = bridge.get("dir/obj", None).await.unwrap();
        obj.body.next_chunk().await.unwrap().unwrap();
        drop(obj);

        bridge.delete("dir/obj").await.unwrap();
        bridge.delete("dir/obj").await.unwrap();
        assert!(matches!(
            bridge.get("dir/obj", None).await,
            Err(OriginError::NotFound)
        ));
        assert!(matches!(
            bridge.head("dir/obj").await,
            Err(OriginError::NotFound)
        ));
    });
    let stats = bridge.stats();
    assert!(stats.not_found.load(Ordering::Relaxed) >= 2);
    assert!(stats.bytes_in.load(Ordering::Relaxed) >= 600_000);
    assert_eq!(stats.bytes_out.load(Ordering::Relaxed), 600_000);
    let buckets: u64 = stats
        .latency_buckets
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .sum();
    assert_eq!(buckets, stats.latency_count.load(Ordering::Relaxed));
    bridge.shutdown();
    bridge.shutdown();
    assert!(matches!(
        block_on(bridge.head("x")),
        Err(OriginError::Closed)
    ));
}

#[test]
fn bad_digest_and_short_source_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source_file(tmp.path(), &pattern(100));
    let bridge = Bridge::start(config(&tmp.path().join("origin"))).unwrap();
    block_on(async {
        let meta = PutMeta {
            md5_hex: Some("00".repeat(16)),
            ..Default::default()
        };
        let err = bridge
            .put_file("k", src.clone(), 0, 100, meta)
            .await
            .unwrap_err();
        assert!(matches!(err, OriginError::Rejected(_)), "{err:?}");
        let err = bridge
            .put_file("k", src.clone(), 50, 100, PutMeta::default())
            .await
            .unwrap_err();
        assert!(matches!(err, OriginError::Rejected(_)), "{err:?}");
        assert!(matches!(bridge.head("k").await, Err(OriginError::NotFound)));
        // An empty object.
        bridge
            .put_file("empty", src, 0, 0, PutMeta::default())
            .await
            .unwrap();
        let (body, _) = read_all(&bridge, "empty", None).await.unwrap();
        assert!(body.is_empty());
        // A body in memory (a small object kept in a shard's journal), digest checked.
        let b = bytes::Bytes::from(pattern(700));
        let md5 = hex::encode(<md5::Md5 as md5::Digest>::digest(&b));
        let meta = PutMeta {
            md5_hex: Some(md5.clone()),
            ..Default::default()
        };
        let put = bridge
            .put("mem", crate::PutSource::Bytes(b.clone()), meta)
            .await
            .unwrap();
        assert_eq!(put.etag.trim_matches('"'), md5);
        let (body, _) = read_all(&bridge, "mem", None).await.unwrap();
        assert_eq!(body, b);
        let meta = PutMeta {
            md5_hex: Some("00".repeat(16)),
            ..Default::default()
        };
        let err = bridge
            .put("mem2", crate::PutSource::Bytes(b), meta)
            .await
            .unwrap_err();
        assert!(matches!(err, OriginError::Rejected(_)), "{err:?}");
    });
    // No temp files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("origin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("t-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    bridge.shutdown();
}

#[test]
fn keys_cannot_escape_and_prefix_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let origin_dir = tmp.path().join("a").join("origin");
    let src = source_file(tmp.path(), b"hello");
    let mut cfg = config(&origin_dir);
    cfg.prefix = "../p/".into();
    let bridge = Bridge::start(cfg).unwrap();
    block_on(async {
        for key in ["../x", "a/b", "../../etc/passwd", ".."] {
            bridge
                .put_file(key, src.clone(), 0, 5, PutMeta::default())
                .await
                .unwrap();
            let (body, _) = read_all(&bridge, key, None).await.unwrap();
            assert_eq!(body, b"hello");
        }
        assert!(matches!(
            bridge.head("a%2Fb").await,
            Err(OriginError::NotFound)
        ));
    });
    // Everything is inside the origin dir, nothing beside it.
    let outside: Vec<_> = std::fs::read_dir(tmp.path().join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, vec![std::ffi::OsString::from("origin")]);
    assert_eq!(std::fs::read_dir(&origin_dir).unwrap().count(), 8);
    bridge.shutdown();
}

#[test]
fn injected_failures_are_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source_file(tmp.path(), b"retry me");
    let mut cfg = config(&tmp.path().join("origin"));
    cfg.inject_failure_rate = 0.5;
    cfg.max_attempts = 30;
    let bridge = Bridge::start(cfg).unwrap();
    block_on(async {
        for i in 0..20 {
            let key = format!("k{i}");
            bridge
                .put_file(&key, src.clone(), 0, 8, PutMeta::default())
                .await
                .unwrap();
            let (body, _) = read_all(&bridge, &key, None).await.unwrap();
            assert_eq!(body, b"retry me");
        }
    });
    let stats = bridge.stats();
    let injected = stats.injected_failures.load(Ordering::Relaxed);
    assert!(injected > 0);
    assert_eq!(stats.retries.load(Ordering::Relaxed), injected);
    assert_eq!(stats.errors.load(Ordering::Relaxed), 0);
    bridge.shutdown();
}

#[test]
fn injected_failures_exhaust_retries() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source_file(tmp.path(), b"x");
    let mut cfg = config(&tmp.path().join("origin"));
    cfg.inject_failure_rate = 1.0;
    cfg.max_attempts = 4;
    let bridge = Bridge::start(cfg).unwrap();
    let err = block_on(bridge.put_file("k", src, 0, 1, PutMeta::default())).unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(err.to_string(), "origin unavailable: injected failure");
    let stats = bridge.stats();
    assert_eq!(stats.injected_failures.load(Ordering::Relaxed), 4);
    assert_eq!(stats.retries.load(Ordering::Relaxed), 3);
    assert_eq!(stats.errors.load(Ordering::Relaxed), 1);
    assert_eq!(stats.requests_put.load(Ordering::Relaxed), 1);
    bridge.shutdown();
}

#[test]
fn works_from_a_tokio_runtime_and_many_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source_file(tmp.path(), &pattern(4096));
    let bridge = Bridge::start(config(&tmp.path().join("origin"))).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        bridge
            .put_file("t", src, 0, 4096, PutMeta::default())
            .await
            .unwrap();
        let (body, _) = read_all(&bridge, "t", None).await.unwrap();
        assert_eq!(body, pattern(4096));
    });
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let b = bridge.clone();
            std::thread::spawn(move || block_on(b.head("t")).unwrap().size)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 4096);
    }
    bridge.shutdown();
}

#[test]
fn shutdown_does_not_hang_on_an_unread_body() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pattern(4 << 20);
    let src = source_file(tmp.path(), &data);
    let mut cfg = config(&tmp.path().join("origin"));
    cfg.threads = 1;
    let bridge = Bridge::start(cfg).unwrap();
    let mut obj = block_on(async {
        bridge
            .put_file("big", src, 0, data.len() as u64, PutMeta::default())
            .await
            .unwrap();
        let mut obj = bridge.get("big", None).await.unwrap();
        obj.body.next_chunk().await.unwrap().unwrap();
        obj
    });
    let start = std::time::Instant::now();
    bridge.shutdown();
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "shutdown took {:?}",
        start.elapsed()
    );
    // The held body ends without claiming to be whole.
    let mut got = 0;
    let mut ended_with_error = false;
    while let Some(chunk) = block_on(obj.body.next_chunk()) {
        match chunk {
            Ok(c) => got += c.len(),
            Err(e) => {
                assert!(matches!(e, OriginError::Closed), "{e:?}");
                ended_with_error = true;
            }
        }
    }
    assert!(ended_with_error || got + 128 * 1024 < data.len());
}

/// An S3 endpoint that answers every request with `head` and `body`, then closes the
/// connection (one response per connection).
fn scripted_s3(head: String, body: Vec<u8>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (head, body) = (head.clone(), body.clone());
            std::thread::spawn(move || {
                use std::io::Read;
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                // Head and body in one write: the bridge finds the body's first bytes
                // already there with the head.
                let mut out = head.into_bytes();
                out.extend_from_slice(&body);
                let _ = conn.write_all(&out);
            });
        }
    });
    format!("http://{addr}")
}

fn s3_config(endpoint: String) -> OriginConfig {
    OriginConfig {
        kind: OriginKind::S3 {
            endpoint: Some(endpoint),
            region: "us-east-1".into(),
            bucket: "b".into(),
            access_key: Some("test".into()),
            secret_key: Some("test".into()),
            path_style: true,
        },
        ..config(Path::new("/nonexistent"))
    }
}

/// A body cut short after the head (here: with the head, the case the bridge hands the
/// shard together) never reads as whole: the stream ends with an error.
#[test]
fn a_body_cut_short_with_its_head_ends_in_an_error() {
    let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: \"abc\"\r\n\
                Last-Modified: Wed, 02 Dec 2026 00:00:00 GMT\r\nConnection: close\r\n\r\n";
    let bridge = Bridge::start(s3_config(scripted_s3(head.into(), pattern(100)))).unwrap();
    let (got, failed) = block_on(async {
        let mut obj = bridge.get("k", None).await.unwrap();
        assert_eq!(obj.meta.size, 1000);
        let (mut got, mut failed) = (0, false);
        while let Some(chunk) = obj.body.next_chunk().await {
            match chunk {
                Ok(c) => got += c.len(),
                Err(_) => failed = true,
            }
        }
        (got, failed)
    });
    assert!(
        failed,
        "the short body ended without an error ({got} bytes)"
    );
    assert!(got < 1000);
    bridge.shutdown();
}

/// A whole small body that arrives with its head is handed over complete.
#[test]
fn a_body_that_came_with_its_head_is_whole() {
    let body = pattern(3000);
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"abc\"\r\n\
         Last-Modified: Wed, 02 Dec 2026 00:00:00 GMT\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let bridge = Bridge::start(s3_config(scripted_s3(head, body.clone()))).unwrap();
    let got = block_on(async {
        let mut obj = bridge.get("k", None).await.unwrap();
        let mut got = Vec::new();
        while let Some(chunk) = obj.body.next_chunk().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        got
    });
    assert_eq!(got, body);
    bridge.shutdown();
}

//! The bridge against a real S3 server: moto started by `nearcache_s3::testutil`, or the
//! server named by `NEARCACHE_TEST_S3_ENDPOINT` (e.g. Garage). Driven with
//! `futures::executor::block_on`, as a shard on a non-tokio runtime would.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::executor::block_on;
use md5::{Digest, Md5};
use nearcache_s3::testutil::{fresh_bucket, s3_config};
use nearcache_s3::{Bridge, OriginConfig, OriginError, OriginKind, PutMeta};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 + i / 4093) as u8).collect()
}

fn source_file(dir: &Path, data: &[u8]) -> PathBuf {
    let p = dir.join("source.bin");
    std::fs::File::create(&p).unwrap().write_all(data).unwrap();
    p
}

/// A bridge on a fresh, created bucket.
fn bridge(tag: &str) -> Bridge {
    bridge_with(s3_config(&fresh_bucket(tag)))
}

fn bridge_with(cfg: OriginConfig) -> Bridge {
    let b = Bridge::start(cfg).unwrap();
    block_on(b.ensure_bucket()).unwrap();
    // Twice: an existing bucket is fine.
    block_on(b.ensure_bucket()).unwrap();
    b
}

async fn put(b: &Bridge, key: &str, src: &Path, offset: u64, len: u64) {
    b.put_file(key, src.to_owned(), offset, len, PutMeta::default())
        .await
        .unwrap();
}

#[test]
fn streams_a_large_object_in_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pattern(8 << 20);
    let src = source_file(tmp.path(), &data);
    let b = bridge("stream");
    block_on(async {
        let md5_hex = hex::encode(Md5::digest(&data));
        let meta = PutMeta {
            md5_hex: Some(md5_hex.clone()),
            ..Default::default()
        };
        let res = b
            .put_file("big/object", src.clone(), 0, data.len() as u64, meta)
            .await
            .unwrap();
        assert_eq!(res.etag, md5_hex);

        let mut obj = b.get("big/object", None).await.unwrap();
        assert_eq!(obj.meta.size, data.len() as u64);
        assert_eq!(obj.range, (0, data.len() as u64));
        assert_eq!(obj.meta.etag, md5_hex);
        let mut got = Vec::with_capacity(data.len());
        let mut chunks = 0;
        while let Some(chunk) = obj.body.next_chunk().await {
            got.extend_from_slice(&chunk.unwrap());
            chunks += 1;
        }
        assert!(chunks > 1, "body arrived in {chunks} chunk(s)");
        assert_eq!(got.len(), data.len());
        assert!(got == data);

        // Dropping a body part way stops the download; the bridge keeps working.
        let mut obj = b.get("big/object", None).await.unwrap();
        obj.body.next_chunk().await.unwrap().unwrap();
        drop(obj);
        assert_eq!(b.head("big/object").await.unwrap().size, data.len() as u64);
    });
    assert!(b.stats().bytes_in.load(Ordering::Relaxed) >= data.len() as u64);
    b.shutdown();
}

#[test]
fn ranged_get_and_invalid_range() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pattern(100_000);
    let src = source_file(tmp.path(), &data);
    let b = bridge("range");
    block_on(async {
        put(&b, "r", &src, 0, data.len() as u64).await;
        let mut obj = b.get("r", Some((1000, 51_000))).await.unwrap();
        assert_eq!(obj.range, (1000, 51_000));
        assert_eq!(obj.meta.size, 100_000);
        let mut got = Vec::new();
        while let Some(c) = obj.body.next_chunk().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert!(got == data[1000..51_000]);

        // The last byte, and a range running past the end (clipped by the server).
        let obj = b.get("r", Some((99_999, 200_000))).await.unwrap();
        assert_eq!(obj.range, (99_999, 100_000));

        let err = b.get("r", Some((100_000, 100_010))).await.err().unwrap();
        assert!(matches!(err, OriginError::InvalidRange), "{err:?}");
    });
    b.shutdown();
}

#[test]
fn missing_objects_are_not_found() {
    let b = bridge("missing");
    block_on(async {
        assert!(matches!(
            b.get("nope", None).await.err().unwrap(),
            OriginError::NotFound
        ));
        assert!(matches!(
            b.get("nope", Some((0, 10))).await.err().unwrap(),
            OriginError::NotFound
        ));
        assert!(matches!(
            b.head("nope").await.err().unwrap(),
            OriginError::NotFound
        ));
        b.delete("nope").await.unwrap();
    });
    assert_eq!(b.stats().not_found.load(Ordering::Relaxed), 3);
    assert_eq!(b.stats().errors.load(Ordering::Relaxed), 0);
    b.shutdown();
}

#[test]
fn put_with_offset_metadata_and_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let data = pattern(300_000);
    let src = source_file(tmp.path(), &data);
    let mut cfg = s3_config(&fresh_bucket("put"));
    cfg.prefix = "pre/".into();
    let b = bridge_with(cfg);
    block_on(async {
        let mut user_meta = BTreeMap::new();
        user_meta.insert("nearcache-origin".to_owned(), "node-1".to_owned());
        user_meta.insert("sha".to_owned(), "abc".to_owned());
        let meta = PutMeta {
            content_type: Some("text/x-test".into()),
            user_meta: user_meta.clone(),
            md5_hex: Some(hex::encode(Md5::digest(&data[1234..201_234]))),
            ..Default::default()
        };
        let put = b
            .put_file("a/b c", src.clone(), 1234, 200_000, meta)
            .await
            .unwrap();
        assert!(!put.etag.contains('"') && !put.etag.is_empty());

        let head = b.head("a/b c").await.unwrap();
        assert_eq!(head.size, 200_000);
        assert_eq!(head.etag, put.etag);
        assert_eq!(head.content_type.as_deref(), Some("text/x-test"));
        assert_eq!(head.user_meta, user_meta);
        assert!(head.last_modified_ms > 1_600_000_000_000);

        let mut obj = b.get("a/b c", None).await.unwrap();
        assert_eq!(obj.meta.user_meta, user_meta);
        let mut got = Vec::new();
        while let Some(c) = obj.body.next_chunk().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert!(got == data[1234..201_234]);

        b.delete("a/b c").await.unwrap();
        assert!(matches!(
            b.head("a/b c").await.err().unwrap(),
            OriginError::NotFound
        ));
    });
    b.shutdown();
}

#[test]
fn prefix_is_prepended() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source_file(tmp.path(), b"prefixed");
    let bucket = fresh_bucket("prefix");
    let mut cfg = s3_config(&bucket);
    cfg.prefix = "p1/".into();
    let with_prefix = bridge_with(cfg);
    let without = bridge_with(s3_config(&bucket));
    block_on(async {
        put(&with_prefix, "k", &src, 0, 8).await;
        assert_eq!(without.head("p1/k").await.unwrap().size, 8);
        assert!(matches!(
            without.head("k").await.err().unwrap(),
            OriginError::NotFound
        ));
    });
    with_prefix.shutdown();
    without.shutdown();
}

#[test]
fn injected_failures_are_retried_against_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let src = source_file(tmp.path(), b"0123456789");
    let mut cfg = s3_config(&fresh_bucket("inject"));
    cfg.max_attempts = 40;
    cfg.initial_backoff = Duration::from_millis(1);
    let b = bridge_with(cfg.clone());
    b.shutdown();
    cfg.inject_failure_rate = 0.5;
    // This test is about retries, not deadlines: 40 attempts at a 50 % failure rate may
    // take longer than the default 10 s request deadline on a loaded machine.
    let deadlines = nearcache_s3::OriginDeadlines {
        request_deadline: Duration::from_secs(300),
        ..Default::default()
    };
    let b = Bridge::start_with(cfg, deadlines).unwrap();
    block_on(async {
        for i in 0..10 {
            put(&b, &format!("k{i}"), &src, 0, 10).await;
            assert_eq!(b.head(&format!("k{i}")).await.unwrap().size, 10);
        }
    });
    assert!(b.stats().injected_failures.load(Ordering::Relaxed) > 0);
    assert_eq!(b.stats().errors.load(Ordering::Relaxed), 0);
    b.shutdown();
}

#[test]
fn unreachable_endpoint_is_unavailable_after_bounded_retries() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = s3_config("unreachable");
    if let OriginKind::S3 { endpoint, .. } = &mut cfg.kind {
        *endpoint = Some(format!("http://127.0.0.1:{port}"));
    }
    cfg.max_attempts = 3;
    cfg.initial_backoff = Duration::from_millis(50);
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.operation_timeout = Duration::from_secs(1);
    let b = Bridge::start(cfg).unwrap();
    let start = Instant::now();
    let err = block_on(b.head("k")).unwrap_err();
    let elapsed = start.elapsed();
    assert!(matches!(err, OriginError::Unavailable(_)), "{err:?}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    let err = block_on(b.get("k", None)).err().unwrap();
    assert!(err.is_retryable(), "{err:?}");
    let stats = b.stats();
    assert_eq!(
        stats.retries.load(Ordering::Relaxed),
        4,
        "SDK retries counted"
    );
    assert_eq!(stats.errors.load(Ordering::Relaxed), 2);
    b.shutdown();
}

/// What a PUT sends, seen by a one-shot fake server: Content-MD5, metadata, content type,
/// and the exact byte range of the file; the ETag comes back unquoted.
#[test]
fn put_sends_md5_metadata_and_range() {
    use std::io::{BufRead, BufReader, Read};
    let tmp = tempfile::tempdir().unwrap();
    let data = pattern(50_000);
    let src = source_file(tmp.path(), &data);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(conn);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push(line.trim_end().to_owned());
        }
        let len: usize = head
            .iter()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap();
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let mut conn = reader.into_inner();
        conn.write_all(b"HTTP/1.1 200 OK\r\nETag: \"fake-etag\"\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        (head, body)
    });
    let mut cfg = s3_config("fake");
    if let OriginKind::S3 { endpoint, .. } = &mut cfg.kind {
        *endpoint = Some(format!("http://127.0.0.1:{port}"));
    }
    cfg.max_attempts = 1;
    let b = Bridge::start(cfg).unwrap();
    let part = &data[100..30_100];
    let digest = Md5::digest(part);
    let mut user_meta = BTreeMap::new();
    user_meta.insert("k1".to_owned(), "v1".to_owned());
    let meta = PutMeta {
        content_type: Some("application/x-fake".into()),
        user_meta,
        md5_hex: Some(hex::encode(digest)),
        ..Default::default()
    };
    let res = block_on(b.put_file("obj", src, 100, 30_000, meta)).unwrap();
    assert_eq!(res.etag, "fake-etag");
    let (head, body) = server.join().unwrap();
    let header = |name: &str| {
        head.iter()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no {name} in {head:#?}"))
    };
    assert!(head[0].starts_with("PUT /fake/obj"), "{}", head[0]);
    assert_eq!(
        header("content-md5"),
        aws_smithy_types::base64::encode(digest)
    );
    assert_eq!(header("x-amz-meta-k1"), "v1");
    assert_eq!(header("content-type"), "application/x-fake");
    assert!(body == part);
    b.shutdown();
}

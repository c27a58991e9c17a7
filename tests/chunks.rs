//! Large objects and slow origins against a real S3 server (moto): a range of a large
//! object moves only the chunks it covers (counted in origin body bytes), concurrent
//! ranges of one chunk make one origin GET, a full GET is byte-identical and fetches
//! chunks in parallel, a changed object is served new after its TTL (never a mix of
//! versions), a slow origin GET is hedged, and a large level-1 write reaches S3 as a
//! multipart upload.
//!
//! The large object here is 64 MiB in 4 MiB chunks to keep CI short; the code paths are
//! the same for 1 GiB in 8 MiB chunks (see bench/results/ for numbers at that size).

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_s3::presigning::PresigningConfig;
use common::sdk::Sdk;
use common::*;
use nearcache::config::{FreshnessRule, Size};
use nearcache_s3::testutil::{fresh_bucket, s3_target};

const MIB: usize = 1 << 20;
const CHUNK: usize = 4 * MIB;
const BIG: usize = 64 * MIB;

fn chunked(c: &mut nearcache::config::Config) {
    c.chunks.chunk_size = Size(CHUNK as u64);
    c.chunks.threshold = Size(8 * MIB as u64);
    c.chunks.fetch_concurrency = 4;
    c.hedge.enabled = false;
    c.store.disk_capacity = Size(1 << 30);
}

fn presigned(sdk: &Sdk, bucket: &str, key: &str) -> String {
    sdk.run(
        sdk.c
            .get_object()
            .bucket(bucket)
            .key(key)
            .presigned(PresigningConfig::expires_in(Duration::from_secs(600)).unwrap()),
    )
    .unwrap()
    .uri()
    .to_owned()
}

fn origin_bucket(origin: &Sdk, tag: &str) -> String {
    let bucket = fresh_bucket(tag);
    origin
        .run(origin.c.create_bucket().bucket(&bucket).send())
        .unwrap();
    bucket
}

fn origin_put(origin: &Sdk, bucket: &str, key: &str, body: &[u8]) {
    origin
        .run(
            origin
                .c
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(body.to_vec().into())
                .send(),
        )
        .expect("put behind the cache");
}

/// GET with an optional Range; (status, x-cache-status, body).
fn get(url: &str, range: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut req = client().get(url);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    let cache = r
        .headers()
        .get("x-cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    match r.bytes() {
        Ok(b) => (status, cache, b.to_vec()),
        // The body was cut (a chunk of another version turned up mid-stream).
        Err(_) => (status, "CUT".into(), Vec::new()),
    }
}

fn counters(node: &TestNode) -> (f64, f64, f64) {
    (
        node.metric("nearcache_origin_body_bytes_total"),
        node.metric("nearcache_chunk_fetches_total"),
        node.metric("nearcache_chunk_hits_total"),
    )
}

/// Polls until no chunk fetch is running (chunk 0's store finishes after the answer).
fn settle(node: &TestNode) -> (f64, f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = counters(node);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = counters(node);
        if now.0 == last.0 && now.1 == last.1 {
            return now;
        }
        assert!(Instant::now() < deadline, "origin bytes still moving");
        last = now;
    }
}

#[test]
fn a_range_moves_only_its_chunks_and_concurrent_ranges_of_a_chunk_make_one_get() {
    let node = TestNode::start_with("chunk-range", chunked);
    let sdk = Sdk::node(&node);
    let origin = Sdk::origin();
    let bucket = origin_bucket(&origin, "chunk-range-b");
    let data = random_bytes(BIG, 7);
    origin_put(&origin, &bucket, "big", &data);
    let url = presigned(&sdk, &bucket, "big");

    // A 4 KiB range deep in the object: one chunk moves, not the object.
    let at = 40_000_000usize;
    let (status, cache, body) = get(&url, Some(&format!("bytes={at}-{}", at + 4095)));
    assert_eq!((status, cache.as_str()), (206, "MISS"));
    assert_eq!(body, &data[at..at + 4096]);
    let (bytes, fetches, _) = settle(&node);
    assert_eq!(fetches, 1.0, "one chunk fetched");
    assert_eq!(
        bytes, CHUNK as f64,
        "only the covering chunk's bytes came from S3"
    );

    // Again: served from the stored chunk.
    let (status, cache, body) = get(&url, Some(&format!("bytes={}-{}", at + 10, at + 20)));
    assert_eq!((status, cache.as_str()), (206, "HIT"));
    assert_eq!(body, &data[at + 10..at + 21]);
    assert_eq!(counters(&node).0, bytes, "nothing more from S3");

    // Eight concurrent ranges inside one cold chunk (chunk 2): one origin GET.
    let gets = node.metric("nearcache_origin_requests_total");
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let a = 2 * CHUNK + i * 1000;
                let (status, _, body) = get(&url, Some(&format!("bytes={a}-{}", a + 999)));
                (status, a, body)
            })
        })
        .collect();
    for t in threads {
        let (status, a, body) = t.join().unwrap();
        assert_eq!(status, 206);
        assert_eq!(body, &data[a..a + 1000]);
    }
    let (bytes2, fetches2, _) = settle(&node);
    assert_eq!(fetches2, 2.0, "one more chunk fetch for eight requests");
    assert_eq!(bytes2, 2.0 * CHUNK as f64);
    assert_eq!(
        node.metric("nearcache_origin_requests_total"),
        gets + 1.0,
        "one origin request"
    );

    // A range spanning a chunk boundary: the two chunks, one of them held.
    let a = 3 * CHUNK - 100;
    let (status, _, body) = get(&url, Some(&format!("bytes={a}-{}", a + 199)));
    assert_eq!(status, 206);
    assert_eq!(body, &data[a..a + 200]);
    let (bytes3, _, _) = settle(&node);
    assert_eq!(bytes3, 3.0 * CHUNK as f64);

    // HEAD of the chunked object tells its whole size.
    let head = sdk
        .run(sdk.c.head_object().bucket(&bucket).key("big").send())
        .unwrap();
    assert_eq!(head.content_length(), Some(BIG as i64));
    let (_, fetches4, _) = settle(&node);
    assert_eq!(fetches4, 3.0, "HEAD moved no chunk");
}

#[test]
fn a_full_get_of_a_chunked_object_is_identical_and_fetched_in_parallel() {
    let proxy = Proxy::start(Duration::from_millis(300));
    let node = TestNode::start_with("chunk-full", |c| {
        chunked(c);
        c.origin.endpoint = Some(proxy.endpoint());
    });
    let sdk = Sdk::node(&node);
    let origin = Sdk::origin();
    let bucket = origin_bucket(&origin, "chunk-full-b");
    let data = random_bytes(BIG, 11);
    origin_put(&origin, &bucket, "big", &data);
    let url = presigned(&sdk, &bucket, "big");

    proxy.reset();
    let (status, cache, body) = get(&url, None);
    assert_eq!((status, cache.as_str()), (200, "MISS"));
    assert!(body == data, "the full GET is byte-identical");
    let (bytes, fetches, _) = settle(&node);
    assert_eq!(fetches, (BIG / CHUNK) as f64);
    assert_eq!(bytes, BIG as f64, "each byte came from S3 once");
    let most = proxy.max_in_flight();
    assert!(
        (2..=4).contains(&most),
        "chunks are fetched in parallel, at most fetch_concurrency at a time: {most}"
    );

    // Again: every chunk from the store.
    let (status, cache, body) = get(&url, None);
    assert_eq!((status, cache.as_str()), (200, "HIT"));
    assert!(body == data);
    assert_eq!(counters(&node).0, bytes, "nothing more from S3");
}

#[test]
fn a_changed_chunked_object_is_served_new_after_its_ttl_never_mixed() {
    let node = TestNode::start_with("chunk-fresh", |c| {
        chunked(c);
        c.freshness.rule = vec![FreshnessRule {
            bucket: "*".into(),
            prefix: "short/".into(),
            ttl_secs: Some(2),
            honour_origin: None,
            stale_while_revalidate_secs: None,
            stale_if_error_secs: None,
        }];
    });
    let sdk = Sdk::node(&node);
    let origin = Sdk::origin();
    let bucket = origin_bucket(&origin, "chunk-fresh-b");
    let size = 24 * MIB;
    let one = random_bytes(size, 1);
    origin_put(&origin, &bucket, "short/big", &one);
    let url = presigned(&sdk, &bucket, "short/big");

    // Two chunks held of version one.
    let (s, _, b) = get(&url, Some("bytes=0-9"));
    assert_eq!((s, b.as_slice()), (206, &one[..10]));
    let a = 5 * CHUNK;
    let (s, _, b) = get(&url, Some(&format!("bytes={a}-{}", a + 9)));
    assert_eq!((s, b.as_slice()), (206, &one[a..a + 10]));
    settle(&node);

    // Unchanged after the TTL: renewed by the origin's answer, chunks kept.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, cache, b) = get(&url, Some("bytes=0-9"));
        assert_eq!((s, b.as_slice()), (206, &one[..10]));
        if cache == "REVALIDATED" {
            break;
        }
        assert!(Instant::now() < deadline, "never revalidated");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Changed in S3 (same size, so only the ETag tells): after the TTL the whole
    // object is version two.
    let two = random_bytes(size, 2);
    origin_put(&origin, &bucket, "short/big", &two);
    // A held chunk answers version one within the TTL; after it, the revalidation finds
    // the change (the changed-body path, counted) and version two is answered.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, _, b) = get(&url, Some("bytes=0-9"));
        assert_eq!(s, 206);
        if b == two[..10] {
            break;
        }
        assert_eq!(b, &one[..10], "a held chunk of version one, or version two");
        assert!(
            Instant::now() < deadline,
            "never revalidated to the new version"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(node.metric("nearcache_revalidations_total") >= 2.0);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, cache, b) = get(&url, None);
        assert_eq!(s, 200);
        if b == two {
            break;
        }
        // Within the TTL the old version is answered, or its stream is cut when a chunk
        // still to fetch turns out to be of the new one: never a mix.
        assert!(
            cache == "CUT" || b == one,
            "a response mixed the two versions"
        );
        assert!(Instant::now() < deadline, "never served the new version");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The old version's chunk 5 is never served again.
    let (_, _, b) = get(&url, Some(&format!("bytes={a}-{}", a + 9)));
    assert_eq!(b, &two[a..a + 10]);
}

#[test]
fn a_write_through_nearcache_replaces_a_chunked_version() {
    let node = TestNode::start_with("chunk-write", chunked);
    let sdk = Sdk::node(&node);
    let bucket = origin_bucket(&Sdk::origin(), "chunk-write-b");
    let origin = Sdk::origin();
    let big = random_bytes(16 * MIB, 3);
    origin_put(&origin, &bucket, "k", &big);
    let url = presigned(&sdk, &bucket, "k");
    let (s, _, b) = get(&url, Some("bytes=100-199"));
    assert_eq!((s, b.as_slice()), (206, &big[100..200]));
    // Written through nearcache: the new (small) version is served, and stays served.
    sdk.put(&bucket, "k", b"small and new".to_vec());
    let (s, _, b) = get(&url, None);
    assert_eq!((s, b.as_slice()), (200, &b"small and new"[..]));
    // Deleted through nearcache: gone, not the old chunked version.
    sdk.run(sdk.c.delete_object().bucket(&bucket).key("k").send())
        .unwrap();
    let (s, _, _) = get(&url, None);
    assert_eq!(s, 404);
}

#[test]
fn a_slow_origin_get_is_hedged_and_the_hedge_wins() {
    let proxy = Proxy::start(Duration::ZERO);
    let node = TestNode::start_with("chunk-hedge", |c| {
        c.hedge.enabled = true;
        c.hedge.max_fraction = 1.0;
        c.hedge.min_delay_ms = 200;
        c.origin.endpoint = Some(proxy.endpoint());
        c.origin.max_attempts = 1;
    });
    let sdk = Sdk::node(&node);
    let origin = Sdk::origin();
    let bucket = origin_bucket(&origin, "chunk-hedge-b");
    origin_put(&origin, &bucket, "k", b"hedged body");
    let url = presigned(&sdk, &bucket, "k");

    // The next request through the proxy stalls 5 s; the hedge after 200 ms does not.
    proxy.stall_next(Duration::from_secs(5));
    let t = Instant::now();
    let (s, cache, b) = get(&url, None);
    let took = t.elapsed();
    assert_eq!(
        (s, cache.as_str(), b.as_slice()),
        (200, "MISS", &b"hedged body"[..])
    );
    assert!(
        took < Duration::from_secs(4),
        "answered by the hedge: {took:?}"
    );
    assert_eq!(node.metric("nearcache_hedges_sent_total"), 1.0);
    assert_eq!(node.metric("nearcache_hedges_won_total"), 1.0);
}

#[test]
fn a_large_level_one_write_reaches_s3_as_a_multipart_upload_intact() {
    let node = TestNode::start_with("chunk-mpu", |c| {
        c.chunks.multipart_threshold = Size(8 * MIB as u64);
        c.chunks.multipart_part_size = Size(5 * MIB as u64);
        c.chunks.multipart_concurrency = 3;
    });
    let sdk = Sdk::node(&node);
    let origin = Sdk::origin();
    let bucket = origin_bucket(&origin, "chunk-mpu-b");
    let data = random_bytes(24 * MIB, 5);
    let small = random_bytes(MIB, 6);
    // Level 1 (the default): acknowledged when stored here, uploaded in the background.
    sdk.put(&bucket, "big", data.clone());
    sdk.put(&bucket, "small", small.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    let (etag, body) = loop {
        let got = origin.run(origin.c.get_object().bucket(&bucket).key("big").send());
        if let Ok(out) = got {
            let etag = out.e_tag().unwrap_or_default().to_owned();
            let body = origin.run(out.body.collect()).unwrap().into_bytes();
            break (etag, body);
        }
        assert!(Instant::now() < deadline, "the upload never reached S3");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        etag.trim_matches('"').ends_with("-5"),
        "24 MiB in 5 MiB parts: {etag}"
    );
    assert!(
        body.as_ref() == data.as_slice(),
        "S3 holds the bytes written"
    );
    // Below the threshold: one PUT, whose ETag is the body's MD5.
    let deadline = Instant::now() + Duration::from_secs(30);
    let small_etag = loop {
        let got = origin.run(origin.c.head_object().bucket(&bucket).key("small").send());
        if let Ok(h) = got {
            break h.e_tag().unwrap_or_default().trim_matches('"').to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the small upload never reached S3"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(small_etag, md5_hex(&small));
}

/// A TCP proxy in front of the test S3 server that delays each request by `delay`
/// (one request can be stalled longer) and counts requests in flight.
struct Proxy {
    addr: std::net::SocketAddr,
    state: Arc<ProxyState>,
}

struct ProxyState {
    delay: Duration,
    stall: Mutex<Option<Duration>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    stop: AtomicBool,
}

impl Proxy {
    fn start(delay: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = s3_target()
            .endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let state = Arc::new(ProxyState {
            delay,
            stall: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let st = st.clone();
                std::thread::spawn(move || relay(client, server, st));
            }
        });
        Proxy { addr, state }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn reset(&self) {
        self.state.max_in_flight.store(0, SeqCst);
    }

    fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(SeqCst)
    }

    fn stall_next(&self, d: Duration) {
        *self.state.stall.lock().unwrap() = Some(d);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Relays one connection. A request starts when the client sends after the server's
/// answer began (or first); it is in flight until the server's first bytes come back.
fn relay(mut client: TcpStream, server: TcpStream, st: Arc<ProxyState>) {
    let waiting = Arc::new(AtomicBool::new(false));
    let (mut s_read, mut c_write) = (server.try_clone().unwrap(), client.try_clone().unwrap());
    let (w2, st2) = (waiting.clone(), st.clone());
    let back = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match s_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if w2.swap(false, SeqCst) {
                st2.in_flight.fetch_sub(1, SeqCst);
            }
            if c_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = c_write.shutdown(std::net::Shutdown::Both);
    });
    let mut server = server;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !waiting.swap(true, SeqCst) {
            let now = st.in_flight.fetch_add(1, SeqCst) + 1;
            st.max_in_flight.fetch_max(now, SeqCst);
            let stall = st.stall.lock().unwrap().take();
            std::thread::sleep(stall.unwrap_or(st.delay));
        }
        if server.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    if waiting.swap(false, SeqCst) {
        st.in_flight.fetch_sub(1, SeqCst);
    }
    let _ = server.shutdown(std::net::Shutdown::Both);
    let _ = back.join();
}

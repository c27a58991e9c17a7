//! The native API over real HTTP, against a node started in-process with a real S3
//! server behind it (moto by default; NEARCACHE_TEST_S3_* to use another, e.g. Garage).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;

/// Requests of one route counted by the node, whatever their status.
fn route_requests(node: &TestNode, route: &str) -> f64 {
    let text = client()
        .get(node.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let needle = format!("route=\"{route}\"");
    text.lines()
        .filter(|l| l.starts_with("nearcache_http_requests_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn put_get_meta_delete_round_trip() {
    let node = TestNode::start("roundtrip");
    let id = new_id(&node);
    assert_eq!(id.len(), 26);
    let body = random_bytes(10_000, 1);
    let r = put(
        &node,
        &id,
        body.clone(),
        &[
            ("X-Meta-Name", "photo.png"),
            ("X-Meta-UserMeta", r#"{"owner":"ann","Project":"x-1"}"#),
            ("X-Meta-ConsistencyLevel", "0"),
        ],
    );
    assert_eq!(r.status(), 200);
    let j: serde_json::Value = r.json().unwrap();
    assert_eq!(j["etag"], md5_hex(&body));
    assert_eq!(j["size"], 10_000);

    let r = client()
        .get(node.url(&format!("/api/v1/get/{id}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["etag"], format!("\"{}\"", md5_hex(&body)));
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert!(r.headers().get("last-modified").is_some());
    assert!(r.headers().get("x-meta-fetched").is_none());
    let um: serde_json::Value =
        serde_json::from_str(r.headers()["x-meta-usermeta"].to_str().unwrap()).unwrap();
    assert_eq!(um["owner"], "ann");
    assert_eq!(um["project"], "x-1");
    assert_eq!(r.bytes().unwrap().to_vec(), body);

    let r = client()
        .head(node.url(&format!("/api/v1/get/{id}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "10000");

    let m: serde_json::Value = client()
        .get(node.url(&format!("/api/v1/meta/{id}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(m["size"], 10_000);
    assert_eq!(m["name"], "photo.png");
    assert_eq!(m["level"], 0);
    assert_eq!(m["in_origin"], false);
    // Level 0 never goes to S3: nothing is queued for the uploader, nothing was sent.
    assert_eq!(node.metric("nearcache_pending_uploads"), 0.0);
    assert_eq!(node.metric("nearcache_uploads_total"), 0.0);
    assert!(node.s3().get(&id).is_none());

    let r = client()
        .post(node.url(&format!("/api/v1/delete/{id}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(node.url(&format!("/api/v1/get/{id}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-meta-deleted"], "true");
    let e: serde_json::Value = r.json().unwrap();
    assert!(e["detail"].as_str().unwrap().contains("deleted"), "{e}");
}

#[test]
fn level_one_reaches_s3_in_background_and_sync_waits() {
    let node = TestNode::start("level1");
    let s3 = node.s3();
    let id = new_id(&node);
    let body = random_bytes(300_000, 2);
    let r = put(
        &node,
        &id,
        body.clone(),
        &[
            ("X-Meta-ConsistencyLevel", "1"),
            ("X-Meta-UserMeta", r#"{"k":"v"}"#),
        ],
    );
    assert_eq!(r.status(), 200);
    assert!(s3.wait_for(&id, Duration::from_secs(15), |o| o
        .as_ref()
        .is_some_and(|(b, _)| b == &body)));
    let (_, meta) = s3.get(&id).unwrap();
    assert_eq!(
        meta.get("k").map(String::as_str),
        Some("v"),
        "user meta stored as x-amz-meta-*"
    );
    // The object becomes "in origin" once the uploader is done.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m: serde_json::Value = client()
            .get(node.url(&format!("/api/v1/meta/{id}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if m["in_origin"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never marked in_origin: {m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let id2 = new_id(&node);
    let body2 = random_bytes(5000, 3);
    let r = put(
        &node,
        &id2,
        body2.clone(),
        &[("X-Meta-ConsistencyLevel", "2"), ("X-Meta-Sync", "1")],
    );
    assert_eq!(r.status(), 200);
    let j: serde_json::Value = r.json().unwrap();
    assert_eq!(j["in_origin"], true);
    assert_eq!(
        s3.get(&id2).unwrap().0,
        body2,
        "X-Meta-Sync: the object is in S3 when the PUT returns"
    );

    // A later PUT with a higher level on a level-0 id upgrades it.
    let id3 = new_id(&node);
    assert_eq!(
        put(
            &node,
            &id3,
            b"abc".to_vec(),
            &[("X-Meta-ConsistencyLevel", "0")]
        )
        .status(),
        200
    );
    assert_eq!(
        put(
            &node,
            &id3,
            b"abc".to_vec(),
            &[("X-Meta-ConsistencyLevel", "1"), ("X-Meta-Sync", "1")]
        )
        .status(),
        200
    );
    assert_eq!(s3.get(&id3).unwrap().0, b"abc");

    // Deletes at level 1 reach S3 too.
    let r = client()
        .delete(node.url(&format!("/api/v1/delete/{id2}")))
        .header("X-Meta-Sync", "1")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(s3.get(&id2).is_none());
}

#[test]
fn read_through_from_s3_and_tombstones_block_it() {
    let node = TestNode::start("readthrough");
    let s3 = node.s3();
    let id = ulid::Ulid::generate().to_string();
    let body = random_bytes(3 << 20, 4);
    s3.put(&id, body.clone(), "application/pdf");

    let r = client()
        .get(node.url(&format!("/api/v1/get/{id}")))
        .header("X-Meta-Fetch", "0")
        .send()
        .unwrap();
    assert_eq!(r.status(), 404, "no read-through when X-Meta-Fetch: 0");

    let r = client()
        .get(node.url(&format!("/api/v1/get/{id}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-meta-fetched"], "true");
    assert_eq!(r.headers()["content-type"], "application/pdf");
    assert_eq!(r.bytes().unwrap().to_vec(), body);

    // The fill commits just after the last byte went out; wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while client()
        .get(node.url(&format!("/api/v1/meta/{id}")))
        .header("X-Meta-Fetch", "0")
        .send()
        .unwrap()
        .status()
        != 200
    {
        assert!(
            std::time::Instant::now() < deadline,
            "read-through never cached"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = client()
        .get(node.url(&format!("/api/v1/get/{id}")))
        .send()
        .unwrap();
    assert!(
        r.headers().get("x-meta-fetched").is_none(),
        "second read is a hit"
    );
    assert_eq!(r.bytes().unwrap().to_vec(), body);
    assert_eq!(node.metric("nearcache_origin_fetches_total"), 1.0);

    // Ranged read of an uncached object: the range is served, the whole object cached.
    let id2 = ulid::Ulid::generate().to_string();
    let body2 = random_bytes(1 << 20, 5);
    s3.put(&id2, body2.clone(), "application/octet-stream");
    let r = client()
        .get(node.url(&format!("/api/v1/get/{id2}")))
        .header("Range", "bytes=1000-1999")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap().to_vec(), body2[1000..2000].to_vec());

    // Missing everywhere: 404 with a JSON body.
    let r = client()
        .get(node.url(&format!("/api/v1/get/{}", ulid::Ulid::generate())))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<serde_json::Value>().unwrap()["error"].is_string());

    // Delete at level 0: S3 keeps the object but the tombstone stops read-through.
    let r = client()
        .post(node.url(&format!("/api/v1/delete/{id}")))
        .header("X-Meta-ConsistencyLevel", "0")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..3 {
        let r = client()
            .get(node.url(&format!("/api/v1/get/{id}")))
            .send()
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["x-meta-deleted"], "true");
    }
    assert!(s3.get(&id).is_some());
    // id, id2 and the id missing everywhere; none for the deleted id.
    assert_eq!(node.metric("nearcache_origin_fetches_total"), 3.0);
}

#[test]
fn concurrent_misses_make_one_s3_get() {
    let node = TestNode::start("coalesce");
    let id = ulid::Ulid::generate().to_string();
    let body = random_bytes(8 << 20, 6);
    node.s3().put(&id, body.clone(), "application/octet-stream");
    let url = node.url(&format!("/api/v1/get/{id}"));
    let expected = md5_hex(&body);
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let (url, expected) = (url.clone(), expected.clone());
            std::thread::spawn(move || {
                // A fresh client per thread: separate connections, spread over shards.
                let c = reqwest::blocking::Client::new();
                let r = c.get(&url).send().unwrap();
                assert_eq!(r.status(), 200);
                assert_eq!(md5_hex(&r.bytes().unwrap()), expected);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(node.metric("nearcache_origin_fetches_total"), 1.0);
    assert_eq!(node.metric("nearcache_coalesced_requests_total"), 11.0);
}

#[test]
fn ranges_and_conditional_requests() {
    let node = TestNode::start("ranges");
    let id = new_id(&node);
    // Above the memory-object limit too, so the streaming disk reader is exercised.
    for (size, seed) in [(10_000usize, 7u64), (3 << 20, 8)] {
        let body = random_bytes(size, seed);
        assert_eq!(put(&node, &id, body.clone(), &[]).status(), 200);
        let get = |range: &str| {
            client()
                .get(node.url(&format!("/api/v1/get/{id}")))
                .header("Range", range)
                .send()
                .unwrap()
        };
        let r = get("bytes=0-99");
        assert_eq!(r.status(), 206);
        assert_eq!(r.headers()["content-range"], format!("bytes 0-99/{size}"));
        assert_eq!(r.bytes().unwrap().to_vec(), body[..100].to_vec());
        let r = get("bytes=-10");
        assert_eq!(r.bytes().unwrap().to_vec(), body[size - 10..].to_vec());
        let mid = size / 2;
        let r = get(&format!("bytes={mid}-"));
        assert_eq!(r.bytes().unwrap().to_vec(), body[mid..].to_vec());
        let r = get(&format!("bytes={size}-"));
        assert_eq!(r.status(), 416);
        assert_eq!(r.headers()["content-range"], format!("bytes */{size}"));
        // Regression: an end of 2^64-1 panicked the shard and, with panic = abort, the
        // node. It means "to the end of the object" (RFC 9110).
        let r = get("bytes=1-18446744073709551615");
        assert_eq!(r.status(), 206);
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes 1-{}/{size}", size - 1)
        );
        assert_eq!(r.bytes().unwrap().to_vec(), body[1..].to_vec());
        let r = get("bytes=0-18446744073709551615");
        assert_eq!(r.status(), 206);
        assert_eq!(r.bytes().unwrap().len(), size);
        let r = get("bytes=18446744073709551615-18446744073709551615");
        assert_eq!(r.status(), 416);
        let r = get("bytes=-18446744073709551615");
        assert_eq!(r.bytes().unwrap().to_vec(), body);
        let r = client()
            .get(node.url(&format!("/api/v1/get/{id}")))
            .send()
            .unwrap();
        assert_eq!(r.bytes().unwrap().to_vec(), body);
    }
    let r = client()
        .get(node.url(&format!("/api/v1/get/{id}")))
        .send()
        .unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let lm = r.headers()["last-modified"].to_str().unwrap().to_string();
    let cond = |h: &str, v: &str| {
        client()
            .get(node.url(&format!("/api/v1/get/{id}")))
            .header(h, v)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(cond("If-None-Match", &etag), StatusCode::NOT_MODIFIED);
    assert_eq!(cond("If-None-Match", "\"other\""), StatusCode::OK);
    assert_eq!(cond("If-Match", &etag), StatusCode::OK);
    assert_eq!(
        cond("If-Match", "\"other\""),
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(cond("If-Modified-Since", &lm), StatusCode::NOT_MODIFIED);
    assert_eq!(
        cond("If-Modified-Since", "Mon, 01 Jan 2001 00:00:00 GMT"),
        StatusCode::OK
    );
}

#[test]
fn bad_input_gets_clear_errors() {
    let node = TestNode::start("badinput");
    let err = |r: reqwest::blocking::Response, status: u16, needle: &str| {
        assert_eq!(r.status(), status);
        let j: serde_json::Value = r.json().unwrap();
        let detail = j["detail"].as_str().unwrap().to_string();
        assert!(
            detail.contains(needle),
            "{detail:?} should mention {needle:?}"
        );
    };
    err(
        put(&node, "not-a-ulid", b"x".to_vec(), &[]),
        400,
        "not a ULID",
    );
    err(
        client().get(node.url("/api/v1/get/zzz")).send().unwrap(),
        400,
        "not a ULID",
    );
    let id = new_id(&node);
    err(
        put(
            &node,
            &id,
            b"x".to_vec(),
            &[("X-Meta-UserMeta", "{not json")],
        ),
        400,
        "not a JSON object",
    );
    err(
        put(
            &node,
            &id,
            b"x".to_vec(),
            &[("X-Meta-UserMeta", r#"{"a":1}"#)],
        ),
        400,
        "not a string",
    );
    err(
        put(
            &node,
            &id,
            b"x".to_vec(),
            &[("X-Meta-ConsistencyLevel", "7")],
        ),
        400,
        "0, 1 or 2",
    );
    err(
        put(&node, &id, b"x".to_vec(), &[("X-Meta-Sync", "maybe")]),
        400,
        "X-Meta-Sync",
    );
    err(
        client().get(node.url("/nope")).send().unwrap(),
        404,
        "no route",
    );
    err(
        client().get(node.url("/api/v1/put")).send().unwrap(),
        405,
        "accepts POST",
    );
    // Nothing was stored by the rejected writes.
    assert_eq!(
        client()
            .get(node.url(&format!("/api/v1/get/{id}")))
            .header("X-Meta-Fetch", "0")
            .send()
            .unwrap()
            .status(),
        404
    );

    // A body shorter than its Content-Length: the client gives up; nothing is stored.
    let puts_before = route_requests(&node, "put");
    let addr = node.base.trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(s, "POST /api/v1/put HTTP/1.1\r\nHost: x\r\nX-Meta-ID: {id}\r\nContent-Length: 1000\r\n\r\nonly-a-few-bytes").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 400"),
        "{resp}"
    );
    // The server has answered (or dropped) that PUT once it counts it: then check.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while route_requests(&node, "put") < puts_before + 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the short PUT was never counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        client()
            .get(node.url(&format!("/api/v1/get/{id}")))
            .header("X-Meta-Fetch", "0")
            .send()
            .unwrap()
            .status(),
        404
    );

    // Oversized headers: 431, and the server keeps serving.
    // (Just over the 64 KiB limit so the whole head fits the socket buffer: a server
    // closing on unread bytes would otherwise reset the connection before we read.)
    let mut s = TcpStream::connect(&addr).unwrap();
    let _ = write!(
        s,
        "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(66 << 10)
    );
    let mut resp = vec![0u8; 64];
    let n = s.read(&mut resp).unwrap_or(0);
    let resp = String::from_utf8_lossy(&resp[..n]);
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    // Garbage instead of HTTP.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"\x00\x01\x02 not http\r\n\r\n").unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(
        resp.is_empty() || resp.starts_with("HTTP/1.1 400"),
        "{resp}"
    );
    assert_eq!(
        client()
            .get(node.url("/api/v1/ping"))
            .send()
            .unwrap()
            .text()
            .unwrap(),
        "pong"
    );
}

#[test]
fn capacity_full_of_unsafe_objects_gives_507() {
    let node = TestNode::start_with("capacity", |c| {
        c.store.disk_capacity = nearcache::config::Size(2 << 20);
        c.server.shards = 1;
    });
    let mut stored = Vec::new();
    let mut saw_507 = false;
    for i in 0..12 {
        let id = new_id(&node);
        let r = put(
            &node,
            &id,
            random_bytes(256 << 10, i),
            &[("X-Meta-ConsistencyLevel", "0")],
        );
        match r.status().as_u16() {
            200 => stored.push(id),
            507 => {
                let j: serde_json::Value = r.json().unwrap();
                assert_eq!(j["error"], "insufficient storage");
                saw_507 = true;
                break;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(saw_507, "level-0 objects filled the disk without a 507");
    // Nothing was evicted silently.
    for id in &stored {
        assert_eq!(
            client()
                .get(node.url(&format!("/api/v1/get/{id}")))
                .header("X-Meta-Fetch", "0")
                .send()
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(node.metric("nearcache_evictions_total"), 0.0);
}

#[test]
fn objects_safe_in_s3_are_evicted_and_read_back_through() {
    let node = TestNode::start_with("evict", |c| {
        c.store.disk_capacity = nearcache::config::Size(2 << 20);
        c.server.shards = 1;
    });
    let mut ids = Vec::new();
    for i in 0..16 {
        let id = new_id(&node);
        let body = random_bytes(256 << 10, 100 + i);
        let r = put(
            &node,
            &id,
            body.clone(),
            &[("X-Meta-ConsistencyLevel", "1"), ("X-Meta-Sync", "1")],
        );
        assert_eq!(r.status(), 200, "{:?}", r.text());
        ids.push((id, body));
    }
    assert!(node.metric("nearcache_evictions_total") >= 8.0);
    for (id, body) in &ids {
        let r = client()
            .get(node.url(&format!("/api/v1/get/{id}")))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(&r.bytes().unwrap().to_vec(), body);
    }
}

#[test]
fn large_bodies_stream_both_ways_and_http2_works() {
    let node = TestNode::start("large");
    let id = new_id(&node);
    // 96 MiB sent chunked (no Content-Length), generated on the fly.
    let chunks: Vec<Vec<u8>> = (0..96).map(|i| random_bytes(1 << 20, 1000 + i)).collect();
    let mut md5 = md5::Md5::default();
    for c in &chunks {
        md5::Digest::update(&mut md5, c);
    }
    let expected = hex::encode(md5::Digest::finalize(md5));
    let body = reqwest::blocking::Body::new(ChunkReader {
        chunks,
        pos: 0,
        off: 0,
    });
    let r = client()
        .post(node.url("/api/v1/put"))
        .header("X-Meta-ID", &id)
        .header("X-Meta-ConsistencyLevel", "0")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().unwrap()["etag"], expected);
    let r = client()
        .get(node.url(&format!("/api/v1/get/{id}")))
        .send()
        .unwrap();
    assert_eq!(r.headers()["content-length"], (96u64 << 20).to_string());
    assert_eq!(md5_hex(&r.bytes().unwrap()), expected);

    let h2 = reqwest::blocking::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(node.url(&format!("/api/v1/get/{id}")))
        .header("Range", "bytes=0-9")
        .send()
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap().len(), 10);
}

struct ChunkReader {
    chunks: Vec<Vec<u8>>,
    pos: usize,
    off: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(c) = self.chunks.get(self.pos) else {
            return Ok(0);
        };
        let n = (c.len() - self.off).min(buf.len());
        buf[..n].copy_from_slice(&c[self.off..self.off + n]);
        self.off += n;
        if self.off == c.len() {
            self.pos += 1;
            self.off = 0;
        }
        Ok(n)
    }
}

#[test]
fn restart_serves_stored_objects_without_s3() {
    let mut node = TestNode::start("restart");
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = new_id(&node);
        let body = random_bytes(1000 + i * 5000, 200 + i as u64);
        assert_eq!(
            put(
                &node,
                &id,
                body.clone(),
                &[("X-Meta-ConsistencyLevel", "0"), ("X-Meta-Name", "a.json")]
            )
            .status(),
            200
        );
        ids.push((id, body));
    }
    node.restart(|_| {});
    for (id, body) in &ids {
        let r = client()
            .get(node.url(&format!("/api/v1/get/{id}")))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(&r.bytes().unwrap().to_vec(), body);
    }
    assert_eq!(node.metric("nearcache_origin_fetches_total"), 0.0);
}

#[test]
fn corrupt_object_is_never_served_and_is_refetched() {
    let node = TestNode::start_with("corrupt", |c| c.server.shards = 1);
    let id = new_id(&node);
    let body = random_bytes(2 << 20, 9);
    assert_eq!(
        put(
            &node,
            &id,
            body.clone(),
            &[("X-Meta-ConsistencyLevel", "1"), ("X-Meta-Sync", "1")]
        )
        .status(),
        200
    );
    let m: serde_json::Value = client()
        .get(node.url(&format!("/api/v1/meta/{id}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let seq = m["seq"].as_u64().unwrap();
    let flip = |seq: u64, at: usize| {
        let path = node
            .dir
            .join(format!("shard-0/objects/{:02x}/{seq:016x}", seq & 0xff));
        let mut data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        data[4096 + at] ^= 0xff;
        std::fs::write(&path, &data).unwrap();
    };
    // A bad first block is found before the response starts: a clean miss, refetched.
    flip(seq, 100);
    let r = client()
        .get(node.url(&format!("/api/v1/get/{id}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-meta-fetched"],
        "true",
        "corrupt copy dropped and refetched"
    );
    assert_eq!(r.bytes().unwrap().to_vec(), body);
    assert_eq!(node.metric("nearcache_checksum_failures_total"), 1.0);

    // A bad later block is found mid-stream: the connection is cut, never a whole body.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let seq = loop {
        let r = client()
            .get(node.url(&format!("/api/v1/meta/{id}")))
            .header("X-Meta-Fetch", "0")
            .send()
            .unwrap();
        if r.status() == 200 {
            break r.json::<serde_json::Value>().unwrap()["seq"]
                .as_u64()
                .unwrap();
        }
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    };
    flip(seq, 1_500_000);
    let r = client()
        .get(node.url(&format!("/api/v1/get/{id}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().is_err(),
        "a body with a bad block must not arrive whole"
    );
    assert_eq!(node.metric("nearcache_checksum_failures_total"), 2.0);
    let r = client()
        .get(node.url(&format!("/api/v1/get/{id}")))
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-meta-fetched"], "true");
    assert_eq!(r.bytes().unwrap().to_vec(), body);
}

#[test]
fn stats_metrics_health_version() {
    let node = TestNode::start("stats");
    let id = new_id(&node);
    put(
        &node,
        &id,
        b"hello".to_vec(),
        &[("X-Meta-ConsistencyLevel", "0")],
    );
    let _ = client()
        .get(node.url(&format!("/api/v1/get/{id}")))
        .send()
        .unwrap();
    let s: serde_json::Value = client()
        .get(node.url("/api/v1/stats"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(s["shards"].as_array().unwrap().len(), 2);
    assert_eq!(s["total"]["objects"], 1);
    assert_eq!(s["total"]["bytes"], 5);
    assert!(s["total"]["hits"].as_u64().unwrap() >= 1);
    assert!(s["disk"]["filesystem_available_bytes"].as_u64().unwrap() > 0);
    let h: serde_json::Value = client()
        .get(node.url("/healthz"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(h["status"], "ok");
    let v: serde_json::Value = client()
        .get(node.url("/api/v1/version"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["name"], "nearcache");
    let text = client()
        .get(node.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for name in [
        "nearcache_http_requests_total{shard=",
        "nearcache_http_request_duration_seconds_bucket{",
        "nearcache_io_uring_active",
        "nearcache_origin_request_duration_seconds_bucket",
        "nearcache_forwarded_requests_total",
        "nearcache_pending_uploads",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
    assert!(!text.contains(&id), "metrics must never carry object ids");
    // Every family once, each with HELP and TYPE, every sample in a declared family.
    let families =
        nearcache::metrics::check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(families > 30, "{families} families");
    assert_eq!(metric_sum(&text, "nearcache_objects"), 1.0);
}

#[test]
fn unreachable_s3_still_serves_cached_copies_and_fails_misses_fast() {
    let node = TestNode::start_with("unreachable", |c| {
        // A closed port: connections are refused at once.
        c.origin.endpoint = Some("http://127.0.0.1:1".into());
        c.origin.create_bucket = false;
        c.origin.max_attempts = 2;
    });
    let id = new_id(&node);
    let body = random_bytes(20_000, 11);
    assert_eq!(
        put(
            &node,
            &id,
            body.clone(),
            &[("X-Meta-ConsistencyLevel", "1")]
        )
        .status(),
        200
    );
    let r = client()
        .get(node.url(&format!("/api/v1/get/{id}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().to_vec(), body);
    let start = std::time::Instant::now();
    let r = client()
        .get(node.url(&format!("/api/v1/get/{}", ulid::Ulid::generate())))
        .send()
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(
        r.json::<serde_json::Value>().unwrap()["error"],
        "origin unavailable"
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "bounded retries: {:?}",
        start.elapsed()
    );
    // The upload stays pending (and pinned) while S3 is away.
    let m: serde_json::Value = client()
        .get(node.url(&format!("/api/v1/meta/{id}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(m["in_origin"], false);
    assert!(node.metric("nearcache_pending_uploads") >= 1.0);
    // The uploader's first attempt fails soon (connection refused), then backs off.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while node.metric("nearcache_upload_failures_total") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no failed upload attempt counted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        node.metric("nearcache_pending_uploads") >= 1.0,
        "still pending after failing"
    );
}

#[test]
fn uploads_survive_a_failing_origin() {
    let node = TestNode::start_with("inject", |c| {
        c.origin.inject_failure_rate = 0.5;
        c.origin.max_attempts = 1;
    });
    let s3 = node.s3();
    let ids: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (new_id(&node), random_bytes(5000 + i, 300 + i as u64)))
        .collect();
    for (id, body) in &ids {
        assert_eq!(
            put(&node, id, body.clone(), &[("X-Meta-ConsistencyLevel", "1")]).status(),
            200
        );
    }
    for (id, body) in &ids {
        assert!(
            s3.wait_for(id, Duration::from_secs(30), |o| o
                .as_ref()
                .is_some_and(|(b, _)| b == body)),
            "{id} never uploaded"
        );
    }
    assert!(
        node.metric("nearcache_upload_failures_total") >= 1.0,
        "injection had no effect"
    );
    // An object is in S3 before its upload is recorded as done (the pending op is
    // cleared and counted after the origin answered): wait for the count, then check
    // that it is exactly one per object.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while node.metric("nearcache_uploads_total") < 20.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(node.metric("nearcache_uploads_total"), 20.0);
}

/// A client that declares a body and stalls is cut after `body_idle_timeout_secs` with
/// 408, and nothing is stored; other requests are served meanwhile.
#[test]
fn a_stalled_request_body_is_cut_with_408() {
    let node = TestNode::start_with("stall", |cfg| cfg.server.body_idle_timeout_secs = 1);
    let id = new_id(&node);
    let addr = node.base.trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let start = std::time::Instant::now();
    write!(
        s,
        "POST /api/v1/put HTTP/1.1\r\nHost: x\r\nX-Meta-ID: {id}\r\nContent-Length: 104857600\r\n\r\nonly-a-few-bytes"
    )
    .unwrap();
    // Served while the stalled one waits.
    assert_eq!(
        client()
            .get(node.url("/api/v1/ping"))
            .send()
            .unwrap()
            .status(),
        200
    );
    let mut resp = vec![0u8; 4096];
    let n = s.read(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp[..n]).to_string();
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("no request body bytes arrived"), "{resp}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        client()
            .get(node.url(&format!("/api/v1/get/{id}")))
            .header("X-Meta-Fetch", "0")
            .send()
            .unwrap()
            .status(),
        404
    );
}

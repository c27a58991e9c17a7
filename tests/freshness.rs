//! Freshness against a real S3 server: objects changed in S3 behind the cache are served
//! fresh after their TTL (the 304 path and the changed-body path), stale-if-error and
//! stale-while-revalidate while the origin is stopped (SIGSTOP), the origin's
//! Cache-Control, negative caching, and a read-through that restores a native object's
//! name and level.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_s3::presigning::PresigningConfig;
use common::sdk::Sdk;
use common::*;
use nearcache::config::{FreshnessRule, Size};
use nearcache_s3::testutil::{fresh_bucket, Moto};

/// GETs `url` until `done` holds for the answer (status, X-Cache-Status, body), at most
/// `within`; returns that answer.
fn get_until(
    url: &str,
    within: Duration,
    done: impl Fn(u16, &str, &[u8]) -> bool,
) -> (u16, String, Vec<u8>) {
    let deadline = Instant::now() + within;
    loop {
        let r = client().get(url).send().unwrap();
        let status = r.status().as_u16();
        let cache = header(&r, "x-cache-status");
        let body = r.bytes().unwrap().to_vec();
        if done(status, &cache, &body) {
            return (status, cache, body);
        }
        assert!(
            Instant::now() < deadline,
            "no answer matched within {within:?}; last: {status} {cache} {:?}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn header(r: &reqwest::blocking::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// A presigned GET of bucket/key through the node's S3 API.
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

fn origin_put(origin: &Sdk, bucket: &str, key: &str, body: &[u8], cache_control: Option<&str>) {
    let mut req = origin
        .c
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body.to_vec().into());
    if let Some(cc) = cache_control {
        req = req.cache_control(cc);
    }
    origin.run(req.send()).expect("put behind the cache");
}

fn revalidations(node: &TestNode, outcome: &str) -> f64 {
    let text = client()
        .get(node.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("nearcache_revalidations_total{")
                && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_ttl_expired_copy_is_renewed_by_304_or_replaced_when_s3_changed() {
    let node = TestNode::start_with("fresh-ttl", |c| {
        c.freshness.rule = vec![FreshnessRule {
            bucket: "*".into(),
            prefix: "short/".into(),
            // Long enough that a loaded machine answers the checks below within it.
            ttl_secs: Some(3),
            honour_origin: None,
            stale_while_revalidate_secs: None,
            stale_if_error_secs: None,
        }];
    });
    let sdk = Sdk::node(&node);
    let origin = Sdk::origin();
    let bucket = fresh_bucket("fresh-ttl-b");
    origin
        .run(origin.c.create_bucket().bucket(&bucket).send())
        .unwrap();
    origin_put(&origin, &bucket, "short/a", b"version one", None);
    origin_put(&origin, &bucket, "long/a", b"kept forever", None);
    let url = presigned(&sdk, &bucket, "short/a");
    let long = presigned(&sdk, &bucket, "long/a");

    let r = client().get(&url).send().unwrap();
    assert_eq!(header(&r, "x-cache-status"), "MISS");
    assert_eq!(r.bytes().unwrap().as_ref(), b"version one");
    // Stored once the body has streamed (a request meanwhile waits for the fill).
    get_until(&url, Duration::from_secs(5), |_, c, _| c == "HIT");
    client().get(&long).send().unwrap();

    // Unchanged in S3: after the TTL one request revalidates (304), the body stays.
    let (_, _, body) = get_until(&url, Duration::from_secs(15), |s, c, _| {
        s == 200 && c == "REVALIDATED"
    });
    assert_eq!(body, b"version one");
    assert_eq!(revalidations(&node, "not_modified"), 1.0);
    let r = client().get(&url).send().unwrap();
    assert_eq!(header(&r, "x-cache-status"), "HIT", "renewed: fresh again");
    assert!(header(&r, "age").parse::<u64>().unwrap() <= 1);

    // Changed in S3 behind the cache: served fresh once the TTL has passed.
    origin_put(&origin, &bucket, "short/a", b"version two, longer", None);
    let (_, cache, _) = get_until(&url, Duration::from_secs(15), |s, _, b| {
        s == 200 && b == b"version two, longer"
    });
    assert_eq!(cache, "MISS", "the new version came from S3");
    assert_eq!(revalidations(&node, "changed"), 1.0);
    let (_, _, body) = get_until(&url, Duration::from_secs(5), |_, c, _| c == "HIT");
    assert_eq!(body, b"version two, longer");

    // Deleted in S3: the copy is dropped, the client gets a 404.
    origin
        .run(origin.c.delete_object().bucket(&bucket).key("short/a").send())
        .unwrap();
    get_until(&url, Duration::from_secs(15), |s, _, _| s == 404);
    assert_eq!(revalidations(&node, "gone"), 1.0);

    // The default rule (ttl 0): never stale.
    origin_put(&origin, &bucket, "long/a", b"changed but not seen", None);
    let r = client().get(&long).send().unwrap();
    assert_eq!(header(&r, "x-cache-status"), "HIT");
    assert_eq!(r.bytes().unwrap().as_ref(), b"kept forever");
}

#[test]
fn the_origins_cache_control_decides_when_honoured() {
    let node = TestNode::start("fresh-cc");
    let sdk = Sdk::node(&node);
    let origin = Sdk::origin();
    let bucket = fresh_bucket("fresh-cc-b");
    origin
        .run(origin.c.create_bucket().bucket(&bucket).send())
        .unwrap();
    origin_put(&origin, &bucket, "nostore", b"private", Some("no-store"));
    origin_put(&origin, &bucket, "nocache", b"always ask", Some("no-cache"));
    origin_put(&origin, &bucket, "maxage", b"an hour", Some("max-age=3600"));
    for key in ["nostore", "nocache", "maxage"] {
        let r = client().get(presigned(&sdk, &bucket, key)).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-cache-status"), "MISS", "{key}");
    }
    // no-cache: kept (once its body has streamed), revalidated before every use.
    let nocache = presigned(&sdk, &bucket, "nocache");
    let (_, _, body) = get_until(&nocache, Duration::from_secs(5), |_, c, _| c != "MISS");
    assert_eq!(body, b"always ask");
    let r = client().get(&nocache).send().unwrap();
    assert_eq!(header(&r, "x-cache-status"), "REVALIDATED");
    // max-age: fresh.
    let maxage = presigned(&sdk, &bucket, "maxage");
    get_until(&maxage, Duration::from_secs(5), |_, c, _| c == "HIT");
    // no-store: never kept, every GET goes to S3.
    let fetches = node.metric("nearcache_origin_fetches_total");
    let nostore = presigned(&sdk, &bucket, "nostore");
    for _ in 0..3 {
        let r = client().get(&nostore).send().unwrap();
        assert_eq!(header(&r, "x-cache-status"), "MISS");
        assert_eq!(r.bytes().unwrap().as_ref(), b"private");
    }
    assert_eq!(node.metric("nearcache_origin_fetches_total"), fetches + 3.0);
    let r = client().get(&maxage).send().unwrap();
    assert_eq!(header(&r, "x-cache-status"), "HIT");
    assert_eq!(
        header(&r, "cache-control"),
        "max-age=3600",
        "the origin's header is passed on"
    );
}

#[test]
fn stale_copies_are_served_while_s3_is_stopped_within_their_bounds() {
    let moto = Moto::start().expect("moto");
    let bucket = fresh_bucket("fresh-sie");
    let node = TestNode::start_with("fresh-sie", |c| {
        c.origin.endpoint = Some(moto.target.endpoint.clone());
        c.origin.bucket = Some(bucket.clone());
        // A stopped origin fails a request within this bound.
        c.origin.request_deadline_ms = 1_500;
        c.origin.operation_timeout_ms = 1_000;
        c.origin.max_attempts = 1;
        let rule = |prefix: &str, swr: u64, sie: u64| FreshnessRule {
            bucket: "*".into(),
            prefix: prefix.into(),
            ttl_secs: Some(1),
            honour_origin: None,
            stale_while_revalidate_secs: Some(swr),
            stale_if_error_secs: Some(sie),
        };
        c.freshness.rule = vec![rule("sie/", 0, 3600), rule("swr/", 3600, 0), rule("none/", 0, 0)];
    });
    let sdk = Sdk::node(&node);
    let origin = Sdk::with(
        &moto.target.endpoint,
        &moto.target.access_key,
        &moto.target.secret_key,
        |b| b,
    );
    origin
        .run(origin.c.create_bucket().bucket(&bucket).send())
        .unwrap();
    let keys = ["sie/k", "swr/k", "none/k"];
    let urls: Vec<String> = keys.iter().map(|k| presigned(&sdk, &bucket, k)).collect();
    for (k, url) in keys.iter().zip(&urls) {
        origin_put(&origin, &bucket, k, k.as_bytes(), None);
        let r = client().get(url).send().unwrap();
        assert_eq!(r.status(), 200, "{k}");
    }
    // Let every copy go stale (the TTL is 1 s; Age counts whole seconds).
    get_until(&urls[2], Duration::from_secs(10), |_, c, _| c == "REVALIDATED");
    let stale_from = Instant::now();
    moto.pause().unwrap();
    let wait_stale = Duration::from_millis(1_100).saturating_sub(stale_from.elapsed());
    std::thread::sleep(wait_stale);

    // stale-while-revalidate: answered at once from the stale copy.
    let t = Instant::now();
    let r = client().get(&urls[1]).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-cache-status"), "UPDATING");
    assert!(t.elapsed() < Duration::from_millis(1_000), "{:?}", t.elapsed());
    // stale-if-error: answered from the stale copy once revalidation failed.
    let r = client().get(&urls[0]).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-cache-status"), "STALE");
    assert_eq!(r.bytes().unwrap().as_ref(), b"sie/k");
    // Neither: the origin's failure is the answer.
    let r = client().get(&urls[2]).send().unwrap();
    assert_eq!(r.status(), 503, "{:?}", r.text());
    let stale = node.metric("nearcache_stale_responses_total");
    assert!(stale >= 2.0, "{stale}");
    moto.resume().unwrap();
    // Back: revalidated again.
    get_until(&urls[0], Duration::from_secs(15), |s, c, _| {
        s == 200 && (c == "REVALIDATED" || c == "HIT")
    });
}

#[test]
fn an_origin_404_is_remembered_and_forgotten_on_write() {
    let node = TestNode::start_with("fresh-neg", |c| {
        c.freshness.negative_ttl_secs = 3600;
    });
    let id = new_id(&node);
    let fetches = || node.metric("nearcache_origin_fetches_total");
    let before = fetches();
    let url = node.url(&format!("/api/v1/get/{id}"));
    assert_eq!(client().get(&url).send().unwrap().status(), 404);
    assert_eq!(fetches(), before + 1.0);
    for _ in 0..3 {
        assert_eq!(client().get(&url).send().unwrap().status(), 404);
    }
    assert_eq!(fetches(), before + 1.0, "one origin request per remembered 404");
    assert_eq!(node.metric("nearcache_negative_cache_hits_total"), 3.0);
    // A write through nearcache forgets it at once.
    assert_eq!(put(&node, &id, b"now here".to_vec(), &[]).status(), 200);
    let r = client().get(&url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), b"now here");
}

#[test]
fn a_read_through_restores_name_level_and_metadata() {
    let first = TestNode::start("fresh-restore");
    let id = new_id(&first);
    let body = random_bytes(50_000, 3);
    let r = put(
        &first,
        &id,
        body.clone(),
        &[
            ("X-Meta-Name", "report 2026 (final) 100%.pdf"),
            ("X-Meta-ConsistencyLevel", "2"),
            ("X-Meta-Sync", "true"),
            ("X-Meta-Usermeta", r#"{"owner":"ann"}"#),
            ("Content-Type", "application/pdf"),
        ],
    );
    assert_eq!(r.status(), 200, "{:?}", r.text());
    // A node that never had it, on the same bucket.
    let bucket = first.bucket.clone();
    let second = TestNode::start_with("fresh-restore-2", |c| {
        c.origin.bucket = Some(bucket);
        c.store.memory_capacity = Size(1 << 20);
    });
    let meta: serde_json::Value = client()
        .get(second.url(&format!("/api/v1/meta/{id}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(meta["cached"], false);
    assert_eq!(meta["name"], "report 2026 (final) 100%.pdf");
    assert_eq!(meta["level"], 2);
    assert_eq!(meta["user_meta"], serde_json::json!({"owner": "ann"}));
    let r = client()
        .get(second.url(&format!("/api/v1/get/{id}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-cache-status"), "MISS");
    assert_eq!(r.bytes().unwrap().as_ref(), body.as_slice());
    // Stored once the body has streamed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let meta = loop {
        let meta: serde_json::Value = client()
            .get(second.url(&format!("/api/v1/meta/{id}")))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if meta["cached"] == true {
            break meta;
        }
        assert!(Instant::now() < deadline, "never cached: {meta}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(meta["name"], "report 2026 (final) 100%.pdf");
    assert_eq!(meta["level"], 2);
    assert_eq!(meta["content_type"], "application/pdf");
    assert_eq!(meta["user_meta"], serde_json::json!({"owner": "ann"}));
}

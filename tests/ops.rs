//! Cache operations on one node, over real HTTP against a real S3 server: invalidation
//! (key, prefix, bucket, native ids; copies not yet in S3 kept and listed), prewarm and
//! delete-by-prefix jobs (progress, skip, cancel), read-only refusals, cache_on_write,
//! and every cachenator-compatible endpoint.

mod common;

use std::time::{Duration, Instant};

use common::ops::{call, multipart, origin_keys, seed_objects, wait_job};
use common::sdk::{status_code, Sdk};
use common::*;
use reqwest::Method;

/// Waits until the node holds `n` objects (a read-through stores its copy just after
/// the client has the body).
fn wait_cached(node: &TestNode, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats: serde_json::Value = client()
            .get(node.url("/api/v1/stats"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if stats["total"]["objects"] == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "want {n} objects cached: {stats}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cget(node: &TestNode, key: &str) -> reqwest::blocking::Response {
    client()
        .get(node.url(&format!("/get?bucket={}&key={key}", node.bucket)))
        .send()
        .unwrap()
}

#[test]
fn invalidation_drops_safe_copies_and_lists_pending_ones() {
    let node = TestNode::start("inval");
    let b = node.bucket.clone();
    let s3 = node.s3();
    for k in ["a/1", "a/2", "b/1"] {
        s3.put(k, format!("v1 {k}").into_bytes(), "text/plain");
        assert_eq!(cget(&node, k).text().unwrap(), format!("v1 {k}"));
    }
    wait_cached(&node, 3);
    // Changed behind nearcache's back: the cached copies are stale.
    for k in ["a/1", "a/2", "b/1"] {
        s3.put(k, format!("v2 {k}").into_bytes(), "text/plain");
        assert_eq!(
            cget(&node, k).text().unwrap(),
            format!("v1 {k}"),
            "{k} is cached"
        );
    }
    let (s, v) = call(
        Method::POST,
        &node.url(&format!("/api/v1/invalidate?bucket={b}&key=a/1")),
    );
    assert_eq!(
        (s, &v["dropped"], &v["nodes"]),
        (200, &1.into(), &1.into()),
        "{v}"
    );
    assert_eq!(v["pending"], serde_json::json!([]));
    assert_eq!(v["failed_nodes"], serde_json::json!([]));
    assert_eq!(cget(&node, "a/1").text().unwrap(), "v2 a/1");
    assert_eq!(
        cget(&node, "a/2").text().unwrap(),
        "v1 a/2",
        "outside the scope"
    );
    wait_cached(&node, 3);

    let (_, v) = call(
        Method::POST,
        &node.url(&format!("/api/v1/invalidate?bucket={b}&prefix=a/")),
    );
    assert_eq!(v["dropped"], 2, "a/1 (fetched again) and a/2: {v}");
    assert_eq!(cget(&node, "a/2").text().unwrap(), "v2 a/2");
    assert_eq!(cget(&node, "b/1").text().unwrap(), "v1 b/1");
    wait_cached(&node, 2);

    // Level 0 (never in S3) is kept and listed; level 1 once in S3 is dropped.
    let (id0, id1) = (new_id(&node), new_id(&node));
    assert_eq!(
        put(
            &node,
            &id0,
            b"local only".to_vec(),
            &[("X-Meta-ConsistencyLevel", "0")]
        )
        .status(),
        200
    );
    assert_eq!(
        put(&node, &id1, b"in s3".to_vec(), &[("X-Meta-Sync", "1")]).status(),
        200
    );
    let (_, v) = call(
        Method::POST,
        &node.url(&format!("/api/v1/invalidate?key={id0}")),
    );
    assert_eq!(
        (&v["dropped"], &v["pending"]),
        (&0.into(), &serde_json::json!([id0])),
        "{v}"
    );
    let (_, v) = call(Method::POST, &node.url("/api/v1/invalidate?prefix=0"));
    assert_eq!(v["dropped"], 1, "{v}");
    assert_eq!(v["pending"], serde_json::json!([id0]));
    let r = client()
        .get(node.url(&format!("/api/v1/get/{id0}")))
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "local only");
    let r = client()
        .get(node.url(&format!("/api/v1/get/{id1}")))
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-meta-fetched"], "true", "read through again");

    // The whole bucket.
    let (_, v) = call(
        Method::POST,
        &node.url(&format!("/api/v1/invalidate?bucket={b}")),
    );
    assert_eq!(v["dropped"], 2, "a/2 and b/1: {v}");
    assert_eq!(cget(&node, "b/1").text().unwrap(), "v2 b/1");
    assert_eq!(node.metric("nearcache_invalidated_copies_total"), 6.0);

    let (s, v) = call(Method::POST, &node.url("/api/v1/invalidate"));
    assert_eq!(s, 400, "{v}");
    let (s, _) = call(
        Method::POST,
        &node.url(&format!("/api/v1/invalidate?bucket={b}&key=k&prefix=p")),
    );
    assert_eq!(s, 400);
    let (s, _) = call(Method::GET, &node.url("/api/v1/invalidate?key=x"));
    assert_eq!(s, 405);
}

#[test]
fn prewarm_fetches_into_the_cache_skips_fresh_copies_and_cancels() {
    let node = TestNode::start_with("prewarm", |c| c.jobs.rate_objects_per_sec = 400);
    let b = node.bucket.clone();
    let keys = seed_objects(&b, "warm/", 120, 1000);
    seed_objects(&b, "other/", 3, 10);
    let fetches = node.metric("nearcache_origin_fetches_total");
    let (s, job) = call(
        Method::POST,
        &node.url(&format!("/api/v1/jobs/prewarm?bucket={b}&prefix=warm/")),
    );
    assert_eq!(s, 202, "{job}");
    assert_eq!(job["kind"], "prewarm");
    assert_eq!(job["state"], "running");
    let id = job["id"].as_str().unwrap().to_owned();
    let (_, list) = call(Method::GET, &node.url("/api/v1/jobs"));
    assert!(list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == id.as_str()));
    let done = wait_job(&node.base, &id, Duration::from_secs(60));
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        (&done["listed"], &done["fetched"]),
        (&120.into(), &120.into()),
        "{done}"
    );
    assert_eq!(
        (&done["bytes"], &done["errors"]),
        (&120_000.into(), &0.into())
    );
    assert!(done["rate_objects_per_sec"].as_f64().unwrap() > 0.0);
    assert!(done["finished_unix_ms"].as_u64().is_some());
    assert_eq!(
        node.metric("nearcache_origin_fetches_total") - fetches,
        120.0
    );
    // Served from the cache: no more origin fetches.
    for k in keys.iter().take(5) {
        assert_eq!(cget(&node, k).status(), 200);
    }
    assert_eq!(
        node.metric("nearcache_origin_fetches_total") - fetches,
        120.0
    );

    // Again: every copy is fresh. One object changed in S3 is fetched again.
    Sdk::origin().put(&b, &keys[7], b"changed".to_vec());
    let (_, job) = call(
        Method::POST,
        &node.url(&format!("/api/v1/jobs/prewarm?bucket={b}&prefix=warm/")),
    );
    let again = wait_job(
        &node.base,
        job["id"].as_str().unwrap(),
        Duration::from_secs(60),
    );
    assert_eq!(
        (&again["skipped"], &again["fetched"]),
        (&119.into(), &1.into()),
        "{again}"
    );
    assert_eq!(cget(&node, &keys[7]).text().unwrap(), "changed");

    // Cancel: at 20 objects/s the job is far from done when cancelled.
    drop(node);
    let slow = TestNode::start_with("prewarm-slow", |c| {
        c.jobs.rate_objects_per_sec = 20;
        c.jobs.batch = 1;
    });
    seed_objects(&slow.bucket, "s/", 200, 10);
    let (_, job) = call(
        Method::POST,
        &slow.url(&format!(
            "/api/v1/jobs/prewarm?bucket={}&prefix=s/",
            slow.bucket
        )),
    );
    let id = job["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = call(Method::GET, &slow.url(&format!("/api/v1/jobs/{id}")));
        if v["fetched"].as_u64().unwrap() >= 5 {
            assert_eq!(v["listed"], 200, "{v}");
            assert!(v["eta_secs"].as_f64().unwrap() > 0.0, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (s, v) = call(Method::DELETE, &slow.url(&format!("/api/v1/jobs/{id}")));
    assert_eq!((s, &v["state"]), (200, &"cancelled".into()), "{v}");
    std::thread::sleep(Duration::from_millis(500));
    let (_, after) = call(Method::GET, &slow.url(&format!("/api/v1/jobs/{id}")));
    let n = after["fetched"].as_u64().unwrap();
    assert!(n < 200, "{after}");
    std::thread::sleep(Duration::from_millis(500));
    let (_, later) = call(Method::GET, &slow.url(&format!("/api/v1/jobs/{id}")));
    assert_eq!(
        later["fetched"].as_u64().unwrap(),
        n,
        "a cancelled job stops"
    );
    assert_eq!(later["state"], "cancelled");
    let (s, _) = call(
        Method::GET,
        &slow.url("/api/v1/jobs/01JUNKNOWN0000000000000000"),
    );
    assert_eq!(s, 404);
    let (s, _) = call(
        Method::DELETE,
        &slow.url("/api/v1/jobs/01JUNKNOWN0000000000000000"),
    );
    assert_eq!(s, 404);
    let (s, _) = call(Method::POST, &slow.url("/api/v1/jobs/prewarm"));
    assert_eq!(s, 400);
    let (s, _) = call(
        Method::POST,
        &slow.url("/api/v1/jobs/prewarm?bucket=no-such-bucket-here"),
    );
    assert_eq!(s, 404);
    let m = client()
        .get(slow.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(m.contains("nearcache_job_objects_total{kind=\"prewarm\",outcome=\"fetched\"}"));
    assert!(m.contains("nearcache_jobs{kind=\"prewarm\",state=\"cancelled\"} 1"));
}

#[test]
fn delete_by_prefix_removes_objects_from_s3_and_the_cache() {
    let node = TestNode::start("delprefix");
    let b = node.bucket.clone();
    let keys = seed_objects(&b, "gone/", 40, 100);
    seed_objects(&b, "kept/", 3, 100);
    for k in keys.iter().take(10) {
        assert_eq!(cget(&node, k).status(), 200); // cached
    }
    let (s, job) = call(
        Method::POST,
        &node.url(&format!("/api/v1/jobs/delete?bucket={b}&prefix=gone/")),
    );
    assert_eq!((s, &job["kind"]), (202, &"delete".into()), "{job}");
    let done = wait_job(
        &node.base,
        job["id"].as_str().unwrap(),
        Duration::from_secs(60),
    );
    assert_eq!(
        (&done["state"], &done["deleted"]),
        (&"done".into(), &40.into()),
        "{done}"
    );
    assert!(origin_keys(&b, "gone/").is_empty());
    assert_eq!(origin_keys(&b, "kept/").len(), 3);
    for k in keys.iter().take(12) {
        assert_eq!(
            cget(&node, k).status(),
            404,
            "{k}: a tombstone, not the cached copy"
        );
    }
}

#[test]
fn read_only_buckets_and_nodes_refuse_writes_with_a_clear_error() {
    let node = TestNode::start_with("ro", |c| bucket_settings(c, true, true));
    let b = node.bucket.clone();
    node.s3().put("r/1", b"readable".to_vec(), "text/plain");
    let sdk = Sdk::node(&node);
    let e = sdk
        .run(
            sdk.c
                .put_object()
                .bucket(&b)
                .key("w")
                .body(b"x".to_vec().into())
                .send(),
        )
        .unwrap_err();
    assert_eq!(status_code(&e), (403, "AccessDenied".into()));
    assert!(format!("{e:?}").contains("read-only"), "{e:?}");
    let e = sdk
        .run(sdk.c.delete_object().bucket(&b).key("r/1").send())
        .unwrap_err();
    assert_eq!(status_code(&e), (403, "AccessDenied".into()));
    assert_eq!(sdk.get(&b, "r/1").0, b"readable");
    let (ct, body) = multipart(&[("f", b"x")]);
    let r = client()
        .post(node.url(&format!("/upload?bucket={b}")))
        .header("content-type", ct)
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().unwrap();
    assert!(v["error"].as_str().unwrap().contains("read-only"), "{v}");
    let (s, v) = call(
        Method::DELETE,
        &node.url(&format!("/delete?bucket={b}&key=r/1")),
    );
    assert_eq!(s, 403, "{v}");
    let (s, v) = call(
        Method::POST,
        &node.url(&format!("/api/v1/jobs/delete?bucket={b}&prefix=r/")),
    );
    assert_eq!((s, &v["error"]), (403, &"read-only".into()), "{v}");
    // Cache operations still work.
    let (s, _) = call(
        Method::POST,
        &node.url(&format!("/api/v1/invalidate?bucket={b}")),
    );
    assert_eq!(s, 200);
    assert_eq!(origin_keys(&b, ""), vec!["r/1".to_string()]);
    drop(node);

    let node = TestNode::start_with("ro-node", |c| c.api.read_only = true);
    let r = put(&node, &ulid_like(), b"x".to_vec(), &[]);
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["error"], "read-only", "{v}");
    let sdk = Sdk::node(&node);
    let e = sdk
        .run(
            sdk.c
                .put_object()
                .bucket(&node.bucket)
                .key("w")
                .body(b"x".to_vec().into())
                .send(),
        )
        .unwrap_err();
    assert_eq!(status_code(&e), (403, "AccessDenied".into()));
    let r = client()
        .post(node.url(&format!("/api/v1/delete/{}", ulid_like())))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// Settings for the node's own bucket.
fn bucket_settings(c: &mut nearcache::config::Config, cache_on_write: bool, read_only: bool) {
    let name = c.origin.bucket.clone().unwrap();
    c.s3api.buckets.push(nearcache::config::S3BucketConfig {
        name,
        write_behind: false,
        cache_on_write,
        read_only,
        ..Default::default()
    });
}

fn ulid_like() -> String {
    "01J0000000000000000000000A".into()
}

#[test]
fn a_bucket_without_cache_on_write_only_passes_writes_through() {
    let node = TestNode::start_with("passthru", |c| bucket_settings(c, false, false));
    let b = node.bucket.clone();
    let sdk = Sdk::node(&node);
    // A cached copy of the old version is dropped by the write.
    node.s3().put("p", b"old".to_vec(), "text/plain");
    assert_eq!(sdk.get(&b, "p").0, b"old");
    wait_cached(&node, 1);
    sdk.put(&b, "p", b"new".to_vec());
    assert_eq!(
        node.s3().get("p").unwrap().0,
        b"new",
        "in S3 when acknowledged"
    );
    let fetches = node.metric("nearcache_origin_fetches_total");
    assert_eq!(sdk.get(&b, "p").0, b"new");
    assert_eq!(
        node.metric("nearcache_origin_fetches_total") - fetches,
        1.0,
        "the write was not cached: the read fetched it"
    );
    wait_cached(&node, 1); // only the read-through copy
}

#[test]
fn cachenator_endpoints_behave_as_cachenator() {
    let node = TestNode::start("cachenator");
    let b = node.bucket.clone();
    let blob = random_bytes(300_000, 7);
    // upload
    let (ct, body) = multipart(&[("blob", blob.as_slice()), ("small.txt", b"hi".as_slice())]);
    let r = client()
        .post(node.url(&format!("/upload?bucket={b}&path=folder")))
        .header("content-type", &ct)
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(
        v["message"],
        format!("Uploaded 2 object(s) to S3 bucket '{b}'")
    );
    assert_eq!(v["error"], "");
    assert_eq!(node.s3().get("folder/blob").unwrap().0, blob);
    let r = client()
        .post(node.url(&format!("/upload?bucket={b}")))
        .header("content-type", &ct)
        .body(body.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    for (url, want) in [
        (format!("/upload?bucket={b}"), 400), // not a form
        ("/upload".to_string(), 400),
    ] {
        let (s, v) = call(Method::POST, &node.url(&url));
        assert_eq!(s, want, "{url}: {v}");
        assert!(v["error"].as_str().is_some());
    }
    let r = client()
        .post(node.url("/upload"))
        .header("content-type", &ct)
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400, "no bucket");
    // get
    let r = cget(&node, "folder/blob");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"folder/blob\""
    );
    assert_eq!(r.bytes().unwrap().to_vec(), blob);
    let r = cget(&node, "somerandomblob");
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["error"], format!("Blob '{b}#somerandomblob' not found"));
    for url in [format!("/get?bucket={b}"), "/get".into()] {
        assert_eq!(call(Method::GET, &node.url(&url)).0, 400, "{url}");
    }
    // The same cached object as the S3 API's.
    assert_eq!(Sdk::node(&node).get(&b, "folder/blob").0, blob);
    // list
    let (s, v) = call(Method::GET, &node.url(&format!("/list?bucket={b}")));
    assert_eq!(s, 200);
    assert_eq!(
        v["keys"],
        serde_json::json!(["blob", "folder/blob", "folder/small.txt", "small.txt"])
    );
    let (s, v) = call(
        Method::GET,
        &node.url(&format!("/list?bucket={b}&prefix=folder")),
    );
    assert_eq!((s, v["keys"].as_array().unwrap().len()), (200, 2));
    let (s, v) = call(
        Method::GET,
        &node.url(&format!("/list?bucket={b}&prefix=somerandompath")),
    );
    assert_eq!((s, &v["keys"]), (404, &serde_json::json!([])));
    assert_eq!(call(Method::GET, &node.url("/list")).0, 400);
    // prewarm
    for (url, want) in [
        (format!("/prewarm?bucket={b}"), 400),
        ("/prewarm".into(), 400),
        (format!("/prewarm?bucket={b}&prefix=somerandompath"), 404),
    ] {
        assert_eq!(call(Method::POST, &node.url(&url)).0, want, "{url}");
    }
    let (s, v) = call(
        Method::POST,
        &node.url(&format!("/prewarm?bucket={b}&prefix=folder")),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["message"],
        format!("Pre-warming cache in the background with prefix 'folder' from S3 bucket '{b}'")
    );
    let job = wait_job(
        &node.base,
        v["job"]["id"].as_str().unwrap(),
        Duration::from_secs(30),
    );
    assert_eq!(job["state"], "done");
    // invalidate
    let (s, v) = call(
        Method::POST,
        &node.url(&format!("/invalidate?bucket={b}&key=folder/blob")),
    );
    assert_eq!(s, 200);
    assert_eq!(
        v["message"],
        format!("'{b}#folder/blob' invalidated from cache")
    );
    assert_eq!(v["dropped"], 1, "{v}");
    let (s, v) = call(
        Method::POST,
        &node.url(&format!("/invalidate?bucket={b}&prefix=folder/")),
    );
    assert_eq!((s, &v["dropped"]), (200, &1.into()), "{v}");
    assert_eq!(
        call(Method::POST, &node.url(&format!("/invalidate?bucket={b}"))).0,
        400
    );
    assert_eq!(call(Method::POST, &node.url("/invalidate")).0, 400);
    // delete
    for url in [
        format!("/delete?bucket={b}"),
        "/delete".into(),
        format!("/delete?bucket={b}&key=a&prefix=b"),
    ] {
        assert_eq!(call(Method::DELETE, &node.url(&url)).0, 400, "{url}");
    }
    let (s, v) = call(
        Method::DELETE,
        &node.url(&format!("/delete?bucket={b}&key=folder/small.txt")),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["message"],
        format!("Deleted '{b}#folder/small.txt' from S3")
    );
    assert!(node.s3().get("folder/small.txt").is_none());
    let (s, v) = call(
        Method::DELETE,
        &node.url(&format!("/delete?bucket={b}&prefix=folder")),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["message"],
        format!("Deleted object(s) with prefix 'folder' from S3 bucket '{b}'")
    );
    assert!(origin_keys(&b, "folder").is_empty());
    assert_eq!(cget(&node, "folder/blob").status(), 404);
    assert_eq!(origin_keys(&b, "").len(), 2);
    assert_eq!(
        call(Method::GET, &node.url("/delete?bucket=x&key=y")).0,
        405
    );
}

#[test]
fn an_upload_lists_the_files_that_failed_and_stores_the_others() {
    let node = TestNode::start_with("upload-fail", |c| {
        c.api.max_object_size = nearcache::config::Size(1 << 20);
    });
    let b = node.bucket.clone();
    let big = random_bytes(3 << 20, 1);
    let (ct, body) = multipart(&[
        ("big", big.as_slice()),
        ("", b"no name".as_slice()),
        ("ok", b"fine".as_slice()),
    ]);
    let r = client()
        .post(node.url(&format!("/upload?bucket={b}&path=x/")))
        .header("content-type", ct)
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 500);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["error"], "Failed to upload some blobs");
    assert_eq!(
        v["uploadsFailed"],
        serde_json::json!(["x/big", "x/"]),
        "{v}"
    );
    assert!(v["details"][0].as_str().unwrap().contains("exceeds"), "{v}");
    assert_eq!(node.s3().get("x/ok").unwrap().0, b"fine");
    assert!(node.s3().get("x/big").is_none());
    // A form cut short: a clear 400, nothing half-stored.
    let r = client()
        .post(node.url(&format!("/upload?bucket={b}")))
        .header("content-type", "multipart/form-data; boundary=zz")
        .body("--zz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"cut\"\r\n\r\nabc")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400, "{}", r.text().unwrap());
    assert!(node.s3().get("cut").is_none());
}

#[test]
fn a_restart_forgets_jobs_but_keeps_what_they_cached() {
    let mut node = TestNode::start_with("jobs-restart", |c| c.jobs.rate_objects_per_sec = 20);
    let b = node.bucket.clone();
    seed_objects(&b, "r/", 100, 10);
    let (_, job) = call(
        Method::POST,
        &node.url(&format!("/api/v1/jobs/prewarm?bucket={b}&prefix=r/")),
    );
    let id = job["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let fetched = loop {
        let (_, v) = call(Method::GET, &node.url(&format!("/api/v1/jobs/{id}")));
        let f = v["fetched"].as_u64().unwrap();
        if f >= 5 {
            break f;
        }
        assert!(Instant::now() < deadline, "no progress: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    node.restart(|c| c.jobs.rate_objects_per_sec = 20);
    let (s, _) = call(Method::GET, &node.url(&format!("/api/v1/jobs/{id}")));
    assert_eq!(s, 404, "jobs live in memory");
    let (_, all) = call(Method::GET, &node.url("/api/v1/jobs"));
    assert_eq!(all["jobs"], serde_json::json!([]));
    // What the job fetched before the restart is still cached: a new run skips it.
    let (_, job) = call(
        Method::POST,
        &node.url(&format!("/api/v1/jobs/prewarm?bucket={b}&prefix=r/")),
    );
    let done = wait_job(
        &node.base,
        job["id"].as_str().unwrap(),
        Duration::from_secs(60),
    );
    assert!(done["skipped"].as_u64().unwrap() >= fetched, "{done}");
    assert_eq!(
        done["fetched"].as_u64().unwrap() + done["skipped"].as_u64().unwrap(),
        100
    );
}

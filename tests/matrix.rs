//! One suite over several configurations: shards 1 and 3 × io_uring and syscall file
//! devices (and the epoll network driver, `server.io`) × a real S3 server (moto, or NEARCACHE_TEST_S3_*) and the embedded local
//! origin, each driven through the native API and the S3-compatible API (aws-sdk-s3).
//!
//! The multi-shard configurations keep one object's metadata in memory per shard
//! (`store.meta_cache_objects`), so their reads also take metadata back from the journal.
//!
//! Each configuration writes, reads (whole, ranged, conditional), lists, copies and
//! deletes, then restarts with its cache wiped so every read comes back from the origin.

mod common;

use std::path::Path;

use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use common::sdk::{status_code, Sdk};
use common::*;
use nearcache::config::Config;

#[derive(Debug, Clone, Copy)]
enum Origin {
    S3,
    Embedded,
}

/// Starts a node of the given shape; the embedded origin lives outside the data dir,
/// so wiping the cache keeps it.
/// `device` "epoll" runs the shards on the epoll driver (`server.io`), files by syscalls.
fn configure(cfg: &mut Config, shards: usize, device: &str, origin: Origin, local: &Path) {
    cfg.server.shards = shards;
    if shards > 1 {
        // One resident meta per shard: the other objects' come back from the journal.
        cfg.store.meta_cache_objects = shards;
    }
    if device == "epoll" {
        cfg.server.io = "epoll".into();
        cfg.store.device = "auto".into();
    } else {
        cfg.store.device = device.into();
    }
    if let Origin::Embedded = origin {
        cfg.origin.bucket = None;
        cfg.origin.endpoint = None;
        cfg.origin.access_key = None;
        cfg.origin.secret_key = None;
        cfg.origin.local_dir = Some(local.to_path_buf());
    }
}

/// Stops the node, drops every shard's store (the cache), starts it again.
fn restart_cold(node: &mut TestNode, shards: usize, device: &str, origin: Origin, local: &Path) {
    node.handle
        .take()
        .unwrap()
        .shutdown()
        .expect("clean shutdown");
    for i in 0..shards {
        let dir = node.dir.join(format!("shard-{i}"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let (dir, bucket) = (node.dir.clone(), node.bucket.clone());
    let mut cfg = test_config(&dir, &bucket);
    configure(&mut cfg, shards, device, origin, local);
    let handle = nearcache::start(cfg).expect("restart node");
    node.base = format!("http://{}", handle.addr);
    node.s3_base = format!("http://{}", handle.s3_addr);
    node.handle = Some(handle);
}

fn native_get(node: &TestNode, id: &str, headers: &[(&str, &str)]) -> reqwest::blocking::Response {
    let mut r = client().get(node.url(&format!("/api/v1/get/{id}")));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().unwrap()
}

/// A one-part multipart upload of `part` as `mp.bin`, read back.
fn multipart(sdk: &Sdk, bucket: &str, part: &[u8]) {
    let up = sdk
        .run(
            sdk.c
                .create_multipart_upload()
                .bucket(bucket)
                .key("mp.bin")
                .send(),
        )
        .expect("create multipart");
    let etag = sdk
        .run(
            sdk.c
                .upload_part()
                .bucket(bucket)
                .key("mp.bin")
                .upload_id(up.upload_id().unwrap())
                .part_number(1)
                .body(part.to_vec().into())
                .send(),
        )
        .expect("upload part")
        .e_tag()
        .unwrap()
        .to_owned();
    sdk.run(
        sdk.c
            .complete_multipart_upload()
            .bucket(bucket)
            .key("mp.bin")
            .upload_id(up.upload_id().unwrap())
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .parts(CompletedPart::builder().part_number(1).e_tag(etag).build())
                    .build(),
            )
            .send(),
    )
    .expect("complete multipart");
    assert_eq!(sdk.get(bucket, "mp.bin").0, part);
}

fn run(tag: &str, shards: usize, device: &str, origin: Origin) {
    let local = tempfile::tempdir().unwrap();
    let lp = local.path().to_path_buf();
    let mut node = TestNode::start_with(tag, |cfg| configure(cfg, shards, device, origin, &lp));
    let health: serde_json::Value = client()
        .get(node.url("/healthz"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(health["shards"], shards, "{health}");

    // --- native API ------------------------------------------------------------------
    let mut native = Vec::new();
    for (i, size) in [0usize, 1, 4096, 300_000].into_iter().enumerate() {
        let id = new_id(&node);
        let body = random_bytes(size, i as u64);
        let r = put(&node, &id, body.clone(), &[("X-Meta-Sync", "1")]);
        assert_eq!(r.status(), 200, "{}", r.text().unwrap());
        let j: serde_json::Value = r.json().unwrap();
        assert_eq!(j["in_origin"], true, "{j}");
        native.push((id, body));
    }
    let level0 = new_id(&node);
    assert_eq!(
        put(
            &node,
            &level0,
            b"local only".to_vec(),
            &[("X-Meta-ConsistencyLevel", "0")]
        )
        .status(),
        200
    );
    for (id, body) in &native {
        let r = native_get(&node, id, &[]);
        assert_eq!(r.status(), 200);
        let etag = r.headers()["etag"].to_str().unwrap().to_owned();
        assert_eq!(r.bytes().unwrap().to_vec(), *body);
        assert_eq!(
            native_get(&node, id, &[("If-None-Match", &etag)]).status(),
            304
        );
        if body.len() > 10 {
            let r = native_get(&node, id, &[("Range", "bytes=3-9")]);
            assert_eq!(r.status(), 206);
            assert_eq!(r.bytes().unwrap().to_vec(), body[3..10].to_vec());
        }
    }
    let (gone, _) = &native[1];
    let r = client()
        .post(node.url(&format!("/api/v1/delete/{gone}")))
        .header("X-Meta-Sync", "1")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(native_get(&node, gone, &[]).status(), 404);

    // --- S3 API ------------------------------------------------------------------------
    let sdk = Sdk::node(&node);
    let bucket = format!("{}-s3", node.bucket);
    sdk.run(sdk.c.create_bucket().bucket(&bucket).send())
        .expect("create bucket");
    let mut s3_objects = Vec::new();
    for (i, key) in ["a.bin", "dir/b c+d.bin", "dir/sub/ключ"]
        .into_iter()
        .enumerate()
    {
        let body = random_bytes(1000 * (i + 1), 100 + i as u64);
        sdk.put(&bucket, key, body.clone());
        s3_objects.push((key.to_string(), body));
    }
    for (key, body) in &s3_objects {
        let (got, o) = sdk.get(&bucket, key);
        assert_eq!(got, *body, "{key}");
        assert_eq!(o.content_length(), Some(body.len() as i64));
    }
    let ranged = sdk.run(async {
        let o = sdk
            .c
            .get_object()
            .bucket(&bucket)
            .key("a.bin")
            .range("bytes=10-19")
            .send()
            .await
            .unwrap();
        o.body.collect().await.unwrap().into_bytes().to_vec()
    });
    assert_eq!(ranged, s3_objects[0].1[10..20].to_vec());
    let (keys, prefixes) = sdk.list(&bucket, "", Some("/"));
    assert_eq!(
        (keys, prefixes),
        (vec!["a.bin".to_string()], vec!["dir/".to_string()])
    );
    sdk.run(
        sdk.c
            .copy_object()
            .bucket(&bucket)
            .key("copy.bin")
            .copy_source(format!("{bucket}/a.bin"))
            .send(),
    )
    .expect("copy");
    assert_eq!(sdk.get(&bucket, "copy.bin").0, s3_objects[0].1);
    // The embedded origin keeps whole objects only: multipart uploads are refused
    // clearly there (501), and work against S3.
    let part = random_bytes(70_000, 9);
    match origin {
        Origin::S3 => multipart(&sdk, &bucket, &part),
        Origin::Embedded => {
            let e = sdk
                .run(
                    sdk.c
                        .create_multipart_upload()
                        .bucket(&bucket)
                        .key("mp.bin")
                        .send(),
                )
                .unwrap_err();
            assert_eq!(status_code(&e), (501, "NotImplemented".into()));
        }
    }
    sdk.run(sdk.c.delete_object().bucket(&bucket).key("a.bin").send())
        .expect("delete");
    let e = sdk
        .run(sdk.c.get_object().bucket(&bucket).key("a.bin").send())
        .unwrap_err();
    assert_eq!(status_code(&e), (404, "NoSuchKey".into()));
    drop(sdk);

    // --- a cold cache: everything written at level >= 1 comes back from the origin -----
    restart_cold(&mut node, shards, device, origin, &lp);
    for (id, body) in native.iter().filter(|(id, _)| id != gone) {
        let r = native_get(&node, id, &[]);
        assert_eq!(r.status(), 200, "{id} after a cold restart");
        assert_eq!(r.headers()["x-meta-fetched"], "true");
        assert_eq!(r.bytes().unwrap().to_vec(), *body);
    }
    assert_eq!(
        native_get(&node, gone, &[]).status(),
        404,
        "a deleted id stays deleted"
    );
    assert_eq!(
        native_get(&node, &level0, &[]).status(),
        404,
        "level 0 never reached the origin"
    );
    let sdk = Sdk::node(&node);
    for (key, body) in s3_objects.iter().skip(1) {
        assert_eq!(sdk.get(&bucket, key).0, *body, "{key} after a cold restart");
    }
    if let Origin::S3 = origin {
        assert_eq!(sdk.get(&bucket, "mp.bin").0, part);
    }
    let e = sdk
        .run(sdk.c.get_object().bucket(&bucket).key("a.bin").send())
        .unwrap_err();
    assert_eq!(status_code(&e).0, 404);
}

#[test]
fn one_shard_uring_s3() {
    run("m1us", 1, "uring", Origin::S3);
}

#[test]
fn one_shard_syscall_s3() {
    run("m1ss", 1, "syscall", Origin::S3);
}

#[test]
fn three_shards_uring_s3() {
    run("m3us", 3, "uring", Origin::S3);
}

#[test]
fn three_shards_syscall_s3() {
    run("m3ss", 3, "syscall", Origin::S3);
}

#[test]
fn one_shard_uring_embedded() {
    run("m1ue", 1, "uring", Origin::Embedded);
}

#[test]
fn one_shard_syscall_embedded() {
    run("m1se", 1, "syscall", Origin::Embedded);
}

#[test]
fn three_shards_uring_embedded() {
    run("m3ue", 3, "uring", Origin::Embedded);
}

#[test]
fn three_shards_syscall_embedded() {
    run("m3se", 3, "syscall", Origin::Embedded);
}

#[test]
fn three_shards_epoll_s3() {
    run("m3es", 3, "epoll", Origin::S3);
}

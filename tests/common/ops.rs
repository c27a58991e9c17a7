//! Helpers for the cache-operation tests (invalidation, jobs, cachenator endpoints).

use std::time::{Duration, Instant};

use futures::StreamExt;

use super::client;
use super::sdk::Sdk;

/// Puts `n` objects `{prefix}{i:05}` of `size` bytes straight into the test S3 server,
/// 64 at a time. Returns their keys.
pub fn seed_objects(bucket: &str, prefix: &str, n: usize, size: usize) -> Vec<String> {
    let sdk = Sdk::origin();
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}{i:05}")).collect();
    sdk.run(async {
        futures::stream::iter(keys.iter())
            .map(|k| {
                let body = vec![b'x'; size];
                let c = sdk.c.clone();
                async move {
                    c.put_object()
                        .bucket(bucket)
                        .key(k)
                        .body(body.into())
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("seeding {k}: {e:?}"));
                }
            })
            .buffer_unordered(64)
            .collect::<()>()
            .await
    });
    keys
}

/// A JSON request; (status, body).
pub fn call(method: reqwest::Method, url: &str) -> (u16, serde_json::Value) {
    let r = client().request(method, url).send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, v)
}

/// Polls `GET {base}/api/v1/jobs/{id}` until the job is no longer running.
pub fn wait_job(base: &str, id: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (s, v) = call(reqwest::Method::GET, &format!("{base}/api/v1/jobs/{id}"));
        assert_eq!(s, 200, "{v}");
        if v["state"] != "running" {
            return v;
        }
        assert!(Instant::now() < deadline, "job still running: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A multipart/form-data body with `files` parts: (content type, body).
pub fn multipart(files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----nearcacheTestBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, data) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Every key under `prefix` in the test S3 server.
pub fn origin_keys(bucket: &str, prefix: &str) -> Vec<String> {
    let sdk = Sdk::origin();
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let o = sdk
            .run(
                sdk.c
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(prefix)
                    .set_continuation_token(token.take())
                    .send(),
            )
            .unwrap();
        keys.extend(o.contents().iter().map(|o| o.key().unwrap().to_owned()));
        match o.next_continuation_token() {
            Some(t) if o.is_truncated() == Some(true) => token = Some(t.to_owned()),
            _ => return keys,
        }
    }
}

//! Fuzz targets for what the cache operations parse (bolero, as `src/fuzz.rs`; run by
//! `cargo test -p nearcache --lib fuzz_ops`):
//!
//! - invalidation scopes (`object::invalidate::Scope`) from `bucket`/`key`/`prefix`: never
//!   a panic; an accepted scope survives the trip to peers (query string and back) and
//!   covers exactly the stored keys it names;
//! - cachenator `/upload` forms: any body through the streaming multipart parser (multer)
//!   and the part-to-key rule, never a panic; a well-formed form, arriving in chunks of
//!   any size, yields exactly its files, byte for byte, under `path/NAME`.

use std::sync::atomic::{AtomicUsize, Ordering};

use bolero::check;
use bytes::Bytes;

use crate::api::cachenator::part_key;
use crate::object::invalidate::{query_value as decode, Scope};
use crate::object::CacheKey;

fn report(name: &str, n: &AtomicUsize) {
    eprintln!("fuzz {name}: {} cases", n.load(Ordering::Relaxed));
}

#[test]
fn fuzz_ops_invalidate_scope() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(3000)
        .with_type::<(Option<String>, Option<String>, Option<String>, String)>()
        .for_each(|(bucket, key, prefix, stored)| {
            n.fetch_add(1, Ordering::Relaxed);
            let bucket = bucket.as_deref().map(|b| b.replace('/', ""));
            let Ok(scope) =
                Scope::from_params(bucket.as_deref(), key.as_deref(), prefix.as_deref())
            else {
                return;
            };
            let q = scope.to_query();
            let back = Scope::from_params(
                decode(&q, "bucket").as_deref(),
                decode(&q, "key").as_deref(),
                decode(&q, "prefix").as_deref(),
            )
            .expect("a scope's own query parses");
            assert_eq!(back, scope, "{q}");
            let covered = scope.covers(stored);
            let _ = scope.shown(stored);
            let want = match &scope {
                Scope::Key(k) => k.as_str() == stored,
                Scope::Bucket { bucket, prefix } => stored
                    .split_once('/')
                    .is_some_and(|(b, k)| b == bucket && k.starts_with(prefix.as_str())),
                Scope::NativePrefix(p) => !stored.contains('/') && stored.starts_with(p.as_str()),
            };
            assert_eq!(covered, want, "{scope:?} {stored:?}");
            if let Scope::Bucket { bucket, prefix } = &scope {
                let k = format!("{prefix}{stored}");
                assert!(scope.covers(CacheKey::s3(bucket, &k).as_str()));
            }
        });
    report("ops_invalidate_scope", &n);
}

/// The files (key, body) a form yields, its stream cut into chunks of these sizes.
fn parse_form(
    body: &[u8],
    boundary: &str,
    path: &str,
    cuts: &[u8],
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut chunks = Vec::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = (cuts.get(i).copied().unwrap_or(64) as usize).clamp(1, rest.len());
        chunks.push(Ok::<Bytes, std::io::Error>(Bytes::copy_from_slice(
            &rest[..n],
        )));
        rest = &rest[n..];
        i += 1;
    }
    let stream = futures::stream::iter(chunks);
    futures::executor::block_on(async {
        let mut form = multer::Multipart::new(stream, boundary);
        let mut out = Vec::new();
        while let Some(mut field) = form.next_field().await.map_err(|e| e.to_string())? {
            let key = part_key(path, field.name(), field.file_name());
            let mut data = Vec::new();
            while let Some(c) = field.chunk().await.map_err(|e| e.to_string())? {
                data.extend_from_slice(&c);
            }
            if let Some(Ok(key)) = key {
                out.push((key, data));
            }
        }
        Ok(out)
    })
}

#[test]
fn fuzz_ops_upload_form_raw() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(3000)
        .with_max_len(512)
        .for_each(|input: &[u8]| {
            n.fetch_add(1, Ordering::Relaxed);
            let (cuts, body) = input.split_at(input.len().min(8));
            let _ = parse_form(body, "b0undary", "p", cuts);
            let _ = multer::parse_boundary(String::from_utf8_lossy(body));
        });
    report("ops_upload_form_raw", &n);
}

#[test]
fn fuzz_ops_upload_form_model() {
    let n = AtomicUsize::new(0);
    check!()
        .with_iterations(2000)
        .with_type::<(Vec<(u8, Vec<u8>)>, Vec<u8>, bool)>()
        .for_each(|(files, cuts, with_path)| {
            n.fetch_add(1, Ordering::Relaxed);
            let boundary = "----fuzzBoundaryXyZ";
            let path = if *with_path { "dir/sub" } else { "" };
            let mut body = Vec::new();
            let mut want = Vec::new();
            for (i, (kind, data)) in files.iter().take(6).enumerate() {
                // Bodies cannot contain the delimiter line; a model form never does.
                if data.windows(boundary.len()).any(|w| w == boundary.as_bytes()) {
                    continue;
                }
                let (field, name) = match kind % 3 {
                    0 => ("files", format!("f{i}.bin")),
                    1 => ("files", format!("C:\\\\up\\\\dir/f{i}")),
                    _ => ("other", format!("x{i}")),
                };
                body.extend_from_slice(
                    format!(
                        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(data);
                body.extend_from_slice(b"\r\n");
                if field == "files" {
                    let base = name.rsplit(['/', '\\']).next().unwrap_or(&name).to_owned();
                    let key = if path.is_empty() { base } else { format!("{path}/{base}") };
                    want.push((key, data.clone()));
                }
            }
            body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
            let got = parse_form(&body, boundary, path, cuts).expect("a well-formed form parses");
            assert_eq!(got, want);
        });
    report("ops_upload_form_model", &n);
}

#[test]
fn part_keys_follow_cachenator() {
    assert_eq!(
        part_key("", Some("files"), Some("a.txt")),
        Some(Ok("a.txt".into()))
    );
    assert_eq!(
        part_key("p", Some("files"), Some("a")),
        Some(Ok("p/a".into()))
    );
    assert_eq!(
        part_key("p/", Some("files"), Some("d/a")),
        Some(Ok("p/a".into()))
    );
    assert_eq!(
        part_key("p", Some("files"), Some("")),
        Some(Err("p/".into()))
    );
    assert_eq!(part_key("p", Some("other"), Some("a")), None);
    assert_eq!(part_key("p", Some("files"), None), None);
}

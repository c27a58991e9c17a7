//! The checker must be able to fail: a tiny in-process HTTP/1.1 server (std TcpListener,
//! a thread per connection) answers one key correctly, one with the right length but wrong
//! bytes, one with a body shorter than its Content-Length, one with a 500; `get` must count
//! each wrong answer as its error kind and only the right one as served.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;

use clap::Parser;
use nearcache_loadtest::content;
use nearcache_loadtest::manifest::{Entry, Manifest, MANIFEST_VERSION};
use nearcache_loadtest::Cli;

const SEED: u64 = 9;
const SIZE: u64 = 4096;

/// What the server does for object i.
#[derive(Clone, Copy)]
enum Behaviour {
    Correct,
    Corrupt,
    Truncate,
    Fail,
}

const OBJECTS: [Behaviour; 4] = [
    Behaviour::Correct,
    Behaviour::Corrupt,
    Behaviour::Truncate,
    Behaviour::Fail,
];

fn ids() -> Vec<String> {
    (0..OBJECTS.len() as u64)
        .map(|i| content::object_id(SEED, SIZE, i).to_string())
        .collect()
}

fn body_of(id: &str) -> Vec<u8> {
    content::body(content::body_seed(SEED, id), SIZE).to_vec()
}

fn serve(conn: TcpStream, ids: Vec<String>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        // Skip headers (GETs have no body).
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        let id = path.rsplit('/').next().unwrap_or("");
        let Some(i) = ids.iter().position(|x| x == id) else {
            let _ = w.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
            continue;
        };
        let mut body = body_of(id);
        let head = |len: usize| format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
        match OBJECTS[i] {
            Behaviour::Correct => {}
            Behaviour::Corrupt => body[100] ^= 0xFF,
            Behaviour::Truncate => {
                // Announce the full length, send half, close.
                let _ = w.write_all(head(body.len()).as_bytes());
                let _ = w.write_all(&body[..body.len() / 2]);
                return;
            }
            Behaviour::Fail => {
                let _ = w.write_all(
                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\noops",
                );
                continue;
            }
        }
        if w.write_all(head(body.len()).as_bytes()).is_err() || w.write_all(&body).is_err() {
            return;
        }
    }
}

fn start_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let ids = ids();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            c.set_nodelay(true).unwrap();
            let ids = ids.clone();
            std::thread::spawn(move || serve(c, ids));
        }
    });
    format!("http://{addr}")
}

fn write_manifest(path: &Path) {
    let objects = ids()
        .into_iter()
        .map(|id| Entry {
            md5: hex::encode(content::md5(&body_of(&id))),
            key: id.clone(),
            id,
            size: SIZE,
        })
        .collect();
    Manifest {
        version: MANIFEST_VERSION,
        seed: SEED,
        api: "plain".into(),
        prefix: String::new(),
        objects,
    }
    .save(path)
    .unwrap();
}

#[test]
fn get_counts_wrong_answers_as_errors() {
    let url = start_server();
    let dir = std::env::temp_dir().join(format!("lt-checker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("m.json");
    write_manifest(&manifest);
    let m = manifest.to_str().unwrap();
    let cli = Cli::try_parse_from([
        "nearcache-loadtest",
        "get",
        "--target",
        &url,
        "--api",
        "plain",
        "--manifest",
        m,
        "--requests",
        "400",
        "--warmup",
        "0s",
        "--connections",
        "4",
        "--verify-sample",
        "1",
        "--timeout",
        "5s",
        "--quiet",
    ])
    .unwrap();
    let r = nearcache_loadtest::run(cli).unwrap();
    println!("{}", r.to_json());
    let err = |k: &str| r.errors.get(k).copied().unwrap_or(0);
    assert!(err("checksum-mismatch") > 0, "{:?}", r.errors);
    assert!(err("short-body") > 0, "{:?}", r.errors);
    assert!(err("status-500") > 0, "{:?}", r.errors);
    assert!(r.requests > 0);
    // Only the correct object is served: every served request was verified (sample 1).
    assert_eq!(r.verified, r.requests);
    assert_eq!(r.requests + r.errors_total, 400);
    // Roughly a quarter each (uniform over 4 keys).
    assert!(r.requests > 50 && r.requests < 150, "{}", r.requests);

    // Without MD5 sampling the corrupt body passes the length checks (that is what the
    // sample is for), but the short body and the 500 are still caught.
    let cli = Cli::try_parse_from([
        "nearcache-loadtest",
        "get",
        "--target",
        &url,
        "--api",
        "plain",
        "--manifest",
        m,
        "--requests",
        "200",
        "--warmup",
        "0s",
        "--connections",
        "2",
        "--verify-sample",
        "0",
        "--quiet",
    ])
    .unwrap();
    let r = nearcache_loadtest::run(cli).unwrap();
    assert_eq!(r.errors.get("checksum-mismatch"), None, "{:?}", r.errors);
    assert!(r.errors.get("short-body").copied().unwrap_or(0) > 0);
    assert_eq!(r.verified, 0);

    // This server speaks only HTTP/1.1: h2c must fail as errors, not hang or panic.
    let cli = Cli::try_parse_from([
        "nearcache-loadtest",
        "get",
        "--target",
        &url,
        "--api",
        "plain",
        "--manifest",
        m,
        "--requests",
        "50",
        "--warmup",
        "0s",
        "--connections",
        "2",
        "--quiet",
        "--http2",
        "--timeout",
        "2s",
    ])
    .unwrap();
    let r = nearcache_loadtest::run(cli).unwrap();
    assert_eq!(r.requests, 0);
    assert!(r.errors_total > 0, "{:?}", r.errors);
    std::fs::remove_dir_all(&dir).ok();
}

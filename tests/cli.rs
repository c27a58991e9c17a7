//! The client CLI (`nearcache put|get|stat|rm|ls|stats|cluster|top|...`) run as the real
//! binary against a node started in-process with a real S3 server behind it: every
//! subcommand's `--json` output parsed, human output checked, exit codes for each kind
//! of failure, and `config check`.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::sdk::Sdk;
use common::*;
use nearcache_s3::testutil::fresh_bucket;

fn nc(node: &TestNode, args: &[&str]) -> Output {
    nc_env(node, args, &[])
}

fn nc_env(node: &TestNode, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nearcache"));
    cmd.args(args)
        .env("NEARCACHE_SERVER", &node.base)
        .env_remove("NEARCACHE_CONFIG")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running nearcache")
}

fn ok(out: &Output) -> &Output {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&ok(out).stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn objects_round_trip_through_the_cli() {
    let node = TestNode::start("cli-objects");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("report.txt");
    let body = random_bytes(5 << 20, 7);
    std::fs::write(&src, &body).unwrap();

    // put --json: at least {"id": ...}
    let v = json(&nc(
        &node,
        &[
            "put",
            src.to_str().unwrap(),
            "--json",
            "--meta",
            "owner=ann",
        ],
    ));
    let id = v["id"].as_str().expect("put --json has an id").to_string();
    assert_eq!(v["size"], body.len() as u64);

    // stat --json: the metadata with size
    let v = json(&nc(&node, &["stat", &id, "--json"]));
    assert_eq!(v["size"], body.len() as u64);
    assert_eq!(v["name"], "report.txt");
    assert_eq!(v["user_meta"]["owner"], "ann");
    let human = ok(&nc(&node, &["stat", &id])).stdout.clone();
    let human = String::from_utf8(human).unwrap();
    assert!(
        human.contains("report.txt") && human.contains("5.0 MiB"),
        "{human}"
    );

    // get -o FILE and -o -
    let dst = dir.path().join("out.bin");
    ok(&nc(&node, &["get", &id, "-o", dst.to_str().unwrap()]));
    assert_eq!(md5_hex(&std::fs::read(&dst).unwrap()), md5_hex(&body));
    assert!(!Path::new(&format!("{}.nearcache-part", dst.display())).exists());
    let out = ok(&nc(&node, &["get", &id, "-o", "-"])).stdout.clone();
    assert_eq!(md5_hex(&out), md5_hex(&body));
    let v = json(&nc(
        &node,
        &["get", &id, "-o", dst.to_str().unwrap(), "--json"],
    ));
    assert_eq!(v["size"], body.len() as u64);
    // Off a terminal: no progress bar, no control characters, one line for the human.
    let out = ok(&nc(&node, &["get", &id, "-o", dst.to_str().unwrap()])).clone();
    assert_eq!(
        stderr(&out),
        format!("wrote 5.0 MiB to {}\n", dst.display()),
        "stderr off a terminal"
    );
    // On a terminal (a pty from script(1), where it exists): a progress bar.
    if Path::new("/usr/bin/script").exists() {
        let cmd = format!(
            "{} get {id} -o {}",
            env!("CARGO_BIN_EXE_nearcache"),
            dst.display()
        );
        let out = Command::new("/usr/bin/script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("NEARCACHE_SERVER", &node.base)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let tty = String::from_utf8_lossy(&out.stdout);
        assert!(
            tty.contains("get [") && tty.contains("MiB"),
            "no progress bar on a terminal: {tty:?}"
        );
    }

    // put from stdin, human output: the id alone on stdout
    let mut child = Command::new(env!("CARGO_BIN_EXE_nearcache"))
        .args(["put", "-", "--name", "notes.md", "--level", "0"])
        .env("NEARCACHE_SERVER", &node.base)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"# hello from stdin\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let id2 = String::from_utf8(ok(&out).stdout.clone())
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(id2.len(), 26, "a ULID: {id2:?}");
    let out = ok(&nc(&node, &["get", &id2])).stdout.clone();
    assert_eq!(out, b"# hello from stdin\n");

    // rm, then get and stat exit 3 (not found)
    let v = json(&nc(&node, &["rm", &id, "--json"]));
    assert_eq!(v["deleted"], true);
    let out = nc(&node, &["get", &id, "-o", dst.to_str().unwrap()]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let out = nc(&node, &["stat", &id]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    // A bad id is refused by the node: 4.
    let out = nc(&node, &["stat", "not-a-ulid"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(stderr(&out).contains("400"), "{}", stderr(&out));
    // A missing local file: 1.
    let out = nc(&node, &["put", "/nonexistent/file"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    // Bad usage: 2.
    let out = nc(&node, &["put"]);
    assert_eq!(code(&out), 2);
    let out = nc(&node, &["put", src.to_str().unwrap(), "--level", "7"]);
    assert_eq!(code(&out), 2);
}

#[test]
fn ls_goes_through_the_s3_api() {
    let node = TestNode::start("cli-ls");
    let sdk = Sdk::node(&node);
    let bucket = fresh_bucket("cli-ls-b");
    sdk.run(sdk.c.create_bucket().bucket(&bucket).send())
        .expect("create bucket");
    for k in ["a.txt", "dir/b.txt", "dir/c.txt"] {
        sdk.put(&bucket, k, k.as_bytes().to_vec());
    }
    let keys = ["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY];
    let s3 = ["--s3-url", node.s3_base.as_str()];
    let args = |rest: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["ls".into()];
        v.extend(rest.iter().map(|s| s.to_string()));
        v.extend(keys.iter().chain(&s3).map(|s| s.to_string()));
        v
    };
    let run = |rest: &[&str]| {
        let a = args(rest);
        nc(&node, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let v = json(&run(&["--json"]));
    assert!(
        v["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b == &bucket),
        "{v}"
    );
    let v = json(&run(&[&bucket, "--json"]));
    let keys_of = |v: &serde_json::Value| -> Vec<String> {
        v["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["key"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(keys_of(&v), ["a.txt"]);
    assert_eq!(v["prefixes"], serde_json::json!(["dir/"]));
    let v = json(&run(&[&format!("s3://{bucket}/dir/"), "--json"]));
    assert_eq!(keys_of(&v), ["dir/b.txt", "dir/c.txt"]);
    assert_eq!(v["objects"][0]["size"], 9);
    let v = json(&run(&[&bucket, "-r", "--json"]));
    assert_eq!(keys_of(&v).len(), 3);
    let human = String::from_utf8(ok(&run(&[&bucket])).stdout.clone()).unwrap();
    assert!(
        human.contains("PRE") && human.contains("dir/") && human.contains("a.txt"),
        "{human}"
    );

    // Keys from the node's config file.
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        cfg.path(),
        format!(
            "[server]\nlisten = \"{}\"\n[s3api]\nlisten = \"{}\"\n[[s3api.keys]]\naccess_key = \"{S3_ACCESS_KEY}\"\nsecret_key = \"{S3_SECRET_KEY}\"\n",
            node.base.trim_start_matches("http://"),
            node.s3_base.trim_start_matches("http://"),
        ),
    )
    .unwrap();
    let out = nc_env(
        &node,
        &[
            "ls",
            &bucket,
            "--json",
            "--config",
            cfg.path().to_str().unwrap(),
        ],
        &[("NEARCACHE_SERVER", "")],
    );
    assert_eq!(keys_of(&json(&out)), ["a.txt"]);
    // The native API's address comes from the same file (server.listen).
    let out = nc_env(
        &node,
        &["stats", "--json", "--config", cfg.path().to_str().unwrap()],
        &[("NEARCACHE_SERVER", "")],
    );
    assert!(json(&out)["total"].is_object());

    // A wrong secret: the S3 API refuses (4).
    let out = nc(
        &node,
        &[
            "ls",
            &bucket,
            "--access-key",
            S3_ACCESS_KEY,
            "--secret-key",
            "wrong",
            "--s3-url",
            &node.s3_base,
        ],
    );
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    // No key at all: usage (2), saying where keys come from.
    let out = nc(&node, &["ls", &bucket, "--s3-url", &node.s3_base]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("--access-key"), "{}", stderr(&out));
}

#[test]
fn admin_commands_and_exit_codes() {
    let node = TestNode::start_with("cli-admin", |c| {
        c.cluster.listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let id = new_id(&node);
    assert!(put(&node, &id, b"hello".to_vec(), &[])
        .status()
        .is_success());
    let _ = client()
        .get(node.url(&format!("/api/v1/get/{id}")))
        .send()
        .unwrap();

    let v = json(&nc(&node, &["stats", "--json"]));
    assert!(v["total"]["objects"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["shards"].as_array().unwrap().len(), 2);
    let human = String::from_utf8(ok(&nc(&node, &["stats"])).stdout.clone()).unwrap();
    assert!(
        human.contains("total") && human.contains("HIT RATIO"),
        "{human}"
    );

    let v = json(&nc(&node, &["cluster", "--json", "--key", &id]));
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["state"], "alive");
    assert_eq!(v["key"]["owners"][0], v["node_id"]);
    let human =
        String::from_utf8(ok(&nc(&node, &["cluster", "--key", &id])).stdout.clone()).unwrap();
    assert!(
        human.contains("alive") && human.contains("owners"),
        "{human}"
    );

    // top: one JSON line per refresh, with rates from the difference of two scrapes.
    let load = std::thread::spawn({
        let url = node.url(&format!("/api/v1/get/{id}"));
        move || {
            for _ in 0..200 {
                let _ = client().get(&url).send().map(|r| r.bytes());
            }
        }
    });
    let out = ok(&nc(
        &node,
        &["top", "--json", "--interval", "0.3", "--iterations", "3"],
    ))
    .stdout
    .clone();
    load.join().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let n = &lines[0]["nodes"][0];
    assert_eq!(n["server"], node.base.as_str());
    for k in ["req_per_sec", "pending_uploads", "inflight"] {
        assert!(n[k].is_number(), "{k}: {n}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["nodes"][0]["req_per_sec"].as_f64().unwrap() > 0.0
                && l["nodes"][0]["p50_ms"].is_number()),
        "{lines:?}"
    );
    let human = String::from_utf8(
        ok(&nc(
            &node,
            &["top", "--interval", "0.1", "--iterations", "1"],
        ))
        .stdout
        .clone(),
    )
    .unwrap();
    assert!(
        human.contains("REQ/S") && human.contains(&node.base),
        "{human}"
    );

    // A node that does not answer: 6.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = nc_env(&node, &["stats"], &[("NEARCACHE_SERVER", &dead)]);
    assert_eq!(code(&out), 6, "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
    let out = nc(&node, &["stats", "--server", &dead]);
    assert_eq!(code(&out), 6, "--server wins over the environment");
}

#[test]
fn cluster_view_of_a_node_that_runs_alone_is_not_found() {
    let node = TestNode::start("cli-alone");
    let out = nc(&node, &["cluster"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("runs alone"), "{}", stderr(&out));
    let out = nc(&node, &["drain"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("runs alone"), "{}", stderr(&out));
}

/// invalidate, prewarm and jobs against this branch's node: when the node has the
/// endpoints they run; without them the CLI says the node does not serve the route
/// (exit 3) instead of failing obscurely.
#[test]
fn cache_management_commands() {
    let node = TestNode::start("cli-jobs");
    let has_jobs = client()
        .get(node.url("/api/v1/jobs"))
        .send()
        .unwrap()
        .status()
        .is_success();
    println!("this node has the jobs API: {has_jobs}");
    if !has_jobs {
        for args in [
            vec!["invalidate", "--bucket", "b", "k"],
            vec!["invalidate", "--bucket", "b", "--prefix", "p/"],
            vec!["invalidate", "01JCZ5V0R3Q6T9W2B7N4K8M1XE"],
            vec!["prewarm", "b", "--prefix", "p/"],
            vec!["jobs"],
        ] {
            let out = nc(&node, &args);
            assert_eq!(code(&out), 3, "{args:?}: {}", stderr(&out));
            assert!(stderr(&out).contains("does not serve"), "{}", stderr(&out));
        }
        return;
    }
    let sdk = Sdk::node(&node);
    let bucket = fresh_bucket("cli-jobs-b");
    sdk.run(sdk.c.create_bucket().bucket(&bucket).send())
        .unwrap();
    for i in 0..5 {
        sdk.put(&bucket, &format!("p/{i}"), vec![b'x'; 100]);
    }
    // The S3-API writes were cached; invalidating the prefix drops them.
    let v = json(&nc(
        &node,
        &[
            "invalidate",
            "--bucket",
            &bucket,
            "--prefix",
            "p/",
            "--json",
        ],
    ));
    assert!(v["dropped"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["failed_nodes"], serde_json::json!([]), "{v}");
    let human = String::from_utf8(
        ok(&nc(&node, &["invalidate", "--bucket", &bucket, "p/0"]))
            .stdout
            .clone(),
    )
    .unwrap();
    assert!(human.contains("dropped"), "{human}");
    // Prewarm reads them back into the cache.
    let v = json(&nc(
        &node,
        &["prewarm", &bucket, "--prefix", "p/", "--wait", "--json"],
    ));
    assert!(!v["finished_unix_ms"].is_null(), "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let v = json(&nc(&node, &["jobs", "--json"]));
    assert!(v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == id.as_str()));
    let v = json(&nc(&node, &["jobs", &id, "--json"]));
    assert_eq!(v["id"], id.as_str());
    assert!(
        v["fetched"].as_u64().unwrap() + v["skipped"].as_u64().unwrap() >= 5,
        "{v}"
    );
    let human = String::from_utf8(ok(&nc(&node, &["jobs"])).stdout.clone()).unwrap();
    assert!(human.contains(&id) && human.contains("prewarm"), "{human}");
    let out = nc(&node, &["jobs", "01JCZ5V0R3Q6T9W2B7N4K8M1XE"]);
    assert_eq!(code(&out), 3, "an unknown job: {}", stderr(&out));
}

#[test]
fn config_check_validates_and_shows_sources() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[server]\nshards = 2\n[store]\ndisk_capacity = \"2GiB\"\n",
    )
    .unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nearcache"));
        cmd.args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("NEARCACHE_") || k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = run(
        &[
            "config",
            "check",
            good.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9999",
        ],
        &[("NEARCACHE_MEMORY_CAPACITY", "1GiB")],
    );
    let text = String::from_utf8(ok(&out).stdout.clone()).unwrap();
    for want in [
        "shards = 2  # file",
        "disk_capacity = 2147483648  # file",
        "listen = \"127.0.0.1:9999\"  # flag",
        "memory_capacity = 1073741824  # env",
        "pin_cores = true  # default",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[store]\ndisk_capacty = \"2GiB\"\n").unwrap();
    let out = run(&["config", "check", bad.to_str().unwrap()], &[]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("did you mean `disk_capacity`?"),
        "{}",
        stderr(&out)
    );
    let invalid = dir.path().join("invalid.toml");
    std::fs::write(&invalid, "[api]\ndefault_level = 5\n").unwrap();
    let out = run(&["config", "check", invalid.to_str().unwrap()], &[]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("default_level"), "{}", stderr(&out));
    // serve reports the same suggestion.
    let out = run(&["serve", "--config", bad.to_str().unwrap()], &[]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("did you mean"), "{}", stderr(&out));
}

/// Logs carry no ANSI colour codes when stderr is not a terminal, and `--log-format json`
/// writes one JSON object per line.
#[test]
fn logs_are_plain_off_a_terminal_and_json_on_request() {
    for (format, check) in [
        ("text", (|l: &str| !l.contains('\x1b')) as fn(&str) -> bool),
        ("json", |l: &str| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["level"].is_string())
        }),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_nearcache"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--s3-listen",
                "127.0.0.1:0",
            ])
            .args(["--shards", "1", "--log-format", format])
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // Read until the node says it listens (bounded: the pipe closes if it dies).
        use std::io::BufRead;
        let stderr = child.stderr.take().unwrap();
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            let done = line.contains("nearcache listening");
            lines.push(line);
            if done {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            lines.iter().any(|l| l.contains("nearcache listening")),
            "{format}: {lines:?}"
        );
        for l in &lines {
            assert!(check(l), "{format}: {l:?}");
        }
    }
}

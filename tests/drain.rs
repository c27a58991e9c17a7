//! Draining nodes of a 3-node cluster of real processes (R = 1, level-0 writes and
//! level-1 writes whose uploads are pending: each object lives on one node and nowhere
//! else, not even the origin): `nearcache drain
//! --wait` hands over what only that node holds, makes it take no new keys and leave;
//! killed with -9 afterwards, nothing is lost. A second node is stopped with SIGTERM,
//! which drains the same way and exits 0 within the stop timeout.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::procs::{cluster, get_json, wait_for};
use common::*;

/// A write of `body` at `level` under a fresh id through `base`: the id and the node
/// that stored it.
fn put_at(base: &str, body: &[u8], level: u8) -> (String, String) {
    let id = client()
        .get(format!("{base}/api/v1/id"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let r = client()
        .post(format!("{base}/api/v1/put"))
        .header("X-Meta-ID", &id)
        .header("X-Meta-ConsistencyLevel", level.to_string())
        .body(body.to_vec())
        .send()
        .unwrap();
    assert!(r.status().is_success(), "put: {}", r.status());
    let node = r.headers()["x-nearcache-node"].to_str().unwrap();
    (id, node.to_string())
}

#[test]
fn drain_and_sigterm_hand_over_what_only_the_node_holds() {
    let root = tempfile::tempdir().unwrap();
    // An origin that refuses every connection: level-1 writes are acknowledged (durable
    // here, queued) and their uploads stay pending.
    let dead_origin = [
        "--replication-factor",
        "1",
        "--s3-endpoint",
        "http://127.0.0.1:1",
        "--s3-bucket",
        "nowhere",
        "--s3-access-key",
        "x",
        "--s3-secret-key",
        "y",
        "--s3-path-style",
    ];
    let mut nodes = cluster(root.path(), 3, &dead_origin, "");
    let ids: Vec<String> = nodes.iter().map(|n| n.id()).collect();
    let base0 = nodes[0].base();

    // 45 objects written through node 0 land on their single owner: level 0 (never meant
    // for the origin) and level 1 (pending: the origin is down).
    let mut objects: HashMap<String, (Vec<u8>, String)> = HashMap::new();
    for i in 0..45u64 {
        let body = random_bytes(1000 + i as usize * 37, i);
        let (id, owner) = put_at(&base0, &body, (i % 2) as u8);
        objects.insert(id, (body, owner));
    }
    let owned_by = |node: &str| objects.values().filter(|(_, o)| o == node).count();
    let on_x = owned_by(&ids[1]);
    assert!(on_x >= 3, "node 1 owns {on_x} of 45 objects");
    let pending = get_json(&nodes[1].url("/api/v1/stats")).unwrap()["total"]["pending_uploads"]
        .as_u64()
        .unwrap();
    assert!(pending >= 1, "node 1 has uploads pending");

    // Drain node 1 with the CLI.
    let out = Command::new(env!("CARGO_BIN_EXE_nearcache"))
        .args(["drain", "--wait", "--json", "--wait-secs", "60", "--server"])
        .arg(nodes[1].base())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "drain: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        nodes[1].log()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "left", "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert!(
        v["handed_over"].as_u64().unwrap() >= on_x as u64,
        "handed over {} of the {on_x} objects only node 1 held: {v}",
        v["handed_over"]
    );
    // Load balancers are told to stop sending clients.
    let h = client().get(nodes[1].url("/healthz")).send().unwrap();
    assert_eq!(h.status().as_u16(), 503);
    // It takes no new keys: a write through it is stored on another node.
    let (id, stored_on) = put_at(&nodes[1].base(), b"after the drain", 0);
    assert_ne!(stored_on, ids[1], "a drained node stored a new key");
    objects.insert(id, (b"after the drain".to_vec(), stored_on));
    // The others see it left.
    wait_for("node 1 seen as left", Duration::from_secs(30), || {
        let v = get_json(&nodes[0].url("/api/v1/cluster"))?;
        let m = v["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"] == ids[1].as_str())?
            .clone();
        (m["state"] == "left").then_some(())
    });

    // Its copies are gone with it; every object is still served, byte for byte, without
    // the origin.
    nodes[1].kill9();
    let check_all = |base: &str| {
        for (id, (body, _)) in &objects {
            let r = client()
                .get(format!("{base}/api/v1/get/{id}"))
                .header("X-Meta-Fetch", "0")
                .send()
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "object {id} lost");
            assert_eq!(md5_hex(&r.bytes().unwrap()), md5_hex(body), "object {id}");
        }
    };
    check_all(&base0);

    // SIGTERM drains node 2 into node 0 before it exits, within the unit's stop timeout.
    let on_y = objects.values().filter(|(_, o)| *o == ids[2]).count();
    let (code, took) = nodes[2].sigterm(Duration::from_secs(90));
    assert_eq!(code, Some(0), "{}", nodes[2].log());
    assert!(took < Duration::from_secs(30), "SIGTERM took {took:?}");
    let log = nodes[2].log();
    assert!(log.contains("drain: done"), "{log}");
    println!("node 1 handed over {on_x} objects; node 2 held {on_y} before its SIGTERM; stop took {took:?}");
    check_all(&base0);
}

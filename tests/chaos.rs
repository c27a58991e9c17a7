//! Chaos suite: drives the real `nearcache` binary (`CARGO_BIN_EXE_nearcache`, child
//! processes, never in-process) through crashes, an S3 outage, a full disk and abusive
//! clients, and checks invariants, not just liveness. Each scenario is its own test fn,
//! prints every check it made (PASS/FAIL with the numbers: operations, acknowledged,
//! lost, corrupt, resurrected, latencies) and fails after all its checks ran if any failed.
//!
//! Bounded by default (all scenarios together about 3 minutes on 2 cores):
//!     cargo test -p nearcache --test chaos -- --nocapture
//! Longer runs: `NEARCACHE_CHAOS_ROUNDS=N` sets the rounds of the repeated scenarios
//! (kill -9 storms: default 5; restarts after kill -9: default 10; outage and abusive
//! client phases scale their operation counts with it too), e.g.
//!     NEARCACHE_CHAOS_ROUNDS=50 cargo test -p nearcache --test chaos -- --nocapture
//!
//! `NEARCACHE_CHAOS_BIN=/path/to/nearcache` runs the scenarios against another build
//! (e.g. an older commit's, to compare).
//!
//! Every scenario runs its own moto (`nearcache_s3::testutil::Moto`) so stopping one
//! origin never disturbs another scenario. The disk-full scenario mounts a tmpfs (needs
//! root) and always unmounts it. Requirements are written as they should hold; checks that
//! fail against today's binary are failures, not ignored tests.

#[path = "chaos/harness.rs"]
mod harness;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::*;
use nearcache_s3::testutil::{fresh_bucket, Moto};

/// How long a node may take to become healthy (also right after kill -9).
const START_BOUND: Duration = Duration::from_secs(15);
/// A read-through miss during an outage must answer within this (2x the bridge's
/// default request deadline of 10 s).
const MISS_BOUND: Duration = Duration::from_secs(20);
/// A write at level >= 1 or a cached read during an outage answers within this.
const LOCAL_BOUND: Duration = Duration::from_secs(5);
/// Pending uploads must reach S3 within this once it is back.
const DRAIN_BOUND: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// kill -9 during write storms at every level

/// The last acknowledged state of an id.
#[derive(Clone, Debug)]
enum Acked {
    Put { md5: String, size: usize, level: u8 },
    Deleted { level: u8, put_level: u8 },
}

#[derive(Default)]
struct Ledgered {
    acked: HashMap<String, Acked>,
    /// Ids with an operation sent but not answered (the node died): either outcome is
    /// allowed, so they are not checked.
    in_doubt: std::collections::HashSet<String>,
    ops: u64,
    acks: u64,
    errors: u64,
}

#[derive(Default, Debug)]
struct Verdict {
    checked: usize,
    lost: Vec<String>,
    corrupt: Vec<String>,
    resurrected: Vec<String>,
    errors: Vec<String>,
}

/// Reads every acknowledged id from the node: writes without read-through
/// (`X-Meta-Fetch: 0`), deletes with it.
fn verify_node(base: &str, l: &Ledgered) -> Verdict {
    let c = http(Duration::from_secs(10));
    let mut v = Verdict::default();
    for (id, a) in &l.acked {
        if l.in_doubt.contains(id) {
            continue;
        }
        v.checked += 1;
        // Writes must be served from the node itself (no read-through); deletes must
        // stay deleted even where read-through is allowed (S3 may still hold a copy).
        let mut req = c.get(format!("{base}/api/v1/get/{id}"));
        if matches!(a, Acked::Put { .. }) {
            req = req.header("X-Meta-Fetch", "0");
        }
        let r = req.send();
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                v.errors.push(format!("{id}: {e}"));
                continue;
            }
        };
        let status = r.status().as_u16();
        let body = r.bytes().map(|b| b.to_vec()).unwrap_or_default();
        match (a, status) {
            (Acked::Put { md5, size, .. }, 200) => {
                if body.len() != *size || md5_hex(&body) != *md5 {
                    v.corrupt.push(id.clone());
                }
            }
            (Acked::Put { .. }, 404) => v.lost.push(id.clone()),
            (Acked::Deleted { .. }, 404) => {}
            (Acked::Deleted { .. }, 200) => v.resurrected.push(id.clone()),
            (_, s) => v.errors.push(format!("{id}: status {s}")),
        }
    }
    v
}

fn storm_writer(
    base: String,
    w: u64,
    round: u64,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledgered>>,
) {
    let c = http(Duration::from_secs(10));
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let seed = round * 10_000_000 + w * 1_000_000 + i;
        // One op in five deletes an id acknowledged earlier (by anyone, any round).
        let victim = i
            .is_multiple_of(5)
            .then(|| {
                let l = ledger.lock().unwrap();
                l.acked
                    .iter()
                    .filter(|(id, a)| matches!(a, Acked::Put { .. }) && !l.in_doubt.contains(*id))
                    .map(|(id, a)| (id.clone(), a.clone()))
                    .nth((seed as usize * 7919) % 97)
            })
            .flatten();
        let level = (i % 3) as u8;
        let (id, req, outcome) = match victim {
            Some((id, Acked::Put { level: pl, .. })) => {
                let req = c
                    .post(format!("{base}/api/v1/delete/{id}"))
                    .header("X-Meta-ConsistencyLevel", level.to_string());
                (
                    id,
                    req,
                    Acked::Deleted {
                        level,
                        put_level: pl,
                    },
                )
            }
            _ => {
                let size = match i % 4 {
                    0 => 1,
                    1 => 4096,
                    2 => 70_000,
                    _ => 300_001,
                };
                let body = random_bytes(size, seed);
                let id = ulid::Ulid::generate().to_string();
                let a = Acked::Put {
                    md5: md5_hex(&body),
                    size,
                    level,
                };
                let req = c
                    .post(format!("{base}/api/v1/put"))
                    .header("X-Meta-ID", &id)
                    .header("X-Meta-ConsistencyLevel", level.to_string())
                    .body(body);
                (id, req, a)
            }
        };
        ledger.lock().unwrap().ops += 1;
        match req.send() {
            Ok(r) if r.status().is_success() => {
                let mut l = ledger.lock().unwrap();
                l.acks += 1;
                l.acked.insert(id, outcome);
            }
            Ok(r) => {
                // An answered error. A put of a fresh id was never acknowledged: nothing to
                // check. A refused delete leaves the id in an unknown state: stop checking it.
                let mut l = ledger.lock().unwrap();
                l.errors += 1;
                if matches!(outcome, Acked::Deleted { .. }) {
                    l.in_doubt.insert(id);
                }
                drop(l);
                let _ = r.bytes();
            }
            Err(_) => {
                // No answer: the node died with it in flight.
                ledger.lock().unwrap().in_doubt.insert(id);
                return;
            }
        }
    }
}

#[test]
fn kill9_write_storms_lose_no_acknowledged_write_or_delete() {
    let mut ledger_out = Ledger::new("kill9-storm");
    let mut moto = Moto::start().expect("moto");
    let tmp = tempfile::tempdir().unwrap();
    let bucket = fresh_bucket("chaos-kill9");
    let s3 = S3Check::new(&moto.target, &bucket);
    s3.create_bucket().unwrap();
    let spec = NodeSpec::new(
        &tmp.path().join("data"),
        harness::Origin::S3 {
            target: moto.target.clone(),
            bucket: bucket.clone(),
        },
        tmp.path().join("node.log"),
    );
    let ledger: Arc<Mutex<Ledgered>> = Default::default();
    let rounds = rounds(5) as u64;
    let mut start_failures = Vec::new();
    let mut totals = Verdict::default();
    for round in 0..rounds {
        let mut node = match Node::start(&spec, START_BOUND) {
            Ok(n) => n,
            Err(e) => {
                start_failures.push(format!("round {round}: {e}"));
                // Give the port a moment and try once more so the storm can go on.
                std::thread::sleep(Duration::from_secs(2));
                match Node::start(&spec, START_BOUND) {
                    Ok(n) => n,
                    Err(e) => panic!("node does not start at all: {e}"),
                }
            }
        };
        let v = verify_node(&node.base(), &ledger.lock().unwrap());
        ledger_out.note(format!(
            "round {round}: after restart checked {} ids: lost {}, corrupt {}, resurrected {}, errors {}",
            v.checked,
            v.lost.len(),
            v.corrupt.len(),
            v.resurrected.len(),
            v.errors.len()
        ));
        totals.checked += v.checked;
        totals.lost.extend(v.lost);
        totals.corrupt.extend(v.corrupt);
        totals.resurrected.extend(v.resurrected);
        totals.errors.extend(v.errors);

        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..6)
            .map(|w| {
                let (b, s, l) = (node.base(), stop.clone(), ledger.clone());
                std::thread::spawn(move || storm_writer(b, w, round, s, l))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(800 + (round * 337) % 900));
        node.kill9();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
    }
    // Final restart: everything acknowledged is still there; level >= 1 reaches S3.
    let node = Node::start(&spec, START_BOUND);
    ledger_out.check(
        "restart after every kill -9 succeeds",
        start_failures.is_empty() && node.is_ok(),
        format!(
            "{} of {} restarts failed{}",
            start_failures.len() + usize::from(node.is_err()),
            rounds + 1,
            start_failures
                .first()
                .map(|e| format!("; first: {e}"))
                .unwrap_or_default()
        ),
    );
    let mut node = node.unwrap_or_else(|_| {
        std::thread::sleep(Duration::from_secs(2));
        Node::start(&spec, START_BOUND).expect("node")
    });
    let l = ledger.lock().unwrap();
    let puts_by_level = |lv: u8| {
        l.acked
            .values()
            .filter(|a| matches!(a, Acked::Put { level, .. } if *level == lv))
            .count()
    };
    let deletes = l
        .acked
        .values()
        .filter(|a| matches!(a, Acked::Deleted { .. }))
        .count();
    ledger_out.note(format!(
        "{rounds} rounds: operations {}, acknowledged {}, answered errors {}, in doubt (no answer) {}; live puts by level 0/1/2: {}/{}/{}, deletes {}",
        l.ops, l.acks, l.errors, l.in_doubt.len(), puts_by_level(0), puts_by_level(1), puts_by_level(2), deletes
    ));
    ledger_out.check(
        "the storms wrote enough",
        l.acks as usize >= 20 * rounds as usize,
        format!("{} acknowledged in {rounds} rounds", l.acks),
    );

    // Level >= 1 writes (and level >= 1 deletes of level >= 1 writes) reach S3.
    let want: Vec<(String, Option<String>)> = l
        .acked
        .iter()
        .filter(|(id, _)| !l.in_doubt.contains(*id))
        .filter_map(|(id, a)| match a {
            Acked::Put { md5, level, .. } if *level >= 1 => Some((id.clone(), Some(md5.clone()))),
            Acked::Deleted { level, put_level } if *level >= 1 && *put_level >= 1 => {
                Some((id.clone(), None))
            }
            _ => None,
        })
        .collect();
    let (missing, took) = s3.wait_all(&want, DRAIN_BOUND);
    ledger_out.check(
        "every level >= 1 write and delete reaches S3",
        missing.is_empty(),
        format!(
            "{} expected in S3, {} not there after {took:.1?}{}",
            want.len(),
            missing.len(),
            missing
                .first()
                .map(|k| format!(" (e.g. {k})"))
                .unwrap_or_default()
        ),
    );

    // Now without S3 at all: the node alone serves everything acknowledged.
    moto.kill();
    node.kill9();
    let mut node = match Node::start(&spec, START_BOUND) {
        Ok(n) => {
            ledger_out.check(
                "restart after kill -9 with S3 down succeeds",
                true,
                "healthy",
            );
            n
        }
        Err(e) => {
            ledger_out.check("restart after kill -9 with S3 down succeeds", false, &e);
            std::thread::sleep(Duration::from_secs(2));
            Node::start(&spec, START_BOUND).expect("node without S3, second try")
        }
    };
    let v = verify_node(&node.base(), &l);
    totals.checked += v.checked;
    totals.lost.extend(v.lost);
    totals.corrupt.extend(v.corrupt);
    totals.resurrected.extend(v.resurrected);
    totals.errors.extend(v.errors);
    let sample = |v: &Vec<String>| v.first().cloned().unwrap_or_default();
    ledger_out.check(
        "no acknowledged write lost (served without S3, X-Meta-Fetch: 0)",
        totals.lost.is_empty(),
        format!(
            "{} reads of acknowledged ids, lost {} {}",
            totals.checked,
            totals.lost.len(),
            sample(&totals.lost)
        ),
    );
    ledger_out.check(
        "no acknowledged write corrupt (byte for byte)",
        totals.corrupt.is_empty(),
        format!(
            "corrupt {} {}",
            totals.corrupt.len(),
            sample(&totals.corrupt)
        ),
    );
    ledger_out.check(
        "no acknowledged delete resurrected",
        totals.resurrected.is_empty(),
        format!(
            "resurrected {} {}",
            totals.resurrected.len(),
            sample(&totals.resurrected)
        ),
    );
    ledger_out.check(
        "reads of acknowledged ids answer 200/404",
        totals.errors.is_empty(),
        format!(
            "other answers {} {}",
            totals.errors.len(),
            sample(&totals.errors)
        ),
    );
    node.terminate(Duration::from_secs(10));
    drop(l);
    ledger_out.finish();
}

// ---------------------------------------------------------------------------------------
// restart right after kill -9, on the same port

#[test]
fn restart_right_after_kill9_succeeds() {
    let mut ledger = Ledger::new("restart-after-kill9");
    let tmp = tempfile::tempdir().unwrap();
    let spec = NodeSpec::new(
        &tmp.path().join("data"),
        harness::Origin::Local,
        tmp.path().join("node.log"),
    );
    let rounds = rounds(10);
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut node = Node::start(&spec, START_BOUND).expect("first start");
    let c = http(Duration::from_secs(5));
    for round in 0..rounds {
        // Some traffic, with requests in flight at the kill.
        let base = node.base();
        let busy = std::thread::spawn(move || {
            let c = http(Duration::from_secs(5));
            for i in 0..200u64 {
                if c.post(format!("{base}/api/v1/put"))
                    .header("X-Meta-ConsistencyLevel", "0")
                    .body(random_bytes(10_000, i))
                    .send()
                    .is_err()
                {
                    return;
                }
            }
        });
        let _ = c.get(format!("{}/healthz", node.base())).send();
        std::thread::sleep(Duration::from_millis(100));
        node.kill9();
        let _ = busy.join();
        let t = Instant::now();
        match Node::start(&spec, START_BOUND) {
            Ok(n) => {
                slowest = slowest.max(t.elapsed());
                node = n;
            }
            Err(e) => {
                failures.push(format!("round {round}: {e}"));
                std::thread::sleep(Duration::from_secs(2));
                node = Node::start(&spec, START_BOUND).expect("start after a pause");
            }
        }
    }
    ledger.check(
        "an immediate restart on the same port after kill -9 is healthy",
        failures.is_empty(),
        format!(
            "{} of {rounds} restarts failed, slowest successful {slowest:.1?}{}",
            failures.len(),
            failures
                .first()
                .map(|f| format!("; first: {f}"))
                .unwrap_or_default()
        ),
    );
    node.kill9();
    ledger.finish();
}

// ---------------------------------------------------------------------------------------
// S3 outage

/// An HTTP answer (status, body) or the transport error.
type Answer = Result<(u16, String), String>;
/// How long something took, and what came of it.
type Timed<T> = (Duration, T);

#[test]
fn s3_outage_writes_queue_reads_continue_misses_answer_queue_drains() {
    let mut ledger = Ledger::new("s3-outage");
    let mut moto = Moto::start().expect("moto");
    let tmp = tempfile::tempdir().unwrap();
    let bucket = fresh_bucket("chaos-outage");
    let s3 = S3Check::new(&moto.target, &bucket);
    s3.create_bucket().unwrap();
    let spec = NodeSpec::new(
        &tmp.path().join("data"),
        harness::Origin::S3 {
            target: moto.target.clone(),
            bucket: bucket.clone(),
        },
        tmp.path().join("node.log"),
    );
    let node = Node::start(&spec, START_BOUND).expect("node");
    let base = node.base();
    let n = 10 * rounds(3);
    let c = http(Duration::from_secs(60));

    // Before: cached objects (level 1, in S3), and objects only S3 has (misses).
    let mut cached = Vec::new();
    for i in 0..n {
        let body = random_bytes(1000 + i * 997, i as u64);
        let id = ulid::Ulid::generate().to_string();
        let r = c
            .post(format!("{base}/api/v1/put"))
            .header("X-Meta-ID", &id)
            .header("X-Meta-ConsistencyLevel", "1")
            .body(body.clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        cached.push((id, md5_hex(&body)));
    }
    let mut s3_only = Vec::new();
    for i in 0..n.min(10) {
        let id = ulid::Ulid::generate().to_string();
        s3.put(&id, random_bytes(5000, 1_000 + i as u64)).unwrap();
        s3_only.push(id);
    }

    moto.pause().unwrap();
    ledger.note(format!(
        "moto SIGSTOPped; {} cached objects, {} only in S3",
        cached.len(),
        s3_only.len()
    ));

    // Writes at level >= 1 are acknowledged (durably queued) within the local bound.
    let mut written = Vec::new();
    let mut write_fail = Vec::new();
    let mut write_slowest = Duration::ZERO;
    for i in 0..n {
        let level = 1 + (i % 2);
        let body = random_bytes(2000 + i * 13, 50_000 + i as u64);
        let id = ulid::Ulid::generate().to_string();
        let t = Instant::now();
        let r = c
            .post(format!("{base}/api/v1/put"))
            .header("X-Meta-ID", &id)
            .header("X-Meta-ConsistencyLevel", level.to_string())
            .body(body.clone())
            .send();
        let took = t.elapsed();
        write_slowest = write_slowest.max(took);
        match r {
            Ok(r) if r.status() == 200 && took <= LOCAL_BOUND => written.push((id, md5_hex(&body))),
            Ok(r) => write_fail.push(format!("{} after {took:.1?}", r.status())),
            Err(e) => write_fail.push(format!("{e} after {took:.1?}")),
        }
    }
    ledger.check(
        "level >= 1 writes are acknowledged during the outage",
        write_fail.is_empty(),
        format!(
            "{} writes, {} acknowledged within {LOCAL_BOUND:?}, slowest {write_slowest:.1?}{}",
            n,
            written.len(),
            write_fail
                .first()
                .map(|f| format!("; first failure: {f}"))
                .unwrap_or_default()
        ),
    );

    // Cached reads continue.
    let mut read_bad = Vec::new();
    let mut read_slowest = Duration::ZERO;
    for (id, md5) in cached.iter().chain(written.iter()) {
        let t = Instant::now();
        let r = c.get(format!("{base}/api/v1/get/{id}")).send();
        let took = t.elapsed();
        read_slowest = read_slowest.max(took);
        match r {
            Ok(r) if r.status() == 200 => {
                let b = r.bytes().unwrap_or_default();
                if md5_hex(&b) != *md5 || took > LOCAL_BOUND {
                    read_bad.push(format!("{id}: body differs or slow ({took:.1?})"));
                }
            }
            Ok(r) => read_bad.push(format!("{id}: {}", r.status())),
            Err(e) => read_bad.push(format!("{id}: {e}")),
        }
    }
    ledger.check(
        "cached reads continue during the outage",
        read_bad.is_empty(),
        format!(
            "{} reads, {} bad, slowest {read_slowest:.1?}{}",
            cached.len() + written.len(),
            read_bad.len(),
            read_bad
                .first()
                .map(|f| format!("; first: {f}"))
                .unwrap_or_default()
        ),
    );

    // Misses (read-through) answer within a bound with a clear error, in parallel.
    let miss_results: Vec<Timed<Answer>> = std::thread::scope(|sc| {
        let hs: Vec<_> = s3_only
            .iter()
            .map(|id| {
                let url = format!("{base}/api/v1/get/{id}");
                sc.spawn(move || {
                    let c = http(MISS_BOUND * 3);
                    let t = Instant::now();
                    let r = c.get(url).send().map_err(|e| e.to_string()).map(|r| {
                        let s = r.status().as_u16();
                        (s, r.text().unwrap_or_default())
                    });
                    (t.elapsed(), r)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let slowest_miss = miss_results
        .iter()
        .map(|(d, _)| *d)
        .max()
        .unwrap_or_default();
    let in_bound = miss_results
        .iter()
        .filter(|(d, _)| *d <= MISS_BOUND)
        .count();
    let clear = miss_results
        .iter()
        .filter(|(_, r)| {
            matches!(r, Ok((s, body)) if (502..=504).contains(s) && body.contains("origin"))
        })
        .count();
    let sample = miss_results
        .first()
        .map(|(d, r)| {
            format!(
                "{d:.1?}: {}",
                match r {
                    Ok((s, b)) => format!("{s} {}", b.chars().take(160).collect::<String>()),
                    Err(e) => e.clone(),
                }
            )
        })
        .unwrap_or_default();
    ledger.check(
        "read-through misses answer within the bound",
        in_bound == miss_results.len(),
        format!(
            "{} misses, {in_bound} answered within {MISS_BOUND:?}, slowest {slowest_miss:.1?}",
            miss_results.len()
        ),
    );
    ledger.check(
        "read-through misses fail with a clear origin error (502/503/504 naming the origin)",
        clear == miss_results.len(),
        format!("{clear} of {} clear; e.g. {sample}", miss_results.len()),
    );

    // The same through the S3-compatible API (one attempt per request, so the time is
    // the server's): GetObject misses and PutObject (written through to the origin) must
    // answer within the bound with an error, never hang.
    let api_results: Vec<(&str, Duration, InS3)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..6u64)
            .map(|i| {
                let (target, bucket) = (spec.s3api(), bucket.clone());
                let miss = s3_only[i as usize % s3_only.len()].clone();
                sc.spawn(move || {
                    let api = S3Check::with_attempts(&target, &bucket, 1, MISS_BOUND * 3);
                    let t = Instant::now();
                    if i < 3 {
                        let r = api.get(&miss);
                        ("GetObject miss", t.elapsed(), r)
                    } else {
                        let r = match api.put(&format!("api-put-{i}"), random_bytes(3000, 777 + i))
                        {
                            Ok(()) => InS3::Md5("acknowledged".into()),
                            Err(e) => InS3::Error(e),
                        };
                        ("PutObject", t.elapsed(), r)
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let api_in_bound = api_results
        .iter()
        .filter(|(_, d, _)| *d <= MISS_BOUND)
        .count();
    let api_errors = api_results
        .iter()
        // "service error": the node answered (an SDK timeout or dispatch failure reads
        // differently).
        .filter(|(_, _, r)| matches!(r, InS3::Error(e) if e.starts_with("service error")))
        .count();
    let describe = |(what, d, r): &(&str, Duration, InS3)| {
        let r = match r {
            InS3::Error(e) => e.chars().take(200).collect::<String>(),
            other => format!("{other:?}"),
        };
        format!("{what} {d:.1?}: {r}")
    };
    ledger.check(
        "S3 API GetObject misses and PutObjects answer within the bound",
        api_in_bound == api_results.len(),
        format!(
            "{} requests, {api_in_bound} within {MISS_BOUND:?}; slowest {:.1?}",
            api_results.len(),
            api_results
                .iter()
                .map(|(_, d, _)| *d)
                .max()
                .unwrap_or_default()
        ),
    );
    ledger.check(
        "S3 API GetObject misses and PutObjects fail with an error answer (not a client timeout)",
        api_errors == api_results.len(),
        format!(
            "{api_errors} of {} answered with an error; e.g. {}",
            api_results.len(),
            api_results.first().map(describe).unwrap_or_default()
        ),
    );
    for r in &api_results {
        ledger.note(describe(r));
    }

    // The origin dies and comes back empty (moto keeps objects in memory): the queue
    // must drain into it.
    moto.kill();
    moto.restart().expect("moto restart");
    s3.create_bucket().unwrap();
    let t = Instant::now();
    let want: Vec<(String, Option<String>)> = written
        .iter()
        .map(|(id, md5)| (id.clone(), Some(md5.clone())))
        .collect();
    let (missing, took) = s3.wait_all(&want, DRAIN_BOUND);
    ledger.check(
        "writes queued during the outage drain to S3 after it returns",
        missing.is_empty(),
        format!(
            "{} queued, {} not in S3 after {took:.1?} (bound {DRAIN_BOUND:?})",
            want.len(),
            missing.len()
        ),
    );
    ledger.note(format!("drain observed in {:.1?}", t.elapsed()));
    // Reads after the outage: cached objects still served.
    let still = cached
        .iter()
        .chain(written.iter())
        .filter(|(id, md5)| {
            c.get(format!("{base}/api/v1/get/{id}"))
                .send()
                .ok()
                .filter(|r| r.status() == 200)
                .and_then(|r| r.bytes().ok())
                .is_some_and(|b| md5_hex(&b) == *md5)
        })
        .count();
    ledger.check(
        "cached objects are served after the outage",
        still == cached.len() + written.len(),
        format!("{still} of {}", cached.len() + written.len()),
    );
    drop(node);
    ledger.finish();
}

// ---------------------------------------------------------------------------------------
// disk full

#[test]
fn disk_full_answers_507_keeps_serving_and_restarts_intact() {
    let mut ledger = Ledger::new("disk-full");
    let tmp = tempfile::tempdir().unwrap();
    let fs = match Tmpfs::mount(&tmp.path().join("small"), "48m") {
        Ok(fs) => fs,
        Err(e) => {
            ledger.check("mount a 48 MiB tmpfs", false, e);
            ledger.finish();
            return;
        }
    };
    let mut spec = NodeSpec::new(
        &fs.path.join("data"),
        harness::Origin::Local,
        tmp.path().join("node.log"),
    );
    // The node believes it has far more room than the filesystem does.
    spec.extra_args = vec!["--disk-capacity".into(), "1GiB".into()];
    spec.toml = "[store]\nlmdb_map_size = \"64MiB\"\n".into();
    let mut node = match Node::start(&spec, START_BOUND) {
        Ok(n) => n,
        Err(e) => {
            ledger.check("node starts on the tmpfs", false, e);
            drop(fs);
            ledger.finish();
            return;
        }
    };
    let base = node.base();
    let c = http(Duration::from_secs(20));
    let mut acked: Vec<(String, String, usize)> = Vec::new();
    let mut statuses: HashMap<String, u64> = HashMap::new();
    let mut slowest = Duration::ZERO;
    let mut ops = 0;
    let mut first_refusal = String::new();
    for i in 0..120u64 {
        let size = if i % 3 == 0 { 2_000_000 } else { 700_000 };
        let body = random_bytes(size, 9_000 + i);
        let id = ulid::Ulid::generate().to_string();
        let t = Instant::now();
        ops += 1;
        let r = c
            .post(format!("{base}/api/v1/put"))
            .header("X-Meta-ID", &id)
            .header("X-Meta-ConsistencyLevel", "0")
            .body(body.clone())
            .send();
        slowest = slowest.max(t.elapsed());
        let key = match r {
            Ok(r) => {
                let s = r.status().as_u16();
                if s == 200 {
                    acked.push((id, md5_hex(&body), size));
                } else if first_refusal.is_empty() {
                    first_refusal = format!("{s} {}", r.text().unwrap_or_default());
                }
                s.to_string()
            }
            Err(e) => format!(
                "transport error ({})",
                if e.is_timeout() { "timeout" } else { "other" }
            ),
        };
        *statuses.entry(key).or_default() += 1;
        if !node.is_running() {
            break;
        }
        if statuses.values().sum::<u64>() - statuses.get("200").copied().unwrap_or(0) >= 15 {
            break;
        }
    }
    let mut st: Vec<_> = statuses.iter().collect();
    st.sort();
    ledger.note(format!(
        "{ops} writes of 0.7-2 MB into 48 MiB: acknowledged {}, answers {st:?}, slowest {slowest:.1?}",
        acked.len()
    ));
    let refused: u64 = statuses
        .iter()
        .filter(|(k, _)| k.as_str() != "200")
        .map(|(_, v)| *v)
        .sum();
    ledger.check(
        "the disk fills (writes get refused)",
        refused > 0,
        format!("{refused} refused"),
    );
    let only_507 = statuses.iter().all(|(k, _)| k == "200" || k == "507");
    ledger.check(
        "refused writes answer 507 (no other error, no hang)",
        only_507 && refused > 0,
        format!("answers {st:?}; first refusal: {first_refusal}"),
    );
    let alive = node.is_running()
        && c.get(format!("{base}/healthz"))
            .send()
            .is_ok_and(|r| r.status() == 200);
    ledger.check(
        "the node keeps running and answers /healthz",
        alive,
        format!("alive {alive}"),
    );
    let verify = |base: &str, acked: &[(String, String, usize)]| {
        let mut bad = Vec::new();
        for (id, md5, size) in acked {
            match c
                .get(format!("{base}/api/v1/get/{id}"))
                .header("X-Meta-Fetch", "0")
                .send()
            {
                Ok(r) if r.status() == 200 => {
                    let b = r.bytes().unwrap_or_default();
                    if b.len() != *size || md5_hex(&b) != *md5 {
                        bad.push(format!("{id}: corrupt ({} bytes)", b.len()));
                    }
                }
                Ok(r) => bad.push(format!("{id}: {}", r.status())),
                Err(e) => bad.push(format!("{id}: {e}")),
            }
        }
        bad
    };
    let bad = verify(&base, &acked);
    ledger.check(
        "acknowledged objects are served intact while the disk is full",
        bad.is_empty(),
        format!(
            "{} acknowledged, {} bad{}",
            acked.len(),
            bad.len(),
            bad.first()
                .map(|b| format!("; first: {b}"))
                .unwrap_or_default()
        ),
    );
    // Deleting frees room: a small write succeeds again.
    let freed = acked.iter().take(3).all(|(id, _, _)| {
        c.post(format!("{base}/api/v1/delete/{id}"))
            .header("X-Meta-ConsistencyLevel", "0")
            .send()
            .is_ok_and(|r| r.status().is_success())
    });
    let deleted: Vec<_> = acked.drain(..3.min(acked.len())).collect();
    let small = random_bytes(10_000, 4242);
    let small_id = ulid::Ulid::generate().to_string();
    let after = c
        .post(format!("{base}/api/v1/put"))
        .header("X-Meta-ID", &small_id)
        .header("X-Meta-ConsistencyLevel", "0")
        .body(small.clone())
        .send()
        .map(|r| r.status().as_u16());
    let after_ok = matches!(after, Ok(200));
    if after_ok {
        acked.push((small_id, md5_hex(&small), small.len()));
    }
    ledger.check(
        "after deletes free room, writes succeed again",
        freed && after_ok,
        format!("deletes ok {freed}, small write {after:?}"),
    );
    node.kill9();
    let mut restarted = Node::start(&spec, START_BOUND);
    ledger.check(
        "restart (right after kill -9) on the full disk succeeds",
        restarted.is_ok(),
        restarted
            .as_ref()
            .err()
            .cloned()
            .unwrap_or_else(|| "healthy".into()),
    );
    if restarted.is_err() {
        // Tell a full disk from the restart-after-kill -9 trouble: try again shortly.
        std::thread::sleep(Duration::from_secs(2));
        restarted = Node::start(&spec, START_BOUND);
        ledger.check(
            "restart on the full disk succeeds (second try, 2 s later)",
            restarted.is_ok(),
            restarted
                .as_ref()
                .err()
                .cloned()
                .unwrap_or_else(|| "healthy".into()),
        );
    }
    if let Ok(n) = &restarted {
        let bad = verify(&n.base(), &acked);
        ledger.check(
            "after restart every acknowledged object is intact",
            bad.is_empty(),
            format!(
                "{} acknowledged, {} bad{}",
                acked.len(),
                bad.len(),
                bad.first()
                    .map(|b| format!("; first: {b}"))
                    .unwrap_or_default()
            ),
        );
        let resurrected = deleted
            .iter()
            .filter(|(id, _, _)| {
                c.get(format!("{}/api/v1/get/{id}", n.base()))
                    .header("X-Meta-Fetch", "0")
                    .send()
                    .is_ok_and(|r| r.status() == 200)
            })
            .count();
        ledger.check(
            "deletes on the full disk stay deleted after restart",
            resurrected == 0,
            format!("{resurrected} of {} resurrected", deleted.len()),
        );
    }
    drop(restarted);
    drop(node);
    drop(fs);
    ledger.finish();
}

// ---------------------------------------------------------------------------------------
// slow and abusive clients

#[test]
fn abusive_clients_do_not_starve_others() {
    let mut ledger = Ledger::new("abusive-clients");
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = NodeSpec::new(
        &tmp.path().join("data"),
        harness::Origin::Local,
        tmp.path().join("node.log"),
    );
    let header_timeout = Duration::from_secs(3);
    // Bodies are paced too: after this long, at least body_min_rate (4 KiB/s) on average.
    spec.toml = format!(
        "header_read_timeout_secs = {0}\nbody_idle_timeout_secs = {0}\n",
        header_timeout.as_secs()
    );
    let node = Node::start(&spec, START_BOUND).expect("node");
    let base = node.base();
    let addr = format!("127.0.0.1:{}", spec.port);
    let good_bound = Duration::from_secs(2);

    // A known object for the well-behaved readers.
    let body = random_bytes(50_000, 1);
    let id = ulid::Ulid::generate().to_string();
    assert_eq!(
        http(Duration::from_secs(10))
            .post(format!("{base}/api/v1/put"))
            .header("X-Meta-ID", &id)
            .header("X-Meta-ConsistencyLevel", "0")
            .body(body.clone())
            .send()
            .unwrap()
            .status(),
        200
    );
    let md5 = md5_hex(&body);

    let stop = Arc::new(AtomicBool::new(false));
    let scale = rounds(3);
    // Idle connections: opened, never a byte.
    let idle: Vec<TcpStream> = (0..100 * scale)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    let idle_opened = idle.len();
    // Slowloris: a header byte every 500 ms, never finishing the head.
    let slowloris_cut = Arc::new(AtomicU64::new(0));
    let slowloris: Vec<_> = (0..20 * scale)
        .map(|_| {
            let (addr, stop, cut) = (addr.clone(), stop.clone(), slowloris_cut.clone());
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(&addr) else {
                    return;
                };
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(500));
                    i += 1;
                    if s.write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                        .is_err()
                    {
                        cut.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            })
        })
        .collect();
    // Slow bodies: a PUT that announces 100 kB and sends a byte a second; the server
    // must end it (an error answer or a close) rather than wait forever.
    let slow_body_cut = Arc::new(AtomicU64::new(0));
    let slow_bodies: Vec<_> = (0..10 * scale)
        .map(|_| {
            let (addr, stop, cut) = (addr.clone(), stop.clone(), slow_body_cut.clone());
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(&addr) else { return };
                let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
                let _ = s.write_all(
                    b"POST /api/v1/put HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nX-Meta-ConsistencyLevel: 0\r\n\r\n",
                );
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_secs(1));
                    let mut b = [0u8; 64];
                    let answered = match s.read(&mut b) {
                        Ok(_) => true, // an answer, or 0 = closed
                        Err(e) => !matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ),
                    };
                    if answered || s.write_all(b"z").is_err() {
                        cut.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            })
        })
        .collect();
    // Huge headers: each must be refused (431) or the connection closed, promptly.
    let huge_results: Vec<(Duration, String)> = (0..10)
        .map(|i| {
            let t = Instant::now();
            let r = (|| -> std::io::Result<String> {
                let mut s = TcpStream::connect(&addr)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.set_write_timeout(Some(Duration::from_secs(10)))?;
                let big = "a".repeat(if i % 2 == 0 { 200_000 } else { 4 << 20 });
                let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: {big}\r\n\r\n");
                let _ = s.write_all(req.as_bytes());
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf)?;
                Ok(String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned())
            })()
            .unwrap_or_else(|e| format!("io error: {}", e.kind()));
            (t.elapsed(), r)
        })
        .collect();
    let huge_ok = huge_results
        .iter()
        .filter(|(d, r)| {
            *d < Duration::from_secs(5)
                && (r.contains("431") || r.starts_with("io error") || r.is_empty())
        })
        .count();
    ledger.check(
        "huge headers are refused promptly (431 or close)",
        huge_ok == huge_results.len(),
        format!(
            "{huge_ok} of {}; answers {:?}",
            huge_results.len(),
            huge_results
                .iter()
                .map(|(d, r)| format!("{r} in {d:.1?}"))
                .collect::<Vec<_>>()
        ),
    );

    // Meanwhile well-behaved clients read and write, each answer within the bound.
    let good_ops = 40 * scale;
    let c = http(Duration::from_secs(30));
    let mut slow_or_failed = Vec::new();
    let mut slowest = Duration::ZERO;
    let t0 = Instant::now();
    for i in 0..good_ops {
        let t = Instant::now();
        let ok = if i % 2 == 0 {
            c.get(format!("{base}/api/v1/get/{id}"))
                .send()
                .ok()
                .filter(|r| r.status() == 200)
                .and_then(|r| r.bytes().ok())
                .is_some_and(|b| md5_hex(&b) == md5)
        } else {
            c.post(format!("{base}/api/v1/put"))
                .header("X-Meta-ConsistencyLevel", "0")
                .body(random_bytes(4096, i as u64))
                .send()
                .is_ok_and(|r| r.status() == 200)
        };
        let took = t.elapsed();
        slowest = slowest.max(took);
        if !ok || took > good_bound {
            slow_or_failed.push(format!("op {i}: ok {ok} in {took:.1?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    ledger.check(
        "well-behaved clients answer within the bound under abuse",
        slow_or_failed.is_empty(),
        format!(
            "{good_ops} ops over {:.1?}: {} failed or slower than {good_bound:?}, slowest {slowest:.1?}{}",
            t0.elapsed(),
            slow_or_failed.len(),
            slow_or_failed.first().map(|f| format!("; first: {f}")).unwrap_or_default()
        ),
    );
    // By now (> 2x the header timeout) the server must have cut the slowloris and idle
    // connections.
    let waited = t0.elapsed();
    let mut idle_closed = 0;
    for mut s in idle {
        let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(0) => idle_closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => idle_closed += 1,
            _ => {}
        }
    }
    ledger.check(
        "idle connections are closed after the header read timeout",
        idle_closed == idle_opened,
        format!("{idle_closed} of {idle_opened} closed after {waited:.1?} (header timeout {header_timeout:?})"),
    );
    let cut = slowloris_cut.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for h in slowloris {
        let _ = h.join();
    }
    ledger.check(
        "slowloris connections are cut (header read timeout)",
        cut == 20 * scale as u64,
        format!(
            "{cut} of {} cut within {waited:.1?} (header timeout {header_timeout:?})",
            20 * scale
        ),
    );
    let body_cut = slow_body_cut.load(Ordering::Relaxed);
    for h in slow_bodies {
        let _ = h.join();
    }
    ledger.check(
        "slow request bodies are cut (body read timeout)",
        body_cut == 10 * scale as u64,
        format!(
            "{body_cut} of {} ended by the server within {waited:.1?}",
            10 * scale
        ),
    );
    let still = http(Duration::from_secs(5))
        .get(format!("{base}/healthz"))
        .send()
        .is_ok_and(|r| r.status() == 200);
    ledger.check(
        "the node is healthy afterwards",
        still,
        format!("healthy {still}"),
    );
    drop(node);
    ledger.finish();
}

// ---------------------------------------------------------------------------------------
// memory

/// Resident set size of a process in MiB (Linux).
fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

#[test]
fn memory_of_closed_connections_is_returned() {
    let mut ledger = Ledger::new("connection-memory");
    let tmp = tempfile::tempdir().unwrap();
    let spec = NodeSpec::new(
        &tmp.path().join("data"),
        harness::Origin::Local,
        tmp.path().join("node.log"),
    );
    let node = Node::start(&spec, START_BOUND).expect("node");
    let base = node.base();
    let addr = format!("127.0.0.1:{}", spec.port);
    let c = http(Duration::from_secs(10));
    let ping = |c: &reqwest::blocking::Client| {
        c.get(format!("{base}/api/v1/ping"))
            .send()
            .is_ok_and(|r| r.status() == 200)
    };
    for _ in 0..50 {
        ping(&c);
    }
    let before = rss_mib(node.pid());
    // Connections that each made the server buffer a long, unfinished request head.
    let n = 1000 * rounds(2);
    let head = format!(
        "GET /api/v1/ping HTTP/1.1\r\nHost: x\r\nX-Pad: {}",
        "p".repeat(16 << 10)
    );
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        if let Ok(mut s) = TcpStream::connect(&addr) {
            let _ = s.write_all(head.as_bytes());
            conns.push(s);
        }
    }
    // The server holds them all (its memory grows) until they close.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut peak = rss_mib(node.pid());
    while peak < before + 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(rss_mib(node.pid()));
    }
    let opened = conns.len();
    drop(conns);
    // Ordinary traffic goes on; the memory must go back to about where it was.
    let grown = peak.saturating_sub(before);
    let target = before + grown / 4;
    let deadline = Instant::now() + Duration::from_secs(60);
    let t0 = Instant::now();
    let mut after = rss_mib(node.pid());
    while after > target && Instant::now() < deadline {
        ping(&c);
        std::thread::sleep(Duration::from_millis(50));
        after = rss_mib(node.pid());
    }
    ledger.check(
        "the server held the connections' buffers (the check below means something)",
        grown >= 20,
        format!("{opened} connections: RSS {before} MiB -> {peak} MiB"),
    );
    ledger.check(
        "memory of closed connections is returned",
        after <= target,
        format!(
            "RSS {before} MiB before, {peak} MiB with {opened} connections, {after} MiB {:.1?} after they closed (bound {target} MiB)",
            t0.elapsed()
        ),
    );
    ledger.check("the node is healthy afterwards", ping(&c), String::new());
    drop(node);
    ledger.finish();
}

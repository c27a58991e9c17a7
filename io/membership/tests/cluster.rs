//! In-process clusters on 127.0.0.1: every node is a real `Membership` with its own
//! thread and UDP socket. Waits poll the views against generous deadlines (the box may
//! be loaded); the time each step actually took is printed (`--nocapture`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nearcache_membership::{MemberState, Membership, MembershipConfig};

const PROBE: Duration = Duration::from_millis(150);
/// Five probe periods: short enough for quick tests, long enough that a node starved of
/// CPU for a moment refutes the suspicion instead of being declared down.
const SUSPECT: Duration = Duration::from_millis(750);
/// Polling deadline for anything expected to take a few probe periods.
const DEADLINE: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

struct NodeSpec<'a> {
    id: Option<String>,
    cluster: &'a str,
    bind: SocketAddr,
    seeds: Vec<SocketAddr>,
    suspect: Duration,
    secret: Option<&'a str>,
}

impl<'a> NodeSpec<'a> {
    fn new(cluster: &'a str) -> Self {
        Self {
            id: None,
            cluster,
            bind: "127.0.0.1:0".parse().unwrap(),
            seeds: Vec::new(),
            suspect: SUSPECT,
            secret: None,
        }
    }
    fn seeds(mut self, seeds: &[&Membership]) -> Self {
        self.seeds = seeds.iter().map(|m| m.local_addr()).collect();
        self
    }
    fn secret(mut self, secret: &'a str) -> Self {
        self.secret = Some(secret);
        self
    }
    fn start(self) -> Arc<Membership> {
        let id = self
            .id
            .unwrap_or_else(|| ulid::Ulid::generate().to_string());
        let mut cfg = MembershipConfig::new(id, self.cluster, self.bind);
        cfg.seeds = self.seeds.iter().map(|s| s.to_string()).collect();
        cfg.probe_interval = PROBE;
        cfg.suspect_timeout = self.suspect;
        cfg.secret = self
            .secret
            .map(|s| nearcache_membership::auth::ClusterSecret::new(s.as_bytes()).unwrap());
        Membership::start(cfg).expect("start membership")
    }
}

fn state_of(m: &Membership, id: &str) -> Option<MemberState> {
    m.view().get(id).map(|member| member.state)
}

fn alive_ids(m: &Membership) -> BTreeSet<String> {
    m.view().alive().map(|member| member.id.clone()).collect()
}

fn ids(nodes: &[&Membership]) -> BTreeSet<String> {
    nodes.iter().map(|m| m.node_id().to_string()).collect()
}

/// Polls `cond` until it holds; panics with every node's view after `deadline`.
fn wait_for(
    what: &str,
    deadline: Duration,
    nodes: &[&Membership],
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            let took = start.elapsed();
            eprintln!("{what}: {took:?}");
            return took;
        }
        if start.elapsed() > deadline {
            let views: Vec<String> = nodes
                .iter()
                .map(|m| format!("{} {:?}\n  {:?}", m.node_id(), m.view(), m.metrics()))
                .collect();
            panic!(
                "timed out after {deadline:?} waiting for: {what}\n{}",
                views.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every node sees exactly `expected` as Alive or Suspect.
fn all_see(nodes: &[&Membership], expected: &BTreeSet<String>) -> bool {
    nodes.iter().all(|m| alive_ids(m) == *expected)
}

/// Three nodes of `cluster`, seeded at the first, once they all see each other.
fn converged_trio(cluster: &str, suspect: Duration) -> [Arc<Membership>; 3] {
    let spec = || NodeSpec {
        suspect,
        ..NodeSpec::new(cluster)
    };
    let a = spec().start();
    let b = spec().seeds(&[&a]).start();
    let c = spec().seeds(&[&a]).start();
    let nodes = [&*a, &*b, &*c];
    wait_for("converge", DEADLINE, &nodes, || {
        all_see(&nodes, &ids(&nodes))
    });
    [a, b, c]
}

fn leave_all(nodes: &[&Membership]) {
    for m in nodes {
        m.leave(Duration::from_secs(5));
    }
}

#[test]
fn three_nodes_join_and_converge() {
    init_tracing();
    let a = NodeSpec::new("conv").start();
    let mut epochs = a.subscribe();
    let seen = a.epoch();
    let b = NodeSpec::new("conv").seeds(&[&a]).start();
    let c = NodeSpec::new("conv").seeds(&[&a]).start();
    let nodes = [&*a, &*b, &*c];
    let everyone = ids(&nodes);

    assert!(
        a.wait_change(seen, DEADLINE) > seen,
        "a's view changes once b or c joins"
    );
    wait_for("3 nodes converge", DEADLINE, &nodes, || {
        all_see(&nodes, &everyone)
    });

    for m in nodes {
        let view = m.view();
        assert_eq!(view.members.len(), 3);
        let listed: Vec<&str> = view.members.iter().map(|x| x.id.as_str()).collect();
        let mut sorted = listed.clone();
        sorted.sort();
        assert_eq!(listed, sorted, "members sorted by id");
        let me = view.self_member().unwrap();
        assert_eq!((me.id.as_str(), me.addr), (m.node_id(), m.local_addr()));
        assert_eq!(view.members.iter().filter(|x| x.is_self).count(), 1);
        assert_eq!(view.epoch, m.epoch());
        let metrics = m.metrics();
        assert!(
            metrics.packets_in > 0 && metrics.packets_out > 0,
            "{metrics:?}"
        );
        assert_eq!(metrics.members_alive, 3);
        // The export table reads the same atomics as the snapshot.
        let c = m.counters();
        let get = |name| c.get(name).expect(name);
        assert!(get("nearcache_membership_datagrams_received_total") >= metrics.packets_in);
        assert!(get("nearcache_membership_sent_bytes_total") > 0);
        assert!(get("nearcache_membership_received_bytes_total") > 0);
        assert_eq!(get("nearcache_membership_alive_members"), 3);
        assert_eq!(c.values().count(), nearcache_membership::COUNTERS.len());
        assert_eq!(
            metrics.dropped_foreign_cluster + metrics.decode_errors,
            0,
            "{metrics:?}"
        );
    }
    // Each node's entry in another's view carries its address.
    assert_eq!(a.view().get(b.node_id()).unwrap().addr, b.local_addr());

    // The watch channel followed along without any runtime.
    assert!(epochs.has_changed().unwrap());
    assert_eq!(*epochs.borrow_and_update(), a.epoch());

    leave_all(&nodes);
}

#[test]
fn clusters_with_different_names_never_merge() {
    init_tracing();
    let a = NodeSpec::new("blue").start();
    // x tries to join blue's node; b is told about both a and x.
    let x = NodeSpec::new("green").seeds(&[&a]).start();
    let b = NodeSpec::new("blue").seeds(&[&a, &x]).start();
    let nodes = [&*a, &*b, &*x];
    let blue = ids(&[&a, &b]);

    wait_for("blue converges", DEADLINE, &nodes, || {
        all_see(&[&a, &b], &blue)
    });
    // x announces to a every few probe periods while alone: wait for several refusals.
    wait_for("a refuses green's datagrams", DEADLINE, &nodes, || {
        a.metrics().dropped_foreign_cluster >= 3 && x.metrics().dropped_foreign_cluster >= 1
    });
    assert_eq!(alive_ids(&x), ids(&[&x]));
    assert_eq!(x.view().members.len(), 1, "green learnt nobody");
    for m in [&a, &b] {
        assert_eq!(alive_ids(m), blue);
        assert!(m.view().get(x.node_id()).is_none(), "blue never heard of x");
    }
    leave_all(&nodes);
}

const SECRET: &str = "cluster-secret-for-tests-0123456789";

#[test]
fn nodes_without_the_secret_never_become_members() {
    init_tracing();
    let a = NodeSpec::new("sec").secret(SECRET).start();
    // x has another secret, p none; both try to join through a, and b is told about
    // them too (so that a and b both talk to them).
    let x = NodeSpec::new("sec")
        .secret("another-secret-0123456789abcdef")
        .seeds(&[&a])
        .start();
    let p = NodeSpec::new("sec").seeds(&[&a]).start();
    let b = NodeSpec::new("sec")
        .secret(SECRET)
        .seeds(&[&a, &x, &p])
        .start();
    let nodes = [&*a, &*b, &*x, &*p];
    let members = ids(&[&a, &b]);
    wait_for("a and b converge", DEADLINE, &nodes, || {
        all_see(&[&a, &b], &members)
    });
    wait_for("a refuses x's and p's datagrams", DEADLINE, &nodes, || {
        a.metrics().dropped_unauthenticated >= 4
            && x.metrics().dropped_unauthenticated >= 1
            && p.metrics().dropped_unauthenticated >= 1
    });
    for outsider in [&x, &p] {
        assert_eq!(
            outsider.view().members.len(),
            1,
            "the outsider learnt nobody"
        );
    }
    for m in [&a, &b] {
        assert_eq!(alive_ids(m), members);
        for outsider in [&x, &p] {
            assert!(
                m.view().get(outsider.node_id()).is_none(),
                "an outsider became known"
            );
        }
        let c = m.counters();
        assert_eq!(
            c.get("nearcache_membership_unauthenticated_datagrams_dropped_total"),
            Some(m.metrics().dropped_unauthenticated)
        );
        assert_eq!(m.metrics().decode_errors, 0, "refusals are counted as such");
    }
    leave_all(&nodes);
}

#[test]
fn replayed_datagrams_are_refused() {
    init_tracing();
    // A plain socket poses as a's seed and records what a sends it: genuine datagrams.
    let spy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    spy.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut a = NodeSpec::new("replay").secret(SECRET);
    a.seeds = vec![spy.local_addr().unwrap()];
    let a = a.start();
    let b = NodeSpec::new("replay").secret(SECRET).start();
    let mut buf = [0u8; 2048];
    let (len, from) = spy.recv_from(&mut buf).expect("a announces to its seed");
    assert_eq!(from, a.local_addr());
    let captured = &buf[..len];

    // Sent to b once it is news (accepted by the frame layer); again, a replay.
    let before = b.metrics();
    spy.send_to(captured, b.local_addr()).unwrap();
    spy.send_to(captured, b.local_addr()).unwrap();
    wait_for("b refuses the replay", DEADLINE, &[&a, &b], || {
        b.metrics().dropped_replayed == 1
    });
    assert!(b.metrics().packets_in >= before.packets_in + 2);
    assert_eq!(b.metrics().dropped_unauthenticated, 0);
    // A tampered copy is refused as unauthenticated, not as a replay.
    let mut tampered = captured.to_vec();
    *tampered.last_mut().unwrap() ^= 1;
    spy.send_to(&tampered, b.local_addr()).unwrap();
    wait_for("b refuses the tampered copy", DEADLINE, &[&a, &b], || {
        b.metrics().dropped_unauthenticated == 1
    });
    assert_eq!(b.metrics().dropped_replayed, 1);
    leave_all(&[&a, &b]);
}

#[test]
fn graceful_leave_is_seen_before_any_timeout() {
    init_tracing();
    // A long suspect timeout: seeing Left quickly can only come from the leave itself.
    let slow = Duration::from_secs(10);
    let [a, b, c] = converged_trio("leave", slow);
    let nodes = [&*a, &*b, &*c];

    let started = Instant::now();
    c.leave(Duration::from_secs(5));
    assert!(!c.is_running());
    assert_eq!(c.view().self_member().unwrap().state, MemberState::Left);
    let took = wait_for("a and b see c Left", DEADLINE, &nodes, || {
        state_of(&a, c.node_id()) == Some(MemberState::Left)
            && state_of(&b, c.node_id()) == Some(MemberState::Left)
    });
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "Left took {took:?}, should be far below the {slow:?} suspect timeout"
    );
    assert_eq!(alive_ids(&a), ids(&[&a, &b]));
    // Idempotent and quick once stopped.
    let again = Instant::now();
    c.leave(Duration::from_secs(5));
    assert!(again.elapsed() < Duration::from_secs(1));
    leave_all(&[&a, &b]);
}

#[test]
fn killed_node_goes_down_and_comes_back_once() {
    init_tracing();
    let [a, b, c] = converged_trio("restart", SUSPECT);
    let c_id = c.node_id().to_string();
    let c_addr = c.local_addr();
    let first_generation = a.view().get(&c_id).unwrap().generation;

    // A crash: no leave.
    c.stop_without_leave();
    drop(c);
    wait_for("a and b see c Down", DEADLINE, &[&a, &b], || {
        state_of(&a, &c_id) == Some(MemberState::Down)
            && state_of(&b, &c_id) == Some(MemberState::Down)
    });

    // Same id, same address: the new process's identity replaces the Down one.
    let c2 = NodeSpec {
        id: Some(c_id.clone()),
        bind: c_addr,
        ..NodeSpec::new("restart")
    }
    .seeds(&[&a])
    .start();
    let nodes = [&*a, &*b, &*c2];
    wait_for("restarted c Alive everywhere", DEADLINE, &nodes, || {
        all_see(&nodes, &ids(&nodes))
    });
    for m in [&a, &b] {
        let view = m.view();
        assert_eq!(view.members.iter().filter(|x| x.id == c_id).count(), 1);
        let entry = view.get(&c_id).unwrap();
        assert_eq!(entry.state, MemberState::Alive);
        assert!(entry.generation > first_generation);
    }

    // Crash again and come back at once on another port, before anyone noticed: the
    // old identity lingers in foca's list, the view still shows the node once.
    c2.stop_without_leave();
    drop(c2);
    let c3 = NodeSpec {
        id: Some(c_id.clone()),
        ..NodeSpec::new("restart")
    }
    .seeds(&[&a])
    .start();
    assert_ne!(c3.local_addr(), c_addr);
    let nodes = [&*a, &*b, &*c3];
    wait_for("c at its new address everywhere", DEADLINE, &nodes, || {
        all_see(&nodes, &ids(&nodes))
            && [&a, &b]
                .iter()
                .all(|m| m.view().get(&c_id).map(|x| x.addr) == Some(c3.local_addr()))
    });
    for m in nodes {
        assert_eq!(m.view().members.iter().filter(|x| x.id == c_id).count(), 1);
        assert_eq!(m.view().members.len(), 3);
    }
    leave_all(&nodes);
}

#[test]
fn partition_is_detected_and_heals() {
    init_tracing();
    let [a, b, c] = converged_trio("split", SUSPECT);
    let nodes = [&*a, &*b, &*c];
    let everyone = ids(&nodes);

    for (m, peer) in [(&c, &a), (&c, &b), (&a, &c), (&b, &c)] {
        m.set_blocked(peer.local_addr(), true);
    }
    assert_eq!(c.blocked().len(), 2);
    let down = |m: &Membership, other: &Membership| {
        state_of(m, other.node_id()) == Some(MemberState::Down)
    };
    wait_for("both sides see the other Down", DEADLINE, &nodes, || {
        down(&a, &c) && down(&b, &c) && down(&c, &a) && down(&c, &b)
    });
    assert_eq!(alive_ids(&a), ids(&[&a, &b]), "a and b keep each other");
    // Let both sides retry into the partition first (c's announces to its seed and
    // down members, a's announces to down members), so that healing below starts from
    // a settled split rather than racing c's first announce.
    let (c_dropped, a_dropped) = (c.metrics().dropped_blocked, a.metrics().dropped_blocked);
    wait_for(
        "retries dropped during the partition",
        DEADLINE,
        &nodes,
        || c.metrics().dropped_blocked >= c_dropped + 3 && a.metrics().dropped_blocked > a_dropped,
    );
    assert!(down(&a, &c) && down(&c, &a), "still split");

    for (m, peer) in [(&c, &a), (&c, &b), (&a, &c), (&b, &c)] {
        m.set_blocked(peer.local_addr(), false);
    }
    let healed = wait_for("partition heals", DEADLINE, &nodes, || {
        all_see(&nodes, &everyone)
    });
    assert!(healed < Duration::from_secs(15), "healing took {healed:?}");
    for m in nodes {
        let view = m.view();
        assert_eq!(
            view.members.len(),
            3,
            "one entry per node after renewals: {view:?}"
        );
    }
    let rejoins: u64 = nodes.iter().map(|m| m.metrics().rejoins).sum();
    eprintln!("rejoins during healing: {rejoins}");
    leave_all(&nodes);
}

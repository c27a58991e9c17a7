//! # nearcache-membership: who is in the cluster
//!
//! Goals:
//! - SWIM failure detection and membership (the [foca] crate) over UDP between the
//!   nodes of one nearcache cluster, with suspicion, indirect probes and gossip.
//! - A [`View`] that any thread reads without locks ([`Membership::view`] on every
//!   request), with an epoch that bumps on every change, plus blocking
//!   ([`Membership::wait_change`]) and async ([`Membership::subscribe`]) ways to wait.
//! - Healing without an operator: a node declared down (partition, long pause) renews
//!   its identity and rejoins; a restarted node (same id) replaces its old identity; a
//!   node that knows no live member keeps announcing to the seeds and to the members it
//!   holds as down.
//! - Clusters never merge by accident: every datagram carries a hash of the cluster
//!   name, and foreign ones are dropped and counted.
//! - Fault injection for tests ([`Membership::set_blocked`]).
//!
//! - With a cluster secret ([`MembershipConfig::secret`]), every datagram is
//!   authenticated (HMAC-SHA256) and accepted once (a replay window): a node without the
//!   secret never becomes a member, and its datagrams are dropped and counted. See
//!   `wire.rs` and [`auth`].
//!
//! Non-goals:
//! - Confidentiality. Datagrams are not encrypted: who can read the private network
//!   sees member ids and addresses. Without a secret they are not authenticated either.
//! - Consensus or a consistent view. Two nodes may briefly disagree; callers (request
//!   routing) must tolerate that.
//! - Metadata or user broadcasts over gossip, and persistence: the caller keeps the
//!   node id; nothing else survives a restart.
//! - An async runtime. This crate runs one std thread and needs no tokio runtime
//!   (only tokio's runtime-agnostic `watch` channel).
//!
//! ## Threads
//!
//! ```text
//!                       UDP datagrams (header + foca packet)
//!                                   │  ▲
//!                                   ▼  │
//!   ┌──────────────── "membership" thread ────────────────┐
//!   │ UdpSocket ── foca::Foca ── timer heap ── own announce│
//!   │      every change: fold members into a View          │
//!   └───────┬───────────────────────┬──────────────────────┘
//!           │ ArcSwap<View>         │ condvar + watch<u64> (epoch)
//!           ▼                       ▼
//!   reactor threads:          tests, tools: wait_change()
//!   view() per request        async code: subscribe()
//! ```
//!
//! The membership thread is the only one touching foca and the socket. It blocks in
//! `recv_from` until the next timer is due; API calls that need it (leave, stop) send
//! it a command and wake it with an empty datagram. Everything else the API offers
//! (view, epoch, metrics, blocking) is shared state that never waits on the thread.
//!
//! ## Identity
//!
//! Foca gossips identities `(node id, advertised addr, generation)`; see
//! [`Member::generation`]. Foca keys members by address, so each address holds one
//! identity and the newest generation wins a conflict: that is how a restarted node or
//! one that renewed itself after being declared down replaces its old entry. The view
//! folds foca's list into one entry per node id.
//!
//! ## Foca configuration
//!
//! Foca's LAN preset, with every period tied to [`MembershipConfig::probe_interval`]:
//! probe RTT a third of the period, 3 indirect probes, 6 transmissions per update,
//! gossip every fifth of a period to 3 members, announce to 1 live member every 10
//! periods and to 2 down members every 5, notify members that they were declared
//! down, forget down members after an hour, 1380-byte foca packets (1400 with our
//! header). See `config::foca_config` and [`defaults`].
//!
//! ## Fuzzing
//!
//! The datagram format (`wire.rs`) has fuzz targets written with bolero, which run as
//! ordinary tests on stable Rust (random inputs, 1 s per target). A longer run, here
//! 10 minutes per target on an optimised build:
//!
//! ```text
//! BOLERO_RANDOM_TEST_TIME_MS=600000 cargo test -p nearcache-membership --release wire::fuzz -- --nocapture
//! ```
//!
//! A failure prints `BOLERO_RANDOM_SEED=...` to replay it; make it a regression test.

#![forbid(unsafe_code)]

mod agent;
pub mod auth;
mod config;
mod error;
mod identity;
mod metrics;
mod view;
mod wire;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::Sender;
use tracing::{error, warn};

use crate::agent::{Agent, Command};
use crate::identity::NodeIdentity;
use crate::metrics::MembershipCounters as Counters;

pub use crate::config::{defaults, MembershipConfig};
pub use crate::error::MembershipError;
pub use crate::metrics::{
    CounterInfo, MembershipCounters, MembershipMetrics, MetricKind, COUNTERS,
};
pub use crate::view::{Member, MemberState, View};

/// A running membership agent. `Send + Sync`: share it through the `Arc` that
/// [`Membership::start`] returns. Dropping the last reference stops the thread without
/// a leave (peers see a crash); call [`Membership::leave`] for a clean exit.
pub struct Membership {
    shared: Arc<Shared>,
    commands: Sender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
    node_id: String,
    local_addr: SocketAddr,
    advertise: SocketAddr,
}

/// State shared by the API and the membership thread.
pub(crate) struct Shared {
    view: ArcSwap<View>,
    /// Same as `view.load().epoch`, readable without touching the view.
    epoch: AtomicU64,
    /// Paired with `changed`; holds nothing, the epoch is in the atomic.
    change_lock: Mutex<()>,
    changed: Condvar,
    watch: tokio::sync::watch::Sender<u64>,
    blocked: Mutex<HashSet<SocketAddr>>,
    pub(crate) counters: Counters,
    running: Mutex<bool>,
    stopped: Condvar,
}

/// A poisoned lock here only means another thread panicked while holding a plain
/// set or flag, which is still consistent: carry on with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Shared state whose first view (epoch 1) holds only ourselves.
    pub(crate) fn new(me: view::Entry) -> Self {
        let (watch, _) = tokio::sync::watch::channel(1);
        let shared = Shared {
            view: ArcSwap::from_pointee(View {
                epoch: 1,
                members: vec![me.to_member()],
            }),
            epoch: AtomicU64::new(1),
            change_lock: Mutex::new(()),
            changed: Condvar::new(),
            watch,
            blocked: Mutex::new(HashSet::new()),
            counters: Counters::default(),
            running: Mutex::new(true),
            stopped: Condvar::new(),
        };
        shared.counters.members_alive.store(1, Ordering::Relaxed);
        shared
    }

    pub(crate) fn is_blocked(&self, addr: &SocketAddr) -> bool {
        let blocked = lock(&self.blocked);
        !blocked.is_empty() && blocked.contains(addr)
    }

    /// Installs the next view; called by the membership thread only.
    pub(crate) fn publish(&self, members: Vec<Member>) {
        let epoch = self.epoch.load(Ordering::Acquire) + 1;
        let alive = members.iter().filter(|m| m.state.is_alive()).count();
        self.view.store(Arc::new(View { epoch, members }));
        self.counters
            .members_alive
            .store(alive as u64, Ordering::Relaxed);
        self.epoch.store(epoch, Ordering::Release);
        // Taking the lock orders this notify after any waiter's check of the epoch.
        drop(lock(&self.change_lock));
        self.changed.notify_all();
        self.watch.send_replace(epoch);
    }

    fn mark_stopped(&self) {
        *lock(&self.running) = false;
        self.stopped.notify_all();
    }
}

/// Marks the thread stopped however it ends, panics included, so `leave` and `Drop`
/// never wait for a thread that is gone.
struct StoppedOnDrop(Arc<Shared>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            error!("membership thread panicked; this node's view is frozen");
        }
        self.0.mark_stopped();
    }
}

impl Membership {
    /// Binds the gossip socket, spawns the "membership" thread and starts announcing to
    /// the seeds. Fails if the node id is not a ULID, a duration is zero, the socket
    /// cannot be bound (address taken) or the advertised address cannot be made
    /// concrete.
    pub fn start(cfg: MembershipConfig) -> Result<Arc<Membership>, MembershipError> {
        let id = ulid::Ulid::from_string(cfg.node_id.trim())
            .map_err(|_| MembershipError::InvalidNodeId(cfg.node_id.clone()))?;
        if cfg.probe_interval.is_zero() || cfg.suspect_timeout.is_zero() {
            return Err(MembershipError::InvalidConfig(
                "probe_interval and suspect_timeout must be non-zero".into(),
            ));
        }
        let socket = UdpSocket::bind(cfg.bind).map_err(|source| MembershipError::Bind {
            addr: cfg.bind,
            source,
        })?;
        let local_addr = socket.local_addr().map_err(MembershipError::Socket)?;
        let advertise = concrete_advertise(cfg.advertise, local_addr)?;

        let me = NodeIdentity::new(id.0, advertise);
        let my_entry = view::Entry {
            identity: me,
            state: MemberState::Alive,
            incarnation: 0,
            is_self: true,
        };
        let shared = Arc::new(Shared::new(my_entry));

        if cfg.secret.is_some() && cfg.replay_window.is_zero() {
            return Err(MembershipError::InvalidConfig(
                "replay_window must be non-zero".into(),
            ));
        }
        let framing = wire::Framing::new(&cfg.cluster_name, cfg.secret.as_ref(), cfg.replay_window);
        let foca = foca::Foca::new(
            me,
            config::foca_config(cfg.probe_interval, cfg.suspect_timeout),
            rand::make_rng(),
            foca::PostcardCodec,
        );
        let (commands, command_rx) = crossbeam_channel::unbounded();
        let agent = Agent::new(agent::Setup {
            foca,
            socket,
            local_addr,
            shared: shared.clone(),
            commands: command_rx,
            seeds: cfg.seeds.clone(),
            probe_interval: cfg.probe_interval,
            suspect_timeout: cfg.suspect_timeout,
            framing,
            published: my_entry,
        });
        let guard = StoppedOnDrop(shared.clone());
        let thread = std::thread::Builder::new()
            .name("membership".into())
            .spawn(move || {
                let _guard = guard;
                // The agent (and its socket) is dropped before the guard marks the
                // thread stopped, so a restart may bind the same port right after.
                agent.run();
            })
            .map_err(MembershipError::Spawn)?;

        Ok(Arc::new(Membership {
            shared,
            commands,
            thread: Mutex::new(Some(thread)),
            node_id: id.to_string(),
            local_addr,
            advertise,
        }))
    }

    /// The current view. Lock-free (one atomic load and a reference count).
    pub fn view(&self) -> Arc<View> {
        self.shared.view.load_full()
    }

    /// The current view's epoch.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::Acquire)
    }

    /// Blocks until the epoch exceeds `seen_epoch` or `timeout` passes, and returns the
    /// epoch then. For tests and tools: never call it on a reactor thread.
    pub fn wait_change(&self, seen_epoch: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut guard = lock(&self.shared.change_lock);
        loop {
            let epoch = self.epoch();
            let now = Instant::now();
            if epoch > seen_epoch || now >= deadline {
                return epoch;
            }
            guard = match self.shared.changed.wait_timeout(guard, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// A receiver of the epoch, usable from any async runtime (tokio's `watch` needs
    /// no tokio runtime). Load [`Membership::view`] when it changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.watch.subscribe()
    }

    /// Fault injection: drops every datagram to or from `peer_addr` (the peer's
    /// advertised address for sends, the datagram's source address for receives).
    pub fn set_blocked(&self, peer_addr: SocketAddr, blocked: bool) {
        let mut set = lock(&self.shared.blocked);
        if blocked {
            set.insert(peer_addr);
        } else {
            set.remove(&peer_addr);
        }
    }

    /// Addresses currently blocked, sorted.
    pub fn blocked(&self) -> Vec<SocketAddr> {
        let mut v: Vec<_> = lock(&self.shared.blocked).iter().copied().collect();
        v.sort();
        v
    }

    /// Leaves gracefully: tells every live peer (they mark this node Left at once),
    /// lets foca gossip the leave, then stops the thread. Waits up to `timeout` for the
    /// thread to finish. Idempotent; does nothing once stopped.
    pub fn leave(&self, timeout: Duration) {
        self.stop(Command::Leave, timeout);
    }

    /// Stops the thread without telling anyone, as a crash would (test hook). Waits up
    /// to [`defaults::STOP_WAIT`]; afterwards the socket is closed and its port free.
    pub fn stop_without_leave(&self) {
        self.stop(Command::Stop, defaults::STOP_WAIT);
    }

    /// False once the membership thread has stopped.
    pub fn is_running(&self) -> bool {
        *lock(&self.shared.running)
    }

    /// Counters and the live-member gauge.
    pub fn metrics(&self) -> MembershipMetrics {
        self.shared.counters.snapshot()
    }

    /// The live counters, for export: `for (info, value) in m.counters().values()`
    /// gives each one's Prometheus name, help, kind and value (see [`COUNTERS`]).
    pub fn counters(&self) -> &MembershipCounters {
        &self.shared.counters
    }

    /// The bound gossip address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address peers know this node by.
    pub fn advertise_addr(&self) -> SocketAddr {
        self.advertise
    }

    /// This node's id, canonical ULID form (as in the view).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    fn stop(&self, command: Command, timeout: Duration) {
        if !self.is_running() {
            self.join();
            return;
        }
        // A send fails only when the thread is gone, which is what we want anyway.
        let _ = self.commands.send(command);
        self.wake();
        let deadline = Instant::now() + timeout;
        let mut running = lock(&self.shared.running);
        while *running {
            let now = Instant::now();
            if now >= deadline {
                warn!(?timeout, "membership thread did not stop in time");
                return;
            }
            running = match self.shared.stopped.wait_timeout(running, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        drop(running);
        self.join();
    }

    fn join(&self) {
        if let Some(handle) = lock(&self.thread).take() {
            // Stopped already, so this returns at once; a panic was logged by the guard.
            let _ = handle.join();
        }
    }

    /// Sends an empty datagram to our socket so its blocking `recv_from` returns now
    /// rather than at the next timer. From a fresh socket: a clone of ours would keep
    /// the port bound after the thread closes it.
    fn wake(&self) {
        let target = match self.local_addr.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), self.local_addr.port())
            }
            ip if ip.is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), self.local_addr.port())
            }
            _ => self.local_addr,
        };
        let from: SocketAddr = match target.ip() {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        // Best effort: without it the thread still sees the command within
        // defaults::MAX_IDLE_WAIT.
        if let Ok(s) = UdpSocket::bind(from) {
            let _ = s.send_to(&[], target);
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop(Command::Stop, defaults::STOP_WAIT);
    }
}

/// The advertised address with port 0 and an unspecified IP filled in from the bound
/// socket; peers cannot reach 0.0.0.0.
fn concrete_advertise(
    advertise: SocketAddr,
    local: SocketAddr,
) -> Result<SocketAddr, MembershipError> {
    let mut addr = advertise;
    if addr.port() == 0 {
        addr.set_port(local.port());
    }
    if addr.ip().is_unspecified() {
        if local.ip().is_unspecified() {
            return Err(MembershipError::InvalidConfig(format!(
                "advertise address {advertise} has no concrete IP and the socket is bound to {local}"
            )));
        }
        addr.set_ip(local.ip());
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn membership_is_send_and_sync() {
        assert_send_sync::<Membership>();
    }

    #[test]
    fn advertise_is_made_concrete() {
        let local: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert_eq!(concrete_advertise(any, local).unwrap(), local);
        let explicit: SocketAddr = "10.1.2.3:0".parse().unwrap();
        assert_eq!(
            concrete_advertise(explicit, local).unwrap(),
            "10.1.2.3:4000".parse().unwrap()
        );
        let wildcard_bind: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        assert!(concrete_advertise(any, wildcard_bind).is_err());
    }

    #[test]
    fn start_rejects_bad_config() {
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bad_id = MembershipConfig::new("not-a-ulid", "c", bind);
        assert!(matches!(
            Membership::start(bad_id),
            Err(MembershipError::InvalidNodeId(_))
        ));
        let mut zero = MembershipConfig::new(ulid::Ulid::generate().to_string(), "c", bind);
        zero.probe_interval = Duration::ZERO;
        assert!(matches!(
            Membership::start(zero),
            Err(MembershipError::InvalidConfig(_))
        ));
    }

    #[test]
    fn start_fails_when_the_port_is_taken() {
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let cfg = MembershipConfig::new(
            ulid::Ulid::generate().to_string(),
            "c",
            taken.local_addr().unwrap(),
        );
        assert!(matches!(
            Membership::start(cfg),
            Err(MembershipError::Bind { .. })
        ));
    }

    #[test]
    fn lone_node_sees_itself_and_stops() {
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let id = ulid::Ulid::generate().to_string();
        let m = Membership::start(MembershipConfig::new(id.to_lowercase(), "c", bind)).unwrap();
        let view = m.view();
        assert_eq!(view.epoch, 1);
        assert_eq!(view.members.len(), 1);
        let me = view.get(&id).expect("canonical id");
        assert!(me.is_self && me.state == MemberState::Alive);
        assert_eq!(me.addr, m.local_addr());
        assert_eq!(m.node_id(), id);
        m.set_blocked(bind, true);
        assert_eq!(m.blocked(), vec![bind]);
        m.set_blocked(bind, false);
        assert!(m.blocked().is_empty());
        m.leave(Duration::from_secs(5));
        assert!(!m.is_running());
        assert_eq!(m.view().self_member().unwrap().state, MemberState::Left);
        // Idempotent, and the port is free again.
        m.leave(Duration::from_secs(5));
        UdpSocket::bind(m.local_addr()).unwrap();
    }
}

//! The membership thread: owns the socket and the foca instance, runs the timers, and
//! publishes a new view whenever what it knows changes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use foca::{
    Codec, Foca, Identity, NoCustomBroadcast, OwnedNotification, PostcardCodec, Runtime, Timer,
};
use rand::rngs::StdRng;
use tracing::{debug, info, warn};

use crate::auth::Replay;
use crate::config::defaults;
use crate::identity::NodeIdentity;
use crate::metrics::MembershipCounters as Counters;
use crate::view::{self, Entry, MemberState};
use crate::wire::{self, FrameError, Kind};
use crate::Shared;

/// How often a datagram refused for its timestamp is logged as a warning.
const CLOCK_WARN_EVERY: Duration = Duration::from_secs(60);

/// Requests from the API side; each is followed by a wake-up datagram.
#[derive(Debug)]
pub(crate) enum Command {
    /// Announce the leave, then stop.
    Leave,
    /// Stop without a word (a crash, as far as peers can tell).
    Stop,
}

pub(crate) type FocaInstance = Foca<NodeIdentity, PostcardCodec, StdRng, NoCustomBroadcast>;

pub(crate) struct Agent {
    foca: FocaInstance,
    io: Io,
    shared: Arc<Shared>,
    commands: Receiver<Command>,
    seeds: Vec<String>,
    probe_interval: Duration,
    suspect_timeout: Duration,
    /// Identities that announced a graceful leave, by address (foca's key).
    left: HashMap<SocketAddr, NodeIdentity>,
    my_state: MemberState,
    /// What the last published view was made of.
    published: Vec<Entry>,
    next_announce: Instant,
    /// Rotates the Down members we announce to while isolated.
    down_cursor: usize,
    /// Every member foca holds as Suspect: the incarnation suspected and when we first
    /// saw it so. See `expire_suspects`.
    suspects: HashMap<NodeIdentity, (u16, Instant)>,
    /// When a datagram outside the replay window was last logged as a warning: a node
    /// whose clock is off by more than the window can never join, and the operator must
    /// hear of it, but a flood of them must not fill the log.
    clock_warned: Option<Instant>,
}

/// What the thread starts from, prepared by `Membership::start`.
pub(crate) struct Setup {
    pub foca: FocaInstance,
    pub socket: UdpSocket,
    pub local_addr: SocketAddr,
    pub shared: Arc<Shared>,
    pub commands: Receiver<Command>,
    pub seeds: Vec<String>,
    pub probe_interval: Duration,
    /// Foca's `suspect_to_down_after`, which foca does not let us read back.
    pub suspect_timeout: Duration,
    /// The cluster hash, and the gossip key with its replay window.
    pub framing: wire::Framing,
    /// Our entry in the view `start` published before the thread runs.
    pub published: Entry,
}

impl Agent {
    pub(crate) fn new(s: Setup) -> Self {
        Self {
            foca: s.foca,
            io: Io {
                socket: s.socket,
                local_addr: s.local_addr,
                shared: s.shared.clone(),
                framing: s.framing,
                timers: BinaryHeap::new(),
                timer_seq: 0,
                notes: VecDeque::new(),
                out: Vec::with_capacity(defaults::MAX_DATAGRAM),
            },
            shared: s.shared,
            commands: s.commands,
            seeds: s.seeds,
            probe_interval: s.probe_interval,
            suspect_timeout: s.suspect_timeout,
            left: HashMap::new(),
            my_state: MemberState::Alive,
            published: vec![s.published],
            // Announce to the seeds straight away.
            next_announce: Instant::now(),
            down_cursor: 0,
            suspects: HashMap::new(),
            clock_warned: None,
        }
    }

    pub(crate) fn run(mut self) {
        info!(identity = ?self.foca.identity(), "membership started");
        loop {
            let now = Instant::now();
            self.fire_due_timers(now);
            if now >= self.next_announce {
                self.periodic_announce(now);
            }
            self.drain_notifications();
            self.publish_if_changed();

            match self.commands.try_recv() {
                Ok(Command::Leave) => {
                    self.leave();
                    return;
                }
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => {
                    info!("membership stopped without leaving");
                    return;
                }
                Err(TryRecvError::Empty) => {}
            }

            let deadline = self
                .io
                .next_timer()
                .map_or(self.next_announce, |t| t.min(self.next_announce));
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), defaults::MAX_IDLE_WAIT);
            self.receive(wait);
        }
    }

    /// Waits up to `wait` for one datagram and handles it.
    fn receive(&mut self, wait: Duration) {
        if let Err(e) = self.io.socket.set_read_timeout(Some(wait)) {
            warn!(error = %e, "setting the gossip socket timeout");
        }
        // One byte more than we accept: an oversized datagram arrives truncated but
        // still too long, and is refused rather than parsed cut short.
        let mut buf = [0u8; defaults::MAX_DATAGRAM + 1];
        let (len, src) = match self.io.socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(e) => {
                // Nothing on the socket should fail repeatedly; pause so a persistent
                // error cannot spin a core.
                Counters::inc(&self.shared.counters.receive_errors);
                warn!(error = %e, "receiving gossip");
                std::thread::sleep(Duration::from_millis(10));
                return;
            }
        };
        if len == 0 {
            return; // a wake-up: the loop looks at commands next
        }
        let counters = &self.shared.counters;
        Counters::inc(&counters.packets_in);
        Counters::add(&counters.bytes_in, len as u64);
        if self.shared.is_blocked(&src) {
            Counters::inc(&counters.dropped_blocked);
            return;
        }
        let (kind, body) = match self.io.framing.parse(&buf[..len]) {
            Ok(parsed) => parsed,
            Err(e @ FrameError::ForeignCluster { .. }) => {
                Counters::inc(&counters.dropped_foreign_cluster);
                debug!(%src, error = %e, "dropped datagram");
                return;
            }
            Err(e @ FrameError::Replay(_)) => {
                Counters::inc(&counters.dropped_replayed);
                let clocks = matches!(
                    e,
                    FrameError::Replay(Replay::TooOld { .. } | Replay::InFuture { .. })
                );
                if clocks
                    && self
                        .clock_warned
                        .is_none_or(|t| t.elapsed() >= CLOCK_WARN_EVERY)
                {
                    self.clock_warned = Some(Instant::now());
                    warn!(%src, error = %e, "dropped a gossip datagram outside the replay window: \
                        if the sender's clock is off, sync it (NTP) or widen cluster.replay_window_secs \
                        (logged at most once a minute)");
                } else {
                    debug!(%src, error = %e, "dropped datagram");
                }
                return;
            }
            Err(e) if e.is_auth() => {
                Counters::inc(&counters.dropped_unauthenticated);
                // Once per source would be nicer; debug keeps a flood out of the log,
                // the counter shows it.
                debug!(%src, error = %e, "dropped datagram");
                return;
            }
            Err(e) => {
                Counters::inc(&counters.decode_errors);
                debug!(%src, error = %e, "dropped datagram");
                return;
            }
        };
        match kind {
            Kind::Foca => {
                if let Err(e) = self.foca.handle_data(body, &mut self.io) {
                    self.count_foca_error(&e);
                    debug!(%src, error = %e, "foca refused a packet");
                }
            }
            Kind::Leave => self.handle_leave(src, body),
        }
    }

    fn count_foca_error(&self, e: &foca::Error) {
        if matches!(
            e,
            foca::Error::Decode(_) | foca::Error::MalformedPacket | foca::Error::DataTooBig
        ) {
            Counters::inc(&self.shared.counters.decode_errors);
        }
    }

    fn handle_leave(&mut self, src: SocketAddr, body: &[u8]) {
        let member: foca::Member<NodeIdentity> = match PostcardCodec.decode_member(body) {
            Ok(m) => m,
            Err(e) => {
                Counters::inc(&self.shared.counters.decode_errors);
                debug!(%src, error = %e, "undecodable leave");
                return;
            }
        };
        let leaver = *member.id();
        let me = *self.foca.identity();
        if leaver.id == me.id || leaver.addr == me.addr {
            return; // foca would take it as news about ourselves and rejoin
        }
        info!(member = ?leaver, "member left");
        self.left.insert(leaver.addr, leaver);
        // Tell foca now rather than waiting for the leaver's own gossip or a failed
        // probe; it also spreads the Down to members the leaver did not reach.
        let down = foca::Member::down(leaver);
        if let Err(e) = self
            .foca
            .apply_many(std::iter::once(down), true, &mut self.io)
        {
            debug!(error = %e, "applying a leave");
        }
    }

    fn fire_due_timers(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(Reverse(t)) = self.io.timers.peek() {
            if t.at > now {
                break;
            }
            if let Some(Reverse(t)) = self.io.timers.pop() {
                due.push(t.timer);
            }
        }
        // Foca's own order for late timers: a pending indirect probe before the next
        // probe, so a lagging thread does not cut a probe cycle short.
        due.sort();
        for timer in due {
            if let Err(e) = self.foca.handle_timer(timer, &mut self.io) {
                debug!(error = %e, "foca timer");
            }
        }
        self.expire_suspects(now);
    }

    /// Our own suspect timeout, on top of foca's: declares Down any member that stayed
    /// Suspect (at the same incarnation) for `suspect_timeout` since we first saw it so.
    ///
    /// Foca arms a `ChangeSuspectToDown` timer only on the member whose probe failed,
    /// and drops it if its timer token changes before it fires (our identity changed
    /// on a rejoin, or we went idle or defunct). Members that heard the suspicion in
    /// gossip arm none. So when the prober lost its timer and the suspect never heard
    /// the rumour to refute it (it answers pings, but a ping carries no news about the
    /// receiver), every node kept it Suspect until it next bumped its incarnation:
    /// for ever. As in the SWIM paper, every member now times suspicions out itself.
    /// When foca's own timer is alive it fires first (it started no later), and the
    /// member is no longer Suspect here.
    fn expire_suspects(&mut self, now: Instant) {
        let suspects: Vec<(NodeIdentity, u16)> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Suspect)
            .map(|m| (*m.id(), m.incarnation()))
            .collect();
        if suspects.is_empty() {
            self.suspects.clear();
            return;
        }
        // A refutation (higher incarnation) or any other change restarts the clock.
        self.suspects
            .retain(|id, (inc, _)| suspects.contains(&(*id, *inc)));
        let mut expired = Vec::new();
        for (id, incarnation) in suspects {
            let (_, since) = *self.suspects.entry(id).or_insert((incarnation, now));
            if now.saturating_duration_since(since) >= self.suspect_timeout {
                info!(member = ?id, incarnation, "suspect timed out; declaring it down");
                self.suspects.remove(&id);
                expired.push(foca::Member::new(id, incarnation, foca::State::Down));
            }
        }
        if expired.is_empty() {
            return;
        }
        // Broadcast, so the suspect learns it too (and rejoins) and so do the others.
        if let Err(e) = self
            .foca
            .apply_many(expired.into_iter(), true, &mut self.io)
        {
            debug!(error = %e, "declaring timed-out suspects down");
        }
    }

    /// Our own announce loop, on top of foca's: foca only announces while it knows a
    /// live member, so a lone node (start-up, or the losing side of a partition) would
    /// never find its way back by itself.
    fn periodic_announce(&mut self, now: Instant) {
        let isolated = self.foca.num_members() == 0;
        self.announce_to_seeds();
        if isolated {
            self.announce_to_some_down_members();
            self.next_announce =
                now + self.probe_interval * defaults::ISOLATED_ANNOUNCE_EVERY_PROBES;
        } else {
            self.next_announce = now + self.probe_interval * defaults::SEED_ANNOUNCE_EVERY_PROBES;
        }
    }

    fn announce_to_seeds(&mut self) {
        let me = self.foca.identity().addr;
        let local = self.io.local_addr;
        for seed in &self.seeds {
            // Resolved on every try: a seed's name may point elsewhere after a redeploy.
            let addrs = match seed.to_socket_addrs() {
                Ok(a) => a,
                Err(e) => {
                    debug!(seed, error = %e, "resolving seed");
                    continue;
                }
            };
            for addr in addrs.filter(|a| *a != me && *a != local) {
                if let Err(e) = self.foca.announce(NodeIdentity::seed(addr), &mut self.io) {
                    debug!(%addr, error = %e, "announcing to seed");
                }
            }
        }
    }

    fn announce_to_some_down_members(&mut self) {
        let down: Vec<NodeIdentity> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Down)
            .map(|m| *m.id())
            .filter(|id| self.left.get(&id.addr) != Some(id))
            .collect();
        if down.is_empty() {
            return;
        }
        let n = down.len().min(defaults::ISOLATED_ANNOUNCE_DOWN_MEMBERS);
        for i in 0..n {
            let target = down[(self.down_cursor + i) % down.len()];
            if let Err(e) = self.foca.announce(target, &mut self.io) {
                debug!(member = ?target, error = %e, "announcing to down member");
            }
        }
        self.down_cursor = self.down_cursor.wrapping_add(n);
    }

    /// Logs foca's notifications and reacts to those that need us.
    fn drain_notifications(&mut self) {
        while let Some(note) = self.io.notes.pop_front() {
            match note {
                OwnedNotification::MemberUp(id) => info!(member = ?id, "member up"),
                OwnedNotification::MemberDown(id) => info!(member = ?id, "member down"),
                OwnedNotification::Rename(old, new) => {
                    debug!(?old, ?new, "member has a new identity")
                }
                OwnedNotification::Active => info!("joined the cluster"),
                OwnedNotification::Idle => {
                    info!("no live member known; announcing to seeds and down members");
                    self.next_announce = Instant::now();
                }
                OwnedNotification::Rejoin(id) => {
                    // Foca renewed our identity itself (Identity::renew).
                    info!(identity = ?id, "declared down by the cluster; rejoined");
                    Counters::inc(&self.shared.counters.rejoins);
                    self.next_announce = Instant::now();
                }
                OwnedNotification::Defunct => self.on_defunct(),
                #[allow(
                    unreachable_patterns,
                    reason = "foca's unstable-notifications variants exist only if some crate enables that feature"
                )]
                _ => {}
            }
        }
    }

    /// We were declared down and foca did not rejoin by itself (it does when `renew`
    /// gives a winning identity, which ours always does; this is the safety net), or we
    /// left on purpose.
    fn on_defunct(&mut self) {
        if self.my_state == MemberState::Left {
            return;
        }
        let old = *self.foca.identity();
        let Some(new) = old.renew() else { return };
        match self.foca.change_identity(new, &mut self.io) {
            Ok(()) => {
                info!(identity = ?new, "declared down by the cluster; rejoining");
                Counters::inc(&self.shared.counters.rejoins);
                self.next_announce = Instant::now();
            }
            Err(e) => warn!(error = %e, "renewing identity after being declared down"),
        }
    }

    fn leave(&mut self) {
        let me = *self.foca.identity();
        let mut body = Vec::new();
        if let Err(e) = PostcardCodec.encode_member(&foca::Member::down(me), &mut body) {
            warn!(error = %e, "encoding leave");
        }
        let peers: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        // Every live peer hears it directly (foca's own leave gossip reaches only a few
        // random ones); twice, because UDP may drop one and a peer missing both only
        // learns Down, after its suspect timeout.
        for _ in 0..2 {
            for &peer in &peers {
                self.io.send_frame(Kind::Leave, peer, &body);
            }
        }
        if let Err(e) = self.foca.leave_cluster(&mut self.io) {
            debug!(error = %e, "foca leave");
        }
        self.my_state = MemberState::Left;
        self.drain_notifications();
        self.publish_if_changed();
        info!(peers = peers.len(), "left the cluster");
    }

    fn publish_if_changed(&mut self) {
        if !self.left.is_empty() {
            // Forget leavers foca no longer lists (forgotten or replaced by a rejoin).
            let foca = &self.foca;
            self.left
                .retain(|_, id| foca.iter_membership_state().any(|m| m.id() == id));
        }
        let entries = view::collect(
            *self.foca.identity(),
            self.my_state,
            self.foca.iter_membership_state(),
            &self.left,
        );
        if entries == self.published {
            return;
        }
        let members = entries.iter().copied().map(Entry::to_member).collect();
        self.published = entries;
        self.shared.publish(members);
    }
}

/// Foca's runtime: sends right away, keeps timers in a heap, queues notifications.
pub(crate) struct Io {
    socket: UdpSocket,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    framing: wire::Framing,
    timers: BinaryHeap<Reverse<Scheduled>>,
    timer_seq: u64,
    notes: VecDeque<OwnedNotification<NodeIdentity>>,
    out: Vec<u8>,
}

impl Io {
    fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse(t)| t.at)
    }

    pub(crate) fn send_frame(&mut self, kind: Kind, to: SocketAddr, body: &[u8]) {
        let counters = &self.shared.counters;
        if self.shared.is_blocked(&to) {
            Counters::inc(&counters.dropped_blocked);
            return;
        }
        self.framing.encode(kind, body, &mut self.out);
        match self.socket.send_to(&self.out, to) {
            Ok(n) => {
                Counters::inc(&counters.packets_out);
                Counters::add(&counters.bytes_out, n as u64);
            }
            Err(e) => {
                Counters::inc(&counters.send_errors);
                debug!(%to, error = %e, "sending gossip");
            }
        }
    }
}

impl Runtime<NodeIdentity> for Io {
    fn notify(&mut self, notification: foca::Notification<'_, NodeIdentity>) {
        self.notes.push_back(notification.to_owned());
    }

    fn send_to(&mut self, to: NodeIdentity, data: &[u8]) {
        self.send_frame(Kind::Foca, to.addr, data);
    }

    fn submit_after(&mut self, timer: Timer<NodeIdentity>, after: Duration) {
        self.timer_seq += 1;
        self.timers.push(Reverse(Scheduled {
            at: Instant::now() + after,
            seq: self.timer_seq,
            timer,
        }));
    }
}

/// A foca timer due at `at`; `seq` keeps equal instants in submission order.
pub(crate) struct Scheduled {
    at: Instant,
    seq: u64,
    timer: Timer<NodeIdentity>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[cfg(test)]
mod tests {
    use foca::{Member, State};

    use super::*;

    const PROBE: Duration = Duration::from_millis(100);
    const SUSPECT: Duration = Duration::from_millis(300);

    /// A peer identity on a bound socket nobody reads: its pings go unanswered.
    fn peer(id: u128) -> (NodeIdentity, UdpSocket) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        (NodeIdentity { id, addr, bump: 1 }, socket)
    }

    /// An agent whose loop the test drives by hand, with made-up instants.
    fn agent() -> Agent {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local_addr = socket.local_addr().unwrap();
        let me = NodeIdentity::new(1, local_addr);
        let published = Entry {
            identity: me,
            state: MemberState::Alive,
            incarnation: 0,
            is_self: true,
        };
        let (_, commands) = crossbeam_channel::unbounded();
        Agent::new(Setup {
            foca: Foca::new(
                me,
                crate::config::foca_config(PROBE, SUSPECT),
                rand::make_rng(),
                PostcardCodec,
            ),
            socket,
            local_addr,
            shared: Arc::new(Shared::new(published)),
            commands,
            seeds: Vec::new(),
            probe_interval: PROBE,
            suspect_timeout: SUSPECT,
            framing: wire::Framing::new("", None, defaults::REPLAY_WINDOW),
            published,
        })
    }

    /// One turn of `Agent::run` at `now`, without waiting for a datagram.
    fn turn(a: &mut Agent, now: Instant) {
        a.fire_due_timers(now);
        a.drain_notifications();
        a.publish_if_changed();
    }

    fn apply(a: &mut Agent, updates: Vec<Member<NodeIdentity>>) {
        a.foca
            .apply_many(updates.into_iter(), true, &mut a.io)
            .unwrap();
    }

    fn published_state(a: &Agent, who: NodeIdentity) -> MemberState {
        let view = a.shared.view.load();
        let m = view.get(&who.id_string()).expect("member in the view");
        assert_eq!(m.generation, who.bump);
        m.state
    }

    /// Foca arms a suspect timeout only on the member whose probe failed. A member that
    /// hears the suspicion through gossip (B in the incident) relies on the prober's
    /// Down or on the suspect's refutation; when the prober lost its timer and the
    /// suspect never heard the rumour, neither comes.
    #[test]
    fn suspicion_heard_in_gossip_ends_after_the_suspect_timeout() {
        let mut a = agent();
        let (c, _c_socket) = peer(3);
        let (d, _d_socket) = peer(4);
        apply(
            &mut a,
            vec![
                Member::new(c, 0, State::Alive),
                Member::new(d, 0, State::Alive),
            ],
        );
        let t0 = Instant::now();
        turn(&mut a, t0);
        apply(&mut a, vec![Member::new(c, 0, State::Suspect)]);
        turn(&mut a, t0);
        assert_eq!(published_state(&a, c), MemberState::Suspect);

        turn(&mut a, t0 + SUSPECT - Duration::from_millis(10));
        assert_eq!(published_state(&a, c), MemberState::Suspect, "not before");

        turn(&mut a, t0 + SUSPECT + Duration::from_millis(10));
        assert_eq!(published_state(&a, c), MemberState::Down);
        // D only just failed one of our (unanswered) probes, if any: not Down yet.
        assert!(published_state(&a, d).is_alive());
    }

    /// A in the incident: it suspects C after a failed probe, then is declared down
    /// (start-up under load) and rejoins under a new generation. Foca's identity change
    /// invalidates every timer it had submitted, the ChangeSuspectToDown included, so
    /// C stayed Suspect for good: C answers A's pings, so no later probe re-arms it.
    /// The test stops before A's own unanswered probes would.
    #[test]
    fn suspicion_outlives_the_timer_lost_when_we_rejoin() {
        let mut a = agent();
        let (c, _c_socket) = peer(3);
        apply(&mut a, vec![Member::new(c, 0, State::Alive)]);
        let t0 = Instant::now();
        // Every turn is later than anything submitted so far, like a starved thread.
        turn(&mut a, t0 + Duration::from_secs(1)); // probe C
        turn(&mut a, t0 + Duration::from_secs(2)); // no ack: C is Suspect
        assert_eq!(published_state(&a, c), MemberState::Suspect);

        // (The clock of our own suspect timeout keeps running through the rejoin.)
        let old = *a.foca.identity();
        apply(&mut a, vec![Member::down(old)]); // the cluster declared us down
        turn(&mut a, t0 + Duration::from_secs(2));
        assert_ne!(*a.foca.identity(), old, "rejoined under a new identity");
        assert_eq!(
            a.shared
                .counters
                .rejoins
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );

        // Foca's ChangeSuspectToDown fires now, with the old token, and is ignored.
        // (This turn also finds our first probe since the rejoin unanswered, and foca
        // arms a new timer for C; it is not due before the next turn. The real C
        // answered, so there it never was.)
        turn(&mut a, t0 + Duration::from_secs(3));
        assert_eq!(published_state(&a, c), MemberState::Down);
    }
}

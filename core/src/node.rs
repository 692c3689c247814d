//! The sans-I/O node: foca, the member table, the leave protocol, join retry
//! and push-pull scheduling, all driven by explicit time. It never touches a
//! socket, a clock or a task: the agent's runtime (`agent.rs`) and the
//! simulator feed it packets, timers and commands, and carry out the
//! [`Output`]s it asks for. So the simulated cluster runs the very code the
//! agent runs.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Foca, Member, OwnedNotification, State, Timer};
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};
use tracing::{debug, info, warn};

use crate::counters::ProtocolCounters;
use crate::identity::{self, plausible_generation, NodeId};
use crate::membership::{
    FocaState, ForceLeaveError, MemberEvent, Outcome, Record, Status, Table, MAX_MEMBERS,
};
use crate::profile::{foca_config, size_bucket, Timing};
use crate::tags::{self, TagError, Tags};
use crate::userev::{
    self, Broadcast, Delivered, Gossip, Payload, Query, QueryFilter, QuerySpec, Reply, ReplyKind,
    UserError, UserEvent, UserState,
};
use crate::wire::{self, ClockedCodec, DecodeError, Packet, SyncEntry, SyncMsg, SyncState};

type Swim = Foca<NodeId, ClockedCodec, StdRng, Gossip>;

/// The two clocks the core needs: monotonic for timers, wall (ms since the
/// epoch) for event times and reaping. The simulator passes virtual ones.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall_ms: u64,
}

/// What the runtime must do for the core.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send one UDP packet (already enveloped).
    Send { to: SocketAddr, packet: Vec<u8> },
    /// A member event for the event log and handlers.
    Event(MemberEvent),
    /// Time for a join round: resolve the join targets, then [`Core::contact`].
    JoinRound,
    /// Exchange full state over TCP with this address ([`Core::sync_state`] /
    /// [`Core::apply_remote`]).
    PushPull { to: SocketAddr },
    /// Resolve the join targets, drop `exclude`, and push-pull with one of
    /// the rest: how two halves of a healed partition find each other.
    SeedPushPull { exclude: Vec<SocketAddr> },
    /// The graceful leave is complete (acknowledged or timed out).
    LeaveDone,
    /// Another live node holds this node's name with a newer generation:
    /// this node has stopped gossiping and must exit (non-zero), saying why.
    NameTaken { reason: String },
    /// A user event for the handlers (new here; its payload may still have
    /// to be fetched, see [`Payload::Fetch`]).
    UserEvent(UserEvent),
    /// A query that addresses this node, for the handlers; answer it with
    /// [`Core::respond`].
    Query(Query),
    /// An acknowledgement or response to a query this node sent.
    QueryReply(Reply),
    /// A response too large for UDP: send it over TCP to `to`.
    ReplyTcp { to: SocketAddr, reply: Reply },
}

/// Large payloads of events this node sent, kept for members to fetch.
const KEPT_PAYLOADS: usize = 64;
/// Room kept in a packet for foca's own header beyond the two identities.
const HEADER_SLACK: usize = 64;

/// A duplicate-name report is logged at most this often per name.
const CONFLICT_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// foca's `Timer` in the heap; order comes from (due, sequence) only.
struct TimerKey(Timer<NodeId>);

impl PartialEq for TimerKey {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for TimerKey {}
impl PartialOrd for TimerKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerKey {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

struct Leaving {
    /// Ordered, so the notices go out in the same order on every run.
    pending: BTreeSet<String>,
    deadline: Instant,
    next_resend: Instant,
    done: bool,
}

/// A member our own probe failed, until foca declares it down or it refutes.
struct Suspicion {
    generation: u64,
    incarnation: u16,
    addr: SocketAddr,
    deadline: Instant,
    next_notice: Instant,
}

impl Suspicion {
    /// The direct "I suspect you" packet for member `name`.
    fn notice(&self, name: &str) -> Output {
        Output::Send {
            to: self.addr,
            packet: wire::encode_suspect(name, self.generation, self.incarnation),
        }
    }
}

/// How often a suspected member is told directly: several times within the
/// suspicion window, so lost packets do not turn into a false failure.
fn notice_interval(timing: &Timing) -> Duration {
    timing.probe_rtt
}

/// Push-pull entries merged per [`Core::merge_step`] in the agent: a chunk
/// holds the gossip loop a few milliseconds even with a full table (foca
/// looks members up by a linear scan).
pub const MERGE_CHUNK: usize = 128;
/// Members one push-pull may teach us that we gossip on before foca has
/// probed them; the rest are learned quietly (each member learns them by
/// its own push-pulls, and foca's probes find out whether they exist).
pub const MAX_GOSSIPED_NEW: usize = 64;

/// A peer's state being merged, chunk by chunk ([`Core::begin_merge`]).
pub struct Merge {
    from: NodeId,
    entries: std::vec::IntoIter<SyncEntry>,
    peer_down: bool,
    bootstrap: bool,
    gossiped_new: usize,
    /// Whether the peer itself is in the table yet (the first step does it).
    peer_observed: bool,
    /// New names the table can still take (it is reconciled after the merge).
    room: usize,
}

impl Merge {
    /// Entries not merged yet.
    pub fn remaining(&self) -> usize {
        self.entries.len()
    }

    /// Whose state it is.
    pub fn peer(&self) -> &str {
        &self.from.name
    }
}

/// Why [`Core::set_tags`] refused new tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetTagsError {
    /// The tags break a limit (see [`tags::validate`]); nothing changed.
    Invalid(TagError),
    /// foca refused the new identity (an encoding failure). foca may have
    /// taken it while the member table and [`Core::local`] kept the old one;
    /// the next tag change or refutation brings them together again.
    Identity(String),
}

impl std::fmt::Display for SetTagsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetTagsError::Invalid(e) => e.fmt(f),
            SetTagsError::Identity(e) => write!(f, "cannot change identity: {e}"),
        }
    }
}

impl std::error::Error for SetTagsError {}

/// Static settings of a core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub timing: Timing,
    /// Whether there are join targets to retry.
    pub has_join_targets: bool,
    /// Longest join retry delay.
    pub retry_max: Duration,
    pub reap_after: Duration,
    pub leave_timeout: Duration,
    /// Serf's `-replay`: run the recent user events a peer sends at the join.
    pub replay: bool,
}

pub struct Core {
    foca: Swim,
    /// foca's codec's clock, moved forward on every packet and tick.
    codec: ClockedCodec,
    rt: AccumulatingRuntime<NodeId>,
    /// The one timer heap: (due, insertion order, timer).
    timers: BinaryHeap<Reverse<(Instant, u64, TimerKey)>>,
    timer_seq: u64,
    table: Table,
    local: NodeId,
    cfg: CoreConfig,
    bucket: u32,
    join_backoff: Duration,
    next_join: Instant,
    join_pending: bool,
    next_push_pull: Instant,
    next_reconnect: Instant,
    push_pull_round: u64,
    leaving: Option<Leaving>,
    /// Last duplicate-name report per name.
    conflicts_logged: HashMap<String, Instant>,
    /// Set once another live node won our name: from then on the core is
    /// silent (see [`Output::NameTaken`]).
    name_taken: bool,
    /// Members we suspect, by name (ordered: same notices on every run).
    suspicions: BTreeMap<String, Suspicion>,
    joined: bool,
    /// New members a push-pull could not add (table full), and how many of
    /// them were logged already.
    members_refused: u64,
    members_refused_logged: u64,
    out: Vec<Output>,
    /// SWIM traffic and suspicions, for the agent's metrics.
    counters: ProtocolCounters,
    /// Our own choices (push-pull targets), seeded from the caller's RNG so a
    /// simulated run is reproducible.
    rng: StdRng,
    /// User events and queries: shared with foca's broadcast handler.
    user: Gossip,
    /// Payloads of our own large events: (Lamport time, name, bytes).
    kept_payloads: std::collections::VecDeque<(u64, String, Vec<u8>)>,
}

impl Core {
    pub fn new(local: NodeId, cfg: CoreConfig, mut rng: StdRng, now: Now) -> Core {
        identity::renewal_clock(now.wall_ms);
        let own_rng = StdRng::seed_from_u64(rng.next_u64());
        let (table, first) = Table::new(&local, cfg.reap_after.as_millis() as u64, now.wall_ms);
        let codec = ClockedCodec::new(now.wall_ms);
        let mut user_state = UserState::new(&local);
        user_state.replay = cfg.replay;
        let user = Gossip(std::sync::Arc::new(std::sync::Mutex::new(user_state)));
        let foca = Foca::with_custom_broadcast(
            local.clone(),
            foca_config(&cfg.timing, size_bucket(1)),
            rng,
            codec.clone(),
            user.clone(),
        );
        let mut core = Core {
            foca,
            codec,
            rt: AccumulatingRuntime::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            table,
            local,
            bucket: size_bucket(1),
            join_backoff: cfg.timing.join_backoff,
            next_join: now.mono,
            join_pending: false,
            next_push_pull: now.mono + cfg.timing.push_pull_interval,
            next_reconnect: now.mono + cfg.timing.reconnect_interval,
            push_pull_round: 0,
            leaving: None,
            conflicts_logged: HashMap::new(),
            name_taken: false,
            suspicions: BTreeMap::new(),
            joined: false,
            members_refused: 0,
            members_refused_logged: 0,
            out: Vec::new(),
            counters: ProtocolCounters::default(),
            rng: own_rng,
            user,
            kept_payloads: std::collections::VecDeque::new(),
            cfg,
        };
        core.apply_outcome(first, now);
        core
    }

    pub fn local(&self) -> &NodeId {
        &self.local
    }

    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.table.records()
    }

    pub fn record(&self, name: &str) -> Option<&Record> {
        self.table.get(name)
    }

    pub fn count(&self, status: Status) -> usize {
        self.table.count(status)
    }

    /// What the SWIM layer did so far (probes, acks, suspicions).
    pub fn counters(&self) -> &ProtocolCounters {
        &self.counters
    }

    /// Direct probe round trips measured since the last call.
    pub fn take_probe_rtts(&mut self) -> Vec<Duration> {
        self.counters.take_rtts()
    }

    /// Member updates foca still has to gossip (what a merge queued).
    pub fn gossip_backlog(&self) -> usize {
        self.foca.updates_backlog()
    }

    /// Live members other than ourselves, as foca sees them.
    pub fn live_members(&self) -> usize {
        self.foca.num_members()
    }

    pub fn joined(&self) -> bool {
        self.joined
    }

    pub fn is_leaving(&self) -> bool {
        self.leaving.is_some()
    }

    /// When [`Core::on_timers`] should next be called.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((due, _, _))| *due)
    }

    /// Everything the core asked for since the last call.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// One UDP packet from `from`. An error means it was dropped (count it).
    pub fn on_packet(
        &mut self,
        data: &[u8],
        from: SocketAddr,
        now: Now,
    ) -> Result<(), DecodeError> {
        identity::renewal_clock(now.wall_ms);
        if self.name_taken {
            return Ok(());
        }
        self.codec.set_now(now.wall_ms);
        let result = match wire::decode_packet(data)? {
            Packet::Foca(body) => {
                if self.leaving.is_some() {
                    return Ok(());
                }
                self.foca
                    .handle_data(body, &mut self.rt)
                    .map_err(|e| DecodeError::Malformed(format!("refused by SWIM: {e}")))
            }
            Packet::Leave(id) => {
                if !plausible_generation(id.generation, now.wall_ms) {
                    return Err(DecodeError::Malformed(format!(
                        "leave notice for {:?} with generation {}, more than {} ms ahead of \
                         this node's clock",
                        id.name,
                        id.generation,
                        crate::identity::MAX_GENERATION_AHEAD_MS
                    )));
                }
                debug!(node = %id.name, %from, "leave notice");
                let out = self.table.leave_notice(&id, now.wall_ms);
                self.apply_outcome(out, now);
                let ack = wire::encode_leave_ack(&self.local.name, id.generation);
                // Also to the node the notice is about, when the packet came
                // from elsewhere: if it is alive, the notice was forged or
                // replayed, and it refutes at once (see `LeaveAck`).
                if id.addr != from && id.name != self.local.name {
                    self.out.push(Output::Send {
                        to: id.addr,
                        packet: ack.clone(),
                    });
                }
                self.out.push(Output::Send {
                    to: from,
                    packet: ack,
                });
                Ok(())
            }
            Packet::LeaveAck { name, generation } => {
                match &mut self.leaving {
                    Some(leaving) if generation == self.local.generation => {
                        leaving.pending.remove(&name);
                    }
                    Some(_) => {}
                    // We are not leaving, yet `name` took a leave notice of
                    // this identity (or a newer one): forged or replayed.
                    None if generation >= self.local.generation => {
                        debug!(%from, by = %name, generation, "receipt of a leave we never sent");
                        self.refute_above(generation, from, now);
                    }
                    None => {}
                }
                self.progress_leave(now);
                Ok(())
            }
            Packet::Suspect {
                name,
                generation,
                incarnation,
            } => {
                self.refute(&name, generation, incarnation, from);
                Ok(())
            }
            Packet::QueryReply(reply) => {
                self.out.push(Output::QueryReply(reply));
                Ok(())
            }
        };
        self.flush(now);
        result
    }

    /// The cluster was told that this node left or failed under generation
    /// `above` (ours or newer) while it is alive: a forged or replayed leave,
    /// or a failure of a life the cluster thinks is newer. Take a generation
    /// above it (gossiped by foca, and said directly to `to`), so every
    /// member takes the live identity back at once.
    fn refute_above(&mut self, above: u64, to: SocketAddr, now: Now) {
        if self.leaving.is_some() || self.name_taken || !plausible_generation(above, now.wall_ms) {
            return;
        }
        let new_id = self.local.renewed_above(above, now.wall_ms);
        warn!(
            held = above,
            generation = new_id.generation,
            "the cluster holds this node as left or failed (a forged or replayed notice?); \
             refuting with a newer generation"
        );
        if let Err(e) = self.foca.change_identity(new_id.clone(), &mut self.rt) {
            debug!(error = %e, "refuting by a new generation failed");
            return;
        }
        self.set_local(new_id, now);
        if to != self.local.addr {
            if let Err(e) = self.foca.announce(NodeId::seed(to), &mut self.rt) {
                debug!(%to, error = %e, "refutation announce failed");
            }
        }
    }

    /// A live member with our name and a newer generation at another
    /// address, as foca knows it: the twin that keeps the name.
    fn newer_twin(&self, than: u64) -> Option<NodeId> {
        self.foca
            .iter_membership_state()
            .map(|m| (m.id(), m.state()))
            .find(|(id, state)| {
                *state != State::Down
                    && id.name == self.local.name
                    && id.addr != self.local.addr
                    && id.generation > than
            })
            .map(|(id, _)| id.clone())
    }

    /// Another live node keeps our name (the newer generation wins): stop
    /// gossiping under it, for good, and tell the runtime why.
    fn give_up_name(&mut self, twin: &NodeId) {
        if self.name_taken {
            return;
        }
        self.name_taken = true;
        self.suspicions.clear();
        self.timers.clear();
        let reason = format!(
            "duplicate node name {:?}: another live node at {} uses it with a newer \
             generation ({} > {}), so it keeps the name and this node stops; give every \
             node a unique --node",
            self.local.name, twin.addr, twin.generation, self.local.generation
        );
        self.out.push(Output::NameTaken { reason });
    }

    /// A member tells us it suspects us: refute now (a higher incarnation,
    /// gossiped by foca) and answer it directly with a SWIM announce, whose
    /// header carries the new incarnation, so the suspicion ends at its
    /// source whatever happens to the gossip.
    fn refute(&mut self, name: &str, generation: u64, incarnation: u16, from: SocketAddr) {
        if self.leaving.is_some() || name != self.local.name || generation != self.local.generation
        {
            // About an earlier life of ours (or another node's name): the
            // generation rule already settles it.
            return;
        }
        debug!(%from, incarnation, "suspected by a peer; refuting");
        self.counters.counts.self_refutations += 1;
        let me = Member::new(self.local.clone(), incarnation, State::Suspect);
        if let Err(e) = self
            .foca
            .apply_many(std::iter::once(me), true, &mut self.rt)
        {
            debug!(error = %e, "refuting failed");
        }
        if let Err(e) = self.foca.announce(NodeId::seed(from), &mut self.rt) {
            debug!(%from, error = %e, "refutation announce failed");
        }
    }

    /// Tells each member we suspect, again every [`notice_interval`] until
    /// it refutes or foca declares it down.
    fn notify_suspects(&mut self, now: Now) {
        let interval = notice_interval(&self.cfg.timing);
        let (table, counters) = (&self.table, &mut self.counters);
        self.suspicions.retain(|name, s| {
            let status = table
                .get(name)
                .filter(|r| r.id.generation == s.generation)
                .map(|r| r.status);
            if status == Some(Status::Alive) {
                counters.counts.suspicions_refuted += 1;
            }
            now.mono < s.deadline && status == Some(Status::Suspect)
        });
        for (name, s) in &mut self.suspicions {
            if now.mono >= s.next_notice {
                s.next_notice = now.mono + interval;
                self.out.push(s.notice(name));
            }
        }
    }

    /// Fires every timer due at `now`.
    pub fn on_timers(&mut self, now: Now) {
        identity::renewal_clock(now.wall_ms);
        if self.name_taken {
            return;
        }
        while let Some(Reverse((due, _, _))) = self.timers.peek() {
            if *due > now.mono {
                break;
            }
            let Some(Reverse((_, _, TimerKey(timer)))) = self.timers.pop() else {
                break;
            };
            if let Timer::ChangeSuspectToDown {
                member_id,
                incarnation,
                ..
            } = &timer
            {
                // foca 2.0 sends TurnUndead when this timer fires even if the
                // member refuted meanwhile, which makes a live member rejoin
                // under a new identity: a storm on a lossy network. Only a
                // suspicion still standing reaches foca.
                let standing = self
                    .foca
                    .iter_membership_state()
                    .any(|m| m.id() == member_id && m.incarnation() == *incarnation);
                if !standing {
                    continue;
                }
            }
            if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                debug!(error = %e, "timer handling error");
            }
        }
        self.flush(now);
    }

    /// The periodic tick: reconcile, reap, join retries, push-pull, leave progress.
    pub fn on_tick(&mut self, now: Now) {
        identity::renewal_clock(now.wall_ms);
        if self.name_taken {
            return;
        }
        self.codec.set_now(now.wall_ms);
        self.reconcile(now);
        if self.leaving.is_some() {
            self.progress_leave(now);
            self.flush(now);
            return;
        }
        self.notify_suspects(now);
        let out = self.table.reap(now.wall_ms);
        self.apply_outcome(out, now);
        if self.foca.num_members() == 0
            && self.cfg.has_join_targets
            && !self.join_pending
            && now.mono >= self.next_join
        {
            self.join_pending = true;
            self.out.push(Output::JoinRound);
            self.next_join = now.mono + self.join_backoff;
            self.join_backoff = (self.join_backoff * 2).min(self.cfg.retry_max);
        }
        if now.mono >= self.next_push_pull {
            self.next_push_pull = now.mono + self.cfg.timing.push_pull_interval;
            self.periodic_push_pull();
        }
        if now.mono >= self.next_reconnect {
            self.next_reconnect = now.mono + self.cfg.timing.reconnect_interval;
            self.reconnect();
        }
        self.flush(now);
    }

    /// Contacts resolved addresses: a SWIM announce and a TCP push-pull each.
    /// Returns how many were contacted (ourselves excluded).
    pub fn contact(&mut self, addrs: &[SocketAddr], join_round: bool, now: Now) -> usize {
        identity::renewal_clock(now.wall_ms);
        if join_round {
            self.join_pending = false;
        }
        if self.name_taken {
            return 0;
        }
        let mut contacted = 0;
        for &addr in addrs {
            if addr == self.local.addr {
                continue;
            }
            contacted += 1;
            if let Err(e) = self.foca.announce(NodeId::seed(addr), &mut self.rt) {
                debug!(%addr, error = %e, "announce failed");
            }
            self.out.push(Output::PushPull { to: addr });
        }
        self.flush(now);
        contacted
    }

    fn periodic_push_pull(&mut self) {
        self.push_pull_round += 1;
        let live: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        if self.push_pull_round.is_multiple_of(2) && self.cfg.has_join_targets {
            let mut exclude = live;
            exclude.push(self.local.addr);
            self.out.push(Output::SeedPushPull { exclude });
        } else if !live.is_empty() {
            let to = live[self.rng.random_range(0..live.len())];
            self.out.push(Output::PushPull { to });
        }
    }

    /// A push-pull with one failed member, chosen at random: if it is back
    /// (a healed partition, a node that was only unreachable), both sides
    /// learn each other's view at once, and whoever the other side holds as
    /// failed rejoins. A member that is really gone just refuses the
    /// connection. Left members are not retried: they said goodbye.
    fn reconnect(&mut self) {
        let failed: Vec<SocketAddr> = self
            .table
            .records()
            .filter(|r| r.status == Status::Failed)
            .map(|r| r.id.addr)
            .collect();
        if !failed.is_empty() {
            let to = failed[self.rng.random_range(0..failed.len())];
            debug!(%to, "push-pull with a failed member (reconnect)");
            self.out.push(Output::PushPull { to });
        }
    }

    /// Our whole table, for a push-pull.
    pub fn sync_state(&self) -> SyncMsg {
        SyncMsg {
            from: self.local.clone(),
            entries: self.table.sync_entries(),
        }
    }

    /// Feeds a peer's full state to foca and the table, all at once (the
    /// simulator's way; the agent merges in chunks, see [`Core::begin_merge`]).
    pub fn apply_remote(&mut self, remote: SyncMsg, now: Now) {
        identity::renewal_clock(now.wall_ms);
        if let Some(mut merge) = self.begin_merge(remote, now) {
            while !self.merge_step(&mut merge, usize::MAX, now) {}
        }
        self.reconcile(now);
        self.flush(now);
    }

    /// Starts merging a peer's full state: the peer itself is applied now,
    /// its entries by [`Core::merge_step`], a chunk at a time, so the loop
    /// that owns the core keeps answering probes while a big table merges.
    /// None if the state is our own.
    pub fn begin_merge(&mut self, remote: SyncMsg, now: Now) -> Option<Merge> {
        identity::renewal_clock(now.wall_ms);
        if self.name_taken
            || (remote.from.name == self.local.name && remote.from.addr == self.local.addr)
        {
            return None;
        }
        if !plausible_generation(remote.from.generation, now.wall_ms) {
            debug!(from = %remote.from.addr, "push-pull refused: the sender's generation is far ahead of our clock");
            return None;
        }
        // A peer we hold as down (reconnect, a healed partition): foca will
        // not take it back under the same identity, so after this exchange
        // we say hello directly; whichever side is held down rejoins.
        let peer_down = self
            .foca
            .iter_membership_state()
            .any(|m| m.id().addr == remote.from.addr && m.state() == State::Down);
        // A node with no member yet (joining) takes the table without
        // gossiping it on: the cluster knows it already, and re-sending a
        // thousand entries from every joiner is a burst for nothing. The
        // peer itself is news either way.
        let bootstrap = self.foca.num_members() == 0;
        if let Err(e) = self.foca.apply_many(
            std::iter::once(Member::alive(remote.from.clone())),
            true,
            &mut self.rt,
        ) {
            debug!(error = %e, "applying the push-pull peer failed");
        }
        self.flush_quiet(now);
        let peer_is_new = self.table.get(&remote.from.name).is_none();
        let room = MAX_MEMBERS.saturating_sub(self.table.len() + usize::from(peer_is_new));
        Some(Merge {
            room,
            from: remote.from,
            entries: remote.entries.into_iter(),
            peer_down,
            bootstrap,
            gossiped_new: 0,
            peer_observed: false,
        })
    }

    /// Applies up to `max` more entries of `merge`; true once it is done.
    /// Each step brings the table in line for the members it touched only
    /// (a full reconcile of a big table costs many chunks), so once a merge
    /// is done the table shows all of it.
    pub fn merge_step(&mut self, merge: &mut Merge, max: usize, now: Now) -> bool {
        identity::renewal_clock(now.wall_ms);
        let mut left = Vec::new();
        // Members gone before we knew them: (identity, incarnation, status).
        let mut gone = Vec::new();
        // Updates gossiped on, and news we keep to ourselves.
        let (mut gossip, mut quiet) = (Vec::new(), Vec::new());
        let mut touched: HashSet<String> = HashSet::new();
        if !merge.peer_observed {
            merge.peer_observed = true;
            touched.insert(merge.from.name.clone());
        }
        let mut twin = None;
        let mut refute_above = None;
        for SyncEntry {
            id,
            incarnation,
            state,
        } in merge.entries.by_ref().take(max)
        {
            if !plausible_generation(id.generation, now.wall_ms) {
                debug!(node = %id.name, generation = id.generation, "push-pull entry refused: generation far ahead of our clock");
                continue;
            }
            if id.name == self.local.name {
                let mine = self.local.generation;
                let active = matches!(state, SyncState::Alive | SyncState::Suspect);
                if id.generation == mine && state != SyncState::Alive {
                    // The peer holds us as suspect or gone: refute, or
                    // rejoin under a new generation (foca does either).
                    let state = match state {
                        SyncState::Suspect => State::Suspect,
                        _ => State::Down,
                    };
                    gossip.push(Member::new(self.local.clone(), incarnation, state));
                } else if id.generation > mine && active && id.addr != self.local.addr {
                    // A live twin with a newer generation: it keeps the name.
                    twin = Some(id);
                } else if id.generation > mine {
                    // A newer life of ours held as left or failed (a forged
                    // leave), or a newer one at our own address (only ever
                    // a past life whose generation ran ahead): beat it.
                    refute_above = refute_above.max(Some(id.generation));
                }
                continue;
            }
            let known = self.table.get(&id.name).is_some();
            let state = match state {
                SyncState::Alive => State::Alive,
                SyncState::Suspect => State::Suspect,
                // A member we never knew that is gone already (we joined
                // after it went): kept as the peer holds it, failed or
                // left until reaped, as every older member keeps it. Never
                // gossiped on: the cluster knows.
                SyncState::Failed | SyncState::Left if !known => {
                    if merge.room == 0 {
                        self.members_refused += 1;
                    } else {
                        merge.room -= 1;
                        let status = match state {
                            SyncState::Left => Status::Left,
                            _ => Status::Failed,
                        };
                        gone.push((id, incarnation, status));
                    }
                    continue;
                }
                SyncState::Failed => State::Down,
                SyncState::Left => {
                    left.push(id.clone());
                    State::Down
                }
            };
            touched.insert(id.name.clone());
            let member = Member::new(id, incarnation, state);
            if known {
                if merge.bootstrap {
                    quiet.push(member);
                } else {
                    gossip.push(member);
                }
                continue;
            }
            // A name we have not heard of: the table must have room for it,
            // and only the first few of a frame are gossiped on before foca
            // has probed them, so one peer cannot have its invented members
            // spread by everyone it talks to.
            if merge.room == 0 {
                self.members_refused += 1;
                continue;
            }
            merge.room -= 1;
            if !merge.bootstrap && merge.gossiped_new < MAX_GOSSIPED_NEW {
                merge.gossiped_new += 1;
                gossip.push(member);
            } else {
                quiet.push(member);
            }
        }
        for (updates, do_gossip) in [(gossip, true), (quiet, false)] {
            if updates.is_empty() {
                continue;
            }
            if let Err(e) = self
                .foca
                .apply_many(updates.into_iter(), do_gossip, &mut self.rt)
            {
                debug!(error = %e, "applying push-pull state failed");
            }
        }
        if let Some(twin) = twin {
            self.give_up_name(&twin);
            return true;
        }
        if let Some(above) = refute_above {
            self.refute_above(above, merge.from.addr, now);
        }
        self.learn_gone(gone, !merge.bootstrap, now);
        for id in left {
            let newer_or_same = self
                .table
                .get(&id.name)
                .is_some_and(|r| r.id.generation <= id.generation);
            if newer_or_same {
                let out = self.table.leave_notice(&id, now.wall_ms);
                self.apply_outcome(out, now);
            }
        }
        self.observe_some(&touched, now);
        let done = merge.entries.len() == 0;
        if done {
            if merge.peer_down {
                if let Err(e) = self
                    .foca
                    .announce(NodeId::seed(merge.from.addr), &mut self.rt)
                {
                    debug!(error = %e, "announce after reconnect failed");
                }
            }
            self.adjust_to_size();
        }
        self.flush_quiet(now);
        if done && self.members_refused > self.members_refused_logged {
            warn!(
                refused = self.members_refused - self.members_refused_logged,
                limit = MAX_MEMBERS,
                from = %merge.from.name,
                "member table full: new members from a push-pull were refused"
            );
            self.members_refused_logged = self.members_refused;
        }
        done
    }

    /// Members a peer holds as failed or left that we never knew: foca
    /// holds each identity as down (so a stale "alive" of that identity,
    /// gossiped or in an older peer's state, cannot bring it back, and the
    /// node itself, if it is alive after all, hears it is down the first
    /// time it talks to us and rejoins under a new generation), the table
    /// as failed or left until reaped. A newer identity of the name wins
    /// over both, as it does on every other member.
    fn learn_gone(&mut self, gone: Vec<(NodeId, u16, Status)>, announce: bool, now: Now) {
        if gone.is_empty() {
            return;
        }
        let downs = gone
            .iter()
            .map(|(id, incarnation, _)| Member::new(id.clone(), *incarnation, State::Down));
        if let Err(e) = self.foca.apply_many(downs, false, &mut self.rt) {
            debug!(error = %e, "applying members gone before we knew them failed");
        }
        let mut out = Outcome::default();
        for (id, incarnation, status) in gone {
            out.merge(
                self.table
                    .learn_gone(&id, incarnation, status, now.wall_ms, announce),
            );
        }
        self.apply_outcome(out, now);
    }

    /// New members refused so far because the table was full.
    pub fn members_refused(&self) -> u64 {
        self.members_refused + self.table.refused()
    }

    /// Replaces our tags (see [`tags::merged`]); the new identity is gossiped
    /// as an update.
    pub fn set_tags(&mut self, next: Tags, now: Now) -> Result<Tags, SetTagsError> {
        identity::renewal_clock(now.wall_ms);
        tags::validate(&next).map_err(SetTagsError::Invalid)?;
        if next == self.local.tags {
            return Ok(next);
        }
        let new_id = self.local.with_tags(next.clone(), now.wall_ms);
        self.foca
            .change_identity(new_id.clone(), &mut self.rt)
            .map_err(|e| SetTagsError::Identity(e.to_string()))?;
        info!(tags = ?next, "tags changed");
        self.set_local(new_id, now);
        self.flush(now);
        Ok(next)
    }

    fn set_local(&mut self, id: NodeId, now: Now) {
        self.user.state().set_local(&id);
        self.local = id.clone();
        let out = self.table.set_local(&id, now.wall_ms);
        self.apply_outcome(out, now);
    }

    pub fn force_leave(&mut self, name: &str, now: Now) -> Result<(), ForceLeaveError> {
        identity::renewal_clock(now.wall_ms);
        let out = self.table.force_leave(name, now.wall_ms)?;
        info!(node = %name, "force-leave: marked left");
        self.apply_outcome(out, now);
        self.flush(now);
        Ok(())
    }

    /// Starts a graceful leave; [`Output::LeaveDone`] follows when every
    /// member acknowledged or the leave timeout passed.
    pub fn begin_leave(&mut self, now: Now) {
        identity::renewal_clock(now.wall_ms);
        if self.leaving.is_some() {
            return;
        }
        let pending: BTreeSet<String> = self
            .table
            .records()
            .filter(|r| r.status.is_active() && r.id.name != self.local.name)
            .map(|r| r.id.name.clone())
            .collect();
        info!(members = pending.len(), "leaving the cluster");
        let out = self.table.set_local_left(now.wall_ms);
        self.apply_outcome(out, now);
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            warn!(error = %e, "foca leave failed");
        }
        self.leaving = Some(Leaving {
            pending,
            deadline: now.mono + self.cfg.leave_timeout,
            next_resend: now.mono,
            done: false,
        });
        self.progress_leave(now);
        self.flush(now);
    }

    /// Sends leave notices to members that have not acknowledged yet.
    fn progress_leave(&mut self, now: Now) {
        let Some(leaving) = &mut self.leaving else {
            return;
        };
        if leaving.done {
            return;
        }
        if leaving.pending.is_empty() || now.mono >= leaving.deadline {
            if leaving.pending.is_empty() {
                info!("leave acknowledged by every member");
            } else {
                warn!(
                    unacknowledged = leaving.pending.len(),
                    names = %crate::loglist::few(&leaving.pending),
                    "leave timeout: some members did not confirm"
                );
            }
            leaving.done = true;
            self.out.push(Output::LeaveDone);
            return;
        }
        if now.mono >= leaving.next_resend {
            leaving.next_resend = now.mono + Duration::from_millis(200);
            let notice = wire::encode_leave(&self.local);
            let targets: Vec<SocketAddr> = leaving
                .pending
                .iter()
                .filter_map(|n| self.table.get(n).map(|r| r.id.addr))
                .collect();
            for to in targets {
                self.out.push(Output::Send {
                    to,
                    packet: notice.clone(),
                });
            }
        }
    }

    /// Brings the table in line with foca's full state.
    fn reconcile(&mut self, now: Now) {
        if self.name_taken {
            return;
        }
        let mut out = Outcome::default();
        let mut twin = None;
        // No snapshot copy: this runs every tick for every member, in every
        // core of a 1,000-member simulation.
        for m in self.foca.iter_membership_state() {
            let id = m.id();
            if id.name == self.local.name
                && id.addr != self.local.addr
                && id.generation > self.local.generation
                && m.state() != State::Down
            {
                twin = Some(id.clone());
            }
            out.merge(self.table.observe(
                m.id(),
                FocaState::from(m.state()),
                m.incarnation(),
                now.wall_ms,
            ));
        }
        self.apply_outcome(out, now);
        if let Some(twin) = twin {
            self.give_up_name(&twin);
            return;
        }
        self.adjust_to_size();
    }

    /// [`Core::reconcile`] for the named members only.
    fn observe_some(&mut self, names: &HashSet<String>, now: Now) {
        if names.is_empty() {
            return;
        }
        let mut out = Outcome::default();
        for m in self.foca.iter_membership_state() {
            if names.contains(&m.id().name) {
                out.merge(self.table.observe(
                    m.id(),
                    FocaState::from(m.state()),
                    m.incarnation(),
                    now.wall_ms,
                ));
            }
        }
        self.apply_outcome(out, now);
    }

    /// Rescales foca's settings to the cluster's size; tracks whether we
    /// have joined.
    fn adjust_to_size(&mut self) {
        let bucket = size_bucket(self.foca.num_members() + 1);
        if bucket != self.bucket {
            self.bucket = bucket;
            if let Err(e) = self.foca.set_config(foca_config(&self.cfg.timing, bucket)) {
                warn!(error = %e, "cannot rescale foca config");
            }
        }
        let joined = self.foca.num_members() > 0;
        if joined != self.joined {
            if joined {
                info!(members = self.foca.num_members(), "joined the cluster");
            } else if self.leaving.is_none() {
                warn!("no live members left; retrying the join targets");
            }
            self.joined = joined;
        }
    }

    fn apply_outcome(&mut self, out: Outcome, now: Now) {
        if !out.declare_down.is_empty() {
            let downs = out.declare_down.into_iter().map(Member::down);
            if let Err(e) = self.foca.apply_many(downs, true, &mut self.rt) {
                debug!(error = %e, "declaring stale identities down failed");
            }
        }
        for c in out.conflicts {
            let recent = self
                .conflicts_logged
                .get(&c.name)
                .is_some_and(|t| now.mono.duration_since(*t) < CONFLICT_LOG_INTERVAL);
            if !recent {
                tracing::error!("{}", c.message);
                self.conflicts_logged.insert(c.name, now.mono);
            }
        }
        for event in out.events {
            let r = &event.record;
            info!(
                event = event.kind.as_str(),
                node = %r.id.name,
                addr = %r.id.addr,
                status = r.status.as_str(),
                "member event"
            );
            self.out.push(Output::Event(event));
        }
    }

    /// Hands out the user events and queries foca took in; true if any.
    fn deliver_user(&mut self) -> bool {
        let delivered = self.user.state().drain();
        let any = !delivered.is_empty();
        for d in delivered {
            match d {
                Delivered::Event(e) => {
                    debug!(name = %e.name, ltime = e.ltime, origin = %e.origin, "user event");
                    self.out.push(Output::UserEvent(e));
                }
                Delivered::Query { query, addressed } => {
                    debug!(name = %query.name, ltime = query.ltime, origin = %query.origin, addressed, "query");
                    if !addressed || self.leaving.is_some() {
                        continue;
                    }
                    if query.ack {
                        let ack = self.reply_to(&query, ReplyKind::Ack);
                        self.out.push(Output::Send {
                            to: query.reply_to,
                            packet: wire::encode_query_reply(&ack),
                        });
                    }
                    self.out.push(Output::Query(query));
                }
            }
        }
        any
    }

    fn reply_to(&self, q: &Query, kind: ReplyKind) -> Reply {
        Reply {
            id: q.id,
            ltime: q.ltime,
            from: self.local.name.clone(),
            kind,
        }
    }

    /// The most bytes one custom broadcast may take so that it fits in a
    /// packet next to two identities like ours.
    fn broadcast_room(&self) -> usize {
        let id_len = postcard::to_stdvec(&self.local).map_or(1024, |v| v.len());
        foca_config(&self.cfg.timing, self.bucket)
            .max_packet_size
            .get()
            .saturating_sub(2 * id_len + HEADER_SLACK)
    }

    /// Adds a broadcast of ours to foca's queue (and so delivers it here).
    fn add_broadcast(&mut self, b: &Broadcast, now: Now) -> Result<(), UserError> {
        let data = userev::encode(b)?;
        let room = self.broadcast_room();
        if data.len() > room {
            return Err(UserError::PayloadTooLarge {
                len: data.len(),
                max: room,
            });
        }
        self.foca
            .add_broadcast(&data)
            .map_err(|e| UserError::Encode(e.to_string()))?;
        self.flush(now);
        Ok(())
    }

    /// Sends a user event to every member (and this node's handlers); its
    /// Lamport time. A payload above [`userev::INLINE_PAYLOAD`] (or one that
    /// does not fit in a packet with our identity) is announced and fetched
    /// over TCP from us ([`Core::kept_payload`]).
    pub fn user_event(
        &mut self,
        name: &str,
        payload: Vec<u8>,
        coalesce: bool,
        now: Now,
    ) -> Result<u64, UserError> {
        identity::renewal_clock(now.wall_ms);
        userev::validate_event_name(name)?;
        if payload.len() > userev::MAX_EVENT_PAYLOAD {
            return Err(UserError::PayloadTooLarge {
                len: payload.len(),
                max: userev::MAX_EVENT_PAYLOAD,
            });
        }
        let ltime = self.user.state().event_clock.tick();
        let mut event = UserEvent {
            ltime,
            origin: self.local.name.clone(),
            name: name.to_string(),
            coalesce,
            payload: Payload::Inline(Vec::new()),
        };
        let inline_fits = payload.len() <= userev::INLINE_PAYLOAD
            && postcard::to_stdvec(&Broadcast::Event(event.clone()))
                .is_ok_and(|v| v.len() + payload.len() + 4 <= self.broadcast_room());
        if inline_fits {
            event.payload = Payload::Inline(payload);
        } else {
            event.payload = Payload::Fetch {
                len: payload.len() as u32,
                from: self.local.addr,
            };
            if self.kept_payloads.len() >= KEPT_PAYLOADS {
                self.kept_payloads.pop_front();
            }
            self.kept_payloads
                .push_back((ltime, name.to_string(), payload));
        }
        self.add_broadcast(&Broadcast::Event(event), now)?;
        Ok(ltime)
    }

    /// The payload of our large event `(ltime, name)`, for a member that
    /// fetches it (None once 64 newer ones pushed it out).
    pub fn kept_payload(&self, ltime: u64, name: &str) -> Option<Vec<u8>> {
        self.kept_payloads
            .iter()
            .find(|(t, n, _)| *t == ltime && n == name)
            .map(|(_, _, p)| p.clone())
    }

    /// Sends a query to the members its filters address; the query and the
    /// live members it addressed (whose answers complete it).
    pub fn query(
        &mut self,
        spec: QuerySpec,
        now: Now,
    ) -> Result<(Query, BTreeSet<String>), UserError> {
        identity::renewal_clock(now.wall_ms);
        let QuerySpec {
            name,
            payload,
            nodes,
            tags,
            ack,
            timeout,
        } = spec;
        let name = name.as_str();
        userev::validate_event_name(name)?;
        let filter = QueryFilter::new(&nodes, &tags)?;
        if timeout.is_zero() || timeout > userev::MAX_QUERY_TIMEOUT {
            return Err(UserError::Timeout(timeout));
        }
        let expected: BTreeSet<String> = self
            .table
            .records()
            .filter(|r| r.status.is_active() && filter.matches(&r.id.name, &r.id.tags))
            .map(|r| r.id.name.clone())
            .collect();
        let query = Query {
            ltime: self.user.state().query_clock.tick(),
            id: self.rng.next_u64(),
            origin: self.local.name.clone(),
            reply_to: self.local.addr,
            name: name.to_string(),
            payload,
            nodes,
            tags,
            ack,
            timeout_ms: timeout.as_millis() as u64,
        };
        self.add_broadcast(&Broadcast::Query(query.clone()), now)?;
        Ok((query, expected))
    }

    /// Answers a query that addressed us: in a UDP packet, or over TCP when
    /// the response is larger than [`userev::UDP_RESPONSE`].
    pub fn respond(&mut self, query: &Query, kind: ReplyKind) {
        let large = matches!(&kind, ReplyKind::Response(p) if p.len() > userev::UDP_RESPONSE);
        let reply = self.reply_to(query, kind);
        if large {
            self.out.push(Output::ReplyTcp {
                to: query.reply_to,
                reply,
            });
        } else {
            self.out.push(Output::Send {
                to: query.reply_to,
                packet: wire::encode_query_reply(&reply),
            });
        }
    }

    /// Our clocks and recent events, for [`wire::TcpMsg::Clocks`].
    pub fn user_sync(&self) -> userev::UserSync {
        self.user.state().sync()
    }

    /// A peer's clocks and recent events: catch up (see
    /// [`UserState::peer_clocks`]), and take the events we missed (they are
    /// delivered and gossiped on like any new one; the rest are duplicates;
    /// at our join, without `replay`, the peer's are recorded, not run).
    pub fn peer_sync(&mut self, theirs: userev::UserSync, now: Now) {
        self.user.state().peer_clocks(theirs.event, theirs.query);
        if self.leaving.is_some() || self.name_taken {
            return;
        }
        let skipped_before = {
            let mut state = self.user.state();
            state.from_sync(true);
            state.skipped
        };
        for data in theirs.recent.iter().take(userev::RECENT_EVENTS) {
            if let Err(e) = self.foca.add_broadcast(data) {
                debug!(error = %e, "a recent event from a peer was refused");
            }
        }
        let skipped = {
            let mut state = self.user.state();
            state.from_sync(false);
            state.skipped - skipped_before
        };
        if skipped > 0 {
            info!(
                events = skipped,
                "user events from before this node joined were not run (--replay runs them)"
            );
        }
        self.flush(now);
    }

    /// Custom broadcasts foca still has to gossip.
    pub fn broadcast_backlog(&self) -> usize {
        self.foca.custom_broadcast_backlog()
    }

    /// User events and queries dropped (too old, or a flooded inbox).
    pub fn user_dropped(&self) -> u64 {
        self.user.state().dropped
    }

    /// Drains what foca asked for: packets, timers, notifications; a
    /// membership change reconciles the table at once.
    fn flush(&mut self, now: Now) {
        self.flush_with(now, true);
    }

    /// [`Core::flush`], leaving the reconcile to the next tick.
    fn flush_quiet(&mut self, now: Now) {
        self.flush_with(now, false);
    }

    fn flush_with(&mut self, now: Now, reconcile: bool) {
        let mut dirty = !reconcile;
        loop {
            // The headers foca read and wrote since the last flush (same turn).
            for seen in self.codec.take_seen() {
                self.counters.record(seen, now.mono);
            }
            if self.name_taken {
                // Silent for good: nothing foca queued may go out.
                while self.rt.to_send().is_some() {}
                while self.rt.to_schedule().is_some() {}
                while self.rt.to_notify().is_some() {}
                return;
            }
            while let Some((to, data)) = self.rt.to_send() {
                self.out.push(Output::Send {
                    to: to.addr,
                    packet: wire::encode_foca(&data),
                });
            }
            while let Some((after, timer)) = self.rt.to_schedule() {
                if let Timer::ChangeSuspectToDown {
                    member_id,
                    incarnation,
                    ..
                } = &timer
                {
                    // Our probe failed: tell the member now, not only by gossip.
                    let s = Suspicion {
                        generation: member_id.generation,
                        incarnation: *incarnation,
                        addr: member_id.addr,
                        deadline: now.mono + after,
                        next_notice: now.mono + notice_interval(&self.cfg.timing),
                    };
                    self.out.push(s.notice(&member_id.name));
                    self.counters.counts.suspicions_raised += 1;
                    self.suspicions.insert(member_id.name.clone(), s);
                }
                self.timer_seq += 1;
                self.timers
                    .push(Reverse((now.mono + after, self.timer_seq, TimerKey(timer))));
            }
            if self.deliver_user() {
                // New broadcasts: pass them on now, not at the next gossip
                // round (the periodic gossip repeats them meanwhile).
                if let Err(e) = self.foca.broadcast(&mut self.rt) {
                    debug!(error = %e, "custom broadcast failed");
                }
                continue;
            }
            let mut notified = false;
            while let Some(n) = self.rt.to_notify() {
                notified = true;
                match n {
                    OwnedNotification::Rejoin(id) => {
                        // Declared down because a newer twin took the name:
                        // rejoining would only take it back, and so on
                        // forever. The newer one keeps it.
                        if let Some(twin) = self.newer_twin(self.local.generation) {
                            self.give_up_name(&twin);
                            continue;
                        }
                        warn!(
                            generation = id.generation,
                            "the cluster declared this node down; rejoined with a new generation"
                        );
                        self.set_local(id, now);
                    }
                    OwnedNotification::Defunct if self.leaving.is_none() => {
                        warn!("this node is considered down by the cluster");
                    }
                    OwnedNotification::Idle if self.leaving.is_none() => {
                        // Back to joining: retry at once, with a short backoff.
                        self.join_backoff = self.cfg.timing.join_backoff;
                        self.next_join = now.mono;
                    }
                    _ => {}
                }
            }
            if notified && !dirty {
                // Membership changed: reconcile now (it may queue more packets).
                dirty = true;
                self.reconcile(now);
                continue;
            }
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::EventKind;
    use crate::testing::Net;

    #[test]
    fn cores_join_detect_a_failure_and_see_a_leave_on_virtual_time() {
        let mut net = Net::joined(3);
        for i in 0..3 {
            for n in ["n0", "n1", "n2"] {
                assert_eq!(net.status(i, n), Some(Status::Alive), "n{i} about {n}");
            }
        }
        // n2 dies silently: failed at the others within probe + suspicion (~1.2-2 s).
        net.dead.push(2);
        let died = net.now_ms;
        while net.status(0, "n2") != Some(Status::Failed) {
            net.step();
            assert!(net.now_ms - died < 5_000, "not failed after 5 s");
        }
        let took = net.now_ms - died;
        assert!(took >= 800, "failed too early: {took} ms");
        // n1 leaves gracefully: left (not failed) at n0 at once.
        let now = net.now();
        net.cores[1].begin_leave(now);
        net.step();
        assert_eq!(net.status(0, "n1"), Some(Status::Left));
    }

    /// Runs `f` with every log line it emits written to a string.
    fn logs_of(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
        text
    }

    #[test]
    fn a_leave_nobody_acknowledges_logs_a_count_and_a_few_names_not_every_member() {
        let mut net = Net::new(1);
        let now = net.now();
        let id = |name: String, addr: String| NodeId {
            name,
            addr: addr.parse().unwrap(),
            generation: 1,
            tags: Tags::new(),
        };
        // 1,000 members with 100-byte names, none of which will answer.
        let entries = (0..1000)
            .map(|i| SyncEntry {
                id: id(
                    format!("{}-{i:04}", "m".repeat(95)),
                    format!("10.1.{}.{}:7946", i / 200, i % 200 + 1),
                ),
                incarnation: 0,
                state: SyncState::Alive,
            })
            .collect();
        let from = id("peer".into(), "10.2.0.1:7946".into());
        net.cores[0].apply_remote(SyncMsg { from, entries }, now);
        assert_eq!(net.cores[0].count(Status::Alive), 1002);
        let logs = logs_of(|| {
            net.cores[0].begin_leave(now);
            let later = Now {
                mono: now.mono + Duration::from_secs(3),
                wall_ms: now.wall_ms + 3_000,
            };
            net.cores[0].on_tick(later);
        });
        let line = logs
            .lines()
            .find(|l| l.contains("leave timeout"))
            .unwrap_or_else(|| panic!("no leave timeout line in:\n{logs}"));
        assert!(line.contains("unacknowledged=1001"), "{line}");
        assert!(line.contains("and 996 more"), "{line}");
        assert!(
            logs.lines().all(|l| l.len() < 2_000),
            "a log line of {} bytes",
            logs.lines().map(str::len).max().unwrap_or(0)
        );
    }

    #[test]
    fn a_suspected_member_refutes_through_the_direct_notice() {
        let mut net = Net::joined(3);
        // n2 hears no SWIM at all: no ping, no gossip of its own suspicion.
        // Only the suspectors' direct notices reach it, and its answers get
        // out. Without the notices it is failed within ~2 s.
        net.deaf_to_swim.push(2);
        let mut suspected = false;
        for _ in 0..800 {
            net.step();
            for at in [0, 1] {
                let s = net.status(at, "n2");
                assert_ne!(s, Some(Status::Failed), "n2 failed at n{at}");
                suspected |= s == Some(Status::Suspect);
            }
        }
        assert!(suspected, "the test must make n2 suspect");
    }

    #[test]
    fn a_member_that_refuted_is_not_told_it_is_down() {
        // foca sends TurnUndead when a suspicion timer fires even after the
        // member refuted; the core drops such timers, so no rejoin follows.
        let mut net = Net::joined(3);
        let generation = net.cores[2].local().generation;
        // Deaf long enough for probes of n2 to fail, then well again.
        net.deaf_to_swim.push(2);
        let mut suspected = false;
        while !suspected {
            net.step();
            suspected = net.status(0, "n2") == Some(Status::Suspect);
            assert!(net.now_ms < 10_000, "n2 never suspected");
        }
        net.deaf_to_swim.clear();
        for _ in 0..500 {
            net.step();
        }
        assert_eq!(net.status(0, "n2"), Some(Status::Alive));
        assert_eq!(
            net.cores[2].local().generation,
            generation,
            "n2 was made to rejoin under a new identity"
        );
    }

    #[test]
    fn a_failed_member_that_is_back_is_merged_by_reconnect() {
        // n2 is cut off until both sides declare each other failed, then the
        // cut heals. Periodic push-pull alone would take 30 s; the reconnect
        // push-pull with a failed member merges within a few seconds.
        let mut net = Net::joined(3);
        net.dead.push(2);
        let apart = |net: &Net| {
            [(0, "n2"), (1, "n2"), (2, "n0"), (2, "n1")]
                .iter()
                .all(|&(i, n)| net.status(i, n) == Some(Status::Failed))
        };
        while !apart(&net) {
            net.step();
            assert!(net.now_ms < 10_000, "the two sides never failed each other");
        }
        net.dead.clear();
        let healed = net.now_ms;
        let one_view = |net: &Net| {
            (0..3).all(|i| {
                ["n0", "n1", "n2"]
                    .iter()
                    .all(|n| net.status(i, n) == Some(Status::Alive))
            })
        };
        while !one_view(&net) {
            net.step();
            assert!(
                net.now_ms - healed < 15_000,
                "not one view 15 s after the heal"
            );
        }
    }

    #[test]
    fn a_node_declared_down_renews_with_the_time_it_was_given_not_a_clock_of_its_own() {
        // foca renews our identity by itself (Identity::renew, no time
        // argument); the generation must still come from the caller's wall
        // clock, which here is virtual and far from the real one.
        let mut net = Net::joined(3);
        net.dead.push(2);
        while net.status(0, "n2") != Some(Status::Failed) {
            net.step();
            assert!(net.now_ms < 10_000, "n2 never failed");
        }
        net.dead.clear();
        let healed = net.now().wall_ms;
        while net.cores[2].local().generation == 1 {
            net.step();
            assert!(net.now_ms < 30_000, "n2 never took a new generation");
        }
        let generation = net.cores[2].local().generation;
        assert!(
            (healed..=net.now().wall_ms).contains(&generation),
            "generation {generation} is not a time the node was given \
             ({healed}..={})",
            net.now().wall_ms
        );
    }

    #[test]
    fn a_replayed_leave_notice_costs_a_live_member_a_rejoin_only() {
        let mut net = Net::joined(3);
        // Someone resends n2's leave notice (as captured) to n0: n2 is left there...
        let old = net.cores[2].local().clone();
        let notice = wire::encode_leave(&old);
        let now = net.now();
        net.cores[0].on_packet(&notice, old.addr, now).unwrap();
        assert_eq!(net.status(0, "n2"), Some(Status::Left));
        // ...until it hears it was declared down and rejoins as a new generation.
        let t0 = net.now_ms;
        while net.status(0, "n2") != Some(Status::Alive) {
            net.step();
            assert!(net.now_ms - t0 < 5_000, "n2 not back at n0 after 5 s");
        }
        eprintln!("replayed leave: n2 back at n0 after {} ms", net.now_ms - t0);
        assert!(net.cores[2].local().generation > old.generation);
        assert_eq!(net.status(1, "n2"), Some(Status::Alive));
    }

    /// A peer's state listing `n` members nobody else knows (all alive).
    fn invented(from: &NodeId, n: usize) -> SyncMsg {
        SyncMsg {
            from: from.clone(),
            entries: (0..n)
                .map(|i| SyncEntry {
                    id: NodeId {
                        name: format!("invented-{i}"),
                        addr: SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 7946)),
                        generation: 1,
                        tags: Tags::new(),
                    },
                    incarnation: 0,
                    state: SyncState::Alive,
                })
                .collect(),
        }
    }

    #[test]
    fn a_full_table_merges_in_chunks_and_only_a_few_new_members_are_gossiped() {
        let mut net = Net::joined(2);
        let peer = net.cores[1].local().clone();
        let now = net.now();
        let core = &mut net.cores[0];
        let backlog_before = core.gossip_backlog();
        let mut merge = core.begin_merge(invented(&peer, MAX_MEMBERS), now).unwrap();
        let mut steps = 0;
        while !core.merge_step(&mut merge, MERGE_CHUNK, now) {
            steps += 1;
            assert_eq!(merge.remaining(), MAX_MEMBERS - steps * MERGE_CHUNK);
        }
        assert_eq!(steps + 1, MAX_MEMBERS.div_ceil(MERGE_CHUNK));
        // Ourselves and the peer were there: two did not fit.
        assert_eq!(core.records().count(), MAX_MEMBERS);
        assert_eq!(core.members_refused(), 2);
        let queued = core.gossip_backlog().saturating_sub(backlog_before);
        assert!(
            queued <= MAX_GOSSIPED_NEW,
            "{queued} invented members queued for gossip"
        );
    }

    #[test]
    fn members_a_peer_says_are_gone_are_kept_as_gone_never_probed_nor_gossiped_on() {
        let mut net = Net::joined(2);
        let peer = net.cores[1].local().clone();
        let mut msg = invented(&peer, 50);
        for e in &mut msg.entries {
            e.state = SyncState::Failed;
        }
        let now = net.now();
        let backlog = net.cores[0].gossip_backlog();
        net.cores[0].apply_remote(msg, now);
        assert_eq!(net.cores[0].count(Status::Failed), 50);
        assert_eq!(net.cores[0].live_members(), 1, "foca probes none of them");
        assert_eq!(
            net.cores[0].gossip_backlog(),
            backlog,
            "nor gossips them on"
        );
        // After the join each is an event (the table's readers refetch).
        let failed = net.cores[0]
            .take_outputs()
            .iter()
            .filter(|o| matches!(o, Output::Event(e) if e.kind == EventKind::MemberFailed))
            .count();
        assert_eq!(failed, 50);
    }

    /// The test network with a 10 s reap, n2 tagged `service=api`.
    fn net_with_a_tagged_n2() -> Net {
        let cfg = CoreConfig {
            reap_after: Duration::from_secs(10),
            ..crate::testing::test_config()
        };
        let ids = (0..3).map(crate::testing::id_of).collect();
        let mut net = Net::of(ids, cfg, 0, crate::testing::WALL0_MS);
        net.join_all_through_first();
        let mut tags = Tags::new();
        tags.insert("service".into(), "api".into());
        let now = net.now();
        net.cores[2].set_tags(tags, now).unwrap();
        while net.cores[0].record("n2").unwrap().id != *net.cores[2].local() {
            net.step();
            assert!(net.now_ms < 5_000, "n2's tags never reached n0");
        }
        net
    }

    /// Adds n3, which joins through n0: its first state is merged by hand
    /// (the events it gave are returned), then it joins as usual.
    fn late_joiner(net: &mut Net) -> (usize, Vec<Output>) {
        let cfg = net.cores[0].cfg.clone();
        let n3 = net.add(crate::testing::id_of(3), cfg);
        let now = net.now();
        let theirs = net.cores[0].sync_state();
        net.cores[n3].apply_remote(theirs, now);
        let first = net.cores[n3].take_outputs();
        let seed = net.cores[0].local().addr;
        net.cores[n3].contact(&[seed], true, now);
        for _ in 0..100 {
            net.step();
        }
        assert_eq!(net.status(n3, "n1"), Some(Status::Alive));
        (n3, first)
    }

    fn events_about(outputs: &[Output], name: &str) -> Vec<EventKind> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Event(e) if e.record.id.name == name => Some(e.kind),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_node_that_joins_after_a_member_left_holds_it_as_left_until_the_reap() {
        let mut net = net_with_a_tagged_n2();
        let gone = net.cores[2].local().clone();
        let now = net.now();
        net.cores[2].begin_leave(now);
        while net.status(0, "n2") != Some(Status::Left) || net.status(1, "n2") != Some(Status::Left)
        {
            net.step();
            assert!(net.now_ms < 10_000, "n2's leave never reached everyone");
        }
        net.dead.push(2);
        // n3 joins 3 s after the leave.
        for _ in 0..300 {
            net.step();
        }
        let (n3, first) = late_joiner(&mut net);
        assert_eq!(
            events_about(&first, "n2"),
            [],
            "a joiner's first state is no event"
        );
        let held = net.cores[n3].record("n2").expect("n3 knows n2").clone();
        assert_eq!(held.status, Status::Left);
        assert_eq!(
            held.id, gone,
            "the same identity, tags included, as n0 holds"
        );
        assert_eq!(net.cores[0].record("n2").unwrap().id, gone);

        // A stale state from a peer that still holds n2 alive does not bring it back.
        let stale = crate::testing::converged(net.cores[1].local(), std::slice::from_ref(&gone));
        let now = net.now();
        net.cores[n3].apply_remote(stale, now);
        for _ in 0..100 {
            net.step();
        }
        assert_eq!(net.status(n3, "n2"), Some(Status::Left));

        // n0 reaps it first (it saw the leave 3 s before n3 learned of it). n3 does not
        // pass what it only learned on: n0 does not take it back from n3's state.
        let learned = net.now_ms - 2_000;
        assert!(
            net.cores[n3]
                .sync_state()
                .entries
                .iter()
                .all(|e| e.id.name != "n2"),
            "n3 passes on a member it only learned was gone"
        );
        while net.status(0, "n2").is_some() {
            net.step();
            assert!(net.now_ms < 30_000, "n2 never reaped at n0");
        }
        assert_eq!(
            net.status(n3, "n2"),
            Some(Status::Left),
            "n3 reaps it later"
        );
        let now = net.now();
        let state = net.cores[n3].sync_state();
        net.cores[0].apply_remote(state, now);
        assert_eq!(net.status(0, "n2"), None, "n0 took back what it reaped");
        // Reaped at n3 too, within the reap time of learning it.
        while net.status(n3, "n2").is_some() {
            net.step();
            assert!(
                net.now_ms - learned < 10_500,
                "n2 not reaped at n3 10 s after it learned it"
            );
        }
    }

    #[test]
    fn a_node_that_joins_after_a_member_failed_holds_it_as_failed() {
        let mut net = net_with_a_tagged_n2();
        let gone = net.cores[2].local().clone();
        net.dead.push(2);
        while net.status(0, "n2") != Some(Status::Failed) {
            net.step();
            assert!(net.now_ms < 10_000, "n2 never failed at n0");
        }
        let (n3, first) = late_joiner(&mut net);
        assert_eq!(events_about(&first, "n2"), []);
        let held = net.cores[n3].record("n2").expect("n3 knows n2").clone();
        assert_eq!((held.status, &held.id), (Status::Failed, &gone));
        // foca holds it as down: a stale "alive" of that identity is refused.
        let stale = crate::testing::converged(net.cores[1].local(), std::slice::from_ref(&gone));
        let now = net.now();
        net.cores[n3].apply_remote(stale, now);
        net.step();
        assert_eq!(net.status(n3, "n2"), Some(Status::Failed));
        assert_eq!(net.cores[n3].live_members(), 2, "n0 and n1, not n2");
    }

    #[test]
    fn a_member_that_rejoins_under_its_name_wins_over_what_a_late_joiner_learned() {
        let mut net = net_with_a_tagged_n2();
        let now = net.now();
        net.cores[2].begin_leave(now);
        while net.status(0, "n2") != Some(Status::Left) {
            net.step();
            assert!(net.now_ms < 10_000, "n2's leave never reached n0");
        }
        net.dead.push(2);
        let (n3, _) = late_joiner(&mut net);
        assert_eq!(net.status(n3, "n2"), Some(Status::Left));
        // n2 starts again: same name and address, a newer generation.
        let cfg = net.cores[0].cfg.clone();
        let now = net.now();
        let again = NodeId {
            generation: now.wall_ms,
            ..crate::testing::id_of(2)
        };
        net.cores[2] = Core::new(again.clone(), cfg, StdRng::seed_from_u64(22), now);
        net.dead.clear();
        let seed = net.cores[0].local().addr;
        net.cores[2].contact(&[seed], true, now);
        let t0 = net.now_ms;
        for at in [0, 1, n3] {
            while net.status(at, "n2") != Some(Status::Alive) {
                net.step();
                assert!(net.now_ms - t0 < 5_000, "n2 not back at n{at} after 5 s");
            }
            assert_eq!(net.cores[at].record("n2").unwrap().id, again, "at n{at}");
        }
    }

    /// A leave notice about `who` with `generation`, as a spoofer sends it.
    fn forged_leave(who: &NodeId, generation: u64) -> Vec<u8> {
        wire::encode_leave(&NodeId {
            generation,
            ..who.clone()
        })
    }

    #[test]
    fn a_forged_leave_about_a_live_node_is_refuted() {
        let mut net = Net::joined(3);
        let n2 = net.cores[2].local().clone();
        let attacker: SocketAddr = "10.9.9.9:7946".parse().unwrap();
        // Plausible (a minute ahead of the clock), from another address.
        let forged = n2.generation.max(net.now().wall_ms) + 60_000;
        let now = net.now();
        net.cores[0]
            .on_packet(&forged_leave(&n2, forged), attacker, now)
            .unwrap();
        assert_eq!(net.status(0, "n2"), Some(Status::Left));
        let t0 = net.now_ms;
        while net.status(0, "n2") != Some(Status::Alive) {
            net.step();
            assert!(net.now_ms - t0 < 500, "n2 not back at n0 after 500 ms");
        }
        eprintln!("forged leave: n2 back at n0 after {} ms", net.now_ms - t0);
        assert!(net.cores[2].local().generation > forged);
        for _ in 0..300 {
            net.step();
        }
        for i in 0..3 {
            assert_eq!(net.status(i, "n2"), Some(Status::Alive), "at n{i}");
        }
    }

    #[test]
    fn a_leave_with_a_generation_far_ahead_of_the_clock_is_refused() {
        let mut net = Net::joined(3);
        let n2 = net.cores[2].local().clone();
        let attacker: SocketAddr = "10.9.9.9:7946".parse().unwrap();
        let now = net.now();
        let too_far = now.wall_ms + crate::identity::MAX_GENERATION_AHEAD_MS + 1;
        for generation in [u64::MAX, too_far] {
            let err = net.cores[0]
                .on_packet(&forged_leave(&n2, generation), attacker, now)
                .unwrap_err();
            assert!(err.to_string().contains("ahead of"), "{err}");
        }
        // Nor does one spread by push-pull take hold.
        let mut sync = net.cores[1].sync_state();
        for e in &mut sync.entries {
            if e.id.name == "n2" {
                e.id.generation = u64::MAX;
                e.state = SyncState::Left;
            }
        }
        net.cores[0].apply_remote(sync, now);
        net.step();
        assert_eq!(net.status(0, "n2"), Some(Status::Alive));
        assert_eq!(
            net.cores[0].record("n2").unwrap().id.generation,
            n2.generation
        );
    }

    #[test]
    fn a_forged_leave_spread_by_push_pull_is_refuted_by_its_subject() {
        let mut net = Net::joined(3);
        let n2 = net.cores[2].local().clone();
        let forged = n2.generation.max(net.now().wall_ms) + 60_000;
        let now = net.now();
        // n0 believes it (e.g. from a spoofed packet with no receipt to n2).
        let out = net.cores[0].table.leave_notice(
            &NodeId {
                generation: forged,
                ..n2.clone()
            },
            now.wall_ms,
        );
        net.cores[0].apply_outcome(out, now);
        assert_eq!(net.status(0, "n2"), Some(Status::Left));
        // n2 hears it in a push-pull with n0 and takes a newer generation.
        let theirs = net.cores[0].sync_state();
        net.cores[2].apply_remote(theirs, now);
        assert!(net.cores[2].local().generation > forged);
        let t0 = net.now_ms;
        while net.status(0, "n2") != Some(Status::Alive) {
            net.step();
            assert!(net.now_ms - t0 < 2_000, "n2 not back at n0 after 2 s");
        }
    }

    #[test]
    fn two_live_nodes_with_one_name_settle_on_the_newer_one() {
        let mut net = Net::joined(3);
        // A second live "n1" starts at another address, newer generation.
        let twin = NodeId {
            name: "n1".into(),
            addr: "10.0.0.9:7946".parse().unwrap(),
            generation: net.cores[1].local().generation + 10,
            tags: Tags::new(),
        };
        let cfg = net.cores[0].cfg.clone();
        let now = net.now();
        net.cores
            .push(Core::new(twin.clone(), cfg, StdRng::seed_from_u64(9), now));
        let seed = net.cores[0].local().addr;
        net.cores[3].contact(&[seed], true, now);
        // A minute of virtual time: the name settles once, then never moves.
        let mut moves = 0;
        let mut last = net.cores[0].record("n1").map(|r| r.id.addr);
        for _ in 0..6_000 {
            net.step();
            let addr = net.cores[0].record("n1").map(|r| r.id.addr);
            if addr != last {
                moves += 1;
                last = addr;
            }
        }
        assert!(net.cores[1].name_taken, "the older n1 must stop");
        assert!(!net.cores[3].name_taken, "the newer n1 keeps the name");
        assert!(moves <= 2, "the name moved {moves} times in a minute");
        for at in [0, 2] {
            let r = net.cores[at].record("n1").unwrap();
            assert_eq!(
                (r.id.addr, r.status),
                (twin.addr, Status::Alive),
                "at n{at}"
            );
        }
        assert!(net.cores[1]
            .take_outputs()
            .iter()
            .all(|o| !matches!(o, Output::Send { .. })));
    }

    #[test]
    fn swim_messages_from_a_generation_far_ahead_of_the_clock_are_refused() {
        let mut net = Net::joined(2);
        let now = net.now();
        let evil = NodeId {
            name: "evil".into(),
            addr: "10.0.0.66:7946".parse().unwrap(),
            generation: u64::MAX,
            tags: Tags::new(),
        };
        let cfg = net.cores[0].cfg.clone();
        let mut intruder = Core::new(evil, cfg, StdRng::seed_from_u64(7), now);
        let seed = net.cores[0].local().addr;
        intruder.contact(&[seed], true, now);
        let mut refused = 0;
        for out in intruder.take_outputs() {
            if let Output::Send { to, packet } = out {
                if to == seed {
                    let err =
                        net.cores[0].on_packet(&packet, "10.0.0.66:7946".parse().unwrap(), now);
                    assert!(err.unwrap_err().to_string().contains("ahead of"));
                    refused += 1;
                }
            }
        }
        assert!(refused > 0, "the intruder sent nothing");
        net.step();
        assert!(net.cores[0].record("evil").is_none());
    }
}

//! The agent's runtime: one task that owns foca and the member table and
//! drives them from the UDP socket, a single timer heap, operator commands
//! and push-pull results. Everything slow (DNS, TCP exchanges, handlers) runs
//! in other tasks and reports back through the command channel, so the gossip
//! loop never waits on them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, Member, OwnedNotification, State, Timer};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::addr;
use crate::events::{EventLog, MemberView};
use crate::identity::{now_millis, NodeId};
use crate::membership::{FocaState, Outcome, Status, Table};
use crate::profile::{foca_config, size_bucket, Profile, Timing};
use crate::pushpull;
use crate::stats::Stats;
use crate::tags::{self, Tags};
use crate::wire::{self, Packet, ShoalCodec, SyncEntry, SyncMsg, SyncState};

type Core = Foca<NodeId, ShoalCodec, StdRng, foca::NoCustomBroadcast>;

/// Settings derived from flags; see `cli::AgentArgs`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: String,
    pub bind: SocketAddr,
    /// Port 0 means "the bound port".
    pub advertise: SocketAddr,
    pub join: Vec<(String, u16)>,
    pub retry_max: Duration,
    pub tags: Tags,
    pub tags_file: Option<std::path::PathBuf>,
    pub profile: Profile,
    pub reap_after: Duration,
    /// Longest wait for leave receipts on shutdown.
    pub leave_timeout: Duration,
}

/// What the API and CLI read without going through the loop.
pub struct Shared {
    pub local: NodeId,
    pub members: Vec<MemberView>,
    pub counts: HashMap<&'static str, usize>,
    pub events: EventLog,
    pub joined: bool,
    pub profile: Profile,
}

pub enum Command {
    Join {
        targets: Vec<(String, u16)>,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    SetTags {
        set: Tags,
        delete: Vec<String>,
        reply: oneshot::Sender<Result<Tags, String>>,
    },
    ForceLeave {
        name: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Graceful leave; the reply comes when every member acknowledged it or
    /// the leave timeout passed. The loop then stops.
    Leave { reply: oneshot::Sender<()> },
    /// An inbound push-pull: apply theirs, answer with ours.
    PushPullIn {
        remote: SyncMsg,
        reply: oneshot::Sender<SyncMsg>,
    },
    /// An outbound push-pull finished.
    PushPullOut { remote: SyncMsg },
    /// Join targets resolved to addresses.
    Resolved {
        addrs: Vec<SocketAddr>,
        explicit: bool,
    },
}

/// A cheap, clonable handle to a running agent.
#[derive(Clone)]
pub struct Handle {
    pub commands: mpsc::Sender<Command>,
    pub shared: Arc<Mutex<Shared>>,
    pub stats: Arc<Stats>,
    pub gossip_addr: SocketAddr,
}

impl Handle {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| "the agent is shutting down".to_string())?;
        rx.await
            .map_err(|_| "the agent is shutting down".to_string())
    }

    pub async fn join(&self, targets: Vec<(String, u16)>) -> Result<usize, String> {
        self.call(|reply| Command::Join { targets, reply }).await?
    }

    pub async fn set_tags(&self, set: Tags, delete: Vec<String>) -> Result<Tags, String> {
        self.call(|reply| Command::SetTags { set, delete, reply })
            .await?
    }

    pub async fn force_leave(&self, name: String) -> Result<(), String> {
        self.call(|reply| Command::ForceLeave { name, reply })
            .await?
    }

    pub async fn leave(&self) -> Result<(), String> {
        self.call(|reply| Command::Leave { reply }).await
    }

    pub fn local(&self) -> NodeId {
        self.lock().local.clone()
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Binds the gossip sockets (UDP and TCP on the same port) and starts the loop.
/// The returned join handle ends after a graceful leave.
pub async fn start(cfg: AgentConfig) -> std::io::Result<(Handle, tokio::task::JoinHandle<()>)> {
    let udp = UdpSocket::bind(cfg.bind)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind UDP {}: {e}", cfg.bind)))?;
    let bound = udp.local_addr()?;
    let tcp = TcpListener::bind(bound)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind TCP {bound}: {e}")))?;
    let mut advertise = cfg.advertise;
    if advertise.port() == 0 {
        advertise.set_port(bound.port());
    }
    let local = NodeId::new(cfg.node.clone(), advertise, cfg.tags.clone());
    let timing = cfg.profile.timing();
    let now = now_millis();
    let (table, first) = Table::new(&local, cfg.reap_after.as_millis() as u64, now);
    let shared = Arc::new(Mutex::new(Shared {
        local: local.clone(),
        members: Vec::new(),
        counts: HashMap::new(),
        events: EventLog::new(),
        joined: false,
        profile: cfg.profile,
    }));
    let stats = Arc::new(Stats::default());
    let (tx, rx) = mpsc::channel(1024);
    let handle = Handle {
        commands: tx.clone(),
        shared: shared.clone(),
        stats: stats.clone(),
        gossip_addr: bound,
    };
    info!(
        node = %local.name,
        bind = %bound,
        advertise = %advertise,
        profile = ?cfg.profile,
        "gossip listening on UDP and TCP"
    );
    tokio::spawn(accept_push_pull(tcp, tx.clone(), stats.clone()));

    let foca = Foca::new(
        local.clone(),
        foca_config(&timing, size_bucket(1)),
        StdRng::from_rng(&mut rand::rng()),
        ShoalCodec,
    );
    let mut node = Node {
        foca,
        rt: AccumulatingRuntime::new(),
        timers: BinaryHeap::new(),
        timer_seq: 0,
        table,
        udp: Arc::new(udp),
        shared,
        stats,
        commands: tx,
        local,
        timing,
        bucket: size_bucket(1),
        join_backoff: timing.join_backoff,
        next_join: Instant::now(),
        join_attempts: 0,
        resolving: false,
        next_push_pull: Instant::now() + timing.push_pull_interval,
        push_pull_round: 0,
        leaving: None,
        conflicts_logged: HashMap::new(),
        cfg,
    };
    node.apply_outcome(first);
    let task = tokio::spawn(async move { node.run(rx).await });
    Ok((handle, task))
}

struct Leaving {
    pending: HashSet<String>,
    deadline: Instant,
    next_resend: Instant,
    reply: Option<oneshot::Sender<()>>,
}

struct Node {
    foca: Core,
    rt: AccumulatingRuntime<NodeId>,
    /// The one timer heap: (due, insertion order, timer).
    timers: BinaryHeap<Reverse<(Instant, u64, TimerKey)>>,
    timer_seq: u64,
    table: Table,
    udp: Arc<UdpSocket>,
    shared: Arc<Mutex<Shared>>,
    stats: Arc<Stats>,
    commands: mpsc::Sender<Command>,
    local: NodeId,
    timing: Timing,
    bucket: u32,
    join_backoff: Duration,
    next_join: Instant,
    join_attempts: u64,
    resolving: bool,
    next_push_pull: Instant,
    push_pull_round: u64,
    leaving: Option<Leaving>,
    conflicts_logged: HashMap<String, Instant>,
    cfg: AgentConfig,
}

/// foca's `Timer` with the ordering the heap needs (due time first, then FIFO).
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

impl Node {
    async fn run(&mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; 65_536];
        let mut tick = tokio::time::interval(self.timing.reconcile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let udp = self.udp.clone();
        loop {
            let next_timer = self
                .timers
                .peek()
                .map(|Reverse((due, _, _))| *due)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                received = udp.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.on_packet(&buf[..len], from),
                    Err(e) => debug!(error = %e, "UDP receive error"),
                },
                _ = tokio::time::sleep_until(next_timer) => self.fire_timers(),
                command = commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => return,
                },
                _ = tick.tick() => self.on_tick(),
            }
            self.flush();
            if let Some(leaving) = &self.leaving {
                if leaving.reply.is_none() {
                    // Leave finished and answered: the loop is done.
                    return;
                }
            }
        }
    }

    fn on_packet(&mut self, data: &[u8], from: SocketAddr) {
        Stats::add(&self.stats.packets_in, 1);
        Stats::add(&self.stats.bytes_in, data.len() as u64);
        match wire::decode_packet(data) {
            Ok(Packet::Foca(body)) => {
                if self.leaving.is_some() {
                    return;
                }
                if let Err(e) = self.foca.handle_data(body, &mut self.rt) {
                    Stats::add(&self.stats.dropped_in, 1);
                    debug!(%from, error = %e, "dropped gossip packet");
                }
            }
            Ok(Packet::Leave(id)) => {
                debug!(node = %id.name, %from, "leave notice");
                let out = self.table.leave_notice(&id, now_millis());
                self.apply_outcome(out);
                self.send_raw(
                    from,
                    &wire::encode_leave_ack(&self.local.name, id.generation),
                );
            }
            Ok(Packet::LeaveAck { name, generation }) => {
                if let Some(leaving) = &mut self.leaving {
                    if generation == self.local.generation {
                        leaving.pending.remove(&name);
                    }
                }
            }
            Err(e) => {
                Stats::add(&self.stats.dropped_in, 1);
                debug!(%from, error = %e, "dropped packet");
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((due, _, _))) = self.timers.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, _, TimerKey(timer)))) = self.timers.pop() else {
                break;
            };
            if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                debug!(error = %e, "timer handling error");
            }
        }
    }

    fn on_tick(&mut self) {
        self.reconcile();
        let now = Instant::now();
        if self.leaving.is_some() {
            self.progress_leave(now);
            return;
        }
        let out = self.table.reap(now_millis());
        self.apply_outcome(out);
        if self.foca.num_members() == 0
            && !self.cfg.join.is_empty()
            && !self.resolving
            && now >= self.next_join
        {
            self.start_join_round();
            self.next_join = now + self.join_backoff;
            self.join_backoff = (self.join_backoff * 2).min(self.cfg.retry_max);
        }
        if now >= self.next_push_pull {
            self.next_push_pull = now + self.timing.push_pull_interval;
            self.periodic_push_pull();
        }
    }

    /// Resolves the join targets off the loop; the result comes back as `Resolved`.
    fn start_join_round(&mut self) {
        self.resolving = true;
        self.join_attempts += 1;
        let attempt = self.join_attempts;
        let targets = self.cfg.join.clone();
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let addrs = addr::resolve_all(&targets).await;
            let names: Vec<String> = targets.iter().map(|(h, p)| format!("{h}:{p}")).collect();
            info!(attempt, targets = ?names, resolved = ?addrs, "join attempt");
            let _ = commands
                .send(Command::Resolved {
                    addrs,
                    explicit: false,
                })
                .await;
        });
    }

    fn on_resolved(&mut self, addrs: Vec<SocketAddr>, explicit: bool) -> usize {
        if !explicit {
            self.resolving = false;
        }
        let mut contacted = 0;
        for addr in addrs {
            if addr == self.local.addr || self.udp.local_addr().is_ok_and(|b| b == addr) {
                continue;
            }
            contacted += 1;
            if let Err(e) = self.foca.announce(NodeId::seed(addr), &mut self.rt) {
                debug!(%addr, error = %e, "announce failed");
            }
            self.push_pull_with(addr);
        }
        contacted
    }

    fn periodic_push_pull(&mut self) {
        self.push_pull_round += 1;
        // Every other round, talk to a seed that is not a live member: this is
        // what merges two halves of a healed partition.
        if self.push_pull_round.is_multiple_of(2) && !self.cfg.join.is_empty() {
            let live: HashSet<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
            let targets = self.cfg.join.clone();
            let commands = self.commands.clone();
            let me = self.local.addr;
            tokio::spawn(async move {
                let mut addrs = addr::resolve_all(&targets).await;
                addrs.retain(|a| *a != me && !live.contains(a));
                if let Some(a) = addrs.get(rand::random_range(0..addrs.len().max(1))) {
                    let _ = commands
                        .send(Command::Resolved {
                            addrs: vec![*a],
                            explicit: true,
                        })
                        .await;
                }
            });
            return;
        }
        let members: Vec<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        if !members.is_empty() {
            let target = members[rand::random_range(0..members.len())];
            self.push_pull_with(target);
        }
    }

    fn our_state(&self) -> SyncMsg {
        SyncMsg {
            from: self.local.clone(),
            entries: self.table.sync_entries(),
        }
    }

    fn push_pull_with(&self, addr: SocketAddr) {
        let ours = self.our_state();
        let commands = self.commands.clone();
        let stats = self.stats.clone();
        tokio::spawn(async move {
            match pushpull::exchange(addr, ours).await {
                Ok(remote) => {
                    Stats::add(&stats.push_pulls, 1);
                    let _ = commands.send(Command::PushPullOut { remote }).await;
                }
                Err(e) => {
                    Stats::add(&stats.push_pull_failures, 1);
                    debug!(%addr, error = %e, "push-pull failed");
                }
            }
        });
    }

    /// Feeds a peer's full state to foca and the table.
    fn apply_remote(&mut self, remote: SyncMsg) {
        if remote.from.name == self.local.name && remote.from.addr == self.local.addr {
            return;
        }
        let mut left = Vec::new();
        let mut updates = vec![Member::alive(remote.from.clone())];
        for SyncEntry {
            id,
            incarnation,
            state,
        } in remote.entries
        {
            if id.name == self.local.name {
                continue;
            }
            let state = match state {
                SyncState::Alive => State::Alive,
                SyncState::Suspect => State::Suspect,
                SyncState::Failed => State::Down,
                SyncState::Left => {
                    left.push(id.clone());
                    State::Down
                }
            };
            updates.push(Member::new(id, incarnation, state));
        }
        if let Err(e) = self
            .foca
            .apply_many(updates.into_iter(), true, &mut self.rt)
        {
            debug!(error = %e, "applying push-pull state failed");
        }
        let now = now_millis();
        for id in left {
            let known_active = self
                .table
                .get(&id.name)
                .is_some_and(|r| r.id.generation <= id.generation);
            if known_active {
                let out = self.table.leave_notice(&id, now);
                self.apply_outcome(out);
            }
        }
        self.reconcile();
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Join { targets, reply } => {
                // Resolve inline in a task, then contact; answer with the count.
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    let addrs = addr::resolve_all(&targets).await;
                    if addrs.is_empty() {
                        let _ = reply.send(Err(format!(
                            "none of {:?} resolved to an address",
                            targets
                                .iter()
                                .map(|(h, p)| format!("{h}:{p}"))
                                .collect::<Vec<_>>()
                        )));
                        return;
                    }
                    let n = addrs.len();
                    let _ = commands
                        .send(Command::Resolved {
                            addrs,
                            explicit: true,
                        })
                        .await;
                    let _ = reply.send(Ok(n));
                });
            }
            Command::Resolved { addrs, explicit } => {
                self.on_resolved(addrs, explicit);
            }
            Command::SetTags { set, delete, reply } => {
                let _ = reply.send(self.set_tags(set, delete));
            }
            Command::ForceLeave { name, reply } => {
                let result = self.table.force_leave(&name, now_millis()).map(|out| {
                    info!(node = %name, "force-leave: marked left");
                    self.apply_outcome(out);
                });
                let _ = reply.send(result);
            }
            Command::Leave { reply } => self.begin_leave(reply),
            Command::PushPullIn { remote, reply } => {
                let _ = reply.send(self.our_state());
                self.apply_remote(remote);
            }
            Command::PushPullOut { remote } => self.apply_remote(remote),
        }
    }

    fn set_tags(&mut self, set: Tags, delete: Vec<String>) -> Result<Tags, String> {
        let mut next = self.local.tags.clone();
        for k in &delete {
            next.remove(k);
        }
        next.extend(set);
        tags::validate(&next).map_err(|e| e.to_string())?;
        if next == self.local.tags {
            return Ok(next);
        }
        if let Some(path) = &self.cfg.tags_file {
            tags::save_file(path, &next)
                .map_err(|e| format!("cannot write tags file {}: {e}", path.display()))?;
        }
        let new_id = self.local.with_tags(next.clone());
        self.foca
            .change_identity(new_id.clone(), &mut self.rt)
            .map_err(|e| format!("cannot change identity: {e}"))?;
        info!(tags = ?next, "tags changed");
        self.set_local(new_id);
        Ok(next)
    }

    fn set_local(&mut self, id: NodeId) {
        self.local = id.clone();
        let out = self.table.set_local(&id, now_millis());
        self.lock().local = id;
        self.apply_outcome(out);
    }

    fn begin_leave(&mut self, reply: oneshot::Sender<()>) {
        if self.leaving.is_some() {
            // Already leaving: answer at once, the first caller gets the real wait.
            let _ = reply.send(());
            return;
        }
        let pending: HashSet<String> = self
            .table
            .records()
            .filter(|r| r.status.is_active() && r.id.name != self.local.name)
            .map(|r| r.id.name.clone())
            .collect();
        info!(members = pending.len(), "leaving the cluster");
        let out = self.table.set_local_left(now_millis());
        self.apply_outcome(out);
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            warn!(error = %e, "foca leave failed");
        }
        let now = Instant::now();
        self.leaving = Some(Leaving {
            pending,
            deadline: now + self.cfg.leave_timeout,
            next_resend: now,
            reply: Some(reply),
        });
        self.progress_leave(now);
    }

    /// Sends leave notices to members that have not acknowledged yet; answers
    /// the leave once all did or the deadline passed.
    fn progress_leave(&mut self, now: Instant) {
        let Some(leaving) = &mut self.leaving else {
            return;
        };
        if leaving.pending.is_empty() || now >= leaving.deadline {
            if !leaving.pending.is_empty() {
                warn!(unacknowledged = ?leaving.pending, "leave timeout: some members did not confirm");
            } else {
                info!("leave acknowledged by every member");
            }
            if let Some(reply) = leaving.reply.take() {
                let _ = reply.send(());
            }
            return;
        }
        if now >= leaving.next_resend {
            leaving.next_resend = now + Duration::from_millis(200);
            let notice = wire::encode_leave(&self.local);
            let targets: Vec<SocketAddr> = leaving
                .pending
                .iter()
                .filter_map(|n| self.table.get(n).map(|r| r.id.addr))
                .collect();
            for to in targets {
                self.send_raw(to, &notice);
            }
        }
    }

    /// Brings the table in line with foca's full state.
    fn reconcile(&mut self) {
        let now = now_millis();
        let mut out = Outcome::default();
        let snapshot: Vec<(NodeId, State, u16)> = self
            .foca
            .iter_membership_state()
            .map(|m| (m.id().clone(), m.state(), m.incarnation()))
            .collect();
        for (id, state, inc) in &snapshot {
            out.merge(self.table.observe(id, FocaState::from(*state), *inc, now));
        }
        self.apply_outcome(out);
        let bucket = size_bucket(self.foca.num_members() + 1);
        if bucket != self.bucket {
            self.bucket = bucket;
            if let Err(e) = self.foca.set_config(foca_config(&self.timing, bucket)) {
                warn!(error = %e, "cannot rescale foca config");
            }
        }
    }

    fn apply_outcome(&mut self, out: Outcome) {
        if !out.declare_down.is_empty() {
            let downs = out.declare_down.into_iter().map(Member::down);
            if let Err(e) = self.foca.apply_many(downs, true, &mut self.rt) {
                debug!(error = %e, "declaring stale identities down failed");
            }
        }
        for c in out.conflicts {
            let now = Instant::now();
            let recent = self
                .conflicts_logged
                .get(&c)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(30));
            if !recent {
                error!("{c}");
                self.conflicts_logged.insert(c, now);
            }
        }
        let now = now_millis();
        let changed = !out.events.is_empty();
        let mut shared = self.lock();
        for event in &out.events {
            let r = &event.record;
            info!(
                event = event.kind.as_str(),
                node = %r.id.name,
                addr = %r.id.addr,
                status = r.status.as_str(),
                "member event"
            );
            shared.events.push(event, now);
        }
        if changed || shared.joined != (self.foca.num_members() > 0) {
            shared.members = self.table.records().map(MemberView::from).collect();
            let mut counts = HashMap::new();
            for s in [Status::Alive, Status::Suspect, Status::Failed, Status::Left] {
                counts.insert(s.as_str(), self.table.count(s));
            }
            shared.counts = counts;
            let joined = self.foca.num_members() > 0;
            if joined && !shared.joined {
                info!(members = self.foca.num_members(), "joined the cluster");
            } else if !joined && shared.joined && self.leaving.is_none() {
                warn!("no live members left; retrying the join targets");
            }
            shared.joined = joined;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drains what foca asked for: packets, timers, notifications.
    fn flush(&mut self) {
        while let Some((to, data)) = self.rt.to_send() {
            let packet = wire::encode_foca(&data);
            self.send_raw(to.addr, &packet);
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.timer_seq += 1;
            self.timers
                .push(Reverse((now + after, self.timer_seq, TimerKey(timer))));
        }
        let mut dirty = false;
        while let Some(n) = self.rt.to_notify() {
            match n {
                OwnedNotification::Rejoin(id) => {
                    warn!(
                        generation = id.generation,
                        "the cluster declared this node down; rejoined with a new generation"
                    );
                    self.set_local(id);
                }
                OwnedNotification::Defunct if self.leaving.is_none() => {
                    warn!("this node is considered down by the cluster");
                }
                OwnedNotification::Idle if self.leaving.is_none() => {
                    // Back to joining: reset the backoff so it is quick.
                    self.join_backoff = self.timing.join_backoff;
                    self.next_join = Instant::now();
                }
                _ => {}
            }
            dirty = true;
        }
        if dirty {
            self.reconcile();
            // Reconcile may have queued packets (declare_down gossip).
            while let Some((to, data)) = self.rt.to_send() {
                let packet = wire::encode_foca(&data);
                self.send_raw(to.addr, &packet);
            }
        }
    }

    fn send_raw(&self, to: SocketAddr, packet: &[u8]) {
        match self.udp.try_send_to(packet, to) {
            Ok(n) => {
                Stats::add(&self.stats.packets_out, 1);
                Stats::add(&self.stats.bytes_out, n as u64);
            }
            Err(e) => {
                Stats::add(&self.stats.dropped_out, 1);
                debug!(%to, error = %e, "send failed");
            }
        }
    }
}

/// Serves inbound push-pull exchanges; each connection in its own task.
async fn accept_push_pull(
    listener: TcpListener,
    commands: mpsc::Sender<Command>,
    stats: Arc<Stats>,
) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let commands = commands.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let run = async {
                let remote = pushpull::read_frame(&mut stream).await?;
                let (tx, rx) = oneshot::channel();
                commands
                    .send(Command::PushPullIn { remote, reply: tx })
                    .await
                    .map_err(|_| "agent stopped".to_string())?;
                let ours = rx.await.map_err(|_| "agent stopped".to_string())?;
                pushpull::write_frame(&mut stream, &ours).await
            };
            match tokio::time::timeout(pushpull::IO_TIMEOUT, run).await {
                Ok(Ok(())) => Stats::add(&stats.push_pulls, 1),
                Ok(Err(e)) => {
                    Stats::add(&stats.push_pull_failures, 1);
                    Stats::add(&stats.dropped_in, 1);
                    debug!(%peer, error = %e, "inbound push-pull refused");
                }
                Err(_) => {
                    Stats::add(&stats.push_pull_failures, 1);
                    debug!(%peer, "inbound push-pull timed out");
                }
            }
        });
    }
}

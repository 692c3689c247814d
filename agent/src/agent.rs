//! The agent's runtime: one task that owns the sans-I/O [`Core`] (foca and
//! the member table) and drives it from the UDP socket, the core's single
//! timer heap, operator commands and push-pull results. Everything slow (DNS,
//! TCP exchanges, handlers) runs in other tasks and reports back through the
//! command channel, so the gossip loop never waits on them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::addr;
use crate::command_error::{CommandError, ShuttingDown, TagsError};
use crate::core::{Core, CoreConfig, Merge, Now, Output, MERGE_CHUNK};
use crate::events::{EventLog, MemberView};
use crate::freshness::{NonceGuard, Refusal};
use crate::identity::{now_millis, NodeId};
use crate::join::{self, JoinReport};
use crate::keyring::{Key, Keyring};
use crate::limits::{ConnLimiter, WarnLimiter};
use crate::loglist;
use crate::membership::{ForceLeaveError, Status};
use crate::profile::Profile;
use crate::pushpull::{self, FrameError, SharedKeyring};
use crate::stats::Stats;
use crate::tags::{self, Tags};
use crate::wire::{self, DecodeError, KeyOp, KeyReply, KeyRequest, SyncMsg, TcpMsg};

/// Inbound TCP connections on the gossip port open at once, in all and per
/// source address (so one source cannot take every slot).
pub const MAX_TCP_CONNS: usize = 64;
pub const MAX_TCP_CONNS_PER_SOURCE: usize = 8;
/// Peer states waiting to be merged by the loop; a push-pull beyond it is
/// answered but not merged (counted in `dropped_busy`).
pub const MAX_PENDING_MERGES: usize = 4;
/// One "wrong key?" warning per source this often (UDP and TCP).
const AUTH_WARN_EVERY: Duration = Duration::from_secs(30);
/// Sources remembered for that, and warnings per period in all.
const AUTH_WARN_SOURCES: usize = 64;

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
    /// Gossip encryption; None = clear text.
    pub keyring: Option<Keyring>,
    /// Where the keyring persists across restarts and rotations.
    pub keyring_file: Option<std::path::PathBuf>,
    /// Longest wait for a first push-pull with a peer before the table is
    /// called synced anyway (a true one-node cluster).
    pub sync_timeout: Duration,
}

/// What the API and CLI read without going through the loop.
pub struct Shared {
    pub local: NodeId,
    pub members: Vec<MemberView>,
    pub counts: HashMap<&'static str, usize>,
    pub events: EventLog,
    pub joined: bool,
    pub profile: Profile,
    /// Identifies this run of the agent (random per start), so a client that
    /// reconnects can tell a restarted agent, whose event index began again,
    /// from the one it followed.
    pub run: String,
    /// False until the table came from the cluster: the first push-pull with
    /// a peer completed, or [`AgentConfig::sync_timeout`] passed. A restarted
    /// agent's table is nearly empty before that; clients must not act on it.
    pub synced: bool,
}

pub enum Command {
    /// An explicit join: answered once every address's push-pull is done.
    Join {
        targets: Vec<(String, u16)>,
        reply: oneshot::Sender<Result<JoinReport, String>>,
    },
    SetTags {
        set: Tags,
        delete: Vec<String>,
        reply: oneshot::Sender<Result<Tags, TagsError>>,
    },
    ForceLeave {
        name: String,
        reply: oneshot::Sender<Result<(), ForceLeaveError>>,
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
    /// A cluster-wide keyring operation (`shoal keys`).
    KeyOp {
        op: KeyOp,
        reply: oneshot::Sender<Result<KeySummary, String>>,
    },
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
    /// Turns true once, when the table is synced (see [`Shared::synced`]).
    pub synced: tokio::sync::watch::Receiver<bool>,
    pub stats: Arc<Stats>,
    pub gossip_addr: SocketAddr,
}

impl Handle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ShuttingDown> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| ShuttingDown)?;
        rx.await.map_err(|_| ShuttingDown)
    }

    pub async fn join(&self, targets: Vec<(String, u16)>) -> Result<JoinReport, String> {
        self.call(|reply| Command::Join { targets, reply })
            .await
            .map_err(|e| e.to_string())?
    }

    pub async fn set_tags(
        &self,
        set: Tags,
        delete: Vec<String>,
    ) -> Result<Tags, CommandError<TagsError>> {
        self.call(|reply| Command::SetTags { set, delete, reply })
            .await?
            .map_err(CommandError::Refused)
    }

    pub async fn force_leave(&self, name: String) -> Result<(), CommandError<ForceLeaveError>> {
        self.call(|reply| Command::ForceLeave { name, reply })
            .await?
            .map_err(CommandError::Refused)
    }

    pub async fn leave(&self) -> Result<(), String> {
        self.call(|reply| Command::Leave { reply })
            .await
            .map_err(|e| e.to_string())
    }

    /// Applies `op` here and on every live member; per-node results.
    pub async fn key_op(&self, op: KeyOp) -> Result<KeySummary, String> {
        self.call(|reply| Command::KeyOp { op, reply })
            .await
            .map_err(|e| e.to_string())?
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
    let local = NodeId::new(cfg.node.clone(), advertise, cfg.tags.clone(), now_millis());
    let shared = Arc::new(Mutex::new(Shared {
        local: local.clone(),
        members: Vec::new(),
        counts: HashMap::new(),
        events: EventLog::new(),
        joined: false,
        profile: cfg.profile,
        run: format!("{:016x}", rand::random::<u64>()),
        synced: false,
    }));
    let stats = Arc::new(Stats::default());
    let (tx, rx) = mpsc::channel(1024);
    let (synced_tx, synced_rx) = tokio::sync::watch::channel(false);
    let handle = Handle {
        commands: tx.clone(),
        shared: shared.clone(),
        synced: synced_rx,
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
    let keys = Arc::new(KeyCtx {
        ring: Arc::new(RwLock::new(cfg.keyring.clone())),
        file: cfg.keyring_file.clone(),
        node: local.name.clone(),
        op_lock: tokio::sync::Mutex::new(()),
        fresh: Mutex::new(NonceGuard::default()),
    });
    if cfg.keyring.is_some() {
        info!("gossip encryption on (AES-GCM)");
    }
    let auth_warned = Arc::new(Mutex::new(WarnLimiter::new(
        AUTH_WARN_EVERY,
        AUTH_WARN_SOURCES,
        std::time::Instant::now(),
    )));
    tokio::spawn(accept_tcp(
        tcp,
        tx.clone(),
        stats.clone(),
        keys.clone(),
        auth_warned.clone(),
    ));

    let core = Core::new(
        local,
        CoreConfig {
            timing: cfg.profile.timing(),
            has_join_targets: !cfg.join.is_empty(),
            retry_max: cfg.retry_max,
            reap_after: cfg.reap_after,
            leave_timeout: cfg.leave_timeout,
        },
        StdRng::from_rng(&mut rand::rng()),
        now(),
    );
    let mut node = Node {
        core,
        udp: Arc::new(udp),
        shared,
        stats,
        commands: tx,
        keys,
        auth_warned,
        merges: VecDeque::new(),
        leave_reply: Vec::new(),
        left: false,
        started: std::time::Instant::now(),
        synced: false,
        synced_tx,
        cfg,
    };
    node.carry_out();
    let task = tokio::spawn(async move { node.run(rx).await });
    Ok((handle, task))
}

fn now() -> Now {
    Now {
        mono: std::time::Instant::now(),
        wall_ms: now_millis(),
    }
}

/// The I/O half: owns the socket and carries out what the core asks.
struct Node {
    core: Core,
    udp: Arc<UdpSocket>,
    shared: Arc<Mutex<Shared>>,
    stats: Arc<Stats>,
    commands: mpsc::Sender<Command>,
    keys: Arc<KeyCtx>,
    /// Last "wrong key?" warning per peer, so a misconfigured node is named
    /// in the log without flooding it (shared with the TCP listener).
    auth_warned: Arc<Mutex<WarnLimiter>>,
    /// Peer states being merged, a chunk per loop turn.
    merges: VecDeque<Merge>,
    leave_reply: Vec<oneshot::Sender<()>>,
    left: bool,
    started: std::time::Instant,
    synced: bool,
    /// Published after [`Shared::synced`], so a client woken by it reads a synced table.
    synced_tx: tokio::sync::watch::Sender<bool>,
    cfg: AgentConfig,
}

impl Node {
    async fn run(&mut self, mut commands: mpsc::Receiver<Command>) {
        let mut buf = vec![0u8; 65_536];
        let mut tick = tokio::time::interval(self.cfg.profile.timing().reconcile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let udp = self.udp.clone();
        loop {
            let next_timer = self
                .core
                .next_timer()
                .map(Instant::from_std)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                received = udp.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.on_datagram(&buf[..len], from),
                    Err(e) => debug!(error = %e, "UDP receive error"),
                },
                _ = tokio::time::sleep_until(next_timer) => self.core.on_timers(now()),
                command = commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => return,
                },
                _ = tick.tick() => {
                    self.core.on_tick(now());
                    if self.started.elapsed() >= self.cfg.sync_timeout {
                        self.mark_synced("no push-pull with a peer within --sync-timeout: serving the table as it is (a one-node cluster?)");
                    }
                }
                // Ready at once while a merge is pending; select! picks among
                // ready branches at random, so packets and timers interleave.
                _ = std::future::ready(()), if !self.merges.is_empty() => self.merge_chunk(),
            }
            self.carry_out();
            if self.left {
                return;
            }
        }
    }

    fn on_datagram(&mut self, data: &[u8], from: SocketAddr) {
        Stats::add(&self.stats.packets_in, 1);
        Stats::add(&self.stats.bytes_in, data.len() as u64);
        let opened = {
            let ring = self.keys.ring.read().unwrap_or_else(|p| p.into_inner());
            wire::open_packet(ring.as_ref(), data).map(|p| p.into_owned())
        };
        let result = opened.and_then(|plain| self.core.on_packet(&plain, from, now()));
        match result {
            Ok(()) => {}
            Err(e @ (DecodeError::Auth | DecodeError::Encrypted | DecodeError::Unencrypted)) => {
                Stats::add(&self.stats.dropped_in, 1);
                Stats::add(&self.stats.auth_failures, 1);
                self.warn_auth(from, &e.to_string());
            }
            Err(e) => {
                Stats::add(&self.stats.dropped_in, 1);
                debug!(%from, error = %e, "dropped packet");
            }
        }
    }

    fn warn_auth(&mut self, from: SocketAddr, why: &str) {
        if allow_warning(&self.auth_warned, from) {
            warn!(%from, "packet dropped, {why}: every node needs the same --encrypt key (or keyring)");
        }
    }

    /// Queues a peer's state for merging, unless enough are queued already.
    fn queue_merge(&mut self, remote: SyncMsg) {
        if self.merges.len() >= MAX_PENDING_MERGES {
            Stats::add(&self.stats.dropped_busy, 1);
            debug!(peer = %remote.from.name, "push-pull not merged: {MAX_PENDING_MERGES} merges pending");
            return;
        }
        if let Some(merge) = self.core.begin_merge(remote, now()) {
            self.merges.push_back(merge);
        }
    }

    /// Merges one chunk of the oldest pending state.
    fn merge_chunk(&mut self) {
        let Some(mut merge) = self.merges.pop_front() else {
            return;
        };
        let started = std::time::Instant::now();
        let done = self.core.merge_step(&mut merge, MERGE_CHUNK, now());
        let took = started.elapsed();
        if took > Duration::from_millis(20) {
            debug!(
                ?took,
                remaining = merge.remaining(),
                "slow push-pull merge chunk"
            );
        }
        if done {
            self.merge_done(&merge);
        } else {
            self.merges.push_front(merge);
        }
    }

    /// A peer's state is merged and the table shows it.
    fn merge_done(&mut self, merge: &Merge) {
        debug!(peer = %merge.peer(), "push-pull state merged");
        self.mark_synced("first push-pull with a peer merged");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Join { targets, reply } => {
                let ctx = join::JoinCtx {
                    local: self.core.local().addr,
                    ours: self.core.sync_state(),
                    ring: pushpull::snapshot(&self.keys.ring),
                    commands: self.commands.clone(),
                    stats: self.stats.clone(),
                };
                tokio::spawn(async move {
                    let _ = reply.send(join::run(ctx, targets).await);
                });
            }
            Command::Resolved { addrs, explicit } => {
                self.core.contact(&addrs, !explicit, now());
            }
            Command::SetTags { set, delete, reply } => {
                let result = self.set_tags(set, delete);
                let _ = reply.send(result);
            }
            Command::ForceLeave { name, reply } => {
                let _ = reply.send(self.core.force_leave(&name, now()));
            }
            Command::Leave { reply } => {
                self.leave_reply.push(reply);
                self.core.begin_leave(now());
            }
            Command::PushPullIn { remote, reply } => {
                let _ = reply.send(self.core.sync_state());
                self.queue_merge(remote);
            }
            Command::PushPullOut { remote } => self.queue_merge(remote),
            Command::KeyOp { op, reply } => {
                let peers: Vec<(String, SocketAddr)> = self
                    .core
                    .records()
                    .filter(|r| r.status.is_active() && r.id.name != self.core.local().name)
                    .map(|r| (r.id.name.clone(), r.id.addr))
                    .collect();
                let keys = self.keys.clone();
                tokio::spawn(async move {
                    let _ = reply.send(cluster_key_op(keys, op, peers).await);
                });
            }
        }
    }

    /// The table now reflects the cluster; said once, after the push-pull's
    /// members are in the table (the carry-out that follows publishes both).
    fn mark_synced(&mut self, why: &str) {
        if !self.synced {
            info!(
                after_ms = self.started.elapsed().as_millis() as u64,
                "member table synced: {why}"
            );
            self.synced = true;
        }
    }

    fn set_tags(&mut self, set: Tags, delete: Vec<String>) -> Result<Tags, TagsError> {
        // Persist first: a tag change that cannot be saved is refused whole.
        let next =
            tags::merged(&self.core.local().tags, set, &delete).map_err(TagsError::Invalid)?;
        if let Some(path) = &self.cfg.tags_file {
            if next != self.core.local().tags {
                crate::persist::save_tags(path, &next).map_err(|e| {
                    TagsError::Save(format!("cannot write tags file {}: {e}", path.display()))
                })?;
            }
        }
        self.core.set_tags(next, now()).map_err(TagsError::Node)
    }

    /// Carries out the core's outputs and refreshes what the API reads.
    fn carry_out(&mut self) {
        let outputs = self.core.take_outputs();
        let mut events = Vec::new();
        for output in outputs {
            match output {
                Output::Send { to, packet } => self.send_raw(to, &packet),
                Output::Event(e) => events.push(e),
                Output::JoinRound => self.join_round(),
                Output::PushPull { to } => self.push_pull_with(to),
                Output::SeedPushPull { exclude } => self.seed_push_pull(exclude),
                Output::LeaveDone => {
                    for reply in self.leave_reply.drain(..) {
                        let _ = reply.send(());
                    }
                    self.left = true;
                }
                Output::NameTaken { reason } => {
                    // Stop the loop: the process exits non-zero ("the gossip
                    // loop stopped").
                    tracing::error!("{reason}");
                    self.left = true;
                }
            }
        }
        self.stats.members_refused.store(
            self.core.members_refused(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let wall = now_millis();
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        for e in &events {
            shared.events.push(e, wall);
        }
        let newly_synced = self.synced && !shared.synced;
        if !events.is_empty() || shared.joined != self.core.joined() || newly_synced {
            shared.synced = self.synced;
            shared.local = self.core.local().clone();
            shared.members = self.core.records().map(MemberView::from).collect();
            shared.counts = [Status::Alive, Status::Suspect, Status::Failed, Status::Left]
                .into_iter()
                .map(|s| (s.as_str(), self.core.count(s)))
                .collect();
            shared.joined = self.core.joined();
        }
        drop(shared);
        if newly_synced {
            self.synced_tx.send_replace(true);
        }
    }

    /// Resolves the join targets off the loop; the answer comes back as `Resolved`.
    fn join_round(&self) {
        let targets = self.cfg.join.clone();
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let addrs = addr::resolve_all(&targets).await;
            let names: Vec<String> = targets.iter().map(|(h, p)| format!("{h}:{p}")).collect();
            info!(
                targets = %loglist::few(&names),
                resolved = addrs.len(),
                addrs = %loglist::few(&addrs),
                "join attempt"
            );
            let _ = commands
                .send(Command::Resolved {
                    addrs,
                    explicit: false,
                })
                .await;
        });
    }

    fn seed_push_pull(&self, exclude: Vec<SocketAddr>) {
        let targets = self.cfg.join.clone();
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let mut addrs = addr::resolve_all(&targets).await;
            addrs.retain(|a| !exclude.contains(a));
            if addrs.is_empty() {
                return;
            }
            let pick = addrs[rand::random_range(0..addrs.len())];
            let _ = commands
                .send(Command::Resolved {
                    addrs: vec![pick],
                    explicit: true,
                })
                .await;
        });
    }

    fn push_pull_with(&self, addr: SocketAddr) {
        let ours = TcpMsg::Sync(self.core.sync_state());
        let commands = self.commands.clone();
        let stats = self.stats.clone();
        let ring = pushpull::snapshot(&self.keys.ring);
        tokio::spawn(async move {
            match pushpull::exchange(addr, ours, ring).await {
                Ok(TcpMsg::Sync(remote)) => {
                    Stats::add(&stats.push_pulls, 1);
                    let _ = commands.send(Command::PushPullOut { remote }).await;
                }
                Ok(_) => {
                    Stats::add(&stats.push_pull_failures, 1);
                    debug!(%addr, "push-pull answered with another message");
                }
                Err(e)
                    if e.is_auth() || matches!(e, FrameError::Decode(DecodeError::Refused(_))) =>
                {
                    Stats::add(&stats.push_pull_failures, 1);
                    Stats::add(&stats.auth_failures, 1);
                    warn!(%addr, error = %e, "push-pull refused: every node needs the same --encrypt key");
                }
                Err(e) => {
                    Stats::add(&stats.push_pull_failures, 1);
                    count_frame_error(&stats, &e);
                    debug!(%addr, error = %e, "push-pull failed");
                }
            }
        });
    }

    fn send_raw(&self, to: SocketAddr, packet: &[u8]) {
        let sealed;
        let packet = match &*self.keys.ring.read().unwrap_or_else(|p| p.into_inner()) {
            Some(ring) => {
                sealed = wire::seal_packet(ring, packet);
                &sealed[..]
            }
            None => packet,
        };
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

/// The keyring and what key operations need besides it.
pub struct KeyCtx {
    pub ring: SharedKeyring,
    pub file: Option<std::path::PathBuf>,
    pub node: String,
    /// Serialises key operations (see [`apply_key_op`]).
    pub op_lock: tokio::sync::Mutex<()>,
    /// Nonces of the key operations taken from peers (see `serve_key_op`).
    pub fresh: Mutex<NonceGuard>,
}

/// Cluster-wide result of a key operation.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct KeySummary {
    /// Members asked, this node included.
    pub nodes: usize,
    /// Members that applied it.
    pub ok: usize,
    /// Failures by node name.
    pub errors: BTreeMap<String, String>,
    /// Each key and on how many members it is installed.
    pub keys: BTreeMap<String, usize>,
    /// Each primary key and on how many members it is primary.
    pub primary: BTreeMap<String, usize>,
}

/// Applies a key operation to this node's keyring and its file. The change
/// is made on a copy, saved (fsync, off the runtime thread: the gossip loop
/// must keep answering probes while the disk is slow), and only then swapped
/// in, so a keyring that cannot be saved is left exactly as it was.
pub async fn apply_key_op(ctx: &KeyCtx, op: &KeyOp) -> KeyReply {
    // One operation at a time: two concurrent edits of copies would lose one.
    let _serial = ctx.op_lock.lock().await;
    let reply = |error: Option<String>, ring: Option<&Keyring>| KeyReply {
        node: ctx.node.clone(),
        error,
        keys: ring
            .map(|r| r.keys().map(|k| k.as_str().to_string()).collect())
            .unwrap_or_default(),
    };
    let Some(mut ring) = pushpull::snapshot(&ctx.ring) else {
        return reply(
            Some("encryption is not enabled on this node (start it with --encrypt)".into()),
            None,
        );
    };
    let before = ring.clone();
    let changed = match op {
        KeyOp::List => Ok(false),
        KeyOp::Install(k) => Key::parse(k).map(|key| ring.install(key)),
        KeyOp::Use(k) => ring.use_key(k).map_err(|e| e.to_string()),
        KeyOp::Remove(k) => ring.remove(k).map_err(|e| e.to_string()),
    };
    match changed {
        Err(e) => reply(Some(e), Some(&before)),
        Ok(false) => reply(None, Some(&ring)),
        Ok(true) => {
            if let Some(file) = ctx.file.clone() {
                let copy = ring.clone();
                let shown = file.display().to_string();
                let saved =
                    tokio::task::spawn_blocking(move || crate::persist::save_keyring(&copy, &file))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()));
                if let Err(e) = saved {
                    return reply(
                        Some(format!(
                            "keyring left unchanged: cannot save it to {shown}: {e}"
                        )),
                        Some(&before),
                    );
                }
            }
            *ctx.ring.write().unwrap_or_else(|p| p.into_inner()) = Some(ring.clone());
            info!(op = ?std::mem::discriminant(op), "keyring changed");
            reply(None, Some(&ring))
        }
    }
}

/// A key operation asked for by a peer: applied only if fresh (see
/// [`crate::freshness`]); a stale or replayed one is refused, counted
/// (`key_ops_stale`, `key_ops_replayed`, and `dropped_in`) and logged.
async fn serve_key_op(ctx: &KeyCtx, stats: &Stats, req: &KeyRequest) -> KeyReply {
    let checked = ctx.fresh.lock().unwrap_or_else(|p| p.into_inner()).check(
        req.sent_ms,
        req.nonce,
        now_millis(),
    );
    match checked {
        Ok(()) => apply_key_op(ctx, &req.op).await,
        Err(why) => {
            let counter = match why {
                Refusal::Replayed => &stats.key_ops_replayed,
                Refusal::Stale { .. } | Refusal::Flood => &stats.key_ops_stale,
            };
            Stats::add(counter, 1);
            Stats::add(&stats.dropped_in, 1);
            warn!(error = %why, "key operation refused");
            KeyReply {
                node: ctx.node.clone(),
                error: Some(format!("refused: {why}")),
                keys: pushpull::snapshot(&ctx.ring)
                    .map(|r| r.keys().map(|k| k.as_str().to_string()).collect())
                    .unwrap_or_default(),
            }
        }
    }
}

/// Runs a key operation here, then on every live member in parallel.
async fn cluster_key_op(
    ctx: Arc<KeyCtx>,
    op: KeyOp,
    peers: Vec<(String, SocketAddr)>,
) -> Result<KeySummary, String> {
    if let KeyOp::Install(k) | KeyOp::Use(k) | KeyOp::Remove(k) = &op {
        Key::parse(k)?;
    }
    let local = apply_key_op(&ctx, &op).await;
    if ctx.ring.read().unwrap_or_else(|p| p.into_inner()).is_none() {
        return Err(local.error.unwrap_or_default());
    }
    let ring = pushpull::snapshot(&ctx.ring);
    // One stamp for every peer: each remembers the nonce on its own.
    let request = KeyRequest::new(op, now_millis());
    let mut tasks = tokio::task::JoinSet::new();
    for (name, addr) in peers {
        let msg = TcpMsg::KeyOp(request.clone());
        let ring = ring.clone();
        tasks.spawn(async move {
            match pushpull::exchange(addr, msg, ring).await {
                Ok(TcpMsg::KeyReply(r)) => r,
                Ok(_) => KeyReply {
                    node: name,
                    error: Some("unexpected answer".into()),
                    keys: Vec::new(),
                },
                Err(e) => KeyReply {
                    node: name,
                    error: Some(e.to_string()),
                    keys: Vec::new(),
                },
            }
        });
    }
    let mut replies = vec![local];
    while let Some(r) = tasks.join_next().await {
        if let Ok(r) = r {
            replies.push(r);
        }
    }
    let mut summary = KeySummary {
        nodes: replies.len(),
        ..KeySummary::default()
    };
    for r in replies {
        match r.error {
            Some(e) => {
                summary.errors.insert(r.node, e);
            }
            None => summary.ok += 1,
        }
        for (i, k) in r.keys.iter().enumerate() {
            *summary.keys.entry(k.clone()).or_default() += 1;
            if i == 0 {
                *summary.primary.entry(k.clone()).or_default() += 1;
            }
        }
    }
    Ok(summary)
}

/// Whether a warning about `from` may be logged now.
fn allow_warning(limiter: &Mutex<WarnLimiter>, from: SocketAddr) -> bool {
    limiter
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .allow(from.ip(), std::time::Instant::now())
}

/// Counts a failed frame under its reason.
fn count_frame_error(stats: &Stats, e: &FrameError) {
    match e {
        FrameError::Timeout(_) => Stats::add(&stats.dropped_deadline, 1),
        FrameError::Busy => Stats::add(&stats.dropped_busy, 1),
        e if e.is_size() => Stats::add(&stats.dropped_size, 1),
        _ => {}
    }
}

/// Serves TCP on the gossip port (push-pull and key operations); each
/// connection in its own task, at most [`MAX_TCP_CONNS`] at once
/// ([`MAX_TCP_CONNS_PER_SOURCE`] per source address). A connection over the
/// cap is closed at once and counted (`dropped_conn_cap`).
async fn accept_tcp(
    listener: TcpListener,
    commands: mpsc::Sender<Command>,
    stats: Arc<Stats>,
    keys: Arc<KeyCtx>,
    warned: Arc<Mutex<WarnLimiter>>,
) {
    let limiter = ConnLimiter::new(MAX_TCP_CONNS, MAX_TCP_CONNS_PER_SOURCE);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match limiter.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                Stats::add(&stats.dropped_conn_cap, 1);
                if allow_warning(&warned, peer) {
                    warn!(%peer, "TCP connection on the gossip port closed at once: {why}");
                } else {
                    debug!(%peer, "TCP connection closed: {why}");
                }
                continue;
            }
        };
        let (commands, stats, keys, warned) = (
            commands.clone(),
            stats.clone(),
            keys.clone(),
            warned.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            serve_tcp(stream, peer, commands, &stats, &keys, &warned).await;
        });
    }
}

/// One inbound exchange: read a frame, answer it, all within `IO_TIMEOUT`.
async fn serve_tcp(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    commands: mpsc::Sender<Command>,
    stats: &Stats,
    keys: &KeyCtx,
    warned: &Mutex<WarnLimiter>,
) {
    let run = async {
        let ring = pushpull::snapshot(&keys.ring);
        let msg = match pushpull::read_frame(&mut stream, ring.as_ref(), pushpull::HEADER_TIMEOUT)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                if e.is_auth() {
                    // Tell the peer why, in clear: it cannot read anything else from us.
                    let reason = format!("this node could not authenticate the frame: {e}");
                    let _ = stream.write_all(&wire::encode_refusal(&reason)).await;
                }
                return Err(e);
            }
        };
        let answer = match msg {
            TcpMsg::Sync(remote) => {
                let (tx, rx) = oneshot::channel();
                let stopped = || FrameError::Io("agent stopped".into());
                commands
                    .send(Command::PushPullIn { remote, reply: tx })
                    .await
                    .map_err(|_| stopped())?;
                TcpMsg::Sync(rx.await.map_err(|_| stopped())?)
            }
            TcpMsg::KeyOp(req) => TcpMsg::KeyReply(serve_key_op(keys, stats, &req).await),
            TcpMsg::KeyReply(_) => return Err(FrameError::Io("unexpected key reply".into())),
        };
        // Answer with the keyring as it is now (a `use` just switched it).
        let ring = pushpull::snapshot(&keys.ring);
        pushpull::write_frame(&mut stream, &answer, ring.as_ref()).await
    };
    let result = tokio::time::timeout(pushpull::IO_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| {
            Err(FrameError::Timeout(format!(
                "the exchange ({:?})",
                pushpull::IO_TIMEOUT
            )))
        });
    match result {
        Ok(()) => Stats::add(&stats.push_pulls, 1),
        Err(e) => {
            Stats::add(&stats.push_pull_failures, 1);
            Stats::add(&stats.dropped_in, 1);
            count_frame_error(stats, &e);
            if e.is_auth() {
                Stats::add(&stats.auth_failures, 1);
                if allow_warning(warned, peer) {
                    warn!(%peer, error = %e, "TCP exchange refused: every node needs the same --encrypt key");
                }
            } else if e.is_size() {
                if allow_warning(warned, peer) {
                    warn!(%peer, error = %e, "push-pull frame refused");
                }
            } else {
                debug!(%peer, error = %e, "inbound TCP exchange refused");
            }
        }
    }
}

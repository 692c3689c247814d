//! The agent's runtime: one task that owns the sans-I/O [`Core`] (foca and
//! the member table) and drives it from the UDP socket, the core's single
//! timer heap, operator commands and push-pull results. Everything slow (DNS,
//! TCP exchanges, handlers) runs in other tasks and reports back through the
//! command channel, so the gossip loop never waits on them.

use std::collections::{BTreeMap, HashMap};
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
use crate::core::{Core, CoreConfig, Now, Output};
use crate::events::{EventLog, MemberView};
use crate::freshness::{NonceGuard, Refusal};
use crate::identity::{now_millis, NodeId};
use crate::keyring::{Key, Keyring};
use crate::membership::Status;
use crate::profile::Profile;
use crate::pushpull::{self, FrameError, SharedKeyring};
use crate::stats::Stats;
use crate::tags::{self, Tags};
use crate::wire::{self, DecodeError, KeyOp, KeyReply, KeyRequest, SyncMsg, TcpMsg};

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

    /// Applies `op` here and on every live member; per-node results.
    pub async fn key_op(&self, op: KeyOp) -> Result<KeySummary, String> {
        self.call(|reply| Command::KeyOp { op, reply }).await?
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
    tokio::spawn(accept_tcp(tcp, tx.clone(), stats.clone(), keys.clone()));

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
        auth_warned: HashMap::new(),
        leave_reply: Vec::new(),
        left: false,
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
    /// in the log without flooding it.
    auth_warned: HashMap<std::net::IpAddr, std::time::Instant>,
    leave_reply: Vec<oneshot::Sender<()>>,
    left: bool,
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
                _ = tick.tick() => self.core.on_tick(now()),
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
        let now = std::time::Instant::now();
        let recent = self
            .auth_warned
            .get(&from.ip())
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(30));
        if !recent {
            self.auth_warned.insert(from.ip(), now);
            warn!(%from, "packet dropped, {why}: every node needs the same --encrypt key (or keyring)");
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Join { targets, reply } => {
                let commands = self.commands.clone();
                tokio::spawn(async move {
                    let addrs = addr::resolve_all(&targets).await;
                    if addrs.is_empty() {
                        let names: Vec<String> =
                            targets.iter().map(|(h, p)| format!("{h}:{p}")).collect();
                        let _ =
                            reply.send(Err(format!("none of {names:?} resolved to an address")));
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
                self.core.apply_remote(remote, now());
            }
            Command::PushPullOut { remote } => self.core.apply_remote(remote, now()),
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

    fn set_tags(&mut self, set: Tags, delete: Vec<String>) -> Result<Tags, String> {
        // Persist first: a tag change that cannot be saved is refused whole.
        let next =
            tags::merged(&self.core.local().tags, set, &delete).map_err(|e| e.to_string())?;
        if let Some(path) = &self.cfg.tags_file {
            if next != self.core.local().tags {
                tags::save_file(path, &next)
                    .map_err(|e| format!("cannot write tags file {}: {e}", path.display()))?;
            }
        }
        self.core.set_tags(next, now())
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
        let wall = now_millis();
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        for e in &events {
            shared.events.push(e, wall);
        }
        if !events.is_empty() || shared.joined != self.core.joined() {
            shared.local = self.core.local().clone();
            shared.members = self.core.records().map(MemberView::from).collect();
            shared.counts = [Status::Alive, Status::Suspect, Status::Failed, Status::Left]
                .into_iter()
                .map(|s| (s.as_str(), self.core.count(s)))
                .collect();
            shared.joined = self.core.joined();
        }
    }

    /// Resolves the join targets off the loop; the answer comes back as `Resolved`.
    fn join_round(&self) {
        let targets = self.cfg.join.clone();
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let addrs = addr::resolve_all(&targets).await;
            let names: Vec<String> = targets.iter().map(|(h, p)| format!("{h}:{p}")).collect();
            info!(targets = ?names, resolved = ?addrs, "join attempt");
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
                Err(FrameError::Decode(e)) => {
                    Stats::add(&stats.push_pull_failures, 1);
                    Stats::add(&stats.auth_failures, 1);
                    warn!(%addr, error = %e, "push-pull refused: every node needs the same --encrypt key");
                }
                Err(e) => {
                    Stats::add(&stats.push_pull_failures, 1);
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
    /// Nonces of the key operations taken from peers (see [`serve_key_op`]).
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
        KeyOp::Use(k) => ring.use_key(k),
        KeyOp::Remove(k) => ring.remove(k),
    };
    match changed {
        Err(e) => reply(Some(e), Some(&before)),
        Ok(false) => reply(None, Some(&ring)),
        Ok(true) => {
            if let Some(file) = ctx.file.clone() {
                let copy = ring.clone();
                let shown = file.display().to_string();
                let saved = tokio::task::spawn_blocking(move || copy.save(&file))
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

/// Serves TCP on the gossip port (push-pull and key operations); each
/// connection in its own task.
async fn accept_tcp(
    listener: TcpListener,
    commands: mpsc::Sender<Command>,
    stats: Arc<Stats>,
    keys: Arc<KeyCtx>,
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
        let keys = keys.clone();
        tokio::spawn(async move {
            let run = async {
                let ring = pushpull::snapshot(&keys.ring);
                let msg = match pushpull::read_frame(&mut stream, ring.as_ref()).await {
                    Ok(m) => m,
                    Err(e) => {
                        if let FrameError::Decode(
                            DecodeError::Auth | DecodeError::Encrypted | DecodeError::Unencrypted,
                        ) = &e
                        {
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
                    TcpMsg::KeyOp(req) => TcpMsg::KeyReply(serve_key_op(&keys, &stats, &req).await),
                    TcpMsg::KeyReply(_) => {
                        return Err(FrameError::Io("unexpected key reply".into()))
                    }
                };
                // Answer with the keyring as it is now (a `use` just switched it).
                let ring = pushpull::snapshot(&keys.ring);
                pushpull::write_frame(&mut stream, &answer, ring.as_ref()).await
            };
            match tokio::time::timeout(pushpull::IO_TIMEOUT, run).await {
                Ok(Ok(())) => Stats::add(&stats.push_pulls, 1),
                Ok(Err(e)) => {
                    Stats::add(&stats.push_pull_failures, 1);
                    Stats::add(&stats.dropped_in, 1);
                    if let FrameError::Decode(
                        DecodeError::Auth | DecodeError::Encrypted | DecodeError::Unencrypted,
                    ) = e
                    {
                        Stats::add(&stats.auth_failures, 1);
                        warn!(%peer, error = %e, "TCP exchange refused: every node needs the same --encrypt key");
                    } else {
                        debug!(%peer, error = %e, "inbound TCP exchange refused");
                    }
                }
                Err(_) => {
                    Stats::add(&stats.push_pull_failures, 1);
                    debug!(%peer, "inbound TCP exchange timed out");
                }
            }
        });
    }
}

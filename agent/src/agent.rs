//! The agent's runtime: one task that owns the sans-I/O [`Core`] (foca and
//! the member table) and drives it from the UDP socket, the core's single
//! timer heap, operator commands and push-pull results. Everything slow (DNS,
//! TCP exchanges, handlers) runs in other tasks and reports back through the
//! command channel, so the gossip loop never waits on them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::addr;
use crate::core::{Core, CoreConfig, Now, Output};
use crate::events::{EventLog, MemberView};
use crate::identity::{now_millis, NodeId};
use crate::membership::Status;
use crate::profile::Profile;
use crate::pushpull;
use crate::stats::Stats;
use crate::tags::{self, Tags};
use crate::wire::SyncMsg;

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
                    Ok((len, from)) => {
                        Stats::add(&self.stats.packets_in, 1);
                        Stats::add(&self.stats.bytes_in, len as u64);
                        if let Err(e) = self.core.on_packet(&buf[..len], from, now()) {
                            Stats::add(&self.stats.dropped_in, 1);
                            debug!(%from, error = %e, "dropped packet");
                        }
                    }
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
        }
    }

    fn set_tags(&mut self, set: Tags, delete: Vec<String>) -> Result<Tags, String> {
        // Persist first: a tag change that cannot be saved is refused whole.
        let mut next = self.core.local().tags.clone();
        for k in &delete {
            next.remove(k);
        }
        next.extend(set.clone());
        tags::validate(&next).map_err(|e| e.to_string())?;
        if let Some(path) = &self.cfg.tags_file {
            if next != self.core.local().tags {
                tags::save_file(path, &next)
                    .map_err(|e| format!("cannot write tags file {}: {e}", path.display()))?;
            }
        }
        self.core.set_tags(set, &delete, now())
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
        let ours = self.core.sync_state();
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

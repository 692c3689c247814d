//! The agent's runtime: one task that owns the sans-I/O [`Core`] (foca and
//! the member table) and drives it from the UDP socket, the core's single
//! timer heap, operator commands and push-pull results. Everything slow (DNS,
//! TCP exchanges, file writes, handlers) runs in other tasks and reports back
//! through the command channel, so the gossip loop never waits on them.
//!
//! Layout:
//! - this file: [`AgentConfig`] and [`start`] (binds the sockets, spawns the
//!   loop and the TCP server);
//! - `bind`: the gossip port, UDP and TCP on one number;
//! - `gossip`: the loop itself ([`LoopEnd`] says why it stopped);
//! - `handle`: [`Handle`] (commands in, [`Snapshot`] and events out) and
//!   [`Command`];
//! - `keys`: key rotation, Serf's key manager ([`apply_key_op`],
//!   [`KeySummary`]);
//! - `tcp`: the TCP server on the gossip port (push-pull, key operations,
//!   large query responses and event payloads, under [`MAX_TCP_CONNS`]);
//! - `user`: user events and queries ([`UserDelivery`] to the handlers, the
//!   queries this node waits on, payload fetches).

mod bind;
mod gossip;
mod handle;
mod keys;
mod tcp;
mod user;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::core::{Core, CoreConfig, Now};
use crate::events::EventLog;
use crate::freshness::NonceGuard;
use crate::identity::{now_millis, NodeId};
use crate::keyring::Keyring;
use crate::limits::WarnLimiter;
use crate::profile::Profile;
use crate::stats::Stats;
use crate::tags::Tags;

pub use gossip::LoopEnd;
pub use handle::{Command, EventSubscription, Handle, Snapshot};
pub use keys::{apply_key_op, KeyCtx, KeySummary};
pub use tcp::{MAX_TCP_CONNS, MAX_TCP_CONNS_PER_SOURCE};
pub use user::{QueryParams, UserDelivery, USER_CHANNEL};

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
    /// `join` as resolved moments ago (advertise detection): the first join
    /// round sends to these instead of resolving again; empty = resolve.
    pub first_join: Vec<SocketAddr>,
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
    /// Serf's `-replay`: run the recent user events a peer sends at the join.
    pub replay: bool,
}

/// Binds the gossip sockets (UDP and TCP on the same port) and starts the loop.
/// The returned join handle ends after a graceful leave, or when this node
/// lost its name to a newer twin (see [`LoopEnd`]).
pub async fn start(
    cfg: AgentConfig,
) -> std::io::Result<(Handle, tokio::task::JoinHandle<LoopEnd>)> {
    let (udp, tcp) = bind::bind_gossip(cfg.bind).await?;
    let bound = udp.local_addr()?;
    widen_receive_buffer(&udp);
    let mut advertise = cfg.advertise;
    if advertise.port() == 0 {
        advertise.set_port(bound.port());
    }
    let local = NodeId::new(cfg.node.clone(), advertise, cfg.tags.clone(), now_millis());
    let run: Arc<str> = format!("{:016x}", rand::random::<u64>()).into();
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(Snapshot {
        local: local.clone(),
        members: Vec::new(),
        counts: Default::default(),
        index: 0,
        joined: false,
        run,
        synced: false,
    }));
    let events = Arc::new(Mutex::new(EventLog::new()));
    let stats = Arc::new(Stats::default());
    let (tx, rx) = mpsc::channel(1024);
    let (synced_tx, synced_rx) = watch::channel(false);
    let (user_tx, _) = tokio::sync::broadcast::channel(USER_CHANNEL);
    let handle = Handle::new(
        (tx.clone(), user_tx.clone()),
        snapshot_rx,
        events.clone(),
        synced_rx,
        stats.clone(),
        bound,
        cfg.profile,
    );
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
    tokio::spawn(tcp::accept_tcp(
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
            replay: cfg.replay,
        },
        StdRng::from_rng(&mut rand::rng()),
        now(),
    );
    let mut node = gossip::Node {
        core,
        udp: Arc::new(udp),
        events,
        snapshot_tx,
        stats,
        commands: tx,
        keys,
        auth_warned,
        merges: Default::default(),
        leave_reply: Vec::new(),
        end: None,
        started: tokio::time::Instant::now(),
        tags_saving: false,
        tags_queued: Default::default(),
        synced: false,
        synced_tx,
        user_tx,
        queries: Default::default(),
        cfg,
    };
    node.carry_out();
    let task = tokio::spawn(async move { node.run(rx).await });
    Ok((handle, task))
}

/// Room for bursts on the gossip socket: a query's acks and responses from
/// every member arrive at once. Asks for [`UDP_RECEIVE_BUFFER`]; the kernel
/// caps it at `net.core.rmem_max`.
pub const UDP_RECEIVE_BUFFER: usize = 4 * 1024 * 1024;

fn widen_receive_buffer(udp: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt::RcvBuf};
    if let Err(e) = setsockopt(udp, RcvBuf, &UDP_RECEIVE_BUFFER) {
        tracing::debug!(error = %e, "cannot widen the UDP receive buffer");
    }
}

/// The core's clock. Monotonic time is tokio's, so a runtime with paused
/// time (tests) runs the protocol's timers on virtual time too.
fn now() -> Now {
    Now {
        mono: tokio::time::Instant::now().into_std(),
        wall_ms: now_millis(),
    }
}

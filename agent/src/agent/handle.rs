//! The handle to a running agent: what the API, the CLI's server side and
//! the handlers use to read its state and send it commands.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::keys::KeySummary;
use crate::events::{EventLog, MemberView};
use crate::identity::NodeId;
use crate::join::JoinReport;
use crate::profile::Profile;
use crate::stats::Stats;
use crate::tags::Tags;
use crate::wire::{KeyOp, SyncMsg};

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
    /// Turns true once, when the table is synced (see [`Shared::synced`]).
    pub synced: tokio::sync::watch::Receiver<bool>,
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

    pub async fn join(&self, targets: Vec<(String, u16)>) -> Result<JoinReport, String> {
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

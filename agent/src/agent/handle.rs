//! The handle to a running agent: what the API, the CLI's server side and
//! the handlers use to read its state and send it commands.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::keys::KeySummary;
use super::user::{QueryParams, UserDelivery};
use crate::command_error::{CommandError, ShuttingDown, TagsError};
use crate::events::EventLog;
use crate::identity::NodeId;
use crate::join::JoinReport;
use crate::membership::ForceLeaveError;
use crate::profile::Profile;
use crate::stats::Stats;
use crate::tags::Tags;
use crate::userev::{Query, Reply, ReplyKind, UserError};
use crate::wire::{KeyOp, SyncMsg};
use shoal_contract::{Event, Member, QueryLine};

/// The member table as the gossip loop last published it (after every
/// change), read by the API without going through the loop or taking its
/// lock: `/v1/members` serialises a shared `Arc` of it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub local: NodeId,
    pub members: Vec<Member>,
    pub counts: HashMap<&'static str, usize>,
    /// The last event index these members include: a client that streams
    /// events after it misses nothing.
    pub index: u64,
    pub joined: bool,
    /// Identifies this run of the agent (random per start), so a client that
    /// reconnects can tell a restarted agent, whose event index began again,
    /// from the one it followed.
    pub run: Arc<str>,
    /// False until the table came from the cluster: the first push-pull with
    /// a peer completed, or [`super::AgentConfig::sync_timeout`] passed. A
    /// restarted agent's table is nearly empty before that; clients must not
    /// act on it.
    pub synced: bool,
}

/// Event-log entries after an index, and a receiver for the ones to come,
/// taken together so nothing falls in between.
pub struct EventSubscription {
    pub backlog: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
    /// The oldest index still buffered; a client asking for less may have missed events.
    pub oldest: Option<u64>,
    /// The last index handed out (0 before any event).
    pub last: u64,
}

/// What the gossip loop is asked to do: by the [`Handle`], the TCP server,
/// and the tasks the loop itself started (DNS, push-pull, file writes).
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
    /// A tags file write finished (off the loop): apply `next` if it was saved.
    TagsSaved {
        next: Tags,
        saved: Result<(), TagsError>,
        reply: oneshot::Sender<Result<Tags, TagsError>>,
    },
    /// Send a user event (`shoal event`); answered with its Lamport time.
    UserEvent {
        name: String,
        payload: Vec<u8>,
        coalesce: bool,
        reply: oneshot::Sender<Result<u64, UserError>>,
    },
    /// Send a query (`shoal query`); its lines go to `lines` until the done line.
    Query {
        params: QueryParams,
        lines: mpsc::UnboundedSender<QueryLine>,
        reply: oneshot::Sender<Result<(), UserError>>,
    },
    /// A handler's answer to a query that addressed us.
    Respond { query: Query, kind: ReplyKind },
    /// A query reply that came over TCP (too large for UDP).
    ReplyIn(Reply),
    /// A member asks for the payload of our large event `(ltime, name)`.
    FetchPayload {
        ltime: u64,
        name: String,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    /// A peer's clocks and recent events; answered with ours when `reply` is set.
    Clocks {
        theirs: crate::userev::UserSync,
        reply: Option<oneshot::Sender<crate::userev::UserSync>>,
    },
    /// Join targets resolved to addresses.
    Resolved {
        addrs: Vec<SocketAddr>,
        /// From the periodic join retry (not a seed push-pull): the core clears its
        /// pending join round.
        join_round: bool,
    },
}

/// A cheap, clonable handle to a running agent.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::Sender<Command>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    events: Arc<Mutex<EventLog>>,
    synced: watch::Receiver<bool>,
    stats: Arc<Stats>,
    gossip_addr: SocketAddr,
    profile: Profile,
    user: broadcast::Sender<Arc<UserDelivery>>,
}

impl Handle {
    pub(super) fn new(
        (commands, user): (mpsc::Sender<Command>, broadcast::Sender<Arc<UserDelivery>>),
        snapshot: watch::Receiver<Arc<Snapshot>>,
        events: Arc<Mutex<EventLog>>,
        synced: watch::Receiver<bool>,
        stats: Arc<Stats>,
        gossip_addr: SocketAddr,
        profile: Profile,
    ) -> Handle {
        Handle {
            commands,
            snapshot,
            events,
            synced,
            stats,
            gossip_addr,
            profile,
            user,
        }
    }

    /// Sends a user event to every member; its Lamport time.
    pub async fn user_event(
        &self,
        name: String,
        payload: Vec<u8>,
        coalesce: bool,
    ) -> Result<u64, CommandError<UserError>> {
        self.call(|reply| Command::UserEvent {
            name,
            payload,
            coalesce,
            reply,
        })
        .await?
        .map_err(CommandError::Refused)
    }

    /// Sends a query; its lines (started, acks, responses, done) follow on
    /// the receiver, which ends after the done line.
    pub async fn query(
        &self,
        params: QueryParams,
    ) -> Result<mpsc::UnboundedReceiver<QueryLine>, CommandError<UserError>> {
        let (lines, rx) = mpsc::unbounded_channel();
        self.call(|reply| Command::Query {
            params,
            lines,
            reply,
        })
        .await?
        .map_err(CommandError::Refused)?;
        Ok(rx)
    }

    /// Answers a query that addressed this node.
    pub async fn respond(&self, query: Query, kind: ReplyKind) {
        let _ = self.commands.send(Command::Respond { query, kind }).await;
    }

    /// User events and queries from now on, for the handlers.
    pub fn subscribe_user(&self) -> broadcast::Receiver<Arc<UserDelivery>> {
        self.user.subscribe()
    }

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

    /// Answered once the tags file (if any) is saved; a change that cannot
    /// be saved is refused whole and the tags stay as they were.
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

    /// Leaves the cluster gracefully; answered once every member acknowledged
    /// or `--leave-timeout` passed. The gossip loop then stops.
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

    /// The member table as last published; cheap (an `Arc`), no lock held.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A receiver told of every new [`Snapshot`] (the snapshot file's writer).
    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    pub fn local(&self) -> NodeId {
        self.snapshot.borrow().local.clone()
    }

    /// Events after `index` and the ones to come.
    pub fn subscribe_events(&self, index: u64) -> EventSubscription {
        let log = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let (backlog, live) = log.subscribe_after(index);
        EventSubscription {
            backlog,
            live,
            oldest: log.oldest_index(),
            last: log.last_index(),
        }
    }

    /// Turns true once, when the table is synced (see [`Snapshot::synced`]).
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.clone()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The bound gossip address (UDP and TCP).
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }
}

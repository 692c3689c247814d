//! The agent's side of user events and queries: what the gossip loop hands
//! the handlers ([`UserDelivery`]), the queries this node sent and is
//! waiting on ([`PendingQuery`]), and the TCP fetch of a large event payload.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_contract::QueryLine;
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, warn};

use crate::keyring::Keyring;
use crate::pushpull;
use crate::stats::Stats;
use crate::userev::{Query, QueryNews, QueryRun, Reply};
use crate::wire::TcpMsg;

/// User events and queries waiting for the handler dispatcher.
pub const USER_CHANNEL: usize = 1024;
/// Tries to fetch a large payload, and the pause between them.
const FETCH_TRIES: u32 = 3;
const FETCH_PAUSE: Duration = Duration::from_millis(200);

/// What the handlers get: a user event (payload in hand) or a query that
/// addresses this node (answer with [`super::Handle::respond`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserDelivery {
    Event {
        name: String,
        ltime: u64,
        origin: String,
        coalesce: bool,
        payload: Vec<u8>,
    },
    Query(Query),
}

/// What `shoal query` asks for (checked by the core).
#[derive(Debug, Clone)]
pub struct QueryParams {
    pub name: String,
    pub payload: Vec<u8>,
    pub nodes: Vec<String>,
    pub tags: Vec<(String, String)>,
    pub ack: bool,
    /// None: Serf's default for the cluster's size.
    pub timeout: Option<Duration>,
}

/// A query this node sent: its run, and the stream of lines to its asker.
pub struct PendingQuery {
    pub run: QueryRun,
    pub lines: mpsc::UnboundedSender<QueryLine>,
    pub sent: Instant,
    pub responses: usize,
    pub acks: usize,
}

impl PendingQuery {
    /// Takes a reply; true once the query is complete (the done line is sent).
    pub fn on_reply(&mut self, reply: Reply) -> bool {
        match self.run.on_reply(reply) {
            Some(QueryNews::Ack { from }) => {
                self.acks += 1;
                let _ = self.lines.send(QueryLine::Ack { from });
            }
            Some(QueryNews::Response { from, payload }) => {
                self.responses += 1;
                let payload = String::from_utf8_lossy(&payload).into_owned();
                let _ = self.lines.send(QueryLine::Response { from, payload });
            }
            None => {}
        }
        self.run.complete()
    }

    /// Sends the last line.
    pub fn finish(&self) {
        let _ = self.lines.send(QueryLine::Done {
            complete: self.run.complete(),
            acks: self.run.acks(),
            responses: self.responses,
            missing: self.run.missing(),
            took_ms: self.sent.elapsed().as_millis() as u64,
        });
    }

    /// Whether the asker went away (nobody reads the lines any more).
    pub fn abandoned(&self) -> bool {
        self.lines.is_closed()
    }
}

/// Fetches a large event payload from its originator over TCP, then hands
/// the event to the handlers. Gives up (with a warning) after a few tries.
pub fn fetch_and_deliver(
    from: SocketAddr,
    len: u32,
    event: UserDelivery,
    ring: Option<Keyring>,
    tx: broadcast::Sender<Arc<UserDelivery>>,
    stats: Arc<Stats>,
) {
    let UserDelivery::Event {
        name,
        ltime,
        origin,
        coalesce,
        ..
    } = event
    else {
        return;
    };
    tokio::spawn(async move {
        let ask = TcpMsg::FetchPayload {
            origin: origin.clone(),
            ltime,
            name: name.clone(),
        };
        for attempt in 1..=FETCH_TRIES {
            match pushpull::exchange(from, ask.clone(), ring.clone(), &stats.metrics).await {
                Ok(TcpMsg::Payload(Some(payload))) if payload.len() == len as usize => {
                    let _ = tx.send(Arc::new(UserDelivery::Event {
                        name,
                        ltime,
                        origin,
                        coalesce,
                        payload,
                    }));
                    return;
                }
                Ok(TcpMsg::Payload(None)) => {
                    warn!(event = %name, ltime, %origin, "user event payload is no longer kept by its originator; event dropped");
                    return;
                }
                Ok(other) => {
                    debug!(%from, ?other, "unexpected answer to a payload fetch");
                }
                Err(e) => debug!(%from, attempt, error = %e, "payload fetch failed"),
            }
            tokio::time::sleep(FETCH_PAUSE).await;
        }
        warn!(event = %name, ltime, %origin, %from, "cannot fetch the user event's payload from its originator; event dropped");
    });
}

/// Sends a large response over TCP to the query's originator.
pub fn reply_over_tcp(to: SocketAddr, reply: Reply, ring: Option<Keyring>, stats: Arc<Stats>) {
    tokio::spawn(async move {
        match pushpull::exchange(to, TcpMsg::QueryReply(reply), ring, &stats.metrics).await {
            Ok(TcpMsg::Done) => {}
            Ok(_) => debug!(%to, "unexpected answer to a query response"),
            Err(e) => warn!(%to, error = %e, "cannot send a query response over TCP"),
        }
    });
}

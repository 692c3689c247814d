//! User events and queries (Serf's `serf event` and `serf query`), pure.
//!
//! Both travel as foca custom broadcasts ([`Broadcast`]), so they ride the
//! same (sealed) SWIM packets as membership and reach every member by
//! gossip. This module holds what is protocol about them and nothing that is
//! I/O:
//! - [`Lamport`]: Serf's Lamport clocks (one for events, one for queries);
//! - [`Recent`]: the bounded de-duplication buffer, slot per Lamport time, as
//!   Serf's `eventBuffer`/`queryBuffer` (64 slots): a message seen before, or
//!   older than the buffer reaches, is dropped;
//! - [`UserState`] and [`Gossip`] (foca's `BroadcastHandler`): decode, check,
//!   de-duplicate and queue for delivery what foca receives;
//! - [`QueryRun`]: the originator's side of one query: who it addressed, who
//!   acknowledged and answered, when it is complete or timed out.
//!
//! Payload rules: an event payload up to [`INLINE_PAYLOAD`] bytes is gossiped
//! inline; a larger one, up to [`MAX_EVENT_PAYLOAD`], is gossiped as an
//! announcement ([`Payload::Fetch`]) and each member fetches the bytes over
//! TCP from the originator. A query payload is inline only
//! ([`MAX_QUERY_PAYLOAD`]). A response up to [`UDP_RESPONSE`] bytes goes back
//! in one UDP packet, a larger one (up to [`MAX_RESPONSE`]) over TCP.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::identity::{validate_name, NodeId};
use crate::tags::Tags;

/// Longest event or query name (Serf has no limit of its own; the packet has).
pub const MAX_EVENT_NAME: usize = 128;
/// Event payloads up to this many bytes are gossiped inline (Serf's default
/// `UserEventSizeLimit`).
pub const INLINE_PAYLOAD: usize = 512;
/// Largest event payload: above [`INLINE_PAYLOAD`] it is fetched over TCP.
pub const MAX_EVENT_PAYLOAD: usize = 8 * 1024;
/// Largest query payload (queries are gossiped inline only).
pub const MAX_QUERY_PAYLOAD: usize = 512;
/// Responses up to this many bytes go back in a UDP packet (Serf's default
/// `QueryResponseSizeLimit`); larger ones over TCP.
pub const UDP_RESPONSE: usize = 1024;
/// Largest response: a handler's stdout beyond it is cut (and said so).
pub const MAX_RESPONSE: usize = 64 * 1024;
/// Slots of the de-duplication buffers (Serf's `EventBuffer`/`QueryBuffer`).
pub const RECENT_SLOTS: u64 = 64;
/// Node names one query may address (`--node`), and tag filters.
pub const MAX_QUERY_NODES: usize = 32;
pub const MAX_QUERY_TAGS: usize = 8;
/// Longest tag filter pattern, and the compiled size a pattern may take.
pub const MAX_PATTERN_LEN: usize = 256;
const PATTERN_SIZE_LIMIT: usize = 1 << 20;
/// Longest query timeout a sender may ask for.
pub const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(300);
/// Serf's `QueryTimeoutMult`: the default timeout is gossip interval × this ×
/// ceil(log10(N + 1)).
pub const QUERY_TIMEOUT_MULT: u32 = 16;
/// Delivered messages waiting for the core to pick them up; beyond it the
/// oldest is dropped (the core drains after every packet, so only a flood
/// gets here).
const MAX_INBOX: usize = 1024;

/// Serf's default query timeout for a cluster of `members`.
pub fn default_query_timeout(gossip_interval: Duration, members: usize) -> Duration {
    let factor = ((members as f64 + 1.0).log10().ceil() as u32).max(1);
    gossip_interval * QUERY_TIMEOUT_MULT * factor
}

/// A Lamport clock, as Serf's: `time` is what the next message carries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lamport(u64);

impl Lamport {
    pub fn time(self) -> u64 {
        self.0
    }

    /// The time for a message we send; the clock moves past it.
    pub fn tick(&mut self) -> u64 {
        let t = self.0;
        self.0 += 1;
        t
    }

    /// Another node's clock reads `t`: ours is at least that from now on.
    pub fn catch_up(&mut self, t: u64) {
        self.0 = self.0.max(t);
    }

    /// A message with time `t` was seen: we are past it from now on.
    pub fn witness(&mut self, t: u64) {
        if t >= self.0 {
            self.0 = t + 1;
        }
    }
}

/// What [`Recent::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    New,
    Duplicate,
    /// Older than the buffer reaches: it may have been seen, so drop it.
    TooOld,
}

/// Serf's de-duplication buffer: [`RECENT_SLOTS`] slots indexed by Lamport
/// time, each holding the keys seen at that time.
#[derive(Debug)]
pub struct Recent<K> {
    slots: BTreeMap<u64, Vec<K>>,
}

impl<K> Default for Recent<K> {
    fn default() -> Self {
        Recent {
            slots: BTreeMap::new(),
        }
    }
}

impl<K: PartialEq> Recent<K> {
    /// Records `key` at `ltime` unless seen or too old; `clock` is the
    /// receiver's clock before witnessing `ltime`.
    pub fn admit(&mut self, clock: u64, ltime: u64, key: K) -> Admit {
        if clock > RECENT_SLOTS && ltime < clock - RECENT_SLOTS {
            return Admit::TooOld;
        }
        let slot = self.slots.entry(ltime).or_default();
        if slot.contains(&key) {
            return Admit::Duplicate;
        }
        slot.push(key);
        // Keep the newest slots only.
        while self.slots.len() as u64 > RECENT_SLOTS {
            self.slots.pop_first();
        }
        Admit::New
    }
}

/// Where an event's payload is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    Inline(Vec<u8>),
    /// `len` bytes, to fetch over TCP from the originator at `from`.
    Fetch {
        len: u32,
        from: SocketAddr,
    },
}

/// A user event (`shoal event NAME PAYLOAD`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    pub ltime: u64,
    /// The node that sent it.
    pub origin: String,
    pub name: String,
    /// Whether handlers may see only the latest of several with this name.
    pub coalesce: bool,
    pub payload: Payload,
}

/// A query (`shoal query NAME PAYLOAD`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    pub ltime: u64,
    /// Random, with `origin` it names the query.
    pub id: u64,
    pub origin: String,
    /// Where acknowledgements and responses go (UDP, or TCP when large).
    pub reply_to: SocketAddr,
    pub name: String,
    pub payload: Vec<u8>,
    /// Only these nodes answer (empty: every node).
    pub nodes: Vec<String>,
    /// Only nodes whose tag matches each (name, regex) answer.
    pub tags: Vec<(String, String)>,
    /// Whether addressed nodes acknowledge receipt.
    pub ack: bool,
    pub timeout_ms: u64,
}

/// What a query asks, before it is sent ([`crate::node::Core::query`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuerySpec {
    pub name: String,
    pub payload: Vec<u8>,
    pub nodes: Vec<String>,
    pub tags: Vec<(String, String)>,
    pub ack: bool,
    pub timeout: Duration,
}

/// One custom broadcast, as foca carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Broadcast {
    Event(UserEvent),
    Query(Query),
}

/// An answer to a query, sent to [`Query::reply_to`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    pub ltime: u64,
    pub from: String,
    pub kind: ReplyKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyKind {
    /// The query reached this node and it is addressed.
    Ack,
    /// A handler's output.
    Response(Vec<u8>),
    /// No handler takes this query here: no response will come. Lets the
    /// originator finish before its timeout.
    NoResponse,
}

/// Why an event or query was refused (by us before sending, or on receipt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserError {
    Name(String),
    PayloadTooLarge { len: usize, max: usize },
    Filter(String),
    Timeout(Duration),
    Encode(String),
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserError::Name(e) => f.write_str(e),
            UserError::PayloadTooLarge { len, max } => {
                write!(f, "payload of {len} bytes exceeds the limit of {max} bytes")
            }
            UserError::Filter(e) => write!(f, "bad filter: {e}"),
            UserError::Timeout(d) => write!(
                f,
                "timeout {d:?} is out of range (more than 0, at most {MAX_QUERY_TIMEOUT:?})"
            ),
            UserError::Encode(e) => write!(f, "cannot encode: {e}"),
        }
    }
}

impl std::error::Error for UserError {}

/// An event or query name: 1-[`MAX_EVENT_NAME`] printable bytes, no
/// whitespace, `:`, `,` or `=` (those separate handler filters).
pub fn validate_event_name(name: &str) -> Result<(), UserError> {
    if name.is_empty() || name.len() > MAX_EVENT_NAME {
        return Err(UserError::Name(format!(
            "name {name:?} must be 1-{MAX_EVENT_NAME} bytes long"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, ':' | ',' | '='))
    {
        return Err(UserError::Name(format!(
            "name {name:?} may not contain {c:?} (no whitespace, ':', ',' or '=')"
        )));
    }
    Ok(())
}

fn compile(pattern: &str) -> Result<regex::Regex, UserError> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(UserError::Filter(format!(
            "tag pattern longer than {MAX_PATTERN_LEN} bytes"
        )));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| UserError::Filter(format!("tag pattern {pattern:?}: {e}")))
}

/// The filters of a query: which nodes it addresses (Serf's `-node` and
/// `-tag`). Tag patterns match anywhere in the value, as Serf's.
#[derive(Debug, Clone, Default)]
pub struct QueryFilter {
    pub nodes: Vec<String>,
    tags: Vec<(String, regex::Regex)>,
}

impl QueryFilter {
    pub fn new(nodes: &[String], tags: &[(String, String)]) -> Result<QueryFilter, UserError> {
        if nodes.len() > MAX_QUERY_NODES || tags.len() > MAX_QUERY_TAGS {
            return Err(UserError::Filter(format!(
                "at most {MAX_QUERY_NODES} nodes and {MAX_QUERY_TAGS} tag filters"
            )));
        }
        for n in nodes {
            validate_name(n).map_err(UserError::Filter)?;
        }
        let tags = tags
            .iter()
            .map(|(k, p)| Ok((k.clone(), compile(p)?)))
            .collect::<Result<_, UserError>>()?;
        Ok(QueryFilter {
            nodes: nodes.to_vec(),
            tags,
        })
    }

    /// Whether the node `name` with `tags` is addressed.
    pub fn matches(&self, name: &str, tags: &Tags) -> bool {
        (self.nodes.is_empty() || self.nodes.iter().any(|n| n == name))
            && self
                .tags
                .iter()
                .all(|(k, re)| tags.get(k).is_some_and(|v| re.is_match(v)))
    }
}

/// Checks what every broadcast must satisfy, ours or a peer's.
fn check(b: &Broadcast) -> Result<(), UserError> {
    match b {
        Broadcast::Event(e) => {
            validate_event_name(&e.name)?;
            validate_name(&e.origin).map_err(UserError::Name)?;
            match &e.payload {
                Payload::Inline(p) if p.len() > INLINE_PAYLOAD => Err(UserError::PayloadTooLarge {
                    len: p.len(),
                    max: INLINE_PAYLOAD,
                }),
                Payload::Fetch { len, .. } if *len as usize > MAX_EVENT_PAYLOAD => {
                    Err(UserError::PayloadTooLarge {
                        len: *len as usize,
                        max: MAX_EVENT_PAYLOAD,
                    })
                }
                _ => Ok(()),
            }
        }
        Broadcast::Query(q) => {
            validate_event_name(&q.name)?;
            validate_name(&q.origin).map_err(UserError::Name)?;
            if q.payload.len() > MAX_QUERY_PAYLOAD {
                return Err(UserError::PayloadTooLarge {
                    len: q.payload.len(),
                    max: MAX_QUERY_PAYLOAD,
                });
            }
            let timeout = Duration::from_millis(q.timeout_ms);
            if timeout.is_zero() || timeout > MAX_QUERY_TIMEOUT {
                return Err(UserError::Timeout(timeout));
            }
            QueryFilter::new(&q.nodes, &q.tags).map(|_| ())
        }
    }
}

/// Encodes a broadcast after checking it.
pub fn encode(b: &Broadcast) -> Result<Vec<u8>, UserError> {
    check(b)?;
    postcard::to_stdvec(b).map_err(|e| UserError::Encode(e.to_string()))
}

/// Decodes and checks a broadcast from a peer.
pub fn decode(data: &[u8]) -> Result<Broadcast, UserError> {
    let (b, rest): (Broadcast, _) =
        postcard::take_from_bytes(data).map_err(|e| UserError::Encode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(UserError::Encode(format!("{} trailing bytes", rest.len())));
    }
    check(&b)?;
    Ok(b)
}

/// Recent user events kept for [`UserSync`] (Serf keeps its last 64 too).
pub const RECENT_EVENTS: usize = 64;

/// Lamport clocks and recent events (encoded [`Broadcast::Event`]s), as two
/// nodes exchange them after a push-pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct UserSync {
    pub event: u64,
    pub query: u64,
    pub recent: Vec<Vec<u8>>,
}

/// A broadcast that passed de-duplication, for the core to hand out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    Event(UserEvent),
    /// A query, and whether this node is addressed by its filters.
    Query {
        query: Query,
        addressed: bool,
    },
}

/// The clocks, buffers and inbox shared by foca's broadcast handler (which
/// sees what arrives) and the core (which sends and drains).
#[derive(Debug, Default)]
pub struct UserState {
    pub event_clock: Lamport,
    pub query_clock: Lamport,
    events: Recent<(String, String, Payload)>,
    queries: Recent<(String, u64)>,
    inbox: VecDeque<Delivered>,
    /// Our name and tags, for query filters.
    name: String,
    tags: Tags,
    /// Broadcasts dropped as too old, refused, or pushed out of a full inbox.
    pub dropped: u64,
    /// The last [`RECENT_EVENTS`] user events as received (encoded).
    recent: VecDeque<Vec<u8>>,
}

impl UserState {
    pub fn new(local: &NodeId) -> UserState {
        UserState {
            name: local.name.clone(),
            tags: local.tags.clone(),
            ..UserState::default()
        }
    }

    pub fn set_local(&mut self, local: &NodeId) {
        self.name = local.name.clone();
        self.tags = local.tags.clone();
    }

    /// A peer's clocks (after a push-pull): catch up. Unlike Serf, what is
    /// still being gossiped when a node joins is not skipped: which
    /// push-pull counts as "the join" is a guess, and a wrong guess drops a
    /// live event.
    pub fn peer_clocks(&mut self, event: u64, query: u64) {
        self.event_clock.catch_up(event);
        self.query_clock.catch_up(query);
    }

    /// De-duplicates `b`; true if it is new (and queued for delivery).
    pub fn receive(&mut self, b: Broadcast) -> bool {
        let admit = match &b {
            Broadcast::Event(e) => {
                let clock = self.event_clock.time();
                let admit = self.events.admit(
                    clock,
                    e.ltime,
                    (e.origin.clone(), e.name.clone(), e.payload.clone()),
                );
                self.event_clock.witness(e.ltime);
                admit
            }
            Broadcast::Query(q) => {
                let clock = self.query_clock.time();
                let admit = self.queries.admit(clock, q.ltime, (q.origin.clone(), q.id));
                self.query_clock.witness(q.ltime);
                admit
            }
        };
        match admit {
            Admit::New => {}
            Admit::Duplicate => return false,
            Admit::TooOld => {
                self.dropped += 1;
                return false;
            }
        }
        let delivered = match b {
            Broadcast::Event(e) => Delivered::Event(e),
            Broadcast::Query(query) => {
                let addressed = QueryFilter::new(&query.nodes, &query.tags)
                    .is_ok_and(|f| f.matches(&self.name, &self.tags));
                Delivered::Query { query, addressed }
            }
        };
        if self.inbox.len() >= MAX_INBOX {
            self.inbox.pop_front();
            self.dropped += 1;
        }
        self.inbox.push_back(delivered);
        true
    }

    /// Keeps an event's encoding for [`UserSync`].
    fn keep_recent(&mut self, data: &[u8]) {
        if self.recent.len() >= RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back(data.to_vec());
    }

    /// Our clocks and recent events, for a peer.
    pub fn sync(&self) -> UserSync {
        UserSync {
            event: self.event_clock.time(),
            query: self.query_clock.time(),
            recent: self.recent.iter().cloned().collect(),
        }
    }

    /// What arrived since the last call, oldest first.
    pub fn drain(&mut self) -> Vec<Delivered> {
        self.inbox.drain(..).collect()
    }
}

/// foca's key for a broadcast in its dissemination queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BroadcastKey {
    query: bool,
    origin: String,
    name: String,
    ltime: u64,
    id: u64,
    coalesce: bool,
}

impl foca::Invalidates for BroadcastKey {
    /// The same message replaces itself; a newer coalescing event from the
    /// same origin with the same name replaces an older one still queued
    /// (handlers would only see the newer one anyway).
    fn invalidates(&self, other: &Self) -> bool {
        self == other
            || (!self.query
                && !other.query
                && self.coalesce
                && other.coalesce
                && self.origin == other.origin
                && self.name == other.name
                && self.ltime > other.ltime)
    }
}

/// foca's broadcast handler: decodes, checks and de-duplicates, sharing
/// [`UserState`] with the core.
#[derive(Debug, Clone)]
pub struct Gossip(pub Arc<Mutex<UserState>>);

impl Gossip {
    pub fn state(&self) -> std::sync::MutexGuard<'_, UserState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl foca::BroadcastHandler<NodeId> for Gossip {
    type Key = BroadcastKey;
    type Error = UserError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeId>,
    ) -> Result<Option<BroadcastKey>, UserError> {
        let b = decode(data)?;
        let key = match &b {
            Broadcast::Event(e) => BroadcastKey {
                query: false,
                origin: e.origin.clone(),
                name: e.name.clone(),
                ltime: e.ltime,
                id: 0,
                coalesce: e.coalesce,
            },
            Broadcast::Query(q) => BroadcastKey {
                query: true,
                origin: q.origin.clone(),
                name: q.name.clone(),
                ltime: q.ltime,
                id: q.id,
                coalesce: false,
            },
        };
        let event = matches!(b, Broadcast::Event(_));
        let mut state = self.state();
        let new = state.receive(b);
        if new && event {
            state.keep_recent(data);
        }
        Ok(new.then_some(key))
    }
}

/// What a reply changed about a [`QueryRun`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryNews {
    Ack { from: String },
    Response { from: String, payload: Vec<u8> },
}

/// The originator's side of one query.
#[derive(Debug)]
pub struct QueryRun {
    pub id: u64,
    pub ltime: u64,
    /// The live members the filters addressed when it was sent.
    pub expected: BTreeSet<String>,
    acks: BTreeSet<String>,
    /// Nodes whose final word came (a response or "no response").
    answered: BTreeSet<String>,
    pub deadline: Instant,
}

impl QueryRun {
    pub fn new(q: &Query, expected: BTreeSet<String>, sent: Instant) -> QueryRun {
        QueryRun {
            id: q.id,
            ltime: q.ltime,
            expected,
            acks: BTreeSet::new(),
            answered: BTreeSet::new(),
            deadline: sent + Duration::from_millis(q.timeout_ms),
        }
    }

    /// Takes a reply; the news for the caller, if any (one ack and one
    /// response per node; repeats and replies to other queries are ignored).
    pub fn on_reply(&mut self, r: Reply) -> Option<QueryNews> {
        if r.id != self.id || r.ltime != self.ltime {
            return None;
        }
        match r.kind {
            ReplyKind::Ack => self
                .acks
                .insert(r.from.clone())
                .then_some(QueryNews::Ack { from: r.from }),
            ReplyKind::Response(payload) => {
                self.answered
                    .insert(r.from.clone())
                    .then_some(QueryNews::Response {
                        from: r.from,
                        payload,
                    })
            }
            ReplyKind::NoResponse => {
                self.answered.insert(r.from);
                None
            }
        }
    }

    /// Every addressed node has answered: nothing more is expected.
    pub fn complete(&self) -> bool {
        self.expected.iter().all(|n| self.answered.contains(n))
    }

    pub fn timed_out(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// Addressed nodes that have not answered yet.
    pub fn missing(&self) -> Vec<String> {
        self.expected
            .iter()
            .filter(|n| !self.answered.contains(*n))
            .cloned()
            .collect()
    }

    /// Nodes that acknowledged (counted apart from responses).
    pub fn acks(&self) -> usize {
        self.acks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Invalidates;

    fn event(ltime: u64, origin: &str, name: &str, payload: &[u8]) -> Broadcast {
        Broadcast::Event(UserEvent {
            ltime,
            origin: origin.into(),
            name: name.into(),
            coalesce: true,
            payload: Payload::Inline(payload.to_vec()),
        })
    }

    fn query(ltime: u64, id: u64) -> Query {
        Query {
            ltime,
            id,
            origin: "n0".into(),
            reply_to: "127.0.0.1:7946".parse().unwrap(),
            name: "uptime".into(),
            payload: vec![],
            nodes: vec![],
            tags: vec![],
            ack: true,
            timeout_ms: 1000,
        }
    }

    #[test]
    fn lamport_clocks_move_past_what_they_witness() {
        let mut c = Lamport::default();
        assert_eq!(c.tick(), 0);
        assert_eq!(c.tick(), 1);
        c.witness(10);
        assert_eq!(c.tick(), 11);
        c.witness(3);
        assert_eq!(c.time(), 12);
    }

    #[test]
    fn an_event_seen_twice_is_delivered_once() {
        let mut s = UserState::default();
        assert!(s.receive(event(5, "n1", "deploy", b"v1")));
        assert!(!s.receive(event(5, "n1", "deploy", b"v1")));
        // Same time, other payload or origin: another event.
        assert!(s.receive(event(5, "n1", "deploy", b"v2")));
        assert!(s.receive(event(5, "n2", "deploy", b"v1")));
        assert_eq!(s.drain().len(), 3);
        assert!(s.drain().is_empty());
        assert_eq!(s.event_clock.time(), 6);
    }

    #[test]
    fn a_restarted_node_catches_up_with_its_peers_clocks() {
        let mut s = UserState::default();
        s.peer_clocks(500, 40);
        assert_eq!(
            s.event_clock.tick(),
            500,
            "its first event is not old to others"
        );
        assert!(
            s.receive(event(499, "n1", "in-flight", b"")),
            "still delivered"
        );
        s.peer_clocks(600, 50);
        assert!(s.receive(event(550, "n2", "in-flight", b"")));
        assert_eq!(s.event_clock.time(), 600);
        assert_eq!(s.query_clock.time(), 50);
    }

    #[test]
    fn an_event_older_than_the_buffer_is_dropped() {
        let mut s = UserState::default();
        assert!(s.receive(event(200, "n1", "a", b"")));
        assert!(s.receive(event(200 - RECENT_SLOTS + 1, "n1", "b", b"")));
        assert!(!s.receive(event(200 - RECENT_SLOTS - 1, "n1", "c", b"")));
        assert_eq!(s.dropped, 1);
    }

    #[test]
    fn the_buffer_keeps_only_the_newest_slots() {
        let mut r: Recent<u8> = Recent::default();
        for t in 0..500 {
            assert_eq!(r.admit(t, t, 1), Admit::New);
        }
        assert!(r.slots.len() as u64 <= RECENT_SLOTS);
        assert_eq!(r.admit(500, 499, 1), Admit::Duplicate);
    }

    #[test]
    fn events_are_handed_out_in_lamport_order_of_arrival_and_clocks_agree() {
        let mut a = UserState::default();
        let mut b = UserState::default();
        let t0 = a.event_clock.tick();
        assert!(b.receive(event(t0, "a", "x", b"")));
        let t1 = b.event_clock.tick();
        assert!(t1 > t0, "an event sent after one seen is later");
        assert!(a.receive(event(t1, "b", "y", b"")));
        assert!(a.event_clock.time() > t1);
    }

    #[test]
    fn a_newer_coalescing_event_replaces_an_older_one_in_the_queue() {
        let key = |ltime, coalesce| BroadcastKey {
            query: false,
            origin: "n1".into(),
            name: "deploy".into(),
            ltime,
            id: 0,
            coalesce,
        };
        assert!(key(2, true).invalidates(&key(1, true)));
        assert!(!key(1, true).invalidates(&key(2, true)));
        assert!(!key(2, false).invalidates(&key(1, false)));
        assert!(key(1, false).invalidates(&key(1, false)));
    }

    #[test]
    fn bad_broadcasts_are_refused_with_the_reason() {
        let big = event(1, "n1", "x", &[0; INLINE_PAYLOAD + 1]);
        assert!(encode(&big).unwrap_err().to_string().contains("exceeds"));
        let bad = event(1, "n1", "a b", b"");
        assert!(encode(&bad).unwrap_err().to_string().contains("whitespace"));
        let mut q = query(1, 1);
        q.tags = vec![("role".into(), "(".into())];
        assert!(encode(&Broadcast::Query(q))
            .unwrap_err()
            .to_string()
            .contains("tag pattern"));
        let mut q = query(1, 1);
        q.timeout_ms = 0;
        assert!(encode(&Broadcast::Query(q)).is_err());
        let ok = encode(&event(1, "n1", "deploy", b"v1")).unwrap();
        assert_eq!(decode(&ok).unwrap(), event(1, "n1", "deploy", b"v1"));
        assert!(decode(&[ok.clone(), vec![0]].concat()).is_err());
    }

    #[test]
    fn query_filters_match_names_and_tag_patterns_like_serf() {
        let mut tags = Tags::new();
        tags.insert("role".into(), "web-frontend".into());
        let f = QueryFilter::new(&[], &[("role".into(), "web".into())]).unwrap();
        assert!(f.matches("n1", &tags), "unanchored, as Serf's");
        let f = QueryFilter::new(&[], &[("role".into(), "^db$".into())]).unwrap();
        assert!(!f.matches("n1", &tags));
        let f = QueryFilter::new(&[], &[("dc".into(), ".*".into())]).unwrap();
        assert!(!f.matches("n1", &tags), "a missing tag does not match");
        let f = QueryFilter::new(&["n2".into()], &[]).unwrap();
        assert!(!f.matches("n1", &tags) && f.matches("n2", &tags));
        let mut s = UserState::new(&NodeId::new(
            "n1".into(),
            "127.0.0.1:1".parse().unwrap(),
            tags,
            1,
        ));
        let mut q = query(1, 7);
        q.nodes = vec!["n2".into()];
        assert!(s.receive(Broadcast::Query(q)));
        assert!(matches!(
            s.drain()[..],
            [Delivered::Query {
                addressed: false,
                ..
            }]
        ));
    }

    fn reply(from: &str, kind: ReplyKind) -> Reply {
        Reply {
            id: 9,
            ltime: 3,
            from: from.into(),
            kind,
        }
    }

    #[test]
    fn a_query_is_complete_when_every_addressed_node_answered() {
        let t0 = Instant::now();
        let expected: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut run = QueryRun::new(&query(3, 9), expected, t0);
        assert_eq!(
            run.on_reply(reply("a", ReplyKind::Ack)),
            Some(QueryNews::Ack { from: "a".into() })
        );
        assert_eq!(run.on_reply(reply("a", ReplyKind::Ack)), None);
        assert!(run
            .on_reply(reply("a", ReplyKind::Response(b"up".to_vec())))
            .is_some());
        assert!(run
            .on_reply(reply("a", ReplyKind::Response(b"again".to_vec())))
            .is_none());
        assert!(run
            .on_reply(reply("b", ReplyKind::Response(b"up".to_vec())))
            .is_some());
        // From someone not addressed (joined since): shown, not awaited.
        assert!(run
            .on_reply(reply("z", ReplyKind::Response(vec![])))
            .is_some());
        assert!(!run.complete());
        assert_eq!(run.missing(), vec!["c".to_string()]);
        // c has no handler for it: it says so, and the query is done.
        assert_eq!(run.on_reply(reply("c", ReplyKind::NoResponse)), None);
        assert!(run.complete());
        assert_eq!(run.acks(), 1, "acks are counted apart from responses");
        // A reply to another query changes nothing.
        let mut other = reply("d", ReplyKind::Ack);
        other.id = 10;
        assert_eq!(run.on_reply(other), None);
    }

    #[test]
    fn a_query_with_a_silent_node_times_out_at_its_deadline() {
        let t0 = Instant::now();
        let expected: BTreeSet<String> = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let mut run = QueryRun::new(&query(3, 9), expected, t0);
        run.on_reply(reply("a", ReplyKind::Response(vec![])));
        assert!(!run.complete());
        assert!(!run.timed_out(t0 + Duration::from_millis(999)));
        assert!(run.timed_out(t0 + Duration::from_millis(1000)));
    }

    #[test]
    fn the_default_query_timeout_is_serfs_formula() {
        let g = Duration::from_millis(200);
        assert_eq!(default_query_timeout(g, 1), Duration::from_millis(3200));
        assert_eq!(default_query_timeout(g, 50), Duration::from_millis(6400));
        assert_eq!(default_query_timeout(g, 1000), Duration::from_millis(12800));
    }
}

//! The gossip loop: the one task that owns the [`Core`] and drives it from
//! the UDP socket, the core's timer heap, commands and push-pull results,
//! then carries out what the core asks (send, push-pull, events).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::keys::{cluster_key_op, KeyCtx};
use super::tcp::{allow_warning, count_frame_error};
use super::user::{self, PendingQuery, QueryParams, UserDelivery};
use super::{now, AgentConfig, Command, Snapshot, MAX_PENDING_MERGES};
use crate::addr;
use crate::command_error::TagsError;
use crate::core::{Core, Merge, Output, MERGE_CHUNK};
use crate::events::EventLog;
use crate::identity::now_millis;
use crate::join;
use crate::limits::WarnLimiter;
use crate::loglist;
use crate::membership::Status;
use crate::metrics::Dir;
use crate::pushpull::{self, FrameError};
use crate::stats::Stats;
use crate::tags::{self, Tags};
use crate::userev::{self, Payload, QueryRun, ReplyKind, UserError, UserEvent};
use crate::wire::{self, DecodeError, SyncMsg, TcpMsg};
use shoal_contract::QueryLine;

/// The I/O half: owns the socket and carries out what the core asks.
pub(super) struct Node {
    pub(super) core: Core,
    pub(super) udp: Arc<UdpSocket>,
    /// Appended to here, read by the API and the handlers.
    pub(super) events: Arc<Mutex<EventLog>>,
    /// Republished after every change of the table (see [`Snapshot`]).
    pub(super) snapshot_tx: watch::Sender<Arc<Snapshot>>,
    pub(super) stats: Arc<Stats>,
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) keys: Arc<KeyCtx>,
    /// Last "wrong key?" warning per peer, so a misconfigured node is named
    /// in the log without flooding it (shared with the TCP listener).
    pub(super) auth_warned: Arc<Mutex<WarnLimiter>>,
    /// Peer states being merged, a chunk per loop turn.
    pub(super) merges: VecDeque<Merge>,
    pub(super) leave_reply: Vec<oneshot::Sender<()>>,
    /// Set when the loop must stop, and why.
    pub(super) end: Option<LoopEnd>,
    pub(super) started: Instant,
    pub(super) synced: bool,
    /// Published after [`Snapshot::synced`], so a client woken by it reads a synced table.
    pub(super) synced_tx: watch::Sender<bool>,
    /// A tags-file write is in flight (off the loop); tag changes asked for
    /// meanwhile wait in `tags_queued`, so each is merged onto the last.
    pub(super) tags_saving: bool,
    pub(super) tags_queued: VecDeque<TagChange>,
    /// User events and queries for the handlers.
    pub(super) user_tx: tokio::sync::broadcast::Sender<Arc<UserDelivery>>,
    /// Queries this node sent, by id, until complete or timed out.
    pub(super) queries: std::collections::HashMap<u64, PendingQuery>,
    pub(super) cfg: AgentConfig,
}

/// Why the gossip loop stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoopEnd {
    /// A graceful leave finished ([`super::Handle::leave`]).
    Left,
    /// Another live node holds this node's name with a newer generation: this
    /// node stopped gossiping for good. The reason says who and what to do.
    NameTaken(String),
    /// Every handle and sender of commands is gone.
    Closed,
}

/// A tag change waiting for the one being saved.
pub(super) struct TagChange {
    set: Tags,
    delete: Vec<String>,
    reply: oneshot::Sender<Result<Tags, TagsError>>,
}

impl Node {
    pub(super) async fn run(&mut self, mut commands: mpsc::Receiver<Command>) -> LoopEnd {
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
                _ = tokio::time::sleep_until(next_timer) => {
                    self.stats.metrics.timer_lag(Instant::now().saturating_duration_since(next_timer));
                    self.core.on_timers(now());
                }
                command = commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => return LoopEnd::Closed,
                },
                _ = tick.tick() => {
                    self.core.on_tick(now());
                    self.expire_queries();
                    if self.started.elapsed() >= self.cfg.sync_timeout {
                        self.mark_synced("no push-pull with a peer within --sync-timeout: serving the table as it is (a one-node cluster?)");
                    }
                }
                // Ready at once while a merge is pending; select! picks among
                // ready branches at random, so packets and timers interleave.
                _ = std::future::ready(()), if !self.merges.is_empty() => self.merge_chunk(),
            }
            self.carry_out();
            if let Some(end) = self.end.take() {
                return end;
            }
        }
    }

    fn on_datagram(&mut self, data: &[u8], from: SocketAddr) {
        Stats::add(&self.stats.packets_in, 1);
        Stats::add(&self.stats.bytes_in, data.len() as u64);
        self.stats.metrics.udp(Dir::In, data.len());
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
                self.stats.metrics.dropped_packet(&e);
                self.warn_auth(from, &e.to_string());
            }
            Err(e) => {
                Stats::add(&self.stats.dropped_in, 1);
                self.stats.metrics.dropped_packet(&e);
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
            self.stats.metrics.dropped("busy");
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
            Command::Resolved { addrs, join_round } => {
                self.core.contact(&addrs, join_round, now());
            }
            Command::SetTags { set, delete, reply } => {
                let change = TagChange { set, delete, reply };
                if self.tags_saving {
                    self.tags_queued.push_back(change);
                } else {
                    self.change_tags(change);
                }
            }
            Command::TagsSaved { next, saved, reply } => {
                self.tags_saving = false;
                let result =
                    saved.and_then(|()| self.core.set_tags(next, now()).map_err(TagsError::Node));
                let _ = reply.send(result);
                while !self.tags_saving {
                    let Some(change) = self.tags_queued.pop_front() else {
                        break;
                    };
                    self.change_tags(change);
                }
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
            Command::UserEvent {
                name,
                payload,
                coalesce,
                reply,
            } => {
                let sent = self.core.user_event(&name, payload, coalesce, now());
                if let Ok(ltime) = &sent {
                    info!(event = %name, ltime, coalesce, "user event sent");
                }
                let _ = reply.send(sent);
            }
            Command::Query {
                params,
                lines,
                reply,
            } => {
                let _ = reply.send(self.send_query(params, lines));
            }
            Command::Respond { query, kind } => self.core.respond(&query, kind),
            Command::ReplyIn(r) => self.on_reply(r),
            Command::Clocks { theirs, reply } => {
                let ours = self.core.user_sync();
                self.core.peer_sync(theirs, now());
                if let Some(reply) = reply {
                    let _ = reply.send(ours);
                }
            }
            Command::FetchPayload { ltime, name, reply } => {
                let _ = reply.send(self.core.kept_payload(ltime, &name));
            }
            Command::KeyOp { op, reply } => {
                let peers: Vec<(String, SocketAddr)> = self
                    .core
                    .records()
                    .filter(|r| r.status.is_active() && r.id.name != self.core.local().name)
                    .map(|r| (r.id.name.clone(), r.id.addr))
                    .collect();
                let keys = self.keys.clone();
                let stats = self.stats.clone();
                tokio::spawn(async move {
                    let _ = reply.send(cluster_key_op(keys, op, peers, stats).await);
                });
            }
        }
    }

    /// Sends a query and keeps its run until complete or timed out.
    fn send_query(
        &mut self,
        p: QueryParams,
        lines: tokio::sync::mpsc::UnboundedSender<QueryLine>,
    ) -> Result<(), UserError> {
        let timeout = p.timeout.unwrap_or_else(|| {
            userev::default_query_timeout(
                self.cfg.profile.timing().gossip_interval,
                self.core.count(Status::Alive) + self.core.count(Status::Suspect),
            )
        });
        let sent = std::time::Instant::now();
        let spec = userev::QuerySpec {
            name: p.name,
            payload: p.payload,
            nodes: p.nodes,
            tags: p.tags,
            ack: p.ack,
            timeout,
        };
        let (query, expected) = self.core.query(spec, now())?;
        info!(query = %query.name, ltime = query.ltime, addressed = expected.len(), ?timeout, "query sent");
        let _ = lines.send(QueryLine::Started {
            name: query.name.clone(),
            ltime: query.ltime,
            timeout_ms: query.timeout_ms,
            addressed: expected.iter().cloned().collect(),
        });
        let run = QueryRun::new(&query, expected, tokio::time::Instant::now().into_std());
        let pending = PendingQuery {
            run,
            lines,
            sent,
            responses: 0,
            acks: 0,
        };
        if pending.run.complete() {
            pending.finish();
        } else {
            self.queries.insert(query.id, pending);
        }
        Ok(())
    }

    /// A reply to one of our queries (UDP or TCP).
    fn on_reply(&mut self, r: userev::Reply) {
        let id = r.id;
        let Some(q) = self.queries.get_mut(&id) else {
            debug!(from = %r.from, "reply to a query that is over (or not ours)");
            return;
        };
        if q.on_reply(r) {
            q.finish();
            self.queries.remove(&id);
        }
    }

    /// Ends the queries whose timeout passed or whose asker went away.
    fn expire_queries(&mut self) {
        let now = tokio::time::Instant::now().into_std();
        self.queries.retain(|_, q| {
            if q.abandoned() {
                return false;
            }
            if q.run.timed_out(now) {
                q.finish();
                return false;
            }
            true
        });
    }

    /// A user event for the handlers; a large payload is fetched first.
    fn deliver_event(&mut self, e: UserEvent) {
        let UserEvent {
            ltime,
            origin,
            name,
            coalesce,
            payload,
        } = e;
        let mut delivery = UserDelivery::Event {
            name,
            ltime,
            origin,
            coalesce,
            payload: Vec::new(),
        };
        match payload {
            Payload::Inline(p) => {
                if let UserDelivery::Event { payload, .. } = &mut delivery {
                    *payload = p;
                }
                let _ = self.user_tx.send(Arc::new(delivery));
            }
            Payload::Fetch { len, from } => {
                if let UserDelivery::Event { payload, name, .. } = &mut delivery {
                    if from == self.core.local().addr {
                        // Our own: no need to ask ourselves over TCP.
                        if let Some(p) = self.core.kept_payload(ltime, name) {
                            *payload = p;
                            let _ = self.user_tx.send(Arc::new(delivery));
                        }
                        return;
                    }
                }
                let ring = pushpull::snapshot(&self.keys.ring);
                user::fetch_and_deliver(
                    from,
                    len,
                    delivery,
                    ring,
                    self.user_tx.clone(),
                    self.stats.clone(),
                );
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

    /// Merges a tag change onto our tags. With a tags file, the new tags are
    /// saved first, off the loop (the disk may be slow; probes must still be
    /// answered), and applied when [`Command::TagsSaved`] comes back: a change
    /// that cannot be saved is refused whole and the tags stay as they were.
    fn change_tags(&mut self, change: TagChange) {
        let TagChange { set, delete, reply } = change;
        let current = &self.core.local().tags;
        let next = match tags::merged(current, set, &delete) {
            Ok(next) => next,
            Err(e) => {
                let _ = reply.send(Err(TagsError::Invalid(e)));
                return;
            }
        };
        let path = match &self.cfg.tags_file {
            Some(path) if next != *current => path.clone(),
            _ => {
                let _ = reply.send(self.core.set_tags(next, now()).map_err(TagsError::Node));
                return;
            }
        };
        self.tags_saving = true;
        let commands = self.commands.clone();
        tokio::spawn(async move {
            let copy = next.clone();
            let shown = path.display().to_string();
            let saved =
                tokio::task::spawn_blocking(move || crate::persist::save_tags(&path, &copy))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                    .map_err(|e| TagsError::Save(format!("cannot write tags file {shown}: {e}")));
            let _ = commands
                .send(Command::TagsSaved { next, saved, reply })
                .await;
        });
    }

    /// Carries out the core's outputs and refreshes what the API reads.
    pub(super) fn carry_out(&mut self) {
        let mut events = Vec::new();
        loop {
            let outputs = self.core.take_outputs();
            if outputs.is_empty() {
                break;
            }
            for output in outputs {
                match output {
                    Output::Send { to, packet } => self.send_raw(to, &packet),
                    Output::Event(e) => {
                        self.stats.metrics.member_event(e.kind.as_str());
                        events.push(e);
                    }
                    Output::JoinRound => self.join_round(),
                    Output::PushPull { to } => self.push_pull_with(to),
                    Output::SeedPushPull { exclude } => self.seed_push_pull(exclude),
                    Output::LeaveDone => {
                        for reply in self.leave_reply.drain(..) {
                            let _ = reply.send(());
                        }
                        self.end = Some(LoopEnd::Left);
                    }
                    Output::NameTaken { reason } => {
                        // Stop the loop; the lifecycle stops the services and
                        // exits non-zero, saying why.
                        self.end = Some(LoopEnd::NameTaken(reason));
                    }
                    Output::UserEvent(e) => self.deliver_event(e),
                    Output::Query(q) => {
                        if self.user_tx.receiver_count() == 0 {
                            // No handlers at all: say so, so the asker need not wait.
                            self.core.respond(&q, ReplyKind::NoResponse);
                        } else {
                            let _ = self.user_tx.send(Arc::new(UserDelivery::Query(q)));
                        }
                    }
                    Output::QueryReply(r) => self.on_reply(r),
                    Output::ReplyTcp { to, reply } => {
                        user::reply_over_tcp(
                            to,
                            reply,
                            pushpull::snapshot(&self.keys.ring),
                            self.stats.clone(),
                        );
                    }
                }
            }
        }
        let rtts = self.core.take_probe_rtts();
        self.stats
            .metrics
            .protocol(&self.core.counters().counts, &rtts);
        self.stats.members_refused.store(
            self.core.members_refused(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let wall = now_millis();
        let index = {
            let mut log = self.events.lock().unwrap_or_else(|p| p.into_inner());
            for e in &events {
                log.push(e, wall);
            }
            log.last_index()
        };
        let published = self.snapshot_tx.borrow().clone();
        let newly_synced = self.synced && !published.synced;
        if !events.is_empty() || published.joined != self.core.joined() || newly_synced {
            self.publish(index, &published.run);
        }
        if newly_synced {
            self.synced_tx.send_replace(true);
        }
    }

    /// Publishes the table as it is now. Built here, once per change; the
    /// readers share it and serialise it without holding anything of ours.
    fn publish(&self, index: u64, run: &Arc<str>) {
        let snapshot = Snapshot {
            local: self.core.local().clone(),
            members: self.core.records().map(crate::events::member_of).collect(),
            counts: [Status::Alive, Status::Suspect, Status::Failed, Status::Left]
                .into_iter()
                .map(|s| (s.as_str(), self.core.count(s)))
                .collect(),
            index,
            joined: self.core.joined(),
            run: run.clone(),
            synced: self.synced,
        };
        self.snapshot_tx.send_replace(Arc::new(snapshot));
    }

    /// Resolves the join targets off the loop; the answer comes back as `Resolved`.
    /// The first round takes the addresses resolved at start, if any.
    fn join_round(&mut self) {
        let targets = self.cfg.join.clone();
        let commands = self.commands.clone();
        let at_start = std::mem::take(&mut self.cfg.first_join);
        tokio::spawn(async move {
            let addrs = if at_start.is_empty() {
                addr::resolve_all(&targets).await
            } else {
                at_start
            };
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
                    join_round: true,
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
                    join_round: false,
                })
                .await;
        });
    }

    fn push_pull_with(&self, addr: SocketAddr) {
        let ours = TcpMsg::Sync(self.core.sync_state());
        let clocks = self.core.user_sync();
        let commands = self.commands.clone();
        let stats = self.stats.clone();
        let ring = pushpull::snapshot(&self.keys.ring);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = pushpull::exchange(addr, ours, ring.clone(), &stats.metrics).await;
            let synced = matches!(result, Ok(TcpMsg::Sync(_)));
            stats.metrics.push_pull(Dir::Out, synced, started.elapsed());
            match result {
                Ok(TcpMsg::Sync(remote)) => {
                    Stats::add(&stats.push_pulls, 1);
                    let _ = commands.send(Command::PushPullOut { remote }).await;
                    match pushpull::exchange(addr, TcpMsg::Clocks(clocks), ring, &stats.metrics)
                        .await
                    {
                        Ok(TcpMsg::Clocks(theirs)) => {
                            let _ = commands
                                .send(Command::Clocks {
                                    theirs,
                                    reply: None,
                                })
                                .await;
                        }
                        Ok(_) => debug!(%addr, "clock exchange answered with another message"),
                        Err(e) => debug!(%addr, error = %e, "clock exchange failed"),
                    }
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
                self.stats.metrics.udp(Dir::Out, n);
            }
            Err(e) => {
                Stats::add(&self.stats.dropped_out, 1);
                self.stats.metrics.send_error();
                debug!(%to, error = %e, "send failed");
            }
        }
    }
}

//! The in-memory test network, shared by the core's own tests, the
//! simulator (`sim`) and the benches, so a cluster on virtual time is
//! written once.
//!
//! - [`addr_of`], [`name_of`], [`id_of`]: the identities of member `i`
//!   (10.x.y.z:7946, never a real socket);
//! - [`WALL0_MS`] and [`virtual_now`]: the virtual clocks a core is given;
//! - [`converged`]: the full member list, as after a push-pull with everyone;
//! - [`Net`]: cores on a perfect network in lock step (every output carried
//!   out at once, then time moves 10 ms), with dead and SWIM-deaf members
//!   and an optional tap on what one member receives. The simulator adds
//!   latency, loss, partitions and traffic counters on an event queue of its
//!   own, over the same identities and clocks.
//!
//! Behind `#[cfg(test)]` or the `testing` feature: test code, not protocol.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::identity::NodeId;
use crate::membership::Status;
use crate::node::{Core, CoreConfig, Now, Output};
use crate::profile::Profile;
use crate::tags::Tags;
use crate::userev::{Query, Reply, ReplyKind, UserEvent};
use crate::wire::{self, Packet, SyncEntry, SyncMsg, SyncState};

/// Wall-clock base for the cores' `wall_ms`: any fixed value later than
/// today's real clock, so no generation looks far ahead of the virtual clock
/// (the cores refuse those, see `identity::MAX_GENERATION_AHEAD_MS`).
/// 2096-10-02.
pub const WALL0_MS: u64 = 4_000_000_000_000;

/// The address of member `i`: 10.x.y.z:7946 (member 0 is 10.0.0.1).
pub fn addr_of(i: usize) -> SocketAddr {
    let n = (i + 1) as u32;
    let ip = Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8);
    SocketAddr::V4(SocketAddrV4::new(ip, 7946))
}

/// The name of member `i`: `n{i}`.
pub fn name_of(i: usize) -> String {
    format!("n{i}")
}

/// Member `i`'s first identity: generation 1, no tags.
pub fn id_of(i: usize) -> NodeId {
    NodeId {
        name: name_of(i),
        addr: addr_of(i),
        generation: 1,
        tags: Tags::new(),
    }
}

/// The clocks at `elapsed` after `t0`: monotonic from `t0`, wall from
/// [`WALL0_MS`].
pub fn virtual_now(t0: Instant, elapsed: Duration) -> Now {
    Now {
        mono: t0 + elapsed,
        wall_ms: WALL0_MS + elapsed.as_millis() as u64,
    }
}

/// Every one of `ids` alive, as `from` would send it in a push-pull.
pub fn converged(from: &NodeId, ids: &[NodeId]) -> SyncMsg {
    SyncMsg {
        from: from.clone(),
        entries: ids
            .iter()
            .map(|id| SyncEntry {
                id: id.clone(),
                incarnation: 0,
                state: SyncState::Alive,
            })
            .collect(),
    }
}

/// The settings of a test core: LAN timers, no join targets, a 1 h reap, a
/// 2 s leave timeout.
pub fn test_config() -> CoreConfig {
    CoreConfig {
        timing: Profile::Lan.timing(),
        has_join_targets: false,
        retry_max: Duration::from_secs(5),
        reap_after: Duration::from_secs(3600),
        leave_timeout: Duration::from_secs(2),
        replay: false,
    }
}

/// Cores on a perfect in-memory network, on virtual time, in lock step.
pub struct Net {
    pub cores: Vec<Core>,
    t0: Instant,
    wall0_ms: u64,
    /// Virtual time since the start.
    pub now_ms: u64,
    /// Cores whose packets are dropped, both ways (a dead node).
    pub dead: Vec<usize>,
    /// Cores that receive no SWIM packet (only shoal's own kinds).
    pub deaf_to_swim: Vec<usize>,
    /// When set to `Some(i)`, the packets delivered to core `i` are kept in
    /// [`Net::tapped`] (at most [`Net::TAP_LIMIT`]).
    pub tap: Option<usize>,
    pub tapped: Vec<Vec<u8>>,
    /// Per core: the user events it handed out, with the virtual time (ms).
    pub user_events: Vec<Vec<(u64, UserEvent)>>,
    /// Per core: the queries that addressed it; answered at once with
    /// [`Net::answer`] when that is set.
    pub queries: Vec<Vec<(u64, Query)>>,
    pub answer: Option<fn(usize, &Query) -> ReplyKind>,
    /// Per core: the query replies it received.
    pub replies: Vec<Vec<(u64, Reply)>>,
}

impl Net {
    /// Most packets [`Net::tap`] keeps.
    pub const TAP_LIMIT: usize = 5000;

    /// `n` cores [`id_of`]`(i)` with [`test_config`], core `i` seeded with `i`.
    pub fn new(n: usize) -> Net {
        Net::of((0..n).map(id_of).collect(), test_config(), 0, WALL0_MS)
    }

    /// Cores with these identities and settings, core `i` seeded with
    /// `first_seed + i`, the wall clock starting at `wall0_ms`.
    pub fn of(ids: Vec<NodeId>, cfg: CoreConfig, first_seed: u64, wall0_ms: u64) -> Net {
        let t0 = Instant::now();
        let now = Now {
            mono: t0,
            wall_ms: wall0_ms,
        };
        let cores: Vec<Core> = ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| {
                let rng = StdRng::seed_from_u64(first_seed + i as u64);
                Core::new(id, cfg.clone(), rng, now)
            })
            .collect();
        let n = cores.len();
        Net {
            user_events: vec![Vec::new(); n],
            queries: vec![Vec::new(); n],
            answer: None,
            replies: vec![Vec::new(); n],
            cores,
            t0,
            wall0_ms,
            now_ms: 0,
            dead: Vec::new(),
            deaf_to_swim: Vec::new(),
            tap: None,
            tapped: Vec::new(),
        }
    }

    /// `n` cores that joined through the first one, one virtual second later.
    pub fn joined(n: usize) -> Net {
        let mut net = Net::new(n);
        net.join_all_through_first();
        net
    }

    /// Every core but the first contacts the first; then one virtual second.
    pub fn join_all_through_first(&mut self) {
        let seed = self.cores[0].local().addr;
        let now = self.now();
        for core in self.cores.iter_mut().skip(1) {
            core.contact(&[seed], true, now);
        }
        for _ in 0..100 {
            self.step();
        }
    }

    /// The clocks now.
    pub fn now(&self) -> Now {
        Now {
            mono: self.t0 + Duration::from_millis(self.now_ms),
            wall_ms: self.wall0_ms + self.now_ms,
        }
    }

    /// Delivers every output instantly, then advances time by 10 ms.
    pub fn step(&mut self) {
        let now = self.now();
        for i in 0..self.cores.len() {
            self.cores[i].on_timers(now);
            if self.now_ms.is_multiple_of(100) {
                self.cores[i].on_tick(now);
            }
        }
        let mut queue: Vec<(usize, Output)> = Vec::new();
        for (i, c) in self.cores.iter_mut().enumerate() {
            queue.extend(c.take_outputs().into_iter().map(|o| (i, o)));
        }
        let mut delivered = 0;
        while let Some((from, out)) = queue.pop() {
            delivered += 1;
            assert!(
                delivered < 100_000,
                "packet storm: 100,000 messages within one 10 ms step"
            );
            if self.dead.contains(&from) {
                continue;
            }
            let from_addr = self.cores[from].local().addr;
            match out {
                Output::Send { to, packet } => {
                    if let Some(j) = self.index_of(to) {
                        let swim = matches!(wire::decode_packet(&packet), Ok(Packet::Foca(_)));
                        let dropped =
                            self.dead.contains(&j) || (swim && self.deaf_to_swim.contains(&j));
                        if !dropped {
                            if self.tap == Some(j) && self.tapped.len() < Self::TAP_LIMIT {
                                self.tapped.push(packet.clone());
                            }
                            let _ = self.cores[j].on_packet(&packet, from_addr, now);
                            queue.extend(self.cores[j].take_outputs().into_iter().map(|o| (j, o)));
                        }
                    }
                }
                Output::PushPull { to } => {
                    if let Some(j) = self.index_of(to) {
                        let theirs = self.cores[j].sync_state();
                        let ours = self.cores[from].sync_state();
                        self.cores[j].apply_remote(ours, now);
                        self.cores[from].apply_remote(theirs, now);
                        // Then the clocks and recent user events, as the
                        // agent's TCP exchange does after a push-pull.
                        let mine = self.cores[from].user_sync();
                        let yours = self.cores[j].user_sync();
                        self.cores[j].peer_sync(mine, now);
                        self.cores[from].peer_sync(yours, now);
                        for k in [j, from] {
                            queue.extend(self.cores[k].take_outputs().into_iter().map(|o| (k, o)));
                        }
                    }
                }
                Output::UserEvent(e) => self.user_events[from].push((self.now_ms, e)),
                Output::QueryReply(r) => self.replies[from].push((self.now_ms, r)),
                Output::ReplyTcp { to, reply } => {
                    if let Some(j) = self.index_of(to) {
                        self.replies[j].push((self.now_ms, reply));
                    }
                }
                Output::Query(q) => {
                    if let Some(answer) = self.answer {
                        let kind = answer(from, &q);
                        self.cores[from].respond(&q, kind);
                        queue.extend(
                            self.cores[from]
                                .take_outputs()
                                .into_iter()
                                .map(|o| (from, o)),
                        );
                    }
                    self.queries[from].push((self.now_ms, q));
                }
                _ => {}
            }
        }
        self.now_ms += 10;
    }

    /// Adds a core with identity `id` (seeded with its index) that has not
    /// joined anyone; returns its index.
    pub fn add(&mut self, id: NodeId, cfg: CoreConfig) -> usize {
        let i = self.cores.len();
        let core = Core::new(id, cfg, StdRng::seed_from_u64(i as u64), self.now());
        self.cores.push(core);
        self.user_events.push(Vec::new());
        self.queries.push(Vec::new());
        self.replies.push(Vec::new());
        i
    }

    /// The core with this address.
    pub fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.cores.iter().position(|c| c.local().addr == addr)
    }

    /// What core `at` records about `name`.
    pub fn status(&self, at: usize, name: &str) -> Option<Status> {
        self.cores[at].record(name).map(|r| r.status)
    }
}

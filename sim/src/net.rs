//! The simulated cluster: N real [`Core`]s on a virtual clock, one event
//! queue, and a network with latency, jitter, loss and partitions.
//!
//! Everything that varies comes from one seeded RNG (the network) plus one
//! seeded RNG per core, and ties in the queue are broken by insertion order,
//! so a run is a pure function of its [`SimConfig`].
//!
//! Built on the core's shared test network (`shoal_core::testing`): the
//! same identities, virtual clocks and converged table as the core's tests
//! and the benches; this module adds the event queue, latency, loss,
//! partitions and traffic counters.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shoal_core::identity::NodeId;
use shoal_core::membership::{EventKind, Status};
use shoal_core::node::{Core, CoreConfig, Now, Output};
use shoal_core::profile::Timing;
pub use shoal_core::testing::{addr_of, id_of, name_of};
use shoal_core::testing::{converged, virtual_now};
use shoal_core::wire::{SyncMsg, FRAME_HEADER};

/// The simulated network.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    /// One-way base latency of every link.
    pub latency: Duration,
    /// Uniform extra delay in `[0, jitter)` per packet.
    pub jitter: Duration,
    /// Probability (0..1) that a UDP packet is dropped. TCP push-pull is
    /// reliable (it retransmits) but is cut by partitions like UDP.
    pub loss: f64,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency: Duration::from_micros(500),
            jitter: Duration::from_micros(500),
            loss: 0.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Members at the start (already converged: each knows all the others).
    pub n: usize,
    pub seed: u64,
    pub timing: Timing,
    pub net: NetConfig,
}

/// One member event as a core emitted it, at virtual time `t_us`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub t_us: u64,
    pub observer: usize,
    pub kind: EventKind,
    pub subject: String,
}

/// Traffic counters (sender side, payload bytes; no IP/UDP/TCP headers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub udp_msgs: u64,
    pub udp_bytes: u64,
    pub udp_dropped: u64,
    pub push_pulls: u64,
    pub tcp_bytes: u64,
}

enum Ev {
    Deliver {
        to: usize,
        from: SocketAddr,
        packet: Vec<u8>,
    },
    Timer {
        node: usize,
    },
    Tick {
        node: usize,
    },
    PushPull {
        a: usize,
        b: usize,
    },
}

/// Queue entry: (due µs, insertion order) decides; the event rides along.
struct Entry(u64, u64, Ev);

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(o.0, o.1))
    }
}

struct Node {
    core: Core,
    up: bool,
    /// The due time of the timer event currently queued for this core.
    timer_at: Option<u64>,
}

pub struct Sim {
    t0: Instant,
    now_us: u64,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    queue: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    rng: StdRng,
    cfg: SimConfig,
    /// Partition group per node; packets between different groups are dropped.
    groups: Option<Vec<u8>>,
    seeds: Vec<SocketAddr>,
    pub traffic: Traffic,
    pub log: Vec<Observed>,
    /// Whether member events are recorded in `log`.
    pub recording: bool,
    /// User events handed out: (virtual µs, observer, event name).
    pub user_log: Vec<(u64, usize, String)>,
}

impl Sim {
    /// A converged cluster of `cfg.n` members: every core is given the full
    /// member list (as after a push-pull with everyone), then runs from there.
    pub fn new(cfg: SimConfig) -> Sim {
        let mut sim = Sim {
            t0: Instant::now(),
            now_us: 0,
            nodes: Vec::with_capacity(cfg.n + 1),
            by_addr: HashMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(cfg.seed ^ 0x5eed_0f51_40a1),
            groups: None,
            seeds: (0..cfg.n.min(3)).map(addr_of).collect(),
            traffic: Traffic::default(),
            log: Vec::new(),
            recording: false,
            user_log: Vec::new(),
            cfg,
        };
        let ids: Vec<NodeId> = (0..sim.cfg.n).map(id_of).collect();
        for id in &ids {
            sim.spawn(id.clone());
        }
        if sim.cfg.n > 1 {
            let all = converged(&ids[0], &ids);
            let now = sim.now();
            for i in 0..sim.nodes.len() {
                let mut msg = all.clone();
                // Any member other than the receiver can be the sender.
                msg.from = ids[if i == 0 { 1 } else { 0 }].clone();
                sim.nodes[i].core.apply_remote(msg, now);
                sim.drain(i);
            }
        }
        sim
    }

    fn spawn(&mut self, id: NodeId) -> usize {
        let i = self.nodes.len();
        let cfg = CoreConfig {
            timing: self.cfg.timing,
            has_join_targets: true,
            retry_max: Duration::from_secs(10),
            reap_after: Duration::from_secs(24 * 3600),
            leave_timeout: Duration::from_secs(5),
        };
        let rng =
            StdRng::seed_from_u64(self.cfg.seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
        let core = Core::new(id.clone(), cfg, rng, self.now());
        self.by_addr.insert(id.addr, i);
        self.nodes.push(Node {
            core,
            up: true,
            timer_at: None,
        });
        // Ticks start at a random phase, as independent processes would.
        let tick = self.cfg.timing.reconcile_interval.as_micros() as u64;
        let phase = self.rng.random_range(0..tick.max(1));
        self.push(self.now_us + phase, Ev::Tick { node: i });
        self.drain(i);
        i
    }

    pub fn now(&self) -> Now {
        virtual_now(self.t0, Duration::from_micros(self.now_us))
    }

    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].up
    }

    pub fn core(&self, i: usize) -> &Core {
        &self.nodes[i].core
    }

    /// A new member that joins through the seeds (members 0..3), as an agent
    /// started with `--join` does. Returns its index.
    pub fn join_new(&mut self) -> usize {
        let i = self.nodes.len();
        let i2 = self.spawn(id_of(i));
        debug_assert_eq!(i, i2);
        let seeds = self.seeds.clone();
        let now = self.now();
        self.nodes[i].core.contact(&seeds, true, now);
        self.drain(i);
        i
    }

    /// The member goes silent (kill -9, or its host vanished).
    /// Member `i` sends a user event (gossiped inline up to 512 B).
    pub fn user_event(&mut self, i: usize, name: &str, payload: Vec<u8>) {
        let now = self.now();
        if let Err(e) = self.nodes[i].core.user_event(name, payload, false, now) {
            panic!("user event refused: {e}");
        }
        self.drain(i);
    }

    pub fn kill(&mut self, i: usize) {
        self.nodes[i].up = false;
    }

    /// A graceful leave (SIGTERM).
    pub fn leave(&mut self, i: usize) {
        let now = self.now();
        self.nodes[i].core.begin_leave(now);
        self.drain(i);
    }

    /// Cuts the network into groups (`groups[i]` for member i; members added
    /// later are in group 0).
    pub fn partition(&mut self, groups: Vec<u8>) {
        self.groups = Some(groups);
    }

    pub fn heal(&mut self) {
        self.groups = None;
    }

    pub fn set_loss(&mut self, loss: f64) {
        self.cfg.net.loss = loss;
    }

    fn cut(&self, a: usize, b: usize) -> bool {
        match &self.groups {
            None => false,
            Some(g) => g.get(a).copied().unwrap_or(0) != g.get(b).copied().unwrap_or(0),
        }
    }

    fn push(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Entry(t, self.seq, ev)));
    }

    fn delay_us(&mut self) -> u64 {
        let base = self.cfg.net.latency.as_micros() as u64;
        let jitter = self.cfg.net.jitter.as_micros() as u64;
        base + if jitter > 0 {
            self.rng.random_range(0..jitter)
        } else {
            0
        }
    }

    /// Runs every event due up to and including `until_us`, then sets the
    /// clock there.
    pub fn run_until(&mut self, until_us: u64) {
        while let Some(Reverse(Entry(t, _, _))) = self.queue.peek() {
            if *t > until_us {
                break;
            }
            let Some(Reverse(Entry(t, _, ev))) = self.queue.pop() else {
                break;
            };
            self.now_us = t;
            self.handle(t, ev);
        }
        self.now_us = self.now_us.max(until_us);
    }

    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now_us + d.as_micros() as u64);
    }

    /// Runs in `step` slices until `done` holds or `limit` passed; returns
    /// whether it held.
    pub fn run_while_not(
        &mut self,
        limit: Duration,
        step: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> bool {
        let end = self.now_us + limit.as_micros() as u64;
        while self.now_us < end {
            if done(self) {
                return true;
            }
            let next = (self.now_us + step.as_micros() as u64).min(end);
            self.run_until(next);
        }
        done(self)
    }

    fn handle(&mut self, t: u64, ev: Ev) {
        let now = self.now();
        match ev {
            Ev::Deliver { to, from, packet } => {
                if self.nodes[to].up {
                    let _ = self.nodes[to].core.on_packet(&packet, from, now);
                    self.drain(to);
                }
            }
            Ev::Timer { node } => {
                if self.nodes[node].timer_at != Some(t) {
                    return; // superseded by an earlier one
                }
                self.nodes[node].timer_at = None;
                if self.nodes[node].up {
                    self.nodes[node].core.on_timers(now);
                    self.drain(node);
                }
            }
            Ev::Tick { node } => {
                if self.nodes[node].up {
                    self.nodes[node].core.on_tick(now);
                    self.drain(node);
                    let tick = self.cfg.timing.reconcile_interval.as_micros() as u64;
                    self.push(t + tick.max(1), Ev::Tick { node });
                }
            }
            Ev::PushPull { a, b } => {
                if !self.nodes[a].up || !self.nodes[b].up || self.cut(a, b) {
                    return;
                }
                let ours = self.nodes[a].core.sync_state();
                let theirs = self.nodes[b].core.sync_state();
                self.traffic.push_pulls += 1;
                self.traffic.tcp_bytes += frame_len(&ours) + frame_len(&theirs);
                self.nodes[b].core.apply_remote(ours, now);
                self.drain(b);
                self.nodes[a].core.apply_remote(theirs, now);
                self.drain(a);
            }
        }
    }

    /// Carries out what core `i` asked for, then re-arms its timer.
    fn drain(&mut self, i: usize) {
        loop {
            let outs = self.nodes[i].core.take_outputs();
            if outs.is_empty() {
                break;
            }
            for out in outs {
                self.output(i, out);
            }
        }
        if let Some(due) = self.nodes[i].core.next_timer() {
            let d = due.saturating_duration_since(self.t0);
            // Round up, so the timer is due when it fires.
            let us = (d.as_nanos() as u64).div_ceil(1000).max(self.now_us);
            if self.nodes[i].timer_at.is_none_or(|a| us < a) {
                self.nodes[i].timer_at = Some(us);
                self.push(us, Ev::Timer { node: i });
            }
        }
    }

    fn output(&mut self, i: usize, out: Output) {
        if !self.nodes[i].up {
            return;
        }
        let now = self.now();
        match out {
            Output::Send { to, packet } => {
                self.traffic.udp_msgs += 1;
                self.traffic.udp_bytes += packet.len() as u64;
                let Some(&j) = self.by_addr.get(&to) else {
                    return;
                };
                let lost = self.cfg.net.loss > 0.0 && self.rng.random_bool(self.cfg.net.loss);
                if lost || self.cut(i, j) {
                    self.traffic.udp_dropped += 1;
                    return;
                }
                let at = self.now_us + self.delay_us();
                let from = self.nodes[i].core.local().addr;
                self.push(
                    at,
                    Ev::Deliver {
                        to: j,
                        from,
                        packet,
                    },
                );
            }
            Output::Event(e) => {
                if self.recording {
                    self.log.push(Observed {
                        t_us: self.now_us,
                        observer: i,
                        kind: e.kind,
                        subject: e.record.id.name.clone(),
                    });
                }
            }
            Output::JoinRound => {
                let seeds = self.seeds.clone();
                self.nodes[i].core.contact(&seeds, true, now);
            }
            Output::PushPull { to } => self.push_pull(i, to),
            Output::SeedPushPull { exclude } => {
                let rest: Vec<SocketAddr> = self
                    .seeds
                    .iter()
                    .filter(|s| !exclude.contains(s))
                    .copied()
                    .collect();
                if !rest.is_empty() {
                    let to = rest[self.rng.random_range(0..rest.len())];
                    self.push_pull(i, to);
                }
            }
            Output::UserEvent(e) => self.user_log.push((self.now_us, i, e.name)),
            // Queries are measured on real agents (bench/), not here.
            Output::Query(_) | Output::QueryReply(_) | Output::ReplyTcp { .. } => {}
            Output::LeaveDone | Output::NameTaken { .. } => self.nodes[i].up = false,
        }
    }

    fn push_pull(&mut self, a: usize, to: SocketAddr) {
        let Some(&b) = self.by_addr.get(&to) else {
            return;
        };
        if a == b {
            return;
        }
        // Connect + request + reply: about two round trips.
        let at = self.now_us + 2 * self.delay_us() + 2 * self.delay_us();
        self.push(at, Ev::PushPull { a, b });
    }

    /// Whether every member that is up sees every other member that is up as
    /// alive, and nobody else as alive: one view.
    pub fn one_view(&self) -> bool {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up)
            .collect();
        up.iter().all(|&i| {
            let core = &self.nodes[i].core;
            core.count(Status::Alive) == up.len()
                && up.iter().all(|&j| {
                    core.record(&name_of(j))
                        .is_some_and(|r| r.status == Status::Alive)
                })
        })
    }

    /// True when the cluster really is split along `groups` (group of member `i`
    /// at index `i`): every member that is up holds the up members of its own
    /// group alive and no member of another group alive.
    pub fn split_along(&self, groups: &[u8]) -> bool {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up)
            .collect();
        up.iter().all(|&i| {
            let core = &self.nodes[i].core;
            up.iter().all(|&j| {
                let alive = core
                    .record(&name_of(j))
                    .is_some_and(|r| r.status == Status::Alive);
                alive == (groups.get(i) == groups.get(j))
            })
        })
    }

    /// How many members that are up (the subject itself aside) have
    /// recorded `kind` for member `subject` at or after `since_us`.
    pub fn learned(&self, kind: EventKind, subject: usize, since_us: u64) -> usize {
        let name = name_of(subject);
        let mut seen = vec![false; self.nodes.len()];
        for o in &self.log {
            if o.t_us >= since_us && o.kind == kind && o.subject == name {
                seen[o.observer] = true;
            }
        }
        (0..self.nodes.len())
            .filter(|&i| i != subject && seen[i] && self.nodes[i].up)
            .count()
    }

    /// Members that are up, other than `except`.
    pub fn up_count_except(&self, except: usize) -> usize {
        (0..self.nodes.len())
            .filter(|&i| i != except && self.nodes[i].up)
            .count()
    }

    /// Per observer that is up (other than the subject): when it first
    /// recorded `kind` for `subject` at or after `since_us` (None: never).
    pub fn first_times(
        &self,
        kind: EventKind,
        subject_idx: usize,
        since_us: u64,
    ) -> Vec<Option<u64>> {
        let subject = name_of(subject_idx);
        let mut first: Vec<Option<u64>> = vec![None; self.nodes.len()];
        for o in &self.log {
            if o.t_us >= since_us && o.kind == kind && o.subject == subject {
                let f = &mut first[o.observer];
                if f.is_none() {
                    *f = Some(o.t_us);
                }
            }
        }
        (0..self.nodes.len())
            .filter(|&i| i != subject_idx && self.nodes[i].up)
            .map(|i| first[i])
            .collect()
    }
}

/// Bytes of a push-pull frame carrying `msg`.
pub fn frame_len(msg: &SyncMsg) -> u64 {
    (FRAME_HEADER + postcard::to_stdvec(msg).map(|v| v.len()).unwrap_or(0)) as u64
}

//! The measured scenarios, each a function of its parameters and seed.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shoal_core::membership::EventKind;
use shoal_core::profile::{Profile, Timing};

use crate::net::{NetConfig, Sim, SimConfig};
use crate::stats::percentile;

/// What every scenario shares.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub n: usize,
    pub seed: u64,
    pub timing: Timing,
    pub net: NetConfig,
}

impl Params {
    /// The LAN profile with `gossip_ms` as the gossip interval.
    pub fn lan(n: usize, seed: u64, gossip_ms: u64) -> Params {
        let mut timing = Profile::Lan.timing();
        timing.gossip_interval = Duration::from_millis(gossip_ms);
        Params {
            n,
            seed,
            timing,
            net: NetConfig::default(),
        }
    }

    fn sim(&self) -> Sim {
        Sim::new(SimConfig {
            n: self.n,
            seed: self.seed,
            timing: self.timing,
            net: self.net,
        })
    }
}

/// How one event spread: per observer, the delay from the action (ms).
#[derive(Debug, Clone, PartialEq)]
pub struct Spread {
    pub phase: &'static str,
    pub observers: usize,
    /// Delays (ms) of the observers that learned it, sorted.
    pub delays_ms: Vec<f64>,
}

impl Spread {
    pub fn missing(&self) -> usize {
        self.observers - self.delays_ms.len()
    }
    /// Time until every observer knew (None if some never did).
    pub fn all_ms(&self) -> Option<f64> {
        if self.missing() == 0 {
            self.delays_ms.last().copied().or(Some(0.0))
        } else {
            None
        }
    }
    pub fn first_ms(&self) -> f64 {
        self.delays_ms.first().copied().unwrap_or(f64::NAN)
    }
    /// The `q` quantile over all observers (a missing one counts as never).
    pub fn quantile(&self, q: f64) -> f64 {
        let k = ((q * self.observers as f64).ceil() as usize).max(1);
        self.delays_ms.get(k - 1).copied().unwrap_or(f64::INFINITY)
    }
    /// Fraction of observers that knew within `ms` of the action.
    pub fn within(&self, ms: f64) -> f64 {
        if self.observers == 0 {
            return 1.0;
        }
        self.delays_ms.iter().filter(|&&d| d <= ms).count() as f64 / self.observers as f64
    }
    pub fn p(&self, q: f64) -> f64 {
        percentile(&self.delays_ms, q)
    }
}

/// Join, failure and leave in one cluster, one after the other.
pub fn lifecycle(p: &Params) -> Vec<Spread> {
    let mut sim = p.sim();
    let mut rng = StdRng::seed_from_u64(p.seed ^ 0x11fe);
    sim.run_for(Duration::from_secs(2));
    let mut out = Vec::new();

    // Join: a new member contacts the seeds.
    sim.recording = true;
    let t0 = sim.now_us();
    let x = sim.join_new();
    out.push(until_all_learned(
        &mut sim,
        "join",
        EventKind::MemberJoin,
        x,
        t0,
    ));
    sim.log.clear();
    sim.run_for(Duration::from_secs(1));

    // Failure: a member (not a seed) goes silent.
    let victim = 3 + rng.random_range(0..p.n.saturating_sub(3).max(1));
    let victim = victim.min(sim.len() - 1);
    sim.log.clear();
    let t0 = sim.now_us();
    sim.kill(victim);
    out.push(until_all_learned(
        &mut sim,
        "fail",
        EventKind::MemberFailed,
        victim,
        t0,
    ));
    sim.log.clear();
    sim.run_for(Duration::from_secs(1));

    // Leave: another member leaves gracefully.
    let mut leaver = 3 + rng.random_range(0..p.n.saturating_sub(3).max(1));
    if leaver == victim || leaver >= sim.len() {
        leaver = if victim == 1 { 2 } else { 1 };
    }
    sim.log.clear();
    let t0 = sim.now_us();
    sim.leave(leaver);
    out.push(until_all_learned(
        &mut sim,
        "leave",
        EventKind::MemberLeave,
        leaver,
        t0,
    ));
    out
}

/// Runs until every live member learned `kind` about `subject` (at most 60 s
/// of virtual time, checked every 20 ms), then collects the delays.
fn until_all_learned(
    sim: &mut Sim,
    phase: &'static str,
    kind: EventKind,
    subject: usize,
    t0: u64,
) -> Spread {
    sim.run_while_not(Duration::from_secs(60), Duration::from_millis(20), |s| {
        s.learned(kind, subject, t0) >= s.up_count_except(subject)
    });
    spread(sim, phase, kind, subject, t0)
}

fn spread(sim: &Sim, phase: &'static str, kind: EventKind, subject: usize, t0: u64) -> Spread {
    let times = sim.first_times(kind, subject, t0);
    let mut delays_ms: Vec<f64> = times
        .iter()
        .flatten()
        .map(|&t| (t - t0) as f64 / 1000.0)
        .collect();
    delays_ms.sort_by(f64::total_cmp);
    Spread {
        phase,
        observers: times.len(),
        delays_ms,
    }
}

/// A steady cluster under UDP loss: false failures and traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Steady {
    pub window_s: f64,
    /// member-failed events (observer, subject) while nobody failed.
    pub false_failed_events: usize,
    /// Distinct members falsely declared failed somewhere.
    pub false_failed_members: usize,
    pub udp_msgs_per_member_s: f64,
    pub udp_bytes_per_member_s: f64,
    pub tcp_bytes_per_member_s: f64,
}

pub fn steady(p: &Params, window: Duration) -> Steady {
    steady_after(p, Duration::from_secs(2), window)
}

/// [`steady`] with traffic counted only after `warm`: right after forming,
/// every member still gossips the N members it just learned.
pub fn steady_after(p: &Params, warm: Duration, window: Duration) -> Steady {
    let mut sim = p.sim();
    sim.recording = true;
    sim.run_for(warm);
    sim.traffic = Default::default();
    sim.run_for(window);
    let failed: Vec<_> = sim
        .log
        .iter()
        .filter(|o| o.kind == EventKind::MemberFailed)
        .collect();
    let members: BTreeSet<&str> = failed.iter().map(|o| o.subject.as_str()).collect();
    let per = |x: u64| x as f64 / p.n as f64 / window.as_secs_f64();
    // Push-pull runs every 30 s per member, in bursts a short window can
    // miss: count it from its definition instead. Each member starts one
    // exchange per interval and answers one on average, sending its whole
    // table each time.
    let table = crate::net::frame_len(&sim.core(0).sync_state()) as f64;
    let tcp = 2.0 * table / p.timing.push_pull_interval.as_secs_f64();
    Steady {
        window_s: window.as_secs_f64(),
        false_failed_events: failed.len(),
        false_failed_members: members.len(),
        udp_msgs_per_member_s: per(sim.traffic.udp_msgs),
        udp_bytes_per_member_s: per(sim.traffic.udp_bytes),
        tcp_bytes_per_member_s: tcp,
    }
}

/// Two halves cut apart for `cut`, then healed: ms until one view again
/// (None: not within `limit`).
pub fn partition(p: &Params, cut: Duration, limit: Duration) -> Option<f64> {
    partition_run(p, cut, limit).healed_ms
}

/// What a partition run showed: whether the halves really split before the
/// heal (a heal time means nothing if they never did), and the heal time.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionRun {
    /// At the end of the cut, every member held its own half alive and the
    /// other half not alive.
    pub split: bool,
    /// ms from the heal until one view again (None: not within the limit).
    pub healed_ms: Option<f64>,
}

/// [`partition`], also reporting whether the halves had split.
pub fn partition_run(p: &Params, cut: Duration, limit: Duration) -> PartitionRun {
    let mut sim = p.sim();
    sim.run_for(Duration::from_secs(3));
    let groups: Vec<u8> = (0..sim.len()).map(|i| u8::from(i % 2 == 1)).collect();
    sim.partition(groups.clone());
    sim.run_for(cut);
    let split = sim.split_along(&groups);
    sim.heal();
    let t0 = sim.now_us();
    let healed = sim.run_while_not(limit, Duration::from_millis(250), |s| s.one_view());
    PartitionRun {
        split,
        healed_ms: healed.then(|| (sim.now_us() - t0) as f64 / 1000.0),
    }
}

/// User events: a burst of `k` events with `payload` bytes each, sent by
/// `k` members at once (member `j % n` sends event `j`); per event, how it
/// spread to the other live members.
pub fn user_events(p: &Params, k: usize, payload: usize) -> Vec<Spread> {
    let mut sim = p.sim();
    sim.run_for(Duration::from_secs(2));
    sim.user_log.clear();
    let t0 = sim.now_us();
    let names: Vec<String> = (0..k).map(|j| format!("ev{j}")).collect();
    for (j, name) in names.iter().enumerate() {
        sim.user_event(j % p.n, name, vec![b'p'; payload]);
    }
    let want = k * p.n;
    sim.run_while_not(Duration::from_secs(60), Duration::from_millis(20), |s| {
        s.user_log.len() >= want
    });
    names
        .iter()
        .enumerate()
        .map(|(j, name)| {
            let origin = j % p.n;
            let mut delays_ms: Vec<f64> = sim
                .user_log
                .iter()
                .filter(|(_, at, n)| n == name && *at != origin)
                .map(|(t, _, _)| (t - t0) as f64 / 1000.0)
                .collect();
            delays_ms.sort_by(f64::total_cmp);
            Spread {
                phase: "user-event",
                observers: p.n - 1,
                delays_ms,
            }
        })
        .collect()
}

/// A host failure: `k` members (the last `k`, no seed among them) go silent at
/// once, as the containers of one killed host do. Per surviving observer, the
/// delay (ms) until it recorded every victim `failed` (`None`: not within 60 s).
pub fn host_failure(p: &Params, k: usize) -> Vec<Option<f64>> {
    let mut sim = p.sim();
    sim.run_for(Duration::from_secs(3));
    sim.recording = true;
    sim.log.clear();
    let victims: Vec<usize> = (p.n.saturating_sub(k).max(1)..p.n).collect();
    let t0 = sim.now_us();
    for &v in &victims {
        sim.kill(v);
    }
    sim.run_while_not(Duration::from_secs(60), Duration::from_millis(10), |s| {
        victims
            .iter()
            .all(|&v| s.learned(EventKind::MemberFailed, v, t0) >= s.up_count_except(v))
    });
    let per_victim: Vec<Vec<Option<u64>>> = victims
        .iter()
        .map(|&v| sim.first_times(EventKind::MemberFailed, v, t0))
        .collect();
    // first_times lists the up observers other than the subject: the same
    // survivors, in the same order, for every victim.
    let observers = per_victim.first().map_or(0, Vec::len);
    (0..observers)
        .map(|o| {
            per_victim
                .iter()
                .map(|times| times[o].map(|t| (t - t0) as f64 / 1000.0))
                .try_fold(0.0f64, |m, d| d.map(|d| m.max(d)))
        })
        .collect()
}

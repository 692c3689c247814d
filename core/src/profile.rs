//! Timing profiles (`--profile lan|local|wan`) and the foca configuration they
//! produce for a given cluster size.
//!
//! The LAN profile is tuned for containers on one host or a data-centre
//! network: a killed node is declared failed in about 1.2 s (Serf: ~6.5 s),
//! while the suspicion window and indirect probes keep 10% packet loss from
//! producing false failures (see `bench/`).
//!
//! What sets the time to `failed`: after a kill, the wait until some member's
//! probe round (foca walks its members in a shuffled round-robin, one per
//! period) reaches the dead one, then one probe period until foca suspects it,
//! then the suspicion window, then a gossip hop. Only the first two scale with
//! the probe period, and the wait is longest when a host takes several
//! members at once: every dead one must be reached. The simulator's host
//! failure (3 of 10 members at once, `sim/tests/sim.rs`) has every survivor
//! see all 3 `failed` at p90 2.7 s / max 4.2 s with a 400 ms period, 2.1 s /
//! 2.7 s with 300 ms, the suspicion window (what lets a live member refute)
//! unchanged.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use crate::wire::{ENVELOPE_LEN, MAX_PACKET, SEAL_OVERHEAD};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Profile {
    /// Containers / data centre (default).
    Lan,
    /// Loopback and tests: fastest timers.
    Local,
    /// Across regions: slow, patient timers.
    Wan,
}

/// The timers a profile sets; everything foca needs is derived from these.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub probe_period: Duration,
    pub probe_rtt: Duration,
    /// Suspicion time for clusters of up to 10 nodes; grows with log10(N)
    /// up to [`MAX_SUSPICION_SCALE`] times this.
    pub suspicion: Duration,
    pub gossip_interval: Duration,
    pub push_pull_interval: Duration,
    /// First join retry delay; doubles up to `--retry-interval`.
    pub join_backoff: Duration,
    /// How often the member table is reconciled with foca's state.
    pub reconcile_interval: Duration,
    /// How often a push-pull is tried with one failed member (Serf's
    /// reconnect): what merges two halves of a healed partition.
    pub reconnect_interval: Duration,
}

impl Profile {
    pub fn timing(self) -> Timing {
        match self {
            Profile::Lan => Timing {
                probe_period: Duration::from_millis(300),
                probe_rtt: Duration::from_millis(150),
                suspicion: Duration::from_millis(800),
                gossip_interval: Duration::from_millis(100),
                push_pull_interval: Duration::from_secs(30),
                join_backoff: Duration::from_millis(500),
                reconcile_interval: Duration::from_millis(100),
                reconnect_interval: Duration::from_secs(5),
            },
            Profile::Local => Timing {
                probe_period: Duration::from_millis(200),
                probe_rtt: Duration::from_millis(80),
                suspicion: Duration::from_millis(500),
                gossip_interval: Duration::from_millis(50),
                push_pull_interval: Duration::from_secs(5),
                join_backoff: Duration::from_millis(100),
                reconcile_interval: Duration::from_millis(20),
                reconnect_interval: Duration::from_secs(2),
            },
            Profile::Wan => Timing {
                probe_period: Duration::from_secs(3),
                probe_rtt: Duration::from_millis(1500),
                suspicion: Duration::from_secs(6),
                gossip_interval: Duration::from_millis(500),
                push_pull_interval: Duration::from_secs(60),
                join_backoff: Duration::from_secs(2),
                reconcile_interval: Duration::from_millis(200),
                reconnect_interval: Duration::from_secs(30),
            },
        }
    }
}

/// A size bucket, so the config is only recomputed when the cluster grows or
/// shrinks by an order of magnitude-ish, not on every join.
pub fn size_bucket(members: usize) -> u32 {
    match members {
        0..=10 => 10,
        11..=50 => 50,
        51..=200 => 200,
        201..=1000 => 1000,
        _ => 5000,
    }
}

/// Largest multiple of [`Timing::suspicion`] used, whatever the cluster size.
pub const MAX_SUSPICION_SCALE: f64 = 1.5;

/// foca's config for `cluster_size` members under `timing`.
pub fn foca_config(timing: &Timing, cluster_size: u32) -> foca::Config {
    // A suspected member hears of it directly from its suspector (see
    // `core::Suspicion`), so refuting no longer waits for gossip to cross the
    // cluster twice: the window grows a little with size, then stops.
    let scale = f64::from(cluster_size)
        .log10()
        .clamp(1.0, MAX_SUSPICION_SCALE);
    // At least 12: with 10, a burst of 40 x 400 B user events on N = 100 (3 fit a
    // packet) missed a delivery or two in 4 of 40 seeded runs of the simulator with
    // a 400 ms probe period and in 8 of 40 with 300 ms; with 12, in none of 40
    // (the sim has no push-pull catch-up; the agent's would fetch them later).
    let max_tx = (f64::from(cluster_size + 1).log10() * 4.0).clamp(12.0, 255.0) as u8;
    foca::Config {
        probe_period: timing.probe_period,
        probe_rtt: timing.probe_rtt,
        num_indirect_probes: nz(3),
        // Tiny clusters need more retransmissions than foca's default formula.
        max_transmissions: NonZeroU8::new(max_tx).unwrap_or(NonZeroU8::MIN),
        suspect_to_down_after: timing.suspicion.mul_f64(scale),
        remove_down_after: Some(Duration::from_secs(24 * 3600)),
        // Room for our envelope and, with encryption, the sealed one around it.
        max_packet_size: nz(MAX_PACKET - ENVELOPE_LEN - SEAL_OVERHEAD),
        notify_down_members: true,
        periodic_announce: Some(foca::PeriodicParams {
            frequency: timing.push_pull_interval,
            num_members: nz(1),
        }),
        periodic_announce_to_down_members: Some(foca::PeriodicParams {
            frequency: timing.push_pull_interval * 2,
            num_members: nz(2),
        }),
        periodic_gossip: Some(foca::PeriodicParams {
            frequency: timing.gossip_interval,
            num_members: nz(3),
        }),
    }
}

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_makes_a_valid_config() {
        for p in [Profile::Lan, Profile::Local, Profile::Wan] {
            for n in [1, 10, 50, 1000, 5000] {
                let cfg = foca_config(&p.timing(), size_bucket(n));
                assert!(cfg.probe_rtt < cfg.probe_period, "{p:?}");
                assert!(cfg.max_transmissions.get() >= 6);
            }
        }
    }

    #[test]
    fn suspicion_grows_with_cluster_size_then_stops() {
        let t = Profile::Lan.timing();
        let at = |n| foca_config(&t, size_bucket(n)).suspect_to_down_after;
        assert_eq!(at(10), Duration::from_millis(800));
        assert_eq!(at(30), Duration::from_millis(1200));
        assert_eq!(at(1000), Duration::from_millis(1200));
        assert_eq!(at(5000), Duration::from_millis(1200));
    }
}

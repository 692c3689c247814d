//! Small, fast simulations of the real cores (run in `cargo test`).

use std::time::Duration;

use sim::scenario::{self, Params};

fn params(n: usize, seed: u64) -> Params {
    Params::lan(n, seed, 200)
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let mut p = params(8, 7);
    p.net.loss = 0.05;
    p.net.jitter = Duration::from_millis(3);
    assert_eq!(scenario::lifecycle(&p), scenario::lifecycle(&p));
    let a = scenario::steady(&p, Duration::from_secs(5));
    let b = scenario::steady(&p, Duration::from_secs(5));
    assert_eq!(a, b);
}

#[test]
fn join_failure_and_leave_reach_every_member() {
    let spreads = scenario::lifecycle(&params(12, 1));
    let phases: Vec<&str> = spreads.iter().map(|s| s.phase).collect();
    assert_eq!(phases, ["join", "fail", "leave"]);
    for s in &spreads {
        assert_eq!(s.missing(), 0, "{} did not reach everyone: {s:?}", s.phase);
        assert!(s.observers >= 10, "{s:?}");
    }
    let [join, fail, leave] = [&spreads[0], &spreads[1], &spreads[2]];
    eprintln!(
        "join {:?} ms, fail {:?} ms, leave {:?} ms",
        join.all_ms(),
        fail.all_ms(),
        leave.all_ms()
    );
    // Virtual time, one seed: these hold the README's published figures
    // (200 ms gossip, the N = 1000 setting: join p99.9 <= 1.2 s, failure
    // p99.9 <= 3.18 s from the kill, leave 1 ms) with a margin, not 10x.
    // A join spreads by gossip within a few rounds.
    assert!(join.all_ms().unwrap() <= 1_500.0, "{join:?}");
    // A failure needs a probe of the dead member plus the suspicion time
    // (0.8 s at this size), then gossip to the last member.
    let fail_all = fail.all_ms().unwrap();
    assert!((800.0..=3_000.0).contains(&fail_all), "{fail:?}");
    // A leave notice is sent straight to every member.
    assert!(leave.all_ms().unwrap() <= 50.0, "{leave:?}");
}

/// The README: "two halves of a 60 s partition are one view again 2.5–7 s
/// after the heal". The old bound (180 s) let through the regression it was
/// written for (57–87 s); the run is deterministic, so hold 15 s.
#[test]
fn a_healed_partition_becomes_one_view_again() {
    let run = scenario::partition_run(
        &params(10, 3),
        Duration::from_secs(60),
        Duration::from_secs(180),
    );
    eprintln!("{run:?}");
    assert!(
        run.split,
        "the halves never split, so nothing healed: {run:?}"
    );
    let ms = run.healed_ms.expect("two halves never merged");
    assert!(ms <= 15_000.0, "one view only {ms} ms after the heal");
}

#[test]
fn no_false_failures_without_loss() {
    let s = scenario::steady(&params(10, 2), Duration::from_secs(20));
    assert_eq!(s.false_failed_events, 0, "{s:?}");
    assert!(s.udp_msgs_per_member_s > 0.0);
}

/// At 20% UDP loss a probe and all its indirect probes fail often; the direct
/// suspicion notice lets the member refute before it is declared failed.
/// (Before notices, this run had 92 false `member-failed` events.)
#[test]
fn no_false_failures_at_twenty_percent_loss() {
    let mut p = params(50, 1);
    p.net.loss = 0.20;
    let s = scenario::steady(&p, Duration::from_secs(20));
    assert_eq!(s.false_failed_events, 0, "{s:?}");
}

#[test]
fn a_user_event_reaches_999_permille_of_the_members_within_a_second() {
    // The figure is N = 1000 (bench/userev.py runs it:
    // `shoal-sim run --scenario user-event -n 1000`); 200 here keeps the
    // debug build of `cargo test` quick. 200 ms gossip.
    let spreads = scenario::user_events(&params(200, 3), 1, 64);
    let s = &spreads[0];
    eprintln!(
        "user event, N=200: p50 {:.1} ms, p99.9 {:.1} ms, all {:?} ms, within 1 s {:.4}",
        s.p(0.5),
        s.quantile(0.999),
        s.all_ms(),
        s.within(1000.0)
    );
    assert_eq!(s.missing(), 0, "{s:?}");
    assert!(s.within(1000.0) >= 0.999, "{s:?}");
}

#[test]
fn a_burst_of_user_events_is_delivered_whole_and_once() {
    let spreads = scenario::user_events(&params(100, 5), 40, 400);
    for s in &spreads {
        assert_eq!(s.delays_ms.len(), 99, "lost or duplicated: {s:?}");
    }
    let worst = spreads.iter().map(|s| s.quantile(1.0)).fold(0.0, f64::max);
    eprintln!("burst of 40 x 400 B events, N=100: last delivery after {worst:.1} ms");
    assert!(worst < 5_000.0, "{worst} ms");
}

/// Issue 13's host failure: a killed host takes an LB and its webapps (3 of 10 members) at
/// once, and each must be reached by some survivor's probe round before it is suspected.
/// With a 400 ms probe period this was p90 2.7 s, max 4.2 s over 300 seeds (every survivor
/// seeing all three `failed`); the LAN profile's 300 ms gives 2.1 s / 2.7 s. Virtual time:
/// the same seeds give the same figures on any machine.
#[test]
fn three_members_killed_at_once_are_failed_at_every_survivor_within_three_seconds() {
    let mut worst = Vec::new();
    for seed in 0..60 {
        let per_observer = scenario::host_failure(&Params::lan(10, seed, 100), 3);
        assert_eq!(per_observer.len(), 7, "seed {seed}: {per_observer:?}");
        let all = per_observer
            .iter()
            .map(|d| d.unwrap_or(f64::INFINITY))
            .fold(0.0, f64::max);
        worst.push(all);
    }
    worst.sort_by(f64::total_cmp);
    let p90 = worst[worst.len() * 9 / 10];
    eprintln!(
        "all three failed at every survivor: p50 {:.0} ms, p90 {p90:.0} ms, max {:.0} ms",
        worst[worst.len() / 2],
        worst[worst.len() - 1]
    );
    assert!(p90 <= 2_500.0, "p90 {p90} ms: {worst:?}");
    assert!(worst.iter().all(|&w| w <= 3_000.0), "{worst:?}");
}

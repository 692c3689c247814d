//! How long the gossip loop is held by merging the largest push-pull state
//! the limits allow: a full table of new members into a core, chunk by
//! chunk as the agent does (`MERGE_CHUNK` entries per loop turn), and the
//! same table again (every entry known: the periodic push-pull case). The
//! last step of each reconciles the table, as every tick does.
//!
//! `cargo run --release -p shoal --example merge_bench`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use shoal::core::{Core, CoreConfig, Now, MERGE_CHUNK};
use shoal::identity::NodeId;
use shoal::membership::MAX_MEMBERS;
use shoal::profile::Profile;
use shoal::tags::Tags;
use shoal::wire::SyncMsg;
use shoal_core::testing::converged;

fn id(name: String, i: usize) -> NodeId {
    let mut tags = Tags::new();
    tags.insert("service".into(), "web".into());
    tags.insert("port".into(), "3000".into());
    NodeId {
        name,
        addr: SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7946)),
        generation: 1,
        tags,
    }
}

/// Merges `msg` in chunks; returns each step's time (the first is
/// `begin_merge`) and the total.
fn merge(core: &mut Core, msg: SyncMsg, now: Now) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let mut merge = core.begin_merge(msg, now).expect("not our own state");
    let mut steps = vec![started.elapsed()];
    loop {
        let t = Instant::now();
        let done = core.merge_step(&mut merge, MERGE_CHUNK, now);
        steps.push(t.elapsed());
        if done {
            return (steps, started.elapsed());
        }
    }
}

fn report(what: &str, (mut steps, total): (Vec<Duration>, Duration)) {
    steps.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| ms(steps[((steps.len() - 1) as f64 * q) as usize]);
    println!(
        "{what}: {} steps of {MERGE_CHUNK}, p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms, total {:.0} ms",
        steps.len(),
        at(0.5),
        at(0.9),
        at(1.0),
        ms(total)
    );
}

fn main() {
    let t0 = Instant::now();
    let now = Now {
        mono: t0,
        wall_ms: 0,
    };
    let cfg = CoreConfig {
        timing: Profile::Lan.timing(),
        has_join_targets: false,
        retry_max: Duration::from_secs(5),
        reap_after: Duration::from_secs(3600),
        leave_timeout: Duration::from_secs(1),
        replay: false,
    };
    let mut core = Core::new(
        id("local".into(), 1),
        cfg.clone(),
        StdRng::seed_from_u64(1),
        now,
    );
    let members: Vec<NodeId> = (3..MAX_MEMBERS + 1)
        .map(|i| id(format!("node-{i}"), i))
        .collect();
    let table = converged(&id("peer".into(), 2), &members);
    let n = table.entries.len();
    report(
        &format!("{n} new members"),
        merge(&mut core, table.clone(), now),
    );
    core.on_tick(now);
    report(
        &format!("{n} known members"),
        merge(&mut core, table.clone(), now),
    );
    // What the loop was held for before merges were chunked.
    let mut fresh = Core::new(id("other".into(), 1), cfg, StdRng::seed_from_u64(2), now);
    let t = Instant::now();
    fresh.apply_remote(table, now);
    println!(
        "{n} new members in one apply_remote (the simulator's way): {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    core.on_tick(now);
    println!(
        "one reconcile tick at {} members: {:.2} ms",
        core.records().count(),
        t.elapsed().as_secs_f64() * 1e3
    );
}

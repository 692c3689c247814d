//! End-to-end on a multi-host Docker Swarm: four real engines (docker/dind-image.sh) in
//! containers on a bridge network of their own, one swarm of three managers and a worker,
//! `compose/stack.yml` + `compose/stack.multihost.yml` deployed across them: an LB on each
//! of the two labelled hosts (`mode: host` ports), eight webapps spread over all four.
//!
//! Two host failures, each under load sent to the first host's LB: first the worker (only
//! webapps), then the second LB's host (its LB and its webapps; the managers keep a quorum
//! of 2 of 3, so Swarm still reschedules). The load and the HAProxy stats polls go to the
//! first host's ports published on 127.0.0.1 (never to the bed's bridge), bounded in time
//! and count; members and configs are read with `docker exec`. Serialised with the other
//! Docker scenarios (`setup`'s lock); the bed is removed on drop, also on failure.

use std::collections::BTreeSet;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shoal_e2e::multihost::{build_dind_image, Bed, BedStack, BedTask, Engine};
use shoal_e2e::swarm::{check_addresses, Task};
use shoal_e2e::*;

const S: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(200);
const HOSTS: usize = 4;
const MANAGERS: usize = 3;
const WEBAPPS: usize = 8;
/// Host 0 runs an LB and takes the load; host 1 runs the other LB; host 3 is the worker.
const ENTRY: usize = 0;
const WORKER: usize = 3;
const LB_HOST: usize = 1;

fn as_tasks(t: &[BedTask]) -> Vec<Task> {
    t.iter()
        .map(|t| Task {
            container: t.container.clone(),
            hostname: t.hostname.clone(),
            ip: t.ip.clone(),
        })
        .collect()
}

fn running(t: Vec<BedTask>) -> Vec<BedTask> {
    t.into_iter().filter(|t| t.state == "running").collect()
}

/// The short host name (`h0`, ...) for figures.
fn short(host: &str) -> &str {
    host.rsplit('-').next().unwrap_or(host)
}

/// Seconds from `kill_ms` (Unix ms) to `t_ms`; NaN for `None`.
fn since(kill_ms: u64, t_ms: Option<u64>) -> f64 {
    t_ms.map_or(f64::NAN, |t| (t as f64 - kill_ms as f64) / 1000.0)
}

/// Seconds from `kill_ms` until the LB task `lb` had every one of `victims` `failed`, from
/// the event times its agent stamped (NaN if one never was).
fn failed_after(stack: &BedStack, lb: &BedTask, victims: &[BedTask], kill_ms: u64) -> f64 {
    let named: Vec<(String, String)> = victims
        .iter()
        .map(|t| (t.hostname.clone(), t.ip.clone()))
        .collect();
    let at = stack.failed_at(&lb.node, &lb.container, &named, kill_ms);
    let last = at.iter().try_fold(0u64, |m, t| t.map(|t| m.max(t)));
    since(kill_ms, last)
}

/// Starts watching, inside the LB task `lb`, for the moment none of `victims`' addresses is
/// in its rendered config (Unix ms; the watch runs in the container, see
/// [`BedStack::config_without`]). Start it before the kill.
fn watch_config(stack: &BedStack, lb: &BedTask, victims: &[BedTask]) -> JoinHandle<Option<u64>> {
    let lb = lb.clone();
    let ips: Vec<String> = victims.iter().map(|t| t.ip.clone()).collect();
    let stack = BedStack {
        name: stack.name.clone(),
    };
    std::thread::spawn(move || stack.config_without(&lb.node, &lb.container, &ips, 90 * S))
}

/// The running bed and stack the two failures share.
struct Scene<'a> {
    bed: &'a Bed,
    stack: &'a BedStack,
    /// A manager that stays up (host 0).
    via: String,
    nodes: std::collections::BTreeMap<String, String>,
    /// Every webapp slot's hostname (`webapp-1` ... `webapp-8`): the same after rescheduling.
    all: BTreeSet<String>,
}

impl Scene<'_> {
    fn engine(&self, name: &str) -> &Engine {
        self.bed
            .engines
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no engine {name}"))
    }

    fn webapps(&self) -> Vec<BedTask> {
        running(self.stack.tasks(&self.via, "webapp", &self.nodes))
    }

    fn lbs(&self) -> Vec<BedTask> {
        running(self.stack.tasks(&self.via, "lb", &self.nodes))
    }

    /// Waits until the LB on `lb`'s host has every webapp UP (stats on its 127.0.0.1 port).
    fn all_up(&self, lb: &BedTask, timeout: Duration) {
        let stats_at = self.engine(&lb.node).addr(8404);
        wait_for(
            &format!("all webapps UP in the LB on {}", lb.node),
            timeout,
            POLL,
            || (up_servers(&stats(stats_at)?, "web") == self.all).then_some(()),
        );
    }

    /// Kills host `victim` under load to host 0's LB (`name` prefixes the figures): its
    /// webapps (and its LB, if it runs one) `failed` at every surviving LB and out of their
    /// configs, Swarm's reschedule, the moved slots answering again at their new addresses,
    /// and the failed requests. `dead` are the hosts already down. Returns the survivors.
    fn kill_under_load(&self, victim: usize, dead: &[String], name: &str) -> Vec<BedTask> {
        let victim = self.bed.engines[victim].name.clone();
        let webs = self.webapps();
        let lbs = self.lbs();
        let on_victim: Vec<BedTask> = webs.iter().filter(|t| t.node == victim).cloned().collect();
        assert!(
            !on_victim.is_empty(),
            "Swarm's spread puts webapps on {victim}: {webs:?}"
        );
        let (dead_lbs, live_lbs): (Vec<BedTask>, Vec<BedTask>) =
            lbs.into_iter().partition(|t| t.node == victim);
        assert!(!live_lbs.is_empty(), "an LB outside {victim}");

        let entry = self.bed.engines[ENTRY].addr(8080);
        let load = Load::start(entry, 4, Duration::from_millis(5), 300 * S, 400_000);
        // The config watches run in the LB containers from before the kill.
        let configs: Vec<_> = live_lbs
            .iter()
            .map(|lb| (lb.node.clone(), watch_config(self.stack, lb, &on_victim)))
            .collect();
        std::thread::sleep(3 * S);
        assert_eq!(
            load.hosts_since(Duration::ZERO),
            self.all,
            "load through {entry} reaches every webapp"
        );

        let t_kill = load.now();
        let kill_at = Instant::now();
        let kill_ms = unix_ms();
        self.bed.kill_named(&victim);
        let kill_took = kill_at.elapsed();

        // Swarm's side: the node marked down, then the victim's slots running elsewhere.
        let down = wait_for("the killed host marked down", 120 * S, POLL, || {
            (self.bed.node_status(&self.via, &victim) == "down").then(|| kill_at.elapsed())
        });
        let (after, rescheduled) = wait_for(
            "the victim's webapps rescheduled and running on the other hosts",
            180 * S,
            POLL,
            || {
                let t = self.webapps();
                (t.len() == WEBAPPS
                    && t.iter()
                        .all(|t| t.node != victim && !dead.contains(&t.node)))
                .then(|| (t, kill_at.elapsed()))
            },
        );
        // The rescheduled slots serve again through the LB, at their new addresses (waited
        // for before the event logs are read: those reads take a second each).
        let moved: BTreeSet<String> = on_victim.iter().map(|t| t.hostname.clone()).collect();
        let t_moved = load.now();
        let back = wait_for(
            "the rescheduled webapps answering through the LB",
            120 * S,
            Duration::from_millis(100),
            || {
                moved
                    .is_subset(&load.hosts_since(t_moved))
                    .then(|| kill_at.elapsed())
            },
        );
        // Both from the LBs' own clocks (the event log, the in-container watch), so the
        // figures have no polling delay in them.
        let webs_seen: Vec<(String, (f64, f64))> = configs
            .into_iter()
            .zip(&live_lbs)
            .map(|((h, w), lb)| {
                let out = since(kill_ms, w.join().ok().flatten());
                (h, (failed_after(self.stack, lb, &on_victim, kill_ms), out))
            })
            .collect();
        let lbs_seen: Vec<(String, f64)> = live_lbs
            .iter()
            .filter(|_| !dead_lbs.is_empty())
            .map(|lb| {
                let f = failed_after(self.stack, lb, &dead_lbs, kill_ms);
                (lb.node.clone(), f)
            })
            .collect();
        let per_lb = |f: &dyn Fn(&(f64, f64)) -> f64| {
            webs_seen
                .iter()
                .map(|(h, v)| format!("{}: {:.1}", short(h), f(v)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        figure(
            &format!("multihost: {name}: `docker kill` of the engine returned after (s; the figures below count from before it)"),
            format!("{:.2}", kill_took.as_secs_f64()),
        );
        figure(
            &format!("multihost: {name}: kill -> its webapps `failed` at each LB (LB host: s, the agent's event time)"),
            per_lb(&|v| v.0),
        );
        figure(
            &format!("multihost: {name}: kill -> their addresses out of each LB's config (s, watched in the LB every 50 ms)"),
            per_lb(&|v| v.1),
        );
        if !lbs_seen.is_empty() {
            figure(
                &format!("multihost: {name}: kill -> the dead LB `failed` at the surviving LB (LB host: s, the agent's event time)"),
                lbs_seen
                    .iter()
                    .map(|(h, f)| format!("{}: {f:.1}", short(h)))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        figure(
            &format!("multihost: {name}: kill -> Swarm marks the node down / has the rescheduled tasks running"),
            format!("{:.1} s / {:.1} s", down.as_secs_f64(), rescheduled.as_secs_f64()),
        );
        figure(
            &format!("multihost: {name}: kill -> the rescheduled webapps answer through the LB (Swarm's start included)"),
            format!(
                "{:.1} s ({:.1} s after Swarm had them running)",
                back.as_secs_f64(),
                (back - rescheduled).as_secs_f64()
            ),
        );

        // The label pins the LBs: a dead host's LB is not started anywhere else.
        let lbs_after = self.lbs();
        assert_eq!(
            lbs_after.iter().map(|t| &t.node).collect::<BTreeSet<_>>(),
            live_lbs.iter().map(|t| &t.node).collect::<BTreeSet<_>>(),
            "LBs run on the surviving labelled hosts only: {lbs_after:?}"
        );
        for lb in &live_lbs {
            self.all_up(lb, 60 * S);
            let members = self
                .stack
                .members(&lb.node, &lb.container)
                .unwrap_or_default();
            check_addresses(&members, &as_tasks(&[&after[..], &live_lbs[..]].concat()))
                .unwrap_or_else(|e| panic!("LB on {} after rescheduling: {e}", lb.node));
            for t in &dead_lbs {
                assert!(
                    members
                        .iter()
                        .any(|m| m.name == t.hostname && m.status == "failed"),
                    "the dead LB {} `failed` at the LB on {}: {members:?}",
                    t.hostname,
                    lb.node
                );
            }
            let cfg = self
                .stack
                .lb_config(&lb.node, &lb.container)
                .unwrap_or_default();
            for t in after.iter().filter(|t| moved.contains(&t.hostname)) {
                assert!(
                    cfg.contains(&format!("server {} {}:3000", t.hostname, t.ip)),
                    "{} at its new address in the config of the LB on {}:\n{cfg}",
                    t.hostname,
                    lb.node
                );
            }
        }
        std::thread::sleep(3 * S);
        let samples = load.stop();
        let failed = failures(&samples, t_kill, Duration::MAX);
        let span = match (failed.first(), failed.last()) {
            (Some(a), Some(b)) => (b.at + b.latency).saturating_sub(a.at).as_secs_f64(),
            _ => 0.0,
        };
        figure(
            &format!("multihost: {name}: failed requests through the surviving LB (host 0) after the kill"),
            format!(
                "{} of {} over {span:.1} s (first {}, last {} after the kill)",
                failed.len(),
                samples.iter().filter(|s| s.at >= t_kill).count(),
                failed
                    .first()
                    .map(|s| format!("{:.2} s", (s.at - t_kill).as_secs_f64()))
                    .unwrap_or("-".into()),
                failed
                    .last()
                    .map(|s| format!("{:.2} s", (s.at + s.latency - t_kill).as_secs_f64()))
                    .unwrap_or("-".into()),
            ),
        );
        // A dead host's addresses are silent (no refusal): HAProxy's retries elsewhere cost
        // `timeout connect` per try, and a GET in flight to it waits until its member is
        // `failed` (then lbgen cuts it and HAProxy retries it elsewhere): slow answers
        // rather than failures.
        let after_kill: Vec<&Sample> = samples.iter().filter(|s| s.at >= t_kill).collect();
        let slow = after_kill
            .iter()
            .filter(|s| s.latency > Duration::from_millis(500))
            .count();
        let slowest = after_kill
            .iter()
            .map(|s| s.latency)
            .max()
            .unwrap_or_default();
        figure(
            &format!("multihost: {name}: answers slower than 500 ms after the kill / the slowest"),
            format!("{slow} / {:.2} s", slowest.as_secs_f64()),
        );
        assert!(
            failures(&samples, Duration::ZERO, t_kill).is_empty(),
            "no failures before the kill"
        );
        let steady = failures(&samples, t_moved, Duration::MAX);
        assert!(
            steady.is_empty(),
            "no failures once Swarm has rescheduled: {}",
            describe_failures(&steady)
        );
        // Issue 13's targets are `failed` <= 3 s and <= 2 s of failed requests; the bounds
        // are twice that, for a loaded 2-core machine (the figures come from the agents' own
        // event times, so polling adds nothing). A detector that waits a probe cycle too many
        // per dead member, waits for a reap, or an LB that keeps dead servers fails these.
        for (h, (f, o)) in &webs_seen {
            assert!(*f <= 6.0, "LB on {h}: victim's webapps failed after {f} s");
            assert!(
                *o <= 8.0,
                "LB on {h}: victim's addresses out of config after {o} s"
            );
        }
        for (h, f) in &lbs_seen {
            assert!(*f <= 6.0, "LB on {h}: the dead LB failed after {f} s");
        }
        assert!(
            span <= 4.0,
            "failed requests over {span} s: {}",
            describe_failures(&failed)
        );
        live_lbs
    }
}

#[test]
fn a_webapp_host_then_an_lb_host_killed_under_load_fail_at_the_surviving_lb_and_swarm_reschedules_their_webapps(
) {
    let Some(_serial) = setup() else { return };
    build_dind_image();
    let t_suite = Instant::now();
    let tag = std::env::var("SHOAL_IMAGE_TAG").unwrap_or_else(|_| "latest".into());
    let images = [format!("shoal-lb:{tag}"), format!("shoal-webapp:{tag}")];
    let bed = Bed::start(HOSTS, MANAGERS, &images, 2);
    figure(
        "multihost: bed up (4 engines, a swarm of 3 managers + 1 worker, images loaded into each)",
        format!("{:.1} s", t_suite.elapsed().as_secs_f64()),
    );
    let via = bed.engines[ENTRY].name.clone();
    let t_deploy = Instant::now();
    let stack = BedStack::deploy(
        &via,
        &[
            ("SHOAL_IMAGE_TAG", &tag),
            ("WEBAPP_REPLICAS", &WEBAPPS.to_string()),
        ],
    );
    let nodes = bed.nodes(&via);
    let mut scene = Scene {
        bed: &bed,
        stack: &stack,
        via,
        nodes,
        all: BTreeSet::new(),
    };

    // Two LBs, on the two labelled hosts; eight webapps over the four hosts.
    let lbs = wait_for("2 running lb tasks", 180 * S, POLL, || {
        let t = scene.lbs();
        (t.len() == 2).then_some(t)
    });
    let lb_nodes: BTreeSet<&str> = lbs.iter().map(|t| t.node.as_str()).collect();
    let want: BTreeSet<&str> = bed.engines[..2].iter().map(|e| e.name.as_str()).collect();
    assert_eq!(lb_nodes, want, "one LB on each labelled host: {lbs:?}");
    let webs = wait_for(&format!("{WEBAPPS} running webapps"), 180 * S, POLL, || {
        let t = scene.webapps();
        (t.len() == WEBAPPS).then_some(t)
    });
    scene.all = webs.iter().map(|t| t.hostname.clone()).collect();
    for lb in &lbs {
        scene.all_up(lb, 120 * S);
    }
    figure(
        "multihost: stack deploy (2 LBs, 8 webapps on 4 hosts) to all UP in both LBs",
        format!("{:.1} s", t_deploy.elapsed().as_secs_f64()),
    );
    for lb in &lbs {
        let members = stack.members(&lb.node, &lb.container).unwrap_or_default();
        check_addresses(&members, &as_tasks(&[&webs[..], &lbs[..]].concat()))
            .unwrap_or_else(|e| panic!("LB on {}: {e}", lb.node));
    }

    // 1. The worker: webapps only; both LBs see it.
    let live = scene.kill_under_load(WORKER, &[], "webapp host");
    assert_eq!(live.len(), 2, "both LBs still run: {live:?}");
    // 2. The second LB's host: the LB on host 0 keeps serving and sees that LB fail.
    let dead = [bed.engines[WORKER].name.clone()];
    let live = scene.kill_under_load(LB_HOST, &dead, "LB host");
    assert_eq!(
        live.iter().map(|t| t.node.as_str()).collect::<Vec<_>>(),
        [bed.engines[ENTRY].name.as_str()],
        "the LB on host 0 survives"
    );
    figure(
        "multihost: scenario (bed start to before cleanup)",
        format!("{:.0} s", t_suite.elapsed().as_secs_f64()),
    );
}

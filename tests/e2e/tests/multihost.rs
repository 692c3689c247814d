//! End-to-end on a multi-host Docker Swarm: three real engines (docker/dind-image.sh) in
//! containers on a bridge network of their own, one swarm of three managers,
//! `compose/stack.yml` + `compose/stack.multihost.yml` deployed across them: an LB on each
//! of the two labelled hosts (`mode: host` ports), six webapps spread over all three.
//!
//! The third host is killed (`docker kill` of its engine's container) under load sent to
//! the first host's published port. Load goes only from this process to the bed's bridge
//! network (the engines' own addresses), bounded in time and count. Serialised with the
//! other Docker scenarios (`setup`'s lock); the bed is removed on drop, also on failure.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_e2e::multihost::{build_dind_image, engine_addr, Bed, BedStack, BedTask};
use shoal_e2e::swarm::{check_addresses, Task};
use shoal_e2e::*;

const S: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(200);
const WEBAPPS: usize = 6;
const VICTIM: usize = 2;

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

#[test]
fn a_host_killed_under_load_fails_its_members_at_both_lbs_and_its_rescheduled_webapps_serve_again()
{
    let Some(_serial) = setup() else { return };
    build_dind_image();
    let t_suite = Instant::now();
    let tag = std::env::var("SHOAL_IMAGE_TAG").unwrap_or_else(|_| "latest".into());
    let images = [format!("shoal-lb:{tag}"), format!("shoal-webapp:{tag}")];
    let bed = Bed::start(3, &images, 2);
    figure(
        "multihost: bed up (3 engines, a swarm of 3 managers, images loaded into each)",
        format!("{:.1} s", t_suite.elapsed().as_secs_f64()),
    );
    let m0 = bed.engines[0].name.clone();
    let victim = bed.engines[VICTIM].name.clone();
    let t_deploy = Instant::now();
    let stack = BedStack::deploy(
        &m0,
        &[
            ("SHOAL_IMAGE_TAG", &tag),
            ("WEBAPP_REPLICAS", &WEBAPPS.to_string()),
        ],
    );
    let nodes = bed.nodes(&m0);

    // Two LBs, on the two labelled hosts; six webapps, some on the victim.
    let lbs = wait_for("2 running lb tasks", 180 * S, POLL, || {
        let t = running(stack.tasks(&m0, "lb", &nodes));
        (t.len() == 2).then_some(t)
    });
    let lb_nodes: BTreeSet<&str> = lbs.iter().map(|t| t.node.as_str()).collect();
    let want: BTreeSet<&str> = bed.engines[..2].iter().map(|e| e.name.as_str()).collect();
    assert_eq!(lb_nodes, want, "one LB on each labelled host: {lbs:?}");
    let webs = wait_for(&format!("{WEBAPPS} running webapps"), 180 * S, POLL, || {
        let t = running(stack.tasks(&m0, "webapp", &nodes));
        (t.len() == WEBAPPS).then_some(t)
    });
    let on_victim: Vec<BedTask> = webs.iter().filter(|t| t.node == victim).cloned().collect();
    assert!(
        !on_victim.is_empty(),
        "Swarm spread puts webapps on every host: {webs:?}"
    );
    let all: BTreeSet<String> = webs.iter().map(|t| t.hostname.clone()).collect();
    let lb_at = |lb: &BedTask| {
        bed.engines
            .iter()
            .find(|e| e.name == lb.node)
            .cloned()
            .unwrap()
    };
    for lb in &lbs {
        let e = lb_at(lb);
        wait_for(
            &format!("all webapps UP in the LB on {}", e.name),
            120 * S,
            POLL,
            || (up_servers(&stats(engine_addr(&e, 8404))?, "web") == all).then_some(()),
        );
    }
    figure(
        "multihost: stack deploy (2 LBs, 6 webapps on 3 hosts) to all UP in both LBs",
        format!("{:.1} s", t_deploy.elapsed().as_secs_f64()),
    );
    for lb in &lbs {
        let members = stack.members(&lb.node, &lb.container).unwrap_or_default();
        check_addresses(&members, &as_tasks(&[&webs[..], &lbs[..]].concat()))
            .unwrap_or_else(|e| panic!("LB on {}: {e}", lb.node));
    }

    // Load to the first LB host's published port.
    let entry = engine_addr(&bed.engines[0], 8080);
    let load = Load::start(entry, 4, Duration::from_millis(5), 300 * S, 400_000);
    std::thread::sleep(3 * S);
    assert!(
        load.hosts_since(Duration::ZERO) == all,
        "load reaches all six"
    );

    // Each LB's view of the victim's webapps, followed on a thread per LB: when is every
    // one `failed` (or already replaced at a new address), when is every old address out
    // of the rendered config?
    let t_kill = load.now();
    let kill_at = Instant::now();
    bed.kill(VICTIM);
    let seen: Arc<Mutex<BTreeMap<String, (f64, f64)>>> = Arc::default();
    let watchers: Vec<_> = lbs
        .iter()
        .map(|lb| {
            let (lb, on_victim, seen) = (lb.clone(), on_victim.clone(), seen.clone());
            let stack = BedStack {
                name: stack.name.clone(),
            };
            std::thread::spawn(move || {
                let (mut failed, mut out) = (None, None);
                let deadline = kill_at + 60 * S;
                while (failed.is_none() || out.is_none()) && Instant::now() < deadline {
                    if failed.is_none() {
                        if let Some(m) = stack.members(&lb.node, &lb.container) {
                            let gone = on_victim.iter().all(|t| {
                                m.iter()
                                    .filter(|m| m.name == t.hostname)
                                    .all(|m| m.status == "failed" || m.ip() != t.ip)
                            });
                            if gone {
                                failed = Some(kill_at.elapsed().as_secs_f64());
                            }
                        }
                    }
                    if out.is_none() {
                        if let Some(cfg) = stack.lb_config(&lb.node, &lb.container) {
                            if on_victim
                                .iter()
                                .all(|t| !cfg.contains(&format!(" {}:3000", t.ip)))
                            {
                                out = Some(kill_at.elapsed().as_secs_f64());
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                seen.lock().unwrap().insert(
                    lb.node.clone(),
                    (failed.unwrap_or(f64::NAN), out.unwrap_or(f64::NAN)),
                );
            })
        })
        .collect();

    // Swarm's side: the node marked down, then the victim's slots running elsewhere.
    let down = wait_for("the killed host marked down", 120 * S, POLL, || {
        (bed.node_status(&m0, &victim) == "down").then(|| kill_at.elapsed())
    });
    let moved = wait_for(
        "the victim's webapps rescheduled and running on the other hosts",
        180 * S,
        POLL,
        || {
            let t = running(stack.tasks(&m0, "webapp", &nodes));
            (t.len() == WEBAPPS && t.iter().all(|t| t.node != victim))
                .then(|| (t, kill_at.elapsed()))
        },
    );
    let (after, rescheduled) = moved;
    for w in watchers {
        let _ = w.join();
    }
    let seen = seen.lock().unwrap().clone();
    figure(
        "multihost: kill of a host -> its webapps `failed` at each LB (LB host: s)",
        seen.iter()
            .map(|(h, (f, _))| format!("{}: {f:.1}", h.rsplit('-').next().unwrap_or(h)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    figure(
        "multihost: kill of a host -> their addresses out of each LB's config (s)",
        seen.iter()
            .map(|(h, (_, o))| format!("{}: {o:.1}", h.rsplit('-').next().unwrap_or(h)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    figure(
        "multihost: kill -> Swarm marks the node down / has the rescheduled tasks running",
        format!(
            "{:.1} s / {:.1} s",
            down.as_secs_f64(),
            rescheduled.as_secs_f64()
        ),
    );

    // The rescheduled slots serve again through the surviving LB, at their new addresses.
    let moved_names: BTreeSet<String> = on_victim.iter().map(|t| t.hostname.clone()).collect();
    let t_moved = load.now();
    let back = wait_for(
        "the rescheduled webapps answering through the LB",
        120 * S,
        Duration::from_millis(100),
        || {
            moved_names
                .is_subset(&load.hosts_since(t_moved))
                .then(|| kill_at.elapsed())
        },
    );
    figure(
        "multihost: kill -> the rescheduled webapps answer through the LB (Swarm's start included)",
        format!(
            "{:.1} s ({:.1} s after Swarm had them running)",
            back.as_secs_f64(),
            (back - rescheduled).as_secs_f64()
        ),
    );
    for lb in &lbs {
        let e = lb_at(lb);
        wait_for(
            &format!("the LB on {} with all {WEBAPPS} UP again", e.name),
            60 * S,
            POLL,
            || (up_servers(&stats(engine_addr(&e, 8404))?, "web") == all).then_some(()),
        );
        let members = stack.members(&lb.node, &lb.container).unwrap_or_default();
        check_addresses(&members, &as_tasks(&after))
            .unwrap_or_else(|e| panic!("LB on {} after rescheduling: {e}", lb.node));
        let cfg = stack.lb_config(&lb.node, &lb.container).unwrap_or_default();
        for t in after.iter().filter(|t| moved_names.contains(&t.hostname)) {
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
    let steady = failures(&samples, t_moved, Duration::MAX);
    figure(
        "multihost: failed requests through the surviving LB after the kill",
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
    // `timeout connect` per try, which shows as slow answers rather than failures.
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
        "multihost: answers slower than 500 ms after the kill / the slowest",
        format!("{slow} / {:.2} s", slowest.as_secs_f64()),
    );
    assert!(
        failures(&samples, Duration::ZERO, t_kill).is_empty(),
        "no failures before the kill"
    );
    assert!(
        steady.is_empty(),
        "no failures once Swarm has rescheduled: {}",
        describe_failures(&steady)
    );
    // Generous bounds (targets 3 s / 2 s are the bench's business): a gossip failure
    // detector that waits for a reap, or an LB that keeps dead servers, fails these.
    for (h, (f, o)) in &seen {
        assert!(*f <= 10.0, "LB on {h}: victim's webapps failed after {f} s");
        assert!(
            *o <= 15.0,
            "LB on {h}: victim's addresses out of config after {o} s"
        );
    }
    assert!(span <= 10.0, "failed requests over {span} s");
    figure(
        "multihost: scenario (bed start to before cleanup)",
        format!("{:.0} s", t_suite.elapsed().as_secs_f64()),
    );
}

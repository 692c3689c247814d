//! End-to-end on Docker Swarm: `compose/stack.yml` on a single-node swarm this test creates
//! (`docker swarm init` on 127.0.0.1) and leaves again, on success and on failure.
//!
//! The stack's tasks have several interfaces (the stack's overlay, docker_gwbridge with the
//! default route); every member must be advertised at its overlay IP. Load goes only to the
//! LB's port published on the host (`mode: host`, read at 127.0.0.1), bounded in time and
//! count. An engine that is already in a swarm is not touched: skipped, or a failure under
//! CI=true, like a missing engine. Serialised with the compose scenarios (`setup`'s lock).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shoal_e2e::swarm::{check_addresses, Stack, Swarm, Task};
use shoal_e2e::*;

const S: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(200);

fn names(tasks: &[Task]) -> BTreeSet<String> {
    tasks.iter().map(|t| t.hostname.clone()).collect()
}

/// Waits until `svc` has exactly `n` running tasks (desired running) and no other running
/// container (old ones still draining), and returns them.
fn wait_tasks(stack: &Stack, svc: &str, n: usize, timeout: Duration) -> Vec<Task> {
    wait_for(
        &format!("{n} running {svc} tasks and no other container"),
        timeout,
        POLL,
        || {
            let t = stack.tasks(svc);
            (t.len() == n && stack.live_containers(svc) == n).then_some(t)
        },
    )
}

/// Waits until HAProxy has exactly `expected` UP in `pool`.
fn wait_pool(stats_addr: std::net::SocketAddr, expected: &BTreeSet<String>, timeout: Duration) {
    wait_for(
        &format!("HAProxy pool web = {expected:?}"),
        timeout,
        POLL,
        || (up_servers(&stats(stats_addr)?, "web") == *expected).then_some(()),
    );
}

/// Waits until the LB's agent lists every task alive at its overlay address.
fn wait_addresses(stack: &Stack, lb: &str, tasks: &[Task], timeout: Duration) {
    let mut last = String::new();
    let ok = wait_until(timeout, || match stack.members(lb) {
        Some(m) => match check_addresses(&m, tasks) {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        },
        None => false,
    });
    assert!(ok, "members never matched the tasks' overlay IPs: {last}");
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// A container's `State.StartedAt` as seconds since the epoch (via `date`, no time crate).
fn started_at(container: &str) -> f64 {
    let ts = docker(&["inspect", "-f", "{{.State.StartedAt}}", container]);
    let out = run_ok(
        Command::new("date").args(["-d", ts.trim(), "+%s.%N"]),
        10 * S,
    );
    out.trim().parse().expect("date +%s.%N")
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn swarm_stack_scales_2_5_1_under_load_and_a_replaced_task_rejoins_at_its_new_ip() {
    let Some(_serial) = setup() else { return };
    let t_suite = Instant::now();
    let Some(_swarm) = Swarm::init() else { return };
    let t_deploy = Instant::now();
    let stack = Stack::deploy("scale", &[("WEBAPP_REPLICAS", "2")]);

    let lb = wait_for("the lb task", 120 * S, POLL, || stack.lb());
    let (http, stats_addr) = (stack.lb_addr(&lb, 80), stack.lb_addr(&lb, 1936));
    let two = wait_tasks(&stack, "webapp", 2, 120 * S);
    wait_pool(stats_addr, &names(&two), 90 * S);
    figure(
        "swarm: stack deploy (2 webapps) to both UP in HAProxy",
        format!("{:.1} s", t_deploy.elapsed().as_secs_f64()),
    );
    // The advertise fix: overlay IPs, not docker_gwbridge's (which the old default-route
    // heuristic picked, and which other tasks cannot reach).
    let lb_task = stack.tasks("lb");
    wait_addresses(&stack, &lb, &[&two[..], &lb_task[..]].concat(), 30 * S);

    let load = Load::start(http, 4, Duration::from_millis(5), 300 * S, 400_000);
    std::thread::sleep(2 * S);

    // 2 -> 5: every new task serves load requests.
    let t0 = load.now();
    let t = Instant::now();
    stack.scale("webapp", 5);
    let five = wait_tasks(&stack, "webapp", 5, 120 * S);
    let want5 = names(&five);
    wait_for(
        "all 5 webapps serving",
        90 * S,
        Duration::from_millis(100),
        || want5.is_subset(&load.hosts_since(t0)).then_some(()),
    );
    let up5 = t.elapsed();
    figure(
        "swarm: service scale webapp=5 (from 2) to all 5 serving",
        format!("{:.1} s", up5.as_secs_f64()),
    );
    wait_addresses(&stack, &lb, &five, 30 * S);

    // 5 -> 1: the removed tasks drain (SIGTERM, state=draining, 3 s) and leave.
    let t_down = load.now();
    let t = Instant::now();
    stack.scale("webapp", 1);
    let one = wait_tasks(&stack, "webapp", 1, 90 * S);
    let gone = t.elapsed();
    let left = names(&one);
    wait_pool(stats_addr, &left, 30 * S);
    std::thread::sleep(2 * S);
    let t_after = load.now();
    std::thread::sleep(2 * S);
    assert_eq!(
        load.hosts_since(t_after),
        left,
        "only the remaining webapp answers after scale-down"
    );
    let sd = load.samples();
    let down_failed = failures(&sd, t_down, load.now());
    figure(
        "swarm: failed requests during scale-down 5->1",
        format!(
            "{} of {} (removed tasks gone after {:.1} s)",
            down_failed.len(),
            sd.iter().filter(|s| s.at >= t_down).count(),
            gone.as_secs_f64()
        ),
    );
    let scale_failed = failures(&sd, Duration::ZERO, load.now());
    figure(
        "swarm: failed requests over 2->5->1",
        format!("{} of {}", scale_failed.len(), sd.len()),
    );
    assert!(
        scale_failed.is_empty(),
        "{} failed: {}",
        scale_failed.len(),
        describe_failures(&scale_failed)
    );

    // Back to 2, then `service update --force`: each task is replaced (stop-first, one at a
    // time) by a new container with the same hostname (the slot's) and a new overlay IP.
    // The new one must rejoin at once under its old name and take its old entry over.
    stack.scale("webapp", 2);
    let before = wait_tasks(&stack, "webapp", 2, 120 * S);
    wait_pool(stats_addr, &names(&before), 60 * S);
    wait_addresses(&stack, &lb, &before, 30 * S);
    let t_upd = load.now();
    let t = Instant::now();
    stack.force_update("webapp");
    // Follow the LB's view: when is each name alive at an address it did not have before?
    let mut rejoined: Vec<(String, String, f64)> = Vec::new();
    let ok = wait_until(180 * S, || {
        if let Some(members) = stack.members(&lb) {
            for old in &before {
                if rejoined.iter().any(|(n, _, _)| *n == old.hostname) {
                    continue;
                }
                let entries: Vec<&Member> =
                    members.iter().filter(|m| m.name == old.hostname).collect();
                if let [m] = entries.as_slice() {
                    if m.status == "alive" && m.ip() != old.ip {
                        rejoined.push((old.hostname.clone(), m.ip().to_string(), now_epoch()));
                    }
                }
            }
        }
        rejoined.len() == before.len() && stack.update_state("webapp") == "completed"
    });
    assert!(
        ok,
        "not every replaced task rejoined at a new address (rejoined: {rejoined:?}, update \
         state {:?})",
        stack.update_state("webapp")
    );
    let update_took = t.elapsed();
    let after = wait_tasks(&stack, "webapp", 2, 60 * S);
    assert_eq!(
        names(&after),
        names(&before),
        "same slot names after the update"
    );
    for t in &after {
        let old = before.iter().find(|b| b.hostname == t.hostname).unwrap();
        assert_ne!(t.ip, old.ip, "{}: a replaced task has a new IP", t.hostname);
        assert_ne!(t.container, old.container);
    }
    // One entry per name, at the new address; HAProxy has both UP at the new addresses.
    wait_addresses(&stack, &lb, &after, 30 * S);
    wait_pool(stats_addr, &names(&after), 30 * S);
    let cfg = docker(&["exec", &lb, "cat", "/usr/local/etc/haproxy/haproxy.cfg"]);
    for t in &after {
        let old = before.iter().find(|b| b.hostname == t.hostname).unwrap();
        assert!(
            cfg.contains(&format!("server {} {}:3000", t.hostname, t.ip)),
            "{} at its new address in the config:\n{cfg}",
            t.hostname
        );
        assert!(
            !cfg.contains(&format!("{}:3000", old.ip)) || after.iter().any(|a| a.ip == old.ip),
            "old address {} still in the config:\n{cfg}",
            old.ip
        );
    }
    let mut rejoin_secs = Vec::new();
    for (name, ip, seen) in &rejoined {
        let t = after.iter().find(|t| t.hostname == *name).unwrap();
        assert_eq!(*ip, t.ip, "{name} rejoined at its task's overlay IP");
        rejoin_secs.push(seen - started_at(&t.container));
    }
    figure(
        "swarm: force-update, new container started to alive at its new IP in the LB's view",
        rejoin_secs
            .iter()
            .map(|s| format!("{s:.1} s"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let samples = load.stop();
    let upd_failed = failures(&samples, t_upd, Duration::MAX);
    // Counted over the whole load (deploy, scaling and the update), not only from the
    // update on: a failure anywhere in the run fails the test.
    let all_failed = failures(&samples, Duration::ZERO, Duration::MAX);
    figure(
        "swarm: service update --force (2 tasks, one at a time)",
        format!(
            "{:.1} s; failed requests {} of {} ({} of {} over the whole load)",
            update_took.as_secs_f64(),
            upd_failed.len(),
            samples.iter().filter(|s| s.at >= t_upd).count(),
            all_failed.len(),
            samples.len()
        ),
    );
    assert!(
        all_failed.is_empty(),
        "{} failed over the whole load: {}",
        upd_failed.len(),
        describe_failures(&all_failed)
    );
    // Rejoining "at once" (README: 0.1–0.3 s from the new container's start): 5 s
    // leaves room for a loaded single-node swarm and catches a rejoin that waits for a
    // probe cycle, a reap or a retry backoff.
    assert!(
        rejoin_secs.iter().all(|s| *s <= 5.0),
        "rejoin took {rejoin_secs:?} s"
    );
    figure(
        "swarm: scenario (swarm init to before cleanup)",
        format!("{:.0} s", t_suite.elapsed().as_secs_f64()),
    );
}

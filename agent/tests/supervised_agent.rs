//! `shoal agent ... -- CMD`: the agent as the container's supervisor, seen
//! from another agent. Real processes, real signals, real gossip.

mod common;

use std::time::{Duration, Instant};

use common::{ip, wait_for, Agent};

fn state_at(observer: &Agent, name: &str) -> Option<String> {
    observer
        .member(name)
        .and_then(|m| m["tags"]["state"].as_str().map(String::from))
}

#[test]
fn the_health_check_drives_the_gossiped_state_tag() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let flag = dir.path().join("healthy");
    let check = format!("test -f {}", flag.display());
    let seed = vec![format!("{}:7946", ip(20, 1))];
    let a = Agent::start("s1", &ip(20, 1), &seed, &[]);
    let b = Agent::start_in(
        dir.clone(),
        "s2",
        &ip(20, 2),
        &seed,
        &[
            "--check-cmd",
            &check,
            "--check-interval",
            "200ms",
            "--",
            "sleep",
            "120",
        ],
    );
    assert!(
        wait_for(Duration::from_secs(20), || state_at(&a, "s2").is_some()),
        "s2 never seen: {:?}\n{}",
        a.members(),
        b.log_text()
    );
    assert_eq!(state_at(&a, "s2").as_deref(), Some("starting"));
    std::fs::write(&flag, "").unwrap();
    let t = Instant::now();
    assert!(
        wait_for(Duration::from_secs(10), || state_at(&a, "s2").as_deref()
            == Some("ready")),
        "never ready: {:?}",
        a.member("s2")
    );
    eprintln!(
        "check passing -> state=ready at another node in {:?}",
        t.elapsed()
    );
    std::fs::remove_file(&flag).unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || state_at(&a, "s2").as_deref()
            == Some("unhealthy")),
        "never unhealthy: {:?}",
        a.member("s2")
    );
    // `shoal info` shows the supervised service.
    let out = b.cli(&["info", "--format", "json"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services = info["services"].as_array().expect("services in info");
    assert_eq!(services[0]["name"], "main");
    assert!(services[0]["pid"].as_i64().unwrap() > 0);
}

#[test]
fn sigterm_gossips_draining_and_leaves_before_the_child_is_signalled() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let events = dir.path().join("events.txt");
    let term = dir.path().join("term.txt");
    let handler = format!(
        "now=$(date +%s.%N); while IFS= read -r l; do echo \"$now $SERF_EVENT $l\" >> {}; done",
        events.display()
    );
    let seed = vec![format!("{}:7946", ip(21, 1))];
    let a = Agent::start_in(
        dir.clone(),
        "t1",
        &ip(21, 1),
        &seed,
        &["--event-handler", &handler],
    );
    let app = format!(
        "trap 'date +%s.%N > {}; exit 0' TERM; while :; do sleep 0.05; done",
        term.display()
    );
    let mut b = Agent::start_in(
        dir.clone(),
        "t2",
        &ip(21, 2),
        &seed,
        &[
            "--drain",
            "1s",
            "--tag",
            "service=web",
            "--",
            "sh",
            "-c",
            &app,
        ],
    );
    assert!(wait_for(Duration::from_secs(20), || a
        .status_of("t2")
        .is_some_and(|s| s == "alive")));
    // When `draining` is first seen in the cluster (t1's view, polled every 10 ms over
    // HTTP: the handler's own timestamps lag by the coalescing window).
    let draining_seen = {
        let api = a.api();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while std::time::Instant::now() < deadline {
                let (_, body) = common::http(&api, "GET", "/v1/members", "");
                let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let draining = doc["members"].as_array().is_some_and(|ms| {
                    ms.iter()
                        .any(|m| m["name"] == "t2" && m["tags"]["state"] == "draining")
                });
                if draining {
                    return Some(epoch_secs());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        })
    };
    let code = b.terminate(Duration::from_secs(15));
    assert_eq!(
        code,
        Some(0),
        "exit code of the main service; log:\n{}",
        b.log_text()
    );
    let term_at: f64 = std::fs::read_to_string(&term)
        .expect("the child got SIGTERM")
        .trim()
        .parse()
        .unwrap();
    assert!(wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .contains("member-leave t2")
    }));
    let log = std::fs::read_to_string(&events).unwrap();
    let first = |needle: &str| -> f64 {
        log.lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .fold(f64::MAX, f64::min)
    };
    let draining_at = first("state=draining");
    let left_at = first("member-leave t2");
    assert!(
        draining_at < term_at,
        "draining seen at {draining_at}, child signalled at {term_at}\n{log}"
    );
    assert!(
        left_at < term_at,
        "leave seen at {left_at}, child signalled at {term_at}\n{log}"
    );
    // The delay itself, not only the order: `--drain 1s` keeps the child
    // running for (at least about) 1 s after `draining` reached the cluster.
    let seen_at = draining_seen
        .join()
        .expect("poller")
        .expect("t1 never saw t2 draining");
    assert!(
        term_at - seen_at >= 0.9,
        "--drain 1s, but the child got SIGTERM {:.0} ms after t1 saw draining\n{log}",
        (term_at - seen_at) * 1000.0
    );
    eprintln!(
        "draining seen {:.0} ms and leave {:.0} ms before the child got SIGTERM",
        (term_at - draining_at) * 1000.0,
        (term_at - left_at) * 1000.0
    );
    assert_eq!(a.status_of("t2").as_deref(), Some("left"));
}

#[test]
fn the_main_services_exit_code_is_the_agents() {
    let seed = vec![format!("{}:7946", ip(22, 1))];
    let mut b = Agent::start(
        "u1",
        &ip(22, 1),
        &seed,
        &["--", "sh", "-c", "sleep 0.5; exit 3"],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut code = None;
    while Instant::now() < deadline {
        if let Some(c) = b.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            code = c.code();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(code, Some(3), "log:\n{}", b.log_text());
    // A missing command is refused before anything starts, exit 2.
    let out = common::output_within(
        std::process::Command::new(common::shoal_bin())
            .args([
                "agent",
                "--node",
                "u2",
                "--bind",
                &format!("{}:7946", ip(22, 2)),
            ])
            .args([
                "--api",
                &format!("{}:7373", ip(22, 2)),
                "--",
                "/nonexistent/app",
            ]),
        common::CLI_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/app"));
}

/// Wall-clock seconds, as `date +%s.%N` prints them in the scripts above.
fn epoch_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

//! lbgen's follow loop (the library code the `lbgen watch` binary runs)
//! against real `shoal agent` processes: joins, a kill -9, a drain and a
//! restart of the LB's own agent all reach the rendered HAProxy config.

mod common;

use std::time::{Duration, Instant};

use common::{ip, wait_for, Agent};

fn config_has(out: &std::path::Path, needle: &str) -> bool {
    std::fs::read_to_string(out).is_ok_and(|t| t.contains(needle))
}

#[test]
fn lbgen_renders_what_the_agents_gossip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("haproxy.cfg");
    let seed = vec![format!("{}:7946", ip(30, 1))];
    let mut lb = Agent::start("lb", &ip(30, 1), &seed, &["--tag", "role=lb"]);
    let web1 = Agent::start(
        "web-1",
        &ip(30, 2),
        &seed,
        &["--tag", "service=web", "--tag", "port=3000"],
    );
    let mut web2 = Agent::start(
        "web-2",
        &ip(30, 3),
        &seed,
        &["--tag", "service=web", "--tag", "port=3000"],
    );
    let _api = Agent::start(
        "api-1",
        &ip(30, 4),
        &seed,
        &[
            "--tag",
            "service=api",
            "--tag",
            "port=4000",
            "--tag",
            "route=/api",
            "--tag",
            "check=/health",
        ],
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = common::lbgen_watch_config(lb.api(), out.clone());
    let watcher = runtime.spawn(lbgen::watch::run(cfg, async {
        let _ = stop_rx.await;
    }));

    let web1_line = format!("server web-1 {}:3000 weight 100", ip(30, 2));
    let web2_line = format!("server web-2 {}:3000 weight 100", ip(30, 3));
    assert!(
        wait_for(Duration::from_secs(20), || config_has(&out, &web1_line)
            && config_has(&out, &web2_line)
            && config_has(&out, &format!("server api-1 {}:4000", ip(30, 4)))),
        "config never listed every backend:\n{}\nlb members: {:?}",
        std::fs::read_to_string(&out).unwrap_or_default(),
        lb.members()
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.contains("/api"),
        "path route for the api pool:\n{text}"
    );
    assert!(
        !text.contains("server lb "),
        "a member without `service` is no backend"
    );

    // kill -9: the server leaves the config once the agents declare it failed.
    web2.kill9();
    let t = Instant::now();
    assert!(
        wait_for(Duration::from_secs(15), || !config_has(
            &out,
            "server web-2 "
        )),
        "web-2 still in the config:\n{}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );
    eprintln!("kill -9 -> out of the config in {:?}", t.elapsed());

    // Draining is rendered as weight 0 (no new requests).
    assert!(web1
        .cli(&["tags", "--set", "state=draining"])
        .status
        .success());
    let drained = format!("server web-1 {}:3000 weight 0", ip(30, 2));
    assert!(
        wait_for(Duration::from_secs(10), || config_has(&out, &drained)),
        "web-1 not drained:\n{}",
        std::fs::read_to_string(&out).unwrap_or_default()
    );

    // The LB's own agent restarts, and membership changes while it is down:
    // lbgen reconnects and resyncs the full list from the new agent.
    lb.kill9();
    assert!(web1.cli(&["tags", "--set", "state=ready"]).status.success());
    let lb2 = Agent::start(
        "lb",
        &ip(30, 1),
        &[format!("{}:7946", ip(30, 2))],
        &["--tag", "role=lb"],
    );
    assert!(
        wait_for(Duration::from_secs(20), || config_has(&out, &web1_line)
            && config_has(&out, "server api-1 ")),
        "no resync after the agent restart:\n{}\nlb members: {:?}",
        std::fs::read_to_string(&out).unwrap_or_default(),
        lb2.members()
    );
    // The watch loop's own result: an error or a panic in it fails the test.
    let _ = stop_tx.send(());
    let outcome = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), watcher).await })
        .expect("lbgen watch did not stop")
        .expect("lbgen watch panicked");
    assert!(outcome.is_ok(), "lbgen watch failed: {outcome:?}");
}

//! User events and queries between real agents (Serf's `event` and
//! `query`), with handler scripts written in Serf's documented style
//! (`tests/fixtures/serf-handlers/`), run unmodified.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{converged, http, ip, wait_for, Agent};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/serf-handlers")
        .join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `n` agents named `u1..`, on test block `block`, each with `handlers(i)`.
fn cluster(block: u8, n: u8, handlers: impl Fn(u8) -> Vec<String>) -> Vec<Agent> {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let seed = vec![format!("{}:7946", ip(block, 1))];
    let agents: Vec<Agent> = (1..=n)
        .map(|i| {
            let mut extra: Vec<String> = vec!["--tag".into(), format!("idx={i}")];
            for h in handlers(i) {
                extra.push("--event-handler".into());
                extra.push(h);
            }
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            Agent::start_in(dir.clone(), &format!("u{i}"), &ip(block, i), &seed, &extra)
        })
        .collect();
    let names: Vec<String> = (1..=n).map(|i| format!("u{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let refs: Vec<&Agent> = agents.iter().collect();
    assert!(
        wait_for(Duration::from_secs(15), || converged(&refs, &names)),
        "the cluster did not converge"
    );
    agents
}

#[test]
fn a_user_event_reaches_every_members_handler_exactly_once_with_serfs_env_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let out = |i: u8| dir.path().join(format!("u{i}.txt"));
    let script = fixture("user-event.sh");
    let agents = cluster(90, 4, |i| {
        vec![format!(
            "user:deploy=OUT={} {}",
            out(i).display(),
            script.display()
        )]
    });
    // From the CLI, not coalesced; then one over the API.
    let sent = agents[2].cli(&["event", "--coalesce=false", "deploy", "v42"]);
    assert!(sent.status.success(), "{sent:?}");
    let stdout = String::from_utf8_lossy(&sent.stdout);
    assert!(stdout.contains("Event 'deploy' dispatched"), "{stdout}");
    let all_got = |needle: &str| (1..=4).all(|i| read(&out(i)).contains(needle));
    assert!(
        wait_for(Duration::from_secs(5), || all_got("payload=v42")),
        "not every handler ran: {:?}",
        (1..=4).map(|i| read(&out(i))).collect::<Vec<_>>()
    );
    let (status, body) = http(
        &agents[0].api(),
        "POST",
        "/v1/event",
        r#"{"name":"deploy","payload":"v43"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(wait_for(Duration::from_secs(5), || all_got("payload=v43")));
    // An event no handler takes here runs nothing.
    assert!(agents[0].cli(&["event", "restart"]).status.success());
    std::thread::sleep(Duration::from_millis(800));
    for i in 1..=4u8 {
        let text = read(&out(i));
        assert_eq!(text.matches("payload=v42").count(), 1, "u{i}: {text}");
        assert_eq!(text.matches("payload=v43").count(), 1, "u{i}: {text}");
        assert!(text.contains("New event: user. Data follows..."), "{text}");
        assert!(
            text.contains(&format!("name=deploy ltime=0 self=u{i}")),
            "{text}"
        );
        assert!(
            text.contains(&format!("name=deploy ltime=1 self=u{i}")),
            "{text}"
        );
        assert!(!text.contains("restart"), "{text}");
    }
    // Refusals are clear errors.
    let big = "x".repeat(8 * 1024 + 1);
    let refused = agents[0].cli(&["event", "deploy", &big]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("exceeds the limit of 8192"));
    let (status, body) = http(&agents[0].api(), "POST", "/v1/event", r#"{"name":"a b"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("whitespace"), "{body}");
}

#[test]
fn a_large_event_payload_arrives_whole_and_coalescing_keeps_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let out = |i: u8| dir.path().join(format!("u{i}.txt"));
    let agents = cluster(91, 3, |i| {
        vec![format!(
            "user=echo \"$SERF_USER_EVENT $(cat | wc -c) $(date +%s%N)\" >> {}",
            out(i).display()
        )]
    });
    // 6 KiB: announced by gossip, fetched over TCP from the sender.
    let payload = "p".repeat(6 * 1024);
    assert!(agents[0]
        .cli(&["event", "config", &payload])
        .status
        .success());
    assert!(
        wait_for(Duration::from_secs(5), || (1..=3)
            .all(|i| read(&out(i)).contains("config 6144 "))),
        "{:?}",
        (1..=3).map(|i| read(&out(i))).collect::<Vec<_>>()
    );
    // Ten coalescing events with one name in a burst: the first at once,
    // then only the latest of the rest; without coalescing, every one.
    for k in 0..10 {
        let body = format!(r#"{{"name":"burst","payload":"{}"}}"#, "b".repeat(k + 1));
        assert_eq!(http(&agents[1].api(), "POST", "/v1/event", &body).0, 200);
        let body = format!(
            r#"{{"name":"each","payload":"{}","coalesce":false}}"#,
            "e".repeat(k + 1)
        );
        assert_eq!(http(&agents[1].api(), "POST", "/v1/event", &body).0, 200);
    }
    assert!(wait_for(Duration::from_secs(5), || (1..=3).all(|i| {
        let t = read(&out(i));
        t.contains("burst 10 ") && t.matches("each ").count() == 10
    })));
    std::thread::sleep(Duration::from_millis(1500));
    for i in 1..=3 {
        let t = read(&out(i));
        let bursts = t.matches("burst ").count();
        assert!(
            (1..=3).contains(&bursts),
            "u{i} ran {bursts} burst events:\n{t}"
        );
        assert_eq!(t.matches("each ").count(), 10, "u{i}:\n{t}");
    }
}

#[test]
fn a_query_returns_every_response_and_finishes_long_before_its_timeout() {
    let script = fixture("uptime-query.sh");
    let agents = cluster(92, 4, |i| {
        let mut h = vec![format!("query:uptime={}", script.display())];
        if i % 2 == 0 {
            h.push("query:big=head -c 5000 /dev/zero | tr '\\0' x".into());
        }
        h
    });
    let t = Instant::now();
    let out = agents[0].cli(&["query", "uptime", "hello", "--timeout", "20s"]);
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{out:?}");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} of a 20 s timeout:\n{text}"
    );
    assert!(text.contains("Query 'uptime' dispatched"), "{text}");
    for i in 1..=4 {
        assert!(
            text.contains(&format!(
                "Response from 'u{i}': u{i} up (asked hello, ltime "
            )),
            "{text}"
        );
        assert!(text.contains(&format!("Ack from 'u{i}'")), "{text}");
    }
    assert!(text.contains("Total Responses: 4"), "{text}");
    // The handler's output is in the agent's log, named.
    assert!(wait_for(Duration::from_secs(2), || {
        agents[1].log_text().contains("event handler output")
    }));

    // A response larger than a packet comes whole (TCP); nodes without a
    // handler for it say so, so this one is quick too.
    let out = agents[0].cli(&["query", "big", "--format", "json", "--timeout", "20s"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let responses = doc["Responses"].as_object().expect("responses");
    assert_eq!(responses.len(), 2, "{doc}");
    for (_, r) in responses {
        assert_eq!(r.as_str().unwrap().len(), 5000);
    }
    assert_eq!(doc["Acks"].as_array().unwrap().len(), 4, "{doc}");

    // Filters and --no-ack.
    let out = agents[0].cli(&["query", "uptime", "--node", "u3", "--no-ack"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("Response from 'u3'"), "{text}");
    assert!(
        text.contains("Total Acks: 0") && text.contains("Total Responses: 1"),
        "{text}"
    );
    let out = agents[0].cli(&["query", "uptime", "--tag", "idx=^[24]$", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut from: Vec<&String> = doc["Responses"].as_object().unwrap().keys().collect();
    from.sort();
    assert_eq!(from, ["u2", "u4"], "{doc}");

    // The API streams the lines, the done line last.
    let (status, body) = http(
        &agents[3].api(),
        "POST",
        "/v1/query",
        r#"{"name":"uptime","payload":"x","timeout":"10s"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let lines: Vec<serde_json::Value> = body
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        // The body is chunked: skip the chunk sizes.
        .filter(|v| v.is_object())
        .collect();
    assert_eq!(lines[0]["type"], "started", "{body}");
    assert_eq!(lines.last().unwrap()["type"], "done", "{body}");
    assert_eq!(lines.last().unwrap()["complete"], true, "{body}");
    assert_eq!(lines.iter().filter(|l| l["type"] == "response").count(), 4);
}

#[test]
fn a_query_a_member_never_answers_ends_at_its_timeout() {
    let agents = cluster(93, 2, |i| {
        if i == 1 {
            vec!["query:slow=echo fast".into()]
        } else {
            vec!["query:slow=sleep 30".into()]
        }
    });
    let t = Instant::now();
    let out = agents[0].cli(&["query", "slow", "--timeout", "1500ms", "--format", "json"]);
    let took = t.elapsed();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert_eq!(doc["Responses"]["u1"], "fast\n", "{doc}");
    assert!(doc["Responses"].get("u2").is_none(), "{doc}");
}

#[test]
fn a_handler_filter_shoal_does_not_know_is_a_start_up_error_naming_it() {
    for (spec, item) in [
        ("usr:deploy=/bin/true", "usr:deploy"),
        ("query:=/bin/true", "query:"),
    ] {
        let mut cmd = std::process::Command::new(common::shoal_bin());
        cmd.args([
            "agent",
            "--node",
            "x",
            "--bind",
            &format!("{}:7946", ip(94, 1)),
        ])
        .args([
            "--api",
            &format!("{}:7373", ip(94, 1)),
            "--event-handler",
            spec,
        ]);
        let out = common::output_within(&mut cmd, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(2), "{spec}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("unknown event filter \"{item}\"")),
            "{spec}: {err}"
        );
    }
}

#[test]
fn a_restarted_agents_first_event_is_not_taken_for_an_old_one() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let out = dir.path().join("u1.txt");
    let seed = vec![format!("{}:7946", ip(95, 1))];
    let handler = format!(
        "user=echo \"$SERF_USER_EVENT $SERF_USER_LTIME\" >> {}",
        out.display()
    );
    let a = Agent::start_in(
        dir.clone(),
        "u1",
        &ip(95, 1),
        &seed,
        &["--event-handler", &handler],
    );
    let mut b = Agent::start_in(dir.clone(), "u2", &ip(95, 2), &seed, &[]);
    assert!(wait_for(Duration::from_secs(10), || converged(
        &[&a, &b],
        &["u1", "u2"]
    )));
    // Move the cluster's clock well past the 64 times a node remembers.
    for k in 0..80 {
        let body = format!(r#"{{"name":"tick{k}","coalesce":false}}"#);
        assert_eq!(http(&a.api(), "POST", "/v1/event", &body).0, 200);
    }
    assert!(wait_for(Duration::from_secs(5), || read(&out).contains("tick79 79")));
    // Until the gossip has stopped repeating them (10 sends each), so the
    // restarted node cannot learn the clock from them.
    std::thread::sleep(Duration::from_secs(3));
    b.kill9();
    let b = Agent::start_in(dir.clone(), "u2", &ip(95, 2), &seed, &[]);
    assert!(wait_for(Duration::from_secs(10), || converged(
        &[&a, &b],
        &["u1", "u2"]
    )));
    // It learned the clock with its push-pull: its event is new, not old.
    let sent = b.cli(&["event", "fresh"]);
    assert!(sent.status.success(), "{sent:?}");
    assert!(
        wait_for(Duration::from_secs(5), || read(&out).contains("fresh 8")),
        "the restarted node's event was dropped (or had an old Lamport time):\n{}",
        read(&out)
    );
}

#[test]
fn events_and_queries_work_with_an_encrypted_cluster_and_large_payloads_are_sealed_too() {
    let key = "cg8StVXbQJ0gPvMd9o7yrg+2oZ0f3WYydl9aGbyF/Bs=";
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let out = |i: u8| dir.path().join(format!("e{i}.txt"));
    let seed = vec![format!("{}:7946", ip(96, 1))];
    let agents: Vec<Agent> = (1..=2u8)
        .map(|i| {
            let user = format!("user=wc -c >> {}", out(i).display());
            Agent::start_in(
                dir.clone(),
                &format!("u{i}"),
                &ip(96, i),
                &seed,
                &[
                    "--encrypt",
                    key,
                    "--event-handler",
                    &user,
                    "--event-handler",
                    "query:big=head -c 3000 /dev/zero | tr '\\0' y",
                ],
            )
        })
        .collect();
    let refs: Vec<&Agent> = agents.iter().collect();
    assert!(wait_for(Duration::from_secs(10), || converged(
        &refs,
        &["u1", "u2"]
    )));
    assert!(agents[0]
        .cli(&["event", "cfg", &"z".repeat(5000)])
        .status
        .success());
    assert!(wait_for(Duration::from_secs(5), || (1..=2)
        .all(|i| read(&out(i)).contains("5000"))));
    let q = agents[1].cli(&["query", "big", "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&q.stdout).expect("json");
    assert_eq!(
        doc["Responses"]["u1"].as_str().map(str::len),
        Some(3000),
        "{doc}"
    );
    assert_eq!(
        doc["Responses"]["u2"].as_str().map(str::len),
        Some(3000),
        "{doc}"
    );
}

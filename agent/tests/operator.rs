//! The operator's surface with real agents: `shoal join`'s answer and exit
//! code, and the HTTP API's answers to wrong methods, wrong bodies and
//! event indexes it never handed out.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{converged, http, ip, wait_for, Agent};
use serde_json::Value;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn shoal_join_fails_naming_an_address_nobody_answers_and_counts_the_live_ones() {
    let a = Agent::start("j1", &ip(170, 1), &[], &[]);
    let b = Agent::start("j2", &ip(170, 2), &[], &[]);
    // Nothing listens on this address: the push-pull is refused.
    let nobody = format!("{}:7946", ip(170, 9));

    let t0 = Instant::now();
    let out = a.cli(&["join", &nobody]);
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout {:?} stderr {err}",
        text(&out.stdout)
    );
    assert!(
        err.contains(&nobody) && err.contains("could not join"),
        "{err}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(a.members().len(), 1, "a failed join must not add anyone");

    // A live agent and a dead address: joined, and the dead one is named.
    let out = a.cli(&["join", &b.gossip(), &nobody]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    assert!(
        stdout.contains("joined 1 of 2 node(s) contacted"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("{nobody}: failed")), "{stdout}");
    // The push-pull was waited for: b's table is merged (the loop applies
    // it just after the answer).
    assert!(
        wait_for(Duration::from_secs(2), || a.member("j2").is_some()),
        "j2 not in j1's table after the join"
    );
    assert!(wait_for(Duration::from_secs(10), || converged(
        &[&a, &b],
        &["j1", "j2"]
    )));

    // The API answers with the same counts; a join of nobody is a 502 naming it.
    let (code, body) = http(
        &a.api(),
        "POST",
        "/v1/join",
        &format!(r#"{{"addrs":["{}"]}}"#, b.gossip()),
    );
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["contacted"].as_u64(), v["joined"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    let (code, body) = http(
        &a.api(),
        "POST",
        "/v1/join",
        &format!(r#"{{"addrs":["{nobody}"]}}"#),
    );
    assert_eq!(code, 502, "{body}");
    assert!(body.contains(&nobody), "{body}");
}

#[test]
fn a_join_address_with_port_zero_is_refused_in_the_cli_the_api_and_at_start() {
    let a = Agent::start("z1", &ip(171, 1), &[], &[]);
    let out = a.cli(&["join", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("port 0"),
        "{}",
        text(&out.stderr)
    );
    let (code, body) = http(&a.api(), "POST", "/v1/join", r#"{"addrs":["lb:0"]}"#);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("port 0"), "{body}");
    let out = common::output_within(
        std::process::Command::new(common::shoal_bin()).args([
            "agent",
            "--node",
            "z2",
            "--join",
            "127.0.0.1:0",
        ]),
        common::CLI_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("--join") && err.contains("port 0"), "{err}");
}

#[test]
fn the_api_names_the_method_to_use_and_wants_json_objects() {
    let a = Agent::start("m1", &ip(172, 1), &[], &[]);
    for (method, path, allowed) in [
        ("POST", "/v1/members", "GET"),
        ("DELETE", "/v1/events", "GET"),
        ("POST", "/v1/tags", "PUT"),
        ("GET", "/v1/join", "POST"),
    ] {
        let (code, body) = http(&a.api(), method, path, "");
        assert_eq!(code, 405, "{method} {path}: {body}");
        let want = format!("{method} is not allowed on {path}; use {allowed}");
        assert!(body.contains(&want), "{method} {path}: {body}");
    }
    for (path, body) in [
        ("/v1/tags", "[]"),
        ("/v1/tags", r#"[{"a":"b"}]"#),
        ("/v1/tags", "\"x\""),
        ("/v1/join", r#"[["127.0.0.1:7946"]]"#),
    ] {
        let method = if path == "/v1/tags" { "PUT" } else { "POST" };
        let (code, answer) = http(&a.api(), method, path, body);
        assert_eq!(code, 400, "{method} {path} {body}: {answer}");
        assert!(answer.contains("must be a JSON object"), "{body}: {answer}");
    }
    let (code, answer) = http(&a.api(), "PUT", "/v1/tags", r#"{"set":{"role":"x"}}"#);
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains(r#""role":"x""#), "{answer}");
}

/// Opens `GET /v1/events?index=N` and reads lines until `done` holds or
/// `within` passes; every JSON line read so far.
struct Stream {
    s: std::net::TcpStream,
    pending: String,
}

impl Stream {
    fn open(api: &str, index: u64) -> Stream {
        let mut s = std::net::TcpStream::connect(api).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        write!(
            s,
            "GET /v1/events?index={index} HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        Stream {
            s,
            pending: String::new(),
        }
    }

    fn read_until(&mut self, within: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 8192];
        loop {
            let lines: Vec<Value> = self
                .pending
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
                .filter(|v| v.get("type").is_some())
                .collect();
            if done(&lines) || Instant::now() >= deadline {
                return lines;
            }
            match self.s.read(&mut buf) {
                Ok(0) => return lines,
                Ok(n) => self.pending.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => {}
            }
        }
    }
}

fn last_index(a: &Agent) -> u64 {
    let (_, body) = http(&a.api(), "GET", "/v1/info", "");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["events"]["last_index"].as_u64().unwrap()
}

#[test]
fn an_event_index_beyond_the_agents_own_resyncs_once_then_streams_new_events() {
    let a = Agent::start("e1", &ip(173, 1), &[], &[]);
    let last = last_index(&a);
    for (n, index) in [(0, u64::MAX), (1, last + 1000)] {
        let mut s = Stream::open(&a.api(), index);
        let first = s.read_until(Duration::from_secs(3), |l| !l.is_empty());
        assert_eq!(first.len(), 1, "index {index}: {first:?}");
        let resync = &first[0];
        assert_eq!(resync["type"], "resync", "index {index}: {resync}");
        let reason = resync["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("beyond"), "index {index}: {reason}");
        let now = resync["index"].as_u64().unwrap();
        assert!(now < 1000, "index {index}: resync to {now}");
        // The stream goes on from the agent's own index: a change shows up.
        let role = format!("r{n}");
        assert!(a
            .cli(&["tags", "--set", &format!("role={role}")])
            .status
            .success());
        let lines = s.read_until(Duration::from_secs(5), |l| {
            l.iter().any(|e| e["type"] == "member-update")
        });
        let update = lines
            .iter()
            .find(|e| e["type"] == "member-update")
            .unwrap_or_else(|| panic!("index {index}: no member-update in {lines:?}"));
        assert_eq!(update["member"]["tags"]["role"], role.as_str(), "{update}");
        assert!(update["index"].as_u64().unwrap() > now, "{update}");
        assert_eq!(
            lines.iter().filter(|e| e["type"] == "resync").count(),
            1,
            "index {index}: {lines:?}"
        );
    }
}

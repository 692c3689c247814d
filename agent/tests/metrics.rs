//! `GET /metrics` of real agents: every scrape is checked by Prometheus's own
//! parser and linter (`promtool check metrics`, Debian's `prometheus`
//! package), and its values follow a join, a kill -9 and a graceful leave.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{converged, ip, wait_for, Agent};

const CONVERGE: Duration = Duration::from_secs(20);
/// kill -9 → failed (the local profile's probe and suspicion: ~1-2 s).
const FAILED_WITHIN: Duration = Duration::from_secs(10);
const LEFT_WITHIN: Duration = Duration::from_secs(5);

/// One sample: its labels and value.
type Samples = Vec<(String, BTreeMap<String, String>, f64)>;

/// A scrape: the raw text (already accepted by promtool) and its samples.
struct Scrape {
    text: String,
    samples: Samples,
}

impl Scrape {
    /// The sum of `name`'s samples whose labels include every one of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }
}

/// An HTTP GET with extra headers; (status, headers, body).
fn get(addr: &str, path: &str, headers: &[&str]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect api");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// `promtool check metrics` on `text`: it must parse and pass the lint.
fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: install Debian's `prometheus` package (.ci/run does)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool refused the scrape: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The samples of a Prometheus text exposition promtool accepted: a line
/// is `name{k="v",...} value` (label values here never hold `"` or `,`).
fn samples(text: &str) -> Samples {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').expect("label");
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        out.push((name.to_string(), labels, value));
    }
    out
}

fn scrape(a: &Agent) -> Scrape {
    let (status, head, text) = get(&a.api(), "/metrics", &[]);
    assert_eq!(status, 200, "{head}{text}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    promtool_accepts(&text);
    Scrape {
        samples: samples(&text),
        text,
    }
}

/// The metric families of a scrape (its `# TYPE` lines).
fn families(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// The metrics named in the first column of docs/metrics.md's table.
fn documented() -> std::collections::BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let doc = std::fs::read_to_string(path).expect("docs/metrics.md");
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `shoal_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("shoal_{name}"))
        .collect()
}

/// Every counter of `after` is at least its value in `before`.
fn counters_only_grow(before: &Scrape, after: &Scrape) {
    for (name, labels, was) in &before.samples {
        let counter = name.ends_with("_total") || name.ends_with("_count");
        if !counter {
            continue;
        }
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let now = after.sum(name, &pairs);
        assert!(now >= *was, "{name}{labels:?} went down: {was} -> {now}");
    }
}

#[test]
fn metrics_follow_a_join_a_kill_and_a_leave() {
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
    let services = dir.path().join("services.toml");
    std::fs::write(
        &services,
        r#"
[services.main]
command = ["sleep", "600"]
main = true

[services.flaky]
command = "sleep 0.2; exit 1"
restart = "on-failure"
backoff = "100ms"
backoff_max = "100ms"
max_restarts = 100

[check]
command = "true"
interval = "200ms"
"#,
    )
    .expect("services file");
    let ips: Vec<String> = (1..=4).map(|n| ip(150, n)).collect();
    let seed = vec![format!("{}:7946", ips[0])];
    let names = ["m1", "m2", "m3", "m4"];
    let services_arg = services.display().to_string();
    let mut agents = vec![Agent::start_in(
        dir.clone(),
        "m1",
        &ips[0],
        &[],
        &["--event-handler", "true", "--services", &services_arg],
    )];
    for i in 1..4 {
        agents.push(Agent::start(names[i], &ips[i], &seed, &[]));
    }
    {
        let refs: Vec<&Agent> = agents.iter().collect();
        assert!(
            wait_for(CONVERGE, || converged(&refs, &names)),
            "no convergence"
        );
    }
    // Probes run, the handler ran, the flaky service was restarted, checks passed.
    assert!(
        wait_for(Duration::from_secs(10), || {
            let s = scrape(&agents[0]);
            s.sum("shoal_probe_acks_received_total", &[]) >= 3.0
                && s.sum("shoal_handler_runs_total", &[("result", "ok")]) >= 1.0
                && s.sum("shoal_service_restarts_total", &[("service", "flaky")]) >= 1.0
                && s.sum("shoal_health_checks_total", &[("result", "pass")]) >= 2.0
        }),
        "{}",
        scrape(&agents[0]).text
    );
    let joined = scrape(&agents[0]);
    let s = &joined;
    assert_eq!(
        s.sum("shoal_members", &[("status", "alive")]),
        4.0,
        "{}",
        s.text
    );
    assert_eq!(s.sum("shoal_members", &[("status", "failed")]), 0.0);
    assert!(s.sum("shoal_member_events_total", &[("kind", "member-join")]) >= 4.0);
    let probes = s.sum("shoal_probes_sent_total", &[]);
    let acks = s.sum("shoal_probe_acks_received_total", &[]);
    assert!(acks <= probes, "{acks} acks for {probes} probes");
    assert_eq!(
        s.sum(
            "shoal_swim_messages_total",
            &[("kind", "ping"), ("direction", "out")]
        ),
        probes
    );
    assert!(s.sum("shoal_probe_rtt_seconds_count", &[]) >= 3.0);
    // Loopback round trips are far below a second.
    let rtt_sum = s.sum("shoal_probe_rtt_seconds_sum", &[]);
    assert!(rtt_sum / s.sum("shoal_probe_rtt_seconds_count", &[]) < 0.5);
    // Three joiners push-pulled with the seed.
    assert!(
        s.sum(
            "shoal_push_pulls_total",
            &[("direction", "in"), ("result", "ok")]
        ) >= 3.0
    );
    assert!(
        s.sum(
            "shoal_push_pull_duration_seconds_count",
            &[("direction", "in")]
        ) >= 3.0
    );
    for (transport, dir) in [("udp", "in"), ("udp", "out"), ("tcp", "in"), ("tcp", "out")] {
        let labels = [("transport", transport), ("direction", dir)];
        assert!(
            s.sum("shoal_packets_total", &labels) >= 1.0,
            "{transport} {dir}"
        );
        assert!(s.sum("shoal_bytes_total", &labels) > s.sum("shoal_packets_total", &labels));
    }
    assert_eq!(
        s.sum(
            "shoal_service_state",
            &[("service", "main"), ("state", "running")]
        ),
        1.0
    );
    assert_eq!(s.sum("shoal_service_state", &[("service", "main")]), 1.0);
    assert!(s.has("shoal_gossip_timer_lag_seconds_count"));
    // This agent (handlers, services, a check) shows every family, and
    // docs/metrics.md has a row for each, and none more.
    assert_eq!(families(&s.text), documented(), "scrape vs docs/metrics.md");
    // A member without services shows none.
    assert!(!scrape(&agents[1]).has("shoal_service_state"));

    // kill -9: m4 is suspected by whoever probes it, then failed.
    agents[3].kill9();
    assert!(
        wait_for(FAILED_WITHIN, || scrape(&agents[0])
            .sum("shoal_members", &[("status", "failed")])
            == 1.0),
        "m4 never failed at m1"
    );
    let killed = scrape(&agents[0]);
    assert_eq!(killed.sum("shoal_members", &[("status", "alive")]), 3.0);
    assert_eq!(
        killed.sum("shoal_member_events_total", &[("kind", "member-failed")]),
        1.0
    );
    counters_only_grow(&joined, &killed);
    let survivors: Vec<Scrape> = agents[..3].iter().map(scrape).collect();
    let raised: f64 = survivors
        .iter()
        .map(|s| s.sum("shoal_suspicions_raised_total", &[]))
        .sum();
    let indirect: f64 = survivors
        .iter()
        .map(|s| s.sum("shoal_indirect_probes_sent_total", &[]))
        .sum();
    assert!(raised >= 1.0, "nobody raised a suspicion of m4");
    assert!(indirect >= 1.0, "nobody probed m4 indirectly");

    // A graceful leave (SIGTERM): left, with its event.
    assert_eq!(agents[2].terminate(Duration::from_secs(10)), Some(0));
    assert!(
        wait_for(LEFT_WITHIN, || scrape(&agents[0])
            .sum("shoal_members", &[("status", "left")])
            == 1.0),
        "m3 never left at m1"
    );
    let left = scrape(&agents[0]);
    assert_eq!(left.sum("shoal_members", &[("status", "alive")]), 2.0);
    assert_eq!(
        left.sum("shoal_member_events_total", &[("kind", "member-leave")]),
        1.0
    );
    counters_only_grow(&killed, &left);
}

#[test]
fn metrics_need_the_token_and_count_dropped_packets_by_reason() {
    let addr = ip(151, 1);
    let a = Agent::start("t1", &addr, &[], &["--api-token", "s3cret"]);
    let (status, _, body) = get(&a.api(), "/metrics", &[]);
    assert_eq!(status, 401, "{body}");
    let (status, _, _) = get(&a.api(), "/metrics", &["Authorization: Bearer wrong"]);
    assert_eq!(status, 401);
    let auth = "Authorization: Bearer s3cret";

    // Packets the hardening code refuses, each for its reason.
    let udp = UdpSocket::bind(format!("{addr}:0")).expect("udp");
    let gossip = a.gossip();
    udp.send_to(b"GET / HTTP/1.0\r\n", &gossip).expect("send"); // foreign
    udp.send_to(&[0xD5, 9, 1, 0], &gossip).expect("send"); // another version
    udp.send_to(&[0xD5, 1, 1, 0xff, 0xff], &gossip)
        .expect("send"); // bad SWIM body
    udp.send_to(&[0xD5; 1500], &gossip).expect("send"); // oversize
    let read = |accept: &[&str]| {
        let mut headers = vec![auth];
        headers.extend_from_slice(accept);
        get(&a.api(), "/metrics", &headers)
    };
    let dropped = |reason: &str| {
        let (_, _, text) = read(&[]);
        Scrape {
            samples: samples(&text),
            text,
        }
        .sum("shoal_packets_dropped_total", &[("reason", reason)])
    };
    assert!(
        wait_for(Duration::from_secs(5), || dropped("size") >= 1.0),
        "{}",
        read(&[]).2
    );
    assert_eq!(dropped("foreign"), 1.0);
    assert_eq!(dropped("version"), 1.0);
    assert_eq!(dropped("decode"), 1.0);
    assert_eq!(dropped("size"), 1.0);

    let (status, head, text) = read(&[]);
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    promtool_accepts(&text);
    // OpenMetrics for a scraper that asks for it.
    let (status, head, text) = read(&["Accept: application/openmetrics-text; version=1.0.0"]);
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

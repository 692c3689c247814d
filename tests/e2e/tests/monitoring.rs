//! The demo's monitoring profile (`compose/monitoring.yml`) on a real Docker engine: the LB,
//! N webapps and Prometheus. Prometheus finds every target from membership (lbgen renders
//! its file_sd list) and scrapes them all; the LB writes one JSON access log line per
//! request; the webapps see the client's address, the scheme and the request id.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use shoal_e2e::{http_get, repo_root, run, setup, wait_for, Project};

const S: Duration = Duration::from_secs(1);
const WEBAPPS: usize = 2;

/// `shoal-prometheus:$SHOAL_IMAGE_TAG` (and the other images again, from the build cache).
fn build_prometheus_image() {
    let script = repo_root().join("docker/build-images.sh");
    let out = run(
        Command::new(&script)
            .env("MONITORING", "1")
            .env("SKIP_BASE", "1")
            .env("SKIP_CARGO", "1"),
        Duration::from_secs(900),
    );
    assert!(
        out.status.success(),
        "{} (MONITORING=1) failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `%`-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query; the result vector (None while Prometheus does not answer).
fn query(prom: SocketAddr, q: &str) -> Option<Vec<serde_json::Value>> {
    let r = http_get(
        prom,
        &format!("/api/v1/query?query={}", encode(q)),
        None,
        5 * S,
    )
    .ok()?;
    let v = r.json()?;
    (v["status"] == "success").then(|| v["data"]["result"].as_array().cloned())?
}

/// The one value of a query that yields a single sample.
fn scalar(prom: SocketAddr, q: &str) -> Option<f64> {
    let r = query(prom, q)?;
    match r.as_slice() {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

#[test]
fn prometheus_scrapes_every_target_from_membership_and_the_lb_logs_json_per_request() {
    let Some(_serial) = setup() else { return };
    build_prometheus_image();
    let token = format!("e2e-{:x}", std::process::id());
    let p = Project::new(
        "monitoring",
        &["../../../compose/monitoring.yml"],
        &[("SHOAL_API_TOKEN", &token), ("PROM_PORT", "0")],
    );
    p.up(&["--scale", &format!("webapp={WEBAPPS}")]);
    let prom: SocketAddr = p
        .compose(&["port", "prometheus", "9090"])
        .trim()
        .parse()
        .expect("prometheus port");
    let http = p.lb_addr(80);

    // Membership: N webapps + the LB, alive (through the token-protected API).
    wait_for("N+1 alive members", 90 * S, S, || {
        p.members()
            .filter(|m| m.iter().filter(|m| m.status == "alive").count() == WEBAPPS + 1)
    });

    // Discovery: every agent (N+1), the LB's HAProxy exporter and its lbgen are targets.
    let targets = WEBAPPS + 3;
    wait_for("every target discovered", 90 * S, S, || {
        scalar(prom, "count(up)").filter(|n| *n == targets as f64)
    });
    wait_for(
        "HAProxy's exporter scraped, N servers UP",
        60 * S,
        S,
        || {
            let up = scalar(prom, r#"up{job="haproxy"}"#)?;
            let servers = scalar(
                prom,
                r#"sum(haproxy_server_status{proxy="web",state="UP"})"#,
            )?;
            (up == 1.0 && servers == WEBAPPS as f64).then_some(())
        },
    );
    let agent_nodes: BTreeSet<String> = query(prom, r#"up{job="shoal-agent"}"#)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["metric"]["node"].as_str().map(str::to_string))
        .collect();
    let members: BTreeSet<String> = p
        .members()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(agent_nodes, members, "one shoal-agent target per member");

    wait_for("lbgen's /metrics scraped", 60 * S, S, || {
        scalar(prom, r#"up{job="lbgen"}"#).filter(|n| *n == 1.0)
    });
    wait_for("count(up == 1) = every target", 60 * S, S, || {
        scalar(prom, "count(up == 1)").filter(|n| *n == targets as f64)
    });
    // The LB's agent counts N+1 alive members.
    let lb_node = p
        .hostnames("lb")
        .into_iter()
        .next()
        .expect("the lb container");
    let q = format!(r#"shoal_members{{status="alive",job="shoal-agent",node="{lb_node}"}}"#);
    wait_for("the agent's members gauge: N+1 alive", 60 * S, S, || {
        scalar(prom, &q).filter(|n| *n == (WEBAPPS + 1) as f64)
    });

    // One JSON access log line per request on the LB's stdout, and the webapp sees the
    // client's address, the scheme and the same request id.
    let paths: Vec<String> = (0..5).map(|i| format!("/monitoring-e2e-{i}")).collect();
    let mut answers = Vec::new();
    for path in &paths {
        let r = http_get(http, path, None, 5 * S).expect("request through the LB");
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        answers.push(r.json().expect("the webapp's JSON"));
    }
    let lb = p.containers("lb").remove(0);
    let lines = wait_for("an access log line per request", 20 * S, S / 2, || {
        let out = Command::new("docker").args(["logs", &lb]).output().ok()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ours: Vec<serde_json::Value> = text
            .lines()
            // HAProxy's json converter writes `/` as `\/`: match after parsing.
            .filter(|l| l.contains("\"frontend\":\"http-in\"") && l.contains("monitoring-e2e-"))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        (ours.len() >= paths.len()).then_some(ours)
    });
    std::thread::sleep(S);
    for (path, answer) in paths.iter().zip(&answers) {
        let of_path: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| l["path"] == path.as_str())
            .collect();
        assert_eq!(of_path.len(), 1, "{path}: {of_path:?}");
        let line = of_path[0];
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["backend"], "web", "{line}");
        assert_eq!(line["server"], answer["hostname"], "{line} vs {answer}");
        assert_eq!(
            line["request_id"], answer["request_id"],
            "{line} vs {answer}"
        );
        let client = line["client_ip"].as_str().unwrap_or_default();
        assert!(!client.is_empty() && client != "-", "{line}");
        assert_eq!(answer["forwarded_for"], client, "{answer}");
        assert_eq!(answer["forwarded_proto"], "http", "{answer}");
    }
}

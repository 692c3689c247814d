//! The load balancer's own agent restarts (SIGTERM, and separately kill -9) while requests
//! flow through a real HAProxy that lbgen drives from that agent: no request may fail and no
//! backend may leave the live config, and lbgen must follow the new agent afterwards.
//!
//! The outage this pins: a restarted agent numbers its events from 1 again and, before its
//! first push-pull, lists only itself. lbgen resumed with its old index (missing every later
//! event) and applied that nearly empty table: every server left the config.

mod common;
use lbgen::testing as lbtest;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{ip, wait_for, Agent};
use lbgen::model::{MembersDoc, Model};
use lbgen::render::{Renderer, Vars};
use lbgen::source::SourceSpec;
use lbgen::watch::WatchConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WEB_PORT: u16 = 3000;
const BACKENDS: usize = 3;

/// An HTTP server on the backend agent's own address: 200 to every request.
async fn serve_backend(ip: String) {
    let listener = tokio::net::TcpListener::bind((ip.as_str(), WEB_PORT))
        .await
        .expect("bind backend");
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") && got.len() < 64 * 1024 {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
        });
    }
}

fn servers_in(cfg: &Path) -> usize {
    std::fs::read_to_string(cfg)
        .map(|t| {
            t.lines()
                .filter(|l| l.trim_start().starts_with("server web-"))
                .count()
        })
        .unwrap_or(0)
}

fn config_has(cfg: &Path, needle: &str) -> bool {
    std::fs::read_to_string(cfg).is_ok_and(|t| t.contains(needle))
}

fn synced_with_backends(lb: &Agent) -> bool {
    let (status, body) = common::http(&lb.api(), "GET", "/v1/members", "");
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(&body) else {
        return false;
    };
    status == 200
        && doc["synced"] == true
        && doc["members"].as_array().is_some_and(|ms| {
            ms.iter()
                .filter(|m| m["status"] == "alive" && m["tags"]["service"] == "web")
                .count()
                == BACKENDS
        })
}

/// A membership change made after the restart reaches the config: lbgen follows the new run.
fn drain_reaches_config(web: &Agent, cfg: &Path, what: &str) {
    let drained = format!("server {} {}:{WEB_PORT} weight 0", web.name, web.ip);
    assert!(web
        .cli(&["tags", "--set", "state=draining"])
        .status
        .success());
    assert!(
        wait_for(Duration::from_secs(15), || config_has(cfg, &drained)),
        "after {what}, a drain of {} never reached the config:\n{}",
        web.name,
        std::fs::read_to_string(cfg).unwrap_or_default()
    );
    assert!(web.cli(&["tags", "--set", "state=ready"]).status.success());
    let ready = format!("server {} {}:{WEB_PORT} weight 100", web.name, web.ip);
    assert!(
        wait_for(Duration::from_secs(15), || config_has(cfg, &ready)),
        "after {what}, {} never came back to ready:\n{}",
        web.name,
        std::fs::read_to_string(cfg).unwrap_or_default()
    );
}

#[test]
fn restarting_the_lb_agent_under_load_fails_no_request_and_keeps_every_backend() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let lb_ip = ip(50, 1);
    let web_ips: Vec<String> = (0..BACKENDS).map(|i| ip(50, 2 + i as u8)).collect();
    let gossip = |ip: &str| format!("{ip}:7946");
    let lb_join: Vec<String> = web_ips.iter().map(|i| gossip(i)).collect();

    let webs: Vec<Agent> = web_ips
        .iter()
        .enumerate()
        .map(|(i, wip)| {
            runtime.spawn(serve_backend(wip.clone()));
            Agent::start(
                &format!("web-{i}"),
                wip,
                &[gossip(&lb_ip)],
                &[
                    "--tag",
                    "service=web",
                    "--tag",
                    &format!("port={WEB_PORT}"),
                    "--tag",
                    "check=/health",
                ],
            )
        })
        .collect();
    let mut lb = Agent::start("lb", &lb_ip, &lb_join, &["--tag", "role=lb"]);

    // HAProxy in master-worker mode from a config with no backend yet (as the lb image).
    let http_port = lbtest::free_port();
    let vars = Vars::with_overrides(&[
        "bind=127.0.0.1".to_string(),
        format!("http_port={http_port}"),
        format!("stats_port={}", lbtest::free_port()),
        format!("stats_socket={}", d.join("admin.sock").display()),
        format!("server_state_file={}", d.join("server-state").display()),
        "check_inter=500ms".to_string(),
    ])
    .unwrap();
    let cfg_path = d.join("haproxy.cfg");
    let empty = MembersDoc::from_json(r#"{"members":[]}"#).unwrap();
    let bootstrap = Renderer::builtin()
        .render(&Model::build(&empty), &vars)
        .unwrap();
    std::fs::write(&cfg_path, bootstrap).unwrap();
    let haproxy = lbtest::Haproxy::start(d, &cfg_path);

    // lbgen watch following the LB's agent; no periodic resync, so only the event stream and
    // the snapshot rules can bring it back after a restart.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = WatchConfig {
        vars,
        ..lbtest::watch_config(
            SourceSpec::api(lb.api(), None),
            cfg_path.clone(),
            haproxy.master_sock.clone(),
        )
    };
    let watcher = runtime.spawn(lbgen::watch::run(cfg, async {
        let _ = stop_rx.await;
    }));
    assert!(
        wait_for(Duration::from_secs(30), || servers_in(&cfg_path)
            == BACKENDS),
        "lbgen never rendered the {BACKENDS} backends:\n{}\nlb members: {:?}",
        std::fs::read_to_string(&cfg_path).unwrap_or_default(),
        lb.members()
    );
    // HAProxy's health checks mark them up before the load starts.
    let probe = || {
        runtime.block_on(async {
            let load = lbtest::Load::start(http_port, 1, 20, Duration::from_secs(5));
            let started = tokio::time::Instant::now();
            while load.total() < 20 && started.elapsed() < Duration::from_secs(6) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let r = load.finish().await;
            r.failed == 0 && r.ok == 20
        })
    };
    assert!(
        wait_for(Duration::from_secs(20), probe),
        "requests through HAProxy never succeeded"
    );

    // Watch the live config for the whole run: the fewest servers it ever held.
    let fewest = Arc::new(AtomicUsize::new(BACKENDS));
    let watching = Arc::new(AtomicBool::new(true));
    let monitor = {
        let (fewest, watching, cfg_path) = (fewest.clone(), watching.clone(), cfg_path.clone());
        std::thread::spawn(move || {
            while watching.load(Ordering::SeqCst) {
                fewest.fetch_min(servers_in(&cfg_path), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let load = {
        let _enter = runtime.enter();
        lbtest::Load::start(http_port, 4, 400_000, Duration::from_secs(150))
    };

    // 1. A graceful restart (SIGTERM: the agent leaves, then starts again). The new agent
    // rejoins only 1.5 s after its API is up (as when its join names do not resolve yet):
    // lbgen has reconnected by then and must not apply the table of an agent that knows
    // nobody. A long --sync-timeout keeps the one-node fallback out of this window.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        lb.terminate(Duration::from_secs(10)).is_some(),
        "lb agent did not stop on SIGTERM"
    );
    lb = Agent::start(
        "lb",
        &lb_ip,
        &[],
        &["--tag", "role=lb", "--sync-timeout", "60s"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let mut join = vec!["join"];
    join.extend(lb_join.iter().map(String::as_str));
    assert!(lb.cli(&join).status.success(), "shoal join failed");
    assert!(
        wait_for(Duration::from_secs(20), || synced_with_backends(&lb)),
        "the restarted lb agent never synced: {:?}",
        lb.members()
    );
    assert_eq!(
        fewest.load(Ordering::SeqCst),
        BACKENDS,
        "a backend left the live config while the lb agent restarted (SIGTERM)"
    );
    drain_reaches_config(&webs[0], &cfg_path, "a SIGTERM restart of the lb agent");

    // 2. A crash (kill -9: no leave), then a start.
    lb.kill9();
    std::thread::sleep(Duration::from_millis(300));
    lb = Agent::start("lb", &lb_ip, &lb_join, &["--tag", "role=lb"]);
    assert!(
        wait_for(Duration::from_secs(20), || synced_with_backends(&lb)),
        "the lb agent never synced after kill -9: {:?}",
        lb.members()
    );
    drain_reaches_config(&webs[1], &cfg_path, "a kill -9 of the lb agent");
    std::thread::sleep(Duration::from_millis(500));

    let result = runtime.block_on(load.finish());
    watching.store(false, Ordering::SeqCst);
    monitor.join().unwrap();
    eprintln!(
        "{} ok, {} failed in {:?}; fewest servers in the live config: {}",
        result.ok,
        result.failed,
        result.elapsed,
        fewest.load(Ordering::SeqCst)
    );
    assert!(result.ok > 100, "too little load ran: {} ok", result.ok);
    assert_eq!(
        result.failed, 0,
        "requests failed across the lb agent's restarts: {:?}",
        result.errors
    );
    assert_eq!(
        fewest.load(Ordering::SeqCst),
        BACKENDS,
        "a backend left the live config while the lb agent restarted (kill -9)"
    );
    let _ = stop_tx.send(());
    let outcome = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), watcher).await })
        .expect("lbgen watch did not stop")
        .expect("lbgen watch panicked");
    assert!(outcome.is_ok(), "lbgen watch failed: {outcome:?}");
    drop(haproxy);
}

/// The first lines of `GET path` on a streaming endpoint, read for at most `within`.
fn stream_lines(addr: &str, path: &str, want: usize, within: Duration) -> Vec<serde_json::Value> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect api");
    s.set_read_timeout(Some(within)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(s).lines() {
        let Ok(line) = line else { break };
        // Chunked encoding: JSON lines between chunk-size lines.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim()) {
            if v.is_object() {
                lines.push(v);
            }
        }
        if lines.len() >= want {
            break;
        }
    }
    lines
}

#[test]
fn an_event_stream_resumed_from_another_agent_run_starts_over_with_a_resync() {
    let a = Agent::start("solo", &ip(51, 1), &[], &["--sync-timeout", "200ms"]);
    let members = || {
        let (_, body) = common::http(&a.api(), "GET", "/v1/members", "");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    // Synced first, so no `synced` notice comes between the lines this test expects.
    assert!(wait_for(Duration::from_secs(10), || members()["synced"] == true));
    let doc = members();
    let run = doc["run"]
        .as_str()
        .expect("members document names the agent run");
    assert_eq!(run.len(), 16, "{doc}");
    // The agent's own join is event 1; a client of another run asks for index 1000.
    let lines = stream_lines(
        &a.api(),
        "/v1/events?index=1000&run=0123456789abcdef",
        2,
        Duration::from_secs(5),
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["type"], "resync", "{lines:?}");
    assert_eq!(lines[0]["run"], run, "{lines:?}");
    assert!(
        lines[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("restarted"),
        "{lines:?}"
    );
    assert_eq!(
        lines[1]["index"], 1,
        "the log is replayed from its start: {lines:?}"
    );
    assert_eq!(lines[1]["member"]["name"], "solo", "{lines:?}");
    // The same run resumes where it was: nothing before the next event or keepalive.
    let same = stream_lines(
        &a.api(),
        &format!("/v1/events?index=1&run={run}"),
        1,
        Duration::from_secs(8),
    );
    assert_eq!(same.len(), 1, "{same:?}");
    assert_eq!(same[0]["type"], "keepalive", "{same:?}");
    assert_eq!(same[0]["run"], run, "{same:?}");
}

#[test]
fn a_lone_agent_reports_synced_only_after_its_sync_timeout() {
    let a = Agent::start("alone", &ip(52, 1), &[], &["--sync-timeout", "2s"]);
    let synced = || {
        let (_, body) = common::http(&a.api(), "GET", "/v1/members", "");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["synced"].clone()
    };
    assert_eq!(synced(), false, "synced before any push-pull or timeout");
    let t = std::time::Instant::now();
    assert!(wait_for(Duration::from_secs(10), || synced() == true));
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "synced after {:?}, before its 2 s timeout",
        t.elapsed()
    );
}

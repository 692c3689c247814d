//! Several load balancers from one membership (issue 13): each LB is a real `shoal agent`
//! (`role=lb`) with its own lbgen follow loop (the code `lbgen watch` runs) and its own real
//! HAProxy. After every membership change — a join, a tag change, a drain, a kill -9, a
//! graceful leave, an LB that joins late, one that joins after a pool's only member left —
//! their config files become byte-identical, hold the change, and equal the render of an LB
//! agent's own members snapshot.
//!
//! All LBs render with the same variables, as LBs on their own hosts would: they share the
//! HAProxy ports (HAProxy binds with SO_REUSEPORT, so the kernel spreads connections over
//! them), each runs in its own directory so the relative stats socket (`unix@admin.sock`) is
//! its own, and the server-state file is off (its absolute path would be shared here).

mod common;
use lbgen::testing as lbtest;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{ip, wait_for, Agent};
use lbgen::model::{MembersDoc, Model};
use lbgen::render::{Renderer, Vars};
use lbgen::source::SourceSpec;
use lbgen::watch::WatchConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WEB_PORT: u16 = 3000;
/// The third octet of this test's addresses (see [`common::ip`]).
const NET: u8 = 60;

/// An HTTP server on a backend agent's own address: 200 to every request.
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

/// One load balancer: its agent, its HAProxy and its lbgen follow loop.
struct Lb {
    agent: Agent,
    cfg: PathBuf,
    // Dropped after the fields above: HAProxy is stopped, then the directory removed.
    _haproxy: lbtest::Haproxy,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    watcher: Option<tokio::task::JoinHandle<Result<(), lbgen::Error>>>,
    _dir: tempfile::TempDir,
}

impl Lb {
    fn start(rt: &tokio::runtime::Runtime, n: u8, join: &[String], vars: &Vars) -> Lb {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("haproxy.cfg");
        // As the lb image: HAProxy starts from the empty cluster's config.
        let empty = MembersDoc::from_json(r#"{"members":[]}"#).expect("empty document");
        let bootstrap = Renderer::builtin()
            .render(&Model::build(&empty), vars)
            .expect("empty render");
        std::fs::write(&cfg, bootstrap).expect("write bootstrap config");
        let haproxy = lbtest::Haproxy::start(dir.path(), &cfg);
        let agent = Agent::start(&format!("lb-{n}"), &ip(NET, n), join, &["--tag", "role=lb"]);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let watch = WatchConfig {
            vars: vars.clone(),
            ..lbtest::watch_config(
                SourceSpec::api(agent.api(), None),
                cfg.clone(),
                haproxy.master_sock.clone(),
            )
        };
        let watcher = rt.spawn(lbgen::watch::run(watch, async {
            let _ = stop_rx.await;
        }));
        Lb {
            agent,
            cfg,
            _haproxy: haproxy,
            stop: Some(stop),
            watcher: Some(watcher),
            _dir: dir,
        }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.cfg).unwrap_or_default()
    }

    /// Stops the follow loop; its own result (an error or a panic fails the test).
    fn stop_watch(&mut self, rt: &tokio::runtime::Runtime) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(w) = self.watcher.take() {
            let outcome = rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), w).await })
                .expect("lbgen watch did not stop")
                .expect("lbgen watch panicked");
            assert!(
                outcome.is_ok(),
                "lbgen watch of {} failed: {outcome:?}",
                self.agent.name
            );
        }
    }
}

/// The config an agent's members snapshot renders to (None while it is not synced).
fn render_of(agent: &Agent, vars: &Vars) -> Option<String> {
    let (status, body) = common::http(&agent.api(), "GET", "/v1/members", "");
    let doc = MembersDoc::from_json(&body)
        .ok()
        .filter(|_| status == 200)?;
    doc.is_synced()
        .then(|| Renderer::builtin().render(&Model::build(&doc), vars).ok())
        .flatten()
}

/// Waits until every LB's file holds `change` and all are byte-identical and equal to the
/// render of the first LB agent's snapshot, or fails the test showing every LB's file.
fn settle(lbs: &[&Lb], vars: &Vars, what: &str, within: Duration, change: impl Fn(&str) -> bool) {
    let t = Instant::now();
    let ok = wait_for(within, || {
        let texts: Vec<String> = lbs.iter().map(|lb| lb.text()).collect();
        change(&texts[0])
            && texts.iter().all(|t| *t == texts[0])
            && render_of(&lbs[0].agent, vars).as_deref() == Some(texts[0].as_str())
    });
    if !ok {
        let mut report = String::new();
        for lb in lbs {
            report.push_str(&format!(
                "--- {} ({}):\n{}\nits members: {:?}\n",
                lb.agent.name,
                lb.cfg.display(),
                lb.text(),
                lb.agent.members()
            ));
        }
        panic!("after {what}, the LBs' configs did not become identical with the change within {within:?}\n{report}");
    }
    eprintln!(
        "{what}: {} LBs identical after {:?}",
        lbs.len(),
        t.elapsed()
    );
}

fn server_line(name: &str, ip: &str, weight: u16) -> String {
    format!("server {name} {ip}:{WEB_PORT} weight {weight} ")
}

#[test]
fn every_lb_renders_byte_identical_configs_after_each_membership_change() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let http_port = lbtest::free_port();
    let vars = Vars::with_overrides(&[
        "bind=127.0.0.1".to_string(),
        format!("http_port={http_port}"),
        format!("stats_port={}", lbtest::free_port()),
        "stats_socket=unix@admin.sock".to_string(),
        "server_state_file=".to_string(),
        "check_inter=500ms".to_string(),
    ])
    .unwrap();
    let gossip = |n: u8| format!("{}:7946", ip(NET, n));
    let backend = |n: u8, name: &str, extra: &[&str]| {
        let wip = ip(NET, n);
        rt.spawn(serve_backend(wip.clone()));
        let port = format!("port={WEB_PORT}");
        let mut tags = vec!["--tag", &port, "--tag", "check=/health"];
        tags.extend_from_slice(extra);
        Agent::start(name, &wip, &[gossip(1)], &tags)
    };

    let mut lb1 = Lb::start(&rt, 1, &[], &vars);
    let mut lb2 = Lb::start(&rt, 2, &[gossip(1)], &vars);
    let web1 = backend(11, "web-1", &["--tag", "service=web"]);
    let web2 = backend(12, "web-2", &["--tag", "service=web"]);
    let mut api1 = backend(
        21,
        "api-1",
        &["--tag", "service=api", "--tag", "route=/api"],
    );
    let (w1, w2, w3, a1) = (ip(NET, 11), ip(NET, 12), ip(NET, 13), ip(NET, 21));
    let bound = Duration::from_secs(20);

    settle(
        &[&lb1, &lb2],
        &vars,
        "start",
        Duration::from_secs(30),
        |t| {
            t.contains(&server_line("web-1", &w1, 100))
                && t.contains(&server_line("web-2", &w2, 100))
                && t.contains(&server_line("api-1", &a1, 100))
        },
    );

    // A join (a runtime `add server` on each LB, no reload).
    let mut web3 = backend(13, "web-3", &["--tag", "service=web"]);
    settle(&[&lb1, &lb2], &vars, "join", bound, |t| {
        t.contains(&server_line("web-3", &w3, 100))
    });

    // A tag change.
    assert!(web1.cli(&["tags", "--set", "weight=50"]).status.success());
    settle(&[&lb1, &lb2], &vars, "tag change", bound, |t| {
        t.contains(&server_line("web-1", &w1, 50))
    });

    // A drain.
    assert!(web2
        .cli(&["tags", "--set", "state=draining"])
        .status
        .success());
    settle(&[&lb1, &lb2], &vars, "drain", bound, |t| {
        t.contains(&server_line("web-2", &w2, 0))
    });

    // A kill -9: each LB's agent must declare it failed.
    web3.kill9();
    settle(
        &[&lb1, &lb2],
        &vars,
        "kill -9",
        Duration::from_secs(30),
        |t| !t.contains("server web-3 ") && t.contains("server web-1 "),
    );

    // An LB that joins late renders what the others have, then follows the next changes.
    let mut lb3 = Lb::start(&rt, 3, &[gossip(1), gossip(11)], &vars);
    settle(
        &[&lb1, &lb2, &lb3],
        &vars,
        "late LB",
        Duration::from_secs(30),
        |t| t.contains(&server_line("web-2", &w2, 0)) && t.contains(&server_line("web-1", &w1, 50)),
    );
    // A graceful leave of a pool's only member: its server goes, the pool and its route stay
    // (answering 503, never falling through to `web`) until the member is reaped.
    assert_eq!(api1.terminate(Duration::from_secs(10)), Some(0));
    settle(&[&lb1, &lb2, &lb3], &vars, "leave", bound, |t| {
        !t.contains("server api-1 ") && t.contains("\nbackend api\n")
    });

    // An LB that joins after the pool's only member left: its agent's first sync carries
    // the left member (and the failed web-3), so its config has the pool too, answering
    // 503 like the others', not sending `/api` to the default pool.
    let mut lb4 = Lb::start(&rt, 4, &[gossip(1)], &vars);
    settle(
        &[&lb1, &lb2, &lb3, &lb4],
        &vars,
        "an LB joining after the leave",
        Duration::from_secs(30),
        |t| !t.contains("server api-1 ") && t.contains("\nbackend api\n"),
    );
    assert!(
        render_of(&lb4.agent, &vars).as_deref() == Some(lb4.text().as_str()),
        "the late LB's file is not the render of its own agent's members"
    );
    assert_eq!(
        lb4.agent.status_of("api-1").as_deref(),
        Some("left"),
        "the late LB's agent: {:?}",
        lb4.agent.members()
    );

    assert!(web2.cli(&["tags", "--set", "state=ready"]).status.success());
    settle(
        &[&lb1, &lb2, &lb3, &lb4],
        &vars,
        "ready again",
        bound,
        |t| t.contains(&server_line("web-2", &w2, 100)),
    );

    // The shared port serves through whichever LB the kernel picks: every request answered
    // (once HAProxy's health checks have the servers up; the last change was a reload).
    let mut last = String::new();
    let healthy = wait_for(Duration::from_secs(20), || {
        rt.block_on(async {
            let load = lbtest::Load::start(http_port, 2, 60, Duration::from_secs(10));
            let started = tokio::time::Instant::now();
            while load.total() < 60 && started.elapsed() < Duration::from_secs(11) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let r = load.finish().await;
            last = format!("{} ok, {} failed: {:?}", r.ok, r.failed, r.errors);
            r.failed == 0 && r.ok >= 60
        })
    });
    assert!(
        healthy,
        "requests through the LBs' shared port did not all succeed: {last}"
    );

    for lb in [&mut lb1, &mut lb2, &mut lb3, &mut lb4] {
        lb.stop_watch(&rt);
    }
}

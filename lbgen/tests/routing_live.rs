//! Routing from tags with the real HAProxy 2.6 and real backends on 127.0.0.1: the HA
//! web-services layout (host rule, the four path rules, extra listeners with their own default
//! pools and routes, a check on another port, one-day stickiness), a pool scaled to 0 that
//! answers 503 on its path instead of falling through, per-pool check keywords on servers
//! added at runtime (no reload), and a weighted split.

use lbgen::testing as common;

use std::time::{Duration, Instant};

use common::{next_report, reload_counts, server_state, write_members, Backend, Haproxy};
use lbgen::apply::ApplyOutcome;
use lbgen::model::Model;
use lbgen::render::{Renderer, Vars};
use lbgen::source::SourceSpec;
use lbgen::watch::{Report, WatchConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// HAProxy + an in-process `lbgen watch` (default template) following a members file.
struct Rig {
    _dir: tempfile::TempDir,
    http_port: u16,
    members_file: std::path::PathBuf,
    out: std::path::PathBuf,
    haproxy: Haproxy,
    reports: tokio::sync::mpsc::UnboundedReceiver<Report>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    watcher: Option<tokio::task::JoinHandle<Result<(), lbgen::Error>>>,
}

impl Rig {
    async fn start(members: &[Value]) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let http_port = common::free_port();
        let vars = Vars::with_overrides(&[
            "bind=127.0.0.1".to_string(),
            format!("http_port={http_port}"),
            format!("stats_port={}", common::free_port()),
            format!("stats_socket={}", d.join("admin.sock").display()),
            format!("server_state_file={}", d.join("server-state").display()),
            "check_inter=200ms".to_string(),
            "access_log=".to_string(),
        ])
        .unwrap();
        let members_file = d.join("members.json");
        let out = d.join("haproxy.cfg");
        write_members(&members_file, members);
        let empty = Renderer::builtin()
            .render(&Model::default(), &vars)
            .unwrap();
        std::fs::write(&out, empty).unwrap();
        let haproxy = Haproxy::start(&d, &out);
        let (rtx, mut reports) = tokio::sync::mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let cfg = WatchConfig {
            vars,
            reports: Some(rtx),
            ..common::watch_config(
                SourceSpec::File(members_file.clone()),
                out.clone(),
                haproxy.master_sock.clone(),
            )
        };
        let watcher = tokio::spawn(lbgen::watch::run(cfg, async {
            let _ = stop_rx.await;
        }));
        let r = next_report(&mut reports).await;
        assert!(
            matches!(r.outcome, ApplyOutcome::Reloaded { .. }),
            "{:?}",
            r.outcome
        );
        Rig {
            _dir: dir,
            http_port,
            members_file,
            out,
            haproxy,
            reports,
            stop: Some(stop_tx),
            watcher: Some(watcher),
        }
    }

    /// Writes `members`; the apply it caused.
    async fn set(&mut self, members: &[Value]) -> ApplyOutcome {
        write_members(&self.members_file, members);
        next_report(&mut self.reports).await.outcome
    }

    async fn reloads(&self) -> u64 {
        let (reloads, failed) = reload_counts(&self.haproxy).await;
        assert_eq!(failed, 0, "a reload failed");
        reloads
    }

    fn config(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap()
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(w) = self.watcher.take() {
            w.await.unwrap().unwrap();
        }
    }
}

/// A member on 127.0.0.1 serving on `port`, with these tags (`service` among them).
fn m(name: &str, port: u16, tags: &[(&str, &str)]) -> Value {
    let mut t = serde_json::Map::new();
    t.insert("port".into(), port.to_string().into());
    t.insert("check".into(), "/health".into());
    for (k, v) in tags {
        t.insert(k.to_string(), v.to_string().into());
    }
    json!({"name": name, "addr": "127.0.0.1:7946", "status": "alive", "tags": t})
}

fn with_status(mut v: Value, status: &str) -> Value {
    v["status"] = status.into();
    v
}

/// One HTTP/1.1 request with `Connection: close`: (status, headers, body).
async fn req(port: u16, path: &str, host: &str, extra: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to haproxy");
    let r = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(r.as_bytes()).await.expect("send");
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// The body of `GET path` once it is `want` (servers just added pass their checks first).
async fn wait_body(port: u16, path: &str, host: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = req(port, path, host, "").await;
        if body == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{host}{path} on :{port}: {status} {body:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ha_layout_from_tags_serves_every_listener_and_route() {
    let names = [
        "web-1", "api2-1", "api0-1", "upload-1", "queue-1", "queue-2", "admin-1", "l1-1", "l2-1",
        "l2api-1", "checker",
    ];
    let mut b = std::collections::BTreeMap::new();
    for n in names {
        b.insert(n, Backend::start(n).await);
    }
    let port = |n: &str| b[n].port;
    let (l1, l2) = (common::free_port(), common::free_port());
    let (l1_tls, l2_s) = (format!("{l1}/tls"), l2.to_string());
    let check_port = port("checker").to_string();
    let members = vec![
        m("web-1", port("web-1"), &[("service", "web")]),
        m(
            "api2-1",
            port("api2-1"),
            &[("service", "api-v2"), ("route", "/api/v2")],
        ),
        m(
            "api0-1",
            port("api0-1"),
            &[
                ("service", "api-v0"),
                ("route", "/api/v0"),
                ("check_port", &check_port),
            ],
        ),
        m(
            "upload-1",
            port("upload-1"),
            &[
                ("service", "upload"),
                ("route", "/upload"),
                ("timeout_server", "1h"),
            ],
        ),
        m(
            "queue-1",
            port("queue-1"),
            &[
                ("service", "queue"),
                ("route", "/socket.io-queue"),
                ("sticky", "1d"),
            ],
        ),
        m(
            "queue-2",
            port("queue-2"),
            &[
                ("service", "queue"),
                ("route", "/socket.io-queue"),
                ("sticky", "1d"),
            ],
        ),
        m(
            "admin-1",
            port("admin-1"),
            &[("service", "admin"), ("host", "admin.example.com")],
        ),
        m(
            "l1-1",
            port("l1-1"),
            &[("service", "svc-a"), ("listen", &l1_tls)],
        ),
        m(
            "l2-1",
            port("l2-1"),
            &[("service", "svc-b"), ("listen", &l2_s)],
        ),
        m(
            "l2api-1",
            port("l2api-1"),
            &[
                ("service", "svc-b-api"),
                ("listen", &l2_s),
                ("route", "/api/v2"),
            ],
        ),
    ];
    let rig = Rig::start(&members).await;
    let p = rig.http_port;
    let cases: &[(u16, &str, &str, &str)] = &[
        (p, "/", "t", "web-1"),
        (p, "/other", "t", "web-1"),
        (p, "/api/v2/users", "t", "api2-1"),
        (p, "/api/v2", "t", "api2-1"),
        (p, "/api/v0/users", "t", "api0-1"),
        (p, "/upload/file", "t", "upload-1"),
        (p, "/api/v2x", "t", "web-1"),
        (p, "/", "admin.example.com", "admin-1"),
        (p, "/api/v2/users", "Admin.Example.COM:8080", "admin-1"),
        (l1, "/", "t", "l1-1"),
        (l1, "/api/v2/users", "t", "l1-1"),
        (l2, "/", "t", "l2-1"),
        (l2, "/api/v2/users", "t", "l2api-1"),
        (l2, "/upload/file", "t", "l2-1"),
    ];
    for (port, path, host, want) in cases {
        wait_body(*port, path, host, want).await;
    }
    // One-day stickiness: the cookie the first answer sets keeps the client on its server.
    let (status, head, first) = req(p, "/socket.io-queue/x", "t", "").await;
    assert_eq!(status, 200, "{head}");
    let cookie = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or(l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no cookie from the sticky pool: {head}"))
        .to_string();
    for _ in 0..6 {
        let (_, _, body) = req(
            p,
            "/socket.io-queue/x",
            "t",
            &format!("Cookie: {cookie}\r\n"),
        )
        .await;
        assert_eq!(body, first, "sticky client moved (cookie {cookie})");
    }
    // The api-v0 pool is checked on the checker's port, never on the one it serves (while
    // the other pools are checked where they serve).
    let checks = |n: &str| b[n].checks.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(15);
    while checks("checker") < 3 || checks("web-1") < 3 {
        assert!(
            Instant::now() < deadline,
            "checks: checker {}, web-1 {}",
            checks("checker"),
            checks("web-1")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        checks("api0-1"),
        0,
        "api-v0 was checked on the port it serves"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_scaled_to_zero_answers_503_on_its_path_while_the_default_pool_still_serves() {
    let web = Backend::start("web-1").await;
    let up = Backend::start("upload-1").await;
    let web_m = m("web-1", web.port, &[("service", "web")]);
    let up_m = m(
        "upload-1",
        up.port,
        &[("service", "upload"), ("route", "/upload")],
    );
    let mut rig = Rig::start(&[web_m.clone(), up_m.clone()]).await;
    let p = rig.http_port;
    wait_body(p, "/upload/a", "t", "upload-1").await;
    let reloads = rig.reloads().await;
    for status in ["left", "failed"] {
        let outcome = rig
            .set(&[web_m.clone(), with_status(up_m.clone(), status)])
            .await;
        assert!(
            matches!(outcome, ApplyOutcome::Runtime { .. }),
            "{status}: {outcome:?}"
        );
        let (code, head, body) = req(p, "/upload/a", "t", "").await;
        assert_eq!(code, 503, "{status}: {head}\n{body}");
        for internal in ["upload", "web", "127.0.0.1"] {
            assert!(
                !body.contains(internal),
                "503 page names {internal:?}: {body}"
            );
        }
        wait_body(p, "/", "t", "web-1").await;
        wait_body(p, "/other", "t", "web-1").await;
        // It comes back without a reload.
        let outcome = rig.set(&[web_m.clone(), up_m.clone()]).await;
        assert!(
            matches!(outcome, ApplyOutcome::Runtime { .. }),
            "{outcome:?}"
        );
        wait_body(p, "/upload/a", "t", "upload-1").await;
    }
    // Not ready (the supervisor's gate) is the same as gone: 503, not the default pool.
    let mut starting = up_m.clone();
    starting["tags"]["state"] = "starting".into();
    rig.set(&[web_m.clone(), starting]).await;
    assert_eq!(req(p, "/upload/a", "t", "").await.0, 503);
    assert_eq!(
        rig.reloads().await,
        reloads,
        "scaling to 0 and back reloaded"
    );
    // Reaped (gone from the members document): the pool and its route go, by a reload.
    let outcome = rig.set(std::slice::from_ref(&web_m)).await;
    assert!(
        matches!(outcome, ApplyOutcome::Reloaded { .. }),
        "{outcome:?}"
    );
    assert!(!rig.config().contains("backend upload"));
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_added_at_runtime_carry_the_pools_check_keywords_without_a_reload() {
    let checker = Backend::start("checker").await;
    let bs = [
        Backend::start("api-1").await,
        Backend::start("api-2").await,
        Backend::start("api-3").await,
    ];
    let cp = checker.port.to_string();
    let tags = [
        ("service", "api"),
        ("check_port", cp.as_str()),
        ("check_inter", "300ms"),
        ("check_rise", "1"),
        ("check_fall", "2"),
        ("check_timeout", "1s"),
        ("check_status", "200"),
        ("sticky", "1d"),
    ];
    let members = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| m(&format!("api-{}", i + 1), bs[i].port, &tags))
            .collect()
    };
    let mut rig = Rig::start(&members(1)).await;
    let reloads = rig.reloads().await;
    for n in [2, 3] {
        let outcome = rig.set(&members(n)).await;
        assert!(
            matches!(outcome, ApplyOutcome::Runtime { .. }),
            "{outcome:?}"
        );
        let name = format!("api-{n}");
        let line = rig
            .config()
            .lines()
            .find(|l| l.starts_with(&format!("    server {name} ")))
            .unwrap_or_else(|| panic!("no server line for {name}"))
            .to_string();
        assert!(
            line.contains(&format!("check inter 300ms fall 2 rise 1 port {cp} ")),
            "{line}"
        );
        // The running server checks the check port (show servers state: srv_check_port).
        let row = server_state(&rig.haproxy, "api", &name)
            .await
            .unwrap_or_else(|| panic!("{name} not in the running worker"));
        assert_eq!(
            row.get(21).map(String::as_str),
            Some(cp.as_str()),
            "{row:?}"
        );
    }
    // Every server takes requests (a client without a cookie is balanced).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 3 {
        assert!(Instant::now() < deadline, "only {seen:?} answered");
        let (_, _, body) = req(rig.http_port, "/", "t", "").await;
        seen.insert(body);
    }
    assert_eq!(rig.reloads().await, reloads, "a runtime add reloaded");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_split_sends_each_pool_roughly_its_share() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let members = [
        m(
            "blue-1",
            blue.port,
            &[
                ("service", "blue"),
                ("route", "/app"),
                ("route_weight", "80"),
            ],
        ),
        m(
            "green-1",
            green.port,
            &[
                ("service", "green"),
                ("route", "/app"),
                ("route_weight", "20"),
            ],
        ),
    ];
    let rig = Rig::start(&members).await;
    // Both servers up before counting.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "only {seen:?} answered");
        seen.insert(req(rig.http_port, "/app/x", "t", "").await.2);
    }
    let (mut b, mut g) = (0u32, 0u32);
    let n = 600;
    for _ in 0..n {
        match req(rig.http_port, "/app/x", "t", "").await.2.as_str() {
            "blue" => b += 1,
            "green" => g += 1,
            other => panic!("/app answered by {other:?}"),
        }
    }
    assert_eq!(b + g, n);
    eprintln!("route_weight 80/20 over {n} requests: blue {b}, green {g}");
    // 20% of 600 = 120; a generous bound (binomial sd ~10).
    assert!((60..=200).contains(&g), "green took {g} of {n}, blue {b}");
    rig.stop().await;
}

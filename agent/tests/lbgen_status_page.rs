//! `lbgen watch --http` against real `shoal agent` processes and a real HAProxy:
//! its `/metrics` parse with Prometheus's own `promtool` and follow a join, a kill -9 and a
//! drain; its status page, in a real headless chromium, shows every member and each pool's
//! servers with HAProxy's live states, and updates without a reload of the page.

mod common;
use lbgen::testing as lbtest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ip, wait_for, Agent};
use lbgen::model::{MembersDoc, Model};
use lbgen::render::{Renderer, Vars};
use lbgen::source::SourceSpec;
use lbgen::watch::WatchConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WEB_PORT: u16 = 3000;

/// An HTTP server on a backend agent's own address: 200 to every request (health checks too).
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

/// An LB agent, web agents, HAProxy, and `lbgen watch --http` following the LB's agent.
struct Cluster {
    runtime: tokio::runtime::Runtime,
    test: u8,
    lb: Agent,
    webs: BTreeMap<String, Agent>,
    /// The `--http` address.
    http: String,
    cfg: PathBuf,
    _haproxy: lbtest::Haproxy,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(test: u8, webs: usize) -> Cluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let lb = Agent::start("lb", &ip(test, 1), &[], &["--tag", "role=lb"]);
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
        let cfg = d.join("haproxy.cfg");
        let empty = MembersDoc::from_json(r#"{"members":[]}"#).unwrap();
        std::fs::write(
            &cfg,
            Renderer::builtin()
                .render(&Model::build(&empty), &vars)
                .unwrap(),
        )
        .unwrap();
        let haproxy = lbtest::Haproxy::start(d, &cfg);
        let listener = lbgen::http::bind("127.0.0.1:0").unwrap();
        let http = listener.local_addr().unwrap().to_string();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let watch = WatchConfig {
            vars,
            leaving_max: lbgen::watch::LEAVING_MAX,
            renders: Vec::new(),
            http: Some(listener),
            ..lbtest::watch_config(
                SourceSpec::api(lb.api(), None),
                cfg.clone(),
                haproxy.master_sock.clone(),
            )
        };
        runtime.spawn(lbgen::watch::run(watch, async {
            let _ = stop_rx.await;
        }));
        let mut c = Cluster {
            runtime,
            test,
            lb,
            webs: BTreeMap::new(),
            http,
            cfg,
            _haproxy: haproxy,
            _stop: stop,
            _dir: dir,
        };
        for i in 1..=webs {
            c.join(&format!("web-{i}"), 1 + i as u8);
        }
        c
    }

    /// Starts a web agent (and its backend) at host `n` of the test's range.
    fn join(&mut self, name: &str, n: u8) {
        let wip = ip(self.test, n);
        self.runtime.spawn(serve_backend(wip.clone()));
        let a = Agent::start(
            name,
            &wip,
            &[self.lb.gossip()],
            &[
                "--tag",
                "service=web",
                "--tag",
                &format!("port={WEB_PORT}"),
                "--tag",
                "check=/health",
            ],
        );
        self.webs.insert(name.to_string(), a);
    }

    fn web(&mut self, name: &str) -> &mut Agent {
        self.webs.get_mut(name).expect("a web agent")
    }

    fn get(&self, path: &str) -> String {
        let (status, body) = common::http(&self.http, "GET", path, "");
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    fn config(&self) -> String {
        std::fs::read_to_string(&self.cfg).unwrap_or_default()
    }
}

/// `/metrics` through `promtool check metrics` (Debian's `prometheus` package): the text
/// must parse and pass its lint. Returns sample → value.
fn scrape(c: &Cluster) -> BTreeMap<String, f64> {
    let text = c.get("/metrics");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (apt-get install prometheus)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn metric(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no {key} in /metrics: {m:?}"))
}

/// Polls `/metrics` until `cond` holds (each scrape checked by promtool).
fn wait_metrics(
    c: &Cluster,
    what: &str,
    cond: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let mut last = BTreeMap::new();
    let ok = wait_for(Duration::from_secs(30), || {
        last = scrape(c);
        cond(&last)
    });
    assert!(
        ok,
        "{what}: /metrics never got there: {last:#?}\nconfig:\n{}",
        c.config()
    );
    last
}

const ALIVE: &str = "lbgen_members{status=\"alive\"}";
const FAILED: &str = "lbgen_members{status=\"failed\"}";
const READY: &str = "lbgen_servers{state=\"ready\"}";
const DRAIN: &str = "lbgen_servers{state=\"drain\"}";
const GENERATION: &str = "lbgen_config_generation";
const RELOADS: &str = "lbgen_applies_total{kind=\"reload\",result=\"applied\"}";
const RUNTIME: &str = "lbgen_applies_total{kind=\"runtime\",result=\"applied\"}";
const JOINS: &str = "lbgen_events_received_total{kind=\"member-join\"}";
const FAILS: &str = "lbgen_events_received_total{kind=\"member-failed\"}";
const LAST_OK: &str = "lbgen_last_successful_apply_timestamp_seconds";

#[test]
fn lbgen_metrics_parse_and_follow_a_join_a_kill_and_a_drain() {
    let mut c = Cluster::start(61, 2);
    let m0 = wait_metrics(&c, "two web servers", |m| {
        metric(m, ALIVE) == 3.0 && metric(m, READY) == 2.0 && metric(m, RELOADS) >= 1.0
    });
    assert_eq!(metric(&m0, "lbgen_pools"), 1.0);
    assert!(metric(&m0, GENERATION) >= 1.0);
    assert!(metric(&m0, LAST_OK) > 1.7e9, "a unix time: {m0:?}");
    assert!(metric(&m0, "lbgen_apply_duration_seconds_count") >= 1.0);

    // A join: one more member and server, a join event counted, a new config live.
    c.join("web-3", 4);
    let m1 = wait_metrics(&c, "web-3 joined", |m| {
        metric(m, ALIVE) == 4.0
            && metric(m, READY) == 3.0
            && metric(m, GENERATION) > metric(&m0, GENERATION)
    });
    assert!(metric(&m1, JOINS) > metric(&m0, JOINS), "{m1:?}");

    // kill -9: the member goes failed, its server leaves, the event is counted.
    c.web("web-2").kill9();
    let m2 = wait_metrics(&c, "web-2 killed", |m| {
        metric(m, FAILED) == 1.0 && metric(m, READY) == 2.0 && metric(m, FAILS) >= 1.0
    });
    assert_eq!(metric(&m2, ALIVE), 3.0);

    // A drain: a server state change, applied through the runtime API (no reload).
    assert!(c
        .web("web-1")
        .cli(&["tags", "--set", "state=draining"])
        .status
        .success());
    let m3 = wait_metrics(&c, "web-1 drained", |m| {
        metric(m, DRAIN) == 1.0
            && metric(m, READY) == 1.0
            && metric(m, RUNTIME) > metric(&m2, RUNTIME)
    });
    assert!(metric(&m3, GENERATION) > metric(&m2, GENERATION));
    assert!(metric(&m3, LAST_OK) >= metric(&m2, LAST_OK));
}

/// `document.querySelector(sel)` exists (a JS expression).
fn exists(sel: &str) -> String {
    format!(
        "document.querySelector({}) !== null",
        serde_json::json!(sel)
    )
}

/// Where the test's screenshot goes: a temp dir, or `SHOAL_STATUS_SCREENSHOT` (a path
/// outside the tree, e.g. to refresh `docs/status-page.png` by hand).
fn screenshot_path(dir: &Path) -> PathBuf {
    std::env::var_os("SHOAL_STATUS_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("status-page.png"))
}

#[test]
fn the_status_page_shows_members_and_server_states_and_updates_without_a_reload() {
    let mut c = Cluster::start(62, 2);
    let mut b = lbtest::browser::Browser::start();
    let tab = b.open(&format!("http://{}/", c.http), 1200, 640);
    // Every member, and each pool's servers UP in HAProxy (its health checks passed).
    let up = |s: &str| {
        exists(&format!(
            "tr.server[data-server=\"{s}\"][data-state=\"ready\"][data-haproxy=\"UP\"]"
        ))
    };
    let first = format!(
        "{} && {} && {} && {} && {}",
        exists("tr.member[data-name=\"lb\"][data-status=\"alive\"]"),
        exists("tr.member[data-name=\"web-1\"][data-status=\"alive\"]"),
        exists("tr.member[data-name=\"web-2\"][data-status=\"alive\"]"),
        up("web-1"),
        up("web-2"),
    );
    assert!(
        b.wait_for(&tab, &first, Duration::from_secs(40)),
        "the page never showed lb, web-1, web-2 with both servers UP:\n{}",
        b.eval(&tab, "document.body.innerText")
    );
    // A mark on this page instance: a reload would lose it.
    b.eval(&tab, "window.shoalTestMark = 'same page'; true");
    let same_page = "window.shoalTestMark === 'same page'";

    c.join("web-3", 4);
    let joined = format!(
        "{same_page} && {} && {} && {}",
        exists("tr.member[data-name=\"web-3\"][data-status=\"alive\"]"),
        up("web-3"),
        exists("#event-list li.event[data-kind=\"member-join\"]"),
    );
    assert!(
        b.wait_for(&tab, &joined, Duration::from_secs(30)),
        "web-3 never appeared (UP) in the same page:\n{}",
        b.eval(&tab, "document.body.innerText")
    );
    let refreshes = b.eval(&tab, "window.shoalStatus.refreshes");
    assert!(refreshes.as_u64().unwrap_or(0) >= 1, "{refreshes}");

    c.web("web-2").kill9();
    let killed = format!(
        "{same_page} && {} && !({}) && {}",
        exists("tr.member[data-name=\"web-2\"][data-status=\"failed\"]"),
        exists("tr.server[data-server=\"web-2\"]"),
        exists("#event-list li.event[data-kind=\"member-failed\"]"),
    );
    assert!(
        b.wait_for(&tab, &killed, Duration::from_secs(30)),
        "web-2 never showed as failed without a server in the same page:\n{}",
        b.eval(&tab, "document.body.innerText")
    );
    assert!(b.wait_for(
        &tab,
        &format!("{} && {}", up("web-1"), up("web-3")),
        Duration::from_secs(10)
    ));

    let shot = screenshot_path(c._dir.path());
    b.screenshot(&tab, &shot);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("status page screenshot: {}", shot.display());

    // The JSON says the same.
    let j: serde_json::Value = serde_json::from_str(&c.get("/status.json")).unwrap();
    assert_eq!(j["haproxy"]["state"], "live");
    let servers: Vec<(String, String)> = j["pools"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().into(),
                s["haproxy"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        servers,
        vec![("web-1".into(), "UP".into()), ("web-3".into(), "UP".into())]
    );
    assert!(j["events"].as_array().is_some_and(|e| !e.is_empty()));
    assert_eq!(j["last_apply"]["result"], "applied");
}

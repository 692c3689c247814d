//! Membership changes inside existing pools go through HAProxy's runtime API, never a reload
//! (real HAProxy 2.6 in master-worker mode, on 127.0.0.1 only): servers are added with
//! `add server`, removed by maint + `del server` once their connections are done, the file on
//! disk renders what runs, and the reloads that remain keep server states (server-state file).

use lbgen::testing as common;

use std::time::{Duration, Instant};

use common::{
    get, get_with, member, next_report, reload_counts, running_servers, server_state,
    write_members, Backend, Haproxy, Load,
};
use lbgen::apply::ApplyOutcome;
use lbgen::model::{MembersDoc, Model};
use lbgen::render::{Renderer, Vars};
use lbgen::source::SourceSpec;
use lbgen::watch::{Report, WatchConfig};

/// HAProxy + `lbgen watch` (in-process, default template) following a members file.
struct Rig {
    _dir: tempfile::TempDir,
    http_port: u16,
    vars: Vars,
    members_file: std::path::PathBuf,
    out: std::path::PathBuf,
    haproxy: Option<Haproxy>,
    reports: tokio::sync::mpsc::UnboundedReceiver<Report>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    watcher: Option<tokio::task::JoinHandle<Result<(), lbgen::Error>>>,
}

impl Rig {
    async fn start(members: &[serde_json::Value], check_inter: &str, leaving_max: Duration) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let http_port = common::free_port();
        let vars = Vars::with_overrides(&[
            "bind=127.0.0.1".to_string(),
            format!("http_port={http_port}"),
            format!("stats_port={}", common::free_port()),
            format!("stats_socket={}", d.join("admin.sock").display()),
            format!("server_state_file={}", d.join("server-state").display()),
            format!("check_inter={check_inter}"),
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
            vars: vars.clone(),
            reports: Some(rtx),
            leaving_max,
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
            vars,
            members_file,
            out,
            haproxy: Some(haproxy),
            reports,
            stop: Some(stop_tx),
            watcher: Some(watcher),
        }
    }

    /// Writes `members` and returns the apply it caused and how long from the write.
    async fn set(&mut self, members: &[serde_json::Value]) -> (ApplyOutcome, Duration) {
        let t0 = tokio::time::Instant::now();
        write_members(&self.members_file, members);
        let r = next_report(&mut self.reports).await;
        (r.outcome, r.done.saturating_duration_since(t0))
    }

    /// The file on disk is exactly what the default template renders for the members file.
    fn assert_file_renders_the_members(&self) {
        let doc =
            MembersDoc::from_json(&std::fs::read_to_string(&self.members_file).unwrap()).unwrap();
        let want = Renderer::builtin()
            .render(&Model::build(&doc), &self.vars)
            .unwrap();
        assert_eq!(std::fs::read_to_string(&self.out).unwrap(), want);
    }

    /// The server names of `pool` in the file on disk, sorted.
    fn file_servers(&self, pool: &str) -> Vec<String> {
        let text = std::fs::read_to_string(&self.out).unwrap();
        let l = lbgen::layout::Layout::parse(&text);
        l.servers
            .keys()
            .filter(|(p, _)| p == pool)
            .map(|(_, s)| s.clone())
            .collect()
    }

    fn h(&self) -> &Haproxy {
        self.haproxy.as_ref().expect("haproxy runs")
    }

    /// Stops HAProxy (SIGTERM to its group) and starts it again from the file lbgen wrote, as
    /// a supervisor would.
    fn restart_haproxy(&mut self) {
        drop(self.haproxy.take());
        let dir = self.out.parent().expect("a temp dir").to_path_buf();
        self.haproxy = Some(Haproxy::start(&dir, &self.out));
    }

    async fn reloads(&self) -> u64 {
        let (reloads, failed) = reload_counts(self.h()).await;
        assert_eq!(failed, 0, "a reload failed");
        reloads
    }

    async fn wait_running(&self, pool: &str, want: &[String], within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = running_servers(self.h(), pool).await;
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "running servers of {pool}: {now:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

fn web(n: usize, backends: &[Backend], extra: &[(&str, &str)]) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| member(&format!("web-{i}"), backends[i].port, "alive", extra))
        .collect()
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("web-{i}")).collect()
}

async fn backends(n: usize) -> Vec<Backend> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(Backend::start(&format!("b{i}")).await);
    }
    v
}

/// (srv_op_state, srv_admin_state) of `pool/server` in the running worker.
async fn states(h: &Haproxy, pool: &str, server: &str) -> (u32, u32) {
    let row = server_state(h, pool, server)
        .await
        .unwrap_or_else(|| panic!("{pool}/{server} not in the running worker"));
    (row[5].parse().unwrap(), row[6].parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_scales_1_to_10_to_1_under_load_without_a_reload_or_a_failed_request() {
    let bs = backends(10).await;
    let mut rig = Rig::start(&web(1, &bs, &[]), "500ms", lbgen::watch::LEAVING_MAX).await;
    let reloads0 = rig.reloads().await;
    let load = Load::start(rig.http_port, 2, 2_000_000, Duration::from_secs(120));
    let ka = Load::start_mode(rig.http_port, 2, 2_000_000, Duration::from_secs(120), true);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut took = Vec::new();
    for n in 2..=10 {
        let (outcome, t) = rig.set(&web(n, &bs, &[])).await;
        match &outcome {
            ApplyOutcome::Runtime { commands } => {
                let new = format!("add server web/web-{} ", n - 1);
                assert!(commands[0].starts_with(&new), "{commands:?}");
            }
            other => panic!("scale to {n}: {other:?}"),
        }
        took.push(t);
        rig.wait_running("web", &names(n), Duration::from_secs(2))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.assert_file_renders_the_members();
    assert_eq!(rig.file_servers("web"), names(10));
    // A reload from that file (as a restart of HAProxy would load it) runs the same servers
    // as the runtime changes made, although `add server` appended them in another order.
    lbgen::haproxy::Master::new(&rig.h().master_sock)
        .reload(Duration::from_secs(10))
        .await
        .expect("a reload of the file lbgen wrote");
    assert_eq!(running_servers(rig.h(), "web").await, names(10));
    let reloads0 = reloads0 + 1;
    // Every added server takes requests.
    let hits: Vec<u64> = bs.iter().map(Backend::hits).collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    for (b, before) in bs.iter().zip(hits) {
        assert!(b.hits() > before, "{} gets no requests", b.name);
    }

    for n in (1..10).rev() {
        let (outcome, t) = rig.set(&web(n, &bs, &[])).await;
        assert_eq!(
            outcome,
            ApplyOutcome::Runtime {
                commands: vec![format!("set server web/web-{n} state maint")]
            }
        );
        took.push(t);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each one left is deleted once its connections are done.
    rig.wait_running("web", &names(1), Duration::from_secs(10))
        .await;
    rig.assert_file_renders_the_members();
    assert_eq!(
        rig.reloads().await,
        reloads0,
        "a membership change reloaded"
    );

    let res = load.finish().await;
    let ka = ka.finish().await;
    took.sort();
    eprintln!(
        "scale 1->10->1: {} + {} keep-alive requests ok, {} + {} failed; write -> live median {:?}, max {:?}",
        res.ok,
        ka.ok,
        res.failed,
        ka.failed,
        took[took.len() / 2],
        took[took.len() - 1]
    );
    assert_eq!(res.failed, 0, "failed requests: {:?}", res.errors);
    assert_eq!(ka.failed, 0, "failed keep-alive requests: {:?}", ka.errors);
    assert_eq!(ka.idle_closed, 0, "keep-alive connections closed");
    assert!(res.ok > 300, "too little load: {}", res.ok);
    // Generous: a runtime change is ~ms; the file source's inotify and a loaded machine add.
    assert!(
        took[took.len() - 1] < Duration::from_secs(1),
        "slowest runtime change {:?}",
        took[took.len() - 1]
    );

    // A structural change (a new pool) still reloads, and the reload starts from the same
    // servers as the runtime changes left.
    let mut ms = web(1, &bs, &[]);
    ms.push(member(
        "api-1",
        bs[1].port,
        "alive",
        &[("service", "api"), ("route", "/api")],
    ));
    let (outcome, _) = rig.set(&ms).await;
    assert!(
        matches!(outcome, ApplyOutcome::Reloaded { .. }),
        "{outcome:?}"
    );
    assert_eq!(rig.reloads().await, reloads0 + 1);
    assert_eq!(running_servers(rig.h(), "web").await, names(1));
    assert_eq!(running_servers(rig.h(), "api").await, ["api-1"]);
    rig.stop().await;
}

/// The backend that answered, and the `SERVERID` cookie HAProxy set (if it set one).
fn answer(resp: &str) -> (String, Option<String>) {
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    let cookie = resp
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(": ")?;
            let c = value.strip_prefix("SERVERID=")?;
            name.eq_ignore_ascii_case("set-cookie").then_some(c)
        })
        .map(|c| c.split(';').next().unwrap_or("").to_string());
    (body, cookie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_pool_keeps_its_clients_servers_through_a_scale() {
    let bs = backends(5).await;
    let sticky = [("sticky", "true")];
    // Checks every 2 s (each may take that long): on a loaded machine three 500 ms check
    // timeouts in a row would take a server DOWN and move its clients, rightly.
    let mut rig = Rig::start(&web(2, &bs, &sticky), "2s", lbgen::watch::LEAVING_MAX).await;
    // Eight clients, each stuck to the server that answered its first request.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (backend, cookie) = answer(&get(rig.http_port).await);
        let cookie = cookie.expect("a sticky pool sets SERVERID");
        clients.push((cookie, backend));
    }
    assert!(clients.iter().any(|c| c.1 == "b0") && clients.iter().any(|c| c.1 == "b1"));
    let still_stuck = |port: u16, clients: Vec<(String, String)>| async move {
        for (cookie, backend) in clients {
            for _ in 0..3 {
                let r = get_with(
                    port,
                    "/",
                    &format!("Cookie: SERVERID={cookie}\r\n"),
                    Duration::from_secs(5),
                )
                .await;
                assert_eq!(answer(&r).0, backend, "client of {cookie} moved: {r}");
            }
        }
    };
    // Up and down: runtime changes, no reload. Dynamic cookies (a hash of the server's
    // address and the pool's key) give runtime-added servers a cookie; the clients' cookies
    // keep naming the same servers.
    let reloads = rig.reloads().await;
    let mut joined = Vec::new();
    for n in 3..=5 {
        let (outcome, _) = rig.set(&web(n, &bs, &sticky)).await;
        assert!(
            matches!(outcome, ApplyOutcome::Runtime { .. }),
            "{outcome:?}"
        );
        rig.wait_running("web", &names(n), Duration::from_secs(10))
            .await;
        still_stuck(rig.http_port, clients.clone()).await;
    }
    // The servers added at runtime hand out cookies too, and their clients stick to them.
    for _ in 0..20 {
        let (backend, cookie) = answer(&get(rig.http_port).await);
        let cookie = cookie.expect("every server of a sticky pool sets SERVERID");
        assert!(!cookie.is_empty(), "an empty SERVERID from {backend}");
        if ["b2", "b3", "b4"].contains(&backend.as_str()) {
            joined.push((cookie, backend));
        }
    }
    assert!(
        !joined.is_empty(),
        "no request reached a server added at runtime"
    );
    still_stuck(rig.http_port, joined.clone()).await;
    assert_eq!(rig.reloads().await, reloads, "a sticky pool grew by reload");
    // An HAProxy started from the file computes the same cookies: the clients of the
    // runtime-added servers keep them.
    rig.restart_haproxy();
    still_stuck(rig.http_port, joined.clone()).await;
    // lbgen reloads a restarted HAProxy once on its next change (its config is unknown) ...
    let (outcome, _) = rig.set(&web(4, &bs, &sticky)).await;
    assert!(
        matches!(outcome, ApplyOutcome::Reloaded { .. }),
        "{outcome:?}"
    );
    still_stuck(rig.http_port, clients.clone()).await;
    // ... then down is runtime changes too.
    let reloads = rig.reloads().await;
    for n in (2..4).rev() {
        let (outcome, _) = rig.set(&web(n, &bs, &sticky)).await;
        assert!(
            matches!(outcome, ApplyOutcome::Runtime { .. }),
            "{outcome:?}"
        );
        still_stuck(rig.http_port, clients.clone()).await;
    }
    assert_eq!(rig.reloads().await, reloads);
    rig.wait_running("web", &names(2), Duration::from_secs(10))
        .await;
    rig.assert_file_renders_the_members();
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_server_keeps_its_long_request_until_done_and_is_deleted_after() {
    let bs = backends(2).await;
    let mut rig = Rig::start(&web(1, &bs, &[]), "500ms", lbgen::watch::LEAVING_MAX).await;
    let port = rig.http_port;
    let started = Instant::now();
    let long = tokio::spawn(async move {
        let r = get_with(port, "/slow/2500", "", Duration::from_secs(20)).await;
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // web-0 (serving the long request) leaves, web-1 joins: one runtime change.
    let only_1 = vec![member("web-1", bs[1].port, "alive", &[])];
    let (outcome, _) = rig.set(&only_1).await;
    match &outcome {
        ApplyOutcome::Runtime { commands } => {
            assert!(
                commands[0].starts_with("add server web/web-1 "),
                "{commands:?}"
            );
            assert_eq!(commands.last().unwrap(), "set server web/web-0 state maint");
        }
        other => panic!("{other:?}"),
    }
    // New requests go to web-1; web-0 stays while its request runs.
    for _ in 0..5 {
        assert_eq!(answer(&get(port).await).0, "b1");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!long.is_finished());
    assert_eq!(running_servers(rig.h(), "web").await, ["web-0", "web-1"]);
    let (resp, ended) = long.await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(answer(&resp).0, "b0");
    assert!(ended >= Duration::from_millis(2500), "{ended:?}");
    // ... and is deleted right after.
    rig.wait_running("web", &["web-1".to_string()], Duration::from_secs(3))
        .await;
    rig.assert_file_renders_the_members();
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_server_past_the_maximum_has_its_sessions_shut_down_and_is_deleted() {
    let bs = backends(2).await;
    let mut rig = Rig::start(&web(2, &bs, &[]), "500ms", Duration::from_millis(700)).await;
    let port = rig.http_port;
    // Long requests on both servers (round robin), then web-0 leaves.
    let started = Instant::now();
    let longs: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(
                async move { get_with(port, "/slow/8000", "", Duration::from_secs(20)).await },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (outcome, _) = rig.set(&[member("web-1", bs[1].port, "alive", &[])]).await;
    assert!(
        matches!(outcome, ApplyOutcome::Runtime { .. }),
        "{outcome:?}"
    );
    rig.wait_running("web", &["web-1".to_string()], Duration::from_secs(4))
        .await;
    let deleted_after = started.elapsed();
    assert!(deleted_after < Duration::from_secs(5), "{deleted_after:?}");
    // web-0 was deleted while an 8 s request was on it; that GET was cut and, being
    // idempotent, retried by HAProxy on web-1 (retry-on): both clients got an answer.
    for l in longs {
        let r = l.await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert_eq!(answer(&r).0, "b1");
    }
    rig.stop().await;
}

/// A pool of two: `web-0` on a dead host that still holds its connections open (it accepts
/// and reads, never answers), `web-1` a real backend; two GETs sent, one held by `web-0`.
struct DeadHost {
    rig: Rig,
    dead_port: u16,
    dead: tokio::task::JoinHandle<()>,
    web1: serde_json::Value,
    started: Instant,
    gets: Vec<tokio::task::JoinHandle<(String, Duration)>>,
}

impl DeadHost {
    async fn start() -> DeadHost {
        let bs = backends(2).await;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_port = l.local_addr().unwrap().port();
        let dead = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let web1 = member("web-1", bs[1].port, "alive", &[]);
        let rig = Rig::start(
            &[member("web-0", dead_port, "alive", &[]), web1.clone()],
            "500ms",
            lbgen::watch::LEAVING_MAX,
        )
        .await;
        // Round robin: one of the two lands on web-0 and hangs there.
        let port = rig.http_port;
        let started = Instant::now();
        let gets: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(async move {
                    let r = get_with(port, "/", "", Duration::from_secs(25)).await;
                    (r, started.elapsed())
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            gets.iter().filter(|g| g.is_finished()).count(),
            1,
            "one request answered by web-1, one held by the dead host"
        );
        DeadHost {
            rig,
            dead_port,
            dead,
            web1,
            started,
            gets,
        }
    }

    /// Writes the members with web-0 `failed` (and `extra` members): the apply it caused.
    async fn fail_web0(&mut self, extra: &[serde_json::Value]) -> ApplyOutcome {
        let mut members = vec![
            member("web-0", self.dead_port, "failed", &[]),
            self.web1.clone(),
        ];
        members.extend_from_slice(extra);
        let t_failed = self.started.elapsed();
        let (outcome, _) = self.rig.set(&members).await;
        // Not at `timeout server` (30 s): cut once web-0 failed, and the GET retried on web-1.
        for g in std::mem::take(&mut self.gets) {
            let (r, ended) = g.await.unwrap();
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            assert_eq!(answer(&r).0, "b1");
            assert!(ended < t_failed + Duration::from_secs(5), "{ended:?}");
        }
        self.rig
            .wait_running("web", &["web-1".to_string()], Duration::from_secs(5))
            .await;
        self.rig.assert_file_renders_the_members();
        outcome
    }

    async fn stop(self) {
        self.rig.stop().await;
        self.dead.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_members_request_in_flight_is_cut_and_retried_on_another_server_at_once() {
    let mut d = DeadHost::start().await;
    match d.fail_web0(&[]).await {
        ApplyOutcome::Runtime { commands } => assert_eq!(
            commands,
            [
                "set server web/web-0 state maint",
                "shutdown sessions server web/web-0"
            ]
        ),
        other => panic!("{other:?}"),
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_members_request_in_flight_is_cut_before_a_reload_and_retried_on_another_server() {
    let mut d = DeadHost::start().await;
    // A new pool with the failure: a reload, which would leave the held request to the old
    // worker until `timeout server`.
    let api = member(
        "api-0",
        common::free_port(),
        "alive",
        &[("service", "api"), ("route", "/api")],
    );
    let outcome = d.fail_web0(&[api]).await;
    assert!(
        matches!(outcome, ApplyOutcome::Reloaded { .. }),
        "{outcome:?}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_down_states_survive_a_reload_through_the_server_state_file() {
    let mut bs = backends(3).await;
    // Checks every 30 s: only the server-state file can carry a DOWN across the reload.
    let mut rig = Rig::start(&web(3, &bs, &[]), "30s", lbgen::watch::LEAVING_MAX).await;
    let mut ms = web(3, &bs, &[]);
    ms[1] = member("web-1", bs[1].port, "alive", &[("state", "draining")]);
    let (outcome, _) = rig.set(&ms).await;
    assert_eq!(
        outcome,
        ApplyOutcome::Runtime {
            commands: vec!["set server web/web-1 state drain".into()]
        }
    );
    // web-2's backend dies: the first failed connection marks it down (observe layer4).
    drop(bs.remove(2));
    for _ in 0..6 {
        assert!(get(rig.http_port).await.starts_with("HTTP/1.1 200"));
    }
    assert_eq!(states(rig.h(), "web", "web-2").await.0, 0, "web-2 not down");
    assert_ne!(states(rig.h(), "web", "web-1").await.1 & 0x08, 0);

    let mut with_pool = ms.clone();
    with_pool.push(member(
        "api-1",
        bs[0].port,
        "alive",
        &[("service", "api"), ("route", "/api")],
    ));
    let (outcome, _) = rig.set(&with_pool).await;
    assert!(
        matches!(outcome, ApplyOutcome::Reloaded { .. }),
        "{outcome:?}"
    );
    // The new worker starts from the dumped states: web-1 drained (admin flag, which the
    // config's weight 0 alone does not set), web-2 down before any check ran.
    assert_ne!(
        states(rig.h(), "web", "web-1").await.1 & 0x08,
        0,
        "web-1 lost its drain"
    );
    assert_eq!(
        states(rig.h(), "web", "web-2").await.0,
        0,
        "web-2 came back up"
    );
    let hits = bs[1].hits();
    for _ in 0..10 {
        assert!(get(rig.http_port).await.starts_with("HTTP/1.1 200"));
    }
    assert_eq!(bs[1].hits(), hits, "drained web-1 got new requests");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowstart_tag_reaches_runtime_added_servers() {
    let bs = backends(2).await;
    let slow = [("slowstart", "20s")];
    let mut rig = Rig::start(&web(1, &bs, &slow), "500ms", lbgen::watch::LEAVING_MAX).await;
    let (outcome, _) = rig.set(&web(2, &bs, &slow)).await;
    match &outcome {
        ApplyOutcome::Runtime { commands } => {
            assert!(commands[0].ends_with(" slowstart 20s"), "{commands:?}")
        }
        other => panic!("{other:?}"),
    }
    rig.assert_file_renders_the_members();
    // Ramping up: HAProxy shows a throttle below 100 % for the new server.
    let stat = lbgen::haproxy::Master::new(&rig.h().master_sock)
        .command("@1 show stat web 4 -1")
        .await
        .unwrap();
    let mut lines = stat.lines();
    let head: Vec<&str> = lines
        .next()
        .unwrap()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = head.iter().position(|c| *c == "throttle").unwrap();
    let row: Vec<&str> = lines
        .find(|l| l.starts_with("web,web-1,"))
        .unwrap()
        .split(',')
        .collect();
    let throttle: u32 = row[col].parse().expect("a throttle while slow-starting");
    assert!(throttle < 100, "{throttle}");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_haproxy_restarted_from_the_file_does_not_bring_back_a_drain_lbgen_undid() {
    let bs = backends(2).await;
    let mut rig = Rig::start(&web(2, &bs, &[]), "500ms", lbgen::watch::LEAVING_MAX).await;
    let mut drained = web(2, &bs, &[]);
    drained[1] = member("web-1", bs[1].port, "alive", &[("state", "draining")]);
    let (outcome, _) = rig.set(&drained).await;
    assert!(
        matches!(outcome, ApplyOutcome::Runtime { .. }),
        "{outcome:?}"
    );
    // A reload while web-1 is drained writes its drain into the server-state file ...
    let mut with_pool = drained.clone();
    with_pool.push(member(
        "api-1",
        bs[0].port,
        "alive",
        &[("service", "api"), ("route", "/api")],
    ));
    let (outcome, _) = rig.set(&with_pool).await;
    assert!(
        matches!(outcome, ApplyOutcome::Reloaded { .. }),
        "{outcome:?}"
    );
    assert_ne!(states(rig.h(), "web", "web-1").await.1 & 0x08, 0);
    // ... then web-1 is ready again through the runtime API.
    let mut ready = web(2, &bs, &[]);
    ready.push(with_pool[2].clone());
    let (outcome, _) = rig.set(&ready).await;
    assert!(
        matches!(outcome, ApplyOutcome::Runtime { .. }),
        "{outcome:?}"
    );
    // HAProxy dies and its supervisor starts it again from the file: web-1 is ready.
    rig.restart_haproxy();
    assert_eq!(
        states(rig.h(), "web", "web-1").await.1 & 0x08,
        0,
        "the restarted HAProxy brought web-1's drain back"
    );
    rig.stop().await;
}

/// The supervisor stops a drained app once it has no established connection left on its
/// port, and HAProxy keeps idle server-side connections for reuse (`http-reuse safe`, purged
/// only slowly): lbgen closes them once the drained server has no request left, so they do
/// not hold the drain to its maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_server_is_left_with_no_idle_connection_once_its_requests_end() {
    let bs = backends(2).await;
    let mut rig = Rig::start(&web(2, &bs, &[]), "2s", lbgen::watch::LEAVING_MAX).await;
    // Two long requests, one per server (round robin, nothing else yet): web-1's must not be
    // cut by the drain or by the closing of its idle connections.
    let port = rig.http_port;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(
                async move { get_with(port, "/slow/2000", "", Duration::from_secs(10)).await },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Keep-alive clients spread over both servers; HAProxy keeps server-side connections.
    let load = Load::start_mode(rig.http_port, 8, 200_000, Duration::from_secs(60), true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while bs[1].hits() < 200 {
        assert!(Instant::now() < deadline, "no load reached b1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        bs[1].open_connections() > 0,
        "HAProxy kept no connection to b1"
    );
    // web-1 drains (state=draining, still a member) while the clients go on.
    let mut drained = web(2, &bs, &[]);
    drained[1] = member("web-1", bs[1].port, "alive", &[("state", "draining")]);
    let (outcome, _) = rig.set(&drained).await;
    assert!(
        matches!(outcome, ApplyOutcome::Runtime { .. }),
        "{outcome:?}"
    );
    let mut answers = Vec::new();
    for s in slow {
        answers.push(answer(&s.await.unwrap()).0);
    }
    answers.sort();
    assert_eq!(answers, ["b0", "b1"], "a long request was cut");
    let t0 = Instant::now();
    let mut seen = Vec::new();
    while bs[1].open_connections() > 0 {
        seen.push(bs[1].open_connections());
        // lbgen checks every 100 ms; HAProxy alone kept them past 10 s.
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "b1 still has {} connections {:?} after the drain (samples every 100 ms: {seen:?})",
            bs[1].open_connections(),
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The clients went on through web-0, without an error.
    let before = bs[0].hits();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(bs[0].hits() > before, "the load stopped");
    let r = load.finish().await;
    assert_eq!(r.failed, 0, "{:?}", r.errors);
    assert_eq!(bs[1].open_connections(), 0);
    assert_eq!(
        states(rig.h(), "web", "web-1").await.1 & 0x08,
        0x08,
        "web-1 left drain"
    );
    rig.stop().await;
}

/// `set server addr` recomputes a dynamic cookie (HAProxy does it; lbgen relies on it): a
/// sticky member that moves gets the cookie of its new address, the one an HAProxy started
/// from the file computes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_member_that_moves_gets_the_cookie_of_its_new_address() {
    let bs = backends(3).await;
    let sticky = [("sticky", "true")];
    let mut rig = Rig::start(&web(2, &bs, &sticky), "2s", lbgen::watch::LEAVING_MAX).await;
    let cookie_of = |port: u16, want: &'static str| async move {
        for _ in 0..10 {
            let (backend, cookie) = answer(&get(port).await);
            if backend == want {
                return cookie.expect("a sticky pool sets SERVERID");
            }
        }
        panic!("{want} never answered");
    };
    let old = cookie_of(rig.http_port, "b1").await;
    let mut moved = web(2, &bs, &sticky);
    moved[1] = member("web-1", bs[2].port, "alive", &sticky);
    let (outcome, _) = rig.set(&moved).await;
    assert!(
        matches!(outcome, ApplyOutcome::Runtime { .. }),
        "{outcome:?}"
    );
    let new = cookie_of(rig.http_port, "b2").await;
    assert!(!new.is_empty() && new != old, "old {old:?}, new {new:?}");
    let stuck = |port: u16, cookie: String| async move {
        for _ in 0..5 {
            let r = get_with(
                port,
                "/",
                &format!("Cookie: SERVERID={cookie}\r\n"),
                Duration::from_secs(5),
            )
            .await;
            assert_eq!(answer(&r).0, "b2", "{r}");
        }
    };
    stuck(rig.http_port, new.clone()).await;
    rig.assert_file_renders_the_members();
    rig.restart_haproxy();
    stuck(rig.http_port, new).await;
    rig.stop().await;
}

//! Live test against the real HAProxy 2.6 in master-worker mode, on 127.0.0.1 only.
//! `lbgen watch` follows a members file while a bounded load runs: ≥20 reloads must cost zero
//! failed requests, a drained server must get no new requests, and a broken template (or a
//! config HAProxy rejects) must leave the old config in place.

use lbgen::testing as common;

use std::path::Path;
use std::time::Duration;

use common::{
    get, member, next_report, reload_counts, server_state, write_members, Backend, Haproxy, Load,
};
use lbgen::apply::ApplyOutcome;
use lbgen::model::{MembersDoc, Model};
use lbgen::render::{Renderer, Vars};
use lbgen::source::SourceSpec;
use lbgen::watch::WatchConfig;

/// (master reloads, current worker pid)
async fn generation(h: &Haproxy) -> (u64, Option<u32>) {
    let p = lbgen::haproxy::Master::new(&h.master_sock)
        .show_proc()
        .await
        .expect("show proc");
    (p.reloads, p.current_worker())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request_and_drain_and_bad_templates_are_safe() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let backends = [
        Backend::start("b0").await,
        Backend::start("b1").await,
        Backend::start("b2").await,
        Backend::start("b3").await,
    ];
    let http_port = common::free_port();
    let stats_port = common::free_port();
    let vars = Vars::with_overrides(&common::loopback_vars(
        d,
        http_port,
        &[&format!("stats_port={stats_port}"), "check_inter=500ms"],
    ))
    .unwrap();
    let template = d.join("haproxy.cfg.hbs");
    let good_template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/haproxy.cfg.hbs"),
    )
    .unwrap();
    std::fs::write(&template, &good_template).unwrap();
    let members_file = d.join("members.json");
    let out = d.join("haproxy.cfg");

    // Initial config and HAProxy.
    let base = vec![
        member("web-0", backends[0].port, "alive", &[]),
        member("web-1", backends[1].port, "alive", &[]),
    ];
    write_members(&members_file, &base);
    let doc = MembersDoc::from_json(&std::fs::read_to_string(&members_file).unwrap()).unwrap();
    let text = Renderer::from_file(&template)
        .unwrap()
        .render(&Model::build(&doc), &vars)
        .unwrap();
    std::fs::write(&out, &text).unwrap();
    let haproxy = Haproxy::start(d, &out);

    // lbgen watch, in-process, reporting every apply.
    let (rtx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = WatchConfig {
        template: Some(template.clone()),
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
    // HAProxy started from the file of this very snapshot: the first apply proves it and
    // changes nothing (lbgen::adopt).
    let r = next_report(&mut reports).await;
    assert_eq!(r.outcome, ApplyOutcome::Unchanged);

    // Two kinds of clients: a new connection per request, and reused keep-alive connections
    // (which a reload must not close under a client that is sending).
    let load = Load::start(http_port, 2, 2_000_000, Duration::from_secs(120));
    let ka_load = Load::start_mode(http_port, 2, 2_000_000, Duration::from_secs(120), true);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // ≥20 reloads: each round adds a new pool with one server (a reload) and drops the
    // previous one (a new server in an existing pool would be a runtime change).
    let mut reloads = 0;
    let mut runtime_changes = 0;
    let mut extra: Option<serde_json::Value> = None;
    for i in 0..22 {
        // The previous extra pool is gone from this document (rendered absent).
        let mut ms = base.clone();
        let b = &backends[2 + i % 2];
        let pool = format!("extra{i}");
        let route = format!("/extra{i}");
        let e = member(
            &format!("extra-{i}"),
            b.port,
            "alive",
            &[("service", &pool), ("route", &route)],
        );
        ms.push(e.clone());
        extra = Some(e);
        write_members(&members_file, &ms);
        let r = next_report(&mut reports).await;
        match r.outcome {
            ApplyOutcome::Reloaded { .. } => reloads += 1,
            ApplyOutcome::Runtime { .. } => runtime_changes += 1,
            other => panic!("round {i}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloads >= 20, "only {reloads} reloads");
    let cfg_now = std::fs::read_to_string(&out).unwrap();
    assert!(cfg_now.contains("server extra-21 "), "{cfg_now}");
    assert!(!cfg_now.contains("server extra-20 "), "{cfg_now}");

    // Drain web-1 (the supervisor's state tag): runtime API, no reload; no new requests.
    let mut drained = base.clone();
    drained[1] = member("web-1", backends[1].port, "alive", &[("state", "draining")]);
    let mut ms = drained.clone();
    ms.push(extra.clone().unwrap());
    write_members(&members_file, &ms);
    let r = next_report(&mut reports).await;
    match &r.outcome {
        ApplyOutcome::Runtime { commands } => {
            assert_eq!(
                commands,
                &vec!["set server web/web-1 state drain".to_string()]
            );
            runtime_changes += 1;
        }
        other => panic!("drain: {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = backends[1].hits();
    let total_before = load.total();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(load.total() > total_before + 50, "load stalled");
    assert_eq!(
        backends[1].hits(),
        before,
        "drained server got new requests"
    );
    // Still drained after a reload (the server-state file keeps it, and the config renders
    // it with weight 0).
    ms.push(member(
        "extra-x",
        backends[2].port,
        "alive",
        &[("service", "x"), ("route", "/x")],
    ));
    write_members(&members_file, &ms);
    let r = next_report(&mut reports).await;
    assert!(
        matches!(r.outcome, ApplyOutcome::Reloaded { .. }),
        "{:?}",
        r.outcome
    );
    reloads += 1;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        backends[1].hits(),
        before,
        "drained server got requests after a reload"
    );

    // A broken template: reported, nothing touched.
    let live_cfg = std::fs::read_to_string(&out).unwrap();
    let gen_before = generation(&haproxy).await;
    std::fs::write(&template, "global\n{{#each pools}\n").unwrap();
    let r = next_report(&mut reports).await;
    match &r.outcome {
        ApplyOutcome::Failed(e) => assert!(e.contains("line 2"), "{e}"),
        other => panic!("broken template: {other:?}"),
    }
    // A template that renders but HAProxy rejects: also nothing touched.
    std::fs::write(&template, format!("{good_template}\nbogus-keyword here\n")).unwrap();
    let r = next_report(&mut reports).await;
    match &r.outcome {
        ApplyOutcome::Failed(e) => assert!(e.contains("rejected"), "{e}"),
        other => panic!("rejected config: {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&out).unwrap(), live_cfg);
    assert_eq!(
        generation(&haproxy).await,
        gen_before,
        "haproxy was reloaded"
    );
    // Membership changes meanwhile still apply, with the last good template (a new server in
    // an existing pool: the runtime API).
    ms.push(member("extra-y", backends[3].port, "alive", &[]));
    write_members(&members_file, &ms);
    let r = next_report(&mut reports).await;
    assert!(
        matches!(r.outcome, ApplyOutcome::Runtime { .. }),
        "{:?}",
        r.outcome
    );
    runtime_changes += 1;
    let cfg_now = std::fs::read_to_string(&out).unwrap();
    assert!(cfg_now.contains("server extra-y "), "{cfg_now}");
    assert!(!cfg_now.contains("bogus-keyword"), "{cfg_now}");
    // Fixing the template applies again.
    std::fs::write(&template, &good_template).unwrap();
    let r = next_report(&mut reports).await;
    assert!(
        matches!(
            r.outcome,
            ApplyOutcome::Reloaded { .. } | ApplyOutcome::Unchanged
        ),
        "{:?}",
        r.outcome
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let res = load.finish().await;
    let ka = ka_load.finish().await;
    let _ = stop_tx.send(());
    watcher.await.unwrap().unwrap();
    eprintln!(
        "live test: {} ok, {} failed in {:?} across {reloads} reloads and {runtime_changes} runtime changes",
        res.ok, res.failed, res.elapsed
    );
    eprintln!(
        "keep-alive clients: {} ok, {} failed, {} idle connections closed before a response",
        ka.ok, ka.failed, ka.idle_closed
    );
    assert_eq!(res.failed, 0, "failed requests: {:?}", res.errors);
    assert_eq!(ka.failed, 0, "failed keep-alive requests: {:?}", ka.errors);
    assert_eq!(
        ka.idle_closed, 0,
        "keep-alive connections closed under the client"
    );
    assert!(res.ok > 500, "too little load: {}", res.ok);
    drop(haproxy);
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purpose (only its exit status is left).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .map(|rest| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[test]
fn a_failing_test_leaves_no_haproxy_behind() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("h.cfg");
    let port = common::free_port();
    std::fs::write(
        &cfg,
        format!(
            "defaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n    timeout server 1s\nfrontend f\n    bind 127.0.0.1:{port}\n"
        ),
    )
    .unwrap();
    let d = dir.path().to_path_buf();
    let pids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let p2 = pids.clone();
    let res = std::thread::spawn(move || {
        let h = Haproxy::start(&d, &cfg);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let proc_info = rt
            .block_on(lbgen::haproxy::Master::new(&h.master_sock).show_proc())
            .unwrap();
        let mut v = p2.lock().unwrap();
        v.push(proc_info.master_pid);
        v.extend(proc_info.workers.iter().map(|(p, _)| *p));
        drop(v);
        panic!("simulated test failure");
    })
    .join();
    assert!(res.is_err());
    let pids = pids.lock().unwrap().clone();
    assert!(pids.len() >= 2, "{pids:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| alive(*p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "haproxy processes survive: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Regression: a supervisor restarting HAProxy from an empty-cluster config (as the lb image
/// does) left it serving 503 until the next membership event. The periodic resync notices the
/// new master and reloads the real config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_restarted_from_another_config_is_corrected_by_the_resync() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let b0 = Backend::start("b0").await;
    let http_port = common::free_port();
    let vars = Vars::with_overrides(&common::loopback_vars(d, http_port, &[])).unwrap();
    let members_file = d.join("members.json");
    let out = d.join("haproxy.cfg");
    write_members(&members_file, &[member("web-0", b0.port, "alive", &[])]);
    let empty = Renderer::builtin()
        .render(&Model::default(), &vars)
        .unwrap();
    std::fs::write(&out, &empty).unwrap();
    let first = Haproxy::start(d, &out);
    let (rtx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = WatchConfig {
        vars,
        resync: Some(Duration::from_millis(300)),
        reports: Some(rtx),
        ..common::watch_config(
            SourceSpec::File(members_file.clone()),
            out.clone(),
            first.master_sock.clone(),
        )
    };
    let w = tokio::spawn(lbgen::watch::run(cfg, async {
        let _ = stop_rx.await;
    }));
    let r = next_report(&mut reports).await;
    assert!(
        matches!(r.outcome, ApplyOutcome::Reloaded { .. }),
        "{:?}",
        r.outcome
    );
    assert!(get(http_port).await.starts_with("HTTP/1.1 200"));

    // The supervisor restarts HAProxy from the empty-cluster config.
    drop(first);
    std::fs::write(&out, &empty).unwrap();
    let second = Haproxy::start(d, &out);
    // No membership event: the resync must notice and fix it. Failed attempts (HAProxy
    // still starting) may come first, but not forever: a bounded number, then the test
    // fails instead of hanging.
    let mut failed = Vec::new();
    let r = loop {
        let r = next_report(&mut reports).await;
        if !matches!(r.outcome, ApplyOutcome::Failed(_)) {
            break r;
        }
        failed.push(r.outcome);
        assert!(
            failed.len() < 20,
            "the resync never fixed the restarted HAProxy: {failed:?}"
        );
    };
    assert!(
        matches!(r.outcome, ApplyOutcome::Reloaded { .. }),
        "{:?}",
        r.outcome
    );
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains("server web-0 "));
    assert!(get(http_port).await.starts_with("HTTP/1.1 200"));

    let _ = stop_tx.send(());
    w.await.unwrap().unwrap();
    drop(second);
}

/// `srv_admin_state` of `pool/server` in the running worker (`show servers state`).
async fn admin_state(h: &Haproxy, pool: &str, server: &str) -> u32 {
    let row = server_state(h, pool, server)
        .await
        .unwrap_or_else(|| panic!("{pool}/{server} not in the running worker"));
    row[6].parse().expect("srv_admin_state")
}

/// Regression: a template whose config passes `haproxy -c` but that HAProxy refuses at reload
/// (it binds a port another process holds) was retried on every change and blocked them all,
/// drains included. Now it is rejected once, the last good config stays live, a drain still
/// reaches HAProxy through the runtime API, later changes reload with the last good template,
/// and the bad template is not tried again until the file changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_haproxy_refuses_at_reload_is_dropped_and_drains_still_reach_haproxy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let backends = [
        Backend::start("b0").await,
        Backend::start("b1").await,
        Backend::start("b2").await,
    ];
    let http_port = common::free_port();
    let vars =
        Vars::with_overrides(&common::loopback_vars(d, http_port, &["check_inter=500ms"])).unwrap();
    let template = d.join("haproxy.cfg.hbs");
    let good_template = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/haproxy.cfg.hbs"),
    )
    .unwrap();
    std::fs::write(&template, &good_template).unwrap();
    let members_file = d.join("members.json");
    let out = d.join("haproxy.cfg");
    let base = vec![
        member("web-0", backends[0].port, "alive", &[]),
        member("web-1", backends[1].port, "alive", &[]),
    ];
    write_members(&members_file, &base);
    let empty = Renderer::builtin()
        .render(&Model::default(), &vars)
        .unwrap();
    std::fs::write(&out, &empty).unwrap();
    let haproxy = Haproxy::start(d, &out);

    let (rtx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = WatchConfig {
        template: Some(template.clone()),
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
    assert!(get(http_port).await.starts_with("HTTP/1.1 200"));
    let live_cfg = std::fs::read_to_string(&out).unwrap();
    let (reloads0, _) = reload_counts(&haproxy).await;

    // Another process holds this port: the check accepts the config, the reload cannot bind.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let bad_template =
        format!("{good_template}\nlisten squat\n    bind 127.0.0.1:{taken}\n    mode http\n");
    std::fs::write(&template, &bad_template).unwrap();
    let r = next_report(&mut reports).await;
    match &r.outcome {
        ApplyOutcome::Failed(e) => assert!(
            e.contains("passed the check") && e.contains("refused the reload"),
            "{e}"
        ),
        other => panic!("refused template: {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&out).unwrap(), live_cfg);
    assert_eq!(reload_counts(&haproxy).await, (reloads0 + 1, 1));
    assert!(get(http_port).await.starts_with("HTTP/1.1 200"));

    // A drain still reaches HAProxy, through the runtime API.
    assert_eq!(
        admin_state(&haproxy, "web", "web-1").await & common::ADMIN_DRAINED,
        0
    );
    let mut ms = base.clone();
    ms[1] = member("web-1", backends[1].port, "alive", &[("state", "draining")]);
    write_members(&members_file, &ms);
    let r = next_report(&mut reports).await;
    assert_eq!(
        r.outcome,
        ApplyOutcome::Runtime {
            commands: vec!["set server web/web-1 state drain".into()]
        }
    );
    if let Err(row) = common::drained_row(&haproxy, "web", "web-1").await {
        panic!("web-1 is not drained in HAProxy: {row:?}");
    }

    // A new pool reloads with the last good template; the bad one is not tried again.
    ms.push(member(
        "api-1",
        backends[2].port,
        "alive",
        &[("service", "api"), ("route", "/api")],
    ));
    write_members(&members_file, &ms);
    let r = next_report(&mut reports).await;
    assert!(
        matches!(r.outcome, ApplyOutcome::Reloaded { .. }),
        "{:?}",
        r.outcome
    );
    let now = std::fs::read_to_string(&out).unwrap();
    assert!(
        now.contains("server api-1 ") && !now.contains("listen squat"),
        "{now}"
    );
    assert_eq!(reload_counts(&haproxy).await, (reloads0 + 2, 0));
    // Rewriting the same bad template is no change: still not tried.
    std::fs::write(&template, &bad_template).unwrap();
    let r = next_report(&mut reports).await;
    assert_eq!(r.outcome, ApplyOutcome::Unchanged);
    assert_eq!(reload_counts(&haproxy).await, (reloads0 + 2, 0));
    // The drain survived the reload (rendered with weight 0, still no new requests).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = backends[1].hits();
    for _ in 0..20 {
        assert!(get(http_port).await.starts_with("HTTP/1.1 200"));
    }
    assert_eq!(backends[1].hits(), hits, "drained web-1 got new requests");

    let _ = stop_tx.send(());
    watcher.await.unwrap().unwrap();
    drop(squatter);
    drop(haproxy);
}

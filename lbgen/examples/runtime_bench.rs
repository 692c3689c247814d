//! Benchmark (run with `bench/lbgen-runtime`): real HAProxy 2.6 in master-worker mode on
//! 127.0.0.1, `lbgen watch` in-process following a members file with the default debounce
//! (`--wait 200ms:2s`), a steady closed-loop load. In one run, side by side:
//! - membership event → live through the runtime API: a server joining an existing pool
//!   (`add server`) and one leaving it (`maint`, deleted once idle);
//! - a joining server's ready event → its first request served through the LB;
//! - membership event → live through a reload (a new pool: render, `haproxy -c`, server-state
//!   dump, reload, new worker verified);
//! - a scale 1 → N → 1: HAProxy reloads and failed requests.
//!
//! "Event" is the members file being written: the file source's inotify wake-up is included,
//! as the agent's event stream would be.
//!
//! Flags: `--servers N` (default 30), `--reloads N` (default 15), `--workers N` (default 4).

use lbgen::testing as common;

use std::time::{Duration, Instant};

use common::{member, reload_counts, running_servers, write_members, Backend, Haproxy, Load};
use lbgen::apply::ApplyOutcome;
use lbgen::model::Model;
use lbgen::render::{Renderer, Vars};
use lbgen::source::SourceSpec;
use lbgen::watch::{Report, Wait, WatchConfig};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn stats(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let n = v.len();
    if n == 0 {
        return;
    }
    // Nearest rank.
    let p = |q: f64| v[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
    println!(
        "{label:<58} n={n:<3} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        ms(p(0.5)),
        ms(p(0.99)),
        ms(v[n - 1])
    );
}

async fn report(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Report>) -> Report {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("no report within 20 s")
        .expect("watch stopped")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = arg("--servers", 30).max(2);
    let n_reloads = arg("--reloads", 15);
    let workers = arg("--workers", 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut backends = Vec::new();
    for i in 0..=n {
        backends.push(Backend::start(&format!("b{i}")).await);
    }
    let http_port = common::free_port();
    let vars = Vars::with_overrides(&[
        "bind=127.0.0.1".to_string(),
        format!("http_port={http_port}"),
        format!("stats_port={}", common::free_port()),
        format!("stats_socket={}", d.join("admin.sock").display()),
        format!("server_state_file={}", d.join("server-state").display()),
        "access_log=".to_string(),
    ])
    .expect("vars");
    let members_file = d.join("members.json");
    let out = d.join("haproxy.cfg");
    let web = |k: usize| -> Vec<serde_json::Value> {
        (0..k)
            .map(|i| member(&format!("web-{i}"), backends[i].port, "alive", &[]))
            .collect()
    };
    write_members(&members_file, &web(1));
    let empty = Renderer::builtin()
        .render(&Model::default(), &vars)
        .expect("render");
    std::fs::write(&out, empty).unwrap();
    let haproxy = Haproxy::start(d, &out);

    let wait = "200ms:2s";
    let (rtx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = WatchConfig {
        vars,
        wait: Wait::parse(wait).unwrap(),
        reports: Some(rtx),
        ..common::watch_config(
            SourceSpec::File(members_file.clone()),
            out.clone(),
            haproxy.master_sock.clone(),
        )
    };
    let w = tokio::spawn(lbgen::watch::run(cfg, async {
        let _ = stop_rx.await;
    }));
    let r = report(&mut rx).await;
    assert!(
        matches!(r.outcome, ApplyOutcome::Reloaded { .. }),
        "{:?}",
        r.outcome
    );
    let load = Load::start(http_port, workers, 50_000_000, Duration::from_secs(900));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (reloads0, _) = reload_counts(&haproxy).await;

    // Scale up one server at a time: runtime adds.
    let mut add_live = Vec::new();
    let mut first_request = Vec::new();
    for k in 2..=n {
        let newcomer = &backends[k - 1];
        let hits0 = newcomer.hits();
        let t0 = Instant::now();
        write_members(&members_file, &web(k));
        let r = report(&mut rx).await;
        assert!(
            matches!(r.outcome, ApplyOutcome::Runtime { .. }),
            "scale to {k}: {:?}",
            r.outcome
        );
        add_live.push(r.done.into_std() - t0);
        let deadline = t0 + Duration::from_secs(5);
        while newcomer.hits() == hits0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        assert!(newcomer.hits() > hits0, "web-{} got no request", k - 1);
        first_request.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // And down again: runtime removes.
    let mut remove_live = Vec::new();
    for k in (1..n).rev() {
        let t0 = Instant::now();
        write_members(&members_file, &web(k));
        let r = report(&mut rx).await;
        assert!(
            matches!(r.outcome, ApplyOutcome::Runtime { .. }),
            "scale to {k}: {:?}",
            r.outcome
        );
        remove_live.push(r.done.into_std() - t0);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let t_down = Instant::now();
    while running_servers(&haproxy, "web").await.len() > 1 {
        assert!(
            t_down.elapsed() < Duration::from_secs(30),
            "servers not deleted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deleted_in = t_down.elapsed();
    let (reloads1, failed_reloads) = reload_counts(&haproxy).await;
    let scale_requests = load.total();
    let scale_failed = load.failed.load(std::sync::atomic::Ordering::SeqCst);

    // The reload path in the same run: a new pool each time (replacing the previous one).
    let mut reload_live = Vec::new();
    for i in 0..n_reloads {
        let mut ms = web(1);
        let (pool, route) = (format!("extra{i}"), format!("/extra{i}"));
        ms.push(member(
            &format!("extra-{i}"),
            backends[n].port,
            "alive",
            &[("service", &pool), ("route", &route)],
        ));
        let t0 = Instant::now();
        write_members(&members_file, &ms);
        let r = report(&mut rx).await;
        assert!(
            matches!(r.outcome, ApplyOutcome::Reloaded { .. }),
            "{:?}",
            r.outcome
        );
        reload_live.push(r.done.into_std() - t0);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    let res = load.finish().await;
    let _ = stop_tx.send(());
    let _ = w.await;
    drop(haproxy);

    println!(
        "lbgen runtime benchmark: HAProxy 2.6 master-worker on 127.0.0.1, lbgen --wait {wait} (the default), {workers} clients (new connection per request)"
    );
    stats(
        "event -> live, server joins a pool (runtime: add server)",
        add_live,
    );
    stats(
        "event -> live, server leaves a pool (runtime: maint)",
        remove_live,
    );
    stats(
        "joining server's ready event -> its first request via LB",
        first_request,
    );
    stats(
        "event -> live, new pool (reload, debounce included)",
        reload_live,
    );
    println!(
        "scale 1 -> {n} -> 1: {} HAProxy reloads ({failed_reloads} failed), {scale_failed} failed of {scale_requests} requests; the {} servers that left were deleted {:.0} ms after the last left",
        reloads1 - reloads0,
        n - 1,
        deleted_in.as_secs_f64() * 1000.0
    );
    println!(
        "whole run: {} requests ({:.0} req/s), {} failed",
        res.ok + res.failed,
        (res.ok + res.failed) as f64 / res.elapsed.as_secs_f64(),
        res.failed
    );
    if !res.errors.is_empty() {
        println!("first errors: {:?}", res.errors);
    }
    if res.failed > 0 || reloads1 != reloads0 {
        std::process::exit(1);
    }
}

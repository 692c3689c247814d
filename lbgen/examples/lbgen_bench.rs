//! Benchmark (run with `bench/lbgen`): real HAProxy 2.6 in master-worker mode on 127.0.0.1,
//! `lbgen watch` in-process following a members file, a steady closed-loop load. Prints:
//! - membership event → new config live (render + haproxy -c + reload + new worker verified),
//! - state change → runtime-API update applied (no reload),
//! - requests failed during the reloads (target 0).
//!
//! Flags: `--reloads N` (default 20), `--workers N` load concurrency (default 4),
//! `--keepalive` (reuse client connections instead of one connection per request).

use lbgen::testing as common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{member, write_members, Backend, Haproxy, Load};
use lbgen::apply::ApplyOutcome;
use lbgen::model::{MembersDoc, Model};
use lbgen::output::CheckCmd;
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
    println!(
        "{label:<44} n={n:<3} median {:>7.1} ms  p90 {:>7.1} ms  max {:>7.1} ms",
        ms(v[n / 2]),
        ms(v[(n * 9 / 10).min(n - 1)]),
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
    if let Ok(v) = std::env::var("LBGEN_LOG") {
        use tracing_subscriber::prelude::*;
        let filter: tracing_subscriber::filter::Targets =
            v.parse().expect("LBGEN_LOG: a level or target=level list");
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .finish()
            .with(filter)
            .init();
    }
    let n_reloads = arg("--reloads", 20);
    let workers = arg("--workers", 4);
    let keepalive = std::env::args().any(|a| a == "--keepalive");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let backends = [
        Backend::start("b0").await,
        Backend::start("b1").await,
        Backend::start("b2").await,
    ];
    let http_port = common::free_port();
    let vars = Vars::with_overrides(&[
        "bind=127.0.0.1".to_string(),
        format!("http_port={http_port}"),
        format!("stats_port={}", common::free_port()),
        format!("stats_socket={}", d.join("admin.sock").display()),
        format!("server_state_file={}", d.join("server-state").display()),
    ])
    .expect("vars");
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/haproxy.cfg.hbs");
    let members_file = d.join("members.json");
    let out = d.join("haproxy.cfg");
    let base = vec![
        member("web-0", backends[0].port, "alive", &[]),
        member("web-1", backends[1].port, "alive", &[]),
    ];
    write_members(&members_file, &base);
    let doc = MembersDoc::from_json(&std::fs::read_to_string(&members_file).unwrap()).unwrap();
    let text = Renderer::from_file(&template)
        .expect("template")
        .render(&Model::build(&doc), &vars)
        .expect("render");
    std::fs::write(&out, text).unwrap();
    let haproxy = Haproxy::start(d, &out);

    let wait = Wait::parse("10ms:100ms").unwrap();
    let (rtx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = WatchConfig {
        template: Some(template.clone()),
        vars,
        out: out.clone(),
        source: SourceSpec::File(members_file.clone()),
        master: Some(haproxy.master_sock.clone()),
        check: Some(CheckCmd::parse(CheckCmd::DEFAULT).unwrap()),
        wait,
        reload_timeout: Duration::from_secs(10),
        leaving_max: lbgen::watch::LEAVING_MAX,
        resync: None,
        renders: Vec::new(),
        local: None,
        reports: Some(rtx),
        http: None,
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

    let load = Load::start_mode(
        http_port,
        workers,
        10_000_000,
        Duration::from_secs(600),
        keepalive,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Membership events that need a reload: a new pool each time (a new server in an
    // existing pool goes through the runtime API; bench/lbgen-runtime measures those).
    let mut event_to_live = Vec::new();
    let mut apply_only = Vec::new();
    let mut reloads = 0;
    let extra = |i: usize| {
        let (pool, route) = (format!("extra{i}"), format!("/extra{i}"));
        member(
            &format!("extra-{i}"),
            backends[2].port,
            "alive",
            &[("service", &pool), ("route", &route)],
        )
    };
    for i in 0..n_reloads {
        let mut ms = base.clone();
        ms.push(extra(i));
        let t0 = Instant::now();
        write_members(&members_file, &ms);
        let r = report(&mut rx).await;
        match r.outcome {
            ApplyOutcome::Reloaded { .. } => reloads += 1,
            other => panic!("expected a reload, got {other:?}"),
        }
        event_to_live.push(r.done - tokio::time::Instant::from_std(t0));
        apply_only.push(r.done - r.signalled);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let during_reloads = load.total();
    let failed_during_reloads = load.failed.load(std::sync::atomic::Ordering::SeqCst);

    // Pure state changes: drain / ready toggles through the runtime API.
    let mut state_change = Vec::new();
    let last = extra(n_reloads.saturating_sub(1));
    for i in 0..20 {
        let state = if i % 2 == 0 { "draining" } else { "ready" };
        let mut ms = base.clone();
        ms[1] = member("web-1", backends[1].port, "alive", &[("state", state)]);
        ms.push(last.clone());
        let t0 = Instant::now();
        write_members(&members_file, &ms);
        let r = report(&mut rx).await;
        match r.outcome {
            ApplyOutcome::Runtime { .. } => {}
            other => panic!("expected a runtime change, got {other:?}"),
        }
        state_change.push(r.done - tokio::time::Instant::from_std(t0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let res = load.finish().await;
    let _ = stop_tx.send(());
    let _ = w.await;
    drop(haproxy);

    println!("lbgen benchmark: HAProxy 2.6 master-worker on 127.0.0.1, debounce --wait 10ms:100ms");
    stats("membership event -> config live (reload)", event_to_live);
    stats("  of which render+check+reload+verify", apply_only);
    stats("state change -> runtime API applied", state_change);
    println!(
        "load: {} requests ({:.0} req/s, {workers} workers, {}); {} during {reloads} reloads",
        res.ok + res.failed,
        (res.ok + res.failed) as f64 / res.elapsed.as_secs_f64(),
        if keepalive {
            "keep-alive connections"
        } else {
            "new connection per request"
        },
        during_reloads
    );
    println!(
        "failed requests during {reloads} reloads: {failed_during_reloads}; failed overall: {}",
        res.failed
    );
    if keepalive {
        println!(
            "idle keep-alive connections closed by old workers before a request was answered: {} (clients retry these)",
            res.idle_closed
        );
    }
    if !res.errors.is_empty() {
        println!("first errors: {:?}", res.errors);
    }
    if res.failed > 0 {
        std::process::exit(1);
    }
}

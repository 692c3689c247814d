//! lbgen's first apply against a real HAProxy 2.6 (127.0.0.1 only): it reloads (lbgen cannot
//! know what the running HAProxy loaded) but does not wait out the `--wait` debounce, which
//! is there to batch bursts of changes to a config lbgen knows. An LB that starts (`docker
//! compose up`) or restarts has its first apply live as soon as the agent is synced.

use lbgen::testing as common;

use std::time::{Duration, Instant};

use common::{member, next_report, write_members, Backend, Haproxy};
use lbgen::apply::ApplyOutcome;
use lbgen::render::Vars;
use lbgen::source::SourceSpec;
use lbgen::watch::{Wait, WatchConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_apply_reloads_without_waiting_for_the_debounce() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let backend = Backend::start("b0").await;
    let vars = Vars::with_overrides(&[
        "bind=127.0.0.1".to_string(),
        format!("http_port={}", common::free_port()),
        format!("stats_port={}", common::free_port()),
        format!("stats_socket={}", d.join("admin.sock").display()),
        format!("server_state_file={}", d.join("server-state").display()),
    ])
    .unwrap();
    let members_file = d.join("members.json");
    write_members(
        &members_file,
        &[member("web-0", backend.port, "alive", &[])],
    );
    // HAProxy runs the empty-cluster config, as the lb image starts it without an agent.
    let out = d.join("haproxy.cfg");
    let empty = lbgen::render::Renderer::builtin()
        .render(
            &lbgen::model::Model::build(
                &lbgen::model::MembersDoc::from_json(r#"{"members":[]}"#).unwrap(),
            ),
            &vars,
        )
        .unwrap();
    std::fs::write(&out, empty).unwrap();
    let haproxy = Haproxy::start(d, &out);

    let (rtx, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // A debounce far longer than a reload: an apply that waited for it cannot pass.
    let wait = Wait::parse("10s:20s").unwrap();
    let cfg = WatchConfig {
        vars,
        wait,
        reports: Some(rtx),
        ..common::watch_config(
            SourceSpec::File(members_file.clone()),
            out.clone(),
            haproxy.master_sock.clone(),
        )
    };
    let started = Instant::now();
    let watcher = tokio::spawn(lbgen::watch::run(cfg, async {
        let _ = stop_rx.await;
    }));
    let r = next_report(&mut reports).await;
    let took = started.elapsed();
    assert!(
        matches!(r.outcome, ApplyOutcome::Reloaded { .. }),
        "{:?}",
        r.outcome
    );
    assert!(
        took < wait.min / 2,
        "the first apply took {took:?}: it waited for the {:?} debounce",
        wait.min
    );
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains("server web-0 "));

    // After it, a change that reloads waits for the debounce again.
    write_members(
        &members_file,
        &[
            member("web-0", backend.port, "alive", &[]),
            member(
                "api-0",
                backend.port,
                "alive",
                &[("service", "api"), ("route", "/api")],
            ),
        ],
    );
    let changed = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(40), reports.recv())
        .await
        .expect("no report within 40 s")
        .expect("watch stopped");
    assert!(
        matches!(r.outcome, ApplyOutcome::Reloaded { .. }),
        "{:?}",
        r.outcome
    );
    assert!(
        changed.elapsed() >= wait.min - Duration::from_millis(500),
        "a later reload did not wait for the debounce: {:?}",
        changed.elapsed()
    );
    let _ = stop_tx.send(());
    watcher.await.unwrap().unwrap();
}

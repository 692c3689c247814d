//! lbgen's first apply against a real HAProxy 2.6 (127.0.0.1 only). When the config file is
//! proven to be what HAProxy's worker loaded (unchanged since before the worker started, the
//! same servers in HAProxy: `lbgen::adopt`), lbgen takes it as what runs: the same snapshot
//! changes nothing, a server change is a runtime change. Otherwise (the file was rewritten
//! after HAProxy loaded it, HAProxy's servers differ) it reloads. A first apply that reloads
//! does not wait out the `--wait` debounce, which is there to batch bursts of changes to a
//! config lbgen knows. An LB that starts (`docker compose up`) or restarts has its first apply
//! live as soon as the agent is synced.

use lbgen::testing as common;

use std::time::{Duration, Instant};

use common::{member, next_report, write_members, Backend, Haproxy};
use lbgen::apply::ApplyOutcome;
use lbgen::render::Vars;
use lbgen::source::SourceSpec;
use lbgen::watch::{Wait, WatchConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_apply_reloads_without_waiting_for_the_debounce() {
    let bed = Bed::new();
    let backend = Backend::start("b0").await;
    write_members(&bed.members, &[member("web-0", backend.port, "alive", &[])]);
    // HAProxy runs the empty-cluster config, as the lb image starts it without an agent.
    bed.write_config(&bed.render(&[]));
    let _haproxy = Haproxy::start(bed.dir.path(), &bed.out);

    // A debounce far longer than a reload: an apply that waited for it cannot pass.
    let wait = Wait::parse("10s:20s").unwrap();
    let started = Instant::now();
    let (mut reports, stop_tx, watcher) = bed.watch_with(Some(wait));
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
    assert!(std::fs::read_to_string(&bed.out)
        .unwrap()
        .contains("server web-0 "));

    // After it, a change that reloads waits for the debounce again.
    write_members(
        &bed.members,
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

/// A members file, the config rendered from it with the default template, and an HAProxy
/// started from that file, as the lb image starts it (`lbgen render` before `haproxy`).
struct Bed {
    dir: tempfile::TempDir,
    vars: Vars,
    members: std::path::PathBuf,
    out: std::path::PathBuf,
}

impl Bed {
    fn new() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let vars =
            Vars::with_overrides(&common::loopback_vars(d, common::free_port(), &[])).unwrap();
        Bed {
            members: d.join("members.json"),
            out: d.join("haproxy.cfg"),
            vars,
            dir,
        }
    }

    /// The config of `members`, as `lbgen render` writes it.
    fn render(&self, members: &[serde_json::Value]) -> String {
        let doc = serde_json::json!({ "members": members }).to_string();
        lbgen::render::Renderer::builtin()
            .render(
                &lbgen::model::Model::build(&lbgen::model::MembersDoc::from_json(&doc).unwrap()),
                &self.vars,
            )
            .unwrap()
    }

    /// HAProxy started from the config `lbgen render` makes of `members`, the members file
    /// holding the same: what a restarted LB's first apply finds when nothing changed.
    fn haproxy_from(&self, members: &[serde_json::Value]) -> Haproxy {
        write_members(&self.members, members);
        self.write_config(&self.render(members));
        Haproxy::start(self.dir.path(), &self.out)
    }

    /// Writes `text` as the config, atomically (a new file renamed over the old one).
    fn write_config(&self, text: &str) {
        let tmp = self.out.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.out).unwrap();
    }

    fn watch(
        &self,
    ) -> (
        tokio::sync::mpsc::UnboundedReceiver<lbgen::watch::Report>,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), lbgen::Error>>,
    ) {
        self.watch_with(None)
    }

    /// `lbgen watch` on the bed, with the `--wait` debounce given or the default.
    fn watch_with(
        &self,
        wait: Option<Wait>,
    ) -> (
        tokio::sync::mpsc::UnboundedReceiver<lbgen::watch::Report>,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), lbgen::Error>>,
    ) {
        let (rtx, reports) = tokio::sync::mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let defaults = common::watch_config(
            SourceSpec::File(self.members.clone()),
            self.out.clone(),
            self.dir.path().join("master.sock"),
        );
        let cfg = WatchConfig {
            vars: self.vars.clone(),
            reports: Some(rtx),
            wait: wait.unwrap_or(defaults.wait),
            ..defaults
        };
        let watcher = tokio::spawn(lbgen::watch::run(cfg, async {
            let _ = stop_rx.await;
        }));
        (reports, stop_tx, watcher)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_haproxy_started_from_the_same_snapshot_is_adopted_without_a_reload() {
    let bed = Bed::new();
    let (b0, b1) = (Backend::start("b0").await, Backend::start("b1").await);
    let haproxy = bed.haproxy_from(&[member("web-0", b0.port, "alive", &[])]);

    let (mut reports, stop, watcher) = bed.watch();
    let r = next_report(&mut reports).await;
    assert_eq!(r.outcome, ApplyOutcome::Unchanged);
    assert_eq!(common::reload_counts(&haproxy).await, (0, 0));

    // What lbgen adopted plans like what it reloaded: a joining member is a runtime add.
    let two = [
        member("web-0", b0.port, "alive", &[]),
        member("web-1", b1.port, "alive", &[]),
    ];
    write_members(&bed.members, &two);
    let r = next_report(&mut reports).await;
    assert!(
        matches!(&r.outcome, ApplyOutcome::Runtime { commands } if commands[0].starts_with("add server web/web-1 ")),
        "{:?}",
        r.outcome
    );
    assert_eq!(common::reload_counts(&haproxy).await, (0, 0));
    assert_eq!(
        common::running_servers(&haproxy, "web").await,
        ["web-0", "web-1"]
    );
    assert_eq!(std::fs::read_to_string(&bed.out).unwrap(), bed.render(&two));
    let _ = stop.send(());
    watcher.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_after_haproxy_loaded_it_is_reloaded_even_when_it_renders_the_same() {
    let bed = Bed::new();
    let b0 = Backend::start("b0").await;
    bed.write_config(&bed.render(&[member("web-0", b0.port, "alive", &[])]));
    let haproxy = Haproxy::start(bed.dir.path(), &bed.out);
    // After HAProxy loaded the file, it gets the text of the next snapshot (as an lbgen that
    // died right after writing it would leave it): the same servers, but another health-check
    // path, which HAProxy does not run. Only the file's time tells.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let next = [member("web-0", b0.port, "alive", &[("check", "/ready")])];
    write_members(&bed.members, &next);
    bed.write_config(&bed.render(&next));

    let (mut reports, stop, watcher) = bed.watch();
    let r = next_report(&mut reports).await;
    assert!(
        matches!(r.outcome, ApplyOutcome::Reloaded { .. }),
        "{:?}",
        r.outcome
    );
    assert_eq!(common::reload_counts(&haproxy).await, (1, 0));
    let _ = stop.send(());
    watcher.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_haproxy_whose_servers_differ_from_the_file_is_reloaded() {
    let bed = Bed::new();
    let b0 = Backend::start("b0").await;
    let haproxy = bed.haproxy_from(&[member("web-0", b0.port, "alive", &[])]);
    // The file is untouched since HAProxy loaded it, but its server is not as the file has it
    // any more (a runtime command, or a server-state file HAProxy started from).
    let master = lbgen::haproxy::Master::new(&haproxy.master_sock);
    master
        .runtime("set server web/web-0 weight 5")
        .await
        .unwrap();
    assert_eq!(
        common::server_state(&haproxy, "web", "web-0")
            .await
            .unwrap()[7],
        "5"
    );

    let (mut reports, stop, watcher) = bed.watch();
    let r = next_report(&mut reports).await;
    assert!(
        matches!(r.outcome, ApplyOutcome::Reloaded { .. }),
        "{:?}",
        r.outcome
    );
    assert_eq!(common::reload_counts(&haproxy).await, (1, 0));
    // The reload started the server from the file (its state file emptied first).
    assert_eq!(
        common::server_state(&haproxy, "web", "web-0")
            .await
            .unwrap()[7],
        "100"
    );
    let _ = stop.send(());
    watcher.await.unwrap().unwrap();
}

/// Regression: one signal makes the first apply due at once and a runtime-only try due 2 ms
/// later. When the loop ran late both were due, `select!` took either, and the runtime try
/// adopted the running HAProxy as "unchanged": the first apply was never reported (CI, under
/// load: "no report from lbgen watch within 15 s"). A task that blocks the one runtime
/// thread 3 ms at a time makes the loop late on every round.
#[tokio::test(flavor = "current_thread")]
async fn the_first_apply_is_reported_even_when_the_loop_runs_late() {
    let bed = Bed::new();
    let b0 = Backend::start("b0").await;
    let haproxy = bed.haproxy_from(&[member("web-0", b0.port, "alive", &[])]);
    let busy = tokio::spawn(async {
        loop {
            std::thread::sleep(Duration::from_millis(3));
            tokio::task::yield_now().await;
        }
    });
    for round in 0..12 {
        let (mut reports, stop, watcher) = bed.watch();
        let r = tokio::time::timeout(Duration::from_secs(10), reports.recv())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the first apply was not reported"))
            .expect("watch stopped");
        assert_eq!(r.outcome, ApplyOutcome::Unchanged, "round {round}");
        let _ = stop.send(());
        watcher.await.unwrap().unwrap();
    }
    busy.abort();
    assert_eq!(common::reload_counts(&haproxy).await, (0, 0));
}

//! The safety paths of "How `watch` applies a change", against the real HAProxy 2.6 in
//! master-worker mode on 127.0.0.1: a runtime-API command HAProxy fails falls back to a reload,
//! and a reload HAProxy refuses, or does not confirm in time, puts the last good config back in
//! the file (refused: lbgen still knows what the old worker runs; unconfirmed: it does not, so
//! the next change reloads).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lbgen::apply::{Applier, ApplyError, ApplyOutcome};
use lbgen::haproxy::Master;
use lbgen::model::{MembersDoc, Model};
use lbgen::render::{Renderer, Vars};
use lbgen::source::SourceSpec;
use lbgen::testing::{
    drained_row, free_port, get, member, next_report, reload_counts, server_state, write_members,
    Backend, Haproxy,
};
use lbgen::watch::{Report, WatchConfig};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;

/// The default template plus, for a pool named `squat`, a listener on each of its servers'
/// ports. A `squat` member whose port another process holds gives a config that passes
/// `haproxy -c` (which binds nothing) but that HAProxy cannot load: the master retries the
/// bind for about 2.5 s, then reports the reload failed.
fn squat_template() -> String {
    let good = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/haproxy.cfg.hbs"),
    )
    .expect("the default template");
    good + concat!(
        "{{#each pools}}{{#if (eq name \"squat\")}}{{#each servers}}\n",
        "listen squat-{{name}}\n",
        "    bind 127.0.0.1:{{port}}\n",
        "    mode http\n",
        "{{/each}}{{/if}}{{/each}}\n",
    )
}

/// A member of the `squat` pool on `port`.
fn squat_member(port: u16) -> serde_json::Value {
    member(
        "squat-0",
        port,
        "alive",
        &[("service", "squat"), ("route", "/squat")],
    )
}

/// One HAProxy started from the empty-cluster config, a members file, and the `WatchConfig`
/// to follow it (its first apply will reload).
struct Rig {
    _dir: tempfile::TempDir,
    members_file: PathBuf,
    out: PathBuf,
    http_port: u16,
    haproxy: Haproxy,
}

impl Rig {
    fn start(
        members: &[serde_json::Value],
        template: Option<String>,
        reload_timeout: Duration,
    ) -> (Rig, WatchConfig) {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let http_port = free_port();
        let vars = Vars::with_overrides(&lbgen::testing::loopback_vars(
            d,
            http_port,
            &["check_inter=500ms"],
        ))
        .expect("vars");
        let template = template.map(|src| {
            let p = d.join("haproxy.cfg.hbs");
            std::fs::write(&p, src).expect("write template");
            p
        });
        let members_file = d.join("members.json");
        let out = d.join("haproxy.cfg");
        write_members(&members_file, members);
        let empty = Renderer::builtin()
            .render(&Model::default(), &vars)
            .expect("render the empty config");
        std::fs::write(&out, &empty).expect("write the empty config");
        let haproxy = Haproxy::start(d, &out);
        let cfg = WatchConfig {
            template,
            vars,
            reload_timeout,
            ..lbgen::testing::watch_config(
                SourceSpec::File(members_file.clone()),
                out.clone(),
                haproxy.master_sock.clone(),
            )
        };
        let rig = Rig {
            _dir: dir,
            members_file,
            out,
            http_port,
            haproxy,
        };
        (rig, cfg)
    }

    fn set_members(&self, members: &[serde_json::Value]) {
        write_members(&self.members_file, members);
    }

    fn live_file(&self) -> String {
        std::fs::read_to_string(&self.out).expect("read the live config")
    }
}

/// `lbgen watch` in process, reporting every apply.
struct Watch {
    reports: UnboundedReceiver<Report>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), lbgen::Error>>,
}

impl Watch {
    /// Starts it and checks that its first apply reloaded HAProxy.
    async fn start(mut cfg: WatchConfig, http_port: u16) -> Watch {
        let (rtx, reports) = tokio::sync::mpsc::unbounded_channel();
        cfg.reports = Some(rtx);
        let (stop, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(lbgen::watch::run(cfg, async {
            let _ = stop_rx.await;
        }));
        let mut w = Watch {
            reports,
            stop,
            task,
        };
        // The first apply always reloads (lbgen cannot know what the running HAProxy loaded).
        let r = w.next().await;
        assert!(
            matches!(r, ApplyOutcome::Reloaded { .. }),
            "first apply: {r:?}"
        );
        assert!(get(http_port).await.starts_with("HTTP/1.1 200"));
        w
    }

    async fn next(&mut self) -> ApplyOutcome {
        next_report(&mut self.reports).await.outcome
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("watch task panicked")
            .expect("watch returned an error");
    }
}

fn weight(row: &[String]) -> u32 {
    row[7].parse().expect("srv_uweight")
}

/// Waits until the master has counted `failed` failed reloads (it reports a refused bind only
/// after its retries, and does not answer while it re-executes itself).
async fn wait_for_failed_reloads(h: &Haproxy, failed: u64) {
    let master = Master::new(&h.master_sock);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let counted = master.show_proc().await.map(|p| p.failed);
        if counted == Ok(failed) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the master never counted {failed} failed reload(s): {counted:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server deleted behind lbgen's back: the runtime command for its drain fails ("No such
/// server"), and lbgen reloads instead, which brings the server back, drained (weight 0).
/// The reload's state is known again: the next state change goes through the runtime API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_command_haproxy_fails_falls_back_to_a_reload() {
    let b0 = Backend::start("b0").await;
    let b1 = Backend::start("b1").await;
    let base = vec![
        member("web-0", b0.port, "alive", &[]),
        member("web-1", b1.port, "alive", &[]),
    ];
    let (rig, cfg) = Rig::start(&base, None, Duration::from_secs(10));
    let mut watch = Watch::start(cfg, rig.http_port).await;

    let master = Master::new(&rig.haproxy.master_sock);
    master
        .runtime("set server web/web-1 state maint")
        .await
        .expect("maint web-1");
    let deleted = master
        .command("@1 del server web/web-1")
        .await
        .expect("del server");
    assert!(deleted.contains("Server deleted"), "{deleted}");
    assert_eq!(server_state(&rig.haproxy, "web", "web-1").await, None);
    let (reloads, _) = reload_counts(&rig.haproxy).await;

    let mut drained = base.clone();
    drained[1] = member("web-1", b1.port, "alive", &[("state", "draining")]);
    rig.set_members(&drained);
    let r = watch.next().await;
    assert!(
        matches!(r, ApplyOutcome::Reloaded { .. }),
        "a failed runtime command must fall back to a reload: {r:?}"
    );
    assert_eq!(reload_counts(&rig.haproxy).await, (reloads + 1, 0));
    let row = server_state(&rig.haproxy, "web", "web-1")
        .await
        .expect("web-1 is back in the running worker");
    assert_eq!(weight(&row), 0, "web-1 is not rendered drained: {row:?}");
    assert!(rig
        .live_file()
        .contains(&format!("server web-1 127.0.0.1:{} weight 0 ", b1.port)));

    // Back to ready: the runtime API again (lbgen knows what the reload loaded).
    rig.set_members(&base);
    let r = watch.next().await;
    assert_eq!(
        r,
        ApplyOutcome::Runtime {
            commands: vec![
                "set server web/web-1 weight 100".into(),
                "set server web/web-1 state ready".into(),
            ]
        }
    );
    let row = server_state(&rig.haproxy, "web", "web-1")
        .await
        .expect("web-1");
    assert_eq!(weight(&row), 100, "{row:?}");
    assert_eq!(reload_counts(&rig.haproxy).await, (reloads + 1, 0));
    watch.stop().await;
}

/// A membership change whose config passes the check but that HAProxy refuses at reload: the
/// last good config is put back in the file, the old worker serves on, and since lbgen still
/// knows what it runs, a drain right after goes through the runtime API (no reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_haproxy_refuses_puts_the_last_good_config_back_and_drains_still_use_the_runtime_api(
) {
    let b0 = Backend::start("b0").await;
    let b1 = Backend::start("b1").await;
    let base = vec![
        member("web-0", b0.port, "alive", &[]),
        member("web-1", b1.port, "alive", &[]),
    ];
    let (rig, cfg) = Rig::start(&base, Some(squat_template()), Duration::from_secs(10));
    let mut watch = Watch::start(cfg, rig.http_port).await;
    let live_cfg = rig.live_file();
    let (reloads, _) = reload_counts(&rig.haproxy).await;

    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the squatter");
    let taken = squatter.local_addr().expect("squatter port").port();
    let mut ms = base.clone();
    ms.push(squat_member(taken));
    rig.set_members(&ms);
    match watch.next().await {
        ApplyOutcome::Failed(e) => assert!(e.contains("refused the reload"), "{e}"),
        other => panic!("a refused reload: {other:?}"),
    }
    assert_eq!(
        rig.live_file(),
        live_cfg,
        "the last good config is not back"
    );
    assert_eq!(reload_counts(&rig.haproxy).await, (reloads + 1, 1));
    assert!(get(rig.http_port).await.starts_with("HTTP/1.1 200"));

    let mut drained = base.clone();
    drained[1] = member("web-1", b1.port, "alive", &[("state", "draining")]);
    rig.set_members(&drained);
    assert_eq!(
        watch.next().await,
        ApplyOutcome::Runtime {
            commands: vec!["set server web/web-1 state drain".into()]
        }
    );
    if let Err(row) = drained_row(&rig.haproxy, "web", "web-1").await {
        panic!("web-1 is not drained: {row:?}");
    }
    assert_eq!(reload_counts(&rig.haproxy).await, (reloads + 1, 1));
    watch.stop().await;
    drop(squatter);
}

/// A reload not confirmed within `--reload-timeout` (here HAProxy is still retrying a bind):
/// the last good config is put back in the file, and since lbgen no longer knows what runs,
/// the next change reloads even where the runtime API would have done (a drain). Driven
/// through the [`Applier`] itself, so no retry timer of the watch loop races the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_not_confirmed_in_time_puts_the_last_good_config_back_and_the_next_change_reloads()
{
    let b0 = Backend::start("b0").await;
    let b1 = Backend::start("b1").await;
    let base = vec![
        member("web-0", b0.port, "alive", &[]),
        member("web-1", b1.port, "alive", &[]),
    ];
    // Long enough for a normal reload on a loaded machine, shorter than the bind retries.
    let (rig, cfg) = Rig::start(&base, Some(squat_template()), Duration::from_secs(1));
    let mut applier = Applier::new(&cfg).expect("applier");
    let applied = applier.apply(&doc(&base)).await.expect("first apply");
    assert!(
        matches!(applied.outcome, ApplyOutcome::Reloaded { .. }),
        "first apply: {applied:?}"
    );
    let live_cfg = rig.live_file();
    let (reloads, _) = reload_counts(&rig.haproxy).await;

    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the squatter");
    let taken = squatter.local_addr().expect("squatter port").port();
    let mut ms = base.clone();
    ms.push(squat_member(taken));
    match applier.apply(&doc(&ms)).await {
        Err(ApplyError::Transient(e)) => {
            assert!(e.0.contains("not confirmed within 1s"), "{e}")
        }
        other => panic!("an unconfirmed reload: {other:?}"),
    }
    assert_eq!(
        rig.live_file(),
        live_cfg,
        "the last good config is not back"
    );
    // Let the master finish that reload before the next one.
    wait_for_failed_reloads(&rig.haproxy, 1).await;
    assert!(get(rig.http_port).await.starts_with("HTTP/1.1 200"));

    let mut drained = base.clone();
    drained[1] = member("web-1", b1.port, "alive", &[("state", "draining")]);
    let applied = applier.apply(&doc(&drained)).await.expect("the drain");
    assert!(
        matches!(applied.outcome, ApplyOutcome::Reloaded { .. }),
        "after an unconfirmed reload a drain must reload: {applied:?}"
    );
    assert_eq!(reload_counts(&rig.haproxy).await, (reloads + 2, 0));
    let cfg = rig.live_file();
    assert!(
        cfg.contains(&format!("server web-1 127.0.0.1:{} weight 0 ", b1.port))
            && !cfg.contains("squat"),
        "{cfg}"
    );
    drop(squatter);
}

fn doc(members: &[serde_json::Value]) -> MembersDoc {
    MembersDoc::from_json(&serde_json::json!({ "members": members }).to_string())
        .expect("members document")
}

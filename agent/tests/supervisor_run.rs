//! The supervisor with real processes and signals: exit codes, signal
//! forwarding, restarts with backoff, crash-loop stop, ordered shutdown,
//! SIGKILL after stop_timeout, orphan reaping.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use shoal::process::ExitStatus;
use shoal::supervisor::{ServiceState, Supervisor, SupervisorSpec};

/// Every test must end well within this.
const BOUND: Duration = Duration::from_secs(20);

fn cmd(script: &str) -> SupervisorSpec {
    SupervisorSpec::from_command(&["/bin/sh".into(), "-c".into(), script.into()]).expect("spec")
}

fn toml(text: &str) -> SupervisorSpec {
    SupervisorSpec::from_toml_str("test.toml", text).expect("spec")
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("bounded in time")
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn the_main_exit_code_is_propagated() {
    let sup = Supervisor::start(cmd("exit 3")).await.expect("start");
    assert_eq!(bounded(sup.wait_exit()).await, 3);
    let st = sup.status();
    assert_eq!(st[0].last_exit, Some(ExitStatus::Code(3)));
    assert_eq!(st[0].state, ServiceState::Exited);
    assert_eq!(bounded(sup.shutdown()).await, 3);
}

#[tokio::test]
async fn a_signal_death_is_propagated_as_128_plus_n() {
    let sup = Supervisor::start(cmd("kill -KILL $$"))
        .await
        .expect("start");
    assert_eq!(bounded(sup.wait_exit()).await, 137);
    assert_eq!(bounded(sup.shutdown()).await, 137);
}

#[tokio::test]
async fn forwarded_signals_reach_the_service_and_its_exit_code_comes_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let ready = dir.path().join("ready");
    // The trap runs after the foreground `sleep` (same group) dies of USR1.
    let script = format!(
        "trap 'exit 7' USR1; touch {}; while :; do sleep 0.05; done",
        ready.display()
    );
    let sup = Supervisor::start(cmd(&script)).await.expect("start");
    wait_until(|| ready.exists()).await;
    sup.forward_signal(Signal::SIGUSR1);
    assert_eq!(bounded(sup.wait_exit()).await, 7);
    assert_eq!(bounded(sup.shutdown()).await, 7);
}

#[tokio::test]
async fn shutdown_sends_the_stop_signal_and_returns_the_main_code() {
    let sup = Supervisor::start(cmd("exec sleep 30"))
        .await
        .expect("start");
    let pid = sup.status()[0].pid.expect("running");
    assert!(pid > 1);
    let start = Instant::now();
    // `sleep` dies of SIGTERM: 128 + 15, as tini would report.
    assert_eq!(bounded(sup.shutdown()).await, 143);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_service_ignoring_its_stop_signal_is_killed_after_stop_timeout() {
    let dir = tempfile::tempdir().expect("tmp");
    let ready = dir.path().join("ready");
    let spec = toml(&format!(
        r#"
[services.stubborn]
command = ["/bin/sh", "-c", "trap '' TERM; touch {}; while :; do sleep 0.05; done"]
stop_timeout = "400ms"
main = true
"#,
        ready.display()
    ));
    let sup = Supervisor::start(spec).await.expect("start");
    wait_until(|| ready.exists()).await;
    let start = Instant::now();
    assert_eq!(bounded(sup.shutdown()).await, 137);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_failing_service_is_restarted_with_growing_backoff_until_the_crash_loop_limit() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("runs");
    let spec = toml(&format!(
        r#"
[services.flaky]
command = ["/bin/sh", "-c", "echo run >> {}; exit 4"]
restart = "on-failure"
backoff = "100ms"
backoff_max = "2s"
max_restarts = 3
restart_window = "1m"
critical = true
"#,
        log.display()
    ));
    let start = Instant::now();
    let sup = Supervisor::start(spec).await.expect("start");
    // First run + 3 restarts, then given up: the critical service stops the container.
    assert_eq!(bounded(sup.wait_exit()).await, 4);
    let took = start.elapsed();
    assert_eq!(read(&log).lines().count(), 4);
    // Backoff 100 + 200 + 400 ms.
    assert!(took >= Duration::from_millis(650), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let st = &sup.status()[0];
    assert_eq!(st.restarts, 3);
    assert_eq!(st.state, ServiceState::Failed);
    assert_eq!(st.last_exit, Some(ExitStatus::Code(4)));
    assert_eq!(bounded(sup.shutdown()).await, 4);
}

#[tokio::test]
async fn on_failure_does_not_restart_a_clean_exit_and_always_does() {
    let dir = tempfile::tempdir().expect("tmp");
    let clean = dir.path().join("clean");
    let always = dir.path().join("always");
    let spec = toml(&format!(
        r#"
[services.app]
command = ["/bin/sh", "-c", "sleep 30"]
main = true

[services.oneshot]
command = ["/bin/sh", "-c", "echo run >> {}"]
restart = "on-failure"
backoff = "50ms"

[services.looper]
command = ["/bin/sh", "-c", "echo run >> {}"]
restart = "always"
backoff = "50ms"
max_restarts = 100
"#,
        clean.display(),
        always.display()
    ));
    let sup = Supervisor::start(spec).await.expect("start");
    wait_until(|| read(&always).lines().count() >= 3).await;
    assert_eq!(read(&clean).lines().count(), 1);
    let st = sup.status();
    let oneshot = st.iter().find(|s| s.name == "oneshot").expect("oneshot");
    assert_eq!(oneshot.state, ServiceState::Exited);
    assert_eq!(oneshot.restarts, 0);
    // A non-critical service ending does not stop the container.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), sup.wait_exit())
            .await
            .is_err()
    );
    let code = bounded(sup.shutdown()).await;
    assert_eq!(code, 143);
}

#[tokio::test]
async fn shutdown_stops_services_in_reverse_dependency_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("order");
    let svc = |name: &str, dep: Option<&str>| {
        let dep = dep
            .map(|d| format!("depends_on = [\"{d}\"]\n"))
            .unwrap_or_default();
        format!(
            "[services.{name}]\ncommand = [\"/bin/sh\", \"-c\", \"trap 'echo stop {name} >> {log}; exit 0' TERM; echo start {name} >> {log}; while :; do sleep 0.05; done\"]\n{dep}stop_timeout = \"5s\"\n\n",
            log = log.display()
        )
    };
    // File order deliberately differs from dependency order. The trap is
    // set before `start` is logged: a SIGTERM right after cannot miss it.
    let text = format!(
        "{}{}{}",
        svc("web", Some("app")),
        svc("db", None),
        svc("app", Some("db"))
    );
    let sup = Supervisor::start(toml(&text)).await.expect("start");
    let names: Vec<String> = sup.status().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["db", "app", "web"]);
    wait_until(|| read(&log).lines().count() == 3).await;
    assert_eq!(bounded(sup.shutdown()).await, 0);
    let lines: Vec<String> = read(&log).lines().map(String::from).collect();
    let stops: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("stop"))
        .map(String::as_str)
        .collect();
    assert_eq!(stops, ["stop web", "stop app", "stop db"], "{lines:?}");
}

#[tokio::test]
async fn a_critical_service_death_stops_the_container_with_its_code() {
    let spec = toml(
        r#"
[services.app]
command = ["/bin/sh", "-c", "exec sleep 30"]
main = true

[services.sidecar]
command = ["/bin/sh", "-c", "sleep 0.2; exit 9"]
restart = "never"
critical = true
"#,
    );
    let sup = Supervisor::start(spec).await.expect("start");
    assert_eq!(bounded(sup.wait_exit()).await, 9);
    assert_eq!(bounded(sup.shutdown()).await, 9);
}

#[tokio::test]
async fn orphans_of_a_service_are_reaped() {
    let dir = tempfile::tempdir().expect("tmp");
    let pidfile = dir.path().join("orphan");
    // The subshell exits at once; its `sleep` is orphaned and re-parented
    // to us (child subreaper), then exits while the main service runs on.
    let script = format!(
        "(sleep 0.3 </dev/null >/dev/null 2>&1 & echo $! > {}); exec sleep 30",
        pidfile.display()
    );
    let sup = Supervisor::start(cmd(&script)).await.expect("start");
    wait_until(|| !read(&pidfile).trim().is_empty()).await;
    let pid: i32 = read(&pidfile).trim().parse().expect("pid");
    let stat = format!("/proc/{pid}/stat");
    // Gone entirely: no zombie left behind.
    wait_until(|| !Path::new(&stat).exists()).await;
    assert_eq!(bounded(sup.shutdown()).await, 143);
}

#[tokio::test]
async fn a_spawn_failure_at_start_is_an_error() {
    // Validation passes, then the file disappears before start.
    let dir = tempfile::tempdir().expect("tmp");
    let prog = dir.path().join("prog");
    std::fs::write(&prog, "#!/bin/sh\nexit 0\n").expect("write");
    std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let spec = SupervisorSpec::from_command(&[prog.display().to_string()]).expect("spec");
    std::fs::remove_file(&prog).expect("rm");
    match Supervisor::start(spec).await {
        Err(e) => assert!(e.to_string().contains("main"), "{e}"),
        Ok(_) => panic!("start must fail"),
    }
}

#[tokio::test]
async fn status_serializes_for_the_api() {
    let sup = Supervisor::start(cmd("exec sleep 30"))
        .await
        .expect("start");
    let v = serde_json::to_value(sup.status()).expect("json");
    let s = &v[0];
    assert_eq!(s["name"], "main");
    assert_eq!(s["state"], "running");
    assert!(s["pid"].as_i64().is_some_and(|p| p > 1));
    assert_eq!(s["restarts"], 0);
    assert!(s["last_exit"].is_null());
    bounded(sup.shutdown()).await;
}

#[tokio::test]
async fn what_a_service_left_in_its_process_group_dies_with_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let pidfile = dir.path().join("bg");
    let script = format!(
        "sleep 30 </dev/null >/dev/null 2>&1 & echo $! > {}; exit 5",
        pidfile.display()
    );
    let sup = Supervisor::start(cmd(&script)).await.expect("start");
    assert_eq!(bounded(sup.wait_exit()).await, 5);
    let pid: i32 = read(&pidfile).trim().parse().expect("pid");
    let stat = format!("/proc/{pid}/stat");
    wait_until(|| !Path::new(&stat).exists()).await;
    assert_eq!(bounded(sup.shutdown()).await, 5);
}

#[tokio::test]
async fn a_forwarded_signal_reaches_every_service() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("hups");
    let svc = |name: &str| {
        format!(
            "[services.{name}]\ncommand = [\"/bin/sh\", \"-c\", \"trap 'echo {name} >> {log}' HUP; echo up >> {log}; while :; do sleep 0.05; done\"]\nrestart = \"never\"\n\n",
            log = log.display()
        )
    };
    let sup = Supervisor::start(toml(&format!("{}{}", svc("one"), svc("two"))))
        .await
        .expect("start");
    wait_until(|| read(&log).lines().filter(|l| *l == "up").count() == 2).await;
    sup.forward_signal(Signal::SIGHUP);
    wait_until(|| {
        let text = read(&log);
        text.lines().any(|l| l == "one") && text.lines().any(|l| l == "two")
    })
    .await;
    // The services trapped the signal and run on.
    assert!(sup
        .status()
        .iter()
        .all(|s| s.state == ServiceState::Running));
    assert_eq!(bounded(sup.shutdown()).await, 0);
}

#[tokio::test]
async fn without_main_or_critical_services_the_container_ends_when_all_have_ended() {
    let spec = toml(
        r#"
[services.a]
command = ["/bin/sh", "-c", "exit 0"]
restart = "never"

[services.b]
command = ["/bin/sh", "-c", "sleep 0.2; exit 6"]
restart = "never"
"#,
    );
    let sup = Supervisor::start(spec).await.expect("start");
    assert_eq!(bounded(sup.wait_exit()).await, 0);
    let st = sup.status();
    assert_eq!(st[1].last_exit, Some(ExitStatus::Code(6)));
    assert_eq!(bounded(sup.shutdown()).await, 0);
}

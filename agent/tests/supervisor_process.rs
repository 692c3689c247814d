//! Real-process tests of `shoal::process`: the single spawn/reap point.

use std::process::Command;
use std::time::{Duration, Instant};

use shoal::process::{init_reaper, run_captured, spawn, ExitStatus};

fn sh(script: &str) -> Command {
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(script);
    c
}

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn exit_codes_are_reported() {
    init_reaper().expect("reaper");
    for code in [0, 1, 3, 42, 255] {
        let out = run_captured(sh(&format!("exit {code}")), Vec::new(), T, 1024)
            .await
            .expect("run");
        assert_eq!(out.status, ExitStatus::Code(code));
        assert_eq!(out.status.code_for_exit(), code);
        assert!(!out.timed_out);
    }
}

#[tokio::test]
async fn a_signal_death_is_reported_as_128_plus_n() {
    let out = run_captured(sh("kill -TERM $$"), Vec::new(), T, 1024)
        .await
        .expect("run");
    assert_eq!(out.status, ExitStatus::Signal(15));
    assert_eq!(out.status.code_for_exit(), 143);
    assert_eq!(out.status.to_string(), "killed by signal 15 (SIGTERM)");
    assert_eq!(ExitStatus::Code(2).to_string(), "exit code 2");
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_with_its_group() {
    let start = Instant::now();
    // The grandchild `sleep` is in the same group and holds stdout open.
    let out = run_captured(
        sh("echo before; sleep 30 & sleep 30; echo after"),
        Vec::new(),
        Duration::from_millis(300),
        1024,
    )
    .await
    .expect("run");
    assert!(out.timed_out);
    assert_eq!(out.status, ExitStatus::Signal(9));
    assert_eq!(out.stdout, b"before\n");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn stdin_is_delivered_and_closed() {
    let input = b"web-1\t10.0.0.1\tweb\tport=3000\nweb-2\t10.0.0.2\tweb\t\n".to_vec();
    let out = run_captured(sh("cat; echo done >&2"), input.clone(), T, 4096)
        .await
        .expect("run");
    assert_eq!(out.status, ExitStatus::Code(0));
    assert_eq!(out.stdout, input);
    assert_eq!(out.stderr, b"done\n");
}

#[tokio::test]
async fn a_command_that_ignores_a_large_stdin_still_finishes() {
    let input = vec![b'x'; 1 << 20];
    let out = run_captured(sh("exit 0"), input, T, 64).await.expect("run");
    assert_eq!(out.status, ExitStatus::Code(0));
    assert!(!out.timed_out);
}

#[tokio::test]
async fn output_is_capped_keeping_the_tail() {
    let out = run_captured(
        sh("i=0; while [ $i -lt 2000 ]; do echo line$i; echo err$i >&2; i=$((i+1)); done"),
        Vec::new(),
        T,
        16,
    )
    .await
    .expect("run");
    assert_eq!(out.status, ExitStatus::Code(0));
    assert_eq!(out.stdout.len(), 16);
    assert!(out.stdout.ends_with(b"line1999\n"), "{:?}", out.stdout);
    assert!(out.stderr.ends_with(b"err1999\n"), "{:?}", out.stderr);
}

#[tokio::test]
async fn a_missing_command_is_an_error_not_a_panic() {
    let err = run_captured(
        Command::new("/nonexistent/shoal-test-cmd"),
        Vec::new(),
        T,
        16,
    )
    .await
    .expect_err("must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}

/// Zombie state of `pid` from /proc, or None when it is gone.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(") ")?.1;
    after.chars().next()
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(") ")?.1;
    after.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn orphans_are_re_parented_to_us_and_reaped() {
    init_reaper().expect("reaper");
    // The shell forks a grandchild, prints its pid and exits; the grandchild
    // becomes our orphan (we are a child subreaper) and exits a bit later.
    // It lives long enough (1 s) for its parent to be read while it runs.
    let out = run_captured(
        sh("sleep 1 </dev/null >/dev/null 2>&1 & echo $!"),
        Vec::new(),
        T,
        64,
    )
    .await
    .expect("run");
    assert_eq!(out.status, ExitStatus::Code(0));
    let pid: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("pid");
    // While it runs, its parent is us: only a parent can reap a process, so
    // when it is gone below, our reaper reaped it (not init, not "somebody").
    let parent =
        ppid(pid).unwrap_or_else(|| panic!("orphan {pid} gone before its parent was read"));
    assert_eq!(
        parent,
        std::process::id() as i32,
        "orphan {pid} re-parented to {parent}, not to us (the subreaper)"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match proc_state(pid) {
            None => break, // reaped
            Some(s) if Instant::now() > deadline => panic!("orphan {pid} still there, state {s}"),
            Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn spawn_puts_the_child_in_its_own_group_and_wait_gets_its_status() {
    let mut child = spawn(sh("sleep 30")).await.expect("spawn");
    let pid = child.pid();
    let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).expect("pgid");
    assert_eq!(pgid.as_raw(), pid);
    child
        .signal_group(nix::sys::signal::Signal::SIGUSR1)
        .expect("signal");
    let st = tokio::time::timeout(T, child.wait())
        .await
        .expect("in time")
        .expect("status");
    assert_eq!(st, ExitStatus::Signal(10));
}

#[tokio::test]
async fn many_quick_children_each_get_their_own_status() {
    let mut children = Vec::new();
    for i in 0..40 {
        children.push((i, spawn(sh(&format!("exit {i}"))).await.expect("spawn")));
    }
    for (i, mut c) in children {
        let st = tokio::time::timeout(T, c.wait())
            .await
            .expect("in time")
            .expect("status");
        assert_eq!(st, ExitStatus::Code(i));
    }
}

/// The agent runs on one thread: a spawn that blocked it until the child's
/// exec was done held the gossip loop for each service started (milliseconds
/// each on a container's overlay file system), the LB's first join among them.
#[tokio::test(flavor = "current_thread")]
async fn a_spawn_lets_the_runtime_thread_run_other_tasks_until_the_exec_is_done() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let turns = Arc::new(AtomicUsize::new(0));
    let counter = turns.clone();
    let other = tokio::spawn(async move {
        loop {
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::task::yield_now().await;
        }
    });
    tokio::task::yield_now().await;
    let before = turns.load(Ordering::Relaxed);
    let mut children = Vec::new();
    for _ in 0..10 {
        children.push(spawn(sh("exit 0")).await.expect("spawn"));
    }
    let during = turns.load(Ordering::Relaxed) - before;
    other.abort();
    for mut c in children {
        let _ = tokio::time::timeout(T, c.wait()).await;
    }
    assert!(during > 0, "no other task ran during 10 spawns");
}

//! Supervised services and shoal's own life: they die with it (also on
//! SIGKILL), and signals ignored or blocked by whoever started shoal are not
//! inherited by them.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{ip, wait_for, Agent};
use shoal::process;

/// The state letter of `pid` from /proc (`Z` for a zombie), None when gone.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn running(pid: i32) -> bool {
    !matches!(proc_state(pid), None | Some('Z') | Some('X'))
}

fn pids_in(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// One bit of a `SigIgn:` / `SigBlk:` hex mask from /proc/PID/status.
fn mask_has(line: &str, sig: i32) -> bool {
    let hex = line.split_whitespace().nth(1).unwrap_or("0");
    let mask = u64::from_str_radix(hex, 16).unwrap_or(0);
    mask & (1 << (sig - 1)) != 0
}

#[test]
fn a_child_outlives_the_thread_that_spawned_it() {
    // PDEATHSIG fires when the *thread* that forked dies: a child spawned from
    // a short-lived thread (a tokio worker that is retired, say) must live on.
    let child = std::thread::spawn(|| {
        let mut c = std::process::Command::new("sleep");
        c.arg("30");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(process::spawn(c)).expect("spawn")
    })
    .join()
    .expect("spawning thread");
    let pid = child.pid();
    std::thread::sleep(Duration::from_millis(300));
    let alive = running(pid);
    let _ = child.signal_group(nix::sys::signal::Signal::SIGKILL);
    assert!(alive, "child {pid} died with the thread that spawned it");
}

#[test]
fn services_die_with_an_agent_killed_by_sigkill() {
    let dir = Arc::new(tempfile::tempdir().expect("tmp"));
    let d = dir.path().display().to_string();
    // Two services; `flaky` fails once and is restarted, so one pid comes
    // from a later spawn than the start.
    let services = format!(
        r#"
[services.steady]
command = ["/bin/sh", "-c", "echo $$ >> {d}/steady.pids; exec sleep 1000"]

[services.flaky]
command = ["/bin/sh", "-c", "echo $$ >> {d}/flaky.pids; [ $(wc -l < {d}/flaky.pids) -ge 2 ] || exit 1; exec sleep 1000"]
backoff = "100ms"
"#
    );
    let file = dir.path().join("services.toml");
    std::fs::write(&file, services).expect("services file");
    let file = file.display().to_string();
    let mut agent = Agent::start_in(
        dir.clone(),
        "pd1",
        &ip(60, 1),
        &[],
        &["--services", &file, "--drain", "0s"],
    );
    let steady = dir.path().join("steady.pids");
    let flaky = dir.path().join("flaky.pids");
    assert!(
        wait_for(Duration::from_secs(10), || {
            let (s, f) = (pids_in(&steady), pids_in(&flaky));
            s.len() == 1 && f.len() == 2 && running(s[0]) && running(f[1])
        }),
        "services not up; log:\n{}",
        agent.log_text()
    );
    let pids = [pids_in(&steady)[0], pids_in(&flaky)[1]];
    agent.kill9();
    let gone = wait_for(Duration::from_secs(5), || pids.iter().all(|&p| !running(p)));
    let left: Vec<i32> = pids.iter().copied().filter(|&p| running(p)).collect();
    for &p in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        gone,
        "services {left:?} outlived their SIGKILLed supervisor"
    );
}

#[test]
fn a_service_of_an_agent_started_with_ignored_signals_gets_them() {
    let dir = Arc::new(tempfile::tempdir().expect("tmp"));
    let sig = dir.path().join("sig");
    let hups = dir.path().join("hups");
    // Shell builtins only before the trap: dash blocks every signal around
    // its own forks, which a forked `grep` of the shell's status could see.
    let script = format!(
        "while read -r l; do case $l in Sig*) echo \"$l\";; esac; done < /proc/$$/status > {sig}; \
         trap 'echo hup >> {hups}' HUP; echo up >> {hups}; while :; do sleep 0.05; done",
        sig = sig.display(),
        hups = hups.display()
    );
    // As `nohup` starts it (SIGHUP ignored), with SIGUSR1 ignored and SIGUSR2
    // blocked as well.
    let agent = Agent::start_in_with(
        dir.clone(),
        "nh1",
        &ip(60, 2),
        &[],
        &["--drain", "0s", "--", "/bin/sh", "-c", &script],
        |cmd| {
            // SAFETY: signal and sigprocmask are async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::signal(libc::SIGHUP, libc::SIG_IGN);
                    libc::signal(libc::SIGUSR1, libc::SIG_IGN);
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGUSR2);
                    libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                    Ok(())
                });
            }
        },
    );
    assert!(
        wait_for(Duration::from_secs(10), || std::fs::read_to_string(&hups)
            .unwrap_or_default()
            .contains("up")),
        "service not up; log:\n{}",
        agent.log_text()
    );
    let masks = std::fs::read_to_string(&sig).expect("masks");
    let ign = masks
        .lines()
        .find(|l| l.starts_with("SigIgn"))
        .expect("SigIgn");
    let blk = masks
        .lines()
        .find(|l| l.starts_with("SigBlk"))
        .expect("SigBlk");
    assert!(
        !mask_has(ign, libc::SIGHUP) && !mask_has(ign, libc::SIGUSR1),
        "the service inherited ignored signals: {ign}"
    );
    assert!(
        !mask_has(blk, libc::SIGUSR2),
        "the service inherited a blocked signal: {blk}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.pid()),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP to the agent");
    assert!(
        wait_for(Duration::from_secs(5), || std::fs::read_to_string(&hups)
            .unwrap_or_default()
            .contains("hup")),
        "the forwarded SIGHUP never reached the service; log:\n{}",
        agent.log_text()
    );
}

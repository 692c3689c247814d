//! The one place that spawns and reaps child processes.
//!
//! shoal may run as a container's PID 1, so it must reap *every* zombie,
//! including orphans re-parented to it. That needs a `waitpid(-1)` loop, and
//! such a loop steals the exit statuses that `tokio::process` (or
//! `std::process::Child::wait`) would wait for. So every child is spawned
//! through this module and nothing else in shoal may use `tokio::process`,
//! `Command::output()`/`status()` or `Child::wait()`.
//!
//! Design:
//! - One reaper thread (started by [`init_reaper`], idempotent) with its own
//!   small tokio runtime. It wakes on SIGCHLD (and once a second as a safety
//!   net) and calls `waitpid(-1, WNOHANG)` until nothing is left.
//! - A registry `pid -> oneshot::Sender<ExitStatus>`. A reaped pid that is not
//!   registered (an orphan re-parented to us) is logged at debug and dropped.
//! - Spawning and reaping take the same lock: the reaper holds it while it
//!   calls `waitpid`, [`spawn`] holds it across `Command::spawn` + registration.
//!   So a child can never be reaped before its pid is registered, and std's
//!   own `waitpid(pid)` after a failed `exec` is never pre-empted by ours.
//! - Every child runs in its own process group (`setpgid(0, 0)`), with every
//!   signal at its default action and an empty signal mask (as tini and
//!   dumb-init do: a signal ignored by whoever started shoal, e.g. `nohup`,
//!   must not stay ignored in a service), and `PR_SET_PDEATHSIG(SIGKILL)`, so
//!   it dies with shoal even when shoal is SIGKILLed. Only async-signal-safe
//!   calls run between fork and exec.
//! - Every fork happens on one spawner thread that lives as long as the
//!   process: PDEATHSIG fires when the *thread* that forked dies, and tokio
//!   worker threads come and go. That thread blocks every signal, so no
//!   signal can run shoal's handlers in a child between fork and exec; the
//!   child unblocks them once their actions are reset.
//!
//! The reaper and the spawner live on their own threads so they outlive any
//! one tokio runtime (tests create one runtime per test).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitStatus {
    /// It called `exit(code)`.
    Code(i32),
    /// It was killed by signal number N.
    Signal(i32),
}

impl ExitStatus {
    /// The exit code a shell (and a container runtime) reports for this
    /// status: the code itself, or 128+N for a death by signal N.
    pub fn code_for_exit(&self) -> i32 {
        match *self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(n) => 128 + n,
        }
    }

    /// True for `Code(0)`.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(n) => match Signal::try_from(n) {
                Ok(s) => write!(f, "killed by signal {n} ({})", s.as_str()),
                Err(_) => write!(f, "killed by signal {n}"),
            },
        }
    }
}

/// What [`run_captured`] collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedOutput {
    pub status: ExitStatus,
    /// The last `cap` bytes the command wrote to stdout.
    pub stdout: Vec<u8>,
    /// The last `cap` bytes the command wrote to stderr.
    pub stderr: Vec<u8>,
    /// The command had not exited by the timeout and its group was killed.
    pub timed_out: bool,
}

/// Registry of children we wait for.
struct Registry {
    waiters: BTreeMap<i32, Waiter>,
}

struct Waiter {
    tx: oneshot::Sender<ExitStatus>,
    /// SIGKILL what is left of the child's process group once it is reaped.
    kill_group: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    waiters: BTreeMap::new(),
});
static REAPER: OnceLock<Result<(), String>> = OnceLock::new();
static SPAWNER: OnceLock<Result<mpsc::Sender<SpawnRequest>, String>> = OnceLock::new();

/// One fork for the spawner thread; the answer comes back on `reply`.
struct SpawnRequest {
    cmd: Command,
    opts: SpawnOptions,
    reply: oneshot::Sender<io::Result<Child>>,
}

fn registry() -> MutexGuard<'static, Registry> {
    // A panic while holding the lock cannot leave the map inconsistent
    // (inserts/removes are single operations), so poisoning is ignored.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the reaper (once; later calls return the first call's result) and,
/// unless we are PID 1, makes this process a child subreaper so orphans of
/// our children are re-parented to us and reaped here.
///
/// May be called from inside or outside a tokio runtime.
pub fn init_reaper() -> io::Result<()> {
    let res = REAPER.get_or_init(|| {
        if std::process::id() != 1 {
            if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                // Not fatal: our own children are still reaped.
                tracing::warn!(error = %e, "PR_SET_CHILD_SUBREAPER failed; orphans will not be re-parented to shoal");
            }
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let spawned = std::thread::Builder::new()
            .name("shoal-reaper".into())
            .spawn(move || reaper_thread(ready_tx));
        match spawned {
            Ok(_) => match ready_rx.recv() {
                Ok(r) => r,
                Err(_) => Err("reaper thread died during start".into()),
            },
            Err(e) => Err(format!("cannot start reaper thread: {e}")),
        }
    });
    res.clone().map_err(io::Error::other)
}

fn reaper_thread(ready: std::sync::mpsc::Sender<Result<(), String>>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot build reaper runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot listen for SIGCHLD: {e}")));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        // Children that exited before the handler was installed.
        reap_all();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = tick.tick() => {}
            }
            reap_all();
        }
    });
}

/// One sweep: `waitpid(-1, WNOHANG)` until no exited child is left.
fn reap_all() {
    let mut reg = registry();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => deliver(&mut reg, pid, ExitStatus::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _core)) => {
                deliver(&mut reg, pid, ExitStatus::Signal(sig as i32))
            }
            Ok(WaitStatus::StillAlive) => break,
            Ok(_) => continue, // stopped/continued: not requested, ignore
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => break,
            Err(e) => {
                tracing::warn!(error = %e, "waitpid failed");
                break;
            }
        }
    }
}

fn deliver(reg: &mut Registry, pid: Pid, status: ExitStatus) {
    match reg.waiters.remove(&pid.as_raw()) {
        Some(w) => {
            if w.kill_group {
                // Still under the registry lock, so none of our own spawns
                // can have been given this pid as a new group id yet.
                let _ = signal_group(pid.as_raw(), Signal::SIGKILL);
            }
            // The receiver may be gone (nobody cares any more): fine.
            let _ = w.tx.send(status);
        }
        None => tracing::debug!(pid = pid.as_raw(), %status, "reaped orphan"),
    }
}

/// A spawned child. Its exit status comes from the reaper.
#[derive(Debug)]
pub struct Child {
    pid: i32,
    status: oneshot::Receiver<ExitStatus>,
    /// The child's stdin, stdout, stderr when they were `Stdio::piped()`.
    pub stdin: Option<std::process::ChildStdin>,
    pub stdout: Option<std::process::ChildStdout>,
    pub stderr: Option<std::process::ChildStderr>,
}

impl Child {
    /// The child's pid, which is also its process group id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the child's exit. Cancel-safe: it can be polled again
    /// after a `select!` dropped an earlier call.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        (&mut self.status)
            .await
            .map_err(|_| io::Error::other("reaper dropped the child's exit status"))
    }

    /// Splits off the exit-status future, e.g. to move it into a task.
    pub fn into_wait(self) -> impl std::future::Future<Output = io::Result<ExitStatus>> + Send {
        let rx = self.status;
        async move {
            rx.await
                .map_err(|_| io::Error::other("reaper dropped the child's exit status"))
        }
    }

    /// Sends `sig` to the child's whole process group, unless the child
    /// has already been reaped (then its pid may be reused: do nothing).
    pub fn signal_group(&self, sig: Signal) -> nix::Result<()> {
        signal_child_group(self.pid, sig)
    }
}

/// Sends `sig` to the process group of child `pid` (spawned here), but only
/// while the child has not been reaped: after that its pid may be reused,
/// and the group is gone or cleaned up ([`SpawnOptions::kill_group_on_exit`]).
pub fn signal_child_group(pid: i32, sig: Signal) -> nix::Result<()> {
    let reg = registry();
    if reg.waiters.contains_key(&pid) {
        signal_group(pid, sig)
    } else {
        Ok(())
    }
}

/// Sends `sig` to process group `pgid`; a group that no longer exists is
/// not an error.
pub fn signal_group(pgid: i32, sig: Signal) -> nix::Result<()> {
    // 0 would be our own group, 1 init's: never a child's group.
    if pgid <= 1 {
        return Err(Errno::EINVAL);
    }
    match killpg(Pid::from_raw(pgid), sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

/// How [`spawn_with`] treats the child.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpawnOptions {
    /// When the child is reaped, SIGKILL whatever is left in its process
    /// group (background processes it started), so nothing it started
    /// outlives it. Done by the reaper under its lock, which avoids
    /// signalling a reused pid.
    pub kill_group_on_exit: bool,
}

/// Spawns `cmd` in a new process group (its pgid is its pid), with default
/// signal actions, an empty signal mask and SIGKILL as its parent-death
/// signal, and registers it with the reaper. Stdio is whatever `cmd`
/// says (std's default: inherited), so a supervised service's output passes
/// straight through.
pub async fn spawn(cmd: Command) -> io::Result<Child> {
    spawn_with(cmd, SpawnOptions::default()).await
}

/// [`spawn`] with options. The fork and exec happen on the spawner thread
/// (see the module docs), which answers once the exec is done, as
/// `Command::spawn` would; this call awaits that answer instead of blocking
/// for it, so the agent's single runtime thread gossips while a child's
/// binary is loaded (milliseconds each on a container's overlay file system).
/// Dropped after the request went out, the child still starts, unowned:
/// callers await it to the end.
pub async fn spawn_with(cmd: Command, opts: SpawnOptions) -> io::Result<Child> {
    init_reaper()?;
    let (reply, answer) = oneshot::channel();
    if spawner()?.send(SpawnRequest { cmd, opts, reply }).is_err() {
        return Err(io::Error::other("the spawner thread is gone"));
    }
    answer
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the spawner thread dropped a spawn")))
}

/// The spawner thread's queue, started once.
fn spawner() -> io::Result<&'static mpsc::Sender<SpawnRequest>> {
    let res = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("shoal-spawner".into())
            .spawn(move || {
                block_all_signals();
                for req in rx {
                    let res = fork_exec(req.cmd, req.opts);
                    // The caller may have given up: fine, its child is registered.
                    let _ = req.reply.send(res);
                }
            })
            .map(|_| tx)
            .map_err(|e| format!("cannot start the spawner thread: {e}"))
    });
    res.as_ref().map_err(|e| io::Error::other(e.clone()))
}

/// Blocks every signal on the calling thread (the spawner): children are
/// forked with all signals blocked and unblock them after resetting them.
fn block_all_signals() {
    // SAFETY: plain libc calls on a local, zero-initialised sigset.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}

/// Highest signal number on Linux (`_NSIG - 1`).
const MAX_SIGNAL: libc::c_int = 64;

/// Runs in the child between fork and exec: only async-signal-safe calls,
/// no allocation, no locks.
fn pre_exec_child(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: setpgid, prctl, getppid, sigaction, sigemptyset and
    // sigprocmask are async-signal-safe; the structs are local.
    unsafe {
        if libc::setpgid(0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        // Die with shoal. The parent may have died before this call: then
        // we are already someone else's child and must not run.
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // Every signal back to its default action (exec keeps ignored ones
        // ignored), then an empty mask: the spawner thread blocked them all.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut dfl.sa_mask);
        for sig in 1..=MAX_SIGNAL {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                // glibc refuses its own internal signals: fine.
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The fork + exec + registration, on the spawner thread.
fn fork_exec(mut cmd: Command, opts: SpawnOptions) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only makes async-signal-safe calls (see
    // `pre_exec_child`); it does not allocate or take locks.
    unsafe {
        cmd.pre_exec(move || pre_exec_child(parent));
    }
    // Holding the registry lock across spawn + insert keeps the reaper from
    // reaping the child before it is registered.
    let mut reg = registry();
    let mut std_child = cmd.spawn()?;
    let pid = std_child.id() as i32;
    let (tx, rx) = oneshot::channel();
    reg.waiters.insert(
        pid,
        Waiter {
            tx,
            kill_group: opts.kill_group_on_exit,
        },
    );
    drop(reg);
    // `std::process::Child` never waits on drop; the reaper owns the status.
    Ok(Child {
        pid,
        status: rx,
        stdin: std_child.stdin.take(),
        stdout: std_child.stdout.take(),
        stderr: std_child.stderr.take(),
    })
}

/// A buffer that keeps only the last `cap` bytes written to it.
struct TailBuf {
    cap: usize,
    buf: Vec<u8>,
}

impl TailBuf {
    fn push(&mut self, data: &[u8]) {
        if data.len() >= self.cap {
            self.buf.clear();
            self.buf.extend_from_slice(&data[data.len() - self.cap..]);
            return;
        }
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.cap);
        if overflow > 0 {
            self.buf.drain(..overflow);
        }
        self.buf.extend_from_slice(data);
    }
}

type SharedBuf = Arc<Mutex<TailBuf>>;

fn start_reader(
    fd: Option<OwnedFd>,
    cap: usize,
) -> io::Result<(SharedBuf, Option<tokio::task::JoinHandle<()>>)> {
    let buf = Arc::new(Mutex::new(TailBuf {
        cap,
        buf: Vec::new(),
    }));
    let Some(fd) = fd else { return Ok((buf, None)) };
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    let b = buf.clone();
    let handle = tokio::spawn(async move {
        let mut chunk = vec![0u8; 8192];
        loop {
            match rx.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => b
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    });
    Ok((buf, Some(handle)))
}

async fn join_all(tasks: &mut [tokio::task::JoinHandle<()>]) {
    for t in tasks.iter_mut() {
        if !t.is_finished() {
            let _ = t.await;
        }
    }
}

fn take_buf(b: &Arc<Mutex<TailBuf>>) -> Vec<u8> {
    std::mem::take(&mut b.lock().unwrap_or_else(|e| e.into_inner()).buf)
}

/// How long output is still read after the group was killed.
const DRAIN_AFTER_KILL: Duration = Duration::from_millis(500);

/// Runs `cmd` in its own process group, writes `stdin` then closes it,
/// captures stdout/stderr (each capped at `cap` bytes, keeping the tail),
/// kills the group with SIGKILL after `timeout`.
///
/// The command counts as finished when it has exited *and* its output pipes
/// are closed (like Serf/Go: a background grandchild holding stdout open is
/// waited for). If that has not happened by `timeout`, the whole group is
/// SIGKILLed; `timed_out` is true only when the command itself had not
/// exited by then. Must be called from inside a tokio runtime.
pub async fn run_captured(
    mut cmd: Command,
    stdin: Vec<u8>,
    timeout: Duration,
    cap: usize,
) -> io::Result<CapturedOutput> {
    let deadline = tokio::time::Instant::now() + timeout;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(cmd).await?;
    let pid = child.pid();

    let stdin_fd = child.stdin.take().map(OwnedFd::from);
    let out_fd = child.stdout.take().map(OwnedFd::from);
    let err_fd = child.stderr.take().map(OwnedFd::from);

    let readers = (|| -> io::Result<_> {
        let out = start_reader(out_fd, cap)?;
        let err = start_reader(err_fd, cap)?;
        let writer = match stdin_fd {
            Some(fd) => {
                let mut tx = tokio::net::unix::pipe::Sender::from_owned_fd(fd)?;
                Some(tokio::spawn(async move {
                    // EPIPE (the command does not read stdin) is fine.
                    let _ = tx.write_all(&stdin).await;
                    // Dropping `tx` closes the pipe: the command sees EOF.
                }))
            }
            None => None,
        };
        Ok((out, err, writer))
    })();
    let ((out_buf, out_task), (err_buf, err_task), writer) = match readers {
        Ok(r) => r,
        Err(e) => {
            let _ = signal_group(pid, Signal::SIGKILL);
            let _ = child.wait().await;
            return Err(e);
        }
    };

    let status = tokio::select! {
        s = child.wait() => Some(s?),
        _ = tokio::time::sleep_until(deadline) => None,
    };
    let timed_out = status.is_none();

    let mut tasks: Vec<_> = [out_task, err_task].into_iter().flatten().collect();
    let pipes_closed = if timed_out {
        false
    } else {
        tokio::time::timeout_at(deadline, join_all(&mut tasks))
            .await
            .is_ok()
    };
    if !pipes_closed {
        // Kill the command (timeout) or stragglers holding its pipes.
        let _ = signal_group(pid, Signal::SIGKILL);
        let _ = tokio::time::timeout(DRAIN_AFTER_KILL, join_all(&mut tasks)).await;
    }
    for t in tasks.iter().chain(writer.iter()) {
        t.abort();
    }
    let status = match status {
        Some(s) => s,
        None => child.wait().await?,
    };
    Ok(CapturedOutput {
        status,
        stdout: take_buf(&out_buf),
        stderr: take_buf(&err_buf),
        timed_out,
    })
}

#[cfg(test)]
mod tests {
    use super::TailBuf;

    #[test]
    fn tail_buffer_keeps_the_last_cap_bytes() {
        let mut b = TailBuf {
            cap: 5,
            buf: Vec::new(),
        };
        b.push(b"abc");
        b.push(b"def");
        assert_eq!(b.buf, b"bcdef");
        b.push(b"0123456789");
        assert_eq!(b.buf, b"56789");
        b.push(b"");
        assert_eq!(b.buf, b"56789");
    }

    #[test]
    fn tail_buffer_with_zero_cap_keeps_nothing() {
        let mut b = TailBuf {
            cap: 0,
            buf: Vec::new(),
        };
        b.push(b"abc");
        assert!(b.buf.is_empty());
    }
}

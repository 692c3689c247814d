//! The built-in supervisor: shoal as a container's PID 1 (issue 4).
//!
//! Layout:
//! - [`spec`]: what to run. [`SupervisorSpec::load`] reads the services file
//!   (`--services FILE`) and/or `-- CMD ARGS`, and validates everything
//!   (unknown keys, unknown dependencies, cycles, missing or non-executable
//!   commands) before anything starts; all problems come back together in
//!   [`SupervisorError::Config`], each naming file, line and key.
//! - [`health`]: the `--check` / `--check-cmd` loop producing a
//!   `watch::Receiver<Health>` (`starting` → `ready` ⇄ `unhealthy`); fast
//!   checks from the start until the first `ready`.
//! - [`drain`] (with the pure parsing in [`sockets`]): on a stop, wait until
//!   the app has no open connection on its service port, or the maximum.
//! - this file: [`Supervisor`], one task per service that spawns it through
//!   [`crate::process`] (the only place that spawns and reaps), restarts it
//!   per its policy with exponential backoff and a crash-loop limit, and stops
//!   it on request.
//!
//! Use (inside a tokio runtime):
//! ```no_run
//! # async fn f() -> Result<i32, shoal::supervisor::SupervisorError> {
//! use shoal::supervisor::{Supervisor, SupervisorSpec};
//! let mut spec = SupervisorSpec::load(None, &["my-app".into(), "--port".into(), "3000".into()])?;
//! spec.apply_check_flags(Some("http://127.0.0.1:3000/health"), None, None)?;
//! let sup = Supervisor::start(spec).await?;    // spawns in dependency order
//! let code = tokio::select! {
//!     code = sup.wait_exit() => code,          // main/critical service ended for good
//!     _ = tokio::signal::ctrl_c() => 0,        // (the agent drains first, then:)
//! };
//! let shutdown_code = sup.shutdown().await;    // reverse order, SIGKILL after stop_timeout
//! # let _ = code; Ok(shutdown_code) }
//! ```
//!
//! Signals: the agent forwards SIGHUP/SIGUSR1/SIGUSR2/SIGQUIT with
//! [`Supervisor::forward_signal`] (to every running service's process group);
//! SIGTERM/SIGINT mean "stop the container": drain, then
//! [`Supervisor::shutdown`], which sends each service its own `stop_signal`.
//!
//! Exit code ([`Supervisor::wait_exit`] and [`Supervisor::shutdown`]): the
//! code of the service whose end stopped the container (the `main` service,
//! or a `critical` one), 128+N for a death by signal N; on a requested
//! shutdown, the main service's final status (so a main killed by its
//! SIGTERM gives 143, as with tini); 0 without a main service.

pub mod drain;
pub mod health;
pub mod sockets;
pub mod spec;

use std::collections::VecDeque;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::process::{self, Child, ExitStatus};

pub use drain::{DrainEnd, DrainReport, DrainSpec};
pub use health::{CheckSpec, CheckTarget, Health};
pub use spec::{ConfigError, RestartPolicy, ServiceSpec, SupervisorError, SupervisorSpec};

/// How long to wait for a SIGKILLed process to be reaped before giving up.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A service's lifecycle state as shown by `status()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    /// Its process is running.
    Running,
    /// It exited and waits for its restart delay.
    Backoff,
    /// It was sent its stop signal.
    Stopping,
    /// Stopped by a shutdown.
    Stopped,
    /// Exited and not restarted (policy).
    Exited,
    /// Given up on: crash loop, or it could not be spawned.
    Failed,
}

/// One service in [`Supervisor::status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    /// Also its process group id. None while not running.
    pub pid: Option<i32>,
    pub state: ServiceState,
    pub restarts: u32,
    /// `{"code":N}` or `{"signal":N}`.
    pub last_exit: Option<ExitStatus>,
    pub main: bool,
    pub critical: bool,
}

struct Shared {
    specs: Vec<ServiceSpec>,
    status: Mutex<Vec<ServiceStatus>>,
    /// Set by shutdown: no more restarts.
    stopping: AtomicBool,
    /// Some(code) once the container should exit.
    exit_tx: watch::Sender<Option<i32>>,
}

impl Shared {
    fn status(&self) -> MutexGuard<'_, Vec<ServiceStatus>> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, i: usize, f: impl FnOnce(&mut ServiceStatus)) {
        if let Some(s) = self.status().get_mut(i) {
            f(s);
        }
    }

    /// Service `i` will not run again (policy, crash loop); decide whether
    /// the container ends.
    fn ended_for_good(&self, i: usize, st: Option<ExitStatus>) {
        let spec = &self.specs[i];
        let code = st.map(|s| s.code_for_exit()).unwrap_or(1);
        let all_ended = self
            .status()
            .iter()
            .all(|s| matches!(s.state, ServiceState::Exited | ServiceState::Failed));
        let reason = if spec.main {
            Some("main service ended")
        } else if spec.critical {
            Some("critical service ended")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.exit_tx.send_if_modified(|v| {
                if v.is_none() {
                    tracing::info!(service = %spec.name, exit_code = code, "{reason}; the container stops");
                    *v = Some(code);
                    true
                } else {
                    false
                }
            });
        } else if all_ended {
            let code = self
                .status()
                .iter()
                .find(|s| s.main)
                .and_then(|s| s.last_exit)
                .map(|s| s.code_for_exit())
                .unwrap_or(0);
            self.exit_tx.send_if_modified(|v| {
                if v.is_none() {
                    tracing::info!(service = %spec.name, exit_code = code, "all services ended; the container stops");
                    *v = Some(code);
                    true
                } else {
                    false
                }
            });
        }
    }
}

/// See [`Supervisor::status_reader`].
#[derive(Clone)]
pub struct StatusReader(Arc<Shared>);

impl StatusReader {
    /// Every service, in start order.
    pub fn status(&self) -> Vec<ServiceStatus> {
        self.0.status().clone()
    }
}

struct Runner {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<()>,
}

/// The running supervisor. See the module docs.
pub struct Supervisor {
    shared: Arc<Shared>,
    runners: Vec<Runner>,
    health: Option<(watch::Receiver<Health>, JoinHandle<()>)>,
    exit_rx: watch::Receiver<Option<i32>>,
}

fn build_command(spec: &ServiceSpec) -> Command {
    let mut c = Command::new(&spec.argv[0]);
    c.args(&spec.argv[1..]);
    c.envs(&spec.env);
    if let Some(w) = &spec.workdir {
        c.current_dir(w);
    }
    c
}

async fn spawn_service(spec: &ServiceSpec) -> std::io::Result<Child> {
    if spec.argv.is_empty() {
        return Err(std::io::Error::other("empty command"));
    }
    process::spawn_with(
        build_command(spec),
        process::SpawnOptions {
            kill_group_on_exit: true,
        },
    )
    .await
}

impl Supervisor {
    /// Starts every service in dependency order, then the health check.
    /// Must be called inside a tokio runtime. If one service cannot be
    /// spawned, those already started are killed and the error returned.
    pub async fn start(spec: SupervisorSpec) -> Result<Supervisor, SupervisorError> {
        process::init_reaper().map_err(SupervisorError::Reaper)?;
        let mut children = Vec::with_capacity(spec.services.len());
        for s in &spec.services {
            match spawn_service(s).await {
                Ok(c) => {
                    tracing::info!(service = %s.name, pid = c.pid(), argv = ?s.argv, "started");
                    children.push(c);
                }
                Err(e) => {
                    tracing::error!(service = %s.name, error = %e, "cannot start; killing the services already started");
                    for c in &children {
                        let _ = c.signal_group(Signal::SIGKILL);
                    }
                    return Err(SupervisorError::Spawn {
                        service: s.name.clone(),
                        source: e,
                    });
                }
            }
        }
        let status = spec
            .services
            .iter()
            .zip(&children)
            .map(|(s, c)| ServiceStatus {
                name: s.name.clone(),
                pid: Some(c.pid()),
                state: ServiceState::Running,
                restarts: 0,
                last_exit: None,
                main: s.main,
                critical: s.critical,
            })
            .collect();
        let (exit_tx, exit_rx) = watch::channel(None);
        let shared = Arc::new(Shared {
            specs: spec.services,
            status: Mutex::new(status),
            stopping: AtomicBool::new(false),
            exit_tx,
        });
        let runners = children
            .into_iter()
            .enumerate()
            .map(|(i, child)| {
                let (stop_tx, stop_rx) = oneshot::channel();
                let handle = tokio::spawn(run_service(shared.clone(), i, child, stop_rx));
                Runner {
                    stop: Some(stop_tx),
                    handle,
                }
            })
            .collect();
        let health = spec.check.map(health::spawn_checker);
        Ok(Supervisor {
            shared,
            runners,
            health,
            exit_rx,
        })
    }

    /// A snapshot of every service, in start order.
    pub fn status(&self) -> Vec<ServiceStatus> {
        self.shared.status().clone()
    }

    /// Reads [`Supervisor::status`] without holding the supervisor, so the
    /// API can show it while the lifecycle owns (and finally shuts down)
    /// the supervisor.
    pub fn status_reader(&self) -> StatusReader {
        StatusReader(self.shared.clone())
    }

    /// Sends `sig` to the process group of every running service.
    pub fn forward_signal(&self, sig: Signal) {
        let pids: Vec<(String, i32)> = self
            .shared
            .status()
            .iter()
            .filter_map(|s| s.pid.map(|p| (s.name.clone(), p)))
            .collect();
        for (name, pid) in pids {
            match process::signal_child_group(pid, sig) {
                Ok(()) => {
                    tracing::info!(service = %name, pid, signal = sig.as_str(), "forwarded signal")
                }
                Err(e) => {
                    tracing::warn!(service = %name, pid, signal = sig.as_str(), error = %e, "cannot forward signal")
                }
            }
        }
    }

    /// The health state, when a check is configured.
    pub fn health(&self) -> Option<watch::Receiver<Health>> {
        self.health.as_ref().map(|(rx, _)| rx.clone())
    }

    /// Resolves when the container should stop on its own: the main service
    /// or a critical one ended for good, or every service did. Returns the
    /// exit code to propagate. Cancel-safe; may be awaited many times.
    pub async fn wait_exit(&self) -> i32 {
        let mut rx = self.exit_rx.clone();
        let res = rx.wait_for(|v| v.is_some()).await.map(|v| *v);
        match res {
            Ok(Some(code)) => code,
            // The sender lives in `shared`, which we hold: unreachable.
            _ => std::future::pending().await,
        }
    }

    /// Waits out a drain (see [`drain`]): until the services have no open
    /// connection on the service port after the grace, the maximum, or
    /// their own end. The health check stops first: its verdict no longer
    /// matters, and its own connections must not hold the drain.
    pub async fn drain(&mut self, spec: DrainSpec) -> DrainReport {
        if let Some((_, h)) = self.health.take() {
            h.abort();
        }
        let shared = self.shared.clone();
        let pids = move || -> Vec<i32> { shared.status().iter().filter_map(|s| s.pid).collect() };
        let report = drain::wait(spec, pids, self.wait_exit()).await;
        tracing::info!(end = ?report.end, took = ?report.took, "drained");
        report
    }

    /// Stops everything: each service after the services that depend on it
    /// (reverse start order, independent ones in parallel), with its
    /// `stop_signal`, SIGKILL to its group after `stop_timeout`. Returns the
    /// container's exit code (see the module docs).
    pub async fn shutdown(mut self) -> i32 {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some((_, h)) = self.health.take() {
            h.abort();
        }
        let n = self.runners.len();
        let done: Vec<(watch::Sender<bool>, watch::Receiver<bool>)> =
            (0..n).map(|_| watch::channel(false)).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, runner) in std::mem::take(&mut self.runners).into_iter().enumerate() {
            let name = &self.shared.specs[i].name;
            let dependents: Vec<watch::Receiver<bool>> = self
                .shared
                .specs
                .iter()
                .enumerate()
                .filter(|(_, s)| s.depends_on.iter().any(|d| d == name))
                .map(|(j, _)| done[j].1.clone())
                .collect();
            let my_done = done[i].0.clone();
            tasks.spawn(async move {
                for mut d in dependents {
                    let _ = d.wait_for(|v| *v).await;
                }
                let Runner { stop, handle } = runner;
                if let Some(stop) = stop {
                    let _ = stop.send(());
                }
                let _ = handle.await;
                let _ = my_done.send(true);
            });
        }
        while tasks.join_next().await.is_some() {}
        if let Some(code) = *self.exit_rx.borrow() {
            return code;
        }
        let status = self.shared.status();
        status
            .iter()
            .find(|s| s.main)
            .and_then(|s| s.last_exit)
            .map(|s| s.code_for_exit())
            .unwrap_or(0)
    }
}

impl Drop for Supervisor {
    /// Dropped without `shutdown()`: kill what is still running, so no
    /// service outlives the supervisor unnoticed.
    fn drop(&mut self) {
        if self.runners.is_empty() {
            return;
        }
        self.shared.stopping.store(true, Ordering::SeqCst);
        for r in &self.runners {
            r.handle.abort();
        }
        if let Some((_, h)) = self.health.take() {
            h.abort();
        }
        for s in self.shared.status().iter() {
            if let Some(pid) = s.pid {
                let _ = process::signal_child_group(pid, Signal::SIGKILL);
            }
        }
    }
}

/// Sends the stop signal, waits `stop_timeout`, then SIGKILLs the group.
async fn stop_child(spec: &ServiceSpec, child: &mut Child) -> Option<ExitStatus> {
    let pid = child.pid();
    tracing::info!(service = %spec.name, pid, signal = spec.stop_signal.as_str(), "stopping");
    if let Err(e) = child.signal_group(spec.stop_signal) {
        tracing::warn!(service = %spec.name, pid, error = %e, "cannot send stop signal");
    }
    let st = match tokio::time::timeout(spec.stop_timeout, child.wait()).await {
        Ok(r) => r.ok(),
        Err(_) => {
            tracing::warn!(service = %spec.name, pid, timeout = ?spec.stop_timeout, "did not stop in time; sending SIGKILL");
            let _ = child.signal_group(Signal::SIGKILL);
            match tokio::time::timeout(KILL_WAIT, child.wait()).await {
                Ok(r) => r.ok(),
                Err(_) => {
                    tracing::error!(service = %spec.name, pid, "still not reaped after SIGKILL");
                    None
                }
            }
        }
    };
    // Leftovers of its process group were SIGKILLed by the reaper
    // (`kill_group_on_exit`).
    st
}

/// One service's life: wait, restart per policy, stop on request.
async fn run_service(
    shared: Arc<Shared>,
    i: usize,
    first: Child,
    mut stop_rx: oneshot::Receiver<()>,
) {
    let spec = &shared.specs[i];
    let name = spec.name.as_str();
    let mut child = Some(first);
    let mut restarts_at: VecDeque<Instant> = VecDeque::new();
    let mut delay = spec.backoff;
    let mut started = Instant::now();
    loop {
        // 1. Wait for the process to end (or for a stop request).
        let status: Option<ExitStatus> = match child.as_mut() {
            Some(ch) => {
                let res = tokio::select! {
                    r = ch.wait() => r,
                    _ = &mut stop_rx => {
                        shared.set(i, |s| s.state = ServiceState::Stopping);
                        let st = stop_child(spec, ch).await;
                        tracing::info!(service = %name, status = %fmt_status(st), "stopped");
                        shared.set(i, |s| {
                            s.state = ServiceState::Stopped;
                            s.pid = None;
                            if st.is_some() { s.last_exit = st; }
                        });
                        return;
                    }
                };
                match res {
                    Ok(st) => Some(st),
                    Err(e) => {
                        tracing::error!(service = %name, error = %e, "lost the exit status");
                        None
                    }
                }
            }
            // Spawn failed: counts as a failure.
            None => Some(ExitStatus::Code(127)),
        };
        let pid = child.as_ref().map(|c| c.pid());
        child = None;
        let ran = started.elapsed();
        let failed = !status.is_some_and(|s| s.success());
        shared.set(i, |s| {
            s.pid = None;
            s.last_exit = status;
            s.state = ServiceState::Exited;
        });
        if failed {
            tracing::warn!(service = %name, pid, status = %fmt_status(status), "exited");
        } else {
            tracing::info!(service = %name, pid, status = %fmt_status(status), "exited");
        }
        if shared.stopping.load(Ordering::SeqCst) {
            shared.set(i, |s| s.state = ServiceState::Stopped);
            return;
        }

        // 2. Restart?
        let restart = match spec.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Never => false,
        };
        if !restart {
            shared.ended_for_good(i, status);
            return;
        }
        let now = Instant::now();
        while restarts_at
            .front()
            .is_some_and(|t| now.duration_since(*t) > spec.restart_window)
        {
            restarts_at.pop_front();
        }
        if restarts_at.len() >= spec.max_restarts as usize {
            tracing::error!(
                service = %name,
                restarts = restarts_at.len(),
                window = ?spec.restart_window,
                "crash loop: restarted too often; giving up"
            );
            shared.set(i, |s| s.state = ServiceState::Failed);
            shared.ended_for_good(i, status);
            return;
        }
        if ran >= spec.backoff_max {
            // It ran for a good while: this is not a quick crash.
            delay = spec.backoff;
        }
        tracing::info!(service = %name, delay = ?delay, "restarting after backoff");
        shared.set(i, |s| s.state = ServiceState::Backoff);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut stop_rx => {
                shared.set(i, |s| s.state = ServiceState::Stopped);
                return;
            }
        }
        if shared.stopping.load(Ordering::SeqCst) {
            shared.set(i, |s| s.state = ServiceState::Stopped);
            return;
        }
        delay = delay.saturating_mul(2).min(spec.backoff_max);
        restarts_at.push_back(Instant::now());
        started = Instant::now();
        match spawn_service(spec).await {
            Ok(c) => {
                tracing::info!(service = %name, pid = c.pid(), "restarted");
                let pid = c.pid();
                shared.set(i, |s| {
                    s.pid = Some(pid);
                    s.state = ServiceState::Running;
                    s.restarts += 1;
                });
                child = Some(c);
            }
            Err(e) => {
                tracing::error!(service = %name, error = %e, "cannot restart");
                shared.set(i, |s| s.restarts += 1);
            }
        }
    }
}

fn fmt_status(st: Option<ExitStatus>) -> String {
    match st {
        Some(s) => s.to_string(),
        None => "unknown".into(),
    }
}

//! Test harness: real `shoal agent` processes on their own 127.x.y.z
//! addresses, driven through the real CLI.
//!
//! Nothing outlives a test, also a failing one: every agent runs in its own
//! session, and dropping it (also while a panic unwinds) sends SIGTERM, then
//! SIGKILL, to every process of that session: the agent, its services (each
//! in a process group of its own, so a group kill would miss them), their
//! children and handler scripts. Every CLI call has a timeout.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn shoal_bin() -> &'static str {
    env!("CARGO_BIN_EXE_shoal")
}

/// An address block per test (second octet from the pid, third from the
/// test), so parallel tests and parallel runs do not collide.
pub fn ip(test: u8, n: u8) -> String {
    let run = (std::process::id() % 200) as u8 + 20;
    format!("127.{run}.{test}.{n}")
}

pub struct Agent {
    pub name: String,
    pub ip: String,
    pub child: Option<Child>,
    pub log: PathBuf,
    _dir: std::sync::Arc<tempfile::TempDir>,
}

impl Agent {
    /// Starts `shoal agent --profile local` on `ip` (gossip 7946, API 7373).
    pub fn start(name: &str, ip: &str, join: &[String], extra: &[&str]) -> Agent {
        let dir = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
        Self::start_in(dir, name, ip, join, extra)
    }

    pub fn start_in(
        dir: std::sync::Arc<tempfile::TempDir>,
        name: &str,
        ip: &str,
        join: &[String],
        extra: &[&str],
    ) -> Agent {
        Self::start_in_with(dir, name, ip, join, extra, |_| {})
    }

    /// [`Agent::start_in`], with `customize` applied to the command last
    /// (e.g. a `pre_exec` that starts shoal as `nohup` would).
    pub fn start_in_with(
        dir: std::sync::Arc<tempfile::TempDir>,
        name: &str,
        ip: &str,
        join: &[String],
        extra: &[&str],
        customize: impl FnOnce(&mut Command),
    ) -> Agent {
        let log = dir.path().join(format!("{name}-{ip}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(shoal_bin());
        cmd.args(["agent", "--node", name, "--profile", "local"])
            .args(["--bind", &format!("{ip}:7946")])
            .args(["--api", &format!("{ip}:7373")])
            .args(["--retry-interval", "1s", "--leave-timeout", "1s"]);
        if !join.is_empty() {
            cmd.args(["--join", &join.join(",")]);
        }
        cmd.args(extra)
            .env("SHOAL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        customize(&mut cmd);
        own_session(&mut cmd);
        let child = cmd.spawn().expect("spawn shoal agent");
        let agent = Agent {
            name: name.to_string(),
            ip: ip.to_string(),
            child: Some(child),
            log,
            _dir: dir,
        };
        agent.wait_api();
        agent
    }

    pub fn api(&self) -> String {
        format!("{}:7373", self.ip)
    }

    pub fn gossip(&self) -> String {
        format!("{}:7946", self.ip)
    }

    fn wait_api(&self) {
        let ok = wait_for(Duration::from_secs(10), || {
            TcpStream::connect(self.api()).is_ok()
        });
        assert!(
            ok,
            "agent {} never opened its API; log:\n{}",
            self.name,
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `shoal --api ... ARGS` (killed after [`CLI_TIMEOUT`]).
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(shoal_bin());
        cmd.arg("--api").arg(self.api()).args(args);
        output_within(&mut cmd, CLI_TIMEOUT)
    }

    /// The members document from `shoal members --format json`.
    pub fn members(&self) -> Vec<Value> {
        let out = self.cli(&["members", "--format", "json"]);
        if !out.status.success() {
            return Vec::new();
        }
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        doc["members"].as_array().cloned().unwrap_or_default()
    }

    pub fn status_of(&self, name: &str) -> Option<String> {
        self.members()
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["status"].as_str().map(String::from))
    }

    pub fn member(&self, name: &str) -> Option<Value> {
        self.members().into_iter().find(|m| m["name"] == name)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// SIGKILL to the agent alone (a crash: its services are left to the
    /// agent's PDEATHSIG; [`Drop`] ends whatever is left of its session).
    pub fn kill9(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit status (None if it had to be killed).
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        let c = self.child.as_mut()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_session(&mut c);
        }
    }
}

/// A long-running command (e.g. `shoal monitor`) in its own session, stopped
/// with everything it started on drop, also when the test panics first.
pub struct Session {
    pub child: Child,
}

impl Session {
    pub fn spawn(cmd: &mut Command) -> Session {
        own_session(cmd);
        Session {
            child: cmd.spawn().expect("spawn command"),
        }
    }

    /// Stops it, then returns what it printed on stdout (if piped).
    pub fn stop_and_read_stdout(&mut self) -> String {
        let stdout = self.child.stdout.take();
        stop_session(&mut self.child);
        let mut text = String::new();
        if let Some(mut out) = stdout {
            let _ = out.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        stop_session(&mut self.child);
    }
}

/// Longest a CLI call may take before the test fails instead of hanging.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts the command as the leader of a new session, so [`stop_session`]
/// finds everything it starts, whatever process groups they make.
pub fn own_session(cmd: &mut Command) {
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The pids of every process in session `sid` (from `/proc/*/stat`).
pub fn session_members(sid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command name (in parentheses, may hold spaces):
            // state ppid pgrp session ...
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(3)?.parse::<i32>().ok())
                == Some(sid)
        })
        .collect()
}

fn signal_session(sid: i32, sig: nix::sys::signal::Signal) {
    for pid in session_members(sid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// SIGTERM to every process of the child's session, up to 2 s for the child
/// to exit, then SIGKILL to whatever is left, until the session is empty.
pub fn stop_session(child: &mut Child) {
    use nix::sys::signal::Signal;
    let sid = child.id() as i32;
    signal_session(sid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    // Orphans are re-parented and may still be starting children of their
    // own: kill until none is left (a zombie only goes once init reaps it).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let alive: Vec<i32> = session_members(sid)
            .into_iter()
            .filter(|&pid| !is_zombie(pid))
            .collect();
        if alive.is_empty() || Instant::now() > deadline {
            break;
        }
        signal_session(sid, Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let (_, rest) = s.rsplit_once(')')?;
            rest.split_whitespace().next().map(|st| st == "Z")
        })
        .unwrap_or(true)
}

/// `cmd.output()` with a deadline: the command runs in its own session and
/// is stopped (with anything it started) if it takes longer than `within`,
/// failing the test with what it printed instead of hanging the suite.
pub fn output_within(cmd: &mut Command, within: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    own_session(cmd);
    let mut child = cmd.spawn().expect("spawn command");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = child.stdout.take().map(|r| drain(Box::new(r)));
    let err = child.stderr.take().map(|r| drain(Box::new(r)));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let Some(status) = status else {
        stop_session(&mut child);
        let text = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
            String::from_utf8_lossy(&h.and_then(|h| h.join().ok()).unwrap_or_default()).into_owned()
        };
        panic!(
            "{cmd:?} still running after {within:?}; stdout:\n{}\nstderr:\n{}",
            text(out),
            text(err)
        );
    };
    let collect = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Output {
        status,
        stdout: collect(out),
        stderr: collect(err),
    }
}

/// Polls `cond` every 50 ms until it holds or `within` passes.
pub fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when every agent lists exactly `names`, all alive.
pub fn converged(agents: &[&Agent], names: &[&str]) -> bool {
    agents.iter().all(|a| {
        let ms = a.members();
        ms.len() == names.len()
            && names
                .iter()
                .all(|n| ms.iter().any(|m| m["name"] == *n && m["status"] == "alive"))
    })
}

/// `GET /v1/info` as JSON (Null if the agent did not answer with JSON).
pub fn info(a: &Agent) -> Value {
    let (_, body) = http(&a.api(), "GET", "/v1/info", "");
    serde_json::from_str(&body).unwrap_or_default()
}

/// A counter of `/v1/info`'s `stats`. A counter that is missing (renamed,
/// or the agent did not answer) fails the test instead of reading as 0,
/// which would make "it went up" and "it stayed at 0" checks meaningless.
pub fn stat(a: &Agent, name: &str) -> u64 {
    let info = info(a);
    info["stats"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("stats.{name} missing from /v1/info of {}: {info}", a.name))
}

/// A raw HTTP/1.1 request to the API; returns (status, body).
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect api");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

/// lbgen's follow loop (the code `lbgen watch` runs) pointed at an agent's
/// API, writing `out` only (no HAProxy), with a short debounce.
pub fn lbgen_watch_config(api: String, out: PathBuf) -> lbgen::watch::WatchConfig {
    lbgen::watch::WatchConfig {
        template: None,
        vars: lbgen::render::Vars::default(),
        out,
        source: lbgen::source::SourceSpec::api(api, None),
        master: None,
        check: None,
        wait: lbgen::watch::Wait::parse("20ms:200ms").expect("wait"),
        reload_timeout: Duration::from_secs(5),
        leaving_max: lbgen::watch::LEAVING_MAX,
        resync: None,
        renders: Vec::new(),
        local: None,
        reports: None,
        http: None,
    }
}

/// An in-process agent's settings on 127.0.0.1 (port picked by the kernel), the `local`
/// profile, joining `join`; for tests that call `shoal::agent::start` directly.
pub fn loopback_agent_config(node: &str, join: Vec<(String, u16)>) -> shoal::agent::AgentConfig {
    shoal::agent::AgentConfig {
        node: node.into(),
        bind: "127.0.0.1:0".parse().expect("addr"),
        advertise: "127.0.0.1:0".parse().expect("addr"),
        join,
        first_join: Vec::new(),
        retry_max: Duration::from_millis(500),
        tags: Default::default(),
        tags_file: None,
        profile: shoal::profile::Profile::Local,
        reap_after: Duration::from_secs(3600),
        leave_timeout: Duration::from_secs(1),
        keyring: None,
        keyring_file: None,
        sync_timeout: Duration::from_secs(1),
        replay: false,
    }
}

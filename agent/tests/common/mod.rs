//! Test harness: real `shoal agent` processes on their own 127.x.y.z
//! addresses, driven through the real CLI. Every process is killed on drop.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
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

    /// `shoal --api ... ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(shoal_bin())
            .arg("--api")
            .arg(self.api())
            .args(args)
            .output()
            .expect("run shoal cli")
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

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit status (None if it had to be killed).
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
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
        self.kill9();
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
        resync: None,
        reports: None,
    }
}

//! The health check: an HTTP GET or a command, turned into a [`Health`]
//! state with rise/fall thresholds.
//!
//! The first check runs as soon as the checker starts (with the service);
//! while the state is `Starting` the checks follow each other at a pace that
//! ramps up from [`FIRST_START_DELAY`] (5 ms), doubling, to `start_interval`
//! (100 ms by default): an app that listens a few ms after its spawn (most do)
//! is `Ready` within a few ms of its health endpoint first answering, a slow
//! one is checked every `start_interval` (never one full `interval` later);
//! from the first `Ready` on they run every `interval`.
//!
//! `Starting` until `rise` consecutive passes; `Ready` until `fall`
//! consecutive failures, then `Unhealthy` until `rise` passes again.
//! Failures while `Starting` keep it `Starting`.

use std::fmt;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::process;

/// What the agent gossips as tag `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Starting,
    Ready,
    Unhealthy,
}

/// Spelled as the `state` tag's values of the contract, which it becomes.
impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use shoal_contract::tags::state;
        f.write_str(match self {
            Health::Starting => state::STARTING,
            Health::Ready => state::READY,
            Health::Unhealthy => state::UNHEALTHY,
        })
    }
}

/// Health checks run in this process, by result, for `GET /metrics`. One
/// per process, as the supervisor is (`shoal agent -- CMD`).
pub static CHECK_RESULTS: CheckResults = CheckResults {
    passed: AtomicU64::new(0),
    failed: AtomicU64::new(0),
};

/// See [`CHECK_RESULTS`].
pub struct CheckResults {
    passed: AtomicU64,
    failed: AtomicU64,
}

impl CheckResults {
    pub fn record(&self, pass: bool) {
        let counter = if pass { &self.passed } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (passed, failed).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.passed.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// What is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckTarget {
    /// `GET path` on `host:port` over plain HTTP/1.1; 2xx and 3xx pass.
    Http {
        host: String,
        port: u16,
        path: String,
    },
    /// A shell command (`/bin/sh -c`); exit 0 passes.
    Command(String),
}

impl CheckTarget {
    /// Parses `http://HOST[:PORT][/PATH]` (only plain http).
    pub fn parse_http(url: &str) -> Result<CheckTarget, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            // [v6]:port
            let (h, after) = h
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: bad IPv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port"))?,
                None if after.is_empty() => 80,
                None => return Err(format!("{url:?}: bad address")),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("{url:?}: bad port"))?,
                ),
                None => (authority.to_string(), 80),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?}: missing host"));
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{url:?}: bad path"));
        }
        Ok(CheckTarget::Http {
            host,
            port,
            path: path.to_string(),
        })
    }
}

/// The default `start_interval`: fast enough that `ready` follows the app's
/// first good answer within ~100 ms, slow enough not to load a starting app.
pub const DEFAULT_START_INTERVAL: Duration = Duration::from_millis(100);

/// The delay after the first failed check while `Starting`; each next one
/// doubles, up to `start_interval`. The first check runs as the app is spawned,
/// usually before it listens: 5, 10, 20, 40, 80 ms then every 100 ms costs six
/// extra checks (refused connections, cheap) in the first 155 ms, and the app is
/// `Ready` within ~its own start-up time instead of up to 100 ms after it.
pub const FIRST_START_DELAY: Duration = Duration::from_millis(5);

/// A health check and its thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    pub target: CheckTarget,
    /// Time between two checks once the service was `Ready` once.
    pub interval: Duration,
    /// Time between two checks until the service is first `Ready` (capped
    /// at `interval`).
    pub start_interval: Duration,
    /// One check's budget (connect + response, or the command's run time).
    pub timeout: Duration,
    /// Consecutive passes to become `Ready`.
    pub rise: u32,
    /// Consecutive failures to leave `Ready`.
    pub fall: u32,
}

impl Default for CheckSpec {
    fn default() -> Self {
        CheckSpec {
            target: CheckTarget::Command("true".into()),
            interval: Duration::from_secs(2),
            start_interval: DEFAULT_START_INTERVAL,
            timeout: Duration::from_secs(1),
            rise: 1,
            fall: 3,
        }
    }
}

/// Runs one check; `Ok` = pass, `Err(reason)` = fail.
pub async fn check_once(target: &CheckTarget, timeout: Duration) -> Result<(), String> {
    match target {
        CheckTarget::Http { host, port, path } => {
            match tokio::time::timeout(timeout, http_get(host, *port, path)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            }
        }
        CheckTarget::Command(cmd) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(cmd);
            match process::run_captured(c, Vec::new(), timeout, 512).await {
                Ok(out) if out.timed_out => Err(format!("timed out after {timeout:?}")),
                Ok(out) if out.status.success() => Ok(()),
                Ok(out) => Err(format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => Err(format!("cannot run: {e}")),
            }
        }
    }
}

async fn http_get(host: &str, port: u16, path: &str) -> Result<(), String> {
    let mut s = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let host_hdr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_hdr}\r\nUser-Agent: shoal-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    // Only the status line matters.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (Some(proto), Some(code)) = (parts.next(), parts.next()) else {
        return Err(format!("bad response {line:?}"));
    };
    if !proto.starts_with("HTTP/") {
        return Err(format!("bad response {line:?}"));
    }
    match code.parse::<u16>() {
        Ok(c) if (200..400).contains(&c) => Ok(()),
        Ok(c) => Err(format!("HTTP {c}")),
        Err(_) => Err(format!("bad response {line:?}")),
    }
}

/// The rise/fall state machine.
#[derive(Debug, Clone)]
pub struct Thresholds {
    rise: u32,
    fall: u32,
    passes: u32,
    fails: u32,
    state: Health,
}

impl Thresholds {
    pub fn new(rise: u32, fall: u32) -> Thresholds {
        Thresholds {
            rise: rise.max(1),
            fall: fall.max(1),
            passes: 0,
            fails: 0,
            state: Health::Starting,
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// Feeds one result; returns the (possibly new) state.
    pub fn observe(&mut self, pass: bool) -> Health {
        if pass {
            self.fails = 0;
            self.passes = self.passes.saturating_add(1);
            if self.state != Health::Ready && self.passes >= self.rise {
                self.state = Health::Ready;
            }
        } else {
            self.passes = 0;
            self.fails = self.fails.saturating_add(1);
            if self.state == Health::Ready && self.fails >= self.fall {
                self.state = Health::Unhealthy;
            }
        }
        self.state
    }
}

/// The time from one check's start to the next one's, `done` checks having
/// run: until the service was first `Ready`, [`FIRST_START_DELAY`] doubling at
/// each check up to `start_interval` (and never above `interval`); `interval`
/// after.
pub fn next_delay(spec: &CheckSpec, ever_ready: bool, done: u32) -> Duration {
    if ever_ready {
        return spec.interval;
    }
    let cap = spec.start_interval.min(spec.interval);
    let ramp = FIRST_START_DELAY.saturating_mul(1u32 << done.saturating_sub(1).min(16));
    ramp.min(cap)
}

/// Starts the checker task; it runs until the returned sender side is
/// dropped by aborting the task (the supervisor does this on shutdown).
/// The first check runs at once; see the module docs for the pace.
pub fn spawn_checker(spec: CheckSpec) -> (watch::Receiver<Health>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Health::Starting);
    let handle = tokio::spawn(async move {
        let mut th = Thresholds::new(spec.rise, spec.fall);
        let mut ever_ready = false;
        let mut done: u32 = 0;
        loop {
            let began = tokio::time::Instant::now();
            let res = check_once(&spec.target, spec.timeout).await;
            CHECK_RESULTS.record(res.is_ok());
            let before = th.state();
            let after = th.observe(res.is_ok());
            if let Err(reason) = &res {
                tracing::debug!(service = "health", %reason, "health check failed");
            }
            if before != after {
                match &res {
                    Ok(()) => tracing::info!(service = "health", health = %after, "health changed"),
                    Err(reason) => {
                        tracing::warn!(service = "health", health = %after, %reason, "health changed")
                    }
                }
                // Sent before anything else: the agent gossips it at once.
                if tx.send(after).is_err() {
                    return;
                }
            }
            ever_ready |= after == Health::Ready;
            done = done.saturating_add(1);
            // The pace is from start to start, as an interval timer would
            // keep it, but a slow check never makes the next one overlap.
            tokio::time::sleep_until(began + next_delay(&spec, ever_ready, done)).await;
        }
    });
    (rx, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_parse() {
        assert_eq!(
            CheckTarget::parse_http("http://127.0.0.1:3000/health"),
            Ok(CheckTarget::Http {
                host: "127.0.0.1".into(),
                port: 3000,
                path: "/health".into()
            })
        );
        assert_eq!(
            CheckTarget::parse_http("http://localhost"),
            Ok(CheckTarget::Http {
                host: "localhost".into(),
                port: 80,
                path: "/".into()
            })
        );
        assert_eq!(
            CheckTarget::parse_http("http://[::1]:8080/x?y=1"),
            Ok(CheckTarget::Http {
                host: "::1".into(),
                port: 8080,
                path: "/x?y=1".into()
            })
        );
        assert!(CheckTarget::parse_http("https://x/").is_err());
        assert!(CheckTarget::parse_http("http://x:notaport/").is_err());
        assert!(CheckTarget::parse_http("http://:80/").is_err());
    }

    #[test]
    fn checks_ramp_up_from_5_ms_to_the_start_interval_until_the_first_ready_then_at_the_interval() {
        let spec = CheckSpec {
            interval: Duration::from_secs(2),
            start_interval: Duration::from_millis(100),
            ..CheckSpec::default()
        };
        let ms = |d: Duration| d.as_millis() as u64;
        let ramp: Vec<u64> = (1..=8).map(|n| ms(next_delay(&spec, false, n))).collect();
        assert_eq!(ramp, [5, 10, 20, 40, 80, 100, 100, 100]);
        // Thousands of failed checks later: still the start interval, no overflow.
        assert_eq!(ms(next_delay(&spec, false, u32::MAX)), 100);
        assert_eq!(next_delay(&spec, true, 3), Duration::from_secs(2));
        // Never slower than the interval itself, nor than a short start interval.
        let short = CheckSpec {
            interval: Duration::from_millis(50),
            ..spec.clone()
        };
        assert_eq!(ms(next_delay(&short, false, 7)), 50);
        let slow_start = CheckSpec {
            start_interval: Duration::from_millis(8),
            ..spec
        };
        assert_eq!(ms(next_delay(&slow_start, false, 1)), 5);
        assert_eq!(ms(next_delay(&slow_start, false, 2)), 8);
    }

    #[test]
    fn thresholds_rise_and_fall() {
        let mut t = Thresholds::new(2, 3);
        assert_eq!(t.observe(false), Health::Starting);
        assert_eq!(t.observe(true), Health::Starting);
        assert_eq!(t.observe(true), Health::Ready);
        assert_eq!(t.observe(false), Health::Ready);
        assert_eq!(t.observe(false), Health::Ready);
        assert_eq!(t.observe(true), Health::Ready); // resets the failure count
        assert_eq!(t.observe(false), Health::Ready);
        assert_eq!(t.observe(false), Health::Ready);
        assert_eq!(t.observe(false), Health::Unhealthy);
        assert_eq!(t.observe(true), Health::Unhealthy);
        assert_eq!(t.observe(true), Health::Ready);
        assert_eq!(Health::Unhealthy.to_string(), "unhealthy");
    }
}

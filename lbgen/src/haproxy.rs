//! HAProxy master CLI (`haproxy -W -S SOCK`): reload with verification, runtime API commands.
//!
//! The master CLI is line-based and non-interactive: one connection per command, HAProxy
//! closes it after the answer. A reload re-executes the master, so the socket may refuse
//! connections for a moment; [`Master::reload`] polls `show proc` until the new worker
//! generation is running (or the master reports the reload as failed).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::Error;

/// Parsed `show proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub master_pid: u32,
    /// Reloads the master has done since start.
    pub reloads: u64,
    /// Failed reloads since the last successful one.
    pub failed: u64,
    /// (pid, reloads survived). A worker with 0 is the current generation.
    pub workers: Vec<(u32, u64)>,
}

impl ProcInfo {
    pub fn parse(text: &str) -> Result<ProcInfo, Error> {
        let mut master = None;
        let mut workers = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 3 {
                continue;
            }
            let (Ok(pid), Ok(reloads)) = (cols[0].parse::<u32>(), cols[2].parse::<u64>()) else {
                continue;
            };
            match cols[1] {
                "master" => {
                    // `3 [failed: 1]`
                    let failed = line
                        .split("[failed:")
                        .nth(1)
                        .and_then(|s| s.split(']').next())
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .unwrap_or(0);
                    master = Some((pid, reloads, failed));
                }
                "worker" => workers.push((pid, reloads)),
                _ => {}
            }
        }
        let (master_pid, reloads, failed) = master.ok_or_else(|| {
            Error::new(format!(
                "unexpected `show proc` answer: {:?}",
                text.chars().take(200).collect::<String>()
            ))
        })?;
        Ok(ProcInfo {
            master_pid,
            reloads,
            failed,
            workers,
        })
    }

    /// PID of the current-generation worker, if one is running.
    pub fn current_worker(&self) -> Option<u32> {
        self.workers.iter().find(|(_, r)| *r == 0).map(|(p, _)| *p)
    }
}

/// Why a reload did not bring a new worker generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadError {
    /// The master tried and reports failure (e.g. the new config binds a port that is taken):
    /// the old worker still serves the old config, its runtime changes included.
    Refused(Error),
    /// Socket trouble or timeout: what runs now is unknown.
    Unconfirmed(Error),
}

impl ReloadError {
    pub fn into_error(self) -> Error {
        match self {
            ReloadError::Refused(e) | ReloadError::Unconfirmed(e) => e,
        }
    }
}

/// [`Master::wait_ready`]: the pause between probes for the first [`WAIT_FAST_FOR`] (HAProxy
/// is usually starting next to lbgen: a probe is one `stat` and maybe one connect, and a
/// doubling backoff overslept HAProxy's start by up to as long again; at 20 ms a new LB's
/// first runtime change waited 10 ms on average for nothing), the longest pause
/// after that (doubling from [`WAIT_FIRST`]), and how often a long wait is logged again.
pub const WAIT_FIRST: Duration = Duration::from_millis(5);
pub const WAIT_FAST_FOR: Duration = Duration::from_secs(5);
pub const WAIT_MAX: Duration = Duration::from_secs(2);
pub const WAIT_REMIND: Duration = Duration::from_secs(30);

enum Probe {
    Ready(ProcInfo),
    /// Worth waiting for; what we wait for, in words.
    Waiting(String),
}

/// A client for the master CLI socket.
#[derive(Debug, Clone)]
pub struct Master {
    path: PathBuf,
    /// Per-command I/O timeout.
    pub io_timeout: Duration,
}

impl Master {
    pub fn new(path: impl Into<PathBuf>) -> Master {
        Master {
            path: path.into(),
            io_timeout: Duration::from_secs(5),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one command line and returns the whole answer.
    pub async fn command(&self, cmd: &str) -> Result<String, Error> {
        let fut = async {
            let mut s = UnixStream::connect(&self.path).await?;
            s.write_all(format!("{cmd}\n").as_bytes()).await?;
            // The master answers once our side is closed (like `socat` at end of input).
            s.shutdown().await?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        let out = tokio::time::timeout(self.io_timeout, fut)
            .await
            .map_err(|_| {
                Error::new(format!(
                    "haproxy master socket {}: `{cmd}` timed out",
                    self.path.display()
                ))
            })?
            .map_err(|e| {
                Error::new(format!(
                    "haproxy master socket {}: {e}",
                    self.path.display()
                ))
            })?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Waits until the master answers `show proc`: the socket may not be there yet (HAProxy
    /// starting), or be a stale file left by an HAProxy that died (nothing listens on it).
    /// Retries every [`WAIT_FIRST`] for [`WAIT_FAST_FOR`], then with backoff to [`WAIT_MAX`],
    /// logging what it waits for whenever that changes and every [`WAIT_REMIND`]. Errors at
    /// once only where waiting cannot help: the directory is missing, the path is not a socket, access is denied,
    /// or what answers is not a master CLI.
    pub async fn wait_ready(&self) -> Result<ProcInfo, Error> {
        let started = Instant::now();
        let mut delay = WAIT_FIRST;
        let mut last_why: Option<String> = None;
        let mut reminded = started;
        loop {
            match self.probe().await? {
                Probe::Ready(p) => {
                    if last_why.is_some() {
                        tracing::info!(
                            socket = %self.path.display(),
                            waited_ms = started.elapsed().as_millis() as u64,
                            "haproxy master socket is answering"
                        );
                    }
                    return Ok(p);
                }
                Probe::Waiting(why) => {
                    if last_why.as_deref() != Some(why.as_str()) {
                        tracing::info!(socket = %self.path.display(), "waiting for the haproxy master socket: {why}");
                        reminded = Instant::now();
                    } else if reminded.elapsed() >= WAIT_REMIND {
                        tracing::warn!(
                            socket = %self.path.display(),
                            waited_s = started.elapsed().as_secs(),
                            "still waiting for the haproxy master socket: {why}"
                        );
                        reminded = Instant::now();
                    }
                    last_why = Some(why);
                }
            }
            if started.elapsed() >= WAIT_FAST_FOR {
                delay = (delay * 2).min(WAIT_MAX);
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One look at the socket: answering, worth waiting for, or hopeless (Err).
    async fn probe(&self) -> Result<Probe, Error> {
        use std::io::ErrorKind;
        use std::os::unix::fs::FileTypeExt;
        let shown = self.path.display();
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(d) = dir {
            if !d.is_dir() {
                return Err(Error::new(format!(
                    "haproxy master socket {shown}: directory {} does not exist (HAProxy cannot create its socket there)",
                    d.display()
                )));
            }
        }
        match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Ok(Probe::Waiting(
                    "not there yet (is HAProxy started with -W -S?)".into(),
                ))
            }
            Err(e) => return Err(Error::new(format!("haproxy master socket {shown}: {e}"))),
            Ok(m) if !m.file_type().is_socket() => {
                return Err(Error::new(format!(
                    "haproxy master socket {shown}: exists but is not a socket"
                )))
            }
            Ok(_) => {}
        }
        let answer = tokio::time::timeout(self.io_timeout, async {
            let mut s = UnixStream::connect(&self.path).await?;
            s.write_all(b"show proc\n").await?;
            s.shutdown().await?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        })
        .await;
        let out = match answer {
            Err(_) => {
                return Ok(Probe::Waiting(format!(
                    "connected, but no answer within {:?} (HAProxy busy starting?)",
                    self.io_timeout
                )))
            }
            Ok(Err(e)) => {
                return match e.kind() {
                    ErrorKind::ConnectionRefused => Ok(Probe::Waiting(
                        "stale: the socket file exists but nothing listens on it (a previous HAProxy's, or HAProxy still starting)".into(),
                    )),
                    ErrorKind::NotFound => Ok(Probe::Waiting("not there yet".into())),
                    ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof => {
                        Ok(Probe::Waiting(format!("connection dropped ({e}); HAProxy restarting?")))
                    }
                    _ => Err(Error::new(format!("haproxy master socket {shown}: {e}"))),
                }
            }
            Ok(Ok(out)) => out,
        };
        let text = String::from_utf8_lossy(&out);
        if text.trim().is_empty() {
            // The master closes connections while it re-executes itself.
            return Ok(Probe::Waiting(
                "it closed the connection without an answer (HAProxy reloading?)".into(),
            ));
        }
        ProcInfo::parse(&text).map(Probe::Ready).map_err(|e| {
            Error::new(format!(
                "haproxy master socket {shown}: does not answer as HAProxy's master CLI (the stats socket given instead?): {e}"
            ))
        })
    }

    pub async fn show_proc(&self) -> Result<ProcInfo, Error> {
        ProcInfo::parse(&self.command("show proc").await?)
    }

    /// Reloads and waits until a new worker generation runs. [`ReloadError::Refused`] if the
    /// master reports the reload failed (the old worker keeps serving, unchanged);
    /// [`ReloadError::Unconfirmed`] if nothing could be confirmed within `timeout`.
    pub async fn reload(&self, timeout: Duration) -> Result<ProcInfo, ReloadError> {
        let before = self.show_proc().await.map_err(ReloadError::Unconfirmed)?;
        let old: Vec<u32> = before.workers.iter().map(|(p, _)| *p).collect();
        // The master re-executes itself and drops the connection; the answer is irrelevant.
        let _ = self.command("reload").await;
        let deadline = Instant::now() + timeout;
        let mut last_err = None;
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            match self.show_proc().await {
                Ok(now) if now.reloads > before.reloads => {
                    if now.failed > 0 {
                        return Err(ReloadError::Refused(Error::new(format!(
                            "haproxy refused the reload (master reports {} failed reload(s); its own log says why); the old worker keeps serving",
                            now.failed
                        ))));
                    }
                    if let Some(pid) = now.current_worker() {
                        if !old.contains(&pid) {
                            return Ok(now);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => last_err = Some(e),
            }
            if Instant::now() >= deadline {
                return Err(ReloadError::Unconfirmed(Error::new(format!(
                    "haproxy reload not confirmed within {timeout:?}{}",
                    last_err
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ))));
            }
        }
    }

    /// Runs a runtime-API command on the current worker (`@1`). HAProxy answers these
    /// commands with an empty line on success and a message otherwise.
    pub async fn runtime(&self, cmd: &str) -> Result<(), Error> {
        let out = self.command(&format!("@1 {cmd}")).await?;
        let t = out.trim();
        if t.is_empty() {
            Ok(())
        } else {
            Err(Error::new(format!(
                "haproxy `{cmd}`: {}",
                t.replace('\n', " ")
            )))
        }
    }
}

/// What HAProxy 2.6 answers runtime commands that worked: nothing (most `set` commands), or
/// one of these lines. Anything else is an error message.
const RUNTIME_OK: &[&str] = &[
    "New server registered.",
    "Server deleted.",
    "IP changed from ",
    "port changed from ",
    "no need to change the addr",
    "no need to change the port",
];

/// The runtime commands of one master-CLI line stay under this many bytes (HAProxy reads a
/// request into one buffer, 16 kB by default).
pub const BATCH_BYTES: usize = 8 * 1024;

/// The first line of a runtime answer that is not a success, if any.
fn runtime_error(answer: &str) -> Option<&str> {
    answer
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !RUNTIME_OK.iter().any(|ok| l.starts_with(ok)))
}

/// `cmds` as master-CLI lines (`@1 a; @1 b; ...`), each under [`BATCH_BYTES`].
pub fn batch_lines(cmds: &[String]) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for c in cmds {
        match lines.last_mut() {
            Some(l) if l.len() + c.len() + 6 <= BATCH_BYTES => {
                l.push_str("; @1 ");
                l.push_str(c);
            }
            _ => lines.push(format!("@1 {c}")),
        }
    }
    lines
}

impl Master {
    /// Runs runtime-API commands on the current worker, as few master-CLI connections as
    /// their length allows (`@1 a; @1 b`: the master sends each to the worker in order and
    /// answers them all). Every command runs even after one failed; the first failure is the
    /// error.
    pub async fn runtime_batch(&self, cmds: &[String]) -> Result<(), Error> {
        let mut first_err = None;
        for line in batch_lines(cmds) {
            let out = self.command(&line).await?;
            if let Some(bad) = runtime_error(&out) {
                first_err.get_or_insert_with(|| {
                    Error::new(format!(
                        "haproxy runtime API: {bad} (in `{}`)",
                        line.chars().take(300).collect::<String>()
                    ))
                });
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_answers_success_and_errors() {
        let ok = "New server registered.\n\n\n\nIP changed from '127.0.0.1' to '127.0.0.2', port changed from '1' to '2' by 'stats socket command'\n\nServer deleted.\n\n";
        assert_eq!(runtime_error(ok), None);
        assert_eq!(
            runtime_error("\n'cookie' option is not accepted for dynamic server\n"),
            Some("'cookie' option is not accepted for dynamic server")
        );
        assert_eq!(runtime_error("No such server.\n"), Some("No such server."));
    }

    #[test]
    fn batches_stay_under_the_buffer() {
        let cmds: Vec<String> = (0..400)
            .map(|i| format!("set server web/s{i} state ready"))
            .collect();
        let lines = batch_lines(&cmds);
        assert!(lines.len() > 1);
        assert!(lines
            .iter()
            .all(|l| l.len() <= BATCH_BYTES && l.starts_with("@1 ")));
        let back: Vec<&str> = lines.iter().flat_map(|l| l.split("; ")).collect();
        assert_eq!(back.len(), 400);
        assert!(back.iter().all(|c| c.starts_with("@1 set server web/s")));
    }

    #[test]
    fn parses_show_proc_of_haproxy_2_6() {
        let t = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n\
13033           master          2 [failed: 1]   0d00h00m06s     2.6.12-1+deb12u4\n\
# workers\n\
13096           worker          0               0d00h00m01s     2.6.12-1+deb12u4\n\
13056           worker          1               0d00h00m05s     2.6.12-1+deb12u4\n\
# programs\n\n";
        let p = ProcInfo::parse(t).unwrap();
        assert_eq!(p.master_pid, 13033);
        assert_eq!(p.reloads, 2);
        assert_eq!(p.failed, 1);
        assert_eq!(p.workers, vec![(13096, 0), (13056, 1)]);
        assert_eq!(p.current_worker(), Some(13096));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(ProcInfo::parse("Unknown command.\n").is_err());
    }

    #[tokio::test]
    async fn unreachable_socket_is_one_clear_error() {
        let m = Master::new("/nonexistent/master.sock");
        let e = m.show_proc().await.unwrap_err().to_string();
        assert!(e.contains("/nonexistent/master.sock"), "{e}");
    }
}

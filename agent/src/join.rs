//! An explicit join (`shoal join`, `POST /v1/join`), done the way `serf join`
//! does it: a TCP push-pull with every resolved address, waited for, and the
//! number that answered reported back. A join that no address answered is an
//! error naming each address and why, so the CLI can exit non-zero. (`--join`
//! targets are different: they retry in the background until one answers.)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::debug;

use crate::addr;
use crate::agent::Command;
use crate::keyring::Keyring;
use crate::metrics::Dir;
use crate::pushpull::{self, FrameError};
use crate::stats::Stats;
use crate::wire::{DecodeError, SyncMsg, TcpMsg};

/// Longest wait for one name to resolve; each push-pull has its own bound
/// ([`pushpull::IO_TIMEOUT`]) and they run in parallel, so a join answers
/// within about both.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What an explicit join achieved (the `POST /v1/join` answer).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct JoinReport {
    /// Addresses tried (every address of every name, this node excluded).
    pub contacted: usize,
    /// Those whose push-pull completed: their member tables are merged.
    pub joined: usize,
    /// Each address (or name that did not resolve) that failed, and why.
    pub failed: BTreeMap<String, String>,
}

impl JoinReport {
    /// `Err` (one line naming every failure) when no address answered.
    pub fn into_result(self) -> Result<JoinReport, String> {
        if self.joined > 0 {
            return Ok(self);
        }
        if self.failed.is_empty() {
            return Err("nothing to join: every address is this node's own".into());
        }
        let why: Vec<String> = self
            .failed
            .iter()
            .map(|(a, e)| format!("{a}: {e}"))
            .collect();
        Err(format!(
            "could not join: no node answered ({})",
            why.join("; ")
        ))
    }
}

/// Everything a join needs from the gossip loop, taken when the command
/// arrives so the exchanges run off the loop.
pub struct JoinCtx {
    pub local: SocketAddr,
    pub ours: SyncMsg,
    pub ring: Option<Keyring>,
    pub commands: mpsc::Sender<Command>,
    pub stats: Arc<Stats>,
}

/// Resolves `targets`, push-pulls with every address in parallel and hands
/// each answer to the loop (`PushPullOut`), as a periodic push-pull does.
pub async fn run(ctx: JoinCtx, targets: Vec<(String, u16)>) -> Result<JoinReport, String> {
    let mut report = JoinReport::default();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for (host, port) in &targets {
        let name = format!("{host}:{port}");
        match tokio::time::timeout(RESOLVE_TIMEOUT, addr::resolve(host, *port)).await {
            Err(_) => {
                report
                    .failed
                    .insert(name, format!("not resolved within {RESOLVE_TIMEOUT:?}"));
            }
            Ok(found) if found.is_empty() => {
                report
                    .failed
                    .insert(name, "does not resolve to an IPv4 address".into());
            }
            Ok(found) => addrs.extend(found),
        }
    }
    addrs.sort();
    addrs.dedup();
    addrs.retain(|a| *a != ctx.local);
    report.contacted = addrs.len();
    let mut tasks = tokio::task::JoinSet::new();
    for to in addrs {
        let ours = TcpMsg::Sync(ctx.ours.clone());
        let ring = ctx.ring.clone();
        let stats = ctx.stats.clone();
        tasks.spawn(async move {
            let started = std::time::Instant::now();
            let result = pushpull::exchange(to, ours, ring, &stats.metrics).await;
            (to, result, started.elapsed())
        });
    }
    while let Some(done) = tasks.join_next().await {
        let Ok((to, result, took)) = done else {
            continue;
        };
        let synced = matches!(result, Ok(TcpMsg::Sync(_)));
        ctx.stats.metrics.push_pull(Dir::Out, synced, took);
        match result {
            Ok(TcpMsg::Sync(remote)) => {
                Stats::add(&ctx.stats.push_pulls, 1);
                if ctx
                    .commands
                    .send(Command::PushPullOut { remote })
                    .await
                    .is_err()
                {
                    return Err("the agent is shutting down".into());
                }
                report.joined += 1;
            }
            Ok(_) => {
                Stats::add(&ctx.stats.push_pull_failures, 1);
                report
                    .failed
                    .insert(to.to_string(), "answered with another message".into());
            }
            Err(e) => {
                Stats::add(&ctx.stats.push_pull_failures, 1);
                let why = match &e {
                    FrameError::Decode(
                        DecodeError::Auth | DecodeError::Encrypted | DecodeError::Unencrypted,
                    ) => {
                        Stats::add(&ctx.stats.auth_failures, 1);
                        format!("{e} (every node needs the same --encrypt key)")
                    }
                    _ => e.to_string(),
                };
                debug!(%to, error = %why, "join push-pull failed");
                report.failed.insert(to.to_string(), why);
            }
        }
    }
    report.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, e)| (a.to_string(), e.to_string()))
            .collect()
    }

    #[test]
    fn a_join_nobody_answered_is_an_error_naming_every_address() {
        let r = JoinReport {
            contacted: 1,
            joined: 0,
            failed: failed(&[
                ("127.0.0.1:1", "connect: Connection refused"),
                ("nohost:7946", "does not resolve to an IPv4 address"),
            ]),
        };
        let e = r.into_result().unwrap_err();
        assert!(
            e.contains("127.0.0.1:1: connect: Connection refused") && e.contains("nohost:7946"),
            "{e}"
        );
    }

    #[test]
    fn a_join_one_address_answered_succeeds_and_keeps_the_failures() {
        let r = JoinReport {
            contacted: 2,
            joined: 1,
            failed: failed(&[("127.0.0.1:1", "refused")]),
        };
        assert_eq!(r.clone().into_result(), Ok(r));
    }

    #[test]
    fn a_join_of_only_our_own_address_says_so() {
        let e = JoinReport::default().into_result().unwrap_err();
        assert!(e.contains("own"), "{e}");
    }
}

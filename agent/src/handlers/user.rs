//! User events and queries for the event handlers, as Serf runs them:
//! `SERF_EVENT=user` with `SERF_USER_EVENT`/`SERF_USER_LTIME`, or
//! `SERF_EVENT=query` with `SERF_QUERY_NAME`/`SERF_QUERY_LTIME` (and the
//! `SHOAL_` spellings), the payload on stdin.
//!
//! User events run one at a time per handler, in the order they arrived;
//! coalescing ones (the default) are held by name in the handlers' window
//! ([`super::COALESCE_QUIET`], [`super::COALESCE_MAX`], the first one at
//! once), so of several with one name only the latest runs. A query runs
//! its handlers at once, in their order; the first that exits 0 with output
//! answers with its stdout (up to [`userev::MAX_RESPONSE`] bytes, as Serf:
//! a failing or silent handler does not answer); if none does, the node says
//! "no response", so the asker need not wait for its timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};
use tracing::{info, warn};

use super::coalesce::Coalescer;
use super::invoke::{environment, log_output};
use super::{HandlerSpec, COALESCE_MAX, COALESCE_QUIET, MAX_PENDING};
use crate::agent::{Handle, UserDelivery};
use crate::userev::{self, Query, ReplyKind};

/// Output kept from a user event handler, for the log.
const EVENT_OUTPUT_CAP: usize = 4096;

/// One user event as a handler gets it.
#[derive(Debug, Clone)]
struct UserRun {
    name: String,
    ltime: u64,
    payload: Vec<u8>,
}

/// The environment of a user event or query run, Serf's names and ours.
fn user_env(kind: &str, name: &str, ltime: u64) -> Vec<(String, String)> {
    let (name_var, ltime_var) = match kind {
        "user" => ("USER_EVENT", "USER_LTIME"),
        _ => ("QUERY_NAME", "QUERY_LTIME"),
    };
    let mut env = Vec::new();
    for prefix in ["SERF", "SHOAL"] {
        env.push((format!("{prefix}_{name_var}"), name.to_string()));
        env.push((format!("{prefix}_{ltime_var}"), ltime.to_string()));
    }
    env
}

/// One run of a handler for a user event or query.
struct Invocation<'a> {
    /// `user` or `query`.
    kind: &'a str,
    name: &'a str,
    ltime: u64,
    payload: Vec<u8>,
    /// Output bytes kept.
    cap: usize,
}

/// Runs `spec` once with the payload on stdin; its output, if it started.
async fn run_user_handler(
    n: usize,
    spec: &HandlerSpec,
    inv: Invocation<'_>,
    local: &crate::identity::NodeId,
    timeout: Duration,
) -> Option<crate::process::CapturedOutput> {
    let Invocation {
        kind,
        name,
        ltime,
        payload,
        cap,
    } = inv;
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c").arg(&spec.command);
    cmd.envs(environment(kind, local));
    cmd.envs(user_env(kind, name, ltime));
    let started = Instant::now();
    match crate::process::run_captured(cmd, payload, timeout, cap).await {
        Ok(out) => {
            let event = format!("{kind}:{name}");
            log_output(n, &event, &out);
            let took_ms = started.elapsed().as_millis() as u64;
            if out.timed_out {
                warn!(handler = n, event = %event, command = %spec.command, ?timeout, "event handler timed out and was killed");
            } else if !out.status.success() {
                warn!(handler = n, event = %event, command = %spec.command, exit = %out.status, "event handler failed");
            } else {
                info!(handler = n, event = %event, ltime, took_ms, "event handler ran");
            }
            Some(out)
        }
        Err(e) => {
            warn!(handler = n, command = %spec.command, error = %e, "cannot start event handler");
            None
        }
    }
}

/// Starts the user event and query dispatcher (if any handler takes them).
pub fn start(agent: &Handle, specs: &[HandlerSpec], timeout: Duration) {
    let takes = |s: &HandlerSpec| {
        s.filter.as_ref().is_none_or(|f| {
            f.iter().any(|f| {
                matches!(
                    f,
                    super::filter::Filter::User(_) | super::filter::Filter::Query(_)
                )
            })
        })
    };
    if !specs.iter().any(takes) {
        return;
    }
    let rx = agent.subscribe_user();
    let specs: Vec<Arc<HandlerSpec>> = specs.iter().cloned().map(Arc::new).collect();
    tokio::spawn(dispatch(specs, agent.clone(), rx, timeout));
}

/// One worker per handler runs its user events in order.
fn spawn_worker(
    n: usize,
    spec: Arc<HandlerSpec>,
    agent: Handle,
    timeout: Duration,
) -> mpsc::Sender<UserRun> {
    let (tx, mut rx) = mpsc::channel::<UserRun>(MAX_PENDING);
    tokio::spawn(async move {
        while let Some(run) = rx.recv().await {
            let local = agent.local();
            let inv = Invocation {
                kind: "user",
                name: &run.name,
                ltime: run.ltime,
                payload: run.payload,
                cap: EVENT_OUTPUT_CAP,
            };
            run_user_handler(n, &spec, inv, &local, timeout).await;
        }
    });
    tx
}

async fn dispatch(
    specs: Vec<Arc<HandlerSpec>>,
    agent: Handle,
    mut rx: broadcast::Receiver<Arc<UserDelivery>>,
    timeout: Duration,
) {
    let workers: Vec<mpsc::Sender<UserRun>> = specs
        .iter()
        .enumerate()
        .map(|(n, s)| spawn_worker(n, s.clone(), agent.clone(), timeout))
        .collect();
    let mut held: Coalescer<UserRun> = Coalescer::new(COALESCE_QUIET, COALESCE_MAX).leading_edge();
    loop {
        let deadline = held.deadline().map(tokio::time::Instant::from_std);
        tokio::select! {
            r = rx.recv() => match r {
                Ok(d) => match &*d {
                    UserDelivery::Event { name, ltime, coalesce, payload, .. } => {
                        let run = UserRun { name: name.clone(), ltime: *ltime, payload: payload.clone() };
                        if *coalesce {
                            held.push(name, run, Instant::now());
                            offer(&specs, &workers, held.flush_due(Instant::now()));
                        } else {
                            offer(&specs, &workers, vec![run]);
                        }
                    }
                    UserDelivery::Query(q) => {
                        tokio::spawn(answer(specs.clone(), agent.clone(), q.clone(), timeout));
                    }
                },
                Err(broadcast::error::RecvError::Lagged(k)) => {
                    warn!(skipped = k, "event handlers fell behind; user events and queries skipped");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = sleep_until_some(deadline), if deadline.is_some() => {
                offer(&specs, &workers, held.flush_due(Instant::now()));
            }
        }
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Queues user events for the handlers that take them, oldest first.
fn offer(specs: &[Arc<HandlerSpec>], workers: &[mpsc::Sender<UserRun>], mut runs: Vec<UserRun>) {
    runs.sort_by_key(|r| r.ltime);
    for run in runs {
        for (n, spec) in specs.iter().enumerate() {
            if spec.matches_user(&run.name) && workers[n].try_send(run.clone()).is_err() {
                warn!(handler = n, event = %run.name, max = MAX_PENDING, "event handler queue full; user event dropped");
            }
        }
    }
}

/// Runs the query's handlers in order; the first answer goes back at once.
async fn answer(specs: Vec<Arc<HandlerSpec>>, agent: Handle, q: Query, timeout: Duration) {
    let local = agent.local();
    let mut answered = false;
    for (n, spec) in specs.iter().enumerate() {
        if !spec.matches_query(&q.name) {
            continue;
        }
        let inv = Invocation {
            kind: "query",
            name: &q.name,
            ltime: q.ltime,
            payload: q.payload.clone(),
            cap: userev::MAX_RESPONSE,
        };
        let out = run_user_handler(n, spec, inv, &local, timeout).await;
        let Some(out) = out else { continue };
        if answered || !out.status.success() || out.timed_out || out.stdout.is_empty() {
            continue;
        }
        answered = true;
        agent
            .respond(q.clone(), ReplyKind::Response(out.stdout))
            .await;
    }
    if !answered {
        agent.respond(q, ReplyKind::NoResponse).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_query_runs_get_serfs_variables() {
        let env = user_env("user", "deploy", 7);
        assert!(env.contains(&("SERF_USER_EVENT".into(), "deploy".into())));
        assert!(env.contains(&("SERF_USER_LTIME".into(), "7".into())));
        assert!(env.contains(&("SHOAL_USER_EVENT".into(), "deploy".into())));
        let env = user_env("query", "uptime", 3);
        assert!(env.contains(&("SERF_QUERY_NAME".into(), "uptime".into())));
        assert!(env.contains(&("SHOAL_QUERY_LTIME".into(), "3".into())));
    }
}

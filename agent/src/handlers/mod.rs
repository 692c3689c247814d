//! Serf-compatible event handlers: `--event-handler [FILTER=]CMD`.
//!
//! One dispatcher task per agent reads the event log, coalesces it
//! ([`coalesce`]: quiet period + max window, latest state per member) and
//! hands runs out per [`schedule`]: one run at a time per handler, events
//! about one member in order across handlers, everything else in parallel.
//! Runs are tasks of their own, so a slow handler never blocks gossip, nor
//! other handlers except for later events about the members it is running.
//! Scripts get Serf's environment (`SERF_EVENT`, `SERF_SELF_NAME`,
//! `SERF_SELF_ROLE`, `SERF_TAG_*`, and the same with `SHOAL_`) and stdin lines
//! `name<TAB>ip<TAB>role<TAB>k=v,k=v`.

pub mod coalesce;
pub mod schedule;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::agent::Handle;
use crate::membership::EventKind;
use coalesce::Coalescer;
use schedule::{Keyed, Schedule};
use shoal_contract::{tags, Event, Member};

/// Members queued per handler before the oldest is dropped (and logged).
pub const MAX_PENDING: usize = 4096;
/// Coalescing: events are passed on once none came for this long...
pub const COALESCE_QUIET: Duration = Duration::from_millis(100);
/// ... or at the latest this long after the first one held.
pub const COALESCE_MAX: Duration = Duration::from_secs(1);
/// Output kept from a handler, for the log.
const OUTPUT_CAP: usize = 4096;
/// A handler running longer than this is logged as slow (it keeps running).
const SLOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq)]
pub struct HandlerSpec {
    /// None: every event.
    pub filter: Option<Vec<EventKind>>,
    pub command: String,
}

impl HandlerSpec {
    /// `member-join,member-leave=/path/cmd` or just `/path/cmd`.
    pub fn parse(s: &str) -> Result<HandlerSpec, String> {
        if let Some((head, cmd)) = s.split_once('=') {
            let kinds: Option<Vec<EventKind>> = head.split(',').map(EventKind::parse).collect();
            match kinds {
                Some(kinds) if !kinds.is_empty() => {
                    if cmd.trim().is_empty() {
                        return Err(format!("{s:?}: no command after the filter"));
                    }
                    return Ok(HandlerSpec {
                        filter: Some(kinds),
                        command: cmd.to_string(),
                    });
                }
                _ if head.starts_with("member-") || head.starts_with("user") || head == "query" => {
                    return Err(format!(
                        "{s:?}: unknown event in filter {head:?}; use member-join, member-leave, \
                         member-failed, member-update, member-reap"
                    ));
                }
                _ => {}
            }
        }
        if s.trim().is_empty() {
            return Err("empty handler command".into());
        }
        Ok(HandlerSpec {
            filter: None,
            command: s.to_string(),
        })
    }

    pub fn matches(&self, kind: &str) -> bool {
        match &self.filter {
            None => true,
            Some(kinds) => kinds.iter().any(|k| k.as_str() == kind),
        }
    }
}

/// One stdin line, as Serf writes it.
pub fn stdin_line(m: &Member) -> String {
    let ip = m
        .addr
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| m.addr.clone());
    let role = m.tags.get(tags::ROLE).cloned().unwrap_or_default();
    let tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}\t{}\t{}\t{}\n", m.name, ip, role, tags.join(","))
}

/// The handler environment for an event of `kind` on this node.
pub fn environment(kind: &str, local: &crate::identity::NodeId) -> Vec<(String, String)> {
    let role = local.tags.get(tags::ROLE).cloned().unwrap_or_default();
    let mut env = Vec::new();
    for prefix in ["SERF", "SHOAL"] {
        env.push((format!("{prefix}_EVENT"), kind.to_string()));
        env.push((format!("{prefix}_SELF_NAME"), local.name.clone()));
        env.push((format!("{prefix}_SELF_ROLE"), role.clone()));
        for (k, v) in &local.tags {
            let key: String = k
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            env.push((format!("{prefix}_TAG_{key}"), v.clone()));
        }
    }
    env
}

impl Keyed for Arc<Event> {
    fn member(&self) -> &str {
        &self.member.name
    }
    fn index(&self) -> u64 {
        self.index
    }
    fn kind(&self) -> &str {
        self.kind.as_str()
    }
}

/// Starts the dispatcher, fed from the agent's event log.
pub fn start(agent: &Handle, specs: Vec<HandlerSpec>, timeout: Duration) {
    if specs.is_empty() {
        return;
    }
    // Include the events already logged (our own join) so handlers see them.
    let events = agent.subscribe_events(0);
    let (backlog, rx) = (events.backlog, events.live);
    let agent = agent.clone();
    tokio::spawn(dispatch(specs, agent, backlog, rx, timeout));
}

/// Reads events, coalesces them and starts the runs the schedule allows.
/// Never waits for a run: runs are tasks reported back through `runs`.
async fn dispatch(
    specs: Vec<HandlerSpec>,
    agent: Handle,
    backlog: Vec<Arc<Event>>,
    mut rx: broadcast::Receiver<Arc<Event>>,
    timeout: Duration,
) {
    let mut schedule: Schedule<Arc<Event>> = Schedule::new(&specs, MAX_PENDING);
    let specs: Vec<Arc<HandlerSpec>> = specs.into_iter().map(Arc::new).collect();
    let mut held = Coalescer::new(COALESCE_QUIET, COALESCE_MAX);
    let mut last = 0;
    for e in backlog {
        last = e.index;
        held.push(&e.member.name.clone(), e, Instant::now());
    }
    let mut runs: JoinSet<()> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut open = true;
    loop {
        if held.len() >= MAX_PENDING {
            offer_all(&mut schedule, held.flush());
        }
        for (h, batch) in schedule.next_runs() {
            let spec = specs[h].clone();
            let local = agent.local();
            let task = runs.spawn(async move { run_once(h, &spec, batch, &local, timeout).await });
            running.insert(task.id(), h);
        }
        let deadline = held.deadline().map(tokio::time::Instant::from_std);
        tokio::select! {
            r = rx.recv(), if open => match r {
                Ok(e) => {
                    if e.index > last {
                        last = e.index;
                        held.push(&e.member.name.clone(), e, Instant::now());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(k)) => {
                    warn!(skipped = k, "event handlers fell behind the event log; events skipped");
                }
                Err(broadcast::error::RecvError::Closed) => open = false,
            },
            _ = sleep_until_some(deadline), if deadline.is_some() => {
                offer_all(&mut schedule, held.flush_due(Instant::now()));
            }
            Some(done) = runs.join_next_with_id(), if !runs.is_empty() => {
                let id = match &done {
                    Ok((id, ())) => *id,
                    Err(e) => {
                        warn!(error = %e, "an event handler run ended abnormally");
                        e.id()
                    }
                };
                if let Some(h) = running.remove(&id) {
                    schedule.finished(h);
                }
            }
            else => return,
        }
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn offer_all(schedule: &mut Schedule<Arc<Event>>, events: Vec<Arc<Event>>) {
    for e in events {
        for h in schedule.offer(e) {
            warn!(
                handler = h,
                max = MAX_PENDING,
                "event handler queue full; oldest member event dropped"
            );
        }
    }
}

async fn run_once(
    n: usize,
    spec: &HandlerSpec,
    batch: Vec<Arc<Event>>,
    local: &crate::identity::NodeId,
    timeout: Duration,
) {
    let kind = batch[0].kind.as_str();
    let stdin: String = batch.iter().map(|e| stdin_line(&e.member)).collect();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c").arg(&spec.command);
    cmd.envs(environment(kind, local));
    let started = Instant::now();
    match crate::process::run_captured(cmd, stdin.into_bytes(), timeout, OUTPUT_CAP).await {
        Ok(out) => {
            let took = started.elapsed();
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if out.timed_out {
                warn!(handler = n, event = kind, command = %spec.command, ?timeout, stderr_tail = %stderr, "event handler timed out and was killed");
            } else if !out.status.success() {
                warn!(handler = n, event = kind, command = %spec.command, exit = %out.status, stderr_tail = %stderr, "event handler failed");
            } else if took > SLOW {
                warn!(handler = n, event = kind, command = %spec.command, took_ms = took.as_millis() as u64, "slow event handler");
            } else {
                info!(
                    handler = n,
                    event = kind,
                    members = batch.len(),
                    took_ms = took.as_millis() as u64,
                    "event handler ran"
                );
            }
        }
        Err(e) => {
            warn!(handler = n, command = %spec.command, error = %e, "cannot start event handler")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags::Tags;

    #[test]
    fn parses_filters_like_serf() {
        let h = HandlerSpec::parse("member-join,member-leave=/bin/handler arg").unwrap();
        assert_eq!(h.filter.as_ref().unwrap().len(), 2);
        assert_eq!(h.command, "/bin/handler arg");
        assert!(h.matches("member-join") && !h.matches("member-failed"));
        let all = HandlerSpec::parse("echo a=b").unwrap();
        assert!(all.filter.is_none() && all.matches("member-reap"));
        assert!(HandlerSpec::parse("member-jion=/x")
            .unwrap_err()
            .contains("unknown event"));
        assert!(HandlerSpec::parse("member-join=").is_err());
    }

    #[test]
    fn stdin_lines_match_serf() {
        let mut tags = Tags::new();
        tags.insert("role".into(), "web".into());
        tags.insert("port".into(), "3000".into());
        let m = Member {
            name: "web-1".into(),
            addr: "10.0.0.5:7946".into(),
            status: shoal_contract::Status::Alive,
            tags,
        };
        assert_eq!(stdin_line(&m), "web-1\t10.0.0.5\tweb\tport=3000,role=web\n");
    }

    #[test]
    fn environment_has_serf_and_shoal_names() {
        let mut tags = Tags::new();
        tags.insert("health-path".into(), "/h".into());
        let id = crate::identity::NodeId::new(
            "n1".into(),
            "10.0.0.1:7946".parse().unwrap(),
            tags,
            crate::identity::now_millis(),
        );
        let env = environment("member-join", &id);
        assert!(env.contains(&("SERF_EVENT".into(), "member-join".into())));
        assert!(env.contains(&("SHOAL_SELF_NAME".into(), "n1".into())));
        assert!(env.contains(&("SERF_TAG_HEALTH_PATH".into(), "/h".into())));
    }
}

//! Serf-compatible event handlers: `--event-handler [FILTER=]CMD`.
//!
//! Each handler has its own task and queue, so a slow handler delays only its
//! own later events, never gossip or other handlers. Events of the same kind
//! that queued up while the handler ran are passed together (one stdin line
//! per member), as Serf's coalescing does. Scripts get Serf's environment
//! (`SERF_EVENT`, `SERF_SELF_NAME`, `SERF_SELF_ROLE`, `SERF_TAG_*`, and the same
//! with `SHOAL_`) and stdin lines `name<TAB>ip<TAB>role<TAB>k=v,k=v`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::agent::Handle;
use crate::events::{EventRecord, MemberView};
use crate::membership::EventKind;

/// Events queued per handler before the oldest are dropped (and logged).
pub const MAX_QUEUE: usize = 4096;
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
pub fn stdin_line(m: &MemberView) -> String {
    let ip = m
        .addr
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| m.addr.clone());
    let role = m.tags.get("role").cloned().unwrap_or_default();
    let tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}\t{}\t{}\t{}\n", m.name, ip, role, tags.join(","))
}

/// The handler environment for an event of `kind` on this node.
pub fn environment(kind: &str, local: &crate::identity::NodeId) -> Vec<(String, String)> {
    let role = local.tags.get("role").cloned().unwrap_or_default();
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

/// Starts one task per handler, fed from the agent's event log.
pub fn start(agent: &Handle, specs: Vec<HandlerSpec>, timeout: Duration) {
    for (n, spec) in specs.into_iter().enumerate() {
        let (backlog, rx) = {
            let shared = agent.lock();
            // Include the events already logged (our own join) so handlers see them.
            shared.events.subscribe_after(0)
        };
        let agent = agent.clone();
        tokio::spawn(run_handler(n, Arc::new(spec), agent, backlog, rx, timeout));
    }
}

async fn run_handler(
    n: usize,
    spec: Arc<HandlerSpec>,
    agent: Handle,
    backlog: Vec<Arc<EventRecord>>,
    mut rx: broadcast::Receiver<Arc<EventRecord>>,
    timeout: Duration,
) {
    let mut queue: VecDeque<Arc<EventRecord>> = backlog.into_iter().collect();
    let mut last = queue.back().map(|e| e.index).unwrap_or(0);
    loop {
        // Take everything that arrived while we were busy, without waiting.
        loop {
            match rx.try_recv() {
                Ok(e) => {
                    if e.index > last {
                        last = e.index;
                        queue.push_back(e);
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(k)) => {
                    warn!(
                        handler = n,
                        skipped = k,
                        "event handler fell behind; events skipped"
                    );
                }
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Closed) => return,
            }
        }
        while queue.len() > MAX_QUEUE {
            queue.pop_front();
            warn!(
                handler = n,
                "event handler queue full; oldest event dropped"
            );
        }
        queue.retain(|e| spec.matches(e.kind));
        let Some(first) = queue.pop_front() else {
            match rx.recv().await {
                Ok(e) => {
                    if e.index > last {
                        last = e.index;
                        queue.push_back(e);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(k)) => {
                    warn!(
                        handler = n,
                        skipped = k,
                        "event handler fell behind; events skipped"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
            continue;
        };
        // Coalesce: consecutive events of the same kind go in one run.
        let mut batch = vec![first];
        while queue.front().is_some_and(|e| e.kind == batch[0].kind) {
            if let Some(e) = queue.pop_front() {
                batch.push(e);
            }
        }
        let local = agent.local();
        run_once(n, &spec, batch, &local, timeout).await;
    }
}

async fn run_once(
    n: usize,
    spec: &HandlerSpec,
    batch: Vec<Arc<EventRecord>>,
    local: &crate::identity::NodeId,
    timeout: Duration,
) {
    let kind = batch[0].kind;
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
        let m = MemberView {
            name: "web-1".into(),
            addr: "10.0.0.5:7946".into(),
            status: "alive".into(),
            tags,
        };
        assert_eq!(stdin_line(&m), "web-1\t10.0.0.5\tweb\tport=3000,role=web\n");
    }

    #[test]
    fn environment_has_serf_and_shoal_names() {
        let mut tags = Tags::new();
        tags.insert("health-path".into(), "/h".into());
        let id = crate::identity::NodeId::new("n1".into(), "10.0.0.1:7946".parse().unwrap(), tags);
        let env = environment("member-join", &id);
        assert!(env.contains(&("SERF_EVENT".into(), "member-join".into())));
        assert!(env.contains(&("SHOAL_SELF_NAME".into(), "n1".into())));
        assert!(env.contains(&("SERF_TAG_HEALTH_PATH".into(), "/h".into())));
    }
}

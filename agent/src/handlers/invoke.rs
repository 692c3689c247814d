//! One handler run, as Serf invokes it: `/bin/sh -c CMD` with Serf's
//! environment (`SERF_EVENT`, `SERF_SELF_NAME`, `SERF_SELF_ROLE`, `SERF_TAG_*`,
//! and the same with `SHOAL_`), one stdin line per member
//! (`name<TAB>ip<TAB>role<TAB>k=v,k=v`), output capped, a timeout that kills
//! its process group, and a warning for slow or failing scripts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_contract::{tags, Event, Member};
use tracing::{info, warn};

use super::filter::HandlerSpec;
use crate::metrics::{Metrics, RunResult};

/// Output kept from a handler, for the log.
const OUTPUT_CAP: usize = 4096;
/// A handler running longer than this is logged as slow (it keeps running).
const SLOW: Duration = Duration::from_secs(1);

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

/// Logs what a handler wrote, stdout and stderr, naming handler and event
/// (Serf logs script output too).
pub fn log_output(n: usize, event: &str, out: &crate::process::CapturedOutput) {
    for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end();
        if !text.is_empty() {
            info!(handler = n, event, stream, output = %text, "event handler output");
        }
    }
}

/// Runs `spec` once for a batch of events of one kind; logs how it went.
pub(super) async fn run_once(
    n: usize,
    spec: &HandlerSpec,
    batch: Vec<Arc<Event>>,
    local: &crate::identity::NodeId,
    timeout: Duration,
    metrics: &Metrics,
) {
    let kind = batch[0].kind.as_str();
    let stdin: String = batch.iter().map(|e| stdin_line(&e.member)).collect();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c").arg(&spec.command);
    cmd.envs(environment(kind, local));
    let started = Instant::now();
    match crate::process::run_captured(cmd, stdin.into_bytes(), timeout, OUTPUT_CAP).await {
        Ok(out) => {
            log_output(n, kind, &out);
            let took = started.elapsed();
            let result = if out.timed_out {
                RunResult::Timeout
            } else if out.status.success() {
                RunResult::Ok
            } else {
                RunResult::Failed
            };
            metrics.handler_run(result, took);
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
            metrics.handler_run(RunResult::Error, started.elapsed());
            warn!(handler = n, command = %spec.command, error = %e, "cannot start event handler")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags::Tags;

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

//! `lbgen watch`: one task owns the state; sources only signal. Each debounced batch of
//! signals (or a retry, or a periodic resync) takes a full snapshot and hands it to the
//! [`Applier`], which makes it live or leaves everything as it was.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::time::Instant;

use crate::apply::{Applier, ApplyError, ApplyOutcome};
use crate::extras::Extras;
use crate::model::Model;
use crate::output::CheckCmd;
use crate::render::Vars;
use crate::source::{watch_file, Signal, Source, SourceSpec};
use crate::Error;

/// `--wait MIN:MAX`: apply once no signal arrived for MIN, but at most MAX after the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub min: Duration,
    pub max: Duration,
}

impl Wait {
    /// `MIN[:MAX]`, e.g. `100ms:2s`; MAX defaults to 4 × MIN (as in consul-template).
    pub fn parse(s: &str) -> Result<Wait, Error> {
        let (a, b) = match s.split_once(':') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let min = parse_duration(a)?;
        let max = match b {
            Some(b) => parse_duration(b)?,
            None => min * 4,
        };
        if max < min {
            return Err(Error::new(format!("--wait {s}: MAX is smaller than MIN")));
        }
        Ok(Wait { min, max })
    }
}

/// The contract's one duration syntax ([`shoal_contract::duration`]): `250ms`, `1.5s`,
/// `2m`, `24h`, `1d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, Error> {
    shoal_contract::parse_duration(s).map_err(|e| Error::new(e.to_string()))
}

pub struct WatchConfig {
    /// None = the compiled-in default template.
    pub template: Option<PathBuf>,
    pub vars: Vars,
    pub out: PathBuf,
    pub source: SourceSpec,
    /// None = only write the file (no reload).
    pub master: Option<PathBuf>,
    pub check: Option<CheckCmd>,
    pub wait: Wait,
    pub reload_timeout: Duration,
    /// Re-check everything this often even without a signal (a missed event, HAProxy
    /// restarted by its supervisor from another config, the file changed by someone else).
    /// None = never.
    pub resync: Option<Duration>,
    /// `--render`: more files rendered from each snapshot after the HAProxy apply.
    pub renders: Vec<crate::extras::ExtraSpec>,
    /// Every apply is reported here too (tests, benchmarks); a periodic resync only when it
    /// changed something.
    pub reports: Option<UnboundedSender<Report>>,
}

/// One apply, as reported on [`WatchConfig::reports`].
#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: ApplyOutcome,
    /// When the first signal of this batch arrived.
    pub signalled: Instant,
    /// When the change was live in HAProxy (new worker verified / runtime commands answered),
    /// or when the attempt ended for other outcomes.
    pub done: Instant,
}

/// First retry after a transient failure (agent or master socket unreachable); doubles up
/// to [`RETRY_MAX`] while failures continue.
const RETRY: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Runs until `shutdown` resolves. Startup problems (template, paths, master socket) are
/// returned as one error before anything is touched. This loop only decides *when* to apply
/// (debounce, retry, resync); the [`Applier`] decides *how*.
pub async fn run(cfg: WatchConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let mut applier = Applier::new(&cfg)?;
    let mut extras = Extras::new(cfg.renders.clone())?;
    if let Some(o) = extras.outputs().find(|o| *o == cfg.out) {
        return Err(Error::new(format!(
            "--render into {} would overwrite the HAProxy config (--out)",
            o.display()
        )));
    }
    tokio::pin!(shutdown);
    if let Some(m) = applier.master() {
        // HAProxy may still be starting, or its socket file be left from a previous run.
        let p = tokio::select! {
            p = m.wait_ready() => p?,
            _ = &mut shutdown => {
                tracing::info!("shutting down (the haproxy master socket never answered)");
                return Ok(());
            }
        };
        tracing::info!(master = p.master_pid, worker = ?p.current_worker(), "haproxy master reachable");
    }
    let (tx, mut rx) = unbounded_channel();
    let source = Source::new(cfg.source.clone());
    let _template_watch = match &cfg.template {
        Some(p) => Some(watch_file(p, tx.clone(), Signal::Template)?),
        None => None,
    };
    // An edited --render template is picked up by the next snapshot: a members signal.
    let _extra_watches = extras
        .templates()
        .map(|p| watch_file(p, tx.clone(), Signal::Members))
        .collect::<Result<Vec<_>, _>>()?;
    let _source = source.start(tx.clone())?;
    tracing::info!(source = %source.describe(), out = %cfg.out.display(), "watching");
    // (first signal, quiet deadline)
    let mut pending: Option<(Instant, Instant)> = None;
    let mut retry_at: Option<(Instant, Instant)> = None;
    let mut retry_delay = RETRY;
    let mut resync_at = cfg.resync.map(|d| Instant::now() + d);
    loop {
        let apply_at = match (pending, retry_at) {
            (Some((first, quiet)), _) => Some(quiet.min(first + cfg.wait.max)),
            (None, Some((_, at))) => Some(at),
            (None, None) => None,
        };
        let deadline = match (apply_at, resync_at) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        };
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                return Ok(());
            }
            sig = rx.recv() => {
                let Some(sig) = sig else {
                    return Err(Error::new("membership source stopped"));
                };
                if sig == Signal::Template {
                    applier.template_changed();
                }
                let now = Instant::now();
                let first = pending.map_or(now, |p| p.0);
                pending = Some((first, now + cfg.wait.min));
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                let is_resync = apply_at.is_none_or(|a| a > Instant::now());
                if is_resync {
                    tracing::debug!("periodic resync");
                }
                let signalled = pending.take().map(|p| p.0)
                    .or(retry_at.map(|r| r.0))
                    .unwrap_or_else(Instant::now);
                retry_at = None;
                resync_at = cfg.resync.map(|d| Instant::now() + d);
                let started = Instant::now();
                let result = match source.snapshot().await {
                    Ok(doc) => {
                        let applied = applier.apply(&doc).await;
                        // After HAProxy's apply, so they never delay it, whatever it did.
                        if !extras.is_empty() {
                            extras.render(&Model::build(&doc), &cfg.vars);
                        }
                        applied
                    }
                    Err(e) => Err(ApplyError::Transient(e)),
                };
                let (outcome, live_at) = match result {
                    Ok(done) => {
                        retry_delay = RETRY;
                        tracing::debug!(outcome = ?done.outcome, took_ms = started.elapsed().as_millis() as u64, "applied");
                        (done.outcome, done.live_at)
                    }
                    Err(ApplyError::Permanent(e)) => {
                        tracing::error!(error = %e, "change not applied; live config kept");
                        (ApplyOutcome::Failed(e.0), None)
                    }
                    Err(ApplyError::Logged(e)) => (ApplyOutcome::Failed(e.0), None),
                    Err(ApplyError::Transient(e) | ApplyError::Refused(e)) => {
                        tracing::error!(error = %e, retry_in = ?retry_delay, "change not applied; live config kept");
                        retry_at = Some((signalled, Instant::now() + retry_delay));
                        retry_delay = (retry_delay * 2).min(RETRY_MAX);
                        (ApplyOutcome::Failed(e.0), None)
                    }
                };
                if is_resync && outcome == ApplyOutcome::Unchanged {
                    continue;
                }
                if let Some(r) = &cfg.reports {
                    let done = live_at.unwrap_or_else(Instant::now);
                    let _ = r.send(Report { outcome, signalled, done });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_and_durations() {
        assert_eq!(
            Wait::parse("100ms:2s").unwrap(),
            Wait {
                min: Duration::from_millis(100),
                max: Duration::from_secs(2)
            }
        );
        assert_eq!(Wait::parse("1").unwrap().max, Duration::from_secs(4));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(Wait::parse("2s:1s").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}

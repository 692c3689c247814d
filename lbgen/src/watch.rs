//! `lbgen watch`: one task owns the state; sources only signal. Each debounced batch of
//! signals runs: snapshot → model → render → plan → (runtime API | check + write + reload).
//! On any failure the live config file and the running HAProxy stay as they were.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::time::Instant;

use crate::haproxy::{Master, ReloadError};
use crate::model::{sanitize_for_log, Model};
use crate::output::{restore, write_atomic, CheckCmd};
use crate::plan::{Live, Plan};
use crate::render::{Renderer, Vars};
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
    /// Every apply is reported here too (tests, benchmarks); a periodic resync only when it
    /// changed something.
    pub reports: Option<UnboundedSender<Report>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// New config written and a new worker generation verified running.
    Reloaded { worker: u32 },
    /// Only server states changed: applied through the runtime API, no reload.
    Runtime { commands: Vec<String> },
    /// Written (no `--haproxy-master` configured).
    Written,
    /// Rendered output identical to the live config: nothing done.
    Unchanged,
    /// Nothing changed on disk or in HAProxy; the reason.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: Outcome,
    /// When the first signal of this batch arrived.
    pub signalled: Instant,
    /// When the change was live in HAProxy (new worker verified / runtime commands answered),
    /// or when the attempt ended for other outcomes.
    pub done: Instant,
}

struct State {
    /// The last template whose output was accepted (or the start-up one).
    renderer: Renderer,
    /// The template file changed since the last apply.
    template_dirty: bool,
    /// The source of the last template rejected (it did not render, failed the check, or
    /// HAProxy refused its config at reload): not tried again until the file differs.
    rejected_template: Option<String>,
    /// The last model built, to log only new warnings.
    last_model: Option<Model>,
    applied: Applied,
}

/// What is live.
struct Applied {
    /// Contents of the live file (what HAProxy runs, modulo runtime changes).
    text: Option<String>,
    /// What HAProxy runs; None until the first verified reload.
    live: Option<Live>,
    /// The HAProxy master that `live` describes; another PID means HAProxy was restarted.
    master_pid: Option<u32>,
}

/// Whether a failure is worth retrying without a new signal.
enum Failure {
    Transient(Error),
    Permanent(Error),
    /// HAProxy refused the reload: the old worker serves on, unchanged, so `Applied::live`
    /// still describes it. Retried like a transient failure.
    Refused(Error),
    /// Already logged where it happened (a rejected template): only reported.
    Logged(Error),
}

fn load_renderer(p: &Option<PathBuf>) -> Result<Renderer, Error> {
    match p {
        Some(p) => Renderer::from_file(p),
        None => Ok(Renderer::builtin()),
    }
}

/// Logs what validation skipped (network input, so sanitized).
pub fn log_model(model: &Model) {
    log_model_changes(model, None);
}

/// Logs skipped members and warnings, but only those not already logged for `previous`
/// (a periodic resync must not repeat the same warnings forever).
fn log_model_changes(model: &Model, previous: Option<&Model>) {
    if let Some(p) = previous {
        if p.rejected == model.rejected && p.conflicts == model.conflicts {
            return;
        }
    }
    for r in &model.rejected {
        tracing::warn!(member = %sanitize_for_log(&r.member), reason = %r.reason, "member skipped");
    }
    for c in &model.conflicts {
        tracing::warn!(pool = %c.pool, member = %c.member, setting = %c.setting, "{c}");
    }
}

/// First retry after a transient failure (agent or master socket unreachable); doubles up
/// to [`RETRY_MAX`] while failures continue.
const RETRY: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Runs until `shutdown` resolves. Startup problems (template, paths, master socket) are
/// returned as one error before anything is touched.
pub async fn run(cfg: WatchConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let renderer = load_renderer(&cfg.template)?;
    let master = cfg.master.as_ref().map(Master::new);
    tokio::pin!(shutdown);
    if let Some(m) = &master {
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
    let _source = source.start(tx.clone())?;
    tracing::info!(source = %source.describe(), out = %cfg.out.display(), "watching");
    let mut st = State {
        renderer,
        template_dirty: false,
        rejected_template: None,
        last_model: None,
        applied: Applied {
            text: None,
            live: None,
            master_pid: None,
        },
    };
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
                    st.template_dirty = true;
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
                let mut live_at = None;
                let started = Instant::now();
                let outcome = match apply(&cfg, &source, master.as_ref(), &mut st, &mut live_at).await {
                    Ok(o) => {
                        retry_delay = RETRY;
                        tracing::debug!(outcome = ?o, took_ms = started.elapsed().as_millis() as u64, "applied");
                        o
                    }
                    Err(Failure::Permanent(e)) => {
                        tracing::error!(error = %e, "change not applied; live config kept");
                        Outcome::Failed(e.0)
                    }
                    Err(Failure::Logged(e)) => Outcome::Failed(e.0),
                    Err(Failure::Transient(e) | Failure::Refused(e)) => {
                        tracing::error!(error = %e, retry_in = ?retry_delay, "change not applied; live config kept");
                        retry_at = Some((signalled, Instant::now() + retry_delay));
                        retry_delay = (retry_delay * 2).min(RETRY_MAX);
                        Outcome::Failed(e.0)
                    }
                };
                if is_resync && outcome == Outcome::Unchanged {
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

async fn apply(
    cfg: &WatchConfig,
    source: &Source,
    master: Option<&Master>,
    st: &mut State,
    live_at: &mut Option<Instant>,
) -> Result<Outcome, Failure> {
    let doc = source.snapshot().await.map_err(Failure::Transient)?;
    let model = Model::build(&doc);
    log_model_changes(&model, st.last_model.as_ref());
    st.last_model = Some(model.clone());
    // Compare against what is really on disk (someone, e.g. a supervisor's start-up script,
    // may have rewritten it) ...
    st.applied.text = std::fs::read_to_string(&cfg.out).ok();
    // ... and against the HAProxy that really runs (restarted = unknown config).
    if let Some(m) = master {
        let p = m.show_proc().await.map_err(Failure::Transient)?;
        if st.applied.master_pid != Some(p.master_pid) {
            if st.applied.master_pid.is_some() {
                tracing::warn!(
                    master = p.master_pid,
                    "haproxy was restarted; reloading to be sure"
                );
            }
            st.applied.live = None;
            st.applied.master_pid = Some(p.master_pid);
        }
    }
    if !std::mem::take(&mut st.template_dirty) {
        return apply_with(
            cfg,
            &st.renderer,
            false,
            &model,
            master,
            &mut st.applied,
            live_at,
        )
        .await;
    }
    // The template file changed. Its output must render, pass the check and be loaded by
    // HAProxy before it replaces the last good template; if it fails, the membership is
    // applied with the last good template and the template's problem is logged, once.
    let (src, candidate) = match read_template(cfg.template.as_deref()) {
        Ok(Some(src)) if st.rejected_template.as_ref() == Some(&src) => {
            tracing::debug!("template file touched but unchanged since it was rejected");
            return apply_with(
                cfg,
                &st.renderer,
                false,
                &model,
                master,
                &mut st.applied,
                live_at,
            )
            .await;
        }
        Ok(Some(src)) => {
            let name = cfg
                .template
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let r = Renderer::from_source(&name, &src);
            (Some(src), r)
        }
        Ok(None) => (None, Ok(Renderer::builtin())),
        Err(e) => (None, Err(e)),
    };
    let template_err = match candidate {
        Ok(candidate) => {
            match apply_with(
                cfg,
                &candidate,
                true,
                &model,
                master,
                &mut st.applied,
                live_at,
            )
            .await
            {
                Ok(o) => {
                    tracing::info!("template reloaded");
                    st.renderer = candidate;
                    st.rejected_template = None;
                    return Ok(o);
                }
                Err(Failure::Transient(e)) => {
                    // Not the template's fault: try it again on the retry.
                    st.template_dirty = true;
                    return Err(Failure::Transient(e));
                }
                Err(Failure::Refused(e)) => Error::new(format!(
                    "template {}: its config passed the check, but {e}",
                    cfg.template
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                )),
                Err(Failure::Permanent(e) | Failure::Logged(e)) => e,
            }
        }
        Err(e) => e,
    };
    st.rejected_template = src;
    tracing::error!(
        error = %template_err,
        "new template rejected; the last good template stays in use until the file changes"
    );
    match apply_with(
        cfg,
        &st.renderer,
        false,
        &model,
        master,
        &mut st.applied,
        live_at,
    )
    .await?
    {
        Outcome::Unchanged => Err(Failure::Logged(template_err)),
        o => Ok(o),
    }
}

/// The template file's source (None = the compiled-in template).
fn read_template(p: Option<&Path>) -> Result<Option<String>, Error> {
    p.map(|p| {
        std::fs::read_to_string(p).map_err(|e| Error::new(format!("template {}: {e}", p.display())))
    })
    .transpose()
}

/// Renders `model` with `renderer` and makes it live. Mutates `applied` only on success
/// (or, after a failed reload, to record that the live state is unknown).
async fn apply_with(
    cfg: &WatchConfig,
    renderer: &Renderer,
    template_changed: bool,
    model: &Model,
    master: Option<&Master>,
    applied: &mut Applied,
    live_at: &mut Option<Instant>,
) -> Result<Outcome, Failure> {
    let text = renderer
        .render(model, &cfg.vars)
        .map_err(Failure::Permanent)?;
    let same_text = applied.text.as_deref() == Some(text.as_str());

    let Some(master) = master else {
        if same_text {
            return Ok(Outcome::Unchanged);
        }
        write_atomic(&cfg.out, &text, cfg.check.as_ref())
            .await
            .map_err(Failure::Permanent)?;
        applied.text = Some(text);
        tracing::info!(out = %cfg.out.display(), "config written");
        return Ok(Outcome::Written);
    };

    let plan = match &applied.live {
        // The first apply always reloads: we cannot know what the running HAProxy loaded.
        None => Plan::Reload,
        Some(_) if same_text => return Ok(Outcome::Unchanged),
        Some(_) if template_changed => Plan::Reload,
        Some(live) => live.plan(model),
    };
    if let Plan::Runtime(cmds) = plan {
        match runtime(master, &cmds).await {
            Ok(()) => {
                *live_at = Some(Instant::now());
                if let Some(live) = applied.live.as_mut() {
                    live.apply_runtime(model);
                }
                tracing::info!(commands = ?cmds, "server states changed through the runtime API");
                // Keep the file in step so a later reload or restart agrees; the running
                // HAProxy already has the change.
                match write_atomic(&cfg.out, &text, cfg.check.as_ref()).await {
                    Ok(()) => applied.text = Some(text),
                    Err(e) => {
                        tracing::warn!(error = %e, "runtime change applied but config file not updated")
                    }
                }
                return Ok(Outcome::Runtime { commands: cmds });
            }
            Err(e) => tracing::warn!(error = %e, "runtime API change failed; reloading instead"),
        }
    }
    let t_write = Instant::now();
    write_atomic(&cfg.out, &text, cfg.check.as_ref())
        .await
        .map_err(Failure::Permanent)?;
    let t_reload = Instant::now();
    match master.reload(cfg.reload_timeout).await {
        Ok(p) => {
            *live_at = Some(Instant::now());
            let worker = p.current_worker().unwrap_or(0);
            tracing::info!(
                worker,
                reloads = p.reloads,
                pools = model.pools.len(),
                check_write_ms = (t_reload - t_write).as_millis() as u64,
                reload_ms = t_reload.elapsed().as_millis() as u64,
                "config live (reloaded)"
            );
            applied.live = Some(Live::from_model(model));
            applied.text = Some(text);
            Ok(Outcome::Reloaded { worker })
        }
        Err(ReloadError::Refused(e)) => {
            restore_last_good(&cfg.out, applied.text.as_deref());
            // The old worker serves on with what `applied.live` describes, so later state
            // changes (drains) still go through the runtime API.
            Err(Failure::Refused(e))
        }
        Err(ReloadError::Unconfirmed(e)) => {
            restore_last_good(&cfg.out, applied.text.as_deref());
            // We no longer know exactly what runs: force a reload on the next change.
            applied.live = None;
            Err(Failure::Transient(e))
        }
    }
}

async fn runtime(master: &Master, cmds: &[String]) -> Result<(), Error> {
    for c in cmds {
        master.runtime(c).await?;
    }
    Ok(())
}

fn restore_last_good(out: &Path, last: Option<&str>) {
    match last {
        Some(text) => match restore(out, text) {
            Ok(()) => tracing::warn!(out = %out.display(), "restored the last good config"),
            Err(e) => tracing::error!(error = %e, "could not restore the last good config"),
        },
        None => tracing::warn!("no last good config to restore"),
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

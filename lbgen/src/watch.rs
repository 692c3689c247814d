//! `lbgen watch`: one task owns the state; sources only signal. A membership signal is tried
//! at once (after [`FAST_WINDOW`]) as a runtime-only change ([`Applier::apply_fast`]); what
//! needs a reload waits for the debounce, unless it is the first change that reloads after MIN
//! without one (it starts a burst: applied at once, the rest debounced); template changes wait. Each debounced batch of
//! signals (or a retry, or a periodic resync) takes a full snapshot and hands it to the
//! [`Applier`], which makes it live or leaves everything as it was. Between applies the
//! Applier's reaper deletes servers that left, every [`crate::apply::REAP_EVERY`].

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::time::Instant;

use crate::apply::{Applier, ApplyError, ApplyOutcome};
use crate::extras::Extras;
use crate::http::{error_class, StatusHub};
use crate::model::Model;
use crate::output::CheckCmd;
use crate::render::Vars;
use crate::source::{watch_dir, watch_file, Signal, Source, SourceSpec};
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
    /// How long a server that left its pool may keep its connections before they are shut
    /// down and it is deleted ([`LEAVING_MAX`] in `lbgen watch`).
    pub leaving_max: Duration,
    /// Re-check everything this often even without a signal (a missed event, HAProxy
    /// restarted by its supervisor from another config, the file changed by someone else).
    /// None = never.
    pub resync: Option<Duration>,
    /// `--render`: more files rendered from each snapshot after the HAProxy apply.
    pub renders: Vec<crate::extras::ExtraSpec>,
    /// `--local`: this node's member name for the `--render` files; None = ask the agent
    /// (`/v1/info`) once it answers.
    pub local: Option<String>,
    /// Every apply is reported here too (tests, benchmarks); a periodic resync only when it
    /// changed something.
    pub reports: Option<UnboundedSender<Report>>,
    /// `--http`: serve the status page, `/status.json`, `/metrics` and `/events` here
    /// (bound by the caller with [`crate::http::bind`], so a taken port fails at start-up).
    pub http: Option<std::net::TcpListener>,
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

/// A server that left its pool is deleted from HAProxy once its last connection closed, or
/// after this long with its sessions shut down.
pub const LEAVING_MAX: Duration = Duration::from_secs(300);

/// A membership signal is tried through the runtime API after this quiet window (events of
/// one burst become one batch); what needs a reload waits for the `--wait` debounce.
pub const FAST_WINDOW: Duration = Duration::from_millis(2);

/// A change in the certificate directory is read after this quiet window: a writer's
/// create + write + rename is one refresh.
pub const CERTS_QUIET: Duration = Duration::from_millis(50);

/// At start, the longest wait for HAProxy's master socket before the templates are compiled
/// anyway (a template error is reported by then even while HAProxy is down).
pub const COMPILE_DEFER_MAX: Duration = Duration::from_secs(2);

/// First retry after a transient failure (agent or master socket unreachable); doubles up
/// to [`RETRY_MAX`] while failures continue.
const RETRY: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The `--render` files from `doc`, after the HAProxy apply (they never delay it), as node
/// `local` sees them (asked from the agent until it is known).
async fn render_extras(
    extras: &mut Extras,
    local: &mut Option<String>,
    source: &Source,
    doc: &crate::model::MembersDoc,
    vars: &crate::render::Vars,
    policy: &crate::pool_tags::ListenPolicy,
) {
    if extras.is_empty() {
        return;
    }
    if local.is_none() {
        *local = source.local_name().await;
    }
    let model = Model::build_with(doc, policy).with_local(doc, local.as_deref());
    extras.render(&model, vars);
}

/// HAProxy's master socket answering ([`crate::haproxy::Master::wait_ready`]), or None
/// (logged) when `shutdown` resolves first.
async fn ready_or_shutdown(
    master: &crate::haproxy::Master,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<Result<crate::haproxy::ProcInfo, Error>> {
    tokio::select! {
        p = master.wait_ready() => Some(p),
        _ = shutdown.as_mut() => {
            tracing::info!("shutting down (the haproxy master socket never answered)");
            None
        }
    }
}

/// Runs until `shutdown` resolves. Startup problems (template, paths, master socket) are
/// returned as one error before anything is touched. This loop only decides *when* to apply
/// (debounce, retry, resync); the [`Applier`] decides *how*.
pub async fn run(mut cfg: WatchConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let source = Source::new(cfg.source.clone());
    let hub = cfg.http.as_ref().map(|_| {
        let master = cfg.master.as_ref().map(crate::haproxy::Master::new);
        StatusHub::new(source.describe(), master)
    });
    let _server = match (cfg.http.take(), &hub) {
        (Some(l), Some(h)) => Some(crate::http::spawn(l, h.clone())?),
        _ => None,
    };
    tokio::pin!(shutdown);
    // The templates are compiled once HAProxy answers (or after COMPILE_DEFER_MAX), not
    // before: at an LB's start, `lbgen render` compiles the same template for HAProxy's
    // first config and HAProxy parses it, on the cores Docker is busy with; this compile
    // is not on that path, so it waits its turn.
    let mut ready = None;
    if let Some(path) = &cfg.master {
        let first = crate::haproxy::Master::new(path);
        match tokio::time::timeout(COMPILE_DEFER_MAX, ready_or_shutdown(&first, &mut shutdown))
            .await
        {
            Ok(Some(p)) => ready = Some(p?),
            Ok(None) => return Ok(()),
            Err(_) => {} // still waiting: compile now, then wait on
        }
    }
    let mut applier = Applier::new(&cfg)?;
    let source = source.with_tap(hub.clone().map(|h| {
        std::sync::Arc::new(move |l: &shoal_contract::StreamLine| h.stream_line(l))
            as crate::source::EventTap
    }));
    let mut extras = Extras::new(cfg.renders.clone())?;
    // Which ports `listen=` tags may open: the same for the status page as for the config.
    let policy = crate::pool_tags::ListenPolicy::from_vars(&cfg.vars.0);
    if let Some(o) = extras.outputs().find(|o| *o == cfg.out) {
        return Err(Error::new(format!(
            "--render into {} would overwrite the HAProxy config (--out)",
            o.display()
        )));
    }
    if let Some(m) = applier.master() {
        // HAProxy may still be starting, or its socket file be left from a previous run.
        let p = match ready {
            Some(p) => p,
            None => match ready_or_shutdown(m, &mut shutdown).await {
                Some(p) => p?,
                None => return Ok(()),
            },
        };
        tracing::info!(master = p.master_pid, worker = ?p.current_worker(), "haproxy master reachable");
    }
    // The certificates before the first render: it opens the HTTPS port if there is one.
    refresh_certs(&mut applier, hub.as_ref()).await;
    let (tx, mut rx) = unbounded_channel();
    let _certs_watch = match applier.cert_dir() {
        Some(d) => Some(watch_dir(&d, tx.clone(), Signal::Certs)?),
        None => None,
    };
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
    // A membership signal not yet tried through the runtime API: (first signal, try at).
    let mut fast: Option<(Instant, Instant)> = None;
    // A certificate-directory change not yet read: when to read it.
    let mut certs_at: Option<Instant> = None;
    // When the last batch that needs a reload was signalled (see [`leads`]).
    let mut last_reload_signal: Option<Instant> = None;
    loop {
        let reap_at = applier.next_reap();
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
                let now = Instant::now();
                if sig == Signal::Certs {
                    certs_at = Some(now + CERTS_QUIET);
                    continue;
                }
                if sig == Signal::Template {
                    applier.template_changed();
                    fast = None;
                } else {
                    let first = fast.map_or(now, |f| f.0);
                    fast = Some((first, now + FAST_WINDOW));
                }
                let first = pending.map_or(now, |p| p.0);
                // The first apply (a reload: nothing is known of what HAProxy loaded) has no
                // earlier change to batch with: it goes at once, e.g. when the agent syncs.
                let quiet = if applier.first_apply_pending() { now } else { now + cfg.wait.min };
                pending = Some((first, quiet));
            }
            _ = tokio::time::sleep_until(fast.map_or_else(Instant::now, |f| f.1)), if fast.is_some() => {
                let Some((signalled, _)) = fast.take() else { continue };
                if applier.first_apply_pending() {
                    // The first apply (adopt what runs, or reload) is the debounce branch's,
                    // due at once: it is reported and shown. Taken here, as it was whenever the
                    // loop ran late enough for both to be due (`select!` picks at random), an
                    // adopted HAProxy read as "unchanged": no report, nothing on the page.
                    continue;
                }
                let started = Instant::now();
                let (doc, result) = match source.snapshot().await {
                    Ok(doc) => {
                        let result = applier.apply_fast(&doc).await;
                        (Some(doc), result)
                    }
                    Err(e) => (None, Err(ApplyError::Transient(e))),
                };
                // Anything but a runtime change (a reload, an error) is left to the debounce,
                // but for a reload that starts a burst: applied at once.
                if matches!(result, Ok(None)) {
                    let lead = leads(last_reload_signal, signalled, cfg.wait);
                    last_reload_signal = Some(signalled);
                    // Only when no earlier change waits in the debounce (this batch is its first).
                    if let Some(p) = pending.as_mut().filter(|p| lead && p.0 >= signalled) {
                        tracing::debug!("first change that reloads after a quiet spell: applied without the debounce");
                        p.1 = Instant::now();
                    }
                }
                if let Ok(Some(done)) = result {
                    // The whole snapshot is live: nothing left to debounce or retry.
                    pending = None;
                    retry_at = None;
                    retry_delay = RETRY;
                    // The status page shows the snapshot that is now live.
                    if let (Some(h), Some(doc)) = (&hub, &doc) {
                        h.snapshot_with(doc, &policy);
                    }
                    // The --render files follow this snapshot too (a new LB is a keepalived
                    // peer at once, not at the next resync); unchanged bytes write nothing.
                    if let Some(doc) = &doc {
                        render_extras(&mut extras, &mut cfg.local, &source, doc, &cfg.vars, &policy).await;
                    }
                    // A signal that changed nothing (a file event repeated) is not reported.
                    if done.outcome == ApplyOutcome::Unchanged {
                        continue;
                    }
                    tracing::debug!(outcome = ?done.outcome, "applied at once");
                    if let Some(h) = &hub {
                        h.applied(&done.outcome, None, started.elapsed());
                    }
                    if let Some(r) = &cfg.reports {
                        let _ = r.send(Report {
                            outcome: done.outcome,
                            signalled,
                            done: done.live_at.unwrap_or_else(Instant::now),
                        });
                    }
                }
            }
            _ = tokio::time::sleep_until(certs_at.unwrap_or_else(Instant::now)), if certs_at.is_some() => {
                certs_at = None;
                if refresh_certs(&mut applier, hub.as_ref()).await {
                    // The HTTPS listener opens or closes: a config change, debounced.
                    let now = Instant::now();
                    let first = pending.map_or(now, |p| p.0);
                    pending = Some((first, now + cfg.wait.min));
                }
            }
            _ = tokio::time::sleep_until(reap_at.unwrap_or_else(Instant::now)), if reap_at.is_some() => {
                applier.reap().await;
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                let is_resync = apply_at.is_none_or(|a| a > Instant::now());
                if is_resync {
                    tracing::debug!("periodic resync");
                    // A missed directory event is caught here too.
                    refresh_certs(&mut applier, hub.as_ref()).await;
                }
                let signalled = pending.take().map(|p| p.0)
                    .or(retry_at.map(|r| r.0))
                    .unwrap_or_else(Instant::now);
                // The first apply reloads: a change right after it is part of its burst.
                if applier.first_apply_pending() && last_reload_signal.is_none() {
                    last_reload_signal = Some(signalled);
                }
                retry_at = None;
                resync_at = cfg.resync.map(|d| Instant::now() + d);
                let started = Instant::now();
                let result = match source.snapshot().await {
                    Ok(doc) => {
                        if let Some(h) = &hub {
                            h.snapshot_with(&doc, &policy);
                        }
                        let applied = applier.apply(&doc).await;
                        // After HAProxy's apply, so they never delay it, whatever it did.
                        render_extras(&mut extras, &mut cfg.local, &source, &doc, &cfg.vars, &policy).await;
                        applied
                    }
                    Err(e) => Err(ApplyError::Transient(e)),
                };
                let failure = result.as_ref().err().map(error_class);
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
                if let Some(h) = &hub {
                    h.applied(&outcome, failure, started.elapsed());
                }
                if let Some(r) = &cfg.reports {
                    let done = live_at.unwrap_or_else(Instant::now);
                    let _ = r.send(Report { outcome, signalled, done });
                }
            }
        }
    }
}

/// One certificate refresh, recorded on the status page; true when the config must follow.
async fn refresh_certs(applier: &mut Applier, hub: Option<&StatusHub>) -> bool {
    let Some((changes, frame)) = applier.refresh_certs().await else {
        return false;
    };
    if let (Some(h), Some(v)) = (hub, applier.tls_view()) {
        h.tls(v);
    }
    if !changes.is_empty() {
        tracing::debug!(?changes, "certificates refreshed");
    }
    frame
}

/// Whether a change that needs a reload, signalled at `now`, starts a burst: no change that
/// needed one came for `wait.min` before it (or none yet). The debounce is there so a burst
/// is not a storm of reloads; the quiet it waits for has already been, so this one reloads at
/// once, and the reloading changes after it, within MIN of each other, wait for the debounce
/// as always. A burst so reloads at most twice (its first state, then its last), and a
/// scale-up from nothing is one reload for the new pool, runtime adds for the rest. Runtime
/// changes in between do not count: they never waited.
fn leads(last_reload_signal: Option<Instant>, now: Instant, wait: Wait) -> bool {
    last_reload_signal.is_none_or(|t| now.saturating_duration_since(t) >= wait.min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_min_after_the_last_one_leads_a_burst() {
        let wait = Wait::parse("200ms:2s").unwrap();
        let t = Instant::now();
        let ms = Duration::from_millis;
        assert!(leads(None, t, wait));
        assert!(leads(Some(t), t + ms(200), wait));
        assert!(leads(Some(t), t + ms(5000), wait));
        assert!(!leads(Some(t), t + ms(199), wait));
        assert!(!leads(Some(t), t, wait));
    }

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

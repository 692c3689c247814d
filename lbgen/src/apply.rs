//! How a change becomes live. The [`Applier`] owns what is live — the config text on disk,
//! what the running HAProxy has ([`Live`]), which master runs it — and the template in use;
//! [`crate::watch`] only decides *when* to call it.
//!
//! One apply: model → render → plan → (runtime API + write | check + write + state dump +
//! reload). On any failure the live config file and the running HAProxy stay as they were: a
//! reload HAProxy refused or did not confirm puts the last good config back in the file.
//! Between applies, [`Applier::reap`] deletes the servers that left once they are idle, and
//! closes the idle keep-alive connections of drained servers that serve no request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::certs::{CertDir, Changes};
use crate::haproxy::{Master, ReloadError};
use crate::layout::Layout;
use crate::model::{sanitize_for_log, MembersDoc, Model};
use crate::output::{restore, write_atomic, CheckCmd};
use crate::plan::{Key, Live, Plan};
use crate::pool_tags::ListenPolicy;
use crate::render::{Renderer, Vars};
use crate::watch::WatchConfig;
use crate::Error;

/// What one apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// New config written and a new worker generation verified running.
    Reloaded { worker: u32 },
    /// Only server lines changed: applied through the runtime API, file written, no reload.
    Runtime { commands: Vec<String> },
    /// Written (no `--haproxy-master` configured).
    Written,
    /// Rendered output identical to the live config: nothing done.
    Unchanged,
    /// Nothing changed on disk or in HAProxy; the reason.
    Failed(String),
}

/// A successful apply, and when its change was live in HAProxy (new worker verified, runtime
/// commands answered); None when nothing went live (written only, unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub outcome: ApplyOutcome,
    pub live_at: Option<Instant>,
}

impl Applied {
    fn live_now(outcome: ApplyOutcome) -> Applied {
        Applied {
            outcome,
            live_at: Some(Instant::now()),
        }
    }

    fn nothing_went_live(outcome: ApplyOutcome) -> Applied {
        Applied {
            outcome,
            live_at: None,
        }
    }
}

/// Why an apply changed nothing, and whether it is worth retrying without a new signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// The agent or the master socket did not answer, or a reload was not confirmed.
    Transient(Error),
    /// The same input will fail the same way (render error, failed check, unwritable file).
    Permanent(Error),
    /// HAProxy refused the reload: the old worker serves on, unchanged, so the Applier still
    /// knows what it runs. Retried like a transient failure.
    Refused(Error),
    /// Already logged where it happened (a rejected template): only reported.
    Logged(Error),
}

/// What is live.
#[derive(Default)]
struct LiveConfig {
    /// Contents of the live file (what HAProxy runs, modulo runtime changes).
    text: Option<String>,
    /// What HAProxy runs; None until the first verified reload.
    haproxy: Option<Live>,
    /// The HAProxy master that `haproxy` describes; another PID means HAProxy was restarted.
    master_pid: Option<u32>,
    /// This lbgen wrote the config file (then an HAProxy it finds running is not adopted).
    wrote: bool,
    /// The worker whose config [`crate::adopt`] last tried to prove (tried once per worker).
    adopt_tried: Option<u32>,
}

/// Applies members snapshots to the config file and the running HAProxy.
pub struct Applier {
    out: PathBuf,
    vars: Vars,
    check: Option<CheckCmd>,
    /// None = the compiled-in template.
    template: Option<PathBuf>,
    /// None = only write the file.
    master: Option<Master>,
    reload_timeout: Duration,
    /// The last template whose output was accepted (or the start-up one).
    renderer: Renderer,
    /// The template file changed since the last apply.
    template_dirty: bool,
    /// The source of the last template rejected (it did not render, failed the check, or
    /// HAProxy refused its config at reload): not tried again until the file differs.
    rejected_template: Option<String>,
    /// The last model built, to log only new warnings.
    last_model: Option<Model>,
    live: LiveConfig,
    /// When each server gone from the config (in maint, see [`Live::leaving`]) left it.
    leaving_since: BTreeMap<Key, Instant>,
    /// After this long a leaving server's sessions are shut down and it is deleted.
    leaving_max: Duration,
    last_reap: Instant,
    /// `tls_certs`: the certificate directory and lbgen's copies of it.
    certs: Option<CertDir>,
}

/// How often servers that left the config are tried for deletion, and drained servers for
/// idle connections to close.
pub const REAP_EVERY: Duration = Duration::from_millis(100);

/// What one pass of the reaper did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    /// `POOL/SERVER` deleted from HAProxy.
    pub deleted: Vec<String>,
    /// `POOL/SERVER` whose sessions were shut down (it outlived the maximum).
    pub forced: Vec<String>,
    /// Drained `POOL/SERVER` whose idle connections were closed (it served no request).
    pub idle_closed: Vec<String>,
}

impl Applier {
    /// Loads the template; a broken one is a start-up error. Touches nothing.
    pub fn new(cfg: &WatchConfig) -> Result<Applier, Error> {
        let renderer = match &cfg.template {
            Some(p) => Renderer::from_file(p)?,
            None => Renderer::builtin(),
        };
        let certs = match cfg.vars.tls_certs() {
            Some(dir) => Some(CertDir::new(
                Path::new(dir),
                Path::new(cfg.vars.tls_state_dir()),
                cfg.check.is_some(),
            )?),
            None => None,
        };
        Ok(Applier {
            certs,
            out: cfg.out.clone(),
            vars: cfg.vars.clone(),
            check: cfg.check.clone(),
            template: cfg.template.clone(),
            master: cfg.master.as_ref().map(Master::new),
            reload_timeout: cfg.reload_timeout,
            renderer,
            template_dirty: false,
            rejected_template: None,
            last_model: None,
            live: LiveConfig::default(),
            leaving_since: BTreeMap::new(),
            leaving_max: cfg.leaving_max,
            last_reap: Instant::now(),
        })
    }

    /// Brings the certificate copies, the crt-list and the running HAProxy in line with the
    /// certificate directory (runtime API, no reload). True when the config must change too:
    /// the first certificate opens the HTTPS port, the last one gone closes it (a reload).
    pub async fn refresh_certs(&mut self) -> Option<(Changes, bool)> {
        let certs = self.certs.as_mut()?;
        let changes = certs.refresh(self.master.as_ref()).await;
        let list = certs.crt_list_path().display().to_string();
        let has = certs.has_certs();
        let frame = self.vars.set_tls_crt_list(has.then_some(list.as_str()));
        if frame {
            tracing::info!(
                https = has,
                "the HTTPS listener changes with the certificates: the config follows"
            );
        }
        Some((changes, frame))
    }

    /// What the certificate directory gives now (None while TLS is off).
    pub fn tls_view(&self) -> Option<crate::http::hub::TlsView> {
        self.certs.as_ref().map(|c| crate::http::hub::TlsView {
            dir: c.src().display().to_string(),
            served: c.served(),
            refused: c.refused(),
        })
    }

    /// The certificate directory to watch, when TLS is on.
    pub fn cert_dir(&self) -> Option<PathBuf> {
        self.certs.as_ref().map(|c| c.src().to_path_buf())
    }

    /// When the reaper should run next: only while servers wait to be deleted or are drained.
    pub fn next_reap(&self) -> Option<Instant> {
        let drained = self.master.is_some()
            && self
                .live
                .haproxy
                .as_ref()
                .is_some_and(|l| !l.drained().is_empty());
        (drained || !self.leaving_since.is_empty()).then(|| self.last_reap + REAP_EVERY)
    }

    /// Deletes the servers that left the config and hold no connection any more (HAProxy's
    /// `del server` refuses while one is attached); one that outlived `leaving_max` has its
    /// sessions shut down first. Quick (one master-CLI round trip per server), so it never
    /// holds up an apply for long.
    pub async fn reap(&mut self) -> Reaped {
        self.last_reap = Instant::now();
        let mut done = Reaped::default();
        let (Some(master), Some(live)) = (self.master.clone(), self.live.haproxy.as_mut()) else {
            self.leaving_since.clear();
            return done;
        };
        for key in live.leaving() {
            let id = format!("{}/{}", key.0, key.1);
            let since = *self
                .leaving_since
                .entry(key.clone())
                .or_insert(self.last_reap);
            let forced = since.elapsed() >= self.leaving_max;
            let mut cmds = Vec::new();
            if forced {
                cmds.push(format!("shutdown sessions server {id}"));
            }
            cmds.push(format!("set server {id} state maint"));
            cmds.push(format!("del server {id}"));
            match master.runtime_batch(&cmds).await {
                Ok(()) => {
                    tracing::info!(server = %id, waited_ms = since.elapsed().as_millis() as u64, "server deleted (it left and holds no connection)");
                    done.deleted.push(id.clone());
                    live.deleted(&key);
                }
                Err(e) if e.0.contains("No such server") => {
                    live.deleted(&key);
                }
                Err(e) if e.0.contains("still has connections") => {
                    if idle_only(&master, &key).await {
                        // Only idle keep-alive connections left (a request that finished
                        // after the maint put its connection back in the pool): HAProxy
                        // closes a server's idle connections when it enters maint, so
                        // re-enter it. The drain between lets nothing new in.
                        let again = [
                            format!("set server {id} state drain"),
                            format!("set server {id} state maint"),
                            format!("del server {id}"),
                        ];
                        if master.runtime_batch(&again).await.is_ok() {
                            tracing::info!(server = %id, waited_ms = since.elapsed().as_millis() as u64, "server deleted (it left and its requests are done)");
                            done.deleted.push(id.clone());
                            live.deleted(&key);
                        }
                    } else {
                        tracing::debug!(server = %id, "leaving server still serves requests");
                    }
                }
                Err(e) => {
                    tracing::warn!(server = %id, error = %e, "could not delete a server that left; trying again");
                }
            }
            if forced && !done.forced.contains(&id) {
                tracing::warn!(server = %id, max = ?self.leaving_max, "leaving server still had sessions after the maximum; shut them down");
                done.forced.push(id);
            }
        }
        done.idle_closed = close_idle_of_drained(&master, &live.drained()).await;
        self.sync_leaving();
        done
    }

    /// Keeps `leaving_since` to the servers [`Live`] says are leaving.
    fn sync_leaving(&mut self) {
        let leaving = self
            .live
            .haproxy
            .as_ref()
            .map(Live::leaving)
            .unwrap_or_default();
        self.leaving_since.retain(|k, _| leaving.contains(k));
        let now = Instant::now();
        for k in leaving {
            self.leaving_since.entry(k).or_insert(now);
        }
    }

    /// lbgen does not know yet what the running HAProxy loaded (it or HAProxy just started):
    /// the next apply reloads whatever changed, and there is no burst to wait out, so the
    /// watch loop applies it without the debounce.
    pub fn first_apply_pending(&self) -> bool {
        self.master.is_some() && self.live.haproxy.is_none()
    }

    /// The HAProxy master client, if lbgen reloads one.
    pub fn master(&self) -> Option<&Master> {
        self.master.as_ref()
    }

    /// The template file changed: the next apply tries it.
    pub fn template_changed(&mut self) {
        self.template_dirty = true;
    }

    /// Makes `doc` live: with the last good template, or with the changed template file if
    /// its output renders, passes the check and is loaded by HAProxy.
    pub async fn apply(&mut self, doc: &MembersDoc) -> Result<Applied, ApplyError> {
        let model = Model::build_with(doc, &ListenPolicy::from_vars(&self.vars.0));
        log_model_changes(&model, self.last_model.as_ref());
        self.last_model = Some(model.clone());
        self.sync_with_what_runs().await?;
        let r = if std::mem::take(&mut self.template_dirty) {
            self.try_template(&model).await
        } else {
            self.apply_model(&model).await
        };
        self.sync_leaving();
        r
    }

    /// Makes `doc` live only if that takes no reload (runtime commands, or nothing); Ok(None)
    /// when it would reload (or the template changed, or there is no master): the caller
    /// debounces and calls [`Applier::apply`].
    pub async fn apply_fast(&mut self, doc: &MembersDoc) -> Result<Option<Applied>, ApplyError> {
        if self.template_dirty || self.master.is_none() {
            return Ok(None);
        }
        let model = Model::build_with(doc, &ListenPolicy::from_vars(&self.vars.0));
        self.sync_with_what_runs().await?;
        let Some(live) = &self.live.haproxy else {
            return Ok(None);
        };
        let text = self
            .renderer
            .render(&model, &self.vars)
            .map_err(ApplyError::Permanent)?;
        if self.live.text.as_deref() == Some(text.as_str()) {
            return Ok(Some(Applied::nothing_went_live(ApplyOutcome::Unchanged)));
        }
        let Plan::Runtime { commands, next } = live.plan(&text, &model) else {
            return Ok(None);
        };
        log_model_changes(&model, self.last_model.as_ref());
        self.last_model = Some(model);
        let r = self.run_runtime(text, commands, next).await;
        self.sync_leaving();
        Ok(r)
    }

    /// Compares against what is really on disk (someone, e.g. a supervisor's start-up script,
    /// may have rewritten it) and the HAProxy that really runs (restarted = unknown config).
    async fn sync_with_what_runs(&mut self) -> Result<(), ApplyError> {
        self.live.text = std::fs::read_to_string(&self.out).ok();
        let Some(m) = &self.master else {
            return Ok(());
        };
        let p = m.show_proc().await.map_err(ApplyError::Transient)?;
        if self.live.master_pid != Some(p.master_pid) {
            if self.live.master_pid.is_some() {
                tracing::warn!(
                    master = p.master_pid,
                    "haproxy was restarted; reloading to be sure"
                );
            }
            self.live.haproxy = None;
            self.live.master_pid = Some(p.master_pid);
        }
        if self.live.haproxy.is_none() && !self.live.wrote {
            self.adopt(m.clone(), &p).await;
        }
        Ok(())
    }

    /// Takes the file on disk as what HAProxy runs when [`crate::adopt`] proves it (an HAProxy
    /// started from a file lbgen did not write): the first apply is then a runtime change or
    /// nothing instead of a reload. Tried once per worker; unproven, the first apply reloads.
    async fn adopt(&mut self, m: Master, p: &crate::haproxy::ProcInfo) {
        let Some(worker) = p.current_worker() else {
            return;
        };
        if self.live.adopt_tried == Some(worker) {
            return;
        }
        self.live.adopt_tried = Some(worker);
        match crate::adopt::what_runs(&m, &self.out, p).await {
            Ok((text, live)) => {
                tracing::info!(
                    worker,
                    out = %self.out.display(),
                    "haproxy's worker runs the config file as it is (unchanged since before the worker started, same servers): no first reload"
                );
                self.live.text = Some(text);
                self.live.haproxy = Some(live);
            }
            Err(why) => {
                tracing::info!(worker, why = %why, "what haproxy loaded is not proven: the first apply reloads")
            }
        }
    }

    /// `model` with the last good template.
    async fn apply_model(&mut self, model: &Model) -> Result<Applied, ApplyError> {
        let text = self
            .renderer
            .render(model, &self.vars)
            .map_err(ApplyError::Permanent)?;
        self.make_live(text, false, model).await
    }

    /// The template file changed. Its output must render, pass the check and be loaded by
    /// HAProxy before it replaces the last good template; if it fails, `model` is applied with
    /// the last good template and the template's problem is logged, once.
    async fn try_template(&mut self, model: &Model) -> Result<Applied, ApplyError> {
        let (src, candidate) = match read_template(self.template.as_deref()) {
            Ok(Some(src)) if self.rejected_template.as_ref() == Some(&src) => {
                tracing::debug!("template file touched but unchanged since it was rejected");
                return self.apply_model(model).await;
            }
            Ok(Some(src)) => {
                let r = Renderer::from_source(&self.template_name(), &src);
                (Some(src), r)
            }
            Ok(None) => (None, Ok(Renderer::builtin())),
            Err(e) => (None, Err(e)),
        };
        let template_err = match candidate {
            Ok(candidate) => match self.apply_candidate(&candidate, model).await {
                Ok(done) => {
                    tracing::info!("template reloaded");
                    self.renderer = candidate;
                    self.rejected_template = None;
                    return Ok(done);
                }
                Err(ApplyError::Transient(e)) => {
                    // Not the template's fault: try it again on the retry.
                    self.template_dirty = true;
                    return Err(ApplyError::Transient(e));
                }
                Err(ApplyError::Refused(e)) => Error::new(format!(
                    "template {}: its config passed the check, but {e}",
                    self.template_name()
                )),
                Err(ApplyError::Permanent(e) | ApplyError::Logged(e)) => e,
            },
            Err(e) => e,
        };
        self.rejected_template = src;
        tracing::error!(
            error = %template_err,
            "new template rejected; the last good template stays in use until the file changes"
        );
        match self.apply_model(model).await? {
            Applied {
                outcome: ApplyOutcome::Unchanged,
                ..
            } => Err(ApplyError::Logged(template_err)),
            done => Ok(done),
        }
    }

    /// `model` with a template not yet accepted: always a reload, so HAProxy loads it.
    async fn apply_candidate(
        &mut self,
        candidate: &Renderer,
        model: &Model,
    ) -> Result<Applied, ApplyError> {
        let text = candidate
            .render(model, &self.vars)
            .map_err(ApplyError::Permanent)?;
        self.make_live(text, true, model).await
    }

    fn template_name(&self) -> String {
        self.template
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    /// Makes `text` (rendered from `model`) live. Changes `self.live` only on success (or,
    /// after an unconfirmed reload, to record that what runs is unknown).
    async fn make_live(
        &mut self,
        text: String,
        template_changed: bool,
        model: &Model,
    ) -> Result<Applied, ApplyError> {
        let same_text = self.live.text.as_deref() == Some(text.as_str());
        let Some(master) = self.master.clone() else {
            if same_text {
                return Ok(Applied::nothing_went_live(ApplyOutcome::Unchanged));
            }
            return self.write_only(text).await;
        };
        let plan = match &self.live.haproxy {
            // The first apply always reloads: we cannot know what the running HAProxy loaded.
            None => Plan::Reload("first apply since lbgen or HAProxy started".into()),
            Some(_) if same_text => return Ok(Applied::nothing_went_live(ApplyOutcome::Unchanged)),
            Some(_) if template_changed => Plan::Reload("the template changed".into()),
            Some(live) => live.plan(&text, model),
        };
        match plan {
            Plan::Runtime { commands, next } => {
                if let Some(done) = self.run_runtime(text.clone(), commands, next).await {
                    return Ok(done);
                }
                self.reload(&master, text, model).await
            }
            Plan::Nothing => {
                // Same servers, same frame: only the bytes of a server line's spacing differ.
                let next = self.live.haproxy.clone();
                match next {
                    Some(next) => match self.run_runtime(text.clone(), Vec::new(), next).await {
                        Some(done) => Ok(done),
                        None => self.reload(&master, text, model).await,
                    },
                    None => self.reload(&master, text, model).await,
                }
            }
            Plan::Reload(why) => {
                tracing::debug!(why = %why, "reload needed");
                self.reload(&master, text, model).await
            }
        }
    }

    /// Runs a runtime plan; None if HAProxy refused a command (the caller reloads: the file is
    /// the truth, so the reload repairs whatever part of the batch did run).
    async fn run_runtime(
        &mut self,
        text: String,
        cmds: Vec<String>,
        next: Live,
    ) -> Option<Applied> {
        if !cmds.is_empty() {
            let master = self.master.clone()?;
            if let Err(e) = master.runtime_batch(&cmds).await {
                tracing::warn!(error = %e, "runtime API change failed; reloading instead");
                return None;
            }
        }
        self.live.haproxy = Some(next);
        Some(self.after_runtime(text, cmds).await)
    }

    /// No master: the file is the whole job.
    async fn write_only(&mut self, text: String) -> Result<Applied, ApplyError> {
        self.live.wrote = true;
        write_atomic(&self.out, &text, self.check.as_ref())
            .await
            .map_err(ApplyError::Permanent)?;
        self.live.text = Some(text);
        tracing::info!(out = %self.out.display(), "config written");
        Ok(Applied::nothing_went_live(ApplyOutcome::Written))
    }

    /// The runtime commands were answered: record them, then keep the file in step so a later
    /// reload or restart agrees (the running HAProxy already has the change).
    async fn after_runtime(&mut self, text: String, cmds: Vec<String>) -> Applied {
        let done = Applied::live_now(ApplyOutcome::Runtime {
            commands: cmds.clone(),
        });
        tracing::info!(commands = ?cmds, "servers changed through the runtime API (no reload)");
        // No --check-cmd here: the frame is the one the last reload checked and HAProxy took
        // the server lines; the next reload checks the whole file again.
        self.live.wrote = true;
        match write_atomic(&self.out, &text, None).await {
            Ok(()) => {
                // Kept current too: an HAProxy restarted by its supervisor from this file
                // loads it, and must not bring back a drain or maint lbgen has since undone.
                if let Some(master) = &self.master {
                    dump_server_state(master, &text).await;
                }
                self.live.text = Some(text)
            }
            Err(e) => {
                tracing::warn!(error = %e, "runtime change applied but config file not updated")
            }
        }
        done
    }

    /// Check + write + reload, verified. A reload HAProxy refused or did not confirm puts the
    /// last good config back in the file.
    async fn reload(
        &mut self,
        master: &Master,
        text: String,
        model: &Model,
    ) -> Result<Applied, ApplyError> {
        let t_write = Instant::now();
        self.live.wrote = true;
        write_atomic(&self.out, &text, self.check.as_ref())
            .await
            .map_err(ApplyError::Permanent)?;
        let t_reload = Instant::now();
        // What the running worker has is only worth keeping when lbgen knows it: after a start
        // or an HAProxy restart (which loaded a state file lbgen did not write for it), the
        // new worker starts its servers from the config instead.
        match &self.live.haproxy {
            Some(live) => {
                cut_failed(master, &live.cut_failed_before_reload(&text, model)).await;
                dump_server_state(master, &text).await
            }
            None => clear_server_state(&text),
        }
        match master.reload(self.reload_timeout).await {
            Ok(p) => {
                let worker = p.current_worker().unwrap_or(0);
                let done = Applied::live_now(ApplyOutcome::Reloaded { worker });
                tracing::info!(
                    worker,
                    reloads = p.reloads,
                    pools = model.pools.len(),
                    check_write_ms = (t_reload - t_write).as_millis() as u64,
                    reload_ms = t_reload.elapsed().as_millis() as u64,
                    "config live (reloaded)"
                );
                self.live.haproxy = Some(Live::from_text(&text, model));
                self.live.text = Some(text);
                Ok(done)
            }
            Err(ReloadError::Refused(e)) => {
                restore_last_good(&self.out, self.live.text.as_deref());
                // The old worker serves on with what `live.haproxy` describes, so later state
                // changes (drains) still go through the runtime API.
                Err(ApplyError::Refused(e))
            }
            Err(ReloadError::Unconfirmed(e)) => {
                restore_last_good(&self.out, self.live.text.as_deref());
                // We no longer know exactly what runs: force a reload on the next change.
                self.live.haproxy = None;
                Err(ApplyError::Transient(e))
            }
        }
    }
}

/// Runs [`Live::cut_failed_before_reload`]'s commands. A refusal only costs those requests
/// their wait, so it is logged and the reload goes on.
async fn cut_failed(master: &Master, cmds: &[String]) {
    if cmds.is_empty() {
        return;
    }
    match master.runtime_batch(cmds).await {
        Ok(()) => {
            tracing::info!(commands = ?cmds, "failed members' sessions shut down before the reload")
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not shut down failed members' sessions before the reload")
        }
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

/// The template file's source (None = the compiled-in template).
fn read_template(p: Option<&Path>) -> Result<Option<String>, Error> {
    p.map(|p| {
        std::fs::read_to_string(p).map_err(|e| Error::new(format!("template {}: {e}", p.display())))
    })
    .transpose()
}

/// Closes the idle keep-alive connections of each drained server in `drained` that has no
/// connection in use: HAProxy keeps them for reuse (its purge keeps as many as it estimates
/// it needs, which can be all of them for minutes), and a supervisor draining the app waits
/// for its last established connection before it stops it. Entering maint closes a server's
/// idle connections; drain again right after, in the same CLI batch. A request in flight is
/// left alone (used > 0: the server is tried again next pass). Returns the servers done.
async fn close_idle_of_drained(master: &Master, drained: &[Key]) -> Vec<String> {
    if drained.is_empty() {
        return Vec::new();
    }
    let Ok(out) = master.command("@1 show servers conn").await else {
        return Vec::new();
    };
    let mut done = Vec::new();
    for key in drained {
        if !parse_conn_use(&out, key).is_some_and(|(used, idle)| used == 0 && idle > 0) {
            continue;
        }
        let id = format!("{}/{}", key.0, key.1);
        let cmds = [
            format!("set server {id} state maint"),
            format!("set server {id} state drain"),
        ];
        match master.runtime_batch(&cmds).await {
            Ok(()) => {
                tracing::debug!(server = %id, "closed the idle connections of a drained server (no request in flight)");
                done.push(id);
            }
            Err(e) => {
                tracing::warn!(server = %id, error = %e, "could not close a drained server's idle connections; trying again");
            }
        }
    }
    done
}

/// Whether `key`'s connections in the running worker are all idle ones (`show servers conn`:
/// `used_cur` 0, `idle_cur` above 0).
async fn idle_only(master: &Master, key: &Key) -> bool {
    let Ok(out) = master
        .command(&format!("@1 show servers conn {}", key.0))
        .await
    else {
        return false;
    };
    parse_conn_use(&out, key).is_some_and(|(used, idle)| used == 0 && idle > 0)
}

/// (`used_cur`, `idle_cur`) of `key` in a `show servers conn` answer (HAProxy 2.6 columns:
/// `bkname/svname bkid/svid addr port - purge_delay used_cur used_max need_est unsafe_nb
/// safe_nb idle_lim idle_cur ...`).
fn parse_conn_use(out: &str, key: &Key) -> Option<(u64, u64)> {
    let head: Vec<&str> = out
        .lines()
        .next()?
        .trim_start_matches("# ")
        .split_whitespace()
        .collect();
    let used = head.iter().position(|c| *c == "used_cur")?;
    let idle = head.iter().position(|c| *c == "idle_cur")?;
    let name = format!("{}/{}", key.0, key.1);
    let row: Vec<&str> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.first() == Some(&name.as_str()))?;
    Some((row.get(used)?.parse().ok()?, row.get(idle)?.parse().ok()?))
}

/// The server-state format's version line; alone in a file, it says "no state".
const STATE_VERSION_LINE: &str = "1\n";

/// Creates the server-state file `text` names, with the version line only, when there is none:
/// HAProxy's first start then reads "no state" instead of logging a WARNING that it cannot
/// open the file (`lbgen render` before HAProxy's first start, in a new container). Not
/// fsynced: a torn file costs only that warning. An existing file is left as it is.
pub fn seed_server_state(text: &str) {
    use std::io::Write;
    let Some(path) = Layout::parse(text).server_state_path() else {
        return;
    };
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| f.write_all(STATE_VERSION_LINE.as_bytes()));
    match created {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            tracing::debug!(error = %e, path = %path.display(), "could not seed the server state file")
        }
        _ => {}
    }
}

/// Empties the server-state file `text` names (the format's version line only), so the next
/// worker takes no stale state from it.
fn clear_server_state(text: &str) {
    let Some(path) = Layout::parse(text).server_state_path() else {
        return;
    };
    if path.exists() {
        if let Err(e) = restore(&path, STATE_VERSION_LINE) {
            tracing::warn!(error = %e, "could not clear the server state file");
        }
    }
}

/// Writes what the running worker knows of its servers (`show servers state`: health,
/// weights, drain and maint) to the server-state file `text` names, right before a reload,
/// so the new worker starts from it. A failure is logged and the reload goes on (HAProxy then
/// starts its servers from the config, as without a state file).
async fn dump_server_state(master: &Master, text: &str) {
    let Some(path) = Layout::parse(text).server_state_path() else {
        return;
    };
    let state = match master.command("@1 show servers state").await {
        // The dump starts with its format version, `1`.
        Ok(s) if s.starts_with(STATE_VERSION_LINE) => s,
        Ok(s) => {
            tracing::warn!(answer = %sanitize_for_log(&s), "unexpected `show servers state` answer; server states not kept across this reload");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "server states not kept across this reload");
            return;
        }
    };
    // Atomic, without the `.bak` that config writes keep.
    if let Err(e) = restore(&path, &state) {
        tracing::warn!(error = %e, "server state file not written; server states not kept across this reload");
    }
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
    use crate::render::DEFAULT_TEMPLATE;

    #[test]
    fn show_servers_conn_of_haproxy_2_6_gives_used_and_idle() {
        let out = "# bkname/svname bkid/svid addr port - purge_delay used_cur used_max need_est unsafe_nb safe_nb idle_lim idle_cur idle_per_thr[2]\n\
web/a 3/1 127.0.0.1 18091 - 5000 0 1 1 1 0 -1 1 1 0\n\
web/b 3/2 127.0.0.1 18092 - 5000 2 2 0 0 0 -1 0 0 0\n\n";
        let k = |s: &str| ("web".to_string(), s.to_string());
        assert_eq!(parse_conn_use(out, &k("a")), Some((0, 1)));
        assert_eq!(parse_conn_use(out, &k("b")), Some((2, 0)));
        assert_eq!(parse_conn_use(out, &k("c")), None);
        assert_eq!(parse_conn_use("Unknown command.\n", &k("a")), None);
    }
    use crate::source::SourceSpec;
    use crate::watch::Wait;

    /// File only (no master, no check): the Applier needs no HAProxy and no watch loop.
    fn config(dir: &Path, template: Option<PathBuf>) -> WatchConfig {
        WatchConfig {
            template,
            vars: Vars::default(),
            out: dir.join("haproxy.cfg"),
            source: SourceSpec::File(dir.join("members.json")),
            master: None,
            check: None,
            wait: Wait::parse("20ms").unwrap(),
            reload_timeout: Duration::from_secs(1),
            leaving_max: crate::watch::LEAVING_MAX,
            resync: None,
            renders: Vec::new(),
            local: None,
            reports: None,
            http: None,
        }
    }

    fn doc(servers: &[&str]) -> MembersDoc {
        let members: Vec<String> = servers
            .iter()
            .enumerate()
            .map(|(i, name)| {
                format!(
                    r#"{{"name":"{name}","addr":"10.0.0.{}:7946","status":"alive","tags":{{"service":"web","port":"80"}}}}"#,
                    i + 1
                )
            })
            .collect();
        MembersDoc::from_json(&format!(r#"{{"members":[{}]}}"#, members.join(","))).unwrap()
    }

    #[tokio::test]
    async fn without_a_master_a_change_is_written_once_then_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let cfg = config(d.path(), None);
        let mut a = Applier::new(&cfg).unwrap();
        assert_eq!(
            a.apply(&doc(&["web-1"])).await.unwrap(),
            Applied::nothing_went_live(ApplyOutcome::Written)
        );
        assert_eq!(
            a.apply(&doc(&["web-1"])).await.unwrap(),
            Applied::nothing_went_live(ApplyOutcome::Unchanged)
        );
        // Someone else rewrote the file: compared with what is on disk, so written again.
        std::fs::write(&cfg.out, "edited\n").unwrap();
        assert_eq!(
            a.apply(&doc(&["web-1"])).await.unwrap().outcome,
            ApplyOutcome::Written
        );
        assert!(std::fs::read_to_string(&cfg.out)
            .unwrap()
            .contains("server web-1 10.0.0.1:80 "));
    }

    #[tokio::test]
    async fn a_broken_template_is_reported_once_and_the_last_good_one_keeps_applying() {
        let d = tempfile::tempdir().unwrap();
        let template = d.path().join("haproxy.cfg.hbs");
        std::fs::write(&template, DEFAULT_TEMPLATE).unwrap();
        let cfg = config(d.path(), Some(template.clone()));
        let mut a = Applier::new(&cfg).unwrap();
        assert_eq!(
            a.apply(&doc(&["web-1"])).await.unwrap().outcome,
            ApplyOutcome::Written
        );

        std::fs::write(&template, "global\n{{#each pools}\n").unwrap();
        a.template_changed();
        match a.apply(&doc(&["web-1"])).await {
            Err(ApplyError::Logged(e)) => assert!(e.0.contains("line 2"), "{e}"),
            other => panic!("broken template: {other:?}"),
        }
        // Touched again, same content: not tried again; membership still applies.
        a.template_changed();
        assert_eq!(
            a.apply(&doc(&["web-1", "web-2"])).await.unwrap().outcome,
            ApplyOutcome::Written
        );
        let live = std::fs::read_to_string(&cfg.out).unwrap();
        assert!(live.contains("server web-2 10.0.0.2:80 "), "{live}");

        // A fixed template replaces the last good one.
        std::fs::write(&template, format!("{DEFAULT_TEMPLATE}# v2\n")).unwrap();
        a.template_changed();
        assert_eq!(
            a.apply(&doc(&["web-1", "web-2"])).await.unwrap().outcome,
            ApplyOutcome::Written
        );
        assert!(std::fs::read_to_string(&cfg.out)
            .unwrap()
            .ends_with("# v2\n"));
    }
}

//! How a change becomes live. The [`Applier`] owns what is live — the config text on disk,
//! what the running HAProxy has ([`Live`]), which master runs it — and the template in use;
//! [`crate::watch`] only decides *when* to call it.
//!
//! One apply: model → render → plan → (runtime API | check + write + reload). On any failure
//! the live config file and the running HAProxy stay as they were: a reload HAProxy refused or
//! did not confirm puts the last good config back in the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::haproxy::{Master, ReloadError};
use crate::model::{sanitize_for_log, MembersDoc, Model};
use crate::output::{restore, write_atomic, CheckCmd};
use crate::plan::{Live, Plan};
use crate::render::{Renderer, Vars};
use crate::watch::WatchConfig;
use crate::Error;

/// What one apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
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
}

impl Applier {
    /// Loads the template; a broken one is a start-up error. Touches nothing.
    pub fn new(cfg: &WatchConfig) -> Result<Applier, Error> {
        let renderer = match &cfg.template {
            Some(p) => Renderer::from_file(p)?,
            None => Renderer::builtin(),
        };
        Ok(Applier {
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
        })
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
        let model = Model::build(doc);
        log_model_changes(&model, self.last_model.as_ref());
        self.last_model = Some(model.clone());
        self.sync_with_what_runs().await?;
        if std::mem::take(&mut self.template_dirty) {
            self.try_template(&model).await
        } else {
            self.apply_model(&model).await
        }
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
        Ok(())
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
            None => Plan::Reload,
            Some(_) if same_text => return Ok(Applied::nothing_went_live(ApplyOutcome::Unchanged)),
            Some(_) if template_changed => Plan::Reload,
            Some(live) => live.plan(model),
        };
        if let Plan::Runtime(cmds) = plan {
            match runtime(&master, &cmds).await {
                Ok(()) => return Ok(self.after_runtime(text, model, cmds).await),
                Err(e) => {
                    tracing::warn!(error = %e, "runtime API change failed; reloading instead")
                }
            }
        }
        self.reload(&master, text, model).await
    }

    /// No master: the file is the whole job.
    async fn write_only(&mut self, text: String) -> Result<Applied, ApplyError> {
        write_atomic(&self.out, &text, self.check.as_ref())
            .await
            .map_err(ApplyError::Permanent)?;
        self.live.text = Some(text);
        tracing::info!(out = %self.out.display(), "config written");
        Ok(Applied::nothing_went_live(ApplyOutcome::Written))
    }

    /// The runtime commands were answered: record them, then keep the file in step so a later
    /// reload or restart agrees (the running HAProxy already has the change).
    async fn after_runtime(&mut self, text: String, model: &Model, cmds: Vec<String>) -> Applied {
        let done = Applied::live_now(ApplyOutcome::Runtime {
            commands: cmds.clone(),
        });
        if let Some(live) = self.live.haproxy.as_mut() {
            live.apply_runtime(model);
        }
        tracing::info!(commands = ?cmds, "server states changed through the runtime API");
        match write_atomic(&self.out, &text, self.check.as_ref()).await {
            Ok(()) => self.live.text = Some(text),
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
        write_atomic(&self.out, &text, self.check.as_ref())
            .await
            .map_err(ApplyError::Permanent)?;
        let t_reload = Instant::now();
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
                self.live.haproxy = Some(Live::from_model(model));
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
    use crate::render::DEFAULT_TEMPLATE;
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
            resync: None,
            renders: Vec::new(),
            reports: None,
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

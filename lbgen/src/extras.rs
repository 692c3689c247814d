//! `lbgen watch --render TEMPLATE:OUT[:COMMAND]`: more files rendered from the same snapshot
//! as the HAProxy config (consul-template's `-template in:out:command`): Prometheus targets,
//! a keepalived config, anything a template can say about the cluster.
//!
//! Each file is rewritten atomically (temp file + rename, no `.bak`) only when its bytes
//! change; then its COMMAND runs in a task of its own, with a timeout, its output logged.
//! Nothing here can hold up or undo the HAProxy apply: a template that does not render, a
//! file that cannot be written or a command that fails is logged and counted
//! ([`ExtraCounters`]), and the next snapshot tries again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::model::Model;
use crate::output::{replace_file, resolve_program};
use crate::render::{Renderer, Vars};
use crate::Error;

/// One `--render TEMPLATE:OUT[:COMMAND]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraSpec {
    pub template: PathBuf,
    pub out: PathBuf,
    /// Program and arguments, split on whitespace, run without a shell.
    pub command: Option<Vec<String>>,
    /// How long the command may run before it is killed (`--render-timeout`).
    pub timeout: Duration,
}

impl ExtraSpec {
    /// `TEMPLATE:OUT[:COMMAND]`: the first two `:` separate; COMMAND may contain more.
    pub fn parse(s: &str) -> Result<ExtraSpec, Error> {
        let bad = |why: &str| Error::new(format!("--render {s:?}: {why}"));
        let mut parts = s.splitn(3, ':');
        let template = parts.next().unwrap_or_default();
        let out = parts
            .next()
            .ok_or_else(|| bad("expected TEMPLATE:OUT[:COMMAND]"))?;
        if template.is_empty() || out.is_empty() {
            return Err(bad("TEMPLATE and OUT must not be empty"));
        }
        if template == out {
            return Err(bad("OUT would overwrite TEMPLATE"));
        }
        let command = match parts.next() {
            None => None,
            Some(c) => {
                let words: Vec<String> = c.split_whitespace().map(str::to_string).collect();
                if words.is_empty() {
                    return Err(bad("COMMAND after the second `:` is empty"));
                }
                Some(words)
            }
        };
        Ok(ExtraSpec {
            template: PathBuf::from(template),
            out: PathBuf::from(out),
            command,
            timeout: DEFAULT_COMMAND_TIMEOUT,
        })
    }
}

/// What the extra renders did since start (for logs, tests and metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraCounters {
    /// Files rewritten because their bytes changed.
    pub written: u64,
    /// Renders that failed: template syntax, unknown field, unwritable file.
    pub render_failures: u64,
    /// Commands that exited 0.
    pub commands_ok: u64,
    /// Commands that exited non-zero, could not start or timed out.
    pub command_failures: u64,
}

/// What one file did for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraOutcome {
    /// Same bytes as the file on disk: not written, no command.
    Unchanged,
    /// Rewritten; `command` says whether a command was started.
    Written { command: bool },
    /// Not written; the reason (already logged).
    Failed(String),
}

/// How long a COMMAND may run unless `--render-timeout` says otherwise.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// At most this much of a command's output goes to the log.
const MAX_LOGGED_OUTPUT: usize = 2000;

struct Extra {
    spec: ExtraSpec,
    /// The template source `renderer` was compiled from.
    source: String,
    renderer: Renderer,
    /// A template edit that did not compile: logged once, not again until it changes.
    rejected_source: Option<String>,
    /// The last command started for this file; the next one waits for it, so commands of
    /// one file never overlap and run in order.
    running: Option<JoinHandle<()>>,
}

/// Every `--render` of a `watch`.
pub struct Extras {
    items: Vec<Extra>,
    counters: Arc<Mutex<ExtraCounters>>,
}

impl Extras {
    /// Compiles every template: a missing or broken one is a start-up error, as for the
    /// HAProxy template. Two renders into one OUT are refused.
    pub fn new(specs: Vec<ExtraSpec>) -> Result<Extras, Error> {
        let mut items: Vec<Extra> = Vec::new();
        for spec in specs {
            if items.iter().any(|i| i.spec.out == spec.out) {
                return Err(Error::new(format!(
                    "--render: two templates render into {}",
                    spec.out.display()
                )));
            }
            let source = read_template(&spec.template)?;
            let renderer = Renderer::from_source(&spec.template.display().to_string(), &source)?;
            items.push(Extra {
                spec,
                source,
                renderer,
                rejected_source: None,
                running: None,
            });
        }
        Ok(Extras {
            items,
            counters: Arc::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The outputs, to refuse one that is also the HAProxy config.
    pub fn outputs(&self) -> impl Iterator<Item = &Path> {
        self.items.iter().map(|i| i.spec.out.as_path())
    }

    /// The templates, to watch them for edits.
    pub fn templates(&self) -> impl Iterator<Item = &Path> {
        self.items.iter().map(|i| i.spec.template.as_path())
    }

    pub fn counters(&self) -> ExtraCounters {
        lock(&self.counters).clone()
    }

    /// Renders every file from `model`; one outcome per `--render`, in flag order.
    /// An edited template is used from its first successful compile on.
    pub fn render(&mut self, model: &Model, vars: &Vars) -> Vec<ExtraOutcome> {
        let counters = self.counters.clone();
        self.items
            .iter_mut()
            .map(|item| {
                let outcome = item.render(model, vars, &counters);
                if let ExtraOutcome::Failed(why) = &outcome {
                    lock(&counters).render_failures += 1;
                    tracing::error!(out = %item.spec.out.display(), error = %why, "--render not written; the file stays as it was");
                }
                outcome
            })
            .collect()
    }

    /// Waits for every command started so far (tests; a clean stop).
    pub async fn wait_for_commands(&mut self) {
        for item in &mut self.items {
            if let Some(h) = item.running.take() {
                let _ = h.await;
            }
        }
    }
}

impl Extra {
    fn render(
        &mut self,
        model: &Model,
        vars: &Vars,
        counters: &Arc<Mutex<ExtraCounters>>,
    ) -> ExtraOutcome {
        self.reload_template(counters);
        let text = match self.renderer.render(model, vars) {
            Ok(t) => t,
            Err(e) => return ExtraOutcome::Failed(e.0),
        };
        if std::fs::read(&self.spec.out).is_ok_and(|old| old == text.as_bytes()) {
            return ExtraOutcome::Unchanged;
        }
        if let Err(e) = replace_file(&self.spec.out, &text) {
            return ExtraOutcome::Failed(e.0);
        }
        lock(counters).written += 1;
        tracing::info!(out = %self.spec.out.display(), bytes = text.len(), "--render written");
        let Some(cmd) = self.spec.command.clone() else {
            return ExtraOutcome::Written { command: false };
        };
        let previous = self.running.take();
        let counters = counters.clone();
        let out = self.spec.out.clone();
        let timeout = self.spec.timeout;
        self.running = Some(tokio::spawn(async move {
            if let Some(p) = previous {
                let _ = p.await;
            }
            let ok = run_command(&cmd, &out, timeout).await;
            let mut c = lock(&counters);
            if ok {
                c.commands_ok += 1;
            } else {
                c.command_failures += 1;
            }
        }));
        ExtraOutcome::Written { command: true }
    }

    /// Picks up an edited template file once it compiles; a broken edit is logged and
    /// counted once and the last good template stays in use.
    fn reload_template(&mut self, counters: &Arc<Mutex<ExtraCounters>>) {
        let src = match read_template(&self.spec.template) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "--render template unreadable; using the last good one");
                return;
            }
        };
        if src == self.source || self.rejected_source.as_ref() == Some(&src) {
            return;
        }
        match Renderer::from_source(&self.spec.template.display().to_string(), &src) {
            Ok(r) => {
                tracing::info!(template = %self.spec.template.display(), "--render template changed");
                self.renderer = r;
                self.source = src;
                self.rejected_source = None;
            }
            Err(e) => {
                lock(counters).render_failures += 1;
                tracing::error!(error = %e, "--render template edit rejected; using the last good one");
                self.rejected_source = Some(src);
            }
        }
    }
}

fn read_template(p: &Path) -> Result<String, Error> {
    std::fs::read_to_string(p).map_err(|e| Error::new(format!("template {}: {e}", p.display())))
}

/// A poisoned lock only means a task panicked while counting: the counts are still usable.
fn lock(m: &Mutex<ExtraCounters>) -> std::sync::MutexGuard<'_, ExtraCounters> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `cmd` (no shell) with `LBGEN_RENDER_OUT` set to the file it follows; logs how it
/// ended and its output. True when it exited 0 within `timeout`.
async fn run_command(cmd: &[String], out: &Path, timeout: Duration) -> bool {
    let Some((program, args)) = cmd.split_first() else {
        return false;
    };
    let mut c = tokio::process::Command::new(resolve_program(program));
    c.args(args)
        .env("LBGEN_RENDER_OUT", out)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(timeout, c.output()).await;
    let took_ms = started.elapsed().as_millis() as u64;
    let file = out.display().to_string();
    match result {
        Err(_) => {
            tracing::error!(out = %file, command = %program, ?timeout, "--render command timed out and was killed");
            false
        }
        Ok(Err(e)) => {
            tracing::error!(out = %file, command = %program, error = %e, "--render command could not start");
            false
        }
        Ok(Ok(o)) => {
            let output = logged_output(&o.stdout, &o.stderr);
            if o.status.success() {
                tracing::info!(out = %file, command = %program, took_ms, output = %output, "--render command done");
                true
            } else {
                tracing::error!(out = %file, command = %program, status = %o.status, took_ms, output = %output, "--render command failed");
                false
            }
        }
    }
}

/// stdout then stderr, lines joined with ` | `, cut at [`MAX_LOGGED_OUTPUT`] bytes.
fn logged_output(stdout: &[u8], stderr: &[u8]) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr)
    );
    let mut s = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    if s.len() > MAX_LOGGED_OUTPUT {
        let cut = (0..=MAX_LOGGED_OUTPUT)
            .rev()
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(0);
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MembersDoc;

    fn model(names: &[&str]) -> Model {
        let members: Vec<serde_json::Value> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                serde_json::json!({"name": n, "addr": format!("10.0.0.{}:7946", i + 1),
                    "status": "alive", "tags": {"metrics_agent": "7373"}})
            })
            .collect();
        let doc = serde_json::json!({ "members": members }).to_string();
        Model::build(&MembersDoc::from_json(&doc).unwrap())
    }

    #[test]
    fn specs_parse_and_bad_ones_name_the_problem() {
        let s = ExtraSpec::parse("a.hbs:/out/a.json:kill -HUP 1").unwrap();
        assert_eq!(s.template, PathBuf::from("a.hbs"));
        assert_eq!(s.out, PathBuf::from("/out/a.json"));
        assert_eq!(s.command.unwrap(), ["kill", "-HUP", "1"]);
        let s = ExtraSpec::parse("a.hbs:b:sh -c a:b").unwrap();
        assert_eq!(s.command.unwrap(), ["sh", "-c", "a:b"]);
        assert_eq!(ExtraSpec::parse("a:b").unwrap().command, None);
        for (bad, why) in [
            ("a.hbs", "TEMPLATE:OUT"),
            (":b", "empty"),
            ("a:", "empty"),
            ("a:b: ", "COMMAND"),
            ("a:a", "overwrite"),
        ] {
            let e = ExtraSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("--render"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn a_file_is_written_only_when_its_bytes_change_and_then_its_command_runs() {
        let d = tempfile::tempdir().unwrap();
        let tpl = d.path().join("t.hbs");
        std::fs::write(&tpl, "{{#each members}}{{name}} {{ip}}\n{{/each}}").unwrap();
        let out = d.path().join("out.txt");
        let log = d.path().join("runs");
        let script = d.path().join("count.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho run >> {}\n", log.display()),
        )
        .unwrap();
        // Run through `sh`, not exec'd: a file just written can be ETXTBSY for exec while
        // another test thread forks.
        let spec = ExtraSpec::parse(&format!(
            "{}:{}:sh {}",
            tpl.display(),
            out.display(),
            script.display()
        ))
        .unwrap();
        let mut x = Extras::new(vec![spec]).unwrap();
        let v = Vars::default();
        assert_eq!(
            x.render(&model(&["a"]), &v),
            [ExtraOutcome::Written { command: true }]
        );
        assert_eq!(x.render(&model(&["a"]), &v), [ExtraOutcome::Unchanged]);
        assert_eq!(
            x.render(&model(&["a", "b"]), &v),
            [ExtraOutcome::Written { command: true }]
        );
        x.wait_for_commands().await;
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "a 10.0.0.1\nb 10.0.0.2\n"
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "run\nrun\n");
        let c = x.counters();
        assert_eq!((c.written, c.commands_ok, c.command_failures), (2, 2, 0));
        // Nothing but the output, the template, the script and its log: no temp file left.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 4);
    }

    #[tokio::test]
    async fn a_failing_or_hanging_command_is_counted_and_the_next_change_still_renders() {
        let d = tempfile::tempdir().unwrap();
        let tpl = d.path().join("t.hbs");
        std::fs::write(&tpl, "{{#each members}}{{name}}\n{{/each}}").unwrap();
        let fail = ExtraSpec::parse(&format!(
            "{}:{}:false",
            tpl.display(),
            d.path().join("f").display()
        ))
        .unwrap();
        let hang = ExtraSpec::parse(&format!(
            "{}:{}:sleep 30",
            tpl.display(),
            d.path().join("h").display()
        ))
        .unwrap();
        let short = |mut s: ExtraSpec| {
            s.timeout = Duration::from_millis(200);
            s
        };
        let mut x = Extras::new(vec![short(fail), short(hang)]).unwrap();
        let started = std::time::Instant::now();
        x.render(&model(&["a"]), &Vars::default());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "render waited for a command"
        );
        x.render(&model(&["a", "b"]), &Vars::default());
        x.wait_for_commands().await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let c = x.counters();
        assert_eq!((c.written, c.commands_ok, c.command_failures), (4, 0, 4));
        assert_eq!(
            std::fs::read_to_string(d.path().join("h")).unwrap(),
            "a\nb\n"
        );
    }

    #[tokio::test]
    async fn a_broken_template_edit_is_counted_once_and_the_last_good_one_keeps_rendering() {
        let d = tempfile::tempdir().unwrap();
        let tpl = d.path().join("t.hbs");
        std::fs::write(&tpl, "{{#each members}}{{name}}\n{{/each}}").unwrap();
        let out = d.path().join("o");
        let spec = ExtraSpec::parse(&format!("{}:{}", tpl.display(), out.display())).unwrap();
        let mut x = Extras::new(vec![spec]).unwrap();
        x.render(&model(&["a"]), &Vars::default());
        std::fs::write(&tpl, "{{#each members}}{{name}\n").unwrap();
        assert_eq!(
            x.render(&model(&["a", "b"]), &Vars::default()),
            [ExtraOutcome::Written { command: false }]
        );
        x.render(&model(&["a", "b", "c"]), &Vars::default());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "a\nb\nc\n");
        assert_eq!(x.counters().render_failures, 1);
        // An unknown field fails the render itself: counted each time, file kept.
        std::fs::write(&tpl, "{{nope}}").unwrap();
        assert!(matches!(
            x.render(&model(&["a"]), &Vars::default())[0],
            ExtraOutcome::Failed(ref why) if why.contains("nope")
        ));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "a\nb\nc\n");
        assert_eq!(x.counters().render_failures, 2);
    }

    #[test]
    fn two_renders_into_one_file_and_a_missing_template_are_start_up_errors() {
        let d = tempfile::tempdir().unwrap();
        let tpl = d.path().join("t.hbs");
        std::fs::write(&tpl, "x").unwrap();
        let s = |out: &str| ExtraSpec::parse(&format!("{}:{out}", tpl.display())).unwrap();
        let e = Extras::new(vec![s("/tmp/x"), s("/tmp/x")]).err().unwrap();
        assert!(e.0.contains("two templates"), "{e}");
        let missing = ExtraSpec::parse("/nonexistent/t.hbs:/tmp/y").unwrap();
        let e = Extras::new(vec![missing]).err().unwrap();
        assert!(e.0.contains("/nonexistent/t.hbs"), "{e}");
    }
}

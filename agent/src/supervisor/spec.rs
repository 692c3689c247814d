//! What to supervise: the services file (TOML), the `-- CMD` form and the
//! health-check settings, validated before anything is started.
//!
//! Every problem found is collected into one [`SupervisorError::Config`]
//! whose entries name the file, the line and the key.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;
use toml::de::{DeString, DeValue, ValueDeserializer};
use toml::Spanned;

use super::health::{CheckSpec, CheckTarget};

/// When a service is started again after it exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whatever the exit status.
    Always,
    /// Only after a non-zero exit or a death by signal.
    OnFailure,
    /// Never.
    Never,
}

/// One supervised process, validated.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    /// argv; `argv[0]` is looked up in `PATH` when it has no `/`.
    pub argv: Vec<String>,
    /// Added to (and overriding) shoal's own environment.
    pub env: BTreeMap<String, String>,
    pub workdir: Option<PathBuf>,
    pub restart: RestartPolicy,
    /// First restart delay; doubled after each quick failure, up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Crash-loop limit: more than `max_restarts` restarts within
    /// `restart_window` and the service is given up on.
    pub max_restarts: u32,
    pub restart_window: Duration,
    /// Names of services started before this one (and stopped after it).
    pub depends_on: Vec<String>,
    pub stop_signal: Signal,
    /// After `stop_signal`, how long before SIGKILL.
    pub stop_timeout: Duration,
    /// Its end (once it is not restarted any more) stops the container.
    pub critical: bool,
    /// Its exit code is the container's. At most one; implies `critical`.
    pub main: bool,
}

impl ServiceSpec {
    /// A service with the defaults used by the services file.
    pub fn new(name: impl Into<String>, argv: Vec<String>) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            argv,
            env: BTreeMap::new(),
            workdir: None,
            restart: RestartPolicy::OnFailure,
            backoff: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            depends_on: Vec::new(),
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            critical: false,
            main: false,
        }
    }
}

/// Everything [`super::Supervisor::start`] needs, already validated.
#[derive(Debug, Clone)]
pub struct SupervisorSpec {
    /// In start order (dependencies first).
    pub services: Vec<ServiceSpec>,
    pub check: Option<CheckSpec>,
}

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The services file, or `command line`.
    pub file: String,
    /// 1-based line in `file`, when known.
    pub line: Option<usize>,
    /// Dotted key, e.g. `services.web.depends_on`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: ", self.file, l)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Why the supervisor could not be configured or started.
#[derive(Debug)]
pub enum SupervisorError {
    /// Bad configuration; nothing was started.
    Config(Vec<ConfigError>),
    /// A service could not be spawned; services already started were killed.
    Spawn {
        service: String,
        source: std::io::Error,
    },
    /// The reaper could not be started.
    Reaper(std::io::Error),
}

impl SupervisorError {
    /// The process exit code for this error (2: bad usage / configuration,
    /// as the issue asks, for all of them: nothing was left running).
    pub fn exit_code(&self) -> i32 {
        2
    }
}

impl fmt::Display for SupervisorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SupervisorError::Config(errs) => {
                for (i, e) in errs.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
            SupervisorError::Spawn { service, source } => {
                write!(f, "service {service}: cannot start: {source}")
            }
            SupervisorError::Reaper(e) => write!(f, "cannot start the process reaper: {e}"),
        }
    }
}

impl std::error::Error for SupervisorError {}

// ---------------------------------------------------------------- raw file

/// A duration in the contract's syntax ([`shoal_contract::duration`]): `"500ms"`,
/// `"1.5s"`, `"2m"`, `"1h"`, `"1d"`, or a number of seconds.
#[derive(Debug, Clone, Copy)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Str(String),
        }
        let bad = |s: &str| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} (use e.g. \"500ms\", \"10s\", \"2m\", \"1d\" or seconds)"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Dur(Duration::from_secs(n))),
            Raw::Float(f) => Duration::try_from_secs_f64(f)
                .map(Dur)
                .map_err(|_| bad(&f.to_string())),
            Raw::Str(s) => shoal_contract::parse_duration(&s)
                .map(Dur)
                .map_err(|e| serde::de::Error::custom(format!("invalid duration: {e}"))),
        }
    }
}

/// A signal written as `"TERM"`, `"SIGTERM"` or its number.
pub fn parse_signal(s: &str) -> Option<Signal> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>().ok()
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawCommand {
    Argv(Vec<String>),
    Shell(String),
}

/// A stop signal as written: a name (`"TERM"`, `"SIGUSR1"`) or a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSignal {
    Number(i64),
    Name(String),
}

impl RawSignal {
    fn to_signal(&self) -> Result<Signal, String> {
        let found = match self {
            RawSignal::Number(n) => i32::try_from(*n)
                .ok()
                .and_then(|n| Signal::try_from(n).ok()),
            RawSignal::Name(s) => parse_signal(s),
        };
        found.ok_or_else(|| match self {
            RawSignal::Number(n) => format!("unknown signal number {n}"),
            RawSignal::Name(s) => format!("unknown signal {s:?}"),
        })
    }
}

/// A `[services.NAME]` table as read, each key on its own so that one bad
/// key does not hide the others.
#[derive(Debug, Default)]
struct RawService {
    command: Option<Spanned<RawCommand>>,
    env: BTreeMap<String, String>,
    workdir: Option<Spanned<String>>,
    restart: Option<RestartPolicy>,
    backoff: Option<Dur>,
    backoff_max: Option<Dur>,
    max_restarts: Option<u32>,
    restart_window: Option<Dur>,
    depends_on: Vec<Spanned<String>>,
    stop_signal: Option<Spanned<RawSignal>>,
    stop_timeout: Option<Dur>,
    critical: bool,
    main: bool,
}

const SERVICE_KEYS: &[&str] = &[
    "command",
    "env",
    "workdir",
    "restart",
    "backoff",
    "backoff_max",
    "max_restarts",
    "restart_window",
    "depends_on",
    "stop_signal",
    "stop_timeout",
    "critical",
    "main",
];

/// The `[check]` table as read, key by key like [`RawService`].
#[derive(Debug, Default)]
struct RawCheck {
    http: Option<Spanned<String>>,
    command: Option<Spanned<String>>,
    interval: Option<Dur>,
    start_interval: Option<Dur>,
    timeout: Option<Dur>,
    rise: Option<u32>,
    fall: Option<u32>,
}

const CHECK_KEYS: &[&str] = &[
    "http",
    "command",
    "interval",
    "start_interval",
    "timeout",
    "rise",
    "fall",
];

// ---------------------------------------------------------------- loading

/// Where errors are reported: the file name and its text (for lines).
struct Src<'a> {
    file: String,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Src<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn err(&mut self, span: Option<Range<usize>>, key: impl Into<String>, msg: impl Into<String>) {
        let line = span.map(|s| self.line(s.start));
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            key: key.into(),
            message: msg.into(),
        });
    }

    fn toml_err(&mut self, key: &str, e: toml::de::Error) {
        // toml's Display repeats the source; the plain message is enough
        // next to file:line. Name the exact key when the error's line is a
        // `key = value` line inside the table (`prefix` is the table's key).
        let full_key = match (
            key.is_empty(),
            e.span().and_then(|sp| self.key_at(sp.start)),
        ) {
            (false, Some(k)) => format!("{key}.{k}"),
            _ => key.to_string(),
        };
        self.err(e.span(), full_key, e.message().trim().to_string());
    }

    /// The entries of table `value` (named `key`) in file order; an error
    /// and None when it is not a table.
    fn table<'a>(
        &mut self,
        key: &str,
        value: Spanned<DeValue<'a>>,
    ) -> Option<Vec<(Spanned<DeString<'a>>, Spanned<DeValue<'a>>)>> {
        let span = value.span();
        let DeValue::Table(t) = value.into_inner() else {
            self.err(Some(span), key, "must be a table");
            return None;
        };
        let mut entries: Vec<_> = t.into_iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        Some(entries)
    }

    /// Deserializes one value; a bad one is reported under `key` and gives None.
    fn value<T: serde::de::DeserializeOwned>(
        &mut self,
        key: &str,
        value: Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let span = value.span();
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => Some(v),
            Err(e) => {
                let span = e.span().unwrap_or(span);
                self.err(Some(span), key, e.message().trim().to_string());
                None
            }
        }
    }

    fn unknown_key(&mut self, span: Range<usize>, key: String, name: &str, known: &[&str]) {
        let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
        self.err(
            Some(span),
            key,
            format!(
                "unknown field `{name}`, expected one of {}",
                expected.join(", ")
            ),
        );
    }

    /// The bare key that starts the line holding `offset`, if any.
    fn key_at(&self, offset: usize) -> Option<String> {
        let start = self.text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
        let line = self.text.get(start..)?.lines().next()?;
        let (k, _) = line.split_once('=')?;
        let k = k.trim();
        let bare = !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        bare.then(|| k.to_string())
    }
}

impl SupervisorSpec {
    /// One main service from `-- CMD ARGS...` (restart never, critical), as
    /// tini would run it.
    pub fn from_command(argv: &[String]) -> Result<SupervisorSpec, SupervisorError> {
        Self::load(None, argv)
    }

    /// Reads and validates a services file.
    pub fn from_file(path: &Path) -> Result<SupervisorSpec, SupervisorError> {
        Self::load(Some(path), &[])
    }

    /// Parses services-file text; `origin` names it in errors.
    pub fn from_toml_str(origin: &str, text: &str) -> Result<SupervisorSpec, SupervisorError> {
        let mut src = Src {
            file: origin.to_string(),
            text,
            errors: Vec::new(),
        };
        let (services, check) = parse_file(&mut src);
        finish(src, services, check, None)
    }

    /// The general form: an optional services file plus an optional
    /// `-- CMD`. With both, CMD becomes the service `main` (the file may
    /// then not mark another service `main`). With neither: an error.
    pub fn load(file: Option<&Path>, cmd: &[String]) -> Result<SupervisorSpec, SupervisorError> {
        let text;
        let mut src = match file {
            Some(p) => {
                text = match std::fs::read_to_string(p) {
                    Ok(t) => t,
                    Err(e) => {
                        return Err(SupervisorError::Config(vec![ConfigError {
                            file: p.display().to_string(),
                            line: None,
                            key: String::new(),
                            message: format!("cannot read services file: {e}"),
                        }]))
                    }
                };
                Src {
                    file: p.display().to_string(),
                    text: &text,
                    errors: Vec::new(),
                }
            }
            None => Src {
                file: "command line".into(),
                text: "",
                errors: Vec::new(),
            },
        };
        let (services, check) = if file.is_some() {
            parse_file(&mut src)
        } else {
            (Vec::new(), None)
        };
        let main = if cmd.is_empty() {
            None
        } else {
            let mut s = ServiceSpec::new("main", cmd.to_vec());
            s.restart = RestartPolicy::Never;
            s.main = true;
            s.critical = true;
            Some(s)
        };
        if file.is_none() && main.is_none() {
            src.err(
                None,
                "",
                "nothing to supervise: give --services FILE and/or -- CMD",
            );
        }
        finish(src, services, check, main)
    }

    /// Applies the `--check`, `--check-cmd` and `--check-interval` flags over
    /// the file's `[check]` section. `--check` and `--check-cmd` exclude each other.
    pub fn apply_check_flags(
        &mut self,
        http: Option<&str>,
        cmd: Option<&str>,
        interval: Option<Duration>,
    ) -> Result<(), SupervisorError> {
        let flag_err = |key: &str, message: String| {
            SupervisorError::Config(vec![ConfigError {
                file: "command line".into(),
                line: None,
                key: key.into(),
                message,
            }])
        };
        let target = match (http, cmd) {
            (Some(_), Some(_)) => {
                return Err(flag_err(
                    "--check",
                    "--check and --check-cmd exclude each other".into(),
                ))
            }
            (Some(url), None) => {
                Some(CheckTarget::parse_http(url).map_err(|m| flag_err("--check", m))?)
            }
            (None, Some(c)) if c.trim().is_empty() => {
                return Err(flag_err("--check-cmd", "empty command".into()))
            }
            (None, Some(c)) => Some(CheckTarget::Command(c.to_string())),
            (None, None) => None,
        };
        if let Some(t) = target {
            let mut c = self.check.take().unwrap_or_default();
            c.target = t;
            self.check = Some(c);
        }
        if let Some(i) = interval {
            if i.is_zero() {
                return Err(flag_err("--check-interval", "must be more than 0".into()));
            }
            match self.check.as_mut() {
                Some(c) => {
                    c.interval = i;
                    c.timeout = c.timeout.min(i);
                }
                None => {
                    return Err(flag_err(
                        "--check-interval",
                        "needs --check, --check-cmd or a [check] section".into(),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Applies `--check-start-interval` over the `[check]` section: the time
    /// between checks until the service is first ready.
    pub fn apply_check_start_interval(
        &mut self,
        start_interval: Option<Duration>,
    ) -> Result<(), SupervisorError> {
        let Some(d) = start_interval else {
            return Ok(());
        };
        let message = if d.is_zero() {
            "must be more than 0"
        } else if let Some(c) = self.check.as_mut() {
            c.start_interval = d;
            return Ok(());
        } else {
            "needs --check, --check-cmd or a [check] section"
        };
        Err(SupervisorError::Config(vec![ConfigError {
            file: "command line".into(),
            line: None,
            key: "--check-start-interval".into(),
            message: message.into(),
        }]))
    }

    /// The service whose exit code is the container's, if any.
    pub fn main_service(&self) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.main)
    }
}

/// A service from the file with the spans used in later error messages.
struct Parsed {
    spec: ServiceSpec,
    /// None for the `-- CMD` service.
    name_span: Option<Range<usize>>,
    /// One per `depends_on` entry.
    dep_spans: Vec<Range<usize>>,
    command_span: Option<Range<usize>>,
    workdir_span: Option<Range<usize>>,
}

fn parse_file(src: &mut Src<'_>) -> (Vec<Parsed>, Option<CheckSpec>) {
    let mut services = Vec::new();
    let mut check = None;
    let doc = match toml::de::DeTable::parse(src.text) {
        Ok(d) => d,
        Err(e) => {
            src.toml_err("", e);
            return (services, check);
        }
    };
    let mut entries: Vec<_> = doc.into_inner().into_iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (key, value) in entries {
        let kspan = key.span();
        match key.get_ref().as_ref() {
            "services" => {
                let vspan = value.span();
                let toml::de::DeValue::Table(table) = value.into_inner() else {
                    src.err(
                        Some(vspan),
                        "services",
                        "must be a table of [services.NAME]",
                    );
                    continue;
                };
                let mut items: Vec<_> = table.into_iter().collect();
                items.sort_by_key(|(k, _)| k.span().start);
                for (name, body) in items {
                    let name_span = name.span();
                    let name = name.get_ref().to_string();
                    let key = format!("services.{name}");
                    if name.is_empty()
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
                    {
                        src.err(
                            Some(name_span.clone()),
                            &key,
                            "service names use letters, digits, '-', '_' and '.'",
                        );
                    }
                    let Some(raw) = read_service(src, &key, name_span.clone(), body) else {
                        continue;
                    };
                    if let Some(mut p) = convert_service(src, &name, raw) {
                        p.name_span = Some(name_span);
                        services.push(p);
                    }
                }
            }
            "check" => {
                if let Some(raw) = read_check(src, value) {
                    check = convert_check(src, raw);
                }
            }
            other => src.err(
                Some(kspan),
                other,
                "unknown key (expected `services` or `check`)",
            ),
        }
    }
    (services, check)
}

/// Reads `[services.NAME]` (`key`) key by key, reporting every bad key.
/// None when it has no usable `command` (already reported).
fn read_service(
    src: &mut Src<'_>,
    key: &str,
    name_span: Range<usize>,
    body: Spanned<DeValue<'_>>,
) -> Option<RawService> {
    let mut raw = RawService::default();
    let mut command_given = false;
    for (k, v) in src.table(key, body)? {
        let field = k.get_ref().to_string();
        let fkey = format!("{key}.{field}");
        match field.as_str() {
            "command" => {
                command_given = true;
                raw.command = src.value(&fkey, v);
            }
            "env" => raw.env = src.value(&fkey, v).unwrap_or_default(),
            "workdir" => raw.workdir = src.value(&fkey, v),
            "restart" => raw.restart = src.value(&fkey, v),
            "backoff" => raw.backoff = src.value(&fkey, v),
            "backoff_max" => raw.backoff_max = src.value(&fkey, v),
            "max_restarts" => raw.max_restarts = src.value(&fkey, v),
            "restart_window" => raw.restart_window = src.value(&fkey, v),
            "depends_on" => raw.depends_on = src.value(&fkey, v).unwrap_or_default(),
            "stop_signal" => raw.stop_signal = src.value(&fkey, v),
            "stop_timeout" => raw.stop_timeout = src.value(&fkey, v),
            "critical" => raw.critical = src.value(&fkey, v).unwrap_or_default(),
            "main" => raw.main = src.value(&fkey, v).unwrap_or_default(),
            _ => src.unknown_key(k.span(), fkey, &field, SERVICE_KEYS),
        }
    }
    if !command_given {
        src.err(Some(name_span), key, "missing field `command`");
    }
    raw.command.is_some().then_some(raw)
}

/// Reads `[check]` key by key, reporting every bad key.
fn read_check(src: &mut Src<'_>, body: Spanned<DeValue<'_>>) -> Option<RawCheck> {
    let mut raw = RawCheck::default();
    for (k, v) in src.table("check", body)? {
        let field = k.get_ref().to_string();
        let fkey = format!("check.{field}");
        match field.as_str() {
            "http" => raw.http = src.value(&fkey, v),
            "command" => raw.command = src.value(&fkey, v),
            "interval" => raw.interval = src.value(&fkey, v),
            "start_interval" => raw.start_interval = src.value(&fkey, v),
            "timeout" => raw.timeout = src.value(&fkey, v),
            "rise" => raw.rise = src.value(&fkey, v),
            "fall" => raw.fall = src.value(&fkey, v),
            _ => src.unknown_key(k.span(), fkey, &field, CHECK_KEYS),
        }
    }
    Some(raw)
}

fn convert_service(src: &mut Src<'_>, name: &str, raw: RawService) -> Option<Parsed> {
    let key = |k: &str| format!("services.{name}.{k}");
    let command = raw.command?;
    let cspan = command.span();
    let argv = match command.into_inner() {
        RawCommand::Argv(v) => v,
        RawCommand::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s],
    };
    if argv.first().is_none_or(|a| a.trim().is_empty()) {
        src.err(Some(cspan.clone()), key("command"), "empty command");
    }
    let mut s = ServiceSpec::new(name, argv);
    s.env = raw.env;
    let workdir_span = raw.workdir.as_ref().map(|w| w.span());
    if let Some(w) = raw.workdir {
        s.workdir = Some(PathBuf::from(w.get_ref()));
    }
    if let Some(r) = raw.restart {
        s.restart = r;
    }
    if let Some(d) = raw.backoff {
        s.backoff = d.0;
    }
    if let Some(d) = raw.backoff_max {
        s.backoff_max = d.0;
    }
    if s.backoff_max < s.backoff {
        s.backoff_max = s.backoff;
    }
    if let Some(n) = raw.max_restarts {
        s.max_restarts = n;
    }
    if let Some(d) = raw.restart_window {
        s.restart_window = d.0;
    }
    if let Some(d) = raw.stop_timeout {
        s.stop_timeout = d.0;
    }
    if let Some(sig) = raw.stop_signal {
        match sig.get_ref().to_signal() {
            Ok(x) => s.stop_signal = x,
            Err(m) => src.err(Some(sig.span()), key("stop_signal"), m),
        }
    }
    s.depends_on = raw.depends_on.iter().map(|d| d.get_ref().clone()).collect();
    s.main = raw.main;
    s.critical = raw.critical || raw.main;
    // Returned even with errors, so that the cross-service checks in
    // `finish` report everything at once.
    Some(Parsed {
        spec: s,
        name_span: None,
        dep_spans: raw.depends_on.iter().map(|d| d.span()).collect(),
        command_span: Some(cspan),
        workdir_span,
    })
}

fn convert_check(src: &mut Src<'_>, raw: RawCheck) -> Option<CheckSpec> {
    let mut c = CheckSpec::default();
    match (raw.http, raw.command) {
        (Some(h), None) => match CheckTarget::parse_http(h.get_ref()) {
            Ok(t) => c.target = t,
            Err(m) => src.err(Some(h.span()), "check.http", m),
        },
        (None, Some(cmd)) => c.target = CheckTarget::Command(cmd.into_inner()),
        (Some(h), Some(_)) => {
            src.err(
                Some(h.span()),
                "check",
                "give either `http` or `command`, not both",
            );
            return None;
        }
        (None, None) => {
            src.err(None, "check", "needs `http` or `command`");
            return None;
        }
    }
    if let Some(d) = raw.interval {
        c.interval = d.0;
    }
    if let Some(d) = raw.timeout {
        c.timeout = d.0;
    }
    if let Some(d) = raw.start_interval {
        if d.0.is_zero() {
            src.err(None, "check.start_interval", "must be more than 0");
        }
        c.start_interval = d.0;
    }
    if let Some(n) = raw.rise {
        c.rise = n.max(1);
    }
    if let Some(n) = raw.fall {
        c.fall = n.max(1);
    }
    if c.interval.is_zero() {
        src.err(None, "check.interval", "must be more than 0");
    }
    c.timeout = c.timeout.min(c.interval);
    Some(c)
}

/// Cross-service checks: duplicates, `main`, dependencies, cycles,
/// executables; then the start order.
fn finish(
    mut src: Src<'_>,
    services: Vec<Parsed>,
    check: Option<CheckSpec>,
    cmd_main: Option<ServiceSpec>,
) -> Result<SupervisorSpec, SupervisorError> {
    let dep_spans: HashMap<String, Vec<Range<usize>>> = services
        .iter()
        .map(|p| (p.spec.name.clone(), p.dep_spans.clone()))
        .collect();
    let cmd_spans: HashMap<String, Option<Range<usize>>> = services
        .iter()
        .map(|p| (p.spec.name.clone(), p.command_span.clone()))
        .collect();
    let workdir_spans: HashMap<String, Option<Range<usize>>> = services
        .iter()
        .map(|p| (p.spec.name.clone(), p.workdir_span.clone()))
        .collect();
    let mut all: Vec<(ServiceSpec, Option<Range<usize>>)> = services
        .into_iter()
        .map(|p| (p.spec, p.name_span))
        .collect();
    let has_cmd = cmd_main.is_some();
    if let Some(m) = cmd_main {
        if let Some((other, sp)) = all.iter().find(|(s, _)| s.main) {
            let (name, sp) = (other.name.clone(), sp.clone());
            src.err(
                sp,
                format!("services.{name}.main"),
                "`-- CMD` is the main service; no service in the file may set `main = true`",
            );
        }
        if let Some((_, sp)) = all.iter().find(|(s, _)| s.name == "main") {
            let sp = sp.clone();
            src.err(
                sp,
                "services.main",
                "the name `main` is taken by the `-- CMD` service",
            );
        }
        all.push((m, None));
    }
    let mains: Vec<_> = all.iter().filter(|(s, _)| s.main).collect();
    if mains.len() > 1 && !has_cmd {
        let (s, sp) = (mains[1].0.name.clone(), mains[1].1.clone());
        src.err(
            sp,
            format!("services.{s}.main"),
            "only one service may be `main`",
        );
    }

    // Executables and working directories, before anything starts.
    for (s, sp) in &all {
        let key = if sp.is_some() {
            format!("services.{}.command", s.name)
        } else {
            "-- CMD".to_string()
        };
        if let Some(w) = &s.workdir {
            if !w.is_dir() {
                src.err(
                    workdir_spans.get(&s.name).cloned().flatten().or(sp.clone()),
                    format!("services.{}.workdir", s.name),
                    format!("{} is not a directory", w.display()),
                );
            }
        }
        if let Some(prog) = s.argv.first() {
            if let Err(m) = check_executable(prog, s.workdir.as_deref(), s.env.get("PATH")) {
                let line_of = cmd_spans.get(&s.name).cloned().flatten().or(sp.clone());
                src.err(line_of, key, m);
            }
        }
    }

    // Dependencies: known names and no cycles.
    let index: HashMap<&str, usize> = all
        .iter()
        .enumerate()
        .map(|(i, (s, _))| (s.name.as_str(), i))
        .collect();
    let mut unknown = false;
    for (s, _) in &all {
        for (j, d) in s.depends_on.iter().enumerate() {
            if !index.contains_key(d.as_str()) || d == &s.name {
                unknown = true;
                let sp = dep_spans.get(&s.name).and_then(|v| v.get(j)).cloned();
                let msg = if d == &s.name {
                    "a service cannot depend on itself".to_string()
                } else {
                    format!("unknown service {d:?}")
                };
                src.err(sp, format!("services.{}.depends_on", s.name), msg);
            }
        }
    }
    let mut order = Vec::new();
    if !unknown {
        match topo_order(&all.iter().map(|(s, _)| s).collect::<Vec<_>>(), &index) {
            Ok(o) => order = o,
            Err(cycle) => {
                let first = cycle[0];
                let sp = dep_spans
                    .get(&all[first].0.name)
                    .and_then(|v| v.first())
                    .cloned();
                let names: Vec<_> = cycle.iter().map(|&i| all[i].0.name.as_str()).collect();
                src.err(
                    sp,
                    format!("services.{}.depends_on", all[first].0.name),
                    format!("dependency cycle: {} -> {}", names.join(" -> "), names[0]),
                );
            }
        }
    }

    if !src.errors.is_empty() {
        src.errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        return Err(SupervisorError::Config(src.errors));
    }
    let mut slots: Vec<Option<ServiceSpec>> = all.into_iter().map(|(s, _)| Some(s)).collect();
    let services = order
        .into_iter()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect();
    Ok(SupervisorSpec { services, check })
}

/// Kahn's algorithm, ties broken by file order. Err: the nodes of one cycle.
fn topo_order(
    services: &[&ServiceSpec],
    index: &HashMap<&str, usize>,
) -> Result<Vec<usize>, Vec<usize>> {
    let n = services.len();
    let mut indeg = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, s) in services.iter().enumerate() {
        for d in &s.depends_on {
            if let Some(&j) = index.get(d.as_str()) {
                indeg[i] += 1;
                dependents[j].push(i);
            }
        }
    }
    let mut order = Vec::with_capacity(n);
    let mut ready: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    while !ready.is_empty() {
        ready.sort_unstable_by(|a, b| b.cmp(a)); // pop the smallest index
        let Some(i) = ready.pop() else { break };
        order.push(i);
        for &k in &dependents[i] {
            indeg[k] -= 1;
            if indeg[k] == 0 {
                ready.push(k);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk dependencies among the remaining nodes until one repeats.
    let Some(start) = (0..n).find(|&i| indeg[i] > 0) else {
        return Err(Vec::new());
    };
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let next = services[cur]
            .depends_on
            .iter()
            .filter_map(|d| index.get(d.as_str()).copied())
            .find(|&j| indeg[j] > 0);
        let Some(next) = next else { return Err(path) };
        if let Some(pos) = path.iter().position(|&p| p == next) {
            return Err(path.split_off(pos));
        }
        path.push(next);
        cur = next;
    }
}

/// Checks that `prog` names an executable regular file: a path (relative to
/// `workdir` when relative) or a name found in `PATH`.
fn check_executable(
    prog: &str,
    workdir: Option<&Path>,
    path_env: Option<&String>,
) -> Result<(), String> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if prog.contains('/') {
        let p = Path::new(prog);
        let full = match workdir {
            Some(w) if p.is_relative() => w.join(p),
            _ => p.to_path_buf(),
        };
        return match std::fs::metadata(&full) {
            Err(_) => Err(format!("command {prog:?} not found")),
            Ok(_) if !is_exec(&full) => Err(format!("command {prog:?} is not an executable file")),
            Ok(_) => Ok(()),
        };
    }
    let path = path_env
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    if path
        .split(':')
        .filter(|d| !d.is_empty())
        .any(|d| is_exec(&Path::new(d).join(prog)))
    {
        Ok(())
    } else {
        Err(format!("command {prog:?} not found in PATH"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        #[derive(Debug, Deserialize)]
        struct D {
            d: Dur,
        }
        let read = |v: &str| toml::from_str::<D>(&format!("d = {v}")).map(|d| d.d.0);
        assert_eq!(read("\"500ms\"").unwrap(), Duration::from_millis(500));
        assert_eq!(read("\"10s\"").unwrap(), Duration::from_secs(10));
        assert_eq!(read("\"1.5s\"").unwrap(), Duration::from_millis(1500));
        assert_eq!(read("\"2m\"").unwrap(), Duration::from_secs(120));
        assert_eq!(read("\"3\"").unwrap(), Duration::from_secs(3));
        // The contract's syntax: `1d` and `24h` read here as in every flag.
        assert_eq!(read("\"1d\"").unwrap(), Duration::from_secs(86_400));
        assert_eq!(read("\"24h\"").unwrap(), Duration::from_secs(86_400));
        assert_eq!(read("\"250ms\"").unwrap(), Duration::from_millis(250));
        assert_eq!(read("7").unwrap(), Duration::from_secs(7));
        assert_eq!(read("0.5").unwrap(), Duration::from_millis(500));
        assert!(read("\"x\"")
            .unwrap_err()
            .to_string()
            .contains("invalid duration"));
        assert!(read("\"5 parsecs\"")
            .unwrap_err()
            .to_string()
            .contains("unit"));
        assert!(read("\"-1s\"")
            .unwrap_err()
            .to_string()
            .contains("negative"));
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("TERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("sigusr1"), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("NOPE"), None);
    }
}

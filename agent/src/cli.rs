//! Command-line flags (clap). Raw flags stay here; [`AgentArgs::to_settings`]
//! turns them into checked settings, with one clear error per bad value.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::addr;
use crate::agent::AgentConfig;
use crate::handlers::HandlerSpec;
use crate::identity;
use crate::keyring::{Key, Keyring};
use crate::profile::Profile;
use crate::tags::{self, Tags};

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "Gossip membership agent (SWIM), container supervisor and ops CLI",
    long_about = "shoal keeps a cluster's member list with SWIM gossip, like Serf. \
`shoal agent` runs the agent (and, after `--`, supervises the container's processes); \
the other subcommands talk to a running agent over its local HTTP API."
)]
pub struct Cli {
    /// Address of the agent's HTTP API (the agent listens there; the CLI connects there).
    #[arg(
        long,
        global = true,
        env = "SHOAL_API",
        default_value = "127.0.0.1:7373"
    )]
    pub api: String,
    /// Bearer token for the API: the agent requires it (mandatory when --api is
    /// not a loopback address), the CLI sends it.
    #[arg(long, global = true, env = "SHOAL_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Log format.
    #[arg(long, global = true, env = "SHOAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level (trace, debug, info, warn, error; Serf's `err` too); wins
    /// over SHOAL_LOG.
    #[arg(long, global = true, env = "SHOAL_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: CliCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns (`text`, Serf's name for it, works too).
    #[value(alias = "text")]
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueryFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Run the gossip agent (and supervise `-- CMD ARGS...` if given).
    Agent(Box<AgentArgs>),
    /// List the cluster's members.
    Members {
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// Only members with this status (alive, suspect, failed, left), or
        /// whose status matches this anchored regex (`alive|suspect`).
        #[arg(long)]
        status: Option<String>,
        /// Only members whose name matches this anchored regex.
        #[arg(long, value_name = "REGEX")]
        name: Option<String>,
        /// Only members whose tag KEY matches REGEX (anchored), e.g. --tag service=web.
        #[arg(long = "tag", value_name = "KEY=REGEX")]
        tags: Vec<String>,
        /// Add the protocol columns (text output).
        #[arg(long)]
        detailed: bool,
    },
    /// Stream member events as they happen.
    Monitor {
        /// Resume after this event index (0: replay what the agent still buffers).
        #[arg(long)]
        index: Option<u64>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Ask the agent to join the cluster of these addresses (HOST or HOST:PORT).
    Join {
        #[arg(required = true, value_name = "ADDR")]
        addrs: Vec<String>,
    },
    /// Make the agent leave the cluster gracefully and stop.
    Leave,
    /// Mark a failed member as left at once (instead of waiting for the reap).
    ForceLeave { name: String },
    /// Change this agent's tags at run time (gossiped as a member update).
    Tags {
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
    },
    /// Show the agent's identity, protocol, member counts and traffic counters.
    Info {
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Send a user event to every member: their `user` handlers run with
    /// SERF_EVENT=user, SERF_USER_EVENT=NAME and the payload on stdin.
    Event {
        /// Event name (no whitespace, ':', ',' or '=').
        name: String,
        /// Up to 8 KiB (512 B gossiped inline, more fetched over TCP).
        payload: Option<String>,
        /// Handlers may see only the latest of several events with this name
        /// (--coalesce=false: every one).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
        coalesce: bool,
    },
    /// Ask the members' `query` handlers and print their answers (stdout);
    /// done as soon as every addressed member answered, or at the timeout.
    Query {
        /// Query name (no whitespace, ':', ',' or '=').
        name: String,
        /// Up to 512 B, on the handlers' stdin.
        payload: Option<String>,
        /// Only this node answers (repeatable).
        #[arg(long = "node", value_name = "NAME")]
        nodes: Vec<String>,
        /// Only nodes whose tag KEY matches REGEX (unanchored, as Serf's) answer (repeatable).
        #[arg(long = "tag", value_name = "KEY=REGEX")]
        tags: Vec<String>,
        /// How long to wait for answers (default: gossip interval x 16 x ceil(log10(N+1))).
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
        /// Do not ask the members to acknowledge.
        #[arg(long)]
        no_ack: bool,
        #[arg(long, value_enum, default_value_t = QueryFormat::Text)]
        format: QueryFormat,
    },
    /// Print a new random 32-byte encryption key (base64) for --encrypt.
    Keygen,
    /// Print the version and the wire protocol version.
    Version,
    /// Rotate the gossip encryption key on every member: --install NEW,
    /// then --use NEW, then --remove OLD. Reports each node's result.
    #[command(group(clap::ArgGroup::new("op").required(true).args(["list", "install", "use_key", "remove"])))]
    Keys {
        /// List the keys installed across the cluster.
        #[arg(long)]
        list: bool,
        /// Install a key on every member (it decrypts, it does not encrypt yet).
        #[arg(long, value_name = "KEY")]
        install: Option<String>,
        /// Make an installed key the primary (used to encrypt) on every member.
        #[arg(long = "use", value_name = "KEY")]
        use_key: Option<String>,
        /// Remove a key from every member; the primary key cannot be removed.
        #[arg(long, value_name = "KEY")]
        remove: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Node name, unique in the cluster [default: the hostname].
    #[arg(long, env = "SHOAL_NODE")]
    pub node: Option<String>,
    /// Gossip address, UDP and TCP.
    #[arg(long, env = "SHOAL_BIND", default_value = "0.0.0.0:7946")]
    pub bind: String,
    /// Address other nodes reach this one at, IP or IP:PORT (default: detected, see --iface).
    #[arg(long, env = "SHOAL_ADVERTISE")]
    pub advertise: Option<String>,
    /// Interface whose IPv4 address is advertised [default: the address the
    /// kernel routes to the --join targets from, else the default route's].
    #[arg(long, env = "SHOAL_IFACE")]
    pub iface: Option<String>,
    /// Longest wait at start for a --join name to resolve, to pick the
    /// advertise address from the route to it, when neither the join names
    /// nor the host name gave one at once; then the default route's interface.
    #[arg(long, env = "SHOAL_ADVERTISE_WAIT", default_value = "5s", value_parser = parse_duration)]
    pub advertise_wait: Duration,
    /// Node(s) to join, HOST or HOST:PORT; repeatable or comma-separated. A DNS name
    /// means all its A records, re-resolved on every retry.
    #[arg(long, env = "SHOAL_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// Longest wait between join retries (backoff doubles up to it).
    #[arg(long, env = "SHOAL_RETRY_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub retry_interval: Duration,
    /// A tag KEY=VALUE; repeatable; the value is taken whole, commas included.
    /// [env: SHOAL_TAG=, used without --tag: a comma list, `\,` for a comma
    /// and `\\` for a backslash in a value]
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// File where tags persist across restarts (JSON); run-time changes are saved there.
    #[arg(long, env = "SHOAL_TAGS_FILE")]
    pub tags_file: Option<PathBuf>,
    /// Run CMD on member events; `member-join,member-leave=CMD` filters. Repeatable.
    #[arg(
        long = "event-handler",
        env = "SHOAL_EVENT_HANDLER",
        value_name = "[FILTER=]CMD"
    )]
    pub event_handlers: Vec<String>,
    /// Encrypt gossip with this key (base64 of 16, 24 or 32 bytes; `shoal keygen`).
    #[arg(
        long,
        env = "SHOAL_ENCRYPT",
        hide_env_values = true,
        value_name = "BASE64KEY"
    )]
    pub encrypt: Option<String>,
    /// Keyring file (JSON array of base64 keys, primary first): loaded at start
    /// if it exists (then --encrypt is ignored), else created from --encrypt;
    /// every rotation is saved there.
    #[arg(long, env = "SHOAL_KEYRING_FILE")]
    pub keyring_file: Option<PathBuf>,
    /// Timer profile.
    #[arg(long, env = "SHOAL_PROFILE", value_enum, default_value_t = Profile::Lan)]
    pub profile: Profile,
    /// Forget failed and left members after this long.
    #[arg(long, env = "SHOAL_REAP_AFTER", default_value = "24h", value_parser = parse_duration)]
    pub reap_after: Duration,
    /// Longest wait for members to confirm a graceful leave.
    #[arg(long, env = "SHOAL_LEAVE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub leave_timeout: Duration,
    /// Longest wait for a first push-pull with a peer before the member table
    /// is reported synced anyway (`"synced": true` in /v1/members; lbgen
    /// applies nothing from an agent that is not synced).
    #[arg(long, env = "SHOAL_SYNC_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub sync_timeout: Duration,
    /// Handler timeout: a handler still running after it is killed.
    #[arg(long, env = "SHOAL_HANDLER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub handler_timeout: Duration,
    /// Services file (TOML) for containers that run several processes.
    #[arg(long, env = "SHOAL_SERVICES")]
    pub services: Option<PathBuf>,
    /// HTTP health check of the supervised app, e.g. http://127.0.0.1:3000/health;
    /// tag `state` is `ready` only while it passes.
    #[arg(long, env = "SHOAL_CHECK")]
    pub check: Option<String>,
    /// Health check as a command (exit 0 = healthy), instead of --check.
    #[arg(long, env = "SHOAL_CHECK_CMD")]
    pub check_cmd: Option<String>,
    /// Health check interval.
    #[arg(long, env = "SHOAL_CHECK_INTERVAL", value_parser = parse_duration)]
    pub check_interval: Option<Duration>,
    /// Time between health checks from the start until the first pass
    /// (default 100ms), so `state=ready` follows the app's first good answer.
    #[arg(long, env = "SHOAL_CHECK_START_INTERVAL", value_parser = parse_duration)]
    pub check_start_interval: Option<Duration>,
    /// On SIGTERM: the longest wait between leaving the cluster
    /// (state=draining) and stopping the services; they are stopped as soon
    /// as no client connection is left open on the service port (tag `port`).
    #[arg(long, env = "SHOAL_DRAIN", default_value = "3s", value_parser = parse_duration)]
    pub drain: Duration,
    /// On SIGTERM: the shortest wait before open connections are counted,
    /// so the load balancer has stopped sending new ones (capped at --drain).
    #[arg(long, env = "SHOAL_DRAIN_GRACE", default_value = "1s", value_parser = parse_duration)]
    pub drain_grace: Duration,
    /// Serf JSON config file (repeatable; see docs/serf.md); flags and
    /// SHOAL_* variables win over it.
    #[arg(long = "config-file", env = "SHOAL_CONFIG_FILE", value_name = "FILE")]
    pub config_files: Vec<PathBuf>,
    /// Directory whose *.json Serf config files are read in lexical order,
    /// after the --config-file ones (repeatable).
    #[arg(long = "config-dir", env = "SHOAL_CONFIG_DIR", value_name = "DIR")]
    pub config_dirs: Vec<PathBuf>,
    /// Snapshot file: the members last known, rejoined at start (Serf's -snapshot).
    #[arg(long, env = "SHOAL_SNAPSHOT", value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
    /// With --snapshot: rejoin the snapshot's members even after a graceful leave.
    #[arg(long, env = "SHOAL_REJOIN")]
    pub rejoin: bool,
    /// Run the recent user events (the last 64 a peer keeps) when joining;
    /// without it, events from before the join are not run (Serf's -replay).
    #[arg(long, env = "SHOAL_REPLAY")]
    pub replay: bool,
    /// Command to supervise (after `--`).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
    /// Tags from Serf config files, under the --tag ones.
    #[arg(skip)]
    pub config_tags: Tags,
    /// SIGTERM leaves the cluster first (Serf's `leave_on_terminate`,
    /// shoal's default true).
    #[arg(skip = true)]
    pub leave_on_terminate: bool,
    /// SIGINT leaves the cluster first (not Serf's `skip_leave_on_interrupt`).
    #[arg(skip = true)]
    pub leave_on_interrupt: bool,
}

/// Checked agent settings plus what `main` needs besides the gossip core.
pub struct AgentSettings {
    pub agent: AgentConfig,
    pub api: std::net::SocketAddr,
    pub api_token: Option<String>,
    pub handlers: Vec<HandlerSpec>,
    pub handler_timeout: Duration,
    /// On a requested stop, the wait between leaving the cluster and
    /// stopping the supervised services (`--drain`): the maximum.
    pub drain: Duration,
    /// The shortest drain before connections are counted (`--drain-grace`).
    pub drain_grace: Duration,
    /// `--snapshot`: kept up to date while the agent runs.
    pub snapshot: Option<PathBuf>,
    /// Whether SIGTERM / SIGINT leave the cluster before stopping.
    pub leave_on_terminate: bool,
    pub leave_on_interrupt: bool,
}

impl AgentArgs {
    pub fn to_settings(&self, api: &str, api_token: Option<&str>) -> Result<AgentSettings, String> {
        let node = match &self.node {
            Some(n) => n.clone(),
            None => nix::unistd::gethostname()
                .map_err(|e| format!("cannot read the hostname ({e}); pass --node"))?
                .to_string_lossy()
                .into_owned(),
        };
        identity::validate_name(&node).map_err(|e| format!("--node: {e}"))?;
        let bind = addr::parse_ip_port(&self.bind, addr::DEFAULT_PORT)
            .map_err(|e| format!("--bind: {e}"))?;
        let mut join = Vec::new();
        for j in self.join.iter().filter(|j| !j.trim().is_empty()) {
            join.push(addr::parse_host_port(j).map_err(|e| format!("--join: {e}"))?);
        }
        if let Some(path) = &self.snapshot {
            self.add_snapshot_targets(path, &mut join)?;
        }
        let mut tag_set = match &self.tags_file {
            Some(path) => crate::persist::load_tags(path)?,
            None => Tags::new(),
        };
        tag_set.extend(self.config_tags.clone());
        let env_tags = std::env::var(TAG_ENV).ok();
        let (raw_tags, source) = tag_args(&self.tags, env_tags.as_deref());
        for t in &raw_tags {
            let (k, v) = tags::parse_tag(t).map_err(|e| format!("{source}: {e}"))?;
            tag_set.insert(k, v);
        }
        tags::validate(&tag_set).map_err(|e| format!("{source}: {e}"))?;
        let handlers = self
            .event_handlers
            .iter()
            .map(|h| HandlerSpec::parse(h).map_err(|e| format!("--event-handler: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let api = addr::parse_ip_port(api, 7373).map_err(|e| format!("--api: {e}"))?;
        let api_token = api_token.map(str::to_string).filter(|t| !t.is_empty());
        if let Some(t) = &api_token {
            crate::token::validate(t)?;
        }
        if !api.ip().is_loopback() && api_token.is_none() {
            return Err(format!(
                "--api {api} is not a loopback address: set --api-token (or SHOAL_API_TOKEN) \
                 so that every request must authenticate"
            ));
        }
        let keyring = self.keyring()?;
        if self.drain > Duration::from_secs(300) {
            return Err("--drain: at most 300s".into());
        }
        if self.retry_interval.is_zero() {
            return Err("--retry-interval must be more than 0".into());
        }
        // Last: detection may wait for the join names to resolve, and every
        // other flag error should be reported at once.
        let (advertise, first_join) = self.advertise_addr(bind, &join)?;
        Ok(AgentSettings {
            agent: AgentConfig {
                node,
                bind,
                advertise,
                join,
                first_join,
                retry_max: self.retry_interval,
                tags: tag_set,
                tags_file: self.tags_file.clone(),
                profile: self.profile,
                reap_after: self.reap_after,
                leave_timeout: self.leave_timeout,
                sync_timeout: self.sync_timeout,
                replay: self.replay,
                keyring,
                keyring_file: self.keyring_file.clone(),
            },
            api,
            api_token,
            handlers,
            handler_timeout: self.handler_timeout,
            drain: self.drain,
            drain_grace: self.drain_grace,
            snapshot: self.snapshot.clone(),
            leave_on_terminate: self.leave_on_terminate,
            leave_on_interrupt: self.leave_on_interrupt,
        })
    }

    /// The snapshot's members become join targets after the `--join` ones
    /// (none after a graceful leave, unless `--rejoin`).
    fn add_snapshot_targets(
        &self,
        path: &std::path::Path,
        join: &mut Vec<(String, u16)>,
    ) -> Result<(), String> {
        let Some(snap) = crate::snapshot::load(path).map_err(|e| format!("--snapshot: {e}"))?
        else {
            return Ok(());
        };
        let targets = snap.rejoin_targets(self.rejoin);
        if snap.left && targets.is_empty() {
            tracing::info!(file = %path.display(), "snapshot: this node left gracefully last time; not rejoining its members (--rejoin does)");
        } else {
            tracing::info!(file = %path.display(), members = targets.len(), "snapshot: rejoining the members last known");
        }
        for t in targets {
            if !join.contains(&t) {
                join.push(t);
            }
        }
        Ok(())
    }
}

impl AgentArgs {
    /// `--advertise`, else a specific `--bind` IP, else detected (see
    /// [`addr::detect_advertise`]); the choice and its reason are logged. With
    /// it, the join targets as detection resolved them (else empty).
    fn advertise_addr(
        &self,
        bind: std::net::SocketAddr,
        join: &[(String, u16)],
    ) -> Result<(std::net::SocketAddr, Vec<std::net::SocketAddr>), String> {
        let (advertise, why, resolved) = match &self.advertise {
            Some(a) => {
                let sa = addr::parse_ip_port(a, 0).map_err(|e| format!("--advertise: {e}"))?;
                if sa.ip().is_unspecified() {
                    return Err(format!("--advertise: {a:?} is not a reachable address"));
                }
                let port = if sa.port() == 0 {
                    bind.port()
                } else {
                    sa.port()
                };
                (
                    std::net::SocketAddr::new(sa.ip(), port),
                    "--advertise".to_string(),
                    Vec::new(),
                )
            }
            None if !bind.ip().is_unspecified() => {
                (bind, "the --bind address".to_string(), Vec::new())
            }
            None => {
                let (d, join_addrs) =
                    addr::detect_advertise(self.iface.as_deref(), join, self.advertise_wait)
                        .map_err(|e| format!("--advertise: {e}"))?;
                (
                    std::net::SocketAddr::new(d.ip, bind.port()),
                    d.why,
                    join_addrs,
                )
            }
        };
        tracing::info!(advertise = %advertise, why = %why, "advertise address chosen");
        Ok((advertise, resolved))
    }

    /// The keyring from `--keyring-file` and/or `--encrypt`; a new keyring
    /// file is written from `--encrypt`.
    fn keyring(&self) -> Result<Option<Keyring>, String> {
        let key = match &self.encrypt {
            Some(k) => Some(Key::parse(k).map_err(|e| format!("--encrypt: {e}"))?),
            None => None,
        };
        let Some(file) = &self.keyring_file else {
            return Ok(key.map(Keyring::new));
        };
        if let Some(ring) =
            crate::persist::load_keyring(file).map_err(|e| format!("--keyring-file: {e}"))?
        {
            if key.is_some() {
                tracing::warn!(file = %file.display(), "the keyring file exists: --encrypt is ignored");
            }
            return Ok(Some(ring));
        }
        let Some(key) = key else {
            return Err(format!(
                "--keyring-file: {} does not exist; give --encrypt KEY to create it",
                file.display()
            ));
        };
        let ring = Keyring::new(key);
        crate::persist::save_keyring(&ring, file)
            .map_err(|e| format!("--keyring-file: cannot write {}: {e}", file.display()))?;
        Ok(Some(ring))
    }
}

/// The command line, parsed: Serf spellings translated ([`crate::serf::argv`]),
/// `SERF_RPC_ADDR` / `SERF_RPC_AUTH` used when `--api` / `--api-token` are
/// not given, and the agent's Serf config files read in.
pub struct Parsed {
    pub cli: Cli,
    /// Invoked as `serf`: print what Serf's CLI prints.
    pub serf: bool,
    /// For ignored Serf flags and config keys: logged once logging is up.
    pub warnings: Vec<String>,
}

/// Why the command line was refused.
pub enum ParseError {
    /// clap's own (usage, `--help`, `--version`): print it as clap does.
    Clap(clap::Error),
    /// A Serf flag or config file: one line naming it (exit 2).
    Serf(String),
}

/// Parses `argv` (the program name first); see [`Parsed`].
pub fn parse_argv(argv: Vec<std::ffi::OsString>) -> Result<Parsed, ParseError> {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    let mut argv = argv.into_iter();
    let argv0 = argv.next().unwrap_or_else(|| "shoal".into());
    let serf = crate::serf::invoked_as_serf(&argv0);
    let mut command = Cli::command();
    if serf {
        command = command.name("serf").bin_name("serf");
    }
    let switches = switch_flags(&command);
    let translated = crate::serf::argv::translate(argv, &|flag| switches.iter().any(|s| s == flag))
        .map_err(ParseError::Serf)?;
    let mut warnings = translated.warnings;
    let matches = command
        .try_get_matches_from(std::iter::once(argv0).chain(translated.args))
        .map_err(ParseError::Clap)?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(ParseError::Clap)?;
    let sub = matches.subcommand().map(|(_, m)| m);
    // `value_source` panics on an id the command does not define.
    let source = |id: &str| {
        [sub, Some(&matches)]
            .into_iter()
            .flatten()
            .find(|m| m.try_contains_id(id).is_ok())
            .and_then(|m| m.value_source(id))
    };
    let explicit = |id: &str| {
        matches!(
            source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    // Serf's clients read these; its agent does not (`-rpc-addr` only).
    let client = !matches!(cli.command, CliCommand::Agent(_));
    if client && !explicit("api") {
        if let Ok(addr) = std::env::var("SERF_RPC_ADDR") {
            cli.api = addr;
        }
    }
    if client && !explicit("api_token") {
        if let Ok(token) = std::env::var("SERF_RPC_AUTH") {
            cli.api_token = Some(token);
        }
    }
    if let CliCommand::Agent(args) = &mut cli.command {
        if !args.config_files.is_empty() || !args.config_dirs.is_empty() {
            let cfg = crate::serf::config::load(&args.config_files, &args.config_dirs)
                .map_err(ParseError::Serf)?;
            warnings.extend(cfg.warnings.iter().cloned());
            let globals = crate::serf::apply::Globals {
                api: &mut cli.api,
                api_token: &mut cli.api_token,
                log_level: &mut cli.log_level,
            };
            crate::serf::apply::apply(cfg, args, globals, &explicit).map_err(ParseError::Serf)?;
        }
    }
    Ok(Parsed {
        cli,
        serf,
        warnings,
    })
}

/// Every `--long` flag of every subcommand that takes no value.
fn switch_flags(command: &clap::Command) -> Vec<String> {
    let mut out = vec!["--help".to_string(), "--version".to_string()];
    let mut stack = vec![command];
    while let Some(c) = stack.pop() {
        for a in c.get_arguments() {
            if !a.get_action().takes_values() {
                if let Some(l) = a.get_long() {
                    out.push(format!("--{l}"));
                }
            }
        }
        stack.extend(c.get_subcommands());
    }
    out
}

/// The environment variable behind `--tag`.
pub const TAG_ENV: &str = "SHOAL_TAG";

/// The tags to parse and where they came from (for error messages): the
/// `--tag` flags, each taken whole, else `SHOAL_TAG` split as a list.
pub fn tag_args(flags: &[String], env: Option<&str>) -> (Vec<String>, &'static str) {
    match env {
        Some(list) if flags.is_empty() => (split_env_list(list), TAG_ENV),
        _ => (flags.to_vec(), "--tag"),
    }
}

/// Splits an env var's comma list; `\,` is a comma and `\\` a backslash
/// inside an item, any other backslash stays as it is. Empty items are
/// dropped (`a=1,,b=2`, a trailing comma).
pub fn split_env_list(s: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some(',') | Some('\\')) => {
                cur.extend(chars.next());
            }
            ',' => items.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    items.push(cur);
    items.retain(|i| !i.is_empty());
    items
}

/// The contract's one duration syntax ([`shoal_contract::duration`]): `500ms`,
/// `1.5s`, `2m`, `24h`, `1d` (a bare number means seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    shoal_contract::parse_duration(s).map_err(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_or_explain() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("unit"));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn a_tag_flag_keeps_its_commas_and_the_env_list_splits_on_unescaped_ones() {
        let flags = vec!["note=x,role=admin".to_string()];
        assert_eq!(
            tag_args(&flags, Some("service=web")),
            (flags.clone(), "--tag"),
            "flags win over the env var, taken whole"
        );
        let (items, source) = tag_args(&[], Some(r"service=web,note=a\,b,path=c:\\d\e,"));
        assert_eq!(source, "SHOAL_TAG");
        assert_eq!(items, ["service=web", "note=a,b", r"path=c:\d\e"]);
        assert_eq!(split_env_list(""), Vec::<String>::new());
        assert_eq!(split_env_list(r"a=1\"), [r"a=1\"]);
        assert_eq!(tag_args(&[], None), (Vec::new(), "--tag"));
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    fn agent_args(argv: &[&str]) -> (Box<AgentArgs>, String) {
        let parsed = parse_argv(argv.iter().map(Into::into).collect())
            .unwrap_or_else(|_| panic!("{argv:?} refused"));
        match parsed.cli.command {
            CliCommand::Agent(args) => (args, parsed.cli.api),
            _ => panic!("not the agent command"),
        }
    }

    #[test]
    fn the_command_line_wins_over_serf_config_files_and_lists_append() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("serf.json");
        std::fs::write(
            &file,
            r#"{"node_name":"from-file","bind":"127.0.0.1:7000","rpc_addr":"127.0.0.1:7001",
               "start_join":["a"],"tags":{"role":"db","dc":"east"},"leave_on_terminate":false}"#,
        )
        .unwrap();
        let file = file.display().to_string();
        let (args, api) = agent_args(&[
            "shoal",
            "agent",
            "-config-file",
            &file,
            "-node=cli",
            "-join",
            "b",
        ]);
        assert_eq!(args.node.as_deref(), Some("cli"), "the flag wins");
        assert_eq!(
            args.bind, "127.0.0.1:7000",
            "the file fills what no flag gave"
        );
        assert_eq!(api, "127.0.0.1:7001");
        assert_eq!(
            args.join,
            ["a", "b"],
            "the file's join targets, then the flags'"
        );
        assert_eq!(args.config_tags["dc"], "east");
        assert!(
            !args.leave_on_terminate,
            "Serf's key selects Serf's behaviour"
        );
        let (args, _) = agent_args(&["shoal", "agent"]);
        assert!(args.leave_on_terminate, "shoal's default: SIGTERM leaves");
    }

    #[test]
    fn bad_agent_flags_name_the_flag() {
        let cases: [(&[&str], &str); 4] = [
            (&["--node", "a b", "--bind", "127.0.0.1:0"], "--node"),
            (&["--node", "a", "--join", "x:y"], "--join"),
            (&["--node", "a", "--tag", "oops"], "--tag"),
            (&["--node", "a", "--encrypt", "c2hvcnQ="], "--encrypt"),
        ];
        for (flags, flag) in cases {
            let argv = [&["shoal", "agent"][..], flags].concat();
            let CliCommand::Agent(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not the agent command")
            };
            let err = args.to_settings("127.0.0.1:7373", None).err().unwrap();
            assert!(err.starts_with(flag), "{flags:?}: {err}");
        }
    }
}

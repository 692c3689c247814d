//! `lbgen` binary: flag parsing and logging only; the work lives in the library.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use lbgen::model::{MembersDoc, Model};
use lbgen::render::{Renderer, Vars};
use lbgen::Error;

#[derive(Parser)]
#[command(
    name = "lbgen",
    version,
    about = "Render HAProxy config from shoal membership and hot-reload HAProxy"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        env = "LBGEN_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Render once from a members JSON document (file or `-` for stdin).
    Render(RenderArgs),
    /// Follow membership (agent events or a members file), re-render, validate, reload.
    Watch(Box<WatchArgs>),
    /// Show what a snapshot makes: pools, routes, members outvoted on pool settings, skipped.
    Status(StatusArgs),
    /// Keep certificates from an ACME CA (HTTP-01) in HAProxy's cert dir, renewed before expiry.
    Acme(AcmeArgs),
}

#[derive(clap::Args)]
struct AcmeArgs {
    /// The CA's ACME directory URL (Let's Encrypt:
    /// https://acme-v02.api.letsencrypt.org/directory).
    #[arg(long, env = "LBGEN_ACME_DIRECTORY", value_name = "URL")]
    directory: String,
    /// Contact address for the account (expiry notices).
    #[arg(long, env = "LBGEN_ACME_EMAIL")]
    email: Option<String>,
    /// One certificate: its domains, comma-separated; the file is CERT_DIR/FIRST.pem
    /// (repeatable; env LBGEN_ACME_CERT takes a ;-separated list).
    #[arg(
        long = "cert",
        env = "LBGEN_ACME_CERT",
        value_name = "DOMAIN[,DOMAIN...]",
        value_delimiter = ';',
        required = true
    )]
    certs: Vec<String>,
    /// HAProxy's certificate directory: NAME.pem (chain, then key) written atomically;
    /// lbgen's own files in DIR/.acme/ (share DIR between LBs).
    #[arg(long, env = "LBGEN_ACME_CERT_DIR", value_name = "DIR")]
    cert_dir: PathBuf,
    /// The account's credentials (mode 600), created at the first order
    /// [default: CERT_DIR/.acme/account.json].
    #[arg(long, env = "LBGEN_ACME_ACCOUNT", value_name = "FILE")]
    account: Option<PathBuf>,
    /// Renew when this much of the lifetime is left: a share (1/3) or a duration (30d).
    #[arg(long, env = "LBGEN_ACME_RENEW_BEFORE", default_value = lbgen::acme::RenewBefore::DEFAULT)]
    renew_before: String,
    /// PEM root that the CA's directory is served with (a test CA); system roots otherwise.
    #[arg(long, env = "LBGEN_ACME_CA_BUNDLE", value_name = "FILE")]
    ca_bundle: Option<PathBuf>,
    /// Answer HTTP-01 challenges (and /status.json) on ADDR; HAProxy routes the CA there
    /// with --var acme_challenge=ADDR.
    #[arg(long, env = "LBGEN_ACME_HTTP", value_name = "ADDR")]
    http: Option<String>,
    /// First wait after a failed order; doubles each time, up to an hour.
    #[arg(long, env = "LBGEN_ACME_RETRY", default_value = "1m")]
    retry: String,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("src").required(true).args(["api", "members"])))]
struct StatusArgs {
    /// Agent API address (HOST:PORT): reads /v1/members.
    #[arg(long, env = "LBGEN_API")]
    api: Option<String>,
    /// Bearer token for the agent's API (its --api-token); sent on every request. Without
    /// this flag and LBGEN_API_TOKEN, SHOAL_API_TOKEN is used when set.
    #[arg(long, env = "LBGEN_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Members document (`shoal members --format json`), or `-` for stdin.
    #[arg(long, env = "LBGEN_MEMBERS")]
    members: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: StatusFormat,
    /// Template variable K=V, as given to `watch` (repeatable; env LBGEN_VAR takes a
    /// comma-separated list): `http_port`, `stats_port`, `https_port` and `listen_ports`
    /// decide which `listen=` tags are accepted, so the status agrees with the LB.
    #[arg(
        long = "var",
        value_name = "K=V",
        env = "LBGEN_VAR",
        value_delimiter = ','
    )]
    vars: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum StatusFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("src").required(true).args(["api", "members"])))]
struct WatchArgs {
    #[command(flatten)]
    tpl: TemplateArgs,
    /// Agent API address (HOST:PORT): follows /v1/events, renders from /v1/members.
    #[arg(long, env = "LBGEN_API")]
    api: Option<String>,
    /// Bearer token for the agent's API (its --api-token); sent on every request. Without
    /// this flag and LBGEN_API_TOKEN, SHOAL_API_TOKEN is used when set.
    #[arg(long, env = "LBGEN_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Members JSON file to watch instead of the agent.
    #[arg(long, env = "LBGEN_MEMBERS")]
    members: Option<PathBuf>,
    /// The live HAProxy config file (written atomically, previous one kept as OUT.bak).
    #[arg(long, env = "LBGEN_OUT")]
    out: PathBuf,
    /// HAProxy master CLI socket (`haproxy -W -S SOCK`); without it lbgen only writes OUT.
    #[arg(long, env = "LBGEN_HAPROXY_MASTER")]
    haproxy_master: Option<PathBuf>,
    /// Validation command; `{}` is the candidate file. "none" disables the check.
    #[arg(long, env = "LBGEN_CHECK_CMD", default_value = lbgen::output::CheckCmd::DEFAULT)]
    check_cmd: String,
    /// Debounce of changes that reload: apply after MIN of quiet, at most MAX after the first
    /// change; a change that reloads MIN or more after the last one is applied at once.
    /// Runtime-API changes (servers joining/leaving a pool) do not wait.
    #[arg(
        long,
        env = "LBGEN_WAIT",
        default_value = "200ms:2s",
        value_name = "MIN:MAX"
    )]
    wait: String,
    /// How long to wait for the new worker generation after a reload.
    #[arg(long, env = "LBGEN_RELOAD_TIMEOUT", default_value = "10s")]
    reload_timeout: String,
    /// Re-check membership, the file and HAProxy this often without a signal ("0" = never).
    #[arg(long, env = "LBGEN_RESYNC", default_value = "10s")]
    resync: String,
    /// Serve the status page (/), /status.json, /metrics and /events on ADDR
    /// (e.g. 127.0.0.1:9100). Off without it.
    #[arg(long, env = "LBGEN_HTTP", value_name = "ADDR")]
    http: Option<String>,
    /// Another file from the same snapshot: TEMPLATE:OUT[:COMMAND] (repeatable; env
    /// LBGEN_RENDER takes a ;-separated list). OUT is rewritten only when its bytes change,
    /// then COMMAND runs (no shell).
    #[arg(
        long = "render",
        value_name = "TEMPLATE:OUT[:COMMAND]",
        env = "LBGEN_RENDER",
        value_delimiter = ';'
    )]
    renders: Vec<String>,
    /// How long a --render COMMAND may run before it is killed.
    #[arg(long, env = "LBGEN_RENDER_TIMEOUT", default_value = "30s")]
    render_timeout: String,
}

#[derive(clap::Args)]
struct TemplateArgs {
    /// Handlebars template; the compiled-in default template if omitted.
    #[arg(long, env = "LBGEN_TEMPLATE")]
    template: Option<PathBuf>,
    /// This node's member name, for per-node templates (`local`, `lbs[].is_local`; the
    /// HAProxy config never sees it). watch: the agent's own name (/v1/info) if omitted.
    #[arg(long, env = "LBGEN_LOCAL", value_name = "NAME")]
    local: Option<String>,
    /// Template variable K=V (repeatable; env LBGEN_VAR takes a comma-separated list).
    #[arg(
        long = "var",
        value_name = "K=V",
        env = "LBGEN_VAR",
        value_delimiter = ','
    )]
    vars: Vec<String>,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("src").required(true).args(["api", "members"])))]
struct RenderArgs {
    #[command(flatten)]
    tpl: TemplateArgs,
    /// Members document (`shoal members --format json`), or `-` for stdin.
    #[arg(long, env = "LBGEN_MEMBERS")]
    members: Option<String>,
    /// Agent API address (HOST:PORT): renders from /v1/members once the agent is synced.
    #[arg(long, env = "LBGEN_API")]
    api: Option<String>,
    /// Bearer token for the agent's API (its --api-token). Without this flag and
    /// LBGEN_API_TOKEN, SHOAL_API_TOKEN is used when set.
    #[arg(long, env = "LBGEN_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// With --api: how long to wait for the agent to answer with a synced member table
    /// (it may be starting); then fail. "0" = one try.
    #[arg(long, env = "LBGEN_SYNC_WAIT", default_value = "0")]
    sync_wait: String,
    /// Write here atomically (keeps OUT.bak); stdout if omitted.
    #[arg(long, env = "LBGEN_OUT")]
    out: Option<PathBuf>,
    /// Print to stdout even if --out is given.
    #[arg(long)]
    dry_run: bool,
    /// Validate before writing --out (e.g. "haproxy -c -q -f {}"); no check if omitted.
    #[arg(long, env = "LBGEN_CHECK_CMD")]
    check_cmd: Option<String>,
}

/// Logs on stderr, text or JSON; the level from `LBGEN_LOG` (`debug`,
/// `warn,shoal=debug`: tracing's target directives, no regex engine needed).
/// A bad value is reported and `info` used, rather than silently ignored.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let info = || Targets::new().with_default(LevelFilter::INFO);
    let (filter, bad) = match std::env::var("LBGEN_LOG") {
        Ok(v) if !v.trim().is_empty() => match v.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(e) => (
                info(),
                Some(format!("LBGEN_LOG={v:?} ignored ({e}); logging at info")),
            ),
        },
        _ => (info(), None),
    };
    // The filter alone decides the level: `fmt()`'s own builder would cap it
    // at info underneath, so `LBGEN_LOG=debug` printed nothing.
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry.with(layer.json()).init(),
        LogFormat::Text => registry.with(layer).init(),
    }
    if let Some(msg) = bad {
        tracing::warn!("{msg}");
    }
}

fn load_template(p: &Option<PathBuf>) -> Result<Renderer, Error> {
    match p {
        Some(p) => Renderer::from_file(p),
        None => Ok(Renderer::builtin()),
    }
}

fn read_members(src: &str) -> Result<MembersDoc, Error> {
    let text = if src == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Error::new(format!("reading members from stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(Path::new(src))
            .map_err(|e| Error::new(format!("members file {src}: {e}")))?
    };
    MembersDoc::from_json(&text).map_err(|e| Error::new(format!("members {src}: {e}")))
}

async fn render(a: RenderArgs) -> Result<(), Error> {
    let renderer = load_template(&a.tpl.template)?;
    let mut vars = Vars::with_overrides(&a.tpl.vars)?;
    let doc = match (a.api, a.members) {
        (Some(api), None) => {
            let spec = lbgen::source::SourceSpec::api(api, api_token(a.api_token)?);
            let wait = lbgen::watch::parse_duration(&a.sync_wait)?;
            lbgen::source::Source::new(spec)
                .snapshot_within(wait)
                .await?
        }
        (None, Some(m)) => read_members(&m)?,
        _ => return Err(Error::new("give exactly one of --api and --members")),
    };
    let model = Model::build_with(&doc, &lbgen::pool_tags::ListenPolicy::from_vars(&vars.0))
        .with_local(&doc, a.tpl.local.as_deref());
    lbgen::apply::log_model(&model);
    if let Some(dir) = vars.tls_certs().map(PathBuf::from) {
        // The copies and crt-list the TLS bind reads (a dry run only looks at them).
        let check = a.check_cmd.is_some();
        let mut certs = lbgen::certs::CertDir::new(&dir, Path::new(vars.tls_state_dir()), check)?;
        if !a.dry_run {
            certs.refresh(None).await;
        }
        let list = certs.crt_list_path().display().to_string();
        vars.set_tls_crt_list(certs.has_certs().then_some(list.as_str()));
    }
    let text = renderer.render(&model, &vars)?;
    match (&a.out, a.dry_run) {
        (Some(out), false) => {
            let check = a
                .check_cmd
                .as_deref()
                .map(lbgen::output::CheckCmd::parse)
                .transpose()?;
            lbgen::output::write_atomic(out, &text, check.as_ref()).await?;
            lbgen::apply::seed_server_state(&text);
            tracing::info!(out = %out.display(), pools = model.pools.len(), "config written");
        }
        _ => print!("{text}"),
    }
    Ok(())
}

/// The token for the agent's API: `--api-token` / `LBGEN_API_TOKEN`, else
/// `SHOAL_API_TOKEN` (what the agent and the shoal CLI next to lbgen read). Empty = none.
fn api_token(flag: Option<String>) -> Result<Option<String>, Error> {
    let token = flag
        .or_else(|| std::env::var("SHOAL_API_TOKEN").ok())
        .filter(|t| !t.is_empty());
    if let Some(t) = &token {
        shoal_contract::token::validate_token(t).map_err(Error::new)?;
    }
    Ok(token)
}

async fn status(a: StatusArgs) -> Result<(), Error> {
    let doc = match (a.api, a.members) {
        (Some(api), None) => {
            let spec = lbgen::source::SourceSpec::api(api, api_token(a.api_token)?);
            lbgen::source::Source::new(spec).snapshot().await?
        }
        (None, Some(m)) => read_members(&m)?,
        _ => return Err(Error::new("give exactly one of --api and --members")),
    };
    let vars = Vars::with_overrides(&a.vars)?;
    let model = Model::build_with(&doc, &lbgen::pool_tags::ListenPolicy::from_vars(&vars.0));
    let st = lbgen::status::StatusReport::of(&model);
    let text = match a.format {
        StatusFormat::Text => st.text(),
        StatusFormat::Json => {
            serde_json::to_string_pretty(&st)
                .map_err(|e| Error::new(format!("encoding the status: {e}")))?
                + "\n"
        }
    };
    use std::io::Write;
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| Error::new(format!("writing the status: {e}")))
}

async fn watch(a: WatchArgs) -> Result<(), Error> {
    use lbgen::watch::{parse_duration, Wait, WatchConfig};
    let source = match (a.api, a.members) {
        (Some(api), None) => lbgen::source::SourceSpec::api(api, api_token(a.api_token)?),
        (None, Some(f)) => lbgen::source::SourceSpec::File(f),
        _ => return Err(Error::new("give exactly one of --api and --members")),
    };
    let check = if a.check_cmd.trim() == "none" {
        None
    } else {
        Some(lbgen::output::CheckCmd::parse(&a.check_cmd)?)
    };
    let render_timeout = parse_duration(&a.render_timeout)?;
    let renders = a
        .renders
        .iter()
        .map(|r| {
            lbgen::extras::ExtraSpec::parse(r).map(|mut spec| {
                spec.timeout = render_timeout;
                spec
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = WatchConfig {
        template: a.tpl.template,
        vars: Vars::with_overrides(&a.tpl.vars)?,
        out: a.out,
        source,
        master: a.haproxy_master,
        check,
        wait: Wait::parse(&a.wait)?,
        reload_timeout: parse_duration(&a.reload_timeout)?,
        leaving_max: lbgen::watch::LEAVING_MAX,
        resync: Some(parse_duration(&a.resync)?).filter(|d| !d.is_zero()),
        renders,
        local: a.tpl.local,
        reports: None,
        http: a.http.as_deref().map(lbgen::http::bind).transpose()?,
    };
    lbgen::watch::run(cfg, shutdown_signal()).await
}

async fn acme(a: AcmeArgs) -> Result<(), Error> {
    use lbgen::acme::{AcmeConfig, Backoff, CaConfig, CertSpec, RenewBefore, Store};
    let store = Store::open(&a.cert_dir)?;
    let certs = a
        .certs
        .iter()
        .map(|c| CertSpec::parse(c))
        .collect::<Result<Vec<_>, _>>()?;
    // One file per certificate: two --cert with one first name would overwrite each other.
    for (i, c) in certs.iter().enumerate() {
        if certs[..i].iter().any(|o| o.name() == c.name()) {
            return Err(Error::new(format!(
                "--cert: two certificates named {} (the first domain names the file)",
                c.name()
            )));
        }
    }
    // A bundle that cannot work fails here, not at the first order minutes later.
    if let Some(p) = &a.ca_bundle {
        let pem = std::fs::read_to_string(p)
            .map_err(|e| Error::new(format!("--ca-bundle {}: {e}", p.display())))?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(Error::new(format!(
                "--ca-bundle {}: no PEM certificate in it",
                p.display()
            )));
        }
    }
    let cfg = AcmeConfig {
        ca: CaConfig {
            directory: a.directory,
            email: a.email.filter(|e| !e.is_empty()),
            account_file: a.account.unwrap_or_else(|| store.default_account()),
            ca_bundle: a.ca_bundle,
        },
        certs,
        store,
        renew_before: RenewBefore::parse(&a.renew_before)?,
        backoff: Backoff::new(
            lbgen::watch::parse_duration(&a.retry)
                .map_err(|e| Error::new(format!("--retry: {e}")))?,
        ),
        http: a.http.as_deref().map(lbgen::http::bind).transpose()?,
    };
    lbgen::acme::run(cfg, shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lbgen: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        match cli.cmd {
            Cmd::Render(a) => render(a).await,
            Cmd::Watch(a) => watch(*a).await,
            Cmd::Status(a) => status(a).await,
            Cmd::Acme(a) => acme(a).await,
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbgen: {e}");
            ExitCode::FAILURE
        }
    }
}

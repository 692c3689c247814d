//! `shoal`: parses flags, then either runs the agent (and its supervisor;
//! the lifecycle is [`shoal::run`], this file is glue) or a CLI command
//! against a running agent. Exit codes: 0 ok, 1 failure,
//! 2 bad usage or configuration; as a supervisor, the main service's code.

use std::process::ExitCode;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::error;

use shoal::cli::{AgentArgs, Cli, CliCommand, LogFormat, ParseError, Parsed};
use shoal::client::Client;
use shoal::commands::{self, Style};
use shoal::lifecycle::{self, Exit, Request};

fn main() -> ExitCode {
    let Parsed {
        cli,
        serf,
        warnings,
    } = match shoal::cli::parse_argv(std::env::args_os().collect()) {
        Ok(p) => p,
        Err(ParseError::Clap(e)) => e.exit(),
        Err(ParseError::Serf(e)) => {
            eprintln!("shoal: error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(cli.log_format, cli.log_level.as_deref());
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let style = if serf { Style::Serf } else { Style::Shoal };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(run(cli, style));
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// Logs on stderr, text or JSON; the level from `--log-level` (Serf's
/// names), else `SHOAL_LOG` (`debug`, `warn,shoal=debug`: tracing's target
/// directives, no regex engine needed). A bad value is reported and `info`
/// used, rather than silently ignored.
fn init_logging(format: LogFormat, level: Option<&str>) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let info = || Targets::new().with_default(LevelFilter::INFO);
    let (name, value) = match level {
        Some(l) => ("--log-level", Some(shoal::serf::level_directive(l))),
        None => ("SHOAL_LOG", std::env::var("SHOAL_LOG").ok()),
    };
    let (filter, bad) = match value {
        Some(v) if !v.trim().is_empty() => match v.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(e) => (
                info(),
                Some(format!("{name}={v:?} ignored ({e}); logging at info")),
            ),
        },
        _ => (info(), None),
    };
    // The filter alone decides the level: `fmt()`'s own builder would cap it
    // at info underneath, so `SHOAL_LOG=debug` printed nothing.
    // Each layer has its own filter: the stream for `serf monitor` takes
    // debug lines while somebody listens, whatever the log's level.
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(shoal::logstream::layer());
    match format {
        LogFormat::Json => registry.with(layer.json().with_filter(filter)).init(),
        LogFormat::Text => registry.with(layer.with_filter(filter)).init(),
    }
    if let Some(msg) = bad {
        tracing::warn!("{msg}");
    }
}

async fn run(cli: Cli, style: Style) -> i32 {
    let client = Client::new(&cli.api, cli.api_token.clone());
    let result = match cli.command {
        CliCommand::Agent(args) => {
            return run_agent(*args, &cli.api, cli.api_token.as_deref()).await
        }
        CliCommand::Members {
            format,
            status,
            name,
            tags,
            detailed,
        } => {
            let query = commands::MembersQuery {
                format,
                status,
                name,
                tags,
                detailed,
            };
            commands::members(&client, style, query).await
        }
        CliCommand::Monitor { index, format } => match style {
            Style::Shoal => commands::monitor(&client, index, format).await,
            Style::Serf => commands::monitor_logs(&client, cli.log_level.as_deref(), format).await,
        },
        CliCommand::Join { addrs } => commands::join(&client, style, addrs).await,
        CliCommand::Leave => commands::leave(&client, style).await,
        CliCommand::ForceLeave { name } => commands::force_leave(&client, style, &name).await,
        CliCommand::Tags { set, delete } => commands::set_tags(&client, style, &set, &delete).await,
        CliCommand::Info { format } => commands::info(&client, style, format).await,
        CliCommand::Event {
            name,
            payload,
            coalesce,
        } => commands::event(&client, &name, payload.unwrap_or_default(), coalesce).await,
        CliCommand::Query {
            name,
            payload,
            nodes,
            tags,
            timeout,
            no_ack,
            format,
        } => {
            let q = commands::QueryArgs {
                name,
                payload: payload.unwrap_or_default(),
                nodes,
                tags,
                timeout,
                no_ack,
            };
            commands::query(&client, q, format).await
        }
        CliCommand::Keygen => {
            println!("{}", shoal::keyring::generate());
            Ok(())
        }
        CliCommand::Version => {
            commands::version(style);
            Ok(())
        }
        CliCommand::Keys {
            list,
            install,
            use_key,
            remove,
        } => commands::keys(&client, list, install, use_key, remove).await,
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            match style {
                Style::Shoal => eprintln!("shoal: error: {}", e.message),
                Style::Serf => eprintln!("Error: {}", e.message),
            }
            if e.usage {
                2
            } else {
                1
            }
        }
    }
}

/// Checks the flags, turns signals into [`Request`]s, runs the agent (see
/// [`shoal::lifecycle`]) and reports how it ended.
async fn run_agent(args: AgentArgs, api: &str, api_token: Option<&str>) -> i32 {
    let (settings, services) = match lifecycle::configure(&args, api, api_token) {
        Ok(x) => x,
        Err(exit) => return report(exit),
    };
    let leave = LeaveOn {
        terminate: settings.leave_on_terminate,
        interrupt: settings.leave_on_interrupt,
    };
    let requests = match signal_requests(leave) {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            return 1;
        }
    };
    report(shoal::run(settings, services, requests).await)
}

fn report(exit: Exit) -> i32 {
    if let Some(e) = exit.error() {
        eprintln!("shoal: error: {e}");
    }
    exit.code()
}

/// Whether SIGTERM / SIGINT leave the cluster before stopping (Serf's
/// `leave_on_terminate`, `skip_leave_on_interrupt`; both by default).
#[derive(Clone, Copy)]
struct LeaveOn {
    terminate: bool,
    interrupt: bool,
}

fn stop(why: &'static str, leave: bool) -> Request {
    if leave {
        Request::Stop(why)
    } else {
        Request::StopWithoutLeave(why)
    }
}

/// SIGTERM and SIGINT ask for a graceful stop (or, as configured, a stop
/// without leaving); SIGHUP, SIGUSR1, SIGUSR2 and SIGQUIT are passed on to
/// the supervised services.
fn signal_requests(leave: LeaveOn) -> std::io::Result<mpsc::Receiver<Request>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut quit = signal(SignalKind::quit())?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let request = tokio::select! {
                _ = term.recv() => stop("SIGTERM", leave.terminate),
                _ = int.recv() => stop("SIGINT", leave.interrupt),
                _ = hup.recv() => Request::Forward(Signal::SIGHUP),
                _ = usr1.recv() => Request::Forward(Signal::SIGUSR1),
                _ = usr2.recv() => Request::Forward(Signal::SIGUSR2),
                _ = quit.recv() => Request::Forward(Signal::SIGQUIT),
            };
            if tx.send(request).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

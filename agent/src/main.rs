//! `shoal`: parses flags, then either runs the agent (and its supervisor;
//! the lifecycle is [`shoal::run`], this file is glue) or a CLI command
//! against a running agent. Exit codes: 0 ok, 1 failure,
//! 2 bad usage or configuration; as a supervisor, the main service's code.

use std::process::ExitCode;

use clap::Parser;
use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::error;

use shoal::cli::{AgentArgs, Cli, CliCommand, LogFormat};
use shoal::client::Client;
use shoal::commands;
use shoal::lifecycle::{self, Exit, Request};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
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
    let code = runtime.block_on(run(cli));
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// Logs on stderr, text or JSON; the level from `SHOAL_LOG` (`debug`,
/// `warn,shoal=debug`: tracing's target directives, no regex engine needed).
/// A bad value is reported and `info` used, rather than silently ignored.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let info = || Targets::new().with_default(LevelFilter::INFO);
    let (filter, bad) = match std::env::var("SHOAL_LOG") {
        Ok(v) if !v.trim().is_empty() => match v.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(e) => (
                info(),
                Some(format!("SHOAL_LOG={v:?} ignored ({e}); logging at info")),
            ),
        },
        _ => (info(), None),
    };
    // The filter alone decides the level: `fmt()`'s own builder would cap it
    // at info underneath, so `SHOAL_LOG=debug` printed nothing.
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

async fn run(cli: Cli) -> i32 {
    let client = Client::new(&cli.api, cli.api_token.clone());
    let result = match cli.command {
        CliCommand::Agent(args) => {
            return run_agent(*args, &cli.api, cli.api_token.as_deref()).await
        }
        CliCommand::Members {
            format,
            status,
            tags,
        } => commands::members(&client, format, status, &tags).await,
        CliCommand::Monitor { index, format } => commands::monitor(&client, index, format).await,
        CliCommand::Join { addrs } => commands::join(&client, addrs).await,
        CliCommand::Leave => commands::leave(&client).await,
        CliCommand::ForceLeave { name } => commands::force_leave(&client, &name).await,
        CliCommand::Tags { set, delete } => commands::set_tags(&client, &set, &delete).await,
        CliCommand::Info { format } => commands::info(&client, format).await,
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
            eprintln!("shoal: error: {}", e.message);
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
    let requests = match signal_requests() {
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

/// SIGTERM and SIGINT ask for a graceful stop; SIGHUP, SIGUSR1, SIGUSR2 and
/// SIGQUIT are passed on to the supervised services.
fn signal_requests() -> std::io::Result<mpsc::Receiver<Request>> {
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
                _ = term.recv() => Request::Stop("SIGTERM"),
                _ = int.recv() => Request::Stop("SIGINT"),
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

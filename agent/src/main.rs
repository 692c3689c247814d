//! `shoal`: parses flags, then either runs the agent (and its supervisor) or
//! a CLI command against a running agent. Exit codes: 0 ok, 1 failure,
//! 2 bad usage or configuration; as a supervisor, the main service's code.

use std::process::ExitCode;
use std::sync::{Arc, Weak};
use std::time::Duration;

use clap::Parser;
use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use shoal::agent;
use shoal::api::{self, ApiState, InfoHook};
use shoal::cli::{AgentArgs, Cli, Command, LogFormat};
use shoal::client::Client;
use shoal::commands;
use shoal::handlers;
use shoal::supervisor::{Supervisor, SupervisorSpec};
use shoal::tags::Tags;

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
        Command::Agent(args) => return run_agent(*args, &cli.api, cli.api_token.as_deref()).await,
        Command::Members {
            format,
            status,
            tags,
        } => commands::members(&client, format, status, &tags).await,
        Command::Monitor { index, format } => commands::monitor(&client, index, format).await,
        Command::Join { addrs } => commands::join(&client, addrs).await,
        Command::Leave => commands::leave(&client).await,
        Command::ForceLeave { name } => commands::force_leave(&client, &name).await,
        Command::Tags { set, delete } => commands::set_tags(&client, &set, &delete).await,
        Command::Info { format } => commands::info(&client, format).await,
        Command::Keygen => {
            println!("{}", shoal::keyring::generate());
            Ok(())
        }
        Command::Keys {
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

/// Everything is checked before anything starts; then the agent, the API,
/// handlers and services start, and we wait for a reason to stop.
async fn run_agent(args: AgentArgs, api_addr: &str, api_token: Option<&str>) -> i32 {
    let settings = match args.to_settings(api_addr, api_token) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shoal: error: {e}");
            return 2;
        }
    };
    let supervising = !args.command.is_empty() || args.services.is_some();
    let sup_spec = if supervising {
        let spec =
            SupervisorSpec::load(args.services.as_deref(), &args.command).and_then(|mut s| {
                s.apply_check_flags(
                    args.check.as_deref(),
                    args.check_cmd.as_deref(),
                    args.check_interval,
                )
                .map(|()| s)
            });
        match spec {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("shoal: error: {e}");
                return e.exit_code();
            }
        }
    } else {
        if args.check.is_some() || args.check_cmd.is_some() {
            eprintln!("shoal: error: --check needs a supervised command (-- CMD) or --services");
            return 2;
        }
        None
    };
    if let Err(e) = shoal::process::init_reaper() {
        error!(error = %e, "cannot start the child reaper");
        return 1;
    }

    let mut agent_cfg = settings.agent;
    if sup_spec.as_ref().is_some_and(|s| s.check.is_some()) {
        agent_cfg.tags.insert("state".into(), "starting".into());
    }
    let (handle, agent_task) = match agent::start(agent_cfg).await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("shoal: error: {e}");
            return 1;
        }
    };
    let listener = match api::bind(settings.api).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("shoal: error: {e}");
            return 1;
        }
    };
    info!(api = %settings.api, "HTTP API listening");
    handlers::start(&handle, settings.handlers, settings.handler_timeout);

    let supervisor = match sup_spec {
        Some(spec) => match Supervisor::start(spec) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                eprintln!("shoal: error: {e}");
                let _ = handle.leave().await;
                return e.exit_code();
            }
        },
        None => None,
    };
    let info_hook: Option<InfoHook> = supervisor.as_ref().map(|s| {
        let weak: Weak<Supervisor> = Arc::downgrade(s);
        let hook: InfoHook = Arc::new(move || match weak.upgrade() {
            Some(s) => serde_json::to_value(s.status()).unwrap_or_default(),
            None => serde_json::Value::Null,
        });
        hook
    });
    let (shutdown_tx, mut shutdown_rx) = mpsc::channel::<oneshot::Sender<()>>(4);
    tokio::spawn(api::serve(
        listener,
        ApiState {
            agent: handle.clone(),
            shutdown: shutdown_tx,
            info_hook,
            token: settings.api_token.clone(),
        },
    ));
    let health_task = supervisor
        .as_ref()
        .and_then(|s| s.health())
        .map(|health| tokio::spawn(gossip_health(handle.clone(), health)));

    let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr1), Ok(mut usr2), Ok(mut quit)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
        signal(SignalKind::quit()),
    ) else {
        error!("cannot install signal handlers");
        return 1;
    };
    let waited = supervisor.clone();
    let mut sup_exit = Box::pin(async move {
        match waited {
            Some(s) => Some(s.wait_exit().await),
            None => std::future::pending().await,
        }
    });
    let mut agent_task = agent_task;
    let mut api_ack: Option<oneshot::Sender<()>> = None;
    let mut app_exited: Option<i32> = None;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: leaving gracefully"); break; }
            _ = int.recv() => { info!("SIGINT: leaving gracefully"); break; }
            Some(ack) = shutdown_rx.recv() => { info!("leave requested through the API"); api_ack = Some(ack); break; }
            code = &mut sup_exit => { app_exited = code; info!(code = ?code, "supervised services ended"); break; }
            _ = hup.recv() => forward(&supervisor, Signal::SIGHUP),
            _ = usr1.recv() => forward(&supervisor, Signal::SIGUSR1),
            _ = usr2.recv() => forward(&supervisor, Signal::SIGUSR2),
            _ = quit.recv() => forward(&supervisor, Signal::SIGQUIT),
            _ = &mut agent_task => { error!("the gossip loop stopped unexpectedly"); return 1; }
        }
    }

    drop(sup_exit);
    // From here on `state` is ours to set: the health check must not turn
    // `draining` back into `ready`.
    if let Some(task) = health_task {
        task.abort();
    }
    // Graceful stop: draining first, so the load balancer stops routing,
    // then leave, wait for the drain, then stop the services.
    if supervisor.is_some() && app_exited.is_none() {
        let mut t = Tags::new();
        t.insert("state".into(), "draining".into());
        if let Err(e) = handle.set_tags(t, Vec::new()).await {
            warn!(error = %e, "cannot gossip state=draining");
        }
    }
    if let Err(e) = handle.leave().await {
        warn!(error = %e, "leave did not complete");
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), &mut agent_task).await;
    if let Some(ack) = api_ack.take() {
        let _ = ack.send(());
        // Let the API write its answer before the process ends.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(sup) = supervisor else {
        return 0;
    };
    if app_exited.is_none() && !args.drain.is_zero() {
        info!(drain = ?args.drain, "draining before stopping services");
        tokio::select! {
            _ = tokio::time::sleep(args.drain) => {}
            code = sup.wait_exit() => { info!(code, "services ended during the drain"); }
        }
    }
    // The info hook holds only a weak reference; wait out any in-flight call.
    let mut sup = sup;
    let sup = loop {
        match Arc::try_unwrap(sup) {
            Ok(s) => break s,
            Err(again) => {
                sup = again;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let code = sup.shutdown().await;
    info!(code, "stopped");
    code
}

fn forward(supervisor: &Option<Arc<Supervisor>>, sig: Signal) {
    match supervisor {
        Some(s) => s.forward_signal(sig),
        None => info!(signal = sig.as_str(), "signal ignored: nothing supervised"),
    }
}

/// Gossips the health check's verdict as tag `state`.
async fn gossip_health(
    handle: agent::Handle,
    mut health: tokio::sync::watch::Receiver<shoal::supervisor::Health>,
) {
    loop {
        let state = health.borrow_and_update().to_string();
        let mut t = Tags::new();
        t.insert("state".into(), state.clone());
        match handle.set_tags(t, Vec::new()).await {
            Ok(_) => info!(state = %state, "health state gossiped"),
            Err(e) => warn!(error = %e, "cannot gossip health state"),
        }
        if health.changed().await.is_err() {
            return;
        }
    }
}

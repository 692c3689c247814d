//! `webapp [--port P] [--bind IP] [--health-port H]` serves the demo app; `webapp probe
//! [--port P] [--health-port H]` checks `/health` once (exit 0 healthy, 1 not) for a Docker
//! HEALTHCHECK. Port: `--port`, else `WEBAPP_PORT`, else `PORT`, else 3000. Health port:
//! `--health-port`, else `WEBAPP_HEALTH_PORT`, else none (`/health` on the served port).
//! SIGTERM/SIGINT: graceful stop.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "usage: webapp [--port PORT] [--bind IP] [--health-port PORT] | \
webapp probe [--port PORT] [--health-port PORT]\n\
env: WEBAPP_PORT or PORT (default 3000), WEBAPP_HEALTH_PORT (serve /health only there), \
WEBAPP_TAG (reported in every answer)";

struct Flags {
    probe: bool,
    port: u16,
    bind: IpAddr,
    health_port: Option<u16>,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Flags, String> {
    let env_port = std::env::var("WEBAPP_PORT")
        .or_else(|_| std::env::var("PORT"))
        .ok();
    let mut flags = Flags {
        probe: false,
        port: 3000,
        bind: IpAddr::from([0, 0, 0, 0]),
        health_port: None,
    };
    if let Some(p) = env_port {
        flags.port = p.parse().map_err(|_| format!("bad port in env: {p:?}"))?;
    }
    if let Some(p) = std::env::var("WEBAPP_HEALTH_PORT")
        .ok()
        .filter(|p| !p.is_empty())
    {
        flags.health_port = Some(
            p.parse()
                .map_err(|_| format!("bad WEBAPP_HEALTH_PORT {p:?}"))?,
        );
    }
    let mut args = args.peekable();
    if args.peek().map(String::as_str) == Some("probe") {
        flags.probe = true;
        args.next();
    }
    while let Some(a) = args.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(format!("{key} needs a value"))
        };
        match key.as_str() {
            "--port" => {
                let v = value()?;
                flags.port = v.parse().map_err(|_| format!("bad --port {v:?}"))?;
            }
            "--health-port" => {
                let v = value()?;
                flags.health_port =
                    Some(v.parse().map_err(|_| format!("bad --health-port {v:?}"))?);
            }
            "--bind" => {
                let v = value()?;
                flags.bind = v.parse().map_err(|_| format!("bad --bind {v:?}"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(flags)
}

fn main() -> ExitCode {
    let flags = match parse(std::env::args().skip(1)) {
        Ok(f) => f,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("webapp: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if flags.probe {
        let port = flags.health_port.unwrap_or(flags.port);
        return if webapp::probe(port, Duration::from_secs(2)) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("webapp: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let addr = SocketAddr::new(flags.bind, flags.port);
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("webapp: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let health = match flags.health_port {
            None => None,
            Some(p) if p == flags.port => {
                eprintln!("webapp: --health-port {p} is the served port");
                return ExitCode::from(2);
            }
            Some(p) => {
                let addr = SocketAddr::new(flags.bind, p);
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => Some(l),
                    Err(e) => {
                        eprintln!("webapp: cannot listen on {addr} (health port): {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
        };
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            _ => {
                eprintln!("webapp: cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let info = webapp::AppInfo::from_env();
        eprintln!(
            "webapp: {} listening on {addr} (tag {:?})",
            info.hostname, info.tag
        );
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("webapp: stopping, letting open connections finish");
        };
        let opts = webapp::Options {
            health_port: flags.health_port,
        };
        let app = webapp::serve(listener, info, opts, shutdown);
        match health {
            // The health listener lives as long as the app: it ends when the app has stopped.
            Some(h) => tokio::select! {
                _ = app => {}
                _ = webapp::health::serve(h) => {}
            },
            None => app.await,
        }
        ExitCode::SUCCESS
    })
}

//! The real `webapp` binary with a health port: `/health` answers there (and nothing else
//! does), the served port answers `/health` 404 so a check on the wrong port fails, and
//! `webapp probe` follows `--health-port` / `WEBAPP_HEALTH_PORT`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the app on drop, also when an assertion fails.
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path` → (status, body); None while nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    Some((head.get(9..12)?.parse().ok()?, body.to_string()))
}

fn probe(args: &[&str], env: Option<(&str, &str)>) -> bool {
    let mut c = Command::new(env!("CARGO_BIN_EXE_webapp"));
    c.arg("probe").args(args).env_remove("WEBAPP_HEALTH_PORT");
    if let Some((k, v)) = env {
        c.env(k, v);
    }
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("webapp probe runs")
        .success()
}

#[test]
fn with_a_health_port_health_answers_only_there_and_the_served_port_says_404() {
    let (port, health) = (free_port(), free_port());
    let _app = App(Command::new(env!("CARGO_BIN_EXE_webapp"))
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--health-port", &health.to_string()])
        .env("WEBAPP_TAG", "api-v0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("webapp starts"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(health, "/health").is_none() || get(port, "/").is_none() {
        assert!(
            Instant::now() < deadline,
            "webapp not listening on both ports"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(health, "/health"), Some((200, "ok\n".to_string())));
    let (status, body) = get(port, "/health").unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains(&format!("port {health}")), "{body}");
    // The served port still serves everything else; the health port nothing else.
    let (status, body) = get(port, "/api/v0/users").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"tag\":\"api-v0\""), "{body}");
    assert_eq!(get(health, "/").map(|r| r.0), Some(404));
    assert_eq!(get(health, "/api/v0/users").map(|r| r.0), Some(404));

    let (p, h) = (port.to_string(), health.to_string());
    assert!(probe(&["--port", &p, "--health-port", &h], None));
    assert!(probe(&["--port", &p], Some(("WEBAPP_HEALTH_PORT", &h))));
    assert!(
        !probe(&["--port", &p], None),
        "the served port's /health is a 404"
    );
}

#[test]
fn a_health_port_equal_to_the_served_port_is_refused() {
    let port = free_port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_webapp"))
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
            "--health-port",
            &port,
        ])
        .output()
        .expect("webapp runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is the served port"),
        "{out:?}"
    );
}

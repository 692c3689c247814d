//! Instant join and the drain that follows the requests, end to end: real
//! `shoal agent` processes supervising a real HTTP app
//! (`fixtures/apps/slow_http.py`), real clients holding real requests,
//! real SIGTERMs, seen from a second real agent.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ip, wait_for, Agent};

const APP_PORT: u16 = 8080;

/// The app's argv: `python3 slow_http.py --bind IP --port 8080 ARGS...`.
fn app(bind: &str, args: &[&str]) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apps/slow_http.py");
    // Debian's own, when there: a version manager's shim adds its start-up time.
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let mut argv = vec![
        python.to_string(),
        script.display().to_string(),
        "--bind".into(),
        bind.into(),
        "--port".into(),
        APP_PORT.to_string(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    argv
}

/// Starts a supervising agent: `shoal agent FLAGS -- APP`.
fn supervised(
    dir: &Arc<tempfile::TempDir>,
    name: &str,
    at: &str,
    seed: &[String],
    flags: &[&str],
    app_argv: &[String],
) -> Agent {
    let mut extra: Vec<&str> = flags.to_vec();
    extra.push("--");
    extra.extend(app_argv.iter().map(String::as_str));
    Agent::start_in(dir.clone(), name, at, seed, &extra)
}

fn epoch_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The epoch seconds the app wrote to `file`, once it has.
fn stamp(file: &Path, within: Duration) -> Option<f64> {
    let mut at = None;
    wait_for(within, || {
        at = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        at.is_some()
    });
    at
}

fn health_is_up(addr: &str) -> bool {
    TcpStream::connect(addr).is_ok_and(|mut s| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut out = String::new();
        s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_ok()
            && s.read_to_string(&mut out).is_ok()
            && out.starts_with("HTTP/1.0 200")
    })
}

/// A client request to `/slow?ms=MS` on its own thread; returns when the
/// request is open (headers read) and a handle giving the epoch seconds at
/// which the whole body was read (None when the app cut it short).
fn hold_slow_request(addr: &str, ms: u64) -> std::thread::JoinHandle<Option<f64>> {
    let mut s = TcpStream::connect(addr).expect("connect to the app");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    write!(s, "GET /slow?ms={ms} HTTP/1.0\r\n\r\n").expect("send");
    // Until the first body byte: the request is in flight at the app.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\na") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => panic!("the app closed before answering: {head:?}"),
        }
    }
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        (rest == b"\n").then(epoch_secs)
    })
}

fn files(dir: &Arc<tempfile::TempDir>) -> (PathBuf, PathBuf) {
    (dir.path().join("opened"), dir.path().join("term"))
}

#[test]
fn state_ready_reaches_another_agent_right_after_the_app_opens_its_port() {
    let dir = Arc::new(tempfile::tempdir().expect("tmp"));
    let (opened, _) = files(&dir);
    let seed = vec![format!("{}:7946", ip(40, 1))];
    let observer = Agent::start("j1", &ip(40, 1), &seed, &[]);
    let at = ip(40, 2);
    let check = format!("http://{at}:{APP_PORT}/health");
    // The app opens its port 1.5 s after it starts; the interval (30 s)
    // would put `ready` 30 s after start without the fast start checks.
    let _b = supervised(
        &dir,
        "j2",
        &at,
        &seed,
        &["--check", &check, "--check-interval", "30s"],
        &app(
            &at,
            &[
                "--delay",
                "1.5",
                "--opened-file",
                &opened.display().to_string(),
            ],
        ),
    );
    let api = observer.api();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready_at = None;
    while Instant::now() < deadline {
        let (_, body) = common::http(&api, "GET", "/v1/members", "");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let ready = doc["members"].as_array().is_some_and(|ms| {
            ms.iter()
                .any(|m| m["name"] == "j2" && m["tags"]["state"] == "ready")
        });
        if ready {
            ready_at = Some(epoch_secs());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready_at = ready_at.expect("j2 never ready at j1");
    let opened_at = stamp(&opened, Duration::from_secs(1)).expect("the app opened its port");
    let took = ready_at - opened_at;
    eprintln!(
        "app port open -> state=ready at another agent: {:.0} ms",
        took * 1000.0
    );
    assert!(
        (0.0..2.0).contains(&took),
        "state=ready seen {:.0} ms after the port opened",
        took * 1000.0
    );
}

#[test]
fn stop_waits_for_an_open_request_and_then_stops_at_once() {
    let dir = Arc::new(tempfile::tempdir().expect("tmp"));
    let (_, term) = files(&dir);
    let at = ip(41, 1);
    let addr = format!("{at}:{APP_PORT}");
    let mut b = supervised(
        &dir,
        "d1",
        &at,
        &[],
        &[
            "--tag",
            "port=8080",
            "--drain",
            "20s",
            "--drain-grace",
            "200ms",
        ],
        &app(&at, &["--term-file", &term.display().to_string()]),
    );
    assert!(wait_for(Duration::from_secs(10), || health_is_up(&addr)));
    let request = hold_slow_request(&addr, 2500);
    let sigterm_at = epoch_secs();
    let code = b.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "log:\n{}", b.log_text());
    let ended_at = request
        .join()
        .expect("client")
        .expect("the request was cut short");
    let term_at = stamp(&term, Duration::from_secs(1)).expect("the app got SIGTERM");
    let after_request = term_at - ended_at;
    eprintln!(
        "last request ended -> app SIGTERM: {:.0} ms (SIGTERM to the agent -> app SIGTERM: {:.0} ms)",
        after_request * 1000.0,
        (term_at - sigterm_at) * 1000.0
    );
    // After the request (a little clock slack: the client sees the end a
    // moment after the app closed), and well before the 20 s maximum.
    assert!(
        after_request > -0.05,
        "the app got SIGTERM {:.0} ms before its request ended",
        -after_request * 1000.0
    );
    assert!(
        after_request < 1.0,
        "the app got SIGTERM {:.0} ms after its last request ended",
        after_request * 1000.0
    );
}

#[test]
fn the_drain_maximum_still_stops_an_app_with_a_request_open() {
    let dir = Arc::new(tempfile::tempdir().expect("tmp"));
    let (_, term) = files(&dir);
    let at = ip(42, 1);
    let addr = format!("{at}:{APP_PORT}");
    let mut b = supervised(
        &dir,
        "d2",
        &at,
        &[],
        &[
            "--tag",
            "port=8080",
            "--drain",
            "1500ms",
            "--drain-grace",
            "200ms",
        ],
        &app(&at, &["--term-file", &term.display().to_string()]),
    );
    assert!(wait_for(Duration::from_secs(10), || health_is_up(&addr)));
    let request = hold_slow_request(&addr, 30_000);
    let sigterm_at = epoch_secs();
    assert_eq!(b.terminate(Duration::from_secs(20)), Some(0));
    let term_at = stamp(&term, Duration::from_secs(1)).expect("the app got SIGTERM");
    let waited = term_at - sigterm_at;
    eprintln!(
        "SIGTERM -> app SIGTERM with a 30 s request open, --drain 1500ms: {:.0} ms",
        waited * 1000.0
    );
    assert!(
        (1.4..6.0).contains(&waited),
        "--drain 1500ms, the app got SIGTERM after {:.0} ms",
        waited * 1000.0
    );
    assert_eq!(request.join().expect("client"), None, "the request was cut");
    assert!(
        b.log_text().contains("drain maximum reached"),
        "{}",
        b.log_text()
    );
}

#[test]
fn with_no_open_connection_the_stop_is_prompt() {
    let dir = Arc::new(tempfile::tempdir().expect("tmp"));
    let (_, term) = files(&dir);
    let at = ip(43, 1);
    let addr = format!("{at}:{APP_PORT}");
    let mut b = supervised(
        &dir,
        "d3",
        &at,
        &[],
        &[
            "--tag",
            "port=8080",
            "--drain",
            "20s",
            "--drain-grace",
            "300ms",
        ],
        &app(&at, &["--term-file", &term.display().to_string()]),
    );
    assert!(wait_for(Duration::from_secs(10), || health_is_up(&addr)));
    // Another process (this test) with a connection on the same port
    // number, on another address: not the app's, so it does not count.
    let other = std::net::TcpListener::bind(format!("{}:{APP_PORT}", ip(43, 9))).expect("bind");
    let _client = TcpStream::connect(other.local_addr().expect("addr")).expect("connect");
    let _server_side = other.accept().expect("accept");
    let sigterm_at = epoch_secs();
    assert_eq!(b.terminate(Duration::from_secs(30)), Some(0));
    let term_at = stamp(&term, Duration::from_secs(1)).expect("the app got SIGTERM");
    let waited = term_at - sigterm_at;
    eprintln!(
        "SIGTERM -> app SIGTERM, no request in flight, --drain-grace 300ms: {:.0} ms",
        waited * 1000.0
    );
    // The grace is kept, and the 20 s maximum is not waited.
    assert!(
        (0.3..3.0).contains(&waited),
        "the app got SIGTERM {:.0} ms after the agent",
        waited * 1000.0
    );
}

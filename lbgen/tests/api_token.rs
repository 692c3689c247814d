//! `lbgen status --api` with `--api-token`, `LBGEN_API_TOKEN` or, failing
//! both, `SHOAL_API_TOKEN`: the binary sends `Authorization: Bearer ...`, and
//! a refused token is one clear error naming the 401 (against a stand-in
//! agent that checks the header; the real agent is in
//! `agent/tests/lbgen_api_token.rs`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TOKEN: &str = "T0ken";
const DOC: &str = r#"{"members":[{"name":"web-1","addr":"10.0.0.5:7946","status":"alive","tags":{"service":"web","port":"3000"}}],"version":1,"run":"r","index":1,"synced":true}"#;

/// Answers `GET /v1/members` with [`DOC`] when the request carries the bearer
/// token, 401 otherwise, until dropped.
struct FakeAgent {
    addr: String,
    stop: Arc<AtomicBool>,
}

impl FakeAgent {
    fn start() -> FakeAgent {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(stream);
                let mut authorized = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("authorization") {
                            authorized = value.trim() == format!("Bearer {TOKEN}");
                        }
                    }
                }
                let (status, body) = if authorized {
                    ("200 OK", DOC.to_string())
                } else {
                    (
                        "401 Unauthorized",
                        r#"{"error":"missing or wrong API token"}"#.to_string(),
                    )
                };
                let mut stream = reader.into_inner();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeAgent { addr, stop }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn status(agent: &FakeAgent, flag: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lbgen"));
    cmd.args(["status", "--api", &agent.addr])
        .env_remove("LBGEN_API_TOKEN")
        .env_remove("SHOAL_API_TOKEN")
        .envs(env.iter().copied());
    if let Some(t) = flag {
        cmd.args(["--api-token", t]);
    }
    cmd.output().expect("run lbgen status")
}

fn assert_ok(out: &Output, how: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("pool web:"),
        "{how}: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_token_comes_from_the_flag_or_either_environment_variable() {
    let agent = FakeAgent::start();
    assert_ok(&status(&agent, Some(TOKEN), &[]), "--api-token");
    assert_ok(
        &status(&agent, None, &[("LBGEN_API_TOKEN", TOKEN)]),
        "LBGEN_API_TOKEN",
    );
    assert_ok(
        &status(&agent, None, &[("SHOAL_API_TOKEN", TOKEN)]),
        "SHOAL_API_TOKEN",
    );
    assert_ok(
        &status(&agent, Some(TOKEN), &[("SHOAL_API_TOKEN", "other")]),
        "the flag wins over SHOAL_API_TOKEN",
    );
}

#[test]
fn a_refused_or_missing_token_is_one_clear_error() {
    let agent = FakeAgent::start();
    for (flag, says) in [
        (Some("wrong"), "refused the token given"),
        (None, "no token was given"),
    ] {
        let out = status(&agent, flag, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag:?}: {err}");
        assert!(
            err.contains("HTTP 401") && err.contains(says) && err.contains("--api-token"),
            "{flag:?}: {err}"
        );
    }
    let out = status(&agent, Some("with space"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("visible ASCII"), "{err}");
}

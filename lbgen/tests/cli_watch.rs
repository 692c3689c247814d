//! The `lbgen watch` binary: startup errors are one clear line with exit status 1 and nothing
//! written; with a real HAProxy it reloads on a members-file change and exits 0 on SIGTERM.

use lbgen::testing as common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn watch(args: &[&str]) -> (bool, String) {
    let out = common::output_within(
        Command::new(env!("CARGO_BIN_EXE_lbgen"))
            .arg("watch")
            .args(args)
            .stdin(Stdio::null()),
        common::COMMAND_TIMEOUT,
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn startup_errors_are_one_line_and_touch_nothing() {
    let d = tempfile::tempdir().unwrap();
    let members = d.path().join("members.json");
    std::fs::write(&members, r#"{"members":[]}"#).unwrap();
    let out = d.path().join("haproxy.cfg");
    let (m, o) = (members.to_str().unwrap(), out.to_str().unwrap());
    // A port something else listens on: `--http` fails at start-up, naming it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let taken_msg = format!("--http {taken_addr}: cannot listen");
    let onto_out = format!("{m}:{o}");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--members",
                m,
                "--out",
                o,
                "--haproxy-master",
                "/nonexistent/master.sock",
            ],
            "/nonexistent/master.sock",
        ),
        (
            vec!["--members", m, "--out", o, "--template", "/nonexistent.hbs"],
            "/nonexistent.hbs",
        ),
        (vec!["--members", m, "--out", o, "--wait", "soon"], "soon"),
        (vec!["--members", m, "--out", o, "--var", "x"], "\"x\""),
        (
            vec!["--members", m, "--out", o, "--http", "127.0.0.1:http"],
            "--http 127.0.0.1:http: cannot listen",
        ),
        (
            vec!["--members", m, "--out", o, "--http", &taken_addr],
            &taken_msg,
        ),
        (
            vec!["--members", m, "--out", o, "--render", "t.hbs"],
            "TEMPLATE:OUT",
        ),
        (
            vec![
                "--members",
                m,
                "--out",
                o,
                "--render",
                "/nonexistent-t.hbs:/tmp/x",
            ],
            "/nonexistent-t.hbs",
        ),
        (
            vec!["--members", m, "--out", o, "--render", &onto_out],
            "would overwrite the HAProxy config",
        ),
        (
            vec!["--members", m, "--out", o, "--render-timeout", "soon"],
            "soon",
        ),
    ];
    for (args, needle) in cases {
        let (ok, err) = watch(&args);
        assert!(!ok, "{args:?} should fail");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("lbgen: ")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains(needle), "{args:?}: {err}");
        assert!(!out.exists());
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_binary_follows_a_members_file_adopts_the_haproxy_it_finds_and_reloads_it_for_a_new_pool() {
    let d = tempfile::tempdir().unwrap();
    let members = d.path().join("members.json");
    let out = d.path().join("haproxy.cfg");
    let port = common::free_port();
    let vars = format!(
        "bind=127.0.0.1,http_port={port},stats_port={},stats_socket={},server_state_file={}",
        common::free_port(),
        d.path().join("admin.sock").display(),
        d.path().join("server-state").display()
    );
    common::write_members(&members, &[common::member("web-1", 3001, "alive", &[])]);
    let st = common::output_within(
        Command::new(env!("CARGO_BIN_EXE_lbgen"))
            .args([
                "render",
                "--members",
                members.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .env("LBGEN_VAR", &vars)
            .stdin(Stdio::null()),
        common::COMMAND_TIMEOUT,
    );
    assert!(st.status.success(), "{st:?}");
    let haproxy = common::Haproxy::start(d.path(), &out);
    let log = d.path().join("lbgen.log");
    let mut w = Killed(
        Command::new(env!("CARGO_BIN_EXE_lbgen"))
            .args(["--log-format", "json", "watch"])
            .env("LBGEN_VAR", &vars)
            .env("LBGEN_MEMBERS", &members)
            .env("LBGEN_OUT", &out)
            .env("LBGEN_HAPROXY_MASTER", &haproxy.master_sock)
            .env("LBGEN_WAIT", "20ms:200ms")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let reloads = || {
        haproxy
            .show_proc()
            .lines()
            .find(|l| l.contains("master"))
            .and_then(|l| {
                l.split_whitespace()
                    .nth(2)
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    // HAProxy started from the file `lbgen render` wrote for the same members: the first
    // apply takes it as what runs (lbgen::adopt), with no reload.
    wait_for("the first apply", Duration::from_secs(15), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("no first reload")
    });
    assert_eq!(reloads(), 0);
    // A new pool (a membership change inside a pool would go through the runtime API).
    common::write_members(
        &members,
        &[
            common::member("web-1", 3001, "alive", &[]),
            common::member(
                "api-1",
                3002,
                "alive",
                &[("service", "api"), ("route", "/api")],
            ),
        ],
    );
    wait_for("api-1 in the config", Duration::from_secs(15), || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("server api-1 ")
    });
    wait_for("the reload", Duration::from_secs(15), || reloads() >= 1);
    assert!(std::fs::read_to_string(format!("{}.bak", out.display()))
        .unwrap()
        .contains("server web-1 "));

    let pid = w.0.id().to_string();
    Command::new("sh")
        .arg("-c")
        .arg(format!("kill -TERM {pid}"))
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = w.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "lbgen ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let logs = std::fs::read_to_string(&log).unwrap();
    let first = logs.lines().next().unwrap_or("");
    assert!(first.starts_with('{'), "not JSON logs: {first}");
    assert!(logs.contains("config live (reloaded)"), "{logs}");
}

/// Regression: `lbgen watch` exited when HAProxy's master socket was not there yet, and in the
/// lb image once on every LB restart, because a stale socket file (nothing listening) passed
/// the image's `[ -S sock ]` wait loop. Now it waits, says which of the two it waits for, and
/// applies once HAProxy answers.
#[test]
fn watch_waits_for_a_missing_then_stale_master_socket_and_applies_once_haproxy_answers() {
    let d = tempfile::tempdir().unwrap();
    let members = d.path().join("members.json");
    let out = d.path().join("haproxy.cfg");
    let sock = d.path().join("master.sock");
    let port = common::free_port();
    let vars = format!(
        "bind=127.0.0.1,http_port={port},stats_port={},stats_socket={},server_state_file={}",
        common::free_port(),
        d.path().join("admin.sock").display(),
        d.path().join("server-state").display()
    );
    common::write_members(&members, &[common::member("web-1", 3001, "alive", &[])]);
    let log = d.path().join("lbgen.log");
    let mut w = Killed(
        Command::new(env!("CARGO_BIN_EXE_lbgen"))
            .args(["watch"])
            .env("LBGEN_VAR", &vars)
            .env("LBGEN_MEMBERS", &members)
            .env("LBGEN_OUT", &out)
            .env("LBGEN_HAPROXY_MASTER", &sock)
            .env("LBGEN_WAIT", "20ms:200ms")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("the 'not there yet' line", Duration::from_secs(10), || {
        logs().contains("not there yet")
    });
    // A socket file nobody listens on, as a killed HAProxy leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    wait_for("the 'stale' line", Duration::from_secs(10), || {
        logs().contains("stale")
    });
    assert!(
        w.0.try_wait().unwrap().is_none(),
        "lbgen gave up: {}",
        logs()
    );
    assert!(!out.exists(), "wrote before HAProxy answered");

    // HAProxy comes up (it replaces the stale file) from the empty-cluster config.
    let empty = d.path().join("empty.json");
    std::fs::write(&empty, br#"{"members":[]}"#).unwrap();
    let st = common::output_within(
        Command::new(env!("CARGO_BIN_EXE_lbgen"))
            .args(["render", "--members", "-", "--out", out.to_str().unwrap()])
            .env("LBGEN_VAR", &vars)
            .stdin(std::fs::File::open(&empty).unwrap()),
        common::COMMAND_TIMEOUT,
    );
    assert!(st.status.success(), "{st:?}");
    let haproxy = common::Haproxy::start(d.path(), &out);
    assert_eq!(haproxy.master_sock, sock);
    wait_for("web-1 live", Duration::from_secs(15), || {
        logs().contains("config live (reloaded)")
    });
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains("server web-1 "));
    assert!(
        logs().contains("haproxy master socket is answering"),
        "{}",
        logs()
    );
    assert!(w.0.try_wait().unwrap().is_none(), "{}", logs());
}

#[test]
fn a_template_error_is_reported_while_haproxy_is_still_down() {
    // The template is compiled once HAProxy's master answers, so that it does not compete
    // with HAProxy's own start; with HAProxy down it is compiled after COMPILE_DEFER_MAX.
    let d = tempfile::tempdir().unwrap();
    let members = d.path().join("members.json");
    std::fs::write(&members, r#"{"members":[]}"#).unwrap();
    let out = d.path().join("haproxy.cfg");
    let template = d.path().join("broken.hbs");
    std::fs::write(&template, "global\n    maxconn {{#if vars.maxconn}}\n").unwrap();
    let sock = d.path().join("master.sock");
    let started = Instant::now();
    let (ok, err) = watch(&[
        "--members",
        members.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--template",
        template.to_str().unwrap(),
        "--haproxy-master",
        sock.to_str().unwrap(),
    ]);
    assert!(!ok, "{err}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "took {took:?}: {err}");
    assert!(
        err.contains("not there yet"),
        "did not wait for HAProxy first: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("lbgen: ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("broken.hbs"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_master_socket_path_that_cannot_become_a_socket_is_an_error_at_once() {
    let d = tempfile::tempdir().unwrap();
    let members = d.path().join("members.json");
    std::fs::write(&members, r#"{"members":[]}"#).unwrap();
    let out = d.path().join("haproxy.cfg");
    let not_a_socket = d.path().join("plain-file");
    std::fs::write(&not_a_socket, "x").unwrap();
    let (m, o, p) = (
        members.to_str().unwrap(),
        out.to_str().unwrap(),
        not_a_socket.to_str().unwrap(),
    );
    let (ok, err) = watch(&["--members", m, "--out", o, "--haproxy-master", p]);
    assert!(!ok);
    assert!(err.contains("is not a socket"), "{err}");
    assert!(!out.exists());
}

#[test]
fn render_writes_prometheus_targets_from_the_members_file_and_runs_its_command_after_each_change() {
    let d = tempfile::tempdir().unwrap();
    let members = d.path().join("members.json");
    let out = d.path().join("haproxy.cfg");
    let targets = d.path().join("targets.json");
    let runs = d.path().join("runs");
    let script = d.path().join("on-change.sh");
    // The command sees the file it follows in LBGEN_RENDER_OUT.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$LBGEN_RENDER_OUT\" >> {}\n",
            runs.display()
        ),
    )
    .unwrap();
    let template = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../templates/prometheus-targets.json.hbs");
    let agent = |name: &str, ip: u8| {
        serde_json::json!({"name": name, "addr": format!("10.1.0.{ip}:7946"), "status": "alive",
            "tags": {"service": "web", "port": "3000", "metrics_agent": "7373"}})
    };
    let write = |m: &[serde_json::Value]| {
        std::fs::write(&members, serde_json::json!({ "members": m }).to_string()).unwrap()
    };
    write(&[agent("web-1", 2)]);
    let log = d.path().join("lbgen.log");
    let _w = Killed(
        Command::new(env!("CARGO_BIN_EXE_lbgen"))
            .args(["watch", "--check-cmd", "none", "--wait", "20ms:200ms"])
            .arg("--members")
            .arg(&members)
            .arg("--out")
            .arg(&out)
            .arg("--render")
            .arg(format!(
                "{}:{}:sh {}",
                template.display(),
                targets.display(),
                script.display()
            ))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let parsed = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&targets)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    };
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("the first targets file", Duration::from_secs(10), || {
        parsed().len() == 1 && std::fs::read_to_string(&runs).is_ok_and(|r| r.lines().count() == 1)
    });
    assert_eq!(
        parsed()[0],
        serde_json::json!({"targets": ["10.1.0.2:7373"], "labels":
            {"job": "shoal-agent", "instance": "10.1.0.2:7373", "node": "web-1", "service": "web"}}),
        "{}",
        log_text()
    );
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap().trim(),
        targets.display().to_string()
    );
    write(&[agent("web-1", 2), agent("web-2", 3)]);
    wait_for("the second targets file", Duration::from_secs(10), || {
        parsed().len() == 2 && std::fs::read_to_string(&runs).is_ok_and(|r| r.lines().count() == 2)
    });
    // A members change that leaves the targets as they are rewrites nothing and runs nothing.
    let mut web3 = agent("web-3", 4);
    web3["tags"] = serde_json::json!({"service": "web", "port": "3000"});
    write(&[agent("web-1", 2), agent("web-2", 3), web3]);
    wait_for(
        "the HAProxy config with web-3",
        Duration::from_secs(10),
        || std::fs::read_to_string(&out).is_ok_and(|c| c.contains("server web-3 ")),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap().lines().count(),
        2,
        "{}",
        log_text()
    );
    assert!(
        log_text().contains("--render command done"),
        "{}",
        log_text()
    );
}

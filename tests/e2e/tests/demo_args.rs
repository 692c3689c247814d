//! `./demo`'s own checks, which run before it talks to Docker: bad counts and
//! port variables exit 2, a taken host port exits 1 naming the variable to
//! change. Docker is made unreachable (`DOCKER_HOST` points nowhere), so these
//! run anywhere, and a check that came after a Docker call would show up as
//! the wrong message.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

fn demo(args: &[&str], env: &[(&str, &str)]) -> Output {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    Command::new(root.join("demo"))
        .args(args)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("SKIP_BUILD", "1")
        .env_remove("LB_HTTP_PORT")
        .env_remove("LB_STATS_PORT")
        .env_remove("LB_STATUS_PORT")
        .env_remove("LB_HTTPS_PORT")
        .env_remove("PROM_PORT")
        .envs(env.iter().copied())
        .output()
        .expect("run ./demo")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_webapp_count_that_is_not_a_whole_number_up_to_100_is_refused_before_docker() {
    for args in [
        &["scale", "-1"][..],
        &["scale", "abc"],
        &["scale", "3x"],
        &["scale", "101"],
        &["scale", ""],
        &["scale"],
        &["up", "-1"],
        &["up", "2", "3"],
        &["up", "2", "--monitor"],
        &["up", "--monitoring", "x"],
    ] {
        let out = demo(args, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("usage:"), "{args:?}: {err}");
        assert!(!err.contains("Docker"), "{args:?} reached Docker: {err}");
    }
    let err = stderr(&demo(&["scale", "-1"], &[]));
    assert!(
        err.contains("from 0 to 100") && err.contains("\"-1\""),
        "{err}"
    );
}

#[test]
fn a_host_port_variable_that_is_not_a_port_is_refused_by_name() {
    for (var, value) in [
        ("LB_HTTP_PORT", "http"),
        ("LB_HTTP_PORT", "70000"),
        ("LB_STATS_PORT", "-1"),
        ("LB_STATUS_PORT", "9100x"),
        ("LB_HTTPS_PORT", "443s"),
        ("PROM_PORT", "prom"),
    ] {
        let out = demo(&["up", "1", "--monitoring"], &[(var, value)]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {err}");
        assert!(err.contains(var) && err.contains("not a port"), "{err}");
    }
}

#[test]
fn a_taken_host_port_is_named_with_the_variable_that_moves_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    for (var, cmd) in [
        ("LB_HTTP_PORT", "up"),
        ("LB_STATS_PORT", "scale"),
        ("LB_STATUS_PORT", "up"),
        ("LB_HTTPS_PORT", "scale"),
    ] {
        let out = demo(&[cmd, "1"], &[(var, &port)]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{var} {cmd}: {err}");
        assert!(
            err.contains(&format!("127.0.0.1:{port} is already in use")) && err.contains(var),
            "{var} {cmd}: {err}"
        );
    }
    // Prometheus's port is checked only for the monitoring profile.
    let free = [("LB_HTTP_PORT", "0"), ("LB_STATS_PORT", "0")];
    let out = demo(
        &["up", "1", "--monitoring"],
        &[free[0], free[1], ("PROM_PORT", &port)],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port} is already in use")) && err.contains("PROM_PORT"),
        "{err}"
    );
    let out = demo(&["up", "1"], &[free[0], free[1], ("PROM_PORT", &port)]);
    assert!(
        stderr(&out).contains("no Docker engine reachable"),
        "{}",
        stderr(&out)
    );
    // Port 0 (a free one, picked by Docker) is never "taken": on to Docker.
    let out = demo(
        &["up", "1"],
        &[
            ("LB_HTTP_PORT", "0"),
            ("LB_STATS_PORT", "0"),
            ("LB_STATUS_PORT", "0"),
            ("LB_HTTPS_PORT", "0"),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no Docker engine reachable"), "{err}");
}

#[test]
fn bad_deploy_arguments_are_refused_before_docker() {
    for (args, says) in [
        (
            &["deploy", "--batch", "0"][..],
            "--batch must be from 1 to 100",
        ),
        (
            &["deploy", "--batch", "x"],
            "--batch must be a whole number",
        ),
        (&["deploy", "--batch"], "--batch needs a value"),
        (
            &["deploy", "--stop-timeout", "-5"],
            "--stop-timeout must be a whole number",
        ),
        (&["deploy", "3"], "unknown argument \"3\""),
    ] {
        let out = demo(args, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(says) && err.contains("usage:"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("Docker"), "{args:?} reached Docker: {err}");
    }
}

//! The services file and `-- CMD`: validation before anything starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use shoal::supervisor::{CheckTarget, ConfigError, RestartPolicy, SupervisorError, SupervisorSpec};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/supervisor")
        .join(name)
}

fn config_errors(r: Result<SupervisorSpec, SupervisorError>) -> Vec<ConfigError> {
    match r {
        Err(SupervisorError::Config(errs)) => errs,
        Err(e) => panic!("expected a config error, got {e}"),
        Ok(s) => panic!("expected a config error, got {s:?}"),
    }
}

#[test]
fn an_unknown_key_is_reported_with_file_line_and_key() {
    let path = fixture("unknown_key.toml");
    let errs = config_errors(SupervisorSpec::from_file(&path));
    assert_eq!(errs.len(), 1, "{errs:?}");
    let e = &errs[0];
    assert_eq!(e.file, path.display().to_string());
    assert_eq!(e.line, Some(5), "{e}");
    assert_eq!(e.key, "services.web.stop_sigal");
    assert!(e.message.contains("stop_sigal"), "{e}");
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("{}:5: services.web.stop_sigal: ", path.display())),
        "{shown}"
    );
    assert_eq!(SupervisorError::Config(errs).exit_code(), 2);
}

#[test]
fn a_dependency_cycle_is_reported_with_its_members() {
    let errs = config_errors(SupervisorSpec::from_file(&fixture("cycle.toml")));
    assert_eq!(errs.len(), 1, "{errs:?}");
    let e = &errs[0];
    assert!(e.message.contains("dependency cycle"), "{e}");
    for name in ["a", "b", "c"] {
        assert!(e.message.contains(name), "{e}");
    }
    assert!(e.key.ends_with(".depends_on"), "{e}");
    assert!(e.line.is_some(), "{e}");
}

#[test]
fn all_errors_are_collected_unknown_dependency_missing_and_non_executable_commands() {
    let errs = config_errors(SupervisorSpec::from_file(&fixture("many_errors.toml")));
    let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let find = |key: &str, needle: &str| {
        errs.iter()
            .find(|e| e.key == key && e.message.contains(needle))
            .unwrap_or_else(|| panic!("no {key} error with {needle:?} in {shown:#?}"))
    };
    assert_eq!(find("services.app.command", "not found").line, Some(2));
    assert_eq!(
        find("services.app.depends_on", "unknown service").line,
        Some(3)
    );
    find("services.worker.command", "not an executable");
    assert_eq!(find("services.worker.stop_signal", "SIGNOPE").line, Some(7));
    assert_eq!(errs.len(), 4, "{shown:#?}");
}

#[test]
fn a_good_file_gives_services_in_dependency_order_with_their_settings() {
    let spec = SupervisorSpec::from_file(&fixture("good.toml")).expect("valid");
    let names: Vec<&str> = spec.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["haproxy", "lbgen", "logger"]);
    let haproxy = &spec.services[0];
    assert!(haproxy.main && haproxy.critical);
    assert_eq!(haproxy.stop_signal, Signal::SIGUSR1);
    assert_eq!(haproxy.stop_timeout, Duration::from_secs(3));
    let lbgen = &spec.services[1];
    assert_eq!(lbgen.restart, RestartPolicy::Always);
    assert_eq!(lbgen.backoff, Duration::from_millis(200));
    assert_eq!(lbgen.backoff_max, Duration::from_secs(5));
    assert_eq!(lbgen.max_restarts, 3);
    assert_eq!(lbgen.restart_window, Duration::from_secs(60));
    assert_eq!(
        lbgen.env.get("LBGEN_MODE").map(String::as_str),
        Some("watch")
    );
    assert_eq!(lbgen.workdir.as_deref(), Some(Path::new("/tmp")));
    assert!(!lbgen.critical);
    let logger = &spec.services[2];
    assert_eq!(logger.argv, ["/bin/sh", "-c", "sleep 30"]);
    assert_eq!(logger.restart, RestartPolicy::Never);
    let check = spec.check.expect("check");
    assert_eq!(
        check.target,
        CheckTarget::Http {
            host: "127.0.0.1".into(),
            port: 8404,
            path: "/health".into()
        }
    );
    assert_eq!((check.rise, check.fall), (2, 3));
    assert_eq!(check.interval, Duration::from_secs(1));
    assert_eq!(check.timeout, Duration::from_millis(500));
}

#[test]
fn the_command_form_is_one_main_critical_service_that_is_not_restarted() {
    let spec = SupervisorSpec::from_command(&["sleep".into(), "1".into()]).expect("valid command");
    assert_eq!(spec.services.len(), 1);
    let s = &spec.services[0];
    assert_eq!(s.name, "main");
    assert!(s.main && s.critical);
    assert_eq!(s.restart, RestartPolicy::Never);
    assert!(spec.check.is_none());
}

#[test]
fn a_missing_command_on_the_command_line_is_an_error_before_starting() {
    let errs = config_errors(SupervisorSpec::from_command(&[
        "no-such-shoal-test-program".into(),
    ]));
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].key, "-- CMD");
    assert!(errs[0].message.contains("not found in PATH"), "{}", errs[0]);
}

#[test]
fn a_file_plus_a_command_may_not_name_a_second_main() {
    let errs = config_errors(SupervisorSpec::load(
        Some(&fixture("good.toml")),
        &["/bin/true".into()],
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].key, "services.haproxy.main");
    assert_eq!(errs[0].line, Some(13), "{errs:?}");
}

#[test]
fn unknown_top_level_keys_and_bad_values_are_errors() {
    let text = "[servics.x]\ncommand = \"true\"\n";
    let errs = config_errors(SupervisorSpec::from_toml_str("t.toml", text));
    assert_eq!(errs[0].key, "servics");
    assert_eq!(errs[0].line, Some(1));

    let text = "[services.x]\ncommand = [\"/bin/true\"]\nrestart = \"sometimes\"\n";
    let errs = config_errors(SupervisorSpec::from_toml_str("t.toml", text));
    assert_eq!(errs[0].line, Some(3), "{:?}", errs);
    assert_eq!(errs[0].key, "services.x.restart", "{:?}", errs);
    assert!(errs[0].message.contains("sometimes"), "{:?}", errs);

    let text = "[services.x]\ncommand = [\"/bin/true\"]\nstop_timeout = \"soon\"\n";
    let errs = config_errors(SupervisorSpec::from_toml_str("t.toml", text));
    assert_eq!(errs[0].line, Some(3), "{:?}", errs);

    let text = "[services.x\ncommand = 1\n";
    let errs = config_errors(SupervisorSpec::from_toml_str("t.toml", text));
    assert_eq!(errs[0].line, Some(1), "{:?}", errs);
}

#[test]
fn check_flags_override_the_file_and_exclude_each_other() {
    let mut spec = SupervisorSpec::from_file(&fixture("good.toml")).expect("valid");
    spec.apply_check_flags(None, Some("test -e /tmp"), Some(Duration::from_millis(300)))
        .expect("flags");
    let c = spec.check.as_ref().expect("check");
    assert_eq!(c.target, CheckTarget::Command("test -e /tmp".into()));
    assert_eq!(c.interval, Duration::from_millis(300));
    assert_eq!(c.timeout, Duration::from_millis(300));
    assert_eq!(c.rise, 2, "thresholds from the file are kept");

    assert!(spec
        .apply_check_flags(Some("http://127.0.0.1/"), Some("true"), None)
        .is_err());
    let mut plain = SupervisorSpec::from_command(&["/bin/true".into()]).expect("valid");
    assert!(plain
        .apply_check_flags(None, None, Some(Duration::from_secs(1)))
        .is_err());
    assert!(plain
        .apply_check_flags(Some("https://x/"), None, None)
        .is_err());
    plain
        .apply_check_flags(Some("http://127.0.0.1:3000/health"), None, None)
        .expect("http check");
    assert!(plain.check.is_some());
}

#[test]
fn the_start_interval_comes_from_the_file_or_the_flag_and_must_be_positive() {
    let text = "[services.x]\ncommand = [\"/bin/true\"]\n[check]\ncommand = \"true\"\nstart_interval = \"50ms\"\n";
    let mut spec = SupervisorSpec::from_toml_str("t.toml", text).expect("valid");
    let c = spec.check.as_ref().expect("check");
    assert_eq!(c.start_interval, Duration::from_millis(50));
    assert_eq!(c.interval, Duration::from_secs(2));
    spec.apply_check_start_interval(Some(Duration::from_millis(20)))
        .expect("flag");
    assert_eq!(
        spec.check.as_ref().expect("check").start_interval,
        Duration::from_millis(20)
    );
    // Without either, the default.
    let text = "[services.x]\ncommand = [\"/bin/true\"]\n[check]\ncommand = \"true\"\n";
    let spec = SupervisorSpec::from_toml_str("t.toml", text).expect("valid");
    assert_eq!(
        spec.check.as_ref().expect("check").start_interval,
        Duration::from_millis(100)
    );

    let text = "[services.x]\ncommand = [\"/bin/true\"]\n[check]\ncommand = \"true\"\nstart_interval = 0\n";
    let errs = config_errors(SupervisorSpec::from_toml_str("t.toml", text));
    assert_eq!(errs[0].key, "check.start_interval", "{errs:?}");
    assert!(errs[0].message.contains("more than 0"), "{errs:?}");

    let mut plain = SupervisorSpec::from_command(&["/bin/true".into()]).expect("valid");
    let err = plain
        .apply_check_start_interval(Some(Duration::from_millis(50)))
        .expect_err("no check to pace");
    assert!(err.to_string().contains("--check-start-interval"), "{err}");
    plain
        .apply_check_flags(Some("http://127.0.0.1:3000/health"), None, None)
        .expect("http check");
    let err = plain
        .apply_check_start_interval(Some(Duration::ZERO))
        .expect_err("zero");
    assert!(err.to_string().contains("more than 0"), "{err}");
}

/// The services-file example in docs/supervisor.md must stay valid: every
/// error it may give here is only about commands not installed on this machine.
#[test]
fn the_documented_lb_example_parses() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/supervisor.md");
    let doc = std::fs::read_to_string(&doc_path).expect("docs/supervisor.md");
    let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let len = doc[start..].find("```").expect("block end");
    let text = &doc[start..start + len];
    match SupervisorSpec::from_toml_str("docs/supervisor.md", text) {
        Ok(spec) => {
            let names: Vec<&str> = spec.services.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["haproxy", "lbgen"]);
            assert_eq!(spec.services[0].stop_signal, Signal::SIGUSR1);
            assert!(spec.check.is_some());
        }
        Err(SupervisorError::Config(errs)) => {
            for e in &errs {
                let machine_dependent = (e.key.ends_with(".command")
                    && e.message.contains("not found"))
                    || e.key.ends_with(".workdir");
                assert!(machine_dependent, "{e}");
            }
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn two_mains_and_a_self_dependency_are_both_reported() {
    let text = r#"[services.a]
command = ["/bin/true"]
main = true

[services.b]
command = ["/bin/true"]
main = true
depends_on = ["b"]
"#;
    let errs = config_errors(SupervisorSpec::from_toml_str("t.toml", text));
    assert!(
        errs.iter()
            .any(|e| e.key == "services.b.main" && e.line == Some(5)),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.key == "services.b.depends_on"
            && e.line == Some(8)
            && e.message.contains("itself")),
        "{errs:?}"
    );
    assert_eq!(errs.len(), 2, "{errs:?}");
}

#[test]
fn every_bad_key_of_a_service_is_reported_at_once() {
    let errs = config_errors(SupervisorSpec::from_file(&fixture(
        "several_errors_per_service.toml",
    )));
    let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let expect = [
        ("services.web.restart", 3, "sometimes"),
        ("services.web.stop_timeout", 4, "soon"),
        ("services.web.stop_sigal", 5, "unknown field"),
        ("services.web.max_restarts", 6, ""),
        ("services.db.stop_signal", 10, "unknown signal number 99"),
        ("services.nocmd", 12, "missing field `command`"),
        ("check.rise", 17, ""),
        ("check.interval", 18, "never"),
    ];
    for (key, line, needle) in expect {
        assert!(
            errs.iter()
                .any(|e| e.key == key && e.line == Some(line) && e.message.contains(needle)),
            "no {key} error at line {line} with {needle:?} in {shown:#?}"
        );
    }
    assert_eq!(errs.len(), expect.len(), "{shown:#?}");
}

#[test]
fn a_stop_signal_is_a_name_or_a_number() {
    let text = r#"
[services.a]
command = ["/bin/true"]
stop_signal = 15

[services.b]
command = ["/bin/true"]
stop_signal = "USR1"

[services.c]
command = ["/bin/true"]
stop_signal = "SIGQUIT"

[services.d]
command = ["/bin/true"]
stop_signal = "2"
"#;
    let spec = SupervisorSpec::from_toml_str("t.toml", text).expect("valid");
    let signals: Vec<Signal> = spec.services.iter().map(|s| s.stop_signal).collect();
    assert_eq!(
        signals,
        [
            Signal::SIGTERM,
            Signal::SIGUSR1,
            Signal::SIGQUIT,
            Signal::SIGINT
        ]
    );
}

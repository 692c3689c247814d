//! `lbgen watch` startup errors: one clear line, exit status 1, nothing written.

use std::process::Command;

fn watch(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lbgen"))
        .arg("watch")
        .args(args)
        .output()
        .expect("run lbgen");
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

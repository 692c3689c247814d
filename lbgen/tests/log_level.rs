//! `LBGEN_LOG` really sets the level of the `lbgen` binary's log.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `lbgen watch` on an empty members file at `level` until its config
/// is written (plus a moment), then returns its stderr.
fn watch_log(level: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    let members = d.path().join("members.json");
    std::fs::write(&members, r#"{"members":[]}"#).unwrap();
    let out = d.path().join("haproxy.cfg");
    let log = d.path().join("stderr");
    let child = Command::new(env!("CARGO_BIN_EXE_lbgen"))
        .arg("watch")
        .args(["--members", members.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--check-cmd", "none"])
        .env("LBGEN_LOG", level)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("run lbgen");
    let _guard = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.exists() {
        assert!(Instant::now() < deadline, "lbgen wrote no config");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    std::fs::read_to_string(&log).unwrap_or_default()
}

#[test]
fn lbgen_log_debug_prints_debug_lines() {
    let debug = watch_log("debug");
    assert!(
        debug.contains("DEBUG"),
        "LBGEN_LOG=debug printed no debug line:\n{debug}"
    );
    let info = watch_log("info");
    assert!(info.contains("INFO") && !info.contains("DEBUG"), "{info}");
}

//! The default template with TLS on: a golden render (paths of the run replaced by
//! `/TLS_STATE`), in the builtin template's line grammar, accepted by the real `haproxy -c`
//! with the crt-list and certificate copies lbgen wrote. Regenerate after an intended
//! template change: `UPDATE_GOLDEN=1 cargo test -p lbgen --test render_tls`.

use lbgen::testing as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::tls::TestCa;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// `lbgen render` with `vars` (stdin empty): (success, stdout, stderr).
fn render(vars: &[String], members: &Path) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lbgen"));
    cmd.arg("render").arg("--members").arg(members);
    for v in vars {
        cmd.arg("--var").arg(v);
    }
    cmd.env("LBGEN_LOG", "warn").stdin(Stdio::null());
    let out = common::output_within(&mut cmd, common::COMMAND_TIMEOUT);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn haproxy_check(cfg: &Path) -> (bool, String) {
    let out = common::output_within(
        Command::new(lbgen::output::resolve_program("haproxy"))
            .args(["-c", "-f"])
            .arg(cfg)
            .stdin(Stdio::null()),
        common::COMMAND_TIMEOUT,
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn golden_tls_with_sni_certificates_redirect_and_hsts_passes_haproxy_check() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&tmp.path().join("ca"));
    let certs = tmp.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join("default.pem"), ca.issue(&["lb.test"])).unwrap();
    std::fs::write(certs.join("a.test.pem"), ca.issue(&["a.test"])).unwrap();
    std::fs::write(certs.join("_wildcard.w.test.pem"), ca.issue(&["*.w.test"])).unwrap();
    // Not certificates: a writer's temp file, a README.
    std::fs::write(certs.join(".a.test.pem.tmp"), b"half").unwrap();
    std::fs::write(certs.join("README"), b"certificates go here").unwrap();
    let state = tmp.path().join("state");
    let vars = vec![
        format!("tls_certs={}", certs.display()),
        format!("tls_state_dir={}", state.display()),
        "https_port=8443".to_string(),
        "https_redirect=true".to_string(),
        "https_redirect_port=8443".to_string(),
        "hsts_max_age=31536000".to_string(),
        "stats_socket=/tmp/lbgen-golden.sock".to_string(),
    ];
    let (ok, out, err) = render(&vars, &golden_dir().join("tls.json"));
    assert!(ok, "render failed: {err}");
    lbgen::render::check_lines(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
    let cfg = tmp.path().join("haproxy.cfg");
    std::fs::write(&cfg, &out).unwrap();
    let (ok, why) = haproxy_check(&cfg);
    assert!(ok, "haproxy -c rejected the TLS config: {why}\n{out}");

    let list = std::fs::read_to_string(state.join("crt-list")).unwrap();
    let s = state.display().to_string();
    let entries: Vec<&str> = list.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        entries,
        [
            format!("{s}/certs/default.pem"),
            format!("{s}/certs/_wildcard.w.test.pem *.w.test"),
            format!("{s}/certs/a.test.pem a.test"),
        ],
        "{list}"
    );

    let shown = out.replace(&s, "/TLS_STATE");
    let expected = golden_dir().join("tls.cfg");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected, &shown).unwrap();
    }
    let want =
        std::fs::read_to_string(&expected).expect("golden file (UPDATE_GOLDEN=1 creates it)");
    assert_eq!(shown, want, "render differs from {}", expected.display());
}

#[test]
fn without_a_certificate_the_https_port_stays_closed_and_bad_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&tmp.path().join("ca"));
    let certs = tmp.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let (cert, key) = ca.issue_parts(&["a.test"]);
    let (_, other_key) = ca.issue_parts(&["b.test"]);
    std::fs::write(certs.join("nokey.test.pem"), &cert).unwrap();
    std::fs::write(
        certs.join("mismatch.test.pem"),
        [cert.clone(), other_key].concat(),
    )
    .unwrap();
    std::fs::write(certs.join("garbage.test.pem"), b"not a certificate\n").unwrap();
    std::fs::write(certs.join("half.test.pem"), &[cert, key].concat()[..700]).unwrap();
    let state = tmp.path().join("state");
    let vars = vec![
        format!("tls_certs={}", certs.display()),
        format!("tls_state_dir={}", state.display()),
        "stats_socket=/tmp/lbgen-golden.sock".to_string(),
    ];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lbgen"));
    cmd.arg("render")
        .arg("--members")
        .arg(golden_dir().join("tls.json"))
        .arg("--check-cmd")
        .arg("haproxy -c -q -f {}")
        .arg("--out")
        .arg(tmp.path().join("haproxy.cfg"));
    for v in &vars {
        cmd.arg("--var").arg(v);
    }
    cmd.env("LBGEN_LOG", "warn").stdin(Stdio::null());
    let out = common::output_within(&mut cmd, common::COMMAND_TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "render failed: {err}");
    let cfg = std::fs::read_to_string(tmp.path().join("haproxy.cfg")).unwrap();
    assert!(
        !cfg.contains("ssl crt-list"),
        "a TLS bind without a certificate:\n{cfg}"
    );
    for (file, why) in [
        ("nokey.test.pem", "no PRIVATE KEY"),
        (
            "mismatch.test.pem",
            "inconsistencies between private key and certificate",
        ),
        ("garbage.test.pem", "no PEM block"),
        ("half.test.pem", "half-written"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains("certificate refused") && l.contains(file))
            .unwrap_or_else(|| panic!("{file} not named in the log:\n{err}"));
        assert!(line.contains(why), "{file}: expected {why:?} in {line}");
    }
    assert!(
        std::fs::read_dir(state.join("certs"))
            .unwrap()
            .next()
            .is_none(),
        "a refused file was copied for HAProxy"
    );
}

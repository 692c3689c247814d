//! The lb image's ACME switch, from the image's own services file
//! (`docker/lb-services.toml`): its commands run with the real `/bin/sh`, the real `lbgen`
//! binary and a real HAProxy, against Debian's `pebble`, with the image's `LBGEN_ACME_*`
//! names. Off (no `LBGEN_ACME_DIRECTORY`): the acme service exits 0 at once, before `lbgen`
//! is even looked up, and the rendered config has no challenge route. On: the haproxy and
//! lbgen commands add `acme_challenge=$LBGEN_ACME_HTTP`, and the acme service's command
//! orders a certificate through that config.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lbgen::testing::pebble::{run_ok, Pebble, Proc};
use lbgen::testing::{free_port, output_within, Haproxy};

const LBGEN: &str = env!("CARGO_BIN_EXE_lbgen");

/// `[services.NAME].command` of the lb image's services file, as the shell runs it.
fn service_command(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/lb-services.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    doc["services"][name]["command"]
        .as_str()
        .unwrap_or_else(|| panic!("services.{name}.command is not a shell string"))
        .to_string()
}

/// The line both HAProxy's and lbgen's commands start with: it adds the challenge route to
/// `LBGEN_VAR` when ACME is on.
fn vars_line() -> String {
    let haproxy = service_command("haproxy");
    let line = haproxy.lines().next().unwrap().to_string();
    assert!(line.contains("acme_challenge"), "{haproxy}");
    assert_eq!(
        service_command("lbgen").lines().next(),
        Some(line.as_str()),
        "the haproxy and lbgen services must give the template the same variables"
    );
    line
}

/// `sh -c SCRIPT` with `lbgen` on PATH and only `env` from the image's environment.
fn sh(script: &str, env: &[(&str, String)]) -> Command {
    let bin = Path::new(LBGEN).parent().unwrap().display().to_string();
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(script);
    c.env_clear()
        .env("PATH", format!("{bin}:/usr/sbin:/usr/bin:/bin"))
        .env("NO_COLOR", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// The empty-cluster config the haproxy service renders first, with `env`.
fn render(dir: &Path, env: &[(&str, String)]) -> (PathBuf, String) {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = dir.join("haproxy.cfg");
    let script = format!(
        "{}\necho '{{\"members\":[]}}' | exec lbgen render --members - --out {} --check-cmd 'haproxy -c -q -f {{}}'",
        vars_line(),
        cfg.display()
    );
    run_ok(&mut sh(&script, env));
    let text = std::fs::read_to_string(&cfg).unwrap();
    (cfg, text)
}

fn lb_var(dir: &Path, http: u16) -> String {
    [
        "bind=127.0.0.1".to_string(),
        format!("http_port={http}"),
        format!("stats_port={}", free_port()),
        format!("stats_socket={}", dir.join("admin.sock").display()),
        "server_state_file=".into(),
        "access_log=".into(),
    ]
    .join(",")
}

#[test]
fn without_an_acme_directory_the_acme_service_exits_0_at_once_and_no_challenge_is_routed() {
    let tmp = tempfile::tempdir().unwrap();
    let acme = service_command("acme");
    for directory in [None, Some(String::new())] {
        let mut env = vec![("LBGEN_ACME_HTTP", "127.0.0.1:8402".to_string())];
        if let Some(d) = directory.clone() {
            env.push(("LBGEN_ACME_DIRECTORY", d));
        }
        // Nothing on PATH: it must not get as far as looking lbgen up.
        let mut c = sh(&acme, &env);
        c.env("PATH", "/nonexistent");
        let t0 = Instant::now();
        let out = output_within(&mut c, Duration::from_secs(10));
        assert!(out.status.success(), "{directory:?}: {out:?}");
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

        env.push(("LBGEN_VAR", lb_var(tmp.path(), free_port())));
        let (_, cfg) = render(&tmp.path().join("off"), &env);
        assert!(!cfg.contains("acme-challenge"), "{cfg}");
    }
}

#[test]
fn with_an_acme_directory_the_image_routes_the_challenge_and_its_acme_service_gets_a_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let (http, responder) = (free_port(), free_port());
    let pebble = Pebble::start(tmp.path(), http, 3600);
    let certs = tmp.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let lb = tmp.path().join("lb");
    // The image's environment (lb.Dockerfile) plus what the operator sets.
    let env = vec![
        ("LBGEN_VAR", lb_var(&lb, http)),
        ("LBGEN_ACME_CERT_DIR", certs.display().to_string()),
        ("LBGEN_ACME_HTTP", format!("127.0.0.1:{responder}")),
        ("LBGEN_ACME_DIRECTORY", pebble.directory()),
        ("LBGEN_ACME_CERT", "shop.shoal.test,www.shoal.test".into()),
        ("LBGEN_ACME_EMAIL", "ops@shoal.test".into()),
        (
            "LBGEN_ACME_CA_BUNDLE",
            pebble.tls_ca().display().to_string(),
        ),
        ("LBGEN_ACME_RETRY", "1s".into()),
    ];
    let (cfg, text) = render(&lb, &env);
    assert!(text.contains("backend acme-challenge"), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{responder}")),
        "the challenge route does not go to LBGEN_ACME_HTTP: {text}"
    );
    let _haproxy = Haproxy::start(&lb, &cfg);

    let acme = Proc::spawn(
        &mut sh(&service_command("acme"), &env),
        tmp.path().join("acme.log"),
    );
    let pem = certs.join("shop.shoal.test.pem");
    let deadline = Instant::now() + Duration::from_secs(60);
    // The file is renamed in before the line that says so is logged: wait for both.
    while !(pem.exists() && acme.log().contains("certificate issued")) {
        assert!(
            Instant::now() < deadline,
            "no certificate within 60 s:\n{}",
            acme.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = acme.log();
    assert!(log.contains("answered an http-01 challenge"), "{log}");
    let leaf = lbgen::acme::store::parse_leaf(&std::fs::read(&pem).unwrap()).unwrap();
    assert_eq!(leaf.domains, ["shop.shoal.test", "www.shoal.test"]);
}

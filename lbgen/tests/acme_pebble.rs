//! `lbgen acme` against a real ACME CA: Debian's `pebble` (Let's Encrypt's test CA), its
//! names resolved by `pebble-challtestsrv`'s DNS to 127.x addresses, the HTTP-01 challenge
//! validated through a real HAProxy rendered from the default template with
//! `--var acme_challenge=...`, and the issued certificate served by a real HAProxy.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lbgen::testing::free_port;
use lbgen::testing::pebble::{curl_tls, run_ok, tls_lb, Pebble, Proc};

const LBGEN: &str = env!("CARGO_BIN_EXE_lbgen");

fn challenge_lb(dir: &Path, bind: &str, port: u16, responder: u16) -> lbgen::testing::Haproxy {
    lbgen::testing::pebble::challenge_lb(Path::new(LBGEN), dir, bind, port, responder)
}

fn acme(dir: &Path, pebble: &Pebble, certs: &Path, http: Option<u16>, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(LBGEN);
    cmd.arg("acme")
        .args(["--directory", &pebble.directory()])
        .arg("--ca-bundle")
        .arg(pebble.tls_ca())
        .arg("--cert-dir")
        .arg(certs)
        .args(["--email", "ops@shoal.test", "--retry", "1s"])
        .args(extra)
        .env("LBGEN_LOG", "info,lbgen=debug")
        .env("NO_COLOR", "1");
    if let Some(p) = http {
        cmd.args(["--http", &format!("127.0.0.1:{p}")]);
    }
    let n = std::fs::read_dir(dir).map_or(0, |d| d.count());
    Proc::spawn(&mut cmd, dir.join(format!("acme-{n}.log")))
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool, log: impl Fn() -> String) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what} not within {within:?}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn status_json(port: u16) -> serde_json::Value {
    let body = run_ok(
        Command::new("curl")
            .args(["-sSf", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{port}/status.json")),
    );
    serde_json::from_str(&body).unwrap()
}

#[test]
fn an_ordered_certificate_is_validated_through_haproxy_written_and_served() {
    let tmp = tempfile::tempdir().unwrap();
    let (http, responder, tls) = (free_port(), free_port(), free_port());
    let pebble = Pebble::start(tmp.path(), http, 3600);
    let _lb = challenge_lb(&tmp.path().join("lb"), "127.0.0.1", http, responder);
    let certs = tmp.path().join("certs");
    let pem = certs.join("shop.shoal.test.pem");
    let mut a = acme(
        tmp.path(),
        &pebble,
        &certs,
        Some(responder),
        &["--cert", "shop.shoal.test,www.shoal.test"],
    );
    wait_for(
        "the certificate file",
        Duration::from_secs(60),
        || pem.exists(),
        || a.log(),
    );
    let log = a.log();
    assert!(log.contains("answered an http-01 challenge"), "{log}");
    assert!(log.contains("certificate issued"), "{log}");
    // The chain, then the key; both files that hold a key are the owner's only.
    let text = std::fs::read_to_string(&pem).unwrap();
    assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{text}");
    assert!(text.contains("PRIVATE KEY-----"), "{text}");
    assert_eq!(mode(&pem), 0o600);
    assert_eq!(mode(&certs.join(".acme/account.json")), 0o600);
    // The challenge answers are gone once the order is done.
    let left: Vec<_> = std::fs::read_dir(certs.join(".acme/challenges"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let st = status_json(responder);
    assert_eq!(st["certs"][0]["name"], "shop.shoal.test", "{st}");
    assert_eq!(st["certs"][0]["issued"], 1, "{st}");
    assert!(st["certs"][0]["last_error"].is_null(), "{st}");

    // HAProxy serves it for both names, trusted through pebble's root.
    let root = tmp.path().join("root.pem");
    pebble.issuing_root(&root);
    let _tls = tls_lb(&tmp.path().join("tls"), &certs, tls);
    assert_eq!(curl_tls(&root, "shop.shoal.test", tls), "tls ok");
    assert_eq!(curl_tls(&root, "www.shoal.test", tls), "tls ok");

    // A restart keeps the account and the certificate: nothing is ordered again.
    a.stop();
    let before = std::fs::read(&pem).unwrap();
    let b = acme(
        tmp.path(),
        &pebble,
        &certs,
        None,
        &["--cert", "shop.shoal.test,www.shoal.test"],
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(!b.log().contains("ordering"), "{}", b.log());
    assert_eq!(std::fs::read(&pem).unwrap(), before);
}

#[test]
fn a_short_lived_certificate_is_renewed_in_place_and_a_ca_outage_keeps_it_with_backoff() {
    let tmp = tempfile::tempdir().unwrap();
    let (http, responder) = (free_port(), free_port());
    // 20 s certificates, renewed when half is left: about every 10 s.
    let mut pebble = Pebble::start(tmp.path(), http, 20);
    let _lb = challenge_lb(&tmp.path().join("lb"), "127.0.0.1", http, responder);
    let certs = tmp.path().join("certs");
    let pem = certs.join("shop.shoal.test.pem");
    let a = acme(
        tmp.path(),
        &pebble,
        &certs,
        Some(responder),
        &["--cert", "shop.shoal.test", "--renew-before", "1/2"],
    );
    wait_for(
        "the first certificate",
        Duration::from_secs(60),
        || pem.exists(),
        || a.log(),
    );
    let first = std::fs::read(&pem).unwrap();
    let first_cert = lbgen::acme::store::parse_leaf(&first).unwrap();
    wait_for(
        "the renewed certificate",
        Duration::from_secs(60),
        || std::fs::read(&pem).is_ok_and(|b| b != first),
        || a.log(),
    );
    let renewed = std::fs::read(&pem).unwrap();
    let renewed_cert = lbgen::acme::store::parse_leaf(&renewed).unwrap();
    assert!(renewed_cert.not_after > first_cert.not_after);
    // A new key with each certificate.
    let key = |b: &[u8]| {
        let t = String::from_utf8_lossy(b).into_owned();
        t[t.find("-----BEGIN PRIVATE KEY").unwrap()..].to_string()
    };
    assert_ne!(key(&first), key(&renewed));
    assert_eq!(
        a.log().matches("certificate issued").count(),
        2,
        "{}",
        a.log()
    );

    // The CA goes away: the next renewal fails, named; the file stays; retries back off.
    pebble.ca.stop();
    wait_for(
        "two failed renewals",
        Duration::from_secs(60),
        || a.log().matches("ACME order failed").count() >= 2,
        || a.log(),
    );
    let log = a.log();
    assert!(log.contains("cannot reach the ACME server"), "{log}");
    assert!(log.contains("retry_in=1s"), "{log}");
    assert!(log.contains("retry_in=2s"), "{log}");
    assert_eq!(std::fs::read(&pem).unwrap(), renewed);
    let st = status_json(responder);
    assert!(st["certs"][0]["failures"].as_u64().unwrap() >= 2, "{st}");
    let err = st["certs"][0]["last_error"].as_str().unwrap_or("");
    assert!(err.contains("cannot reach the ACME server"), "{st}");
}

#[test]
fn a_challenge_the_ca_cannot_validate_is_named_with_the_cas_reason() {
    let tmp = tempfile::tempdir().unwrap();
    // The CA validates on a port nothing listens on: no LB routes its request.
    let pebble = Pebble::start(tmp.path(), free_port(), 3600);
    let certs = tmp.path().join("certs");
    let responder = free_port();
    let a = acme(
        tmp.path(),
        &pebble,
        &certs,
        Some(responder),
        &["--cert", "shop.shoal.test"],
    );
    wait_for(
        "two failed orders",
        Duration::from_secs(60),
        || a.log().matches("ACME order failed").count() >= 2,
        || a.log(),
    );
    let log = a.log();
    assert!(
        log.contains("the CA could not validate the http-01 challenge: shop.shoal.test"),
        "{log}"
    );
    assert!(!certs.join("shop.shoal.test.pem").exists());
    let st = status_json(responder);
    assert!(
        st["certs"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("could not validate")),
        "{st}"
    );
}

#[test]
fn two_lbs_sharing_the_cert_dir_order_once_and_each_answers_the_challenge_it_receives() {
    let tmp = tempfile::tempdir().unwrap();
    let http = free_port();
    let pebble = Pebble::start(tmp.path(), http, 3600);
    // One certificate with a name on each LB: the CA validates a.shoal.test at LB A
    // (127.0.0.2) and b.shoal.test at LB B (127.0.0.3), whichever of them ordered.
    pebble.add_a("a.shoal.test", "127.0.0.2");
    pebble.add_a("b.shoal.test", "127.0.0.3");
    let (ra, rb) = (free_port(), free_port());
    let _lb_a = challenge_lb(&tmp.path().join("lb-a"), "127.0.0.2", http, ra);
    let _lb_b = challenge_lb(&tmp.path().join("lb-b"), "127.0.0.3", http, rb);
    let certs = tmp.path().join("shared-certs");
    let spec = ["--cert", "a.shoal.test,b.shoal.test"];
    let a = acme(tmp.path(), &pebble, &certs, Some(ra), &spec);
    let b = acme(tmp.path(), &pebble, &certs, Some(rb), &spec);
    let pem = certs.join("a.shoal.test.pem");
    let both = || format!("LB A:\n{}\nLB B:\n{}", a.log(), b.log());
    wait_for(
        "the certificate",
        Duration::from_secs(60),
        || pem.exists(),
        both,
    );
    // Each LB answered the challenge sent to it, from the shared directory.
    wait_for(
        "both LBs answering",
        Duration::from_secs(10),
        || {
            a.log().contains("answered an http-01 challenge")
                && b.log().contains("answered an http-01 challenge")
        },
        both,
    );
    std::thread::sleep(Duration::from_secs(3));
    let issued = a.log().matches("certificate issued").count()
        + b.log().matches("certificate issued").count();
    assert_eq!(issued, 1, "{}", both());
    let ordered = a.log().matches("ordering a certificate").count()
        + b.log().matches("ordering a certificate").count();
    assert_eq!(ordered, 1, "{}", both());
}

#[test]
fn bad_acme_flags_stop_it_at_start_with_one_line_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let not_pem = tmp.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--cert", "*.shoal.test"], "no wildcard"),
        (
            &[
                "--cert",
                "a.shoal.test",
                "--cert",
                "a.shoal.test,b.shoal.test",
            ],
            "two certificates named a.shoal.test",
        ),
        (
            &["--cert", "a.shoal.test", "--renew-before", "3/2"],
            "--renew-before",
        ),
        (&["--cert", "a.shoal.test", "--retry", "soon"], "--retry"),
        (
            &["--cert", "a.shoal.test", "--http", "127.0.0.1:99999"],
            "--http 127.0.0.1:99999",
        ),
        (
            &[
                "--cert",
                "a.shoal.test",
                "--ca-bundle",
                not_pem.to_str().unwrap(),
            ],
            "no PEM certificate",
        ),
        (
            &[
                "--cert",
                "a.shoal.test",
                "--ca-bundle",
                "/nonexistent/ca.pem",
            ],
            "--ca-bundle /nonexistent/ca.pem",
        ),
    ];
    for (args, want) in cases {
        let out = lbgen::testing::output_within(
            Command::new(LBGEN)
                .args([
                    "acme",
                    "--directory",
                    "https://127.0.0.1:1/dir",
                    "--cert-dir",
                ])
                .arg(&dir)
                .args(*args),
            Duration::from_secs(20),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}

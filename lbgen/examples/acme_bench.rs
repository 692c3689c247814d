//! Benchmark (run with `bench/acme`): `lbgen acme` against Debian's `pebble` on 127.0.0.1,
//! HTTP-01 validated through a real HAProxy from the default template. Prints:
//! - start of `lbgen acme` → certificate file in place (account registration, order, the
//!   CA's validation through HAProxy, finalize, download, atomic write), over fresh cert
//!   dirs (`--issues N`, default 5);
//! - with short-lived certificates (`--lifetime S`, default 10 s, renewed when half is
//!   left): the time between consecutive rewrites of the file (`--renewals N`, default 4),
//!   against the half-lifetime it should be.
//!
//! `--lbgen PATH`: the lbgen binary (bench/acme passes the release build's).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lbgen::testing::free_port;
use lbgen::testing::pebble::{challenge_lb, Pebble, Proc};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn num(name: &str, default: u64) -> u64 {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn stats(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let Some(max) = v.last().copied() else {
        return;
    };
    println!(
        "{label:<52} n={:<3} median {:>8.1} ms  max {:>8.1} ms",
        v.len(),
        ms(v[v.len() / 2]),
        ms(max)
    );
}

fn acme(
    lbgen: &Path,
    pebble: &Pebble,
    certs: &Path,
    http: u16,
    log: PathBuf,
    extra: &[&str],
) -> Proc {
    Proc::spawn(
        Command::new(lbgen)
            .arg("acme")
            .args(["--directory", &pebble.directory()])
            .arg("--ca-bundle")
            .arg(pebble.tls_ca())
            .arg("--cert-dir")
            .arg(certs)
            .args(["--cert", "shop.shoal.test,www.shoal.test", "--retry", "1s"])
            .args(["--http", &format!("127.0.0.1:{http}")])
            .args(extra)
            .env("NO_COLOR", "1"),
        log,
    )
}

fn main() {
    let lbgen = PathBuf::from(arg("--lbgen").unwrap_or_else(|| "target/release/lbgen".into()));
    let (issues, renewals, lifetime) = (
        num("--issues", 5),
        num("--renewals", 4),
        num("--lifetime", 10),
    );
    let tmp = tempfile::tempdir().unwrap();

    // Issuance: a fresh cert dir (and account) each time.
    let (http, responder) = (free_port(), free_port());
    let pebble = Pebble::start(&tmp.path().join("long"), http, 3600);
    let _lb = challenge_lb(&lbgen, &tmp.path().join("lb"), "127.0.0.1", http, responder);
    let mut took = Vec::new();
    for i in 0..issues {
        let certs = tmp.path().join(format!("certs-{i}"));
        let pem = certs.join("shop.shoal.test.pem");
        let t0 = Instant::now();
        let p = acme(
            &lbgen,
            &pebble,
            &certs,
            responder,
            tmp.path().join(format!("issue-{i}.log")),
            &[],
        );
        while !pem.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no certificate:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        took.push(t0.elapsed());
    }
    drop(pebble);
    stats("start -> certificate file (2 names, through HAProxy)", took);

    // Renewal: short-lived certificates, renewed when half the lifetime is left.
    let http = free_port();
    let pebble = Pebble::start(&tmp.path().join("short"), http, lifetime);
    let responder = free_port();
    let _lb2 = challenge_lb(
        &lbgen,
        &tmp.path().join("lb2"),
        "127.0.0.1",
        http,
        responder,
    );
    let certs = tmp.path().join("certs-renew");
    let pem = certs.join("shop.shoal.test.pem");
    let p = acme(
        &lbgen,
        &pebble,
        &certs,
        responder,
        tmp.path().join("renew.log"),
        &["--renew-before", "1/2"],
    );
    let deadline = Instant::now() + Duration::from_secs(lifetime * (renewals + 2) + 60);
    let mut last: Option<(Vec<u8>, Instant)> = None;
    let mut gaps = Vec::new();
    while (gaps.len() as u64) < renewals {
        assert!(Instant::now() < deadline, "renewals stalled:\n{}", p.log());
        if let Ok(bytes) = std::fs::read(&pem) {
            match &last {
                Some((b, _)) if *b == bytes => {}
                Some((_, at)) => {
                    gaps.push(at.elapsed());
                    last = Some((bytes, Instant::now()));
                }
                None => last = Some((bytes, Instant::now())),
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    stats(
        &format!(
            "rewrite -> next rewrite ({lifetime} s certs, due at {} s)",
            lifetime as f64 / 2.0
        ),
        gaps,
    );
    let failed = p.log().matches("ACME order failed").count();
    println!("failed orders during the run: {failed}");
}

//! ACME renewals under HTTPS load, end to end with real processes only: Debian's `pebble`
//! issues 12 s certificates, `lbgen acme` (the binary) writes them into the cert dir that
//! `lbgen watch --var tls_certs=DIR` (the binary) follows, a real HAProxy in master-worker
//! mode serves them, and `curl` clients on new and on keep-alive connections verify every
//! request against pebble's root. Each renewal must be served to a new client within a
//! bound, with 0 failed requests and 0 reloads (the master's counter); the `.acme/` churn
//! (temp files, challenge answers, the lock, the account) must never reach HAProxy.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lbgen::testing::pebble::{run_ok, Pebble, Proc};
use lbgen::testing::tls::{curl_https, https_load, TestCa};
use lbgen::testing::{free_port, member, output_within, reload_counts, write_members};
use lbgen::testing::{Backend, Haproxy};

const LBGEN: &str = env!("CARGO_BIN_EXE_lbgen");
/// pebble's certificate lifetime; renewed when half is left, so about every 6 s.
const VALIDITY_SECS: u64 = 12;
/// Renewals seen and checked under load.
const RENEWALS: usize = 3;
/// A renamed-in certificate served to a new client within this (generous: a loaded
/// machine; `python3 bench/tls.py` prints the real figure, ~0.1 s).
const SERVED_WITHIN: Duration = Duration::from_secs(10);
const NAME: &str = "shop.shoal.test";

/// What `openssl s_client` was shown for an SNI name: (serial, notAfter), as openssl prints
/// them; None if no handshake happened.
fn served(port: u16, sni: &str) -> Option<(String, String)> {
    let out = output_within(
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", sni])
            .stdin(Stdio::null()),
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let end_tag = "-----END CERTIFICATE-----";
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text.find(end_tag)? + end_tag.len();
    Some(serial_and_end(text[start..end].as_bytes()))
}

/// (serial, notAfter) of a PEM's first certificate, from `openssl x509`.
fn serial_and_end(pem: &[u8]) -> (String, String) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), pem).unwrap();
    let out = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-enddate", "-in"])
            .arg(f.path()),
    );
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {out}"))
            .to_string()
    };
    (field("serial="), field("notAfter="))
}

/// Keep-alive HTTPS load: one worker thread, each `curl` process sends 50 requests on one
/// connection (`%{num_connects}` is 0 for a reused one), until `stop` or `max` requests.
/// (ok, failed, requests on a reused connection, first failure).
fn keepalive_load(
    ca: PathBuf,
    port: u16,
    max: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64, u64, Option<String>)> {
    std::thread::spawn(move || {
        let url = format!("https://{NAME}:{port}/");
        let mut args: Vec<String> = vec![
            "-s".into(),
            "--cacert".into(),
            ca.display().to_string(),
            "--resolve".into(),
            format!("{NAME}:{port}:127.0.0.1"),
            "--max-time".into(),
            "10".into(),
            "-w".into(),
            "%{http_code} %{num_connects}\\n".into(),
        ];
        for _ in 0..50 {
            args.extend(["-o".into(), "/dev/null".into(), url.clone()]);
        }
        let (mut ok, mut failed, mut reused, mut first) = (0u64, 0u64, 0u64, None);
        while !stop.load(Ordering::SeqCst) && ok + failed < max {
            let out = output_within(
                Command::new("curl").args(&args).stdin(Stdio::null()),
                Duration::from_secs(60),
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let lines: Vec<&str> = text.lines().collect();
            for l in &lines {
                let mut f = l.split_whitespace();
                match (f.next(), f.next()) {
                    (Some("200"), n) => {
                        ok += 1;
                        reused += u64::from(n == Some("0"));
                    }
                    _ => {
                        failed += 1;
                        first.get_or_insert_with(|| format!("keep-alive: {l:?}"));
                    }
                }
            }
            if lines.len() < 50 {
                failed += 50 - lines.len() as u64;
                first.get_or_insert_with(|| {
                    format!(
                        "keep-alive curl exited {} after {} responses: {}",
                        out.status,
                        lines.len(),
                        String::from_utf8_lossy(&out.stderr)
                    )
                });
            }
        }
        (ok, failed, reused, first)
    })
}

/// notAfter of a PEM's first certificate, parsed (to compare as times).
fn not_after(pem: &[u8]) -> SystemTime {
    lbgen::acme::store::parse_leaf(pem).unwrap().not_after
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool, log: impl Fn() -> String) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what} not within {within:?}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_log(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The LB's variables: HTTP on `http` (where pebble validates), HTTPS on `https` from
/// `certs`, the challenge path routed to `lbgen acme --http` on `responder`.
fn lb_vars(dir: &Path, certs: &Path, http: u16, https: u16, responder: u16) -> Vec<String> {
    vec![
        "bind=127.0.0.1".into(),
        format!("http_port={http}"),
        format!("https_port={https}"),
        format!("tls_certs={}", certs.display()),
        format!("tls_state_dir={}", dir.join("tls").display()),
        format!("stats_port={}", free_port()),
        format!("stats_socket={}", dir.join("admin.sock").display()),
        format!("server_state_file={}", dir.join("server-state").display()),
        "check_inter=200ms".into(),
        "access_log=".into(),
        format!("acme_challenge=127.0.0.1:{responder}"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_certificates_renewed_under_https_load_are_served_without_a_reload_or_a_failed_request(
) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_path_buf();
    let (http, https, responder, status) = (free_port(), free_port(), free_port(), free_port());
    let pebble = Pebble::start(&d, http, VALIDITY_SECS);
    let root = d.join("pebble-root.pem");
    pebble.issuing_root(&root);

    // The cert dir starts with a default certificate from a local CA, so HTTPS is open
    // before the first ACME certificate and that one arrives like any later one.
    let certs = d.join("certs");
    std::fs::create_dir(&certs).unwrap();
    let local = TestCa::new(&d.join("local-ca"));
    std::fs::write(certs.join(".default.pem.tmp"), local.issue(&["lb.test"])).unwrap();
    std::fs::rename(certs.join(".default.pem.tmp"), certs.join("default.pem")).unwrap();

    // HAProxy from the empty-cluster config (as the lb image's first start), then lbgen
    // watch following a members file with one backend.
    let lb = d.join("lb");
    std::fs::create_dir(&lb).unwrap();
    let vars = lb_vars(&lb, &certs, http, https, responder);
    let var_args: Vec<String> = vars
        .iter()
        .flat_map(|v| ["--var".into(), v.clone()])
        .collect();
    let cfg = lb.join("haproxy.cfg");
    std::fs::write(lb.join("empty.json"), r#"{"members":[]}"#).unwrap();
    run_ok(
        Command::new(LBGEN)
            .arg("render")
            .arg("--members")
            .arg(lb.join("empty.json"))
            .arg("--out")
            .arg(&cfg)
            .args(&var_args),
    );
    let haproxy = Haproxy::start(&lb, &cfg);
    let backend = Backend::start("web-1").await;
    let members = lb.join("members.json");
    write_members(&members, &[member("web-1", backend.port, "alive", &[])]);
    let watch_log = d.join("watch.log");
    let watch = Proc::spawn(
        Command::new(LBGEN)
            .arg("watch")
            .arg("--members")
            .arg(&members)
            .arg("--out")
            .arg(&cfg)
            .arg("--haproxy-master")
            .arg(&haproxy.master_sock)
            .args(["--http", &format!("127.0.0.1:{status}")])
            .args(["--wait", "20ms:200ms"])
            .args(&var_args)
            .env("NO_COLOR", "1"),
        watch_log.clone(),
    );
    let (local_ca, wl) = (local.cert.clone(), watch_log.clone());
    tokio::task::spawn_blocking(move || {
        wait_for(
            "HTTPS through the LB to the backend",
            Duration::from_secs(30),
            || curl_https(&local_ca, "lb.test", https, "/").0 == 200,
            || read_log(&wl),
        )
    })
    .await
    .unwrap();
    let (reloads, failed_reloads) = reload_counts(&haproxy).await;
    assert_eq!(failed_reloads, 0);

    // lbgen acme orders the first certificate through HAProxy's HTTP frontend.
    let acme_log = d.join("acme.log");
    let acme = Proc::spawn(
        Command::new(LBGEN)
            .arg("acme")
            .args(["--directory", &pebble.directory()])
            .arg("--ca-bundle")
            .arg(pebble.tls_ca())
            .arg("--cert-dir")
            .arg(&certs)
            .args(["--cert", NAME, "--renew-before", "1/2", "--retry", "1s"])
            .args(["--http", &format!("127.0.0.1:{responder}")])
            .env("NO_COLOR", "1"),
        acme_log.clone(),
    );
    let pem = certs.join(format!("{NAME}.pem"));
    let logs = {
        let (a, w) = (acme_log.clone(), watch_log.clone());
        move || {
            format!(
                "lbgen acme:\n{}\nlbgen watch:\n{}",
                read_log(&a),
                read_log(&w)
            )
        }
    };
    let first = tokio::task::spawn_blocking({
        let logs = logs.clone();
        let pem = pem.clone();
        move || {
            wait_for(
                "the first ACME certificate",
                Duration::from_secs(60),
                || pem.exists(),
                &logs,
            );
            let want = serial_and_end(&std::fs::read(&pem).unwrap());
            wait_for(
                "the first ACME certificate served",
                SERVED_WITHIN,
                || served(https, NAME).as_ref() == Some(&want),
                &logs,
            );
            want
        }
    })
    .await
    .unwrap();
    println!(
        "first certificate served: serial {} notAfter {}",
        first.0, first.1
    );

    // Load on new connections (2 workers) and on keep-alive connections (1), bounded in
    // count; every request verified against pebble's root and the name.
    let stop = Arc::new(AtomicBool::new(false));
    let fresh = https_load(root.clone(), NAME.into(), https, 2, 20_000, stop.clone());
    let kept = keepalive_load(root.clone(), https, 50_000, stop.clone());

    // Each renewal: the file changes on disk (renamed in by lbgen acme), then a new client
    // is shown its serial and its later notAfter.
    let mut ends = vec![not_after(&std::fs::read(&pem).unwrap())];
    let mut seen = vec![first.clone()];
    let mut took = Vec::new();
    for n in 1..=RENEWALS {
        let prev = seen.last().unwrap().clone();
        let (logs, pem) = (logs.clone(), pem.clone());
        let (next, end, ms) = tokio::task::spawn_blocking(move || {
            let mut next = None;
            let mut renamed = SystemTime::now();
            wait_for(
                &format!("renewal {n} on disk"),
                Duration::from_secs(60),
                || {
                    next = std::fs::read(&pem)
                        .ok()
                        .map(|b| (serial_and_end(&b), not_after(&b)))
                        .filter(|c| c.0 .0 != prev.0);
                    renamed = std::fs::metadata(&pem).and_then(|m| m.modified()).unwrap();
                    next.is_some()
                },
                &logs,
            );
            let (next, end) = next.unwrap();
            wait_for(
                &format!("renewal {n} served"),
                SERVED_WITHIN,
                || served(https, NAME).as_ref() == Some(&next),
                &logs,
            );
            let ms = SystemTime::now()
                .duration_since(renamed)
                .unwrap_or_default()
                .as_millis();
            (next, end, ms)
        })
        .await
        .unwrap();
        println!(
            "renewal {n}: serial {} notAfter {} served {ms} ms after its rename",
            next.0, next.1
        );
        seen.push(next);
        ends.push(end);
        took.push(ms);
    }
    stop.store(true, Ordering::SeqCst);
    let (ok, failed, first_err) = tokio::task::spawn_blocking(move || fresh.join().unwrap())
        .await
        .unwrap();
    let (k_ok, k_failed, k_reused, k_err) =
        tokio::task::spawn_blocking(move || kept.join().unwrap())
            .await
            .unwrap();
    println!("new connections: {ok} ok, {failed} failed; keep-alive: {k_ok} ok ({k_reused} on a reused connection), {k_failed} failed");
    println!("served after the rename (ms): {took:?}");

    assert_eq!(failed, 0, "failed HTTPS requests: {first_err:?}");
    assert_eq!(k_failed, 0, "failed keep-alive HTTPS requests: {k_err:?}");
    assert!(
        ok >= 50,
        "too little new-connection load to mean anything: {ok}"
    );
    assert!(
        k_reused >= 50,
        "too little keep-alive load: {k_ok} ok, {k_reused} reused"
    );
    let (reloads_now, failed_now) = reload_counts(&haproxy).await;
    assert_eq!(
        (reloads_now, failed_now),
        (reloads, 0),
        "the ACME certificates reloaded HAProxy"
    );
    // Every certificate a new one: the serials differ, and each notAfter a client was shown
    // is a new one, later than the one before (compared as times from the files).
    let serials: std::collections::BTreeSet<_> = seen.iter().map(|c| &c.0).collect();
    let shown_ends: std::collections::BTreeSet<_> = seen.iter().map(|c| &c.1).collect();
    assert_eq!(serials.len(), RENEWALS + 1, "{seen:?}");
    assert_eq!(shown_ends.len(), RENEWALS + 1, "{seen:?}");
    assert!(ends.windows(2).all(|w| w[1] > w[0]), "{ends:?}");

    // The .acme/ churn happened in the watched directory and never reached HAProxy: the
    // served files are the two certificates, nothing refused, and each rename was taken
    // exactly once (one "added", then one "renewed" per later certificate issued).
    drop(acme);
    for f in ["account.json", "lock", "challenges"] {
        assert!(certs.join(".acme").join(f).exists(), ".acme/{f} missing");
    }
    let issued = read_log(&acme_log).matches("certificate issued").count();
    let st: serde_json::Value = serde_json::from_str(&run_ok(
        Command::new("curl")
            .args(["-sSf", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{status}/status.json")),
    ))
    .unwrap();
    let files: Vec<&str> = st["tls"]["served"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["file"].as_str())
        .collect();
    assert_eq!(
        files,
        ["default.pem", "shop.shoal.test.pem"],
        "{}",
        st["tls"]
    );
    assert_eq!(st["tls"]["refused"], serde_json::json!([]), "{}", st["tls"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let wlog = read_log(&watch_log);
    assert!(!wlog.contains("refused"), "{wlog}");
    let added = wlog.matches("certificate added").count();
    let renewed = wlog.matches("certificate renewed").count();
    assert_eq!(added, 1, "{wlog}");
    assert!(renewed >= RENEWALS, "{wlog}");
    // lbgen acme logs "certificate issued" right after its rename; a kill in between loses
    // that one line, so it may count one certificate fewer than lbgen watch took.
    assert!(
        renewed + 1 == issued || renewed == issued,
        "{renewed} renewals taken for {issued} certificates issued:\n{wlog}"
    );
    drop(watch);
}

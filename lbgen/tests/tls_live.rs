//! TLS termination with the real HAProxy 2.6 in master-worker mode and `lbgen watch`
//! (in-process, default template) on 127.0.0.1: certificates from a directory, SNI by file
//! name, HTTP → HTTPS redirect, HSTS, `X-Forwarded-Proto`; a certificate renewed, added or
//! removed on disk goes live through the runtime API with no reload and no failed request;
//! a broken file is refused by name and the old certificate keeps serving, reloads included.
//! Clients are Debian's `curl --cacert` and `openssl s_client` against a CA made by `openssl`.

use lbgen::testing as common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tls::{curl_http, curl_https, https_load, serial_of, served_serial, TestCa};
use common::{member, next_report, reload_counts, write_members, Backend, Haproxy};
use lbgen::apply::ApplyOutcome;
use lbgen::model::Model;
use lbgen::render::{Renderer, Vars};
use lbgen::source::SourceSpec;
use lbgen::watch::{Report, WatchConfig};

/// How long a certificate change on disk may take to be served (generous: a loaded
/// machine; the bench prints the real figure).
const SERVED_WITHIN: Duration = Duration::from_secs(10);

struct Rig {
    dir: tempfile::TempDir,
    ca: TestCa,
    certs: PathBuf,
    http_port: u16,
    https_port: u16,
    status_port: u16,
    members_file: PathBuf,
    backend: Backend,
    haproxy: Haproxy,
    reports: tokio::sync::mpsc::UnboundedReceiver<Report>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    watcher: Option<tokio::task::JoinHandle<Result<(), lbgen::Error>>>,
}

/// Writes `pem` the way a careful writer (and the ACME client) does: temp file + rename.
fn put(dir: &Path, file: &str, pem: &[u8]) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, pem).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

/// Runs a blocking client (curl, openssl) off the runtime lbgen's watch loop runs on.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("client thread")
}

impl Rig {
    /// HAProxy started from a config without TLS (as its supervisor would, before lbgen),
    /// lbgen watching; returns once lbgen's first reload opened the HTTPS port.
    async fn start(files: &[(&str, &[&str])]) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let ca = TestCa::new(&d.join("ca"));
        let certs = d.join("certs");
        std::fs::create_dir(&certs).unwrap();
        for (file, names) in files {
            put(&certs, file, &ca.issue(names));
        }
        let (http_port, https_port) = (common::free_port(), common::free_port());
        let vars = Vars::with_overrides(&[
            "bind=127.0.0.1".to_string(),
            format!("http_port={http_port}"),
            format!("https_port={https_port}"),
            format!("https_redirect_port={https_port}"),
            "https_redirect=true".to_string(),
            "hsts_max_age=600".to_string(),
            format!("tls_certs={}", certs.display()),
            format!("tls_state_dir={}", d.join("tls").display()),
            format!("stats_port={}", common::free_port()),
            format!("stats_socket={}", d.join("admin.sock").display()),
            format!("server_state_file={}", d.join("server-state").display()),
            "check_inter=200ms".to_string(),
            "access_log=".to_string(),
        ])
        .unwrap();
        let backend = Backend::start("web-1").await;
        let members_file = d.join("members.json");
        write_members(
            &members_file,
            &[member("web-1", backend.port, "alive", &[])],
        );
        let out = d.join("haproxy.cfg");
        std::fs::write(
            &out,
            Renderer::builtin()
                .render(&Model::default(), &vars)
                .unwrap(),
        )
        .unwrap();
        let haproxy = Haproxy::start(&d, &out);
        let status = lbgen::http::bind("127.0.0.1:0").unwrap();
        let status_port = status.local_addr().unwrap().port();
        let (rtx, mut reports) = tokio::sync::mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let cfg = WatchConfig {
            vars,
            reports: Some(rtx),
            http: Some(status),
            ..common::watch_config(
                SourceSpec::File(members_file.clone()),
                out,
                haproxy.master_sock.clone(),
            )
        };
        let watcher = tokio::spawn(lbgen::watch::run(cfg, async {
            let _ = stop_rx.await;
        }));
        let r = next_report(&mut reports).await;
        assert!(
            matches!(r.outcome, ApplyOutcome::Reloaded { .. }),
            "{:?}",
            r.outcome
        );
        let rig = Rig {
            dir,
            ca,
            certs,
            http_port,
            https_port,
            status_port,
            members_file,
            backend,
            haproxy,
            reports,
            stop: Some(stop_tx),
            watcher: Some(watcher),
        };
        rig.wait_https_up().await;
        rig
    }

    /// Until the backend answers through HTTPS (its first health checks passed).
    async fn wait_https_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (code, head) = self.https("lb.test", "/").await;
            if code == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HTTPS never answered 200: {code} {head}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn https(&self, host: &str, path: &str) -> (u16, String) {
        let (ca, host, path, port) = (
            self.ca.cert.clone(),
            host.to_string(),
            path.to_string(),
            self.https_port,
        );
        blocking(move || curl_https(&ca, &host, port, &path)).await
    }

    async fn served(&self, sni: Option<&str>) -> Option<String> {
        let (port, sni) = (self.https_port, sni.map(str::to_string));
        blocking(move || served_serial(port, sni.as_deref())).await
    }

    /// Waits until `sni` is served the certificate with `serial`; how long that took.
    async fn wait_served(&self, sni: Option<&str>, serial: &str) -> Duration {
        let t0 = Instant::now();
        loop {
            let now = self.served(sni).await;
            if now.as_deref() == Some(serial) {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < SERVED_WITHIN,
                "{sni:?} still served {now:?}, not {serial}, after {SERVED_WITHIN:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// lbgen's `/status.json`.
    async fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/status.json").await).expect("status.json is JSON")
    }

    /// The body of lbgen's status server at `path`.
    async fn get(&self, path: &str) -> String {
        let url = format!("http://127.0.0.1:{}{path}", self.status_port);
        let out = blocking(move || {
            common::output_within(
                std::process::Command::new("curl")
                    .args(["-s", "--max-time", "5", &url])
                    .stdin(std::process::Stdio::null()),
                Duration::from_secs(10),
            )
        })
        .await;
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `/status.json` names `file` as refused; its reason.
    async fn wait_refused(&self, file: &str) -> String {
        let t0 = Instant::now();
        loop {
            let st = self.status().await;
            let found = st["tls"]["refused"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["file"] == file)
                .map(|r| r["reason"].as_str().unwrap_or_default().to_string());
            if let Some(why) = found {
                return why;
            }
            assert!(
                t0.elapsed() < SERVED_WITHIN,
                "{file} never shown as refused: {}",
                st["tls"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn reloads(&self) -> u64 {
        let (reloads, failed) = reload_counts(&self.haproxy).await;
        assert_eq!(failed, 0, "a reload failed");
        reloads
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(w) = self.watcher.take() {
            let r = tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .expect("watch stops");
            r.expect("watch task").expect("watch ends cleanly");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_each_sni_name_its_certificate_redirects_http_and_sets_hsts() {
    let rig = Rig::start(&[
        ("default.pem", &["lb.test"]),
        ("a.test.pem", &["a.test"]),
        ("_wildcard.w.test.pem", &["*.w.test"]),
    ])
    .await;
    let serial = |f: &str| serial_of(&std::fs::read(rig.certs.join(f)).unwrap());

    assert_eq!(rig.served(Some("a.test")).await, Some(serial("a.test.pem")));
    assert_eq!(
        rig.served(Some("x.w.test")).await,
        Some(serial("_wildcard.w.test.pem"))
    );
    // No SNI, or a name no file serves: the default certificate.
    assert_eq!(rig.served(None).await, Some(serial("default.pem")));
    assert_eq!(
        rig.served(Some("nobody.test")).await,
        Some(serial("default.pem"))
    );

    // curl verifies the chain against the CA and the name against the certificate.
    let (code, head) = rig.https("a.test", "/").await;
    assert_eq!(code, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=600"),
        "no HSTS header over HTTPS: {head}"
    );
    let (code, head) = rig.https("x.w.test", "/").await;
    assert_eq!(code, 200, "wildcard: {head}");
    let proto = rig
        .backend
        .heads()
        .iter()
        .filter(|h| h.to_ascii_lowercase().contains("x-forwarded-proto: https"))
        .count();
    assert!(
        proto >= 2,
        "the app did not see X-Forwarded-Proto: https: {:?}",
        rig.backend.heads()
    );

    // Plain HTTP: sent to the same host and path over HTTPS, on the HTTPS port.
    let (http_port, https_port) = (rig.http_port, rig.https_port);
    let (code, head) = blocking(move || curl_http("a.test", http_port, "/p/x?q=1")).await;
    assert_eq!(code, 301, "{head}");
    let want = format!("location: https://a.test:{https_port}/p/x?q=1");
    assert!(head.to_ascii_lowercase().contains(&want), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("strict-transport-security"),
        "HSTS over plain HTTP: {head}"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_added_or_removed_certificate_goes_live_without_a_reload_or_a_failed_request() {
    let rig = Rig::start(&[("default.pem", &["lb.test"]), ("a.test.pem", &["a.test"])]).await;
    let reloads = rig.reloads().await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = https_load(
        rig.ca.cert.clone(),
        "a.test".into(),
        rig.https_port,
        2,
        5_000,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Renewed: the same name, a new certificate.
    let renewed = rig.ca.issue(&["a.test"]);
    put(&rig.certs, "a.test.pem", &renewed);
    let took = rig.wait_served(Some("a.test"), &serial_of(&renewed)).await;
    println!("renewed certificate served after {} ms", took.as_millis());

    // Added: a new name.
    let b = rig.ca.issue(&["b.test"]);
    put(&rig.certs, "b.test.pem", &b);
    let took = rig.wait_served(Some("b.test"), &serial_of(&b)).await;
    println!("added certificate served after {} ms", took.as_millis());
    let (code, head) = rig.https("b.test", "/").await;
    assert_eq!(code, 200, "{head}");

    // Removed: its name falls back to the default certificate.
    std::fs::remove_file(rig.certs.join("b.test.pem")).unwrap();
    let default = serial_of(&std::fs::read(rig.certs.join("default.pem")).unwrap());
    rig.wait_served(Some("b.test"), &default).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed, first) = blocking(move || load.join().expect("load")).await;
    println!("HTTPS requests during the changes: {ok} ok, {failed} failed");
    assert!(ok >= 20, "too little load to mean anything: {ok}");
    assert_eq!(failed, 0, "failed HTTPS requests: {first:?}");
    assert_eq!(
        rig.reloads().await,
        reloads,
        "a certificate change reloaded HAProxy"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_certificate_file_is_refused_by_name_and_the_old_certificate_keeps_serving() {
    let mut rig = Rig::start(&[("default.pem", &["lb.test"]), ("a.test.pem", &["a.test"])]).await;
    let good = std::fs::read(rig.certs.join("a.test.pem")).unwrap();
    let serial = serial_of(&good);
    let (cert, _) = rig.ca.issue_parts(&["a.test"]);
    let (_, other_key) = rig.ca.issue_parts(&["z.test"]);
    let broken: [(&str, Vec<u8>, &str); 4] = [
        (
            "garbage",
            b"this is not a certificate\n".to_vec(),
            "no PEM block",
        ),
        ("no key", cert.clone(), "no PRIVATE KEY"),
        (
            "a key of another certificate",
            [cert.clone(), other_key].concat(),
            "inconsistencies between private key and certificate",
        ),
        (
            "half-written",
            good[..good.len() / 2].to_vec(),
            "half-written",
        ),
    ];
    let reloads = rig.reloads().await;
    for (what, pem, want) in &broken {
        // Written in place, not renamed: what a careless writer (or a crash) leaves.
        std::fs::write(rig.certs.join("a.test.pem"), pem).unwrap();
        let why = rig.wait_refused("a.test.pem").await;
        assert!(why.contains(want), "{what}: reason {why:?} lacks {want:?}");
        let metrics = rig.get("/metrics").await;
        for line in [
            "lbgen_certificates{state=\"refused\"} 1",
            "lbgen_certificates{state=\"served\"} 2",
        ] {
            assert!(metrics.contains(line), "{what}: no {line} in\n{metrics}");
        }
        assert_eq!(
            rig.served(Some("a.test")).await.as_deref(),
            Some(serial.as_str()),
            "{what}: the old certificate is no longer served"
        );
        let (code, head) = rig.https("a.test", "/").await;
        assert_eq!(code, 200, "{what}: {head}");
        // Back to good in between, so each case is a fresh refusal.
        put(&rig.certs, "a.test.pem", &good);
        let t0 = Instant::now();
        while rig.status().await["tls"]["refused"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
        {
            assert!(
                t0.elapsed() < SERVED_WITHIN,
                "{what}: still refused when good again"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        rig.reloads().await,
        reloads,
        "a refused certificate reloaded HAProxy"
    );

    // A broken file left on disk through a reload: HAProxy loads lbgen's last good copy.
    std::fs::write(rig.certs.join("a.test.pem"), b"garbage\n").unwrap();
    rig.wait_refused("a.test.pem").await;
    let b2 = Backend::start("api-1").await;
    write_members(
        &rig.members_file,
        &[
            member("web-1", rig.backend.port, "alive", &[]),
            member(
                "api-1",
                b2.port,
                "alive",
                &[("service", "api"), ("route", "/api")],
            ),
        ],
    );
    let r = next_report(&mut rig.reports).await;
    assert!(
        matches!(r.outcome, ApplyOutcome::Reloaded { .. }),
        "{:?}",
        r.outcome
    );
    assert_eq!(rig.reloads().await, reloads + 1);
    assert_eq!(
        rig.served(Some("a.test")).await.as_deref(),
        Some(serial.as_str()),
        "after a reload with a broken file on disk"
    );
    let copy = rig.dir.path().join("tls/certs/a.test.pem");
    assert_eq!(
        std::fs::read(copy).unwrap(),
        good,
        "lbgen's copy was replaced"
    );
    rig.stop().await;
}

//! The default template, run by the real HAProxy: the app behind the LB gets the client's
//! address (`X-Forwarded-For`), the scheme (`X-Forwarded-Proto`) and a request id, and every
//! request leaves one JSON access log line carrying that id.

use std::time::{Duration, Instant};

use lbgen::model::{MembersDoc, Model};
use lbgen::render::{Renderer, Vars};
use lbgen::testing as common;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request to the LB; the status line.
async fn get(port: u16, path: &str) -> Option<String> {
    get_with(port, path, "").await
}

/// One request with extra header lines (each ending in `\r\n`); the status line.
async fn get_with(port: u16, path: &str, headers: &str) -> Option<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: access-log-test\r\n{headers}Connection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        text.lines().next().map(str::to_string)
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

fn vars(d: &std::path::Path, http_port: u16, extra: &[&str]) -> Vars {
    let mut v = common::loopback_vars(d, http_port, &["check_inter=200ms"]);
    v.extend(extra.iter().map(|s| s.to_string()));
    Vars::with_overrides(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_template_passes_the_client_address_and_request_id_and_logs_one_json_line_per_request(
) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let backend = common::Backend::start("b0").await;
    let doc = MembersDoc::from_json(
        &serde_json::json!({ "members": [common::member("web-0", backend.port, "alive", &[])] })
            .to_string(),
    )
    .unwrap();
    let http_port = common::free_port();
    let text = Renderer::builtin()
        .render(&Model::build(&doc), &vars(d, http_port, &[]))
        .unwrap();
    assert!(
        text.contains("    log stdout len 8192 format raw local0\n"),
        "{text}"
    );
    let cfg = d.join("haproxy.cfg");
    std::fs::write(&cfg, &text).unwrap();
    let haproxy = common::Haproxy::start(d, &cfg);

    // The server is up after its first checks.
    let deadline = Instant::now() + Duration::from_secs(15);
    // Every answer HAProxy gave is a request it logs.
    let mut warm_ups = 0;
    loop {
        let status = get(http_port, "/warm-up").await;
        warm_ups += usize::from(status.is_some());
        if status.as_deref() == Some("HTTP/1.1 200 OK") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 200 through HAProxy: {}",
            std::fs::read_to_string(&haproxy.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Paths a hand-written JSON log-format would break on: a quote, a backslash, a bracket.
    let paths = [
        "/seen-by-the-app",
        "/odd/a\"b\\c]d?q=\"1\"",
        "/seen-by-the-app?n=2",
    ];
    // A client's own request id and scheme are replaced, never passed on beside ours.
    let spoofed = "X-Request-ID: client-sent\r\nX-Forwarded-Proto: https\r\n";
    for p in paths {
        assert_eq!(
            get_with(http_port, p, spoofed).await.as_deref(),
            Some("HTTP/1.1 200 OK"),
            "{p}"
        );
    }
    let head = backend
        .heads()
        .into_iter()
        .find(|h| h.starts_with("GET /seen-by-the-app "))
        .expect("the backend got the request");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "no X-Forwarded-For with the client's address:\n{head}"
    );
    assert!(
        lower.contains("\r\nx-forwarded-proto: http\r\n") && !lower.contains("proto: https"),
        "X-Forwarded-Proto is not the LB's http:\n{head}"
    );
    let request_id = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("x-request-id"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no X-Request-ID reached the backend:\n{head}"));
    assert_eq!(
        lower.matches("\r\nx-request-id:").count(),
        1,
        "one request id, not the client's and ours:\n{head}"
    );
    assert_ne!(request_id, "client-sent", "{head}");

    // Every request (the warm-ups too) leaves exactly one line on HAProxy's stdout, and each
    // is one JSON object; ours carry the path as sent and the id the backend saw.
    let deadline = Instant::now() + Duration::from_secs(10);
    let entries = loop {
        let log = std::fs::read_to_string(&haproxy.log).unwrap_or_default();
        let entries: Vec<serde_json::Value> = log
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("access log line is not JSON ({e}): {l}"))
            })
            .collect();
        let ours = entries
            .iter()
            .filter(|e| e["path"].as_str().is_some_and(|p| paths.contains(&p)))
            .count();
        // HAProxy's threads write their lines each on its own: the warm-up's may come after
        // ours, so wait for every line, not only ours.
        if ours == paths.len() && entries.len() >= warm_ups + paths.len() {
            break entries;
        }
        assert!(
            Instant::now() < deadline,
            "{ours} of {} access log lines, {} of {} in all:\n{log}",
            paths.len(),
            entries.len(),
            warm_ups + paths.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        entries.len(),
        warm_ups + paths.len(),
        "one line per request sent ({warm_ups} warm-ups): {entries:#?}"
    );
    for p in paths {
        let n = entries.iter().filter(|e| e["path"] == p).count();
        assert_eq!(n, 1, "{p}: {n} lines");
    }
    let first = entries
        .iter()
        .find(|e| e["path"] == "/seen-by-the-app")
        .unwrap();
    assert_eq!(first["request_id"], request_id.as_str(), "{first}");
    assert_eq!(first["status"], 200, "{first}");
    assert_eq!(first["method"], "GET", "{first}");
    assert_eq!(first["host"], "access-log-test", "{first}");
    assert_eq!(first["frontend"], "http-in", "{first}");
    assert_eq!(first["backend"], "web", "{first}");
    assert_eq!(first["server"], "web-0", "{first}");
    assert_eq!(first["client_ip"], "127.0.0.1", "{first}");
    assert!(first["ts"].as_f64().is_some_and(|t| t > 1.6e9), "{first}");
    assert!(first["time_total_ms"].as_i64().is_some(), "{first}");
    drop(haproxy);
}

#[test]
fn an_empty_access_log_var_renders_no_log_target_and_no_per_request_log_work() {
    let dir = tempfile::tempdir().unwrap();
    let doc = MembersDoc::from_json(r#"{"members":[]}"#).unwrap();
    let text = Renderer::builtin()
        .render(
            &Model::build(&doc),
            &vars(dir.path(), 8080, &["access_log="]),
        )
        .unwrap();
    assert!(!text.contains("format raw"), "{text}");
    // Nothing is computed per request for a log that is not written.
    assert!(!text.contains("set-var(txn.log_"), "{text}");
    assert!(!text.contains("log-format"), "{text}");
    lbgen::render::check_lines(&text).unwrap();
}

/// One GET to `127.0.0.1:port`; the whole response.
async fn fetch(port: u16, path: &str) -> Option<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: stats\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        Some(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_listener_serves_haproxys_prometheus_exporter_at_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let backend = common::Backend::start("b0").await;
    let doc = MembersDoc::from_json(
        &serde_json::json!({ "members": [common::member("web-0", backend.port, "alive", &[])] })
            .to_string(),
    )
    .unwrap();
    let stats_port = common::free_port();
    let v = vars(
        d,
        common::free_port(),
        &[&format!("stats_port={stats_port}")],
    );
    let text = Renderer::builtin().render(&Model::build(&doc), &v).unwrap();
    let cfg = d.join("haproxy.cfg");
    std::fs::write(&cfg, &text).unwrap();
    let haproxy = common::Haproxy::start(d, &cfg);
    // The exporter's server state for web/web-0 goes to UP (1) after the first checks.
    let want = r#"haproxy_server_status{proxy="web",server="web-0",state="UP"} 1"#;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let body = fetch(stats_port, "/metrics").await.unwrap_or_default();
        if body.starts_with("HTTP/1.1 200") && body.lines().any(|l| l == want) {
            assert!(
                body.contains("\r\ncontent-type: text/plain; version=0.0.4"),
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no {want} at /metrics: {body}\n{}",
            std::fs::read_to_string(&haproxy.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The stats page itself is still at /.
    let page = fetch(stats_port, "/").await.unwrap_or_default();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    drop(haproxy);
}

//! The default template, run by the real HAProxy: the app behind the LB gets the client's
//! address (`X-Forwarded-For`), and every request leaves one access log line.

use std::time::{Duration, Instant};

use lbgen::model::{MembersDoc, Model};
use lbgen::render::{Renderer, Vars};
use lbgen::testing as common;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request to the LB; the status line.
async fn get(port: u16, path: &str) -> Option<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: access-log-test\r\nConnection: close\r\n\r\n");
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
    let mut v = vec![
        "bind=127.0.0.1".to_string(),
        format!("http_port={http_port}"),
        format!("stats_port={}", common::free_port()),
        format!("stats_socket={}", d.join("admin.sock").display()),
        format!("server_state_file={}", d.join("server-state").display()),
        "check_inter=200ms".to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    Vars::with_overrides(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_template_passes_the_client_address_and_logs_every_request() {
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
        text.contains("    log stdout format raw local0\n"),
        "{text}"
    );
    let cfg = d.join("haproxy.cfg");
    std::fs::write(&cfg, &text).unwrap();
    let haproxy = common::Haproxy::start(d, &cfg);

    // The server is up after its first checks.
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(http_port, "/warm-up").await.as_deref() != Some("HTTP/1.1 200 OK") {
        assert!(
            Instant::now() < deadline,
            "no 200 through HAProxy: {}",
            std::fs::read_to_string(&haproxy.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get(http_port, "/seen-by-the-app").await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    let head = backend
        .heads()
        .into_iter()
        .find(|h| h.starts_with("GET /seen-by-the-app "))
        .expect("the backend got the request");
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "no X-Forwarded-For with the client's address:\n{head}"
    );

    // HAProxy's httplog line for it, on its stdout.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&haproxy.log).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("\"GET /seen-by-the-app HTTP/1.1\""))
        {
            assert!(
                line.contains("http-in web/web-0 ") && line.contains(" 200 "),
                "access log line without frontend, server or status: {line}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no access log line for the request:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(haproxy);
}

#[test]
fn an_empty_access_log_var_renders_no_log_target() {
    let dir = tempfile::tempdir().unwrap();
    let doc = MembersDoc::from_json(r#"{"members":[]}"#).unwrap();
    let text = Renderer::builtin()
        .render(
            &Model::build(&doc),
            &vars(dir.path(), 8080, &["access_log="]),
        )
        .unwrap();
    assert!(!text.contains("format raw"), "{text}");
    lbgen::render::check_lines(&text).unwrap();
}
